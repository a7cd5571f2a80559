//! The data plane's metrics and access log over real sockets: request counts by route, backend
//! and status class, TLS handshakes and open connections, endpoint health, certificates, series
//! removal on reload, and access log lines that never carry secrets.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use support::*;
use torhaus_gateway::DataPlaneOptions;
use torhaus_gateway::access_log::AccessLogTarget;
use torhaus_model::*;

/// The value of the sample of `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// pingora runs the logging phase after the response has been sent, so a client can see its
/// response before the request is counted: wait until the count arrives.
async fn wait_for_sample(
    metrics: &torhaus_gateway::Metrics,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = metrics.encode();
        let value = sample(&text, name, labels);
        if value == Some(expected) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} {labels:?} is {value:?}, not {expected}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "torhaus-gw-obs-{label}-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A gateway on port 80 that logs requests to a file in a fresh directory (`label` names it):
/// the gateway, the directory and the log's path. `request_metrics` as the settings say.
fn gateway_with_access_log(label: &str, request_metrics: bool) -> (Gateway, PathBuf, PathBuf) {
    let dir = temp_dir(label);
    let log_path = dir.join("access.log");
    let target = AccessLogTarget::File(log_path.clone());
    let gateway = Gateway::start_with(&[80], Default::default(), |settings| {
        settings.request_metrics = request_metrics;
        settings.access_log = Some(target);
    });
    (gateway, dir, log_path)
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn redirect_rule() -> Rule {
    rule(
        vec![prefix("/moved")],
        vec![Filter::Redirect(Redirect {
            scheme: None,
            hostname: Some("elsewhere.example.com".into()),
            port: None,
            path: None,
            status: 302,
        })],
        vec![],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_route_backend_and_class_and_logged_without_secrets() -> Result<()>
{
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let (gateway, dir, log_path) = gateway_with_access_log("log", true);
    gateway.apply(Arc::new(DataPlaneConfig {
        ports: vec![http_port(
            80,
            vec![listener(
                "http",
                host("app.example.com"),
                None,
                vec![route(
                    "r",
                    vec![
                        redirect_rule(),
                        rule(vec![prefix("/")], vec![], vec![to(&app_backend, 1)]),
                    ],
                )],
            )],
        )],
    }));
    let addr = gateway.addr(80);
    let mut client = Client::connect(addr).await;
    for _ in 0..3 {
        assert_eq!(client.get("app.example.com", "/hello").await?.status, 200);
    }
    assert_eq!(client.get("app.example.com", "/moved").await?.status, 302);
    assert_eq!(client.get("nope.example.com", "/").await?.status, 404);
    client
        .send(
            b"GET /secret-check?access_token=SECRETQUERY&code=SECRETCODE HTTP/1.1\r\n\
              host: app.example.com\r\ncookie: session=SECRETCOOKIE\r\n\
              authorization: Bearer SECRETBEARER\r\nproxy-authorization: Basic SECRETPROXY\r\n\r\n",
        )
        .await?;
    assert_eq!(client.response(false).await?.status, 200);

    let metrics = gateway.dataplane.metrics();
    let route_labels = [
        ("gateway", "test/gw"),
        ("listener", "http"),
        ("route", "test/r"),
    ];
    wait_for_sample(
        metrics,
        "torhaus_http_request_duration_seconds_count",
        &route_labels,
        5.0,
    )
    .await?;
    wait_for_sample(metrics, "torhaus_http_requests_in_flight", &[], 0.0).await?;
    let text = metrics.encode();
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut labels = route_labels.to_vec();
        labels.extend_from_slice(extra);
        labels
    };
    assert_eq!(
        sample(
            &text,
            "torhaus_http_requests_total",
            &with(&[("backend", "test/app:80"), ("status_class", "2xx")])
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "torhaus_http_requests_total",
            &with(&[("backend", ""), ("status_class", "3xx")])
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "torhaus_http_requests_total",
            &[("route", ""), ("status_class", "4xx")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "torhaus_http_request_duration_seconds_count",
            &route_labels
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &text,
            "torhaus_http_upstream_duration_seconds_count",
            &[("backend", "test/app:80")]
        ),
        Some(4.0)
    );
    assert!(
        sample(
            &text,
            "torhaus_http_response_body_bytes_total",
            &route_labels
        )
        .is_some_and(|bytes| bytes > 0.0)
    );
    assert_eq!(
        sample(
            &text,
            "torhaus_backend_endpoints",
            &[("backend", "test/app:80"), ("state", "ready")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "torhaus_route_table_size", &[("kind", "rules")]),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "torhaus_config_reloads_total",
            &[("result", "applied")]
        ),
        Some(1.0)
    );
    // The request on the open connection has ended: nothing is in flight.
    assert_eq!(
        sample(&text, "torhaus_http_requests_in_flight", &[]),
        Some(0.0)
    );
    // No raw path or client host became a label value.
    assert!(!text.contains("/hello") && !text.contains("nope.example.com"));

    wait_until("six access log lines", || {
        std::fs::read_to_string(&log_path).is_ok_and(|t| t.lines().count() >= 6)
    })
    .await?;
    let log = std::fs::read_to_string(&log_path)?;
    for secret in [
        "SECRETQUERY",
        "SECRETCODE",
        "SECRETCOOKIE",
        "SECRETBEARER",
        "SECRETPROXY",
        "access_token",
    ] {
        assert!(!log.contains(secret), "{secret} leaked into:\n{log}");
    }
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("every access log line is JSON")?;
    assert_eq!(lines.len(), 6);
    let first = &lines[0];
    assert_eq!(first["host"], "app.example.com");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/hello");
    assert_eq!(first["status"], 200);
    assert_eq!(first["gateway"], "test/gw");
    assert_eq!(first["listener"], "http");
    assert_eq!(first["route"], "test/r");
    assert_eq!(first["backend"], "test/app:80");
    assert_eq!(first["upstream"], app.addr.to_string());
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert!(first["user"].is_null());
    assert!(first["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
    assert!(first["upstream_ms"].as_f64().is_some());
    assert!(first["response_bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(
        first["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:"))
    );
    assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(lines[3]["status"], 302);
    assert_eq!(lines[3]["backend"], "");
    assert_eq!(lines[4]["status"], 404);
    assert_eq!(lines[4]["route"], "");
    assert_eq!(lines[5]["path"], "/secret-check");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_connections_and_certificates_are_exported() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let cert = certificate(&["app.example.com"]);
    let gateway = Gateway::start(&[443]);
    gateway.apply(https_site(
        "app.example.com",
        vec![cert.clone()],
        &app_backend,
    ));
    let addr = gateway.addr(443);
    let metrics = gateway.dataplane.metrics();
    let stream = tls_connect(addr, Some("app.example.com"), &[b"http/1.1"]).await?;
    let mut client = Client::new(stream);
    assert_eq!(client.get("app.example.com", "/").await?.status, 200);
    wait_for_sample(
        metrics,
        "torhaus_tls_handshakes_total",
        &[("version", "TLSv1.3"), ("outcome", "success")],
        1.0,
    )
    .await?;
    let text = metrics.encode();
    assert_eq!(
        sample(
            &text,
            "torhaus_downstream_connections_active",
            &[("protocol", "https")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "torhaus_certificate_not_after_timestamp_seconds",
            &[("certificate", cert.source.as_str()), ("issuer", "secret")]
        ),
        Some(cert.not_after_unix as f64)
    );
    // A name no listener serves gets no certificate: the handshake fails and is counted.
    assert!(
        tls_connect(addr, Some("unknown.example.net"), &[])
            .await
            .is_err()
    );
    wait_until("the failed handshake to be counted", || {
        sample(
            &metrics.encode(),
            "torhaus_tls_handshakes_total",
            &[("outcome", "no_certificate")],
        ) == Some(1.0)
    })
    .await?;
    // Counted once: not also as a generic failure.
    assert_eq!(
        sample(
            &metrics.encode(),
            "torhaus_tls_handshakes_total",
            &[("outcome", "failed")]
        ),
        None
    );
    drop(client);
    wait_until("the closed connection to stop counting", || {
        sample(
            &metrics.encode(),
            "torhaus_downstream_connections_active",
            &[("protocol", "https")],
        ) == Some(0.0)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_stall_or_are_not_tls_are_closed_and_counted() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let handshake_timeout = Duration::from_millis(400);
    let gateway = Gateway::start_with(&[443], DataPlaneOptions::default(), |settings| {
        settings.tls_handshake_timeout = handshake_timeout;
    });
    gateway.apply(https_site(
        "app.example.com",
        vec![certificate(&["app.example.com"])],
        &app_backend,
    ));
    let addr = gateway.addr(443);
    let metrics = gateway.dataplane.metrics();

    // Connected, then silent: closed once the handshake deadline passes.
    let connected = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await?;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(DEADLINE, silent.read(&mut byte))
        .await
        .context("a silent connection was kept open")?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(connected.elapsed() >= handshake_timeout);
    wait_for_sample(
        metrics,
        "torhaus_tls_handshakes_total",
        &[("outcome", "timeout")],
        1.0,
    )
    .await?;

    // Plain HTTP on the TLS port: refused and counted as a failure.
    let mut plain = tokio::net::TcpStream::connect(addr).await?;
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, plain.read_to_end(&mut answer))
        .await
        .context("plain HTTP on the TLS port was kept open")??;
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    wait_for_sample(
        metrics,
        "torhaus_tls_handshakes_total",
        &[("outcome", "failed")],
        1.0,
    )
    .await?;

    // The port still serves TLS clients.
    let stream = tls_connect(addr, Some("app.example.com"), &[b"http/1.1"]).await?;
    assert_eq!(
        Client::new(stream)
            .get("app.example.com", "/")
            .await?
            .status,
        200
    );
    assert_eq!(
        sample(
            &metrics.encode(),
            "torhaus_tls_handshakes_total",
            &[("outcome", "timeout")]
        ),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_of_removed_routes_disappear_on_reload() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let config = |name: &str| {
        Arc::new(DataPlaneConfig {
            ports: vec![http_port(
                80,
                vec![listener(
                    "http",
                    HostMatch::Any,
                    None,
                    vec![route(
                        name,
                        vec![rule(vec![prefix("/")], vec![], vec![to(&app_backend, 1)])],
                    )],
                )],
            )],
        })
    };
    let gateway = Gateway::start(&[80]);
    gateway.apply(config("old"));
    assert_eq!(
        get(gateway.addr(80), "a.example.com", "/").await?.status,
        200
    );
    let metrics = gateway.dataplane.metrics();
    let old = [
        ("route", "test/old"),
        ("backend", "test/app:80"),
        ("status_class", "2xx"),
    ];
    wait_for_sample(metrics, "torhaus_http_requests_total", &old, 1.0).await?;
    gateway.apply(config("new"));
    assert_eq!(
        get(gateway.addr(80), "a.example.com", "/").await?.status,
        200
    );
    let new = [
        ("route", "test/new"),
        ("backend", "test/app:80"),
        ("status_class", "2xx"),
    ];
    wait_for_sample(metrics, "torhaus_http_requests_total", &new, 1.0).await?;
    let text = metrics.encode();
    assert!(!text.contains("route=\"test/old\""), "{text}");
    assert_eq!(
        sample(
            &text,
            "torhaus_config_reloads_total",
            &[("result", "applied")]
        ),
        Some(2.0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_can_be_switched_off() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let (gateway, dir, log_path) = gateway_with_access_log("off", false);
    gateway.apply(simple(
        80,
        vec![rule(vec![prefix("/")], vec![], vec![to(&app_backend, 1)])],
    ));
    assert_eq!(
        get(gateway.addr(80), "a.example.com", "/").await?.status,
        200
    );
    // The access log line is written in the same phase metrics would be recorded in.
    wait_until("the access log line", || {
        std::fs::read_to_string(&log_path).is_ok_and(|t| t.ends_with('\n'))
    })
    .await?;
    let text = gateway.dataplane.metrics().encode();
    assert_eq!(
        sample(
            &text,
            "torhaus_http_requests_total",
            &[
                ("route", "test/r"),
                ("backend", "test/app:80"),
                ("status_class", "2xx")
            ]
        ),
        Some(0.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_connections_are_counted_while_open() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start(&[80]);
    gateway.apply(simple(
        80,
        vec![rule(vec![prefix("/")], vec![], vec![to(&app_backend, 1)])],
    ));
    let addr = gateway.addr(80);
    let metrics = gateway.dataplane.metrics();
    let open = |count: f64| {
        move || {
            sample(
                &metrics.encode(),
                "torhaus_downstream_connections_active",
                &[("protocol", "http")],
            ) == Some(count)
        }
    };
    // Two kept-alive connections, one of which has not sent a request yet: both count.
    let mut first = Client::connect(addr).await;
    assert_eq!(first.get("a.test", "/").await?.status, 200);
    let second = Client::connect(addr).await;
    wait_until("two open connections", open(2.0)).await?;
    drop(second);
    wait_until("one open connection", open(1.0)).await?;
    drop(first);
    wait_until("no open connection", open(0.0)).await?;
    Ok(())
}

/// A URLRewrite changes the host and path the upstream sees, not what the client sent: the
/// access log and the forwarding headers keep the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_requests_are_logged_and_forwarded_as_the_client_sent_them() -> Result<()> {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let (gateway, dir, log_path) = gateway_with_access_log("rewrite", true);
    gateway.apply(simple(
        80,
        vec![rule(
            vec![prefix("/old")],
            vec![Filter::Rewrite(Rewrite {
                hostname: Some("internal.svc".into()),
                path: Some(PathModifier::ReplacePrefixMatch("/v2".into())),
            })],
            vec![to(&app_backend, 1)],
        )],
    ));
    let response = get(gateway.addr(80), "app.example.com", "/old/page?q=1").await?;
    assert_eq!(response.status, 200);
    let head = app.last_head();
    assert!(head.starts_with("GET /v2/page?q=1 HTTP/1.1"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\nhost: internal.svc\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-forwarded-host: app.example.com\r\n"),
        "{head}"
    );
    assert!(head.contains(";host=app.example.com;"), "{head}");

    wait_until("the access log line", || {
        std::fs::read_to_string(&log_path).is_ok_and(|t| t.ends_with('\n'))
    })
    .await?;
    let log = std::fs::read_to_string(&log_path)?;
    let line: serde_json::Value = serde_json::from_str(log.trim_end())?;
    assert_eq!(line["host"], "app.example.com", "{log}");
    assert_eq!(line["path"], "/old/page", "{log}");
    assert_eq!(line["status"], 200);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
