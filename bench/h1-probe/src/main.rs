//! A benchmark instrument, not part of torhaus: how fast could an HTTP/1.1 keep-alive proxy
//! engine of torhaus's own be on the same stack (pingora-core's listener and `Stream`, one
//! current-thread tokio runtime per worker, the same allocator)? It serves `GET`/`HEAD`
//! requests without bodies only, to one upstream, over a pool of keep-alive connections, adding
//! the four forwarding headers torhaus adds; responses must carry `Content-Length`. Anything
//! else closes the connection. `bench/h1-probe.sh` measures it beside nginx.
//!
//! Usage: h1-probe LISTEN_ADDR UPSTREAM_ADDR

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static GLOBAL: torhaus_alloc::Mimalloc = torhaus_alloc::Mimalloc;

const MAX_HEAD: usize = 64 * 1024;

struct Probe {
    upstream: String,
    idle: Mutex<Vec<TcpStream>>,
}

/// The end of a header block in `buf`, if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn content_length(headers: &[httparse::Header<'_>]) -> Option<usize> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse().ok())
}

impl Probe {
    /// Proxies one request whose head is `buf[..end]`; false when the connection must close.
    async fn proxy(&self, downstream: &mut Stream, buf: &[u8], client: &str) -> Option<()> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(_) = request.parse(buf).ok()? else {
            return None;
        };
        if !matches!(request.method, Some("GET" | "HEAD"))
            || content_length(request.headers).is_some()
        {
            return None;
        }
        let host = request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| h.value)?;
        let mut head = Vec::with_capacity(buf.len() + 160);
        head.extend_from_slice(&buf[..buf.len() - 2]);
        for (name, value) in [
            (&b"X-Forwarded-For: "[..], client.as_bytes()),
            (b"X-Forwarded-Proto: ", b"http"),
            (b"X-Forwarded-Host: ", host),
        ] {
            head.extend_from_slice(name);
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"Forwarded: for=");
        head.extend_from_slice(client.as_bytes());
        head.extend_from_slice(b";proto=http;host=");
        head.extend_from_slice(host);
        head.extend_from_slice(b"\r\n\r\n");

        // A pooled connection the upstream has closed fails before any response byte: the
        // request is then sent again on a new connection (it is a GET without a body).
        let mut pooled = self.idle.lock().pop();
        let (mut upstream, mut response, head_len, body_len) = loop {
            let reused = pooled.is_some();
            let mut upstream = match pooled.take() {
                Some(conn) => conn,
                None => TcpStream::connect(&self.upstream).await.ok()?,
            };
            let mut response = Vec::with_capacity(4096);
            if upstream.write_all(&head).await.is_err() {
                if reused {
                    continue;
                }
                return None;
            }
            let parsed = loop {
                match upstream.read_buf(&mut response).await {
                    Ok(0) | Err(_) => break None,
                    Ok(_) => {}
                }
                if let Some(end) = head_end(&response) {
                    let mut headers = [httparse::EMPTY_HEADER; 64];
                    let mut parsed = httparse::Response::new(&mut headers);
                    parsed.parse(&response[..end]).ok()?;
                    break Some((end, content_length(parsed.headers)?));
                }
                if response.len() > MAX_HEAD {
                    return None;
                }
            };
            match parsed {
                Some((head_len, body_len)) => break (upstream, response, head_len, body_len),
                None if reused && response.is_empty() => continue,
                None => return None,
            }
        };
        while response.len() < head_len + body_len {
            if upstream.read_buf(&mut response).await.ok()? == 0 {
                return None;
            }
        }
        downstream.write_all(&response).await.ok()?;
        downstream.flush().await.ok()?;
        self.idle.lock().push(upstream);
        Some(())
    }
}

#[async_trait]
impl ServerApp for Probe {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        _: &ShutdownWatch,
    ) -> Option<Stream> {
        let client = stream
            .get_socket_digest()
            .and_then(|d| {
                d.peer_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip().to_string())
            })
            .unwrap_or_default();
        let mut buf = Vec::with_capacity(4096);
        loop {
            let end = loop {
                if let Some(end) = head_end(&buf) {
                    break end;
                }
                if buf.len() > MAX_HEAD || stream.read_buf(&mut buf).await.ok()? == 0 {
                    return None;
                }
            };
            self.proxy(&mut stream, &buf[..end], &client).await?;
            buf.drain(..end);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .context("usage: h1-probe LISTEN_ADDR UPSTREAM_ADDR")?;
    let upstream = args
        .next()
        .context("usage: h1-probe LISTEN_ADDR UPSTREAM_ADDR")?;
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    let mut service = Service::new(
        "h1-probe".to_owned(),
        Probe {
            upstream,
            idle: Mutex::new(Vec::new()),
        },
    );
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
