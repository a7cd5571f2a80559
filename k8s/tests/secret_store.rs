//! ACME in Kubernetes mode against the in-memory API server (kube's mock-service pattern): the
//! Secret store creates, replaces with the resourceVersion it read, retries a lost race, never
//! overwrites a Secret of another type, keeps accounts beside other keys; issuers and the
//! Secrets they read are watched; the ACME Lease elects one orderer and hands over.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::fake_api::FakeApi;
use torhaus_acme::{CertificateStore, StoredCertificate};
use torhaus_k8s::secret_store::{ACCOUNT_KEY, WRITE_ATTEMPTS};
use torhaus_k8s::status::LeaseSettings;
use torhaus_k8s::{
    CONTROLLER_NAME, GatewayAddress, KubernetesOptions, SecretStore, TranslateOptions,
    spawn_kubernetes_source,
};
use torhaus_model::{IssuerKind, ObjectName};

const DEADLINE: Duration = Duration::from_secs(20);

fn certificate(serial: &str) -> StoredCertificate {
    StoredCertificate {
        chain_pem: format!("-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n"),
        key_pem: "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n".to_owned(),
        annotations: BTreeMap::from([
            (
                "torhaus.dev/issuer".to_owned(),
                "Issuer apps/letsencrypt".to_owned(),
            ),
            ("torhaus.dev/dns-names".to_owned(), "example.com".to_owned()),
        ]),
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decoded(secret: &Value, key: &str) -> Vec<u8> {
    use base64::Engine as _;
    let pointer = format!("/data/{}", key.replace('/', "~1"));
    let text = secret
        .pointer(&pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{key} in {secret}"));
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

fn writes(api: &FakeApi, path_part: &str) -> Vec<(String, Option<Value>)> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "POST" || r.method == "PUT")
        .filter(|r| r.path.contains(path_part))
        .map(|r| (r.method, r.body))
        .collect()
}

#[tokio::test]
async fn a_missing_certificate_secret_is_created_as_kubernetes_io_tls() {
    let api = FakeApi::new();
    let store = SecretStore::new(api.client(0));
    let name = ObjectName::new("apps", "example-tls");
    assert_eq!(store.load_certificate(&name).await.expect("load"), None);

    store
        .save_certificate(&name, &certificate("AA=="))
        .await
        .expect("save");
    let secret = api.get("Secret", "apps", "example-tls").expect("created");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "torhaus"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["torhaus.dev/dns-names"],
        "example.com"
    );
    assert_eq!(
        decoded(&secret, "tls.crt"),
        certificate("AA==").chain_pem.into_bytes()
    );
    let created = writes(&api, "/namespaces/apps/secrets");
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0].0, "POST");
    // It reads back exactly as written.
    assert_eq!(
        store.load_certificate(&name).await.expect("load"),
        Some(certificate("AA=="))
    );
}

#[tokio::test]
async fn an_existing_secret_is_replaced_with_the_resource_version_read_keeping_foreign_metadata() {
    let api = FakeApi::new();
    // A Secret cert-manager made: its labels, a foreign annotation, a stale lifecycle
    // annotation and a ca.crt.
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "example-tls", "namespace": "apps",
                     "labels": {"team": "web"},
                     "annotations": {"cert-manager.io/issuer-name": "le", "torhaus.dev/acme-order": "https://old/order"}},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64(b"old"), "tls.key": base64(b"old"), "ca.crt": base64(b"old ca")}
    }));
    let read_version =
        api.get("Secret", "apps", "example-tls").expect("seeded")["metadata"]["resourceVersion"]
            .clone();
    let store = SecretStore::new(api.client(0));
    let name = ObjectName::new("apps", "example-tls");
    store
        .save_certificate(&name, &certificate("BB=="))
        .await
        .expect("save");

    let puts = writes(&api, "/namespaces/apps/secrets/example-tls");
    assert_eq!(puts.len(), 1, "{puts:?}");
    let (method, body) = &puts[0];
    assert_eq!(method, "PUT");
    let body = body.as_ref().expect("a body");
    assert_eq!(
        body["metadata"]["resourceVersion"], read_version,
        "optimistic concurrency"
    );
    let secret = api.get("Secret", "apps", "example-tls").expect("exists");
    let meta = &secret["metadata"];
    assert_eq!(meta["labels"]["team"], "web");
    assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "torhaus");
    assert_eq!(meta["annotations"]["cert-manager.io/issuer-name"], "le");
    assert!(
        meta["annotations"].get("torhaus.dev/acme-order").is_none(),
        "the lifecycle's annotations are replaced as a set: {meta}"
    );
    assert!(secret["data"].get("ca.crt").is_none(), "{secret}");
    assert_eq!(
        store.load_certificate(&name).await.expect("load"),
        Some(certificate("BB==")),
        "only the lifecycle's annotations are read back"
    );
}

