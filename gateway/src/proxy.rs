//! The request path: pingora's `ProxyHttp` for one listener port. Loads the snapshot once per
//! request, checks framing, selects the listener (Host, and SNI on HTTPS), routes, applies the
//! rule's and backend's filters, picks an endpoint, and maps failures to status codes.
//!
//! Timeouts: `timeouts.request` is a deadline from the request's arrival, `backendRequest` one
//! from each attempt's start; both cover the whole response, as the spec says. A body still
//! streaming at its deadline is cut at its next chunk (the status is already sent, so the
//! connection is closed). Each attempt also gets the time left at its start as connect and
//! per-read timeout: pingora fixes it per connection, so a stall is cut once it lasts that long,
//! which may be after the deadline. Upgraded connections (WebSocket) are exempt once upgraded;
//! with neither timeout set nothing is cut.
//! Identity: on a rule under an `AuthPolicy` the policy's authenticator decides before any
//! filter runs (a CORS preflight the rule answers itself excepted, as browsers send those without
//! credentials); identity header names of every policy in force are stripped from every request
//! first. A WebSocket opened under a session is closed at its next frame, in either direction,
//! once the session is revoked or expired.
//! Retries follow `Rule.retry` (listed codes and connection failures), with `backoff` between
//! attempts, and only while pingora still holds the whole request body for replay.
//!
//! [`Engine`] serves plain proxied HTTP/1.1 requests and HTTP/2 streams with this same code and
//! hands the rest to pingora's proxy (see its module).

pub(crate) mod engine;
pub(crate) mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};
use torhaus_model::hostname::normalize_request_host;
use torhaus_model::{
    Backend, BackendTarget, Filter, PortProtocol, Redirect, Rewrite, Rule, Scheme, UpstreamProtocol,
};
use torhaus_policies::{Decision, RequestView as IdentityRequest};

use crate::auth::PolicyEnforcer;
use crate::drain::{ActiveRequest, InFlightRequests};
use crate::filters;
use crate::metrics::{Finished, Observer, RequestObs};
use crate::mirror::{MirrorBody, MirrorChunk, Mirrors};
use crate::respond::{respond, respond_with_body};
use crate::router::{RequestView, pick_backend};
use crate::snapshot::Snapshot;
use crate::strict::check_request;
use crate::tls::ClientSni;
use crate::upstream::{EjectionPolicy, EndpointSet, InFlight};

pub use engine::{Engine, EngineOptions};

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
    pub mirrors: Mirrors,
    /// Metrics and the access log.
    pub observer: Observer,
    /// Requests in flight on every port, for a shutdown that ends once they are done.
    pub in_flight: Arc<InFlightRequests>,
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
    /// Index into `rule.matches` of the entry that matched (for prefix rewrites).
    match_index: usize,
    deadline: Option<Instant>,
    /// `timeouts.backendRequest` of the current attempt.
    attempt_deadline: Option<Instant>,
    attempts: u32,
    /// Set when the current attempt is abandoned for a retryable status code.
    retrying_status: bool,
    /// Body senders of the mirrors of this request.
    mirrors: Vec<MirrorBody>,
    /// Timings and the listener, for metrics and the access log.
    obs: RequestObs,
    /// The identity policy of the matched rule.
    auth: Option<Arc<PolicyEnforcer>>,
    /// The browser session the request was allowed under, re-checked on upgraded connections.
    auth_session: Option<Arc<torhaus_policies::SessionHandle>>,
    /// Who the identity layer let through, for the access log.
    auth_identity: Option<Arc<torhaus_policies::identity::Identity>>,
    /// Headers the identity layer adds to the response (a refreshed session cookie).
    auth_response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The forwarding headers for the first attempt's upstream request.
    forwarded: Option<filters::ForwardedHeaders>,
    /// The host the client sent, for a retry's forwarding headers.
    sent_host: Option<SentHost>,
    /// Counts this request as in flight until the context is dropped.
    _active: Option<ActiveRequest>,
}

