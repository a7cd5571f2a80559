//! End-to-end test support: echo backends, a client, the torhaus process and the conformance
//! case runner.

pub mod ari_standin;
pub mod cases;
pub mod client;
pub mod dns_rig;
pub mod echo;
pub mod fixtures;
pub mod oidc_rig;
pub mod pebble_rig;
pub mod process;
pub mod rig;
pub mod runner;