#[tokio::test]
async fn a_conflicting_write_is_redone_on_the_current_secret_a_bounded_number_of_times() {
    let api = FakeApi::new();
    let store = SecretStore::new(api.client(0));
    let name = ObjectName::new("apps", "example-tls");
    store
        .save_certificate(&name, &certificate("AA=="))
        .await
        .expect("create");

    // Another writer gets in before each of our next two replaces.
    api.interfere_with_writes("Secret", 2);
    store
        .save_certificate(&name, &certificate("BB=="))
        .await
        .expect("the third attempt goes through");
    let puts = writes(&api, "/namespaces/apps/secrets/example-tls");
    assert_eq!(puts.len(), 3, "two conflicts, then success");
    let secret = api.get("Secret", "apps", "example-tls").expect("exists");
    assert_eq!(
        decoded(&secret, "tls.crt"),
        certificate("BB==").chain_pem.into_bytes()
    );
    assert_eq!(
        secret["metadata"]["annotations"]["test/other-writer"], "0",
        "the other writer's change is kept: each retry starts from a fresh read"
    );

    // A writer that always wins: the store gives up, naming the Secret.
    api.interfere_with_writes("Secret", usize::MAX);
    let error = store
        .save_certificate(&name, &certificate("CC=="))
        .await
        .expect_err("gives up")
        .to_string();
    assert!(error.contains("Secret apps/example-tls"), "{error}");
    assert!(
        error.contains(&format!("{WRITE_ATTEMPTS} conflicting writes")),
        "{error}"
    );
    assert_eq!(
        writes(&api, "/namespaces/apps/secrets/example-tls").len(),
        3 + WRITE_ATTEMPTS
    );
}

#[tokio::test]
async fn a_secret_of_another_type_is_never_overwritten() {
    let api = FakeApi::new();
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db-password", "namespace": "apps"},
        "type": "Opaque",
        "data": {"password": base64(b"hunter2")}
    }));
    let store = SecretStore::new(api.client(0));
    let name = ObjectName::new("apps", "db-password");
    let error = store
        .save_certificate(&name, &certificate("AA=="))
        .await
        .expect_err("refused")
        .to_string();
    assert!(error.contains("Secret apps/db-password"), "{error}");
    assert!(error.contains("of type Opaque"), "{error}");
    assert!(writes(&api, "/secrets").is_empty());
    let load = store
        .load_certificate(&name)
        .await
        .expect_err("not a certificate")
        .to_string();
    assert!(load.contains("Secret apps/db-password"), "{load}");
    assert_eq!(
        decoded(
            &api.get("Secret", "apps", "db-password").expect("kept"),
            "password"
        ),
        b"hunter2"
    );
}

#[tokio::test]
async fn accounts_round_trip_beside_the_other_keys_of_their_secret() {
    let api = FakeApi::new();
    let store = SecretStore::new(api.client(0));
    let fresh = ObjectName::new("torhaus-system", "le-account");
    assert_eq!(store.load_account(&fresh).await.expect("load"), None);
    store
        .save_account(&fresh, b"{\"id\":1}")
        .await
        .expect("save");
    let secret = api
        .get("Secret", "torhaus-system", "le-account")
        .expect("created");
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "torhaus"
    );
    assert_eq!(
        store.load_account(&fresh).await.expect("load").as_deref(),
        Some(&b"{\"id\":1}"[..])
    );
    // Saving the same credentials again writes nothing.
    let before = writes(&api, "/secrets").len();
    store
        .save_account(&fresh, b"{\"id\":1}")
        .await
        .expect("save");
    assert_eq!(writes(&api, "/secrets").len(), before);

    // cert-manager's account Secret: its key stays, ours is added.
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cm-account", "namespace": "apps"},
        "type": "Opaque",
        "data": {"tls.key": base64(b"cert-manager key")}
    }));
    let migrated = ObjectName::new("apps", "cm-account");
    assert_eq!(
        store.load_account(&migrated).await.expect("load"),
        None,
        "no torhaus account yet: one is created"
    );
    store
        .save_account(&migrated, b"{\"id\":2}")
        .await
        .expect("save");
    let secret = api.get("Secret", "apps", "cm-account").expect("kept");
    assert_eq!(decoded(&secret, "tls.key"), b"cert-manager key");
    assert_eq!(decoded(&secret, ACCOUNT_KEY), b"{\"id\":2}");
}

