//! Unit tests of the router: precedence, hostnames, listener isolation, matching, weights.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use torhaus_model::{
    AttachedRoute, BackendTarget, DataPlaneConfig, HeaderMatch, HostMatch, HttpRoute, Listener,
    ListenerId, ObjectName, PathMatch, PortConfig, PortProtocol, QueryMatch, RequestMatch,
    RouteKind, Rule, StringMatch, Timeouts, WeightedBackend,
};

use super::*;

fn host(pattern: &str) -> HostMatch {
    if pattern == "*" {
        return HostMatch::Any;
    }
    HostMatch::parse(pattern).expect("test hostname is valid")
}

fn prefix(p: &str) -> RequestMatch {
    RequestMatch {
        path: PathMatch::Prefix(p.to_owned()),
        ..RequestMatch::default()
    }
}

fn exact(p: &str) -> RequestMatch {
    RequestMatch {
        path: PathMatch::Exact(p.to_owned()),
        ..RequestMatch::default()
    }
}

fn regex(p: &str) -> RequestMatch {
    RequestMatch {
        path: PathMatch::Regex(Regex::new(&format!("^(?:{p})$")).expect("test regex compiles")),
        ..RequestMatch::default()
    }
}

fn with_method(mut m: RequestMatch, method: Method) -> RequestMatch {
    m.method = Some(method);
    m
}

fn with_header(mut m: RequestMatch, name: &'static str, value: &str) -> RequestMatch {
    m.headers.push(HeaderMatch {
        name: HeaderName::from_static(name),
        value: StringMatch::Exact(value.to_owned()),
    });
    m
}

fn with_query(mut m: RequestMatch, name: &str, value: &str) -> RequestMatch {
    m.query.push(QueryMatch {
        name: name.to_owned(),
        value: StringMatch::Exact(value.to_owned()),
    });
    m
}

fn rule(index: usize, matches: Vec<RequestMatch>) -> Arc<Rule> {
    Arc::new(Rule {
        index,
        name: None,
        matches,
        filters: Vec::new(),
        backends: Vec::new(),
        timeouts: Timeouts::default(),
        retry: None,
    })
}

fn http_route(ns: &str, name: &str, created_unix: i64, rules: Vec<Arc<Rule>>) -> Arc<HttpRoute> {
    Arc::new(HttpRoute {
        kind: RouteKind::Http,
        id: ObjectName::new(ns, name),
        created_unix,
        rules,
    })
}

/// A route with one rule per match list, in order.
fn simple_route(name: &str, rules: Vec<Vec<RequestMatch>>) -> Arc<HttpRoute> {
    let rules = rules
        .into_iter()
        .enumerate()
        .map(|(index, matches)| rule(index, matches))
        .collect();
    http_route("default", name, 0, rules)
}

fn listener(hostname: &str, routes: Vec<(Arc<HttpRoute>, Vec<&str>)>) -> Listener {
    Listener {
        id: ListenerId {
            gateway: ObjectName::new("default", "gw"),
            section: format!("l-{hostname}"),
        },
        hostname: host(hostname),
        tls: None,
        routes: routes
            .into_iter()
            .map(|(route, hostnames)| AttachedRoute {
                route,
                hostnames: hostnames.into_iter().map(host).collect(),
                auth: Vec::new(),
            })
            .collect(),
    }
}

fn compile_one(listener: Listener) -> CompiledConfig {
    CompiledConfig::compile(&DataPlaneConfig {
        ports: vec![PortConfig {
            port: 80,
            protocol: PortProtocol::Http,
            listeners: vec![listener],
        }],
    })
}

/// One route named `r` on a listener without hostname, one rule per match list.
fn one_route(rules: Vec<Vec<RequestMatch>>) -> CompiledConfig {
    compile_one(listener("*", vec![(simple_route("r", rules), vec!["*"])]))
}

struct Request {
    host: String,
    path: String,
    query: Option<String>,
    method: Method,
    headers: HeaderMap,
}

fn get(host: &str, target: &str) -> Request {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    Request {
        host: host.to_owned(),
        path,
        query,
        method: Method::GET,
        headers: HeaderMap::new(),
    }
}

impl Request {
    fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("test header value is valid"),
        );
        self
    }

    fn view(&self) -> RequestView<'_> {
        RequestView {
            host: &self.host,
            path: &self.path,
            query: self.query.as_deref(),
            method: &self.method,
            headers: &self.headers,
        }
    }
}

