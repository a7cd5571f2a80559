//! The Kubernetes objects translation reads, where each came from, and how raw manifests become them.

mod directory;
mod kubernetes;
mod objects;

pub use directory::{
    DirectorySource, WatchMode, load_directory, spawn_directory_source,
    spawn_directory_source_with, spawn_directory_source_with_roots,
};
pub use kubernetes::{
    DEFAULT_DEBOUNCE, KubeSnapshot, KubernetesOptions, KubernetesSource, auth_policy_resource,
    cluster_issuer_resource, dns_publisher_resource, issuer_resource, spawn_kubernetes_source,
};
pub use objects::{
    AuthPolicyObject, DnsPublisherObject, IssuerObject, KubeObject, ObjectKey, ObjectKind,
    ObjectSet, Problem, Severity, SourceLocation, Sourced, TORHAUS_GROUP, parse_manifests,
};

use std::path::PathBuf;

/// Failures that stop a source altogether (a bad manifest never does: it becomes a [`Problem`]).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
}
