//! Certificate lifecycle: the local CA that makes HTTPS work out of the box, and ACME issuers
//! (their configuration, the order and renewal lifecycle, and where certificates are stored).
#![forbid(unsafe_code)]

pub mod config;
mod directory_store;
mod leaf;
mod lifecycle;
mod local_ca;
mod order;
mod state_dir;
pub mod store;

pub use config::{CLUSTER_RESOURCE_NAMESPACE, IssuerConfig, IssuerSpec, SecretMaterial};
pub use directory_store::{DirectoryStore, spawn_leader_lock};
pub use leaf::{
    ANNOTATION_DNS_NAMES, ANNOTATION_ISSUER, ANNOTATION_NOT_AFTER, ANNOTATION_ORDER,
    ANNOTATION_RENEW_AFTER,
};
pub use lifecycle::{
    CertificateState, CertificateStatus, Desired, LifecycleEvents, LifecycleSettings, NoEvents,
    spawn_lifecycle,
};
pub use local_ca::{LocalCa, LocalCaError};
pub use order::{OrderError, OrderTimings};
pub use state_dir::default_state_dir;
pub use store::{CertificateStore, StoreError, StoredCertificate};
