//! Counts how the identity decisions of a directory of `identity` fuzzer inputs go, and names a
//! small input of each kind: for picking seeds that reach every kind (`fuzz/corpus/identity/`).
//! Usage: cargo run -p torhaus-fuzz --example classify-identity -- DIR

use std::collections::BTreeMap;

use anyhow::Context;
use arbitrary::{Arbitrary, Unstructured};

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .context("usage: classify-identity DIR")?;
    let mut kinds: BTreeMap<String, (usize, Option<(usize, String)>)> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path();
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let Ok(input) = torhaus_fuzz::IdentityInput::arbitrary_take_rest(Unstructured::new(&bytes))
        else {
            continue;
        };
        let kind = format!("{:?}", torhaus_fuzz::exercise_identity(&input));
        let (count, smallest) = kinds.entry(kind).or_default();
        *count += 1;
        if smallest
            .as_ref()
            .is_none_or(|(size, _)| bytes.len() < *size)
        {
            *smallest = Some((bytes.len(), path.display().to_string()));
        }
    }
    for (kind, (count, smallest)) in kinds {
        let (size, path) = smallest.unwrap_or_default();
        println!("{kind:<28} {count:>6}   smallest ({size} bytes): {path}");
    }
    Ok(())
}
