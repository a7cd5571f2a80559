//! Provider configuration as users write it (serde, unknown fields rejected), kept apart from
//! the runtime providers; credentials are Secret references resolved through `SecretSource`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rfc2136::{Rfc2136Provider, TsigAlgorithmName, TsigKey};
use crate::{DnsError, DnsProvider};

/// A key in a Secret (a Kubernetes Secret in cluster, a file in standalone mode).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// Resolves Secret references; the k8s and standalone layers implement it.
pub trait SecretSource {
    /// The bytes stored under `reference`, or a message saying why they are unavailable.
    fn secret(&self, reference: &SecretKeyRef) -> Result<Vec<u8>, String>;
}

/// The bytes of the Secret keys a configuration references, resolved by the translation
/// (missing ones are absent: the object is then not ready, with a condition saying which).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretMaterial {
    values: BTreeMap<(String, String), Vec<u8>>,
}

impl std::fmt::Debug for SecretMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secret bytes, only which keys are present.
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl SecretMaterial {
    pub fn insert(&mut self, reference: &SecretKeyRef, value: Vec<u8>) {
        self.values
            .insert((reference.name.clone(), reference.key.clone()), value);
    }
}

impl SecretSource for SecretMaterial {
    fn secret(&self, reference: &SecretKeyRef) -> Result<Vec<u8>, String> {
        self.values
            .get(&(reference.name.clone(), reference.key.clone()))
            .cloned()
            .ok_or_else(|| format!("Secret {} has no key {:?}", reference.name, reference.key))
    }
}

/// One DNS provider, as embedded in an Issuer or a DNSPublisher: exactly one field names the kind (a struct of
/// options rather than an enum, as Kubernetes CRDs and cert-manager's solvers spell it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfc2136: Option<Rfc2136Config>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub powerdns: Option<PowerDnsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudflare: Option<CloudflareConfig>,
}

/// Cloudflare API v4 with a scoped API token (permissions Zone:Read and DNS:Edit).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudflareConfig {
    pub api_token_secret_ref: SecretKeyRef,
    /// API root; defaults to `https://api.cloudflare.com/client/v4`.
    #[serde(default)]
    pub base_url: Option<String>,
}

/// The PowerDNS Authoritative HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PowerDnsConfig {
    /// The webserver URL, e.g. `http://pdns.dns.svc:8081`.
    pub url: String,
    /// The API's server id (default `localhost`).
    #[serde(default)]
    pub server_id: Option<String>,
    pub api_key_secret_ref: SecretKeyRef,
}

/// RFC 2136 dynamic updates signed with TSIG.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rfc2136Config {
    /// The primary server, `host-ip:port` (port 53 if omitted).
    pub nameserver: String,
    /// The zone to update; discovered with an SOA query when omitted.
    #[serde(default)]
    pub zone: Option<String>,
    pub tsig_key_name: String,
    #[serde(default = "default_algorithm")]
    pub tsig_algorithm: TsigAlgorithmName,
    /// The base64 TSIG secret.
    pub tsig_secret_ref: SecretKeyRef,
    /// Per-request timeout in seconds (default 5).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

fn default_algorithm() -> TsigAlgorithmName {
    TsigAlgorithmName::HmacSha256
}

impl ProviderConfig {
    /// Every Secret key the provider reads (the translation resolves exactly these).
    pub fn secret_refs(&self) -> Vec<SecretKeyRef> {
        let mut refs = Vec::new();
        if let Some(c) = &self.rfc2136 {
            refs.push(c.tsig_secret_ref.clone());
        }
        if let Some(c) = &self.powerdns {
            refs.push(c.api_key_secret_ref.clone());
        }
        if let Some(c) = &self.cloudflare {
            refs.push(c.api_token_secret_ref.clone());
        }
        refs
    }