/// `"route/rule/match"` of the winner, or `"404"`.
fn winner(config: &CompiledConfig, request: &Request) -> String {
    let Some(port) = config.port(80) else {
        return "no port".to_owned();
    };
    let Some(listener) = port.listener_for_host(&request.host) else {
        return "no listener".to_owned();
    };
    match listener.route(&request.view()) {
        Some(found) => {
            let match_index = found
                .rule
                .matches
                .iter()
                .position(|m| std::ptr::eq(m, found.matched))
                .expect("matched points into the rule");
            format!(
                "{}/{}/{}",
                found.route.id.name, found.rule.index, match_index
            )
        }
        None => "404".to_owned(),
    }
}

#[test]
fn exact_path_beats_longer_prefix_and_prefix_is_by_length() {
    let config = one_route(vec![
        vec![prefix("/")],
        vec![prefix("/foo")],
        vec![prefix("/foo/bar")],
        vec![exact("/foo")],
    ]);
    assert_eq!(winner(&config, &get("a.com", "/foo")), "r/3/0");
    assert_eq!(winner(&config, &get("a.com", "/foo/")), "r/1/0");
    assert_eq!(winner(&config, &get("a.com", "/foo/bar/baz")), "r/2/0");
    assert_eq!(winner(&config, &get("a.com", "/foo/x")), "r/1/0");
    assert_eq!(winner(&config, &get("a.com", "/other")), "r/0/0");
}

#[test]
fn prefixes_match_whole_segments_only() {
    let config = one_route(vec![vec![prefix("/v2")], vec![prefix("/api/")]]);
    for path in ["/v2", "/v2/", "/v2/x", "/v2//x"] {
        assert_eq!(winner(&config, &get("a.com", path)), "r/0/0", "{path}");
    }
    for path in ["/v2x", "/v", "/", "/V2", "/v2%2Fx"] {
        assert_eq!(winner(&config, &get("a.com", path)), "404", "{path}");
    }
    // A trailing slash in the configured prefix does not change its segment semantics.
    for path in ["/api", "/api/", "/api/users"] {
        assert_eq!(winner(&config, &get("a.com", path)), "r/1/0", "{path}");
    }
    assert_eq!(winner(&config, &get("a.com", "/apix")), "404");
}

#[test]
fn root_prefix_matches_everything() {
    let config = one_route(vec![vec![prefix("/")]]);
    for path in ["/", "/x", "/x/y/", "*"] {
        assert_eq!(winner(&config, &get("a.com", path)), "r/0/0", "{path}");
    }
}

#[test]
fn exact_paths_are_not_segment_prefixes() {
    let config = one_route(vec![vec![exact("/a")]]);
    assert_eq!(winner(&config, &get("a.com", "/a")), "r/0/0");
    assert_eq!(winner(&config, &get("a.com", "/a/")), "404");
    assert_eq!(winner(&config, &get("a.com", "/a/b")), "404");
}

#[test]
fn regex_paths_rank_after_exact_and_before_prefixes() {
    let config = one_route(vec![
        vec![prefix("/users/admin")],
        vec![regex("/users/[a-z]+")],
        vec![exact("/users/admin")],
        vec![regex("/users/[a-z]+/[0-9]+")],
        vec![regex("/.*")],
    ]);
    assert_eq!(winner(&config, &get("a.com", "/users/admin")), "r/2/0");
    assert_eq!(winner(&config, &get("a.com", "/users/bob")), "r/1/0");
    // The longer pattern wins among regexes.
    assert_eq!(winner(&config, &get("a.com", "/users/bob/12")), "r/3/0");
    // Anchored: `/users/[a-z]+` does not match a longer path; `/.*` does.
    assert_eq!(winner(&config, &get("a.com", "/users/bob/x")), "r/4/0");
    assert_eq!(winner(&config, &get("a.com", "/users/admin/x")), "r/4/0");
}

