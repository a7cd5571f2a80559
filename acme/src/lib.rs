//! Certificate lifecycle: the local CA that makes HTTPS work out of the box, and ACME issuers
//! (their configuration and storage; the ordering lifecycle is being built).
#![forbid(unsafe_code)]

pub mod config;
mod local_ca;
mod state_dir;
pub mod store;

pub use config::{CLUSTER_RESOURCE_NAMESPACE, IssuerConfig, IssuerSpec, SecretMaterial};
pub use local_ca::{LocalCa, LocalCaError};
pub use state_dir::default_state_dir;
pub use store::{CertificateStore, StoreError, StoredCertificate};
