//! The ACME store of Kubernetes mode: issued certificates as `kubernetes.io/tls` Secrets in the
//! Gateway's namespace (which the Kubernetes source already watches, so every replica serves a
//! new certificate through the normal watch → translate → swap path), and ACME account
//! credentials in the issuer's `privateKeySecretRef` Secret. Every write carries the
//! `resourceVersion` it read: a concurrent writer makes it fail with 409 and it is redone on
//! what the API holds now, a bounded number of times.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use torhaus_acme::{CertificateStore, StoreError, StoredCertificate};
use torhaus_model::ObjectName;

/// The Secret type certificates are stored as; a Secret of any other type is never overwritten.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// The key of the account Secret that holds the ACME account credentials (JSON). Other keys of
/// that Secret (cert-manager's `tls.key`, say) are kept as they are.
pub const ACCOUNT_KEY: &str = "torhaus-acme-account.json";
/// Marks the Secrets torhaus wrote, for `kubectl get secret -l`.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "torhaus";
/// Annotations under this prefix belong to the lifecycle: replaced as a set on every write.
const LIFECYCLE_ANNOTATION_PREFIX: &str = "torhaus.dev/";
/// Attempts at one read-modify-write before giving up (the lifecycle retries the order's store
/// step with its own backoff).
pub const WRITE_ATTEMPTS: usize = 5;

/// [`CertificateStore`] over the Kubernetes API.
#[derive(Clone)]
pub struct SecretStore {
    client: kube::Client,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore").finish_non_exhaustive()
    }
}

impl SecretStore {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    pub(crate) fn client(&self) -> &kube::Client {
        &self.client
    }

    fn api(&self, secret: &ObjectName) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &secret.namespace)
    }

    /// Reads, changes and writes back one Secret until a write goes through without a
    /// conflict. `change` builds the wanted Secret from the current one (`None`: absent);
    /// `Ok(None)` means nothing needs writing.
    async fn read_modify_write(
        &self,
        secret: &ObjectName,
        change: impl Fn(Option<Secret>) -> Result<Option<Secret>, StoreError>,
    ) -> Result<(), StoreError> {
        let api = self.api(secret);
        let mut last_conflict = String::new();
        for _ in 0..WRITE_ATTEMPTS {
            let current = api
                .get_opt(&secret.name)
                .await
                .map_err(|e| api_error(secret, "cannot read", e))?;
            let exists = current.is_some();
            let Some(wanted) = change(current)? else {
                return Ok(());
            };
            let written = if exists {
                // `replace` sends the resourceVersion read above (kept in the metadata).
                api.replace(&secret.name, &PostParams::default(), &wanted)
                    .await
            } else {
                api.create(&PostParams::default(), &wanted).await
            };
            match written {
                Ok(_) => return Ok(()),
                // Changed, created or deleted by someone else since the read: redo it on what
                // the API holds now.
                Err(kube::Error::Api(status))
                    if status.code == 409 || (exists && status.code == 404) =>
                {
                    tracing::debug!(secret = %secret, message = %status.message, "conflicting write; rereading the Secret");
                    last_conflict = status.message;
                }
                Err(error) => return Err(api_error(secret, "cannot write", error)),
            }
        }
        Err(StoreError::Io(format!(
            "Secret {secret}: gave up after {WRITE_ATTEMPTS} conflicting writes (the last: {last_conflict})"
        )))
    }
}

fn api_error(secret: &ObjectName, what: &str, error: kube::Error) -> StoreError {
    let hint = match &error {
        kube::Error::Api(status) if status.code == 403 => {
            " (torhaus needs get, create and update on secrets: the chart grants them with rbac.writeSecrets)"
        }
        _ => "",
    };
    StoreError::Io(format!("{what} Secret {secret}: {error}{hint}"))
}

fn metadata_for(secret: &ObjectName) -> ObjectMeta {
    ObjectMeta {
        name: Some(secret.name.clone()),
        namespace: Some(secret.namespace.clone()),
        ..ObjectMeta::default()
    }
}

fn mark_managed(meta: &mut ObjectMeta) {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
}

fn secret_type(secret: &Secret) -> &str {
    // The API defaults an absent type to Opaque.
    secret.type_.as_deref().unwrap_or("Opaque")
}

