//! Integration tests against the real test OpenID Provider (oidc-provider, Authentik layout):
//! login driven by an HTTP client through the provider's own form, code exchange, ID tokens
//! (RS256 and HS256), refresh, RP-initiated and back-channel logout, bearer JWTs from the
//! client-credentials grant, key rotation, and the attacks the issue lists.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use torhaus_policies::session::{CookieCodec, LoginState};
use torhaus_policies::{AuthContext, AuthPolicy, Authenticator, Decision, Reply, RequestView};
use torhaus_tests::oidc_rig::{OidcProvider, OpOptions};
use torhaus_tests::process::{free_port, wait_for};

const HOST: &str = "127.0.0.1:8080";
const SESSION_KEY: &[u8] = b"test-session-key-0123456789abcdef-0123456789";
const COOKIE: &str = "torhaus_session";

fn policy_yaml(issuer: &str, client: &str, extra: &str) -> String {
    let alg = if client == "gateway-hs256" {
        "HS256"
    } else {
        "RS256"
    };
    format!(
        r#"
apiVersion: torhaus.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: sso, namespace: apps }}
spec:
  targetRefs: [{{ kind: HTTPRoute, name: app }}]
  oidc:
    issuer: "{issuer}"
    clientID: {client}
    clientSecretRef: {{ name: oidc, key: {client} }}
    idTokenSigningAlgorithms: [{alg}]
    refresh: {{ before: 1s }}
  session:
    keySecretRefs: [{{ name: session, key: key }}]
  unauthenticatedPaths: [{{ value: /public }}]
{extra}"#
    )
}

fn secrets(ns: &str, name: &str, key: &str) -> Option<Vec<u8>> {
    if ns != "apps" {
        return None;
    }
    let value: &[u8] = match (name, key) {
        ("session", "key") => SESSION_KEY,
        ("oidc", "gateway") => b"gateway-secret",
        ("oidc", "gateway-hs256") => b"gateway-hs256-secret-0123456789abcdef",
        _ => return None,
    };
    Some(value.to_vec())
}

fn authenticator(yaml: &str) -> Arc<Authenticator> {
    let policy: AuthPolicy = serde_yaml::from_str(yaml).expect("policy YAML");
    let policy = policy.validate(&secrets).expect("valid policy");
    Arc::new(Authenticator::new(
        Arc::new(policy),
        &AuthContext::new().expect("http client"),
    ))
}

/// A browser: a cookie jar for the provider (reqwest's) and one for the gateway host.
struct Browser {
    op: reqwest::Client,
    cookies: BTreeMap<String, String>,
    /// The gateway host this browser talks to.
    host: String,
}

impl Browser {
    fn new() -> Self {
        let op = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Self {
            op,
            cookies: BTreeMap::new(),
            host: HOST.to_owned(),
        }
    }

