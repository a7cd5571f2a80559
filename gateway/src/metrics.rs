//! Prometheus metrics: the registry and every family torhaus exports, the per-snapshot request
//! series resolved ahead of time, the per-request observation, and the scrape-time view of the
//! current snapshot (route table, endpoint health, certificates).
//!
//! # Cost on the request path
//! Label values are resolved when a snapshot is built, not per request: [`SnapshotSeries`] maps
//! (listener, rule) to ready counter and histogram handles, so recording a request is one hash
//! probe on two pointers plus a few atomic increments, with no label hashing, no allocation and
//! no lock (prometheus' counters and histograms are atomics).
//!
//! # Cardinality
//! Labels carry only configured names: Gateway, listener (sectionName), HTTPRoute and backend
//! (`namespace/service:port`), and the status class. Requests no route serves are counted under
//! empty labels. Paths, client addresses and client-supplied hosts never become label values;
//! on-demand certificates appear only under hostnames that listeners declare exactly.
//!
//! # Families defined ahead of their producers
//! ACME orders, DNS provider calls, authentication decisions, certificate renewal failures and
//! leader status are registered here so dashboards and alerts can name them now. Their producers
//! (the ACME, DNS and policies work) feed them through the methods below; until then they
//! export no series. `torhaus_leader` follows the Kubernetes controller's Lease, and is 1 in
//! standalone mode, which has no election.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use torhaus_model::{BackendTarget, HostMatch, Rule};

use pingora::http::RequestHeader;
use pingora::proxy::Session;

use crate::access_log::{AccessEntry, AccessLog, LogNames, Protocol, RequestFields};
use crate::drain::InFlightRequests;
use crate::error::GatewayError;
use crate::router::CompiledListener;
use crate::snapshot::Snapshot;
use crate::tls::OnDemandCache;

/// Requests by gateway, listener, route, backend and status class.
pub const HTTP_REQUESTS_TOTAL: &str = "torhaus_http_requests_total";
/// Time from the request's arrival to the end of the response, by gateway, listener and route.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "torhaus_http_request_duration_seconds";
/// Time from choosing an endpoint to the upstream's response headers, by backend.
pub const HTTP_UPSTREAM_DURATION_SECONDS: &str = "torhaus_http_upstream_duration_seconds";
pub const HTTP_REQUEST_BODY_BYTES_TOTAL: &str = "torhaus_http_request_body_bytes_total";
pub const HTTP_RESPONSE_BODY_BYTES_TOTAL: &str = "torhaus_http_response_body_bytes_total";
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "torhaus_http_requests_in_flight";
/// Open downstream connections, by protocol (plain HTTP counted from the kernel at scrape time).
pub const DOWNSTREAM_CONNECTIONS_ACTIVE: &str = "torhaus_downstream_connections_active";
pub const TLS_HANDSHAKES_TOTAL: &str = "torhaus_tls_handshakes_total";
pub const CONFIG_RELOADS_TOTAL: &str = "torhaus_config_reloads_total";
pub const CONFIG_REJECTIONS_TOTAL: &str = "torhaus_config_rejections_total";
pub const CONFIG_REJECTED_OBJECTS: &str = "torhaus_config_rejected_objects";
pub const CONFIG_LAST_SUCCESS_TIMESTAMP_SECONDS: &str =
    "torhaus_config_last_reload_success_timestamp_seconds";
pub const ROUTE_TABLE_SIZE: &str = "torhaus_route_table_size";
pub const BACKEND_ENDPOINTS: &str = "torhaus_backend_endpoints";
pub const CERTIFICATE_NOT_AFTER_TIMESTAMP_SECONDS: &str =
    "torhaus_certificate_not_after_timestamp_seconds";
pub const CERTIFICATE_RENEWAL_TIMESTAMP_SECONDS: &str =
    "torhaus_certificate_renewal_timestamp_seconds";
/// Not fed yet: the ACME work reports failed renewals here.
pub const CERTIFICATE_RENEWAL_FAILURES_TOTAL: &str = "torhaus_certificate_renewal_failures_total";
/// Not fed yet: ACME orders by issuer and outcome.
pub const ACME_ORDERS_TOTAL: &str = "torhaus_acme_orders_total";
/// Not fed yet: DNS provider API calls by provider, operation and outcome.
pub const DNS_PROVIDER_REQUESTS_TOTAL: &str = "torhaus_dns_provider_requests_total";
/// DNS records syncs by publisher and result (`success`, `error`).
pub const DNS_RECORDS_SYNCS_TOTAL: &str = "torhaus_dns_records_syncs_total";
/// Record sets a publisher owns and keeps current, after its last successful sync.
pub const DNS_RECORDS_MANAGED: &str = "torhaus_dns_records_managed";
/// Desired records a publisher leaves alone because a record it does not own is in the way.
pub const DNS_RECORDS_CONFLICTS: &str = "torhaus_dns_records_conflicts";
/// Identity decisions by policy and outcome (allow, login, unauthenticated, forbidden, unavailable, answered).
pub const AUTH_DECISIONS_TOTAL: &str = "torhaus_auth_decisions_total";
/// 1 while this replica leads (writes status, runs ACME); 1 in standalone mode.
pub const LEADER: &str = "torhaus_leader";
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "torhaus_access_log_dropped_total";
/// Client connections torhaus's HTTP/1.1 engine handed to pingora's proxy, by reason.
pub const ENGINE_HANDOVERS_TOTAL: &str = "torhaus_engine_handovers_total";

