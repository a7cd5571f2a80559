//! Status in the cluster: which status patches a snapshot calls for (pure), the leader
//! election over a coordination.k8s.io Lease, and the writer that sends the patches.

mod lease;
mod writer;

pub use lease::{LeaderElection, LeaseSettings, spawn_leader_election};
pub use writer::{StatusWriterOptions, WriterStats, spawn_status_writer};

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use crate::report::{Condition, ListenerStatus, ObjectStatus, ParentReference, ParentStatus};
use crate::source::{KubeSnapshot, ObjectKey, ObjectKind, ObjectSet};

/// One status write: a JSON merge patch for the status subresource of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPatch {
    pub key: ObjectKey,
    /// The merge patch body, `{"status": ...}` (HTTPRoutes also carry
    /// `metadata.resourceVersion`, so a concurrent write of another controller is not lost).
    pub body: Value,
    /// The object's current status (normalized), to recognise a write still in flight.
    pub observed: Value,
}

/// The status patches `snapshot` calls for: one per object of ours whose published status
/// differs from the wanted one, ignoring `lastTransitionTime`. Objects of other
/// GatewayClasses never appear; route parents of other controllers are kept as they are.
/// `now` is the RFC 3339 time written into conditions that change.
pub fn plan_status_patches(
    snapshot: &KubeSnapshot,
    controller_name: &str,
    now: &str,
) -> Vec<StatusPatch> {
    let objects = &snapshot.objects;
    let ours = OurObjects::new(objects, controller_name);
    let mut patches = Vec::new();
    let mut routes_seen = HashSet::new();
    for status in &snapshot.translation.report.objects {
        let key = &status.key;
        let patch = match key.kind {
            ObjectKind::GatewayClass if ours.class(&key.name) => {
                let observed = observed_status(objects, key);
                let conditions = conditions_json(
                    &status.conditions,
                    status.generation,
                    observed.get("conditions"),
                    now,
                );
                status_patch(key, observed, json!({ "conditions": conditions }), None)
            }
            ObjectKind::Gateway if ours.gateway(&key.namespace, &key.name) => {
                let observed = observed_status(objects, key);
                let wanted = gateway_status_json(status, &observed, now);
                status_patch(key, observed, wanted, None)
            }
            // torhaus's own kinds: every one is ours. An AuthPolicy's `Accepted` condition says
            // where it is in force, or why not; an issuer's `Ready`, which Secret it lacks; a
            // DNSPublisher's `Ready`, what it publishes.
            ObjectKind::AuthPolicy
            | ObjectKind::Issuer
            | ObjectKind::ClusterIssuer
            | ObjectKind::DnsPublisher => {
                let observed = observed_status(objects, key);
                let conditions = conditions_json(
                    &status.conditions,
                    status.generation,
                    observed.get("conditions"),
                    now,
                );
                status_patch(key, observed, json!({ "conditions": conditions }), None)
            }
            ObjectKind::HttpRoute => {
                routes_seen.insert(key.clone());
                let parents: Vec<&ParentStatus> = status
                    .parents
                    .iter()
                    .filter(|p| ours.parent(&p.parent))
                    .collect();
                route_patch(
                    objects,
                    key,
                    &parents,
                    status.generation,
                    controller_name,
                    now,
                )
            }
            _ => None,
        };
        patches.extend(patch);
    }
    // Routes that no longer name a Gateway of ours lose the entries we wrote before.
    for name in objects.http_routes.keys() {
        let key = ObjectKey {
            kind: ObjectKind::HttpRoute,
            namespace: name.namespace.clone(),
            name: name.name.clone(),
        };
        if !routes_seen.contains(&key) {
            patches.extend(route_patch(objects, &key, &[], None, controller_name, now));
        }
    }
    patches
}

/// Recursively drops `lastTransitionTime`, which changes only when a condition's status does.
pub fn normalize(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// Which GatewayClasses and Gateways belong to this controller.
struct OurObjects<'a> {
    objects: &'a ObjectSet,
    classes: HashSet<&'a str>,
}

