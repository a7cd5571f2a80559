//! The pure translation: Gateway API objects in, the data plane's configuration and every
//! object's conditions out. No I/O happens here, so the kube source reuses it as is.

mod certificates;
mod dns_records;
mod policies;
mod refs;
mod routes;
mod tls;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use gateway_api::experimental::constants::{
    GatewayClassConditionReason, GatewayClassConditionType, GatewayConditionReason,
    GatewayConditionType, ListenerConditionReason, ListenerConditionType,
};
use gateway_api::experimental::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom, GatewayListenersTlsMode,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use torhaus_model::{
    AttachedRoute, DataPlaneConfig, HostMatch, Listener, ListenerId, ListenerTls, ObjectName,
    PortConfig, PortProtocol,
};

use crate::CONTROLLER_NAME;
use crate::report::{
    Condition, GatewayAddress, ListenerStatus, ObjectStatus, ParentReference, ParentStatus, Report,
    RouteGroupKind,
};
use crate::source::{ObjectKey, ObjectKind, ObjectSet, Problem, SourceLocation};
use refs::{
    BackendResolver, GATEWAY_GROUP, LabelSelector, RefEnd, namespace_labels, normalize_group,
    reference_allowed,
};
use routes::{CompiledRoute, compile_route};
use tls::{CertificateCache, certificate_from_secret};

pub use certificates::{
    CERT_MANAGER_CLUSTER_ISSUER_ANNOTATION, CERT_MANAGER_ISSUER_ANNOTATION,
    CLUSTER_ISSUER_ANNOTATION, ISSUER_ANNOTATION, describe_certificates,
};
pub use dns_records::describe_publishers;

/// Settings of a translation.
#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// GatewayClasses with this `spec.controllerName` are served; others are ignored.
    pub controller_name: String,
    /// The addresses torhaus serves on (the VIP or the node addresses), published in every
    /// served Gateway's `status.addresses`.
    pub addresses: Vec<GatewayAddress>,
    /// The `gateway.networking.k8s.io/bundle-version` of the installed CRDs, when known.
    pub crd_bundle_version: Option<String>,
    /// Where ClusterIssuers read and keep their Secrets.
    pub cluster_resource_namespace: String,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            controller_name: CONTROLLER_NAME.to_owned(),
            addresses: Vec::new(),
            crd_bundle_version: None,
            cluster_resource_namespace: torhaus_acme::CLUSTER_RESOURCE_NAMESPACE.to_owned(),
        }
    }
}

/// The result of one translation: what the data plane serves, and what to report.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    pub config: Arc<DataPlaneConfig>,
    pub report: Report,
    /// Secrets that issuers keep valid (Gateways opted in with an issuer annotation).
    pub certificates: Vec<torhaus_model::ManagedCertificate>,
    /// Every Issuer and ClusterIssuer, with the Secret bytes it needs.
    pub issuers: Vec<torhaus_acme::IssuerConfig>,
    /// The valid `AuthPolicy` objects in force on some route rule (`AttachedRoute::auth` names
    /// them by `namespace/name`).
    pub policies: Vec<Arc<torhaus_policies::Policy>>,
    /// Every `DNSPublisher`, with the hostnames (and addresses) it keeps published.
    pub publishers: Vec<torhaus_dns::publisher::Publisher>,
}

impl Translation {
    /// The leaf certificate (DER) a listener serves from the Secret `source` (`namespace/name`),
    /// if any listener does.
    pub fn served_leaf(&self, source: &str) -> Option<&[u8]> {
        self.config
            .ports
            .iter()
            .flat_map(|port| &port.listeners)
            .filter_map(|listener| listener.tls.as_ref())
            .flat_map(|tls| &tls.certificates)
            .find(|served| served.source == source)
            .and_then(|served| served.chain.first())
            .map(|leaf| leaf.as_ref())
    }
}

