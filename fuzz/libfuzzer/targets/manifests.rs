//! Fuzzes manifest files through parsing, translation, compilation and routing.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = torhaus_fuzz::exercise_manifests(text);
});