fn issuer_manifest(kind: &str, namespace: Option<&str>, name: &str) -> Value {
    let mut metadata = json!({"name": name});
    if let Some(namespace) = namespace {
        metadata["namespace"] = json!(namespace);
    }
    json!({
        "apiVersion": "torhaus.dev/v1alpha1", "kind": kind,
        "metadata": metadata,
        "spec": {"acme": {
            "server": "https://acme.example/directory",
            "privateKeySecretRef": {"name": format!("{name}-account")},
            "externalAccountBinding": {"keyID": "kid-1", "keySecretRef": {"name": "eab", "key": "hmac"}},
            "dns01": {"rfc2136": {
                "nameserver": "192.0.2.53:53",
                "tsigKeyName": "torhaus-key",
                "tsigSecretRef": {"name": "dns-tsig", "key": "secret"}
            }}
        }}
    })
}

fn opaque(namespace: &str, name: &str, key: &str, value: &[u8]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {key: base64(value)}
    })
}

#[tokio::test]
async fn issuers_and_the_secrets_they_read_are_watched() {
    let api = FakeApi::new();
    api.put(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "torhaus"}, "spec": {"controllerName": CONTROLLER_NAME}
    }));
    api.put(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "apps", "generation": 1,
                     "annotations": {"torhaus.dev/cluster-issuer": "le"}},
        "spec": {"gatewayClassName": "torhaus", "listeners": [
            {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "example.com",
             "tls": {"certificateRefs": [{"name": "example-tls"}]}}
        ]}
    }));
    api.put(issuer_manifest("Issuer", Some("apps"), "local"));
    api.put(issuer_manifest("ClusterIssuer", None, "le"));
    api.put(opaque("apps", "dns-tsig", "secret", b"issuer tsig"));
    api.put(opaque("apps", "eab", "hmac", b"issuer eab"));
    api.put(opaque(
        "torhaus-system",
        "dns-tsig",
        "secret",
        b"cluster tsig",
    ));
    // Not referenced by anything: must never be read.
    api.put(opaque("apps", "unrelated", "x", b"private"));
    let options = KubernetesOptions {
        translate: TranslateOptions {
            addresses: vec![GatewayAddress::parse("192.0.2.10")],
            ..TranslateOptions::default()
        },
        debounce: Duration::from_millis(20),
    };
    let mut source = spawn_kubernetes_source(api.client(0), options);
    let first = tokio::time::timeout(DEADLINE, source.first_snapshot())
        .await
        .expect("first sync in time")
        .expect("source running");
    let translation = &first.translation;
    let ids: Vec<String> = translation
        .issuers
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    assert_eq!(ids, ["Issuer apps/local", "ClusterIssuer le"]);
    let certificate = translation
        .certificates
        .first()
        .expect("a managed certificate");
    assert_eq!(certificate.issuer.kind, IssuerKind::ClusterIssuer);
    assert_eq!(certificate.dns_names, ["example.com"]);
    // The Issuer has both of its Secrets; the ClusterIssuer lacks its EAB key in
    // torhaus-system, and says so.
    let ready = |kind, namespace: &str, name: &str| {
        translation
            .report
            .object(kind, namespace, name)
            .and_then(|o| o.condition("Ready"))
            .map(|c| (c.status.to_string(), c.message.clone()))
            .expect("a Ready condition")
    };
    assert_eq!(
        ready(torhaus_k8s::ObjectKind::Issuer, "apps", "local").0,
        "True"
    );
    let (status, message) = ready(torhaus_k8s::ObjectKind::ClusterIssuer, "", "le");
    assert_eq!(status, "False");
    assert!(message.contains("Secret torhaus-system/eab"), "{message}");

    // The status writer's plan: each issuer's Ready condition goes into its status.
    let patches =
        torhaus_k8s::status::plan_status_patches(&first, CONTROLLER_NAME, "2026-01-01T00:00:00Z");
    let issuer_patch = patches
        .iter()
        .find(|p| p.key.kind == torhaus_k8s::ObjectKind::ClusterIssuer && p.key.name == "le")
        .expect("a status patch for the ClusterIssuer");
    assert_eq!(
        issuer_patch.body.pointer("/status/conditions/0/reason"),
        Some(&json!("SecretMissing")),
        "{}",
        issuer_patch.body
    );

    // The EAB Secret appears: the ClusterIssuer becomes ready without a restart.
    api.put(opaque("torhaus-system", "eab", "hmac", b"cluster eab"));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let snapshot = source.snapshots.borrow_and_update().clone();
        let ready = snapshot
            .translation
            .report
            .object(torhaus_k8s::ObjectKind::ClusterIssuer, "", "le")
            .and_then(|o| o.condition("Ready"))
            .is_some_and(|c| c.status.to_string() == "True");
        if ready {
            break;
        }
        tokio::time::timeout_at(deadline, source.snapshots.changed())
            .await
            .expect("the ClusterIssuer becomes ready in time")
            .expect("source running");
    }
    let secret_reads: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/secrets"))
        .map(|r| format!("{} {}", r.path, r.query))
        .collect();
    assert!(
        secret_reads.iter().all(|r| r.contains("fieldSelector")),
        "Secrets are only read by name: {secret_reads:?}"
    );
    assert!(
        !secret_reads.iter().any(|r| r.contains("unrelated")),
        "{secret_reads:?}"
    );
}

