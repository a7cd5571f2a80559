//! Unit tests of the filters: headers, redirects, rewrites, CORS, mirroring, forwarding headers.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use torhaus_model::{
    BackendTarget, Cors, HeaderModifier, Mirror, PathMatch, PathModifier, Redirect, RequestMatch,
    Scheme,
};

use super::*;

fn name(n: &str) -> HeaderName {
    HeaderName::from_bytes(n.as_bytes()).expect("test header name is valid")
}

fn value(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).expect("test header value is valid")
}

fn values(map: &HeaderMap, n: &str) -> Vec<String> {
    map.get_all(name(n))
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect()
}

fn conformance_modifier() -> HeaderModifier {
    HeaderModifier {
        set: vec![(name("X-Header-Set"), value("set-overwrites-values"))],
        add: vec![
            (name("X-Header-Add"), value("header-val-1")),
            (name("X-Header-Add-Append"), value("header-val-2")),
        ],
        remove: vec![name("X-Header-Remove")],
    }
}

#[test]
fn request_header_modifier_sets_adds_and_removes() {
    let mut request = RequestHeader::build("GET", b"/", None).expect("request builds");
    request
        .append_header("x-header-set", "set-val")
        .expect("append");
    request
        .append_header("x-header-set", "second")
        .expect("append");
    request
        .append_header("X-HEADER-ADD-APPEND", "append-val-1")
        .expect("append");
    request
        .append_header("x-header-remove", "remove-val")
        .expect("append");
    request
        .append_header("x-header-remove", "again")
        .expect("append");
    request.append_header("x-untouched", "u").expect("append");
    apply_request_headers(&conformance_modifier(), &mut request).expect("modifier applies");
    let headers = &request.headers;
    assert_eq!(values(headers, "x-header-set"), ["set-overwrites-values"]);
    assert_eq!(values(headers, "x-header-add"), ["header-val-1"]);
    assert_eq!(
        values(headers, "x-header-add-append"),
        ["append-val-1", "header-val-2"]
    );
    assert!(values(headers, "x-header-remove").is_empty());
    assert_eq!(values(headers, "x-untouched"), ["u"]);
}

#[test]
fn response_header_modifier_sets_adds_and_removes() {
    let mut response = ResponseHeader::build(200, None).expect("response builds");
    response
        .append_header("X-Header-Set", "old")
        .expect("append");
    response
        .append_header("x-header-add-append", "first")
        .expect("append");
    response
        .append_header("x-header-remove", "gone")
        .expect("append");
    apply_response_headers(&conformance_modifier(), &mut response).expect("modifier applies");
    let headers = &response.headers;
    assert_eq!(values(headers, "x-header-set"), ["set-overwrites-values"]);
    assert_eq!(values(headers, "x-header-add"), ["header-val-1"]);
    assert_eq!(
        values(headers, "x-header-add-append"),
        ["first", "header-val-2"]
    );
    assert!(values(headers, "x-header-remove").is_empty());
}

fn prefix_match(prefix: &str) -> RequestMatch {
    RequestMatch {
        path: PathMatch::Prefix(prefix.to_owned()),
        ..RequestMatch::default()
    }
}

fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    rewrite_path(
        &PathModifier::ReplacePrefixMatch(replacement.to_owned()),
        path,
        &prefix_match(prefix),
    )
}

#[test]
fn replace_prefix_match_follows_the_spec_table() {
    // The table in the HTTPPathModifier documentation.
    let table = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
    ];
    for (path, prefix, replacement, expected) in table {
        assert_eq!(
            replace_prefix(path, prefix, replacement),
            expected,
            "{path} with prefix {prefix:?} replaced by {replacement:?}"
        );
    }
}

#[test]
fn replace_prefix_match_on_the_root_prefix_keeps_the_path() {
    assert_eq!(replace_prefix("/foo/bar", "/", "/xyz"), "/xyz/foo/bar");
    assert_eq!(replace_prefix("/foo", "/", "/"), "/foo");
    assert_eq!(replace_prefix("/", "/", "/"), "/");
}

