//! `AuthPolicy` in translation: which policy is in force on each rule of each attachment
//! (rule > route > listener > gateway, older wins a tie), and each policy's Accepted condition
//! (Accepted, Invalid naming the field, TargetNotFound, Conflicted).

#[path = "support/manifests.rs"]
mod manifests;

use manifests::objects;
use torhaus_k8s::{ConditionStatus, ObjectKind, TranslateOptions, Translation, translate};

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: torhaus}
spec: {controllerName: torhaus.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: apps}
spec:
  gatewayClassName: torhaus
  listeners:
    - {name: public, port: 80, protocol: HTTP, hostname: "*.example.com"}
    - {name: internal, port: 8080, protocol: HTTP, hostname: "*.example.com"}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec: {ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: apps}
spec:
  parentRefs: [{name: edge}]
  hostnames: [app.example.com]
  rules:
    - name: main
      backendRefs: [{name: web, port: 80}]
    - name: admin
      matches: [{path: {type: PathPrefix, value: /admin}}]
      backendRefs: [{name: web, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other, namespace: apps}
spec:
  parentRefs: [{name: edge, sectionName: public}]
  hostnames: [other.example.com]
  rules:
    - backendRefs: [{name: web, port: 80}]
"#;

/// A valid policy (bearer JWTs only: no Secrets needed) with the given targets.
fn policy(name: &str, created: &str, targets: &str) -> String {
    format!(
        r#"apiVersion: torhaus.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: {name}, namespace: apps, creationTimestamp: "{created}"}}
spec:
  targetRefs: {targets}
  jwt:
    issuers: [{{issuer: "https://idp.example.com/", audiences: [app]}}]
"#
    )
}

fn run(extra: &[String]) -> Translation {
    let mut documents = vec![BASE];
    documents.extend(extra.iter().map(String::as_str));
    translate(&objects(&documents), &TranslateOptions::default())
}

/// The policy in force on rule `rule` of route `route` as attached to listener port `port`.
fn in_force(translation: &Translation, port: u16, route: &str, rule: usize) -> Option<String> {
    let port = translation.config.port(port)?;
    port.listeners
        .iter()
        .flat_map(|l| &l.routes)
        .find(|a| a.route.id.name == route)
        .and_then(|a| a.auth_of(rule))
        .map(ToString::to_string)
}

fn accepted(translation: &Translation, name: &str) -> (ConditionStatus, String, String) {
    let status = translation
        .report
        .object(ObjectKind::AuthPolicy, "apps", name)
        .unwrap_or_else(|| panic!("no status for AuthPolicy {name}"));
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .unwrap_or_else(|| panic!("no Accepted condition for {name}"));
    (
        condition.status,
        condition.reason.clone(),
        condition.message.clone(),
    )
}

#[test]
fn the_most_specific_attachment_wins_per_rule_and_per_listener() {
    let t = run(&[
        policy(
            "gw",
            "2026-01-01T00:00:00Z",
            "[{kind: Gateway, name: edge}]",
        ),
        policy(
            "internal-only",
            "2026-01-01T00:00:00Z",
            "[{kind: Gateway, name: edge, sectionName: internal}]",
        ),
        policy(
            "route",
            "2026-01-01T00:00:00Z",
            "[{kind: HTTPRoute, name: app}]",
        ),
        policy(
            "admin-rule",
            "2026-01-01T00:00:00Z",
            "[{kind: HTTPRoute, name: app, sectionName: admin}]",
        ),
    ]);
    // The route policy beats both Gateway-level ones; the rule policy beats the route's.
    assert_eq!(in_force(&t, 80, "app", 0).as_deref(), Some("apps/route"));
    assert_eq!(
        in_force(&t, 80, "app", 1).as_deref(),
        Some("apps/admin-rule")
    );
    assert_eq!(in_force(&t, 8080, "app", 0).as_deref(), Some("apps/route"));
    // A route with no policy of its own: the Gateway's policy, on the listener it uses.
    assert_eq!(in_force(&t, 80, "other", 0).as_deref(), Some("apps/gw"));
    let mut names: Vec<String> = t.policies.iter().map(|p| p.key()).collect();
    names.sort();
    assert_eq!(names, ["apps/admin-rule", "apps/gw", "apps/route"]);
    // The listener policy is in force nowhere: its only listener carries only `app`, which
    // has its own policy.
    let (status, reason, message) = accepted(&t, "internal-only");
    assert_eq!(status, ConditionStatus::True);
    assert_eq!(reason, "Accepted");
    assert!(message.contains("in force nowhere"), "{message}");
    let (_, _, message) = accepted(&t, "admin-rule");
    assert!(
        message.contains("HTTPRoute apps/app rule admin on listener apps/edge/public"),
        "{message}"
    );
    // And `torhaus check` shows it.
    let printed = t.report.to_string();
    assert!(
        printed.contains("auth AuthPolicy apps/admin-rule"),
        "{printed}"
    );
}

#[test]
fn a_listener_policy_covers_only_routes_on_that_listener() {
    let t = run(&[policy(
        "internal-only",
        "2026-01-01T00:00:00Z",
        "[{kind: Gateway, name: edge, sectionName: internal}]",
    )]);
    assert_eq!(in_force(&t, 80, "app", 0), None);
    assert_eq!(
        in_force(&t, 8080, "app", 0).as_deref(),
        Some("apps/internal-only")
    );
    assert_eq!(in_force(&t, 80, "other", 0), None);
}

#[test]
fn the_older_policy_wins_a_tie_and_the_newer_is_conflicted() {
    let t = run(&[
        policy(
            "newer",
            "2026-02-01T00:00:00Z",
            "[{kind: HTTPRoute, name: app}]",
        ),
        policy(
            "older",
            "2026-01-01T00:00:00Z",
            "[{kind: HTTPRoute, name: app}]",
        ),
    ]);
    assert_eq!(in_force(&t, 80, "app", 0).as_deref(), Some("apps/older"));
    let (status, reason, message) = accepted(&t, "newer");
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "Conflicted")
    );
    assert!(message.contains("apps/older"), "{message}");
    assert_eq!(accepted(&t, "older").0, ConditionStatus::True);
}