    /// The provider in a few words (`rfc2136 192.0.2.53:53`), without building it, for
    /// `torhaus check` and status.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.rfc2136 {
            parts.push(format!("rfc2136 {}", c.nameserver));
        }
        if let Some(c) = &self.powerdns {
            parts.push(format!("powerdns {}", c.url));
        }
        if self.cloudflare.is_some() {
            parts.push("cloudflare".to_owned());
        }
        if parts.is_empty() {
            "no provider".to_owned()
        } else {
            parts.join(" and ")
        }
    }

    /// Builds the runtime provider, resolving credentials through `secrets`. Errors name the
    /// field (`rfc2136.tsigSecretRef`, ...).
    pub fn build(&self, secrets: &dyn SecretSource) -> Result<Arc<dyn DnsProvider>, DnsError> {
        let configured = [
            self.rfc2136.is_some().then_some("rfc2136"),
            self.powerdns.is_some().then_some("powerdns"),
            self.cloudflare.is_some().then_some("cloudflare"),
        ];
        let configured: Vec<&str> = configured.into_iter().flatten().collect();
        if configured.len() > 1 {
            return Err(DnsError::config(
                "dns",
                format!(
                    "configure exactly one provider (found {})",
                    configured.join(" and ")
                ),
            ));
        }
        if let Some(config) = &self.cloudflare {
            let token = secrets
                .secret(&config.api_token_secret_ref)
                .map_err(|e| DnsError::config("cloudflare.apiTokenSecretRef", e))?;
            let token = String::from_utf8(token).map_err(|_| {
                DnsError::config("cloudflare.apiTokenSecretRef", "the token is not UTF-8")
            })?;
            return Ok(Arc::new(crate::cloudflare::CloudflareProvider::new(
                config.base_url.as_deref(),
                &token,
            )?));
        }
        match (&self.rfc2136, &self.powerdns) {
            (None, None) => Err(DnsError::config(
                "dns",
                "no provider configured (one of rfc2136, powerdns, cloudflare)",
            )),
            (None, Some(config)) => {
                let key = secrets
                    .secret(&config.api_key_secret_ref)
                    .map_err(|e| DnsError::config("powerdns.apiKeySecretRef", e))?;
                let key = String::from_utf8(key).map_err(|_| {
                    DnsError::config("powerdns.apiKeySecretRef", "the API key is not UTF-8")
                })?;
                Ok(Arc::new(crate::powerdns::PowerDnsProvider::new(
                    &config.url,
                    config.server_id.as_deref().unwrap_or("localhost"),
                    key.trim(),
                )?))
            }
            (Some(config), _) => {
                let nameserver = parse_server(&config.nameserver).ok_or_else(|| {
                    DnsError::config(
                        "rfc2136.nameserver",
                        format!(
                            "{:?} is not an IP address with optional :port",
                            config.nameserver
                        ),
                    )
                })?;
                let raw = secrets
                    .secret(&config.tsig_secret_ref)
                    .map_err(|e| DnsError::config("rfc2136.tsigSecretRef", e))?;
                let text = String::from_utf8_lossy(&raw);
                use base64::Engine as _;
                let secret = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|e| {
                        DnsError::config(
                            "rfc2136.tsigSecretRef",
                            format!(
                                "secret {}/{} is not base64: {e}",
                                config.tsig_secret_ref.name, config.tsig_secret_ref.key
                            ),
                        )
                    })?;
                let timeout = Duration::from_secs(config.timeout_seconds.unwrap_or(5).max(1));
                Ok(Arc::new(Rfc2136Provider::new(
                    nameserver,
                    config.zone.as_deref(),
                    Some(TsigKey {
                        name: config.tsig_key_name.clone(),
                        algorithm: config.tsig_algorithm,
                        secret,
                    }),
                    timeout,
                )?))
            }
        }
    }
}