#[test]
fn rewrite_path_matches_upstream_conformance() {
    // HTTPRouteRewritePath.
    assert_eq!(
        replace_prefix("/prefix/one/two", "/prefix/one", "/one"),
        "/one/two"
    );
    assert_eq!(
        replace_prefix("/strip-prefix/three", "/strip-prefix", "/"),
        "/three"
    );
    assert_eq!(replace_prefix("/strip-prefix", "/strip-prefix", "/"), "/");
    assert_eq!(
        replace_prefix(
            "/prefix/rewrite-path-and-modify-headers/one",
            "/prefix/rewrite-path-and-modify-headers",
            "/prefix"
        ),
        "/prefix/one"
    );
    let full = PathModifier::ReplaceFullPath("/one".to_owned());
    assert_eq!(
        rewrite_path(&full, "/full/one/two", &prefix_match("/full/one")),
        "/one"
    );
}

#[test]
fn replace_prefix_on_other_match_kinds_replaces_the_whole_path() {
    let exact = RequestMatch {
        path: PathMatch::Exact("/a/b".to_owned()),
        ..RequestMatch::default()
    };
    let modifier = PathModifier::ReplacePrefixMatch("/z".to_owned());
    assert_eq!(rewrite_path(&modifier, "/a/b", &exact), "/z");
}

fn redirect(scheme: Option<Scheme>, hostname: Option<&str>, port: Option<u16>) -> Redirect {
    Redirect {
        scheme,
        hostname: hostname.map(str::to_owned),
        port,
        path: None,
        status: 302,
    }
}

fn location(
    redirect: &Redirect,
    scheme: Scheme,
    listener_port: u16,
    path: &str,
    query: Option<&str>,
) -> String {
    let matched = prefix_match("/");
    let input = RedirectInput {
        scheme,
        host: "example.com",
        path,
        query,
        listener_port,
        matched: &matched,
    };
    redirect_location(redirect, &input).1
}

#[test]
fn redirect_port_rules_follow_the_spec() {
    use Scheme::{Http, Https};
    // Neither scheme nor port: the listener's port, omitted when it is the scheme's default.
    assert_eq!(
        location(&redirect(None, None, None), Http, 80, "/a", None),
        "http://example.com/a"
    );
    assert_eq!(
        location(&redirect(None, None, None), Http, 8080, "/a", None),
        "http://example.com:8080/a"
    );
    assert_eq!(
        location(&redirect(None, None, None), Https, 443, "/a", None),
        "https://example.com/a"
    );
    assert_eq!(
        location(&redirect(None, None, None), Https, 8443, "/a", None),
        "https://example.com:8443/a"
    );
    // Scheme set, no port: the scheme's well-known port, never the listener's.
    assert_eq!(
        location(&redirect(Some(Https), None, None), Http, 8080, "/a", None),
        "https://example.com/a"
    );
    assert_eq!(
        location(&redirect(Some(Http), None, None), Https, 443, "/a", None),
        "http://example.com/a"
    );
    // Port set: used as is, omitted only when it is the scheme's default.
    assert_eq!(
        location(&redirect(None, None, Some(8443)), Http, 80, "/a", None),
        "http://example.com:8443/a"
    );
    assert_eq!(
        location(
            &redirect(Some(Https), None, Some(443)),
            Http,
            80,
            "/a",
            None
        ),
        "https://example.com/a"
    );
    assert_eq!(
        location(&redirect(Some(Https), None, Some(80)), Http, 80, "/a", None),
        "https://example.com:80/a"
    );
    assert_eq!(
        location(&redirect(Some(Http), None, Some(443)), Http, 80, "/a", None),
        "http://example.com:443/a"
    );
    // Hostname replaced; query kept.
    assert_eq!(
        location(
            &redirect(None, Some("example.org"), None),
            Http,
            80,
            "/a",
            Some("x=1&y")
        ),
        "http://example.org/a?x=1&y"
    );
}

#[test]
fn redirect_status_and_ipv6_hosts() {
    let mut permanent = redirect(None, None, None);
    permanent.status = 301;
    let matched = prefix_match("/");
    let input = RedirectInput {
        scheme: Scheme::Http,
        host: "::1",
        path: "/",
        query: None,
        listener_port: 8080,
        matched: &matched,
    };
    assert_eq!(
        redirect_location(&permanent, &input),
        (301, "http://[::1]:8080/".to_owned())
    );
}

