//! Wiring of ACME: in standalone mode the directory store under the state directory and the
//! file lock that elects the one process that orders; in Kubernetes mode the Secret store and
//! the Lease the controller hands over. In both, the lifecycle fed from the translations, and
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

/// What of a translation concerns the lifecycle: what to issue, and the leaf certificate
/// served from each managed Secret. When the latter changes, a Secret was written (by the
/// process that orders, seen here through the source) or removed, and the lifecycle rereads the
/// store; other translations (in Kubernetes mode, every EndpointSlice change) do not make it
/// reread every Secret.
#[derive(Debug, PartialEq)]
struct Feed {
    desired: Desired,
    served: Vec<(String, Option<Vec<u8>>)>,
}

impl Feed {
    fn of(translation: &Translation) -> Self {
        Self {
            desired: desired_of(translation),
            served: served_of(translation),
        }
    }
}

fn served_of(translation: &Translation) -> Vec<(String, Option<Vec<u8>>)> {
    translation
        .certificates
        .iter()
        .map(|certificate| {
            let source = format!(
                "{}/{}",
                certificate.secret.namespace, certificate.secret.name
            );
            let leaf = translation.served_leaf(&source).map(<[u8]>::to_vec);
            (source, leaf)
        })
        .collect()
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
    let mut fed = Feed::of(&translations.borrow_and_update());
    let (desired, desired_receiver) = watch::channel(Arc::new(fed.desired.clone()));
    tokio::spawn(async move {
        while translations.changed().await.is_ok() {
            let next = Feed::of(&translations.borrow_and_update());
            // Passed on when what to issue changed, or when a managed Secret changed: the
            // lifecycle rereads the store on every message, which is how a process that does
            // not order learns of the Secrets the orderer writes.
            if next == fed {
                continue;
            }
            fed = next;
            if desired.send(Arc::new(fed.desired.clone())).is_err() {
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

#[cfg(test)]
#[allow(clippy::expect_used, reason = "tests fail loudly on broken fixtures")]
mod tests {
    use std::path::Path;

    use torhaus_k8s::{ObjectSet, TranslateOptions, parse_manifests, translate};

    use super::*;

    const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: torhaus}
spec: {controllerName: torhaus.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: apps, annotations: {torhaus.dev/issuer: le}}
spec:
  gatewayClassName: torhaus
  listeners:
    - {name: https, port: 443, protocol: HTTPS, hostname: example.com, tls: {certificateRefs: [{name: example-tls}]}}
---
apiVersion: torhaus.dev/v1alpha1
kind: Issuer
metadata: {name: le, namespace: apps}
spec:
  acme:
    server: https://acme.example/directory
    privateKeySecretRef: {name: le-account}
    dns01: {rfc2136: {nameserver: "192.0.2.53:53", tsigKeyName: k, tsigSecretRef: {name: tsig, key: secret}}}
"#;

    fn translation(extra: &str) -> Translation {
        let text = format!("{BASE}\n---\n{extra}");
        let (objects, problems) = parse_manifests(&text, Path::new("test.yaml"));
        assert!(problems.is_empty(), "{problems:?}");
        let mut set = ObjectSet::default();
        for (object, location) in objects {
            set.insert(object, location);
        }
        translate(&set, &TranslateOptions::default())
    }

    fn tls_secret() -> String {
        use base64::Engine as _;
        let certified = rcgen::generate_simple_self_signed(vec!["example.com".to_owned()])
            .expect("certificate");
        let encode = |pem: String| base64::engine::general_purpose::STANDARD.encode(pem);
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: example-tls, namespace: apps}}\n\
             type: kubernetes.io/tls\ndata: {{tls.crt: {}, tls.key: {}}}\n",
            encode(certified.cert.pem()),
            encode(certified.signing_key.serialize_pem())
        )
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: apps}\nspec: {ports: [{port: 80}]}\n";

    #[test]
    fn the_lifecycle_is_fed_only_what_concerns_it() {
        let base = Feed::of(&translation(""));
        assert_eq!(base.desired.certificates.len(), 1, "{base:?}");
        // An unrelated change (in a cluster: endpoints, all the time) is not passed on.
        assert_eq!(Feed::of(&translation(SERVICE)), base);
        // The managed Secret appearing (written by the orderer) is, and so is a renewal.
        let issued = Feed::of(&translation(&tls_secret()));
        assert_ne!(issued, base);
        assert_eq!(issued.desired, base.desired);
        assert_ne!(Feed::of(&translation(&tls_secret())), issued);
    }
}
