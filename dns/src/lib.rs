//! DNS providers behind one `DnsProvider` trait. Today: RFC 2136 with TSIG (append,
//! delete-by-rdata, atomic record-set replace, AXFR listing), and
//! hickory-resolver lookups for DNS-01 (CNAME following, zone discovery, propagation check).
//! The records planner/applier publishes A/AAAA for served hostnames with TXT ownership
//! markers. PowerDNS and Cloudflare providers are not built yet (issue 4).
#![forbid(unsafe_code)]

pub mod challenge;
pub mod config;
mod error;
pub mod lookup;
pub mod name;
pub mod powerdns;
mod provider;
pub mod records;
pub mod rfc2136;

pub use challenge::{Dns01, PresentedTxt};
pub use config::{ProviderConfig, SecretKeyRef, SecretSource};
pub use error::DnsError;
pub use lookup::{Lookup, LookupConfig};
pub use provider::{DnsProvider, RecordSet, RecordType, Zone};