#[test]
fn method_then_header_count_then_query_count() {
    let config = one_route(vec![
        vec![prefix("/p")],
        vec![with_query(with_query(prefix("/p"), "a", "1"), "b", "2")],
        vec![with_query(with_header(prefix("/p"), "x-a", "1"), "a", "1")],
        vec![with_header(
            with_header(prefix("/p"), "x-a", "1"),
            "x-b",
            "2",
        )],
        vec![with_method(prefix("/p"), Method::POST)],
    ]);
    let all = get("a.com", "/p?a=1&b=2")
        .header("x-a", "1")
        .header("x-b", "2");
    assert_eq!(winner(&config, &all.method(Method::POST)), "r/4/0");
    let all = get("a.com", "/p?a=1&b=2")
        .header("x-a", "1")
        .header("x-b", "2");
    assert_eq!(winner(&config, &all), "r/3/0");
    let one_header = get("a.com", "/p?a=1&b=2").header("x-a", "1");
    assert_eq!(winner(&config, &one_header), "r/2/0");
    assert_eq!(winner(&config, &get("a.com", "/p?a=1&b=2")), "r/1/0");
    assert_eq!(winner(&config, &get("a.com", "/p?a=1")), "r/0/0");
    // A longer prefix beats any number of other conditions.
    let config = one_route(vec![
        vec![with_method(
            with_header(prefix("/p"), "x-a", "1"),
            Method::GET,
        )],
        vec![prefix("/p/q")],
    ]);
    assert_eq!(
        winner(&config, &get("a.com", "/p/q").header("x-a", "1")),
        "r/1/0"
    );
}

#[test]
fn ties_go_to_oldest_route_then_name_then_rule_then_match() {
    let same = || {
        vec![
            rule(0, vec![prefix("/x"), prefix("/x")]),
            rule(1, vec![prefix("/x")]),
        ]
    };
    let older = http_route("zzz", "old", 100, same());
    let newer = http_route("aaa", "new", 200, same());
    let config = compile_one(listener(
        "*",
        vec![(newer.clone(), vec!["*"]), (older.clone(), vec!["*"])],
    ));
    assert_eq!(winner(&config, &get("a.com", "/x")), "old/0/0");

    // Same age: "namespace/name" order, compared as one string ("a-b/y" < "a/x").
    let first = http_route("a-b", "y", 100, same());
    let second = http_route("a", "x", 100, same());
    let config = compile_one(listener("*", vec![(second, vec!["*"]), (first, vec!["*"])]));
    assert_eq!(winner(&config, &get("a.com", "/x")), "y/0/0");

    // Within one route: the first rule, then the first match.
    let route = http_route(
        "ns",
        "r",
        0,
        vec![
            rule(
                0,
                vec![
                    prefix("/other"),
                    with_header(prefix("/x"), "x-a", "1"),
                    prefix("/x"),
                ],
            ),
            rule(1, vec![prefix("/x")]),
        ],
    );
    let config = compile_one(listener("*", vec![(route, vec!["*"])]));
    assert_eq!(winner(&config, &get("a.com", "/x")), "r/0/2");
    assert_eq!(
        winner(&config, &get("a.com", "/x").header("x-a", "1")),
        "r/0/1"
    );
}

#[test]
fn hostname_precedence_with_fallthrough() {
    let exact_route = simple_route("exact", vec![vec![prefix("/only-exact")]]);
    let wildcard_route = simple_route("wild", vec![vec![prefix("/only-wild")], vec![prefix("/")]]);
    let long_wildcard = simple_route("longwild", vec![vec![prefix("/only-wild")]]);
    let any_route = simple_route(
        "any",
        vec![vec![prefix("/only-exact/deeper")], vec![prefix("/")]],
    );
    let config = compile_one(listener(
        "*",
        vec![
            (any_route, vec!["*"]),
            (wildcard_route, vec!["*.example.com"]),
            (long_wildcard, vec!["*.b.example.com"]),
            (exact_route, vec!["a.b.example.com"]),
        ],
    ));
    // The exact host's route wins even against a longer path in a less specific group.
    assert_eq!(
        winner(&config, &get("a.b.example.com", "/only-exact/deeper")),
        "exact/0/0"
    );
    // Nothing in the exact group: the longest wildcard, then the shorter one, then any.
    assert_eq!(
        winner(&config, &get("a.b.example.com", "/only-wild")),
        "longwild/0/0"
    );
    assert_eq!(
        winner(&config, &get("c.example.com", "/only-wild")),
        "wild/0/0"
    );
    assert_eq!(
        winner(&config, &get("a.b.example.com", "/elsewhere")),
        "wild/1/0"
    );
    assert_eq!(
        winner(&config, &get("other.org", "/only-exact/deeper")),
        "any/0/0"
    );
    assert_eq!(winner(&config, &get("other.org", "/x")), "any/1/0");
    // The wildcard never matches its apex.
    assert_eq!(
        winner(&config, &get("example.com", "/only-wild")),
        "any/1/0"
    );
}

