//! The router: compiles a DataPlaneConfig into per-listener lookup tables, and matches requests.
//!
//! Everything is decided at compile time so a lookup is a handful of hash probes and comparisons,
//! with no allocation in the common case and no locks (the compiled config is immutable and is
//! shared through an `ArcSwap` by the caller).
//!
//! # Semantics
//!
//! * **Listener isolation (GEP-1713)**: [`CompiledPort::listener_for_host`] picks the single most
//!   specific listener whose hostname matches (exact, then longest wildcard suffix, then a listener
//!   without hostname). A request is never served by a less specific listener's routes.
//! * **Hostname precedence**: within a listener, routes are grouped by the hostname they were
//!   attached with. Rules of routes whose matching hostname is the most specific are tried first
//!   (exact host, then longer wildcard suffixes, then routes without hostname). When nothing
//!   matches in a group, the lookup falls through to the next less specific group.
//! * **Match precedence** within a hostname group, across all routes (HTTPRoute spec):
//!   Exact path > RegularExpression path > longest PathPrefix (in characters) > method match >
//!   most header matches > most query matches; ties go to the oldest route (`created_unix`),
//!   then `"namespace/name"` alphabetically, then rule index, then match index.
//!   The spec leaves regex precedence to implementations; torhaus ranks regex paths right after
//!   exact paths, as Envoy Gateway does, so that a regex route is not shadowed by the ubiquitous
//!   `PathPrefix /` catch-all. Among regexes, longer patterns win, then the rules above.
//! * **PathPrefix is segment-wise**: `/v2` matches `/v2`, `/v2/` and `/v2/x`, never `/v2x`; `/`
//!   matches every path. A trailing slash in the configured prefix is ignored.
//! * **Paths are matched as received**: no percent-decoding, no dot-segment or slash merging.
//!   `/a%2Fb` is one segment and does not match prefix `/a`.
//! * **Headers**: names case-insensitive (HeaderName); when a request repeats a header, its values
//!   are joined with `,` before matching (as Envoy does).
//! * **Query parameters**: names compared case-sensitively; names and values are percent-decoded
//!   before comparison (`+` is left as is); when a parameter repeats, the first occurrence wins.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use http::{HeaderMap, Method};
use torhaus_model::{
    DataPlaneConfig, HostMatch, HttpRoute, ListenerId, PathMatch, PortProtocol, RequestMatch, Rule,
    WeightedBackend,
};

/// The whole data plane configuration, compiled for lookups.
#[derive(Debug, Default)]
pub struct CompiledConfig {
    ports: Vec<CompiledPort>,
}

/// All listeners of one declared port, indexed by hostname.
#[derive(Debug)]
pub struct CompiledPort {
    port: u16,
    protocol: PortProtocol,
    listeners: Vec<CompiledListener>,
    by_hostname: HostIndex<usize>,
}

/// One listener and its routes, indexed by hostname then path.
#[derive(Debug)]
pub struct CompiledListener {
    model: torhaus_model::Listener,
    tables: HostIndex<MatchTable>,
}

/// What a request carries that routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Normalized with [`torhaus_model::hostname::normalize_request_host`].
    pub host: &'a str,
    /// The path as received, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// The rule chosen for a request and the `matches[]` entry that selected it (filters such as
/// ReplacePrefixMatch need to know which prefix matched).
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    pub route: &'a Arc<HttpRoute>,
    pub rule: &'a Arc<Rule>,
    pub matched: &'a RequestMatch,
    /// The `AuthPolicy` in force for the rule where it is attached (`namespace/name`).
    pub auth: Option<&'a Arc<str>>,
}

/// Table keys (hostnames, paths) come from configuration only; a request merely chooses which
/// key to probe, so it cannot lengthen probe sequences and a keyed (SipHash) hash buys nothing
/// here but cost on every lookup.
type FastMap<V> = HashMap<Box<str>, V, BuildHasherDefault<WordHasher>>;

/// A multiply-rotate hash over 8-byte words (the FxHash construction).
#[derive(Debug, Default, Clone, Copy)]
struct WordHasher(u64);

