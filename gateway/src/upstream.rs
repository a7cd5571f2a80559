//! Upstream endpoint choice: power-of-two-choices load balancing and passive ejection, over
//! per-endpoint atomic state that outlives configuration swaps.
//!
//! # Load balancing
//! For each request the balancer draws two distinct endpoints of the backend at random and sends
//! the request to the one with fewer requests in flight (power of two choices, as in Mitzenmacher's
//! "The Power of Two Choices in Randomized Load Balancing"). In-flight counts are per endpoint
//! address and shared by every backend that lists that address. This balances as well as
//! least-connections in practice while touching only two atomics per pick, with no lock and no
//! global scan.
//!
//! # Passive ejection
//! [`EjectionPolicy::consecutive_failures`] connection failures in a row (connect refused, reset
//! or timed out) eject an endpoint for [`EjectionPolicy::base_backoff`], doubling with each
//! consecutive ejection up to [`EjectionPolicy::max_backoff`]. When the period ends the endpoint is
//! picked again (recovery); one success resets its counters. When every endpoint of a backend is
//! ejected, all of them are used anyway: a possibly-down endpoint beats a guaranteed 503.
//!
//! # Survival across swaps
//! [`EndpointRegistry::rebuild`] reuses the state of every address that is still present, so
//! counters and ejections carry over when a new snapshot replaces the old one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use torhaus_model::{Backend, BackendTarget, DataPlaneConfig, Filter};

use crate::access_log::LogNames;

/// When an endpoint is taken out of rotation after connection failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionPolicy {
    /// Connection failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further consecutive ejection doubles it.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(120),
        }
    }
}

/// Milliseconds on a process-wide monotonic clock; 0 is never a valid "ejected until".
fn now_millis() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// The live state of one upstream address.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    /// The address as access log lines carry it.
    pub log_addr: LogNames,
    in_flight: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Ejections since the last success: the exponent of the next backoff.
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
}

impl EndpointState {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            log_addr: LogNames::upstream(addr),
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.is_ejected_at(now_millis())
    }

    fn is_ejected_at(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Records a connection failure; returns true when it ejected the endpoint.
    pub fn record_failure(&self, policy: &EjectionPolicy) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < policy.consecutive_failures.max(1) {
            return false;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed);
        let factor = 1u32.checked_shl(ejections.min(16)).unwrap_or(u32::MAX);
        let backoff = policy
            .base_backoff
            .saturating_mul(factor)
            .min(policy.max_backoff);
        let until =
            now_millis().saturating_add(u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        true
    }

    pub fn record_success(&self) {
        // Loads first: on the hot path these are almost always 0 already, and a store would
        // bounce the cache line between cores for nothing.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }
}

/// A request's claim on an endpoint: counts as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    fn claim(endpoint: &Arc<EndpointState>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(endpoint))
    }

    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one backend, in the order the configuration lists them.
#[derive(Debug, Default)]
pub struct EndpointSet {
    endpoints: Box<[Arc<EndpointState>]>,
}

impl EndpointSet {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn endpoints(&self) -> &[Arc<EndpointState>] {
        &self.endpoints
    }

    /// Picks an endpoint by power of two choices among those not ejected (all of them when every
    /// one is ejected). `None` only when the set is empty.
    pub fn pick(&self) -> Option<InFlight> {
        let endpoints = &self.endpoints;
        let count = endpoints.len();
        match count {
            0 => return None,
            1 => return Some(InFlight::claim(&endpoints[0])),
            _ => {}
        }
        let now = now_millis();
        // Two distinct endpoints, uniformly.
        let first = fastrand::usize(..count);
        let second = (first + 1 + fastrand::usize(..count - 1)) % count;
        let first_up = !endpoints[first].is_ejected_at(now);
        let second_up = !endpoints[second].is_ejected_at(now);
        let chosen = match (first_up, second_up) {
            (true, true) => {
                if endpoints[second].in_flight() < endpoints[first].in_flight() {
                    second
                } else {
                    first
                }
            }
            (true, false) => first,
            (false, true) => second,
            (false, false) => self.first_available(now).unwrap_or(first),
        };
        Some(InFlight::claim(&endpoints[chosen]))
    }

