//! The object set translation reads, with each object's origin, and the parser of raw manifests.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway_api::experimental::gatewayclasses::GatewayClass;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::experimental::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use torhaus_model::ObjectName;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The API group of torhaus's own kinds.
pub const TORHAUS_GROUP: &str = "torhaus.dev";

/// A `torhaus.dev/v1alpha1` `Issuer` or `ClusterIssuer`: metadata and the validated spec
/// (unknown fields are refused, see [`torhaus_acme::IssuerSpec`]).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct IssuerObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: torhaus_acme::IssuerSpec,
    /// As last written (by the status writer), to write only what changed; never validated.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

/// A `torhaus.dev/v1alpha1` `DNSPublisher`: metadata and the validated spec (unknown fields are
/// refused, see [`torhaus_dns::publisher::PublisherSpec`]).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DnsPublisherObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: torhaus_dns::publisher::PublisherSpec,
    /// As the API server has it (torhaus writes it), to leave an unchanged status alone.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

/// Where an object came from, for every message about it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceLocation {
    /// A document of a manifest file; `item` is the position inside a `kind: List`.
    File {
        path: PathBuf,
        document: usize,
        item: Option<usize>,
    },
    /// Read from the Kubernetes API.
    Api,
}

impl SourceLocation {
    pub fn file(path: impl Into<PathBuf>, document: usize) -> Self {
        SourceLocation::File {
            path: path.into(),
            document,
            item: None,
        }
    }
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceLocation::File {
                path,
                document,
                item: None,
            } => write!(f, "{} (document {document})", path.display()),
            SourceLocation::File {
                path,
                document,
                item: Some(item),
            } => write!(f, "{} (document {document}, item {item})", path.display()),
            SourceLocation::Api => f.write_str("Kubernetes API"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    GatewayClass,
    Gateway,
    HttpRoute,
    ReferenceGrant,
    Service,
    EndpointSlice,
    Secret,
    Namespace,
    Issuer,
    ClusterIssuer,
    AuthPolicy,
    DnsPublisher,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::GatewayClass => "GatewayClass",
            ObjectKind::Gateway => "Gateway",
            ObjectKind::HttpRoute => "HTTPRoute",
            ObjectKind::ReferenceGrant => "ReferenceGrant",
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Secret => "Secret",
            ObjectKind::Namespace => "Namespace",
            ObjectKind::Issuer => "Issuer",
            ObjectKind::ClusterIssuer => "ClusterIssuer",
            ObjectKind::AuthPolicy => "AuthPolicy",
            ObjectKind::DnsPublisher => torhaus_dns::publisher::KIND,
        }
    }

    /// Cluster-scoped kinds have no namespace (it is kept empty in their keys).
    pub fn is_namespaced(self) -> bool {
        !matches!(
            self,
            ObjectKind::GatewayClass | ObjectKind::Namespace | ObjectKind::ClusterIssuer
        )
    }

    /// The kind for an `apiVersion` + `kind` pair, or `None` when torhaus does not read it.
    fn from_type(api_version: &str, kind: &str) -> Option<Self> {
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        let known = match (group, kind) {
            (GATEWAY_GROUP, "GatewayClass") => ObjectKind::GatewayClass,
            (GATEWAY_GROUP, "Gateway") => ObjectKind::Gateway,
            (GATEWAY_GROUP, "HTTPRoute") => ObjectKind::HttpRoute,
            (GATEWAY_GROUP, "ReferenceGrant") => ObjectKind::ReferenceGrant,
            ("", "Service") => ObjectKind::Service,
            ("discovery.k8s.io", "EndpointSlice") => ObjectKind::EndpointSlice,
            ("", "Secret") => ObjectKind::Secret,
            ("", "Namespace") => ObjectKind::Namespace,
            (TORHAUS_GROUP, "Issuer") => ObjectKind::Issuer,
            (TORHAUS_GROUP, "ClusterIssuer") => ObjectKind::ClusterIssuer,
            (TORHAUS_GROUP, "AuthPolicy") => ObjectKind::AuthPolicy,
            (TORHAUS_GROUP, torhaus_dns::publisher::KIND) => ObjectKind::DnsPublisher,
            _ => return None,
        };
        Some(known)
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of an object: kind, namespace (empty when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One object of a kind torhaus reads.
#[derive(Debug, Clone)]
pub enum KubeObject {
    GatewayClass(Box<GatewayClass>),
    Gateway(Box<Gateway>),
    HttpRoute(Box<HttpRoute>),
    ReferenceGrant(Box<ReferenceGrant>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Secret(Box<Secret>),
    Namespace(Box<Namespace>),
    Issuer(Box<IssuerObject>),
    ClusterIssuer(Box<IssuerObject>),
    AuthPolicy(Box<AuthPolicyObject>),
    DnsPublisher(Box<DnsPublisherObject>),
}

/// An `AuthPolicy` (`torhaus.dev/v1alpha1`): the policies crate's strict wire type, plus the
/// metadata in Kubernetes' own type for the bookkeeping every object shares.
#[derive(Debug, Clone)]
pub struct AuthPolicyObject {
    pub metadata: ObjectMeta,
    pub policy: torhaus_policies::AuthPolicy,
}

impl KubeObject {
    pub fn kind(&self) -> ObjectKind {
        match self {
            KubeObject::GatewayClass(_) => ObjectKind::GatewayClass,
            KubeObject::Gateway(_) => ObjectKind::Gateway,
            KubeObject::HttpRoute(_) => ObjectKind::HttpRoute,
            KubeObject::ReferenceGrant(_) => ObjectKind::ReferenceGrant,
            KubeObject::Service(_) => ObjectKind::Service,
            KubeObject::EndpointSlice(_) => ObjectKind::EndpointSlice,
            KubeObject::Secret(_) => ObjectKind::Secret,
            KubeObject::Namespace(_) => ObjectKind::Namespace,
            KubeObject::Issuer(_) => ObjectKind::Issuer,
            KubeObject::ClusterIssuer(_) => ObjectKind::ClusterIssuer,
            KubeObject::AuthPolicy(_) => ObjectKind::AuthPolicy,
            KubeObject::DnsPublisher(_) => ObjectKind::DnsPublisher,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            KubeObject::GatewayClass(o) => &o.metadata,
            KubeObject::Gateway(o) => &o.metadata,
            KubeObject::HttpRoute(o) => &o.metadata,
            KubeObject::ReferenceGrant(o) => &o.metadata,
            KubeObject::Service(o) => &o.metadata,
            KubeObject::EndpointSlice(o) => &o.metadata,
            KubeObject::Secret(o) => &o.metadata,
            KubeObject::Namespace(o) => &o.metadata,
            KubeObject::Issuer(o) | KubeObject::ClusterIssuer(o) => &o.metadata,
            KubeObject::AuthPolicy(o) => &o.metadata,
            KubeObject::DnsPublisher(o) => &o.metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let kind = self.kind();
        let meta = self.metadata();
        ObjectKey {
            kind,
            namespace: if kind.is_namespaced() {
                meta.namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_owned())
            } else {
                String::new()
            },
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// A value together with the place it was read from.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    /// Shared: the Kubernetes index copies its object set for every snapshot, and copying
    /// pointers instead of whole objects keeps that cheap.
    pub object: Arc<T>,
    pub location: SourceLocation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// Something wrong with the input that did not stop the rest from being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub location: Option<SourceLocation>,
    pub message: String,
}

impl Problem {
    pub fn error(location: Option<SourceLocation>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            location,
            message: message.into(),
        }
    }

    pub fn warning(location: Option<SourceLocation>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            location,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        match &self.location {
            Some(location) => write!(f, "{severity}: {location}: {}", self.message),
            None => write!(f, "{severity}: {}", self.message),
        }
    }
}

/// Every object translation reads, keyed by namespace/name (namespace empty for cluster-scoped
/// kinds), plus the problems met while reading them.
#[derive(Debug, Clone, Default)]
pub struct ObjectSet {
    pub gateway_classes: BTreeMap<String, Sourced<GatewayClass>>,
    pub gateways: BTreeMap<ObjectName, Sourced<Gateway>>,
    pub http_routes: BTreeMap<ObjectName, Sourced<HttpRoute>>,
    pub reference_grants: BTreeMap<ObjectName, Sourced<ReferenceGrant>>,
    pub services: BTreeMap<ObjectName, Sourced<Service>>,
    pub endpoint_slices: BTreeMap<ObjectName, Sourced<EndpointSlice>>,
    pub secrets: BTreeMap<ObjectName, Sourced<Secret>>,
    pub namespaces: BTreeMap<String, Sourced<Namespace>>,
    pub issuers: BTreeMap<ObjectName, Sourced<IssuerObject>>,
    pub cluster_issuers: BTreeMap<String, Sourced<IssuerObject>>,
    pub auth_policies: BTreeMap<ObjectName, Sourced<AuthPolicyObject>>,
    pub dns_publishers: BTreeMap<ObjectName, Sourced<DnsPublisherObject>>,
    pub problems: Vec<Problem>,
}

impl ObjectSet {
    /// Adds an object. A second object with the same identity is refused (the first stays) and
    /// an error naming both places is recorded.
    pub fn insert(&mut self, object: KubeObject, location: SourceLocation) {
        let key = object.key();
        if let Some(existing) = self.location_of(&key) {
            let message =
                format!("duplicate {key}: already defined at {existing}; this copy is ignored");
            self.problems.push(Problem::error(Some(location), message));
            return;
        }
        self.put(object, location);
    }

    /// Adds or replaces an object (the Kubernetes source: the API server keeps identities unique).
    /// Returns whether anything changed, judged by `metadata.resourceVersion` when both copies
    /// have one, so a relist of unchanged objects does not cause a new translation.
    pub fn upsert(&mut self, object: KubeObject, location: SourceLocation) -> bool {
        let key = object.key();
        let version = object.metadata().resource_version.clone();
        if version.is_some() && self.resource_version(&key) == version {
            return false;
        }
        self.put(object, location);
        true
    }

    /// Stores an object under its identity, replacing any previous copy.
    fn put(&mut self, object: KubeObject, location: SourceLocation) {
        let key = object.key();
        let name = ObjectName::new(key.namespace, key.name);
        match object {
            KubeObject::GatewayClass(o) => {
                self.gateway_classes
                    .insert(name.name, sourced(*o, location));
            }
            KubeObject::Gateway(o) => {
                self.gateways.insert(name, sourced(*o, location));
            }
            KubeObject::HttpRoute(o) => {
                self.http_routes.insert(name, sourced(*o, location));
            }
            KubeObject::ReferenceGrant(o) => {
                self.reference_grants.insert(name, sourced(*o, location));
            }
            KubeObject::Service(o) => {
                self.services.insert(name, sourced(*o, location));
            }
            KubeObject::EndpointSlice(o) => {
                self.endpoint_slices.insert(name, sourced(*o, location));
            }
            KubeObject::Secret(o) => {
                self.secrets.insert(name, sourced(*o, location));
            }
            KubeObject::Namespace(o) => {
                self.namespaces.insert(name.name, sourced(*o, location));
            }
            KubeObject::Issuer(o) => {
                self.issuers.insert(name, sourced(*o, location));
            }
            KubeObject::ClusterIssuer(o) => {
                self.cluster_issuers
                    .insert(name.name, sourced(*o, location));
            }
            KubeObject::AuthPolicy(o) => {
                self.auth_policies.insert(name, sourced(*o, location));
            }
            KubeObject::DnsPublisher(o) => {
                self.dns_publishers.insert(name, sourced(*o, location));
            }
        }
    }

    /// Removes the object with this identity; returns whether it was present.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        let name = ObjectName::new(key.namespace.clone(), key.name.clone());
        match key.kind {
            ObjectKind::GatewayClass => self.gateway_classes.remove(&key.name).is_some(),
            ObjectKind::Gateway => self.gateways.remove(&name).is_some(),
            ObjectKind::HttpRoute => self.http_routes.remove(&name).is_some(),
            ObjectKind::ReferenceGrant => self.reference_grants.remove(&name).is_some(),
            ObjectKind::Service => self.services.remove(&name).is_some(),
            ObjectKind::EndpointSlice => self.endpoint_slices.remove(&name).is_some(),
            ObjectKind::Secret => self.secrets.remove(&name).is_some(),
            ObjectKind::Namespace => self.namespaces.remove(&key.name).is_some(),
            ObjectKind::Issuer => self.issuers.remove(&name).is_some(),
            ObjectKind::ClusterIssuer => self.cluster_issuers.remove(&key.name).is_some(),
            ObjectKind::AuthPolicy => self.auth_policies.remove(&name).is_some(),
            ObjectKind::DnsPublisher => self.dns_publishers.remove(&name).is_some(),
        }
    }

    /// The identities of every object of one kind.
    pub fn keys_of(&self, kind: ObjectKind) -> Vec<ObjectKey> {
        let cluster = |name: &String| ObjectKey {
            kind,
            namespace: String::new(),
            name: name.clone(),
        };
        let namespaced = |name: &ObjectName| ObjectKey {
            kind,
            namespace: name.namespace.clone(),
            name: name.name.clone(),
        };
        match kind {
            ObjectKind::GatewayClass => self.gateway_classes.keys().map(cluster).collect(),
            ObjectKind::Namespace => self.namespaces.keys().map(cluster).collect(),
            ObjectKind::Gateway => self.gateways.keys().map(namespaced).collect(),
            ObjectKind::HttpRoute => self.http_routes.keys().map(namespaced).collect(),
            ObjectKind::ReferenceGrant => self.reference_grants.keys().map(namespaced).collect(),
            ObjectKind::Service => self.services.keys().map(namespaced).collect(),
            ObjectKind::EndpointSlice => self.endpoint_slices.keys().map(namespaced).collect(),
            ObjectKind::Secret => self.secrets.keys().map(namespaced).collect(),
            ObjectKind::Issuer => self.issuers.keys().map(namespaced).collect(),
            ObjectKind::ClusterIssuer => self.cluster_issuers.keys().map(cluster).collect(),
            ObjectKind::AuthPolicy => self.auth_policies.keys().map(namespaced).collect(),
            ObjectKind::DnsPublisher => self.dns_publishers.keys().map(namespaced).collect(),
        }
    }

    /// The `metadata.resourceVersion` of the object with this identity, if present.
    pub fn resource_version(&self, key: &ObjectKey) -> Option<String> {
        self.entry(key)
            .and_then(|(_, meta)| meta.resource_version.clone())
    }

    /// Where the object with this identity was read from, if it is present.
    pub fn location_of(&self, key: &ObjectKey) -> Option<&SourceLocation> {
        self.entry(key).map(|(location, _)| location)
    }

    /// The origin and metadata of the object with this identity.
    fn entry(&self, key: &ObjectKey) -> Option<(&SourceLocation, &ObjectMeta)> {
        fn parts<T: kube::Resource>(o: &Sourced<T>) -> (&SourceLocation, &ObjectMeta) {
            (&o.location, o.object.meta())
        }
        fn issuer_parts(o: &Sourced<IssuerObject>) -> (&SourceLocation, &ObjectMeta) {
            (&o.location, &o.object.metadata)
        }
        let name = ObjectName::new(key.namespace.clone(), key.name.clone());
        match key.kind {
            ObjectKind::GatewayClass => self.gateway_classes.get(&key.name).map(parts),
            ObjectKind::Gateway => self.gateways.get(&name).map(parts),
            ObjectKind::HttpRoute => self.http_routes.get(&name).map(parts),
            ObjectKind::ReferenceGrant => self.reference_grants.get(&name).map(parts),
            ObjectKind::Service => self.services.get(&name).map(parts),
            ObjectKind::EndpointSlice => self.endpoint_slices.get(&name).map(parts),
            ObjectKind::Secret => self.secrets.get(&name).map(parts),
            ObjectKind::Namespace => self.namespaces.get(&key.name).map(parts),
            ObjectKind::Issuer => self.issuers.get(&name).map(issuer_parts),
            ObjectKind::ClusterIssuer => self.cluster_issuers.get(&key.name).map(issuer_parts),
            ObjectKind::AuthPolicy => self
                .auth_policies
                .get(&name)
                .map(|o| (&o.location, &o.object.metadata)),
            ObjectKind::DnsPublisher => self
                .dns_publishers
                .get(&name)
                .map(|o| (&o.location, &o.object.metadata)),
        }
    }

    /// Number of objects held (problems excluded).
    pub fn len(&self) -> usize {
        self.gateway_classes.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.reference_grants.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.secrets.len()
            + self.namespaces.len()
            + self.issuers.len()
            + self.cluster_issuers.len()
            + self.auth_policies.len()
            + self.dns_publishers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn sourced<T>(object: T, location: SourceLocation) -> Sourced<T> {
    Sourced {
        object: Arc::new(object),
        location,
    }
}

/// Parses the text of one manifest file (YAML with any number of documents, or JSON; `kind:
/// List` is unpacked). Returns the objects it holds and the problems met; a broken document
/// never hides the valid ones before it.
pub fn parse_manifests(
    text: &str,
    path: &Path,
) -> (Vec<(KubeObject, SourceLocation)>, Vec<Problem>) {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    // JSON proper goes to the JSON parser: YAML rejects some valid JSON (tab indentation).
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        let location = SourceLocation::file(path, 1);
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(json) => parse_document(json, path, 1, &mut objects, &mut problems),
            Err(error) => problems.push(Problem::error(
                Some(location),
                format!("malformed JSON: {error}"),
            )),
        }
        return (objects, problems);
    }
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document_number = index + 1;
        let location = SourceLocation::file(path, document_number);
        let value = match <serde_yaml::Value as serde::Deserialize>::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                problems.push(Problem::error(
                    Some(location),
                    format!("malformed YAML: {error}"),
                ));
                // After a syntax error the YAML stream cannot be resynchronised.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let json = match serde_json::to_value(&value) {
            Ok(json) => json,
            Err(error) => {
                problems.push(Problem::error(
                    Some(location),
                    format!("document cannot be represented as a Kubernetes object: {error}"),
                ));
                continue;
            }
        };
        parse_document(json, path, document_number, &mut objects, &mut problems);
    }
    (objects, problems)
}

/// One document: a single object, or a `kind: List` of them.
fn parse_document(
    json: serde_json::Value,
    path: &Path,
    document_number: usize,
    objects: &mut Vec<(KubeObject, SourceLocation)>,
    problems: &mut Vec<Problem>,
) {
    let location = SourceLocation::file(path, document_number);
    if json.get("kind").and_then(|k| k.as_str()) == Some("List") {
        match json.get("items").and_then(|items| items.as_array()) {
            Some(items) => {
                for (item_index, item) in items.iter().enumerate() {
                    let location = SourceLocation::File {
                        path: path.to_owned(),
                        document: document_number,
                        item: Some(item_index),
                    };
                    parse_object(item.clone(), location, objects, problems);
                }
            }
            None => problems.push(Problem::error(
                Some(location),
                "kind List without an items array".to_owned(),
            )),
        }
    } else {
        parse_object(json, location, objects, problems);
    }
}

/// One object of the API (as JSON with apiVersion and kind) → a typed object, or the problem
/// naming what is wrong with it; the same checks and messages as for a manifest.
pub(crate) fn decode_object(
    json: serde_json::Value,
    location: SourceLocation,
) -> Result<KubeObject, Problem> {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    parse_object(json, location.clone(), &mut objects, &mut problems);
    match objects.pop() {
        Some((object, _)) => Ok(object),
        None => Err(problems
            .pop()
            .unwrap_or_else(|| Problem::error(Some(location), "the object cannot be read"))),
    }
}

fn parse_object(
    mut json: serde_json::Value,
    location: SourceLocation,
    objects: &mut Vec<(KubeObject, SourceLocation)>,
    problems: &mut Vec<Problem>,
) {
    let Some(map) = json.as_object_mut() else {
        problems.push(Problem::error(
            Some(location),
            "document is not a mapping (expected a Kubernetes object)",
        ));
        return;
    };
    let text_field = |field: &str| map.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    let Some(api_version) = text_field("apiVersion") else {
        problems.push(Problem::error(
            Some(location),
            "object has no apiVersion (a string is required)",
        ));
        return;
    };
    let Some(kind_name) = text_field("kind") else {
        problems.push(Problem::error(
            Some(location),
            "object has no kind (a string is required)",
        ));
        return;
    };
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        problems.push(Problem::error(
            Some(location),
            format!("{kind_name} has no metadata.name (a non-empty string is required)"),
        ));
        return;
    };
    let Some(kind) = ObjectKind::from_type(&api_version, &kind_name) else {
        problems.push(Problem::warning(
            Some(location),
            format!(
                "kind {kind_name} ({api_version}) named {name:?} is not read by torhaus; ignored"
            ),
        ));
        return;
    };
    if kind.is_namespaced()
        && let Some(metadata) = map.get_mut("metadata").and_then(|m| m.as_object_mut())
    {
        let missing = metadata
            .get("namespace")
            .and_then(|n| n.as_str())
            .is_none_or(str::is_empty);
        if missing {
            metadata.insert(
                "namespace".to_owned(),
                serde_json::Value::String("default".to_owned()),
            );
        }
    }
    let parsed = match kind {
        ObjectKind::GatewayClass => decode(json).map(|o| KubeObject::GatewayClass(Box::new(o))),
        ObjectKind::Gateway => decode(json).map(|o| KubeObject::Gateway(Box::new(o))),
        ObjectKind::HttpRoute => decode(json).map(|o| KubeObject::HttpRoute(Box::new(o))),
        ObjectKind::ReferenceGrant => decode(json).map(|o| KubeObject::ReferenceGrant(Box::new(o))),
        ObjectKind::Service => decode(json).map(|o| KubeObject::Service(Box::new(o))),
        ObjectKind::EndpointSlice => decode(json).map(|o| KubeObject::EndpointSlice(Box::new(o))),
        ObjectKind::Secret => decode(json).map(|o| KubeObject::Secret(Box::new(o))),
        ObjectKind::Namespace => decode(json).map(|o| KubeObject::Namespace(Box::new(o))),
        // Issuers name the exact field at fault (`spec.acme.dns01.rfc2136.nameserver`): their
        // spec is torhaus's own and refuses unknown fields, so a typo must be easy to find.
        ObjectKind::Issuer => decode_with_path(json).map(|o| KubeObject::Issuer(Box::new(o))),
        ObjectKind::ClusterIssuer => {
            decode_with_path(json).map(|o| KubeObject::ClusterIssuer(Box::new(o)))
        }
        ObjectKind::AuthPolicy => decode_auth_policy(json),
        ObjectKind::DnsPublisher => {
            decode_with_path(json).map(|o| KubeObject::DnsPublisher(Box::new(o)))
        }
    };
    match parsed {
        Ok(object) => objects.push((object, location)),
        Err(error) => problems.push(Problem::error(
            Some(location),
            format!("{kind} {name:?} is invalid: {error}"),
        )),
    }
}

fn decode<T: DeserializeOwned>(json: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(json).map_err(|e| e.to_string())
}

/// Like [`decode`], with the path of the offending field in the message.
fn decode_with_path<T: DeserializeOwned>(json: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e.path().to_string();
        if path.is_empty() || path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

fn decode_auth_policy(json: serde_json::Value) -> Result<KubeObject, String> {
    let metadata = decode(json.get("metadata").cloned().unwrap_or_default())?;
    let policy = decode(json)?;
    Ok(KubeObject::AuthPolicy(Box::new(AuthPolicyObject {
        metadata,
        policy,
    })))
}
