//! The kube layer against an in-memory API server behind real `kube::Client`s (kube's
//! tower-test mock pattern): watchers → index → translation, narrow Secret watches, status
//! patches with exact JSON, no-op suppression, other classes untouched, leader hand-over, and
//! an API server outage.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use support::fake_api::FakeApi;
use tokio::sync::watch;
use torhaus_k8s::status::{
    LeaderElection, LeaseSettings, StatusWriterOptions, WriterStats, spawn_leader_election,
    spawn_status_writer,
};
use torhaus_k8s::{
    CONTROLLER_NAME, GatewayAddress, KubeSnapshot, KubernetesOptions, KubernetesSource, ObjectKind,
    TranslateOptions, spawn_kubernetes_source,
};
use torhaus_model::BackendTarget;

const DEADLINE: Duration = Duration::from_secs(20);

/// Waits until `condition` holds for the channel's value, failing the test after DEADLINE.
async fn wait_for<T>(
    receiver: &mut watch::Receiver<T>,
    what: &str,
    condition: impl FnMut(&T) -> bool,
) -> T
where
    T: Clone,
{
    match tokio::time::timeout(DEADLINE, receiver.wait_for(condition)).await {
        Ok(Ok(value)) => value.clone(),
        Ok(Err(_)) => panic!("channel closed while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls `check` every 20 ms until it returns Some, failing after DEADLINE.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn class(name: &str, controller: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller}
    })
}

fn gateway(namespace: &str, name: &str, class: &str, listeners: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace, "generation": 3},
        "spec": {"gatewayClassName": class, "listeners": listeners}
    })
}

fn http_listener() -> Value {
    json!([{"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}])
}

fn route(namespace: &str, name: &str, gateway_ns: &str, gateway: &str, service: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace, "generation": 2},
        "spec": {
            "parentRefs": [{"name": gateway, "namespace": gateway_ns}],
            "hostnames": ["app.example.com"],
            "rules": [{"backendRefs": [{"name": service, "port": 80}]}]
        }
    })
}

fn service(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "http", "port": 80}]}
    })
}

