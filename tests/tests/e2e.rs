//! End-to-end behaviour of the torhaus binary: protocols (h2 over TLS, h2c both sides,
//! WebSocket), hot reload, reload under load, and hostile HTTP/1.1 input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use torhaus_tests::cases::echo_header;
use torhaus_tests::client::{
    self, Connection, TestRequest, TlsSettings, Transport, raw_exchange, raw_status,
};
use torhaus_tests::echo::{EchoIdentity, EchoServer};
use torhaus_tests::fixtures::{LOCAL_CA_HOST, base_manifests, pool, retrying_route, route};
use torhaus_tests::process::{free_port, wait_for};
use torhaus_tests::rig::{Rig, parse_documents, write_documents};

/// The brief: a change in the config directory is live within a second.
const RELOAD_DEADLINE: Duration = Duration::from_secs(1);
const STARTUP_DEADLINE: Duration = Duration::from_secs(15);

async fn rig_with(routes: &[String]) -> anyhow::Result<Rig> {
    let mut manifests = vec![("base", base_manifests())];
    for text in routes {
        manifests.push(("routes", text.clone()));
    }
    Rig::start(&manifests).await
}

/// A rig with one route `name` for `host` to `service`, once torhaus serves it on port 80.
async fn rig_serving(name: &str, host: &str, service: &str) -> anyhow::Result<(Rig, SocketAddr)> {
    let rig = rig_with(&[route(name, host, service, None)]).await?;
    let addr = served_on_80(&rig, host).await?;
    Ok((rig, addr))
}

/// Port 80's address, once it serves `host`.
async fn served_on_80(rig: &Rig, host: &str) -> anyhow::Result<SocketAddr> {
    let addr = rig.torhaus.addr(80)?;
    until_served(addr, host, STARTUP_DEADLINE)
        .await
        .with_context(|| format!("log:\n{}", rig.torhaus.log_tail()))?;
    Ok(addr)
}

/// Fails unless every status is 200.
fn all_ok(statuses: &[u16], what: &str) -> anyhow::Result<()> {
    ensure!(statuses.iter().all(|s| *s == 200), "{what}: {statuses:?}");
    Ok(())
}

