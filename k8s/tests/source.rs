//! Directory source tests: loading, problems, duplicates, last good state, deletion, watching.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use torhaus_k8s::{
    DirectorySource, ObjectKind, Severity, TranslateOptions, Translation, WatchMode,
    load_directory, spawn_directory_source_with,
};

/// A fresh scratch directory under the target dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("torhaus-k8s-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent dir");
        }
        std::fs::write(path, text).expect("write manifest");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixtures() -> PathBuf {
    torhaus_tests::process::package_dir(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/basic")
}

const SERVICE: &str =
    "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";

#[test]
fn loads_the_fixture_directory_recursively() {
    let set = load_directory(fixtures()).expect("fixtures load");
    assert_eq!(set.gateway_classes.len(), 1);
    assert_eq!(set.gateways.len(), 1);
    assert_eq!(set.http_routes.len(), 1);
    assert_eq!(set.services.len(), 1, "kind: List is unpacked");
    assert_eq!(set.endpoint_slices.len(), 1);
    assert_eq!(set.namespaces.len(), 1, "JSON in a nested directory");
    let route = set.http_routes.keys().next().expect("route");
    assert_eq!(route.namespace, "default", "missing namespace defaults");
    let warnings: Vec<String> = set.problems.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("warning:")
            && warnings[0].contains("unknown.yaml (document 1)")
            && warnings[0].contains("Deployment"),
        "{warnings:?}"
    );

    let out = torhaus_k8s::translate(&set, &TranslateOptions::default());
    assert!(!out.report.rejected(), "{}", out.report);
    let rule = &out.config.ports[0].listeners[0].routes[0].route.rules[0];
    let printed = out.report.to_string();
    assert!(
        printed.contains("default/web:8080 weight 3 (2 endpoints)"),
        "{printed}"
    );
    assert!(printed.contains("default/web:9090 weight 0"), "{printed}");
    assert_eq!(rule.backends.len(), 2);
}

#[test]
fn malformed_and_incomplete_documents_are_errors_naming_file_and_document() {
    let scratch = Scratch::new("malformed");
    scratch.write("a.yaml", &format!("{SERVICE}---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: x}}\n---\nkind: Service\nmetadata: {{name: n}}\n"));
    scratch.write(
        "b.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad\n",
    );
    scratch.write(
        "c.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: typed}\nspec: {ports: [{port: eighty}]}\n",
    );
    let set = load_directory(&scratch.0).expect("load");
    assert_eq!(set.services.len(), 1, "the valid document survives");
    let messages: Vec<String> = set.problems.iter().map(ToString::to_string).collect();
    let has = |needle: &[&str]| {
        messages
            .iter()
            .any(|m| needle.iter().all(|n| m.contains(n)))
    };
    assert!(
        has(&["a.yaml (document 2)", "metadata.name"]),
        "{messages:?}"
    );
    assert!(has(&["a.yaml (document 3)", "apiVersion"]), "{messages:?}");
    assert!(
        has(&["b.yaml (document 1)", "malformed YAML"]),
        "{messages:?}"
    );
    assert!(
        has(&["c.yaml (document 1)", "Service \"typed\" is invalid"]),
        "{messages:?}"
    );
    assert!(set.problems.iter().all(|p| p.severity == Severity::Error));
}

#[test]
fn duplicates_keep_the_first_by_path_and_name_both_places() {
    let scratch = Scratch::new("duplicates");
    scratch.write("a.yaml", SERVICE);
    scratch.write("b.yaml", &SERVICE.replace("port: 80", "port: 81"));
    let set = load_directory(&scratch.0).expect("load");
    let service = set.services.values().next().expect("service");
    let ports = service
        .object
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .expect("ports");
    assert_eq!(ports[0].port, 80, "the first file wins");
    assert_eq!(set.problems.len(), 1);
    let message = set.problems[0].to_string();
    assert!(
        message.contains("b.yaml")
            && message.contains("a.yaml")
            && message.contains("duplicate Service default/web"),
        "{message}"
    );
}

