//! The engine's HTTP/2 side: the request loop of an HTTP/2 client connection on pingora-core's
//! h2 server, each stream served like the HTTP/1 engine's requests and relayed to an HTTP/1.1
//! upstream from the engine's pool. A stream the engine does not serve (a request body,
//! CONNECT, identity, mirrors, retries, h2c backends) goes to pingora's proxy, stream by stream;
//! the connection stays here.
//!
//! pingora's proxy spends most of an HTTP/2 request in its per-request state machine and its
//! upstream connector, as it does for HTTP/1 (see the parent module); the h2 framing itself is
//! the `h2` crate's either way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, header};
use pingora::apps::HttpServerApp;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::{self as h2_server, H2Accept, HttpSession};
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use super::wire::{FieldSpan, ResponseHead};
use super::{
    Answered, Client, Engine, Framing, HopByHop, NoAnswer, Outcome, RELAY_CHUNK, Relay, SentFields,
    append_kept_fields, serves_rule, upstream_head, within,
};
use crate::access_log::Protocol;
use crate::proxy::{
    Answer, RequestCtx, SentHost, apply_response_filters, error_status, strip_identity_headers,
};
use crate::strict::check_h2_request;

/// Malformed streams one connection may open before it is closed (pingora's own budget).
const MAX_MALFORMED_STREAMS: usize = 32;

/// The streams of one connection being served, and when the last one ended: the connection is
/// idle while none is open.
#[derive(Debug, Default)]
struct OpenStreams {
    count: AtomicUsize,
    /// When the last stream ended, in milliseconds since the connection began.
    last_end_ms: AtomicU64,
}

/// One stream being served; counted in [`OpenStreams`] until dropped.
struct StreamGuard {
    streams: Arc<OpenStreams>,
    began: Instant,
}

