//! DNS records for served hostnames (the external-dns role): which Gateways each `DNSPublisher`
//! covers, the hostnames their programmed listeners actually serve (the route and listener
//! hostname intersections the router uses), the addresses, and the publisher's settings with
//! its Secret bytes. Pure, like the rest of the translation; the records loop acts on it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use torhaus_dns::publisher::{Publisher, PublisherConfig};
use torhaus_model::{DataPlaneConfig, HostMatch, ObjectName};

use super::certificates::resolve_secrets;
use super::refs::LabelSelector;
use crate::report::{Condition, GatewayAddress, ObjectStatus};
use crate::source::{ObjectKind, ObjectSet, Problem};

/// Every hostname a Gateway serves: for each programmed listener, the hostnames of its
/// attached routes (already intersected with the listener's). A listener without routes serves
/// nothing but 404s, and a route that matches any host (no hostname anywhere) has no name to
/// publish, so neither contributes.
fn served_hostnames(config: &DataPlaneConfig) -> BTreeMap<ObjectName, BTreeSet<String>> {
    let mut served: BTreeMap<ObjectName, BTreeSet<String>> = BTreeMap::new();
    for listener in config.ports.iter().flat_map(|port| &port.listeners) {
        for route in &listener.routes {
            for hostname in &route.hostnames {
                if *hostname == HostMatch::Any {
                    continue;
                }
                served
                    .entry(listener.id.gateway.clone())
                    .or_default()
                    .insert(hostname.to_string().to_ascii_lowercase());
            }
        }
    }
    served
}

