//! Inline manifests → an object set, for translation and status tests.

use std::path::Path;

use torhaus_k8s::{ObjectSet, parse_manifests};

/// Parses each document as its own file (`inline-N.yaml`); every fixture must parse cleanly.
pub fn objects(documents: &[&str]) -> ObjectSet {
    let mut set = ObjectSet::default();
    for (i, text) in documents.iter().enumerate() {
        let path = format!("inline-{i}.yaml");
        let (parsed, problems) = parse_manifests(text, Path::new(&path));
        assert!(
            problems.is_empty(),
            "fixture {i} does not parse: {problems:?}"
        );
        for (object, location) in parsed {
            set.insert(object, location);
        }
    }
    set
}
