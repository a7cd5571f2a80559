//! Cross-object references: ReferenceGrants, namespace label selectors, and Service backends
//! with their ready endpoints.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use torhaus_model::{Backend, BackendId, ObjectName, UpstreamProtocol};

use crate::source::ObjectSet;

pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One side of a reference, for ReferenceGrant checks. `group` is "" for the core group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefEnd<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

/// Whether a reference from `from` to the object `to_name` of `to` is allowed: always within a
/// namespace, across namespaces only with a ReferenceGrant in the target's namespace.
pub(crate) fn reference_allowed(
    objects: &ObjectSet,
    from: RefEnd<'_>,
    to: RefEnd<'_>,
    to_name: &str,
) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    objects
        .reference_grants
        .iter()
        .filter(|(name, _)| name.namespace == to.namespace)
        .any(|(_, grant)| {
            let spec = &grant.object.spec;
            let from_ok = spec.from.iter().any(|f| {
                normalize_group(&f.group) == from.group
                    && f.kind == from.kind
                    && f.namespace == from.namespace
            });
            let to_ok = spec.to.iter().any(|t| {
                normalize_group(&t.group) == to.group
                    && t.kind == to.kind
                    && t.name
                        .as_deref()
                        .is_none_or(|n| n.is_empty() || n == to_name)
            });
            from_ok && to_ok
        })
}

/// The core group is written "" or "core".
pub(crate) fn normalize_group(group: &str) -> &str {
    if group == "core" { "" } else { group }
}

/// A parsed label selector (matchLabels and matchExpressions).
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub expressions: Vec<(String, String, Vec<String>)>,
}

impl LabelSelector {
    /// Validates the operators; the message names the offending expression.
    pub fn validate(&self) -> Result<(), String> {
        for (key, operator, values) in &self.expressions {
            match operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "matchExpressions key {key:?}: operator {operator} needs values"
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "matchExpressions key {key:?}: operator {operator} takes no values"
                    ));
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => {
                    return Err(format!(
                        "matchExpressions key {key:?}: unknown operator {other:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|(key, operator, values)| {
                let value = labels.get(key);
                match operator.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

/// A namespace's labels, including the `kubernetes.io/metadata.name` label Kubernetes always sets.
pub(crate) fn namespace_labels(objects: &ObjectSet, namespace: &str) -> BTreeMap<String, String> {
    let mut labels = objects
        .namespaces
        .get(namespace)
        .and_then(|ns| ns.object.metadata.labels.clone())
        .unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned());
    labels
}

/// Why a backendRef could not be resolved: the ResolvedRefs reason and a message.
#[derive(Debug, Clone)]
pub(crate) struct RefFailure {
    pub reason: &'static str,
    pub message: String,
}

impl RefFailure {
    fn new(reason: &'static str, message: String) -> Self {
        Self { reason, message }
    }
}

/// A backendRef as written, whichever filter or rule it comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackendRef<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub port: Option<i32>,
}

/// Resolves Service backends, sharing one `Arc<Backend>` per Service port in a translation.
#[derive(Debug)]
pub(crate) struct BackendResolver<'a> {
    objects: &'a ObjectSet,
    cache: HashMap<BackendId, Arc<Backend>>,
    /// EndpointSlices by their Service (namespace/name from the service-name label).
    slices: HashMap<ObjectName, Vec<&'a k8s_openapi::api::discovery::v1::EndpointSlice>>,
}

impl<'a> BackendResolver<'a> {
    pub fn new(objects: &'a ObjectSet) -> Self {
        let mut slices: HashMap<ObjectName, Vec<_>> = HashMap::new();
        for (name, slice) in &objects.endpoint_slices {
            let service = slice
                .object
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(SERVICE_NAME_LABEL));
            if let Some(service) = service {
                slices
                    .entry(ObjectName::new(name.namespace.clone(), service.clone()))
                    .or_default()
                    .push(slice.object.as_ref());
            }
        }
        Self {
            objects,
            cache: HashMap::new(),
            slices,
        }
    }

    /// Resolves a backendRef of an HTTPRoute in `route_namespace`.
    pub fn resolve(
        &mut self,
        route_namespace: &str,
        reference: BackendRef<'_>,
    ) -> Result<Arc<Backend>, RefFailure> {
        let group = normalize_group(reference.group.unwrap_or(""));
        let kind = reference.kind.unwrap_or("Service");
        let namespace = reference.namespace.unwrap_or(route_namespace);
        let described = format!("backendRef {namespace}/{}", reference.name);
        if !group.is_empty() || kind != "Service" {
            return Err(RefFailure::new(
                "InvalidKind",
                format!(
                    "{described}: kind {kind:?} in group {group:?} is not supported (only core Services)"
                ),
            ));
        }
        let from = RefEnd {
            group: GATEWAY_GROUP,
            kind: "HTTPRoute",
            namespace: route_namespace,
        };
        let to = RefEnd {
            group: "",
            kind: "Service",
            namespace,
        };
        if !reference_allowed(self.objects, from, to, reference.name) {
            return Err(RefFailure::new(
                "RefNotPermitted",
                format!(
                    "{described}: no ReferenceGrant in namespace {namespace} allows HTTPRoutes from {route_namespace}"
                ),
            ));
        }
        let Some(port) = reference.port else {
            return Err(RefFailure::new(
                "BackendNotFound",
                format!("{described}: port is required for a Service"),
            ));
        };
        let Ok(port) = u16::try_from(port)
            .map_err(drop)
            .and_then(|p| if p == 0 { Err(()) } else { Ok(p) })
        else {
            return Err(RefFailure::new(
                "BackendNotFound",
                format!("{described}: port {port} is out of range"),
            ));
        };
        let service_name = ObjectName::new(namespace, reference.name);
        let id = BackendId {
            service: service_name.clone(),
            port,
        };
        if let Some(backend) = self.cache.get(&id) {
            return Ok(backend.clone());
        }
        let Some(service) = self.objects.services.get(&service_name) else {
            return Err(RefFailure::new(
                "BackendNotFound",
                format!("{described}: Service not found"),
            ));
        };
        let service_port = service
            .object
            .spec
            .as_ref()
            .and_then(|spec| spec.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == i32::from(port)));
        let Some(service_port) = service_port else {
            return Err(RefFailure::new(
                "BackendNotFound",
                format!("{described}: Service has no port {port}"),
            ));
        };
        let protocol = match service_port.app_protocol.as_deref() {
            None | Some("http" | "HTTP" | "kubernetes.io/http" | "kubernetes.io/ws") => {
                UpstreamProtocol::Http1
            }
            Some("kubernetes.io/h2c") => UpstreamProtocol::H2c,
            Some(other) => {
                return Err(RefFailure::new(
                    "UnsupportedProtocol",
                    format!(
                        "{described}: Service port {port} has appProtocol {other:?}, which torhaus cannot speak"
                    ),
                ));
            }
        };
        let port_name = service_port.name.as_deref().unwrap_or("");
        let mut endpoints: Vec<SocketAddr> = self
            .slices
            .get(&service_name)
            .into_iter()
            .flatten()
            .flat_map(|slice| {
                let slice_port = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok());
                slice_port.into_iter().flat_map(move |p| {
                    slice
                        .endpoints
                        .iter()
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                        .flat_map(|e| e.addresses.iter())
                        .filter_map(move |a| {
                            a.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, p))
                        })
                })
            })
            .collect();
        endpoints.sort();
        endpoints.dedup();
        let backend = Arc::new(Backend {
            id: id.clone(),
            protocol,
            endpoints,
        });
        self.cache.insert(id, backend.clone());
        Ok(backend)
    }
}
