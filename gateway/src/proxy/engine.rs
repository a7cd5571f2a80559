//! torhaus's own engine: the keep-alive loop of a listener port's HTTP/1.1 connections, and the
//! stream loop of its HTTP/2 ones ([`h2`]), serving plain proxied requests itself and handing
//! everything else to pingora's proxy.
//!
//! pingora's proxy layer costs about 80,000 instructions per keep-alive request here (a boxed
//! per-request state machine, two header maps per message, a task spawned per pooled upstream
//! connection), where nginx's whole request costs less. This engine reads the request head
//! itself, routes and filters it with the very code pingora's path uses ([`PortProxy`]), and
//! relays the upstream's response as sent, with its own per-thread pool of upstream
//! connections.
//!
//! # What it serves, and what it hands over
//! It serves an HTTP/1.1 request without a body (no `Content-Length`, no `Transfer-Encoding`),
//! without `Upgrade` or `Expect`, not CONNECT, with one Host, on a rule without identity policy,
//! mirrors or retry policy whose backends speak HTTP/1. Everything else goes to pingora's proxy,
//! which then keeps the connection (HTTP/1.0, request bodies, WebSocket, identity, mirrors,
//! retries, h2c backends, heads it cannot read, and requests for pingora to refuse with 400 or
//! 431). HTTP/2 connections (ALPN h2, the h2c preface) go to [`h2`], which hands pingora single
//! streams by the same rules. Answers the gateway gives itself (404, 421, redirects,
//! CORS preflights, weighted 500s, 503 without endpoints) are written here, with the same status
//! and headers as on pingora's path.
//!
//! # Behaviour it shares with pingora's path
//! - The strict checks of [`crate::strict`], the forwarding headers, the filters, the weighted
//!   backend choice, load balancing and passive ejection, metrics and the access log.
//! - Timeouts: `timeouts.request` from the request's arrival and `backendRequest` from the
//!   attempt's start, both to the end of the response; before the response head they give 504,
//!   later the body is cut and both connections are closed. Connecting is bounded by the time
//!   left, at most 10 s. With no timeout set nothing is cut.
//! - A pooled upstream connection that turns out closed before any response byte is replaced by
//!   a new one once, for idempotent methods (pingora's own rule).
//! - Idle client connections are closed after 60 s, and at shutdown.
//!
//! # Relaying
//! The response head is passed on as sent unless something must change in it (response filters,
//! hop-by-hop fields, an HTTP/1.0 upstream, or a connection to close), in which case it is
//! rebuilt with the field names' case kept. Bodies are relayed as sent: `Content-Length` bodies
//! by count, chunked bodies followed by [`ChunkedTracker`] so their end is known exactly, bodies
//! delimited by the upstream closing are passed on and the client connection closed after them.
//! An upstream connection goes back to the pool only after a complete, well-framed response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Version, header};
use parking_lot::Mutex;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use torhaus_model::{BackendTarget, Filter, Rule, UpstreamProtocol};

use super::wire::{
    self, ChunkedTracker, FieldSpan, RequestHead, ResponseHead, content_length, lists_token,
};
use super::{
    Answer, DEFAULT_CONNECT_TIMEOUT, FORWARDED, PortProxy, RequestCtx, SentHost,
    UPSTREAM_IDLE_TIMEOUT, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
    apply_response_filters, error_status, strip_identity_headers,
};
use crate::access_log::Protocol;
use crate::filters::ForwardedHeaders;
use crate::strict::{Rejection, check_h1_request};

mod h2;

/// Idle upstream connections kept per endpoint, per worker thread.
const MAX_IDLE_PER_ENDPOINT: usize = 128;
/// How much is read from an upstream at a time while relaying a body.
const RELAY_CHUNK: usize = 64 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Hop-by-hop fields (RFC 9110 §7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// The fields a response head must lose on its way on: the hop-by-hop ones, those its
/// `Connection` fields name (RFC 9110 §7.6.1), and a `Content-Length` beside chunked framing
/// (RFC 9112 §6.3: the chunked framing wins, and the length must not be passed on).
struct HopByHop<'a> {
    named: Vec<&'a [u8]>,
    stray_length: bool,
    /// HTTP/2 has no `Transfer-Encoding` (RFC 9113 §8.2.2).
    transfer_encoding: bool,
}

impl<'a> HopByHop<'a> {
    fn of(received: &'a [u8], fields: &[FieldSpan], framing: Framing) -> Self {
        let named = fields
            .iter()
            .filter(|f| received[f.name.clone()].eq_ignore_ascii_case(b"connection"))
            .flat_map(|f| received[f.value.clone()].split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|option| !option.is_empty())
            .collect();
        Self {
            named,
            stray_length: framing == Framing::Chunked,
            transfer_encoding: false,
        }
    }

    /// The same, for an HTTP/2 client: `Transfer-Encoding` dropped too.
    fn for_h2(mut self) -> Self {
        self.transfer_encoding = true;
        self
    }

    fn drops(&self, name: &[u8]) -> bool {
        is_hop_by_hop(name)
            || self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
            || self.stray_length && name.eq_ignore_ascii_case(b"content-length")
            || self.transfer_encoding && name.eq_ignore_ascii_case(b"transfer-encoding")
    }
}

/// One listener port's HTTP/1 engine, with pingora's proxy for what it does not serve.
pub struct Engine {
    port: PortProxy,
    pingora: Arc<HttpProxy<PortProxy>>,
    options: EngineOptions,
    pool: UpstreamPool,
}

