//! The DNS-01 steps the ACME issuer calls: present a TXT value (after CNAME delegation and zone
//! lookup), wait until every authoritative server shows it, and clean up by value.

use std::sync::Arc;
use std::time::Duration;

use crate::{DnsError, DnsProvider, Lookup, Zone};

/// DNS-01 over one provider.
#[derive(Debug, Clone)]
pub struct Dns01 {
    provider: Arc<dyn DnsProvider>,
    lookup: Lookup,
    ttl: u32,
}

/// A TXT value that was presented, with what `cleanup` needs to remove exactly it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedTxt {
    /// The name the value was written at (after CNAME delegation).
    pub name: String,
    pub zone: Zone,
    pub value: String,
}

impl Dns01 {
    pub fn new(provider: Arc<dyn DnsProvider>, lookup: Lookup, ttl: u32) -> Self {
        Self {
            provider,
            lookup,
            ttl,
        }
    }

    /// Adds `value` for `identifier` (`example.com` or `*.example.com`) at its
    /// `_acme-challenge` name, following a CNAME delegation first. Values for the apex and the
    /// wildcard coexist.
    pub async fn present(&self, identifier: &str, value: &str) -> Result<PresentedTxt, DnsError> {
        let challenge = crate::name::challenge_name(identifier)?;
        let name = self.lookup.follow_cname(&challenge).await?;
        let zone = self.provider.find_zone(&name).await?;
        self.provider.add_txt(&zone, &name, value, self.ttl).await?;
        Ok(PresentedTxt {
            name,
            zone,
            value: value.to_owned(),
        })
    }

    /// Waits until every authoritative server of the zone answers the presented value.
    pub async fn wait_propagated(
        &self,
        presented: &PresentedTxt,
        timeout: Duration,
        interval: Duration,
    ) -> Result<(), DnsError> {
        self.lookup
            .wait_for_txt(&presented.name, &presented.value, timeout, interval)
            .await
    }

    /// Removes exactly the presented value; other values at the name stay.
    pub async fn cleanup(&self, presented: &PresentedTxt) -> Result<(), DnsError> {
        self.provider
            .remove_txt(&presented.zone, &presented.name, &presented.value)
            .await
    }
}
