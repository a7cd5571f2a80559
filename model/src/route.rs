//! Routes as the data plane sees them: rules with compiled matches, filters and backends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use crate::ObjectName;

/// The route kinds the data plane serves (GRPCRoute will join HTTPRoute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Http,
}

/// An accepted route: every rule below is valid. Rules whose parts could not be resolved still
/// appear, with [`BackendTarget::Invalid`] backends, because the spec asks for 500s there.
#[derive(Debug)]
pub struct HttpRoute {
    pub kind: RouteKind,
    pub id: ObjectName,
    /// creationTimestamp as Unix seconds (0 when the object has none, as in a hand-written
    /// file); the first tie-breaker of the spec's precedence.
    pub created_unix: i64,
    pub rules: Vec<Arc<Rule>>,
}

/// One rule of a route.
#[derive(Debug)]
pub struct Rule {
    /// Position in `spec.rules`: the last tie-breaker of precedence.
    pub index: usize,
    /// `spec.rules[].name`, the sectionName that policies attach to.
    pub name: Option<String>,
    /// Never empty: a rule without matches has the spec's default `PathPrefix /`.
    pub matches: Vec<RequestMatch>,
    /// Applied in order, before the backend's own filters.
    pub filters: Vec<Filter>,
    /// Empty only when the rule's filters answer by themselves (a redirect); otherwise a rule
    /// without any valid backend answers 500 (the translation leaves an `Invalid` entry).
    pub backends: Vec<WeightedBackend>,
    pub timeouts: Timeouts,
    pub retry: Option<RetryPolicy>,
}

/// All conditions of one `matches[]` entry; a request must satisfy every one.
#[derive(Debug, Clone)]
pub struct RequestMatch {
    pub path: PathMatch,
    pub method: Option<Method>,
    /// Header names are unique here (the spec says only the first of equal names counts).
    pub headers: Vec<HeaderMatch>,
    /// Parameter names are unique here, compared case-sensitively.
    pub query: Vec<QueryMatch>,
}

impl Default for RequestMatch {
    fn default() -> Self {
        Self {
            path: PathMatch::Prefix("/".to_owned()),
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// Segment-wise: `/v2` matches `/v2` and `/v2/x` but not `/v2x`. Stored without a trailing
    /// slash, except the root `/`.
    Prefix(String),
    /// Anchored at both ends: it must match the whole path.
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    /// Anchored at both ends: it must match the whole value.
    Regex(Regex),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(expected) => expected == value,
            StringMatch::Regex(re) => re.is_match(value),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: StringMatch,
}

#[derive(Debug, Clone)]
pub struct QueryMatch {
    pub name: String,
    pub value: StringMatch,
}

#[derive(Debug, Clone)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(Redirect),
    Rewrite(Rewrite),
    Mirror(Mirror),
    Cors(Arc<Cors>),
}

/// Set replaces, add appends, remove deletes; names are unique across the three lists.
#[derive(Debug, Clone, Default)]
pub struct HeaderModifier {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the prefix that the rule's `PathPrefix` match matched. The translation only
    /// accepts it on rules whose matches are all prefix matches.
    ReplacePrefixMatch(String),
}

/// RequestRedirect. Unset fields keep the request's value; see the spec for the port rules,
/// which the data plane applies using the listener's declared port.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<Scheme>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    /// One of 301, 302, 303, 307, 308; 302 when the route leaves it out.
    pub status: u16,
}

#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

/// RequestMirror: a copy of the request goes to `backend`; its response is discarded.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub backend: BackendTarget,
    /// Share of requests mirrored, as numerator/denominator (100/100 when unset).
    pub numerator: u32,
    pub denominator: u32,
}

/// The CORS filter (GEP-1767).
#[derive(Debug, Clone, Default)]
pub struct Cors {
    /// Origins as written; `*` alone allows any origin, and a `*` as the host's first label
    /// (`https://*.example.com`) matches any subdomain.
    pub allow_origins: Vec<String>,
    pub allow_credentials: bool,
    /// Empty means none; a single `*` means any.
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    /// Seconds; the spec's default is 5.
    pub max_age: u32,
}

#[derive(Debug, Clone)]
pub struct WeightedBackend {
    /// 0 means this backend never receives traffic.
    pub weight: u32,
    pub target: BackendTarget,
    /// Per-backendRef filters, applied after the rule's filters when this backend is chosen.
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone)]
pub enum BackendTarget {
    Service(Arc<Backend>),
    /// A reference the translation could not resolve; requests sent here get a 500. The reason
    /// is for logs and the status page.
    Invalid(Arc<str>),
}

/// A Service port and its ready endpoints.
#[derive(Debug)]
pub struct Backend {
    pub id: BackendId,
    pub protocol: UpstreamProtocol,
    /// Ready endpoints from the Service's EndpointSlices; empty means 503.
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId {
    pub service: ObjectName,
    pub port: u16,
}

impl std::fmt::Display for BackendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.service, self.port)
    }
}

/// How to speak to a backend, from the Service port's appProtocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (WebSocket upgrades included).
    Http1,
    /// Prior-knowledge HTTP/2 over cleartext (`kubernetes.io/h2c`).
    H2c,
}

/// `rules[].timeouts`. `None` means no limit: long downloads and streams are never cut by a
/// default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// From the request's arrival to the end of the response headers, retries included.
    pub request: Option<Duration>,
    /// For one attempt at a backend.
    pub backend_request: Option<Duration>,
}

/// `rules[].retry` (GEP-1731).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Response codes that trigger a retry; connection failures always do.
    pub codes: Vec<u16>,
    pub backoff: Option<Duration>,
}