/// How an [`Engine`] serves its port.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Whether cleartext connections may open with the HTTP/2 preface.
    pub h2c: bool,
    /// Whether the engine serves requests itself; without it pingora's proxy serves everything.
    pub own_engine: bool,
    /// How long a client connection may stay idle: between HTTP/1.1 requests, or with no
    /// HTTP/2 stream open.
    pub idle_timeout: Duration,
    /// The TLS handshake every connection goes through first, on an HTTPS port.
    pub tls: Option<Arc<crate::tls::TlsTermination>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("port", &self.port)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(port: PortProxy, pingora: HttpProxy<PortProxy>, options: EngineOptions) -> Self {
        Self {
            port,
            pingora: Arc::new(pingora),
            options,
            pool: UpstreamPool::default(),
        }
    }
}

/// What the client connection does after a request.
enum Next {
    KeepAlive,
    Close,
    /// pingora's proxy takes the connection over, starting with the request in the buffer; the
    /// reason is counted in `torhaus_engine_handovers_total`.
    HandOver(&'static str),
}

/// What the connection knows about its client.
struct Client {
    addr: Option<SocketAddr>,
    sni: Option<Box<str>>,
}

#[async_trait]
impl ServerApp for Engine {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.pingora.as_ref()).await;
    }
}

/// Runs `future` until `deadline`, if there is one; `None` when it expired.
async fn within<F: std::future::Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), future).await.ok(),
        None => Some(future.await),
    }
}

/// The plaintext stream with `read` put back in front of it, for pingora's HTTP/2 path.
fn rewound(stream: Stream, read: &[u8]) -> Option<Stream> {
    let mut tcp = stream
        .into_any()
        .downcast::<pingora::protocols::l4::stream::Stream>()
        .ok()?;
    tcp.rewind(read);
    Some(tcp)
}