#[test]
fn listener_isolation_picks_only_the_most_specific_listener() {
    let config = CompiledConfig::compile(&DataPlaneConfig {
        ports: vec![PortConfig {
            port: 80,
            protocol: PortProtocol::Http,
            listeners: vec![
                listener(
                    "*",
                    vec![(simple_route("any", vec![vec![prefix("/")]]), vec!["*"])],
                ),
                listener(
                    "*.example.com",
                    vec![(
                        simple_route("wild", vec![vec![prefix("/wild")]]),
                        vec!["*.example.com"],
                    )],
                ),
                listener(
                    "*.b.example.com",
                    vec![(
                        simple_route("longwild", vec![vec![prefix("/lw")]]),
                        vec!["*.b.example.com"],
                    )],
                ),
                listener(
                    "a.example.com",
                    vec![(
                        simple_route("exact", vec![vec![prefix("/exact")]]),
                        vec!["a.example.com"],
                    )],
                ),
            ],
        }],
    });
    let port = config.port(80).expect("port 80 compiled");
    assert!(config.port(443).is_none());
    let section = |host: &str| port.listener_for_host(host).map(|l| l.id().section.clone());
    assert_eq!(section("a.example.com").as_deref(), Some("l-a.example.com"));
    assert_eq!(
        section("x.b.example.com").as_deref(),
        Some("l-*.b.example.com")
    );
    assert_eq!(section("b.example.com").as_deref(), Some("l-*.example.com"));
    assert_eq!(section("example.com").as_deref(), Some("l-*"));
    // Isolation: the exact listener has no `/` route, and its host never reaches the others.
    assert_eq!(winner(&config, &get("a.example.com", "/")), "404");
    assert_eq!(winner(&config, &get("a.example.com", "/wild")), "404");
    assert_eq!(
        winner(&config, &get("a.example.com", "/exact")),
        "exact/0/0"
    );
    assert_eq!(winner(&config, &get("z.b.example.com", "/wild")), "404");
    assert_eq!(
        winner(&config, &get("z.b.example.com", "/lw")),
        "longwild/0/0"
    );
    assert_eq!(winner(&config, &get("b.example.com", "/wild")), "wild/0/0");
    assert_eq!(winner(&config, &get("other.org", "/wild")), "any/0/0");
}

#[test]
fn no_listener_when_no_hostname_matches() {
    let config = compile_one(listener(
        "a.example.com",
        vec![(
            simple_route("r", vec![vec![prefix("/")]]),
            vec!["a.example.com"],
        )],
    ));
    assert_eq!(winner(&config, &get("b.example.com", "/")), "no listener");
}

#[test]
fn headers_match_case_insensitively_by_name_and_exactly_by_value() {
    let mut regex_header = prefix("/");
    regex_header.headers.push(HeaderMatch {
        name: HeaderName::from_static("x-version"),
        value: StringMatch::Regex(Regex::new("^v[0-9]+$").expect("test regex compiles")),
    });
    let config = one_route(vec![
        vec![with_header(prefix("/"), "x-env", "prod")],
        vec![regex_header],
    ]);
    let mut request = get("a.com", "/");
    request.headers.append(
        HeaderName::from_bytes(b"X-Env").expect("valid name"),
        HeaderValue::from_static("prod"),
    );
    assert_eq!(winner(&config, &request), "r/0/0");
    assert_eq!(
        winner(&config, &get("a.com", "/").header("x-env", "Prod")),
        "404"
    );
    assert_eq!(
        winner(&config, &get("a.com", "/").header("x-version", "v12")),
        "r/1/0"
    );
    assert_eq!(
        winner(&config, &get("a.com", "/").header("x-version", "v12x")),
        "404"
    );
    // Repeated headers are joined with a comma before matching.
    let repeated = get("a.com", "/")
        .header("x-env", "prod")
        .header("x-env", "dev");
    assert_eq!(winner(&config, &repeated), "404");
    let mut joined = prefix("/");
    joined = with_header(joined, "x-env", "prod,dev");
    let config = compile_one(listener(
        "*",
        vec![(simple_route("j", vec![vec![joined]]), vec!["*"])],
    ));
    let repeated = get("a.com", "/")
        .header("x-env", "prod")
        .header("x-env", "dev");
    assert_eq!(winner(&config, &repeated), "j/0/0");
}