/// A failed condition: its reason and message.
type Failure = (&'static str, String);

#[derive(Debug)]
enum NamespacePolicy {
    Same,
    All,
    Selector(LabelSelector),
}

#[derive(Debug)]
struct ListenerState {
    name: String,
    port: u16,
    protocol: Option<PortProtocol>,
    hostname: HostMatch,
    namespaces: NamespacePolicy,
    http_routes_allowed: bool,
    supported_kinds: Vec<RouteGroupKind>,
    tls: Option<ListenerTls>,
    accepted: Result<(), Failure>,
    resolved: Result<(), Failure>,
    conflict: Option<Failure>,
    attached_routes: i32,
    routes: Vec<AttachedRoute>,
    /// Why the listener serves from the local CA for now although its references resolve: its
    /// managed Secret is not issued yet.
    pending: Option<String>,
}

impl ListenerState {
    fn usable(&self) -> bool {
        self.accepted.is_ok() && self.conflict.is_none()
    }
}

#[derive(Debug)]
struct GatewayState {
    name: ObjectName,
    /// Why the Gateway as a whole cannot be accepted (e.g. an unsupported address type).
    rejected: Option<Failure>,
    /// Why a requested `spec.addresses` value cannot be served (Programmed=False).
    unusable_address: Option<String>,
    created_unix: i64,
    generation: Option<i64>,
    location: SourceLocation,
    listeners: Vec<ListenerState>,
}

/// Translates `objects` into the configuration the data plane serves and a report of every
/// object's conditions. Pure and deterministic: the same objects give the same result.
pub fn translate(objects: &ObjectSet, options: &TranslateOptions) -> Translation {
    let mut statuses = Vec::new();
    let mut problems = objects.problems.clone();

    let mut our_classes = HashSet::new();
    for (name, class) in &objects.gateway_classes {
        if class.object.spec.controller_name != options.controller_name {
            continue;
        }
        let version = supported_version(options.crd_bundle_version.as_deref());
        let accepted = match (&version, &class.object.spec.parameters_ref) {
            (Err(why), _) => Err((GatewayClassConditionReason::UnsupportedVersion, why.clone())),
            // torhaus has no parameters kind: a reference cannot point at anything it reads.
            (Ok(_), Some(p)) => Err((
                GatewayClassConditionReason::InvalidParameters,
                format!(
                    "spec.parametersRef {}/{} {:?}: torhaus takes no parameters; remove spec.parametersRef",
                    if p.group.is_empty() {
                        "core"
                    } else {
                        p.group.as_str()
                    },
                    p.kind,
                    p.name
                ),
            )),
            (Ok(_), None) => Ok(()),
        };
        if accepted.is_ok() {
            our_classes.insert(name.as_str());
        }
        let accepted = match accepted {
            Ok(()) => Condition::new(
                GatewayClassConditionType::Accepted,
                true,
                GatewayClassConditionReason::Accepted,
                "handled by torhaus",
            ),
            Err((reason, message)) => {
                Condition::new(GatewayClassConditionType::Accepted, false, reason, message)
            }
        };
        let supported = match version {
            Ok(message) => Condition::new(
                GatewayClassConditionType::SupportedVersion,
                true,
                GatewayClassConditionReason::SupportedVersion,
                message,
            ),
            Err(message) => Condition::new(
                GatewayClassConditionType::SupportedVersion,
                false,
                GatewayClassConditionReason::UnsupportedVersion,
                message,
            ),
        };
        statuses.push(ObjectStatus::with_conditions(
            ObjectKind::GatewayClass,
            "",
            name,
            &class.location,
            class.object.metadata.generation,
            vec![accepted, supported],
        ));
    }

    let mut certificates = CertificateCache::new();
    let mut gateways: Vec<GatewayState> = Vec::new();
    let mut managed = Vec::new();
    for (name, gateway) in &objects.gateways {
        let class = gateway.object.spec.gateway_class_name.as_str();
        if !our_classes.contains(class) {
            if !objects.gateway_classes.contains_key(class) {
                problems.push(Problem::warning(
                    Some(gateway.location.clone()),
                    format!("Gateway {name} names GatewayClass {class:?}, which does not exist; the Gateway is ignored"),
                ));
            }
            continue;
        }
        let issuer = certificates::gateway_issuer(name, gateway, &mut problems);
        let mut listeners: Vec<ListenerState> = gateway
            .object
            .spec
            .listeners
            .iter()
            .map(|l| listener_state(objects, name, l, &mut certificates, issuer.as_ref()))
            .collect();
        if let Some(issuer) = &issuer {
            for (spec, state) in gateway.object.spec.listeners.iter().zip(&mut listeners) {
                managed_listener(name, issuer, spec, state, &mut managed);
            }
        }
        let rejected = gateway
            .object
            .spec
            .addresses
            .iter()
            .flatten()
            .enumerate()
            .find_map(|(i, address)| {
                let kind = address.r#type.as_deref().unwrap_or("IPAddress");
                (kind != "IPAddress" && kind != "Hostname").then(|| {
                    (
                        "UnsupportedAddress",
                        format!("spec.addresses[{i}]: address type {kind:?} is not supported"),
                    )
                })
            });
        if let Some((_, why)) = &rejected {
            for listener in &mut listeners {
                listener.accepted = Err((
                    "UnsupportedValue",
                    format!("the Gateway is not accepted: {why}"),
                ));
            }
        }
        let unusable_address = unusable_address(&gateway.object, &options.addresses);
        gateways.push(GatewayState {
            name: name.clone(),
            rejected,
            unusable_address,
            created_unix: created_unix(&gateway.object.metadata),
            generation: gateway.object.metadata.generation,
            location: gateway.location.clone(),
            listeners,
        });
    }
    // The older Gateway keeps a contested port or hostname.
    gateways.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
    mark_conflicts(&mut gateways);

    let mut resolver = BackendResolver::new(objects);
    for (name, route) in &objects.http_routes {
        let compiled = compile_route(
            name,
            &route.object,
            created_unix(&route.object.metadata),
            &mut resolver,
        );
        let parents = attach_route(objects, name, &route.object, &compiled, &mut gateways);
        if !parents.is_empty() {
            statuses.push(ObjectStatus {
                key: ObjectKey {
                    kind: ObjectKind::HttpRoute,
                    namespace: name.namespace.clone(),
                    name: name.name.clone(),
                },
                location: route.location.clone(),
                generation: route.object.metadata.generation,
                conditions: Vec::new(),
                listeners: Vec::new(),
                addresses: Vec::new(),
                parents,
            });
        }
    }

    let mut policies = policies::PolicyIndex::new(objects);
    let mut ports: BTreeMap<u16, PortConfig> = BTreeMap::new();
    for gateway in &mut gateways {
        let status = gateway_status(gateway, &options.addresses);
        for listener in &mut gateway.listeners {
            let Some(protocol) = listener.protocol.filter(|_| listener.usable()) else {
                continue;
            };
            let mut routes = std::mem::take(&mut listener.routes);
            routes.sort_by(|a, b| {
                (a.route.created_unix, &a.route.id).cmp(&(b.route.created_unix, &b.route.id))
            });
            policies.bind(&gateway.name, &listener.name, &mut routes);
            ports
                .entry(listener.port)
                .or_insert_with(|| PortConfig {
                    port: listener.port,
                    protocol,
                    listeners: Vec::new(),
                })
                .listeners
                .push(Listener {
                    id: ListenerId {
                        gateway: gateway.name.clone(),
                        section: listener.name.clone(),
                    },
                    hostname: listener.hostname.clone(),
                    tls: listener.tls.clone(),
                    routes,
                });
        }
        statuses.push(status);
    }
    let mut config = DataPlaneConfig {
        ports: ports.into_values().collect(),
    };
    for port in &mut config.ports {
        port.listeners.sort_by(|a, b| {
            a.hostname
                .specificity_cmp(&b.hostname)
                .then_with(|| a.id.cmp(&b.id))
        });
    }
    let certificates = certificates::merge_certificates(managed, &mut problems);
    let issuers =
        certificates::resolve_issuers(objects, &options.cluster_resource_namespace, &mut statuses);
    for certificate in &certificates {
        if !issuers.iter().any(|i| i.id == certificate.issuer) {
            problems.push(Problem::warning(
                None,
                format!(
                    "Secret {} is to be issued by {}, which does not exist; the local CA serves until it does",
                    certificate.secret, certificate.issuer
                ),
            ));
        }
    }
    let publishers = dns_records::resolve_publishers(
        objects,
        &config,
        &options.addresses,
        &mut statuses,
        &mut problems,
    );
    statuses.extend(policies.statuses(objects));
    statuses.sort_by(|a, b| a.key.cmp(&b.key));
    let config = Arc::new(config);
    Translation {
        certificates,
        issuers,
        config: config.clone(),
        report: Report {
            config,
            objects: statuses,
            problems,
        },
        policies: policies.in_force(),
        publishers,
    }
}

/// Whether a Gateway in `gateway_namespace` may use the Secret `namespace/name` (same
/// namespace, or a ReferenceGrant there allows it): the Kubernetes source watches no other.
pub(crate) fn gateway_may_use_secret(
    objects: &ObjectSet,
    gateway_namespace: &str,
    namespace: &str,
    name: &str,
) -> bool {
    let from = RefEnd {
        group: GATEWAY_GROUP,
        kind: "Gateway",
        namespace: gateway_namespace,
    };
    let to = RefEnd {
        group: "",
        kind: "Secret",
        namespace,
    };
    reference_allowed(objects, from, to, name)
}

/// Whether the installed Gateway API release is one torhaus serves: any v1.x, since v1
/// releases only add optional fields (which are tolerated). The message says which.
fn supported_version(bundle_version: Option<&str>) -> Result<String, String> {
    let Some(version) = bundle_version else {
        return Ok("Gateway API v1 is supported".to_owned());
    };
    let major = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    if major == Some(1) {
        Ok(format!("Gateway API {version} is supported"))
    } else {
        Err(format!(
            "the installed Gateway API CRDs are version {version}; torhaus serves the v1 releases: install the CRDs of a Gateway API v1.x release"
        ))
    }
}

/// A requested address torhaus does not serve on. Only judged when the served addresses are
/// configured (Kubernetes mode); an empty value asks for any address and is always satisfied.
fn unusable_address(gateway: &Gateway, served: &[GatewayAddress]) -> Option<String> {
    if served.is_empty() {
        return None;
    }
    gateway
        .spec
        .addresses
        .iter()
        .flatten()
        .enumerate()
        .find_map(|(i, requested)| {
            let value = requested.value.as_deref().filter(|v| !v.is_empty())?;
            (!served.iter().any(|a| a.value == value)).then(|| {
                let served: Vec<&str> = served.iter().map(|a| a.value.as_str()).collect();
                format!(
                    "spec.addresses[{i}] {value:?} is not an address torhaus serves on ({}); remove it or add it with --gateway-address",
                    served.join(", ")
                )
            })
        })
}

fn created_unix(metadata: &ObjectMeta) -> i64 {
    metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second())
}

