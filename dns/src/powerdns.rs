//! The PowerDNS Authoritative HTTP API: zones by name, rrsets PATCHed with REPLACE/DELETE. The
//! API replaces a whole RRset, so TXT append/remove read the set, merge, and write it back under
//! a lock (apex and wildcard challenges for one name are presented concurrently).

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use crate::provider::{check_rrset, name_in_zone};
use crate::{DnsError, DnsProvider, RecordSet, RecordType, Zone};

const PROVIDER: &str = "powerdns";

/// A PowerDNS server's API.
pub struct PowerDnsProvider {
    base: String,
    server_id: String,
    api_key: String,
    client: reqwest::Client,
    /// Serializes read-merge-write of TXT sets within this process.
    merge: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PowerDnsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerDnsProvider")
            .field("base", &self.base)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ApiZone {
    id: String,
    name: String,
    #[serde(default)]
    rrsets: Vec<ApiRrset>,
}

#[derive(Deserialize)]
struct ApiRrset {
    name: String,
    #[serde(rename = "type")]
    rtype: String,
    ttl: u32,
    records: Vec<ApiRecord>,
}

#[derive(Deserialize)]
struct ApiRecord {
    content: String,
    #[serde(default)]
    disabled: bool,
}

/// TXT content as PowerDNS stores it: one or more quoted strings with `\"` and `\\` escapes.
fn unquote_txt(content: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    let mut chars = content.chars();
    while let Some(c) = chars.next() {
        match (c, inside) {
            ('"', _) => inside = !inside,
            ('\\', true) => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            (c, true) => out.push(c),
            (_, false) => {}
        }
    }
    out
}

fn quote_txt(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn content_of(rtype: &RecordType, value: &str) -> String {
    match rtype {
        RecordType::Txt => quote_txt(value),
        _ => value.to_owned(),
    }
}

impl PowerDnsProvider {
    /// `base` is the webserver URL (`http://pdns:8081`), `server_id` usually `localhost`.
    pub fn new(base: &str, server_id: &str, api_key: &str) -> Result<Self, DnsError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(DnsError::config(
                "powerdns.url",
                format!("{base:?} is not an http(s) URL"),
            ));
        }
        if api_key.is_empty() {
            return Err(DnsError::config(
                "powerdns.apiKeySecretRef",
                "the API key is empty",
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| DnsError::config("powerdns.url", e.to_string()))?;
        Ok(Self {
            base,
            server_id: server_id.to_owned(),
            api_key: api_key.to_owned(),
            client,
            merge: tokio::sync::Mutex::new(()),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/servers/{}{path}", self.base, self.server_id)
    }

    async fn call(
        &self,
        request: reqwest::RequestBuilder,
        subject: &str,
    ) -> Result<Option<bytes_body::Body>, DnsError> {
        let response = request
            .header("X-API-Key", &self.api_key)
            .send()
            .await
            .map_err(|e| DnsError::Unreachable {
                provider: PROVIDER.to_owned(),
                endpoint: self.base.clone(),
                detail: e.to_string(),
            })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(Some(bytes_body::Body(body)));
        }
        let detail = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| body.trim().to_owned());
        Err(match status.as_u16() {
            401 | 403 => DnsError::Unauthorized {
                provider: PROVIDER.to_owned(),
                detail: format!("HTTP {status}: {detail} (check the API key)"),
            },
            404 => return Ok(None),
            500..=599 => DnsError::Unreachable {
                provider: PROVIDER.to_owned(),
                endpoint: self.base.clone(),
                detail: format!("HTTP {status}: {detail}"),
            },
            _ => DnsError::Rejected {
                provider: PROVIDER.to_owned(),
                name: subject.to_owned(),
                detail: format!("HTTP {status}: {detail}"),
            },
        })
    }

    async fn zone_data(&self, zone: &Zone) -> Result<ApiZone, DnsError> {
        let body = self
            .call(
                self.client.get(self.url(&format!("/zones/{}", zone.id))),
                &zone.name,
            )
            .await?
            .ok_or_else(|| DnsError::ZoneNotFound {
                provider: PROVIDER.to_owned(),
                name: zone.name.clone(),
            })?;
        body.json()
    }

    async fn patch(
        &self,
        zone: &Zone,
        name: &str,
        rrset: serde_json::Value,
    ) -> Result<(), DnsError> {
        let request = self
            .client
            .patch(self.url(&format!("/zones/{}", zone.id)))
            .json(&json!({ "rrsets": [rrset] }));
        self.call(request, name)
            .await?
            .ok_or_else(|| DnsError::ZoneNotFound {
                provider: PROVIDER.to_owned(),
                name: zone.name.clone(),
            })?;
        Ok(())
    }

    fn replace(name: &str, rtype: &RecordType, ttl: u32, values: &[String]) -> serde_json::Value {
        json!({
            "name": format!("{name}."),
            "type": rtype.as_str(),
            "ttl": ttl,
            "changetype": "REPLACE",
            "records": values.iter().map(|v| json!({"content": content_of(rtype, v), "disabled": false})).collect::<Vec<_>>(),
        })
    }

    fn delete(name: &str, rtype: &RecordType) -> serde_json::Value {
        json!({ "name": format!("{name}."), "type": rtype.as_str(), "changetype": "DELETE" })
    }

    async fn current(
        &self,
        zone: &Zone,
        name: &str,
        rtype: &RecordType,
    ) -> Result<Option<RecordSet>, DnsError> {
        Ok(self
            .list_records(zone)
            .await?
            .into_iter()
            .find(|s| s.name == name && &s.rtype == rtype))
    }
}

/// A successful response body.
mod bytes_body {
    pub struct Body(pub String);
    impl Body {
        pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::DnsError> {
            serde_json::from_str(&self.0).map_err(|e| crate::DnsError::Protocol {
                provider: super::PROVIDER.to_owned(),
                detail: format!("cannot parse the API answer: {e}"),
            })
        }
    }
}

#[async_trait]
impl DnsProvider for PowerDnsProvider {
    fn describe(&self) -> String {
        format!("{PROVIDER} {}", self.base)
    }

    async fn find_zone(&self, name: &str) -> Result<Zone, DnsError> {
        let name = crate::name::normalize(name)?;
        for candidate in crate::name::suffixes(&name) {
            let request = self
                .client
                .get(self.url("/zones"))
                .query(&[("zone", format!("{candidate}."))]);
            let Some(body) = self.call(request, candidate).await? else {
                continue;
            };
            let zones: Vec<ApiZone> = body.json()?;
            if let Some(zone) = zones.into_iter().next() {
                return Ok(Zone {
                    name: crate::name::normalize(&zone.name)?,
                    id: zone.id,
                });
            }
        }
        Err(DnsError::ZoneNotFound {
            provider: self.describe(),
            name,
        })
    }

    async fn list_records(&self, zone: &Zone) -> Result<Vec<RecordSet>, DnsError> {
        let data = self.zone_data(zone).await?;
        let mut sets = Vec::new();
        for rrset in data.rrsets {
            let rtype = RecordType::parse(&rrset.rtype);
            let values = rrset
                .records
                .iter()
                .filter(|r| !r.disabled)
                .map(|r| match rtype {
                    RecordType::Txt => unquote_txt(&r.content),
                    RecordType::Cname => r.content.trim_end_matches('.').to_ascii_lowercase(),
                    _ => r.content.clone(),
                })
                .collect::<Vec<_>>();
            if values.is_empty() {
                continue;
            }
            sets.push(RecordSet {
                name: crate::name::normalize(&rrset.name)?,
                rtype,
                ttl: rrset.ttl,
                values,
            });
        }
        Ok(sets)
    }

    async fn add_txt(
        &self,
        zone: &Zone,
        name: &str,
        value: &str,
        ttl: u32,
    ) -> Result<(), DnsError> {
        let name = name_in_zone(&self.describe(), zone, name)?;
        let _guard = self.merge.lock().await;
        let mut values = self
            .current(zone, &name, &RecordType::Txt)
            .await?
            .map(|s| s.values)
            .unwrap_or_default();
        if values.iter().any(|v| v == value) {
            return Ok(());
        }
        values.push(value.to_owned());
        self.patch(
            zone,
            &name,
            Self::replace(&name, &RecordType::Txt, ttl, &values),
        )
        .await
    }

    async fn remove_txt(&self, zone: &Zone, name: &str, value: &str) -> Result<(), DnsError> {
        let name = name_in_zone(&self.describe(), zone, name)?;
        let _guard = self.merge.lock().await;
        let Some(current) = self.current(zone, &name, &RecordType::Txt).await? else {
            return Ok(());
        };
        if !current.values.iter().any(|v| v == value) {
            return Ok(());
        }
        let rest: Vec<String> = current.values.into_iter().filter(|v| v != value).collect();
        let change = if rest.is_empty() {
            Self::delete(&name, &RecordType::Txt)
        } else {
            Self::replace(&name, &RecordType::Txt, current.ttl, &rest)
        };
        self.patch(zone, &name, change).await
    }

    async fn upsert_rrset(&self, zone: &Zone, rrset: &RecordSet) -> Result<(), DnsError> {
        let name = name_in_zone(&self.describe(), zone, &rrset.name)?;
        check_rrset(&self.describe(), rrset)?;
        self.patch(
            zone,
            &name,
            Self::replace(&name, &rrset.rtype, rrset.ttl, &rrset.values),
        )
        .await
    }

    async fn delete_rrset(
        &self,
        zone: &Zone,
        name: &str,
        rtype: &RecordType,
    ) -> Result<(), DnsError> {
        let name = name_in_zone(&self.describe(), zone, name)?;
        self.patch(zone, &name, Self::delete(&name, rtype)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_content_round_trips_through_quoting() {
        for value in ["plain", "with \"quotes\"", "back\\slash", ""] {
            assert_eq!(unquote_txt(&quote_txt(value)), value);
        }
        // PowerDNS may split long values into several strings.
        assert_eq!(unquote_txt("\"abc\" \"def\""), "abcdef");
    }
}
