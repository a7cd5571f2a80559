//! What translation says about every object: Gateway API conditions and the problems met,
//! printable for `torhaus check` and reusable by the status writer.

use std::fmt;
use std::sync::Arc;

use torhaus_model::{BackendTarget, DataPlaneConfig, Filter, PathMatch, StringMatch};

use crate::source::{ObjectKey, ObjectKind, Problem, Severity, SourceLocation};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        })
    }
}

/// One Gateway API condition, as the status writer will publish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn new(
        type_: impl fmt::Display,
        status: bool,
        reason: impl fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_: type_.to_string(),
            status: if status {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    /// Whether this condition says something is wrong with the object.
    pub fn is_problem(&self) -> bool {
        match self.type_.as_str() {
            "Conflicted" | "PartiallyInvalid" => self.status == ConditionStatus::True,
            "Accepted" | "Programmed" | "ResolvedRefs" => self.status != ConditionStatus::True,
            _ => false,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={} ({})", self.type_, self.status, self.reason)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// A `supportedKinds` entry of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteGroupKind {
    pub group: String,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: i32,
    pub conditions: Vec<Condition>,
}

/// An address a Gateway is reachable at, as published in `status.addresses`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatewayAddress {
    /// `IPAddress` or `Hostname`.
    pub type_: String,
    pub value: String,
}

impl GatewayAddress {
    /// An IP address is published as `IPAddress`, anything else as `Hostname`.
    pub fn parse(raw: &str) -> Self {
        let value = raw.trim().to_owned();
        let type_ = if value.parse::<std::net::IpAddr>().is_ok() {
            "IPAddress"
        } else {
            "Hostname"
        };
        Self {
            type_: type_.to_owned(),
            value,
        }
    }
}

/// The parentRef a route status entry is about, as written in the route (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentReference {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<i32>,
}

impl fmt::Display for ParentReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)?;
        if let Some(section) = &self.section_name {
            write!(f, " section {section}")?;
        }
        if let Some(port) = self.port {
            write!(f, " port {port}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentStatus {
    pub parent: ParentReference,
    pub conditions: Vec<Condition>,
}

/// The status of one object this controller is responsible for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStatus {
    pub key: ObjectKey,
    pub location: SourceLocation,
    pub generation: Option<i64>,
    pub conditions: Vec<Condition>,
    /// Gateways only.
    pub listeners: Vec<ListenerStatus>,
    /// Gateways only: `status.addresses`.
    pub addresses: Vec<GatewayAddress>,
    /// HTTPRoutes only: one entry per parentRef served by this controller.
    pub parents: Vec<ParentStatus>,
}

impl ObjectStatus {
    /// The status of an object that carries only conditions (GatewayClasses, policies, issuers,
    /// publishers).
    pub fn with_conditions(
        kind: ObjectKind,
        namespace: &str,
        name: &str,
        location: &SourceLocation,
        generation: Option<i64>,
        conditions: Vec<Condition>,
    ) -> Self {
        Self {
            key: ObjectKey {
                kind,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            location: location.clone(),
            generation,
            conditions,
            listeners: Vec::new(),
            addresses: Vec::new(),
            parents: Vec::new(),
        }
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerStatus> {
        self.listeners.iter().find(|l| l.name == name)
    }

    fn problem_conditions(&self) -> impl Iterator<Item = (String, &Condition)> + '_ {
        let own = self.conditions.iter().map(|c| (String::new(), c));
        let listeners = self.listeners.iter().flat_map(|l| {
            l.conditions
                .iter()
                .map(move |c| (format!(" listener {}", l.name), c))
        });
        let parents = self.parents.iter().flat_map(|p| {
            p.conditions
                .iter()
                .map(move |c| (format!(" parent {}", p.parent), c))
        });
        own.chain(listeners)
            .chain(parents)
            .filter(|(_, c)| c.is_problem())
    }
}

impl ListenerStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

impl ParentStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// Everything translation has to say: the compiled configuration, every object's status,
/// and the problems met while loading.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub config: Arc<DataPlaneConfig>,
    pub objects: Vec<ObjectStatus>,
    pub problems: Vec<Problem>,
}

impl Report {
    /// Whether anything was rejected, conflicted, unresolved or failed to load.
    pub fn rejected(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
            || self
                .objects
                .iter()
                .any(|o| o.problem_conditions().next().is_some())
    }

    /// The status of one object, if this controller reports on it.
    pub fn object(&self, kind: ObjectKind, namespace: &str, name: &str) -> Option<&ObjectStatus> {
        self.objects
            .iter()
            .find(|o| o.key.kind == kind && o.key.namespace == namespace && o.key.name == name)
    }