impl Engine {
    async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let mut stream = match &self.options.tls {
            Some(tls) => match tls.accept(stream).await {
                Some(stream) => stream,
                None => return,
            },
            None => stream,
        };
        if !self.options.own_engine {
            ServerApp::process_new(&self.pingora, stream, shutdown).await;
            return;
        }
        let may_be_h2c = self.options.h2c && stream.get_ssl_digest().is_none();
        let client = Client {
            addr: stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied()),
            sni: stream.get_ssl_digest().and_then(|d| {
                d.extension
                    .get::<crate::tls::ClientSni>()
                    .and_then(|sni| sni.0.clone())
            }),
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            self.serve_h2(stream, client, shutdown).await;
            return;
        }
        let mut buf = BytesMut::with_capacity(4096);
        let mut fields = Vec::with_capacity(32);
        let mut idle_watch = shutdown.clone();
        // One timer per connection, re-armed only when it fires: arming one per read would cost
        // a timer-wheel insertion and removal on every request.
        let mut last_read = Instant::now();
        let idle_timeout = self.options.idle_timeout;
        let idle_timer = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle_timer);
        let mut first = true;
        loop {
            if *shutdown.borrow() && buf.is_empty() {
                return;
            }
            let head = loop {
                if first && may_be_h2c && !buf.is_empty() {
                    let seen = buf.len().min(H2_PREFACE.len());
                    if buf[..seen] == H2_PREFACE[..seen] {
                        if seen == H2_PREFACE.len() {
                            match rewound(stream, &buf) {
                                Some(stream) => self.serve_h2(stream, client, shutdown).await,
                                None => tracing::debug!("cannot rewind an h2c connection"),
                            }
                            return;
                        }
                    } else {
                        first = false;
                    }
                }
                if !(buf.is_empty() || first && may_be_h2c) {
                    match wire::read_request_head(&buf, &mut fields) {
                        Ok(Some(head)) => break Some(head),
                        Ok(None) => {}
                        // pingora's parser would re-escape some of these (a raw space in the
                        // target) and forward them: refused here, as RFC 9112 asks.
                        Err(wire::HeadError::Malformed) => {
                            tracing::debug!("malformed request head refused");
                            let _ = write_answer(&mut stream, &Answer::status(400), true).await;
                            let _ = stream.shutdown().await;
                            return;
                        }
                        Err(wire::HeadError::TooManyFields) => break None,
                    }
                    if buf.len() > self.port.shared.max_request_header_bytes {
                        break None;
                    }
                }
                let idle = buf.is_empty();
                tokio::select! {
                    read = stream.read_buf(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => last_read = Instant::now(),
                    },
                    () = &mut idle_timer => {
                        let quiet_until = last_read + idle_timeout;
                        if Instant::now() >= quiet_until {
                            return;
                        }
                        idle_timer.as_mut().reset(quiet_until.into());
                    }
                    _ = idle_watch.changed(), if idle => return,
                }
            };
            first = false;
            let next = match head {
                Some(head) => {
                    self.serve_request(&mut stream, &mut buf, &head, &fields, &client)
                        .await
                }
                None => Next::HandOver("unusual_head"),
            };
            match next {
                Next::KeepAlive => {}
                Next::Close => {
                    let _ = stream.shutdown().await;
                    return;
                }
                Next::HandOver(reason) => {
                    self.port
                        .shared
                        .observer
                        .metrics()
                        .engine_handover("http1", reason);
                    self.hand_over(stream, buf, shutdown).await;
                    return;
                }
            }
        }
    }

    /// pingora's proxy serves the connection from here on, starting with `read`.
    async fn hand_over(self: &Arc<Self>, stream: Stream, read: BytesMut, shutdown: &ShutdownWatch) {
        let mut session = ServerSession::new_http1(stream);
        if !read.is_empty() {
            session.set_pipelined_prefix(read);
        }
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(self.options.idle_timeout.as_secs().max(1))
        });
        let mut reused = self.pingora.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = reused.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            reused = self.pingora.process_new_http(session, shutdown).await;
        }
    }

    /// Serves the request whose head starts `buf`, or leaves `buf` as it was for pingora.
    async fn serve_request(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        head: &RequestHead,
        fields: &[FieldSpan],
        client: &Client,
    ) -> Next {
        // Checked before the head leaves the buffer: requests with bodies, the commonest
        // handover, then need no copy to be handed back.
        if let Err(reason) = RequestShape::of(&buf[..head.len], head, fields) {
            return Next::HandOver(reason);
        }
        let raw = buf.split_to(head.len).freeze();
        let hand_back = |buf: &mut BytesMut, reason| {
            let mut restored = BytesMut::with_capacity(raw.len() + buf.len());
            restored.extend_from_slice(&raw);
            restored.extend_from_slice(buf);
            *buf = restored;
            Next::HandOver(reason)
        };
        let shared = &self.port.shared;
        let (mut request, shape, rejection) =
            match admit(&raw, head, fields, shared.max_request_header_bytes) {
                Ok(admitted) => (admitted.request, admitted.shape, admitted.rejection),
                Err(reason) => return hand_back(buf, reason),
            };
        let mut ctx = RequestCtx {
            _active: Some(shared.in_flight.enter()),
            ..RequestCtx::default()
        };
        shared
            .observer
            .note_arrival(client.addr, &request, Protocol::Http1, &mut ctx.obs);
        let outcome = if let Some(rejection) = rejection {
            tracing::debug!(reason = rejection.reason(), "request rejected");
            write_answer(stream, &Answer::status(rejection.status()), true).await
        } else if let Err(status) = self.port.route(&request, client.sni.as_deref(), &mut ctx) {
            write_answer(stream, &Answer::status(status), shape.close).await
        } else {
            let Some(rule) = ctx.rule.clone() else {
                return hand_back(buf, "unusual_head");
            };
            if let Err(reason) = serves_rule(&rule, &ctx) {
                return hand_back(buf, reason);
            }
            let sent_host = SentHost::of(&request);
            strip_identity_headers(&mut request, &ctx);
            match self
                .port
                .prepare_upstream(&mut request, false, &mut ctx, sent_host)
            {
                Err(error) => {
                    write_answer(stream, &Answer::status(error_status(&error)), true).await
                }
                Ok(Err(answer)) => write_answer(stream, &answer, shape.close).await,
                Ok(Ok(())) => {
                    let sent = SentRequest { raw: &raw, fields };
                    self.forward(stream, &request, sent, &mut ctx, shape.close)
                        .await
                }
            }
        };
        shared.observer.note_end(
            outcome.status,
            (0, outcome.body_bytes),
            Vec::new,
            &ctx.finished(),
        );
        if outcome.close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Sends `head` to an endpoint of the chosen backend (a pooled connection, else a new one)
    /// and reads the response head; informational responses go to `interim` (HTTP/1 clients)
    /// or are dropped.
    async fn send_upstream(
        &self,
        method: &Method,
        head: &[u8],
        ctx: &mut RequestCtx,
        mut interim: Option<&mut Stream>,
    ) -> Result<Answered, NoAnswer> {
        let (Some(endpoints), Some(rule)) = (ctx.endpoints.clone(), ctx.rule.clone()) else {
            return Err(NoAnswer::Status(500));
        };
        let remaining = match ctx.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(NoAnswer::Status(504));
                }
                Some(left)
            }
            None => None,
        };
        let per_attempt = rule.timeouts.backend_request;
        let budget = match (remaining, per_attempt) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(claim) = endpoints.pick_excluding(None) else {
            return Err(NoAnswer::Status(503));
        };
        let addr = claim.endpoint().addr;
        let endpoint = Arc::clone(claim.endpoint());
        ctx.in_flight = Some(claim);
        ctx.obs.upstream_started();
        ctx.attempts += 1;
        ctx.attempt_deadline = per_attempt.map(|t| Instant::now() + t);
        let deadline = match (ctx.deadline, ctx.attempt_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let connect_timeout =
            budget.map_or(DEFAULT_CONNECT_TIMEOUT, |b| b.min(DEFAULT_CONNECT_TIMEOUT));
        let idempotent = method.is_idempotent();
        let mut pooled = self.pool.take(addr);
        let mut fields = Vec::with_capacity(32);
        loop {
            let reused = pooled.is_some();
            let mut upstream = match pooled.take() {
                Some(upstream) => upstream,
                None => match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await
                {
                    Ok(Ok(upstream)) => {
                        let _ = upstream.set_nodelay(true);
                        upstream
                    }
                    failed => {
                        if endpoint.record_failure(&self.port.shared.ejection) {
                            tracing::warn!(endpoint = %addr, "endpoint ejected after repeated connection failures");
                        }
                        let status = if failed.is_err() { 504 } else { 502 };
                        tracing::debug!(endpoint = %addr, status, "cannot connect to the upstream");
                        return Err(NoAnswer::Status(status));
                    }
                },
            };
            match exchange(
                &mut upstream,
                head,
                deadline,
                interim.as_deref_mut(),
                &mut fields,
            )
            .await
            {
                Ok((received, response)) => {
                    ctx.obs.upstream_answered();
                    endpoint.record_success();
                    let Some(framing) = Framing::of(method, &received, &response, &fields) else {
                        tracing::debug!(endpoint = %addr, "upstream response with unusable framing");
                        return Err(NoAnswer::Status(502));
                    };
                    let keeps = upstream_keeps(&received, &response, &fields, framing);
                    return Ok(Answered {
                        upstream,
                        addr,
                        received,
                        response,
                        fields,
                        deadline,
                        framing,
                        keeps,
                    });
                }
                Err(Exchange::NothingReceived) if reused && idempotent => {}
                Err(Exchange::TimedOut) => return Err(NoAnswer::Status(504)),
                Err(Exchange::ClientGone) => return Err(NoAnswer::ClientGone),
                Err(_) => {
                    tracing::debug!(endpoint = %addr, "upstream failed before its response head");
                    return Err(NoAnswer::Status(502));
                }
            }
        }
    }

    /// Sends the request to an endpoint of the chosen backend and relays the response.
    async fn forward(
        &self,
        downstream: &mut Stream,
        request: &RequestHeader,
        sent: SentRequest<'_>,
        ctx: &mut RequestCtx,
        client_close: bool,
    ) -> Outcome {
        let Some(rule) = ctx.rule.clone() else {
            return write_answer(downstream, &Answer::status(500), true).await;
        };
        let head = upstream_head(
            request,
            &SentFields::Raw(sent),
            &edited_names(&rule, ctx),
            ctx.forwarded.take(),
        );
        let answered = match self
            .send_upstream(&request.method, &head, ctx, Some(&mut *downstream))
            .await
        {
            Ok(answered) => answered,
            Err(NoAnswer::Status(status)) => {
                return write_answer(downstream, &Answer::status(status), client_close).await;
            }
            Err(NoAnswer::ClientGone) => return Outcome::closed(0),
        };
        let Answered {
            mut upstream,
            addr,
            mut received,
            response,
            fields,
            deadline,
            framing,
            keeps,
        } = answered;
        let close = client_close || framing == Framing::UntilClose;
        // The head to send, when it differs from the upstream's; `None` passes it on as sent.
        let edited = if rule_changes_responses(&rule, ctx) {
            match rebuilt_head(request, &received, &response, &fields, framing, ctx, close) {
                Ok(rebuilt) => Some(rebuilt),
                Err(error) => {
                    let status = error_status(&error);
                    return write_answer(downstream, &Answer::status(status), true).await;
                }
            }
        } else if close
            || response.minor_version != 1
            || fields.iter().any(|f| {
                let name = &received[f.name.clone()];
                // `Connection: keep-alive` alone is true of the client connection too (it stays
                // open), so the head can pass as sent; nginx says the same to its clients.
                is_hop_by_hop(name)
                    && !(name.eq_ignore_ascii_case(b"connection")
                        && received[f.value.clone()].eq_ignore_ascii_case(b"keep-alive"))
                    || framing == Framing::Chunked && name.eq_ignore_ascii_case(b"content-length")
            })
        {
            Some(edited_response_head(
                &received, &response, &fields, framing, close,
            ))
        } else {
            None
        };
        let mut relay = Relay::new(framing);
        let first_body_len = relay.take(&received[response.len..]).len();
        let status = response.status;
        if relay.extra_error() {
            return Outcome::closed(status);
        }
        // One write for the head and the body bytes that came with it.
        let with_edited_head;
        let first_write: &[u8] = match edited {
            Some(mut head) => {
                head.extend_from_slice(&received[response.len..response.len + first_body_len]);
                with_edited_head = head;
                &with_edited_head
            }
            None => &received[..response.len + first_body_len],
        };
        if downstream.write_all(first_write).await.is_err() {
            return Outcome::closed(status);
        }
        while !relay.complete {
            received.clear();
            received.reserve(RELAY_CHUNK);
            match within(deadline, upstream.read_buf(&mut received)).await {
                Some(Ok(0)) if relay.framing == Framing::UntilClose => relay.complete = true,
                Some(Ok(n)) if n > 0 => {
                    let part = relay.take(&received);
                    if relay.extra_error() || downstream.write_all(part).await.is_err() {
                        return Outcome::closed_after(status, relay.body_bytes);
                    }
                }
                // Cut: the upstream failed or the deadline passed after the head was sent.
                _ => {
                    let _ = downstream.flush().await;
                    return Outcome::closed_after(status, relay.body_bytes);
                }
            }
        }
        if downstream.flush().await.is_err() {
            return Outcome::closed_after(status, relay.body_bytes);
        }
        self.relayed(upstream, addr, keeps, &relay, status, close)
    }

    /// The outcome of a response relayed whole; its upstream connection goes back to the pool
    /// when it can serve another request.
    fn relayed(
        &self,
        upstream: TcpStream,
        addr: SocketAddr,
        keeps: bool,
        relay: &Relay,
        status: u16,
        close: bool,
    ) -> Outcome {
        if keeps && !relay.extra {
            self.pool.put(addr, upstream);
        }
        Outcome {
            status,
            body_bytes: relay.body_bytes,
            close,
        }
    }
}

