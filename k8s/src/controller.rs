//! Kubernetes mode as one piece for the binary: connect, watch, translate, elect a leader and
//! write status, and hand ACME its Secret store and the Lease that elects the replica that
//! orders, without the binary ever naming a kube type.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use torhaus_acme::CertificateStore;

use crate::report::GatewayAddress;
use crate::secret_store::SecretStore;
use crate::source::{KubernetesOptions, KubernetesSource, spawn_kubernetes_source};
use crate::status::{
    LeaderElection, LeaseSettings, StatusWriterOptions, spawn_leader_election, spawn_status_writer,
};
use crate::translate::{TranslateOptions, Translation};

/// The default name of the Lease the replicas elect the status writer with.
pub const DEFAULT_LEASE_NAME: &str = "torhaus-status-writer";

/// The default name of the Lease that elects the one replica that places ACME orders. A Lease
/// of its own, not the status writer's: the roles are independent (status writes are quick
/// and frequent, an order holds DNS and CA round trips for minutes), a hand-over of one must
/// not interrupt the other, and `kubectl get lease` shows who does what.
pub const DEFAULT_ACME_LEASE_NAME: &str = "torhaus-acme";

/// How Kubernetes mode runs.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// Published in `status.addresses` of every served Gateway; must not be empty.
    pub addresses: Vec<GatewayAddress>,
    /// Namespace of the Lease; `None` means the client's namespace (the pod's own in-cluster).
    pub lease_namespace: Option<String>,
    pub lease_name: String,
    /// The Lease electing the replica that orders ACME certificates (same namespace).
    pub acme_lease_name: String,
    /// This replica's identity in the Leases (the pod name).
    pub identity: String,
    /// The sessions revoked on this replica (its identity policies'), shared with the other
    /// replicas through the Secret [`REVOCATIONS_SECRET`] in the Lease's namespace.
    pub revocations: Option<Arc<torhaus_policies::revocation::RevocationList>>,
}

/// The Secret (in the Lease's namespace) through which replicas share revoked sessions.
pub const REVOCATIONS_SECRET: &str = "torhaus-session-revocations";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(
        "no Gateway address: set --gateway-address to the VIP or node address torhaus serves on"
    )]
    NoAddress,
    #[error("cannot configure a Kubernetes client (in-cluster service account or KUBECONFIG)")]
    Connect(#[source] kube::Error),
}

/// A running controller.
#[derive(Debug)]
pub struct Controller {
    source: KubernetesSource,
    election: LeaderElection,
    secrets: SecretStore,
    acme_lease: LeaseSettings,
    acme_election: Option<LeaderElection>,
}

/// What the ACME lifecycle needs in Kubernetes mode.
#[derive(Debug, Clone)]
pub struct ClusterAcme {
    /// Certificates as `kubernetes.io/tls` Secrets, accounts in the issuers' account Secrets.
    pub store: Arc<dyn CertificateStore>,
    /// True while this replica holds the ACME Lease: only then may it order.
    pub may_order: watch::Receiver<bool>,
}

impl Controller {
    /// Connects (in-cluster config, else KUBECONFIG) and starts the watchers, the election and
    /// the status writer on the current tokio runtime.
    pub async fn start(settings: ControllerSettings) -> Result<Self, ControllerError> {
        if settings.addresses.is_empty() {
            return Err(ControllerError::NoAddress);
        }
        let client = kube::Client::try_default()
            .await
            .map_err(ControllerError::Connect)?;
        Ok(Self::start_with_client(client, settings).await)
    }