impl WordHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Entries keyed by hostname pattern, looked up from most to least specific.
#[derive(Debug)]
struct HostIndex<T> {
    exact: FastMap<T>,
    /// Keyed by the wildcard's suffix with its leading dot (`.example.com` for `*.example.com`).
    /// A lookup probes the host's own suffixes, longest first, so its cost follows the number of
    /// labels in the host, not the number of wildcard hostnames configured.
    wildcards: FastMap<T>,
    any: Option<T>,
}

impl<T> Default for HostIndex<T> {
    fn default() -> Self {
        Self {
            exact: FastMap::default(),
            wildcards: FastMap::default(),
            any: None,
        }
    }
}

impl<T> HostIndex<T> {
    fn entry_or_insert_with(&mut self, pattern: &HostMatch, make: impl FnOnce() -> T) -> &mut T {
        match pattern {
            HostMatch::Exact(host) => self.exact.entry(host.as_str().into()).or_insert_with(make),
            HostMatch::Wildcard(suffix) => self
                .wildcards
                .entry(suffix.as_str().into())
                .or_insert_with(make),
            HostMatch::Any => self.any.get_or_insert_with(make),
        }
    }

    /// Every entry whose pattern matches `host`, most specific first.
    fn matching<'s>(&'s self, host: &str) -> impl Iterator<Item = &'s T> {
        let exact = self.exact.get(host);
        // A wildcard needs at least one label before its suffix, hence no suffix at offset 0.
        // The host is only scanned when there are wildcards at all.
        let wildcards = (!self.wildcards.is_empty())
            .then(|| {
                host.match_indices('.')
                    .filter(|(offset, _)| *offset > 0)
                    .filter_map(|(offset, _)| self.wildcards.get(&host[offset..]))
            })
            .into_iter()
            .flatten();
        exact.into_iter().chain(wildcards).chain(self.any.as_ref())
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.exact
            .values_mut()
            .chain(self.wildcards.values_mut())
            .chain(self.any.as_mut())
    }
}

/// One `matches[]` entry of one rule, ready to be tested.
#[derive(Debug)]
struct Candidate {
    route: Arc<HttpRoute>,
    rule: Arc<Rule>,
    match_index: usize,
    /// `"namespace/name"`, the second cross-route tie-breaker.
    route_key: Box<str>,
    auth: Option<Arc<str>>,
    /// No method, header or query condition: the path alone decides, and the lookup need not
    /// reach into the rule (a cache miss with many routes).
    path_only: bool,
}

impl Candidate {
    fn request_match(&self) -> Option<&RequestMatch> {
        self.rule.matches.get(self.match_index)
    }

    fn as_route_match(&self) -> Option<RouteMatch<'_>> {
        Some(RouteMatch {
            route: &self.route,
            rule: &self.rule,
            matched: self.request_match()?,
            auth: self.auth.as_ref(),
        })
    }

    /// Precedence after the path: method, header count, query count, then the tie-breakers.
    fn cmp_after_path(&self, other: &Candidate) -> Ordering {
        let (Some(a), Some(b)) = (self.request_match(), other.request_match()) else {
            return Ordering::Equal;
        };
        b.method
            .is_some()
            .cmp(&a.method.is_some())
            .then_with(|| b.headers.len().cmp(&a.headers.len()))
            .then_with(|| b.query.len().cmp(&a.query.len()))
            .then_with(|| self.route.created_unix.cmp(&other.route.created_unix))
            .then_with(|| self.route_key.cmp(&other.route_key))
            .then_with(|| self.rule.index.cmp(&other.rule.index))
            .then_with(|| self.match_index.cmp(&other.match_index))
    }
}

/// The candidates of one hostname group, indexed by path.
#[derive(Debug, Default)]
struct MatchTable {
    exact_paths: FastMap<Vec<Candidate>>,
    /// Longest pattern first, then [`Candidate::cmp_after_path`].
    regexes: Vec<Candidate>,
    /// Keyed by the prefix without trailing slash; the root prefix is kept apart.
    prefixes: FastMap<Vec<Candidate>>,
    root_prefix: Vec<Candidate>,
    longest_prefix: usize,
}

