//! The lifecycle as a library, against a real Pebble validating DNS-01 at a real knotd, with an
//! in-memory store: nothing is ordered without the "may order" signal, leadership starts the
//! order, the account and certificate land in the store, changed names reorder, and an issuer
//! without its DNS credentials says so instead of ordering.
#![allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use torhaus_acme::{
    CertificateState, CertificateStatus, CertificateStore, Desired, IssuerConfig, IssuerSpec,
    LifecycleSettings, NoEvents, SecretMaterial, StoreError, StoredCertificate, spawn_lifecycle,
};
use torhaus_dns::{LookupConfig, SecretKeyRef};
use torhaus_model::{IssuerKind, IssuerRef, ListenerId, ManagedCertificate, ObjectName};
use torhaus_tests::dns_rig::{Knot, TSIG_KEY_NAME, TSIG_SECRET_B64, knotd_path};
use torhaus_tests::pebble_rig::{Pebble, PebbleOptions, pebble_path};
use torhaus_tests::process::wait_for;

#[derive(Debug, Default)]
struct MemoryStore {
    certificates: Mutex<BTreeMap<ObjectName, StoredCertificate>>,
    accounts: Mutex<BTreeMap<ObjectName, Vec<u8>>>,
    /// Secrets that hold something else (as a Secret of another type in a cluster).
    foreign: Mutex<BTreeMap<ObjectName, String>>,
}