#[test]
fn query_params_case_sensitive_names_first_wins_and_decoded() {
    let config = one_route(vec![
        vec![with_query(prefix("/"), "animal", "whale")],
        vec![with_query(prefix("/"), "q", "a b/c")],
    ]);
    assert_eq!(winner(&config, &get("a.com", "/?animal=whale")), "r/0/0");
    assert_eq!(
        winner(&config, &get("a.com", "/?x=1&animal=whale&y")),
        "r/0/0"
    );
    assert_eq!(winner(&config, &get("a.com", "/?ANIMAL=whale")), "404");
    assert_eq!(winner(&config, &get("a.com", "/?animal=Whale")), "404");
    assert_eq!(
        winner(&config, &get("a.com", "/?animal=dolphin&animal=whale")),
        "404"
    );
    assert_eq!(
        winner(&config, &get("a.com", "/?animal=whale&animal=dolphin")),
        "r/0/0"
    );
    assert_eq!(
        winner(&config, &get("a.com", "/?%61nimal=wh%61le")),
        "r/0/0"
    );
    assert_eq!(winner(&config, &get("a.com", "/?q=a%20b%2Fc")), "r/1/0");
    // `+` is not a space here, and a broken escape stays literal.
    assert_eq!(winner(&config, &get("a.com", "/?q=a+b/c")), "404");
    assert_eq!(winner(&config, &get("a.com", "/?animal=whale%")), "404");
    assert_eq!(winner(&config, &get("a.com", "/")), "404");
}

#[test]
fn method_match_is_exact() {
    let config = one_route(vec![vec![with_method(exact("/m"), Method::POST)]]);
    assert_eq!(
        winner(&config, &get("a.com", "/m").method(Method::POST)),
        "r/0/0"
    );
    assert_eq!(winner(&config, &get("a.com", "/m")), "404");
}

#[test]
fn route_with_several_hostnames_serves_each() {
    let route = simple_route("r", vec![vec![prefix("/")]]);
    let config = compile_one(listener("*", vec![(route, vec!["a.com", "*.b.com"])]));
    assert_eq!(winner(&config, &get("a.com", "/")), "r/0/0");
    assert_eq!(winner(&config, &get("x.b.com", "/")), "r/0/0");
    assert_eq!(winner(&config, &get("c.com", "/")), "404");
}

#[test]
fn many_routes_still_pick_the_right_one() {
    let routes: Vec<(Arc<HttpRoute>, Vec<&str>)> = (0..2000)
        .map(|i| {
            let route = http_route(
                "ns",
                &format!("r{i}"),
                i64::from(i),
                vec![rule(
                    0,
                    vec![prefix(&format!("/svc{i}")), exact(&format!("/exact{i}"))],
                )],
            );
            (route, vec!["*"])
        })
        .collect();
    let config = compile_one(listener("*", routes));
    assert_eq!(winner(&config, &get("a.com", "/svc1234/x")), "r1234/0/0");
    assert_eq!(winner(&config, &get("a.com", "/exact7")), "r7/0/1");
    assert_eq!(winner(&config, &get("a.com", "/svc12345")), "404");
}

fn backend(weight: u32, name: &str) -> WeightedBackend {
    WeightedBackend {
        weight,
        target: BackendTarget::Invalid(name.into()),
        filters: Vec::new(),
    }
}

fn backend_name(backend: &WeightedBackend) -> &str {
    match &backend.target {
        BackendTarget::Invalid(name) => name,
        BackendTarget::Service(_) => "service",
    }
}

fn rule_with_backends(backends: Vec<WeightedBackend>) -> Rule {
    Rule {
        index: 0,
        name: None,
        matches: vec![prefix("/")],
        filters: Vec::new(),
        backends,
        timeouts: Timeouts::default(),
        retry: None,
    }
}

#[test]
fn weights_split_the_random_range_and_zero_weight_is_never_picked() {
    let rule = rule_with_backends(vec![backend(1, "a"), backend(0, "zero"), backend(3, "b")]);
    let pick = |random: u32| pick_backend(&rule, random).map(backend_name);
    assert_eq!(pick(0), Some("a"));
    assert_eq!(pick(u32::MAX / 4 - 1), Some("a"));
    assert_eq!(pick(u32::MAX / 4 + 1), Some("b"));
    assert_eq!(pick(u32::MAX), Some("b"));
    let mut counts = [0u32; 2];
    let steps = 10_000u32;
    for step in 0..steps {
        let random = (u64::from(step) * (u64::from(u32::MAX) + 1) / u64::from(steps)) as u32;
        match pick(random) {
            Some("a") => counts[0] += 1,
            Some("b") => counts[1] += 1,
            other => panic!("unexpected pick {other:?}"),
        }
    }
    assert_eq!(counts, [2500, 7500]);
}