impl MatchTable {
    fn insert(&mut self, candidate: Candidate) {
        let Some(request_match) = candidate.request_match() else {
            return;
        };
        match &request_match.path {
            PathMatch::Exact(path) => {
                let key: Box<str> = path.as_str().into();
                self.exact_paths.entry(key).or_default().push(candidate);
            }
            PathMatch::Regex(_) => self.regexes.push(candidate),
            PathMatch::Prefix(prefix) => {
                let trimmed = prefix.trim_end_matches('/');
                if trimmed.is_empty() {
                    self.root_prefix.push(candidate);
                } else {
                    self.longest_prefix = self.longest_prefix.max(trimmed.len());
                    self.prefixes
                        .entry(trimmed.into())
                        .or_default()
                        .push(candidate);
                }
            }
        }
    }

    fn sort(&mut self) {
        for group in self
            .exact_paths
            .values_mut()
            .chain(self.prefixes.values_mut())
        {
            group.sort_by(Candidate::cmp_after_path);
        }
        self.root_prefix.sort_by(Candidate::cmp_after_path);
        self.regexes.sort_by(|a, b| {
            regex_len(b)
                .cmp(&regex_len(a))
                .then_with(|| a.cmp_after_path(b))
        });
    }

    fn find(&self, req: &RequestView<'_>) -> Option<&Candidate> {
        if let Some(found) = self
            .exact_paths
            .get(req.path)
            .and_then(|group| first_matching(group, req))
        {
            return Some(found);
        }
        let regex_hit = self.regexes.iter().find(|candidate| {
            candidate.request_match().is_some_and(|m| match &m.path {
                PathMatch::Regex(re) => re.is_match(req.path) && conditions_match(m, req),
                _ => false,
            })
        });
        if regex_hit.is_some() {
            return regex_hit;
        }
        if !self.prefixes.is_empty() {
            // Try the path's segment boundaries from the longest down: the longest prefix wins.
            let mut current = req.path;
            if current.len() > 1 {
                current = current.strip_suffix('/').unwrap_or(current);
            }
            loop {
                if current.len() <= self.longest_prefix
                    && let Some(found) = self
                        .prefixes
                        .get(current)
                        .and_then(|group| first_matching(group, req))
                {
                    return Some(found);
                }
                match current.rfind('/') {
                    Some(0) | None => break,
                    Some(boundary) => current = &current[..boundary],
                }
            }
        }
        first_matching(&self.root_prefix, req)
    }
}

fn regex_len(candidate: &Candidate) -> usize {
    match candidate.request_match().map(|m| &m.path) {
        Some(PathMatch::Regex(re)) => re.as_str().len(),
        _ => 0,
    }
}

fn first_matching<'c>(group: &'c [Candidate], req: &RequestView<'_>) -> Option<&'c Candidate> {
    group.iter().find(|candidate| {
        candidate.path_only
            || candidate
                .request_match()
                .is_some_and(|m| conditions_match(m, req))
    })
}

/// Method, headers and query: everything but the path, which the table's index already checked.
fn conditions_match(request_match: &RequestMatch, req: &RequestView<'_>) -> bool {
    if let Some(method) = &request_match.method
        && method != req.method
    {
        return false;
    }
    let headers_match = request_match.headers.iter().all(|header| {
        let mut values = req.headers.get_all(&header.name).iter();
        let Some(first) = values.next() else {
            return false;
        };
        match values.next() {
            None => std::str::from_utf8(first.as_bytes()).is_ok_and(|v| header.value.matches(v)),
            Some(_) => {
                // Repeated header: rare, so the join may allocate.
                let joined: Vec<&[u8]> = req
                    .headers
                    .get_all(&header.name)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                let joined = joined.join(&b","[..]);
                std::str::from_utf8(&joined).is_ok_and(|v| header.value.matches(v))
            }
        }
    });
    if !headers_match {
        return false;
    }
    request_match.query.iter().all(|param| {
        query_param(req.query, &param.name).is_some_and(|value| param.value.matches(&value))
    })
}

/// The first value of query parameter `name` (compared after percent-decoding).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    query?.split('&').find_map(|pair| {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(raw_name)? == name {
            percent_decode(raw_value)
        } else {
            None
        }
    })
}