#[test]
fn redirect_paths_match_upstream_conformance() {
    // HTTPRouteRedirectPath: (request path, matched prefix, modifier, hostname, status, expected).
    let cases = [
        (
            "/original-prefix/lemon",
            "/original-prefix",
            PathModifier::ReplacePrefixMatch("/replacement-prefix".into()),
            None,
            302,
            "http://gw/replacement-prefix/lemon",
        ),
        (
            "/full/path/original",
            "/full",
            PathModifier::ReplaceFullPath("/full-path-replacement".into()),
            None,
            302,
            "http://gw/full-path-replacement",
        ),
        (
            "/path-and-host",
            "/path-and-host",
            PathModifier::ReplacePrefixMatch("/replacement-prefix".into()),
            Some("example.org"),
            302,
            "http://example.org/replacement-prefix",
        ),
        (
            "/path-and-status",
            "/path-and-status",
            PathModifier::ReplacePrefixMatch("/replacement-prefix".into()),
            None,
            301,
            "http://gw/replacement-prefix",
        ),
        (
            "/full-path-and-host",
            "/full-path-and-host",
            PathModifier::ReplaceFullPath("/replacement-full".into()),
            Some("example.org"),
            302,
            "http://example.org/replacement-full",
        ),
        (
            "/full-path-and-status",
            "/full-path-and-status",
            PathModifier::ReplaceFullPath("/replacement-full".into()),
            None,
            301,
            "http://gw/replacement-full",
        ),
    ];
    for (path, prefix, modifier, hostname, status, expected) in cases {
        let redirect = Redirect {
            scheme: None,
            hostname: hostname.map(str::to_owned),
            port: None,
            path: Some(modifier),
            status,
        };
        let matched = prefix_match(prefix);
        let input = RedirectInput {
            scheme: Scheme::Http,
            host: "gw",
            path,
            query: None,
            listener_port: 80,
            matched: &matched,
        };
        assert_eq!(
            redirect_location(&redirect, &input),
            (status, expected.to_owned()),
            "{path}"
        );
    }
}

fn mirror(numerator: u32, denominator: u32) -> Mirror {
    Mirror {
        backend: BackendTarget::Invalid("test".into()),
        numerator,
        denominator,
    }
}

#[test]
fn mirror_sampling_follows_the_fraction() {
    assert!(should_mirror(&mirror(100, 100), 0));
    assert!(should_mirror(&mirror(100, 100), u32::MAX));
    assert!(!should_mirror(&mirror(0, 100), 0));
    assert!(!should_mirror(&mirror(1, 0), 0));
    let half = mirror(1, 2);
    assert!(should_mirror(&half, 0));
    assert!(should_mirror(&half, u32::MAX / 2));
    assert!(!should_mirror(&half, u32::MAX / 2 + 1));
    let steps = 10_000u32;
    let quarter = mirror(25, 100);
    let mirrored = (0..steps)
        .filter(|step| {
            let random = (u64::from(*step) * (u64::from(u32::MAX) + 1) / u64::from(steps)) as u32;
            should_mirror(&quarter, random)
        })
        .count();
    assert_eq!(mirrored, 2500);
}

fn conformance_cors() -> Cors {
    Cors {
        allow_origins: vec!["https://www.foo.com".into(), "https://*.bar.com".into()],
        allow_credentials: true,
        allow_methods: vec!["GET".into(), "OPTIONS".into()],
        allow_headers: vec!["x-header-1".into(), "x-header-2".into()],
        expose_headers: vec!["x-header-3".into(), "x-header-4".into()],
        max_age: 3600,
    }
}

fn header_str(headers: &CorsHeaders, n: HeaderName) -> Option<&str> {
    headers.get(&n).and_then(|v| v.to_str().ok())
}

