//! Fuzzes requests through routing, filters and forwarding headers over the conformance suites'
//! configurations.
#![no_main]

use std::sync::OnceLock;

use torhaus_fuzz::{CompiledConfig, RequestInput, conformance_configs, exercise_request};

static CONFIGS: OnceLock<Vec<CompiledConfig>> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|input: RequestInput| {
    for config in CONFIGS.get_or_init(conformance_configs) {
        exercise_request(config, &input);
    }
});
