//! Identity enforcement through the torhaus binary, against the test OpenID Provider
//! (oidc-provider laid out like Authentik, `tests/rigs/oidc`): `AuthPolicy` objects read from
//! the configuration directory, a login with an HTTP client that keeps cookies like a browser,
//! identity headers upstream, forged ones stripped, 401/403/503 answers, logout, bearer JWTs, a
//! policy changed while serving, and the effective policy in `torhaus check`.
//!
//! The browser flows (login, refresh, logout, back-channel logout, a WebSocket ended by logout,
//! a denied group) run in headless Chromium through `tests/browser/auth-flow.mjs`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use reqwest::StatusCode;
use torhaus_tests::fixtures::base_manifests;
use torhaus_tests::oidc_rig::{OidcProvider, OpOptions};
use torhaus_tests::process::{free_port, torhaus_bin, wait_for};
use torhaus_tests::rig::Rig;

/// The session key Secret (32 bytes, base64 in the manifest).
const SESSION_KEY_B64: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The `app` route: every rule under `e2e/sso`, the `admin` rule under the stricter
/// `e2e/admins`; `/open` is another route with no policy; `/dead` names a provider that is down.
fn app_manifests(issuer: &str, admin_groups: &str, dead_issuer: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{ name: oidc, namespace: e2e }}
stringData: {{ client-secret: gateway-secret }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: session, namespace: e2e }}
data: {{ key: {SESSION_KEY_B64} }}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: app, namespace: e2e }}
spec:
  parentRefs: [{{ name: gw, sectionName: http }}]
  rules:
    - name: main
      backendRefs: [{{ name: echo, port: 8080 }}]
    - name: admin
      matches: [{{ path: {{ type: PathPrefix, value: /admin }} }}]
      backendRefs: [{{ name: echo, port: 8080 }}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: open, namespace: e2e }}
spec:
  parentRefs: [{{ name: gw, sectionName: http }}]
  rules:
    - matches: [{{ path: {{ type: PathPrefix, value: /open }} }}]
      backendRefs: [{{ name: echo, port: 8080 }}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: dead, namespace: e2e }}
spec:
  parentRefs: [{{ name: gw, sectionName: http }}]
  rules:
    - matches: [{{ path: {{ type: PathPrefix, value: /dead }} }}]
      backendRefs: [{{ name: victim, port: 8080 }}]
---
apiVersion: torhaus.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: sso, namespace: e2e }}
spec:
  targetRefs: [{{ kind: HTTPRoute, name: app }}]
  oidc:
    issuer: "{issuer}"
    clientID: gateway
    clientSecretRef: {{ name: oidc, key: client-secret }}
    refresh: {{ before: 2s }}
  session:
    keySecretRefs: [{{ name: session, key: key }}]
  jwt:
    issuers: [{{ issuer: "{issuer}", audiences: [gateway], algorithms: [RS256] }}]
  identityHeaders: {{ preset: authentik }}
---
apiVersion: torhaus.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: admins, namespace: e2e }}
spec:
  targetRefs: [{{ kind: HTTPRoute, name: app, sectionName: admin }}]
  oidc:
    issuer: "{issuer}"
    clientID: gateway
    clientSecretRef: {{ name: oidc, key: client-secret }}
  session:
    keySecretRefs: [{{ name: session, key: key }}]
  authorization:
    groups: [{admin_groups}]
  identityHeaders: {{ preset: authentik }}
---
apiVersion: torhaus.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: down, namespace: e2e }}
spec:
  targetRefs: [{{ kind: HTTPRoute, name: dead }}]
  oidc:
    issuer: "{dead_issuer}"
    clientID: gateway
    clientSecretRef: {{ name: oidc, key: client-secret }}
  session:
    keySecretRefs: [{{ name: session, key: key }}]
"#
    )
}

/// torhaus serving the app under policies, and the provider knowing torhaus's URLs.
struct AuthRig {
    op: OidcProvider,
    rig: Rig,
    addr: SocketAddr,
    dead_issuer: String,
    access_log: std::path::PathBuf,
    _logs: torhaus_tests::process::TempDir,
}

