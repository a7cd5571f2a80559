//! The certificate lifecycle: a background task that keeps every managed certificate issued
//! and renewed. It is fed the desired issuers and certificates and a "may order" signal
//! (leadership: a file lock standalone, a Lease in cluster), reads and writes through a
//! [`CertificateStore`], and publishes each certificate's status. Rate-limit discipline lives
//! here: one order in flight per certificate, backoff on errors, and a hard stop after a few
//! failed validations per hour instead of a retry loop.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{Account, ExternalAccountKey, NewAccount};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;
use torhaus_dns::{Dns01, Lookup, LookupConfig, SecretSource};
use torhaus_model::{IssuerKind, IssuerRef, ManagedCertificate, ObjectName};

use crate::config::{CLUSTER_RESOURCE_NAMESPACE, IssuerConfig};
use crate::leaf::{
    ANNOTATION_DNS_NAMES, ANNOTATION_ISSUER, ANNOTATION_NOT_AFTER, ANNOTATION_ORDER,
    ANNOTATION_RENEW_AFTER, LeafInfo, fallback_renewal, rfc3339, unix_seconds,
};
use crate::order::{self, DnsCounter, OrderError, OrderTimings};
use crate::store::{CertificateStore, StoreError, StoredCertificate};

/// What the translation asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub issuers: Vec<IssuerConfig>,
    pub certificates: Vec<ManagedCertificate>,
}

/// Tunables of the lifecycle; the defaults suit Let's Encrypt.
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    /// Where DNS-01 lookups (CNAME following, zone and NS discovery) go.
    pub lookup: LookupConfig,
    pub timings: OrderTimings,
    /// TTL of the TXT records written.
    pub txt_ttl: u32,
    /// First pause after a failed attempt; doubled per consecutive failure up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Pause after an error that needs a configuration change (wrong credentials, refused by
    /// the CA). A changed issuer clears it at once.
    pub permanent_retry: Duration,
    /// At most this many failed validations per certificate within `validation_window`; then
    /// ordering stops until the window frees up (Let's Encrypt allows 5 per hour).
    pub max_failed_validations: usize,
    pub validation_window: Duration,
    /// Orders running at once (across certificates).
    pub max_concurrent_orders: usize,
    /// How often stored certificates are reread (a follower learns of the leader's work).
    pub refresh_interval: Duration,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            lookup: LookupConfig::default(),
            timings: OrderTimings::default(),
            txt_ttl: 60,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            permanent_retry: Duration::from_secs(3600),
            max_failed_validations: 3,
            validation_window: Duration::from_secs(3600),
            max_concurrent_orders: 4,
            refresh_interval: Duration::from_secs(60),
        }
    }
}

/// Counters the lifecycle reports (the binary feeds its Prometheus metrics from them).
pub trait LifecycleEvents: Send + Sync + fmt::Debug {
    /// An order ended: `outcome` is `valid`, `invalid` (validation failed) or `error`.
    fn order(&self, issuer: &str, outcome: &str);
    /// An attempt to issue or renew `certificate` (`namespace/name`) failed.
    fn renewal_failed(&self, certificate: &str);
    /// One DNS provider operation (`present`, `propagation`, `cleanup`) ended.
    fn dns_request(&self, provider: &str, operation: &str, outcome: &str);
}

/// Events nobody listens to.
#[derive(Debug, Default)]
pub struct NoEvents;

impl LifecycleEvents for NoEvents {
    fn order(&self, _: &str, _: &str) {}
    fn renewal_failed(&self, _: &str) {}
    fn dns_request(&self, _: &str, _: &str, _: &str) {}
}

/// Where a certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateState {
    /// Not issued yet (or its names changed); an order will be placed.
    Pending,
    /// An order is in flight.
    Ordering,
    /// Issued and covering every name.
    Valid,
    /// The last attempt failed; another is scheduled (`next_attempt`).
    Retrying,
    /// Ordering stopped: failed validations used up the hourly budget, the CA rate-limits, or
    /// the configuration must change. Loud in logs and status.
    Stopped,
    /// The issuer does not exist or cannot be used.
    IssuerNotReady,
}

impl fmt::Display for CertificateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertificateState::Pending => "pending",
            CertificateState::Ordering => "ordering",
            CertificateState::Valid => "valid",
            CertificateState::Retrying => "retrying",
            CertificateState::Stopped => "stopped",
            CertificateState::IssuerNotReady => "issuer not ready",
        })
    }
}

