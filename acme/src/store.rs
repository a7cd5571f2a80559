//! Where issued certificates and ACME account credentials live: Secrets in a cluster, a
//! directory in standalone mode. The lifecycle only sees this trait, so the same ordering code
//! serves both.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use torhaus_model::ObjectName;

/// A certificate as stored: exactly what a `kubernetes.io/tls` Secret holds, plus the
/// annotations the lifecycle keeps beside it (issuer, names, renewal information).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCertificate {
    /// `tls.crt`: the chain, leaf first.
    pub chain_pem: String,
    /// `tls.key`.
    pub key_pem: String,
    pub annotations: BTreeMap<String, String>,
}

impl fmt::Debug for StoredCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCertificate")
            .field("annotations", &self.annotations)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be read or written; the message names the Secret or file.
    #[error("{0}")]
    Io(String),
    /// What is stored cannot be used (not PEM); the message names the Secret.
    #[error("{0}")]
    Invalid(String),
    /// The Secret holds something other than a certificate (another Secret type): it is never
    /// overwritten, so nothing is ordered for it until it is deleted or the listener names
    /// another Secret. The message names the Secret.
    #[error("{0}")]
    Foreign(String),
}

/// Persistence of certificates and accounts. Writes must be atomic: a reader (another replica,
/// or the configuration source that serves the Secret) never sees half a certificate.
#[async_trait]
pub trait CertificateStore: Send + Sync + fmt::Debug {
    async fn load_certificate(
        &self,
        secret: &ObjectName,
    ) -> Result<Option<StoredCertificate>, StoreError>;
    async fn save_certificate(
        &self,
        secret: &ObjectName,
        certificate: &StoredCertificate,
    ) -> Result<(), StoreError>;
    /// The serialized ACME account credentials kept in `secret`.
    async fn load_account(&self, secret: &ObjectName) -> Result<Option<Vec<u8>>, StoreError>;
    async fn save_account(&self, secret: &ObjectName, credentials: &[u8])
    -> Result<(), StoreError>;
}
