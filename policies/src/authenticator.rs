//! The decision API the proxy calls: [`Authenticator::check`] is pure and lock-free (cached
//! snapshots only); anything that needs the network comes back as [`Decision::Pending`] and is
//! finished by the async [`Authenticator::complete`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{Map, Value};

use crate::identity::Identity;
use crate::jwt::{BearerVerifier, JwksCache, JwtError, now_secs};
use crate::pages::Reply;
use crate::policy::Policy;
use crate::provider::{Provider, ProviderError, TokenSet, http_client};
use crate::recent::Recent;
use crate::redirect::RedirectScope;
use crate::revocation::{RevocationList, Revoked};
use crate::session::{
    CookieAttrs, CookieCodec, Cookies, LoginState, MAX_CHUNKS, PendingLogin, Session, chunk_name,
    open_session, random_token, seal_session, sealed_session,
};

/// What the proxy knows about a request; no Kubernetes or pingora types.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// `http` or `https` as the client used it.
    pub scheme: &'a str,
    /// The Host (authority) the client sent, with port if any.
    pub host: &'a str,
    pub path_and_query: &'a str,
    pub headers: &'a http::HeaderMap,
}

impl RequestView<'_> {
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(p, _)| p)
    }

    fn query(&self) -> &str {
        self.path_and_query.split_once('?').map_or("", |(_, q)| q)
    }

    fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.path_and_query)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// API clients and XHR get status codes, never login redirects: a redirect to the
    /// provider cannot be followed by `fetch()` (CORS) and only breaks the page's script.
    pub fn wants_json(&self) -> bool {
        if self
            .header("x-requested-with")
            .is_some_and(|v| v.eq_ignore_ascii_case("xmlhttprequest"))
        {
            return true;
        }
        // Browsers mark fetch()/XHR with `Sec-Fetch-Dest: empty`; navigations say `document`.
        if self
            .header("sec-fetch-dest")
            .is_some_and(|v| v.eq_ignore_ascii_case("empty"))
        {
            return true;
        }
        let accept = self.header("accept").unwrap_or("");
        accept.contains("application/json") && !accept.contains("text/html")
    }

    fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

/// The request may go upstream.
#[derive(Debug, Clone, Default)]
pub struct Allow {
    /// Identity headers to add (after stripping [`Authenticator::strip_list`]).
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers to add to the response (a refreshed session's `Set-Cookie`).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// The browser session behind the request, for long-lived connections (WebSockets) to
    /// re-check with [`Authenticator::session_active`].
    pub session: Option<SessionHandle>,
    pub identity: Option<Arc<Identity>>,
}

/// Enough of a session to re-check it later without the cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHandle {
    pub id: String,
    pub sid: Option<String>,
    pub sub: String,
    pub issued_at: u64,
    pub expires_at: u64,
}

/// Work that needs the network; hand it back to [`Authenticator::complete`].
#[derive(Debug, Clone)]
pub struct Pending {
    kind: PendingKind,
}

#[derive(Debug, Clone)]
enum PendingKind {
    /// Discovery is not cached yet.
    Login {
        clear: bool,
    },
    Callback,
    Refresh(Box<Session>),
    BearerRefetch(String),
    Logout,
    BackchannelLogout,
}

impl Pending {
    /// The proxy must read the request body (at most [`MAX_BODY`] bytes) and pass it to
    /// [`Authenticator::complete`].
    pub fn needs_body(&self) -> bool {
        matches!(self.kind, PendingKind::BackchannelLogout)
    }
}

/// Largest body [`Authenticator::complete`] reads (back-channel logout tokens).
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub enum Decision {
    Allow(Box<Allow>),
    Reply(Reply),
    Pending(Pending),
}

/// Shared by every authenticator of a process.
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub http: reqwest::Client,
    pub revocations: Arc<RevocationList>,
}

impl AuthContext {
    pub fn new() -> Result<Self, ProviderError> {
        Ok(Self {
            http: http_client()?,
            revocations: RevocationList::new(),
        })
    }
}

