//! Fuzzes requests, their cookies and the identity in a session cookie through the identity
//! layer's decision under the documented example AuthPolicy.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: torhaus_fuzz::IdentityInput| {
    let _ = torhaus_fuzz::exercise_identity(&input);
});