/// Every `DNSPublisher` with what it must publish, and its `Ready` condition. A publisher reads
/// its Secrets in its own namespace and covers the Gateways there (those its
/// `gatewaySelector` matches); routes of other namespaces attached to them count.
pub(crate) fn resolve_publishers(
    objects: &ObjectSet,
    config: &DataPlaneConfig,
    gateway_addresses: &[GatewayAddress],
    statuses: &mut Vec<ObjectStatus>,
    problems: &mut Vec<Problem>,
) -> Vec<Publisher> {
    let served = served_hostnames(config);
    let default_addresses: Vec<IpAddr> = gateway_addresses
        .iter()
        .filter_map(|a| a.value.parse().ok())
        .collect();
    // Publishers writing through the same provider as the same owner would undo each other's
    // records; the first (by namespace/name) keeps the owner.
    let mut writers: BTreeMap<(String, String), ObjectName> = BTreeMap::new();
    let mut publishers = Vec::new();
    for (name, object) in &objects.dns_publishers {
        let spec = &object.object.spec;
        let id = name.to_string();
        let mut error: Option<(&'static str, String)> =
            spec.validate().err().map(|why| ("InvalidSpec", why));
        let selector = spec.gateway_selector.as_ref().map(|s| LabelSelector {
            match_labels: s.match_labels.clone(),
            expressions: s
                .match_expressions
                .iter()
                .map(|e| (e.key.clone(), e.operator.clone(), e.values.clone()))
                .collect(),
        });
        if let Some(Err(why)) = selector.as_ref().map(LabelSelector::validate)
            && error.is_none()
        {
            error = Some(("InvalidSpec", format!("spec.gatewaySelector: {why}")));
        }
        let addresses = if spec.addresses.is_empty() {
            default_addresses.clone()
        } else {
            spec.addresses.clone()
        };
        if addresses.is_empty() && error.is_none() {
            error = Some((
                "NoAddresses",
                "spec.addresses: no address to publish: set spec.addresses, or run torhaus with --gateway-address".to_owned(),
            ));
        }
        let provider = spec.provider.describe();
        if error.is_none() {
            let writer = (provider.clone(), spec.owner().to_owned());
            if let Some(first) = writers.get(&writer) {
                error = Some((
                    "Conflicted",
                    format!(
                        "spec.ownerId: DNSPublisher {first} already writes through {provider} as owner {:?}; give one of them another ownerId",
                        spec.owner()
                    ),
                ));
            } else {
                writers.insert(writer, name.clone());
            }
        }

        // The hostnames of the covered Gateways, within spec.zones when it is set.
        let zones = spec.normalized_zones();
        let mut hostnames = BTreeSet::new();
        let mut gateways = Vec::new();
        for (gateway_name, gateway) in objects
            .gateways
            .range(ObjectName::new(name.namespace.clone(), String::new())..)
            .take_while(|(g, _)| g.namespace == name.namespace)
        {
            let labels = gateway.object.metadata.labels.clone().unwrap_or_default();
            if selector.as_ref().is_some_and(|s| !s.matches(&labels)) {
                continue;
            }
            if let Some(names) = served.get(gateway_name) {
                gateways.push(gateway_name.name.clone());
                hostnames.extend(names.iter().cloned());
            }
        }
        let (inside, outside): (Vec<String>, Vec<String>) =
            hostnames.into_iter().partition(|host| {
                zones.is_empty()
                    || zones.iter().any(|zone| {
                        torhaus_dns::name::is_within(host.trim_start_matches("*."), zone)
                    })
            });
        let desired: BTreeMap<String, Vec<IpAddr>> = inside
            .iter()
            .map(|host| (host.clone(), addresses.clone()))
            .collect();

        let (secrets, missing) = resolve_secrets(objects, spec.secret_refs(), &name.namespace);
        if error.is_none()
            && let Some(why) = missing
        {
            error = Some(("SecretMissing", why));
        }
        let ready = match &error {
            Some((reason, why)) => {
                problems.push(Problem::error(
                    Some(object.location.clone()),
                    format!("DNSPublisher {name}: {why}"),
                ));
                Condition::new("Ready", false, *reason, why.clone())
            }
            None => {
                let mut message = format!(
                    "publishing {} hostname(s) of Gateway(s) [{}] at [{}] through {provider} as owner {:?}",
                    inside.len(),
                    gateways.join(", "),
                    addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    spec.owner()
                );
                if !outside.is_empty() {
                    message.push_str(&format!(
                        "; outside spec.zones, not published: {}",
                        outside.join(", ")
                    ));
                }
                Condition::new("Ready", true, "Configured", message)
            }
        };
        statuses.push(ObjectStatus::with_conditions(
            ObjectKind::DnsPublisher,
            &name.namespace,
            &name.name,
            &object.location,
            object.object.metadata.generation,
            vec![ready],
        ));
        // A missing Secret does not invalidate the settings: the records loop keeps writing
        // with the credentials it last had, and says why it cannot use the new ones.
        let config = match error {
            Some((reason, why)) if reason != "SecretMissing" => Err(why),
            _ => Ok(PublisherConfig {
                owner: spec.owner().to_owned(),
                ttl: spec.ttl(),
                zones,
                provider: spec.provider.clone(),
                secrets,
            }),
        };
        publishers.push(Publisher {
            id,
            config,
            desired,
        });
    }
    publishers
}

/// Lines for `torhaus check`: each publisher, then every hostname it would publish with its
/// addresses.
pub fn describe_publishers(publishers: &[Publisher]) -> Vec<String> {
    let mut lines = Vec::new();
    for publisher in publishers {
        match &publisher.config {
            Ok(config) => lines.push(format!(
                "dns publisher {}: {} as owner {:?}, ttl {}s, {} hostname(s){}",
                publisher.id,
                config.provider.describe(),
                config.owner,
                config.ttl,
                publisher.desired.len(),
                if config.zones.is_empty() {
                    String::new()
                } else {
                    format!(", zones [{}]", config.zones.join(", "))
                }
            )),
            Err(why) => lines.push(format!(
                "dns publisher {}: invalid, nothing is written: {why}",
                publisher.id
            )),
        }
        for (host, addresses) in &publisher.desired {
            let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
            lines.push(format!("  {host} -> {}", addresses.join(", ")));
        }
    }
    lines
}