impl AuthRig {
    async fn start(admin_groups: &str) -> anyhow::Result<Self> {
        Self::start_with(admin_groups, OpOptions::default()).await
    }

    async fn start_with(admin_groups: &str, options: OpOptions) -> anyhow::Result<Self> {
        let mut op = OidcProvider::start(options).await?;
        let dead_issuer = format!("http://127.0.0.1:{}/application/o/gone/", free_port()?);
        let logs = torhaus_tests::process::TempDir::new("access-log")?;
        let access_log = logs.path().join("access.log");
        let rig = Rig::start_with_args(
            &[
                ("base", base_manifests()),
                (
                    "app",
                    app_manifests(&op.issuer(), admin_groups, &dead_issuer),
                ),
            ],
            None,
            &["--access-log", &access_log.to_string_lossy()],
        )
        .await?;
        let addr = rig.torhaus.addr(80)?;
        let origin = format!("http://{addr}");
        op.reconfigure(|o| {
            o.redirect_uris = Some(format!("{origin}/oauth2/callback"));
            o.post_logout_uris = Some(format!("{origin}/"));
            o.backchannel_logout_uri = Some(format!("{origin}/oauth2/backchannel-logout"));
        })
        .await?;
        let this = Self {
            op,
            rig,
            addr,
            dead_issuer,
            access_log,
            _logs: logs,
        };
        // Served once the unauthenticated route answers.
        wait_for("torhaus to serve /open", Duration::from_secs(15), || {
            let url = this.url("/open");
            async move {
                let r = reqwest::get(url).await.ok()?;
                (r.status() == StatusCode::OK).then_some(())
            }
        })
        .await
        .with_context(|| this.rig.torhaus.log_tail())?;
        Ok(this)
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }
}

/// An HTTP client that keeps cookies like a browser and never follows redirects by itself.
fn browser() -> anyhow::Result<reqwest::Client> {
    Ok(browser_with_jar()?.0)
}

/// [`browser`], with its cookie jar for a test to read.
fn browser_with_jar() -> anyhow::Result<(reqwest::Client, std::sync::Arc<reqwest::cookie::Jar>)> {
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(std::sync::Arc::clone(&jar))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    Ok((client, jar))
}

/// A GET with only the given Cookie header (a copied or altered cookie), as a browser page.
async fn get_with_cookie(
    rig: &AuthRig,
    path: &str,
    cookie: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(rig.url(path))
        .header("accept", "text/html")
        .header("cookie", cookie)
        .send()
        .await?)
}

fn location(response: &reqwest::Response) -> anyhow::Result<String> {
    Ok(response
        .headers()
        .get("location")
        .context("a redirect without Location")?
        .to_str()?
        .to_owned())
}