#[test]
fn cors_origins_exact_and_wildcard() {
    let cors = conformance_cors();
    assert!(cors_origin_allowed(&cors, "https://www.foo.com"));
    assert!(cors_origin_allowed(&cors, "HTTPS://WWW.FOO.COM"));
    assert!(cors_origin_allowed(&cors, "https://www.bar.com"));
    assert!(cors_origin_allowed(&cors, "https://xpto.www.bar.com"));
    assert!(!cors_origin_allowed(&cors, "https://bar.com"));
    assert!(!cors_origin_allowed(&cors, "http://www.bar.com"));
    assert!(!cors_origin_allowed(&cors, "https://www.bar.com:8443"));
    assert!(!cors_origin_allowed(&cors, "https://evilbar.com"));
    assert!(!cors_origin_allowed(&cors, "https://foobar.com"));
    assert!(!cors_origin_allowed(&cors, "https://www.foo.com.evil.org"));
    assert!(!cors_origin_allowed(&cors, "null"));
    let any = Cors {
        allow_origins: vec!["*".into()],
        ..Cors::default()
    };
    assert!(cors_origin_allowed(&any, "https://foobar.com:12345"));
    assert!(!cors_origin_allowed(&Cors::default(), "https://foobar.com"));
}

/// Asserts each header's value in `headers` (`None`: absent).
fn assert_cors(headers: &CorsHeaders, expected: &[(HeaderName, Option<&str>)]) {
    for (header, value) in expected {
        assert_eq!(
            header_str(headers, header.clone()),
            *value,
            "{header} in {headers:?}"
        );
    }
}

#[test]
fn cors_preflight_from_allowed_origin() {
    use http::header::*;
    let origin = "https://xpto.www.bar.com";
    let requested = Some("x-header-1, x-header-2");
    let headers = cors_preflight(&conformance_cors(), origin, "GET", requested).expect("allowed");
    assert_cors(
        &headers,
        &[
            (ACCESS_CONTROL_ALLOW_ORIGIN, Some(origin)),
            (ACCESS_CONTROL_ALLOW_METHODS, Some("GET, OPTIONS")),
            (ACCESS_CONTROL_ALLOW_HEADERS, Some("x-header-1, x-header-2")),
            (
                ACCESS_CONTROL_EXPOSE_HEADERS,
                Some("x-header-3, x-header-4"),
            ),
            (ACCESS_CONTROL_MAX_AGE, Some("3600")),
            (ACCESS_CONTROL_ALLOW_CREDENTIALS, Some("true")),
            (VARY, Some("Origin")),
        ],
    );
}

#[test]
fn cors_preflight_from_other_origin_gets_nothing() {
    assert!(cors_preflight(&conformance_cors(), "https://foobar.com", "GET", None).is_none());
}

#[test]
fn cors_wildcards_echo_and_never_send_star_with_credentials() {
    use http::header::*;
    let wildcard = Cors {
        allow_origins: vec!["*".into()],
        allow_credentials: false,
        allow_methods: vec!["*".into()],
        allow_headers: vec!["*".into()],
        expose_headers: vec!["*".into()],
        max_age: 5,
    };
    let origin = "https://foobar.com:12345";
    let headers = cors_preflight(&wildcard, origin, "PUT", Some("x-a, x-b")).expect("any origin");
    assert_cors(
        &headers,
        &[
            (ACCESS_CONTROL_ALLOW_ORIGIN, Some(origin)),
            (ACCESS_CONTROL_ALLOW_METHODS, Some("PUT")),
            (ACCESS_CONTROL_ALLOW_HEADERS, Some("x-a, x-b")),
            (ACCESS_CONTROL_EXPOSE_HEADERS, Some("*")),
            (ACCESS_CONTROL_MAX_AGE, Some("5")),
            (ACCESS_CONTROL_ALLOW_CREDENTIALS, None),
        ],
    );

    let credentialed = Cors {
        allow_credentials: true,
        ..wildcard
    };
    let headers =
        cors_preflight(&credentialed, "https://a.org", "DELETE", None).expect("any origin");
    assert_cors(
        &headers,
        &[
            (ACCESS_CONTROL_ALLOW_ORIGIN, Some("https://a.org")),
            (ACCESS_CONTROL_ALLOW_METHODS, Some("DELETE")),
            (ACCESS_CONTROL_ALLOW_HEADERS, None),
            (ACCESS_CONTROL_EXPOSE_HEADERS, None),
            (ACCESS_CONTROL_ALLOW_CREDENTIALS, Some("true")),
        ],
    );
    assert!(
        headers.iter().all(|(_, v)| v != "*"),
        "no literal * with credentials: {headers:?}"
    );
}

