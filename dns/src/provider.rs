//! The `DnsProvider` trait and the provider-neutral record types it speaks.

use std::fmt;
use std::net::IpAddr;

use async_trait::async_trait;

use crate::DnsError;

/// A zone as a provider knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Zone {
    /// Normalized zone apex, e.g. `example.com`.
    pub name: String,
    /// The provider's handle for the zone (Cloudflare's zone id, PowerDNS's zone id, or the
    /// apex for RFC 2136).
    pub id: String,
}

/// Record types torhaus reads and writes. Anything else is listed as `Other` and never touched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordType {
    A,
    Aaaa,
    Txt,
    Cname,
    Other(String),
}

impl RecordType {
    pub fn parse(text: &str) -> Self {
        match text.to_ascii_uppercase().as_str() {
            "A" => Self::A,
            "AAAA" => Self::Aaaa,
            "TXT" => Self::Txt,
            "CNAME" => Self::Cname,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::A => "A",
            Self::Aaaa => "AAAA",
            Self::Txt => "TXT",
            Self::Cname => "CNAME",
            Self::Other(other) => other,
        }
    }

    /// The address record type for an address.
    pub fn for_address(address: &IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => Self::A,
            IpAddr::V6(_) => Self::Aaaa,
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// All records of one name and type. Values are in presentation form without quoting: an
/// address for A/AAAA, the (joined) text for TXT, the target name for CNAME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    /// Normalized owner name.
    pub name: String,
    pub rtype: RecordType,
    pub ttl: u32,
    pub values: Vec<String>,
}

impl RecordSet {
    /// Adds one record to the set of its name and type in `sets` (a new set when there is
    /// none; a value already there is not repeated): for providers that list records one by one.
    pub fn collect_into(
        sets: &mut Vec<RecordSet>,
        name: String,
        rtype: RecordType,
        ttl: u32,
        value: String,
    ) {
        match sets
            .iter_mut()
            .find(|set| set.name == name && set.rtype == rtype)
        {
            Some(set) => {
                if !set.values.contains(&value) {
                    set.values.push(value);
                }
            }
            None => sets.push(RecordSet {
                name,
                rtype,
                ttl,
                values: vec![value],
            }),
        }
    }

    /// Values sorted and deduplicated, for comparisons that ignore order.
    pub fn value_set(&self) -> std::collections::BTreeSet<&str> {
        self.values.iter().map(String::as_str).collect()
    }
}

/// A DNS service torhaus can change. Implementations must be safe to call concurrently: the
/// ACME issuer presents apex and wildcard values for the same name at once.
#[async_trait]
pub trait DnsProvider: Send + Sync + fmt::Debug {
    /// A short label for logs and errors (`rfc2136 127.0.0.1:53`, `powerdns`, `cloudflare`).
    fn describe(&self) -> String;

    /// The zone that contains `name` (the longest match the provider manages).
    async fn find_zone(&self, name: &str) -> Result<Zone, DnsError>;

    /// Every record set in `zone`.
    async fn list_records(&self, zone: &Zone) -> Result<Vec<RecordSet>, DnsError>;

    /// Adds `value` to the TXT set at `name`, keeping values already there (append semantics:
    /// an apex and a wildcard challenge share one name).
    async fn add_txt(&self, zone: &Zone, name: &str, value: &str, ttl: u32)
    -> Result<(), DnsError>;

    /// Removes exactly `value` from the TXT set at `name`; other values stay. Removing a value
    /// that is absent succeeds.
    async fn remove_txt(&self, zone: &Zone, name: &str, value: &str) -> Result<(), DnsError>;

    /// Replaces the whole set of `rrset.name`/`rrset.rtype` with `rrset` (A, AAAA or TXT).
    async fn upsert_rrset(&self, zone: &Zone, rrset: &RecordSet) -> Result<(), DnsError>;

    /// Deletes the whole set of `name`/`rtype`; absent sets are not an error.
    async fn delete_rrset(
        &self,
        zone: &Zone,
        name: &str,
        rtype: &RecordType,
    ) -> Result<(), DnsError>;
}

/// Checks that `name` is a valid name inside `zone` and returns it normalized.
pub(crate) fn name_in_zone(provider: &str, zone: &Zone, name: &str) -> Result<String, DnsError> {
    let name = crate::name::normalize(name)?;
    if !crate::name::is_within(&name, &zone.name) {
        return Err(DnsError::Rejected {
            provider: provider.to_owned(),
            name,
            detail: format!("not inside zone {}", zone.name),
        });
    }
    Ok(name)
}

/// Checks that a record set holds only values its type allows (addresses for A/AAAA).
pub(crate) fn check_rrset(provider: &str, rrset: &RecordSet) -> Result<(), DnsError> {
    let bad = |detail: String| DnsError::Rejected {
        provider: provider.to_owned(),
        name: rrset.name.clone(),
        detail,
    };
    for value in &rrset.values {
        match rrset.rtype {
            RecordType::A => {
                value
                    .parse::<std::net::Ipv4Addr>()
                    .map_err(|_| bad(format!("A value {value:?} is not an IPv4 address")))?;
            }
            RecordType::Aaaa => {
                value
                    .parse::<std::net::Ipv6Addr>()
                    .map_err(|_| bad(format!("AAAA value {value:?} is not an IPv6 address")))?;
            }
            RecordType::Txt => {}
            ref other => return Err(bad(format!("record type {other} cannot be written"))),
        }
    }
    if rrset.values.is_empty() {
        return Err(bad("a record set needs at least one value".to_owned()));
    }
    Ok(())
}