/// Waits until `host` answers 200 from the echo backend on `addr` (config loaded).
async fn until_served(
    addr: SocketAddr,
    host: &str,
    deadline: Duration,
) -> anyhow::Result<serde_json::Value> {
    wait_for(&format!("{host} to be served"), deadline, || async {
        let response = client::send(addr, &Transport::Http1, &TestRequest::get(host, "/"))
            .await
            .ok()?;
        (response.status == 200)
            .then(|| response.echo().ok())
            .flatten()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_with_local_ca() -> anyhow::Result<()> {
    let rig = rig_with(&[route("secure", LOCAL_CA_HOST, "echo", None)]).await?;
    let addr = rig.torhaus.addr(443)?;
    until_served(rig.torhaus.addr(80)?, LOCAL_CA_HOST, STARTUP_DEADLINE).await?;
    let ca = rig.torhaus.export_ca()?;
    let transport = Transport::H2Tls(TlsSettings::new(LOCAL_CA_HOST, &ca)?);
    let response = wait_for("an h2 answer over TLS", STARTUP_DEADLINE, || async {
        client::send(addr, &transport, &TestRequest::get(LOCAL_CA_HOST, "/h2"))
            .await
            .ok()
    })
    .await?;
    ensure!(response.status == 200, "status {}", response.status);
    ensure!(
        response.version == http::Version::HTTP_2,
        "answered over {:?}",
        response.version
    );
    let echo = response.echo()?;
    ensure!(echo["path"] == "/h2", "backend saw {echo}");
    ensure!(
        echo["pod"].as_str().is_some_and(|p| p.starts_with("echo-")),
        "served by {echo}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream() -> anyhow::Result<()> {
    let (_rig, addr) = rig_serving("plain", "plain.example.com", "echo").await?;
    let mut connection = Connection::open(addr, &Transport::H2c).await?;
    for n in 0..5 {
        let path = format!("/h2c/{n}");
        let response = connection
            .send(&TestRequest::get("plain.example.com", &path))
            .await?;
        ensure!(response.status == 200, "status {}", response.status);
        ensure!(
            response.version == http::Version::HTTP_2,
            "answered over {:?}",
            response.version
        );
        ensure!(
            response.echo()?["path"] == path.as_str(),
            "wrong path echoed"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_by_app_protocol() -> anyhow::Result<()> {
    let rig = rig_with(&[route("h2c", "h2c.example.com", "echo-h2c", None)]).await?;
    let echo = until_served(rig.torhaus.addr(80)?, "h2c.example.com", STARTUP_DEADLINE).await?;
    ensure!(
        echo["proto"] == "HTTP/2.0",
        "appProtocol kubernetes.io/h2c must reach the backend over h2c, backend saw {}",
        echo["proto"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_torhaus() -> anyhow::Result<()> {
    let (_rig, addr) = rig_serving("ws", "ws.example.com", "echo").await?;
    // pingora 0.9 closes a few percent of upgrades to a fast upstream right after the 101
    // (cloudflare/pingora#946, README "Known gaps"); a client reconnects, and so does this one.
    let mut attempts = 0;
    let mut socket = loop {
        attempts += 1;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut socket, response) =
            tokio_tungstenite::client_async("ws://ws.example.com/socket", tcp)
                .await
                .context("WebSocket handshake through torhaus")?;
        ensure!(
            response.status() == 101,
            "handshake status {}",
            response.status()
        );
        socket.send(Message::text("first")).await?;
        match tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .context("no WebSocket echo within 5 s")?
        {
            Some(Ok(reply)) if reply.to_text()? == "first" => break socket,
            closed if attempts < 3 => eprintln!("tunnel closed after its 101 ({closed:?}); again"),
            other => anyhow::bail!("no echo on {attempts} tunnels in a row: {other:?}"),
        }
    };
    for text in ["hello", "second message", &"x".repeat(70_000)] {
        socket.send(Message::text(text)).await?;
        let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .context("no WebSocket echo within 5 s")?
            .context("WebSocket closed")??;
        ensure!(
            reply.to_text()? == text,
            "echoed {} bytes, sent {}",
            reply.len(),
            text.len()
        );
    }
    socket.close(None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_adds_and_changes_routes_within_a_second() -> anyhow::Result<()> {
    let (rig, addr) = rig_serving("first", "first.example.com", "echo").await?;

    let file = rig.config.path().join("50-added.yaml");
    std::fs::write(&file, route("added", "added.example.com", "echo", Some(1)))?;
    let started = Instant::now();
    until_served(addr, "added.example.com", RELOAD_DEADLINE)
        .await
        .with_context(|| format!("added route not live; log:\n{}", rig.torhaus.log_tail()))?;
    println!("route added: live after {:?}", started.elapsed());

    std::fs::write(&file, route("added", "added.example.com", "echo", Some(2)))?;
    let started = Instant::now();
    wait_for("the changed header value", RELOAD_DEADLINE, || async {
        let echo = until_served(addr, "added.example.com", Duration::from_millis(200))
            .await
            .ok()?;
        (echo_header(&echo, "x-generation").as_deref() == Some("2")).then_some(())
    })
    .await?;
    println!("route changed: live after {:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_file_keeps_previous_routes_serving() -> anyhow::Result<()> {
    let (rig, addr) = rig_serving("stable", "stable.example.com", "echo").await?;

    let bad = rig.config.path().join("60-broken.yaml");
    std::fs::write(
        &bad,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: [unclosed\n",
    )?;
    // Serve continuously through two reload windows: every request must succeed.
    let watch_until = Instant::now() + 2 * RELOAD_DEADLINE;
    let mut served = 0;
    while Instant::now() < watch_until {
        let response = client::send(
            addr,
            &Transport::Http1,
            &TestRequest::get("stable.example.com", "/"),
        )
        .await?;
        ensure!(
            response.status == 200,
            "after a malformed file the stable route answered {}; log:\n{}",
            response.status,
            rig.torhaus.log_tail()
        );
        served += 1;
    }
    ensure!(served > 0, "no request completed");

    // Reloading still works once the file is fixed.
    std::fs::write(&bad, route("fixed", "fixed.example.com", "echo", None))?;
    until_served(addr, "fixed.example.com", RELOAD_DEADLINE)
        .await
        .with_context(|| format!("fixed file not picked up; log:\n{}", rig.torhaus.log_tail()))?;
    until_served(addr, "stable.example.com", Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_reloads_under_load_lose_no_request() -> anyhow::Result<()> {
    const CHANGES: u64 = 1_000;
    const CLIENTS: usize = 4;
    let (rig, addr) = rig_serving("stable", "stable.example.com", "echo").await?;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
        clients.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr, &Transport::Http1).await?;
            let request = TestRequest::get("stable.example.com", "/stable");
            while !stop.load(Ordering::SeqCst) {
                let response = connection.send(&request).await?;
                if response.status != 200 {
                    bail!("stable route answered {} during reloads", response.status);
                }
                ok.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::Ok(())
        }));
    }

    // Samples the changing route, to prove reloads really happened while the load ran.
    let sampler = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut generations = std::collections::BTreeSet::new();
            let request = TestRequest::get("changing.example.com", "/");
            while !stop.load(Ordering::SeqCst) {
                if let Ok(response) = client::send(addr, &Transport::Http1, &request).await
                    && let Ok(echo) = response.echo()
                    && let Some(generation) = echo_header(&echo, "x-generation")
                {
                    generations.insert(generation);
                }
            }
            generations.len()
        })
    };

    let file = rig.config.path().join("70-changing.yaml");
    let staging = rig.config.path().join(".70-changing.yaml.tmp");
    for generation in 1..=CHANGES {
        let mut text = route("changing", "changing.example.com", "echo", Some(generation));
        if generation % 2 == 0 {
            // Every other change also adds a second route, so the route table itself changes.
            text.push_str("---\n");
            text.push_str(&route(
                "extra",
                &format!("extra-{generation}.example.com"),
                "echo",
                None,
            ));
        }
        std::fs::write(&staging, text)?;
        std::fs::rename(&staging, &file)?;
        // Pace the writer a little so the change stream overlaps many reload cycles.
        tokio::time::sleep(Duration::from_millis(2)).await;
        if clients.iter().any(|c| c.is_finished()) {
            break;
        }
    }
    let final_live = wait_for(
        "generation 1000 to be live",
        Duration::from_secs(5),
        || async {
            let echo = until_served(addr, "changing.example.com", Duration::from_millis(200))
                .await
                .ok()?;
            (echo_header(&echo, "x-generation").as_deref() == Some("1000")).then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.context("client task panicked")??;
    }
    let generations_seen = sampler.await.context("sampler task panicked")?;
    final_live.with_context(|| format!("log:\n{}", rig.torhaus.log_tail()))?;
    ensure!(
        generations_seen >= 5,
        "only {generations_seen} configuration generations were ever served during the changes"
    );
    let served = ok.load(Ordering::SeqCst);
    ensure!(served > 0, "the clients completed no request");
    println!(
        "{served} requests served across {CHANGES} configuration changes ({generations_seen} \
         generations observed live), none failed"
    );
    Ok(())
}

/// Serves `CLIENTS` keep-alive connections at once, each sending `REQUESTS` requests, with
/// torhaus started with `scheduler_args`; fails unless every answer is 200 from the backend.
async fn concurrent_clients_all_served(scheduler_args: &[&str]) -> anyhow::Result<()> {
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 50;
    let manifests = [
        ("base", base_manifests()),
        (
            "routes",
            route("spread", "spread.example.com", "echo", None),
        ),
    ];
    let rig = Rig::start_with_args(&manifests, None, scheduler_args).await?;
    let addr = served_on_80(&rig, "spread.example.com").await?;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr, &Transport::Http1).await?;
            let request = TestRequest::get("spread.example.com", "/spread");
            for _ in 0..REQUESTS {
                let response = connection.send(&request).await?;
                ensure!(response.status == 200, "answered {}", response.status);
                response.echo()?;
            }
            anyhow::Ok(())
        }));
    }
    for client in clients {
        client
            .await
            .context("client task panicked")?
            .with_context(|| format!("{scheduler_args:?}; log:\n{}", rig.torhaus.log_tail()))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_thread_event_loops_serve_concurrent_connections() -> anyhow::Result<()> {
    concurrent_clients_all_served(&["--threads", "2"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_stealing_serves_concurrent_connections() -> anyhow::Result<()> {
    concurrent_clients_all_served(&["--threads", "2", "--work-stealing"]).await
}

/// Sends raw bytes to the stable route's port and returns the status torhaus answered.
async fn raw_status_of(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<u16> {
    let answer = raw_exchange(addr, bytes).await?;
    raw_status(&answer).with_context(|| {
        format!(
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        )
    })
}

/// Sends `hostile`, expects `want`, then proves with a control request that the backend saw
/// only that control request.
async fn refused_and_not_forwarded(hostile: &[u8], want: u16, what: &str) -> anyhow::Result<()> {
    let (rig, addr) = rig_serving("victim", "victim.example.com", "victim").await?;
    let victim = rig.pods_of("victim").first().context("victim pod")?;
    let seen_before = victim.requests();
    let status = raw_status_of(addr, hostile).await?;
    ensure!(status == want, "{what} answered {status}, expected {want}");
    until_served(addr, "victim.example.com", STARTUP_DEADLINE).await?;
    let seen: Vec<String> = victim
        .received()
        .iter()
        .map(|r| {
            format!(
                "{} {} {:?}",
                r.method,
                r.path,
                r.headers.keys().collect::<Vec<_>>()
            )
        })
        .collect();
    ensure!(
        victim.requests() == seen_before + 1,
        "{what}: the backend received more than the control request: {seen:?}"
    );
    Ok(())
}

async fn oversized_header(bytes: usize) -> anyhow::Result<()> {
    let huge = "a".repeat(bytes);
    let request = format!("GET / HTTP/1.1\r\nHost: victim.example.com\r\nX-Huge: {huge}\r\n\r\n");
    refused_and_not_forwarded(request.as_bytes(), 431, &format!("a {bytes}-byte header")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() -> anyhow::Result<()> {
    oversized_header(128 * 1024).await
}

/// Above pingora's own 1 MiB read cap the answer must still be 431, not a generic 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known gap: pingora 0.9 answers 400 itself above 1 MiB of headers (gateway/src/strict.rs)"]
async fn headers_above_a_mebibyte_get_431() -> anyhow::Result<()> {
    oversized_header(2 * 1024 * 1024).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_gets_400() -> anyhow::Result<()> {
    let request = b"GET / HTTP/1.1\r\nHost: victim.example.com\r\nthis line has no colon\r\n\r\n";
    refused_and_not_forwarded(request, 400, "a header line without a colon").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_gets_400_and_is_never_forwarded()
-> anyhow::Result<()> {
    let request = b"POST / HTTP/1.1\r\nHost: victim.example.com\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG";
    refused_and_not_forwarded(request, 400, "Content-Length with Transfer-Encoding").await
}

/// Sends `count` GETs for `host` on fresh connections and returns their statuses.
async fn statuses(addr: SocketAddr, host: &str, count: usize) -> anyhow::Result<Vec<u16>> {
    let mut statuses = Vec::with_capacity(count);
    for n in 0..count {
        let request = TestRequest::get(host, &format!("/{n}"));
        statuses.push(
            client::send(addr, &Transport::Http1, &request)
                .await?
                .status
                .as_u16(),
        );
    }
    Ok(statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_listed_codes_and_connection_failures_through_the_binary() -> anyhow::Result<()> {
    let dead_port = free_port()?;
    let routes = [
        retrying_route("retry", "retry.example.com", "flaky", 2, &[503]),
        route("noretry", "noretry.example.com", "flaky", None),
        retrying_route("connect", "connect.example.com", "pool", 2, &[]),
    ]
    .join("---\n");
    let rig = Rig::start(&[
        ("base", base_manifests()),
        ("flaky", pool("flaky", 2, None)),
        ("pool", pool("pool", 1, Some(dead_port))),
        ("routes", routes),
    ])
    .await?;
    let addr = served_on_80(&rig, "retry.example.com").await?;

    // One of the two pods answers 503 to everything: with retries on 503 every request succeeds
    // (the retry avoids the pod that just failed); without, its share fails.
    let failing = rig.pods_of("flaky").first().context("flaky pod")?;
    failing.set_failure(Some(http::StatusCode::SERVICE_UNAVAILABLE));
    let tried_before = failing.requests();
    let retried = statuses(addr, "retry.example.com", 40).await?;
    all_ok(&retried, "with retries on 503")?;
    ensure!(
        failing.requests() > tried_before,
        "the failing pod was never tried, so nothing was retried"
    );
    let plain = statuses(addr, "noretry.example.com", 40).await?;
    ensure!(
        plain.contains(&503) && plain.contains(&200),
        "without retries both pods answer: {plain:?}"
    );

    // A refused connection is retried on the other endpoint.
    let connected = statuses(addr, "connect.example.com", 30).await?;
    all_ok(&connected, "with retries and a dead endpoint")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_ejected_and_recovers_through_the_binary() -> anyhow::Result<()> {
    let dead_port = free_port()?;
    let rig = Rig::start_with_args(
        &[
            ("base", base_manifests()),
            ("pool", pool("pool", 1, Some(dead_port))),
            ("routes", route("pool", "pool.example.com", "pool", None)),
        ],
        None,
        &["--eject-after-failures", "2", "--eject-backoff", "3s"],
    )
    .await?;
    let addr = served_on_80(&rig, "pool.example.com").await?;

    // No retries: requests the dead endpoint gets fail with 502 until it has failed twice in a
    // row. Any request may be the one that ejects it (the readiness probe above included), so
    // the test watches the exported endpoint state rather than counting 502s.
    let admin = rig.torhaus.admin_addr()?;
    wait_for(
        "the dead endpoint to be ejected",
        STARTUP_DEADLINE,
        || async {
            statuses(addr, "pool.example.com", 1).await.ok()?;
            let metrics = client::send(
                admin,
                &Transport::Http1,
                &TestRequest::get("127.0.0.1", "/metrics"),
            )
            .await
            .ok()?;
            let text = String::from_utf8_lossy(&metrics.body).into_owned();
            text.lines()
                .any(|line| {
                    line.starts_with("torhaus_backend_endpoints{")
                        && line.contains("state=\"ejected\"")
                        && line.ends_with(" 1")
                })
                .then_some(())
        },
    )
    .await
    .with_context(|| format!("log:\n{}", rig.torhaus.log_tail()))?;
    // Ejected: every request goes to the live pod for the backoff (3 s).
    let live = rig.pods_of("pool").first().context("pool pod")?;
    let live_before = live.requests();
    let ejected = statuses(addr, "pool.example.com", 20).await?;
    all_ok(&ejected, "after ejection")
        .with_context(|| format!("log:\n{}", rig.torhaus.log_tail()))?;
    ensure!(
        live.requests() - live_before == 20,
        "the live pod missed requests"
    );

    // The endpoint comes back: after the backoff it gets traffic again.
    let revived = EchoServer::start_on(
        SocketAddr::from(([127, 0, 0, 1], dead_port)),
        EchoIdentity {
            namespace: "e2e".to_owned(),
            pod: "pool-revived".to_owned(),
            service: "pool".to_owned(),
        },
    )
    .await?;
    wait_for(
        "the revived endpoint to receive requests",
        STARTUP_DEADLINE,
        || async {
            statuses(addr, "pool.example.com", 1).await.ok()?;
            (revived.requests() > 0).then_some(())
        },
    )
    .await
    .with_context(|| format!("log:\n{}", rig.torhaus.log_tail()))?;
    Ok(())
}

/// Sends `signal` to torhaus and insists on a successful exit; how long the exit took.
async fn stop(rig: &mut Rig, signal: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = rig
        .torhaus
        .signal_and_wait(signal, Duration::from_secs(30))
        .await?;
    ensure!(status.success(), "exit status {status} after SIG{signal}");
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_and_exits_as_soon_as_they_have()
-> anyhow::Result<()> {
    let mut rig = Rig::start_with_args(
        &[
            ("base", base_manifests()),
            ("routes", route("slow", "slow.example.com", "echo", None)),
        ],
        None,
        &["--grace-period", "60s"],
    )
    .await?;
    let addr = served_on_80(&rig, "slow.example.com").await?;
    let echo = rig.pods_of("echo").first().context("echo pod")?;
    echo.set_delay(Duration::from_millis(1500));
    let seen_before = echo.requests();
    let in_flight = tokio::spawn(async move {
        client::send(
            addr,
            &Transport::Http1,
            &TestRequest::get("slow.example.com", "/slow"),
        )
        .await
    });
    wait_for(
        "the slow request to reach the backend",
        STARTUP_DEADLINE,
        || {
            let seen = echo.requests();
            async move { (seen > seen_before).then_some(()) }
        },
    )
    .await?;

    let took = stop(&mut rig, "TERM").await?;
    let response = in_flight.await.context("client task panicked")??;
    ensure!(
        response.status == 200,
        "the in-flight request got {}",
        response.status
    );
    // Waited for the request (1.5 s), not for the 60 s grace period.
    ensure!(took < Duration::from_secs(15), "exited after {took:?}");
    ensure!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port still accepts connections"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_with_nothing_in_flight_exits_at_once() -> anyhow::Result<()> {
    let mut rig = Rig::start_with_args(
        &[
            ("base", base_manifests()),
            ("routes", route("idle", "idle.example.com", "echo", None)),
        ],
        None,
        &["--grace-period", "60s"],
    )
    .await?;
    served_on_80(&rig, "idle.example.com").await?;
    let took = stop(&mut rig, "INT").await?;
    ensure!(took < Duration::from_secs(5), "exited after {took:?}");
    Ok(())
}

/// Edits the Gateway `e2e/gw` in the rig's base manifest file.
fn edit_gateway(rig: &Rig, edit: impl FnOnce(&mut serde_yaml::Sequence)) -> anyhow::Result<()> {
    let path = rig.manifest_file(0);
    let mut docs = parse_documents(&std::fs::read_to_string(&path)?, "base")?;
    let listeners = docs
        .iter_mut()
        .find(|d| d.get("kind").and_then(|k| k.as_str()) == Some("Gateway"))
        .and_then(|g| g.get_mut("spec")?.get_mut("listeners")?.as_sequence_mut())
        .context("the base manifests hold no Gateway with listeners")?;
    edit(listeners);
    let staging = path.with_extension("tmp");
    write_documents(&staging, &docs)?;
    std::fs::rename(&staging, &path)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_ports_follow_the_gateway_without_a_restart() -> anyhow::Result<()> {
    let rig = rig_with(&[route("both", LOCAL_CA_HOST, "echo", None)]).await?;
    let (http, https) = (rig.torhaus.addr(80)?, rig.torhaus.addr(443)?);
    until_served(http, LOCAL_CA_HOST, STARTUP_DEADLINE).await?;
    let mut kept = Connection::open(http, &Transport::Http1).await?;
    let request = TestRequest::get(LOCAL_CA_HOST, "/kept");
    ensure!(kept.send(&request).await?.status == 200);

    // Port 443 turns from HTTPS into plain HTTP: it answers plain HTTP within the reload
    // deadline (plus the restart of that one port), and port 80's connection lives on.
    edit_gateway(&rig, |listeners| {
        if let Some(https) = listeners.get_mut(1).and_then(|l| l.as_mapping_mut()) {
            https.insert("protocol".into(), "HTTP".into());
            https.remove("tls");
        }
    })?;
    until_served(https, LOCAL_CA_HOST, Duration::from_secs(5))
        .await
        .with_context(|| format!("443 not switched to HTTP; log:\n{}", rig.torhaus.log_tail()))?;
    ensure!(
        kept.send(&request).await?.status == 200,
        "port 80's connection was disturbed"
    );

    // The listener is removed: its port is closed, not left answering 404.
    edit_gateway(&rig, |listeners| {
        listeners.truncate(1);
    })?;
    wait_for("port 443 to close", Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(https)
            .await
            .is_err()
            .then_some(())
    })
    .await
    .with_context(|| format!("log:\n{}", rig.torhaus.log_tail()))?;
    ensure!(
        kept.send(&request).await?.status == 200,
        "port 80's connection was disturbed"
    );
    Ok(())
}