fn parse_server(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Secrets;
    impl SecretSource for Secrets {
        fn secret(&self, reference: &SecretKeyRef) -> Result<Vec<u8>, String> {
            match (reference.name.as_str(), reference.key.as_str()) {
                ("tsig", "secret") => Ok(b"c2VjcmV0\n".to_vec()),
                ("tsig", "garbage") => Ok(b"not base64!".to_vec()),
                (name, key) => Err(format!("secret {name} has no key {key}")),
            }
        }
    }

    fn parse(yaml: &str) -> Result<ProviderConfig, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    #[test]
    fn rfc2136_config_parses_and_builds() -> anyhow::Result<()> {
        let config = parse(
            "rfc2136:\n  nameserver: 127.0.0.1\n  zone: example.com\n  tsigKeyName: acme\n  \
             tsigSecretRef: {name: tsig, key: secret}\n",
        )?;
        let inner = config
            .rfc2136
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no rfc2136"))?;
        assert_eq!(inner.tsig_algorithm, TsigAlgorithmName::HmacSha256);
        let provider = config.build(&Secrets)?;
        assert_eq!(provider.describe(), "rfc2136 127.0.0.1:53");
        Ok(())
    }

    #[test]
    fn powerdns_config_builds_and_two_providers_are_refused() -> anyhow::Result<()> {
        let config = parse(
            "powerdns:\n  url: http://127.0.0.1:8081\n  apiKeySecretRef: {name: tsig, key: secret}\n",
        )?;
        assert_eq!(
            config.build(&Secrets)?.describe(),
            "powerdns http://127.0.0.1:8081"
        );
        let bad_url =
            parse("powerdns:\n  url: pdns:8081\n  apiKeySecretRef: {name: tsig, key: secret}\n")?;
        let error = bad_url
            .build(&Secrets)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("powerdns.url"), "{error}");
        let both = parse(
            "powerdns:\n  url: http://x\n  apiKeySecretRef: {name: tsig, key: secret}\n\
             rfc2136:\n  nameserver: 127.0.0.1\n  tsigKeyName: k\n  tsigSecretRef: {name: tsig, key: secret}\n",
        )?;
        let error = both
            .build(&Secrets)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("exactly one provider"), "{error}");
        let cloudflare = parse("cloudflare:\n  apiTokenSecretRef: {name: tsig, key: secret}\n")?;
        assert_eq!(cloudflare.build(&Secrets)?.describe(), "cloudflare");
        Ok(())
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected() {
        let typo = parse(
            "rfc2136:\n  nameserver: 127.0.0.1\n  tsigKeyNam: acme\n  tsigSecretRef: {name: tsig, key: secret}\n",
        );
        assert!(typo.is_err_and(|e| e.to_string().contains("tsigKeyNam")));
        assert!(parse("route53: {}\n").is_err());
        let empty = parse("{}\n").map(|c| c.build(&Secrets).err().map(|e| e.to_string()));
        assert!(matches!(empty, Ok(Some(e)) if e.contains("no provider configured")));
    }

    #[test]
    fn bad_values_name_the_field() -> anyhow::Result<()> {
        let bad_server = parse(
            "rfc2136:\n  nameserver: dns.example.com\n  tsigKeyName: k\n  tsigSecretRef: {name: tsig, key: secret}\n",
        )?;
        let error = bad_server
            .build(&Secrets)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("rfc2136.nameserver"), "{error}");
        let missing = parse(
            "rfc2136:\n  nameserver: 127.0.0.1:5353\n  tsigKeyName: k\n  tsigSecretRef: {name: tsig, key: nope}\n",
        )?;
        let error = missing
            .build(&Secrets)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("rfc2136.tsigSecretRef") && error.contains("no key nope"),
            "{error}"
        );
        let garbage = parse(
            "rfc2136:\n  nameserver: 127.0.0.1:5353\n  tsigKeyName: k\n  tsigSecretRef: {name: tsig, key: garbage}\n",
        )?;
        let error = garbage
            .build(&Secrets)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("not base64"), "{error}");
        Ok(())
    }
}