/// What a request's serving left for metrics, the log and the connection.
#[derive(Debug, Default)]
struct Outcome {
    /// The status written to the client (0 for none).
    status: u16,
    body_bytes: u64,
    close: bool,
}

impl Outcome {
    fn closed(status: u16) -> Self {
        Self::closed_after(status, 0)
    }

    fn closed_after(status: u16, body_bytes: u64) -> Self {
        Self {
            status,
            body_bytes,
            close: true,
        }
    }
}

/// What the engine needs to know of a request head before serving it; `Err` names why pingora's
/// proxy must serve it instead.
struct RequestShape {
    /// The client asked to close the connection after this request.
    close: bool,
}

impl RequestShape {
    fn of(
        raw: &[u8],
        head: &RequestHead,
        fields: &[FieldSpan],
    ) -> Result<RequestShape, &'static str> {
        if head.minor_version != 1 {
            return Err("http1.0");
        }
        if &raw[head.method.clone()] == b"CONNECT" {
            return Err("connect");
        }
        // httparse takes a bare LF as a line end, where pingora's reader does not see the end
        // of the head (the fuzzers found it): such heads keep pingora's behaviour.
        let bare_lf =
            memchr::memchr_iter(b'\n', &raw[..head.len]).any(|i| i == 0 || raw[i - 1] != b'\r');
        if bare_lf {
            return Err("unusual_head");
        }
        let mut hosts = 0;
        let mut empty_lengths = 0;
        let mut shape = RequestShape { close: false };
        for field in fields {
            let name = &raw[field.name.clone()];
            let value = &raw[field.value.clone()];
            // By length first: most fields are none of these, and their length says so.
            let is = |known: &str| {
                name.len() == known.len() && name.eq_ignore_ascii_case(known.as_bytes())
            };
            if !matches!(name.len(), 4 | 6 | 7 | 10 | 14 | 17) {
                continue;
            }
            if is("host") {
                hosts += 1;
            } else if is("content-length") {
                // `Content-Length: 0` (a POST without data) frames no body: the request ends
                // with its head. Anything else, or the field twice, is pingora's (or the strict
                // checks' 400).
                if value.is_empty() || value.iter().any(|&b| b != b'0') {
                    return Err("body");
                }
                empty_lengths += 1;
            } else if is("transfer-encoding") {
                return Err("body");
            } else if is("upgrade") {
                return Err("upgrade");
            } else if is("expect") {
                return Err("expect");
            } else if is("connection") {
                // Any other option names fields to drop, or asks for an upgrade: pingora's.
                let known = value.split(|&b| b == b',').all(|option| {
                    let option = option.trim_ascii();
                    option.is_empty()
                        || option.eq_ignore_ascii_case(b"close")
                        || option.eq_ignore_ascii_case(b"keep-alive")
                });
                if !known {
                    return Err("unusual_head");
                }
                shape.close |= lists_token(value, "close");
            }
        }
        if empty_lengths > 1 {
            return Err("body");
        }
        if hosts == 1 {
            Ok(shape)
        } else {
            Err("unusual_head")
        }
    }
}

