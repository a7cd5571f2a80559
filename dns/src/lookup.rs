//! Read-only DNS lookups for DNS-01 (hickory-resolver): `_acme-challenge` CNAME following, zone
//! discovery by SOA, and the propagation check that asks every authoritative server of the zone
//! directly (recursion off, no cache) until a TXT value is visible or a deadline passes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::{DnsError as WireError, NetError};
use hickory_proto::rr::{RData, RecordType as WireType};
use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};

use crate::DnsError;

/// Where lookups go.
#[derive(Debug, Clone)]
pub struct LookupConfig {
    /// Recursive (or authoritative) servers used to follow CNAMEs and find the zone and its NS
    /// set. Empty: the system's resolv.conf.
    pub resolvers: Vec<SocketAddr>,
    /// Port of the authoritative servers (53 in production; tests run them elsewhere).
    pub authoritative_port: u16,
    /// Per-query timeout.
    pub timeout: Duration,
}

impl Default for LookupConfig {
    fn default() -> Self {
        Self {
            resolvers: Vec::new(),
            authoritative_port: 53,
            timeout: Duration::from_secs(3),
        }
    }
}

/// Lookups over a fresh, cache-less resolver.
#[derive(Debug, Clone)]
pub struct Lookup {
    config: LookupConfig,
}

const WHO: &str = "lookup";

fn wire_failure(what: &str, error: NetError) -> DnsError {
    DnsError::Unreachable {
        provider: WHO.to_owned(),
        endpoint: what.to_owned(),
        detail: error.to_string(),
    }
}

/// True when the error only says "no such records" (NXDOMAIN or NODATA).
fn no_records(error: &NetError) -> bool {
    matches!(error, NetError::Dns(WireError::NoRecordsFound(_)))
}

impl Lookup {
    pub fn new(config: LookupConfig) -> Self {
        Self { config }
    }