    /// Like [`EndpointSet::pick`], but a retry should not go back to the endpoint that just
    /// failed while another one exists: it takes the least loaded of the others, preferring
    /// endpoints that are not ejected.
    pub fn pick_excluding(&self, avoid: Option<SocketAddr>) -> Option<InFlight> {
        let Some(avoid) = avoid else {
            return self.pick();
        };
        let now = now_millis();
        let alternative = self
            .endpoints
            .iter()
            .filter(|e| e.addr != avoid)
            .min_by_key(|e| (e.is_ejected_at(now), e.in_flight()));
        match alternative {
            Some(endpoint) => Some(InFlight::claim(endpoint)),
            None => self.pick(),
        }
    }

    /// Scans from a random start so that, with most endpoints ejected, the survivors share load.
    fn first_available(&self, now_ms: u64) -> Option<usize> {
        let count = self.endpoints.len();
        let start = fastrand::usize(..count);
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|&index| !self.endpoints[index].is_ejected_at(now_ms))
    }
}

/// Endpoint sets of every backend in one snapshot, keyed by the backend's allocation, plus the
/// per-address state they share.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    by_address: HashMap<SocketAddr, Arc<EndpointState>>,
    by_backend: HashMap<usize, Arc<EndpointSet>>,
}

impl EndpointRegistry {
    /// Builds the registry for `config`, carrying over the state of addresses `previous` knew.
    pub fn rebuild(previous: &EndpointRegistry, config: &DataPlaneConfig) -> EndpointRegistry {
        let mut next = EndpointRegistry::default();
        for port in &config.ports {
            for listener in &port.listeners {
                for attached in &listener.routes {
                    for rule in &attached.route.rules {
                        for filter in &rule.filters {
                            next.add_filter_backends(previous, filter);
                        }
                        for weighted in &rule.backends {
                            next.add_target(previous, &weighted.target);
                            for filter in &weighted.filters {
                                next.add_filter_backends(previous, filter);
                            }
                        }
                    }
                }
            }
        }
        next
    }

    fn add_filter_backends(&mut self, previous: &EndpointRegistry, filter: &Filter) {
        if let Filter::Mirror(mirror) = filter {
            self.add_target(previous, &mirror.backend);
        }
    }

    fn add_target(&mut self, previous: &EndpointRegistry, target: &BackendTarget) {
        let BackendTarget::Service(backend) = target else {
            return;
        };
        let key = backend_key(backend);
        if self.by_backend.contains_key(&key) {
            return;
        }
        let endpoints = backend
            .endpoints
            .iter()
            .map(|addr| {
                let state = previous
                    .by_address
                    .get(addr)
                    .or_else(|| self.by_address.get(addr))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(EndpointState::new(*addr)));
                self.by_address.insert(*addr, Arc::clone(&state));
                state
            })
            .collect();
        self.by_backend
            .insert(key, Arc::new(EndpointSet { endpoints }));
    }

    /// The endpoints of a backend of this snapshot's configuration.
    pub fn endpoints_of(&self, backend: &Arc<Backend>) -> Option<&Arc<EndpointSet>> {
        self.by_backend.get(&backend_key(backend))
    }

    /// The shared state of an address, if any backend of this snapshot lists it.
    pub fn endpoint(&self, addr: &SocketAddr) -> Option<&Arc<EndpointState>> {
        self.by_address.get(addr)
    }
}

/// Backends are identified by their allocation: the snapshot keeps the configuration (and so
/// every `Arc<Backend>`) alive, so the address cannot be reused while the key is in use.
fn backend_key(backend: &Arc<Backend>) -> usize {
    Arc::as_ptr(backend) as usize
}

#[cfg(test)]
#[allow(
    clippy::expect_used,
    reason = "a broken test fixture should fail the test loudly"
)]
mod tests {
    use super::*;

    fn set(addrs: &[&str]) -> EndpointSet {
        EndpointSet {
            endpoints: addrs
                .iter()
                .map(|a| Arc::new(EndpointState::new(a.parse().expect("test address"))))
                .collect(),
        }
    }

    #[test]
    fn two_choices_prefers_the_less_loaded_endpoint() {
        let endpoints = set(&["127.0.0.1:1", "127.0.0.1:2"]);
        let held: Vec<InFlight> = (0..5)
            .map(|_| InFlight::claim(&endpoints.endpoints[0]))
            .collect();
        for _ in 0..50 {
            let pick = endpoints.pick().expect("non-empty");
            assert_eq!(pick.endpoint().addr.port(), 2);
        }
        drop(held);
        assert_eq!(endpoints.endpoints[0].in_flight(), 0);
    }