/// Records an HTTPS listener of an opted-in Gateway as managed: each of its Secrets is to be
/// issued for its hostname. A listener without hostname cannot be managed; it says so.
fn managed_listener(
    gateway: &ObjectName,
    issuer: &torhaus_model::IssuerRef,
    spec: &GatewayListeners,
    state: &mut ListenerState,
    managed: &mut Vec<certificates::ManagedListener>,
) {
    if state.protocol != Some(PortProtocol::Https) || !state.usable() {
        return;
    }
    let secrets: Vec<ObjectName> = spec
        .tls
        .iter()
        .flat_map(|tls| tls.certificate_refs.iter().flatten())
        .filter_map(|r| certificates::manageable_secret(r, &gateway.namespace))
        .collect();
    if secrets.is_empty() {
        return;
    }
    let hostname = match certificates::listener_hostname(&state.hostname) {
        Ok(hostname) => hostname,
        Err(why) => {
            state.pending = Some(why);
            return;
        }
    };
    for secret in secrets {
        managed.push(certificates::ManagedListener {
            secret,
            issuer: issuer.clone(),
            hostname: hostname.clone(),
            listener: ListenerId {
                gateway: gateway.clone(),
                section: state.name.clone(),
            },
        });
    }
}

fn listener_state(
    objects: &ObjectSet,
    gateway: &ObjectName,
    spec: &GatewayListeners,
    certificates: &mut CertificateCache,
    issuer: Option<&torhaus_model::IssuerRef>,
) -> ListenerState {
    let mut state = ListenerState {
        name: spec.name.clone(),
        port: 0,
        protocol: None,
        hostname: HostMatch::Any,
        namespaces: NamespacePolicy::Same,
        http_routes_allowed: true,
        supported_kinds: vec![RouteGroupKind {
            group: GATEWAY_GROUP.to_owned(),
            kind: "HTTPRoute".to_owned(),
        }],
        tls: None,
        accepted: Ok(()),
        resolved: Ok(()),
        conflict: None,
        attached_routes: 0,
        routes: Vec::new(),
        pending: None,
    };
    let reject = |state: &mut ListenerState, reason: &'static str, message: String| {
        if state.accepted.is_ok() {
            state.accepted = Err((reason, message));
        }
    };
    match u16::try_from(spec.port) {
        Ok(port) if port > 0 => state.port = port,
        _ => reject(
            &mut state,
            "PortUnavailable",
            format!("port {} is outside 1-65535", spec.port),
        ),
    }
    match spec.protocol.as_str() {
        "HTTP" => state.protocol = Some(PortProtocol::Http),
        "HTTPS" => state.protocol = Some(PortProtocol::Https),
        other => {
            state.supported_kinds.clear();
            reject(
                &mut state,
                "UnsupportedProtocol",
                format!("protocol {other:?} is not supported (torhaus serves HTTP and HTTPS)"),
            );
        }
    }
    if let Some(hostname) = &spec.hostname {
        match HostMatch::parse(hostname) {
            Ok(parsed) => state.hostname = parsed,
            Err(e) => reject(&mut state, "UnsupportedValue", format!("hostname: {e}")),
        }
    }
    if let Some(allowed) = &spec.allowed_routes {
        if let Some(kinds) = &allowed.kinds {
            let mut invalid = Vec::new();
            state.supported_kinds.clear();
            for kind in kinds {
                let group = kind.group.as_deref().unwrap_or(GATEWAY_GROUP);
                if group == GATEWAY_GROUP && kind.kind == "HTTPRoute" && state.protocol.is_some() {
                    state.supported_kinds.push(RouteGroupKind {
                        group: group.to_owned(),
                        kind: kind.kind.clone(),
                    });
                } else {
                    invalid.push(format!("{group}/{}", kind.kind));
                }
            }
            state.http_routes_allowed = !state.supported_kinds.is_empty();
            if !invalid.is_empty() {
                state.resolved = Err((
                    "InvalidRouteKinds",
                    format!(
                        "route kinds {} are not supported on this listener (only HTTPRoute)",
                        invalid.join(", ")
                    ),
                ));
            }
        }
        if let Some(namespaces) = &allowed.namespaces {
            state.namespaces = match namespaces.from.as_ref() {
                None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => {
                    NamespacePolicy::Same
                }
                Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => NamespacePolicy::All,
                Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
                    let selector = namespaces.selector.as_ref().map(|s| LabelSelector {
                        match_labels: s.match_labels.clone().unwrap_or_default(),
                        expressions: s
                            .match_expressions
                            .iter()
                            .flatten()
                            .map(|e| {
                                (
                                    e.key.clone(),
                                    e.operator.clone(),
                                    e.values.clone().unwrap_or_default(),
                                )
                            })
                            .collect(),
                    });
                    match selector.map(|s| s.validate().map(|()| s)) {
                        Some(Ok(selector)) => NamespacePolicy::Selector(selector),
                        Some(Err(e)) => {
                            reject(
                                &mut state,
                                "UnsupportedValue",
                                format!("allowedRoutes.namespaces.selector: {e}"),
                            );
                            NamespacePolicy::Same
                        }
                        None => {
                            reject(
                                &mut state,
                                "UnsupportedValue",
                                "allowedRoutes.namespaces.from is Selector but no selector is set"
                                    .to_owned(),
                            );
                            NamespacePolicy::Same
                        }
                    }
                }
            };
        }
    }
    if state.protocol == Some(PortProtocol::Https) {
        let mut listener_tls = ListenerTls::default();
        if let Some(tls) = &spec.tls {
            if tls.mode == Some(GatewayListenersTlsMode::Passthrough) {
                reject(
                    &mut state,
                    "UnsupportedProtocol",
                    "tls.mode Passthrough needs protocol TLS and TLSRoutes, which torhaus does not serve yet".to_owned(),
                );
            }
            for (i, reference) in tls.certificate_refs.iter().flatten().enumerate() {
                let managed_secret = issuer
                    .and_then(|_| certificates::manageable_secret(reference, &gateway.namespace))
                    .filter(|secret| !objects.secrets.contains_key(secret));
                if let (Some(issuer), Some(secret)) = (issuer, managed_secret) {
                    // Not an error: the issuer writes this Secret; until then the local CA serves.
                    state.pending.get_or_insert_with(|| {
                        format!(
                            "tls.certificateRefs[{i}]: certificate pending: Secret {secret} is being issued by {issuer}; the local CA serves until then"
                        )
                    });
                    continue;
                }
                match resolve_certificate(objects, gateway, reference, certificates) {
                    Ok(certificate) => listener_tls.certificates.push(certificate),
                    Err((reason, message)) => {
                        if state.resolved.is_ok() {
                            state.resolved = Err((
                                reason,
                                format!(
                                    "tls.certificateRefs[{i}]: {message}; the local CA serves instead"
                                ),
                            ));
                        }
                    }
                }
            }
        }
        state.tls = Some(listener_tls);
    }
    state
}