impl<'a> OurObjects<'a> {
    fn new(objects: &'a ObjectSet, controller_name: &str) -> Self {
        let classes = objects
            .gateway_classes
            .iter()
            .filter(|(_, c)| c.object.spec.controller_name == controller_name)
            .map(|(name, _)| name.as_str())
            .collect();
        Self { objects, classes }
    }

    fn class(&self, name: &str) -> bool {
        self.classes.contains(name)
    }

    fn gateway(&self, namespace: &str, name: &str) -> bool {
        self.objects
            .gateways
            .get(&torhaus_model::ObjectName::new(namespace, name))
            .is_some_and(|g| self.class(&g.object.spec.gateway_class_name))
    }

    /// Route status is written only for parents this controller manages: the spec leaves
    /// unknown or foreign parents to others (a missing Gateway has no controller).
    fn parent(&self, parent: &ParentReference) -> bool {
        parent.kind == "Gateway" && self.gateway(&parent.namespace, &parent.name)
    }
}

fn observed_status(objects: &ObjectSet, key: &ObjectKey) -> Value {
    let name = torhaus_model::ObjectName::new(key.namespace.clone(), key.name.clone());
    let status = match key.kind {
        ObjectKind::GatewayClass => objects
            .gateway_classes
            .get(&key.name)
            .and_then(|o| serde_json::to_value(&o.object.status).ok()),
        ObjectKind::Gateway => objects
            .gateways
            .get(&name)
            .and_then(|o| serde_json::to_value(&o.object.status).ok()),
        ObjectKind::HttpRoute => objects
            .http_routes
            .get(&name)
            .and_then(|o| serde_json::to_value(&o.object.status).ok()),
        ObjectKind::AuthPolicy => objects
            .auth_policies
            .get(&name)
            .and_then(|o| o.object.policy.status.clone()),
        ObjectKind::Issuer => objects
            .issuers
            .get(&name)
            .and_then(|o| o.object.status.clone()),
        ObjectKind::ClusterIssuer => objects
            .cluster_issuers
            .get(&key.name)
            .and_then(|o| o.object.status.clone()),
        ObjectKind::DnsPublisher => objects
            .dns_publishers
            .get(&name)
            .and_then(|o| o.object.status.clone()),
        _ => None,
    };
    match status {
        Some(Value::Object(map)) => Value::Object(map),
        _ => Value::Object(Map::new()),
    }
}

/// A patch when any field of `wanted` differs from the observed status.
fn status_patch(
    key: &ObjectKey,
    observed: Value,
    wanted: Value,
    resource_version: Option<String>,
) -> Option<StatusPatch> {
    // An absent list and an empty one say the same.
    let same = |observed: Option<&Value>, wanted: &Value| match observed {
        None | Some(Value::Null) => wanted.as_array().is_some_and(Vec::is_empty),
        Some(observed) => normalize(observed) == normalize(wanted),
    };
    let changed = wanted.as_object().is_some_and(|fields| {
        fields
            .iter()
            .any(|(field, value)| !same(observed.get(field), value))
    });
    if !changed {
        return None;
    }
    let body = match resource_version {
        Some(version) => json!({ "metadata": { "resourceVersion": version }, "status": wanted }),
        None => json!({ "status": wanted }),
    };
    Some(StatusPatch {
        key: key.clone(),
        body,
        observed: normalize(&observed),
    })
}

fn gateway_status_json(status: &ObjectStatus, observed: &Value, now: &str) -> Value {
    let observed_listeners = observed.get("listeners").and_then(Value::as_array);
    let listeners: Vec<Value> = status
        .listeners
        .iter()
        .map(|listener| {
            let before = observed_listeners
                .into_iter()
                .flatten()
                .find(|l| l.get("name").and_then(Value::as_str) == Some(&listener.name));
            listener_json(
                listener,
                status.generation,
                before.and_then(|l| l.get("conditions")),
                now,
            )
        })
        .collect();
    let addresses: Vec<Value> = status
        .addresses
        .iter()
        .map(|a| json!({ "type": a.type_, "value": a.value }))
        .collect();
    json!({
        "addresses": addresses,
        "conditions": conditions_json(
            &status.conditions,
            status.generation,
            observed.get("conditions"),
            now,
        ),
        "listeners": listeners,
    })
}

