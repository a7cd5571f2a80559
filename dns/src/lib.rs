//! DNS providers behind one `DnsProvider` trait (RFC 2136 with TSIG, the PowerDNS HTTP API,
//! Cloudflare API v4), the DNS-01 helper the ACME issuer calls (CNAME following, zone discovery,
//! a propagation check against every authoritative server), and the records planner that
//! publishes A/AAAA records for served hostnames with TXT ownership markers, with the
//! `DNSPublisher` loop that runs it.
#![forbid(unsafe_code)]

pub mod challenge;
pub mod cloudflare;
pub mod config;
mod error;
pub mod lookup;
pub mod name;
pub mod powerdns;
mod provider;
pub mod publisher;
pub mod records;
pub mod rfc2136;

pub use challenge::{Dns01, PresentedTxt};
pub use config::{ProviderConfig, SecretKeyRef, SecretMaterial, SecretSource};
pub use error::DnsError;
pub use lookup::{Lookup, LookupConfig};
pub use provider::{DnsProvider, RecordSet, RecordType, Zone};
