//! Kubernetes mode as one piece for the binary: connect, watch, translate, elect a leader and
//! write status, without the binary ever naming a kube type.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::report::GatewayAddress;
use crate::source::{KubernetesOptions, KubernetesSource, spawn_kubernetes_source};
use crate::status::{
    LeaderElection, LeaseSettings, StatusWriterOptions, spawn_leader_election, spawn_status_writer,
};
use crate::translate::{TranslateOptions, Translation};

/// The default name of the Lease the replicas elect the status writer with.
pub const DEFAULT_LEASE_NAME: &str = "torhaus-status-writer";

/// How Kubernetes mode runs.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// Published in `status.addresses` of every served Gateway; must not be empty.
    pub addresses: Vec<GatewayAddress>,
    /// Namespace of the Lease; `None` means the client's namespace (the pod's own in-cluster).
    pub lease_namespace: Option<String>,
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name).
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
            client,
            source.snapshots.clone(),
            election.is_leader.clone(),
            StatusWriterOptions::default(),
        );
        tracing::info!(lease = %format!("{namespace}/{}", settings.lease_name), identity = %settings.identity, "watching the Kubernetes API");
        Self { source, election }
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

    /// Hands the Lease over (if held) so another replica writes status at once. Bounded: with
    /// the API server gone, shutdown must not wait for it (the Lease then simply expires).
    pub async fn shutdown(self) {
        if tokio::time::timeout(Duration::from_secs(3), self.election.release())
            .await
            .is_err()
        {
            tracing::warn!("could not release the Lease in time; it expires by itself");
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