fn fast_lease(identity: &str) -> LeaseSettings {
    LeaseSettings {
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_millis(1000),
        retry_period: Duration::from_millis(100),
        duty: "ordering ACME certificates".to_owned(),
        ..LeaseSettings::new(
            "torhaus-system",
            torhaus_k8s::DEFAULT_ACME_LEASE_NAME,
            identity,
        )
    }
}

async fn controller(api: &FakeApi, id: usize) -> torhaus_k8s::Controller {
    let settings = torhaus_k8s::ControllerSettings {
        cluster_resource_namespace: "torhaus-system".to_owned(),
        addresses: vec![GatewayAddress::parse("192.0.2.10")],
        lease_namespace: Some("torhaus-system".to_owned()),
        lease_name: torhaus_k8s::DEFAULT_LEASE_NAME.to_owned(),
        acme_lease_name: torhaus_k8s::DEFAULT_ACME_LEASE_NAME.to_owned(),
        identity: format!("pod-{id}"),
        revocations: None,
    };
    torhaus_k8s::Controller::start_with_client(api.client(id), settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_replica_orders_and_the_acme_lease_hands_over_on_shutdown() {
    let api = FakeApi::new();
    api.put(issuer_manifest("Issuer", Some("apps"), "local"));
    let mut first = controller(&api, 0).await;
    let mut second = controller(&api, 1).await;
    let acme_first = first.start_acme_with(fast_lease("pod-0"));
    let acme_second = second.start_acme_with(fast_lease("pod-1"));
    let (mut may_first, mut may_second) = (acme_first.may_order, acme_second.may_order);
    // One of them wins, and then they never both hold it.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if *may_first.borrow_and_update() || *may_second.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = may_first.changed() => {}
            _ = may_second.changed() => {}
            () = tokio::time::sleep_until(deadline) => panic!("nobody took the ACME Lease"),
        }
    }
    let lease = api
        .get("Lease", "torhaus-system", "torhaus-acme")
        .expect("the ACME Lease exists");
    assert!(
        api.get("Lease", "torhaus-system", "torhaus-status-writer")
            .is_some(),
        "a Lease of its own, beside the status writer's"
    );
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .expect("held")
        .to_owned();
    let (leader, mut follower, mut follower_may) = if holder == "pod-0" {
        (first, second, may_second)
    } else {
        (second, first, may_first)
    };
    assert!(!*follower_may.borrow_and_update(), "two orderers at once");

    // The orderer shuts down: it releases the Lease and the other replica orders, well before
    // the Lease would have expired.
    leader.shutdown().await;
    tokio::time::timeout(DEADLINE, follower_may.wait_for(|may| *may))
        .await
        .expect("the other replica takes over in time")
        .expect("election running");
    let lease = api
        .get("Lease", "torhaus-system", "torhaus-acme")
        .expect("the ACME Lease exists");
    assert_ne!(lease["spec"]["holderIdentity"], json!(holder));
    // Meanwhile the status writer has written the Issuer's Ready condition: its Secrets are
    // missing.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let reason = api
            .get("Issuer", "apps", "local")
            .and_then(|issuer| issuer.pointer("/status/conditions/0/reason").cloned());
        if reason == Some(json!("SecretMissing")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Issuer's status was not written: {:?}",
            api.get("Issuer", "apps", "local")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same election is shared by later callers.
    let again = follower.start_acme();
    assert!(*again.may_order.borrow());
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn real_cluster_round_trips_a_certificate_secret() {
    let client = kube::Client::try_default().await.expect("KUBECONFIG");
    let namespace = client.default_namespace().to_owned();
    let store = SecretStore::new(client);
    let name = ObjectName::new(namespace, "torhaus-secret-store-test");
    store
        .save_certificate(&name, &certificate("AA=="))
        .await
        .expect("create");
    store
        .save_certificate(&name, &certificate("BB=="))
        .await
        .expect("replace");
    assert_eq!(
        store.load_certificate(&name).await.expect("load"),
        Some(certificate("BB=="))
    );
}

/// One replica as the binary wires Kubernetes mode: the controller, its Secret store and ACME
/// Lease, and the lifecycle fed from its translations.
struct AcmeReplica {
    controller: torhaus_k8s::Controller,
    translations: tokio::sync::watch::Receiver<std::sync::Arc<torhaus_k8s::Translation>>,
    may_order: tokio::sync::watch::Receiver<bool>,
    _status: tokio::sync::watch::Receiver<std::sync::Arc<Vec<torhaus_acme::CertificateStatus>>>,
}

async fn acme_replica(
    api: &FakeApi,
    id: usize,
    knot: &torhaus_tests::dns_rig::Knot,
) -> AcmeReplica {
    use std::sync::Arc;
    let mut controller = controller(api, id).await;
    let mut translations = tokio::time::timeout(DEADLINE, controller.translations())
        .await
        .expect("first sync in time")
        .expect("source running");
    let acme = controller.start_acme_with(fast_lease(&format!("pod-{id}")));
    let desired_of = |t: &torhaus_k8s::Translation| torhaus_acme::Desired {
        issuers: t.issuers.clone(),
        certificates: t.certificates.clone(),
    };
    let (desired, desired_rx) =
        tokio::sync::watch::channel(Arc::new(desired_of(&translations.borrow_and_update())));
    let mut feed = translations.clone();
    tokio::spawn(async move {
        while feed.changed().await.is_ok() {
            let next = desired_of(&feed.borrow_and_update());
            if desired.send(Arc::new(next)).is_err() {
                return;
            }
        }
    });
    let mut settings = torhaus_acme::LifecycleSettings {
        lookup: torhaus_dns::LookupConfig {
            resolvers: vec![knot.addr],
            authoritative_port: knot.addr.port(),
            ..torhaus_dns::LookupConfig::default()
        },
        retry_base: Duration::from_millis(500),
        ..torhaus_acme::LifecycleSettings::default()
    };
    settings.timings.propagation_interval = Duration::from_millis(200);
    let status = torhaus_acme::spawn_lifecycle(
        acme.store,
        desired_rx,
        acme.may_order.clone(),
        settings,
        Arc::new(torhaus_acme::NoEvents),
    );
    AcmeReplica {
        controller,
        translations,
        may_order: acme.may_order,
        _status: status,
    }
}

/// The leaf the translation serves from `source` (`namespace/name`), if any.
fn served_leaf(translation: &torhaus_k8s::Translation, source: &str) -> Option<Vec<u8>> {
    translation.served_leaf(source).map(<[u8]>::to_vec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_place_one_order_and_both_serve_the_secret_it_writes() -> anyhow::Result<()> {
    use torhaus_tests::dns_rig::{Knot, TSIG_KEY_NAME, TSIG_SECRET_B64, knotd_path};
    use torhaus_tests::pebble_rig::{Pebble, PebbleOptions, leaf_of, pebble_path};
    let (Some(knotd), Some(pebble)) = (knotd_path(), pebble_path()) else {
        eprintln!("SKIPPED: pebble or knotd is not installed (run scripts/install-deps.sh test)");
        return Ok(());
    };
    let knot = Knot::start(&knotd)?;
    let pebble = Pebble::start(&pebble, knot.addr, PebbleOptions::default())?;
    let api = FakeApi::new();
    api.put(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "torhaus"}, "spec": {"controllerName": CONTROLLER_NAME}
    }));
    let listener = |name: &str, hostname: &str| {
        json!({"name": name, "port": 443, "protocol": "HTTPS", "hostname": hostname,
               "tls": {"certificateRefs": [{"name": "example-tls"}]}})
    };
    api.put(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "apps", "generation": 1,
                     "annotations": {"torhaus.dev/issuer": "pebble"}},
        "spec": {"gatewayClassName": "torhaus", "listeners": [
            listener("apex", "example.test"), listener("all", "*.example.test")
        ]}
    }));
    api.put(json!({
        "apiVersion": "torhaus.dev/v1alpha1", "kind": "Issuer",
        "metadata": {"name": "pebble", "namespace": "apps"},
        "spec": {"acme": {
            "server": pebble.directory_url(),
            "privateKeySecretRef": {"name": "pebble-account"},
            "caBundle": pebble.tls_ca_pem,
            "dns01": {"rfc2136": {
                "nameserver": knot.addr.to_string(),
                "tsigKeyName": TSIG_KEY_NAME,
                "tsigSecretRef": {"name": "dns-tsig", "key": "secret"}
            }}
        }}
    }));
    api.put(opaque(
        "apps",
        "dns-tsig",
        "secret",
        TSIG_SECRET_B64.as_bytes(),
    ));

    let mut replicas = vec![
        acme_replica(&api, 0, &knot).await,
        acme_replica(&api, 1, &knot).await,
    ];
    // The orderer writes the Secret (through the API, with its label and annotations) ...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let secret = loop {
        if let Some(secret) = api.get("Secret", "apps", "example-tls") {
            break secret;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate Secret within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        secret["metadata"]["annotations"]["torhaus.dev/dns-names"],
        "*.example.test,example.test"
    );
    let account = api
        .get("Secret", "apps", "pebble-account")
        .expect("the account Secret");
    assert!(account["data"].get(ACCOUNT_KEY).is_some(), "{account}");
    let chain = String::from_utf8(decoded(&secret, "tls.crt"))?;
    let leaf = leaf_of(&chain)?;
    // ... and every replica serves it through its own watch, the orderer and the other alike.
    for replica in &mut replicas {
        tokio::time::timeout(
            DEADLINE,
            replica
                .translations
                .wait_for(|t| served_leaf(t, "apps/example-tls").as_ref() == Some(&leaf)),
        )
        .await
        .expect("the new certificate is served in time")
        .expect("source running");
    }
    assert_eq!(
        pebble.new_order_requests(),
        1,
        "exactly one replica ordered"
    );
    let orderers = replicas.iter().filter(|r| *r.may_order.borrow()).count();
    assert_eq!(orderers, 1);

    // The orderer goes; the other takes the Lease at once (released on shutdown). That the new
    // orderer rereads the store before it orders is the lifecycle's, tested in standalone mode
    // (tests/tests/acme.rs, two processes sharing one store).
    let position = replicas
        .iter()
        .position(|r| *r.may_order.borrow())
        .expect("an orderer");
    let orderer = replicas.remove(position);
    orderer.controller.shutdown().await;
    let mut other = replicas.remove(0);
    tokio::time::timeout(DEADLINE, other.may_order.wait_for(|may| *may))
        .await
        .expect("the other replica takes over")
        .expect("election running");
    drop(other);
    Ok(())
}