impl StreamGuard {
    fn new(streams: &Arc<OpenStreams>, began: Instant) -> Self {
        streams.count.fetch_add(1, Ordering::Relaxed);
        Self {
            streams: Arc::clone(streams),
            began,
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let now = u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.streams.last_end_ms.store(now, Ordering::Relaxed);
        self.streams.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Engine {
    /// Serves an HTTP/2 connection (ALPN h2, or the h2c preface) until it closes.
    pub(super) async fn serve_h2(
        self: &Arc<Self>,
        stream: Stream,
        client: Client,
        shutdown: &ShutdownWatch,
    ) {
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let mut connection = match h2_server::handshake(stream, self.pingora.h2_options()).await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::debug!(%error, "HTTP/2 handshake failed");
                return;
            }
        };
        let client = Arc::new(client);
        let mut shutdown_signal = shutdown.clone();
        let mut closing = false;
        let mut malformed = 0;
        // One timer per connection, re-armed only when it fires (as on HTTP/1.1).
        let began = Instant::now();
        let streams = Arc::new(OpenStreams::default());
        let idle_timeout = self.options.idle_timeout;
        let mut last_accept = began;
        let idle_timer = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle_timer);
        loop {
            // Once closing, the connection is still driven: streams the client opened before
            // the GOAWAY are served, and the final GOAWAY is flushed.
            let accepted = if closing {
                HttpSession::from_h2_conn(&mut connection, Arc::clone(&digest)).await
            } else {
                tokio::select! {
                    biased;
                    _ = shutdown_signal.changed() => {
                        connection.graceful_shutdown();
                        closing = true;
                        continue;
                    }
                    accepted = HttpSession::from_h2_conn(&mut connection, Arc::clone(&digest)) => {
                        accepted
                    }
                    () = &mut idle_timer => {
                        match quiet_until(&streams, began, last_accept, idle_timeout) {
                            Some(until) if Instant::now() < until => {
                                idle_timer.as_mut().reset(until.into());
                            }
                            Some(_) => {
                                tracing::debug!("idle HTTP/2 connection closed");
                                return;
                            }
                            None => idle_timer.as_mut().reset((Instant::now() + idle_timeout).into()),
                        }
                        continue;
                    }
                }
            };
            match accepted {
                Ok(Some(H2Accept::Session(session))) => {
                    last_accept = Instant::now();
                    let guard = StreamGuard::new(&streams, began);
                    let engine = Arc::clone(self);
                    let client = Arc::clone(&client);
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        engine.serve_h2_stream(session, &client, &shutdown).await;
                        drop(guard);
                    });
                }
                // pingora answered or reset the stream (a forbidden byte in :path, conflicting
                // lengths, an ambiguous authority); its siblings go on, up to a budget.
                Ok(Some(H2Accept::Rejected)) => {
                    malformed += 1;
                    if malformed >= MAX_MALFORMED_STREAMS {
                        tracing::debug!(
                            "HTTP/2 connection closed after {malformed} malformed streams"
                        );
                        return;
                    }
                }
                Ok(None) => return,
                // Clients often just close the TCP connection.
                Err(error) => {
                    tracing::debug!(%error, "HTTP/2 connection ended");
                    return;
                }
            }
        }
    }

    /// Serves one stream, or hands it to pingora's proxy.
    async fn serve_h2_stream(
        self: Arc<Self>,
        mut session: HttpSession,
        client: &Client,
        shutdown: &ShutdownWatch,
    ) {
        if let Err(reason) = stream_shape(&session) {
            self.hand_over_h2(session, reason, shutdown).await;
            return;
        }
        let shared = &self.port.shared;
        let mut ctx = RequestCtx {
            _active: Some(shared.in_flight.enter()),
            ..RequestCtx::default()
        };
        shared.observer.note_arrival(
            client.addr,
            session.req_header(),
            Protocol::Http2,
            &mut ctx.obs,
        );
        let outcome = if let Err(rejection) = check_h2_request(
            &session.req_header().headers,
            shared.max_request_header_bytes,
        ) {
            tracing::debug!(reason = rejection.reason(), "request rejected");
            answer(&mut session, &Answer::status(rejection.status()))
        } else if let Err(status) =
            self.port
                .route(session.req_header(), client.sni.as_deref(), &mut ctx)
        {
            answer(&mut session, &Answer::status(status))
        } else {
            let Some(rule) = ctx.rule.clone() else {
                drop(ctx);
                self.hand_over_h2(session, "unusual_head", shutdown).await;
                return;
            };
            if let Err(reason) = serves_rule(&rule, &ctx) {
                drop(ctx);
                self.hand_over_h2(session, reason, shutdown).await;
                return;
            }
            let sent_host = SentHost::of(session.req_header());
            strip_identity_headers(session.req_header_mut(), &ctx);
            match self
                .port
                .prepare_upstream(session.req_header_mut(), false, &mut ctx, sent_host)
            {
                Err(error) => answer(&mut session, &Answer::status(error_status(&error))),
                Ok(Err(own)) => answer(&mut session, &own),
                Ok(Ok(())) => self.forward_h2(&mut session, &mut ctx).await,
            }
        };
        shared.observer.note_end(
            outcome.status,
            (0, outcome.body_bytes),
            Vec::new,
            &ctx.finished(),
        );
    }

    /// pingora's proxy serves the stream.
    async fn hand_over_h2(
        &self,
        session: HttpSession,
        reason: &'static str,
        shutdown: &ShutdownWatch,
    ) {
        self.port
            .shared
            .observer
            .metrics()
            .engine_handover("http2", reason);
        self.pingora
            .process_new_http(ServerSession::new_http2(session), shutdown)
            .await;
    }

    /// Sends the request to an endpoint of the chosen backend and relays the response into the
    /// stream: the head as HTTP/2 fields, the body as data frames.
    async fn forward_h2(&self, session: &mut HttpSession, ctx: &mut RequestCtx) -> Outcome {
        let head = upstream_head(
            session.req_header(),
            &SentFields::Filtered,
            &[],
            ctx.forwarded.take(),
        );
        let method = session.req_header().method.clone();
        // A client that resets the stream while the upstream thinks (a long poll) ends the
        // exchange: the upstream connection is closed rather than kept busy for nobody.
        let sent = tokio::select! {
            sent = self.send_upstream(&method, &head, ctx, None) => sent,
            _ = session.idle() => Err(NoAnswer::ClientGone),
        };
        let mut answered: Answered = match sent {
            Ok(answered) => answered,
            Err(NoAnswer::Status(status)) => return answer(session, &Answer::status(status)),
            Err(NoAnswer::ClientGone) => return Outcome::closed(0),
        };
        let framing = answered.framing;
        let response = &answered.response;
        let received = &mut answered.received;
        let head =
            response_head(received, response, &answered.fields, framing).and_then(|mut head| {
                apply_response_filters(session.req_header(), &mut head, ctx)?;
                Ok(head)
            });
        let head = match head {
            Ok(head) => head,
            Err(error) => return answer(session, &Answer::status(error_status(&error))),
        };
        let status = response.status;
        let mut relay = Relay::new(framing);
        let mut data = BytesMut::new();
        relay.take_data(&received[response.len..], &mut data);
        if relay.extra_error() {
            return answer(session, &Answer::status(502));
        }
        let ended = relay.complete && data.is_empty();
        if session
            .write_response_header(Box::new(head), ended)
            .is_err()
        {
            return Outcome::closed(status);
        }
        if !ended
            && (!data.is_empty() || relay.complete)
            && session
                .write_body(data.split().freeze(), relay.complete)
                .await
                .is_err()
        {
            return Outcome::closed_after(status, relay.body_bytes);
        }
        while !relay.complete {
            received.clear();
            received.reserve(RELAY_CHUNK);
            match within(answered.deadline, answered.upstream.read_buf(received)).await {
                Some(Ok(0)) if relay.framing == Framing::UntilClose => {
                    relay.complete = true;
                    if session.write_body(Bytes::new(), true).await.is_err() {
                        return Outcome::closed_after(status, relay.body_bytes);
                    }
                }
                Some(Ok(n)) if n > 0 => {
                    relay.take_data(received, &mut data);
                    if relay.extra_error() {
                        session.shutdown();
                        return Outcome::closed_after(status, relay.body_bytes);
                    }
                    let wrote = if data.is_empty() && !relay.complete {
                        true
                    } else {
                        session
                            .write_body(data.split().freeze(), relay.complete)
                            .await
                            .is_ok()
                    };
                    if !wrote {
                        return Outcome::closed_after(status, relay.body_bytes);
                    }
                }
                // Cut: the upstream failed or the deadline passed after the head was sent; the
                // stream is reset, its siblings go on.
                _ => {
                    session.shutdown();
                    return Outcome::closed_after(status, relay.body_bytes);
                }
            }
        }
        self.relayed(
            answered.upstream,
            answered.addr,
            answered.keeps,
            &relay,
            status,
            false,
        )
    }
}

