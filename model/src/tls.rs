//! Certificates as the data plane needs them: parsed, with their names known.

use std::fmt;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its private key, already parsed and checked to belong together.
pub struct TlsCertificate {
    /// Where it came from, e.g. the Secret `namespace/name`, for logs and status.
    pub source: String,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The leaf's DNS subjectAltNames, lowercase; wildcards as written (`*.example.com`).
    pub dns_names: Vec<String>,
    /// The leaf's notAfter, as Unix seconds.
    pub not_after_unix: i64,
}

impl fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("source", &self.source)
            .field("dns_names", &self.dns_names)
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

impl TlsCertificate {
    /// Whether the leaf covers `server_name` (lowercase): an exact SAN, or a wildcard SAN
    /// covering exactly one label, as TLS (RFC 6125) allows.
    pub fn covers(&self, server_name: &str) -> bool {
        self.dns_names.iter().any(|san| {
            san == server_name
                || san.strip_prefix("*.").is_some_and(|suffix| {
                    server_name
                        .split_once('.')
                        .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix)
                })
        })
    }

    /// Whether `server_name` is one of the leaf's exact (non-wildcard) names.
    pub fn names_exactly(&self, server_name: &str) -> bool {
        self.dns_names.iter().any(|san| san == server_name)
    }
}

/// Issues certificates on demand for HTTPS listeners that have none usable yet (the local CA).
/// Called from the TLS handshake, so it must be fast and must not block on I/O; implementations
/// cache what they issue.
pub trait OnDemandIssuer: Send + Sync + fmt::Debug {
    fn certificate_for(&self, server_name: &str) -> Option<Arc<TlsCertificate>>;
}