/// One certificate's status, as the status page, metrics and logs show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateStatus {
    pub secret: ObjectName,
    pub issuer: IssuerRef,
    pub dns_names: Vec<String>,
    pub state: CertificateState,
    pub not_after_unix: Option<i64>,
    pub next_renewal_unix: Option<i64>,
    /// When the next order may be placed after a failure.
    pub next_attempt_unix: Option<i64>,
    pub last_error: Option<String>,
    /// Orders this process placed for it, and how many failed.
    pub orders: u64,
    pub failures: u64,
}

/// Starts the lifecycle on the current tokio runtime. It ends when `desired`'s sender is
/// dropped.
pub fn spawn_lifecycle(
    store: Arc<dyn CertificateStore>,
    desired: watch::Receiver<Arc<Desired>>,
    may_order: watch::Receiver<bool>,
    settings: LifecycleSettings,
    events: Arc<dyn LifecycleEvents>,
) -> watch::Receiver<Arc<Vec<CertificateStatus>>> {
    let (status, receiver) = watch::channel(Arc::new(Vec::new()));
    let lifecycle = Lifecycle {
        store,
        settings: Arc::new(settings),
        events,
        issuers: BTreeMap::new(),
        entries: BTreeMap::new(),
        status,
    };
    tokio::spawn(lifecycle.run(desired, may_order));
    receiver
}

/// An issuer as the lifecycle uses it: its configuration, its DNS-01 helper (or why there is
/// none), and its ACME account once loaded or created.
struct IssuerRuntime {
    config: IssuerConfig,
    dns: Result<Dns01, String>,
    provider: String,
    account: Mutex<Option<Account>>,
    /// Whether the CA offers ARI: unknown until first asked.
    ari: std::sync::Mutex<Option<bool>>,
}