/// When the connection has been idle long enough to close, if no stream is open; `None` while
/// one is.
fn quiet_until(
    streams: &OpenStreams,
    began: Instant,
    last_accept: Instant,
    idle_timeout: Duration,
) -> Option<Instant> {
    if streams.count.load(Ordering::Relaxed) > 0 {
        return None;
    }
    let last_end = began + Duration::from_millis(streams.last_end_ms.load(Ordering::Relaxed));
    Some(last_end.max(last_accept) + idle_timeout)
}

/// Whether the engine serves this stream's request; `Err` names why pingora's proxy must.
fn stream_shape(session: &HttpSession) -> Result<(), &'static str> {
    let request = session.req_header();
    if request.method == http::Method::CONNECT {
        return Err("connect");
    }
    if !session.is_body_done() {
        return Err("body");
    }
    // A `content-length: 0` (a POST without data) frames no body, as HEADERS ending the stream
    // already say; any other length is pingora's.
    let mut lengths = request.headers.get_all(header::CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (None, _) => Ok(()),
        (Some(zero), None) if !zero.is_empty() && zero.as_bytes().iter().all(|&b| b == b'0') => {
            Ok(())
        }
        _ => Err("body"),
    }
}

/// The upstream's response head as HTTP/2 fields: hop-by-hop fields, those `Connection` names,
/// a length beside chunked framing and `Transfer-Encoding` dropped (RFC 9113 §8.2.2).
fn response_head(
    received: &[u8],
    response: &ResponseHead,
    fields: &[FieldSpan],
    framing: Framing,
) -> pingora::Result<ResponseHeader> {
    let mut head = ResponseHeader::build_no_case(response.status, Some(fields.len()))?;
    let dropped = HopByHop::of(received, fields, framing).for_h2();
    append_kept_fields(&mut head, received, fields, dropped)?;
    Ok(head)
}

/// Answers the stream with a response of the gateway's own (no body).
fn answer(session: &mut HttpSession, own: &Answer) -> Outcome {
    let built = ResponseHeader::build_no_case(own.status, Some(own.headers.len() + 1)).and_then(
        |mut response| {
            response.insert_header(header::CONTENT_LENGTH, HeaderValue::from_static("0"))?;
            for (name, value) in &own.headers {
                response.append_header(name.clone(), value.clone())?;
            }
            Ok(response)
        },
    );
    let written =
        built.and_then(|response| session.write_response_header(Box::new(response), true));
    match written {
        Ok(()) => Outcome {
            status: own.status,
            body_bytes: 0,
            close: false,
        },
        Err(_) => Outcome::closed(0),
    }
}
