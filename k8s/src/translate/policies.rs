//! `AuthPolicy` objects in translation: validation (Secrets resolved), the effective policy of
//! every attached route rule by the attachment precedence of `torhaus_policies::PolicySet`, and
//! each policy's `Accepted` condition (GEP-713 reasons: Accepted, Invalid, TargetNotFound,
//! Conflicted) with a message saying where it is in force.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use torhaus_model::{AttachedRoute, ObjectName};
use torhaus_policies::policy::Target;
use torhaus_policies::{Policy, PolicySet};

use crate::report::{Condition, ObjectStatus};
use crate::source::{ObjectKind, ObjectSet};

const ACCEPTED: &str = "Accepted";
/// How many places an `Accepted` message lists before it only counts the rest.
const LISTED_PLACES: usize = 8;

/// The valid policies and what became of each one.
#[derive(Debug, Default)]
pub(crate) struct PolicyIndex {
    set: PolicySet,
    invalid: BTreeMap<ObjectName, String>,
    /// Where each valid policy is in force: `route rule on listener` descriptions.
    in_force: BTreeMap<String, BTreeSet<String>>,
}

impl PolicyIndex {
    /// Validates every `AuthPolicy`; an invalid one is reported and attaches nowhere (the routes
    /// it targets fall back to a less specific policy, if any).
    pub(crate) fn new(objects: &ObjectSet) -> Self {
        let secrets = |namespace: &str, name: &str, key: &str| -> Option<Vec<u8>> {
            let secret = &objects
                .secrets
                .get(&ObjectName::new(namespace, name))?
                .object;
            if let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) {
                return Some(bytes.0.clone());
            }
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|text| text.as_bytes().to_vec())
        };
        let mut valid = Vec::new();
        let mut invalid = BTreeMap::new();
        for (name, object) in &objects.auth_policies {
            match object.object.policy.validate(&secrets) {
                Ok(policy) => valid.push(Arc::new(policy)),
                Err(error) => {
                    invalid.insert(name.clone(), error.to_string());
                }
            }
        }
        Self {
            set: PolicySet::new(valid),
            invalid,
            in_force: BTreeMap::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.set.policies().is_empty()
    }

    /// Sets `auth` of each route attached to listener `section` of `gateway`.
    pub(crate) fn bind(
        &mut self,
        gateway: &ObjectName,
        section: &str,
        routes: &mut [AttachedRoute],
    ) {
        if self.is_empty() {
            return;
        }
        for attached in routes {
            let route = &attached.route.id;
            let auth: Vec<Option<Arc<str>>> = attached
                .route
                .rules
                .iter()
                .map(|rule| {
                    let (_, policy) = self.set.effective(
                        (&gateway.namespace, &gateway.name),
                        Some(section),
                        (&route.namespace, &route.name),
                        rule.name.as_deref(),
                    )?;
                    let key = policy.key();
                    let rule_name = rule.name.clone().unwrap_or_else(|| rule.index.to_string());
                    self.in_force
                        .entry(key.clone())
                        .or_default()
                        .insert(format!(
                            "HTTPRoute {route} rule {rule_name} on listener {gateway}/{section}"
                        ));
                    Some(Arc::from(key))
                })
                .collect();
            attached.auth = if auth.iter().any(Option::is_some) {
                auth
            } else {
                Vec::new()
            };
        }
    }

    /// The policies in force somewhere, for the data plane's authenticators.
    pub(crate) fn in_force(&self) -> Vec<Arc<Policy>> {
        self.set
            .policies()
            .iter()
            .filter(|p| self.in_force.contains_key(&p.key()))
            .cloned()
            .collect()
    }

    /// One status per `AuthPolicy`.
    pub(crate) fn statuses(&self, objects: &ObjectSet) -> Vec<ObjectStatus> {
        let valid: BTreeMap<String, &Arc<Policy>> =
            self.set.policies().iter().map(|p| (p.key(), p)).collect();
        objects
            .auth_policies
            .iter()
            .map(|(name, object)| {
                let key = format!("{}/{}", name.namespace, name.name);
                let condition = if let Some(error) = self.invalid.get(name) {
                    Condition::new(ACCEPTED, false, "Invalid", error.clone())
                } else if let Some(places) = self.in_force.get(&key) {
                    Condition::new(ACCEPTED, true, ACCEPTED, in_force_message(places))
                } else if let Some(policy) = valid.get(&key) {
                    self.idle_condition(objects, policy)
                } else {
                    Condition::new(ACCEPTED, false, "Invalid", "the policy could not be read")
                };
                ObjectStatus::with_conditions(
                    ObjectKind::AuthPolicy,
                    &name.namespace,
                    &name.name,
                    &object.location,
                    object.object.metadata.generation,
                    vec![condition],
                )
            })
            .collect()
    }

    /// Why a valid policy is in force nowhere: its targets are missing, another policy wins
    /// every one of them, or no route is attached under them yet.
    fn idle_condition(&self, objects: &ObjectSet, policy: &Policy) -> Condition {
        let missing: Vec<String> = policy
            .targets
            .iter()
            .filter(|t| !target_exists(objects, &policy.namespace, t))
            .map(describe_target)
            .collect();
        if missing.len() == policy.targets.len() {
            return Condition::new(
                ACCEPTED,
                false,
                "TargetNotFound",
                format!(
                    "spec.targetRefs: {} not found in namespace {}",
                    missing.join(", "),
                    policy.namespace
                ),
            );
        }
        let rivals: Vec<String> = self
            .set
            .policies()
            .iter()
            .filter(|other| {
                other.key() != policy.key()
                    && other.namespace == policy.namespace
                    && other.targets.iter().any(|t| policy.targets.contains(t))
            })
            .map(|other| other.key())
            .collect();
        if !rivals.is_empty() {
            return Condition::new(
                ACCEPTED,
                false,
                "Conflicted",
                format!(
                    "every target is taken by an older policy at the same level ({}); the older \
                     policy (creationTimestamp, then namespace/name) wins",
                    rivals.join(", ")
                ),
            );
        }
        Condition::new(
            ACCEPTED,
            true,
            ACCEPTED,
            "no route is attached under the targets yet, so the policy is in force nowhere",
        )
    }
}

