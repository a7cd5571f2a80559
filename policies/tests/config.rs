//! The AuthPolicy object: parsing, validation errors that name object and field, attachment
//! precedence, and the decisions that need no provider.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use torhaus_policies::policy::{AttachLevel, Target};
use torhaus_policies::{
    AuthContext, AuthPolicy, Authenticator, ConfigError, Decision, Policy, PolicySet, RequestView,
};

const EXAMPLE: &str = include_str!("../examples/authpolicy.yaml");

fn secrets(ns: &str, name: &str, key: &str) -> Option<Vec<u8>> {
    match (ns, name, key) {
        ("monitoring" | "apps", "grafana-oidc", "client-secret") => Some(b"s3cret".to_vec()),
        ("monitoring" | "apps", "torhaus-session", "key") => Some(vec![7; 32]),
        ("monitoring" | "apps", "short", "key") => Some(vec![7; 16]),
        _ => None,
    }
}

fn parse(yaml: &str) -> AuthPolicy {
    serde_yaml::from_str(yaml).expect("parses")
}

fn validate(yaml: &str) -> Result<Policy, ConfigError> {
    parse(yaml).validate(&secrets)
}

/// The example with one line replaced.
fn example_with(from: &str, to: &str) -> String {
    assert!(EXAMPLE.contains(from), "example lacks {from:?}");
    EXAMPLE.replacen(from, to, 1)
}

fn error_of(yaml: &str) -> ConfigError {
    validate(yaml).expect_err("must be rejected")
}

#[test]
fn the_documented_example_is_valid() {
    let p = validate(EXAMPLE).expect("valid");
    assert_eq!(p.key(), "monitoring/grafana-sso");
    assert_eq!(
        p.targets,
        vec![
            Target::Route {
                name: "grafana".into()
            },
            Target::RouteRule {
                name: "grafana".into(),
                rule: "admin".into()
            }
        ]
    );
    let oidc = p.oidc.as_ref().expect("oidc");
    assert_eq!(oidc.client_secret, "s3cret");
    assert_eq!(oidc.refresh_before, Duration::from_secs(60));
    let session = p.session.as_ref().expect("session");
    assert_eq!(session.cookie_domain.as_deref(), Some("home.example"));
    assert_eq!(session.max_age, Duration::from_secs(86_400));
    assert_eq!(p.rules.groups, vec!["admins", "grafana-users"]);
    assert_eq!(p.unauthenticated.len(), 2);
    assert!(p.referenced_claims().contains("department"));
}

#[test]
fn unknown_fields_are_rejected() {
    let e = serde_yaml::from_str::<AuthPolicy>(&example_with("  oidc:\n", "  odic: {}\n  oidc:\n"))
        .expect_err("typo must fail");
    assert!(e.to_string().contains("odic"), "{e}");
    let e = serde_yaml::from_str::<AuthPolicy>(&example_with(
        "    maxAge: 24h\n",
        "    maxAge: 24h\n    maxage: 1h\n",
    ))
    .expect_err("typo must fail");
    assert!(e.to_string().contains("maxage"), "{e}");
}