impl MemoryStore {
    fn refuse(&self, secret: &ObjectName) -> Result<(), StoreError> {
        match self.foreign.lock().expect("lock").get(secret) {
            Some(why) => Err(StoreError::Foreign(why.clone())),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl CertificateStore for MemoryStore {
    async fn load_certificate(
        &self,
        secret: &ObjectName,
    ) -> Result<Option<StoredCertificate>, StoreError> {
        self.refuse(secret)?;
        Ok(self.certificates.lock().expect("lock").get(secret).cloned())
    }
    async fn save_certificate(
        &self,
        secret: &ObjectName,
        certificate: &StoredCertificate,
    ) -> Result<(), StoreError> {
        self.refuse(secret)?;
        self.certificates
            .lock()
            .expect("lock")
            .insert(secret.clone(), certificate.clone());
        Ok(())
    }
    async fn load_account(&self, secret: &ObjectName) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.accounts.lock().expect("lock").get(secret).cloned())
    }
    async fn save_account(
        &self,
        secret: &ObjectName,
        credentials: &[u8],
    ) -> Result<(), StoreError> {
        self.accounts
            .lock()
            .expect("lock")
            .insert(secret.clone(), credentials.to_vec());
        Ok(())
    }
}

fn rig() -> anyhow::Result<Option<(Knot, Pebble)>> {
    let (Some(knotd), Some(pebble)) = (knotd_path(), pebble_path()) else {
        eprintln!("SKIPPED: pebble or knotd is not installed (run scripts/install-deps.sh test)");
        return Ok(None);
    };
    let knot = Knot::start(&knotd)?;
    let pebble = Pebble::start(&pebble, knot.addr, PebbleOptions::default())?;
    Ok(Some((knot, pebble)))
}

fn issuer_ref() -> IssuerRef {
    IssuerRef {
        kind: IssuerKind::Issuer,
        name: ObjectName::new("apps", "pebble"),
    }
}

fn issuer(knot: &Knot, pebble: &Pebble, with_secret: bool) -> anyhow::Result<IssuerConfig> {
    let spec: IssuerSpec = serde_json::from_value(serde_json::json!({"acme": {
        "server": pebble.directory_url(),
        "privateKeySecretRef": {"name": "pebble-account"},
        "caBundle": pebble.tls_ca_pem,
        "dns01": {"rfc2136": {
            "nameserver": knot.addr.to_string(),
            "tsigKeyName": TSIG_KEY_NAME,
            "tsigSecretRef": {"name": "tsig", "key": "secret"},
        }},
    }}))?;
    let mut secrets = SecretMaterial::default();
    if with_secret {
        secrets.insert(
            &SecretKeyRef {
                name: "tsig".into(),
                key: "secret".into(),
            },
            TSIG_SECRET_B64.as_bytes().to_vec(),
        );
    }
    Ok(IssuerConfig {
        id: issuer_ref(),
        spec,
        secrets,
    })
}

fn certificate(names: &[&str]) -> ManagedCertificate {
    ManagedCertificate {
        secret: ObjectName::new("apps", "example-tls"),
        issuer: issuer_ref(),
        dns_names: names.iter().map(|n| (*n).to_owned()).collect(),
        listeners: vec![ListenerId {
            gateway: ObjectName::new("apps", "edge"),
            section: "https".into(),
        }],
    }
}

fn settings(knot: &Knot) -> LifecycleSettings {
    let mut settings = LifecycleSettings {
        lookup: LookupConfig {
            resolvers: vec![knot.addr],
            authoritative_port: knot.addr.port(),
            ..LookupConfig::default()
        },
        retry_base: Duration::from_millis(500),
        ..LifecycleSettings::default()
    };
    settings.timings.propagation_interval = Duration::from_millis(200);
    settings
}

async fn wait_state(
    status: &watch::Receiver<Arc<Vec<CertificateStatus>>>,
    what: &str,
    accept: impl Fn(&CertificateStatus) -> bool,
) -> anyhow::Result<CertificateStatus> {
    wait_for(what, Duration::from_secs(60), || {
        let found = status.borrow().iter().find(|s| accept(s)).cloned();
        async move { found }
    })
    .await
}

#[tokio::test]
async fn nothing_is_ordered_until_leadership_then_one_order_issues_and_stores() -> anyhow::Result<()>
{
    let Some((knot, pebble)) = rig()? else {
        return Ok(());
    };
    let store = Arc::new(MemoryStore::default());
    let (desired, desired_rx) = watch::channel(Arc::new(Desired {
        issuers: vec![issuer(&knot, &pebble, true)?],
        certificates: vec![certificate(&["*.example.test", "example.test"])],
    }));
    let (leader, leader_rx) = watch::channel(false);
    let status = spawn_lifecycle(
        store.clone(),
        desired_rx,
        leader_rx,
        settings(&knot),
        Arc::new(NoEvents),
    );
    // The status is published after the lifecycle decided what to do: pending, no order.
    let pending = wait_state(&status, "a pending status", |s| {
        s.state == CertificateState::Pending
    })
    .await?;
    assert_eq!(pending.orders, 0);
    assert_eq!(pebble.new_order_requests(), 0);

    leader.send_replace(true);
    let valid = wait_state(&status, "a valid certificate", |s| {
        s.state == CertificateState::Valid
    })
    .await?;
    assert_eq!(valid.orders, 1);
    assert!(valid.not_after_unix.is_some() && valid.next_renewal_unix.is_some());
    assert!(valid.next_renewal_unix < valid.not_after_unix);
    assert_eq!(pebble.new_order_requests(), 1);
    let stored = store
        .certificates
        .lock()
        .expect("lock")
        .get(&ObjectName::new("apps", "example-tls"))
        .cloned()
        .expect("the certificate is stored");
    assert_eq!(
        stored
            .annotations
            .get("torhaus.dev/dns-names")
            .map(String::as_str),
        Some("*.example.test,example.test")
    );
    assert!(stored.annotations.contains_key("torhaus.dev/renew-after"));
    assert!(
        store
            .accounts
            .lock()
            .expect("lock")
            .contains_key(&ObjectName::new("apps", "pebble-account"))
    );

    // A new name: a new order with all names; the account is reused.
    desired.send_replace(Arc::new(Desired {
        issuers: vec![issuer(&knot, &pebble, true)?],
        certificates: vec![certificate(&[
            "*.example.test",
            "example.test",
            "other.example.test",
        ])],
    }));
    wait_state(&status, "the reordered certificate", |s| {
        s.state == CertificateState::Valid && s.dns_names.len() == 3
    })
    .await?;
    assert_eq!(pebble.new_order_requests(), 2);
    assert_eq!(pebble.log().matches("POST /sign-me-up").count(), 1);
    Ok(())
}

#[tokio::test]
async fn an_issuer_without_its_dns_secret_is_not_ready_and_orders_nothing() -> anyhow::Result<()> {
    let Some((knot, pebble)) = rig()? else {
        return Ok(());
    };
    let (_desired, desired_rx) = watch::channel(Arc::new(Desired {
        issuers: vec![issuer(&knot, &pebble, false)?],
        certificates: vec![certificate(&["example.test"])],
    }));
    let (_leader, leader_rx) = watch::channel(true);
    let status = spawn_lifecycle(
        Arc::new(MemoryStore::default()),
        desired_rx,
        leader_rx,
        settings(&knot),
        Arc::new(NoEvents),
    );
    let not_ready = wait_state(&status, "issuer not ready", |s| {
        s.state == CertificateState::IssuerNotReady
    })
    .await?;
    let error = not_ready.last_error.unwrap_or_default();
    assert!(error.contains("Issuer apps/pebble"), "{error}");
    assert!(error.contains("tsig"), "{error}");
    assert_eq!(pebble.new_order_requests(), 0);
    Ok(())
}

/// A TCP server that accepts connections and never answers: an ACME request to it hangs in the
/// TLS handshake, so an order stays in flight for as long as the test wants.
async fn hanging_server()
-> anyhow::Result<(std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    Ok((addr, accepted))
}

/// An issuer whose CA accepts connections and never answers: its orders stay in flight.
fn hanging_issuer(ca: std::net::SocketAddr) -> anyhow::Result<IssuerConfig> {
    let ca_root = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let spec: IssuerSpec = serde_json::from_value(serde_json::json!({"acme": {
        "server": format!("https://{ca}/directory"),
        "privateKeySecretRef": {"name": "hanging-account"},
        "caBundle": ca_root.cert.pem(),
        "dns01": {"rfc2136": {
            "nameserver": "127.0.0.1:9",
            "tsigKeyName": TSIG_KEY_NAME,
            "tsigSecretRef": {"name": "tsig", "key": "secret"},
        }},
    }}))?;
    let mut secrets = SecretMaterial::default();
    secrets.insert(
        &SecretKeyRef {
            name: "tsig".into(),
            key: "secret".into(),
        },
        TSIG_SECRET_B64.as_bytes().to_vec(),
    );
    Ok(IssuerConfig {
        id: issuer_ref(),
        spec,
        secrets,
    })
}

#[tokio::test]
async fn losing_leadership_abandons_the_order_in_flight() -> anyhow::Result<()> {
    let (ca, accepted) = hanging_server().await?;
    let (_desired, desired_rx) = watch::channel(Arc::new(Desired {
        issuers: vec![hanging_issuer(ca)?],
        certificates: vec![certificate(&["example.test"])],
    }));
    let (leader, leader_rx) = watch::channel(true);
    let status = spawn_lifecycle(
        Arc::new(MemoryStore::default()),
        desired_rx,
        leader_rx,
        LifecycleSettings::default(),
        Arc::new(NoEvents),
    );
    wait_state(&status, "an order in flight", |s| {
        s.state == CertificateState::Ordering
    })
    .await?;
    wait_for("the CA to be contacted", Duration::from_secs(60), || {
        let contacted = accepted.load(std::sync::atomic::Ordering::SeqCst) > 0;
        async move { contacted.then_some(()) }
    })
    .await?;

    // The CA never answers, so only abandoning the order ends the "ordering" state.
    leader.send_replace(false);
    let abandoned = wait_state(&status, "the order abandoned", |s| {
        s.state == CertificateState::Pending
    })
    .await?;
    assert_eq!(abandoned.orders, 1);
    assert_eq!(abandoned.failures, 0, "an abandoned order is not a failure");

    // Leadership back: the certificate is ordered again, so nothing was left wedged.
    leader.send_replace(true);
    wait_state(&status, "a second order", |s| {
        s.state == CertificateState::Ordering && s.orders == 2
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn nothing_is_ordered_for_a_secret_the_store_refuses_until_it_is_freed() -> anyhow::Result<()>
{
    let (ca, _accepted) = hanging_server().await?;
    let store = Arc::new(MemoryStore::default());
    let secret = ObjectName::new("apps", "example-tls");
    store.foreign.lock().expect("lock").insert(
        secret.clone(),
        "Secret apps/example-tls is of type Opaque, not kubernetes.io/tls".to_owned(),
    );
    let wanted = Desired {
        issuers: vec![hanging_issuer(ca)?],
        certificates: vec![certificate(&["example.test"])],
    };
    let (desired, desired_rx) = watch::channel(Arc::new(wanted.clone()));
    let (_leader, leader_rx) = watch::channel(true);
    let status = spawn_lifecycle(
        Arc::clone(&store) as Arc<dyn CertificateStore>,
        desired_rx,
        leader_rx,
        LifecycleSettings::default(),
        Arc::new(NoEvents),
    );
    // Were it ordered, the order would hang at the CA and the state stay "ordering".
    let stopped = wait_state(&status, "ordering stopped", |s| {
        s.state == CertificateState::Stopped
    })
    .await?;
    assert_eq!(stopped.orders, 0);
    let error = stopped.last_error.unwrap_or_default();
    assert!(
        error.contains("Secret apps/example-tls is of type Opaque"),
        "{error}"
    );

    // The Secret is deleted: the next reread of the store (here, a new translation) orders.
    store.foreign.lock().expect("lock").clear();
    desired.send_replace(Arc::new(wanted));
    wait_state(&status, "an order", |s| {
        s.state == CertificateState::Ordering && s.orders == 1
    })
    .await?;
    Ok(())
}
