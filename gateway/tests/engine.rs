//! torhaus's own HTTP/1.1 engine over real sockets: which requests it serves and which it hands
//! to pingora's proxy (and that both keep working on one connection), the upstream pool, the
//! response framings it relays (chunked, until close, informational, bodiless), hop-by-hop
//! fields, upstreams that break their framing, pipelining, and the engine switched off.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use torhaus_gateway::{DataPlaneOptions, EngineChoice};
use torhaus_model::*;

/// An upstream answering each path with a fixed raw response, to exercise framings the test
/// backend never produces. Counts the connections it accepted and keeps every request head.
#[derive(Clone)]
struct ScriptedUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

/// The raw response for `path`, and whether the upstream closes the connection after it.
fn scripted_response(path: &str, head: &str) -> (Vec<u8>, bool) {
    let fixed = |text: &str, close| (text.as_bytes().to_vec(), close);
    match path {
        "/chunked" => fixed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Case-Kept: yes\r\n\r\n\
             5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        ),
        "/until-close" => fixed(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nstreamed until close",
            true,
        ),
        "/early-hints" => fixed(
            "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/close" => fixed(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            true,
        ),
        "/then-close" => fixed("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true),
        "/hop" => fixed(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\n\
             Keep-Alive: timeout=5\r\nX-Hop: private\r\nX-Kept: public\r\n\r\nok",
            false,
        ),
        "/no-content" => fixed("HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n", false),
        "/http10" => fixed("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", true),
        "/te-gzip" => fixed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxxxx",
            true,
        ),
        "/two-lengths" => fixed(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
            true,
        ),
        "/chunked-and-length" => fixed(
            "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n\
             2\r\nok\r\n0\r\n\r\n",
            false,
        ),
        "/broken-chunks" => fixed(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n",
            true,
        ),
        _ => {
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}",
                head.len()
            );
            (reply.into_bytes(), false)
        }
    }
}

impl ScriptedUpstream {
    async fn spawn() -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("upstream binds");
        let upstream = ScriptedUpstream {
            addr: listener.local_addr().expect("upstream address"),
            connections: Arc::new(AtomicUsize::new(0)),
            heads: Arc::new(Mutex::new(Vec::new())),
        };
        let serving = upstream.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                serving.connections.fetch_add(1, Ordering::SeqCst);
                let serving = serving.clone();
                tokio::spawn(async move {
                    let _ = serving.serve(stream).await;
                });
            }
        });
        upstream
    }

    async fn serve(&self, mut stream: TcpStream) -> Result<()> {
        let mut buffer = Vec::new();
        while let Some(head) = read_head(&mut stream, &mut buffer).await? {
            self.heads
                .lock()
                .expect("heads lock")
                .push(head.text.clone());
            let path = head.target.split('?').next().unwrap_or_default();
            if path == "/slow" {
                tokio::time::sleep(std::time::Duration::from_millis(900)).await;
            }
            if path == "/hang" {
                // Never answers: waits for the gateway to close the connection.
                let mut rest = [0u8; 1];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut rest).await;
                return Ok(());
            }
            let (reply, close) = scripted_response(path, &head.text);
            stream.write_all(&reply).await?;
            if close {
                return Ok(());
            }
        }
        Ok(())
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn last_head(&self) -> String {
        last_recorded(&self.heads)
    }
}

/// A gateway on declared port 80 sending everything to `upstream`.
fn gateway_to(upstream: SocketAddr, engine: EngineChoice) -> Gateway {
    let app = backend("app", vec![upstream], UpstreamProtocol::Http1);
    let gateway = Gateway::start_with(&[80], DataPlaneOptions::default(), |settings| {
        settings.engine = engine;
    });
    gateway.apply(simple(
        80,
        vec![rule(vec![prefix("/")], vec![], vec![to(&app, 1)])],
    ));
    gateway
}

/// `torhaus_engine_handovers_total` of HTTP/1.1 connections by reason, 0 when absent.
fn handovers(gateway: &Gateway, reason: &str) -> u64 {
    handovers_of(gateway, "http1", reason)
}

