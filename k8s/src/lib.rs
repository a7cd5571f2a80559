//! torhaus's Gateway API layer: object sources, the pure translation into the data plane's
//! configuration, and the per-object conditions that translation reports.
#![forbid(unsafe_code)]

pub mod controller;
pub mod report;
pub mod revocations;
pub mod secret_store;
pub mod source;
pub mod status;
pub mod translate;

pub use source::{
    DEFAULT_DEBOUNCE, DirectorySource, KubeObject, KubeSnapshot, KubernetesOptions,
    KubernetesSource, ObjectKey, ObjectKind, ObjectSet, Problem, Severity, SourceError,
    SourceLocation, Sourced, WatchMode, load_directory, parse_manifests, spawn_directory_source,
    spawn_directory_source_with, spawn_directory_source_with_roots, spawn_kubernetes_source,
};

pub use controller::{
    ClusterAcme, Controller, ControllerError, ControllerSettings, DEFAULT_ACME_LEASE_NAME,
    DEFAULT_LEASE_NAME,
};
pub use report::{
    Condition, ConditionStatus, GatewayAddress, ListenerStatus, ObjectStatus, ParentReference,
    ParentStatus, Report, RouteGroupKind,
};
pub use secret_store::SecretStore;
pub use translate::{
    CERT_MANAGER_CLUSTER_ISSUER_ANNOTATION, CERT_MANAGER_ISSUER_ANNOTATION,
    CLUSTER_ISSUER_ANNOTATION, ISSUER_ANNOTATION, TranslateOptions, Translation,
    describe_certificates, describe_publishers, translate,
};

/// The `spec.controllerName` of the GatewayClasses torhaus serves.
pub const CONTROLLER_NAME: &str = "torhaus.dev/gateway-controller";
