//! End-to-end tests of the data plane over real sockets: routing, filters, backends, TLS,
//! protocols, timeouts, retries, ejection, streaming, strict HTTP/1 and lifecycle.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use http::{HeaderName, HeaderValue};
use support::*;
use torhaus_model::*;

fn header_pair(name: &'static str, value: &'static str) -> (HeaderName, HeaderValue) {
    (HeaderName::from_static(name), HeaderValue::from_static(value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_and_answers_404_otherwise() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let api = TestBackend::spawn("api").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let api_backend = backend("api", vec![api.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start(&[80]);
    gateway.apply(Arc::new(DataPlaneConfig {
        ports: vec![http_port(
            80,
            vec![
                listener(
                    "app",
                    host("app.example.com"),
                    None,
                    vec![route(
                        "app",
                        vec![
                            rule(vec![prefix("/api")], vec![], vec![to(&api_backend, 1)]),
                            rule(vec![prefix("/")], vec![], vec![to(&app_backend, 1)]),
                        ],
                    )],
                ),
                listener("other", host("*.example.org"), None, vec![]),
            ],
        )],
    }));
    let addr = gateway.addr(80);

    let mut client = Client::connect(addr).await;
    let response = client.get("app.example.com", "/api/v1").await?;
    assert_eq!(response.status, 200);
    assert!(response.text().starts_with("backend=api"), "{}", response.text());
    // Same connection (keep-alive), another rule; Host case and port do not matter.
    let response = client.get("APP.example.com:80", "/apix").await?;
    assert_eq!(response.status, 200);
    assert!(response.text().starts_with("backend=app"));
    // Unknown host, and a listener without routes: 404 on the same kept-alive connection.
    assert_eq!(client.get("nope.example.com", "/").await?.status, 404);
    assert_eq!(client.get("a.example.org", "/").await?.status, 404);
    assert_eq!(client.get("app.example.com", "/").await?.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_filters_rewrite_redirect_and_forwarded_headers() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start(&[80]);
    let mut request_headers = HeaderModifier::default();
    request_headers.set.push(header_pair("x-set", "set-value"));
    request_headers.add.push(header_pair("x-added", "added"));
    request_headers.remove.push(HeaderName::from_static("x-drop"));
    let mut response_headers = HeaderModifier::default();
    response_headers.set.push(header_pair("x-resp", "yes"));
    response_headers.remove.push(HeaderName::from_static("x-backend"));
    let mut backend_request_headers = HeaderModifier::default();
    backend_request_headers.set.push(header_pair("x-from-backend-ref", "1"));
    let mut weighted = to(&app_backend, 1);
    weighted.filters.push(Filter::RequestHeaders(backend_request_headers));
    gateway.apply(simple(
        80,
        vec![
            rule(
                vec![prefix("/old")],
                vec![Filter::Redirect(Redirect {
                    scheme: Some(Scheme::Https),
                    hostname: None,
                    port: None,
                    path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
                    status: 301,
                })],
                vec![],
            ),
            rule(
                vec![prefix("/rewrite")],
                vec![Filter::Rewrite(Rewrite {
                    hostname: Some("internal.svc".into()),
                    path: Some(PathModifier::ReplacePrefixMatch("/v2".into())),
                })],
                vec![to(&app_backend, 1)],
            ),
            rule(
                vec![prefix("/")],
                vec![
                    Filter::RequestHeaders(request_headers),
                    Filter::ResponseHeaders(response_headers),
                ],
                vec![weighted],
            ),
        ],
    ));
    let addr = gateway.addr(80);
    let mut client = Client::connect(addr).await;

    client
        .send(b"GET /x HTTP/1.1\r\nhost: a.test\r\nx-drop: 1\r\nx-added: first\r\nx-forwarded-for: 6.6.6.6\r\n\r\n")
        .await?;
    let response = client.response(false).await?;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-resp"), Some("yes"));
    assert_eq!(response.header("x-backend"), None);
    let head = app.last_head().to_ascii_lowercase();
    assert!(head.contains("x-set: set-value"), "{head}");
    assert!(head.contains("x-added: first") && head.contains("x-added: added"), "{head}");
    assert!(!head.contains("x-drop"), "{head}");
    assert!(head.contains("x-from-backend-ref: 1"), "{head}");
    // trusted_hops 0: the client's X-Forwarded-For is replaced by the peer address.
    assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    assert!(!head.contains("6.6.6.6"), "{head}");
    assert!(head.contains("x-forwarded-proto: http"), "{head}");
    assert!(head.contains("forwarded: "), "{head}");

    let response = client.get("a.test", "/old/page?q=1").await?;
    assert_eq!(response.status, 301);
    assert_eq!(response.header("location"), Some("https://a.test/new/page?q=1"));

    let response = client.get("a.test", "/rewrite/thing?x=y").await?;
    assert_eq!(response.status, 200);
    let head = app.last_head();
    assert!(head.starts_with("GET /v2/thing?x=y HTTP/1.1"), "{head}");
    assert!(head.to_ascii_lowercase().contains("host: internal.svc"), "{head}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_invalid_backends_and_missing_endpoints() -> Result<()> {
    let one = TestBackend::spawn("one").await;
    let two = TestBackend::spawn("two").await;
    let one_backend = backend("one", vec![one.addr], UpstreamProtocol::Http1);
    let two_backend = backend("two", vec![two.addr], UpstreamProtocol::Http1);
    let empty = backend("empty", vec![], UpstreamProtocol::Http1);
    let gateway = Gateway::start(&[80]);
    gateway.apply(simple(
        80,
        vec![
            rule(
                vec![prefix("/split")],
                vec![],
                vec![
                    to(&one_backend, 3),
                    to(&two_backend, 1),
                    WeightedBackend {
                        weight: 0,
                        target: BackendTarget::Service(Arc::clone(&one_backend)),
                        filters: vec![],
                    },
                ],
            ),
            rule(
                vec![prefix("/half-invalid")],
                vec![],
                vec![
                    to(&one_backend, 1),
                    WeightedBackend {
                        weight: 1,
                        target: BackendTarget::Invalid("Service test/missing not found".into()),
                        filters: vec![],
                    },
                ],
            ),
            rule(vec![prefix("/empty")], vec![], vec![to(&empty, 1)]),
            rule(vec![prefix("/zero")], vec![], vec![to(&one_backend, 0)]),
        ],
    ));
    let addr = gateway.addr(80);
    let mut client = Client::connect(addr).await;
    let mut counts = [0usize; 2];
    for _ in 0..400 {
        let response = client.get("a.test", "/split").await?;
        assert_eq!(response.status, 200);
        let index = usize::from(response.text().starts_with("backend=two"));
        counts[index] += 1;
    }
    // 3:1 split; binomial(400, 0.25) is within 60..140 with overwhelming probability.
    assert!((60..=140).contains(&counts[1]), "split {counts:?}");

    let mut errors = 0;
    for _ in 0..200 {
        let response = client.get("a.test", "/half-invalid").await?;
        match response.status {
            500 => errors += 1,
            200 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!((60..=140).contains(&errors), "{errors} of 200 were 500");

    assert_eq!(client.get("a.test", "/empty").await?.status, 503);
    assert_eq!(client.get("a.test", "/zero").await?.status, 500);
    Ok(())
}
