//! In-process echo backend answering like the Gateway API conformance `echo-basic` image.
//!
//! One listener serves HTTP/1.1, h2c with prior knowledge and WebSocket echo, so a test can point
//! any kind of route at it. Every instance counts connections and records the requests it saw, so
//! tests can prove that something reached a backend (mirrors) or never did (smuggling attempts).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Identity an echo instance reports, as the conformance pods do from their environment.
#[derive(Debug, Clone, Default)]
pub struct EchoIdentity {
    pub namespace: String,
    pub pod: String,
    pub service: String,
}

/// One request as the backend saw it.
#[derive(Debug, Clone, Serialize)]
pub struct EchoedRequest {
    pub path: String,
    pub host: String,
    pub method: String,
    pub proto: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub namespace: String,
    pub ingress: String,
    pub service: String,
    pub pod: String,
    /// Length of the request body the backend read.
    pub body_len: usize,
}

#[derive(Debug, Default)]
struct Behaviour {
    delay_ms: AtomicU64,
    fail_status: AtomicU16,
}

#[derive(Debug)]
struct Shared {
    identity: EchoIdentity,
    behaviour: Behaviour,
    connections: AtomicU64,
    requests: AtomicU64,
    // Only tests read the log; the lock is never contended on a hot path worth measuring.
    log: Mutex<Vec<EchoedRequest>>,
}

/// A running echo backend; it stops when dropped.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_loop: JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl EchoServer {
    /// Binds an ephemeral port on 127.0.0.1 and starts serving.
    pub async fn start(identity: EchoIdentity) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, identity).await
    }

    /// Binds `listen` and starts serving (the quickstart's demo backend uses a fixed port).
    pub async fn start_on(listen: SocketAddr, identity: EchoIdentity) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the echo backend to {listen}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            identity,
            behaviour: Behaviour::default(),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accept_shared.connections.fetch_add(1, Ordering::SeqCst);
                let conn_shared = Arc::clone(&accept_shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = Arc::clone(&conn_shared);
                        async move { Ok::<_, Infallible>(handle(shared, req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // Errors here are clients hanging up or sending garbage: nothing to report.
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            shared,
            accept_loop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn identity(&self) -> &EchoIdentity {
        &self.shared.identity
    }

    /// Every later response waits this long before being sent (timeout tests).
    pub fn set_delay(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared
            .behaviour
            .delay_ms
            .store(millis, Ordering::SeqCst);
    }

    /// Every later request is answered with this status instead of the echo (retry/ejection
    /// tests); `None` restores normal answers.
    pub fn set_failure(&self, status: Option<StatusCode>) {
        let code = status.map_or(0, |s| s.as_u16());
        self.shared
            .behaviour
            .fail_status
            .store(code, Ordering::SeqCst);
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far (including WebSocket upgrades and failed answers).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// A copy of every request seen so far.
    pub fn received(&self) -> Vec<EchoedRequest> {
        match self.shared.log.lock() {
            Ok(log) => log.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

type EchoBody = Full<Bytes>;

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<EchoBody> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if is_websocket_upgrade(req.headers()) {
        return upgrade_websocket(&shared, req);
    }
    let (parts, body) = req.into_parts();
    let body_len = match body.collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(_) => 0,
    };
    let echoed = describe(&shared.identity, &parts, body_len);
    match shared.log.lock() {
        Ok(mut log) => log.push(echoed.clone()),
        Err(poisoned) => poisoned.into_inner().push(echoed.clone()),
    }

    let delay = shared.behaviour.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail = shared.behaviour.fail_status.load(Ordering::SeqCst);
    if let Ok(status) = StatusCode::from_u16(fail) {
        return plain(status, "echo backend told to fail\n");
    }

    let json = serde_json::to_vec(&echoed).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(json)));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    apply_echo_set_header(&parts.headers, headers);
    response
}

/// `X-Echo-Set-Header: name:value,name2:value2` sets response headers, as echo-basic does.
fn apply_echo_set_header(request: &HeaderMap, response: &mut HeaderMap) {
    for value in request.get_all("x-echo-set-header") {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(',') {
            let Some((name, value)) = pair.split_once(':') else {
                continue;
            };
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) else {
                continue;
            };
            response.append(name, value);
        }
    }
}

fn describe(
    identity: &EchoIdentity,
    parts: &http::request::Parts,
    body_len: usize,
) -> EchoedRequest {
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    let proto = match parts.version {
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        if name == http::header::HOST {
            continue;
        }
        headers
            .entry(canonical_header_name(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    EchoedRequest {
        path,
        host,
        method: parts.method.to_string(),
        proto: proto.to_owned(),
        headers,
        namespace: identity.namespace.clone(),
        ingress: String::new(),
        service: identity.service.clone(),
        pod: identity.pod.clone(),
        body_len,
    }
}

/// Go's canonical MIME header form (`x-header-set` → `X-Header-Set`), which echo-basic reports.
pub fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if upper {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        upper = c == '-';
    }
    out
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn upgrade_websocket(shared: &Arc<Shared>, mut req: Request<Incoming>) -> Response<EchoBody> {
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
            if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, value);
    }
    if let Ok(value) = HeaderValue::from_str(&shared.identity.pod) {
        headers.insert("x-echo-pod", value);
    }
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<EchoBody> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