/// Logs `user` in starting at `path`, through the provider's password form, as a browser
/// would; returns the page the gateway finally serves (its status and body).
async fn login(
    client: &reqwest::Client,
    rig: &AuthRig,
    path: &str,
    user: &str,
) -> anyhow::Result<(StatusCode, String)> {
    let first = client
        .get(rig.url(path))
        .header("accept", "text/html")
        .send()
        .await?;
    ensure!(
        first.status() == StatusCode::FOUND,
        "expected a login redirect, got {}",
        first.status()
    );
    let mut url = url::Url::parse(&location(&first)?)?;
    ensure!(
        url.as_str().starts_with(&rig.op.issuer()),
        "login redirect to {url}, not to the provider"
    );
    for _ in 0..12 {
        if url.as_str().starts_with(&rig.origin()) {
            let response = client
                .get(url.clone())
                .header("accept", "text/html")
                .send()
                .await?;
            if response.status().is_redirection() {
                url = url.join(&location(&response)?)?;
                continue;
            }
            let status = response.status();
            return Ok((status, response.text().await?));
        }
        let response = client.get(url.clone()).send().await?;
        if response.status().is_redirection() {
            url = url.join(&location(&response)?)?;
            continue;
        }
        let page = response.text().await?;
        let action = page
            .split("action=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .with_context(|| format!("provider page without a form at {url}: {page}"))?;
        let response = client
            .post(url.join(action)?)
            .form(&[("username", user), ("password", user)])
            .send()
            .await?;
        ensure!(
            response.status().is_redirection(),
            "login form answered {}",
            response.status()
        );
        url = url.join(&location(&response)?)?;
    }
    bail!("too many redirects during the login")
}

/// The headers the echo backend received, names lowercased.
fn echoed_headers(body: &str) -> anyhow::Result<Vec<(String, String)>> {
    let echo: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("not an echo: {body}"))?;
    let headers = echo
        .get("headers")
        .and_then(|h| h.as_object())
        .context("echo without headers")?;
    let mut out = Vec::new();
    for (name, values) in headers {
        for value in values.as_array().into_iter().flatten() {
            out.push((
                name.to_ascii_lowercase(),
                value.as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    Ok(out)
}

fn header_values(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_passes_identity_upstream_and_forged_headers_never_pass() -> anyhow::Result<()> {
    let rig = AuthRig::start("wheel").await?;
    let (client, jar) = browser_with_jar()?;

    // API clients and XHR get 401, never a redirect they cannot follow.
    let api = client
        .get(rig.url("/"))
        .header("accept", "application/json")
        .send()
        .await?;
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);

    let (status, body) = login(&client, &rig, "/", "alice").await?;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Forged identity headers are replaced by the real identity on a policed route...
    let response = client
        .get(rig.url("/profile"))
        .header("X-authentik-username", "mallory")
        .header("X-Auth-Request-User", "mallory")
        .header("X-authentik-groups", "admins")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = echoed_headers(&response.text().await?)?;
    assert_eq!(
        header_values(&headers, "x-authentik-username"),
        ["alice"],
        "{headers:?}"
    );
    assert_eq!(
        header_values(&headers, "x-authentik-groups"),
        ["admins|users"]
    );
    assert_eq!(
        header_values(&headers, "x-authentik-email"),
        ["alice@example.test"]
    );
    assert!(header_values(&headers, "x-auth-request-user").is_empty());
    // ...and removed on a route without any policy.
    let open = reqwest::Client::new()
        .get(rig.url("/open"))
        .header("X-authentik-username", "mallory")
        .header("X-authentik-jwt", "forged")
        .send()
        .await?;
    assert_eq!(open.status(), StatusCode::OK);
    let headers = echoed_headers(&open.text().await?)?;
    assert!(
        headers.iter().all(|(n, _)| !n.starts_with("x-authentik-")),
        "{headers:?}"
    );

    // Signed in but not in the admin group: a 403 page, not a login loop.
    let admin = client.get(rig.url("/admin")).send().await?;
    assert_eq!(admin.status(), StatusCode::FORBIDDEN);
    let page = admin.text().await?;
    assert!(page.contains("<html"), "{page}");

    // RP-initiated logout: to the provider's end_session_endpoint with id_token_hint, and the
    // copied session cookie is dead at once.
    let copied_cookie = {
        let page = client.get(rig.url("/")).send().await?;
        assert_eq!(page.status(), StatusCode::OK);
        page.headers().get("set-cookie").is_none()
    };
    assert!(copied_cookie, "an unchanged session sets no cookie");
    use reqwest::cookie::CookieStore as _;
    let cookie = jar
        .cookies(&url::Url::parse(&rig.origin())?)
        .context("the session cookie")?
        .to_str()?
        .to_owned();
    ensure!(cookie.contains("torhaus_session="), "{cookie}");
    assert_eq!(
        get_with_cookie(&rig, "/", &cookie).await?.status(),
        StatusCode::OK,
        "the copied cookie works while the session lives"
    );
    // A tampered cookie is a login, never a pass (and never an error page).
    let tampered = {
        let at = cookie.find("torhaus_session=").unwrap_or(0) + "torhaus_session=".len() + 20;
        let mut bytes = cookie.into_bytes();
        if let Some(b) = bytes.get_mut(at) {
            *b = if *b == b'A' { b'B' } else { b'A' };
        }
        String::from_utf8(bytes)?
    };
    let response = get_with_cookie(&rig, "/", &tampered).await?;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert!(location(&response)?.starts_with(&rig.op.issuer()));
    let cookie = jar
        .cookies(&url::Url::parse(&rig.origin())?)
        .context("the session cookie")?
        .to_str()?
        .to_owned();
    let logout = client.get(rig.url("/oauth2/sign_out")).send().await?;
    assert_eq!(logout.status(), StatusCode::FOUND);
    let to = location(&logout)?;
    assert!(
        to.starts_with(&rig.op.issuer()) && to.contains("id_token_hint="),
        "{to}"
    );
    let after = client
        .get(rig.url("/"))
        .header("accept", "text/html")
        .send()
        .await?;
    assert_eq!(after.status(), StatusCode::FOUND);
    assert!(location(&after)?.starts_with(&rig.op.issuer()));
    // The copy of the cookie taken before the logout is replayed: refused.
    let replayed = get_with_cookie(&rig, "/", &cookie).await?;
    assert_eq!(replayed.status(), StatusCode::FOUND);
    assert!(location(&replayed)?.starts_with(&rig.op.issuer()));

    // The access log names the user and never holds a cookie or token.
    let session_value = cookie
        .split("torhaus_session=")
        .nth(1)
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_owned();
    let log = wait_for("the access log lines", Duration::from_secs(5), || {
        let path = rig.access_log.clone();
        async move {
            let text = std::fs::read_to_string(path).ok()?;
            text.contains("/oauth2/sign_out").then_some(text)
        }
    })
    .await?;
    assert!(log.contains(r#""user":"alice""#), "{log}");
    assert!(session_value.len() > 100);
    assert!(
        !log.contains(&session_value[..40]),
        "a session cookie in the log"
    );
    assert!(!log.contains("code="), "an authorization code in the log");

    // Decisions are counted by policy and outcome.
    let metrics = reqwest::get(format!("http://{}/metrics", rig.rig.torhaus.admin_addr()?))
        .await?
        .text()
        .await?;
    for outcome in ["allow", "login", "unauthenticated"] {
        let series =
            format!("torhaus_auth_decisions_total{{outcome=\"{outcome}\",policy=\"e2e/sso\"}}");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
    assert!(
        metrics.contains(
            "torhaus_auth_decisions_total{outcome=\"forbidden\",policy=\"e2e/admins\"} 1"
        )
    );
    // The effective policy of each rule is on the status page and in /debug/config.
    let admin = rig.rig.torhaus.admin_addr()?;
    let page = reqwest::get(format!("http://{admin}/"))
        .await?
        .text()
        .await?;
    assert!(
        page.contains("AuthPolicy e2e/sso") && page.contains("AuthPolicy e2e/admins"),
        "{page}"
    );
    let config: serde_json::Value = reqwest::get(format!("http://{admin}/debug/config"))
        .await?
        .json()
        .await?;
    assert!(
        config
            .to_string()
            .contains(r#""authPolicies":["e2e/sso","e2e/admins"]"#),
        "{config}"
    );
    Ok(())
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_pass_and_forged_ones_get_401() -> anyhow::Result<()> {
    let rig = AuthRig::start("admins").await?;
    let token = rig.op.client_credentials_token().await?;
    let client = reqwest::Client::new();
    let ok = client
        .get(rig.url("/api"))
        .bearer_auth(&token)
        .header("X-authentik-username", "mallory")
        .send()
        .await?;
    assert_eq!(ok.status(), StatusCode::OK);
    let headers = echoed_headers(&ok.text().await?)?;
    assert_ne!(
        header_values(&headers, "x-authentik-username"),
        ["mallory"],
        "{headers:?}"
    );
    assert!(!header_values(&headers, "x-authentik-uid").is_empty());

    let parts: Vec<&str> = token.split('.').collect();
    ensure!(parts.len() == 3, "not a JWS: {token}");
    // alg=none with the same claims, and the real signature over altered claims.
    let none = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    let payload = String::from_utf8(decode_base64url(parts[1])?)?;
    let altered = payload.replacen("\"aud\":\"gateway\"", "\"aud\":\"gateway\",\"x\":1", 1);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64url(altered.as_bytes()),
        parts[2]
    );
    for (what, forged) in [("alg=none", none), ("tampered claims", tampered)] {
        let response = client
            .get(rig.url("/api"))
            .bearer_auth(&forged)
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(
            response
                .headers()
                .get("www-authenticate")
                .is_some_and(|v| v.to_str().is_ok_and(|v| v.starts_with("Bearer"))),
            "{what}"
        );
    }
    let echo_requests = rig.rig.pods_of("echo")[0].received();
    assert_eq!(
        echo_requests.iter().filter(|r| r.path == "/api").count(),
        1,
        "only the valid token reached the backend"
    );
    Ok(())
}

fn decode_base64url(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => bail!("not base64url: {text}"),
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_fails_closed_with_a_503_page() -> anyhow::Result<()> {
    let rig = AuthRig::start("admins").await?;
    let client = browser()?;
    // A browser needs the provider to log in: 503 page. An API client without credentials
    // needs no provider to be told 401.
    for (accept, expected) in [
        ("text/html", StatusCode::SERVICE_UNAVAILABLE),
        ("application/json", StatusCode::UNAUTHORIZED),
    ] {
        let response = client
            .get(rig.url("/dead/page"))
            .header("accept", accept)
            .send()
            .await?;
        assert_eq!(response.status(), expected, "{accept}");
        let body = response.text().await?;
        assert!(!body.is_empty(), "a clear answer, not an empty one");
        if expected == StatusCode::SERVICE_UNAVAILABLE {
            assert!(body.contains("<html"), "{body}");
        }
    }
    // The provider that was up goes down: a new login cannot start or finish.
    let mut rig = rig;
    rig.op.stop();
    let callback = client
        .get(rig.url("/oauth2/callback?code=x&state=y"))
        .header("accept", "text/html")
        .send()
        .await?;
    assert!(
        callback.status() == StatusCode::SERVICE_UNAVAILABLE
            || callback.status() == StatusCode::BAD_REQUEST,
        "{}",
        callback.status()
    );
    assert!(
        rig.rig.pods_of("victim")[0].received().is_empty(),
        "nothing passed to the backend of {}",
        rig.dead_issuer
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_applies_without_a_restart() -> anyhow::Result<()> {
    let rig = AuthRig::start("wheel").await?;
    let client = browser()?;
    let (status, _) = login(&client, &rig, "/", "alice").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        client.get(rig.url("/admin")).send().await?.status(),
        StatusCode::FORBIDDEN
    );
    let file = rig.rig.manifest_file(1);
    let text = std::fs::read_to_string(&file)?;
    ensure!(text.contains("wheel"), "{text}");
    std::fs::write(&file, text.replace("wheel", "admins"))?;
    wait_for(
        "the admin rule to let alice in",
        Duration::from_secs(2),
        || {
            let request = client.get(rig.url("/admin")).send();
            async move { (request.await.ok()?.status() == StatusCode::OK).then_some(()) }
        },
    )
    .await
    .with_context(|| rig.rig.torhaus.log_tail())?;
    // The session from before the change is still good on the other rule.
    assert_eq!(
        client.get(rig.url("/")).send().await?.status(),
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_effective_policy_of_each_rule_and_rejects_a_bad_one() -> anyhow::Result<()>
{
    let dir = torhaus_tests::process::TempDir::new("auth-check")?;
    let class = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{ name: torhaus }}\n\
         spec: {{ controllerName: {} }}\n---\n",
        torhaus_tests::rig::CONTROLLER_NAME
    );
    // Deployments are for the rig's echo pods; `check` ignores them with a warning.
    let manifests = format!(
        "{class}{}",
        base_manifests().replace("{GATEWAY_CLASS_NAME}", "torhaus")
    );
    std::fs::write(dir.path().join("base.yaml"), &manifests)?;
    let issuer = "http://127.0.0.1:9/application/o/x/";
    std::fs::write(
        dir.path().join("app.yaml"),
        app_manifests(issuer, "admins", issuer),
    )?;
    let check = |dir: &std::path::Path| -> anyhow::Result<(bool, String)> {
        let output = std::process::Command::new(torhaus_bin()?)
            .arg("check")
            .arg("--config")
            .arg(dir)
            .output()?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    };
    let (ok, out) = check(dir.path())?;
    assert!(ok, "{out}");
    assert!(out.contains("auth AuthPolicy e2e/sso"), "{out}");
    assert!(out.contains("auth AuthPolicy e2e/admins"), "{out}");
    assert!(
        out.contains("AuthPolicy e2e/admins")
            && out.contains("in force for HTTPRoute e2e/app rule admin"),
        "{out}"
    );

    // A policy naming an algorithm bearer tokens may not use: rejected, naming the field.
    let text = std::fs::read_to_string(dir.path().join("app.yaml"))?;
    std::fs::write(
        dir.path().join("app.yaml"),
        text.replacen("algorithms: [RS256]", "algorithms: [HS256]", 1),
    )?;
    let (ok, out) = check(dir.path())?;
    assert!(!ok, "{out}");
    assert!(
        out.contains("Accepted=False")
            && out.contains("spec.jwt.issuers[0].algorithms[0]")
            && out.contains("e2e/sso"),
        "{out}"
    );
    Ok(())
}

/// Runs one scenario of `tests/browser/auth-flow.mjs` in headless Chromium; returns what it saw.
async fn browser_scenario(rig: &AuthRig, scenario: &str) -> anyhow::Result<serde_json::Value> {
    let root = torhaus_tests::process::package_dir(env!("CARGO_MANIFEST_DIR"));
    ensure!(
        root.join("browser/node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in tests/browser: run scripts/install-deps.sh test"
    );
    let output = tokio::process::Command::new("node")
        .arg(root.join("browser/auth-flow.mjs"))
        .arg(scenario)
        .arg(rig.origin())
        .arg(rig.op.issuer())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), output)
        .await
        .context("the browser scenario did not finish in 90 s")?
        .context("running node (scripts/install-deps.sh test installs it)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "{scenario} failed: {}\n{stdout}\ntorhaus log:\n{}\nprovider log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        rig.rig.torhaus.log_tail(),
        rig.op.log()
    );
    let line = stdout
        .lines()
        .last()
        .context("the scenario printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_and_refresh_after_the_access_token_expires() -> anyhow::Result<()> {
    let options = OpOptions {
        access_token_ttl: Some(5),
        ..OpOptions::default()
    };
    let rig = AuthRig::start_with("admins", options).await?;
    let seen = browser_scenario(&rig, "login-refresh").await?;
    assert_eq!(seen["user"], "alice", "{seen}");
    assert_eq!(seen["refreshed"], true, "{seen}");
    assert_eq!(seen["userAfterRefresh"], "alice", "{seen}");
    assert_eq!(seen["providerRequestsDuringRefresh"], 0, "{seen}");
    // Small enough for any browser and proxy: never a 431.
    let bytes = seen["cookieBytes"].as_u64().unwrap_or(u64::MAX);
    assert!(bytes > 0 && bytes < 3800, "{seen}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_logout_ends_the_provider_session_and_the_websocket() -> anyhow::Result<()> {
    let rig = AuthRig::start("admins").await?;
    let seen = browser_scenario(&rig, "logout-websocket").await?;
    assert_eq!(seen["user"], "alice", "{seen}");
    assert_eq!(seen["echoBeforeLogout"], "hello", "{seen}");
    assert_eq!(seen["logoutAt"], "provider", "{seen}");
    assert_eq!(seen["socketClosedAfterLogout"], true, "{seen}");
    assert_eq!(seen["askedForPasswordAgain"], true, "{seen}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_backchannel_logout_revokes_the_gateway_session() -> anyhow::Result<()> {
    let rig = AuthRig::start("admins").await?;
    let seen = browser_scenario(&rig, "backchannel").await?;
    assert_eq!(seen["user"], "alice", "{seen}");
    assert_eq!(seen["revokedByBackchannel"], true, "{seen}");
    assert!(
        rig.op.log().contains("backchannel.success"),
        "{}",
        rig.op.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_a_denied_group_gets_the_403_page_not_a_loop() -> anyhow::Result<()> {
    let rig = AuthRig::start("admins").await?;
    let seen = browser_scenario(&rig, "denied").await?;
    assert_eq!(seen["status"], 403, "{seen}");
    assert_eq!(seen["title"], "Access denied", "{seen}");
    assert_eq!(seen["stillOnGateway"], true, "{seen}");
    assert!(
        seen["text"].as_str().is_some_and(|t| t.contains("admins")),
        "{seen}"
    );
    Ok(())
}
