//! End-to-end tests of the data plane over real sockets: routing, filters, backends, TLS,
//! protocols, timeouts, retries, ejection, streaming, strict HTTP/1 and lifecycle.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http::{HeaderName, HeaderValue};
use support::*;
use torhaus_model::*;

fn header_pair(name: &'static str, value: &'static str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_static(value),
    )
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
    assert!(
        response.text().starts_with("backend=api"),
        "{}",
        response.text()
    );
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
    request_headers
        .remove
        .push(HeaderName::from_static("x-drop"));
    let mut response_headers = HeaderModifier::default();
    response_headers.set.push(header_pair("x-resp", "yes"));
    response_headers
        .remove
        .push(HeaderName::from_static("x-backend"));
    let mut backend_request_headers = HeaderModifier::default();
    backend_request_headers
        .set
        .push(header_pair("x-from-backend-ref", "1"));
    let mut weighted = to(&app_backend, 1);
    weighted
        .filters
        .push(Filter::RequestHeaders(backend_request_headers));
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
    assert!(
        head.contains("x-added: first") && head.contains("x-added: added"),
        "{head}"
    );
    assert!(!head.contains("x-drop"), "{head}");
    assert!(head.contains("x-from-backend-ref: 1"), "{head}");
    // trusted_hops 0: the client's X-Forwarded-For is replaced by the peer address.
    assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    assert!(!head.contains("6.6.6.6"), "{head}");
    assert!(head.contains("x-forwarded-proto: http"), "{head}");
    assert!(head.contains("forwarded: "), "{head}");

    let response = client.get("a.test", "/old/page?q=1").await?;
    assert_eq!(response.status, 301);
    assert_eq!(
        response.header("location"),
        Some("https://a.test/new/page?q=1")
    );

    let response = client.get("a.test", "/rewrite/thing?x=y").await?;
    assert_eq!(response.status, 200);
    let head = app.last_head();
    assert!(head.starts_with("GET /v2/thing?x=y HTTP/1.1"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("host: internal.svc"),
        "{head}"
    );
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

fn tls_listener(
    section: &str,
    hostname: &str,
    certificates: Vec<Arc<TlsCertificate>>,
    routes: Vec<Arc<HttpRoute>>,
) -> Listener {
    let hostname = if hostname.is_empty() {
        HostMatch::Any
    } else {
        host(hostname)
    };
    listener(
        section,
        hostname,
        Some(ListenerTls { certificates }),
        routes,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_selects_listener_and_certificate_by_sni_and_checks_host() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let exact = certificate(&["app.example.com"]);
    let wildcard = certificate(&["*.example.com"]);
    let other = certificate(&["other.example.net"]);
    let on_wildcard = route(
        "wild",
        vec![rule(vec![prefix("/")], vec![], vec![to(&app_backend, 1)])],
    );
    let on_exact = route(
        "exact",
        vec![rule(vec![prefix("/")], vec![], vec![to(&app_backend, 1)])],
    );
    let config = |wild_certs: Vec<Arc<TlsCertificate>>| {
        Arc::new(DataPlaneConfig {
            ports: vec![https_port(
                443,
                vec![
                    tls_listener(
                        "wild",
                        "*.example.com",
                        wild_certs,
                        vec![on_wildcard.clone()],
                    ),
                    tls_listener(
                        "exact",
                        "secure.example.com",
                        vec![other.clone()],
                        vec![on_exact.clone()],
                    ),
                ],
            )],
        })
    };
    let gateway = Gateway::start(&[443]);
    gateway.apply(config(vec![wildcard.clone(), exact.clone()]));
    let addr = gateway.addr(443);

    // A certificate naming the SNI exactly wins over an earlier wildcard.
    let stream = tls_connect(addr, Some("app.example.com"), &[b"http/1.1"]).await?;
    assert_eq!(presented(&stream).as_ref(), Some(&exact.chain[0]));
    let mut client = Client::new(stream);
    let response = client.get("app.example.com", "/").await?;
    assert_eq!(response.status, 200);
    // Same listener by Host (the wildcard one): allowed.
    assert_eq!(client.get("b.example.com", "/").await?.status, 200);
    // Host of another listener than the SNI chose: 421.
    assert_eq!(client.get("secure.example.com", "/").await?.status, 421);

    // The wildcard certificate covers a name no certificate names exactly.
    let stream = tls_connect(addr, Some("zzz.example.com"), &[]).await?;
    assert_eq!(presented(&stream).as_ref(), Some(&wildcard.chain[0]));
    // The most specific listener's first certificate, even though it does not cover the name.
    let stream = tls_connect(addr, Some("secure.example.com"), &[]).await?;
    assert_eq!(presented(&stream).as_ref(), Some(&other.chain[0]));

    // Certificates swap without a restart.
    let renewed = certificate(&["*.example.com"]);
    gateway.apply(config(vec![renewed.clone()]));
    let stream = tls_connect(addr, Some("app.example.com"), &[]).await?;
    assert_eq!(presented(&stream).as_ref(), Some(&renewed.chain[0]));
    assert_eq!(
        gateway
            .issuer
            .calls
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_certificate_uses_the_on_demand_issuer_and_h2_alpn() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start(&[443]);
    gateway.apply(Arc::new(DataPlaneConfig {
        ports: vec![https_port(
            443,
            vec![tls_listener(
                "any",
                "",
                vec![],
                vec![route(
                    "r",
                    vec![rule(vec![prefix("/")], vec![], vec![to(&app_backend, 1)])],
                )],
            )],
        )],
    }));
    let addr = gateway.addr(443);
    let stream = tls_connect(addr, Some("fresh.example.com"), &[b"h2", b"http/1.1"]).await?;
    let issued = gateway
        .issuer
        .issued_for("fresh.example.com")
        .expect("issued on demand");
    assert_eq!(presented(&stream).as_ref(), Some(&issued.chain[0]));
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let calls = gateway
        .issuer
        .calls
        .load(std::sync::atomic::Ordering::SeqCst);
    // A second handshake for the same name is served from the cache.
    let _again = tls_connect(addr, Some("fresh.example.com"), &[]).await?;
    assert_eq!(
        gateway
            .issuer
            .calls
            .load(std::sync::atomic::Ordering::SeqCst),
        calls
    );

    let (status, text) = h2_get(stream, "https://fresh.example.com/over-h2").await?;
    assert_eq!(status, 200);
    assert!(
        text.starts_with("backend=app\nGET /over-h2 HTTP/1.1"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume_however_many_clients_came_between() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start(&[443]);
    gateway.apply(https_site(
        "app.example.com",
        vec![certificate(&["app.example.com"])],
        &app_backend,
    ));
    let addr = gateway.addr(443);
    let returning = tls_client_config(&[b"http/1.1"]);
    let visit = |config: Arc<pingora::tls::ClientConfig>| async move {
        let stream = tls_connect_with(&config, addr, Some("app.example.com")).await?;
        let resumed = stream.get_ref().1.handshake_kind();
        let mut client = Client::new(stream);
        // The response comes after the session tickets, so the client has stored them.
        anyhow::ensure!(client.get("app.example.com", "/").await?.status == 200);
        anyhow::Ok(resumed)
    };
    assert_eq!(
        visit(Arc::clone(&returning)).await?,
        Some(rustls::HandshakeKind::Full)
    );
    // More clients than a per-port session cache (rustls's default holds 256 sessions, and
    // every full handshake stores two), on both worker threads.
    for _ in 0..300 {
        visit(tls_client_config(&[b"http/1.1"])).await?;
    }
    assert_eq!(
        visit(returning).await?,
        Some(rustls::HandshakeKind::Resumed)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream_and_h2c_upstream() -> Result<()> {
    // An h2c backend written with the h2 crate.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let h2c_addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let body = format!(
                        "h2c-backend {} {:?}",
                        request.uri().path(),
                        request.version()
                    );
                    let response = http::Response::builder()
                        .status(200)
                        .body(())
                        .expect("response");
                    if let Ok(mut send) = respond.send_response(response, false) {
                        let _ = send.send_data(bytes::Bytes::from(body), true);
                    }
                }
            });
        }
    });
    let h1 = TestBackend::spawn("h1").await;
    let h2c_backend = backend("grpc", vec![h2c_addr], UpstreamProtocol::H2c);
    let h1_backend = backend("h1", vec![h1.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start(&[80]);
    gateway.apply(simple(
        80,
        vec![
            rule(vec![prefix("/h2c")], vec![], vec![to(&h2c_backend, 1)]),
            rule(vec![prefix("/")], vec![], vec![to(&h1_backend, 1)]),
        ],
    ));
    let addr = gateway.addr(80);

    // h1 client -> h2c upstream.
    let response = get(addr, "a.test", "/h2c/x").await?;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "h2c-backend /h2c/x HTTP/2.0");

    // h2c (prior knowledge) client -> h1 upstream.
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (status, text) = h2_get(tcp, "http://a.test/plain").await?;
    assert_eq!(status, 200);
    assert!(text.starts_with("backend=h1"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() -> Result<()> {
    let (_app, gateway) = app_behind_gateway(|_| {}).await;
    // pingora 0.9 tears down a few percent of upgrades whose upstream answers 101 before the
    // proxy has forwarded the request's empty body (cloudflare/pingora#946): such a tunnel is
    // closed right after its 101, and clients reconnect. Allow for that, and nothing else.
    let mut torn_down = 0;
    for _ in 0..5 {
        if tunnel_echoes(gateway.addr(80)).await? {
            return Ok(());
        }
        torn_down += 1;
    }
    panic!("{torn_down} upgrades in a row were closed right after their 101");
}

/// The pingora#946 race in numbers: every one of many upgrades must carry data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known gap: pingora 0.9 closes a few percent of upgrades to a fast upstream right after the 101 (cloudflare/pingora#946)"]
async fn every_websocket_upgrade_passes_through() -> Result<()> {
    let (_app, gateway) = app_behind_gateway(|_| {}).await;
    let mut torn_down = 0;
    for _ in 0..200 {
        if !tunnel_echoes(gateway.addr(80)).await? {
            torn_down += 1;
        }
    }
    assert_eq!(
        torn_down, 0,
        "upgrades closed right after their 101, of 200"
    );
    Ok(())
}

/// Upgrades a connection to the test backend's echo; `false` when the tunnel was closed right
/// after the 101 instead of echoing.
async fn tunnel_echoes(addr: std::net::SocketAddr) -> Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut client = Client::connect(addr).await;
    client
        .send(b"GET /ws HTTP/1.1\r\nhost: a.test\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
        .await?;
    let response = client.response(false).await?;
    assert_eq!(response.status, 101);
    client.stream.write_all(b"ping-frame-bytes").await?;
    let mut echoed = [0u8; 16];
    match tokio::time::timeout(DEADLINE, client.stream.read_exact(&mut echoed)).await? {
        Ok(_) => {
            assert_eq!(&echoed, b"ping-frame-bytes");
            Ok(true)
        }
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(error) => Err(error.into()),
    }
}

fn with_retry(mut rule: Rule, attempts: u32, codes: &[u16]) -> Rule {
    rule.retry = Some(RetryPolicy {
        attempts,
        codes: codes.to_vec(),
        backoff: Some(Duration::from_millis(10)),
    });
    rule
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_backend_timeouts_answer_504_and_no_default_timeout_cuts() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start(&[80]);
    let addr = gateway.addr(80);
    let rewrite_to_sleep = |timeouts: Timeouts| {
        let mut rule = rule(
            vec![prefix("/slow")],
            vec![Filter::Rewrite(Rewrite {
                hostname: None,
                path: Some(PathModifier::ReplaceFullPath("/sleep/3000".into())),
            })],
            vec![to(&app_backend, 1)],
        );
        rule.timeouts = timeouts;
        rule
    };
    gateway.apply(simple(
        80,
        vec![
            rewrite_to_sleep(Timeouts {
                request: Some(Duration::from_millis(300)),
                backend_request: None,
            }),
            {
                let mut rule = rewrite_to_sleep(Timeouts {
                    request: None,
                    backend_request: Some(Duration::from_millis(300)),
                });
                rule.matches = vec![prefix("/attempt")];
                rule
            },
            rule(vec![prefix("/")], vec![], vec![to(&app_backend, 1)]),
        ],
    ));
    let started = Instant::now();
    let response = get(addr, "a.test", "/slow").await?;
    assert_eq!(response.status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let response = get(addr, "a.test", "/attempt").await?;
    assert_eq!(response.status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // No timeout configured: a slow backend is waited for.
    let response = get(addr, "a.test", "/sleep/1500").await?;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "slept");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_cover_the_whole_response_body_not_each_read() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start(&[80]);
    let addr = gateway.addr(80);
    // Every gap (100 ms) is shorter than the timeout (600 ms); the whole body (2 s) is longer.
    let dripping = |path: &str, timeouts: Timeouts| {
        let mut rule = rule(
            vec![prefix(path)],
            vec![Filter::Rewrite(Rewrite {
                hostname: None,
                path: Some(PathModifier::ReplaceFullPath("/drip/20/100".into())),
            })],
            vec![to(&app_backend, 1)],
        );
        rule.timeouts = timeouts;
        rule
    };
    gateway.apply(simple(
        80,
        vec![
            dripping(
                "/request",
                Timeouts {
                    request: Some(Duration::from_millis(600)),
                    backend_request: None,
                },
            ),
            dripping(
                "/attempt",
                Timeouts {
                    request: None,
                    backend_request: Some(Duration::from_millis(600)),
                },
            ),
            dripping("/untimed", Timeouts::default()),
        ],
    ));
    for path in ["/request", "/attempt"] {
        let started = Instant::now();
        let cut = get(addr, "a.test", path).await;
        assert!(cut.is_err(), "{path}: the body completed: {cut:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{path}: cut only after {:?}",
            started.elapsed()
        );
    }
    let response = get(addr, "a.test", "/untimed").await?;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "d".repeat(20));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_listed_codes_and_connect_failures() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    // An address nothing listens on: connections are refused.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let flaky = backend("flaky", vec![dead, app.addr], UpstreamProtocol::Http1);
    let only_dead = backend("dead", vec![dead], UpstreamProtocol::Http1);
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start(&[80]);
    gateway.apply(simple(
        80,
        vec![
            with_retry(
                rule(vec![prefix("/flaky")], vec![], vec![to(&flaky, 1)]),
                3,
                &[],
            ),
            rule(vec![prefix("/no-retry")], vec![], vec![to(&only_dead, 1)]),
            with_retry(
                rule(vec![prefix("/status")], vec![], vec![to(&app_backend, 1)]),
                2,
                &[503],
            ),
            with_retry(
                rule(vec![prefix("/")], vec![], vec![to(&app_backend, 1)]),
                2,
                &[],
            ),
        ],
    ));
    let addr = gateway.addr(80);
    // Half the picks hit the dead endpoint first; with retries every request succeeds.
    for _ in 0..20 {
        let response = get(addr, "a.test", "/flaky").await?;
        assert_eq!(response.status, 200);
    }
    assert_eq!(get(addr, "a.test", "/no-retry").await?.status, 502);

    // 503 is listed: one try plus two retries, then the backend's 503 is passed on.
    let before = app.hits();
    let response = get(addr, "a.test", "/status/503").await?;
    assert_eq!(response.status, 503);
    assert_eq!(app.hits() - before, 3);
    // The last retry carried the forwarding headers too, not only the first attempt.
    let head = app.last_head().to_ascii_lowercase();
    for forwarded in [
        "\r\nx-forwarded-for: 127.0.0.1\r\n",
        "\r\nx-forwarded-proto: http\r\n",
        "\r\nx-forwarded-host: a.test\r\n",
        ";host=a.test;",
    ] {
        assert!(
            head.contains(forwarded),
            "{forwarded:?} missing from {head}"
        );
    }
    // 500 is not listed: no retry.
    let before = app.hits();
    assert_eq!(get(addr, "a.test", "/status/500").await?.status, 500);
    assert_eq!(app.hits() - before, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_and_recovery() -> Result<()> {
    let good = TestBackend::spawn("good").await;
    // Reserve a port, close it, and later start a backend on it to model recovery.
    let dead_port = free_port();
    let dead: std::net::SocketAddr = format!("127.0.0.1:{dead_port}").parse()?;
    let pool = backend("pool", vec![dead, good.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start_with(&[80], Gateway::fast_ejection(), |_| {});
    gateway.apply(simple(
        80,
        vec![rule(vec![prefix("/")], vec![], vec![to(&pool, 1)])],
    ));
    let addr = gateway.addr(80);

    // Without retries, requests to the dead endpoint fail with 502 until it is ejected
    // (2 failures in a row); after that every request goes to the good one for the backoff (3 s).
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    eventually("the dead endpoint is ejected", || {
        let failures = failures.clone();
        async move {
            if get(addr, "a.test", "/")
                .await
                .is_ok_and(|r| r.status == 502)
            {
                failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            failures.load(std::sync::atomic::Ordering::SeqCst) >= 2
        }
    })
    .await?;
    let good_before = good.hits();
    for _ in 0..20 {
        assert_eq!(get(addr, "a.test", "/").await?.status, 200);
    }
    assert_eq!(good.hits() - good_before, 20);

    // Recovery: the endpoint comes back, and after the backoff it receives traffic again.
    let revived_listener = tokio::net::TcpListener::bind(dead).await?;
    let revived_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = revived_hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = revived_listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buffer = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nrevived")
                        .await;
                }
            });
        }
    });
    eventually("the revived endpoint receives requests", || async {
        let _ = get(addr, "a.test", "/").await;
        revived_hits.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_with_flat_memory() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: u64 = 256 * 1024 * 1024;
    let (_app, gateway) = app_behind_gateway(|_| {}).await;
    let addr = gateway.addr(80);
    let baseline = rss_kib();

    // Download: read and discard as it arrives.
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET /bytes/{SIZE} HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut total = 0u64;
    let mut peak = baseline;
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk)).await??;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total % (16 * 1024 * 1024) < n as u64 {
            peak = peak.max(rss_kib());
        }
    }
    assert!(total > SIZE, "received {total} bytes");
    // Upload: 256 MiB with Content-Length, generated on the fly.
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("POST /upload HTTP/1.1\r\nhost: a.test\r\ncontent-length: {SIZE}\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let block = vec![b'y'; 256 * 1024];
    let mut sent = 0u64;
    while sent < SIZE {
        stream.write_all(&block).await?;
        sent += block.len() as u64;
        if sent.is_multiple_of(16 * 1024 * 1024) {
            peak = peak.max(rss_kib());
        }
    }
    let mut client = Client::new(stream);
    let response = client.response(false).await?;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), SIZE.to_string());
    // The whole process (client, proxy and backend) must not have buffered a body.
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    assert!(
        growth_mib < 64,
        "RSS grew by {growth_mib} MiB while streaming 2 x 256 MiB"
    );
    Ok(())
}

/// Shuts the data plane down and waits (off the runtime) until `wait` returns; how long it took.
async fn shutdown_and_wait(gateway: &Gateway) -> Result<Duration> {
    let dataplane = gateway.dataplane.clone();
    let started = Instant::now();
    dataplane.shutdown();
    tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || dataplane.wait()),
    )
    .await??;
    Ok(started.elapsed())
}

