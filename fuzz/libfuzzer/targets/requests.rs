//! Fuzzes requests through routing, filters and forwarding headers over the conformance suites'
//! configurations.
#![no_main]

use std::sync::OnceLock;

use torhaus_fuzz::{CompiledConfig, RequestInput, Vocabulary, conformance_configs, exercise_request};

static CONFIGS: OnceLock<Vec<(CompiledConfig, Vocabulary)>> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|input: RequestInput| {
    // Without the configurations there is nothing to fuzz: fail loudly at the first input.
    let configs = CONFIGS.get_or_init(|| match conformance_configs() {
        Ok(configs) => configs
            .into_iter()
            .map(|config| {
                let words = Vocabulary::of(std::slice::from_ref(&config));
                (config, words)
            })
            .collect(),
        Err(error) => panic!("reading the conformance manifests: {error}"),
    });
    for (config, words) in configs {
        let _ = exercise_request(config, words, &input);
    }
});