#[test]
fn errors_name_the_object_and_the_field() {
    let cases = [
        (
            example_with("key: client-secret", "key: missing"),
            "spec.oidc.clientSecretRef",
            "no key",
        ),
        (
            example_with(
                "https://auth.home.example/application/o/grafana/",
                "not a url",
            ),
            "spec.oidc.issuer",
            "URL",
        ),
        (
            example_with(
                "{ name: torhaus-session, key: key }",
                "{ name: short, key: key }",
            ),
            "spec.session.keySecretRefs[0]",
            "32 bytes",
        ),
        (
            example_with("algorithms: [RS256]", "algorithms: [HS256]"),
            "spec.jwt.issuers[0].algorithms[0]",
            "public-key",
        ),
        (
            example_with(
                "idTokenSigningAlgorithms: [RS256]",
                "idTokenSigningAlgorithms: [RS256, HS256]",
            ),
            "spec.oidc.idTokenSigningAlgorithms",
            "mix",
        ),
        (
            example_with(
                "idTokenSigningAlgorithms: [RS256]",
                "idTokenSigningAlgorithms: [none]",
            ),
            "spec.oidc.idTokenSigningAlgorithms[0]",
            "unsupported",
        ),
        (
            example_with(
                "idTokenSigningAlgorithms: [RS256]",
                "idTokenSigningAlgorithms: [HS256]",
            ),
            "spec.oidc.clientSecretRef",
            "32 bytes",
        ),
        (
            example_with("preset: authentik", "preset: traefik"),
            "spec.identityHeaders.preset",
            "traefik",
        ),
        (
            example_with("name: X-Department", "name: Authorization"),
            "spec.identityHeaders.custom[0].name",
            "may not",
        ),
        (
            example_with(
                "{ type: Exact, value: /api/health }",
                "{ type: RegularExpression, value: \"(\" }",
            ),
            "spec.unauthenticatedPaths[1].value",
            "regular expression",
        ),
        (
            example_with(
                "{ type: PathPrefix, value: /public }",
                "{ type: Glob, value: /public }",
            ),
            "spec.unauthenticatedPaths[0].type",
            "Glob",
        ),
        (
            example_with(
                "kind: HTTPRoute\n      name: grafana              #",
                "kind: Service\n      name: grafana              #",
            ),
            "spec.targetRefs[0].kind",
            "Gateway or HTTPRoute",
        ),
        (
            example_with("maxAge: 24h", "maxAge: soon"),
            "spec.session.maxAge",
            "duration",
        ),
        (
            example_with("cookieDomain: home.example", "cookieDomain: localhost"),
            "spec.session.cookieDomain",
            "dot",
        ),
        (
            example_with(
                "emailDomains: [home.example]",
                "emailDomains: [\"bad domain\"]",
            ),
            "spec.authorization.emailDomains[0]",
            "domain",
        ),
        (
            example_with("audiences: [grafana]", "audiences: []"),
            "spec.jwt.issuers[0].audiences",
            "audience",
        ),
        (
            example_with(
                "logoutPath: /oauth2/sign_out",
                "logoutPath: /oauth2/callback",
            ),
            "spec.oidc",
            "differ",
        ),
        (
            example_with(
                "apiVersion: torhaus.dev/v1alpha1",
                "apiVersion: torhaus.dev/v1",
            ),
            "apiVersion",
            "v1alpha1",
        ),
    ];
    for (yaml, field, needle) in cases {
        let e = error_of(&yaml);
        assert_eq!(e.object, "monitoring/grafana-sso", "{e}");
        assert_eq!(e.field, field, "{e}");
        assert!(
            e.to_string().contains(needle),
            "{e} should mention {needle:?}"
        );
        assert!(
            e.to_string()
                .starts_with("AuthPolicy monitoring/grafana-sso: "),
            "{e}"
        );
    }
}

#[test]
fn a_policy_needs_something_to_enforce() {
    let yaml = r#"
apiVersion: torhaus.dev/v1alpha1
kind: AuthPolicy
metadata: { name: empty, namespace: apps }
spec:
  targetRefs: [{ kind: Gateway, name: gw }]
"#;
    assert_eq!(error_of(yaml).field, "spec");
    let no_session = r#"
apiVersion: torhaus.dev/v1alpha1
kind: AuthPolicy
metadata: { name: x, namespace: apps }
spec:
  targetRefs: [{ kind: Gateway, name: gw }]
  oidc: { issuer: "https://idp.test/", clientID: c, clientSecretRef: { name: grafana-oidc, key: client-secret } }
"#;
    assert_eq!(error_of(no_session).field, "spec.session");
}

fn attached(name: &str, created: &str, targets: &str) -> Arc<Policy> {
    let yaml = format!(
        r#"
apiVersion: torhaus.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: {name}, namespace: apps, creationTimestamp: "{created}" }}
spec:
  targetRefs: {targets}
  jwt: {{ issuers: [{{ issuer: "https://idp.test/", audiences: [a] }}] }}
"#
    );
    Arc::new(validate(&yaml).expect("valid"))
}

#[test]
fn precedence_rule_over_route_over_listener_over_gateway() {
    let set = PolicySet::new(vec![
        attached(
            "on-gateway",
            "2024-01-01T00:00:00Z",
            "[{ kind: Gateway, name: gw }]",
        ),
        attached(
            "on-listener",
            "2024-01-01T00:00:00Z",
            "[{ kind: Gateway, name: gw, sectionName: https }]",
        ),
        attached(
            "on-route",
            "2024-01-01T00:00:00Z",
            "[{ kind: HTTPRoute, name: app }]",
        ),
        attached(
            "on-rule",
            "2024-01-01T00:00:00Z",
            "[{ kind: HTTPRoute, name: app, sectionName: admin }]",
        ),
    ]);
    let eff = |listener: Option<&str>, route: &str, rule: Option<&str>| {
        set.effective(("apps", "gw"), listener, ("apps", route), rule)
            .map(|(l, p)| (l, p.name.clone()))
    };
    assert_eq!(
        eff(Some("https"), "app", Some("admin")),
        Some((AttachLevel::RouteRule, "on-rule".into()))
    );
    assert_eq!(
        eff(Some("https"), "app", Some("other")),
        Some((AttachLevel::Route, "on-route".into()))
    );
    assert_eq!(
        eff(Some("https"), "other", None),
        Some((AttachLevel::Listener, "on-listener".into()))
    );
    assert_eq!(
        eff(Some("http"), "other", None),
        Some((AttachLevel::Gateway, "on-gateway".into()))
    );
    // Another namespace's route is not targeted by these policies' route refs.
    assert_eq!(
        set.effective(("apps", "gw"), None, ("other-ns", "app"), Some("admin"))
            .map(|(l, _)| l),
        Some(AttachLevel::Gateway)
    );
    assert!(
        set.effective(("infra", "gw2"), None, ("infra", "x"), None)
            .is_none()
    );
}

