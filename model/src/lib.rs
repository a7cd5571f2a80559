//! The validated, Kubernetes-free configuration that torhaus's data plane serves.
//!
//! `k8s` translates Gateway API objects into a [`DataPlaneConfig`]; `gateway` compiles it into
//! its lookup structures and swaps it in atomically. Everything here is already validated: a
//! value of these types never needs checking again on the request path, and no Kubernetes API
//! type appears in it.
#![forbid(unsafe_code)]

pub mod hostname;
pub mod issuance;
pub mod route;
pub mod tls;

use std::fmt;
use std::sync::Arc;

pub use hostname::{HostMatch, HostnameError};
pub use issuance::{IssuerKind, IssuerRef, ManagedCertificate};
pub use route::*;
pub use tls::{OnDemandIssuer, TlsCertificate};

/// A namespaced object name, as used in logs, metrics labels and status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName {
    pub namespace: String,
    pub name: String,
}

impl ObjectName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything the data plane serves, as one immutable snapshot.
#[derive(Debug, Clone, Default)]
pub struct DataPlaneConfig {
    /// One entry per distinct listener port; listeners of every Gateway on that port are merged.
    pub ports: Vec<PortConfig>,
}

impl DataPlaneConfig {
    pub fn port(&self, port: u16) -> Option<&PortConfig> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// The protocol a port speaks. Listeners of different protocols never share a port: the
/// translation rejects the conflict before it reaches here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortProtocol {
    /// Cleartext HTTP/1.1 and h2c.
    Http,
    /// TLS terminated here, then HTTP/1.1 or h2 by ALPN.
    Https,
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortProtocol::Http => "HTTP",
            PortProtocol::Https => "HTTPS",
        })
    }
}

/// All listeners bound to one port.
#[derive(Debug, Clone)]
pub struct PortConfig {
    /// The port as the Gateway declares it (before any `--port-map`). Redirects use it.
    pub port: u16,
    pub protocol: PortProtocol,
    /// Listeners with distinct hostnames (the translation drops conflicting ones). A request
    /// is served by the single most specific listener whose hostname matches (listener
    /// isolation), never by a less specific one.
    pub listeners: Vec<Listener>,
}

/// Identifies a listener: the Gateway and the listener's `name` (its sectionName).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId {
    pub gateway: ObjectName,
    pub section: String,
}

impl fmt::Display for ListenerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.gateway, self.section)
    }
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub id: ListenerId,
    pub hostname: HostMatch,
    /// Present exactly when the port protocol is HTTPS.
    pub tls: Option<ListenerTls>,
    /// The routes attached to this listener, with their hostnames already intersected with the
    /// listener's hostname.
    pub routes: Vec<AttachedRoute>,
}

#[derive(Debug, Clone, Default)]
pub struct ListenerTls {
    /// Valid certificates from the listener's certificateRefs, in reference order. When empty,
    /// the data plane asks its [`OnDemandIssuer`] (the local CA) for one.
    pub certificates: Vec<Arc<TlsCertificate>>,
}

/// A route as attached to one listener.
#[derive(Debug, Clone)]
pub struct AttachedRoute {
    pub route: Arc<HttpRoute>,
    /// The intersection of the route's hostnames with the listener's hostname; never empty
    /// (a route without hostnames gets the listener's hostname, possibly [`HostMatch::Any`]).
    pub hostnames: Vec<HostMatch>,
    /// The `AuthPolicy` (`namespace/name`) in force for each rule, indexed like
    /// `route.rules`; empty when no rule of the route is under a policy. Per attachment, not per
    /// route: a policy on a Gateway or listener covers a route only where it is attached there.
    pub auth: Vec<Option<Arc<str>>>,
}

impl AttachedRoute {
    /// The policy in force for rule `index` of this attachment.
    pub fn auth_of(&self, index: usize) -> Option<&Arc<str>> {
        self.auth.get(index).and_then(Option::as_ref)
    }
}