type RefreshResult = Result<Session, RefreshFailure>;

#[derive(Debug, Clone)]
enum RefreshFailure {
    Unavailable(String),
    Relogin(String),
}

/// One refresh in flight or recently finished, keyed by the refresh token it spends.
type RefreshSlot = (Instant, Arc<tokio::sync::OnceCell<RefreshResult>>);

/// Finished refreshes are remembered this long so that requests still carrying the old
/// cookie (parallel requests of one page) reuse the result instead of spending the refresh
/// token again (rotating providers revoke the grant on reuse).
const REFRESH_REUSE: Duration = Duration::from_secs(30);

/// Number of recently opened session cookies remembered per policy.
const OPENED_SLOTS: usize = 1024;

/// A session cookie opened before, with the decision its identity gets under the policy (the
/// rules and headers depend on nothing else).
#[derive(Debug)]
struct OpenedSession {
    session: Session,
    decision: Decision,
}

/// One policy, ready to decide requests.
#[derive(Debug)]
pub struct Authenticator {
    policy: Arc<Policy>,
    provider: Option<Arc<Provider>>,
    bearer: Option<BearerVerifier>,
    codec: Option<CookieCodec>,
    revocations: Arc<RevocationList>,
    keep_claims: BTreeSet<String>,
    refreshing: tokio::sync::Mutex<HashMap<String, RefreshSlot>>,
    used_states: Mutex<VecDeque<(String, u64)>>,
    opened: Recent<OpenedSession>,
}