#[test]
fn an_invalid_policy_names_the_field_and_the_rule_falls_back() {
    let invalid = policy(
        "rule",
        "2026-01-01T00:00:00Z",
        "[{kind: HTTPRoute, name: app, sectionName: admin}]",
    )
    .replace("audiences: [app]", "audiences: [app], algorithms: [HS256]");
    let missing_secret = r#"apiVersion: torhaus.dev/v1alpha1
kind: AuthPolicy
metadata: {name: sso, namespace: apps}
spec:
  targetRefs: [{kind: HTTPRoute, name: other}]
  oidc:
    issuer: "https://idp.example.com/"
    clientID: app
    clientSecretRef: {name: oidc, key: secret}
  session:
    keySecretRefs: [{name: session, key: key}]
"#
    .to_owned();
    let t = run(&[
        policy(
            "route",
            "2026-01-01T00:00:00Z",
            "[{kind: HTTPRoute, name: app}]",
        ),
        invalid,
        missing_secret,
    ]);
    let (status, reason, message) = accepted(&t, "rule");
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "Invalid")
    );
    assert!(
        message.contains("apps/rule") && message.contains("spec.jwt.issuers[0].algorithms[0]"),
        "{message}"
    );
    // The admin rule falls back to the route's policy rather than to no policy at all.
    assert_eq!(in_force(&t, 80, "app", 1).as_deref(), Some("apps/route"));
    let (status, reason, message) = accepted(&t, "sso");
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "Invalid")
    );
    assert!(
        message.contains("spec.session.keySecretRefs[0]")
            && message.contains("Secret apps/session has no key \"key\""),
        "{message}"
    );
    assert_eq!(in_force(&t, 80, "other", 0), None);
}

#[test]
fn a_policy_whose_targets_do_not_exist_is_not_accepted() {
    let t = run(&[policy(
        "lost",
        "2026-01-01T00:00:00Z",
        "[{kind: HTTPRoute, name: gone}, {kind: HTTPRoute, name: app, sectionName: nope}]",
    )]);
    let (status, reason, message) = accepted(&t, "lost");
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "TargetNotFound")
    );
    assert!(
        message.contains("HTTPRoute \"gone\"") && message.contains("rule \"nope\""),
        "{message}"
    );
    assert!(t.policies.is_empty());
}

#[test]
fn unknown_fields_are_rejected_with_the_file_named() {
    let text = policy(
        "typo",
        "2026-01-01T00:00:00Z",
        "[{kind: HTTPRoute, name: app}]",
    )
    .replace("  jwt:", "  jwtt:\n    x: 1\n  jwt:");
    let (objects, problems) =
        torhaus_k8s::parse_manifests(&text, std::path::Path::new("policies.yaml"));
    assert!(objects.is_empty());
    let message = problems
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        message.contains("policies.yaml")
            && message.contains("AuthPolicy")
            && message.contains("jwtt"),
        "{message}"
    );
}