/// A request head the engine serves (or refuses itself): the request as pingora's types hold
/// it, its shape, and the strict checks' verdict.
pub(crate) struct Admitted {
    pub request: RequestHeader,
    shape: RequestShape,
    /// Why the strict checks refuse it (400 or 431), if they do.
    pub rejection: Option<Rejection>,
}

/// Whether the engine serves the request whose head is `raw`; `Err` names why pingora's proxy
/// must. The one decision the engine and the fuzzers (`crate::fuzzing`) share.
pub(crate) fn admit(
    raw: &Bytes,
    head: &RequestHead,
    fields: &[FieldSpan],
    max_header_bytes: usize,
) -> Result<Admitted, &'static str> {
    let shape = RequestShape::of(raw, head, fields)?;
    let request = request_header(raw, head, fields).map_err(|_| "unusual_head")?;
    // pingora's own reader refuses these (userinfo in Host, a Host that differs from an
    // absolute-form target's authority): the engine reads as strictly (the fuzzers found it).
    let rejection = check_h1_request(&request, raw, max_header_bytes)
        .err()
        .or_else(|| {
            pingora::protocols::http::authority::validate_request_authority(&request)
                .err()
                .map(|_| Rejection::BadRequest("ambiguous authority"))
        });
    Ok(Admitted {
        request,
        shape,
        rejection,
    })
}

/// The request as pingora's types hold it (for routing and filters), its values shared with
/// `raw`.
fn request_header(
    raw: &Bytes,
    head: &RequestHead,
    fields: &[FieldSpan],
) -> pingora::Result<RequestHeader> {
    let method = Method::from_bytes(&raw[head.method.clone()]).map_err(|_| {
        pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "invalid method")
    })?;
    // Without a case map: the head sent upstream is written from `raw`, whose names keep
    // their case (see `upstream_head`).
    let mut request =
        RequestHeader::build_no_case(method, &raw[head.target.clone()], Some(fields.len()))?;
    request.set_version(Version::HTTP_11);
    for field in fields {
        let value =
            HeaderValue::from_maybe_shared(raw.slice(field.value.clone())).map_err(|_| {
                pingora::Error::explain(
                    pingora::ErrorType::InvalidHTTPHeader,
                    "invalid header value",
                )
            })?;
        request.append_header(raw.slice(field.name.clone()), value)?;
    }
    Ok(request)
}

/// The request head as the client sent it.
struct SentRequest<'a> {
    raw: &'a Bytes,
    fields: &'a [FieldSpan],
}

/// Where the fields of the upstream request come from.
enum SentFields<'a> {
    /// HTTP/1: the client's head as sent (names' case kept), but for the edited fields.
    Raw(SentRequest<'a>),
    /// HTTP/2: the request as filtered. Its field names are lowercase on the wire anyway; the
    /// authority becomes `Host`, and split `cookie` fields are joined (RFC 9113 §8.2.3).
    Filtered,
}

/// Names of request fields that filters or the identity layer may have changed: their values
/// are written from the request as filtered, the others as sent.
fn edited_names(rule: &Rule, ctx: &RequestCtx) -> Vec<http::HeaderName> {
    let mut names = Vec::new();
    for filter in ctx.filters_in_force(rule) {
        match filter {
            Filter::RequestHeaders(modifier) => {
                names.extend(modifier.set.iter().map(|(name, _)| name.clone()));
                names.extend(modifier.add.iter().map(|(name, _)| name.clone()));
                names.extend(modifier.remove.iter().cloned());
            }
            Filter::Rewrite(rewrite) if rewrite.hostname.is_some() => names.push(header::HOST),
            _ => {}
        }
    }
    if let Some(snapshot) = &ctx.snapshot {
        names.extend(snapshot.auth.strip_everywhere().iter().cloned());
    }
    names
}

