//! The `DNSPublisher` (`torhaus.dev/v1alpha1`): its spec as users write it, the runtime
//! description the translation hands over (settings, Secret bytes, and the hostnames with their
//! addresses), and the background loop that keeps the provider's zones in step with it.
//!
//! One worker per publisher: a broken provider (wrong key, server down) delays only its own
//! records. Each worker batches changes (`debounce`), resyncs periodically to repair drift,
//! backs off on errors that may pass and waits long on those that need a configuration change,
//! and writes only while `may_write` is true (the one process that holds the lock or Lease).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::SecretMaterial;
use crate::records::{Conflict, RecordsSync};
use crate::{DnsError, DnsProvider, ProviderConfig, SecretKeyRef};

/// The kind's name and API version in manifests.
pub const KIND: &str = "DNSPublisher";
pub const API_VERSION: &str = "torhaus.dev/v1alpha1";
/// `spec.ownerId` when omitted.
pub const DEFAULT_OWNER: &str = "torhaus";
/// `spec.ttl` when omitted: short enough that a moved VIP is seen within minutes.
pub const DEFAULT_TTL: u32 = 300;
const TTL_RANGE: std::ops::RangeInclusive<u32> = 30..=86_400;

/// `spec` of a `DNSPublisher`. Unknown fields are refused so that a typo never silently
/// publishes the wrong thing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublisherSpec {
    /// The addresses every published hostname resolves to (A for IPv4, AAAA for IPv6). Empty:
    /// the gateway's own addresses (`--gateway-address`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// Written into the ownership TXT markers; publishers (and clusters) sharing a zone need
    /// distinct owners. Default `torhaus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    /// TTL of the records, in seconds (30-86400, default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// Only hostnames in these zones are published; they are also scanned on every sync, so
    /// records of routes deleted while torhaus was down are removed too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// The DNS provider, in the same shape as an Issuer's `dns01`.
    pub provider: ProviderConfig,
    /// Which Gateways of the publisher's namespace it covers; all of them when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_selector: Option<GatewaySelector>,
}

/// A Kubernetes label selector over Gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<SelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl PublisherSpec {
    pub fn owner(&self) -> &str {
        self.owner_id.as_deref().unwrap_or(DEFAULT_OWNER)
    }

    pub fn ttl(&self) -> u32 {
        self.ttl.unwrap_or(DEFAULT_TTL)
    }

    /// The Secret keys the provider reads.
    pub fn secret_refs(&self) -> Vec<SecretKeyRef> {
        self.provider.secret_refs()
    }

    /// Checks what serde cannot; the message starts with the field's path.
    pub fn validate(&self) -> Result<(), String> {
        let owner = self.owner();
        // The owner goes into `heritage=torhaus,owner=<owner>,type=A`: a `,` or `=` would
        // make markers of one owner read as another's.
        if owner.is_empty()
            || owner.len() > 63
            || !owner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(format!(
                "spec.ownerId: {owner:?} must be 1-63 letters, digits, `-`, `_` or `.`"
            ));
        }
        if !TTL_RANGE.contains(&self.ttl()) {
            return Err(format!(
                "spec.ttl: {} is outside {}-{} seconds",
                self.ttl(),
                TTL_RANGE.start(),
                TTL_RANGE.end()
            ));
        }
        for (i, zone) in self.zones.iter().enumerate() {
            match crate::name::normalize(zone) {
                Ok(name) if !name.starts_with("*.") && name != "*" => {}
                Ok(_) => return Err(format!("spec.zones[{i}]: a zone cannot be a wildcard")),
                Err(e) => return Err(format!("spec.zones[{i}]: {e}")),
            }
        }
        for (i, address) in self.addresses.iter().enumerate() {
            if address.is_unspecified() || address.is_multicast() {
                return Err(format!(
                    "spec.addresses[{i}]: {address} cannot be published as a host's address"
                ));
            }
        }
        Ok(())
    }

    /// `zones`, normalized (validated by [`PublisherSpec::validate`]).
    pub fn normalized_zones(&self) -> Vec<String> {
        self.zones
            .iter()
            .filter_map(|z| crate::name::normalize(z).ok())
            .collect()
    }
}

/// What a worker needs to write: everything that, when it changes, means a new provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherConfig {
    pub owner: String,
    pub ttl: u32,
    /// Zones always scanned (normalized).
    pub zones: Vec<String>,
    pub provider: ProviderConfig,
    pub secrets: SecretMaterial,
}

