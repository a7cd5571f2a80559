//! The request path: pingora's `ProxyHttp` for one listener port. Loads the snapshot once per
//! request, checks framing, selects the listener (Host, and SNI on HTTPS), routes, applies the
//! rule's and backend's filters, picks an endpoint, and maps failures to status codes.
//!
//! Timeouts: `timeouts.request` is a deadline from the request's arrival; each attempt gets
//! `min(backendRequest, time left)` as connect and read timeout. pingora's read timeout applies
//! to every read from the upstream, so after the response headers it acts as an idle timeout of
//! that length (a body that stalls longer is cut); with neither timeout set nothing is cut.
//! Retries follow `Rule.retry` (listed codes and connection failures), with `backoff` between
//! attempts, and only while pingora still holds the whole request body for replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};
use torhaus_model::hostname::normalize_request_host;
use torhaus_model::{Backend, BackendTarget, PortProtocol, Rule, UpstreamProtocol};

use crate::respond::respond;
use crate::router::{RequestView, pick_backend};
use crate::snapshot::Snapshot;
use crate::strict::check_request;
use crate::tls::ClientSni;
use crate::upstream::{EjectionPolicy, EndpointSet, InFlight};

/// Connect timeout when the rule sets none: long enough for any sane network, short enough that
/// a black-holed endpoint is ejected quickly.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled upstream connection is kept.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What every port's proxy shares.
#[derive(Debug)]
pub struct ProxyShared {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub trusted_hops: u32,
    pub max_request_header_bytes: usize,
    pub ejection: EjectionPolicy,
}

/// The proxy of one listener port (as declared by the Gateway).
#[derive(Debug)]
pub struct PortProxy {
    pub declared_port: u16,
    pub protocol: PortProtocol,
    pub shared: Arc<ProxyShared>,
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct RequestCtx {
    snapshot: Option<Arc<Snapshot>>,
    rule: Option<Arc<Rule>>,
    backend: Option<Arc<Backend>>,
    endpoints: Option<Arc<EndpointSet>>,
    in_flight: Option<InFlight>,
    /// Index into `rule.backends` of the chosen backend, for its response filters.
    backend_index: Option<usize>,
    deadline: Option<Instant>,
    attempts: u32,
    /// Set when the current attempt is abandoned for a retryable status code.
    retrying_status: bool,
}

impl RequestCtx {
    fn retry_allowed(&self, body_truncated: bool) -> bool {
        let Some(policy) = self.rule.as_ref().and_then(|r| r.retry.as_ref()) else {
            return false;
        };
        !body_truncated
            && self.attempts <= policy.attempts
            && self.deadline.is_none_or(|d| Instant::now() < d)
    }
}

/// The host a request addresses, lowercase and without port; borrowed when already normal.
fn request_host(session: &Session) -> Option<std::borrow::Cow<'_, str>> {
    let request = session.req_header();
    let raw = match request.headers.get(header::HOST) {
        Some(value) => value.to_str().ok()?,
        None => request.uri.authority()?.as_str(),
    };
    let already_normal = !raw.is_empty()
        && !raw.ends_with('.')
        && !raw.contains(':')
        && !raw.bytes().any(|b| b.is_ascii_uppercase());
    if already_normal {
        Some(std::borrow::Cow::Borrowed(raw))
    } else {
        normalize_request_host(raw).map(std::borrow::Cow::Owned)
    }
}

fn client_sni(session: &Session) -> Option<&ClientSni> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<ClientSni>()
}

impl PortProxy {
    /// Routes the request; `Ok(Some(status))` when the gateway answers it itself.
    fn route(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), u16> {
        let snapshot = self.shared.snapshot.load_full();
        let port = snapshot
            .routes
            .port(self.declared_port)
            .filter(|p| p.protocol() == self.protocol)
            .ok_or(404u16)?;
        let host = request_host(session).ok_or(400u16)?;
        let listener = port.listener_for_host(&host);
        if self.protocol == PortProtocol::Https
            && let Some(ClientSni(Some(sni))) = client_sni(session)
        {
            let by_sni = port.listener_for_host(sni);
            let same = match (listener, by_sni) {
                (Some(a), Some(b)) => std::ptr::eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                return Err(421);
            }
        }
        let listener = listener.ok_or(404u16)?;
        let request = session.req_header();
        let path_and_query = request.raw_path();
        let path_and_query = std::str::from_utf8(path_and_query).map_err(|_| 400u16)?;
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let view = RequestView {
            host: &host,
            path,
            query,
            method: &request.method,
            headers: &request.headers,
        };
        let matched = listener.route(&view).ok_or(404u16)?;
        let rule = Arc::clone(matched.rule);
        drop(host);
        ctx.deadline = rule.timeouts.request.map(|t| Instant::now() + t);
        ctx.rule = Some(rule);
        ctx.snapshot = Some(snapshot);
        Ok(())
    }