/// Latency buckets in seconds: sub-millisecond proxying up to slow uploads.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Index into [`STATUS_CLASSES`]; 0 (no response written, e.g. the client left) is "none".
fn status_class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

/// Every family torhaus exports, in one registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    /// Requests no route served (unknown host, no match, malformed), under empty labels.
    unrouted: RouteSeries,
    /// The access log's `backend` of requests no backend served.
    no_backend: LogNames,
    in_flight: IntGauge,
    connections: IntGaugeVec,
    /// Bound local ports of the plain-HTTP listeners, whose connections a scrape counts from
    /// the kernel's socket table.
    plain_http_ports: ArcSwap<HashSet<u16>>,
    /// The proxy's own count of requests in flight (kept for draining), exported at scrape
    /// time: the request path counts each request once.
    requests_in_flight: Arc<InFlightRequests>,
    tls_handshakes: IntCounterVec,
    config_reloads: IntCounterVec,
    config_rejections: IntCounter,
    config_rejected_objects: IntGauge,
    config_last_success: Gauge,
    renewal_failures: IntCounterVec,
    acme_orders: IntCounterVec,
    dns_requests: IntCounterVec,
    dns_records_syncs: IntCounterVec,
    dns_records_managed: IntGaugeVec,
    dns_records_conflicts: IntGaugeVec,
    auth_decisions: IntCounterVec,
    leader: IntGauge,
    access_log_dropped: IntCounter,
    engine_handovers: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn metrics_error(error: prometheus::Error) -> GatewayError {
    GatewayError::Settings(format!("metrics registry: {error}"))
}