    fn resolver(
        &self,
        servers: &[SocketAddr],
        recursion: bool,
    ) -> Result<Resolver<TokioRuntimeProvider>, DnsError> {
        let mut builder = if servers.is_empty() {
            Resolver::builder_tokio().map_err(|e| wire_failure("system resolver", e))?
        } else {
            let name_servers = servers
                .iter()
                .map(|addr| {
                    let mut connection = ConnectionConfig::udp();
                    connection.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![connection])
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options = builder.options_mut();
        // A cached or recursive answer could claim propagation that has not happened.
        options.cache_size = 0;
        options.recursion_desired = recursion;
        options.timeout = self.config.timeout;
        options.attempts = 1;
        options.ndots = 0;
        builder
            .build()
            .map_err(|e| wire_failure("resolver setup", e))
    }

    fn discovery(&self) -> Result<Resolver<TokioRuntimeProvider>, DnsError> {
        self.resolver(&self.config.resolvers, true)
    }

    /// Follows CNAMEs from `name` (as acme-dns delegation uses them), at most 8 hops; returns
    /// the final name, where the TXT record must be written.
    pub async fn follow_cname(&self, name: &str) -> Result<String, DnsError> {
        let resolver = self.discovery()?;
        let mut current = crate::name::normalize(name)?;
        let mut seen = vec![current.clone()];
        for _ in 0..8 {
            let target = match resolver
                .lookup(format!("{current}."), WireType::CNAME)
                .await
            {
                Ok(lookup) => lookup.answers().iter().find_map(|r| match &r.data {
                    RData::CNAME(target) => Some(target.0.to_ascii()),
                    _ => None,
                }),
                Err(e) if no_records(&e) => None,
                Err(e) => return Err(wire_failure(&format!("CNAME of {current}"), e)),
            };
            let Some(target) = target else {
                return Ok(current);
            };
            let target = crate::name::normalize(&target)?;
            if seen.contains(&target) {
                return Err(DnsError::Protocol {
                    provider: WHO.to_owned(),
                    detail: format!("CNAME loop at {target} (from {name})"),
                });
            }
            seen.push(target.clone());
            current = target;
        }
        Err(DnsError::Protocol {
            provider: WHO.to_owned(),
            detail: format!("more than 8 CNAMEs from {name}"),
        })
    }

    /// The apex of the zone holding `name`, from the SOA in the answer or the negative answer.
    pub async fn zone_of(&self, name: &str) -> Result<String, DnsError> {
        let name = crate::name::normalize(name)?;
        let resolver = self.discovery()?;
        let owner = match resolver.lookup(format!("{name}."), WireType::SOA).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .chain(lookup.authorities())
                .find(|r| r.record_type() == WireType::SOA)
                .map(|r| r.name.to_ascii()),
            Err(NetError::Dns(WireError::NoRecordsFound(records))) => {
                records.soa.map(|soa| soa.name.to_ascii())
            }
            Err(e) => return Err(wire_failure(&format!("SOA of {name}"), e)),
        };
        match owner {
            Some(owner) => crate::name::normalize(&owner),
            None => Err(DnsError::ZoneNotFound {
                provider: WHO.to_owned(),
                name,
            }),
        }
    }

    /// Addresses of every NS of `zone`, on the authoritative port.
    pub async fn authoritative_servers(&self, zone: &str) -> Result<Vec<SocketAddr>, DnsError> {
        let resolver = self.discovery()?;
        let ns = resolver
            .lookup(format!("{zone}."), WireType::NS)
            .await
            .map_err(|e| wire_failure(&format!("NS of {zone}"), e))?;
        let mut servers = Vec::new();
        for host in ns.answers().iter().filter_map(|r| match &r.data {
            RData::NS(ns) => Some(ns.0.to_ascii()),
            _ => None,
        }) {
            for rtype in [WireType::A, WireType::AAAA] {
                match resolver.lookup(host.as_str(), rtype).await {
                    Ok(lookup) => {
                        servers.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                            RData::A(a) => {
                                Some(SocketAddr::new(a.0.into(), self.config.authoritative_port))
                            }
                            RData::AAAA(a) => {
                                Some(SocketAddr::new(a.0.into(), self.config.authoritative_port))
                            }
                            _ => None,
                        }))
                    }
                    Err(e) if no_records(&e) => {}
                    Err(e) => return Err(wire_failure(&format!("address of {host}"), e)),
                }
            }
        }
        servers.sort();
        servers.dedup();
        if servers.is_empty() {
            return Err(DnsError::Protocol {
                provider: WHO.to_owned(),
                detail: format!("no address found for any nameserver of {zone}"),
            });
        }
        Ok(servers)
    }

    /// TXT values at `name` as `server` answers them itself (recursion off).
    pub async fn txt_on(&self, server: SocketAddr, name: &str) -> Result<Vec<String>, DnsError> {
        let resolver = self.resolver(&[server], false)?;
        match resolver.lookup(format!("{name}."), WireType::TXT).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part).into_owned())
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if no_records(&e) => Ok(Vec::new()),
            Err(e) => Err(wire_failure(&server.to_string(), e)),
        }
    }

    /// Waits until every authoritative server of `name`'s zone answers `value` at `name`,
    /// polling each pending server every `interval`, failing after `timeout`.
    pub async fn wait_for_txt(
        &self,
        name: &str,
        value: &str,
        timeout: Duration,
        interval: Duration,
    ) -> Result<(), DnsError> {
        let name = crate::name::normalize(name)?;
        let started = Instant::now();
        let zone = self.zone_of(&name).await?;
        let mut pending = self.authoritative_servers(&zone).await?;
        loop {
            let mut still = Vec::new();
            for server in pending {
                // A server that cannot be asked counts as not yet propagated.
                match self.txt_on(server, &name).await {
                    Ok(values) if values.iter().any(|v| v == value) => {}
                    _ => still.push(server),
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(DnsError::PropagationTimeout {
                    name,
                    value: value.to_owned(),
                    pending: pending.iter().map(ToString::to_string).collect(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(interval).await;
        }
    }
}