/// Decodes `%XX` escapes; `None` when the result is not UTF-8. Malformed escapes stay literal.
fn percent_decode(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains('%') {
        return Some(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex_value(hi).zip(hex_value(lo)),
            _ => None,
        };
        match escaped {
            Some((hi, lo)) => {
                decoded.push(hi << 4 | lo);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).ok().map(Cow::Owned)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

impl CompiledConfig {
    /// Compiles a validated configuration. Infallible: the model carries no invalid values.
    pub fn compile(config: &DataPlaneConfig) -> CompiledConfig {
        CompiledConfig {
            ports: config.ports.iter().map(CompiledPort::compile).collect(),
        }
    }

    /// The port as the Gateway declares it (before any port mapping).
    pub fn port(&self, declared_port: u16) -> Option<&CompiledPort> {
        self.ports.iter().find(|p| p.port == declared_port)
    }

    pub fn ports(&self) -> &[CompiledPort] {
        &self.ports
    }
}

impl CompiledPort {
    fn compile(port: &torhaus_model::PortConfig) -> CompiledPort {
        let listeners: Vec<CompiledListener> = port
            .listeners
            .iter()
            .map(CompiledListener::compile)
            .collect();
        let mut by_hostname = HostIndex::default();
        for (index, listener) in listeners.iter().enumerate() {
            // The translation guarantees distinct hostnames; keep the first if not.
            by_hostname.entry_or_insert_with(&listener.model.hostname, || index);
        }
        CompiledPort {
            port: port.port,
            protocol: port.protocol,
            listeners,
            by_hostname,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn protocol(&self) -> PortProtocol {
        self.protocol
    }

    pub fn listeners(&self) -> &[CompiledListener] {
        &self.listeners
    }

    /// The single most specific listener whose hostname matches `normalized_host` (listener
    /// isolation), or `None` when no listener on this port serves that host.
    pub fn listener_for_host(&self, normalized_host: &str) -> Option<&CompiledListener> {
        let index = *self.by_hostname.matching(normalized_host).next()?;
        self.listeners.get(index)
    }
}

impl CompiledListener {
    fn compile(listener: &torhaus_model::Listener) -> CompiledListener {
        let mut tables: HostIndex<MatchTable> = HostIndex::default();
        for attached in &listener.routes {
            let route_key: Box<str> = attached.route.id.to_string().into();
            for hostname in &attached.hostnames {
                let table = tables.entry_or_insert_with(hostname, MatchTable::default);
                for rule in &attached.route.rules {
                    for (match_index, request_match) in rule.matches.iter().enumerate() {
                        table.insert(Candidate {
                            route: Arc::clone(&attached.route),
                            rule: Arc::clone(rule),
                            match_index,
                            route_key: route_key.clone(),
                            auth: attached.auth_of(rule.index).cloned(),
                            path_only: request_match.method.is_none()
                                && request_match.headers.is_empty()
                                && request_match.query.is_empty(),
                        });
                    }
                }
            }
        }
        for table in tables.values_mut() {
            table.sort();
        }
        CompiledListener {
            model: listener.clone(),
            tables,
        }
    }

    pub fn id(&self) -> &ListenerId {
        &self.model.id
    }

    pub fn model(&self) -> &torhaus_model::Listener {
        &self.model
    }

    /// The rule that serves `req`, by the precedence described in the module docs; `None`
    /// means no route matches (the proxy answers 404).
    pub fn route(&self, req: &RequestView<'_>) -> Option<RouteMatch<'_>> {
        self.tables
            .matching(req.host)
            .find_map(|table| table.find(req))
            .and_then(Candidate::as_route_match)
    }
}

/// Chooses a backend by weight. `random` is a uniformly distributed `u32` (e.g.
/// `fastrand::u32(..)`). Backends of weight 0 are never chosen; `None` when the rule has no
/// backend of positive weight, which the proxy answers with 500 (as the spec asks when no valid
/// backend can take the request). [`torhaus_model::BackendTarget::Invalid`] entries are chosen in
/// proportion to their weight, and the caller answers those requests with 500.
pub fn pick_backend(rule: &Rule, random: u32) -> Option<&WeightedBackend> {
    let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    // Scale to [0, total) without modulo bias worth speaking of.
    let mut point = (u64::from(random) * total) >> 32;
    for backend in &rule.backends {
        let weight = u64::from(backend.weight);
        if point < weight {
            return Some(backend);
        }
        point -= weight;
    }
    None
}

#[cfg(test)]
mod tests;