fn slice(namespace: &str, service: &str, addresses: &[&str]) -> Value {
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints
    })
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn tls_secret(namespace: &str, name: &str, host: &str) -> Value {
    let certified =
        rcgen::generate_simple_self_signed(vec![host.to_owned()]).expect("test certificate");
    let secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            [
                (
                    "tls.crt".to_owned(),
                    ByteString(certified.cert.pem().into_bytes()),
                ),
                (
                    "tls.key".to_owned(),
                    ByteString(certified.signing_key.serialize_pem().into_bytes()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    let mut value = serde_json::to_value(secret).expect("secret serializes");
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".to_owned(), json!("v1"));
        map.insert("kind".to_owned(), json!("Secret"));
    }
    value
}

/// A cluster with our class, a Gateway, a route to `web`, its Service and endpoints, and a
/// Gateway + route of another controller.
fn seed(api: &FakeApi) {
    api.put(class("torhaus", CONTROLLER_NAME));
    api.put(class("other", "example.com/other"));
    api.put(namespace("infra"));
    api.put(namespace("apps"));
    api.put(gateway("infra", "edge", "torhaus", http_listener()));
    api.put(gateway("infra", "foreign", "other", http_listener()));
    api.put(route("apps", "app", "infra", "edge", "web"));
    api.put(route("apps", "theirs", "infra", "foreign", "web"));
    api.put(service("apps", "web"));
    api.put(slice("apps", "web", &["10.1.0.1"]));
}

fn options() -> KubernetesOptions {
    KubernetesOptions {
        translate: TranslateOptions {
            addresses: vec![GatewayAddress::parse("192.0.2.10")],
            ..TranslateOptions::default()
        },
        debounce: Duration::from_millis(20),
    }
}

fn endpoints_of_app(snapshot: &KubeSnapshot) -> Vec<String> {
    snapshot
        .translation
        .config
        .ports
        .iter()
        .flat_map(|p| &p.listeners)
        .flat_map(|l| &l.routes)
        .filter(|r| r.route.id.name == "app")
        .flat_map(|r| &r.route.rules)
        .flat_map(|rule| &rule.backends)
        .flat_map(|b| match &b.target {
            BackendTarget::Service(backend) => backend.endpoints.clone(),
            BackendTarget::Invalid(_) => Vec::new(),
        })
        .map(|e| e.to_string())
        .collect()
}

fn fast_lease(identity: &str) -> LeaseSettings {
    LeaseSettings {
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_millis(1000),
        retry_period: Duration::from_millis(100),
        ..LeaseSettings::new("torhaus-system", "torhaus-status", identity)
    }
}

/// One replica: source, election and writer on its own client.
struct Replica {
    source: KubernetesSource,
    election: LeaderElection,
    stats: watch::Receiver<WriterStats>,
}

fn replica(api: &FakeApi, id: usize) -> Replica {
    let client = api.client(id);
    let source = spawn_kubernetes_source(client.clone(), options());
    let election = spawn_leader_election(client.clone(), fast_lease(&format!("replica-{id}")));
    let stats = spawn_status_writer(
        client,
        source.snapshots.clone(),
        election.is_leader.clone(),
        StatusWriterOptions::default(),
    );
    Replica {
        source,
        election,
        stats,
    }
}

fn status_patches(api: &FakeApi) -> Vec<(usize, String, Value)> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
        .map(|r| (r.client, r.path, r.body.unwrap_or(Value::Null)))
        .collect()
}

/// The first status patch sent to `path`, its lastTransitionTimes replaced by "T".
async fn status_patch_at(api: &FakeApi, path: &str) -> Value {
    eventually(&format!("a status patch of {path}"), || {
        let patch = status_patches(api)
            .into_iter()
            .find(|(_, p, _)| p == path)
            .map(|(_, _, body)| without_times(&body));
        async move { patch }
    })
    .await
}

/// Replaces every lastTransitionTime by "T", for exact comparisons.
fn without_times(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    if k == "lastTransitionTime" {
                        (k.clone(), json!("T"))
                    } else {
                        (k.clone(), without_times(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_times).collect()),
        other => other.clone(),
    }
}

#[tokio::test]
async fn watchers_feed_the_index_and_every_change_reaches_the_translation() {
    let api = FakeApi::new();
    seed(&api);
    let mut source = spawn_kubernetes_source(api.client(0), options());
    let first = tokio::time::timeout(DEADLINE, source.first_snapshot())
        .await
        .expect("first sync in time")
        .expect("source running");
    assert!(*source.ready.borrow(), "ready after the first full sync");
    assert_eq!(endpoints_of_app(&first), ["10.1.0.1:8080"]);
    assert_eq!(first.objects.gateways.len(), 2, "all Gateways are indexed");

    // An endpoint change turns into a new translation.
    api.put(slice("apps", "web", &["10.1.0.1", "10.1.0.2"]));
    let snapshot = wait_for(&mut source.snapshots, "the new endpoint", |s| {
        endpoints_of_app(s).len() == 2
    })
    .await;
    assert_eq!(
        endpoints_of_app(&snapshot),
        ["10.1.0.1:8080", "10.1.0.2:8080"]
    );

    // A deleted route leaves the configuration.
    api.delete("HTTPRoute", "apps", "app");
    let snapshot = wait_for(&mut source.snapshots, "the route to go", |s| {
        !s.objects.http_routes.keys().any(|n| n.name == "app")
    })
    .await;
    assert!(endpoints_of_app(&snapshot).is_empty());

    // The translations-only channel follows too.
    let mut translations = source.translations();
    api.put(route("apps", "app", "infra", "edge", "web"));
    wait_for(&mut translations, "the route to come back", |t| {
        t.config
            .ports
            .iter()
            .flat_map(|p| &p.listeners)
            .any(|l| l.routes.iter().any(|r| r.route.id.name == "app"))
    })
    .await;
}

#[tokio::test]
async fn a_burst_of_events_becomes_one_translation() {
    let api = FakeApi::new();
    seed(&api);
    let mut source = spawn_kubernetes_source(
        api.client(0),
        KubernetesOptions {
            debounce: Duration::from_millis(500),
            ..options()
        },
    );
    let first = tokio::time::timeout(DEADLINE, source.first_snapshot())
        .await
        .expect("first sync")
        .expect("source running");
    // A rollout: 20 EndpointSlice updates in a row.
    for i in 2..22 {
        let addresses: Vec<String> = (1..i).map(|n| format!("10.1.0.{n}")).collect();
        let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
        api.put(slice("apps", "web", &addresses));
    }
    let last = wait_for(&mut source.snapshots, "the last update", |s| {
        endpoints_of_app(s).len() == 20
    })
    .await;
    assert!(
        last.seq - first.seq <= 3,
        "20 updates within the debounce window caused {} translations",
        last.seq - first.seq
    );
}

#[tokio::test]
async fn an_unreadable_object_is_reported_and_its_last_good_version_keeps_serving() {
    let api = FakeApi::new();
    seed(&api);
    // A filter type from a newer Gateway API release: the typed model cannot read it.
    let mut future = route("apps", "future", "infra", "edge", "web");
    future["spec"]["rules"][0]["filters"] = json!([{"type": "FancyNewFilter"}]);
    future["spec"]["hostnames"] = json!(["future.example.com"]);
    api.put(future);
    let mut source = spawn_kubernetes_source(api.client(0), options());
    let first = tokio::time::timeout(DEADLINE, source.first_snapshot())
        .await
        .expect("one bad object does not stop the first sync")
        .expect("source running");
    assert_eq!(
        endpoints_of_app(&first),
        ["10.1.0.1:8080"],
        "the others serve"
    );
    let problems: Vec<String> = first
        .translation
        .report
        .problems
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("HTTPRoute apps/future cannot be read")
                && p.contains("FancyNewFilter")
                && p.contains("ignored until it is fixed")),
        "{problems:#?}"
    );

    // A route that was good and turns unreadable keeps its last good version.
    let mut broken = route("apps", "app", "infra", "edge", "web");
    broken["spec"]["rules"][0]["filters"] = json!([{"type": "FancyNewFilter"}]);
    api.put(broken);
    let snapshot = wait_for(&mut source.snapshots, "the problem to be reported", |s| {
        s.translation
            .report
            .problems
            .iter()
            .any(|p| p.message.contains("HTTPRoute apps/app cannot be read"))
    })
    .await;
    assert_eq!(endpoints_of_app(&snapshot), ["10.1.0.1:8080"]);
    assert!(
        snapshot
            .translation
            .report
            .problems
            .iter()
            .any(|p| p.message.contains("its last good version keeps serving"))
    );

    // Fixed, the problem goes.
    api.put(route("apps", "app", "infra", "edge", "web"));
    wait_for(&mut source.snapshots, "the problem to go", |s| {
        !s.translation
            .report
            .problems
            .iter()
            .any(|p| p.message.contains("apps/app"))
    })
    .await;
}