/// One publisher as the translation hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    /// `namespace/name`.
    pub id: String,
    /// `Err` when the spec is invalid: the worker then writes nothing (the records stay as
    /// the last good configuration left them) until it is fixed.
    pub config: Result<PublisherConfig, String>,
    /// Hostname (lowercase; `*.zone` for wildcards) → the addresses it must resolve to.
    pub desired: BTreeMap<String, Vec<IpAddr>>,
}

/// Timings of the sync loop.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Changes arriving within this window become one sync.
    pub debounce: Duration,
    /// A full sync this often, repairing records changed behind torhaus's back.
    pub resync: Duration,
    /// The first wait after an error that may pass; doubles up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// The wait after an error that needs a configuration change (credentials rejected): a
    /// change to the publisher or its Secret retries at once.
    pub permanent_retry: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            debounce: Duration::from_secs(1),
            resync: Duration::from_secs(60),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            permanent_retry: Duration::from_secs(3600),
        }
    }
}

/// Where a publisher's worker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Not synced yet.
    Pending,
    /// Another process writes (it holds the lock or the Lease).
    Standby,
    /// The last sync succeeded.
    Synced,
    /// The last sync failed with an error that may pass; retrying with backoff.
    Retrying,
    /// The last sync failed with an error that needs a configuration change.
    Stopped,
    /// The spec is invalid; nothing is written until it is fixed.
    Invalid,
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncState::Pending => "pending",
            SyncState::Standby => "standby",
            SyncState::Synced => "synced",
            SyncState::Retrying => "retrying",
            SyncState::Stopped => "stopped",
            SyncState::Invalid => "invalid",
        })
    }
}

/// A publisher's state for the status page, `/debug/config` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherStatus {
    pub id: String,
    /// The provider in a few words (`rfc2136 192.0.2.53:53`).
    pub provider: String,
    pub owner: String,
    pub ttl: Option<u32>,
    pub zones: Vec<String>,
    /// What it publishes: hostname → addresses.
    pub records: BTreeMap<String, Vec<IpAddr>>,
    pub state: SyncState,
    /// Record sets torhaus owns and keeps current, after the last successful sync.
    pub managed: usize,
    /// Desired records left alone because someone else's record is in the way.
    pub conflicts: Vec<Conflict>,
    pub last_sync_unix: Option<i64>,
    pub next_attempt_unix: Option<i64>,
    pub last_error: Option<String>,
    /// Changes written since the start.
    pub changes: u64,
}

impl PublisherStatus {
    /// A publisher not attempted yet.
    fn pending(publisher: &Publisher) -> Self {
        let mut status = Self {
            id: publisher.id.clone(),
            provider: String::new(),
            owner: String::new(),
            ttl: None,
            zones: Vec::new(),
            records: BTreeMap::new(),
            state: SyncState::Pending,
            managed: 0,
            conflicts: Vec::new(),
            last_sync_unix: None,
            next_attempt_unix: None,
            last_error: None,
            changes: 0,
        };
        status.describe(publisher);
        status
    }

    /// Takes what the publisher asks for (invalid: only the records and why).
    fn describe(&mut self, publisher: &Publisher) {
        self.records = publisher.desired.clone();
        match &publisher.config {
            Ok(config) => {
                self.provider = config.provider.describe();
                self.owner = config.owner.clone();
                self.ttl = Some(config.ttl);
                self.zones = config.zones.clone();
            }
            Err(_) => {
                self.provider.clear();
                self.owner.clear();
                self.ttl = None;
                self.zones.clear();
            }
        }
    }
}

/// Where the loop reports what it does (the binary feeds Prometheus from it).
pub trait SyncEvents: Send + Sync + fmt::Debug {
    /// One sync ended: `result` is `success` or `error`.
    fn synced(&self, publisher: &str, result: &str, managed: usize, conflicts: usize);
    /// The publisher is gone; its series go too.
    fn removed(&self, publisher: &str);
}