fn resolve_certificate(
    objects: &ObjectSet,
    gateway: &ObjectName,
    reference: &gateway_api::experimental::gateways::GatewayListenersTlsCertificateRefs,
    certificates: &mut CertificateCache,
) -> Result<Arc<torhaus_model::TlsCertificate>, Failure> {
    let group = normalize_group(reference.group.as_deref().unwrap_or(""));
    let kind = reference.kind.as_deref().unwrap_or("Secret");
    let namespace = reference.namespace.as_deref().unwrap_or(&gateway.namespace);
    if !group.is_empty() || kind != "Secret" {
        return Err((
            "InvalidCertificateRef",
            format!("{kind:?} in group {group:?} is not supported (only core Secrets)"),
        ));
    }
    if !gateway_may_use_secret(objects, &gateway.namespace, namespace, &reference.name) {
        return Err((
            "RefNotPermitted",
            format!(
                "Secret {namespace}/{} is in another namespace and no ReferenceGrant there allows Gateways from {}",
                reference.name, gateway.namespace
            ),
        ));
    }
    let source = format!("{namespace}/{}", reference.name);
    let Some(secret) = objects
        .secrets
        .get(&ObjectName::new(namespace, reference.name.clone()))
    else {
        return Err((
            "InvalidCertificateRef",
            format!("Secret {source} not found"),
        ));
    };
    certificates
        .entry(source.clone())
        .or_insert_with(|| certificate_from_secret(&secret.object, &source).map(Arc::new))
        .clone()
        .map_err(|e| ("InvalidCertificateRef", format!("Secret {source} {e}")))
}