#[test]
fn a_broken_file_keeps_its_last_good_objects_and_deletion_removes_them() {
    let scratch = Scratch::new("last-good");
    scratch.write(
        "svc.yaml",
        &format!(
            "{SERVICE}---\n{}",
            SERVICE.replace("name: web", "name: api")
        ),
    );
    let mut source = DirectorySource::new(&scratch.0);
    assert_eq!(source.load().expect("load").services.len(), 2);

    scratch.write(
        "svc.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: api\n",
            SERVICE.replace("port: 80", "port: 82")
        ),
    );
    let set = source.load().expect("reload");
    assert_eq!(set.services.len(), 2, "the broken object keeps serving");
    let web = set
        .services
        .iter()
        .find(|(k, _)| k.name == "web")
        .map(|(_, v)| v)
        .expect("web");
    assert_eq!(
        web.object
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(|p| p[0].port),
        Some(82),
        "valid edits apply"
    );
    assert!(
        set.problems
            .iter()
            .any(|p| p.severity == Severity::Error && p.to_string().contains("malformed YAML"))
    );
    assert!(set.problems.iter().any(|p| {
        p.to_string()
            .contains("Service default/api keeps serving its last good version")
    }));

    source.load().expect("reload");
    assert!(!source.changed(), "nothing changed since the last load");
    scratch.write(".svc.yaml.swp", "junk");
    scratch.write("notes.txt", "junk");
    source.load().expect("reload");
    assert!(
        !source.changed(),
        "hidden and non-manifest files are ignored"
    );

    std::fs::remove_file(scratch.0.join("svc.yaml")).expect("remove");
    let set = source.load().expect("reload");
    assert!(set.services.is_empty(), "a deleted file's objects are gone");
    assert!(set.problems.is_empty());
}

#[test]
fn missing_directory_is_an_error() {
    let error = load_directory("/nonexistent/torhaus").expect_err("must fail");
    assert!(
        error.to_string().contains("/nonexistent/torhaus"),
        "{error}"
    );
}

async fn wait_for(
    receiver: &mut tokio::sync::watch::Receiver<Arc<Translation>>,
    what: &str,
    done: impl Fn(&Translation) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if done(&receiver.borrow_and_update()) {
            return;
        }
        match tokio::time::timeout_at(deadline, receiver.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("source stopped while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

#[tokio::test]
async fn the_watched_directory_retranslates_on_change() {
    exercise_watching("watch-notify", WatchMode::Notify).await;
}

#[tokio::test]
async fn the_polled_directory_retranslates_on_change() {
    exercise_watching("watch-poll", WatchMode::Poll).await;
}

async fn exercise_watching(name: &str, mode: WatchMode) {
    let scratch = Scratch::new(name);
    for entry in std::fs::read_dir(fixtures()).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, scratch.0.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let mut receiver =
        spawn_directory_source_with(scratch.0.clone(), TranslateOptions::default(), mode)
            .expect("spawn");
    assert_eq!(
        receiver.borrow().config.ports.len(),
        1,
        "the first load is synchronous"
    );

    scratch.write(
        "more.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: extra, namespace: infra}\nspec:\n  gatewayClassName: torhaus\n  listeners: [{name: alt, port: 8080, protocol: HTTP}]\n",
    );
    wait_for(&mut receiver, "the new Gateway", |t| {
        t.config.port(8080).is_some()
    })
    .await;
    assert!(
        receiver
            .borrow()
            .report
            .object(ObjectKind::Gateway, "infra", "extra")
            .is_some()
    );

    scratch.write("more.yaml", "kind: [oops\n");
    wait_for(&mut receiver, "the parse error", |t| t.report.rejected()).await;
    assert!(
        receiver.borrow().config.port(8080).is_some(),
        "the last good Gateway keeps serving"
    );

    std::fs::remove_file(scratch.0.join("more.yaml")).expect("remove");
    wait_for(&mut receiver, "the removal", |t| {
        t.config.port(8080).is_none() && !t.report.rejected()
    })
    .await;
}