/// Refuses a Secret that is not `kubernetes.io/tls`: it holds something else (a password, an
/// account key), and replacing it with a certificate would destroy that.
fn require_tls(name: &ObjectName, secret: &Secret) -> Result<(), StoreError> {
    match secret_type(secret) {
        TLS_SECRET_TYPE => Ok(()),
        other => Err(StoreError::Foreign(format!(
            "Secret {name} is of type {other}, not {TLS_SECRET_TYPE}; torhaus does not overwrite it: \
             delete it or point the listener's certificateRefs at another Secret"
        ))),
    }
}

fn text_of(name: &ObjectName, secret: &Secret, key: &str) -> Result<String, StoreError> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .ok_or_else(|| StoreError::Invalid(format!("Secret {name} has no {key}")))?;
    String::from_utf8(bytes.0.clone())
        .map_err(|_| StoreError::Invalid(format!("Secret {name}: {key} is not UTF-8 PEM")))
}

/// The Secret `current` (or a new one) holding `certificate`: other labels, annotations and
/// owner references are kept, the lifecycle's annotations replaced as a set, and the data is
/// exactly `tls.crt` and `tls.key` (a stale `ca.crt` of an earlier issuer would mislead).
fn certificate_secret(
    name: &ObjectName,
    current: Option<Secret>,
    certificate: &StoredCertificate,
) -> Result<Secret, StoreError> {
    let mut meta = match current {
        Some(current) => {
            require_tls(name, &current)?;
            let ours = current
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(MANAGED_BY_LABEL))
                .is_some_and(|value| value == MANAGED_BY_VALUE);
            if !ours {
                tracing::info!(secret = %name, "taking over a kubernetes.io/tls Secret torhaus did not write: a Gateway's issuer annotation names it");
            }
            let mut meta = current.metadata;
            // Server-maintained and never sent back.
            meta.managed_fields = None;
            meta
        }
        None => metadata_for(name),
    };
    mark_managed(&mut meta);
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.retain(|key, _| !key.starts_with(LIFECYCLE_ANNOTATION_PREFIX));
    annotations.extend(certificate.annotations.clone());
    Ok(Secret {
        metadata: meta,
        type_: Some(TLS_SECRET_TYPE.to_owned()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_owned(),
                ByteString(certificate.chain_pem.clone().into_bytes()),
            ),
            (
                "tls.key".to_owned(),
                ByteString(certificate.key_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    })
}

#[async_trait]
impl CertificateStore for SecretStore {
    async fn load_certificate(
        &self,
        secret: &ObjectName,
    ) -> Result<Option<StoredCertificate>, StoreError> {
        let Some(current) = self
            .api(secret)
            .get_opt(&secret.name)
            .await
            .map_err(|e| api_error(secret, "cannot read", e))?
        else {
            return Ok(None);
        };
        require_tls(secret, &current)?;
        let annotations = current
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(key, _)| key.starts_with(LIFECYCLE_ANNOTATION_PREFIX))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Ok(Some(StoredCertificate {
            chain_pem: text_of(secret, &current, "tls.crt")?,
            key_pem: text_of(secret, &current, "tls.key")?,
            annotations,
        }))
    }

    async fn save_certificate(
        &self,
        secret: &ObjectName,
        certificate: &StoredCertificate,
    ) -> Result<(), StoreError> {
        self.read_modify_write(secret, |current| {
            certificate_secret(secret, current, certificate).map(Some)
        })
        .await
    }

    async fn load_account(&self, secret: &ObjectName) -> Result<Option<Vec<u8>>, StoreError> {
        let current = self
            .api(secret)
            .get_opt(&secret.name)
            .await
            .map_err(|e| api_error(secret, "cannot read", e))?;
        Ok(current
            .and_then(|s| s.data)
            .and_then(|mut data| data.remove(ACCOUNT_KEY))
            .map(|bytes| bytes.0))
    }

    async fn save_account(
        &self,
        secret: &ObjectName,
        credentials: &[u8],
    ) -> Result<(), StoreError> {
        self.read_modify_write(secret, |current| {
            let mut wanted = match current {
                // Only our key changes: whatever else the Secret holds stays.
                Some(mut current) => {
                    current.metadata.managed_fields = None;
                    current
                }
                None => Secret {
                    metadata: metadata_for(secret),
                    type_: Some("Opaque".to_owned()),
                    ..Secret::default()
                },
            };
            mark_managed(&mut wanted.metadata);
            let data = wanted.data.get_or_insert_with(BTreeMap::new);
            if data.get(ACCOUNT_KEY).map(|b| b.0.as_slice()) == Some(credentials) {
                return Ok(None);
            }
            data.insert(ACCOUNT_KEY.to_owned(), ByteString(credentials.to_vec()));
            Ok(Some(wanted))
        })
        .await
    }
}
