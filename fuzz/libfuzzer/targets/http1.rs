//! Fuzzes raw HTTP/1 requests through pingora's parser and torhaus's strict checks: whatever
//! they let through must have unambiguous framing.
#![no_main]

libfuzzer_sys::fuzz_target!(|raw: &[u8]| {
    torhaus_fuzz::exercise_raw_request(raw);
});