#[tokio::test]
async fn only_referenced_secrets_are_watched_and_held() {
    let api = FakeApi::new();
    seed(&api);
    api.put(tls_secret("infra", "edge-cert", "app.example.com"));
    api.put(tls_secret("infra", "unrelated", "other.example.com"));
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "db-password", "namespace": "apps"},
        "data": {"password": "aHVudGVyMg=="}
    }));
    api.put(tls_secret("apps", "stolen", "app.example.com"));
    api.put(gateway(
        "infra",
        "edge",
        "torhaus",
        json!([{"name": "https", "port": 443, "protocol": "HTTPS",
                "tls": {"certificateRefs": [{"name": "edge-cert"}]},
                "allowedRoutes": {"namespaces": {"from": "All"}}},
               {"name": "other", "port": 443, "protocol": "HTTPS", "hostname": "x.example.com",
                "tls": {"certificateRefs": [{"name": "stolen", "namespace": "apps"}]}}]),
    ));
    let mut source = spawn_kubernetes_source(api.client(0), options());
    let first = tokio::time::timeout(DEADLINE, source.first_snapshot())
        .await
        .expect("first sync in time")
        .expect("source running");
    let held: Vec<String> = first
        .objects
        .secrets
        .keys()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        held,
        ["infra/edge-cert"],
        "only the referenced Secret is held"
    );
    let edge = first
        .translation
        .report
        .object(ObjectKind::Gateway, "infra", "edge")
        .expect("gateway status");
    let other = edge.listener("other").expect("listener status");
    assert_eq!(
        other.condition("ResolvedRefs").map(|c| c.reason.clone()),
        Some("RefNotPermitted".to_owned())
    );
    let listener = edge.listener("https").expect("listener status");
    assert_eq!(
        listener
            .condition("ResolvedRefs")
            .map(|c| c.status.to_string()),
        Some("True".to_owned()),
        "the certificate was read before the first translation: {listener:?}"
    );
    let secret_requests: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/secrets"))
        .collect();
    assert!(!secret_requests.is_empty());
    for request in &secret_requests {
        assert_eq!(
            request.path, "/api/v1/namespaces/infra/secrets",
            "Secrets are never listed cluster-wide"
        );
        assert!(
            request
                .query
                .contains("fieldSelector=metadata.name%3Dedge-cert"),
            "Secrets are watched by name: {}",
            request.query
        );
    }

    // The Gateway stops referencing it: the watch stops and the Secret is forgotten.
    api.put(gateway("infra", "edge", "torhaus", http_listener()));
    wait_for(&mut source.snapshots, "the Secret to be dropped", |s| {
        s.objects.secrets.is_empty()
    })
    .await;
}