#[test]
fn all_zero_or_no_backends_pick_nothing() {
    let rule = rule_with_backends(vec![backend(0, "a"), backend(0, "b")]);
    assert!(pick_backend(&rule, 12345).is_none());
    assert!(pick_backend(&rule_with_backends(Vec::new()), 0).is_none());
    let single = rule_with_backends(vec![backend(7, "only")]);
    assert_eq!(
        pick_backend(&single, u32::MAX).map(backend_name),
        Some("only")
    );
}

/// A rule whose first backend is named after the conformance backend it stands for.
fn rule_to(index: usize, backend_name: &str, matches: Vec<RequestMatch>) -> Arc<Rule> {
    Arc::new(Rule {
        index,
        name: None,
        matches,
        filters: Vec::new(),
        backends: vec![backend(1, backend_name)],
        timeouts: Timeouts::default(),
        retry: None,
    })
}

fn conformance_route(rules: Vec<(&str, Vec<RequestMatch>)>) -> CompiledConfig {
    let rules = rules
        .into_iter()
        .enumerate()
        .map(|(index, (backend_name, matches))| rule_to(index, backend_name, matches))
        .collect();
    let route = http_route("gateway-conformance-infra", "conformance", 0, rules);
    compile_one(listener("*", vec![(route, vec!["*"])]))
}

/// The backend the request reaches, or `"404"`.
fn backend_for(config: &CompiledConfig, request: &Request) -> String {
    config
        .port(80)
        .and_then(|port| port.listener_for_host(&request.host))
        .and_then(|listener| listener.route(&request.view()))
        .and_then(|found| found.rule.backends.first())
        .map_or_else(|| "404".to_owned(), |b| backend_name(b).to_owned())
}

fn any_path() -> RequestMatch {
    RequestMatch::default()
}

#[test]
fn upstream_conformance_httproute_matching() {
    let config = conformance_route(vec![
        (
            "v1",
            vec![prefix("/"), with_header(any_path(), "version", "one")],
        ),
        (
            "v2",
            vec![prefix("/v2"), with_header(any_path(), "version", "two")],
        ),
    ]);
    let cases = [
        (get("gw", "/"), "v1"),
        (get("gw", "/example"), "v1"),
        (get("gw", "/").header("version", "one"), "v1"),
        (get("gw", "/v2"), "v2"),
        (get("gw", "/v2/example"), "v2"),
        (get("gw", "/").header("version", "two"), "v2"),
        (get("gw", "/v2/"), "v2"),
        (get("gw", "/v2example"), "v1"),
        (get("gw", "/foo/v2/example"), "v1"),
    ];
    for (request, expected) in cases {
        assert_eq!(backend_for(&config, &request), expected, "{}", request.path);
    }
}

#[test]
fn upstream_conformance_httproute_header_matching() {
    let config = conformance_route(vec![
        ("v1", vec![with_header(any_path(), "version", "one")]),
        ("v2", vec![with_header(any_path(), "version", "two")]),
        (
            "v1",
            vec![with_header(
                with_header(any_path(), "version", "two"),
                "color",
                "orange",
            )],
        ),
        (
            "v1",
            vec![
                with_header(any_path(), "color", "blue"),
                with_header(any_path(), "color", "green"),
            ],
        ),
        (
            "v2",
            vec![
                with_header(any_path(), "color", "red"),
                with_header(any_path(), "color", "yellow"),
            ],
        ),
    ]);
    let cases = [
        (vec![("version", "one")], "v1"),
        (vec![("version", "two")], "v2"),
        (vec![("version", "two"), ("color", "orange")], "v1"),
        (vec![("version", "two"), ("color", "blue")], "v2"),
        (vec![("color", "orange")], "404"),
        (vec![("some-other-header", "one")], "404"),
        (vec![("color", "blue")], "v1"),
        (vec![("color", "green")], "v1"),
        (vec![("color", "red")], "v2"),
        (vec![("color", "yellow")], "v2"),
        (vec![("color", "purple")], "404"),
    ];
    for (headers, expected) in cases {
        let mut request = get("gw", "/");
        for (name, value) in &headers {
            // Sent capitalized, as the upstream suite does.
            let capitalized = format!("{}{}", name[..1].to_ascii_uppercase(), &name[1..]);
            request.headers.append(
                HeaderName::from_bytes(capitalized.as_bytes()).expect("valid name"),
                HeaderValue::from_str(value).expect("valid value"),
            );
        }
        assert_eq!(backend_for(&config, &request), expected, "{headers:?}");
    }
}