/// Listeners on one port must share a protocol and have distinct hostnames; in Gateway order
/// (oldest first), then listener order, the first keeps the port or hostname.
fn mark_conflicts(gateways: &mut [GatewayState]) {
    let mut taken: BTreeMap<u16, (PortProtocol, Vec<(HostMatch, String)>)> = BTreeMap::new();
    for gateway in gateways.iter_mut() {
        for listener in &mut gateway.listeners {
            let Some(protocol) = listener.protocol.filter(|_| listener.accepted.is_ok()) else {
                continue;
            };
            let owner = format!("{}/{}", gateway.name, listener.name);
            match taken.get_mut(&listener.port) {
                None => {
                    taken.insert(
                        listener.port,
                        (protocol, vec![(listener.hostname.clone(), owner)]),
                    );
                }
                Some((existing, _)) if *existing != protocol => {
                    listener.conflict = Some((
                        "ProtocolConflict",
                        format!(
                            "port {} is already served as {existing} by another listener",
                            listener.port
                        ),
                    ));
                }
                Some((_, hostnames)) => {
                    if let Some((_, holder)) =
                        hostnames.iter().find(|(h, _)| *h == listener.hostname)
                    {
                        listener.conflict = Some((
                            "HostnameConflict",
                            format!(
                                "hostname {} on port {} is already served by listener {holder}",
                                listener.hostname, listener.port
                            ),
                        ));
                    } else {
                        hostnames.push((listener.hostname.clone(), owner));
                    }
                }
            }
        }
    }
}

