//! Certificate lifecycle: the local CA that makes HTTPS work out of the box, later ACME.
#![forbid(unsafe_code)]

mod local_ca;
mod state_dir;

pub use local_ca::{LocalCa, LocalCaError};
pub use state_dir::default_state_dir;