impl RequestCtx {
    /// The filters of `rule` (the matched rule) and of the backend chosen for this request.
    fn filters_in_force<'a>(&self, rule: &'a Rule) -> impl Iterator<Item = &'a Filter> {
        let backend_filters = self
            .backend_index
            .and_then(|i| rule.backends.get(i))
            .map(|b| &b.filters[..])
            .unwrap_or(&[]);
        rule.filters.iter().chain(backend_filters)
    }

    /// The request as metrics and the access log see it once it has ended.
    fn finished(&self) -> Finished<'_> {
        Finished {
            obs: &self.obs,
            snapshot: self.snapshot.as_deref(),
            rule: self.rule.as_ref(),
            backend_index: self.backend_index,
            upstream: self
                .in_flight
                .as_ref()
                .map(|claim| &claim.endpoint().log_addr),
            user: self
                .auth_identity
                .as_deref()
                .map(|id| id.username.as_deref().unwrap_or(&id.sub)),
        }
    }

    fn retry_allowed(&self, body_truncated: bool) -> bool {
        let Some(policy) = self.rule.as_ref().and_then(|r| r.retry.as_ref()) else {
            return false;
        };
        !body_truncated
            && self.attempts <= policy.attempts
            && self.deadline.is_none_or(|d| Instant::now() < d)
    }
}

// Written as `&'static str` in their usual case: pingora keeps the name's case for HTTP/1 from
// the string as is, where a `HeaderName` would be copied into a new buffer on every request.
const X_FORWARDED_FOR: &str = "X-Forwarded-For";
const X_FORWARDED_PROTO: &str = "X-Forwarded-Proto";
const X_FORWARDED_HOST: &str = "X-Forwarded-Host";
const FORWARDED: &str = "Forwarded";

/// A response the gateway writes itself instead of proxying.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Answer {
    fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
        }
    }

    async fn send(self, session: &mut Session) -> pingora::Result<()> {
        respond(session, self.status, &self.headers, false).await
    }
}

/// The host a request addresses, lowercase and without port; borrowed when already normal.
fn request_host(request: &RequestHeader) -> Option<std::borrow::Cow<'_, str>> {
    let raw = match request.headers.get(header::HOST) {
        Some(value) => value.to_str().ok()?,
        // HTTP/1.0 may omit Host (HTTP/1.1 without it was refused earlier): only listeners and
        // routes without hostname can serve it.
        None => request.uri.authority().map_or("", |a| a.as_str()),
    };
    if raw.is_empty() {
        return Some(std::borrow::Cow::Borrowed(""));
    }
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

/// The Host header as sent (else the target's authority, else empty), not normalized: what
/// the client asked for, for headers that tell the upstream and the IdP about it.
pub(crate) fn raw_host(request: &pingora::http::RequestHeader) -> &str {
    request
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri.authority().map(|a| a.as_str()))
        .unwrap_or_default()
}

/// The host a client addressed, as it sent it (see [`raw_host`]), kept while filters may
/// rewrite the Host header: `X-Forwarded-Host` and `Forwarded` tell the upstream the original.
/// A clone of the header's bytes, not a copy.
#[derive(Debug)]
enum SentHost {
    Header(http::HeaderValue),
    Authority(http::uri::Authority),
    Absent,
}

impl SentHost {
    fn of(request: &pingora::http::RequestHeader) -> SentHost {
        match request.headers.get(header::HOST) {
            Some(value) if value.to_str().is_ok() => SentHost::Header(value.clone()),
            _ => request
                .uri
                .authority()
                .map_or(SentHost::Absent, |a| SentHost::Authority(a.clone())),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            SentHost::Header(value) => value.to_str().unwrap_or_default(),
            SentHost::Authority(authority) => authority.as_str(),
            SentHost::Absent => "",
        }
    }
}

/// The request as the identity layer sees it; `None` when its target is not UTF-8.
fn identity_request(session: &Session, scheme: Scheme) -> Option<IdentityRequest<'_>> {
    let request = session.req_header();
    let host = raw_host(request);
    Some(IdentityRequest {
        method: &request.method,
        scheme: scheme.as_str(),
        host,
        path_and_query: std::str::from_utf8(request.raw_path()).ok()?,
        headers: &request.headers,
    })
}