/// `torhaus_engine_handovers_total` by protocol and reason, 0 when absent.
fn handovers_of(gateway: &Gateway, protocol: &str, reason: &str) -> u64 {
    let wanted =
        format!("torhaus_engine_handovers_total{{protocol=\"{protocol}\",reason=\"{reason}\"}} ");
    gateway
        .dataplane
        .metrics()
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(&wanted)?.trim().parse().ok())
        .unwrap_or(0)
}

fn total_handovers(gateway: &Gateway) -> u64 {
    gateway
        .dataplane
        .metrics()
        .encode()
        .lines()
        .filter(|line| line.starts_with("torhaus_engine_handovers_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_stay_on_the_engine_over_one_pooled_upstream_connection() -> Result<()> {
    let upstream = ScriptedUpstream::spawn().await;
    let gateway = gateway_to(upstream.addr, EngineChoice::Torhaus);
    let mut client = Client::connect(gateway.addr(80)).await;
    for i in 0..20 {
        client
            .send(
                format!(
                    "GET /echo/{i} HTTP/1.1\r\nHost: app.example\r\nX-Custom-Case: v{i}\r\n\
                     Connection: keep-alive\r\nKeep-Alive: timeout=9\r\nTE: trailers\r\n\
                     X-Forwarded-For: 6.6.6.6\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let response = client.response(false).await?;
        ensure!(response.status == 200, "request {i}: {response:?}");
        ensure!(
            response
                .text()
                .starts_with(&format!("GET /echo/{i} HTTP/1.1\r\n")),
            "request {i} reached the upstream as: {}",
            response.text()
        );
    }
    let head = upstream.last_head();
    assert!(
        head.contains("\r\nX-Custom-Case: v19\r\n"),
        "case kept: {head}"
    );
    assert!(head.contains("\r\nHost: app.example\r\n"), "{head}");
    for dropped in ["Connection:", "Keep-Alive:", "TE:", "6.6.6.6"] {
        assert!(!head.contains(dropped), "{dropped} forwarded: {head}");
    }
    assert!(
        head.contains("\r\nX-Forwarded-For: 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nX-Forwarded-Proto: http\r\n"), "{head}");
    assert!(
        head.contains("\r\nX-Forwarded-Host: app.example\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nForwarded: for=127.0.0.1;host=app.example;proto=http\r\n"),
        "{head}"
    );
    assert_eq!(
        upstream.connections(),
        1,
        "the upstream connection was pooled"
    );
    assert_eq!(total_handovers(&gateway), 0, "nothing went to pingora");
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_upgrades_and_http10_go_to_pingora_and_the_connection_keeps_working() -> Result<()> {
    let (app, gateway) = app_behind_gateway(|_| {}).await;
    let addr = gateway.addr(80);
    let mut client = Client::connect(addr).await;
    let first = client.get("a.example", "/first").await?;
    assert_eq!(first.status, 200);
    assert_eq!(total_handovers(&gateway), 0);
    client
        .send(b"POST /upload HTTP/1.1\r\nhost: a.example\r\ncontent-length: 5\r\n\r\nhello")
        .await?;
    let upload = client.response(false).await?;
    assert_eq!((upload.status, upload.text().as_str()), (200, "5"));
    assert_eq!(handovers(&gateway, "body"), 1);
    let after = client.get("a.example", "/after").await?;
    assert_eq!(
        after.status, 200,
        "pingora serves the rest of the connection"
    );
    assert!(app.last_head().starts_with("GET /after HTTP/1.1"));

    let old = raw(addr, b"GET /old HTTP/1.0\r\nhost: a.example\r\n\r\n").await?;
    assert_eq!(old.status, 200);
    assert_eq!(handovers(&gateway, "http1.0"), 1);

    let mut ws = Client::connect(addr).await;
    ws.send(b"GET /ws HTTP/1.1\r\nhost: a.example\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await?;
    assert_eq!(ws.response(false).await?.status, 101);
    assert_eq!(handovers(&gateway, "upgrade"), 1);
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_an_empty_body_stays_on_the_engine() -> Result<()> {
    let (app, gateway) = app_behind_gateway(|_| {}).await;
    let mut client = Client::connect(gateway.addr(80)).await;
    // `Content-Length: 0` frames no body: the next request starts right after the head.
    client
        .send(
            b"POST /empty HTTP/1.1\r\nhost: a.example\r\ncontent-length: 0\r\n\r\n\
              GET /next HTTP/1.1\r\nhost: a.example\r\n\r\n",
        )
        .await?;
    let empty = client.response(false).await?;
    assert_eq!(empty.status, 200);
    let upstream_saw = empty.text();
    assert!(
        upstream_saw.contains("POST /empty HTTP/1.1\r\n")
            && upstream_saw.contains("\r\ncontent-length: 0\r\n"),
        "{upstream_saw}"
    );
    let next = client.response(false).await?;
    assert_eq!(next.status, 200);
    assert!(app.last_head().starts_with("GET /next HTTP/1.1"));
    assert_eq!(total_handovers(&gateway), 0);
    // Two lengths, even both zero, are the strict checks' 400, through pingora.
    client
        .send(b"POST /twice HTTP/1.1\r\nhost: a.example\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n")
        .await?;
    assert_eq!(client.response(false).await?.status, 400);
    assert_eq!(handovers(&gateway, "body"), 1);
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_http10_request_is_answered_without_waiting_for_more_bytes() -> Result<()> {
    // 18 bytes, fewer than the HTTP/2 preface: pingora alone waits for 24 before parsing.
    let (_app, gateway) = app_behind_gateway(|_| {}).await;
    let response = raw(gateway.addr(80), b"GET / HTTP/1.0\r\n\r\n").await?;
    assert_eq!(response.status, 200);
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_framings_are_relayed_exactly() -> Result<()> {
    let upstream = ScriptedUpstream::spawn().await;
    let gateway = gateway_to(upstream.addr, EngineChoice::Torhaus);
    let mut client = Client::connect(gateway.addr(80)).await;

    let chunked = client.get("a", "/chunked").await?;
    assert_eq!(chunked.text(), "hello world");
    assert_eq!(chunked.header("x-case-kept"), Some("yes"));
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));

    // Chunked framing wins over a length sent beside it, which is not passed on.
    let both = client.get("a", "/chunked-and-length").await?;
    assert_eq!(
        (both.text().as_str(), both.header("content-length")),
        ("ok", None)
    );
    assert_eq!(
        client.get("a", "/one").await?.status,
        200,
        "the connection goes on"
    );

    client
        .send(b"GET /early-hints HTTP/1.1\r\nhost: a\r\n\r\n")
        .await?;
    let hints = client.response(false).await?;
    assert_eq!(hints.status, 103);
    assert_eq!(hints.header("link"), Some("</style.css>; rel=preload"));
    let final_response = client.response(false).await?;
    assert_eq!(
        (final_response.status, final_response.text().as_str()),
        (200, "ok")
    );

    let empty = client.get("a", "/no-content").await?;
    assert_eq!((empty.status, empty.header("x-a")), (204, Some("b")));

    client
        .send(b"HEAD /then-close HTTP/1.1\r\nhost: a\r\n\r\n")
        .await?;
    let head = client.response(true).await?;
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("2"))
    );

    let old = client.get("a", "/http10").await?;
    assert_eq!((old.status, old.text().as_str()), (200, "ok"));

    // Still the same client connection: every response above was framed exactly.
    let echo = client.get("a", "/still-open").await?;
    assert_eq!(echo.status, 200);

    let streamed = client.get("a", "/until-close").await?;
    assert_eq!(streamed.text(), "streamed until close");
    assert_eq!(streamed.header("connection"), Some("close"));
    assert!(
        client.closed().await,
        "the client connection ends with the body"
    );
    assert_eq!(total_handovers(&gateway), 0);
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_of_the_upstream_are_dropped() -> Result<()> {
    let upstream = ScriptedUpstream::spawn().await;
    let gateway = gateway_to(upstream.addr, EngineChoice::Torhaus);
    let response = get(gateway.addr(80), "a", "/hop").await?;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-kept"), Some("public"));
    for dropped in ["connection", "keep-alive", "x-hop"] {
        assert_eq!(response.header(dropped), None, "{dropped}: {response:?}");
    }
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_that_break_their_framing_get_502_or_a_cut_connection() -> Result<()> {
    let upstream = ScriptedUpstream::spawn().await;
    let gateway = gateway_to(upstream.addr, EngineChoice::Torhaus);
    let addr = gateway.addr(80);
    for path in ["/te-gzip", "/two-lengths"] {
        let response = get(addr, "a", path).await.context(path)?;
        assert_eq!(response.status, 502, "{path}");
    }
    let mut client = Client::connect(addr).await;
    client
        .send(b"GET /broken-chunks HTTP/1.1\r\nhost: a\r\n\r\n")
        .await?;
    // The head went out before the framing broke: the body is cut and the connection closed.
    let cut = client.response(false).await;
    assert!(
        cut.is_err(),
        "a broken chunked body must not arrive whole: {cut:?}"
    );
    assert!(client.closed().await);
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_closed_by_the_upstream_are_not_reused() -> Result<()> {
    let upstream = ScriptedUpstream::spawn().await;
    let gateway = gateway_to(upstream.addr, EngineChoice::Torhaus);
    let mut client = Client::connect(gateway.addr(80)).await;
    // Announced: never pooled.
    assert_eq!(client.get("a", "/close").await?.status, 200);
    assert_eq!(client.get("a", "/one").await?.status, 200);
    assert_eq!(upstream.connections(), 2);
    // Not announced: the pooled connection is found closed, and a GET is sent again on a new one.
    assert_eq!(client.get("a", "/then-close").await?.status, 200);
    let retried = client.get("a", "/after-silent-close").await?;
    assert_eq!(retried.status, 200);
    assert!(retried.text().starts_with("GET /after-silent-close "));
    assert!(upstream.connections() >= 3);
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() -> Result<()> {
    let upstream = ScriptedUpstream::spawn().await;
    let gateway = gateway_to(upstream.addr, EngineChoice::Torhaus);
    let mut client = Client::connect(gateway.addr(80)).await;
    client
        .send(
            b"GET /p/1 HTTP/1.1\r\nhost: a\r\n\r\nGET /p/2 HTTP/1.1\r\nhost: a\r\n\r\n\
              GET /p/3 HTTP/1.1\r\nhost: a\r\n\r\n",
        )
        .await?;
    for i in 1..=3 {
        let response = client.response(false).await?;
        assert!(
            response.text().starts_with(&format!("GET /p/{i} ")),
            "response {i}: {}",
            response.text()
        );
    }
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_engine_off_pingora_serves_everything() -> Result<()> {
    let upstream = ScriptedUpstream::spawn().await;
    let gateway = gateway_to(upstream.addr, EngineChoice::Pingora);
    let mut client = Client::connect(gateway.addr(80)).await;
    assert_eq!(
        client.get("a", "/one").await?.text().lines().next(),
        Some("GET /one HTTP/1.1")
    );
    assert_eq!(client.get("a", "/chunked").await?.text(), "hello world");
    assert_eq!(
        total_handovers(&gateway),
        0,
        "handovers count the engine's own choices"
    );
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_space_in_the_request_target_is_refused_not_re_escaped() -> Result<()> {
    let (app, gateway) = app_behind_gateway(|_| {}).await;
    let mut client = Client::connect(gateway.addr(80)).await;
    client
        .send(b"GET /a b HTTP/1.1\r\nhost: a.example\r\n\r\n")
        .await?;
    let response = client.response(false).await?;
    assert_eq!(response.status, 400);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.closed().await);
    for (what, request) in [
        (
            "userinfo in Host",
            &b"GET / HTTP/1.1\r\nhost: user@a.example\r\n\r\n"[..],
        ),
        (
            "Host differing from the target's authority",
            b"GET http://a.example/ HTTP/1.1\r\nhost: b.example\r\n\r\n",
        ),
    ] {
        let response = raw(gateway.addr(80), request).await.context(what)?;
        assert_eq!(response.status, 400, "{what}");
    }
    assert_eq!(app.hits(), 0, "nothing was forwarded");
    gateway.dataplane.shutdown();
    Ok(())
}

/// An HTTP/2 client connection with prior knowledge (h2c) to a cleartext port.
struct H2Client {
    requests: h2::client::SendRequest<bytes::Bytes>,
}

/// An HTTP/2 response, or how its stream ended early.
#[derive(Debug)]
struct H2Response {
    status: u16,
    headers: http::HeaderMap,
    body: Result<Vec<u8>, h2::Error>,
}

impl H2Response {
    fn text(&self) -> String {
        self.body
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl H2Client {
    async fn connect(addr: SocketAddr) -> Result<H2Client> {
        let tcp = TcpStream::connect(addr).await?;
        let (requests, connection) = h2::client::handshake(tcp).await?;
        tokio::spawn(connection);
        Ok(H2Client { requests })
    }

    async fn send(
        &mut self,
        request: http::Request<()>,
        body: Option<&[u8]>,
    ) -> Result<H2Response> {
        let mut requests = self.requests.clone().ready().await?;
        let (response, mut stream) = requests.send_request(request, body.is_none())?;
        if let Some(body) = body {
            stream.send_data(bytes::Bytes::copy_from_slice(body), true)?;
        }
        let response = response.await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut incoming = response.into_body();
        let mut body = Vec::new();
        let body = loop {
            match incoming.data().await {
                Some(Ok(chunk)) => {
                    let _ = incoming.flow_control().release_capacity(chunk.len());
                    body.extend_from_slice(&chunk);
                }
                Some(Err(error)) => break Err(error),
                None => break Ok(body),
            }
        };
        Ok(H2Response {
            status,
            headers,
            body,
        })
    }

    async fn get(&mut self, uri: &str) -> Result<H2Response> {
        self.send(http::Request::get(uri).body(())?, None).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_are_served_by_the_engine_over_pooled_http1_upstream_connections()
-> Result<()> {
    let upstream = ScriptedUpstream::spawn().await;
    let gateway = gateway_to(upstream.addr, EngineChoice::Torhaus);
    let mut client = H2Client::connect(gateway.addr(80)).await?;
    // Concurrent streams on the one client connection.
    let mut streams = Vec::new();
    for i in 0..8 {
        let mut client = H2Client {
            requests: client.requests.clone(),
        };
        streams.push(tokio::spawn(async move {
            client.get(&format!("http://app.example/echo/{i}")).await
        }));
    }
    for (i, stream) in streams.into_iter().enumerate() {
        let response = stream.await??;
        assert_eq!(response.status, 200, "stream {i}: {response:?}");
        assert!(
            response
                .text()
                .starts_with(&format!("GET /echo/{i} HTTP/1.1\r\n")),
            "stream {i} reached the upstream as: {}",
            response.text()
        );
    }
    let request = http::Request::get("http://app.example:8080/fields?q=1")
        .header("x-custom", "v")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("x-forwarded-for", "6.6.6.6")
        .body(())?;
    let response = client.send(request, None).await?;
    assert_eq!(response.status, 200);
    let head = upstream.last_head();
    assert!(head.starts_with("GET /fields?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: app.example:8080\r\n"), "{head}");
    assert!(
        head.contains("\r\ncookie: a=1; b=2\r\n"),
        "split cookies joined: {head}"
    );
    assert!(head.contains("\r\nx-custom: v\r\n"), "{head}");
    assert!(!head.contains("6.6.6.6"), "{head}");
    assert!(
        head.contains("\r\nX-Forwarded-For: 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nX-Forwarded-Host: app.example:8080\r\n"),
        "{head}"
    );
    assert!(
        upstream.connections() <= 8,
        "upstream connections are pooled: {}",
        upstream.connections()
    );
    let pooled = upstream.connections();
    for _ in 0..5 {
        assert_eq!(client.get("http://app.example/again").await?.status, 200);
    }
    assert_eq!(
        upstream.connections(),
        pooled,
        "sequential streams reuse them"
    );
    assert_eq!(total_handovers(&gateway), 0, "nothing went to pingora");
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_responses_are_relayed_as_data_frames_whatever_their_upstream_framing() -> Result<()>
{
    let upstream = ScriptedUpstream::spawn().await;
    let gateway = gateway_to(upstream.addr, EngineChoice::Torhaus);
    let mut client = H2Client::connect(gateway.addr(80)).await?;

    let chunked = client.get("http://a/chunked").await?;
    assert_eq!(
        (chunked.status, chunked.text().as_str()),
        (200, "hello world")
    );
    assert_eq!(chunked.header("x-case-kept"), Some("yes"));
    assert_eq!(chunked.header("transfer-encoding"), None);

    let both = client.get("http://a/chunked-and-length").await?;
    assert_eq!(
        (both.text().as_str(), both.header("content-length")),
        ("ok", None)
    );

    // HEAD: the length of the body a GET would get, and no body.
    let head = client
        .send(http::Request::head("http://a/sized").body(())?, None)
        .await?;
    assert_eq!(head.status, 200);
    assert!(head.header("content-length").is_some(), "{head:?}");
    assert_eq!(head.body.as_ref().map(Vec::len).ok(), Some(0), "{head:?}");

    let until_close = client.get("http://a/until-close").await?;
    assert_eq!(until_close.text(), "streamed until close");

    let hints = client.get("http://a/early-hints").await?;
    assert_eq!((hints.status, hints.text().as_str()), (200, "ok"));

    let empty = client.get("http://a/no-content").await?;
    assert_eq!((empty.status, empty.header("x-a")), (204, Some("b")));

    let hop = client.get("http://a/hop").await?;
    assert_eq!(hop.header("x-kept"), Some("public"));
    for dropped in ["connection", "keep-alive", "x-hop"] {
        assert_eq!(hop.header(dropped), None, "{dropped}: {hop:?}");
    }

    for path in ["/te-gzip", "/two-lengths"] {
        let response = client.get(&format!("http://a{path}")).await?;
        assert_eq!(response.status, 502, "{path}");
    }
    // Broken before the head went out: 502; after it: the stream is reset. Never a clean end.
    let cut = client.get("http://a/broken-chunks").await?;
    assert!(
        cut.status == 502 || cut.body.is_err(),
        "a broken body must not end cleanly: {cut:?}"
    );
    // Its siblings are unaffected.
    assert_eq!(client.get("http://a/after").await?.status, 200);
    assert_eq!(total_handovers(&gateway), 0);
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_with_a_body_go_to_pingora_and_the_connection_stays_with_the_engine()
-> Result<()> {
    let (app, gateway) = app_behind_gateway(|_| {}).await;
    let mut client = H2Client::connect(gateway.addr(80)).await?;
    // An empty body, `content-length: 0` and HEADERS ending the stream, stays on the engine.
    let empty = http::Request::post("http://a.example/empty")
        .header("content-length", "0")
        .body(())?;
    let response = client.send(empty, None).await?;
    assert_eq!(response.status, 200);
    let upstream_saw = response.text();
    assert!(
        upstream_saw.contains("POST /empty HTTP/1.1\r\n")
            && upstream_saw.contains("\r\ncontent-length: 0\r\n"),
        "{upstream_saw}"
    );
    assert_eq!(total_handovers(&gateway), 0);
    let upload = http::Request::post("http://a.example/upload").body(())?;
    let response = client.send(upload, Some(b"hello")).await?;
    assert_eq!((response.status, response.text().as_str()), (200, "5"));
    assert_eq!(handovers_of(&gateway, "http2", "body"), 1);
    let after = client.get("http://a.example/after").await?;
    assert_eq!(after.status, 200);
    assert!(app.last_head().starts_with("GET /after HTTP/1.1"));
    assert_eq!(
        total_handovers(&gateway),
        1,
        "only the stream with a body went to pingora"
    );
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_engine_off_pingora_serves_http2_too() -> Result<()> {
    let upstream = ScriptedUpstream::spawn().await;
    let gateway = gateway_to(upstream.addr, EngineChoice::Pingora);
    let mut client = H2Client::connect(gateway.addr(80)).await?;
    let response = client.get("http://a/chunked").await?;
    assert_eq!(response.text(), "hello world");
    assert_eq!(total_handovers(&gateway), 0);
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_without_a_route_are_answered_by_the_engine() -> Result<()> {
    let upstream = ScriptedUpstream::spawn().await;
    let app = backend("app", vec![upstream.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start(&[80]);
    gateway.apply(simple(
        80,
        vec![rule(vec![prefix("/only")], vec![], vec![to(&app, 1)])],
    ));
    let mut client = H2Client::connect(gateway.addr(80)).await?;
    assert_eq!(client.get("http://a/only/x").await?.status, 200);
    let missing = client.get("http://a/other").await?;
    assert_eq!(
        (missing.status, missing.header("content-length")),
        (404, Some("0"))
    );
    assert_eq!(upstream.connections(), 1);
    assert_eq!(total_handovers(&gateway), 0);
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed_after_the_idle_timeout() -> Result<()> {
    let upstream = ScriptedUpstream::spawn().await;
    let app = backend("app", vec![upstream.addr], UpstreamProtocol::Http1);
    let idle = std::time::Duration::from_millis(300);
    let gateway = Gateway::start_with(&[80], DataPlaneOptions::default(), |settings| {
        settings.client_idle_timeout = idle;
    });
    gateway.apply(simple(
        80,
        vec![rule(vec![prefix("/")], vec![], vec![to(&app, 1)])],
    ));
    let addr = gateway.addr(80);

    let mut http1 = Client::connect(addr).await;
    assert_eq!(http1.get("a", "/one").await?.status, 200);
    let mut h2 = H2Client::connect(addr).await?;
    assert_eq!(h2.get("http://a/one").await?.status, 200);
    let opened = std::time::Instant::now();
    // A slow stream keeps its HTTP/2 connection open past the idle timeout.
    let mut busy = H2Client::connect(addr).await?;
    let slow = tokio::spawn(async move { busy.get("http://a/slow").await.map(|r| (r, busy)) });

    assert!(
        http1.closed().await,
        "the idle HTTP/1.1 connection is closed"
    );
    eventually("the idle HTTP/2 connection is closed", || {
        let mut requests = h2.requests.clone();
        async move {
            std::future::poll_fn(|cx| requests.poll_ready(cx))
                .await
                .is_err()
        }
    })
    .await?;
    assert!(
        opened.elapsed() >= idle,
        "closed no earlier than the timeout"
    );
    let (response, mut busy) = slow.await??;
    assert_eq!(response.status, 200, "the slow stream completed");
    assert_eq!(
        busy.get("http://a/after").await?.status,
        200,
        "its connection was kept while the stream was open"
    );
    gateway.dataplane.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_reset_while_the_upstream_thinks_ends_the_exchange() -> Result<()> {
    let upstream = ScriptedUpstream::spawn().await;
    let gateway = gateway_to(upstream.addr, EngineChoice::Torhaus);
    let client = H2Client::connect(gateway.addr(80)).await?;
    let mut requests = client.requests.clone().ready().await?;
    let (response, _body) =
        requests.send_request(http::Request::get("http://a/hang").body(())?, true)?;
    eventually("the request is in flight", || async {
        gateway.dataplane.requests_in_flight() == 1
    })
    .await?;
    // Dropping the response future resets the stream (RST_STREAM CANCEL).
    drop(response);
    drop(_body);
    eventually(
        "the request ended without its upstream answering",
        || async { gateway.dataplane.requests_in_flight() == 0 },
    )
    .await?;
    // The connection and its other streams go on.
    let mut client = client;
    assert_eq!(client.get("http://a/after").await?.status, 200);
    gateway.dataplane.shutdown();
    Ok(())
}