fn namespace_allowed(
    objects: &ObjectSet,
    policy: &NamespacePolicy,
    gateway_namespace: &str,
    route_namespace: &str,
) -> bool {
    match policy {
        NamespacePolicy::Same => gateway_namespace == route_namespace,
        NamespacePolicy::All => true,
        NamespacePolicy::Selector(selector) => {
            selector.matches(&namespace_labels(objects, route_namespace))
        }
    }
}

/// Attaches a compiled route to the listeners its parentRefs select; returns the status of
/// each parentRef this controller serves.
fn attach_route(
    objects: &ObjectSet,
    name: &ObjectName,
    route: &gateway_api::experimental::httproutes::HttpRoute,
    compiled: &CompiledRoute,
    gateways: &mut [GatewayState],
) -> Vec<ParentStatus> {
    let mut statuses = Vec::new();
    let mut attached_to: HashSet<(usize, usize)> = HashSet::new();
    for parent_ref in route.spec.parent_refs.iter().flatten() {
        let group = parent_ref.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = parent_ref.kind.as_deref().unwrap_or("Gateway");
        if group != GATEWAY_GROUP || kind != "Gateway" {
            continue;
        }
        let namespace = parent_ref.namespace.as_deref().unwrap_or(&name.namespace);
        let parent = ParentReference {
            group: group.to_owned(),
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: parent_ref.name.clone(),
            section_name: parent_ref.section_name.clone(),
            port: parent_ref.port,
        };
        let gateway_name = ObjectName::new(namespace, parent_ref.name.clone());
        let Some(gateway_index) = gateways.iter().position(|g| g.name == gateway_name) else {
            if !objects.gateways.contains_key(&gateway_name) {
                statuses.push(ParentStatus {
                    parent,
                    conditions: vec![
                        Condition::new(
                            "Accepted",
                            false,
                            "NoMatchingParent",
                            format!("Gateway {gateway_name} not found"),
                        ),
                        resolved_condition(compiled),
                    ],
                });
            }
            continue;
        };
        let gateway = &mut gateways[gateway_index];
        let selected: Vec<usize> = gateway
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                parent_ref
                    .section_name
                    .as_ref()
                    .is_none_or(|s| *s == l.name)
            })
            .filter(|(_, l)| parent_ref.port.is_none_or(|p| i32::from(l.port) == p))
            .map(|(i, _)| i)
            .collect();
        let accepted = if selected.is_empty() {
            Err((
                "NoMatchingParent",
                format!("Gateway {gateway_name} has no listener matching {parent}"),
            ))
        } else {
            let usable: Vec<usize> = selected
                .into_iter()
                .filter(|i| gateway.listeners[*i].usable())
                .collect();
            let allowed: Vec<usize> = usable
                .iter()
                .copied()
                .filter(|i| {
                    let l = &gateway.listeners[*i];
                    l.http_routes_allowed
                        && namespace_allowed(
                            objects,
                            &l.namespaces,
                            &gateway_name.namespace,
                            &name.namespace,
                        )
                })
                .collect();
            if usable.is_empty() {
                Err((
                    "NoMatchingParent",
                    format!("no listener of Gateway {gateway_name} matching {parent} is accepted"),
                ))
            } else if allowed.is_empty() {
                Err((
                    "NotAllowedByListeners",
                    format!(
                        "the allowedRoutes of the selected listeners of Gateway {gateway_name} do not admit this route"
                    ),
                ))
            } else {
                for i in &allowed {
                    if attached_to.insert((gateway_index, *i)) {
                        gateway.listeners[*i].attached_routes += 1;
                    }
                }
                attach_to_listeners(compiled, gateway, &allowed)
            }
        };
        let mut conditions = vec![match accepted {
            Ok(()) => Condition::new("Accepted", true, "Accepted", "attached"),
            Err((reason, message)) => Condition::new("Accepted", false, reason, message),
        }];
        conditions.push(resolved_condition(compiled));
        if !compiled.dropped.is_empty() && !compiled.route.rules.is_empty() {
            conditions.push(Condition::new(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                compiled.dropped.join("; "),
            ));
        }
        statuses.push(ParentStatus { parent, conditions });
    }
    statuses
}