    /// [`Controller::start`] with a given client (tests use a mock API server).
    pub async fn start_with_client(client: kube::Client, settings: ControllerSettings) -> Self {
        let namespace = settings
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let crd_bundle_version = crd_bundle_version(&client).await;
        let options = KubernetesOptions {
            translate: TranslateOptions {
                addresses: settings.addresses,
                crd_bundle_version,
                ..TranslateOptions::default()
            },
            ..KubernetesOptions::default()
        };
        let source = spawn_kubernetes_source(client.clone(), options);
        if let Some(list) = settings.revocations {
            crate::revocations::spawn_revocation_sync(
                client.clone(),
                &namespace,
                REVOCATIONS_SECRET,
                list,
            );
        }
        let election = spawn_leader_election(
            client.clone(),
            LeaseSettings::new(&namespace, &settings.lease_name, &settings.identity),
        );
        spawn_status_writer(
            client.clone(),
            source.snapshots.clone(),
            election.is_leader.clone(),
            StatusWriterOptions::default(),
        );
        tracing::info!(lease = %format!("{namespace}/{}", settings.lease_name), identity = %settings.identity, "watching the Kubernetes API");
        let acme_lease = LeaseSettings {
            duty: "ordering ACME certificates".to_owned(),
            ..LeaseSettings::new(&namespace, &settings.acme_lease_name, &settings.identity)
        };
        Self {
            source,
            election,
            secrets: SecretStore::new(client),
            acme_lease,
            acme_election: None,
        }
    }

    /// Starts campaigning for the ACME Lease (once; later calls share that election) and
    /// returns the Secret store with the signal that this replica may order.
    pub fn start_acme(&mut self) -> ClusterAcme {
        let client = self.secrets.client();
        let lease = &self.acme_lease;
        let election = self.acme_election.get_or_insert_with(|| {
            tracing::info!(lease = %format!("{}/{}", lease.namespace, lease.name), "ACME: certificates are Secrets; the holder of this Lease orders them");
            spawn_leader_election(client.clone(), lease.clone())
        });
        ClusterAcme {
            store: Arc::new(self.secrets.clone()),
            may_order: election.is_leader.clone(),
        }
    }

    /// [`Controller::start_acme`] with other Lease settings (tests use short timings); they
    /// take effect only in the first call, which starts the election.
    pub fn start_acme_with(&mut self, lease: LeaseSettings) -> ClusterAcme {
        self.acme_lease = lease;
        self.start_acme()
    }

    /// Turns true after the first full sync (every watcher listed, first translation out).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.source.ready.clone()
    }

    /// Whether this replica currently writes status.
    pub fn is_leader(&self) -> watch::Receiver<bool> {
        self.election.is_leader.clone()
    }

    /// Waits for the first full sync, logging every 10 s while the API server keeps us waiting,
    /// then returns the translations (the first one already current).
    pub async fn translations(&mut self) -> Option<watch::Receiver<Arc<Translation>>> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.source.first_snapshot()).await
            {
                Ok(Some(_)) => return Some(self.source.translations()),
                Ok(None) => return None,
                Err(_) => tracing::warn!(
                    "still waiting for the first full sync with the Kubernetes API; not ready"
                ),
            }
        }
    }

    /// Hands the Leases over (those held) so another replica writes status and orders at once.
    /// Bounded: with the API server gone, shutdown must not wait for it (the Leases then
    /// simply expire).
    pub async fn shutdown(self) {
        let acme_election = self.acme_election;
        let acme = async move {
            if let Some(election) = acme_election {
                election.release().await;
            }
        };
        let both = futures::future::join(self.election.release(), acme);
        if tokio::time::timeout(Duration::from_secs(3), both)
            .await
            .is_err()
        {
            tracing::warn!("could not release the Leases in time; they expire by themselves");
        }
    }
}

/// The annotation the Gateway API release puts on its CRDs.
const BUNDLE_VERSION: &str = "gateway.networking.k8s.io/bundle-version";

/// The release of the installed Gateway API CRDs, read once at start from the Gateway CRD
/// (GatewayClass SupportedVersion reports it). Best effort: without permission to read CRDs
/// the version is unknown and assumed supported.
async fn crd_bundle_version(client: &kube::Client) -> Option<String> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api = kube::Api::<CustomResourceDefinition>::all(client.clone());
    match api.get_metadata("gateways.gateway.networking.k8s.io").await {
        Ok(crd) => {
            let version = crd
                .metadata
                .annotations
                .and_then(|mut a| a.remove(BUNDLE_VERSION));
            tracing::info!(version = ?version, "Gateway API CRDs found");
            version
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the Gateway CRD; its bundle version is unknown");
            None
        }
    }
}
