//! Shared helpers of the kube-layer tests.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the shared support"
)]

pub mod fake_api;