    /// Load problems, then every condition that reports something wrong, as one message each.
    pub fn problems(&self) -> Vec<Problem> {
        let mut all = self.problems.clone();
        for object in &self.objects {
            for (scope, condition) in object.problem_conditions() {
                all.push(Problem::error(
                    Some(object.location.clone()),
                    format!("{}{scope}: {condition}", object.key),
                ));
            }
        }
        all
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Listeners:")?;
        if self.config.ports.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for port in &self.config.ports {
            for listener in &port.listeners {
                let certs = match &listener.tls {
                    None => String::new(),
                    Some(tls) if tls.certificates.is_empty() => " certs: local CA".to_owned(),
                    Some(tls) => {
                        let sources: Vec<&str> =
                            tls.certificates.iter().map(|c| c.source.as_str()).collect();
                        format!(" certs: {}", sources.join(", "))
                    }
                };
                writeln!(
                    f,
                    "  :{} {} {} ({}) routes: {}{certs}",
                    port.port,
                    port.protocol,
                    listener.hostname,
                    listener.id,
                    listener.routes.len()
                )?;
            }
        }
        writeln!(f, "Routes:")?;
        for port in &self.config.ports {
            for listener in &port.listeners {
                for attached in &listener.routes {
                    let hostnames: Vec<String> =
                        attached.hostnames.iter().map(ToString::to_string).collect();
                    writeln!(
                        f,
                        "  :{} {} HTTPRoute {} hostnames [{}]",
                        port.port,
                        listener.id,
                        attached.route.id,
                        hostnames.join(", ")
                    )?;
                    for rule in &attached.route.rules {
                        let matches: Vec<String> =
                            rule.matches.iter().map(describe_match).collect();
                        let backends: Vec<String> = rule
                            .backends
                            .iter()
                            .map(|b| match &b.target {
                                BackendTarget::Service(backend) => format!(
                                    "{} weight {} ({} endpoints)",
                                    backend.id,
                                    b.weight,
                                    backend.endpoints.len()
                                ),
                                BackendTarget::Invalid(reason) => {
                                    format!("500 weight {} ({reason})", b.weight)
                                }
                            })
                            .collect();
                        let filters: Vec<&str> = rule.filters.iter().map(filter_name).collect();
                        let filters = if filters.is_empty() {
                            String::new()
                        } else {
                            format!(" filters [{}]", filters.join(", "))
                        };
                        let target = if backends.is_empty() {
                            "(filters answer)".to_owned()
                        } else {
                            backends.join(", ")
                        };
                        let auth = attached
                            .auth_of(rule.index)
                            .map(|policy| format!(" auth AuthPolicy {policy}"))
                            .unwrap_or_default();
                        writeln!(
                            f,
                            "    rule {}: {} ->{filters} {target}{auth}",
                            rule.index,
                            matches.join(" | ")
                        )?;
                    }
                }
            }
        }
        writeln!(f, "Objects:")?;
        for object in &self.objects {
            let generation = object
                .generation
                .map(|g| format!(" generation {g}"))
                .unwrap_or_default();
            writeln!(f, "  {} [{}]{generation}", object.key, object.location)?;
            for condition in &object.conditions {
                writeln!(f, "    {condition}")?;
            }
            for listener in &object.listeners {
                writeln!(
                    f,
                    "    listener {} (attachedRoutes {}):",
                    listener.name, listener.attached_routes
                )?;
                for condition in &listener.conditions {
                    writeln!(f, "      {condition}")?;
                }
            }
            for parent in &object.parents {
                writeln!(f, "    parent {}:", parent.parent)?;
                for condition in &parent.conditions {
                    writeln!(f, "      {condition}")?;
                }
            }
        }
        if !self.problems.is_empty() {
            writeln!(f, "Problems:")?;
            for problem in &self.problems {
                writeln!(f, "  {problem}")?;
            }
        }
        Ok(())
    }
}

fn describe_match(m: &torhaus_model::RequestMatch) -> String {
    let mut parts = vec![match &m.path {
        PathMatch::Exact(p) => format!("path = {p}"),
        PathMatch::Prefix(p) => format!("path prefix {p}"),
        PathMatch::Regex(r) => format!("path ~ {}", r.as_str()),
    }];
    if let Some(method) = &m.method {
        parts.push(format!("method {method}"));
    }
    for header in &m.headers {
        parts.push(format!(
            "header {} {}",
            header.name,
            describe_string_match(&header.value)
        ));
    }
    for query in &m.query {
        parts.push(format!(
            "query {} {}",
            query.name,
            describe_string_match(&query.value)
        ));
    }
    parts.join(" & ")
}

fn describe_string_match(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(v) => format!("= {v}"),
        StringMatch::Regex(r) => format!("~ {}", r.as_str()),
    }
}

fn filter_name(filter: &Filter) -> &'static str {
    match filter {
        Filter::RequestHeaders(_) => "RequestHeaderModifier",
        Filter::ResponseHeaders(_) => "ResponseHeaderModifier",
        Filter::Redirect(_) => "RequestRedirect",
        Filter::Rewrite(_) => "URLRewrite",
        Filter::Mirror(_) => "RequestMirror",
        Filter::Cors(_) => "CORS",
    }
}