    fn headers(&self, extra: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        if !self.cookies.is_empty() {
            let line = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            h.insert(
                http::header::COOKIE,
                HeaderValue::from_str(&line).expect("cookie"),
            );
        }
        for (k, v) in extra {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn store(&mut self, set_cookies: impl Iterator<Item = String>) {
        for c in set_cookies {
            let first = c.split(';').next().unwrap_or_default();
            let Some((name, value)) = first.split_once('=') else {
                continue;
            };
            if c.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    /// One request to the gateway, `check` then `complete` like the proxy; cookies applied.
    async fn gateway(
        &mut self,
        auth: &Authenticator,
        method: Method,
        pq: &str,
        extra: &[(&str, &str)],
    ) -> Decision {
        let headers = self.headers(extra);
        let req = RequestView {
            method: &method,
            scheme: "http",
            host: &self.host,
            path_and_query: pq,
            headers: &headers,
        };
        let d = auth.decide(&req, None).await;
        let set: Vec<String> = match &d {
            Decision::Reply(r) => set_cookies(&r.headers),
            Decision::Allow(a) => set_cookies(&a.response_headers),
            Decision::Pending(_) => Vec::new(),
        };
        self.store(set.into_iter());
        d
    }

    /// Whether the pure `check` alone cannot decide a GET of `pq` (refresh, key fetch...).
    fn needs_network(&self, auth: &Authenticator, pq: &str) -> bool {
        let headers = self.headers(&[]);
        let req = RequestView {
            method: &Method::GET,
            scheme: "http",
            host: &self.host,
            path_and_query: pq,
            headers: &headers,
        };
        matches!(auth.check(&req), Decision::Pending(_))
    }

    async fn get(&mut self, auth: &Authenticator, pq: &str) -> Decision {
        self.gateway(auth, Method::GET, pq, &[]).await
    }

    /// Follows the provider's redirects (posting the login form when it shows one) until it
    /// sends the browser back to the gateway; returns that callback URL.
    async fn through_provider(
        &self,
        start: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<url::Url> {
        let mut url = url::Url::parse(start)?;
        for _ in 0..10 {
            if url.as_str().starts_with(&format!("http://{}/", self.host)) {
                return Ok(url);
            }
            let resp = self.op.get(url.clone()).send().await?;
            if resp.status().is_redirection() {
                let loc = resp
                    .headers()
                    .get("location")
                    .context("redirect without location")?
                    .to_str()?;
                url = url.join(loc)?;
                continue;
            }
            let status = resp.status();
            let body = resp.text().await?;
            let Some(action) = body
                .split("action=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
            else {
                bail!("provider page {status} without a form at {url}: {body}");
            };
            let resp = self
                .op
                .post(url.join(action)?)
                .form(&[("username", user), ("password", password)])
                .send()
                .await?;
            if !resp.status().is_redirection() {
                bail!(
                    "login form answered {}: {}",
                    resp.status(),
                    resp.text().await?
                );
            }
            let loc = resp
                .headers()
                .get("location")
                .context("no location after login")?
                .to_str()?;
            url = url.join(loc)?;
        }
        bail!("too many provider redirects")
    }
}

fn set_cookies(headers: &[(http::HeaderName, HeaderValue)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == http::header::SET_COOKIE)
        .filter_map(|(_, v)| v.to_str().ok().map(str::to_owned))
        .collect()
}

fn reply(d: Decision) -> Reply {
    match d {
        Decision::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn allowed(d: Decision) -> Box<torhaus_policies::Allow> {
    match d {
        Decision::Allow(a) => a,
        other => panic!("expected Allow, got {other:?}"),
    }
}

fn header<'a>(a: &'a torhaus_policies::Allow, name: &str) -> Option<&'a str> {
    a.upstream_headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.to_str().ok())
}

fn path_and_query(u: &url::Url) -> String {
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    }
}

/// A full browser login on `/app`; returns the callback URL the provider sent back.
async fn login(auth: &Authenticator, b: &mut Browser, user: &str) -> anyhow::Result<url::Url> {
    let r = reply(b.get(auth, "/app").await);
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    let to_op = r.header("location").context("login redirect")?.to_owned();
    let callback = b.through_provider(&to_op, user, user).await?;
    let r = reply(b.get(auth, &path_and_query(&callback)).await);
    assert_eq!(r.status, StatusCode::FOUND, "callback: {}", r.body);
    assert_eq!(
        r.header("location"),
        Some(&*format!("http://{}/app", b.host))
    );
    Ok(callback)
}

/// A minimal HTTP server standing for the gateway's back-channel logout endpoint.
async fn backchannel_listener(
    port: u16,
    auth: Arc<tokio::sync::OnceCell<Arc<Authenticator>>>,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let auth = Arc::clone(&auth);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let auth = Arc::clone(&auth);
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let status = match auth.get() {
                                Some(a) => match a.backchannel_logout(&body).await {
                                    Decision::Reply(r) => r.status,
                                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                                },
                                None => StatusCode::SERVICE_UNAVAILABLE,
                            };
                            let mut resp =
                                hyper::Response::new(http_body_util::Full::new(bytes_empty()));
                            *resp.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(())
}

fn bytes_empty() -> hyper::body::Bytes {
    hyper::body::Bytes::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_headers_attacks_rp_and_backchannel_logout() -> anyhow::Result<()> {
    let bcl_port = free_port()?;
    let slot = Arc::new(tokio::sync::OnceCell::new());
    backchannel_listener(bcl_port, Arc::clone(&slot)).await?;
    let op = OidcProvider::start(OpOptions {
        backchannel_logout_uri: Some(format!(
            "http://127.0.0.1:{bcl_port}/oauth2/backchannel-logout"
        )),
        ..OpOptions::default()
    })
    .await?;
    let auth = authenticator(&policy_yaml(&op.issuer(), "gateway", ""));
    let _ = slot.set(Arc::clone(&auth));
    assert!(auth.prime().await.is_empty(), "discovery and keys load");

    // API clients and XHR get 401, never a redirect; unauthenticated paths pass.
    let mut anon = Browser::new();
    let r = reply(
        anon.gateway(
            &auth,
            Method::GET,
            "/app",
            &[("accept", "application/json")],
        )
        .await,
    );
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = reply(
        anon.gateway(
            &auth,
            Method::GET,
            "/app",
            &[("x-requested-with", "XMLHttpRequest")],
        )
        .await,
    );
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let a = allowed(anon.get(&auth, "/public/logo.png").await);
    assert!(a.upstream_headers.is_empty() && a.identity.is_none());

    // A full login through the provider's form.
    let mut site1 = Browser::new();
    let before_callback = site1.cookies.clone();
    let r = reply(site1.get(&auth, "/app").await);
    let login_cookies = site1.cookies.clone();
    let callback = site1
        .through_provider(r.header("location").context("redirect")?, "alice", "alice")
        .await?;
    assert!(before_callback.is_empty());
    let r = reply(site1.get(&auth, &path_and_query(&callback)).await);
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert_eq!(r.header("location"), Some("http://127.0.0.1:8080/app"));
    assert!(
        !site1.cookies.contains_key(&format!("{COOKIE}_login")),
        "the finished login leaves no login cookie"
    );

    let a = allowed(site1.get(&auth, "/app").await);
    assert_eq!(header(&a, "x-authentik-username"), Some("alice"));
    assert_eq!(header(&a, "x-authentik-groups"), Some("admins|users"));
    assert_eq!(header(&a, "x-authentik-email"), Some("alice@example.test"));
    assert_eq!(header(&a, "x-authentik-name"), Some("Alice Admin"));
    assert_eq!(header(&a, "x-authentik-uid"), Some("alice"));
    assert_eq!(
        header(&a, "x-authentik-jwt").map(|t| t.split('.').count()),
        Some(3)
    );
    let handle = a.session.clone().context("session handle")?;
    assert!(
        handle.sid.is_some(),
        "the provider's sid is kept for back-channel logout"
    );
    assert!(auth.session_active(&handle));
    // Spoofed identity headers: the proxy strips every name in the strip list.
    for spoof in [
        "x-authentik-username",
        "x-authentik-groups",
        "x-auth-request-user",
        "x-forwarded-user",
    ] {
        assert!(auth.strip_list().iter().any(|n| n == spoof), "{spoof}");
    }

    // Replaying the callback (same state, same code, original login cookie) fails.
    let mut replay = Browser {
        op: reqwest::Client::new(),
        cookies: login_cookies,
        host: HOST.to_owned(),
    };
    let r = reply(replay.get(&auth, &path_and_query(&callback)).await);
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!replay.cookies.contains_key(COOKIE));

    // A tampered session cookie is no session.
    let mut tampered = Browser {
        op: reqwest::Client::new(),
        cookies: site1.cookies.clone(),
        host: HOST.to_owned(),
    };
    let value = tampered.cookies.get_mut(COOKIE).context("session cookie")?;
    let flipped = if value.ends_with('A') { 'B' } else { 'A' };
    value.pop();
    value.push(flipped);
    let r = reply(tampered.get(&auth, "/app").await);
    assert_eq!(r.status, StatusCode::FOUND);
    assert!(
        r.header("location")
            .is_some_and(|l| l.starts_with(&op.issuer()))
    );
    assert!(
        !tampered.cookies.contains_key(COOKIE),
        "the bad cookie is deleted"
    );

    // A second site under the same provider session: single sign-on, no password asked.
    let mut site2 = Browser {
        op: site1.op.clone(),
        cookies: BTreeMap::new(),
        host: HOST.to_owned(),
    };
    login(&auth, &mut site2, "no-password-needed").await?;
    let site2_handle = allowed(site2.get(&auth, "/app").await)
        .session
        .context("handle")?;
    assert_eq!(site2_handle.sid, handle.sid);
    // Bob logs in elsewhere.
    let mut bob = Browser::new();
    login(&auth, &mut bob, "bob").await?;
    allowed(bob.get(&auth, "/app").await);

    // RP-initiated logout on site1: cookies cleared, browser sent to end_session with a hint.
    let copied = site1.cookies.clone();
    let r = reply(site1.get(&auth, "/oauth2/sign_out").await);
    assert_eq!(r.status, StatusCode::FOUND);
    let end = url::Url::parse(r.header("location").context("logout redirect")?)?;
    assert!(end.as_str().starts_with(&op.issuer()));
    let q: BTreeMap<String, String> = end.query_pairs().into_owned().collect();
    assert!(
        q.get("id_token_hint")
            .is_some_and(|t| t.split('.').count() == 3)
    );
    assert_eq!(q.get("client_id").map(String::as_str), Some("gateway"));
    assert_eq!(
        q.get("post_logout_redirect_uri").map(String::as_str),
        Some("http://127.0.0.1:8080/")
    );
    assert!(!site1.cookies.contains_key(COOKIE));
    // A copy of the old cookie no longer works (revoked locally, at once).
    let mut thief = Browser {
        op: reqwest::Client::new(),
        cookies: copied,
        host: HOST.to_owned(),
    };
    assert!(matches!(thief.get(&auth, "/app").await, Decision::Reply(_)));

    // site2 still works until the provider ends the session.
    allowed(site2.get(&auth, "/app").await);
    // The browser confirms the logout at the provider (its form), which ends the provider
    // session and sends a back-channel logout token to the gateway.
    let page = site1.op.get(end.clone()).send().await?;
    let status = page.status();
    let body = page.text().await?;
    let action = body
        .split("action=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("logout form")?;
    let xsrf = body
        .split("name=\"xsrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("xsrf")?;
    let done = site1
        .op
        .post(end.join(action)?)
        .form(&[("xsrf", xsrf), ("logout", "yes")])
        .send()
        .await?;
    assert!(
        done.status().is_redirection(),
        "logout confirm {status} -> {}",
        done.status()
    );
    let after = done
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(after.starts_with("http://127.0.0.1:8080/"), "{after}");
    wait_for(
        "the back-channel logout to revoke site2's session",
        Duration::from_secs(10),
        || {
            let ok = !auth.session_active(&site2_handle);
            async move { ok.then_some(()) }
        },
    )
    .await
    .with_context(|| op.log())?;
    let r = reply(site2.get(&auth, "/app").await);
    assert_eq!(
        r.status,
        StatusCode::FOUND,
        "a revoked session logs in again"
    );
    // Bob's session (another sid) is untouched.
    allowed(bob.get(&auth, "/app").await);
    // The provider session is really gone: a new login asks for the password again.
    let r = reply(site1.get(&auth, "/app").await);
    let resp = site1
        .op
        .get(r.header("location").context("redirect")?)
        .send()
        .await?;
    let interaction = url::Url::parse(&op.issuer())?.join(resp.headers()["location"].to_str()?)?;
    let page = site1.op.get(interaction).send().await?.text().await?;
    assert!(
        page.contains("name=\"password\""),
        "the provider asks for credentials again"
    );

    // A back-channel logout token that is not one is refused.
    let d = auth
        .backchannel_logout(b"logout_token=eyJhbGciOiJub25lIn0.e30.")
        .await;
    assert_eq!(reply(d).status, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_id_tokens_and_a_denied_group() -> anyhow::Result<()> {
    let op = OidcProvider::start(OpOptions::default()).await?;
    let auth = authenticator(&policy_yaml(
        &op.issuer(),
        "gateway-hs256",
        "  authorization: { groups: [admins] }\n",
    ));
    assert!(auth.prime().await.is_empty());
    let mut alice = Browser::new();
    login(&auth, &mut alice, "alice").await?;
    let a = allowed(alice.get(&auth, "/app").await);
    assert_eq!(header(&a, "x-authentik-username"), Some("alice"));
    let jwt = header(&a, "x-authentik-jwt").context("id token")?;
    let head = jwt.split('.').next().context("header")?;
    use base64::Engine as _;
    let head = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head)?;
    assert!(String::from_utf8_lossy(&head).contains("HS256"));

    // Bob is signed in but not in admins: a clear 403 page, and no redirect (no loop).
    let mut bob = Browser::new();
    login(&auth, &mut bob, "bob")
        .await
        .context("bob's login completes before the rules apply")?;
    let r = reply(bob.get(&auth, "/app").await);
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("admins") && r.header("location").is_none());

    // The RS256 client's policy would refuse an HS256 ID token: algorithms come from config.
    let strict = authenticator(
        &policy_yaml(&op.issuer(), "gateway-hs256", "").replace("[HS256]", "[RS256]"),
    );
    let mut carol = Browser::new();
    let r = reply(carol.get(&strict, "/app").await);
    let cb = carol
        .through_provider(r.header("location").context("redirect")?, "alice", "alice")
        .await?;
    let r = reply(carol.get(&strict, &path_and_query(&cb)).await);
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!carol.cookies.contains_key(COOKIE));
    Ok(())
}

fn edit_login_state(b: &mut Browser, edit: impl Fn(&mut LoginState)) {
    let codec = CookieCodec::new(&[SESSION_KEY.to_vec()]);
    let name = format!("{COOKIE}_login");
    let value = b.cookies.get(&name).expect("login cookie");
    let mut state: LoginState = codec
        .open_json(&name, value)
        .expect("opens with the policy's key");
    edit(&mut state);
    b.cookies
        .insert(name.clone(), codec.seal_json(&name, &state).expect("seal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_nonce_and_open_redirect_are_refused() -> anyhow::Result<()> {
    let op = OidcProvider::start(OpOptions::default()).await?;
    let auth = authenticator(&policy_yaml(&op.issuer(), "gateway", ""));
    // Wrong nonce: the ID token's nonce does not match the one of this login.
    let mut b = Browser::new();
    let r = reply(b.get(&auth, "/app").await);
    edit_login_state(&mut b, |s| s.pending[0].nonce = "not-the-nonce".into());
    let cb = b
        .through_provider(r.header("location").context("redirect")?, "alice", "alice")
        .await?;
    let r = reply(b.get(&auth, &path_and_query(&cb)).await);
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!b.cookies.contains_key(COOKIE));

    // A return URL pointing elsewhere is never followed, even from our own cookie.
    let mut b = Browser::new();
    let r = reply(b.get(&auth, "/app").await);
    edit_login_state(&mut b, |s| {
        s.pending[0].return_url = "https://evil.test/steal".into()
    });
    let cb = b
        .through_provider(r.header("location").context("redirect")?, "alice", "alice")
        .await?;
    let r = reply(b.get(&auth, &path_and_query(&cb)).await);
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location"), Some("/"));

    // Many tabs: at most a few pending logins, in one cookie.
    let mut tabs = Browser::new();
    for _ in 0..10 {
        reply(tabs.get(&auth, "/app").await);
    }
    assert_eq!(tabs.cookies.len(), 1);
    edit_login_state(&mut tabs, |s| {
        assert_eq!(
            s.pending.len(),
            torhaus_policies::session::MAX_PENDING_LOGINS
        )
    });
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_after_access_token_expiry_and_relogin_when_refresh_fails() -> anyhow::Result<()> {
    let mut op = OidcProvider::start(OpOptions {
        access_token_ttl: Some(2),
        ..OpOptions::default()
    })
    .await?;
    let auth = authenticator(&policy_yaml(&op.issuer(), "gateway", ""));
    let mut b = Browser::new();
    login(&auth, &mut b, "alice").await?;
    let first = b.cookies.get(COOKIE).cloned();
    // Wait (bounded) until the session is due for refresh, then let the gateway refresh it.
    wait_for(
        "the access token to approach expiry",
        Duration::from_secs(10),
        || {
            let due = b.needs_network(&auth, "/app");
            async move { due.then_some(()) }
        },
    )
    .await?;
    let a = allowed(b.get(&auth, "/app").await);
    assert!(
        !a.response_headers.is_empty(),
        "a refreshed session cookie is set"
    );
    assert_ne!(b.cookies.get(COOKIE), first.as_ref());
    assert_eq!(header(&a, "x-authentik-username"), Some("alice"));

    // The provider forgets every token (restart): the next refresh fails and the user is sent
    // to a clean login, with the session cookie deleted.
    op.restart(None).await?;
    wait_for(
        "the refreshed access token to approach expiry",
        Duration::from_secs(10),
        || {
            let due = b.needs_network(&auth, "/app");
            async move { due.then_some(()) }
        },
    )
    .await?;
    let r = reply(b.get(&auth, "/app").await);
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.body);
    assert!(
        r.header("location")
            .is_some_and(|l| l.starts_with(&op.issuer()))
    );
    assert!(!b.cookies.contains_key(COOKIE));
    Ok(())
}

fn bearer_policy(issuer: &str, audience: &str) -> String {
    format!(
        r#"
apiVersion: torhaus.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: api, namespace: apps }}
spec:
  targetRefs: [{{ kind: HTTPRoute, name: api }}]
  jwt:
    issuers: [{{ issuer: "{issuer}", audiences: [{audience}], algorithms: [RS256] }}]
  identityHeaders: {{ preset: oauth2-proxy }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_jwts_and_key_rotation() -> anyhow::Result<()> {
    let mut op = OidcProvider::start(OpOptions::default()).await?;
    let auth = authenticator(&bearer_policy(&op.issuer(), "gateway"));
    assert!(auth.prime().await.is_empty());
    let token = op.client_credentials_token().await?;
    let mut b = Browser::new();
    let bearer = format!("Bearer {token}");
    let a = allowed(
        b.gateway(
            &auth,
            Method::GET,
            "/v1/items",
            &[("authorization", &bearer)],
        )
        .await,
    );
    assert_eq!(header(&a, "x-auth-request-user"), Some("api-client"));

    // No token: 401 with a Bearer challenge, no redirect.
    let r = reply(b.get(&auth, "/v1/items").await);
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
    );

    // A foreign audience.
    let other = authenticator(&bearer_policy(&op.issuer(), "someone-else"));
    other.prime().await;
    let r = reply(
        b.gateway(
            &other,
            Method::GET,
            "/v1/items",
            &[("authorization", &bearer)],
        )
        .await,
    );
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A foreign issuer.
    let foreign = authenticator(&bearer_policy(
        "http://127.0.0.1:1/application/o/other/",
        "gateway",
    ));
    let r = reply(
        b.gateway(
            &foreign,
            Method::GET,
            "/v1/items",
            &[("authorization", &bearer)],
        )
        .await,
    );
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // alg=none and an HS256 token "signed" with the issuer's public key: refused.
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let mut parts = token.split('.');
    let (_, payload) = (parts.next(), parts.next().context("payload")?);
    let none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    let r = reply(
        b.gateway(
            &auth,
            Method::GET,
            "/v1",
            &[("authorization", &format!("Bearer {none}"))],
        )
        .await,
    );
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let jwks = std::fs::read(op.jwks_file())?;
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::from_slice::<serde_json::Value>(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?,
        )?,
        &jsonwebtoken::EncodingKey::from_secret(&jwks),
    )?;
    let r = reply(
        b.gateway(
            &auth,
            Method::GET,
            "/v1",
            &[("authorization", &format!("Bearer {hs}"))],
        )
        .await,
    );
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Key rotation: the provider restarts with a new key. A token signed by it carries an
    // unknown kid, which makes the gateway refetch the JWKS once and accept it.
    op.restart(Some(op.temp_path("jwks-rotated.json"))).await?;
    let rotated = op.client_credentials_token().await?;
    let headers = b.headers(&[("authorization", &format!("Bearer {rotated}"))]);
    let req = RequestView {
        method: &Method::GET,
        scheme: "http",
        host: HOST,
        path_and_query: "/v1",
        headers: &headers,
    };
    let pending = match auth.check(&req) {
        Decision::Pending(p) => p,
        other => panic!("an unknown kid needs a key refetch, got {other:?}"),
    };
    allowed(auth.complete(pending, &req, None).await);
    allowed(auth.decide(&req, None).await);
    // The old key is gone from the provider; its tokens are refused (and the refetch is
    // rate-limited, so this does not fetch again).
    let r = reply(
        b.gateway(&auth, Method::GET, "/v1", &[("authorization", &bearer)])
            .await,
    );
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_login_for_every_host_under_the_cookie_domain() -> anyhow::Result<()> {
    let op = OidcProvider::start(OpOptions {
        redirect_uris: Some("http://a.home.test:8080/oauth2/callback".into()),
        ..OpOptions::default()
    })
    .await?;
    let yaml = policy_yaml(&op.issuer(), "gateway", "").replace(
        "    keySecretRefs:",
        "    cookieDomain: home.test\n    keySecretRefs:",
    );
    let auth = authenticator(&yaml);
    let mut a = Browser::new();
    a.host = "a.home.test:8080".into();
    login(&auth, &mut a, "alice").await?;
    // The session cookie is scoped to the domain, so the browser sends it to b.home.test too.
    let mut b = Browser {
        op: a.op.clone(),
        cookies: a.cookies.clone(),
        host: "b.home.test:8080".into(),
    };
    let allow = allowed(b.get(&auth, "/").await);
    assert_eq!(header(&allow, "x-authentik-username"), Some("alice"));
    // The Set-Cookie of the login carried Domain=home.test.
    let r = reply(Browser::new().get(&auth, "/").await);
    assert!(
        set_cookies(&r.headers)
            .iter()
            .all(|c| c.contains("Domain=home.test"))
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_provider_fails_closed() -> anyhow::Result<()> {
    let port = free_port()?;
    let issuer = format!("http://127.0.0.1:{port}/application/o/gateway/");
    let auth = authenticator(&policy_yaml(&issuer, "gateway", ""));
    assert!(!auth.prime().await.is_empty(), "discovery fails");
    let mut b = Browser::new();
    let r = reply(b.get(&auth, "/app").await);
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("identity provider"));
    // Forged or unknown session cookies do not pass either.
    b.cookies.insert(COOKIE.into(), "forged".into());
    let r = reply(b.get(&auth, "/app").await);
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // Bearer tokens: no keys can be fetched, so nothing passes.
    let api = authenticator(&bearer_policy(&issuer, "gateway"));
    let fake = format!(
        "{}.{}.sig",
        "eyJhbGciOiJSUzI1NiIsImtpZCI6Im5ldyJ9",
        base64_payload(&format!(
            r#"{{"iss":"{issuer}","aud":"gateway","sub":"x","exp":9999999999}}"#
        ))
    );
    let r = reply(
        b.gateway(
            &api,
            Method::GET,
            "/v1",
            &[("authorization", &format!("Bearer {fake}"))],
        )
        .await,
    );
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    Ok(())
}

fn base64_payload(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn kids(jwks: &jsonwebtoken::jwk::JwkSet) -> Vec<String> {
    jwks.keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refresher_picks_up_rotated_keys() -> anyhow::Result<()> {
    let mut op = OidcProvider::start(OpOptions::default()).await?;
    let auth = authenticator(&policy_yaml(&op.issuer(), "gateway", ""));
    let provider = Arc::clone(auth.provider().context("provider")?);
    let task = auth.spawn_refresher(Duration::from_millis(200));
    let first = wait_for("the first discovery", Duration::from_secs(10), || {
        let snap = provider.current();
        async move { snap.map(|s| kids(&s.jwks)) }
    })
    .await?;
    op.restart(Some(op.temp_path("jwks-next.json"))).await?;
    let file: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(&std::fs::read(op.temp_path("jwks-next.json"))?)?;
    let next = kids(&file);
    assert_ne!(first, next);
    wait_for(
        "the refresher to load the rotated key",
        Duration::from_secs(10),
        || {
            let current = provider.current().map(|s| kids(&s.jwks));
            let want = next.clone();
            async move { (current == Some(want)).then_some(()) }
        },
    )
    .await?;
    task.abort();
    Ok(())
}
