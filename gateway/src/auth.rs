//! Identity enforcement's data-plane half: the authenticators of the `AuthPolicy` objects in
//! force, kept across reloads while a policy is unchanged (so its cached discovery, keys and
//! refreshes in flight survive a route change), and the identity header names stripped from
//! every request once any policy is in force.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use prometheus::IntCounter;
use torhaus_policies::revocation::RevocationList;
use torhaus_policies::{AuthContext, Authenticator, Policy};

use crate::error::GatewayError;
use crate::metrics::Metrics;

/// How often discovery and every JWKS are fetched again even without a key miss, so that a
/// rotated key is known before the first token signed with it arrives.
const PROVIDER_REFRESH: Duration = Duration::from_secs(300);

/// Counters of one policy's decisions, resolved once rather than per request.
#[derive(Debug, Clone)]
pub struct DecisionCounters {
    /// The request went upstream.
    pub allow: IntCounter,
    /// Sent to the provider to log in (a redirect).
    pub login: IntCounter,
    /// 401: no or bad credentials from a client that cannot follow a redirect.
    pub unauthenticated: IntCounter,
    /// 403: signed in, but the rules say no.
    pub forbidden: IntCounter,
    /// 503: the provider was needed and could not be reached (fail closed).
    pub unavailable: IntCounter,
    /// Everything else the gateway answers itself: callbacks, logouts, bad requests.
    pub answered: IntCounter,
}

impl DecisionCounters {
    fn new(metrics: &Metrics, policy: &str) -> Self {
        let counter = |outcome| metrics.auth_decision_counter(policy, outcome);
        Self {
            allow: counter("allow"),
            login: counter("login"),
            unauthenticated: counter("unauthenticated"),
            forbidden: counter("forbidden"),
            unavailable: counter("unavailable"),
            answered: counter("answered"),
        }
    }

    /// Counts a reply the gateway sends instead of proxying, by its status.
    pub fn count_reply(&self, status: u16) {
        match status {
            302 | 303 => self.login.inc(),
            401 => self.unauthenticated.inc(),
            403 => self.forbidden.inc(),
            503 => self.unavailable.inc(),
            _ => self.answered.inc(),
        }
    }
}

/// One policy, ready on the request path.
#[derive(Debug)]
pub struct PolicyEnforcer {
    pub authenticator: Arc<Authenticator>,
    pub decisions: DecisionCounters,
}

/// The enforcers of one snapshot, by policy `namespace/name`.
#[derive(Debug, Default)]
pub struct AuthTable {
    by_policy: HashMap<Arc<str>, Arc<PolicyEnforcer>>,
    /// The identity header names of every policy in force: removed from every incoming request,
    /// on routes with or without a policy, so that no upstream can be handed a forged identity.
    strip_everywhere: Vec<HeaderName>,
}

impl AuthTable {
    pub fn enforcer(&self, policy: &str) -> Option<&Arc<PolicyEnforcer>> {
        self.by_policy.get(policy)
    }

    pub fn strip_everywhere(&self) -> &[HeaderName] {
        &self.strip_everywhere
    }

    pub fn is_empty(&self) -> bool {
        self.by_policy.is_empty()
    }
}

#[derive(Debug)]
struct Entry {
    fingerprint: u64,
    enforcer: Arc<PolicyEnforcer>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// Owns the authenticators across reloads; used by `DataPlane::apply` only, never on the
/// request path.
#[derive(Debug)]
pub struct AuthRegistry {
    runtime: Option<tokio::runtime::Handle>,
    revocations: Arc<RevocationList>,
    context: Option<AuthContext>,
    entries: HashMap<String, Entry>,
}

impl AuthRegistry {
    /// `runtime` runs the provider refreshers; without one, the runtime of the first caller
    /// that brings policies is used. `revocations` is shared by every policy (and possibly
    /// with other replicas).
    pub fn new(
        runtime: Option<tokio::runtime::Handle>,
        revocations: Option<Arc<RevocationList>>,
    ) -> Self {
        Self {
            runtime,
            revocations: revocations.unwrap_or_default(),
            context: None,
            entries: HashMap::new(),
        }
    }

    /// The table for `policies`: an unchanged policy keeps its authenticator, a changed one
    /// gets a new one, and those no longer in force are dropped (their refreshers stop).
    pub fn update(
        &mut self,
        policies: &[Arc<Policy>],
        metrics: &Metrics,
    ) -> Result<Arc<AuthTable>, GatewayError> {
        if policies.is_empty() {
            self.entries.clear();
            return Ok(Arc::new(AuthTable::default()));
        }
        let runtime = match &self.runtime {
            Some(runtime) => runtime.clone(),
            None => tokio::runtime::Handle::try_current().map_err(|_| {
                GatewayError::Settings(
                    "identity policies need a Tokio runtime for their provider refreshes".into(),
                )
            })?,
        };
        let context = match &self.context {
            Some(context) => context.clone(),
            None => {
                // Built on first use: the HTTP client costs memory a gateway without identity
                // policies should not pay.
                let http = torhaus_policies::provider::http_client().map_err(|error| {
                    GatewayError::Settings(format!("identity provider HTTP client: {error}"))
                })?;
                let context = AuthContext {
                    http,
                    revocations: Arc::clone(&self.revocations),
                };
                self.context = Some(context.clone());
                context
            }
        };
        let mut entries = HashMap::with_capacity(policies.len());
        let mut table = AuthTable::default();
        for policy in policies {
            let key = policy.key();
            let fingerprint = fingerprint(policy);
            let entry = match self.entries.remove(&key) {
                Some(entry) if entry.fingerprint == fingerprint => entry,
                _ => {
                    let authenticator = Arc::new(Authenticator::new(Arc::clone(policy), &context));
                    let refresher = {
                        let _guard = runtime.enter();
                        authenticator.spawn_refresher(PROVIDER_REFRESH)
                    };
                    Entry {
                        fingerprint,
                        enforcer: Arc::new(PolicyEnforcer {
                            decisions: DecisionCounters::new(metrics, &key),
                            authenticator,
                        }),
                        refresher,
                    }
                }
            };
            for name in entry.enforcer.authenticator.strip_list() {
                if !table.strip_everywhere.contains(name) {
                    table.strip_everywhere.push(name.clone());
                }
            }
            table
                .by_policy
                .insert(Arc::from(key.as_str()), Arc::clone(&entry.enforcer));
            entries.insert(key, entry);
        }
        // What is left in `self.entries` is no longer in force: dropping it stops its refresher.
        self.entries = entries;
        Ok(Arc::new(table))
    }
}

/// Identifies a policy's whole validated content (Secrets included), so that any change
/// makes a fresh authenticator and nothing stale is kept. Never logged.
fn fingerprint(policy: &Policy) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{policy:?}").hash(&mut hasher);
    hasher.finish()
}
