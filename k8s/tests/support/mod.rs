//! Shared helpers of the kube-layer tests.

pub mod fake_api;