/// Checks the route's own validity and hostnames, then adds it to each allowed listener whose
/// hostname it intersects.
fn attach_to_listeners(
    compiled: &CompiledRoute,
    gateway: &mut GatewayState,
    allowed: &[usize],
) -> Result<(), Failure> {
    let route_hostnames = match &compiled.hostnames {
        Ok(hostnames) => hostnames,
        Err(e) => return Err(("UnsupportedValue", e.clone())),
    };
    if compiled.route.rules.is_empty() && compiled.rule_count > 0 {
        return Err((
            "UnsupportedValue",
            format!("no valid rule: {}", compiled.dropped.join("; ")),
        ));
    }
    let mut any = false;
    for i in allowed {
        let listener = &mut gateway.listeners[*i];
        let hostnames: Vec<HostMatch> = if route_hostnames.is_empty() {
            vec![listener.hostname.clone()]
        } else {
            let mut matched: Vec<HostMatch> = route_hostnames
                .iter()
                .filter_map(|h| h.intersect(&listener.hostname))
                .collect();
            matched.dedup();
            matched
        };
        if hostnames.is_empty() {
            continue;
        }
        any = true;
        // A route listed twice (two parentRefs to one listener) is served once. Routes attach
        // one after the other, so an earlier copy of this one can only be the last entry
        // (checking the whole list made translation quadratic in routes per listener).
        if listener
            .routes
            .last()
            .is_some_and(|r| r.route.id == compiled.route.id)
        {
            continue;
        }
        listener.routes.push(AttachedRoute {
            route: compiled.route.clone(),
            hostnames,
            auth: Vec::new(),
        });
    }
    if any {
        Ok(())
    } else {
        Err((
            "NoMatchingListenerHostname",
            "no hostname of the route intersects the hostnames of the selected listeners"
                .to_owned(),
        ))
    }
}