#[tokio::test]
async fn status_patches_are_exact_and_unchanged_status_is_not_rewritten() {
    let api = FakeApi::new();
    seed(&api);
    let mut one = replica(&api, 0);
    wait_for(&mut one.election.is_leader, "leadership", |l| *l).await;
    let snapshot = tokio::time::timeout(DEADLINE, one.source.first_snapshot())
        .await
        .expect("first sync")
        .expect("source running");
    wait_for(&mut one.stats, "the first writes", |s| {
        s.last_snapshot >= snapshot.seq && s.patches_sent >= 3
    })
    .await;

    let patches = status_patches(&api);
    let find = |path: &str| {
        patches
            .iter()
            .find(|(_, p, _)| p == path)
            .map(|(_, _, body)| without_times(body))
            .unwrap_or_else(|| panic!("no patch of {path}: {patches:#?}"))
    };
    assert_eq!(
        find("/apis/gateway.networking.k8s.io/v1/gatewayclasses/torhaus/status"),
        json!({"status": {"conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "handled by torhaus",
             "lastTransitionTime": "T", "observedGeneration": 1},
            {"type": "SupportedVersion", "status": "True", "reason": "SupportedVersion",
             "message": "Gateway API v1 is supported", "lastTransitionTime": "T", "observedGeneration": 1}
        ]}})
    );
    assert_eq!(
        find("/apis/gateway.networking.k8s.io/v1/namespaces/infra/gateways/edge/status"),
        json!({"status": {
            "addresses": [{"type": "IPAddress", "value": "192.0.2.10"}],
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "Gateway accepted",
                 "lastTransitionTime": "T", "observedGeneration": 3},
                {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "Gateway programmed",
                 "lastTransitionTime": "T", "observedGeneration": 3}
            ],
            "listeners": [{
                "name": "http",
                "attachedRoutes": 1,
                "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
                "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "listener accepted",
                     "lastTransitionTime": "T", "observedGeneration": 3},
                    {"type": "Conflicted", "status": "False", "reason": "NoConflicts", "message": "no conflicts",
                     "lastTransitionTime": "T", "observedGeneration": 3},
                    {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
                     "message": "all references resolved", "lastTransitionTime": "T", "observedGeneration": 3},
                    {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "listener programmed",
                     "lastTransitionTime": "T", "observedGeneration": 3}
                ]
            }]
        }})
    );
    let route_patch =
        find("/apis/gateway.networking.k8s.io/v1/namespaces/apps/httproutes/app/status");
    assert!(
        route_patch
            .pointer("/metadata/resourceVersion")
            .is_some_and(Value::is_string),
        "route patches carry the resourceVersion they were computed from"
    );
    assert_eq!(
        route_patch.get("status"),
        Some(&json!({"parents": [{
            "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": "edge"},
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "attached",
                 "lastTransitionTime": "T", "observedGeneration": 2},
                {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
                 "message": "all references resolved", "lastTransitionTime": "T", "observedGeneration": 2}
            ]
        }]}))
    );
    // Objects of the other class are never touched.
    for (_, path, _) in &patches {
        assert!(
            !path.contains("/gatewayclasses/other/")
                && !path.contains("/gateways/foreign/")
                && !path.contains("/httproutes/theirs/"),
            "wrote status of another controller's object: {path}"
        );
    }
    let written = patches.len();

    // The writes come back through the watchers; then an unrelated change retranslates, and
    // nothing is written again: every status is already published.
    let echoed = wait_for(
        &mut one.source.snapshots,
        "the written status to come back",
        |s| {
            s.objects.http_routes.values().any(|r| {
                r.object
                    .status
                    .as_ref()
                    .is_some_and(|st| !st.parents.is_empty())
            })
        },
    )
    .await;
    wait_for(&mut one.stats, "the echo to be handled", |s| {
        s.last_snapshot >= echoed.seq
    })
    .await;
    api.put(slice("apps", "web", &["10.1.0.1", "10.1.0.9"]));
    let changed = wait_for(&mut one.source.snapshots, "the endpoint change", |s| {
        endpoints_of_app(s).len() == 2
    })
    .await;
    wait_for(&mut one.stats, "the change to be handled", |s| {
        s.last_snapshot >= changed.seq
    })
    .await;
    assert_eq!(
        status_patches(&api).len(),
        written,
        "an unchanged status was written again: {:#?}",
        &status_patches(&api)[written..]
    );

    // A real change is written, keeping the transition time of unchanged conditions.
    let before = api.get("Gateway", "infra", "edge").expect("gateway exists");
    api.delete("Service", "apps", "web");
    let after = eventually("the route's ResolvedRefs to turn False", || {
        let api = api.clone();
        async move {
            let route = api.get("HTTPRoute", "apps", "app")?;
            let conditions = route
                .pointer("/status/parents/0/conditions")?
                .as_array()?
                .clone();
            conditions
                .iter()
                .any(|c| c["type"] == "ResolvedRefs" && c["reason"] == "BackendNotFound")
                .then_some(conditions)
        }
    })
    .await;
    let resolved = after
        .iter()
        .find(|c| c["type"] == "ResolvedRefs")
        .expect("ResolvedRefs");
    assert_eq!(resolved["status"], "False");
    assert_eq!(
        resolved["message"],
        "backendRef apps/web: Service not found"
    );
    let gateway_now = api.get("Gateway", "infra", "edge").expect("gateway exists");
    assert_eq!(
        gateway_now.pointer("/status/conditions/0/lastTransitionTime"),
        before.pointer("/status/conditions/0/lastTransitionTime"),
        "an unchanged condition keeps its lastTransitionTime"
    );
}

