//! Translation of `DNSPublisher` objects: which hostnames a publisher publishes (those the
//! programmed listeners of its Gateways serve through accepted routes, wildcards included),
//! with which addresses, within which zones; its `Ready` condition; and errors that name the
//! file, the object and the field.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

#[path = "support/manifests.rs"]
mod manifests;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use manifests::objects;
use torhaus_dns::publisher::Publisher;
use torhaus_k8s::{
    ConditionStatus, GatewayAddress, ObjectKind, TranslateOptions, Translation,
    describe_publishers, translate,
};

const CLASS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: torhaus}
spec: {controllerName: torhaus.dev/gateway-controller}
"#;

/// Two Gateways in `edge`: `public` (labelled `dns: public`) with an exact and a wildcard
/// listener plus a catch-all one, and `internal` with its own listener.
const GATEWAYS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: edge, labels: {dns: public}}
spec:
  gatewayClassName: torhaus
  listeners:
    - {name: apex, port: 80, protocol: HTTP, hostname: example.test, allowedRoutes: {namespaces: {from: All}}}
    - {name: apps, port: 80, protocol: HTTP, hostname: "*.apps.example.test", allowedRoutes: {namespaces: {from: All}}}
    - {name: any, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: internal, namespace: edge}
spec:
  gatewayClassName: torhaus
  listeners:
    - {name: lan, port: 80, protocol: HTTP, hostname: "*.lan.example.test", allowedRoutes: {namespaces: {from: All}}}
"#;

const TSIG_SECRET: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: tsig, namespace: edge}
stringData: {secret: "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}
"#;

fn route(name: &str, namespace: &str, parent: &str, hostnames: &[&str]) -> String {
    let hostnames: Vec<String> = hostnames.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  parentRefs: [{{name: {parent}, namespace: edge}}]
  hostnames: [{}]
  rules: [{{backendRefs: [{{name: app, port: 80}}]}}]
"#,
        hostnames.join(", ")
    )
}

fn publisher(name: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: torhaus.dev/v1alpha1
kind: DNSPublisher
metadata: {{name: {name}, namespace: edge}}
spec:
{extra}  provider:
    rfc2136:
      nameserver: 127.0.0.1:5353
      tsigKeyName: torhaus
      tsigSecretRef: {{name: tsig, key: secret}}
"#
    )
}

fn run(documents: &[&str], addresses: &[&str]) -> Translation {
    let options = TranslateOptions {
        addresses: addresses.iter().map(|a| GatewayAddress::parse(a)).collect(),
        ..TranslateOptions::default()
    };
    translate(&objects(documents), &options)
}

fn find<'a>(translation: &'a Translation, id: &str) -> &'a Publisher {
    translation
        .publishers
        .iter()
        .find(|p| p.id == id)
        .unwrap_or_else(|| panic!("no publisher {id}: {:?}", translation.publishers))
}

fn hosts(publisher: &Publisher) -> Vec<&str> {
    publisher.desired.keys().map(String::as_str).collect()
}

fn ips(text: &[&str]) -> Vec<IpAddr> {
    text.iter().filter_map(|t| t.parse().ok()).collect()
}

fn ready(translation: &Translation, name: &str) -> (ConditionStatus, String, String) {
    let condition = translation
        .report
        .object(ObjectKind::DnsPublisher, "edge", name)
        .and_then(|o| o.condition("Ready"))
        .expect("a Ready condition");
    (
        condition.status,
        condition.reason.clone(),
        condition.message.clone(),
    )
}