    /// Chooses the backend by weight: 500 for no usable weight or an invalid reference, 503 when
    /// the backend has no ready endpoint.
    fn choose_backend(&self, ctx: &mut RequestCtx) -> Result<(), u16> {
        let (Some(rule), Some(snapshot)) = (&ctx.rule, &ctx.snapshot) else {
            return Err(500);
        };
        let weighted = pick_backend(rule, fastrand::u32(..)).ok_or(500u16)?;
        let backend = match &weighted.target {
            BackendTarget::Service(backend) => backend,
            BackendTarget::Invalid(reason) => {
                tracing::debug!(%reason, "request to an invalid backend");
                return Err(500);
            }
        };
        let endpoints = snapshot.endpoints.endpoints_of(backend).ok_or(503u16)?;
        if endpoints.is_empty() {
            return Err(503);
        }
        ctx.backend_index = rule.backends.iter().position(|b| std::ptr::eq(b, weighted));
        ctx.endpoints = Some(Arc::clone(endpoints));
        ctx.backend = Some(Arc::clone(backend));
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for PortProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // pingora answers a pipelined request only when asked to keep the bytes it read ahead.
        session.set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        if let Err(rejection) = check_request(session, self.shared.max_request_header_bytes) {
            tracing::debug!(reason = rejection.reason(), "request rejected");
            respond(session, rejection.status(), &[], true).await?;
            return Ok(true);
        }
        if let Err(status) = self.route(session, ctx) {
            respond(session, status, &[], false).await?;
            return Ok(true);
        }
        if let Err(status) = self.choose_backend(ctx) {
            respond(session, status, &[], false).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let (Some(endpoints), Some(backend)) = (&ctx.endpoints, &ctx.backend) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(500),
                "no backend chosen for the request",
            ));
        };
        if ctx.attempts > 0
            && let Some(backoff) = ctx
                .rule
                .as_ref()
                .and_then(|r| r.retry.as_ref())
                .and_then(|p| p.backoff)
        {
            tokio::time::sleep(backoff).await;
        }
        let remaining = match ctx.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(504),
                        "request timeout expired",
                    ));
                }
                Some(left)
            }
            None => None,
        };
        let per_attempt = ctx.rule.as_ref().and_then(|r| r.timeouts.backend_request);
        let budget = match (remaining, per_attempt) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Release the previous attempt's claim before taking a new one.
        ctx.in_flight = None;
        let claim = endpoints.pick().ok_or_else(|| {
            Error::explain(ErrorType::HTTPStatus(503), "backend has no endpoints")
        })?;
        let mut peer = HttpPeer::new(claim.endpoint().addr, false, String::new());
        ctx.in_flight = Some(claim);
        ctx.attempts += 1;
        ctx.retrying_status = false;
        if backend.protocol == UpstreamProtocol::H2c {
            peer.options.set_http_version(2, 2);
        }
        peer.options.connection_timeout =
            Some(budget.map_or(DEFAULT_CONNECT_TIMEOUT, |b| b.min(DEFAULT_CONNECT_TIMEOUT)));
        peer.options.read_timeout = budget;
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        Ok(Box::new(peer))
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(claim) = &ctx.in_flight {
            claim.endpoint().record_success();
        }
        let status = upstream_response.status.as_u16();
        let listed = ctx
            .rule
            .as_ref()
            .and_then(|r| r.retry.as_ref())
            .is_some_and(|p| p.codes.contains(&status));
        if listed && ctx.retry_allowed(session.retry_buffer_truncated()) {
            ctx.retrying_status = true;
            let mut error = Error::explain(
                ErrorType::HTTPStatus(status),
                "upstream answered a status the retry policy lists",
            );
            error.set_retry(true);
            return Err(error);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(claim) = &ctx.in_flight
            && claim.endpoint().record_failure(&self.shared.ejection)
        {
            tracing::warn!(endpoint = %claim.endpoint().addr, "endpoint ejected after repeated connection failures");
        }
        e.set_retry(ctx.retry_allowed(session.retry_buffer_truncated()));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        let allowed = ctx.retry_allowed(session.retry_buffer_truncated());
        if ctx.retrying_status {
            e.set_retry(allowed);
        } else if !session.req_header().method.is_idempotent() {
            e.set_retry(false);
        } else if allowed {
            e.set_retry(true);
        } else {
            // A reused pooled connection the upstream had closed: one retry on a fresh one is
            // always safe for an idempotent request (pingora's default policy).
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => match e.esource() {
                pingora::ErrorSource::Upstream => 502,
                pingora::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                pingora::ErrorSource::Internal | pingora::ErrorSource::Unset => 500,
            },
        };
        if code > 0
            && session.response_written().is_none()
            && let Err(error) = respond(session, code, &[], true).await
        {
            tracing::debug!(%error, "could not write the error response");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}
