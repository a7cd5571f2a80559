//! Translation of the ACME opt-in: issuer annotations on Gateways, managed Secrets merged per
//! Secret, Issuer/ClusterIssuer parsing with errors naming file, object and field, and listeners
//! that serve from the local CA while their certificate is pending.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

#[path = "support/manifests.rs"]
mod manifests;

use std::path::Path;

use manifests::objects;
use torhaus_k8s::{ObjectKind, Severity, TranslateOptions, describe_certificates, translate};
use torhaus_model::{IssuerKind, ObjectName};

const CLASS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: torhaus}
spec: {controllerName: torhaus.dev/gateway-controller}
"#;

const ISSUER: &str = r#"
apiVersion: torhaus.dev/v1alpha1
kind: Issuer
metadata: {name: knot, namespace: apps}
spec:
  acme:
    server: https://localhost:14000/dir
    email: admin@example.test
    privateKeySecretRef: {name: acme-account}
    dns01:
      rfc2136:
        nameserver: 127.0.0.1:5353
        tsigKeyName: torhaus
        tsigSecretRef: {name: tsig, key: secret}
"#;

const TSIG_SECRET: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: tsig, namespace: apps}
stringData: {secret: "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}
"#;

fn gateway(annotations: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: apps
  annotations: {{{annotations}}}
spec:
  gatewayClassName: torhaus
  listeners:
    - name: apex
      port: 443
      protocol: HTTPS
      hostname: example.test
      tls: {{certificateRefs: [{{name: example-tls}}]}}
    - name: wildcard
      port: 443
      protocol: HTTPS
      hostname: "*.example.test"
      tls: {{certificateRefs: [{{name: example-tls}}]}}
    - name: other
      port: 443
      protocol: HTTPS
      hostname: other.test
      tls: {{certificateRefs: [{{name: other-tls}}]}}
    - name: plain
      port: 80
      protocol: HTTP
"#
    )
}

#[test]
fn issuer_annotation_manages_secrets_and_merges_apex_and_wildcard() {
    let gw = gateway("torhaus.dev/issuer: knot");
    let objects = objects(&[CLASS, ISSUER, TSIG_SECRET, &gw]);
    let translation = translate(&objects, &TranslateOptions::default());

    assert_eq!(translation.certificates.len(), 2);
    let example = &translation.certificates[0];
    assert_eq!(example.secret, ObjectName::new("apps", "example-tls"));
    assert_eq!(example.dns_names, vec!["*.example.test", "example.test"]);
    assert_eq!(example.issuer.kind, IssuerKind::Issuer);
    assert_eq!(example.issuer.name, ObjectName::new("apps", "knot"));
    let sections: Vec<&str> = example
        .listeners
        .iter()
        .map(|l| l.section.as_str())
        .collect();
    assert_eq!(sections, vec!["apex", "wildcard"]);
    assert_eq!(translation.certificates[1].dns_names, vec!["other.test"]);

    // The issuer is resolved with its TSIG secret bytes.
    assert_eq!(translation.issuers.len(), 1);
    let issuer = &translation.issuers[0];
    assert_eq!(issuer.id, example.issuer);
    use torhaus_dns::SecretSource as _;
    let tsig = issuer
        .secrets
        .secret(&torhaus_dns::SecretKeyRef {
            name: "tsig".into(),
            key: "secret".into(),
        })
        .expect("tsig resolved");
    assert_eq!(tsig, b"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0");
    let status = translation
        .report
        .object(ObjectKind::Issuer, "apps", "knot")
        .expect("issuer status");
    assert_eq!(status.conditions[0].type_, "Ready");
    assert_eq!(status.conditions[0].status.to_string(), "True");
}

