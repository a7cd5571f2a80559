//! What the fuzzers drive, with the invariants the proxy relies on: manifests through parsing,
//! translation and compilation; requests through routing, filters and forwarding headers; raw
//! HTTP/1 bytes through pingora's parser and the strict checks; requests and sessions through
//! the identity decision.
//!
//! The libFuzzer targets in `fuzz/libfuzzer/` call these functions with generated input; this
//! crate's tests call them with every file kept under `fuzz/corpus/` and `fuzz/regressions/`, so
//! what a fuzzer once found stays fixed in CI without a fuzzer.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use torhaus_gateway::filters::{self, RedirectInput};
use torhaus_gateway::fuzzing::{self, RawRequestOutcome};
pub use torhaus_gateway::router::CompiledConfig;
use torhaus_gateway::router::{self, RequestView};
use torhaus_k8s::{ObjectSet, TranslateOptions};
use torhaus_model::{Filter, HostMatch, PathMatch, PathModifier, PortProtocol, Rule, Scheme};
use torhaus_policies::identity::Identity;
use torhaus_policies::session::{CookieCodec, Session, chunk_name, seal_session};
use torhaus_policies::{AuthContext, AuthPolicy, Authenticator, Decision};

/// A Gateway setup that fuzzed routes can attach to: an HTTP listener for every host and one for
/// `*.example.com` on its own port, a Service with a hand-written EndpointSlice.
const BASE_MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {team: web}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  gatewayClassName: torhaus
  listeners:
    - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
    - {name: wild, port: 8080, protocol: HTTP, hostname: "*.example.com"}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec: {ports: [{name: http, port: 8080, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-1
  namespace: default
  labels: {kubernetes.io/service-name: echo}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: ["192.0.2.10"], conditions: {ready: true}}]
"#;

/// The GatewayClass torhaus serves, under the name the conformance manifests leave as the
/// placeholder `{GATEWAY_CLASS_NAME}` (the conformance rig substitutes it the same way).
const GATEWAY_CLASS_NAME: &str = "torhaus";

fn gateway_class() -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n\
         metadata: {{name: {GATEWAY_CLASS_NAME}}}\nspec: {{controllerName: {}}}\n",
        torhaus_k8s::CONTROLLER_NAME
    )
}

/// Parses `text` as one manifest file next to [`BASE_MANIFESTS`], translates the result twice
/// (it must be deterministic), compiles it and routes a handful of requests through every
/// listener. Panics (the fuzzer's finding) when an invariant does not hold. Returns how many of
/// those requests a route matched.
pub fn exercise_manifests(text: &str) -> usize {
    let text = &text.replace("{GATEWAY_CLASS_NAME}", GATEWAY_CLASS_NAME);
    let mut set = ObjectSet::default();
    add_file(&mut set, &gateway_class(), Path::new("class.yaml"));
    add_file(&mut set, BASE_MANIFESTS, Path::new("base.yaml"));
    add_file(&mut set, text, Path::new("fuzzed.yaml"));
    // The JSON branch of the parser sees the same text; its objects are not added.
    let _ = torhaus_k8s::parse_manifests(text, Path::new("fuzzed.json"));

    let options = TranslateOptions::default();
    let first = torhaus_k8s::translate(&set, &options);
    let second = torhaus_k8s::translate(&set, &options);
    let report = first.report.to_string();
    assert_eq!(
        report,
        second.report.to_string(),
        "translation is not deterministic"
    );
    let compiled = CompiledConfig::compile(&first.config);
    let words = Vocabulary::of(std::slice::from_ref(&compiled));
    sample_requests()
        .iter()
        .map(|request| exercise_request(&compiled, &words, request))
        .sum()
}

fn add_file(set: &mut ObjectSet, text: &str, path: &Path) {
    let (objects, problems) = torhaus_k8s::parse_manifests(text, path);
    set.problems.extend(problems);
    for (object, location) in objects {
        set.insert(object, location);
    }
}