#[test]
fn conflicts_at_one_level_go_to_the_oldest_then_the_name() {
    let set = PolicySet::new(vec![
        attached(
            "zeta",
            "2024-01-01T00:00:00Z",
            "[{ kind: HTTPRoute, name: app }]",
        ),
        attached(
            "newer",
            "2025-01-01T00:00:00Z",
            "[{ kind: HTTPRoute, name: app }]",
        ),
        attached(
            "alpha",
            "2024-01-01T00:00:00Z",
            "[{ kind: HTTPRoute, name: app }]",
        ),
    ]);
    let (_, p) = set
        .effective(("apps", "gw"), None, ("apps", "app"), None)
        .expect("a policy");
    assert_eq!(p.name, "alpha");
}

fn request<'a>(method: &'a Method, pq: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView {
        method,
        scheme: "https",
        host: "app.home.example",
        path_and_query: pq,
        headers,
    }
}

#[tokio::test]
async fn decisions_that_need_no_provider() {
    let policy = Arc::new(validate(EXAMPLE).expect("valid"));
    let auth = Authenticator::new(policy, &AuthContext::new().expect("client"));
    let none = HeaderMap::new();
    // Public paths pass without identity.
    for pq in ["/public", "/public/x.css?v=1", "/api/health"] {
        let d = auth.check(&request(&Method::GET, pq, &none));
        assert!(
            matches!(d, Decision::Allow(ref a) if a.upstream_headers.is_empty()),
            "{pq}: {d:?}"
        );
    }
    // `/publicity` is not under `/public`, `/api/health/x` is not the exact path.
    for pq in ["/publicity", "/api/health/x"] {
        assert!(
            !matches!(
                auth.check(&request(&Method::GET, pq, &none)),
                Decision::Allow(_)
            ),
            "{pq}"
        );
    }
    // No session, not a browser navigation: 401, never a redirect.
    let d = auth.check(&request(&Method::POST, "/api/dashboards", &none));
    assert!(
        matches!(d, Decision::Reply(ref r) if r.status == StatusCode::UNAUTHORIZED),
        "{d:?}"
    );
    // A browser navigation needs discovery first (network): pending, never allowed.
    let d = auth.check(&request(&Method::GET, "/", &none));
    assert!(matches!(d, Decision::Pending(_)), "{d:?}");
    // fetch() from a page (Sec-Fetch-Dest: empty) gets 401 like XHR, not a redirect.
    let mut fetch = HeaderMap::new();
    fetch.insert("sec-fetch-dest", "empty".parse().expect("value"));
    fetch.insert("accept", "*/*".parse().expect("value"));
    let d = auth.check(&request(&Method::GET, "/api/x", &fetch));
    assert!(
        matches!(d, Decision::Reply(ref r) if r.status == StatusCode::UNAUTHORIZED),
        "{d:?}"
    );
    // The back-channel endpoint only takes POST, and POST needs the body.
    let d = auth.check(&request(&Method::GET, "/oauth2/backchannel-logout", &none));
    assert!(matches!(d, Decision::Reply(ref r) if r.status == StatusCode::METHOD_NOT_ALLOWED));
    match auth.check(&request(&Method::POST, "/oauth2/backchannel-logout", &none)) {
        Decision::Pending(p) => assert!(p.needs_body()),
        other => panic!("{other:?}"),
    }
    // A garbage bearer token: 401 at once (the issuer is unknown, no fetch).
    let mut bearer = HeaderMap::new();
    bearer.insert("authorization", "Bearer not.a.jwt".parse().expect("value"));
    let d = auth.check(&request(&Method::GET, "/", &bearer));
    assert!(
        matches!(d, Decision::Reply(ref r) if r.status == StatusCode::UNAUTHORIZED),
        "{d:?}"
    );
    // Spoofable headers, including the outpost's meta headers, are all on the strip list.
    assert!(auth.strip_list().iter().any(|h| h == "x-department"));
    assert!(
        auth.policy()
            .headers
            .must_strip(&http::HeaderName::from_static("x-authentik-meta-provider"))
    );
}

#[test]
fn a_central_callback_host_under_the_cookie_domain() {
    let p = validate(&example_with(
        "    callbackPath: /oauth2/callback",
        "    redirectURL: https://login.home.example/cb",
    ))
    .expect("valid");
    let oidc = p.oidc.expect("oidc");
    assert_eq!(oidc.callback_path, "/cb");
    assert_eq!(
        oidc.redirect_url.map(|u| u.to_string()).as_deref(),
        Some("https://login.home.example/cb")
    );
}