impl fmt::Debug for IssuerRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerRuntime")
            .field("id", &self.config.id)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl IssuerRuntime {
    fn new(config: IssuerConfig, settings: &LifecycleSettings) -> Self {
        let provider_config = &config.spec.acme.dns01;
        let provider = if provider_config.rfc2136.is_some() {
            "rfc2136"
        } else if provider_config.powerdns.is_some() {
            "powerdns"
        } else if provider_config.cloudflare.is_some() {
            "cloudflare"
        } else {
            "none"
        };
        let dns = provider_config
            .build(&config.secrets)
            .map(|provider| {
                Dns01::new(
                    provider,
                    Lookup::new(settings.lookup.clone()),
                    settings.txt_ttl,
                )
            })
            .map_err(|e| format!("{}: spec.acme.dns01: {e}", config.id));
        Self {
            config,
            dns,
            provider: provider.to_owned(),
            account: Mutex::new(None),
            ari: std::sync::Mutex::new(None),
        }
    }

    /// The Secret holding the account credentials.
    fn ari(&self) -> Option<bool> {
        *self
            .ari
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_ari(&self, offered: bool) {
        *self
            .ari
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(offered);
    }

    fn account_secret(&self) -> ObjectName {
        let namespace = match self.config.id.kind {
            IssuerKind::Issuer => self.config.id.name.namespace.clone(),
            IssuerKind::ClusterIssuer => CLUSTER_RESOURCE_NAMESPACE.to_owned(),
        };
        ObjectName::new(
            namespace,
            self.config.spec.acme.private_key_secret_ref.name.clone(),
        )
    }

    /// Loads the persisted account, or creates it once at the CA and persists it.
    async fn account(
        &self,
        store: &dyn CertificateStore,
        timings: &OrderTimings,
        fresh: bool,
    ) -> Result<Account, OrderError> {
        let mut cached = self.account.lock().await;
        if fresh {
            *cached = None;
        }
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let acme = &self.config.spec.acme;
        let secret = self.account_secret();
        let stored = store
            .load_account(&secret)
            .await
            .map_err(|e| OrderError::Refused(format!("{}: account: {e}", self.config.id)))?;
        let saved: Option<SavedAccount> = stored
            .as_deref()
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .filter(|saved: &SavedAccount| saved.server == acme.server && !fresh);
        let account = match saved {
            Some(saved) => {
                let credentials = serde_json::from_value(saved.credentials).map_err(|e| {
                    OrderError::Refused(format!(
                        "{}: the account in Secret {secret} cannot be read: {e}",
                        self.config.id
                    ))
                })?;
                order::retry!(timings, self.restore(&credentials)).map_err(order::classify)?
            }
            None => {
                let contact = acme.email.as_ref().map(|email| format!("mailto:{email}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new_account = NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let eab = self.external_account_key()?;
                let (account, credentials) =
                    order::retry!(timings, self.create(&new_account, eab.as_ref()))
                        .map_err(order::classify)?;
                let saved = SavedAccount {
                    server: acme.server.clone(),
                    credentials: serde_json::to_value(&credentials)
                        .map_err(|e| OrderError::Refused(format!("account credentials: {e}")))?,
                };
                let bytes = serde_json::to_vec(&saved)
                    .map_err(|e| OrderError::Refused(format!("account credentials: {e}")))?;
                store.save_account(&secret, &bytes).await.map_err(|e| {
                    OrderError::Ca(format!("{}: saving the account: {e}", self.config.id))
                })?;
                tracing::info!(issuer = %self.config.id, account = %account.id(), secret = %secret, "ACME account created and stored");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    async fn restore(
        &self,
        credentials: &instant_acme::AccountCredentials,
    ) -> Result<Account, instant_acme::Error> {
        self.builder()?
            .from_credentials(clone_credentials(credentials)?)
            .await
    }

    async fn create(
        &self,
        new_account: &NewAccount<'_>,
        eab: Option<&ExternalAccountKey>,
    ) -> Result<(Account, instant_acme::AccountCredentials), instant_acme::Error> {
        self.builder()?
            .create(new_account, self.config.spec.acme.server.clone(), eab)
            .await
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, instant_acme::Error> {
        match &self.config.spec.acme.ca_bundle {
            None => Account::builder(),
            Some(pem) => {
                // instant-acme reads extra roots from a file only.
                let path = std::env::temp_dir().join(format!(
                    "torhaus-acme-ca-{}-{}.pem",
                    std::process::id(),
                    fastrand::u64(..)
                ));
                std::fs::write(&path, pem).map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
                let builder = Account::builder_with_root(&path);
                let _ = std::fs::remove_file(&path);
                builder
            }
        }
    }

    fn external_account_key(&self) -> Result<Option<ExternalAccountKey>, OrderError> {
        let Some(eab) = &self.config.spec.acme.external_account_binding else {
            return Ok(None);
        };
        let encoded = self
            .config
            .secrets
            .secret(&eab.key_secret_ref)
            .map_err(|e| {
                OrderError::Refused(format!(
                    "{}: spec.acme.externalAccountBinding: {e}",
                    self.config.id
                ))
            })?;
        use base64::Engine as _;
        let text = String::from_utf8_lossy(&encoded);
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim().trim_end_matches('='))
            .map_err(|e| {
                OrderError::Refused(format!(
                    "{}: spec.acme.externalAccountBinding.keySecretRef: not base64url: {e}",
                    self.config.id
                ))
            })?;
        Ok(Some(ExternalAccountKey::new(eab.key_id.clone(), &key)))
    }
}

/// `AccountCredentials` is not Clone; a JSON round trip copies it.
fn clone_credentials(
    credentials: &instant_acme::AccountCredentials,
) -> Result<instant_acme::AccountCredentials, instant_acme::Error> {
    let value = serde_json::to_value(credentials)?;
    Ok(serde_json::from_value(value)?)
}

/// The account as stored: the credentials and the directory they belong to, so that a changed
/// `spec.acme.server` creates a new account instead of failing with the old one.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedAccount {
    server: String,
    credentials: serde_json::Value,
}

/// The lifecycle's memory of one certificate.
#[derive(Debug)]
struct Entry {
    certificate: ManagedCertificate,
    leaf: Option<LeafInfo>,
    /// The stored certificate `leaf` was parsed from.
    loaded: Option<StoredCertificate>,
    renew_at: Option<SystemTime>,
    in_flight: bool,
    retry_at: Option<SystemTime>,
    consecutive_failures: u32,
    validation_failures: VecDeque<SystemTime>,
    stopped: bool,
    last_error: Option<String>,
    /// The order of a failed attempt that the CA may still hold open: resumed next time.
    pending_order: Option<String>,
    /// Why the store refuses this certificate (its Secret holds something else): nothing is
    /// ordered while it does, since the certificate could not be stored. Rechecked on every
    /// reread of the store.
    refused: Option<String>,
    /// When to ask the CA's renewalInfo next (ARI); `None`: as soon as possible.
    ari_next_check: Option<SystemTime>,
    ari_in_flight: bool,
    /// The ARI identifier of the current certificate, for `replaces` in the renewal order.
    ari_id: Option<instant_acme::CertificateIdentifier<'static>>,
    orders: u64,
    failures: u64,
}

impl Entry {
    fn new(certificate: ManagedCertificate) -> Self {
        Self {
            certificate,
            leaf: None,
            loaded: None,
            renew_at: None,
            in_flight: false,
            retry_at: None,
            consecutive_failures: 0,
            validation_failures: VecDeque::new(),
            stopped: false,
            last_error: None,
            pending_order: None,
            refused: None,
            ari_next_check: None,
            ari_in_flight: false,
            ari_id: None,
            orders: 0,
            failures: 0,
        }
    }

    fn label(&self) -> String {
        format!(
            "{}/{}",
            self.certificate.secret.namespace, self.certificate.secret.name
        )
    }

    fn issued(&self) -> bool {
        self.leaf
            .as_ref()
            .is_some_and(|leaf| leaf.covers(&self.certificate.dns_names))
    }

    /// When this certificate should next be ordered (now or earlier means due), ignoring
    /// failure backoff.
    fn due_at(&self, now: SystemTime) -> SystemTime {
        if !self.issued() {
            return now;
        }
        self.renew_at.unwrap_or(now)
    }

    fn load(&mut self, stored: Option<StoredCertificate>) {
        let Some(stored) = stored else {
            self.leaf = None;
            self.renew_at = None;
            self.loaded = None;
            return;
        };
        // Rereading an unchanged Secret is the common case (every refresh): skip the parse.
        if self.loaded.as_ref() == Some(&stored) && self.leaf.is_some() {
            return;
        }
        self.loaded = Some(stored.clone());
        match LeafInfo::parse(&stored) {
            Ok(leaf) => {
                let changed = self.leaf.as_ref() != Some(&leaf);
                if changed {
                    self.ari_next_check = None;
                    self.ari_id = None;
                    self.renew_at = Some(
                        leaf.renew_after
                            .unwrap_or_else(|| fallback_renewal(leaf.not_before, leaf.not_after)),
                    );
                }
                self.leaf = Some(leaf);
            }
            Err(error) => {
                self.last_error = Some(format!("the stored certificate is unusable: {error}"));
                self.leaf = None;
                self.renew_at = None;
            }
        }
    }
}

struct Lifecycle {
    store: Arc<dyn CertificateStore>,
    settings: Arc<LifecycleSettings>,
    events: Arc<dyn LifecycleEvents>,
    issuers: BTreeMap<IssuerRef, Arc<IssuerRuntime>>,
    entries: BTreeMap<ObjectName, Entry>,
    status: watch::Sender<Arc<Vec<CertificateStatus>>>,
}

/// What a background job hands back.
enum Job {
    Order(Outcome),
    Ari {
        secret: ObjectName,
        leaf_der: Vec<u8>,
        result: Result<Option<order::RenewalWindow>, String>,
    },
}

/// What an order task hands back.
struct Outcome {
    secret: ObjectName,
    names: Vec<String>,
    pending_order: Option<String>,
    result: Result<StoredCertificate, OrderError>,
}

impl Lifecycle {
    async fn run(
        mut self,
        mut desired: watch::Receiver<Arc<Desired>>,
        mut may_order: watch::Receiver<bool>,
    ) {
        let mut orders: JoinSet<Job> = JoinSet::new();
        let mut next_refresh = SystemTime::now();
        let mut desired_changed = true;
        let mut leader_open = true;
        let mut was_leader = false;
        loop {
            if std::mem::take(&mut desired_changed) {
                let wanted = desired.borrow_and_update().clone();
                self.apply_desired(&wanted);
                next_refresh = SystemTime::now();
            }
            let now = SystemTime::now();
            if now >= next_refresh {
                self.reload_all().await;
                next_refresh = now + self.settings.refresh_interval;
            }
            let leader = *may_order.borrow_and_update();
            if was_leader && !leader {
                // Another replica may take over any moment now and order the same names: only
                // one process may talk to the CA, so this one abandons what it has in flight.
                self.abandon_orders(&mut orders).await;
            }
            if leader && !was_leader {
                // Just became the orderer: what the previous one stored must be known first,
                // or its fresh certificates would be ordered again.
                self.reload_all().await;
            }
            was_leader = leader;
            if leader {
                self.start_ari_checks(&mut orders, now);
                self.start_due_orders(&mut orders, now);
            }
            self.publish(leader);
            let wake = self.next_wake(leader, now).min(next_refresh);
            let sleep = wake.duration_since(now).unwrap_or(Duration::ZERO);
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() {
                        orders.abort_all();
                        return;
                    }
                    desired_changed = true;
                }
                changed = may_order.changed(), if leader_open => {
                    // A dropped sender leaves the last value in force; stop polling it.
                    leader_open = changed.is_ok();
                }
                Some(joined) = orders.join_next(), if !orders.is_empty() => {
                    match joined {
                        Ok(Job::Order(outcome)) => self.finish(outcome),
                        Ok(Job::Ari { secret, leaf_der, result }) => {
                            self.finish_ari(&secret, &leaf_der, result);
                        }
                        Err(error) => tracing::error!(%error, "an ACME task failed"),
                    }
                }
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Ends every order and ARI check in flight, at once. An order cut short may leave its TXT
    /// values in DNS (harmless: the CA checks for its own value only); the next orderer
    /// resumes nothing and places a new order, which the CA typically answers with the same
    /// still-pending authorizations.
    async fn abandon_orders(&mut self, orders: &mut JoinSet<Job>) {
        if orders.is_empty() {
            return;
        }
        tracing::warn!(
            tasks = orders.len(),
            "no longer the replica that orders: abandoning the ACME orders in flight"
        );
        orders.shutdown().await;
        for entry in self.entries.values_mut() {
            entry.in_flight = false;
            entry.ari_in_flight = false;
        }
    }

    fn apply_desired(&mut self, wanted: &Desired) {
        let mut issuers = BTreeMap::new();
        for config in &wanted.issuers {
            let runtime = match self.issuers.get(&config.id) {
                Some(existing) if existing.config == *config => Arc::clone(existing),
                previous => {
                    if previous.is_some() {
                        tracing::info!(issuer = %config.id, "issuer changed; failures against it are forgotten");
                        for entry in self.entries.values_mut() {
                            if entry.certificate.issuer == config.id {
                                entry.retry_at = None;
                                entry.consecutive_failures = 0;
                                entry.stopped = false;
                                entry.validation_failures.clear();
                            }
                        }
                    }
                    Arc::new(IssuerRuntime::new(config.clone(), &self.settings))
                }
            };
            issuers.insert(config.id.clone(), runtime);
        }
        self.issuers = issuers;
        let mut entries = BTreeMap::new();
        for certificate in &wanted.certificates {
            let entry = match self.entries.remove(&certificate.secret) {
                Some(mut entry) => {
                    if entry.certificate.dns_names != certificate.dns_names
                        || entry.certificate.issuer != certificate.issuer
                    {
                        // New names are a new order, not a retry of a failed one.
                        entry.retry_at = None;
                        entry.consecutive_failures = 0;
                        entry.stopped = false;
                    }
                    entry.certificate = certificate.clone();
                    entry
                }
                None => Entry::new(certificate.clone()),
            };
            entries.insert(certificate.secret.clone(), entry);
        }
        self.entries = entries;
    }

    async fn reload_all(&mut self) {
        for entry in self.entries.values_mut() {
            if entry.in_flight {
                continue;
            }
            match self.store.load_certificate(&entry.certificate.secret).await {
                Ok(stored) => {
                    entry.refused = None;
                    entry.load(stored);
                }
                Err(StoreError::Foreign(why)) => {
                    if entry.refused.as_ref() != Some(&why) {
                        tracing::error!(certificate = %entry.label(), error = %why, "not ordering: the certificate could not be stored");
                    }
                    entry.refused = Some(why);
                }
                Err(error) => {
                    entry.refused = None;
                    entry.last_error = Some(format!("reading the stored certificate: {error}"));
                }
            }
        }
    }

    /// Asks the CA's renewalInfo for issued certificates whose check is due (RFC 9773): the
    /// CA's window replaces the two-thirds rule, so a CA that revokes early gets renewals early.
    fn start_ari_checks(&mut self, jobs: &mut JoinSet<Job>, now: SystemTime) {
        for entry in self.entries.values_mut() {
            if entry.in_flight
                || entry.ari_in_flight
                || !entry.issued()
                || entry.ari_next_check.is_some_and(|at| at > now)
            {
                continue;
            }
            let Some(issuer) = self.issuers.get(&entry.certificate.issuer) else {
                continue;
            };
            if issuer.ari() == Some(false) || issuer.dns.is_err() {
                continue;
            }
            let Some(leaf) = &entry.leaf else { continue };
            entry.ari_in_flight = true;
            let store = Arc::clone(&self.store);
            let issuer = Arc::clone(issuer);
            let settings = Arc::clone(&self.settings);
            let secret = entry.certificate.secret.clone();
            let leaf_der = leaf.leaf_der.clone();
            jobs.spawn(async move {
                let result = match issuer.account(&*store, &settings.timings, false).await {
                    Ok(account) => {
                        order::renewal_window(&account, &leaf_der, &settings.timings).await
                    }
                    Err(error) => Err(error.to_string()),
                };
                Job::Ari {
                    secret,
                    leaf_der,
                    result,
                }
            });
        }
    }

    fn finish_ari(
        &mut self,
        secret: &ObjectName,
        leaf_der: &[u8],
        result: Result<Option<order::RenewalWindow>, String>,
    ) {
        let Some(entry) = self.entries.get_mut(secret) else {
            return;
        };
        entry.ari_in_flight = false;
        // The certificate changed while the CA was asked: the answer is about the old one.
        if entry.leaf.as_ref().map(|l| l.leaf_der.as_slice()) != Some(leaf_der) {
            return;
        }
        let now = SystemTime::now();
        let issuer = self.issuers.get(&entry.certificate.issuer);
        match result {
            Ok(Some(window)) => {
                if let Some(issuer) = issuer {
                    issuer.set_ari(true);
                }
                let at = window.pick(now);
                entry.renew_at = Some(at);
                entry.ari_id = Some(window.id.clone());
                entry.ari_next_check = Some(
                    now + window
                        .retry_after
                        .clamp(Duration::from_secs(60), Duration::from_secs(86_400)),
                );
                tracing::debug!(certificate = %entry.label(), renew_at = %rfc3339(at), "renewal time from the CA's renewalInfo (ARI)");
            }
            Ok(None) => {
                if let Some(issuer) = issuer {
                    issuer.set_ari(false);
                }
                entry.ari_next_check = None;
            }
            Err(error) => {
                tracing::warn!(certificate = %entry.label(), %error, "renewalInfo (ARI) unavailable; renewing at two thirds of the lifetime");
                entry.ari_next_check = Some(now + Duration::from_secs(3600));
            }
        }
    }

    fn start_due_orders(&mut self, orders: &mut JoinSet<Job>, now: SystemTime) {
        let running = self.entries.values().filter(|e| e.in_flight).count();
        let mut free = self.settings.max_concurrent_orders.saturating_sub(running);
        for entry in self.entries.values_mut() {
            if free == 0 {
                break;
            }
            if entry.in_flight
                || entry.ari_in_flight
                || entry.refused.is_some()
                || entry.due_at(now) > now
            {
                continue;
            }
            // The hourly failed-validation budget.
            while entry.validation_failures.front().is_some_and(|t| {
                now.duration_since(*t).unwrap_or_default() >= self.settings.validation_window
            }) {
                entry.validation_failures.pop_front();
            }
            if entry.validation_failures.len() >= self.settings.max_failed_validations {
                continue;
            }
            if entry.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            entry.stopped = false;
            let Some(issuer) = self.issuers.get(&entry.certificate.issuer) else {
                continue;
            };
            if let Err(why) = &issuer.dns {
                entry.last_error = Some(why.clone());
                continue;
            }
            entry.in_flight = true;
            entry.orders += 1;
            free -= 1;
            tracing::info!(
                certificate = %entry.label(),
                issuer = %issuer.config.id,
                names = %entry.certificate.dns_names.join(","),
                renewal = entry.leaf.is_some(),
                "ordering a certificate"
            );
            let replaces = entry.ari_id.clone().filter(|_| entry.issued());
            orders.spawn(run_order(
                Arc::clone(&self.store),
                Arc::clone(issuer),
                entry.certificate.clone(),
                entry.pending_order.take(),
                replaces,
                Arc::clone(&self.settings),
                Arc::clone(&self.events),
            ));
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        let Some(entry) = self.entries.get_mut(&outcome.secret) else {
            return;
        };
        entry.in_flight = false;
        // A failed validation leaves the order invalid: only other failures keep it.
        entry.pending_order = match &outcome.result {
            Err(OrderError::Validation { .. }) | Ok(_) => None,
            Err(_) => outcome.pending_order,
        };
        let issuer = entry.certificate.issuer.to_string();
        match outcome.result {
            Ok(stored) => {
                self.events.order(&issuer, "valid");
                entry.load(Some(stored));
                entry.retry_at = None;
                entry.consecutive_failures = 0;
                entry.stopped = false;
                entry.last_error = None;
                tracing::info!(
                    certificate = %entry.label(),
                    issuer = %issuer,
                    not_after = %entry.leaf.as_ref().map(|l| rfc3339(l.not_after)).unwrap_or_default(),
                    renew_at = %entry.renew_at.map(rfc3339).unwrap_or_default(),
                    "certificate issued and stored"
                );
            }
            Err(error) => {
                let now = SystemTime::now();
                entry.failures += 1;
                entry.consecutive_failures += 1;
                self.events.renewal_failed(&entry.label());
                let outcome_label = match &error {
                    OrderError::Validation { .. } => "invalid",
                    _ => "error",
                };
                self.events.order(&issuer, outcome_label);
                let settings = &self.settings;
                let backoff = settings
                    .retry_base
                    .saturating_mul(1 << entry.consecutive_failures.saturating_sub(1).min(16))
                    .min(settings.retry_max);
                let (retry_at, stopped) = match &error {
                    OrderError::Validation { .. } => {
                        entry.validation_failures.push_back(now);
                        if entry.validation_failures.len() >= settings.max_failed_validations {
                            let oldest = entry.validation_failures.front().copied().unwrap_or(now);
                            (oldest + settings.validation_window, true)
                        } else {
                            (now + backoff, false)
                        }
                    }
                    OrderError::RateLimited { retry_after, .. } => (
                        now + retry_after.unwrap_or(settings.validation_window),
                        true,
                    ),
                    other if other.is_permanent() => (now + settings.permanent_retry, true),
                    _ => (now + backoff, false),
                };
                entry.retry_at = Some(retry_at);
                entry.stopped = stopped;
                let mut message = format!("{}: {error}", entry.certificate.issuer);
                if matches!(error, OrderError::Validation { .. }) && stopped {
                    message.push_str(&format!(
                        " ({} failed validations within {:?}: no further order before {}, to stay inside the CA's rate limits)",
                        entry.validation_failures.len(),
                        settings.validation_window,
                        rfc3339(retry_at)
                    ));
                }
                if stopped {
                    tracing::error!(
                        certificate = %entry.label(),
                        names = %outcome.names.join(","),
                        error = %message,
                        next_attempt = %rfc3339(retry_at),
                        "ORDERING STOPPED for this certificate: fix the cause (or change the issuer); the current certificate keeps serving"
                    );
                } else {
                    tracing::warn!(
                        certificate = %entry.label(),
                        names = %outcome.names.join(","),
                        error = %message,
                        next_attempt = %rfc3339(retry_at),
                        "certificate order failed; retrying later"
                    );
                }
                entry.last_error = Some(message);
            }
        }
    }

    fn next_wake(&self, leader: bool, now: SystemTime) -> SystemTime {
        let mut wake = now + Duration::from_secs(3600);
        if !leader {
            return wake;
        }
        let running = self.entries.values().filter(|e| e.in_flight).count();
        let slots_free = running < self.settings.max_concurrent_orders;
        // A running order or ARI check wakes the loop when it ends.
        // A refused Secret waits for the next reread of the store (every refresh).
        for entry in self
            .entries
            .values()
            .filter(|e| !e.in_flight && !e.ari_in_flight && e.refused.is_none())
        {
            // Nothing to do until the issuer changes (which wakes the loop through `desired`).
            let usable = self
                .issuers
                .get(&entry.certificate.issuer)
                .is_some_and(|issuer| issuer.dns.is_ok());
            if !usable {
                continue;
            }
            let mut at = entry.due_at(now);
            if let Some(retry) = entry.retry_at {
                at = at.max(retry);
            }
            if entry.validation_failures.len() >= self.settings.max_failed_validations
                && let Some(oldest) = entry.validation_failures.front()
            {
                at = at.max(*oldest + self.settings.validation_window);
            }
            // With every order slot taken, a finished order wakes the loop instead.
            if at > now || slots_free {
                wake = wake.min(at.max(now + Duration::from_millis(50)));
            }
            if let Some(check) = entry.ari_next_check.filter(|_| entry.issued()) {
                wake = wake.min(check.max(now + Duration::from_millis(50)));
            }
        }
        wake
    }

    fn publish(&self, leader: bool) {
        let statuses: Vec<CertificateStatus> = self
            .entries
            .values()
            .map(|entry| {
                let issuer_ready = self
                    .issuers
                    .get(&entry.certificate.issuer)
                    .is_some_and(|i| i.dns.is_ok());
                let state = if entry.in_flight {
                    CertificateState::Ordering
                } else if entry.stopped || entry.refused.is_some() {
                    CertificateState::Stopped
                } else if !issuer_ready && leader {
                    CertificateState::IssuerNotReady
                } else if entry.retry_at.is_some() && entry.last_error.is_some() {
                    CertificateState::Retrying
                } else if entry.issued() {
                    CertificateState::Valid
                } else {
                    CertificateState::Pending
                };
                let last_error = entry
                    .refused
                    .clone()
                    .or_else(|| entry.last_error.clone())
                    .or_else(|| match self.issuers.get(&entry.certificate.issuer) {
                        None => Some(format!("{} does not exist", entry.certificate.issuer)),
                        Some(issuer) => issuer.dns.as_ref().err().cloned(),
                    });
                CertificateStatus {
                    secret: entry.certificate.secret.clone(),
                    issuer: entry.certificate.issuer.clone(),
                    dns_names: entry.certificate.dns_names.clone(),
                    state,
                    not_after_unix: entry.leaf.as_ref().map(|l| unix_seconds(l.not_after)),
                    next_renewal_unix: entry.renew_at.filter(|_| entry.issued()).map(unix_seconds),
                    next_attempt_unix: entry.retry_at.map(unix_seconds),
                    last_error,
                    orders: entry.orders,
                    failures: entry.failures,
                }
            })
            .collect();
        self.status.send_if_modified(|current| {
            if current.as_slice() == statuses.as_slice() {
                false
            } else {
                *current = Arc::new(statuses);
                true
            }
        });
    }
}

/// Counts DNS provider requests for one issuer.
struct Counter<'a> {
    events: &'a dyn LifecycleEvents,
    provider: &'a str,
}

impl DnsCounter for Counter<'_> {
    fn dns_request(&self, operation: &str, ok: bool) {
        self.events
            .dns_request(self.provider, operation, if ok { "ok" } else { "error" });
    }
}

async fn run_order(
    store: Arc<dyn CertificateStore>,
    issuer: Arc<IssuerRuntime>,
    certificate: ManagedCertificate,
    mut pending_order: Option<String>,
    replaces: Option<instant_acme::CertificateIdentifier<'static>>,
    settings: Arc<LifecycleSettings>,
    events: Arc<dyn LifecycleEvents>,
) -> Job {
    let names = certificate.dns_names.clone();
    let result = order_and_store(
        &*store,
        &issuer,
        &certificate,
        &mut pending_order,
        replaces,
        &settings,
        &*events,
    )
    .await;
    Job::Order(Outcome {
        secret: certificate.secret,
        names,
        pending_order,
        result,
    })
}

async fn order_and_store(
    store: &dyn CertificateStore,
    issuer: &IssuerRuntime,
    certificate: &ManagedCertificate,
    pending_order: &mut Option<String>,
    replaces: Option<instant_acme::CertificateIdentifier<'static>>,
    settings: &LifecycleSettings,
    events: &dyn LifecycleEvents,
) -> Result<StoredCertificate, OrderError> {
    let dns = issuer
        .dns
        .as_ref()
        .map_err(|why| OrderError::Refused(why.clone()))?;
    let counter = Counter {
        events,
        provider: &issuer.provider,
    };
    let mut fresh = false;
    let issued = loop {
        let account = issuer.account(store, &settings.timings, fresh).await?;
        let request = order::OrderRequest {
            names: &certificate.dns_names,
            profile: issuer.config.spec.acme.profile.as_deref(),
            pending: pending_order,
            replaces: replaces.clone().filter(|_| !fresh),
        };
        let result = order::obtain(
            &account,
            dns,
            &issuer.provider,
            request,
            &settings.timings,
            &counter,
        )
        .await;
        match result {
            Err(OrderError::AccountGone(detail)) if !fresh => {
                // The old account's orders are gone with it.
                *pending_order = None;
                tracing::warn!(issuer = %issuer.config.id, %detail, "the CA no longer knows the stored ACME account; creating a new one");
                fresh = true;
            }
            other => break other?,
        }
    };
    let mut stored = StoredCertificate {
        chain_pem: issued.chain_pem,
        key_pem: issued.key_pem,
        annotations: BTreeMap::new(),
    };
    let leaf = LeafInfo::parse(&stored)
        .map_err(|e| OrderError::Ca(format!("the issued certificate is unusable: {e}")))?;
    let renew_at = fallback_renewal(leaf.not_before, leaf.not_after);
    let annotations = &mut stored.annotations;
    annotations.insert(ANNOTATION_ISSUER.to_owned(), certificate.issuer.to_string());
    annotations.insert(
        ANNOTATION_DNS_NAMES.to_owned(),
        certificate.dns_names.join(","),
    );
    annotations.insert(ANNOTATION_NOT_AFTER.to_owned(), rfc3339(leaf.not_after));
    annotations.insert(ANNOTATION_RENEW_AFTER.to_owned(), rfc3339(renew_at));
    annotations.insert(ANNOTATION_ORDER.to_owned(), issued.order_url);
    store
        .save_certificate(&certificate.secret, &stored)
        .await
        .map_err(|e| match e {
            // Taken by something else since it was read: no use ordering again soon.
            StoreError::Foreign(why) => OrderError::Refused(why),
            other => OrderError::Ca(format!("storing Secret {}: {other}", certificate.secret)),
        })?;
    Ok(stored)
}