/// Starts the supervisor on the current runtime: one worker per publisher, started, updated
/// and stopped as `publishers` changes. Returns every publisher's status.
pub fn spawn_records_sync(
    mut publishers: watch::Receiver<Arc<Vec<Publisher>>>,
    may_write: watch::Receiver<bool>,
    settings: SyncSettings,
    events: Arc<dyn SyncEvents>,
) -> watch::Receiver<Arc<Vec<PublisherStatus>>> {
    let (status_sender, status) = watch::channel(Arc::new(Vec::new()));
    let board = Board {
        statuses: Arc::new(Mutex::new(BTreeMap::new())),
        sender: Arc::new(status_sender),
    };
    tokio::spawn(async move {
        let mut workers: HashMap<String, (watch::Sender<Publisher>, JoinHandle<()>)> =
            HashMap::new();
        loop {
            let current = Arc::clone(&publishers.borrow_and_update());
            let ids: BTreeSet<&str> = current.iter().map(|p| p.id.as_str()).collect();
            let gone: Vec<String> = workers
                .keys()
                .filter(|id| !ids.contains(id.as_str()))
                .cloned()
                .collect();
            for id in gone {
                let Some((_, task)) = workers.remove(&id) else {
                    continue;
                };
                // Records stay as they are: deleting the publisher stops the management, it
                // does not unpublish (external-dns behaves alike when it is removed). The
                // worker is waited for, so that it cannot post a status after its removal.
                task.abort();
                let _ = task.await;
                board.remove(&id);
                events.removed(&id);
                tracing::info!(publisher = %id, "DNS publisher removed; its records are left in place");
            }
            for publisher in current.iter() {
                match workers.get(&publisher.id) {
                    Some((sender, _)) => {
                        sender.send_if_modified(|old| {
                            let changed = old != publisher;
                            if changed {
                                *old = publisher.clone();
                            }
                            changed
                        });
                    }
                    None => {
                        // Shown at once, before the first attempt.
                        board.set(PublisherStatus::pending(publisher));
                        let (sender, receiver) = watch::channel(publisher.clone());
                        let worker = Worker {
                            id: publisher.id.clone(),
                            input: receiver,
                            may_write: may_write.clone(),
                            settings: settings.clone(),
                            board: board.clone(),
                            events: Arc::clone(&events),
                            built: None,
                            failures: 0,
                            conflicts_logged: Vec::new(),
                            leadership_lost: false,
                        };
                        let task = tokio::spawn(worker.run());
                        workers.insert(publisher.id.clone(), (sender, task));
                    }
                }
            }
            if publishers.changed().await.is_err() {
                for (_, (_, task)) in workers.drain() {
                    task.abort();
                }
                return;
            }
        }
    });
    status
}

/// The statuses of all workers, published as one list.
#[derive(Debug, Clone)]
struct Board {
    statuses: Arc<Mutex<BTreeMap<String, PublisherStatus>>>,
    sender: Arc<watch::Sender<Arc<Vec<PublisherStatus>>>>,
}

impl Board {
    fn set(&self, status: PublisherStatus) {
        let mut statuses = self.statuses.lock().unwrap_or_else(PoisonError::into_inner);
        statuses.insert(status.id.clone(), status);
        self.sender
            .send_replace(Arc::new(statuses.values().cloned().collect()));
    }

    fn remove(&self, id: &str) {
        let mut statuses = self.statuses.lock().unwrap_or_else(PoisonError::into_inner);
        statuses.remove(id);
        self.sender
            .send_replace(Arc::new(statuses.values().cloned().collect()));
    }