/// The configurations of the conformance suites under `tests/conformance/`, compiled, one per
/// case file (with its suite's base file), as the conformance rig serves them: the request
/// fuzzer routes through all of them.
pub fn conformance_configs() -> std::io::Result<Vec<CompiledConfig>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance");
    let mut configs = Vec::new();
    for suite in ["torhaus", "gateway-api-v1.6.1"] {
        let dir = root.join(suite).join("manifests");
        let mut files: Vec<_> = std::fs::read_dir(&dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        let (bases, cases): (Vec<_>, Vec<_>) = files.into_iter().partition(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("base"))
        });
        let base = match bases.first() {
            Some(path) => std::fs::read_to_string(path)?,
            None => String::new(),
        };
        for case in cases {
            let mut set = ObjectSet::default();
            add_file(&mut set, &gateway_class(), Path::new("class.yaml"));
            for (text, path) in [
                (base.clone(), dir.join("base.yaml")),
                (std::fs::read_to_string(&case)?, case),
            ] {
                let text = text.replace("{GATEWAY_CLASS_NAME}", GATEWAY_CLASS_NAME);
                add_file(&mut set, &text, &path);
            }
            let translation = torhaus_k8s::translate(&set, &TranslateOptions::default());
            configs.push(CompiledConfig::compile(&translation.config));
        }
    }
    Ok(configs)
}

/// A request as the proxy sees it after pingora has parsed it, in a form a fuzzer can generate.
/// Its parts are either raw or picked from the [`Vocabulary`] of the configuration it is routed
/// through, so that generated requests reach the routes' matches and filters.
#[derive(Debug, Clone, Arbitrary)]
pub struct RequestInput {
    pub method: String,
    /// The Host header as received.
    pub host: Part,
    /// The path; `path_suffix` is appended to it.
    pub path: Part,
    pub path_suffix: String,
    pub query: Option<String>,
    pub headers: Vec<(Part, Vec<u8>)>,
    pub client: ClientAddr,
    pub trusted_hops: u8,
    pub https: bool,
    /// The random draw for weighted backends and mirror percentages.
    pub random: u32,
}

/// A part of a request: as generated, or the n-th word of its kind in the [`Vocabulary`].
#[derive(Debug, Clone, Arbitrary)]
pub enum Part {
    Raw(String),
    Known(u16),
}

impl Part {
    fn resolve<'a>(&'a self, words: &'a [String]) -> &'a str {
        match self {
            Part::Raw(raw) => raw,
            Part::Known(index) if !words.is_empty() => &words[usize::from(*index) % words.len()],
            Part::Known(_) => "",
        }
    }
}

/// The hosts, paths and header names a configuration's routes match on.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    pub header_names: Vec<String>,
}