    #[test]
    fn a_retry_avoids_the_endpoint_that_just_failed() {
        let endpoints = set(&["127.0.0.1:1", "127.0.0.1:2"]);
        let failed: SocketAddr = "127.0.0.1:1".parse().expect("test address");
        for _ in 0..50 {
            let pick = endpoints.pick_excluding(Some(failed)).expect("non-empty");
            assert_eq!(pick.endpoint().addr.port(), 2);
        }
        let single = set(&["127.0.0.1:1"]);
        let pick = single.pick_excluding(Some(failed)).expect("non-empty");
        assert_eq!(
            pick.endpoint().addr.port(),
            1,
            "the only endpoint is still used"
        );
    }

    #[test]
    fn ejected_endpoints_are_skipped_until_all_are_ejected() {
        let policy = EjectionPolicy {
            consecutive_failures: 2,
            base_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(60),
        };
        let endpoints = set(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        assert!(!endpoints.endpoints[0].record_failure(&policy));
        assert!(endpoints.endpoints[0].record_failure(&policy));
        assert!(endpoints.endpoints[0].is_ejected());
        for _ in 0..100 {
            let pick = endpoints.pick().expect("non-empty");
            assert_ne!(pick.endpoint().addr.port(), 1);
        }
        for endpoint in &endpoints.endpoints[1..] {
            endpoint.record_failure(&policy);
            endpoint.record_failure(&policy);
        }
        assert!(endpoints.pick().is_some(), "all ejected: still picks one");
    }

    #[test]
    fn ejection_ends_after_the_backoff_and_success_resets_it() {
        let policy = EjectionPolicy {
            consecutive_failures: 1,
            base_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(40),
        };
        let endpoint = EndpointState::new("127.0.0.1:1".parse().expect("test address"));
        assert!(endpoint.record_failure(&policy));
        assert!(endpoint.is_ejected());
        let deadline = Instant::now() + Duration::from_secs(5);
        while endpoint.is_ejected() {
            assert!(Instant::now() < deadline, "ejection never ended");
            std::thread::yield_now();
        }
        // Second ejection doubles.
        assert!(endpoint.record_failure(&policy));
        let until = endpoint.ejected_until_ms.load(Ordering::Relaxed);
        assert!(until >= now_millis() + 30);
        endpoint.record_success();
        assert_eq!(endpoint.ejections.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn state_survives_a_rebuild() {
        use torhaus_model::*;
        let backend = Arc::new(Backend {
            id: BackendId {
                service: ObjectName::new("ns", "svc"),
                port: 80,
            },
            protocol: UpstreamProtocol::Http1,
            endpoints: vec!["127.0.0.1:9".parse().expect("test address")],
        });
        let config = |backend: Arc<Backend>| DataPlaneConfig {
            ports: vec![PortConfig {
                port: 80,
                protocol: PortProtocol::Http,
                listeners: vec![Listener {
                    id: ListenerId {
                        gateway: ObjectName::new("ns", "gw"),
                        section: "http".into(),
                    },
                    hostname: HostMatch::Any,
                    tls: None,
                    routes: vec![AttachedRoute {
                        route: Arc::new(HttpRoute {
                            kind: RouteKind::Http,
                            id: ObjectName::new("ns", "r"),
                            created_unix: 0,
                            rules: vec![Arc::new(Rule {
                                index: 0,
                                name: None,
                                matches: vec![RequestMatch::default()],
                                filters: vec![],
                                backends: vec![WeightedBackend {
                                    weight: 1,
                                    target: BackendTarget::Service(backend),
                                    filters: vec![],
                                }],
                                timeouts: Timeouts::default(),
                                retry: None,
                            })],
                        }),
                        hostnames: vec![HostMatch::Any],
                        auth: Vec::new(),
                    }],
                }],
            }],
        };
        let first =
            EndpointRegistry::rebuild(&EndpointRegistry::default(), &config(backend.clone()));
        let held = first
            .endpoints_of(&backend)
            .and_then(|set| set.pick())
            .expect("one endpoint");
        let copy = Arc::new(Backend {
            id: backend.id.clone(),
            protocol: backend.protocol,
            endpoints: backend.endpoints.clone(),
        });
        let second = EndpointRegistry::rebuild(&first, &config(copy.clone()));
        let state = second
            .endpoints_of(&copy)
            .map(|set| Arc::clone(&set.endpoints()[0]))
            .expect("one endpoint");
        assert!(Arc::ptr_eq(&state, held.endpoint()));
        assert_eq!(state.in_flight(), 1);
    }
}
