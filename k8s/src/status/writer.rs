//! The status writer: while this replica leads, sends the patches each snapshot calls for,
//! skipping every status that is already published (or whose write is still in flight).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::experimental::gatewayclasses::GatewayClass;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::watch;

use super::{StatusPatch, normalize, plan_status_patches};
use crate::source::{KubeSnapshot, ObjectKey, ObjectKind};

/// The field manager torhaus writes status as.
const FIELD_MANAGER: &str = "torhaus";

#[derive(Debug, Clone)]
pub struct StatusWriterOptions {
    pub controller_name: String,
    /// After a failed write, how long until the snapshot is tried again.
    pub retry: Duration,
}

impl Default for StatusWriterOptions {
    fn default() -> Self {
        Self {
            controller_name: crate::CONTROLLER_NAME.to_owned(),
            retry: Duration::from_secs(5),
        }
    }
}

/// What the writer did so far, for readiness of tests and for logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Rounds handled (a new snapshot, a change of leadership, or a retry).
    pub rounds: u64,
    /// The `seq` of the last snapshot handled while leading.
    pub last_snapshot: u64,
    pub patches_sent: u64,
    pub patches_failed: u64,
}

/// Starts the writer on the current tokio runtime; it ends when the snapshot channel closes.
pub fn spawn_status_writer(
    client: Client,
    mut snapshots: watch::Receiver<Arc<KubeSnapshot>>,
    mut leader: watch::Receiver<bool>,
    options: StatusWriterOptions,
) -> watch::Receiver<WriterStats> {
    let (stats_sender, stats) = watch::channel(WriterStats::default());
    tokio::spawn(async move {
        // Patches sent and not yet seen back through the watchers: key → (status it was
        // computed from, body). The same patch is not sent twice for the same observed status.
        let mut in_flight: HashMap<ObjectKey, (Value, Value)> = HashMap::new();
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut stats = WriterStats::default();
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                changed = leader.changed() => if changed.is_err() { return },
                () = retry => {}
            }
            retry_at = None;
            stats.rounds += 1;
            if !*leader.borrow_and_update() {
                in_flight.clear();
                stats_sender.send_replace(stats.clone());
                continue;
            }
            let snapshot = snapshots.borrow_and_update().clone();
            let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
            for patch in plan_status_patches(&snapshot, &options.controller_name, &now) {
                let pending = (patch.observed.clone(), normalize(&patch.body));
                if in_flight.get(&patch.key) == Some(&pending) {
                    continue;
                }
                match send(&client, &patch).await {
                    Ok(()) => {
                        stats.patches_sent += 1;
                        in_flight.insert(patch.key.clone(), pending);
                    }
                    // Deleted meanwhile: nothing to report on.
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => {
                        stats.patches_failed += 1;
                        in_flight.remove(&patch.key);
                        // 409: another writer changed the object; its watch event brings a
                        // new snapshot, and the retry covers the case where none comes.
                        tracing::warn!(object = %patch.key, %error, "writing status failed; retrying");
                        retry_at = Some(tokio::time::Instant::now() + options.retry);
                    }
                }
            }
            stats.last_snapshot = snapshot.seq;
            stats_sender.send_replace(stats.clone());
        }
    });
    stats
}

/// Sent untyped: the answer is not read, so an object the typed model cannot decode (a newer
/// release's fields) never turns a successful write into a failure that is retried forever.
async fn send(client: &Client, patch: &StatusPatch) -> Result<(), kube::Error> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let key = &patch.key;
    let api: Api<DynamicObject> = match key.kind {
        ObjectKind::GatewayClass => {
            Api::all_with(client.clone(), &ApiResource::erase::<GatewayClass>(&()))
        }
        ObjectKind::Gateway => Api::namespaced_with(
            client.clone(),
            &key.namespace,
            &ApiResource::erase::<Gateway>(&()),
        ),
        ObjectKind::HttpRoute => Api::namespaced_with(
            client.clone(),
            &key.namespace,
            &ApiResource::erase::<HttpRoute>(&()),
        ),
        ObjectKind::AuthPolicy => Api::namespaced_with(
            client.clone(),
            &key.namespace,
            &crate::source::auth_policy_resource(),
        ),
        ObjectKind::Issuer => Api::namespaced_with(
            client.clone(),
            &key.namespace,
            &crate::source::issuer_resource(),
        ),
        ObjectKind::ClusterIssuer => {
            Api::all_with(client.clone(), &crate::source::cluster_issuer_resource())
        }
        ObjectKind::DnsPublisher => Api::namespaced_with(
            client.clone(),
            &key.namespace,
            &crate::source::dns_publisher_resource(),
        ),
        // The planner only produces patches for the kinds above.
        _ => return Ok(()),
    };
    api.patch_status(&key.name, &params, &Patch::Merge(&patch.body))
        .await
        .map(drop)
}