fn sealed(session: &torhaus_policies::session::Session) -> String {
    let codec = torhaus_policies::session::CookieCodec::new(&[vec![7; 32]]);
    let chunks = torhaus_policies::session::seal_session(&codec, "torhaus_session", session, &[])
        .expect("seal");
    assert_eq!(chunks.len(), 1);
    format!("torhaus_session={}", chunks[0])
}

fn session_for(
    groups: &[&str],
    email: &str,
    department: Option<&str>,
) -> torhaus_policies::session::Session {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut claims = serde_json::Map::new();
    if let Some(d) = department {
        claims.insert("department".into(), d.into());
    }
    torhaus_policies::session::Session {
        id: torhaus_policies::session::random_token(16),
        sid: None,
        issued_at: now,
        expires_at: now + 3600,
        access_expires_at: Some(now + 600),
        refresh_token: Some("rt".into()),
        groups_truncated: false,
        identity: torhaus_policies::identity::Identity {
            sub: "u-1".into(),
            username: Some("alice".into()),
            email: Some(email.into()),
            name: Some("Alice".into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            claims,
            raw_token: None,
        },
    }
}

#[tokio::test]
async fn sessions_are_decided_from_the_cookie_alone() {
    let ctx = AuthContext::new().expect("client");
    let auth = Authenticator::new(Arc::new(validate(EXAMPLE).expect("valid")), &ctx);
    let decide = |cookie: &str, accept: Option<&str>| {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, cookie.parse().expect("cookie"));
        if let Some(a) = accept {
            h.insert(http::header::ACCEPT, a.parse().expect("accept"));
        }
        let req = RequestView {
            method: &Method::GET,
            scheme: "https",
            host: "app.home.example",
            path_and_query: "/",
            headers: &h,
        };
        auth.check(&req)
    };
    let mut good = session_for(&["admins"], "alice@home.example", Some("ops"));
    good.sid = Some("op-session".into());
    match decide(&sealed(&good), None) {
        Decision::Allow(a) => {
            let get = |n: &str| {
                a.upstream_headers
                    .iter()
                    .find(|(k, _)| k == n)
                    .and_then(|(_, v)| v.to_str().ok())
            };
            assert_eq!(get("x-authentik-username"), Some("alice"));
            assert_eq!(get("x-department"), Some("ops"));
            let handle = a.session.as_ref().expect("handle");
            assert!(auth.session_active(handle));
            // Revocation by the provider's session id (back-channel logout) ends it, lock-free.
            ctx.revocations.revoke(
                torhaus_policies::revocation::Revoked::ProviderSession("op-session".into()),
                60,
            );
            assert!(!auth.session_active(handle));
        }
        other => panic!("{other:?}"),
    }
    // Revoked: a login again (pending discovery here), never Allow; JSON clients get 401.
    assert!(matches!(decide(&sealed(&good), None), Decision::Pending(_)));
    let r = match decide(&sealed(&good), Some("application/json")) {
        Decision::Reply(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "set-cookie" && v.to_str().is_ok_and(|v| v.contains("Max-Age=0")))
    );

    // Rules: wrong group, wrong domain, missing claim -> 403 page.
    for s in [
        session_for(&["users"], "bob@home.example", Some("ops")),
        session_for(&["admins"], "bob@elsewhere.example", Some("ops")),
        session_for(&["admins"], "bob@home.example", None),
    ] {
        match decide(&sealed(&s), None) {
            Decision::Reply(r) => assert_eq!(r.status, StatusCode::FORBIDDEN),
            other => panic!("{other:?}"),
        }
    }
    // Expired session; access token expired without refresh token; refresh due.
    let mut expired = session_for(&["admins"], "a@home.example", Some("ops"));
    expired.expires_at = 1;
    assert!(
        matches!(decide(&sealed(&expired), Some("application/json")), Decision::Reply(r) if r.status == StatusCode::UNAUTHORIZED)
    );
    let mut no_rt = session_for(&["admins"], "a@home.example", Some("ops"));
    no_rt.refresh_token = None;
    no_rt.access_expires_at = Some(1);
    assert!(
        matches!(decide(&sealed(&no_rt), Some("application/json")), Decision::Reply(r) if r.status == StatusCode::UNAUTHORIZED)
    );
    let mut due = session_for(&["admins"], "a@home.example", Some("ops"));
    due.access_expires_at = due.access_expires_at.map(|_| due.issued_at + 30);
    assert!(
        matches!(
            decide(&sealed(&due), Some("application/json")),
            Decision::Pending(_)
        ),
        "refresh within 60 s of expiry"
    );
}