impl Metrics {
    /// Creates and registers every family, plus the process collector (CPU, memory, open files).
    pub fn new() -> Result<Metrics, GatewayError> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels).map_err(metrics_error)?;
            registry
                .register(Box::new(vec.clone()))
                .map_err(metrics_error)?;
            Ok::<_, GatewayError>(vec)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntGaugeVec::new(Opts::new(name, help), labels).map_err(metrics_error)?;
            registry
                .register(Box::new(vec.clone()))
                .map_err(metrics_error)?;
            Ok::<_, GatewayError>(vec)
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let vec = HistogramVec::new(opts, labels).map_err(metrics_error)?;
            registry
                .register(Box::new(vec.clone()))
                .map_err(metrics_error)?;
            Ok::<_, GatewayError>(vec)
        };
        let route_labels = ["gateway", "listener", "route"];
        let requests = counter(
            HTTP_REQUESTS_TOTAL,
            "HTTP requests by gateway, listener, route, backend and status class.",
            &["gateway", "listener", "route", "backend", "status_class"],
        )?;
        let request_duration = histogram(
            HTTP_REQUEST_DURATION_SECONDS,
            "Time from a request's arrival to the end of its response.",
            &route_labels,
        )?;
        let request_bytes = counter(
            HTTP_REQUEST_BODY_BYTES_TOTAL,
            "Request body bytes received from clients.",
            &route_labels,
        )?;
        let response_bytes = counter(
            HTTP_RESPONSE_BODY_BYTES_TOTAL,
            "Response body bytes sent to clients.",
            &route_labels,
        )?;
        let unrouted = RouteSeries::from_vecs(
            &requests,
            &request_duration,
            &request_bytes,
            &response_bytes,
            [String::new(), String::new(), String::new()],
        );
        let metrics = Metrics {
            requests,
            request_duration,
            request_bytes,
            response_bytes,
            unrouted,
            no_backend: LogNames::backend(""),
            upstream_duration: histogram(
                HTTP_UPSTREAM_DURATION_SECONDS,
                "Time from choosing an endpoint to its response headers, per attempt.",
                &["backend"],
            )?,
            in_flight: IntGauge::new(HTTP_REQUESTS_IN_FLIGHT, "HTTP requests being served.")
                .map_err(metrics_error)?,
            connections: IntGaugeVec::new(
                Opts::new(
                    DOWNSTREAM_CONNECTIONS_ACTIVE,
                    "Open client connections, by protocol (http: counted from the kernel's socket table at scrape time; https: from the TLS handshake to the connection's end).",
                ),
                &["protocol"],
            )
            .map_err(metrics_error)?,
            plain_http_ports: ArcSwap::default(),
            requests_in_flight: Arc::default(),
            tls_handshakes: counter(
                TLS_HANDSHAKES_TOTAL,
                "TLS handshakes by protocol version and outcome.",
                &["version", "outcome"],
            )?,
            config_reloads: counter(
                CONFIG_RELOADS_TOTAL,
                "Configurations handed to the data plane, by result (applied or failed).",
                &["result"],
            )?,
            config_rejections: IntCounter::new(
                CONFIG_REJECTIONS_TOTAL,
                "Configuration loads in which at least one object was rejected or failed to load.",
            )
            .map_err(metrics_error)?,
            config_rejected_objects: IntGauge::new(
                CONFIG_REJECTED_OBJECTS,
                "Objects (and load problems) rejected by the latest configuration load.",
            )
            .map_err(metrics_error)?,
            config_last_success: Gauge::new(
                CONFIG_LAST_SUCCESS_TIMESTAMP_SECONDS,
                "Unix time of the last configuration the data plane applied.",
            )
            .map_err(metrics_error)?,
            renewal_failures: counter(
                CERTIFICATE_RENEWAL_FAILURES_TOTAL,
                "Failed certificate renewals, by certificate.",
                &["certificate"],
            )?,
            acme_orders: counter(
                ACME_ORDERS_TOTAL,
                "ACME orders by issuer and outcome.",
                &["issuer", "outcome"],
            )?,
            dns_requests: counter(
                DNS_PROVIDER_REQUESTS_TOTAL,
                "DNS provider API calls by provider, operation and outcome.",
                &["provider", "operation", "outcome"],
            )?,
            dns_records_syncs: counter(
                DNS_RECORDS_SYNCS_TOTAL,
                "DNS records syncs by publisher and result.",
                &["publisher", "result"],
            )?,
            dns_records_managed: gauge(
                DNS_RECORDS_MANAGED,
                "DNS record sets a publisher owns and keeps current.",
                &["publisher"],
            )?,
            dns_records_conflicts: gauge(
                DNS_RECORDS_CONFLICTS,
                "Desired DNS records left alone because a record torhaus does not own is in the way.",
                &["publisher"],
            )?,
            engine_handovers: counter(
                ENGINE_HANDOVERS_TOTAL,
                "What torhaus's engine handed to pingora's proxy, by protocol: HTTP/1.1 client \
                 connections, HTTP/2 streams; and by reason (http1.0, body, upgrade, expect, \
                 connect, unusual_head, identity, mirror, retry, h2c_backend).",
                &["protocol", "reason"],
            )?,
            auth_decisions: counter(
                AUTH_DECISIONS_TOTAL,
                "Authentication decisions by policy and outcome.",
                &["policy", "outcome"],
            )?,
            leader: IntGauge::new(LEADER, "1 while this replica is the leader.")
                .map_err(metrics_error)?,
            access_log_dropped: IntCounter::new(
                ACCESS_LOG_DROPPED_TOTAL,
                "Access log lines dropped because the writer fell behind.",
            )
            .map_err(metrics_error)?,
            registry,
        };
        for collector in [
            Box::new(metrics.in_flight.clone()) as Box<dyn Collector>,
            Box::new(metrics.connections.clone()),
            Box::new(metrics.config_rejections.clone()),
            Box::new(metrics.config_rejected_objects.clone()),
            Box::new(metrics.config_last_success.clone()),
            Box::new(metrics.leader.clone()),
            Box::new(metrics.access_log_dropped.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            metrics
                .registry
                .register(collector)
                .map_err(metrics_error)?;
        }
        // Series that should exist from the start, so rate() and alerts see them at zero.
        for result in ["applied", "failed"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        Ok(metrics)
    }

    /// The requests in flight on every port, counted by the proxy.
    pub(crate) fn requests_in_flight(&self) -> Arc<InFlightRequests> {
        Arc::clone(&self.requests_in_flight)
    }

    /// Registers the scrape-time view of the data plane's current snapshot.
    pub(crate) fn register_state(
        &self,
        snapshot: Arc<ArcSwap<Snapshot>>,
        on_demand: Arc<OnDemandCache>,
    ) -> Result<(), GatewayError> {
        let collector = StateCollector::new(snapshot, on_demand).map_err(metrics_error)?;
        self.registry
            .register(Box::new(collector))
            .map_err(metrics_error)
    }

    /// Every metric in Prometheus' text exposition format (version 0.0.4).
    pub fn encode(&self) -> String {
        self.in_flight
            .set(i64::try_from(self.requests_in_flight.count()).unwrap_or(i64::MAX));
        let ports = self.plain_http_ports.load();
        if let Some(open) = crate::socket_table::established_on(&ports) {
            self.connections.with_label_values(&["http"]).set(open);
        }
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The registry, for components that register their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The local ports the plain-HTTP listeners are bound to now.
    pub(crate) fn set_plain_http_ports(&self, ports: HashSet<u16>) {
        self.plain_http_ports.store(Arc::new(ports));
    }

    /// A configuration was applied (`Ok`) or refused by the data plane (`Err`).
    pub fn config_reloaded(&self, applied: bool) {
        if applied {
            self.config_reloads.with_label_values(&["applied"]).inc();
            self.config_last_success.set(unix_now_f64());
        } else {
            self.config_reloads.with_label_values(&["failed"]).inc();
        }
    }

    /// The source loaded a configuration in which `rejected` objects or files were refused.
    pub fn config_loaded(&self, rejected: usize) {
        if rejected > 0 {
            self.config_rejections.inc();
        }
        self.config_rejected_objects
            .set(i64::try_from(rejected).unwrap_or(i64::MAX));
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// For the ACME work: one order finished (`outcome` e.g. `valid`, `invalid`, `error`).
    pub fn acme_order(&self, issuer: &str, outcome: &str) {
        self.acme_orders.with_label_values(&[issuer, outcome]).inc();
    }

    /// For the ACME work: a renewal of `certificate` (its Secret `namespace/name`) failed.
    pub fn certificate_renewal_failed(&self, certificate: &str) {
        self.renewal_failures
            .with_label_values(&[certificate])
            .inc();
    }

    /// For the DNS work: one provider call (`outcome` e.g. `ok`, `error`).
    pub fn dns_provider_request(&self, provider: &str, operation: &str, outcome: &str) {
        self.dns_requests
            .with_label_values(&[provider, operation, outcome])
            .inc();
    }

    /// For the DNS records sync: one sync of `publisher` ended with `result` (`success` or
    /// `error`); `managed` and `conflicts` are its latest counts.
    pub fn dns_records_synced(
        &self,
        publisher: &str,
        result: &str,
        managed: usize,
        conflicts: usize,
    ) {
        self.dns_records_syncs
            .with_label_values(&[publisher, result])
            .inc();
        self.dns_records_managed
            .with_label_values(&[publisher])
            .set(i64::try_from(managed).unwrap_or(i64::MAX));
        self.dns_records_conflicts
            .with_label_values(&[publisher])
            .set(i64::try_from(conflicts).unwrap_or(i64::MAX));
    }

    /// The publisher is gone: its series go too.
    pub fn dns_publisher_removed(&self, publisher: &str) {
        for result in ["success", "error"] {
            let _ = self
                .dns_records_syncs
                .remove_label_values(&[publisher, result]);
        }
        let _ = self.dns_records_managed.remove_label_values(&[publisher]);
        let _ = self.dns_records_conflicts.remove_label_values(&[publisher]);
    }

    /// One identity decision (`outcome`: `allow`, `login`, `unauthenticated`, `forbidden`,
    /// `unavailable` or `answered`).
    pub fn auth_decision(&self, policy: &str, outcome: &str) {
        self.auth_decision_counter(policy, outcome).inc();
    }

    /// The counter of one policy and outcome, for callers that count often.
    pub fn auth_decision_counter(&self, policy: &str, outcome: &str) -> IntCounter {
        self.auth_decisions.with_label_values(&[policy, outcome])
    }

    /// The HTTP/1.1 engine handed a connection to pingora's proxy.
    pub(crate) fn engine_handover(&self, protocol: &str, reason: &str) {
        self.engine_handovers
            .with_label_values(&[protocol, reason])
            .inc();
    }

    pub(crate) fn access_log_dropped(&self) -> IntCounter {
        self.access_log_dropped.clone()
    }

    /// A TLS handshake completed; the returned guard counts the connection as open until the
    /// connection (its TLS digest) is dropped.
    pub(crate) fn tls_handshake_completed(&self, version: Option<&str>) -> ConnectionGuard {
        // rustls names versions `TLSv1_3`; export the usual spelling.
        let version = match version {
            Some("TLSv1_3" | "TLSv1.3") => "TLSv1.3",
            Some("TLSv1_2" | "TLSv1.2") => "TLSv1.2",
            _ => "other",
        };
        self.tls_handshakes
            .with_label_values(&[version, "success"])
            .inc();
        let gauge = self.connections.with_label_values(&["https"]);
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// A TLS handshake did not complete.
    pub(crate) fn tls_handshake_failed(&self, failure: crate::tls::HandshakeFailure) {
        self.tls_handshakes
            .with_label_values(&["unknown", failure.label()])
            .inc();
    }

    /// Resolves the label values of every (listener, rule) of `snapshot`, reusing the series of
    /// `previous` and deleting those of routes that are gone.
    pub(crate) fn series_for(
        &self,
        snapshot: &Snapshot,
        previous: &SnapshotSeries,
    ) -> SnapshotSeries {
        let mut series = SnapshotSeries {
            rules: PtrMap::default(),
            labels: HashSet::new(),
            backends: HashSet::new(),
        };
        for port in snapshot.routes.ports() {
            for listener in port.listeners() {
                let id = listener.id();
                let gateway = id.gateway.to_string();
                for attached in &listener.model().routes {
                    let route = attached.route.id.to_string();
                    let labels = [gateway.clone(), id.section.clone(), route];
                    for rule in &attached.route.rules {
                        let backends = rule
                            .backends
                            .iter()
                            .map(|weighted| match &weighted.target {
                                BackendTarget::Service(backend) => {
                                    let name = backend.id.to_string();
                                    let per_backend = BackendSeries::new(self, &labels, &name);
                                    series.backends.insert(name);
                                    per_backend
                                }
                                BackendTarget::Invalid(_) => BackendSeries::new(self, &labels, ""),
                            })
                            .collect();
                        let rule_series = RuleSeries {
                            route: RouteSeries::new(self, labels.clone()),
                            backends,
                        };
                        series
                            .rules
                            .insert((listener_key(listener), rule_key(rule)), rule_series);
                    }
                    series.labels.insert(labels);
                }
            }
        }
        // Routes and backends that are gone stop being exported; a request still finishing on
        // the previous snapshot increments a detached handle, which is harmless.
        for gone in previous.labels.difference(&series.labels) {
            let route = [gone[0].as_str(), gone[1].as_str(), gone[2].as_str()];
            let _ = self.request_duration.remove_label_values(&route);
            let _ = self.request_bytes.remove_label_values(&route);
            let _ = self.response_bytes.remove_label_values(&route);
            for backend in previous.backends.iter().map(String::as_str).chain([""]) {
                for class in STATUS_CLASSES {
                    let _ = self
                        .requests
                        .remove_label_values(&[route[0], route[1], route[2], backend, class]);
                }
            }
        }
        for gone in previous.backends.difference(&series.backends) {
            let _ = self.upstream_duration.remove_label_values(&[gone.as_str()]);
        }
        series
    }

    /// Records one finished request, whose series `resolved` names.
    fn record(
        &self,
        resolved: &Resolved<'_>,
        obs: &RequestObs,
        elapsed: f64,
        status: u16,
        bytes: (u64, u64),
    ) {
        let class = status_class(status);
        let route = resolved.route.unwrap_or(&self.unrouted);
        match resolved.backend {
            Some(backend) => {
                backend.by_class[class].inc();
                if let Some(upstream) = obs.upstream_seconds {
                    backend.upstream.observe(upstream);
                }
            }
            None => route.unbacked[class].inc(),
        }
        route.duration.observe(elapsed);
        if bytes.0 > 0 {
            route.request_bytes.inc_by(bytes.0);
        }
        if bytes.1 > 0 {
            route.response_bytes.inc_by(bytes.1);
        }
    }
}

/// The series (and so the names) a finished request belongs to.
#[derive(Debug, Clone, Copy)]
struct Resolved<'a> {
    route: Option<&'a RouteSeries>,
    backend: Option<&'a BackendSeries>,
}

impl<'a> Resolved<'a> {
    fn of(finished: &Finished<'a>) -> Resolved<'a> {
        let rule = finished
            .snapshot
            .zip(finished.rule)
            .and_then(|(snapshot, rule)| {
                snapshot
                    .series
                    .rules
                    .get(&(finished.obs.listener, rule_key(rule)))
            });
        match rule {
            Some(rule) => Resolved {
                route: Some(&rule.route),
                backend: finished
                    .backend_index
                    .and_then(|index| rule.backends.get(index)),
            },
            None => Resolved {
                route: None,
                backend: None,
            },
        }
    }
}

/// Where the proxy reports finished requests: metrics, and the access log when enabled.
#[derive(Debug)]
pub struct Observer {
    metrics: Arc<Metrics>,
    request_metrics: bool,
    access_log: Option<AccessLog>,
}

impl Observer {
    pub fn new(
        metrics: Arc<Metrics>,
        request_metrics: bool,
        access_log: Option<AccessLog>,
    ) -> Self {
        Self {
            metrics,
            request_metrics,
            access_log,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether per-request series are recorded at all (off only for benchmarks).
    pub fn request_metrics(&self) -> bool {
        self.request_metrics
    }

    /// The request's header has been read (pingora's `early_request_filter`): its start, its
    /// client and, when requests are logged, what the log says about the request as it arrived,
    /// rendered now because filters may yet rewrite its host and path (and because its bytes are
    /// in the cache now, where by the end of the request they are not).
    pub fn request_arrived(&self, session: &Session, obs: &mut RequestObs) {
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        let protocol = if session.is_http2() {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        self.note_arrival(client, session.req_header(), protocol, obs);
    }

    /// [`Observer::request_arrived`] for a request read without a pingora session.
    pub fn note_arrival(
        &self,
        client: Option<SocketAddr>,
        request: &RequestHeader,
        protocol: Protocol,
        obs: &mut RequestObs,
    ) {
        obs.start(client);
        if self.access_log.is_some() {
            obs.request_fields = Some(render_request_fields(request, protocol, obs.client));
        }
    }

    /// The request has ended (pingora's `logging` phase).
    pub fn finish(&self, session: &Session, finished: &Finished<'_>) {
        let status = session
            .response_written()
            .map_or(0, |response| response.status.as_u16());
        let bytes = (
            u64::try_from(session.body_bytes_read()).unwrap_or(u64::MAX),
            u64::try_from(session.body_bytes_sent()).unwrap_or(u64::MAX),
        );
        let protocol = if session.is_http2() {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let client = || session.client_addr().and_then(|a| a.as_inet()).copied();
        self.note_end(
            status,
            bytes,
            || render_request_fields(session.req_header(), protocol, client()),
            finished,
        );
    }

    /// [`Observer::finish`] for a request served without a pingora session: the status written
    /// (0 for none), the body bytes read and sent, and the request's log fields in case it
    /// ended before [`Observer::note_arrival`].
    pub fn note_end(
        &self,
        status: u16,
        bytes: (u64, u64),
        late_fields: impl FnOnce() -> Vec<u8>,
        finished: &Finished<'_>,
    ) {
        if !self.request_metrics && self.access_log.is_none() {
            return;
        }
        let resolved = Resolved::of(finished);
        // One monotonic reading ends the request: it times it, and dates its log line.
        let ended = Instant::now();
        let elapsed = finished.obs.seconds_until(ended);
        if self.request_metrics {
            self.metrics
                .record(&resolved, finished.obs, elapsed, status, bytes);
        }
        if let Some(log) = &self.access_log {
            let rendered_late;
            let request = match finished.obs.request_fields.as_deref() {
                Some(fields) => fields,
                // The request ended before it was noted (pingora answered it itself).
                None => {
                    rendered_late = late_fields();
                    &rendered_late
                }
            };
            log.write(&AccessEntry {
                time: crate::access_log::Timestamp::at_instant(ended),
                request,
                status,
                route_names: &resolved.route.unwrap_or(&self.metrics.unrouted).log_names,
                backend_name: resolved
                    .backend
                    .map_or(&self.metrics.no_backend, |b| &b.log_name),
                upstream: finished.upstream,
                duration_seconds: elapsed,
                upstream_seconds: finished.obs.upstream_seconds,
                request_bytes: bytes.0,
                response_bytes: bytes.1,
                user: finished.user,
            });
        }
    }
}

/// The access log's members about the request as it arrived (see [`RequestFields`]).
fn render_request_fields(
    request: &RequestHeader,
    protocol: Protocol,
    client: Option<SocketAddr>,
) -> Vec<u8> {
    let target = std::str::from_utf8(request.raw_path()).unwrap_or("(not UTF-8)");
    let fields = RequestFields {
        client,
        host: crate::access_log::bounded(crate::proxy::raw_host(request)),
        method: &request.method,
        path: crate::access_log::path_only(target),
        protocol,
    };
    let mut rendered = Vec::with_capacity(fields.rendered_capacity());
    fields.write_json(&mut rendered);
    rendered
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Keeps a connection counted as open; decrements on drop.
#[derive(Debug)]
pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Identity hashing for pointer pairs: keys are allocation addresses, already well spread, and
/// come from configuration only.
#[derive(Debug, Default, Clone, Copy)]
struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 =
                (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.0 = (self.0.rotate_left(5) ^ value as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type PtrMap<V> = HashMap<(usize, usize), V, BuildHasherDefault<PtrHasher>>;

fn listener_key(listener: &CompiledListener) -> usize {
    std::ptr::from_ref(listener) as usize
}

fn rule_key(rule: &Arc<Rule>) -> usize {
    Arc::as_ptr(rule) as usize
}

/// The request series of one snapshot, resolved when it is built.
#[derive(Debug, Default)]
pub struct SnapshotSeries {
    rules: PtrMap<RuleSeries>,
    labels: HashSet<[String; 3]>,
    backends: HashSet<String>,
}

#[derive(Debug)]
struct RuleSeries {
    route: RouteSeries,
    /// Parallel to `rule.backends`.
    backends: Box<[BackendSeries]>,
}

#[derive(Debug)]
struct RouteSeries {
    /// gateway, listener and route, as the access log writes them.
    log_names: LogNames,
    duration: Histogram,
    request_bytes: IntCounter,
    response_bytes: IntCounter,
    /// Requests the gateway answered without a backend (redirects, filters, 5xx), by class.
    unbacked: [IntCounter; 6],
}

impl RouteSeries {
    fn new(metrics: &Metrics, labels: [String; 3]) -> Self {
        Self::from_vecs(
            &metrics.requests,
            &metrics.request_duration,
            &metrics.request_bytes,
            &metrics.response_bytes,
            labels,
        )
    }

    fn from_vecs(
        requests: &IntCounterVec,
        duration: &HistogramVec,
        request_bytes: &IntCounterVec,
        response_bytes: &IntCounterVec,
        labels: [String; 3],
    ) -> Self {
        let [gateway, listener, route] = &labels;
        let route_labels = [gateway.as_str(), listener.as_str(), route.as_str()];
        Self {
            duration: duration.with_label_values(&route_labels),
            request_bytes: request_bytes.with_label_values(&route_labels),
            response_bytes: response_bytes.with_label_values(&route_labels),
            unbacked: STATUS_CLASSES
                .map(|class| requests.with_label_values(&[gateway, listener, route, "", class])),
            log_names: LogNames::route(gateway, listener, route),
        }
    }
}

#[derive(Debug)]
struct BackendSeries {
    /// `namespace/service:port` (empty for an invalid reference), as the access log writes it.
    log_name: LogNames,
    by_class: [IntCounter; 6],
    upstream: Histogram,
}

impl BackendSeries {
    fn new(metrics: &Metrics, labels: &[String; 3], backend: &str) -> Self {
        let [gateway, listener, route] = labels;
        Self {
            by_class: STATUS_CLASSES.map(|class| {
                metrics
                    .requests
                    .with_label_values(&[gateway, listener, route, backend, class])
            }),
            upstream: metrics.upstream_duration.with_label_values(&[backend]),
            log_name: LogNames::backend(backend),
        }
    }
}

/// What the proxy notes about one request for metrics and the access log.
#[derive(Debug, Default)]
pub struct RequestObs {
    started: Option<Instant>,
    /// The TCP peer, read once when the request starts: by the end of the request the
    /// connection's digest has left the cache, and the forwarding headers need it too.
    client: Option<SocketAddr>,
    /// The compiled listener that served the request (its address within the snapshot).
    listener: usize,
    upstream_started: Option<Instant>,
    /// The last attempt's time to response headers.
    upstream_seconds: Option<f64>,
    /// The access log's members about the request as it arrived, when requests are logged.
    request_fields: Option<Vec<u8>>,
}

impl RequestObs {
    /// The request from `client` arrived (its header has been read).
    pub fn start(&mut self, client: Option<SocketAddr>) {
        self.started = Some(Instant::now());
        self.client = client;
    }

    pub fn client(&self) -> Option<SocketAddr> {
        self.client
    }

    pub fn set_listener(&mut self, listener: &CompiledListener) {
        self.listener = listener_key(listener);
    }

    /// An attempt at an upstream starts.
    pub fn upstream_started(&mut self) {
        self.upstream_started = Some(Instant::now());
    }

    /// The upstream's response headers arrived.
    pub fn upstream_answered(&mut self) {
        if let Some(started) = self.upstream_started {
            self.upstream_seconds = Some(started.elapsed().as_secs_f64());
        }
    }

    /// Seconds from the request's start to `ended`.
    pub fn seconds_until(&self, ended: Instant) -> f64 {
        self.started
            .map_or(0.0, |s| ended.saturating_duration_since(s).as_secs_f64())
    }

    pub fn upstream_seconds(&self) -> Option<f64> {
        self.upstream_seconds
    }
}

/// One finished request, as the proxy's context knows it.
#[derive(Debug)]
pub struct Finished<'a> {
    pub obs: &'a RequestObs,
    pub snapshot: Option<&'a Snapshot>,
    pub rule: Option<&'a Arc<Rule>>,
    pub backend_index: Option<usize>,
    /// The endpoint of the last attempt.
    pub upstream: Option<&'a LogNames>,
    /// Who the identity layer let through (username, else subject), for the access log.
    pub user: Option<&'a str>,
}

/// Exports the current snapshot's shape at scrape time: nothing on the request path.
struct StateCollector {
    snapshot: Arc<ArcSwap<Snapshot>>,
    on_demand: Arc<OnDemandCache>,
    descs: Vec<Desc>,
}

impl StateCollector {
    fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        on_demand: Arc<OnDemandCache>,
    ) -> prometheus::Result<Self> {
        let route_table = Self::route_table_vec()?;
        let endpoints = Self::endpoints_vec()?;
        let (not_after, renewal) = Self::certificate_vecs()?;
        let descs = [
            route_table.desc(),
            endpoints.desc(),
            not_after.desc(),
            renewal.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(Self {
            snapshot,
            on_demand,
            descs,
        })
    }

    fn route_table_vec() -> prometheus::Result<IntGaugeVec> {
        IntGaugeVec::new(
            Opts::new(
                ROUTE_TABLE_SIZE,
                "Entries of the route table being served, by kind (listeners, routes, rules, backends).",
            ),
            &["kind"],
        )
    }

    fn endpoints_vec() -> prometheus::Result<IntGaugeVec> {
        IntGaugeVec::new(
            Opts::new(
                BACKEND_ENDPOINTS,
                "Endpoints of each backend by health: ready, or ejected after connection failures.",
            ),
            &["backend", "state"],
        )
    }

    fn certificate_vecs() -> prometheus::Result<(GaugeVec, GaugeVec)> {
        let labels = ["certificate", "issuer"];
        Ok((
            GaugeVec::new(
                Opts::new(
                    CERTIFICATE_NOT_AFTER_TIMESTAMP_SECONDS,
                    "notAfter of each served certificate, as Unix time.",
                ),
                &labels,
            )?,
            GaugeVec::new(
                Opts::new(
                    CERTIFICATE_RENEWAL_TIMESTAMP_SECONDS,
                    "When each certificate is due to be renewed, as Unix time.",
                ),
                &labels,
            )?,
        ))
    }

    fn gather(&self) -> prometheus::Result<Vec<MetricFamily>> {
        let route_table = Self::route_table_vec()?;
        let endpoints = Self::endpoints_vec()?;
        let (not_after, renewal) = Self::certificate_vecs()?;
        let snapshot = self.snapshot.load();
        let view = StateView::of(&snapshot, &self.on_demand);
        for (kind, count) in [
            ("listeners", view.listeners),
            ("routes", view.routes),
            ("rules", view.rules),
            ("backends", view.backends.len()),
        ] {
            route_table
                .with_label_values(&[kind])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for backend in &view.backends {
            endpoints
                .with_label_values(&[backend.name.as_str(), "ready"])
                .set(backend.ready);
            endpoints
                .with_label_values(&[backend.name.as_str(), "ejected"])
                .set(backend.ejected);
        }
        for certificate in view.certificates.iter().filter(|c| c.declared) {
            let labels = [certificate.name.as_str(), certificate.issuer];
            not_after
                .with_label_values(&labels)
                .set(certificate.not_after_unix as f64);
            if let Some(renew_at) = certificate.renew_at_unix {
                renewal.with_label_values(&labels).set(renew_at as f64);
            }
        }
        Ok([
            route_table.collect(),
            endpoints.collect(),
            not_after.collect(),
            renewal.collect(),
        ]
        .into_iter()
        .flatten()
        .collect())
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gather().unwrap_or_else(|error| {
            tracing::error!(%error, "collecting data plane state metrics");
            Vec::new()
        })
    }
}

/// The data plane's state as the status page and the scrape see it.
#[derive(Debug, Default)]
pub struct StateView {
    pub listeners: usize,
    pub routes: usize,
    pub rules: usize,
    /// Distinct backends, by name.
    pub backends: Vec<BackendHealth>,
    /// Listener certificates and those the local CA issued on demand, by name.
    pub certificates: Vec<CertificateInfo>,
}

#[derive(Debug, Clone)]
pub struct BackendHealth {
    /// `namespace/service:port`.
    pub name: String,
    pub ready: i64,
    pub ejected: i64,
    pub endpoints: Vec<EndpointHealth>,
}

#[derive(Debug, Clone)]
pub struct EndpointHealth {
    pub addr: SocketAddr,
    pub ejected: bool,
    pub in_flight: u32,
}

#[derive(Debug, Clone)]
pub struct CertificateInfo {
    /// The Secret `namespace/name`, or the hostname for certificates the local CA issued.
    pub name: String,
    /// `secret` or `local-ca`.
    pub issuer: &'static str,
    pub dns_names: Vec<String>,
    pub not_after_unix: i64,
    pub renew_at_unix: Option<i64>,
    /// From a listener's certificateRefs, or issued on demand for a hostname a listener or
    /// route declares exactly. Others were issued for whatever SNI clients sent to a listener
    /// without hostname: shown on the status page, never exported as metric labels.
    pub declared: bool,
}

impl StateView {
    pub fn of(snapshot: &Snapshot, on_demand: &OnDemandCache) -> StateView {
        let mut view = StateView::default();
        let mut backends: HashMap<String, BackendHealth> = HashMap::new();
        let mut certificates: HashMap<String, CertificateInfo> = HashMap::new();
        let mut exact_hosts: HashSet<&str> = HashSet::new();
        for port in &snapshot.config.ports {
            for listener in &port.listeners {
                view.listeners += 1;
                if let HostMatch::Exact(host) = &listener.hostname {
                    exact_hosts.insert(host.as_str());
                }
                for certificate in listener.tls.iter().flat_map(|t| &t.certificates) {
                    certificates
                        .entry(certificate.source.clone())
                        .or_insert_with(|| CertificateInfo {
                            name: certificate.source.clone(),
                            issuer: "secret",
                            dns_names: certificate.dns_names.clone(),
                            not_after_unix: certificate.not_after_unix,
                            renew_at_unix: None,
                            declared: true,
                        });
                }
                for attached in &listener.routes {
                    view.routes += 1;
                    for hostname in &attached.hostnames {
                        if let HostMatch::Exact(host) = hostname {
                            exact_hosts.insert(host.as_str());
                        }
                    }
                    for rule in &attached.route.rules {
                        view.rules += 1;
                        for weighted in &rule.backends {
                            let BackendTarget::Service(backend) = &weighted.target else {
                                continue;
                            };
                            let name = backend.id.to_string();
                            if backends.contains_key(&name) {
                                continue;
                            }
                            let endpoints: Vec<EndpointHealth> = snapshot
                                .endpoints
                                .endpoints_of(backend)
                                .map(|set| {
                                    set.endpoints()
                                        .iter()
                                        .map(|e| EndpointHealth {
                                            addr: e.addr,
                                            ejected: e.is_ejected(),
                                            in_flight: e.in_flight(),
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            let ejected = endpoints.iter().filter(|e| e.ejected).count();
                            backends.insert(
                                name.clone(),
                                BackendHealth {
                                    name,
                                    ready: i64::try_from(endpoints.len() - ejected)
                                        .unwrap_or(i64::MAX),
                                    ejected: i64::try_from(ejected).unwrap_or(i64::MAX),
                                    endpoints,
                                },
                            );
                        }
                    }
                }
            }
        }
        for issued in on_demand.issued() {
            let declared = exact_hosts.contains(issued.server_name.as_str());
            certificates
                .entry(format!("local-ca/{}", issued.server_name))
                .or_insert_with(|| CertificateInfo {
                    name: issued.server_name.clone(),
                    issuer: "local-ca",
                    dns_names: vec![issued.server_name.clone()],
                    not_after_unix: issued.not_after_unix,
                    renew_at_unix: Some(issued.refresh_at_unix),
                    declared,
                });
        }
        view.backends = backends.into_values().collect();
        view.backends.sort_by(|a, b| a.name.cmp(&b.name));
        view.certificates = certificates.into_values().collect();
        view.certificates.sort_by(|a, b| a.name.cmp(&b.name));
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_cover_every_code() {
        assert_eq!(STATUS_CLASSES[status_class(101)], "1xx");
        assert_eq!(STATUS_CLASSES[status_class(200)], "2xx");
        assert_eq!(STATUS_CLASSES[status_class(308)], "3xx");
        assert_eq!(STATUS_CLASSES[status_class(404)], "4xx");
        assert_eq!(STATUS_CLASSES[status_class(599)], "5xx");
        assert_eq!(STATUS_CLASSES[status_class(0)], "none");
        assert_eq!(STATUS_CLASSES[status_class(600)], "none");
        assert_eq!(STATUS_CLASSES[status_class(99)], "none");
    }

    #[test]
    fn a_fresh_registry_exports_the_families_alerts_rely_on() -> Result<(), GatewayError> {
        let metrics = Metrics::new()?;
        metrics.set_leader(true);
        metrics.config_reloaded(true);
        metrics.config_loaded(2);
        let text = metrics.encode();
        for name in [
            CONFIG_RELOADS_TOTAL,
            CONFIG_REJECTIONS_TOTAL,
            CONFIG_REJECTED_OBJECTS,
            CONFIG_LAST_SUCCESS_TIMESTAMP_SECONDS,
            LEADER,
            HTTP_REQUESTS_IN_FLIGHT,
        ] {
            assert!(
                text.contains(&format!("\n{name}")),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains("torhaus_config_reloads_total{result=\"applied\"} 1"));
        assert!(text.contains("torhaus_config_rejected_objects 2"));
        assert!(text.contains("torhaus_leader 1"));
        Ok(())
    }
}