#[test]
fn cors_response_headers_for_simple_requests() {
    use http::header::*;
    let headers = cors_response_headers(&conformance_cors(), "https://www.foo.com");
    assert_cors(
        &headers,
        &[
            (ACCESS_CONTROL_ALLOW_ORIGIN, Some("https://www.foo.com")),
            (ACCESS_CONTROL_ALLOW_CREDENTIALS, Some("true")),
            (
                ACCESS_CONTROL_EXPOSE_HEADERS,
                Some("x-header-3, x-header-4"),
            ),
            (ACCESS_CONTROL_ALLOW_METHODS, None),
            (VARY, Some("Origin")),
        ],
    );
    let refused = cors_response_headers(&conformance_cors(), "https://foobar.com");
    assert_cors(
        &refused,
        &[(ACCESS_CONTROL_ALLOW_ORIGIN, None), (VARY, Some("Origin"))],
    );

    // Applying keeps the backend's Vary and replaces its CORS headers.
    let mut response = ResponseHeader::build(200, None).expect("response builds");
    response
        .append_header("vary", "Accept-Encoding")
        .expect("append");
    response
        .append_header("access-control-allow-origin", "*")
        .expect("append");
    headers.apply_to(&mut response).expect("applies");
    assert_eq!(
        values(&response.headers, "vary"),
        ["Accept-Encoding", "Origin"]
    );
    assert_eq!(
        values(&response.headers, "access-control-allow-origin"),
        ["https://www.foo.com"]
    );
}

#[test]
fn cors_preflight_detection() {
    let mut headers = HeaderMap::new();
    headers.insert(ORIGIN, value("https://a.org"));
    assert!(!is_cors_preflight(&Method::OPTIONS, &headers));
    headers.insert(ACCESS_CONTROL_REQUEST_METHOD, value("GET"));
    assert!(is_cors_preflight(&Method::OPTIONS, &headers));
    assert!(!is_cors_preflight(&Method::GET, &headers));
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address parses")
}

fn incoming(
    xff: &[&str],
    forwarded: &[&str],
    proto: Option<&str>,
    host: Option<&str>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in xff {
        headers.append(name("x-forwarded-for"), value(line));
    }
    for line in forwarded {
        headers.append(FORWARDED, value(line));
    }
    if let Some(proto) = proto {
        headers.append(name("x-forwarded-proto"), value(proto));
    }
    if let Some(host) = host {
        headers.append(name("x-forwarded-host"), value(host));
    }
    headers
}

#[test]
fn zero_trusted_hops_discards_everything_the_client_sent() {
    let spoofed = incoming(
        &["6.6.6.6, 7.7.7.7"],
        &["for=6.6.6.6;proto=https"],
        Some("https"),
        Some("evil.org"),
    );
    let peer = ip("203.0.113.9");
    let headers = forwarded_headers(peer, &spoofed, 0, Scheme::Http, "app.example.com");
    assert_eq!(
        headers,
        ForwardedHeaders {
            x_forwarded_for: "203.0.113.9".into(),
            x_forwarded_proto: "http".into(),
            x_forwarded_host: "app.example.com".into(),
            forwarded: "for=203.0.113.9;host=app.example.com;proto=http".into(),
        }
    );
    assert_eq!(effective_client_ip(peer, &spoofed, 0), peer);
}

#[test]
fn one_trusted_hop_takes_the_last_entry_as_client() {
    // client 198.51.100.7 spoofs "6.6.6.6"; the trusted load balancer (peer) appends the client.
    let headers_in = incoming(
        &["6.6.6.6", "198.51.100.7"],
        &[
            "for=6.6.6.6",
            "for=198.51.100.7;proto=https;host=app.example.com",
        ],
        Some("https"),
        Some("app.example.com"),
    );
    let peer = ip("10.0.0.2");
    assert_eq!(
        effective_client_ip(peer, &headers_in, 1),
        ip("198.51.100.7")
    );
    let headers = forwarded_headers(peer, &headers_in, 1, Scheme::Http, "app.example.com:8080");
    assert_eq!(headers.x_forwarded_for, "198.51.100.7, 10.0.0.2");
    assert_eq!(headers.x_forwarded_proto, "https");
    assert_eq!(headers.x_forwarded_host, "app.example.com");
    assert_eq!(
        headers.forwarded,
        "for=198.51.100.7;proto=https;host=app.example.com, for=10.0.0.2;host=\"app.example.com:8080\";proto=http"
    );
}

