//! Certificates torhaus is asked to obtain and keep valid, as the translation found them: the
//! contract between the Gateway API layer (which reads the opt-in) and the ACME lifecycle.

use std::fmt;

use crate::{ListenerId, ObjectName};

/// Whether an issuer is namespaced (`Issuer`) or cluster-wide (`ClusterIssuer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IssuerKind {
    Issuer,
    ClusterIssuer,
}

impl fmt::Display for IssuerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IssuerKind::Issuer => "Issuer",
            IssuerKind::ClusterIssuer => "ClusterIssuer",
        })
    }
}

/// Names one issuer object. A `ClusterIssuer` has an empty namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerRef {
    pub kind: IssuerKind,
    pub name: ObjectName,
}

impl fmt::Display for IssuerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            IssuerKind::ClusterIssuer => write!(f, "ClusterIssuer {}", self.name.name),
            IssuerKind::Issuer => write!(f, "Issuer {}", self.name),
        }
    }
}

/// One certificate to obtain: a `kubernetes.io/tls` Secret that HTTPS listeners reference and
/// that an issuer keeps valid. Every listener referencing the same Secret contributes its
/// hostname, so an apex and its wildcard end up in one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedCertificate {
    /// The Secret the certificate is stored in and served from.
    pub secret: ObjectName,
    pub issuer: IssuerRef,
    /// Lowercase, sorted, without duplicates; wildcards as written (`*.example.com`).
    pub dns_names: Vec<String>,
    /// The listeners that serve it, for their conditions and status.
    pub listeners: Vec<ListenerId>,
}