/// Whether a field is written by the engine itself: the forwarding headers.
fn is_forwarding(name: &[u8]) -> bool {
    [
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        FORWARDED,
    ]
    .iter()
    .any(|known| name.eq_ignore_ascii_case(known.as_bytes()))
}

/// The head sent upstream: the request line as filtered; for HTTP/1 the client's fields as sent
/// (their names' case kept) except hop-by-hop ones, forwarding ones and `edited` ones, then the
/// edited fields as filtered; for HTTP/2 the filtered fields; then the forwarding headers.
fn upstream_head(
    request: &RequestHeader,
    sent: &SentFields<'_>,
    edited: &[http::HeaderName],
    forwarded: Option<ForwardedHeaders>,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(match sent {
        SentFields::Raw(sent) => sent.raw.len() + 256,
        SentFields::Filtered => 512,
    });
    head.extend_from_slice(request.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(request.raw_path());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let put = |head: &mut Vec<u8>, name: &[u8], value: &[u8]| {
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    match sent {
        SentFields::Raw(sent) => {
            let raw = sent.raw;
            for field in sent.fields {
                let name = &raw[field.name.clone()];
                if is_hop_by_hop(name)
                    || is_forwarding(name)
                    || edited
                        .iter()
                        .any(|e| name.eq_ignore_ascii_case(e.as_str().as_bytes()))
                {
                    continue;
                }
                put(&mut head, name, &raw[field.value.clone()]);
            }
            for (i, name) in edited.iter().enumerate() {
                if edited[..i].contains(name) || is_hop_by_hop(name.as_str().as_bytes()) {
                    continue;
                }
                for value in request.headers.get_all(name) {
                    put(&mut head, name.as_str().as_bytes(), value.as_bytes());
                }
            }
        }
        SentFields::Filtered => {
            // A filter's Host (URLRewrite, a header modifier) wins over the authority.
            let host = match request.headers.get(header::HOST) {
                Some(host) => host.as_bytes(),
                None => request
                    .uri
                    .authority()
                    .map_or(&b""[..], |a| a.as_str().as_bytes()),
            };
            put(&mut head, b"host", host);
            let mut cookies = request.headers.get_all(header::COOKIE).iter();
            if let Some(first) = cookies.next() {
                head.extend_from_slice(b"cookie: ");
                head.extend_from_slice(first.as_bytes());
                for more in cookies {
                    head.extend_from_slice(b"; ");
                    head.extend_from_slice(more.as_bytes());
                }
                head.extend_from_slice(b"\r\n");
            }
            for (name, value) in &request.headers {
                let bytes = name.as_str().as_bytes();
                if *name == header::HOST
                    || *name == header::COOKIE
                    || is_hop_by_hop(bytes)
                    || is_forwarding(bytes)
                {
                    continue;
                }
                put(&mut head, bytes, value.as_bytes());
            }
        }
    }
    if let Some(forwarded) = forwarded {
        for (name, value) in [
            (X_FORWARDED_FOR, &forwarded.x_forwarded_for),
            (X_FORWARDED_PROTO, &forwarded.x_forwarded_proto),
            (X_FORWARDED_HOST, &forwarded.x_forwarded_host),
            (FORWARDED, &forwarded.forwarded),
        ] {
            put(&mut head, name.as_bytes(), value.as_bytes());
        }
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The upstream's response head with its hop-by-hop fields dropped, as HTTP/1.1, and with
/// `Connection: close` when the client connection ends after it; everything else as sent.
fn edited_response_head(
    received: &[u8],
    response: &ResponseHead,
    fields: &[FieldSpan],
    framing: Framing,
    close: bool,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(response.len + 32);
    head.extend_from_slice(b"HTTP/1.1 ");
    // httparse reads exactly three digits.
    let status = response.status;
    head.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    head.push(b' ');
    head.extend_from_slice(&received[response.reason.clone()]);
    head.extend_from_slice(b"\r\n");
    let hop_by_hop = HopByHop::of(received, fields, framing);
    for field in fields {
        let name = &received[field.name.clone()];
        if hop_by_hop.drops(name) {
            continue;
        }
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(&received[field.value.clone()]);
        head.extend_from_slice(b"\r\n");
    }
    if close {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Whether the engine serves requests of this rule; `Err` names why pingora's proxy does.
fn serves_rule(rule: &Rule, ctx: &RequestCtx) -> Result<(), &'static str> {
    let mirrors = |filters: &[Filter]| filters.iter().any(|f| matches!(f, Filter::Mirror(_)));
    if ctx.auth.is_some() {
        return Err("identity");
    }
    if rule.retry.is_some() {
        return Err("retry");
    }
    if mirrors(&rule.filters) || rule.backends.iter().any(|b| mirrors(&b.filters)) {
        return Err("mirror");
    }
    let h2c = rule.backends.iter().any(|backend| {
        matches!(&backend.target, BackendTarget::Service(service)
            if service.protocol == UpstreamProtocol::H2c)
    });
    if h2c {
        return Err("h2c_backend");
    }
    Ok(())
}

/// Whether the rule or its chosen backend changes response heads.
fn rule_changes_responses(rule: &Rule, ctx: &RequestCtx) -> bool {
    !ctx.auth_response_headers.is_empty()
        || ctx
            .filters_in_force(rule)
            .any(|f| matches!(f, Filter::ResponseHeaders(_) | Filter::Cors(_)))
}

/// Appends the upstream's response fields to `head`, but those `dropped` names; the names keep
/// their case where `head` has a case map.
fn append_kept_fields(
    head: &mut ResponseHeader,
    received: &[u8],
    fields: &[FieldSpan],
    dropped: HopByHop<'_>,
) -> pingora::Result<()> {
    for field in fields {
        let name = &received[field.name.clone()];
        if dropped.drops(name) {
            continue;
        }
        let value = HeaderValue::from_bytes(&received[field.value.clone()]).map_err(|_| {
            pingora::Error::explain(
                pingora::ErrorType::InvalidHTTPHeader,
                "invalid header value",
            )
        })?;
        head.append_header(Bytes::copy_from_slice(name), value)?;
    }
    Ok(())
}

/// The response head rebuilt: hop-by-hop fields dropped, the rule's response filters applied,
/// `Connection: close` when the client connection ends after it.
fn rebuilt_head(
    request: &RequestHeader,
    received: &BytesMut,
    response: &ResponseHead,
    fields: &[FieldSpan],
    framing: Framing,
    ctx: &RequestCtx,
    close: bool,
) -> pingora::Result<Vec<u8>> {
    let mut rebuilt = ResponseHeader::build(response.status, Some(fields.len() + 1))?;
    if let Ok(reason) = std::str::from_utf8(&received[response.reason.clone()])
        && !reason.is_empty()
    {
        rebuilt.set_reason_phrase(Some(reason))?;
    }
    append_kept_fields(
        &mut rebuilt,
        received,
        fields,
        HopByHop::of(received, fields, framing),
    )?;
    apply_response_filters(request, &mut rebuilt, ctx)?;
    if close {
        rebuilt.insert_header(header::CONNECTION, HeaderValue::from_static("close"))?;
    }
    Ok(response_head_bytes(&rebuilt))
}

/// A response head in HTTP/1.1 wire form.
fn response_head_bytes(response: &ResponseHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(response.status.as_str().as_bytes());
    out.push(b' ');
    let reason = response
        .get_reason_phrase()
        .or_else(|| response.status.canonical_reason())
        .unwrap_or_default();
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    response.header_to_h1_wire(&mut out);
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes an answer of the gateway's own (no body).
async fn write_answer(stream: &mut Stream, answer: &Answer, close: bool) -> Outcome {
    let built = ResponseHeader::build(answer.status, Some(answer.headers.len() + 2)).and_then(
        |mut response| {
            response.insert_header(header::CONTENT_LENGTH, HeaderValue::from_static("0"))?;
            for (name, value) in &answer.headers {
                response.append_header(name.clone(), value.clone())?;
            }
            if close {
                response.insert_header(header::CONNECTION, HeaderValue::from_static("close"))?;
            }
            Ok(response)
        },
    );
    let Ok(response) = built else {
        return Outcome::closed(0);
    };
    let written = stream
        .write_all(&response_head_bytes(&response))
        .await
        .is_ok()
        && stream.flush().await.is_ok();
    Outcome {
        status: answer.status,
        body_bytes: 0,
        close: close || !written,
    }
}

/// A final response head from an endpoint, with the connection it came on.
struct Answered {
    upstream: TcpStream,
    addr: SocketAddr,
    /// The head and whatever of the body came with it.
    received: BytesMut,
    response: ResponseHead,
    fields: Vec<FieldSpan>,
    /// When the response must be complete (the route's timeouts).
    deadline: Option<Instant>,
    framing: Framing,
    /// Whether the connection can serve another request once this response is complete.
    keeps: bool,
}

/// Why no final response head came from the upstream.
enum NoAnswer {
    /// The gateway answers with this status.
    Status(u16),
    /// The client went away meanwhile.
    ClientGone,
}

/// How an exchange with the upstream failed before a final response head.
enum Exchange {
    /// The connection ended before any byte of a response (a closed pooled connection).
    NothingReceived,
    TimedOut,
    /// The client went away while an informational response was passed on.
    ClientGone,
    Failed,
}

/// Writes the request head and reads the response head; informational responses (1xx but 101)
/// are passed on to an HTTP/1 client as they come, and dropped for others.
async fn exchange(
    upstream: &mut TcpStream,
    head: &[u8],
    deadline: Option<Instant>,
    mut interim: Option<&mut Stream>,
    fields: &mut Vec<FieldSpan>,
) -> Result<(BytesMut, ResponseHead), Exchange> {
    match within(deadline, upstream.write_all(head)).await {
        None => return Err(Exchange::TimedOut),
        Some(Err(_)) => return Err(Exchange::NothingReceived),
        Some(Ok(())) => {}
    }
    let mut received = BytesMut::with_capacity(4096);
    let mut any = false;
    loop {
        match wire::read_response_head(&received, fields) {
            Ok(Some(response))
                if (100..200).contains(&response.status) && response.status != 101 =>
            {
                let informational = received.split_to(response.len);
                if let Some(client) = interim.as_deref_mut()
                    && client.write_all(&informational).await.is_err()
                {
                    return Err(Exchange::ClientGone);
                }
                continue;
            }
            Ok(Some(response)) => return Ok((received, response)),
            Ok(None) => {}
            Err(_) => return Err(Exchange::Failed),
        }
        if received.len() > wire::MAX_RESPONSE_HEAD {
            return Err(Exchange::Failed);
        }
        match within(deadline, upstream.read_buf(&mut received)).await {
            None => return Err(Exchange::TimedOut),
            Some(Ok(0)) | Some(Err(_)) if !any => return Err(Exchange::NothingReceived),
            Some(Ok(0)) | Some(Err(_)) => return Err(Exchange::Failed),
            Some(Ok(_)) => any = true,
        }
    }
}

/// Whether the upstream connection can serve another request once this response is complete.
fn upstream_keeps(
    received: &[u8],
    response: &ResponseHead,
    fields: &[FieldSpan],
    framing: Framing,
) -> bool {
    response.minor_version == 1
        && framing != Framing::UntilClose
        && !fields.iter().any(|f| {
            received[f.name.clone()].eq_ignore_ascii_case(b"connection")
                && lists_token(&received[f.value.clone()], "close")
        })
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl Framing {
    /// The framing of a response (RFC 9112 §6.3); `None` when it is unusable: a coding other
    /// than chunked last, or conflicting lengths.
    fn of(
        method: &Method,
        received: &[u8],
        response: &ResponseHead,
        fields: &[FieldSpan],
    ) -> Option<Framing> {
        if *method == Method::HEAD || matches!(response.status, 204 | 304) {
            return Some(Framing::None);
        }
        let mut length = None;
        let mut chunked = None;
        for field in fields {
            let name = &received[field.name.clone()];
            let value = &received[field.value.clone()];
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                let value = content_length(value)?;
                if length.is_some_and(|seen| seen != value) {
                    return None;
                }
                length = Some(value);
            }
        }
        match (chunked, length) {
            (Some(true), _) => Some(Framing::Chunked),
            (Some(false), _) => None,
            (None, Some(length)) => Some(Framing::Length(length)),
            (None, None) => Some(Framing::UntilClose),
        }
    }
}

/// A response body on its way to the client.
struct Relay {
    framing: Framing,
    chunked: ChunkedTracker,
    body_bytes: u64,
    complete: bool,
    /// The upstream sent more than its framing allows, or broke its framing.
    extra: bool,
}

impl Relay {
    fn new(framing: Framing) -> Self {
        Self {
            framing,
            chunked: ChunkedTracker::default(),
            body_bytes: 0,
            complete: framing == Framing::None || framing == Framing::Length(0),
            extra: false,
        }
    }

    /// The part of `input` that belongs to the body.
    fn take<'a>(&mut self, input: &'a [u8]) -> &'a [u8] {
        if self.complete {
            self.extra |= !input.is_empty();
            return &[];
        }
        match self.framing {
            Framing::None => &[],
            Framing::Length(total) => {
                let left = total - self.body_bytes;
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                self.body_bytes += take as u64;
                self.complete = self.body_bytes == total;
                self.extra |= take < input.len();
                &input[..take]
            }
            Framing::Chunked => match self.chunked.advance(input) {
                Ok(used) => {
                    self.body_bytes = self.chunked.payload_bytes();
                    self.complete = self.chunked.is_done();
                    self.extra |= used < input.len();
                    &input[..used]
                }
                Err(error) => {
                    tracing::debug!(%error, "upstream broke its chunked framing");
                    self.extra = true;
                    self.complete = false;
                    &[]
                }
            },
            Framing::UntilClose => {
                self.body_bytes += input.len() as u64;
                input
            }
        }
    }

    /// The body data in `input`, its framing removed, appended to `data` (for HTTP/2 clients,
    /// which get the data in frames of their own).
    fn take_data(&mut self, input: &[u8], data: &mut BytesMut) {
        if self.framing != Framing::Chunked || self.complete {
            let part = self.take(input);
            data.extend_from_slice(part);
            return;
        }
        match self.chunked.decode(input, data) {
            Ok(used) => {
                self.body_bytes = self.chunked.payload_bytes();
                self.complete = self.chunked.is_done();
                self.extra |= used < input.len();
            }
            Err(error) => {
                tracing::debug!(%error, "upstream broke its chunked framing");
                self.extra = true;
                self.complete = false;
            }
        }
    }

    /// Whether the upstream broke its framing before the body was complete (the client
    /// connection must then be cut).
    fn extra_error(&self) -> bool {
        self.extra && !self.complete
    }
}

/// Idle upstream connections of one worker, by endpoint: the most recently used first, none
/// older than the idle timeout. Endpoints are kept in a list, as a worker talks to few of them
/// and hashing costs more than scanning; every [`POOL_SWEEP_EVERY`] returns, connections past
/// the idle timeout are closed (those of endpoints no longer used included) and endpoints
/// without idle connections forgotten.
#[derive(Debug, Default)]
struct UpstreamPool {
    inner: Mutex<PoolInner>,
}

#[derive(Debug, Default)]
struct PoolInner {
    endpoints: Vec<IdleConnections>,
    returns: usize,
}

#[derive(Debug)]
struct IdleConnections {
    addr: SocketAddr,
    /// Oldest first, with when each became idle.
    idle: Vec<(TcpStream, Instant)>,
}

/// How many connection returns pass between two sweeps of the pool.
const POOL_SWEEP_EVERY: usize = 1024;

impl UpstreamPool {
    fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut inner = self.inner.lock();
        let endpoint = inner.endpoints.iter_mut().find(|e| e.addr == addr)?;
        while let Some((stream, since)) = endpoint.idle.pop() {
            if since.elapsed() < UPSTREAM_IDLE_TIMEOUT {
                return Some(stream);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, stream: TcpStream) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.returns += 1;
        if inner.returns.is_multiple_of(POOL_SWEEP_EVERY) {
            for endpoint in &mut inner.endpoints {
                endpoint.idle.retain(|(_, since)| {
                    now.saturating_duration_since(*since) < UPSTREAM_IDLE_TIMEOUT
                });
            }
            inner.endpoints.retain(|e| !e.idle.is_empty());
        }
        let index = match inner.endpoints.iter().position(|e| e.addr == addr) {
            Some(index) => index,
            None => {
                inner.endpoints.push(IdleConnections {
                    addr,
                    idle: Vec::new(),
                });
                inner.endpoints.len() - 1
            }
        };
        let idle = &mut inner.endpoints[index].idle;
        if idle.len() >= MAX_IDLE_PER_ENDPOINT {
            idle.remove(0);
        }
        idle.push((stream, now));
    }
}