/// Reads the whole request body if it is at most `limit` bytes; `None` when it is larger.
async fn read_small_body(session: &mut Session, limit: usize) -> pingora::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Whether the rule's CORS filter answers this request itself (a preflight, which browsers
/// send without cookies or credentials, so the identity layer must not refuse it).
fn answers_cors_preflight(request: &RequestHeader, rule: &Rule) -> bool {
    rule.filters.iter().any(|f| matches!(f, Filter::Cors(_)))
        && filters::is_cors_preflight(&request.method, &request.headers)
}

/// Removes the identity header names of every policy in force, so that no client can pose as
/// someone the identity layer let through (on every route, under a policy or not).
fn strip_identity_headers(request: &mut RequestHeader, ctx: &RequestCtx) {
    if let Some(snapshot) = &ctx.snapshot
        && !snapshot.auth.is_empty()
    {
        for name in snapshot.auth.strip_everywhere() {
            request.remove_header(name);
        }
    }
}

/// The response side of the matched rule and backend: identity cookies, header modifiers and
/// CORS headers, applied to the upstream's response.
fn apply_response_filters(
    request: &RequestHeader,
    response: &mut ResponseHeader,
    ctx: &RequestCtx,
) -> pingora::Result<()> {
    for (name, value) in &ctx.auth_response_headers {
        response.append_header(name.clone(), value.clone())?;
    }
    let Some(rule) = &ctx.rule else {
        return Ok(());
    };
    for filter in ctx.filters_in_force(rule) {
        match filter {
            Filter::ResponseHeaders(modifier) => {
                filters::apply_response_headers(modifier, response)?;
            }
            Filter::Cors(cors) => {
                if let Some(origin) = request
                    .headers
                    .get(header::ORIGIN)
                    .and_then(|o| o.to_str().ok())
                {
                    filters::cors_response_headers(cors, origin).apply_to(response)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The status answering a request that failed with `e`; 0 when the client is gone.
fn error_status(e: &Error) -> u16 {
    match e.etype() {
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
    }
}

/// Sets the four forwarding headers on a request to the upstream, replacing any the client sent.
fn add_forwarded_headers(
    request: &mut RequestHeader,
    forwarded: filters::ForwardedHeaders,
) -> pingora::Result<()> {
    request.insert_header(X_FORWARDED_FOR, forwarded.x_forwarded_for)?;
    request.insert_header(X_FORWARDED_PROTO, forwarded.x_forwarded_proto)?;
    request.insert_header(X_FORWARDED_HOST, forwarded.x_forwarded_host)?;
    request.insert_header(FORWARDED, forwarded.forwarded)
}

fn session_ended() -> Box<Error> {
    Error::explain(
        ErrorType::ConnectionClosed,
        "the session behind this upgraded connection was revoked or expired",
    )
}

/// The server name the client sent in its TLS handshake, if any.
fn client_sni(digest: Option<&pingora::protocols::Digest>) -> Option<&str> {
    match digest?.ssl_digest.as_ref()?.extension.get::<ClientSni>()? {
        ClientSni(Some(sni), _) => Some(sni),
        ClientSni(None, _) => None,
    }
}

impl PortProxy {
    /// Routes the request into `ctx`; `Err(status)` when the gateway answers it itself.
    fn route(
        &self,
        request: &RequestHeader,
        sni: Option<&str>,
        ctx: &mut RequestCtx,
    ) -> Result<(), u16> {
        let snapshot = self.shared.snapshot.load_full();
        let port = snapshot
            .routes
            .port(self.declared_port)
            .filter(|p| p.protocol() == self.protocol)
            .ok_or(404u16)?;
        let host = request_host(request).ok_or(400u16)?;
        let listener = port.listener_for_host(&host);
        if self.protocol == PortProtocol::Https
            && let Some(sni) = sni
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
        ctx.obs.set_listener(listener);
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
        if let Some(policy) = matched.auth {
            // Translation names only policies it hands over with the routes: a missing one is
            // an internal inconsistency, and failing closed is the only safe answer.
            let enforcer = snapshot.auth.enforcer(policy).ok_or(500u16)?;
            ctx.auth = Some(Arc::clone(enforcer));
        }
        let rule = Arc::clone(matched.rule);
        ctx.match_index = rule
            .matches
            .iter()
            .position(|m| std::ptr::eq(m, matched.matched))
            .unwrap_or(0);
        ctx.deadline = rule.timeouts.request.map(|t| Instant::now() + t);
        ctx.rule = Some(rule);
        ctx.snapshot = Some(snapshot);
        Ok(())
    }

    /// Applies one list of filters to the request; `Some` when the gateway answers by itself
    /// (a redirect or a CORS preflight).
    fn apply_request_filters(
        &self,
        request: &mut RequestHeader,
        has_body: bool,
        ctx: &mut RequestCtx,
        list: &[Filter],
    ) -> pingora::Result<Option<Answer>> {
        for filter in list {
            match filter {
                Filter::RequestHeaders(modifier) => {
                    filters::apply_request_headers(modifier, request)?;
                }
                Filter::Redirect(redirect) => {
                    return Ok(Some(self.redirect(request, ctx, redirect)));
                }
                Filter::Rewrite(rewrite) => self.rewrite(request, ctx, rewrite)?,
                Filter::Mirror(mirror) => {
                    if filters::should_mirror(mirror, fastrand::u32(..))
                        && let BackendTarget::Service(backend) = &mirror.backend
                        && let Some(snapshot) = &ctx.snapshot
                        && let Some(endpoints) = snapshot.endpoints.endpoints_of(backend)
                        && let Some(body) = self
                            .shared
                            .mirrors
                            .start(request, has_body, backend, endpoints)
                    {
                        ctx.mirrors.push(body);
                    }
                }
                Filter::Cors(cors) => {
                    if filters::is_cors_preflight(&request.method, &request.headers) {
                        let text = |name| {
                            request
                                .headers
                                .get(name)
                                .and_then(|v: &http::HeaderValue| v.to_str().ok())
                        };
                        let origin = text(header::ORIGIN).unwrap_or_default();
                        let method =
                            text(header::ACCESS_CONTROL_REQUEST_METHOD).unwrap_or_default();
                        let requested = text(header::ACCESS_CONTROL_REQUEST_HEADERS);
                        let headers = filters::cors_preflight(cors, origin, method, requested)
                            .map(|h| h.iter().cloned().collect())
                            .unwrap_or_default();
                        return Ok(Some(Answer {
                            status: 204,
                            headers,
                        }));
                    }
                }
                Filter::ResponseHeaders(_) => {}
            }
        }
        Ok(None)
    }

    fn redirect(&self, request: &RequestHeader, ctx: &RequestCtx, redirect: &Redirect) -> Answer {
        let Some(host) = request_host(request) else {
            return Answer::status(400);
        };
        let Some(matched) = ctx
            .rule
            .as_ref()
            .and_then(|r| r.matches.get(ctx.match_index))
        else {
            return Answer::status(500);
        };
        let Ok(target) = std::str::from_utf8(request.raw_path()) else {
            return Answer::status(400);
        };
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let input = filters::RedirectInput {
            scheme: self.scheme(),
            host: &host,
            path,
            query,
            listener_port: self.declared_port,
            matched,
        };
        let (status, location) = filters::redirect_location(redirect, &input);
        match http::HeaderValue::try_from(location) {
            Ok(location) => Answer {
                status,
                headers: vec![(header::LOCATION, location)],
            },
            Err(_) => Answer::status(500),
        }
    }

    fn rewrite(
        &self,
        request: &mut RequestHeader,
        ctx: &RequestCtx,
        rewrite: &Rewrite,
    ) -> pingora::Result<()> {
        if let Some(hostname) = &rewrite.hostname {
            request.insert_header(header::HOST, hostname.as_str())?;
        }
        let Some(modifier) = &rewrite.path else {
            return Ok(());
        };
        let Some(matched) = ctx
            .rule
            .as_ref()
            .and_then(|r| r.matches.get(ctx.match_index))
        else {
            return Ok(());
        };
        let target = std::str::from_utf8(request.raw_path())
            .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "request path is not UTF-8"))?;
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let mut rewritten = filters::rewrite_path(modifier, path, matched);
        if let Some(query) = query {
            rewritten.push('?');
            rewritten.push_str(query);
        }
        let uri = http::Uri::try_from(rewritten).map_err(|_| {
            Error::explain(
                ErrorType::HTTPStatus(500),
                "rewritten path is not a valid URI",
            )
        })?;
        request.set_uri(uri);
        Ok(())
    }

    /// The forwarding headers of this request (none without a TCP peer).
    fn forwarded_headers(
        &self,
        request: &RequestHeader,
        ctx: &RequestCtx,
        host: &SentHost,
    ) -> Option<filters::ForwardedHeaders> {
        let client = ctx.obs.client()?.ip();
        Some(filters::forwarded_headers(
            client,
            &request.headers,
            self.shared.trusted_hops,
            self.scheme(),
            host.as_str(),
        ))
    }

    /// Lets the rule's identity policy decide; `true` when the gateway answered the request.
    async fn authenticate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        enforcer: &PolicyEnforcer,
    ) -> pingora::Result<bool> {
        let authenticator = &enforcer.authenticator;
        let decision = match identity_request(session, self.scheme()) {
            Some(view) => authenticator.check(&view),
            None => {
                respond(session, 400, &[], false).await?;
                return Ok(true);
            }
        };
        let decision = match decision {
            Decision::Pending(pending) => {
                let body = if pending.needs_body() {
                    match read_small_body(session, torhaus_policies::authenticator::MAX_BODY)
                        .await?
                    {
                        Some(body) => Some(body),
                        None => {
                            respond(session, 413, &[], true).await?;
                            return Ok(true);
                        }
                    }
                } else {
                    None
                };
                let Some(view) = identity_request(session, self.scheme()) else {
                    respond(session, 400, &[], false).await?;
                    return Ok(true);
                };
                authenticator
                    .complete(pending, &view, body.as_deref())
                    .await
            }
            decided => decided,
        };
        match decision {
            Decision::Allow(allow) => {
                enforcer.decisions.allow.inc();
                let request = session.req_header_mut();
                for (name, value) in allow.upstream_headers {
                    request.insert_header(name, value)?;
                }
                ctx.auth_response_headers = allow.response_headers;
                ctx.auth_session = allow.session;
                ctx.auth_identity = allow.identity;
                Ok(false)
            }
            Decision::Reply(reply) => {
                let status = reply.status.as_u16();
                enforcer.decisions.count_reply(status);
                respond_with_body(session, status, &reply.headers, reply.body.into()).await?;
                Ok(true)
            }
            Decision::Pending(_) => {
                // `complete` never returns Pending; if it ever did, nothing may pass.
                enforcer.decisions.unavailable.inc();
                respond(session, 503, &[], false).await?;
                Ok(true)
            }
        }
    }

    /// After the identity layer: the rule's filters, the backend choice and the backend's
    /// filters, then the forwarding headers. `Err` holds the answer when the gateway replies
    /// itself (a redirect, a CORS preflight, or an error status).
    fn prepare_upstream(
        &self,
        request: &mut RequestHeader,
        has_body: bool,
        ctx: &mut RequestCtx,
        sent_host: SentHost,
    ) -> pingora::Result<Result<(), Answer>> {
        let Some(rule) = ctx.rule.clone() else {
            return Ok(Err(Answer::status(500)));
        };
        if let Some(answer) = self.apply_request_filters(request, has_body, ctx, &rule.filters)? {
            return Ok(Err(answer));
        }
        if let Err(status) = self.choose_backend(ctx) {
            return Ok(Err(Answer::status(status)));
        }
        if let Some(index) = ctx.backend_index
            && let Some(weighted) = rule.backends.get(index)
            && !weighted.filters.is_empty()
            && let Some(answer) =
                self.apply_request_filters(request, has_body, ctx, &weighted.filters)?
        {
            return Ok(Err(answer));
        }
        // Added to the upstream request, not to this one: pingora copies this header into each
        // attempt's request, and four more entries there cost their copies and frees on every
        // request.
        ctx.forwarded = self.forwarded_headers(request, ctx, &sent_host);
        ctx.sent_host = Some(sent_host);
        Ok(Ok(()))
    }

    /// Whether an upgraded connection (WebSocket) may carry on: its session still valid.
    fn upgraded_session_active(&self, session: &Session, ctx: &RequestCtx) -> bool {
        match (&ctx.auth, &ctx.auth_session) {
            (Some(enforcer), Some(handle)) if session.was_upgraded() => {
                enforcer.authenticator.session_active(handle)
            }
            _ => true,
        }
    }

    fn scheme(&self) -> Scheme {
        match self.protocol {
            PortProtocol::Http => Scheme::Http,
            PortProtocol::Https => Scheme::Https,
        }
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
        RequestCtx {
            _active: Some(self.shared.in_flight.enter()),
            ..RequestCtx::default()
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.shared.observer.request_arrived(session, &mut ctx.obs);
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
        let sni = client_sni(session.digest());
        if let Err(status) = self.route(session.req_header(), sni, ctx) {
            respond(session, status, &[], false).await?;
            return Ok(true);
        }
        let Some(rule) = ctx.rule.clone() else {
            return Ok(false);
        };
        let sent_host = SentHost::of(session.req_header());
        strip_identity_headers(session.req_header_mut(), ctx);
        if let Some(enforcer) = ctx.auth.clone()
            && !answers_cors_preflight(session.req_header(), &rule)
            && self.authenticate(session, ctx, &enforcer).await?
        {
            return Ok(true);
        }
        let has_body = !session.is_body_empty();
        match self.prepare_upstream(session.req_header_mut(), has_body, ctx, sent_host)? {
            Ok(()) => Ok(false),
            Err(answer) => {
                answer.send(session).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if !self.upgraded_session_active(session, ctx) {
            return Err(session_ended());
        }
        if ctx.mirrors.is_empty() {
            return Ok(());
        }
        if let Some(data) = body {
            ctx.mirrors
                .retain(|mirror| mirror.offer(MirrorChunk::Data(data.clone())));
        }
        if end_of_stream {
            for mirror in ctx.mirrors.drain(..) {
                mirror.offer(MirrorChunk::End);
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        apply_response_filters(session.req_header(), upstream_response, ctx)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // A retry computes them again: the first attempt took them.
        let forwarded = ctx.forwarded.take().or_else(|| {
            ctx.sent_host
                .as_ref()
                .and_then(|host| self.forwarded_headers(session.req_header(), ctx, host))
        });
        match forwarded {
            Some(forwarded) => add_forwarded_headers(upstream_request, forwarded),
            None => Ok(()),
        }
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
        let previous = ctx.in_flight.take().map(|claim| claim.endpoint().addr);
        let claim = endpoints.pick_excluding(previous).ok_or_else(|| {
            Error::explain(ErrorType::HTTPStatus(503), "backend has no endpoints")
        })?;
        let mut peer = HttpPeer::new(claim.endpoint().addr, false, String::new());
        ctx.in_flight = Some(claim);
        ctx.obs.upstream_started();
        ctx.attempts += 1;
        ctx.retrying_status = false;
        if backend.protocol == UpstreamProtocol::H2c {
            peer.options.set_http_version(2, 2);
        }
        peer.options.connection_timeout =
            Some(budget.map_or(DEFAULT_CONNECT_TIMEOUT, |b| b.min(DEFAULT_CONNECT_TIMEOUT)));
        peer.options.read_timeout = budget;
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        ctx.attempt_deadline = per_attempt.map(|t| Instant::now() + t);
        Ok(Box::new(peer))
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<Duration>> {
        if !self.upgraded_session_active(session, ctx) {
            return Err(session_ended());
        }
        let deadline = match (ctx.deadline, ctx.attempt_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(deadline) = deadline
            && !end_of_stream
            && !session.was_upgraded()
            && Instant::now() >= deadline
        {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "the route's timeout expired while the response body was streaming",
            ));
        }
        Ok(None)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        ctx.obs.upstream_answered();
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

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        self.shared.observer.finish(session, &ctx.finished());
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = error_status(e);
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