#[test]
fn pending_certificate_keeps_the_listener_valid_and_says_so() {
    let gw = gateway("torhaus.dev/issuer: knot");
    let objects = objects(&[CLASS, ISSUER, TSIG_SECRET, &gw]);
    let translation = translate(&objects, &TranslateOptions::default());
    let gateway = translation
        .report
        .object(ObjectKind::Gateway, "apps", "edge")
        .expect("gateway status");
    for listener in ["apex", "wildcard", "other"] {
        let status = gateway.listener(listener).expect("listener status");
        for condition in &status.conditions {
            assert!(
                !condition.is_problem(),
                "{listener}: {condition} should not be a problem"
            );
        }
        let resolved = status
            .conditions
            .iter()
            .find(|c| c.type_ == "ResolvedRefs")
            .expect("ResolvedRefs");
        assert!(
            resolved.message.contains("certificate pending")
                && resolved.message.contains("apps/example-tls")
                || resolved.message.contains("apps/other-tls"),
            "{resolved}"
        );
    }
    // Served, with no certificate yet: the local CA answers.
    let https = translation
        .config
        .ports
        .iter()
        .find(|p| p.port == 443)
        .expect("port 443 served");
    assert_eq!(https.listeners.len(), 3);
    assert!(
        https
            .listeners
            .iter()
            .all(|l| l.tls.as_ref().is_some_and(|t| t.certificates.is_empty()))
    );
    let lines = describe_certificates(
        &translation.certificates,
        &translation.issuers,
        &translation.config,
    );
    assert_eq!(lines.len(), 2);
    assert!(lines[0].contains("apps/example-tls"), "{}", lines[0]);
    assert!(lines[0].contains("Issuer apps/knot"), "{}", lines[0]);
    assert!(
        lines[0].contains("*.example.test, example.test"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("pending"), "{}", lines[0]);
}

#[test]
fn without_annotation_a_missing_secret_stays_unresolved() {
    let gw = gateway("");
    let objects = objects(&[CLASS, ISSUER, TSIG_SECRET, &gw]);
    let translation = translate(&objects, &TranslateOptions::default());
    assert!(translation.certificates.is_empty());
    let gateway = translation
        .report
        .object(ObjectKind::Gateway, "apps", "edge")
        .expect("gateway status");
    let apex = gateway.listener("apex").expect("listener");
    assert!(
        apex.conditions.iter().any(|c| c.type_ == "ResolvedRefs"
            && c.is_problem()
            && c.message.contains("not found"))
    );
}

#[test]
fn cert_manager_annotations_are_accepted() {
    let cluster_issuer = ISSUER
        .replace("kind: Issuer", "kind: ClusterIssuer")
        .replace("{name: knot, namespace: apps}", "{name: le}");
    let tsig = TSIG_SECRET.replace("namespace: apps", "namespace: torhaus-system");
    let gw = gateway("cert-manager.io/cluster-issuer: le");
    let objects = objects(&[CLASS, &cluster_issuer, &tsig, &gw]);
    let translation = translate(&objects, &TranslateOptions::default());
    assert_eq!(translation.certificates.len(), 2);
    let issuer = &translation.certificates[0].issuer;
    assert_eq!(issuer.kind, IssuerKind::ClusterIssuer);
    assert_eq!(issuer.name, ObjectName::new("", "le"));
    assert_eq!(translation.issuers[0].id, *issuer);
    let status = translation
        .report
        .object(ObjectKind::ClusterIssuer, "", "le")
        .expect("cluster issuer status");
    assert_eq!(status.conditions[0].status.to_string(), "True");

    let gw = gateway("cert-manager.io/issuer: knot");
    let objects = manifests::objects(&[CLASS, ISSUER, TSIG_SECRET, &gw]);
    let translation = translate(&objects, &TranslateOptions::default());
    assert_eq!(translation.certificates[0].issuer.kind, IssuerKind::Issuer);
}

#[test]
fn disagreeing_annotations_warn_and_torhaus_wins() {
    let gw = gateway("torhaus.dev/issuer: knot, cert-manager.io/cluster-issuer: le");
    let objects = objects(&[CLASS, ISSUER, TSIG_SECRET, &gw]);
    let translation = translate(&objects, &TranslateOptions::default());
    assert_eq!(translation.certificates[0].issuer.kind, IssuerKind::Issuer);
    assert!(
        translation
            .report
            .problems
            .iter()
            .any(|p| p.severity == Severity::Warning
                && p.message.contains("cert-manager.io/cluster-issuer")
                && p.message.contains("torhaus.dev/issuer"))
    );
}

#[test]
fn missing_issuer_and_missing_issuer_secret_are_reported() {
    let gw = gateway("torhaus.dev/issuer: nowhere");
    let objects = objects(&[CLASS, ISSUER, &gw]);
    let translation = translate(&objects, &TranslateOptions::default());
    assert!(translation.report.problems.iter().any(|p| {
        p.message
            .contains("Issuer apps/nowhere, which does not exist")
    }));
    let status = translation
        .report
        .object(ObjectKind::Issuer, "apps", "knot")
        .expect("issuer status");
    assert_eq!(status.conditions[0].status.to_string(), "False");
    assert!(
        status.conditions[0]
            .message
            .contains("Secret apps/tsig not found"),
        "{}",
        status.conditions[0]
    );
    let lines = describe_certificates(
        &translation.certificates,
        &translation.issuers,
        &translation.config,
    );
    assert!(lines[0].contains("(not found)"), "{}", lines[0]);
}

#[test]
fn issued_secret_is_served_and_described() {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["example.test".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: example-tls, namespace: apps}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent(&cert.pem()),
        indent(&key.serialize_pem())
    );
    let gw = gateway("torhaus.dev/issuer: knot");
    let objects = objects(&[CLASS, ISSUER, TSIG_SECRET, &gw, &secret]);
    let translation = translate(&objects, &TranslateOptions::default());
    let lines = describe_certificates(
        &translation.certificates,
        &translation.issuers,
        &translation.config,
    );
    assert!(lines[0].contains("issued, notAfter"), "{}", lines[0]);
    assert!(
        lines[0].contains("reorder pending for *.example.test"),
        "{}",
        lines[0]
    );
}