fn in_force_message(places: &BTreeSet<String>) -> String {
    let listed: Vec<&str> = places
        .iter()
        .take(LISTED_PLACES)
        .map(String::as_str)
        .collect();
    let more = places.len().saturating_sub(LISTED_PLACES);
    let mut message = format!("in force for {}", listed.join("; "));
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    message
}

fn describe_target(target: &Target) -> String {
    match target {
        Target::Gateway { name } => format!("Gateway {name:?}"),
        Target::Listener { name, section } => format!("Gateway {name:?} listener {section:?}"),
        Target::Route { name } => format!("HTTPRoute {name:?}"),
        Target::RouteRule { name, rule } => format!("HTTPRoute {name:?} rule {rule:?}"),
    }
}

fn target_exists(objects: &ObjectSet, namespace: &str, target: &Target) -> bool {
    let object = |name: &str| ObjectName::new(namespace, name);
    match target {
        Target::Gateway { name } => objects.gateways.contains_key(&object(name)),
        Target::Listener { name, section } => objects
            .gateways
            .get(&object(name))
            .is_some_and(|g| g.object.spec.listeners.iter().any(|l| &l.name == section)),
        Target::Route { name } => objects.http_routes.contains_key(&object(name)),
        Target::RouteRule { name, rule } => {
            objects.http_routes.get(&object(name)).is_some_and(|r| {
                r.object
                    .spec
                    .rules
                    .iter()
                    .flatten()
                    .any(|candidate| candidate.name.as_deref() == Some(rule.as_str()))
            })
        }
    }
}