impl Vocabulary {
    pub fn of(configs: &[CompiledConfig]) -> Vocabulary {
        let mut words = Vocabulary::default();
        let listeners = configs
            .iter()
            .flat_map(|c| c.ports())
            .flat_map(|p| p.listeners());
        for listener in listeners {
            for attached in &listener.model().routes {
                for host in &attached.hostnames {
                    words.hosts.push(match host {
                        HostMatch::Any => "any.test".to_owned(),
                        HostMatch::Exact(host) => host.clone(),
                        HostMatch::Wildcard(suffix) => format!("x{suffix}"),
                    });
                }
                for request_match in attached.route.rules.iter().flat_map(|r| r.matches.iter()) {
                    match &request_match.path {
                        PathMatch::Exact(path) | PathMatch::Prefix(path) => {
                            words.paths.push(path.clone());
                        }
                        PathMatch::Regex(_) => {}
                    }
                    for header in &request_match.headers {
                        words.header_names.push(header.name.as_str().to_owned());
                    }
                }
            }
        }
        for list in [&mut words.hosts, &mut words.paths, &mut words.header_names] {
            list.sort();
            list.dedup();
        }
        words
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum ClientAddr {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl From<ClientAddr> for IpAddr {
    fn from(addr: ClientAddr) -> IpAddr {
        match addr {
            ClientAddr::V4(octets) => IpAddr::V4(Ipv4Addr::from(octets)),
            ClientAddr::V6(octets) => IpAddr::V6(Ipv6Addr::from(octets)),
        }
    }
}

/// Requests over the configuration's own hosts and paths, and a few odd shapes, routed by
/// [`exercise_manifests`].
pub fn sample_requests() -> Vec<RequestInput> {
    let odd_paths = ["/%2e%2E/x", "//a//b", "/foo/bar/"];
    let mut requests = Vec::new();
    for index in 0..30u16 {
        let path = match odd_paths.get(usize::from(index % 10)) {
            Some(odd) => Part::Raw((*odd).to_owned()),
            None => Part::Known(index / 2),
        };
        requests.push(RequestInput {
            method: if index % 2 == 0 { "GET" } else { "POST" }.to_owned(),
            host: Part::Known(index),
            path,
            path_suffix: if index % 3 == 0 {
                "/sub".to_owned()
            } else {
                String::new()
            },
            query: (index % 4 == 0).then(|| "q=1&q=2".to_owned()),
            headers: vec![
                (Part::Known(index), b"two".to_vec()),
                (
                    Part::Raw("origin".to_owned()),
                    b"https://app.example.com".to_vec(),
                ),
                (
                    Part::Raw("x-forwarded-for".to_owned()),
                    b"198.51.100.7, 10.0.0.1".to_vec(),
                ),
            ],
            client: ClientAddr::V4([10, 0, 0, 2]),
            trusted_hops: 1,
            https: index % 2 == 1,
            random: u32::from(index).wrapping_mul(0x9e37_79b9),
        });
    }
    requests
}

/// Routes `input` through every listener of `config` that serves its host, as the proxy does,
/// then runs the matched rule's filters, the backend choice and the forwarding headers. Returns
/// how many listeners had a route for it.
pub fn exercise_request(
    config: &CompiledConfig,
    words: &Vocabulary,
    input: &RequestInput,
) -> usize {
    let host = input.host.resolve(&words.hosts);
    let target = format!("{}{}", input.path.resolve(&words.paths), input.path_suffix);
    let Ok(method) = Method::from_bytes(input.method.as_bytes()) else {
        return 0; // pingora answers 400 before the proxy sees it
    };
    // pingora hands over only header values it could parse; the proxy never sees others.
    let Ok(raw_host) = HeaderValue::from_str(host) else {
        return 0;
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, raw_host);
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.resolve(&words.header_names).as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    let scheme = if input.https {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let client = IpAddr::from(input.client);
    let forwarded = filters::forwarded_headers(
        client,
        &headers,
        u32::from(input.trusted_hops),
        scheme,
        host,
    );
    for (name, value) in [
        ("X-Forwarded-For", &forwarded.x_forwarded_for),
        ("X-Forwarded-Proto", &forwarded.x_forwarded_proto),
        ("X-Forwarded-Host", &forwarded.x_forwarded_host),
        ("Forwarded", &forwarded.forwarded),
    ] {
        assert!(
            HeaderValue::from_str(value).is_ok(),
            "{name} is not a valid header value: {value:?}"
        );
    }
    let _ = filters::effective_client_ip(client, &headers, u32::from(input.trusted_hops));

    let Some(normalized_host) = torhaus_model::hostname::normalize_request_host(host) else {
        return 0; // the proxy answers 400
    };
    let path = target.as_str();
    let query = input.query.as_deref();
    let view = RequestView {
        host: &normalized_host,
        path,
        query,
        method: &method,
        headers: &headers,
    };
    let redirect_host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let mut matched_listeners = 0;
    for port in config.ports() {
        let Some(listener) = port.listener_for_host(&normalized_host) else {
            continue;
        };
        let Some(matched) = listener.route(&view) else {
            continue;
        };
        matched_listeners += 1;
        assert!(
            matched
                .rule
                .matches
                .iter()
                .any(|m| std::ptr::eq(m, matched.matched)),
            "the matched entry is not one of the rule's matches"
        );
        let scheme = match port.protocol() {
            PortProtocol::Https => Scheme::Https,
            _ => scheme,
        };
        exercise_rule(
            matched.rule,
            &RedirectInput {
                scheme,
                host: redirect_host,
                path,
                query,
                listener_port: port.port(),
                matched: matched.matched,
            },
            &headers,
            input.random,
        );
    }
    matched_listeners
}

fn exercise_rule(rule: &Rule, request: &RedirectInput<'_>, headers: &HeaderMap, random: u32) {
    let backend_filters = rule.backends.iter().flat_map(|b| b.filters.iter());
    for filter in rule.filters.iter().chain(backend_filters) {
        match filter {
            Filter::Redirect(redirect) => {
                let (status, location) = filters::redirect_location(redirect, request);
                assert!(
                    matches!(status, 301 | 302 | 303 | 307 | 308),
                    "redirect status {status}"
                );
                assert!(!location.is_empty(), "empty redirect Location");
            }
            Filter::Rewrite(rewrite) => {
                if let Some(modifier) = &rewrite.path {
                    let rewritten = filters::rewrite_path(modifier, request.path, request.matched);
                    let replacement = match modifier {
                        PathModifier::ReplaceFullPath(p) | PathModifier::ReplacePrefixMatch(p) => p,
                    };
                    assert!(
                        rewritten.starts_with('/') || !replacement.starts_with('/'),
                        "rewrite of {:?} gave {rewritten:?}",
                        request.path
                    );
                }
            }
            Filter::Cors(cors) => {
                if let Some(origin) = headers.get(http::header::ORIGIN)
                    && let Ok(origin) = origin.to_str()
                    && filters::cors_origin_allowed(cors, origin)
                {
                    let _ = filters::cors_response_headers(cors, origin);
                }
            }
            Filter::Mirror(mirror) => {
                let _ = filters::should_mirror(mirror, random);
            }
            Filter::RequestHeaders(_) | Filter::ResponseHeaders(_) => {}
        }
    }
    if !rule.backends.is_empty() {
        let _ = router::pick_backend(rule, random);
    }
}

/// The limit `--max-request-header-bytes` has by default.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Sends `raw` through pingora's HTTP/1 parser and the strict checks as a connection's first
/// request, and checks that whatever they let through has unambiguous framing, read literally
/// from the bytes on the wire: no request smuggling past torhaus to a backend that frames it
/// differently.
pub fn exercise_raw_request(raw: &[u8]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    let outcome = runtime.block_on(fuzzing::read_and_check(raw.to_vec(), MAX_HEADER_BYTES));
    check_engine_agrees(raw, &outcome);
    let RawRequestOutcome::Accepted(request) = outcome else {
        return;
    };
    let fields = raw_fields(&request.header_block);
    let named = |name: &str| -> Vec<&[u8]> {
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| *v)
            .collect()
    };
    let lengths = named("content-length");
    let codings = named("transfer-encoding");
    let hosts = named("host");
    let shown = String::from_utf8_lossy(raw);
    assert!(
        lengths.is_empty() || codings.is_empty(),
        "forwarded with Content-Length and Transfer-Encoding: {shown:?}"
    );
    assert!(
        lengths.len() <= 1,
        "forwarded with {} Content-Length lines: {shown:?}",
        lengths.len()
    );
    if request.version == http::Version::HTTP_11 {
        assert_eq!(
            hosts.len(),
            1,
            "HTTP/1.1 forwarded with {} Host lines: {shown:?}",
            hosts.len()
        );
    }
    assert!(
        hosts.len() <= 1,
        "forwarded with {} Host lines: {shown:?}",
        hosts.len()
    );
    if let Some(length) = lengths.first() {
        assert!(
            !length.is_empty() && length.iter().all(u8::is_ascii_digit),
            "forwarded with Content-Length {:?}: {shown:?}",
            String::from_utf8_lossy(length)
        );
        if let Some(length) = std::str::from_utf8(length)
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        {
            match &request.body {
                Ok(body) => assert_eq!(body.len(), length, "body framed differently: {shown:?}"),
                Err(partial) => assert!(partial.len() <= length, "body overran: {shown:?}"),
            }
        }
    }
    if !codings.is_empty() {
        let joined = codings.join(&b","[..]);
        let last = joined
            .rsplit(|&b| b == b',')
            .map(trim_ows)
            .find(|coding| !coding.is_empty())
            .unwrap_or_default();
        assert!(
            last.eq_ignore_ascii_case(b"chunked"),
            "forwarded with Transfer-Encoding {:?} (chunked must be the last coding): {shown:?}",
            String::from_utf8_lossy(&joined)
        );
    }
}

/// torhaus's own HTTP/1 engine may hand a request to pingora's proxy or refuse more than pingora
/// does, but it must never serve what pingora and the strict checks refuse, nor a request with a
/// body (at most one `Content-Length`, of zero, which pingora too reads as no body) or without
/// exactly one Host; what it serves has the Host pingora reads. Its chunked-body
/// follower (used on responses) must find the payload pingora's decoder finds whenever both
/// complete.
fn check_engine_agrees(raw: &[u8], pingora: &RawRequestOutcome) {
    let shown = String::from_utf8_lossy(raw);
    if let fuzzing::EngineOutcome::Served(served) = fuzzing::engine_reads(raw, MAX_HEADER_BYTES) {
        let fields = raw_fields(&served.head);
        let count = |name: &str| {
            fields
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .count()
        };
        let lengths: Vec<&[u8]> = fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
            .map(|(_, v)| *v)
            .collect();
        assert!(
            lengths.len() <= 1
                && lengths
                    .iter()
                    .all(|v| !v.is_empty() && v.iter().all(|&b| b == b'0')),
            "engine serves a body: {shown:?}"
        );
        assert_eq!(
            count("transfer-encoding"),
            0,
            "engine serves a body: {shown:?}"
        );
        assert_eq!(
            count("host"),
            1,
            "engine serves without one Host: {shown:?}"
        );
        let RawRequestOutcome::Accepted(accepted) = pingora else {
            panic!("the engine serves what pingora refuses ({pingora:?}): {shown:?}");
        };
        assert_eq!(accepted.version, http::Version::HTTP_11, "{shown:?}");
        assert!(
            accepted.body.as_ref().is_ok_and(Vec::is_empty),
            "the engine serves a request pingora reads a body for: {shown:?}"
        );
        assert_eq!(
            accepted.headers.get(http::header::HOST),
            served.headers.get(http::header::HOST),
            "the engine and pingora read different hosts: {shown:?}"
        );
    }
    if let RawRequestOutcome::Accepted(accepted) = pingora
        && raw.starts_with(&accepted.header_block)
        && accepted
            .headers
            .get(http::header::TRANSFER_ENCODING)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        match fuzzing::engine_follows_chunked(&raw[accepted.header_block.len()..]) {
            Ok(Some(followed)) => match &accepted.body {
                Ok(body) => {
                    assert_eq!(
                        followed.payload_bytes,
                        body.len() as u64,
                        "the engine and pingora find different chunked payloads: {shown:?}"
                    );
                    assert_eq!(
                        &followed.data, body,
                        "the engine decodes a chunked body unlike pingora: {shown:?}"
                    );
                }
                Err(_) => panic!("the engine completes a chunked body pingora refuses: {shown:?}"),
            },
            Ok(None) => {}
            Err(error) if error.contains("disagree") => panic!("{error}: {shown:?}"),
            Err(_) => {}
        }
    }
}

/// The field lines of a raw HTTP/1 header block, read literally: (name as written, value without
/// surrounding whitespace). Empty lines before the request line are ignored (RFC 9112, 2.2), the
/// request line is skipped, and the block ends at the first empty line after it.
fn raw_fields(block: &[u8]) -> Vec<(&[u8], &[u8])> {
    block
        .split(|&b| b == b'\n')
        .skip_while(|line| line.is_empty() || *line == b"\r")
        .skip(1)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .map(|line| match line.iter().position(|&b| b == b':') {
            Some(colon) => (&line[..colon], trim_ows(&line[colon + 1..])),
            None => (line, &line[line.len()..]),
        })
        .collect()
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The policy the identity fuzzer decides under: the documented example
/// (`policies/examples/authpolicy.yaml`: OIDC login, sessions, bearer JWTs, group, e-mail and
/// claim rules, public paths, Authentik headers and a custom one).
const EXAMPLE_POLICY: &str = include_str!("../../policies/examples/authpolicy.yaml");
const SESSION_KEY: [u8; 32] = [7; 32];

fn example_authenticator() -> Option<&'static Authenticator> {
    static AUTHENTICATOR: OnceLock<Option<Authenticator>> = OnceLock::new();
    AUTHENTICATOR
        .get_or_init(|| {
            let object: AuthPolicy = serde_yaml::from_str(EXAMPLE_POLICY).ok()?;
            let secrets = |_: &str, name: &str, _: &str| match name {
                "grafana-oidc" => Some(b"s3cret".to_vec()),
                "torhaus-session" => Some(SESSION_KEY.to_vec()),
                _ => None,
            };
            let policy = object.validate(&secrets).ok()?;
            let context = AuthContext::new().ok()?;
            Some(Authenticator::new(Arc::new(policy), &context))
        })
        .as_ref()
}

/// A request to a route under an identity policy, possibly with a session cookie sealed by the
/// policy's own key (so that the decisions behind a valid cookie are reached too).
#[derive(Debug, Clone, Arbitrary)]
pub struct IdentityInput {
    pub method: String,
    pub path_and_query: String,
    pub host: String,
    pub https: bool,
    pub headers: Vec<(String, Vec<u8>)>,
    pub session: Option<SessionInput>,
}

/// What a session cookie carries; the IdP's claims are outside input too. The values the
/// example policy's rules look for are offered as choices, so that generated identities pass
/// the rules as often as they fail them.
#[derive(Debug, Clone, Arbitrary)]
pub struct SessionInput {
    pub sub: String,
    pub username: Option<String>,
    pub email_local_part: String,
    /// `Expected`: `home.example`, the policy's e-mail domain.
    pub email_domain: Choice,
    pub name: Option<String>,
    /// `Expected`: `admins`, one of the policy's groups.
    pub groups: Vec<Choice>,
    /// `Expected`: `ops`, the value the policy's claim rule asks for.
    pub department: Option<Choice>,
    /// Seconds from now (negative: in the past).
    pub expires_in: i32,
    pub access_expires_in: Option<i32>,
    pub refresh_token: Option<String>,
}

/// The value a rule expects, or any other.
#[derive(Debug, Clone, Arbitrary)]
pub enum Choice {
    Expected,
    Other(String),
}

impl Choice {
    fn or(&self, expected: &str) -> String {
        match self {
            Choice::Expected => expected.to_owned(),
            Choice::Other(other) => other.clone(),
        }
    }
}

/// Decides `input` under the example policy ([`Authenticator::check`], the pure decision the
/// proxy makes on every request to a protected route) and checks the decision's shape: identity
/// headers sent upstream are all ones the proxy strips from the client's request first, and
/// redirects carry a `Location`.
pub fn exercise_identity(input: &IdentityInput) -> Option<DecisionKind> {
    let Some(authenticator) = example_authenticator() else {
        panic!("the example AuthPolicy no longer validates");
    };
    let Ok(method) = Method::from_bytes(input.method.as_bytes()) else {
        return None;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    if let Some(session) = &input.session
        && let Some(cookie) = sealed_session_cookie(session)
        && let Ok(value) = HeaderValue::from_str(&cookie)
    {
        headers.append(http::header::COOKIE, value);
    }
    let request = torhaus_policies::RequestView {
        method: &method,
        scheme: if input.https { "https" } else { "http" },
        host: &input.host,
        path_and_query: &input.path_and_query,
        headers: &headers,
    };
    Some(match authenticator.check(&request) {
        Decision::Allow(allow) => {
            for (name, _) in &allow.upstream_headers {
                assert!(
                    authenticator.strip_list().contains(name),
                    "identity header {name} is not stripped from the client's request first"
                );
            }
            if allow.identity.is_some() {
                DecisionKind::AllowIdentified
            } else {
                DecisionKind::AllowAnonymous
            }
        }
        Decision::Reply(reply) => {
            if reply.status.is_redirection() {
                assert!(
                    reply
                        .headers
                        .iter()
                        .any(|(n, _)| n == http::header::LOCATION),
                    "a {} without Location",
                    reply.status
                );
            }
            DecisionKind::Reply
        }
        Decision::Pending(_) => DecisionKind::Pending,
    })
}

/// Which way an identity decision went, for the replay test to check that the kept inputs
/// reach every kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DecisionKind {
    /// An identity was established (a session or a bearer token) and passed the rules.
    AllowIdentified,
    /// A public path.
    AllowAnonymous,
    /// The gateway answers: a login redirect, 401, 403, a logout.
    Reply,
    /// The provider must be asked (a code exchange, a refresh).
    Pending,
}

fn sealed_session_cookie(input: &SessionInput) -> Option<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let at = |offset: i32| now.saturating_add_signed(i64::from(offset));
    let mut claims = serde_json::Map::new();
    if let Some(department) = &input.department {
        claims.insert("department".into(), department.or("ops").into());
    }
    let session = Session {
        id: "fuzzed-session".into(),
        sid: None,
        issued_at: now.saturating_sub(60),
        expires_at: at(input.expires_in),
        access_expires_at: input.access_expires_in.map(at),
        refresh_token: input.refresh_token.clone(),
        groups_truncated: false,
        identity: Identity {
            sub: input.sub.clone(),
            username: input.username.clone(),
            email: Some(format!(
                "{}@{}",
                input.email_local_part,
                input.email_domain.or("home.example")
            )),
            name: input.name.clone(),
            groups: input.groups.iter().map(|g| g.or("admins")).collect(),
            claims,
            raw_token: None,
        },
    };
    let codec = CookieCodec::new(&[SESSION_KEY.to_vec()]);
    let chunks = seal_session(&codec, "torhaus_session", &session, &[]).ok()?;
    let cookie = chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| format!("{}={chunk}", chunk_name("torhaus_session", index)))
        .collect::<Vec<_>>()
        .join("; ");
    Some(cookie)
}

/// Runs `exercise` over every file under `dir` (recursively); returns how many it read.
pub fn replay_dir(dir: &Path, exercise: &mut dyn FnMut(&[u8])) -> std::io::Result<usize> {
    let mut count = 0;
    if !dir.exists() {
        return Ok(0);
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            count += replay_dir(&path, exercise)?;
        } else {
            exercise(&std::fs::read(&path)?);
            count += 1;
        }
    }
    Ok(count)
}
