//! Wiring of the DNS records sync (`DNSPublisher` objects): fed from the translations, writing
//! only while this process leads (the ACME store's lock in standalone mode, the status Lease in
//! Kubernetes mode), counted into the Prometheus metrics.

use std::sync::Arc;

use tokio::sync::watch;
use torhaus_dns::publisher::{PublisherStatus, SyncEvents, SyncSettings, spawn_records_sync};
use torhaus_gateway::Metrics;
use torhaus_k8s::Translation;

use crate::cli::DnsRecordsArgs;

/// Starts the records loop on the current runtime. Returns every publisher's status.
pub fn start(
    mut translations: watch::Receiver<Arc<Translation>>,
    may_write: watch::Receiver<bool>,
    args: &DnsRecordsArgs,
    metrics: Arc<Metrics>,
) -> watch::Receiver<Arc<Vec<PublisherStatus>>> {
    let first = translations.borrow_and_update().publishers.clone();
    let (publishers, receiver) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        while translations.changed().await.is_ok() {
            let next = translations.borrow_and_update().publishers.clone();
            // In Kubernetes mode every endpoint change is a new translation: pass on only what
            // changes the records, so a busy cluster does not cause syncs.
            publishers.send_if_modified(|current| {
                let changed = current.as_slice() != next.as_slice();
                if changed {
                    *current = Arc::new(next);
                }
                changed
            });
            if publishers.is_closed() {
                return;
            }
        }
    });
    let settings = SyncSettings {
        resync: args.dns_resync_interval,
        retry_base: args.dns_retry_base,
        retry_max: args.dns_retry_base.max(std::time::Duration::from_secs(300)),
        permanent_retry: args.dns_permanent_retry,
        ..SyncSettings::default()
    };
    spawn_records_sync(
        receiver,
        may_write,
        settings,
        Arc::new(MetricsEvents(metrics)),
    )
}

#[derive(Debug)]
struct MetricsEvents(Arc<Metrics>);

impl SyncEvents for MetricsEvents {
    fn synced(&self, publisher: &str, result: &str, managed: usize, conflicts: usize) {
        self.0
            .dns_records_synced(publisher, result, managed, conflicts);
    }

    fn removed(&self, publisher: &str) {
        self.0.dns_publisher_removed(publisher);
    }
}