fn indent(pem: &str) -> String {
    pem.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn issuer_errors_name_file_object_and_field() {
    let bad = ISSUER.replace("tsigKeyName: torhaus", "tsigKeyNam: torhaus");
    let (objects, problems) = torhaus_k8s::parse_manifests(&bad, Path::new("issuers.yaml"));
    assert!(objects.is_empty());
    let message = problems[0].to_string();
    assert!(message.contains("issuers.yaml"), "{message}");
    assert!(message.contains("Issuer \"knot\""), "{message}");
    assert!(message.contains("spec.acme.dns01.rfc2136"), "{message}");
    assert!(message.contains("tsigKeyNam"), "{message}");

    let no_server = ISSUER.replace("    server: https://localhost:14000/dir\n", "");
    let (_, problems) = torhaus_k8s::parse_manifests(&no_server, Path::new("issuers.yaml"));
    let message = problems[0].to_string();
    assert!(message.contains("spec.acme"), "{message}");
    assert!(message.contains("server"), "{message}");
}

#[test]
fn listener_without_hostname_is_not_managed_and_says_why() {
    let gw = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: apps
  annotations: {torhaus.dev/issuer: knot}
spec:
  gatewayClassName: torhaus
  listeners:
    - name: any
      port: 443
      protocol: HTTPS
      tls: {certificateRefs: [{name: any-tls}]}
"#;
    let objects = objects(&[CLASS, ISSUER, TSIG_SECRET, gw]);
    let translation = translate(&objects, &TranslateOptions::default());
    assert!(translation.certificates.is_empty());
    let gateway = translation
        .report
        .object(ObjectKind::Gateway, "apps", "edge")
        .expect("gateway status");
    let listener = gateway.listener("any").expect("listener");
    assert!(
        listener
            .conditions
            .iter()
            .any(|c| c.message.contains("no hostname")),
        "{:?}",
        listener.conditions
    );
}

#[test]
fn a_secret_claimed_by_two_issuers_keeps_the_first() {
    let second_gateway = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: second
  namespace: apps
  annotations: {torhaus.dev/cluster-issuer: other}
spec:
  gatewayClassName: torhaus
  listeners:
    - name: again
      port: 8443
      protocol: HTTPS
      hostname: again.example.test
      tls: {certificateRefs: [{name: example-tls}]}
"#;
    let gw = gateway("torhaus.dev/issuer: knot");
    let objects = objects(&[CLASS, ISSUER, TSIG_SECRET, &gw, second_gateway]);
    let translation = translate(&objects, &TranslateOptions::default());
    let example = translation
        .certificates
        .iter()
        .find(|c| c.secret == ObjectName::new("apps", "example-tls"))
        .expect("example-tls managed");
    assert_eq!(example.issuer.kind, IssuerKind::Issuer);
    assert!(!example.dns_names.contains(&"again.example.test".to_owned()));
    assert!(translation.report.problems.iter().any(|p| {
        p.severity == Severity::Error
            && p.message
                .contains("Secret apps/example-tls is managed by Issuer apps/knot")
            && p.message.contains("ClusterIssuer other")
    }));
}

#[test]
fn cluster_issuers_read_their_secrets_in_the_configured_namespace() {
    let cluster_issuer = ISSUER
        .replace("kind: Issuer", "kind: ClusterIssuer")
        .replace("{name: knot, namespace: apps}", "{name: le}");
    let tsig_in = |namespace: &str| {
        TSIG_SECRET.replace("namespace: apps", &format!("namespace: {namespace}"))
    };
    let gw = gateway("torhaus.dev/cluster-issuer: le");
    let options = TranslateOptions {
        cluster_resource_namespace: "torhaus".to_owned(),
        ..TranslateOptions::default()
    };
    let ready = |tsig: &str| {
        let translation = translate(&objects(&[CLASS, &cluster_issuer, tsig, &gw]), &options);
        let status = translation
            .report
            .object(ObjectKind::ClusterIssuer, "", "le")
            .expect("cluster issuer status")
            .conditions[0]
            .clone();
        (
            status.status.to_string(),
            status.message,
            translation.issuers,
        )
    };
    // The default namespace's Secret is not the configured one's.
    let (status, message, _) = ready(&tsig_in("torhaus-system"));
    assert_eq!(status, "False");
    assert!(message.contains("torhaus/tsig"), "{message}");
    let (status, _, issuers) = ready(&tsig_in("torhaus"));
    assert_eq!(status, "True");
    // The account Secret lives there too.
    assert_eq!(issuers[0].secret_namespace, "torhaus");
}