#[test]
fn upstream_conformance_httproute_query_param_matching() {
    let q = with_query;
    let h = with_header;
    let config = conformance_route(vec![
        ("v1", vec![q(any_path(), "animal", "whale")]),
        ("v2", vec![q(any_path(), "animal", "dolphin")]),
        (
            "v3",
            vec![
                q(q(any_path(), "animal", "dolphin"), "color", "blue"),
                q(any_path(), "ANIMAL", "Whale"),
            ],
        ),
        ("v1", vec![q(prefix("/path1"), "animal", "whale")]),
        (
            "v2",
            vec![q(h(any_path(), "version", "one"), "animal", "whale")],
        ),
        (
            "v3",
            vec![q(h(prefix("/path2"), "version", "two"), "animal", "whale")],
        ),
        (
            "v1",
            vec![
                q(prefix("/path3"), "animal", "shark"),
                q(h(prefix("/path4"), "version", "three"), "animal", "kraken"),
            ],
        ),
        ("v1", vec![prefix("/path5")]),
        ("v2", vec![q(any_path(), "animal", "hydra")]),
        ("v3", vec![h(any_path(), "version", "four")]),
    ]);
    let cases = [
        (get("gw", "/?animal=whale"), "v1"),
        (get("gw", "/?animal=dolphin"), "v2"),
        (get("gw", "/?animal=dolphin&color=blue"), "v3"),
        (get("gw", "/?ANIMAL=Whale"), "v3"),
        (get("gw", "/?animal=whale&otherparam=irrelevant"), "v1"),
        (get("gw", "/?animal=dolphin&color=yellow"), "v2"),
        (get("gw", "/?color=blue"), "404"),
        (get("gw", "/?animal=dog"), "404"),
        (get("gw", "/?animal=whaledolphin"), "404"),
        (get("gw", "/"), "404"),
        (get("gw", "/path1?animal=whale"), "v1"),
        (get("gw", "/?animal=whale").header("version", "one"), "v2"),
        (
            get("gw", "/path2?animal=whale").header("version", "two"),
            "v3",
        ),
        (get("gw", "/path3?animal=shark"), "v1"),
        (
            get("gw", "/path4?animal=kraken").header("version", "three"),
            "v1",
        ),
        (get("gw", "/?animal=shark"), "404"),
        (get("gw", "/path4?animal=kraken"), "404"),
        (get("gw", "/path5?animal=hydra"), "v1"),
        (get("gw", "/?animal=hydra").header("version", "four"), "v3"),
    ];
    for (request, expected) in cases {
        let target = format!("{}?{:?} {:?}", request.path, request.query, request.headers);
        assert_eq!(backend_for(&config, &request), expected, "{target}");
    }
}

#[test]
fn many_wildcard_hostnames_pick_the_longest_matching_suffix() {
    let mut routes = Vec::new();
    let names: Vec<String> = (0..500).map(|i| format!("*.t{i}.example.com")).collect();
    for (i, name) in names.iter().enumerate() {
        routes.push((
            simple_route(&format!("t{i}"), vec![vec![prefix("/")]]),
            vec![name.as_str()],
        ));
    }
    routes.push((
        simple_route("parent", vec![vec![prefix("/")]]),
        vec!["*.example.com"],
    ));
    let config = compile_one(listener("*", routes));
    assert_eq!(winner(&config, &get("a.t42.example.com", "/")), "t42/0/0");
    assert_eq!(
        winner(&config, &get("a.b.t499.example.com", "/")),
        "t499/0/0"
    );
    assert_eq!(winner(&config, &get("t42.example.com", "/")), "parent/0/0");
    assert_eq!(
        winner(&config, &get("a.t500.example.com", "/")),
        "parent/0/0"
    );
    assert_eq!(winner(&config, &get("example.com", "/")), "404");
}