fn listener_json(
    listener: &ListenerStatus,
    generation: Option<i64>,
    observed_conditions: Option<&Value>,
    now: &str,
) -> Value {
    let kinds: Vec<Value> = listener
        .supported_kinds
        .iter()
        .map(|k| json!({ "group": k.group, "kind": k.kind }))
        .collect();
    json!({
        "name": listener.name,
        "supportedKinds": kinds,
        "attachedRoutes": listener.attached_routes,
        "conditions": conditions_json(&listener.conditions, generation, observed_conditions, now),
    })
}

/// Conditions as the API wants them; `lastTransitionTime` is kept from the observed condition
/// of the same type while its status is unchanged.
fn conditions_json(
    conditions: &[Condition],
    generation: Option<i64>,
    observed: Option<&Value>,
    now: &str,
) -> Vec<Value> {
    conditions
        .iter()
        .map(|condition| {
            let status = condition.status.to_string();
            let since = observed
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| {
                    c.get("type").and_then(Value::as_str) == Some(&condition.type_)
                        && c.get("status").and_then(Value::as_str) == Some(&status)
                })
                .and_then(|c| c.get("lastTransitionTime"))
                .and_then(Value::as_str)
                .unwrap_or(now);
            let mut value = json!({
                "type": condition.type_,
                "status": status,
                "reason": condition.reason,
                "message": bounded(&condition.message),
                "lastTransitionTime": since,
            });
            if let (Some(generation), Some(map)) = (generation, value.as_object_mut()) {
                map.insert("observedGeneration".to_owned(), json!(generation));
            }
            value
        })
        .collect()
}

/// The API refuses condition messages over 32768 bytes: a refused write would be retried
/// forever, so long messages are cut (at a character boundary) and say so.
fn bounded(message: &str) -> String {
    const LIMIT: usize = 32_768;
    const MARK: &str = " … (truncated)";
    if message.len() <= LIMIT {
        return message.to_owned();
    }
    let mut end = LIMIT - MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &message[..end])
}

fn parent_ref_json(parent: &ParentReference) -> Value {
    let mut value = json!({
        "group": parent.group,
        "kind": parent.kind,
        "namespace": parent.namespace,
        "name": parent.name,
    });
    if let Some(map) = value.as_object_mut() {
        if let Some(section) = &parent.section_name {
            map.insert("sectionName".to_owned(), json!(section));
        }
        if let Some(port) = parent.port {
            map.insert("port".to_owned(), json!(port));
        }
    }
    value
}

/// The route's `status.parents`: other controllers' entries as they are, then ours.
fn route_patch(
    objects: &ObjectSet,
    key: &ObjectKey,
    parents: &[&ParentStatus],
    generation: Option<i64>,
    controller_name: &str,
    now: &str,
) -> Option<StatusPatch> {
    let name = torhaus_model::ObjectName::new(key.namespace.clone(), key.name.clone());
    let route = objects.http_routes.get(&name)?;
    let observed = observed_status(objects, key);
    let before: Vec<Value> = observed
        .get("parents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_ours =
        |p: &Value| p.get("controllerName").and_then(Value::as_str) == Some(controller_name);
    let mut wanted: Vec<Value> = before.iter().filter(|p| !is_ours(p)).cloned().collect();
    for parent in parents {
        let reference = parent_ref_json(&parent.parent);
        let previous = before
            .iter()
            .filter(|p| is_ours(p))
            .find(|p| p.get("parentRef").map(normalize) == Some(normalize(&reference)));
        wanted.push(json!({
            "parentRef": reference,
            "controllerName": controller_name,
            "conditions": conditions_json(
                &parent.conditions,
                generation,
                previous.and_then(|p| p.get("conditions")),
                now,
            ),
        }));
    }
    if before.is_empty() && wanted.is_empty() {
        return None;
    }
    status_patch(
        key,
        observed,
        json!({ "parents": wanted }),
        route.object.metadata.resource_version.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::bounded;

    #[test]
    fn long_messages_are_cut_to_what_the_api_accepts() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(20_000);
        let cut = bounded(&long);
        assert!(cut.len() <= 32_768, "{}", cut.len());
        assert!(cut.ends_with(" … (truncated)"));
    }
}