    fn get(&self, id: &str) -> Option<PublisherStatus> {
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

/// The provider built from one configuration, kept while that configuration holds.
struct Built {
    config: PublisherConfig,
    provider: Arc<dyn DnsProvider>,
    /// Created once the configured zones are resolved (which needs the provider to answer).
    sync: Option<RecordsSync>,
}

struct Worker {
    id: String,
    input: watch::Receiver<Publisher>,
    may_write: watch::Receiver<bool>,
    settings: SyncSettings,
    board: Board,
    events: Arc<dyn SyncEvents>,
    built: Option<Built>,
    /// Errors in a row, for the backoff.
    failures: u32,
    /// The conflicts last logged, so that a resync repeats none of them.
    conflicts_logged: Vec<Conflict>,
    /// The `may_write` sender is gone: this process no longer knows whether it leads.
    leadership_lost: bool,
}

/// Far enough to mean "until something changes", near enough not to overflow an `Instant`.
const IDLE: Duration = Duration::from_secs(365 * 24 * 3600);

impl Worker {
    async fn run(mut self) {
        let mut due = Instant::now();
        loop {
            tokio::select! {
                changed = self.input.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A change brings the next attempt forward (a fixed key retries at once),
                    // batched over the debounce window.
                    due = due.min(Instant::now() + self.settings.debounce);
                    continue;
                }
                changed = self.may_write.changed(), if !self.leadership_lost => {
                    if changed.is_err() {
                        // The leadership signal is gone for good (the process is stopping):
                        // never write again, and stop listening to the closed channel.
                        self.leadership_lost = true;
                    }
                    due = Instant::now();
                    continue;
                }
                () = tokio::time::sleep_until(due) => {}
            }
            due = Instant::now() + self.attempt().await;
        }
    }

    /// One pass: returns how long until the next one (absent changes).
    async fn attempt(&mut self) -> Duration {
        let publisher = self.input.borrow_and_update().clone();
        let mut status = self
            .board
            .get(&self.id)
            .unwrap_or_else(|| PublisherStatus::pending(&publisher));
        status.describe(&publisher);
        let config = match &publisher.config {
            Ok(config) => config,
            Err(why) => {
                tracing::error!(publisher = %self.id, error = %why, "DNS publisher is invalid; its records are left as they are until it is fixed");
                status.state = SyncState::Invalid;
                status.last_error = Some(why.clone());
                status.next_attempt_unix = None;
                self.board.set(status);
                return IDLE;
            }
        };
        if self.leadership_lost || !*self.may_write.borrow() {
            status.state = SyncState::Standby;
            status.next_attempt_unix = None;
            self.board.set(status);
            return IDLE;
        }
        let mut build_error = None;
        if self.built.as_ref().is_none_or(|b| b.config != *config) {
            match config.provider.build(&config.secrets) {
                Ok(provider) => {
                    self.built = Some(Built {
                        config: config.clone(),
                        provider,
                        sync: None,
                    });
                }
                Err(error) => build_error = Some(error),
            }
        }
        let Some(mut built) = self.built.take() else {
            let error = build_error
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no provider".to_owned());
            return self.stopped(status, error);
        };
        if let Some(error) = &build_error {
            // The last good provider keeps the records current meanwhile.
            tracing::error!(publisher = %self.id, %error, "DNS publisher configuration cannot be used; syncing with the previous one");
        }
        let result = sync_once(&mut built, &publisher.desired).await;
        if result.as_ref().is_err_and(|e| !e.is_retryable()) {
            // The zones may have to be resolved again once the configuration is fixed.
            built.sync = None;
        }
        self.built = Some(built);
        status.last_sync_unix = Some(unix_now());
        match result {
            Ok(report) => {
                self.failures = 0;
                status.changes += u64::try_from(report.changes).unwrap_or(u64::MAX);
                status.managed = report.managed;
                status.state = SyncState::Synced;
                status.last_error = build_error.map(|e| {
                    format!("{e} (the previous configuration is used until this is fixed)")
                });
                if report.changes > 0 {
                    tracing::info!(publisher = %self.id, changes = report.changes, managed = report.managed, "DNS records updated");
                }
                self.log_conflicts(&report.conflicts);
                status.conflicts = report.conflicts;
                let wait = self.settings.resync;
                status.next_attempt_unix = Some(unix_now() + secs(wait));
                let (managed, conflicts) = (status.managed, status.conflicts.len());
                // The status first: whoever sees the metric move finds the status to match.
                self.board.set(status);
                self.events.synced(&self.id, "success", managed, conflicts);
                wait
            }
            Err(error) if error.is_retryable() => {
                self.failures = self.failures.saturating_add(1);
                let wait = backoff(&self.settings, self.failures);
                tracing::warn!(publisher = %self.id, %error, retry_in = ?wait, "DNS records sync failed; retrying");
                status.state = SyncState::Retrying;
                status.last_error = Some(error.to_string());
                status.next_attempt_unix = Some(unix_now() + secs(wait));
                let (managed, conflicts) = (status.managed, status.conflicts.len());
                self.board.set(status);
                self.events.synced(&self.id, "error", managed, conflicts);
                wait
            }
            Err(error) => {
                let (managed, conflicts) = (status.managed, status.conflicts.len());
                let wait = self.stopped(status, error.to_string());
                self.events.synced(&self.id, "error", managed, conflicts);
                wait
            }
        }
    }

    /// An error only a configuration change fixes: loud, and retried slowly.
    fn stopped(&mut self, mut status: PublisherStatus, error: String) -> Duration {
        let wait = self.settings.permanent_retry;
        tracing::error!(
            publisher = %self.id,
            provider = %status.provider,
            %error,
            retry_in = ?wait,
            "DNS RECORDS SYNC STOPPED: fix the DNSPublisher or its Secret (a change retries at once)"
        );
        status.state = SyncState::Stopped;
        status.last_error = Some(error);
        status.next_attempt_unix = Some(unix_now() + secs(wait));
        self.board.set(status);
        wait
    }

    fn log_conflicts(&mut self, conflicts: &[Conflict]) {
        for conflict in conflicts {
            if !self.conflicts_logged.contains(conflict) {
                tracing::warn!(
                    publisher = %self.id,
                    name = %conflict.name,
                    rtype = %conflict.rtype,
                    reason = %conflict.reason,
                    "DNS record not published: it conflicts with a record torhaus does not own"
                );
            }
        }
        self.conflicts_logged = conflicts.to_vec();
    }
}

/// Resolves the configured zones once, then plans and applies.
async fn sync_once(
    built: &mut Built,
    desired: &BTreeMap<String, Vec<IpAddr>>,
) -> Result<crate::records::SyncReport, DnsError> {
    if built.sync.is_none() {
        let mut zones = Vec::new();
        for zone in &built.config.zones {
            zones.push(built.provider.find_zone(zone).await?);
        }
        built.sync = Some(RecordsSync::new(
            Arc::clone(&built.provider),
            &built.config.owner,
            built.config.ttl,
            zones,
        ));
    }
    match &built.sync {
        Some(sync) => sync.sync(desired).await,
        None => Ok(crate::records::SyncReport::default()),
    }
}

fn backoff(settings: &SyncSettings, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    settings
        .retry_base
        .saturating_mul(factor)
        .min(settings.retry_max)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Result<PublisherSpec, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    const PROVIDER: &str = "provider: {rfc2136: {nameserver: 127.0.0.1, tsigKeyName: k, tsigSecretRef: {name: t, key: s}}}\n";

    #[test]
    fn defaults_and_validation() -> anyhow::Result<()> {
        let minimal = spec(PROVIDER)?;
        assert_eq!(minimal.owner(), "torhaus");
        assert_eq!(minimal.ttl(), 300);
        assert_eq!(minimal.validate(), Ok(()));
        assert_eq!(minimal.secret_refs().len(), 1);
        let full = spec(&format!(
            "addresses: [192.0.2.10, '2001:db8::10']\nownerId: home-1\nttl: 60\nzones: [Example.COM.]\n\
             gatewaySelector: {{matchLabels: {{dns: public}}}}\n{PROVIDER}"
        ))?;
        assert_eq!(full.validate(), Ok(()));
        assert_eq!(full.normalized_zones(), ["example.com"]);
        for (yaml, field) in [
            ("ownerId: 'a,b'\n", "spec.ownerId"),
            ("ttl: 5\n", "spec.ttl"),
            ("zones: ['*.example.com']\n", "spec.zones[0]"),
            ("addresses: [0.0.0.0]\n", "spec.addresses[0]"),
        ] {
            let error = spec(&format!("{yaml}{PROVIDER}"))?
                .validate()
                .err()
                .unwrap_or_default();
            assert!(error.starts_with(field), "{yaml}: {error}");
        }
        Ok(())
    }

    #[test]
    fn unknown_fields_and_bad_addresses_are_refused() {
        let typo = spec(&format!("adresses: [192.0.2.1]\n{PROVIDER}"));
        assert!(typo.is_err_and(|e| e.to_string().contains("adresses")));
        let bad = spec(&format!("addresses: [192.0.2.300]\n{PROVIDER}"));
        assert!(bad.is_err());
        let expression = spec(&format!(
            "gatewaySelector: {{matchExpressions: [{{key: a, operator: Exists}}], matchLabel: {{}}}}\n{PROVIDER}"
        ));
        assert!(expression.is_err_and(|e| e.to_string().contains("matchLabel")));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let settings = SyncSettings {
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(20),
            ..SyncSettings::default()
        };
        let waits: Vec<u64> = (1..=6).map(|n| backoff(&settings, n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 20, 20]);
    }
}