impl Authenticator {
    pub fn new(policy: Arc<Policy>, ctx: &AuthContext) -> Self {
        let provider = policy
            .oidc
            .clone()
            .map(|o| Arc::new(Provider::new(o, ctx.http.clone())));
        let bearer = policy.jwt.as_ref().map(|j| {
            let issuers = j
                .issuers
                .iter()
                .map(|i| {
                    (
                        i.clone(),
                        Arc::new(JwksCache::new(
                            &i.issuer,
                            i.jwks_uri.clone(),
                            ctx.http.clone(),
                        )),
                    )
                })
                .collect();
            BearerVerifier::new(issuers, j.leeway)
        });
        let codec = policy.session.as_ref().map(|s| CookieCodec::new(&s.keys));
        let keep_claims = policy.referenced_claims();
        Self {
            policy,
            provider,
            bearer,
            codec,
            revocations: Arc::clone(&ctx.revocations),
            keep_claims,
            refreshing: tokio::sync::Mutex::new(HashMap::new()),
            used_states: Mutex::new(VecDeque::new()),
            opened: Recent::new(OPENED_SLOTS),
        }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    pub fn provider(&self) -> Option<&Arc<Provider>> {
        self.provider.as_ref()
    }

    /// Fetches discovery and every JWKS once (start-up). Errors are reported but the
    /// authenticator stays usable: requests fail closed until a fetch succeeds.
    pub async fn prime(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(p) = &self.provider
            && let Err(e) = p.refresh().await
        {
            errors.push(e.to_string());
        }
        if let Some(b) = &self.bearer {
            for cache in b.caches() {
                if let Err(e) = cache.refresh().await {
                    errors.push(e.to_string());
                }
            }
        }
        errors
    }

    /// Refreshes discovery and keys every `every` until the handle is aborted, so that key
    /// rotation is picked up even without kid misses.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                for e in this.prime().await {
                    tracing::warn!(policy = %this.policy.key(), error = %e, "identity provider refresh failed");
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Header names the proxy removes from every incoming request on routes under this
    /// policy, before adding [`Allow::upstream_headers`].
    pub fn strip_list(&self) -> &[HeaderName] {
        self.policy.headers.strip_list()
    }

    /// Is the session behind a long-lived connection still valid (not revoked, not expired)?
    /// Lock-free; call it periodically and close the WebSocket when it turns false.
    pub fn session_active(&self, s: &SessionHandle) -> bool {
        s.expires_at > now_secs()
            && !self
                .revocations
                .is_revoked(&s.id, s.sid.as_deref(), &s.sub, s.issued_at)
    }

    fn cookie_name(&self) -> &str {
        self.policy
            .session
            .as_ref()
            .map_or("torhaus_session", |s| s.cookie_name.as_str())
    }

    fn login_cookie_name(&self) -> String {
        format!("{}_login", self.cookie_name())
    }

    fn attrs(&self, req: &RequestView<'_>) -> CookieAttrs {
        CookieAttrs {
            domain: self
                .policy
                .session
                .as_ref()
                .and_then(|s| s.cookie_domain.clone()),
            secure: req.scheme == "https",
        }
    }

    fn redirect_scope<'a>(&'a self, req: &RequestView<'a>) -> RedirectScope<'a> {
        RedirectScope {
            request_host: req.host,
            domains: &self.policy.allowed_redirect_domains,
            cookie_domain: self
                .policy
                .session
                .as_ref()
                .and_then(|s| s.cookie_domain.as_deref()),
        }
    }

    fn redirect_uri(&self, req: &RequestView<'_>) -> String {
        match self.policy.oidc.as_ref() {
            Some(o) => match &o.redirect_url {
                Some(u) => u.to_string(),
                None => format!("{}://{}{}", req.scheme, req.host, o.callback_path),
            },
            None => String::new(),
        }
    }

    /// Decides a request from cached state only. Never blocks, never locks.
    pub fn check(&self, req: &RequestView<'_>) -> Decision {
        let path = req.path();
        if let Some(o) = &self.policy.oidc {
            if path == o.callback_path {
                return Decision::Pending(Pending {
                    kind: PendingKind::Callback,
                });
            }
            if path == o.logout_path {
                return self.logout(req);
            }
            if path == o.backchannel_logout_path {
                if req.method != Method::POST {
                    return Decision::Reply(
                        Reply::json(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "invalid_request",
                            "POST a logout_token",
                        )
                        .with_header(http::header::ALLOW, "POST"),
                    );
                }
                return Decision::Pending(Pending {
                    kind: PendingKind::BackchannelLogout,
                });
            }
        }
        if self.policy.unauthenticated.iter().any(|m| m.matches(path)) {
            return Decision::Allow(Box::default());
        }
        if let (Some(token), Some(verifier)) = (req.bearer(), &self.bearer) {
            // Explicit credentials decide alone; a bad token never falls back to a cookie.
            return match verifier.verify_shared(token) {
                Ok(claims) => self.allow_claims(req, &claims, token),
                Err(JwtError::UnknownKey) => Decision::Pending(Pending {
                    kind: PendingKind::BearerRefetch(token.to_owned()),
                }),
                Err(e) => Decision::Reply(bearer_error(&e)),
            };
        }
        let Some(codec) = &self.codec else {
            return Decision::Reply(
                Reply::json(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "a bearer token is required",
                )
                .with_header(http::header::WWW_AUTHENTICATE, "Bearer"),
            );
        };
        let cookies = Cookies::parse(req.headers);
        let had_cookie = cookies.has(self.cookie_name());
        let Some(sealed) = sealed_session(self.cookie_name(), &cookies) else {
            return self.login_required(req, had_cookie);
        };
        // Opening a session (decrypting, parsing, rendering its headers) is the expensive part of
        // a request under a policy; a cookie seen before skips it. Expiry, revocation and refresh
        // are still checked below on every request.
        let opened = match self.opened.get(&sealed) {
            Some(hit) => hit,
            None => {
                let Some(session) = codec.open_json::<Session>(self.cookie_name(), &sealed) else {
                    return self.login_required(req, true);
                };
                let decision = self.allow_session(&session, Vec::new());
                self.opened
                    .put(&sealed, OpenedSession { session, decision });
                match self.opened.get(&sealed) {
                    Some(opened) => opened,
                    None => return self.login_required(req, true),
                }
            }
        };
        let OpenedSession { session, decision } = &opened.value;
        let now = now_secs();
        let ident = &session.identity;
        if session.expires_at <= now
            || self.revocations.is_revoked(
                &session.id,
                session.sid.as_deref(),
                &ident.sub,
                session.issued_at,
            )
        {
            return self.login_required(req, true);
        }
        if let (Some(o), Some(at_exp)) = (&self.policy.oidc, session.access_expires_at)
            && at_exp.saturating_sub(o.refresh_before.as_secs()) <= now
        {
            if o.refresh_enabled && session.refresh_token.is_some() {
                return Decision::Pending(Pending {
                    kind: PendingKind::Refresh(Box::new(session.clone())),
                });
            }
            if at_exp <= now {
                return self.login_required(req, true);
            }
        }
        decision.clone()
    }

    fn allow_session(
        &self,
        session: &Session,
        response_headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Decision {
        if let Err(denied) = self.policy.rules.evaluate(&session.identity) {
            return Decision::Reply(forbidden(&denied.0));
        }
        Decision::Allow(Box::new(Allow {
            upstream_headers: self.policy.headers.render(&session.identity),
            response_headers,
            session: Some(SessionHandle {
                id: session.id.clone(),
                sid: session.sid.clone(),
                sub: session.identity.sub.clone(),
                issued_at: session.issued_at,
                expires_at: session.expires_at,
            }),
            identity: Some(Arc::new(session.identity.clone())),
        }))
    }

    fn allow_claims(
        &self,
        req: &RequestView<'_>,
        claims: &Map<String, Value>,
        token: &str,
    ) -> Decision {
        let Some(mut identity) = Identity::from_claims(claims, &self.keep_claims) else {
            return Decision::Reply(bearer_error(&JwtError::Other("no sub claim".into())));
        };
        identity.raw_token = Some(token.to_owned());
        if let Err(denied) = self.policy.rules.evaluate(&identity) {
            return Decision::Reply(if req.wants_json() || req.bearer().is_some() {
                Reply::json(
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    &format!("requires {}", denied.0),
                )
            } else {
                forbidden(&denied.0)
            });
        }
        Decision::Allow(Box::new(Allow {
            upstream_headers: self.policy.headers.render(&identity),
            response_headers: Vec::new(),
            session: None,
            identity: Some(Arc::new(identity)),
        }))
    }

    fn clear_session_cookies(&self, req: &RequestView<'_>) -> Vec<String> {
        let attrs = self.attrs(req);
        let cookies = Cookies::parse(req.headers);
        (0..MAX_CHUNKS)
            .map(|i| chunk_name(self.cookie_name(), i))
            .filter(|n| cookies.has(n))
            .map(|n| attrs.delete(&n))
            .collect()
    }

    /// No usable session: 401 for API clients, otherwise start a login.
    fn login_required(&self, req: &RequestView<'_>, clear: bool) -> Decision {
        let cleared = if clear {
            self.clear_session_cookies(req)
        } else {
            Vec::new()
        };
        if self.provider.is_none()
            || req.wants_json()
            || !matches!(*req.method, Method::GET | Method::HEAD)
        {
            return Decision::Reply(
                Reply::json(StatusCode::UNAUTHORIZED, "login_required", "sign in first")
                    .with_header(http::header::WWW_AUTHENTICATE, "Bearer")
                    .with_cookies(&cleared),
            );
        }
        match self.provider.as_ref().and_then(|p| p.current()) {
            Some(_) => self.start_login(req, cleared),
            None => Decision::Pending(Pending {
                kind: PendingKind::Login { clear },
            }),
        }
    }

    fn start_login(&self, req: &RequestView<'_>, mut cookies_out: Vec<String>) -> Decision {
        let (Some(provider), Some(codec)) = (&self.provider, &self.codec) else {
            return Decision::Reply(unavailable("login is not configured"));
        };
        let Some(snap) = provider.current() else {
            return Decision::Reply(unavailable(
                "the identity provider has not been reached yet",
            ));
        };
        let redirect_uri = self.redirect_uri(req);
        let (url, state, nonce, verifier) = match provider.authorization_url(&snap, &redirect_uri) {
            Ok(parts) => parts,
            Err(e) => return Decision::Reply(unavailable(&e.to_string())),
        };
        let name = self.login_cookie_name();
        let cookies = Cookies::parse(req.headers);
        let mut state_list: LoginState = cookies
            .get(&name)
            .and_then(|v| codec.open_json(&name, v))
            .unwrap_or_default();
        let now = now_secs();
        state_list.push(
            PendingLogin {
                state,
                nonce,
                pkce_verifier: verifier,
                return_url: req.url(),
                redirect_uri,
                created_at: now,
            },
            now,
        );
        match codec.seal_json(&name, &state_list) {
            Ok(v) => cookies_out.push(self.attrs(req).set_cookie(
                &name,
                &v,
                Some(crate::session::LOGIN_TTL_SECS),
            )),
            Err(e) => return Decision::Reply(unavailable(&e.to_string())),
        }
        Decision::Reply(Reply::redirect(url.as_str()).with_cookies(&cookies_out))
    }

    fn logout(&self, req: &RequestView<'_>) -> Decision {
        let (Some(provider), Some(codec)) = (&self.provider, &self.codec) else {
            return Decision::Reply(unavailable("logout is not configured"));
        };
        let Some(snap) = provider.current() else {
            return Decision::Pending(Pending {
                kind: PendingKind::Logout,
            });
        };
        let cookies = Cookies::parse(req.headers);
        let session = open_session(codec, self.cookie_name(), &cookies);
        let keep = self
            .policy
            .session
            .as_ref()
            .map_or(86_400, |s| s.max_age.as_secs());
        if let Some(s) = &session {
            // The browser drops the cookie, but a copy must not keep working either.
            self.revocations
                .revoke(Revoked::Session(s.id.clone()), keep);
        }
        let mut clear = self.clear_session_cookies(req);
        clear.push(self.attrs(req).delete(&self.login_cookie_name()));
        let post_logout = self
            .policy
            .oidc
            .as_ref()
            .and_then(|o| o.post_logout_redirect_url.as_ref().map(url::Url::to_string))
            .unwrap_or_else(|| format!("{}://{}/", req.scheme, req.host));
        let hint = session
            .as_ref()
            .and_then(|s| s.identity.raw_token.as_deref());
        match provider.logout_url(&snap, hint, Some(&post_logout)) {
            Some(url) => Decision::Reply(Reply::redirect(url.as_str()).with_cookies(&clear)),
            None => Decision::Reply(
                Reply::page(
                    StatusCode::OK,
                    "Signed out",
                    "You are signed out of this site.",
                    Some(("/", "Back")),
                )
                .with_cookies(&clear),
            ),
        }
    }

    /// Finishes a pending decision. Never returns [`Decision::Pending`].
    pub async fn complete(
        &self,
        pending: Pending,
        req: &RequestView<'_>,
        body: Option<&[u8]>,
    ) -> Decision {
        match pending.kind {
            PendingKind::Login { clear } => match self.provider_snapshot().await {
                Ok(()) => {
                    let cleared = if clear {
                        self.clear_session_cookies(req)
                    } else {
                        Vec::new()
                    };
                    self.start_login(req, cleared)
                }
                Err(e) => Decision::Reply(unavailable(&e.to_string())),
            },
            PendingKind::Logout => match self.provider_snapshot().await {
                Ok(()) => match self.logout(req) {
                    Decision::Pending(_) => {
                        Decision::Reply(unavailable("the identity provider is unavailable"))
                    }
                    d => d,
                },
                Err(e) => Decision::Reply(unavailable(&e.to_string())),
            },
            PendingKind::Callback => self.callback(req).await,
            PendingKind::Refresh(session) => self.refresh(req, *session).await,
            PendingKind::BearerRefetch(token) => match &self.bearer {
                Some(b) => match b.verify_after_refetch(&token).await {
                    Ok(Ok(claims)) => self.allow_claims(req, &claims, &token),
                    Ok(Err(e)) => Decision::Reply(bearer_error(&e)),
                    Err(e) => Decision::Reply(unavailable(&e.to_string())),
                },
                None => Decision::Reply(bearer_error(&JwtError::UnknownIssuer)),
            },
            PendingKind::BackchannelLogout => {
                self.backchannel_logout(body.unwrap_or_default()).await
            }
        }
    }

    /// `check`, then `complete` if needed: for callers that are async anyway.
    pub async fn decide(&self, req: &RequestView<'_>, body: Option<&[u8]>) -> Decision {
        match self.check(req) {
            Decision::Pending(p) => self.complete(p, req, body).await,
            d => d,
        }
    }

    async fn provider_snapshot(&self) -> Result<(), ProviderError> {
        match &self.provider {
            Some(p) => p.snapshot().await.map(|_| ()),
            None => Err(ProviderError::Config("no OIDC provider".into())),
        }
    }

    fn consume_state(&self, state: &str) -> bool {
        let now = now_secs();
        let mut used = self
            .used_states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while used
            .front()
            .is_some_and(|(_, t)| *t + crate::session::LOGIN_TTL_SECS < now)
            || used.len() > 10_000
        {
            used.pop_front();
        }
        if used.iter().any(|(s, _)| s == state) {
            return false;
        }
        used.push_back((state.to_owned(), now));
        true
    }

    async fn callback(&self, req: &RequestView<'_>) -> Decision {
        let (Some(provider), Some(codec)) = (&self.provider, &self.codec) else {
            return Decision::Reply(unavailable("login is not configured"));
        };
        let params: HashMap<String, String> = url::form_urlencoded::parse(req.query().as_bytes())
            .into_owned()
            .collect();
        let restart = format!("{}://{}/", req.scheme, req.host);
        let failed = |status: StatusCode, msg: &str| {
            Decision::Reply(Reply::page(
                status,
                "Sign-in failed",
                msg,
                Some((&restart, "Start again")),
            ))
        };
        if let Some(err) = params.get("error") {
            return failed(
                StatusCode::FORBIDDEN,
                &format!("The identity provider refused the sign-in ({err})."),
            );
        }
        let (Some(code), Some(state)) = (params.get("code"), params.get("state")) else {
            return failed(
                StatusCode::BAD_REQUEST,
                "The sign-in response lacks code or state.",
            );
        };
        let name = self.login_cookie_name();
        let cookies = Cookies::parse(req.headers);
        let mut logins: LoginState = cookies
            .get(&name)
            .and_then(|v| codec.open_json(&name, v))
            .unwrap_or_default();
        let now = now_secs();
        let Some(login) = logins.take(state, now) else {
            return failed(
                StatusCode::BAD_REQUEST,
                "This sign-in is unknown, expired or was already used.",
            );
        };
        if !self.consume_state(state) {
            return failed(StatusCode::BAD_REQUEST, "This sign-in was already used.");
        }
        // RFC 9207: when the provider names itself, it must be the one we asked.
        if params
            .get("iss")
            .is_some_and(|iss| *iss != provider.policy().issuer)
        {
            return failed(
                StatusCode::BAD_REQUEST,
                "The sign-in response came from another issuer.",
            );
        }
        let tokens = match provider
            .exchange_code(
                code,
                &login.pkce_verifier,
                &login.nonce,
                &login.redirect_uri,
            )
            .await
        {
            Ok(t) => t,
            Err(ProviderError::Unavailable(e)) => return Decision::Reply(unavailable(&e)),
            Err(e) => {
                tracing::info!(error = %e, "sign-in rejected");
                return failed(
                    StatusCode::BAD_REQUEST,
                    "The sign-in could not be verified.",
                );
            }
        };
        let session = match self.new_session(&tokens, None) {
            Some(s) => s,
            None => return failed(StatusCode::BAD_REQUEST, "The ID token has no subject."),
        };
        let mut set = match self.session_cookies(req, &session) {
            Ok(c) => c,
            Err(e) => return failed(StatusCode::INTERNAL_SERVER_ERROR, &e),
        };
        let attrs = self.attrs(req);
        if logins.pending.is_empty() {
            set.push(attrs.delete(&name));
        } else if let Ok(v) = codec.seal_json(&name, &logins) {
            set.push(attrs.set_cookie(&name, &v, Some(crate::session::LOGIN_TTL_SECS)));
        }
        let target = self
            .redirect_scope(req)
            .check(&login.return_url)
            .unwrap_or_else(|| "/".to_owned());
        Decision::Reply(Reply::redirect(&target).with_cookies(&set))
    }

    fn new_session(&self, tokens: &TokenSet, previous: Option<&Session>) -> Option<Session> {
        let now = now_secs();
        let max_age = self
            .policy
            .session
            .as_ref()
            .map_or(86_400, |s| s.max_age.as_secs());
        let identity = match (&tokens.claims, previous) {
            (Some(claims), _) => {
                let mut id = Identity::from_claims(claims, &self.keep_claims)?;
                id.raw_token.clone_from(&tokens.id_token);
                if let Some(prev) = previous {
                    // A refreshed ID token must describe the same user.
                    if prev.identity.sub != id.sub {
                        return None;
                    }
                }
                id
            }
            (None, Some(prev)) => prev.identity.clone(),
            (None, None) => return None,
        };
        let sid = tokens
            .claims
            .as_ref()
            .and_then(|c| c.get("sid").and_then(Value::as_str).map(str::to_owned))
            .or_else(|| previous.and_then(|p| p.sid.clone()));
        Some(Session {
            id: previous.map_or_else(|| random_token(16), |p| p.id.clone()),
            sid,
            issued_at: previous.map_or(now, |p| p.issued_at),
            expires_at: previous.map_or(now + max_age, |p| p.expires_at),
            access_expires_at: tokens.access_expires_at,
            refresh_token: tokens.refresh_token.clone(),
            groups_truncated: false,
            identity,
        })
    }

    fn session_cookies(
        &self,
        req: &RequestView<'_>,
        session: &Session,
    ) -> Result<Vec<String>, String> {
        let codec = self.codec.as_ref().ok_or("no session key")?;
        let chunks = seal_session(
            codec,
            self.cookie_name(),
            session,
            &self.policy.rules.groups,
        )
        .map_err(|e| e.to_string())?;
        let attrs = self.attrs(req);
        let max_age = session.expires_at.saturating_sub(now_secs());
        let cookies = Cookies::parse(req.headers);
        let mut out: Vec<String> = chunks
            .iter()
            .enumerate()
            .map(|(i, v)| attrs.set_cookie(&chunk_name(self.cookie_name(), i), v, Some(max_age)))
            .collect();
        // Drop chunks a larger previous session left behind.
        for i in chunks.len()..MAX_CHUNKS {
            let n = chunk_name(self.cookie_name(), i);
            if cookies.has(&n) {
                out.push(attrs.delete(&n));
            }
        }
        Ok(out)
    }

    async fn refresh(&self, req: &RequestView<'_>, session: Session) -> Decision {
        let Some(provider) = &self.provider else {
            return self.login_required(req, true);
        };
        let cell = {
            let mut map = self.refreshing.lock().await;
            map.retain(|_, (t, _)| t.elapsed() < REFRESH_REUSE);
            Arc::clone(
                &map.entry(session.refresh_token.clone().unwrap_or_default())
                    .or_insert_with(|| (Instant::now(), Arc::new(tokio::sync::OnceCell::new())))
                    .1,
            )
        };
        let redirect_uri = self.redirect_uri(req);
        let result = cell
            .get_or_init(|| async {
                let rt = session.refresh_token.clone().unwrap_or_default();
                match provider.refresh_tokens(&rt, &redirect_uri).await {
                    Ok(tokens) => self.new_session(&tokens, Some(&session)).ok_or_else(|| {
                        RefreshFailure::Relogin("refreshed ID token is for another user".into())
                    }),
                    Err(ProviderError::Unavailable(e)) => Err(RefreshFailure::Unavailable(e)),
                    Err(e) => Err(RefreshFailure::Relogin(e.to_string())),
                }
            })
            .await
            .clone();
        match result {
            Ok(fresh) => match self.session_cookies(req, &fresh) {
                Ok(set) => {
                    let headers = set
                        .iter()
                        .filter_map(|c| {
                            HeaderValue::from_str(c)
                                .ok()
                                .map(|v| (http::header::SET_COOKIE, v))
                        })
                        .collect();
                    self.allow_session(&fresh, headers)
                }
                Err(e) => Decision::Reply(unavailable(&e)),
            },
            Err(RefreshFailure::Unavailable(e)) => Decision::Reply(unavailable(&e)),
            Err(RefreshFailure::Relogin(e)) => {
                tracing::info!(error = %e, "session refresh failed; signing in again");
                let keep = self
                    .policy
                    .session
                    .as_ref()
                    .map_or(86_400, |s| s.max_age.as_secs());
                self.revocations
                    .revoke(Revoked::Session(session.id.clone()), keep);
                match self.login_required(req, true) {
                    Decision::Pending(p) => Box::pin(self.complete(p, req, None)).await,
                    d => d,
                }
            }
        }
    }

    /// Handles a back-channel logout POST (`application/x-www-form-urlencoded`,
    /// `logout_token=...`): revokes the provider session (or every session of the subject).
    pub async fn backchannel_logout(&self, body: &[u8]) -> Decision {
        let Some(provider) = &self.provider else {
            return Decision::Reply(Reply::json(
                StatusCode::NOT_FOUND,
                "invalid_request",
                "no OIDC provider",
            ));
        };
        if body.len() > MAX_BODY {
            return Decision::Reply(Reply::json(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "body too large",
            ));
        }
        let token = url::form_urlencoded::parse(body)
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned());
        let Some(token) = token else {
            return Decision::Reply(Reply::json(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing logout_token",
            ));
        };
        match provider.verify_logout_token(&token).await {
            Ok((sub, sid)) => {
                let keep = self
                    .policy
                    .session
                    .as_ref()
                    .map_or(86_400, |s| s.max_age.as_secs());
                match sid {
                    Some(sid) => self.revocations.revoke(Revoked::ProviderSession(sid), keep),
                    None => {
                        if let Some(sub) = sub {
                            self.revocations.revoke(Revoked::Subject(sub), keep);
                        }
                    }
                }
                let mut r = Reply::json(StatusCode::OK, "", "");
                r.body = String::new();
                Decision::Reply(r)
            }
            Err(ProviderError::Unavailable(e)) => Decision::Reply(Reply::json(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                &e,
            )),
            Err(e) => Decision::Reply(Reply::json(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &e.to_string(),
            )),
        }
    }
}

fn forbidden(requires: &str) -> Reply {
    Reply::page(
        StatusCode::FORBIDDEN,
        "Access denied",
        &format!(
            "You are signed in, but this site requires {requires}. Ask an administrator for access."
        ),
        None,
    )
}

fn unavailable(detail: &str) -> Reply {
    tracing::warn!(error = %detail, "identity provider unavailable; failing closed");
    Reply::page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in unavailable",
        "The identity provider cannot be reached right now, so this site is closed. Try again in a minute.",
        None,
    )
    .with_header(http::header::RETRY_AFTER, "30")
}

fn bearer_error(e: &JwtError) -> Reply {
    let desc = e.to_string();
    Reply::json(StatusCode::UNAUTHORIZED, "invalid_token", &desc).with_header(
        http::header::WWW_AUTHENTICATE,
        &format!("Bearer error=\"invalid_token\", error_description=\"{desc}\""),
    )
}