#[test]
fn served_hostnames_are_the_route_and_listener_intersections() {
    let wildcard_route = route("all-apps", "apps", "public", &[]);
    let catch_all = route("shop", "shop", "public", &["shop.example.test"]);
    let lan = route("nas", "apps", "internal", &["nas.lan.example.test"]);
    let documents = [
        CLASS,
        GATEWAYS,
        TSIG_SECRET,
        // `x.apps` narrows the wildcard listener; the apex listener takes none of it.
        &route(
            "x",
            "apps",
            "public",
            &["x.apps.example.test", "other.test"],
        ),
        &wildcard_route,
        &catch_all,
        &lan,
        &publisher("all", ""),
    ];
    let translation = run(
        &documents,
        &["192.0.2.10", "2001:db8::10", "lb.example.test"],
    );
    let all = find(&translation, "edge/all");
    assert_eq!(
        hosts(all),
        [
            // The route without hostnames on the wildcard listener publishes the wildcard;
            // on the apex listener, the apex. `other.test` intersects no listener hostname but
            // the catch-all one, where it is served and so published.
            "*.apps.example.test",
            "example.test",
            "nas.lan.example.test",
            "other.test",
            "shop.example.test",
            "x.apps.example.test",
        ]
    );
    // The gateway's IP addresses; a Hostname address cannot be an A record.
    assert_eq!(
        all.desired["example.test"],
        ips(&["192.0.2.10", "2001:db8::10"])
    );
    let config = all.config.as_ref().expect("valid");
    assert_eq!((config.owner.as_str(), config.ttl), ("torhaus", 300));
    let (status, reason, message) = ready(&translation, "all");
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::True, "Configured")
    );
    assert!(message.contains("publishing 6 hostname(s)"), "{message}");
    assert!(
        !translation
            .report
            .problems
            .iter()
            .any(|p| p.message.contains("DNSPublisher")),
        "{:?}",
        translation.report.problems
    );
}

#[test]
fn selector_zones_addresses_and_owner_narrow_what_is_published() {
    let documents = [
        CLASS,
        GATEWAYS,
        TSIG_SECRET,
        &route("a", "apps", "public", &["a.apps.example.test"]),
        &route("nas", "apps", "internal", &["nas.lan.example.test"]),
        &route("far", "apps", "public", &["far.other.test"]),
        &publisher(
            "public",
            "  gatewaySelector: {matchLabels: {dns: public}}\n  zones: [example.test]\n  \
             addresses: [198.51.100.7]\n  ownerId: home-1\n  ttl: 60\n",
        ),
    ];
    let translation = run(&documents, &["192.0.2.10"]);
    let public = find(&translation, "edge/public");
    assert_eq!(hosts(public), ["a.apps.example.test"]);
    assert_eq!(
        public.desired["a.apps.example.test"],
        ips(&["198.51.100.7"])
    );
    let config = public.config.as_ref().expect("valid");
    assert_eq!(
        (config.owner.as_str(), config.ttl, config.zones.as_slice()),
        ("home-1", 60, ["example.test".to_owned()].as_slice())
    );
    let (_, _, message) = ready(&translation, "public");
    assert!(
        message.contains("outside spec.zones, not published: far.other.test"),
        "{message}"
    );
    let lines = describe_publishers(&translation.publishers);
    assert_eq!(
        lines,
        [
            "dns publisher edge/public: rfc2136 127.0.0.1:5353 as owner \"home-1\", ttl 60s, 1 hostname(s), zones [example.test]",
            "  a.apps.example.test -> 198.51.100.7",
        ]
    );
}

#[test]
fn only_accepted_routes_and_programmed_listeners_count() {
    let not_ours = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: foreign, namespace: edge}
spec:
  gatewayClassName: someone-else
  listeners: [{name: web, port: 80, protocol: HTTP}]
"#;
    let conflicting = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: zz-late, namespace: edge, creationTimestamp: "2030-01-01T00:00:00Z"}
spec:
  gatewayClassName: torhaus
  listeners: [{name: dup, port: 80, protocol: HTTP, hostname: example.test}]
"#;
    let documents = [
        CLASS,
        GATEWAYS,
        TSIG_SECRET,
        not_ours,
        conflicting,
        // Not allowed (same-namespace default on zz-late), not matching any listener hostname,
        // attached to a Gateway of another class, attached to a conflicted listener.
        &route("nomatch", "apps", "internal", &["nas.elsewhere.test"]),
        &route("foreign", "edge", "foreign", &["foreign.example.test"]),
        &route("late", "edge", "zz-late", &["example.test"]),
        &publisher("all", ""),
    ];
    let translation = run(&documents, &["192.0.2.10"]);
    let all = find(&translation, "edge/all");
    assert!(all.desired.is_empty(), "{:?}", all.desired);
}

