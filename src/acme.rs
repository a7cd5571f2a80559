//! Wiring of ACME in standalone mode: the directory store under the state directory, the file
//! lock that elects the one process that orders, the lifecycle fed from the translations, and
//! its events into the Prometheus metrics.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use torhaus_acme::{
    CertificateState, CertificateStatus, CertificateStore, Desired, DirectoryStore,
    LifecycleEvents, LifecycleSettings, OrderTimings, spawn_leader_lock, spawn_lifecycle,
};
use torhaus_dns::LookupConfig;
use torhaus_gateway::Metrics;
use torhaus_k8s::Translation;

use crate::cli::AcmeArgs;

/// How often a process that does not hold the lock tries to take it.
const LOCK_POLL: Duration = Duration::from_secs(1);

/// Opens the store (`--acme-store`, else `<state-dir>/acme`).
pub fn open_store(args: &AcmeArgs, state_dir: &Path) -> anyhow::Result<DirectoryStore> {
    let root = args
        .acme_store
        .clone()
        .unwrap_or_else(|| state_dir.join("acme"));
    DirectoryStore::open(&root)
        .with_context(|| format!("opening the ACME store at {}", root.display()))
}

/// What the lifecycle should keep issued, from one translation.
fn desired_of(translation: &Translation) -> Desired {
    Desired {
        issuers: translation.issuers.clone(),
        certificates: translation.certificates.clone(),
    }
}

/// Standalone mode: the file lock in `store` elects the one process among those sharing it
/// that orders certificates and writes DNS records. Must run inside the runtime.
pub fn leader_lock(store: &DirectoryStore) -> anyhow::Result<watch::Receiver<bool>> {
    spawn_leader_lock(store.lock_path(), LOCK_POLL).context("the ACME lock")
}

/// The lifecycle over any store and leadership signal (cluster mode passes its Secret store
/// and its Lease here), fed by `translations`, counting into `metrics`.
pub fn start_lifecycle(
    store: Arc<dyn CertificateStore>,
    may_order: watch::Receiver<bool>,
    args: &AcmeArgs,
    mut translations: watch::Receiver<Arc<Translation>>,
    metrics: Arc<Metrics>,
) -> watch::Receiver<Arc<Vec<CertificateStatus>>> {
    let first = desired_of(&translations.borrow_and_update());
    let (desired, desired_receiver) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        while translations.changed().await.is_ok() {
            let next = desired_of(&translations.borrow_and_update());
            // Every translation is passed on (even an unchanged one): the lifecycle rereads the
            // store then, which is how a process that does not order learns of new Secrets.
            if desired.send(Arc::new(next)).is_err() {
                return;
            }
        }
    });
    let settings = LifecycleSettings {
        lookup: LookupConfig {
            resolvers: args.acme_dns_resolver.clone(),
            authoritative_port: args.acme_dns_port,
            ..LookupConfig::default()
        },
        timings: OrderTimings {
            propagation_timeout: args.acme_propagation_timeout,
            propagation_interval: Duration::from_millis(500),
            ..OrderTimings::default()
        },
        retry_base: args.acme_retry_base,
        permanent_retry: args.acme_permanent_retry,
        ..LifecycleSettings::default()
    };
    let status = spawn_lifecycle(
        store,
        desired_receiver,
        may_order,
        settings,
        Arc::new(MetricsEvents(metrics)),
    );
    let mut watched = status.clone();
    tokio::spawn(async move {
        while watched.changed().await.is_ok() {
            let statuses = watched.borrow_and_update().clone();
            for status in statuses.iter() {
                if status.state == CertificateState::Stopped {
                    tracing::error!(
                        certificate = %status.secret,
                        issuer = %status.issuer,
                        error = status.last_error.as_deref().unwrap_or(""),
                        "certificate ordering is stopped"
                    );
                }
            }
        }
    });
    status
}

#[derive(Debug)]
struct MetricsEvents(Arc<Metrics>);

impl LifecycleEvents for MetricsEvents {
    fn order(&self, issuer: &str, outcome: &str) {
        self.0.acme_order(issuer, outcome);
    }

    fn renewal_failed(&self, certificate: &str) {
        self.0.certificate_renewal_failed(certificate);
    }

    fn dns_request(&self, provider: &str, operation: &str, outcome: &str) {
        self.0.dns_provider_request(provider, operation, outcome);
    }
}