/// One listener on `port` with one route sending everything to `backend`.
fn open_port(port: u16, protocol: PortProtocol, backend: &Arc<Backend>) -> PortConfig {
    let routes = vec![route(
        "r",
        vec![rule(vec![prefix("/")], vec![], vec![to(backend, 1)])],
    )];
    match protocol {
        PortProtocol::Http => http_port(port, vec![listener("l", HostMatch::Any, None, routes)]),
        PortProtocol::Https => https_port(port, vec![tls_listener("l", "", vec![], routes)]),
    }
}

fn ports(list: Vec<PortConfig>) -> Arc<DataPlaneConfig> {
    Arc::new(DataPlaneConfig { ports: list })
}

async fn refused(addr: std::net::SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_follow_the_configuration_without_disturbing_the_others() -> Result<()> {
    use PortProtocol::{Http, Https};
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start(&[80, 8080]);
    let (port_80, port_8080) = (gateway.addr(80), gateway.addr(8080));

    gateway.apply(ports(vec![open_port(80, Http, &app_backend)]));
    assert!(refused(port_8080).await, "8080 is not declared yet");
    // Added later: bound by the same apply.
    gateway.apply(ports(vec![
        open_port(80, Http, &app_backend),
        open_port(8080, Http, &app_backend),
    ]));
    assert_eq!(get(port_8080, "a.test", "/").await?.status, 200);

    // A kept-alive connection on :80 must survive everything that happens to :8080.
    let mut kept = Client::connect(port_80).await;
    assert_eq!(kept.get("a.test", "/before").await?.status, 200);

    // HTTP -> HTTPS on 8080, no restart: TLS now, and plain HTTP no longer answers.
    gateway.apply(ports(vec![
        open_port(80, Http, &app_backend),
        open_port(8080, Https, &app_backend),
    ]));
    let mut tls = Client::new(tls_connect(port_8080, Some("secure.test"), &[b"http/1.1"]).await?);
    assert_eq!(tls.get("secure.test", "/over-tls").await?.status, 200);
    assert!(
        raw(port_8080, b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
            .await
            .is_err(),
        "8080 still answers plain HTTP"
    );
    assert_eq!(kept.get("a.test", "/during").await?.status, 200);

    // And back to HTTP.
    gateway.apply(ports(vec![
        open_port(80, Http, &app_backend),
        open_port(8080, Http, &app_backend),
    ]));
    assert_eq!(get(port_8080, "a.test", "/").await?.status, 200);
    assert!(
        tls_connect(port_8080, Some("secure.test"), &[])
            .await
            .is_err()
    );

    // Removed: the socket is closed (connection refused), not left answering 404.
    gateway.apply(ports(vec![open_port(80, Http, &app_backend)]));
    assert!(refused(port_8080).await, "8080 is still bound");
    assert_eq!(kept.get("a.test", "/after").await?.status, 200);
    // Declared again: bound again.
    gateway.apply(ports(vec![
        open_port(80, Http, &app_backend),
        open_port(8080, Http, &app_backend),
    ]));
    assert_eq!(get(port_8080, "a.test", "/").await?.status, 200);
    // The first port dropped no request of the kept connection along the way.
    assert_eq!(kept.get("a.test", "/last").await?.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_someone_else_listens_on_is_a_bind_error_not_shared() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let first = Gateway::start(&[80]);
    first.apply(ports(vec![open_port(80, PortProtocol::Http, &app_backend)]));
    let taken = first.addr(80).port();
    let second = Gateway::start_with(&[80], Default::default(), |s| {
        s.port_map = std::collections::HashMap::from([(80, taken)]);
    });
    let error = second
        .dataplane
        .apply(ports(vec![open_port(80, PortProtocol::Http, &app_backend)]))
        .expect_err("a second data plane on a taken port must fail");
    assert!(
        matches!(
            error,
            torhaus_gateway::GatewayError::Bind {
                declared_port: 80,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains(&taken.to_string()), "{error}");
    // The first keeps every connection: all of these reach it.
    for _ in 0..20 {
        assert_eq!(get(first.addr(80), "a.test", "/").await?.status, 200);
    }
    assert_eq!(second.dataplane.requests_in_flight(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_http1_framing_is_enforced() -> Result<()> {
    let (app, gateway) = app_behind_gateway(|_| {}).await;
    let addr = gateway.addr(80);

    let rejected: &[(&str, &[u8], u16)] = &[
        ("two Host headers", b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
        // (Longer than the 24-byte h2c preface: pingora waits for that many bytes on h2c ports.)
        (
            "no Host on HTTP/1.1",
            b"GET /no-host HTTP/1.1\r\nuser-agent: test\r\n\r\n",
            400,
        ),
        (
            "conflicting Content-Length",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            400,
        ),
        (
            "repeated identical Content-Length",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
            400,
        ),
        (
            "Content-Length with Transfer-Encoding",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        ("two spaces in the request line", b"GET  /x HTTP/1.1\r\nhost: a\r\n\r\n", 400),
        ("garbage request line", b"THIS IS NOT AN HTTP REQUEST AT ALL\r\n\r\n", 400),
    ];
    for (what, request, status) in rejected {
        let before = app.hits();
        let response = raw(addr, request).await.context(*what)?;
        assert_eq!(response.status, *status, "{what}");
        assert_eq!(app.hits(), before, "{what}: the request was forwarded");
    }

    // 40 KiB of headers is above the 32 KiB limit: 431, not forwarded.
    let before = app.hits();
    let big = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "v".repeat(40 * 1024)
    );
    assert_eq!(raw(addr, big.as_bytes()).await.context("431")?.status, 431);
    assert_eq!(app.hits(), before);

    // HTTP/1.0 without Host is fine.
    assert_eq!(
        raw(addr, b"GET /http10 HTTP/1.0\r\nuser-agent: test\r\n\r\n")
            .await
            .context("HTTP/1.0")?
            .status,
        200
    );

    // Two pipelined requests in one write are both answered, in order.
    let mut client = Client::connect(addr).await;
    client
        .send(b"GET /first HTTP/1.1\r\nhost: a\r\n\r\nGET /second HTTP/1.1\r\nhost: a\r\n\r\n")
        .await?;
    let first = client.response(false).await.context("first pipelined")?;
    let second = client.response(false).await.context("second pipelined")?;
    assert!(first.text().contains("GET /first "), "{}", first.text());
    assert!(second.text().contains("GET /second "), "{}", second.text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish_and_returns_once_they_have() -> Result<()> {
    // A 60 s grace period: the shutdown must end with the request, not with the grace period.
    let (_app, gateway) = app_behind_gateway(|s| s.grace_period = Duration::from_secs(60)).await;
    let addr = gateway.addr(80);
    // An idle kept-alive connection must not hold the shutdown up.
    let mut idle = Client::connect(addr).await;
    assert_eq!(idle.get("a.test", "/").await?.status, 200);
    // The first request still counts until its logging phase has run, a little after the
    // client read the response: wait for that, so the count below means the slow request.
    eventually("the first request is done", || async {
        gateway.dataplane.requests_in_flight() == 0
    })
    .await?;
    let in_flight = tokio::spawn(async move { get(addr, "a.test", "/sleep/1500").await });
    eventually("the slow request is in flight", || async {
        gateway.dataplane.requests_in_flight() == 1
    })
    .await?;
    // The metric is the same count, read at scrape time.
    let scrape = gateway.dataplane.metrics().encode();
    assert!(
        scrape
            .lines()
            .any(|line| line == "torhaus_http_requests_in_flight 1"),
        "{scrape}"
    );

    let took = shutdown_and_wait(&gateway).await?;
    let response = in_flight.await??;
    assert_eq!(response.status, 200, "the in-flight request was cut");
    assert_eq!(response.text(), "slept");
    assert!(
        took >= Duration::from_millis(1000),
        "returned before the request finished: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(gateway.dataplane.requests_in_flight(), 0);
    assert!(refused(addr).await, "the port still accepts connections");
    assert!(matches!(
        gateway.dataplane.apply(simple(80, vec![])),
        Err(torhaus_gateway::GatewayError::ShuttingDown)
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_nothing_in_flight_returns_at_once() -> Result<()> {
    let (_app, gateway) = app_behind_gateway(|s| s.grace_period = Duration::from_secs(60)).await;
    assert_eq!(get(gateway.addr(80), "a.test", "/").await?.status, 200);
    let took = shutdown_and_wait(&gateway).await?;
    assert!(took < Duration::from_secs(5), "{took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_requests_longer_than_the_grace_period() -> Result<()> {
    let (_app, gateway) = app_behind_gateway(|s| s.grace_period = Duration::from_secs(1)).await;
    let addr = gateway.addr(80);
    let _stuck = tokio::spawn(async move { get(addr, "a.test", "/sleep/30000").await });
    eventually("the slow request is in flight", || async {
        gateway.dataplane.requests_in_flight() == 1
    })
    .await?;
    let took = shutdown_and_wait(&gateway).await?;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_copy_requests_with_bodies_without_affecting_the_response() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let shadow_one = TestBackend::spawn("shadow-one").await;
    let shadow_two = TestBackend::spawn("shadow-two").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let mirror = |b: &TestBackend, name: &str| {
        Filter::Mirror(Mirror {
            backend: BackendTarget::Service(backend(name, vec![b.addr], UpstreamProtocol::Http1)),
            numerator: 100,
            denominator: 100,
        })
    };
    let dead_port = free_port();
    let dead_mirror = Filter::Mirror(Mirror {
        backend: BackendTarget::Service(backend(
            "dead",
            vec![format!("127.0.0.1:{dead_port}").parse()?],
            UpstreamProtocol::Http1,
        )),
        numerator: 100,
        denominator: 100,
    });
    let gateway = Gateway::start(&[80]);
    gateway.apply(simple(
        80,
        vec![rule(
            vec![prefix("/")],
            vec![
                mirror(&shadow_one, "s1"),
                mirror(&shadow_two, "s2"),
                dead_mirror,
            ],
            vec![to(&app_backend, 1)],
        )],
    ));
    let addr = gateway.addr(80);
    let response = raw(
        addr,
        b"POST /upload HTTP/1.1\r\nhost: a.test\r\ncontent-length: 11\r\n\r\nhello world",
    )
    .await?;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "11");
    eventually("both mirrors received the request", || async {
        shadow_one.hits() == 1 && shadow_two.hits() == 1
    })
    .await?;
    assert!(shadow_one.last_head().starts_with("POST /upload HTTP/1.1"));
    assert_eq!(app.hits(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_is_answered_and_responses_get_cors_headers() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let cors = Arc::new(Cors {
        allow_origins: vec!["https://app.example.com".into()],
        allow_credentials: false,
        allow_methods: vec!["GET".into(), "PUT".into()],
        allow_headers: vec!["x-token".into()],
        expose_headers: vec![],
        max_age: 60,
    });
    let gateway = Gateway::start(&[80]);
    gateway.apply(simple(
        80,
        vec![rule(
            vec![prefix("/")],
            vec![Filter::Cors(cors)],
            vec![to(&app_backend, 1)],
        )],
    ));
    let addr = gateway.addr(80);
    let mut client = Client::connect(addr).await;
    client
        .send(b"OPTIONS /api HTTP/1.1\r\nhost: a.test\r\norigin: https://app.example.com\r\naccess-control-request-method: PUT\r\naccess-control-request-headers: x-token\r\n\r\n")
        .await?;
    let preflight = client.response(false).await?;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        preflight
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("PUT"))
    );
    assert_eq!(app.hits(), 0, "the preflight must not reach the backend");

    client
        .send(b"GET /api HTTP/1.1\r\nhost: a.test\r\norigin: https://app.example.com\r\n\r\n")
        .await?;
    let response = client.response(false).await?;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unspecified_bind_serves_ipv4_and_ipv6() -> Result<()> {
    let (_app, gateway) = app_behind_gateway(|s| {
        s.bind = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    })
    .await;
    let v4 = gateway.addr(80);
    assert_eq!(get(v4, "a.test", "/").await?.status, 200);
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let v6 = std::net::SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), v4.port());
        assert_eq!(get(v6, "a.test", "/").await?.status, 200);
    }
    Ok(())
}