fn resolved_condition(compiled: &CompiledRoute) -> Condition {
    match compiled.unresolved.first() {
        None => Condition::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "all references resolved",
        ),
        Some(first) => {
            let messages: Vec<&str> = compiled
                .unresolved
                .iter()
                .map(|f| f.message.as_str())
                .collect();
            Condition::new("ResolvedRefs", false, first.reason, messages.join("; "))
        }
    }
}

fn gateway_status(gateway: &GatewayState, addresses: &[GatewayAddress]) -> ObjectStatus {
    let mut listeners = Vec::new();
    let mut valid = 0;
    for listener in &gateway.listeners {
        let mut conditions = Vec::new();
        conditions.push(match &listener.accepted {
            Ok(()) => Condition::new(
                ListenerConditionType::Accepted,
                true,
                ListenerConditionReason::Accepted,
                "listener accepted",
            ),
            Err((reason, message)) => Condition::new(
                ListenerConditionType::Accepted,
                false,
                reason,
                message.clone(),
            ),
        });
        conditions.push(match &listener.conflict {
            None => Condition::new(
                ListenerConditionType::Conflicted,
                false,
                ListenerConditionReason::NoConflicts,
                "no conflicts",
            ),
            Some((reason, message)) => Condition::new(
                ListenerConditionType::Conflicted,
                true,
                reason,
                message.clone(),
            ),
        });
        conditions.push(match &listener.resolved {
            Ok(()) => Condition::new(
                ListenerConditionType::ResolvedRefs,
                true,
                ListenerConditionReason::ResolvedRefs,
                listener
                    .pending
                    .clone()
                    .unwrap_or_else(|| "all references resolved".to_owned()),
            ),
            Err((reason, message)) => Condition::new(
                ListenerConditionType::ResolvedRefs,
                false,
                reason,
                message.clone(),
            ),
        });
        let programmed = listener.usable();
        if programmed {
            valid += 1;
        }
        conditions.push(if programmed {
            Condition::new(
                ListenerConditionType::Programmed,
                true,
                ListenerConditionReason::Programmed,
                "listener programmed",
            )
        } else {
            Condition::new(
                ListenerConditionType::Programmed,
                false,
                ListenerConditionReason::Invalid,
                "listener is not accepted or conflicts with another",
            )
        });
        listeners.push(ListenerStatus {
            name: listener.name.clone(),
            supported_kinds: listener.supported_kinds.clone(),
            attached_routes: listener.attached_routes,
            conditions,
        });
    }
    let total = gateway.listeners.len();
    let (accepted, programmed) = if let Some((reason, message)) = &gateway.rejected {
        (
            (false, *reason, message.clone()),
            (
                false,
                GatewayConditionReason::Invalid.to_string(),
                "the Gateway is not accepted; see its Accepted condition".to_owned(),
            ),
        )
    } else {
        let accepted = if valid == total {
            (true, "Accepted", "Gateway accepted".to_owned())
        } else if valid > 0 {
            (
                true,
                "ListenersNotValid",
                format!(
                    "{} of {total} listeners are not valid; see their Accepted and Conflicted conditions",
                    total - valid
                ),
            )
        } else {
            (
                false,
                "ListenersNotValid",
                "no listener is valid; see their Accepted and Conflicted conditions".to_owned(),
            )
        };
        let programmed = if valid == 0 {
            (
                false,
                GatewayConditionReason::Invalid.to_string(),
                "no listener can be programmed".to_owned(),
            )
        } else if let Some(message) = &gateway.unusable_address {
            (
                false,
                GatewayConditionReason::AddressNotUsable.to_string(),
                message.clone(),
            )
        } else {
            (
                true,
                GatewayConditionReason::Programmed.to_string(),
                "Gateway programmed".to_owned(),
            )
        };
        (accepted, programmed)
    };
    ObjectStatus {
        key: ObjectKey {
            kind: ObjectKind::Gateway,
            namespace: gateway.name.namespace.clone(),
            name: gateway.name.name.clone(),
        },
        location: gateway.location.clone(),
        generation: gateway.generation,
        conditions: vec![
            Condition::new(
                GatewayConditionType::Accepted,
                accepted.0,
                accepted.1,
                accepted.2,
            ),
            Condition::new(
                GatewayConditionType::Programmed,
                programmed.0,
                programmed.1,
                programmed.2,
            ),
        ],
        listeners,
        addresses: addresses.to_vec(),
        parents: Vec::new(),
    }
}