#[tokio::test]
async fn stale_parent_entries_go_and_other_controllers_entries_stay() {
    let api = FakeApi::new();
    seed(&api);
    // The route already carries an entry of another controller and a stale one of ours.
    let mut stale = route("apps", "app", "infra", "foreign", "web");
    stale["status"] = json!({"parents": [
        {"parentRef": {"name": "foreign", "namespace": "infra"}, "controllerName": "example.com/other",
         "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                         "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        {"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge", "namespace": "infra"},
         "controllerName": CONTROLLER_NAME,
         "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "attached",
                         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    ]});
    api.put(stale);
    let mut one = replica(&api, 0);
    wait_for(&mut one.election.is_leader, "leadership", |l| *l).await;
    let parents = eventually("our stale entry to be removed", || {
        let api = api.clone();
        async move {
            let route = api.get("HTTPRoute", "apps", "app")?;
            let parents = route.pointer("/status/parents")?.as_array()?.clone();
            (parents.len() == 1).then_some(parents)
        }
    })
    .await;
    assert_eq!(parents[0]["controllerName"], "example.com/other");
}

#[tokio::test]
async fn leadership_hands_over_and_only_the_leader_writes() {
    let api = FakeApi::new();
    seed(&api);
    let mut first = replica(&api, 1);
    wait_for(&mut first.election.is_leader, "replica 1 to lead", |l| *l).await;
    let mut second = replica(&api, 2);
    let snapshot = tokio::time::timeout(DEADLINE, second.source.first_snapshot())
        .await
        .expect("first sync")
        .expect("source running");
    wait_for(&mut second.stats, "replica 2 to see the snapshot", |s| {
        s.rounds > 0
    })
    .await;
    wait_for(&mut first.stats, "replica 1 to write", |s| {
        s.patches_sent >= 3
    })
    .await;
    assert!(!*second.election.is_leader.borrow(), "one leader at a time");
    assert!(snapshot.seq > 0);
    assert!(
        status_patches(&api)
            .iter()
            .all(|(client, _, _)| *client == 1),
        "only the leader writes status"
    );

    // Replica 1 loses the API server: it stops leading after its renew deadline, and replica 2
    // takes the Lease once it has seen no renewal for the lease duration.
    api.set_down(1, true);
    wait_for(
        &mut first.election.is_leader,
        "replica 1 to step down",
        |l| !*l,
    )
    .await;
    wait_for(
        &mut second.election.is_leader,
        "replica 2 to take over",
        |l| *l,
    )
    .await;
    let lease = api
        .get("Lease", "torhaus-system", "torhaus-status")
        .expect("lease exists");
    assert_eq!(lease["spec"]["holderIdentity"], "replica-2");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    // The new leader writes the next change.
    api.delete("Service", "apps", "web");
    eventually("replica 2 to write the route's new status", || {
        let api = api.clone();
        async move {
            status_patches(&api)
                .iter()
                .any(|(client, path, body)| {
                    *client == 2
                        && path.ends_with("/httproutes/app/status")
                        && body.to_string().contains("BackendNotFound")
                })
                .then_some(())
        }
    })
    .await;

    // Released on shutdown, the Lease passes back at once.
    api.set_down(1, false);
    let Replica { election, .. } = second;
    election.release().await;
    wait_for(
        &mut first.election.is_leader,
        "replica 1 to lead again",
        |l| *l,
    )
    .await;
    let lease = api
        .get("Lease", "torhaus-system", "torhaus-status")
        .expect("lease exists");
    assert_eq!(lease["spec"]["holderIdentity"], "replica-1");
}

#[tokio::test]
async fn replicas_starting_together_elect_exactly_one_leader() {
    let api = FakeApi::new();
    let elections: Vec<LeaderElection> = (0..3)
        .map(|id| spawn_leader_election(api.client(id), fast_lease(&format!("replica-{id}"))))
        .collect();
    let any_leader = elections
        .iter()
        .map(|e| e.is_leader.clone())
        .collect::<Vec<_>>();
    eventually("a leader", || {
        let leaders = any_leader.iter().filter(|l| *l.borrow()).count();
        async move { (leaders > 0).then_some(()) }
    })
    .await;
    // Let every replica campaign a few more rounds, then count again.
    let before = api.requests().len();
    eventually("more campaign rounds", || {
        let api = api.clone();
        async move { (api.requests().len() >= before + 30).then_some(()) }
    })
    .await;
    let leaders: Vec<usize> = elections
        .iter()
        .enumerate()
        .filter(|(_, e)| *e.is_leader.borrow())
        .map(|(id, _)| id)
        .collect();
    assert_eq!(leaders.len(), 1, "leaders: {leaders:?}");
    let lease = api
        .get("Lease", "torhaus-system", "torhaus-status")
        .expect("lease exists");
    assert_eq!(
        lease["spec"]["holderIdentity"],
        format!("replica-{}", leaders[0])
    );
    for election in elections {
        election.release().await;
    }
}

#[tokio::test]
async fn an_api_server_outage_keeps_the_last_state_and_reconnects() {
    let api = FakeApi::new();
    seed(&api);
    let mut source = spawn_kubernetes_source(api.client(0), options());
    let first = tokio::time::timeout(DEADLINE, source.first_snapshot())
        .await
        .expect("first sync")
        .expect("source running");
    let before = api.requests().len();
    api.set_down(0, true);
    // Changes made meanwhile cannot arrive; the last state stays published.
    api.put(slice("apps", "web", &["10.1.0.1", "10.1.0.3"]));
    // Every one of the 7 watchers retries (and fails) at least twice.
    eventually("the watchers to retry", || {
        let api = api.clone();
        async move {
            let failed = api.requests()[before..]
                .iter()
                .filter(|r| r.client == 0)
                .count();
            (failed >= 14).then_some(())
        }
    })
    .await;
    let current: Arc<KubeSnapshot> = source.snapshots.borrow().clone();
    assert_eq!(endpoints_of_app(&current), endpoints_of_app(&first));
    assert!(
        *source.ready.borrow(),
        "still ready: the last state keeps serving"
    );

    api.set_down(0, false);
    let snapshot = wait_for(
        &mut source.snapshots,
        "the change after reconnecting",
        |s| endpoints_of_app(s).len() == 2,
    )
    .await;
    assert_eq!(
        endpoints_of_app(&snapshot),
        ["10.1.0.1:8080", "10.1.0.3:8080"]
    );
}

/// Against a real cluster (kind or k3s with the Gateway API CRDs): the source syncs and the
/// GatewayClass named by `TORHAUS_TEST_GATEWAY_CLASS` (default `torhaus`) gets Accepted.
#[tokio::test]
#[ignore = "needs cluster"]
async fn real_cluster_syncs_and_accepts_the_gateway_class() {
    let client = kube::Client::try_default()
        .await
        .expect("a kubeconfig or in-cluster config");
    let mut source = spawn_kubernetes_source(client.clone(), KubernetesOptions::default());
    let first = tokio::time::timeout(Duration::from_secs(60), source.first_snapshot())
        .await
        .expect("first sync in time")
        .expect("source running");
    let class = std::env::var("TORHAUS_TEST_GATEWAY_CLASS").unwrap_or_else(|_| "torhaus".into());
    let status = first
        .translation
        .report
        .object(ObjectKind::GatewayClass, "", &class)
        .expect("the GatewayClass exists and names torhaus's controller");
    assert_eq!(
        status.condition("Accepted").map(|c| c.status.to_string()),
        Some("True".to_owned())
    );
}

/// Against a real cluster with the Gateway API CRDs and torhaus's GatewayClass
/// (`TORHAUS_TEST_GATEWAY_CLASS`, default `torhaus`): creates a namespace with a Service, a
/// Gateway and an HTTPRoute, runs the source, the election and the writer as one replica, and
/// waits for the spec's status on all of them. Deletes the namespace afterwards.
#[tokio::test]
#[ignore = "needs cluster"]
async fn real_cluster_gets_status_written_by_the_leader() {
    use gateway_api::experimental::gateways::Gateway;
    use gateway_api::experimental::httproutes::HttpRoute;
    use k8s_openapi::api::core::v1::{Namespace, Service};
    use kube::Api;
    use kube::api::{DeleteParams, PostParams};

    let client = kube::Client::try_default()
        .await
        .expect("a kubeconfig or in-cluster config");
    let class = std::env::var("TORHAUS_TEST_GATEWAY_CLASS").unwrap_or_else(|_| "torhaus".into());
    let ns = format!("torhaus-test-{}", std::process::id());
    let create = PostParams::default();
    Api::<Namespace>::all(client.clone())
        .create(
            &create,
            &serde_json::from_value(namespace(&ns)).expect("namespace"),
        )
        .await
        .expect("create the namespace");
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(
            &create,
            &serde_json::from_value(service(&ns, "web")).expect("service"),
        )
        .await
        .expect("create the Service");
    Api::<Gateway>::namespaced(client.clone(), &ns)
        .create(
            &create,
            &serde_json::from_value(gateway(&ns, "edge", &class, http_listener())).expect("gw"),
        )
        .await
        .expect("create the Gateway");
    Api::<HttpRoute>::namespaced(client.clone(), &ns)
        .create(
            &create,
            &serde_json::from_value(route(&ns, "app", &ns, "edge", "web")).expect("route"),
        )
        .await
        .expect("create the HTTPRoute");

    let source = spawn_kubernetes_source(client.clone(), options());
    let election = spawn_leader_election(
        client.clone(),
        LeaseSettings::new(&ns, "torhaus-test", "test-replica"),
    );
    let _stats = spawn_status_writer(
        client.clone(),
        source.snapshots.clone(),
        election.is_leader.clone(),
        StatusWriterOptions::default(),
    );
    let routes = Api::<HttpRoute>::namespaced(client.clone(), &ns);
    let accepted = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(route) = routes.get("app").await {
                let accepted = route
                    .status
                    .iter()
                    .flat_map(|s| &s.parents)
                    .filter(|p| p.controller_name == CONTROLLER_NAME)
                    .flat_map(|p| &p.conditions)
                    .any(|c| c.type_ == "Accepted" && c.status == "True");
                if accepted {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    election.release().await;
    let _ = Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await;
    assert!(
        accepted.is_ok(),
        "the HTTPRoute was not Accepted within 60 s"
    );
}

#[tokio::test]
async fn kubernetes_mode_refuses_to_start_without_a_gateway_address() {
    let settings = torhaus_k8s::ControllerSettings {
        cluster_resource_namespace: "torhaus-system".to_owned(),
        addresses: Vec::new(),
        lease_namespace: None,
        lease_name: torhaus_k8s::DEFAULT_LEASE_NAME.to_owned(),
        acme_lease_name: torhaus_k8s::DEFAULT_ACME_LEASE_NAME.to_owned(),
        identity: "test".to_owned(),
        revocations: None,
    };
    let error = torhaus_k8s::Controller::start(settings)
        .await
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        error.as_deref(),
        Some(
            "no Gateway address: set --gateway-address to the VIP or node address torhaus serves on"
        )
    );
}

#[tokio::test]
async fn the_controller_reads_the_crd_version_serves_writes_and_hands_over() {
    let api = FakeApi::new();
    seed(&api);
    api.put(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gateways.gateway.networking.k8s.io",
                     "annotations": {"gateway.networking.k8s.io/bundle-version": "v1.6.1"}}
    }));
    let settings = torhaus_k8s::ControllerSettings {
        cluster_resource_namespace: "torhaus-system".to_owned(),
        addresses: vec![GatewayAddress::parse("192.0.2.10")],
        lease_namespace: Some("torhaus-system".to_owned()),
        lease_name: torhaus_k8s::DEFAULT_LEASE_NAME.to_owned(),
        acme_lease_name: torhaus_k8s::DEFAULT_ACME_LEASE_NAME.to_owned(),
        identity: "pod-a".to_owned(),
        revocations: None,
    };
    let mut controller = torhaus_k8s::Controller::start_with_client(api.client(0), settings).await;
    let mut translations = tokio::time::timeout(DEADLINE, controller.translations())
        .await
        .expect("first sync in time")
        .expect("source running");
    assert!(*controller.ready().borrow());
    let first = translations.borrow_and_update().clone();
    let supported = first
        .report
        .object(ObjectKind::GatewayClass, "", "torhaus")
        .and_then(|c| c.condition("SupportedVersion"))
        .map(|c| c.message.clone());
    assert_eq!(
        supported.as_deref(),
        Some("Gateway API v1.6.1 is supported")
    );
    let mut leader = controller.is_leader();
    wait_for(&mut leader, "leadership", |l| *l).await;
    eventually("the Gateway's status", || {
        let api = api.clone();
        async move {
            let gateway = api.get("Gateway", "infra", "edge")?;
            (gateway.pointer("/status/addresses/0/value")? == "192.0.2.10").then_some(())
        }
    })
    .await;

    controller.shutdown().await;
    let lease = api
        .get("Lease", "torhaus-system", torhaus_k8s::DEFAULT_LEASE_NAME)
        .expect("lease exists");
    assert!(
        lease["spec"]
            .get("holderIdentity")
            .is_none_or(Value::is_null),
        "released on shutdown: {lease}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_policies_and_their_secrets_are_watched_and_the_leader_writes_their_status() {
    let api = FakeApi::new();
    seed(&api);
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "session", "namespace": "apps"},
        "data": {"key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}
    }));
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "db-password", "namespace": "apps"},
        "data": {"password": "aHVudGVyMg=="}
    }));
    api.put(json!({
        "apiVersion": "torhaus.dev/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": "sso", "namespace": "apps", "resourceVersion": "1"},
        "spec": {
            "targetRefs": [{"kind": "HTTPRoute", "name": "app"}],
            "session": {"keySecretRefs": [{"name": "session", "key": "key"}]},
            "jwt": {"issuers": [{"issuer": "https://idp.example.com/", "audiences": ["app"]}]}
        }
    }));
    let mut one = replica(&api, 0);
    wait_for(&mut one.election.is_leader, "leadership", |l| *l).await;
    let snapshot = wait_for(&mut one.source.snapshots, "the policy in force", |s| {
        !s.translation.policies.is_empty()
    })
    .await;
    let held: Vec<String> = snapshot
        .objects
        .secrets
        .keys()
        .map(ToString::to_string)
        .collect();
    assert_eq!(held, ["apps/session"], "only the policy's Secret is held");
    let on_app = snapshot
        .translation
        .config
        .ports
        .iter()
        .flat_map(|p| &p.listeners)
        .flat_map(|l| &l.routes)
        .find(|r| r.route.id.name == "app")
        .and_then(|r| r.auth_of(0))
        .map(ToString::to_string);
    assert_eq!(on_app.as_deref(), Some("apps/sso"));

    let body = status_patch_at(
        &api,
        "/apis/torhaus.dev/v1alpha1/namespaces/apps/authpolicies/sso/status",
    )
    .await;
    assert_eq!(
        body,
        json!({"status": {"conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted",
             "message": "in force for HTTPRoute apps/app rule 0 on listener infra/edge/http",
             "lastTransitionTime": "T", "observedGeneration": 1}
        ]}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_publishers_and_their_secrets_are_watched_and_the_leader_writes_their_status() {
    use torhaus_dns::SecretSource as _;
    let api = FakeApi::new();
    seed(&api);
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "tsig", "namespace": "infra"},
        "data": {"secret": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}
    }));
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "unrelated", "namespace": "infra"},
        "data": {"secret": "aHVudGVyMg=="}
    }));
    api.put(json!({
        "apiVersion": "torhaus.dev/v1alpha1", "kind": "DNSPublisher",
        "metadata": {"name": "public", "namespace": "infra", "resourceVersion": "1"},
        "spec": {
            "provider": {"rfc2136": {
                "nameserver": "192.0.2.53",
                "tsigKeyName": "torhaus",
                "tsigSecretRef": {"name": "tsig", "key": "secret"}
            }}
        }
    }));
    let mut one = replica(&api, 0);
    wait_for(&mut one.election.is_leader, "leadership", |l| *l).await;
    let snapshot = wait_for(
        &mut one.source.snapshots,
        "the publisher with its Secret",
        |s| {
            s.translation.publishers.iter().any(|p| {
                p.config.as_ref().is_ok_and(|c| {
                    c.secrets
                        .secret(&torhaus_dns::SecretKeyRef {
                            name: "tsig".to_owned(),
                            key: "secret".to_owned(),
                        })
                        .is_ok()
                })
            })
        },
    )
    .await;
    let held: Vec<String> = snapshot
        .objects
        .secrets
        .keys()
        .map(ToString::to_string)
        .collect();
    assert_eq!(held, ["infra/tsig"], "only the publisher's Secret is held");
    let publisher = &snapshot.translation.publishers[0];
    assert_eq!(publisher.id, "infra/public");
    // The route of namespace apps attached to the Gateway in infra, at the gateway address.
    let desired: Vec<(String, Vec<String>)> = publisher
        .desired
        .iter()
        .map(|(host, ips)| (host.clone(), ips.iter().map(ToString::to_string).collect()))
        .collect();
    assert_eq!(
        desired,
        [("app.example.com".to_owned(), vec!["192.0.2.10".to_owned()])]
    );

    let body = status_patch_at(
        &api,
        "/apis/torhaus.dev/v1alpha1/namespaces/infra/dnspublishers/public/status",
    )
    .await;
    assert_eq!(
        body,
        json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "Configured",
             "message": "publishing 1 hostname(s) of Gateway(s) [edge] at [192.0.2.10] through rfc2136 192.0.2.53 as owner \"torhaus\"",
             "lastTransitionTime": "T", "observedGeneration": 1}
        ]}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_revoked_on_one_replica_is_revoked_on_every_replica() {
    use torhaus_policies::revocation::{RevocationList, Revoked};
    let api = FakeApi::new();
    let lists: Vec<Arc<RevocationList>> = (0..3).map(|_| RevocationList::new()).collect();
    for (id, list) in lists.iter().enumerate() {
        torhaus_k8s::revocations::spawn_revocation_sync(
            api.client(id),
            "torhaus-system",
            "torhaus-session-revocations",
            Arc::clone(list),
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // A back-channel logout reaches replica 0 only.
    lists[0].revoke(Revoked::ProviderSession("sid-1".into()), 600);
    // And an RP logout replica 2, at the same moment.
    lists[2].revoke(Revoked::Session("session-9".into()), 600);
    for (id, list) in lists.iter().enumerate() {
        let list = Arc::clone(list);
        eventually(
            &format!("replica {id} to know both revocations"),
            move || {
                let list = Arc::clone(&list);
                async move {
                    (list.is_revoked("other", Some("sid-1"), "alice", now)
                        && list.is_revoked("session-9", None, "bob", now))
                    .then_some(())
                }
            },
        )
        .await;
    }
    // Written to one Secret, never deleted or written by the other replicas again when nothing
    // is new: a quiet period sends no more writes.
    let writes = |api: &FakeApi| {
        api.requests()
            .into_iter()
            .filter(|r| {
                r.path.ends_with("/secrets/torhaus-session-revocations")
                    || (r.method == "POST" && r.path.ends_with("/secrets"))
            })
            .filter(|r| r.method == "PUT" || r.method == "POST")
            .count()
    };
    let settled = writes(&api);
    assert!((1..=6).contains(&settled), "{settled} writes");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(writes(&api), settled, "no write without something new");
}
