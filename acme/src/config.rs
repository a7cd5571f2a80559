//! Issuer configuration as users write it (`torhaus.dev/v1alpha1` `Issuer` and
//! `ClusterIssuer`, the same YAML in cluster and standalone mode), kept apart from the runtime
//! order machinery. Unknown fields are refused so that a typo never silently changes issuance.

use serde::{Deserialize, Serialize};
use torhaus_dns::{ProviderConfig, SecretKeyRef};
use torhaus_model::IssuerRef;

/// The API group and version of torhaus's own objects.
pub const API_VERSION: &str = "torhaus.dev/v1alpha1";

/// The default namespace whose Secrets a `ClusterIssuer` reads and writes (its DNS credentials
/// and its ACME account), like cert-manager's "cluster resource namespace"
/// (`--cluster-resource-namespace`).
pub const CLUSTER_RESOURCE_NAMESPACE: &str = "torhaus-system";

/// `spec` of an `Issuer` or `ClusterIssuer`. The shape follows cert-manager's ACME issuer so
/// that migrating users recognise every field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerSpec {
    pub acme: AcmeIssuerSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcmeIssuerSpec {
    /// The ACME directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub server: String,
    /// Contact address registered with the account (optional: Let's Encrypt sends no mail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The Secret holding the ACME account's credentials; created on first use.
    pub private_key_secret_ref: SecretName,
    /// External account binding, for CAs that require one (ZeroSSL, Google, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_account_binding: Option<ExternalAccountBinding>,
    /// The ACME profile to order (draft-aaron-acme-profiles), e.g. `tlsserver` or `shortlived`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// PEM roots to trust for the ACME server itself (a private CA, or Pebble in tests);
    /// the system roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// The DNS-01 solver: exactly one DNS provider.
    pub dns01: ProviderConfig,
}

/// A whole Secret, by name (in the issuer's namespace, or torhaus's own for a ClusterIssuer).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretName {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalAccountBinding {
    #[serde(rename = "keyID")]
    pub key_id: String,
    /// The base64url HMAC key the CA issued.
    pub key_secret_ref: SecretKeyRef,
}

impl IssuerSpec {
    /// Every Secret key this issuer reads (not the account Secret, which it writes): the
    /// translation resolves exactly these and hands their bytes over in [`SecretMaterial`].
    pub fn secret_refs(&self) -> Vec<SecretKeyRef> {
        let mut refs = Vec::new();
        if let Some(eab) = &self.acme.external_account_binding {
            refs.push(eab.key_secret_ref.clone());
        }
        refs.extend(self.acme.dns01.secret_refs());
        refs
    }
}

/// Secret bytes resolved by the translation; one type for issuers and DNS publishers.
pub use torhaus_dns::config::SecretMaterial;

/// An issuer as the translation hands it to the certificate lifecycle: validated spec plus the
/// Secret bytes it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    pub id: IssuerRef,
    pub spec: IssuerSpec,
    pub secrets: SecretMaterial,
    /// Where the issuer's Secrets live, its ACME account included: an Issuer's own namespace,
    /// the cluster resource namespace for a ClusterIssuer.
    pub secret_namespace: String,
}