#[test]
fn two_trusted_hops_follow_envoys_example() {
    // Envoy's docs, example 3: the next-to-last XFF entry is the client.
    let headers_in = incoming(
        &["203.0.113.128, 203.0.113.10, 203.0.113.1"],
        &[],
        None,
        None,
    );
    let peer = ip("192.0.2.5");
    assert_eq!(
        effective_client_ip(peer, &headers_in, 2),
        ip("203.0.113.10")
    );
    let headers = forwarded_headers(peer, &headers_in, 2, Scheme::Https, "h");
    assert_eq!(
        headers.x_forwarded_for,
        "203.0.113.10, 203.0.113.1, 192.0.2.5"
    );
    // No trusted value: our own scheme and host.
    assert_eq!(headers.x_forwarded_proto, "https");
    assert_eq!(headers.x_forwarded_host, "h");
    assert_eq!(headers.forwarded, "for=192.0.2.5;host=h;proto=https");
}

#[test]
fn short_or_garbled_chains_fall_back_to_the_peer() {
    let peer = ip("192.0.2.5");
    // Fewer entries than trusted hops: the request skipped a trusted proxy.
    let short = incoming(&["6.6.6.6"], &[], None, None);
    assert_eq!(effective_client_ip(peer, &short, 2), peer);
    assert_eq!(
        forwarded_headers(peer, &short, 2, Scheme::Http, "h").x_forwarded_for,
        "6.6.6.6, 192.0.2.5"
    );
    let garbage = incoming(&["not-an-ip"], &[], Some("gopher"), None);
    assert_eq!(effective_client_ip(peer, &garbage, 1), peer);
    assert_eq!(
        forwarded_headers(peer, &garbage, 1, Scheme::Http, "h").x_forwarded_proto,
        "http"
    );
    assert_eq!(effective_client_ip(peer, &HeaderMap::new(), 1), peer);
}

#[test]
fn forwarded_entries_with_ports_and_ipv6() {
    let peer = ip("2001:db8::1");
    let headers_in = incoming(&["[2001:db8::7]:4711"], &[], None, None);
    assert_eq!(effective_client_ip(peer, &headers_in, 1), ip("2001:db8::7"));
    let headers_in = incoming(&["192.0.2.60:80"], &[], None, None);
    assert_eq!(effective_client_ip(peer, &headers_in, 1), ip("192.0.2.60"));
    let headers_in = incoming(
        &["2001:db8::8"],
        &["for=\"[2001:db8::8]\";note=\"a,b\""],
        None,
        None,
    );
    assert_eq!(effective_client_ip(peer, &headers_in, 1), ip("2001:db8::8"));
    let headers = forwarded_headers(peer, &headers_in, 1, Scheme::Https, "h");
    assert_eq!(headers.x_forwarded_for, "2001:db8::8, 2001:db8::1");
    // The quoted comma does not split the element.
    assert_eq!(
        headers.forwarded,
        "for=\"[2001:db8::8]\";note=\"a,b\", for=\"[2001:db8::1]\";host=h;proto=https"
    );
}

#[test]
fn addresses_are_written_as_display_writes_them() {
    for raw in [
        "0.0.0.0",
        "1.2.3.4",
        "10.0.100.9",
        "255.255.255.255",
        "192.168.1.10",
        "::1",
        "2001:db8::8a2e:370:7334",
        "::ffff:192.0.2.1",
    ] {
        let addr = ip(raw);
        let mut out = String::new();
        super::push_ip(&mut out, addr);
        assert_eq!(out, addr.to_string(), "{raw}");
    }
}

#[test]
fn forwarded_quotes_and_escapes_a_host_that_is_not_a_token() {
    let none = HeaderMap::new();
    let headers = forwarded_headers(ip("::1"), &none, 0, Scheme::Https, "a\"b:1");
    assert_eq!(
        headers.forwarded,
        "for=\"[::1]\";host=\"a\\\"b:1\";proto=https"
    );
    assert_eq!(headers.x_forwarded_for, "::1");
}