#[test]
fn invalid_publishers_are_reported_and_hand_over_no_settings() {
    let documents = [
        CLASS,
        GATEWAYS,
        &route("a", "apps", "public", &["a.apps.example.test"]),
        // No addresses anywhere, a bad TTL, no Secret, and a second writer with the same
        // provider and owner.
        &publisher("no-addresses", ""),
    ];
    let translation = run(&documents, &[]);
    let (status, reason, message) = ready(&translation, "no-addresses");
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "NoAddresses")
    );
    assert!(message.contains("spec.addresses"), "{message}");
    assert!(find(&translation, "edge/no-addresses").config.is_err());
    assert!(translation.report.rejected());

    let documents = [
        CLASS,
        GATEWAYS,
        &route("a", "apps", "public", &["a.apps.example.test"]),
        &publisher("bad-ttl", "  ttl: 5\n"),
        &publisher("first", ""),
        &publisher("second", ""),
    ];
    let translation = run(&documents, &["192.0.2.10"]);
    let (_, reason, message) = ready(&translation, "bad-ttl");
    assert_eq!(reason, "InvalidSpec");
    assert!(message.starts_with("spec.ttl"), "{message}");
    let problem = translation
        .report
        .problems
        .iter()
        .map(ToString::to_string)
        .find(|p| p.contains("edge/bad-ttl"))
        .expect("a problem");
    assert!(problem.contains("inline-3.yaml"), "{problem}");
    // A missing Secret keeps the settings (the loop keeps its last good credentials) but is
    // not Ready; the second writer with the same provider and owner is refused.
    let (status, reason, message) = ready(&translation, "first");
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, "SecretMissing")
    );
    assert!(message.contains("Secret edge/tsig not found"), "{message}");
    assert!(find(&translation, "edge/first").config.is_ok());
    assert_eq!(
        hosts(find(&translation, "edge/first")),
        ["a.apps.example.test"]
    );
    let (_, reason, message) = ready(&translation, "second");
    assert_eq!(reason, "Conflicted");
    assert!(message.contains("DNSPublisher edge/first"), "{message}");
    assert!(find(&translation, "edge/second").config.is_err());
}

#[test]
fn parse_errors_name_file_object_and_field() {
    let typo = publisher("typo", "  adresses: [192.0.2.1]\n");
    let (objects, problems) = torhaus_k8s::parse_manifests(&typo, Path::new("dns.yaml"));
    assert!(objects.is_empty());
    let message = problems[0].to_string();
    for part in ["dns.yaml", "DNSPublisher \"typo\"", "spec", "adresses"] {
        assert!(message.contains(part), "{part}: {message}");
    }
    let bad_provider = publisher("bad", "").replace("tsigKeyName", "tsigKeyNam");
    let (_, problems) = torhaus_k8s::parse_manifests(&bad_provider, Path::new("dns.yaml"));
    let message = problems[0].to_string();
    assert!(message.contains("spec.provider.rfc2136"), "{message}");
    let bad_address = publisher("ip", "  addresses: [192.0.2.300]\n");
    let (_, problems) = torhaus_k8s::parse_manifests(&bad_address, Path::new("dns.yaml"));
    let message = problems[0].to_string();
    assert!(message.contains("spec.addresses[0]"), "{message}");
}

#[test]
fn publishers_compare_equal_when_nothing_changed() {
    // The binary passes publishers on only when they differ: an unrelated change (a Service)
    // must give equal publishers.
    let documents = [
        CLASS,
        GATEWAYS,
        TSIG_SECRET,
        &route("a", "apps", "public", &["a.apps.example.test"]),
        &publisher("all", ""),
    ];
    let before = run(&documents, &["192.0.2.10"]);
    let service = r#"
apiVersion: v1
kind: Service
metadata: {name: unrelated, namespace: apps}
spec: {ports: [{port: 80}]}
"#;
    let mut more = documents.to_vec();
    more.push(service);
    let after = run(&more, &["192.0.2.10"]);
    assert_eq!(before.publishers, after.publishers);
    let expected: BTreeMap<String, Vec<IpAddr>> =
        BTreeMap::from([("a.apps.example.test".to_owned(), ips(&["192.0.2.10"]))]);
    assert_eq!(find(&after, "edge/all").desired, expected);
}
