//! Cloudflare API v4 with a scoped API token (Zone:Read, DNS:Edit): zones looked up by name,
//! DNS records listed page by page, created and deleted one by one. Each TXT value is its own
//! record at Cloudflare, so append and delete-by-value map directly.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use crate::provider::{check_rrset, name_in_zone};
use crate::{DnsError, DnsProvider, RecordSet, RecordType, Zone};

const PROVIDER: &str = "cloudflare";
/// Cloudflare's documented API root.
pub const DEFAULT_BASE_URL: &str = "https://api.cloudflare.com/client/v4";
const PER_PAGE: u32 = 100;
/// "An identical record already exists."
const IDENTICAL_RECORD: i64 = 81058;

pub struct CloudflareProvider {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for CloudflareProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudflareProvider")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The v4 envelope every answer comes in.
#[derive(Deserialize)]
struct Envelope<T> {
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    result: Option<T>,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

#[derive(Deserialize)]
struct ApiMessage {
    code: i64,
    message: String,
}

#[derive(Deserialize)]
struct ResultInfo {
    page: u32,
    total_pages: u32,
}

#[derive(Deserialize)]
struct ApiZone {
    id: String,
    name: String,
}

#[derive(Deserialize, Clone)]
struct ApiRecord {
    id: String,
    #[serde(rename = "type")]
    rtype: String,
    name: String,
    content: String,
    ttl: u32,
}

/// Cloudflare accepts TXT content quoted or not and may return either; compare unquoted.
fn txt_value(content: &str) -> String {
    match content.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
        Some(inner) if !inner.contains('"') => inner.to_owned(),
        _ => content.to_owned(),
    }
}

impl CloudflareProvider {
    pub fn new(base: Option<&str>, token: &str) -> Result<Self, DnsError> {
        let base = base
            .unwrap_or(DEFAULT_BASE_URL)
            .trim_end_matches('/')
            .to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(DnsError::config(
                "cloudflare.baseUrl",
                format!("{base:?} is not an http(s) URL"),
            ));
        }
        if token.trim().is_empty() {
            return Err(DnsError::config(
                "cloudflare.apiTokenSecretRef",
                "the API token is empty",
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|e| DnsError::config("cloudflare.baseUrl", e.to_string()))?;
        Ok(Self {
            base,
            token: token.trim().to_owned(),
            client,
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        subject: &str,
    ) -> Result<Envelope<T>, DnsError> {
        let response =
            request
                .bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| DnsError::Unreachable {
                    provider: PROVIDER.to_owned(),
                    endpoint: self.base.clone(),
                    detail: e.to_string(),
                })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let envelope: Option<Envelope<T>> = serde_json::from_str(&body).ok();
        let errors = envelope
            .as_ref()
            .map(|e| {
                e.errors
                    .iter()
                    .map(|m| format!("{} ({})", m.message, m.code))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_else(|| body.chars().take(200).collect());
        match (status.as_u16(), envelope) {
            (401 | 403, _) => Err(DnsError::Unauthorized {
                provider: PROVIDER.to_owned(),
                detail: format!("HTTP {status}: {errors} (the token needs Zone:Read and DNS:Edit)"),
            }),
            (429 | 500..=599, _) => Err(DnsError::Unreachable {
                provider: PROVIDER.to_owned(),
                endpoint: self.base.clone(),
                detail: format!("HTTP {status}: {errors}"),
            }),
            (_, Some(envelope)) if envelope.success && status.is_success() => Ok(envelope),
            (_, Some(envelope)) => Err(DnsError::Rejected {
                provider: PROVIDER.to_owned(),
                name: subject.to_owned(),
                detail: format!(
                    "HTTP {status}: {errors}{}",
                    if envelope.errors.iter().any(|e| e.code == IDENTICAL_RECORD) {
                        " [identical]"
                    } else {
                        ""
                    }
                ),
            }),
            (_, None) => Err(DnsError::Protocol {
                provider: PROVIDER.to_owned(),
                detail: format!("HTTP {status}: not a v4 envelope: {errors}"),
            }),
        }
    }

    /// Every record matching `filters`, following `result_info` pages.
    async fn records(
        &self,
        zone: &Zone,
        filters: &[(&str, String)],
    ) -> Result<Vec<ApiRecord>, DnsError> {
        let mut all = Vec::new();
        let mut page = 1;
        loop {
            let mut query: Vec<(&str, String)> = filters.to_vec();
            query.push(("page", page.to_string()));
            query.push(("per_page", PER_PAGE.to_string()));
            let url = format!("{}/zones/{}/dns_records", self.base, zone.id);
            let envelope: Envelope<Vec<ApiRecord>> = self
                .call(self.client.get(url).query(&query), &zone.name)
                .await?;
            all.extend(envelope.result.unwrap_or_default());
            match envelope.result_info {
                Some(info) if info.page < info.total_pages => page = info.page + 1,
                _ => return Ok(all),
            }
        }
    }

    async fn create(
        &self,
        zone: &Zone,
        name: &str,
        rtype: &RecordType,
        content: &str,
        ttl: u32,
    ) -> Result<(), DnsError> {
        let url = format!("{}/zones/{}/dns_records", self.base, zone.id);
        let body = json!({ "type": rtype.as_str(), "name": name, "content": content, "ttl": ttl });
        match self
            .call::<serde_json::Value>(self.client.post(url).json(&body), name)
            .await
        {
            Ok(_) => Ok(()),
            // Present already: appending is idempotent.
            Err(DnsError::Rejected { detail, .. }) if detail.ends_with("[identical]") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, zone: &Zone, record: &ApiRecord) -> Result<(), DnsError> {
        let url = format!("{}/zones/{}/dns_records/{}", self.base, zone.id, record.id);
        self.call::<serde_json::Value>(self.client.delete(url), &record.name)
            .await
            .map(|_| ())
    }

    async fn set_records(
        &self,
        zone: &Zone,
        name: &str,
        rtype: &RecordType,
    ) -> Result<Vec<ApiRecord>, DnsError> {
        self.records(
            zone,
            &[
                ("type", rtype.as_str().to_owned()),
                ("name", name.to_owned()),
            ],
        )
        .await
    }
}

#[async_trait]
impl DnsProvider for CloudflareProvider {
    fn describe(&self) -> String {
        PROVIDER.to_owned()
    }

    async fn find_zone(&self, name: &str) -> Result<Zone, DnsError> {
        let name = crate::name::normalize(name)?;
        for candidate in crate::name::suffixes(&name) {
            let url = format!("{}/zones", self.base);
            let envelope: Envelope<Vec<ApiZone>> = self
                .call(
                    self.client.get(url).query(&[("name", candidate)]),
                    candidate,
                )
                .await?;
            if let Some(zone) = envelope.result.unwrap_or_default().into_iter().next() {
                return Ok(Zone {
                    name: crate::name::normalize(&zone.name)?,
                    id: zone.id,
                });
            }
        }
        Err(DnsError::ZoneNotFound {
            provider: PROVIDER.to_owned(),
            name,
        })
    }

    async fn list_records(&self, zone: &Zone) -> Result<Vec<RecordSet>, DnsError> {
        let mut sets: Vec<RecordSet> = Vec::new();
        for record in self.records(zone, &[]).await? {
            let rtype = RecordType::parse(&record.rtype);
            let value = match rtype {
                RecordType::Txt => txt_value(&record.content),
                _ => record.content.clone(),
            };
            let name = crate::name::normalize(&record.name)?;
            RecordSet::collect_into(&mut sets, name, rtype, record.ttl, value);
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
        let name = name_in_zone(PROVIDER, zone, name)?;
        let existing = self.set_records(zone, &name, &RecordType::Txt).await?;
        if existing.iter().any(|r| txt_value(&r.content) == value) {
            return Ok(());
        }
        self.create(zone, &name, &RecordType::Txt, value, ttl).await
    }

    async fn remove_txt(&self, zone: &Zone, name: &str, value: &str) -> Result<(), DnsError> {
        let name = name_in_zone(PROVIDER, zone, name)?;
        for record in self.set_records(zone, &name, &RecordType::Txt).await? {
            if txt_value(&record.content) == value {
                self.delete(zone, &record).await?;
            }
        }
        Ok(())
    }

    async fn upsert_rrset(&self, zone: &Zone, rrset: &RecordSet) -> Result<(), DnsError> {
        let name = name_in_zone(PROVIDER, zone, &rrset.name)?;
        check_rrset(PROVIDER, rrset)?;
        let existing = self.set_records(zone, &name, &rrset.rtype).await?;
        let value_of = |r: &ApiRecord| match rrset.rtype {
            RecordType::Txt => txt_value(&r.content),
            _ => r.content.clone(),
        };
        // Create or fix the desired values first so that the name never resolves to nothing.
        for value in &rrset.values {
            match existing.iter().find(|r| &value_of(r) == value) {
                Some(record) if record.ttl != rrset.ttl => {
                    let url = format!("{}/zones/{}/dns_records/{}", self.base, zone.id, record.id);
                    let body = json!({ "ttl": rrset.ttl });
                    self.call::<serde_json::Value>(self.client.patch(url).json(&body), &name)
                        .await?;
                }
                Some(_) => {}
                None => {
                    self.create(zone, &name, &rrset.rtype, value, rrset.ttl)
                        .await?
                }
            }
        }
        for record in &existing {
            if !rrset.values.contains(&value_of(record)) {
                self.delete(zone, record).await?;
            }
        }
        Ok(())
    }

    async fn delete_rrset(
        &self,
        zone: &Zone,
        name: &str,
        rtype: &RecordType,
    ) -> Result<(), DnsError> {
        let name = name_in_zone(PROVIDER, zone, name)?;
        for record in self.set_records(zone, &name, rtype).await? {
            self.delete(zone, &record).await?;
        }
        Ok(())
    }
}
