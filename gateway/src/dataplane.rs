//! The data plane's lifecycle: each listener port served by its own worker threads, and a
//! shared snapshot swapped atomically by [`DataPlane::apply`].
//!
//! Each port's sockets are bound here and every worker thread of the port gets duplicates of
//! them and a pingora service of its own, run by a single-threaded event loop: the kernel hands
//! each new connection to one of the threads, which keeps it (nginx's worker model: no task
//! ever moves between threads, and each thread has its own upstream connection pool). With
//! `work_stealing` one service runs on a multi-threaded runtime instead. pingora's own `Server`
//! is not used: it cannot add or remove services while running, and its per-thread runtime
//! keeps a thread-local that a later runtime thread can inherit once thread ids are recycled.
//!
//! A port the configuration declares for the first time gets new workers; a port that
//! disappears has its workers stopped (the sockets are closed at once, requests in flight
//! finish within the grace period); a port whose protocol changes (HTTP to HTTPS or back) is
//! stopped and started again with the new protocol. Other ports are not touched by either.
//!
//! Every socket is bound without `SO_REUSEPORT`, so a second torhaus (or anything else) on the
//! same port is a clear error rather than two processes silently sharing the connections.
//!
//! Shutdown stops every port's listener at once and then waits for the requests in flight
//! ([`crate::drain`]), at most the grace period.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::IntoRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::listeners::TcpSocketOptions;
use pingora::server::Fds;
use pingora::server::configuration::ServerConf;
use pingora::services::Service as _;
use pingora::services::listening::Service;
use tokio::sync::watch;
use torhaus_model::{DataPlaneConfig, OnDemandIssuer, PortProtocol};

use crate::access_log::{AccessLog, AccessLogTarget};
use crate::auth::AuthRegistry;
use crate::error::GatewayError;
use crate::metrics::{Metrics, Observer, StateView};
use crate::mirror::Mirrors;
use crate::proxy::{Engine, EngineOptions, PortProxy, ProxyShared};
use crate::snapshot::Snapshot;
use crate::tls::{OnDemandCache, PortCertResolver, SessionTickets, TlsTermination};
use crate::upstream::EjectionPolicy;

/// How long `apply` waits for a stopped port to close its sockets.
const RELEASE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a stopped port's runtime waits for its tasks after the grace period.
const WORKER_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
/// Pending connections a listening socket queues (pingora's own value).
const LISTEN_BACKLOG: i32 = 65_535;
/// How often lifecycle waits look again (binding probes, the in-flight count).
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Mirrored requests in flight at most, across all ports; beyond it mirrors are skipped.
const MAX_MIRRORS_IN_FLIGHT: usize = 1024;
/// pingora attempts per request at most (first try included), whatever a retry policy asks.
const MAX_ATTEMPTS: usize = 8;

/// How the data plane listens and behaves, from the command line.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Address to listen on; `0.0.0.0` also listens on `[::]` (IPv6-only socket) when the host
    /// has IPv6.
    pub bind: IpAddr,
    /// Declared listener port -> port actually bound.
    pub port_map: HashMap<u16, u16>,
    /// pingora worker threads per port.
    pub threads: usize,
    /// Lets idle worker threads take tasks queued on busy ones. Off, each thread runs its own
    /// single-threaded event loop and a connection stays on the thread it was accepted on, as
    /// with nginx's workers: less bookkeeping per task, so cheaper per request.
    pub work_stealing: bool,
    /// X-Forwarded-For hops to trust.
    pub trusted_hops: u32,
    /// How long in-flight requests may finish after `shutdown`.
    pub grace_period: Duration,
    /// Request header blocks above this many bytes are answered 431.
    pub max_request_header_bytes: usize,
    /// Record per-request metrics (off only to measure their cost).
    pub request_metrics: bool,
    /// Where to write one JSON line per request; `None` disables access logs.
    pub access_log: Option<AccessLogTarget>,
    /// Which engine serves requests.
    pub engine: EngineChoice,
    /// How long the engine keeps an idle client connection open: between HTTP/1.1 requests,
    /// or with no HTTP/2 stream open.
    pub client_idle_timeout: Duration,
    /// How long a client may take to complete the TLS handshake after connecting.
    pub tls_handshake_timeout: Duration,
}

/// Which engine serves requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EngineChoice {
    /// torhaus's own, for plain proxied HTTP/1.1 requests and HTTP/2 streams, handing the rest
    /// to pingora's proxy (`gateway::proxy::Engine`).
    #[default]
    Torhaus,
    /// pingora's proxy for everything.
    Pingora,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port_map: HashMap::new(),
            threads: 1,
            work_stealing: false,
            trusted_hops: 0,
            grace_period: Duration::from_secs(10),
            max_request_header_bytes: 32 * 1024,
            request_metrics: true,
            access_log: None,
            engine: EngineChoice::default(),
            client_idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Tuning beyond the command line (tests shorten the ejection backoff with it).
#[derive(Debug, Clone, Default)]
pub struct DataPlaneOptions {
    pub ejection: EjectionPolicy,
    /// Runs the identity providers' background refreshes (discovery and keys); without it,
    /// the runtime of the first `apply` that brings policies.
    pub auth_runtime: Option<tokio::runtime::Handle>,
    /// The revocation list the identity policies share (Kubernetes mode shares it with the other
    /// replicas); a private one when unset.
    pub revocations: Option<Arc<torhaus_policies::revocation::RevocationList>>,
}

#[derive(Debug)]
struct PortServer {
    protocol: PortProtocol,
    bound: SocketAddr,
    /// The `[::]` twin of a `0.0.0.0` address, when the host has IPv6.
    twin: Option<SocketAddr>,
    /// Stops this port's server alone (removal, protocol change) or with all others (shutdown).
    stop: watch::Sender<bool>,
    /// The threads serving the port; all finished once it is stopped and its grace period over.
    workers: Vec<JoinHandle<()>>,
}

impl PortServer {
    fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.bound).chain(self.twin)
    }

    fn finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// Whether every address of the port is free again (every worker closed its sockets).
    fn released(&self) -> bool {
        self.addrs()
            .all(|addr| std::net::TcpListener::bind(addr).is_ok())
    }
}

#[derive(Debug)]
struct Lifecycle {
    servers: HashMap<u16, PortServer>,
    /// Stopped servers finishing their requests in flight; their sockets are already closed.
    retiring: Vec<PortServer>,
    shutting_down: bool,
    auth: AuthRegistry,
}

#[derive(Debug)]
struct Inner {
    settings: GatewaySettings,
    proxy: Arc<ProxyShared>,
    on_demand: Arc<OnDemandCache>,
    shutdown: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    /// The session ticket keys every HTTPS port shares.
    tickets: SessionTickets,
    /// Serializes `apply` and `shutdown`; never touched on the request path.
    lifecycle: Mutex<Lifecycle>,
}

/// Handle to the running data plane; clones share it.
#[derive(Debug, Clone)]
pub struct DataPlane {
    inner: Arc<Inner>,
}

impl DataPlane {
    /// Starts an empty data plane; ports are bound by [`DataPlane::apply`].
    pub fn start(
        settings: GatewaySettings,
        issuer: Arc<dyn OnDemandIssuer>,
    ) -> Result<DataPlane, GatewayError> {
        Self::start_with_options(settings, issuer, DataPlaneOptions::default())
    }

    pub fn start_with_options(
        settings: GatewaySettings,
        issuer: Arc<dyn OnDemandIssuer>,
        options: DataPlaneOptions,
    ) -> Result<DataPlane, GatewayError> {
        if settings.threads == 0 {
            return Err(GatewayError::Settings("threads must be at least 1".into()));
        }
        if settings.max_request_header_bytes < 1024 {
            return Err(GatewayError::Settings(
                "max_request_header_bytes must be at least 1024".into(),
            ));
        }
        if settings.tls_handshake_timeout.is_zero() {
            return Err(GatewayError::Settings(
                "tls_handshake_timeout must be more than zero".into(),
            ));
        }
        pingora::tls::install_default_crypto_provider();
        // pingora bounds every accepted connection's start with its "fast" timeout, whose first
        // use starts a clock thread that wakes 100 times a second for the rest of the process's
        // life, busy or idle (a cost a small always-on box pays in power). tokio's timer, which
        // runs anyway, takes every timeout of a second or more instead.
        pingora::time::fast_timeout::set_fast_timeout_to_tokio_threshold(Some(Duration::ZERO));
        let tickets = SessionTickets::generate()?;
        let metrics = Arc::new(Metrics::new()?);
        let access_log = match &settings.access_log {
            Some(target) => Some(AccessLog::start(target, metrics.access_log_dropped())?),
            None => None,
        };
        let proxy = Arc::new(ProxyShared {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            trusted_hops: settings.trusted_hops,
            max_request_header_bytes: settings.max_request_header_bytes,
            ejection: options.ejection,
            mirrors: Mirrors::new(MAX_MIRRORS_IN_FLIGHT),
            observer: Observer::new(Arc::clone(&metrics), settings.request_metrics, access_log),
            in_flight: metrics.requests_in_flight(),
        });
        let on_demand = Arc::new(OnDemandCache::new(issuer));
        metrics.register_state(Arc::clone(&proxy.snapshot), Arc::clone(&on_demand))?;
        let (shutdown, _) = watch::channel(false);
        Ok(DataPlane {
            inner: Arc::new(Inner {
                settings,
                proxy,
                on_demand,
                shutdown,
                metrics,
                tickets,
                lifecycle: Mutex::new(Lifecycle {
                    servers: HashMap::new(),
                    retiring: Vec::new(),
                    shutting_down: false,
                    auth: AuthRegistry::new(options.auth_runtime, options.revocations),
                }),
            }),
        })
    }

    /// The data plane's metrics registry (also for other components to feed).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The configuration being served.
    pub fn config(&self) -> Arc<DataPlaneConfig> {
        Arc::clone(&self.inner.proxy.snapshot.load().config)
    }

    /// Route table size, endpoint health and certificates of the configuration being served.
    pub fn state(&self) -> StateView {
        StateView::of(&self.inner.proxy.snapshot.load(), &self.inner.on_demand)
    }

    /// The address a declared listener port is bound to.
    pub fn bound_addr(&self, declared_port: u16) -> SocketAddr {
        let port = self
            .inner
            .settings
            .port_map
            .get(&declared_port)
            .copied()
            .unwrap_or(declared_port);
        SocketAddr::new(self.inner.settings.bind, port)
    }

    /// Prepares and swaps in `config`, then makes the bound ports follow it: ports declared for
    /// the first time are bound, ports no longer declared are closed, and ports whose protocol
    /// changed are closed and bound again with the new protocol. Ports that stay as they were
    /// keep their connections. The new snapshot serves every bound port even when binding or
    /// closing one fails (the first such error is returned).
    pub fn apply(&self, config: Arc<DataPlaneConfig>) -> Result<(), GatewayError> {
        self.apply_with_policies(config, &[])
    }

    /// [`DataPlane::apply`] with the identity policies the configuration's routes name (see
    /// `AttachedRoute::auth`); they swap in the same snapshot as the routes.
    pub fn apply_with_policies(
        &self,
        config: Arc<DataPlaneConfig>,
        policies: &[Arc<torhaus_policies::Policy>],
    ) -> Result<(), GatewayError> {
        let result = self.apply_inner(config, policies);
        self.inner.metrics.config_reloaded(result.is_ok());
        result
    }

    fn apply_inner(
        &self,
        config: Arc<DataPlaneConfig>,
        policies: &[Arc<torhaus_policies::Policy>],
    ) -> Result<(), GatewayError> {
        let mut lifecycle = self
            .inner
            .lifecycle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if lifecycle.shutting_down {
            return Err(GatewayError::ShuttingDown);
        }
        self.check_port_map(&config)?;
        let previous = self.inner.proxy.snapshot.load_full();
        let auth = lifecycle.auth.update(policies, &self.inner.metrics)?;
        let mut snapshot = Snapshot::build(Arc::clone(&config), &previous);
        snapshot.auth = auth;
        snapshot.series = self.inner.metrics.series_for(&snapshot, &previous.series);
        self.inner.proxy.snapshot.store(Arc::new(snapshot));
        lifecycle.retiring.retain(|server| !server.finished());

        let mut first_error = None;
        let declared: HashMap<u16, PortProtocol> =
            config.ports.iter().map(|p| (p.port, p.protocol)).collect();
        let outdated: Vec<u16> = lifecycle
            .servers
            .iter()
            .filter(|(port, server)| declared.get(port) != Some(&server.protocol))
            .map(|(port, _)| *port)
            .collect();
        for port in outdated {
            let Some(server) = lifecycle.servers.remove(&port) else {
                continue;
            };
            server.stop.send_replace(true);
            match declared.get(&port) {
                Some(requested) => tracing::info!(
                    port,
                    bound = %server.bound,
                    from = %server.protocol,
                    to = %requested,
                    "protocol changed: restarting the port"
                ),
                None => {
                    tracing::info!(port, bound = %server.bound, "port no longer declared: closing it")
                }
            }
            if let Err(error) = wait_until_released(port, &server) {
                first_error.get_or_insert(error);
            }
            lifecycle.retiring.push(server);
        }
        for port in &config.ports {
            if lifecycle.servers.contains_key(&port.port) {
                continue;
            }
            match self.spawn_port(port.port, port.protocol) {
                Ok(server) => {
                    lifecycle.servers.insert(port.port, server);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        self.inner.metrics.set_plain_http_ports(
            lifecycle
                .servers
                .values()
                .filter(|server| server.protocol == PortProtocol::Http)
                .map(|server| server.bound.port())
                .collect(),
        );
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn check_port_map(&self, config: &DataPlaneConfig) -> Result<(), GatewayError> {
        let mut bound: HashMap<u16, u16> = HashMap::new();
        for port in &config.ports {
            let addr = self.bound_addr(port.port);
            if let Some(first) = bound.insert(addr.port(), port.port) {
                return Err(GatewayError::PortMapCollision {
                    first,
                    second: port.port,
                    bound: addr.port(),
                });
            }
        }
        Ok(())
    }

    fn spawn_port(
        &self,
        declared_port: u16,
        protocol: PortProtocol,
    ) -> Result<PortServer, GatewayError> {
        let bound = self.bound_addr(declared_port);
        let twin = dual_stack_twin(bound);
        let bind_error = |addr: SocketAddr| {
            move |source: std::io::Error| GatewayError::Bind {
                declared_port,
                addr,
                source,
            }
        };
        // Bound here, not by pingora: a port already in use is a clear error before anything
        // starts, and every worker accepts from these same sockets.
        let mut sockets = vec![(bound, listen_socket(bound).map_err(bind_error(bound))?)];
        if let Some(v6) = twin {
            sockets.push((v6, listen_socket(v6).map_err(bind_error(v6))?));
        }
        let settings = &self.inner.settings;
        let conf = Arc::new(ServerConf {
            max_retries: MAX_ATTEMPTS,
            ..ServerConf::default()
        });
        let (stop, stopped) = watch::channel(false);
        // Per-thread event loops: one pingora service per thread, each with its own copy of the
        // sockets and its own upstream connection pool. Work stealing: one service on one
        // multi-threaded runtime.
        let (services, threads_per_service) = if settings.work_stealing {
            (1, settings.threads)
        } else {
            (settings.threads, 1)
        };
        let mut workers = Vec::with_capacity(services);
        for index in 0..services {
            let started = self.spawn_port_worker(PortWorker {
                declared_port,
                protocol,
                index,
                threads: threads_per_service,
                conf: Arc::clone(&conf),
                sockets: &sockets,
                stopped: stopped.clone(),
            });
            match started {
                Ok(worker) => workers.push(worker),
                Err(error) => {
                    // The workers already running close their sockets and end.
                    stop.send_replace(true);
                    return Err(error);
                }
            }
        }
        // Every worker holds its own duplicate of each socket; these originals are not needed.
        drop(sockets);
        let server = PortServer {
            protocol,
            bound,
            twin,
            stop,
            workers,
        };
        // No probe connection: the sockets have listened since they were bound, so clients
        // wait in the backlog until a worker accepts them, and a probe would itself be accepted
        // as a client (on an HTTPS port, a failed handshake at every start).
        tracing::info!(port = declared_port, %bound, %protocol, "listening");
        Ok(server)
    }

    /// Starts one thread serving a port: a pingora service of its own on duplicates of the
    /// port's sockets, run by a runtime of `threads` threads (one: a single-threaded event loop).
    fn spawn_port_worker(&self, worker: PortWorker<'_>) -> Result<JoinHandle<()>, GatewayError> {
        let PortWorker {
            declared_port,
            protocol,
            index,
            threads,
            conf,
            sockets,
            stopped,
        } = worker;
        let mut fds = Fds::new();
        for (addr, socket) in sockets {
            let copy = socket.try_clone().map_err(|source| GatewayError::Bind {
                declared_port,
                addr: *addr,
                source,
            })?;
            fds.add(addr.to_string(), copy.into_raw_fd());
        }
        let proxy = PortProxy {
            declared_port,
            protocol,
            shared: Arc::clone(&self.inner.proxy),
        };
        let mut pingora = pingora::proxy::http_proxy(&conf, proxy);
        if protocol == PortProtocol::Http {
            let mut server_options = HttpServerOptions::default();
            server_options.h2c = true;
            pingora.server_options = Some(server_options);
        }
        // HTTPS ports are TCP listeners to pingora: the engine runs the handshake.
        let tls = match protocol {
            PortProtocol::Http => None,
            PortProtocol::Https => {
                let resolver = PortCertResolver::new(
                    declared_port,
                    Arc::clone(&self.inner.proxy.snapshot),
                    Arc::clone(&self.inner.on_demand),
                );
                Some(Arc::new(TlsTermination::new(
                    Arc::new(resolver),
                    &self.inner.tickets,
                    self.inner.settings.tls_handshake_timeout,
                    Some(Arc::clone(&self.inner.metrics)),
                )?))
            }
        };
        let engine = Engine::new(
            PortProxy {
                declared_port,
                protocol,
                shared: Arc::clone(&self.inner.proxy),
            },
            pingora,
            EngineOptions {
                h2c: protocol == PortProtocol::Http,
                own_engine: self.inner.settings.engine == EngineChoice::Torhaus,
                idle_timeout: self.inner.settings.client_idle_timeout,
                tls,
            },
        );
        let mut service = Service::new(format!("torhaus port {declared_port}"), engine);
        // The options only matter to pingora when it binds, which it does not: the fds table
        // already holds every address.
        let options = TcpSocketOptions::default();
        for (addr, _) in sockets {
            service.add_tcp_with_settings(&addr.to_string(), options.clone());
        }
        let grace_period = self.inner.settings.grace_period;
        let thread_name = format!("torhaus-{declared_port}-{index}");
        let runtime = if threads > 1 {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name(thread_name.clone())
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .map_err(|source| GatewayError::Thread {
            declared_port,
            source,
        })?;
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                runtime.block_on(async move {
                    if threads == 1 {
                        // Tasks never leave this thread: access log lines may wait in its batch.
                        tokio::spawn(crate::access_log::run_batch_flusher());
                    }
                    let fds = Arc::new(parking_lot::Mutex::new(fds));
                    service.start_service(Some(fds), stopped, 1).await;
                    // The sockets are closed; connections still open have the grace period to
                    // finish (shutdown returns earlier once nothing is in flight).
                    tokio::time::sleep(grace_period).await;
                });
                runtime.shutdown_timeout(WORKER_SHUTDOWN_TIMEOUT);
                crate::access_log::flush_thread_batch();
            })
            .map_err(|source| GatewayError::Thread {
                declared_port,
                source,
            })
    }

    /// Stops accepting connections on every port and lets in-flight requests finish within
    /// the grace period. Idempotent.
    pub fn shutdown(&self) {
        let mut lifecycle = self
            .inner
            .lifecycle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lifecycle.shutting_down = true;
        for server in lifecycle.servers.values() {
            server.stop.send_replace(true);
        }
        self.inner.shutdown.send_replace(true);
    }

    /// How many requests are being handled right now, on all ports.
    pub fn requests_in_flight(&self) -> usize {
        self.inner.proxy.in_flight.count()
    }

    /// Blocks until [`DataPlane::shutdown`] was called, every port has closed its sockets and
    /// no request is in flight any more, or the grace period has passed since the shutdown.
    ///
    /// The port workers sleep out the rest of the grace period; they hold no socket and no
    /// request by then, so a process can exit as soon as this returns.
    pub fn wait(self) {
        let mut receiver = self.inner.shutdown.subscribe();
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => {
                // Err means every sender is gone, which cannot happen while `self` holds one.
                let _ = runtime.block_on(receiver.wait_for(|stop| *stop));
            }
            Err(error) => {
                tracing::error!(%error, "cannot wait for shutdown; stopping now");
                self.shutdown();
            }
        }
        let started = Instant::now();
        let deadline = started + self.inner.settings.grace_period;
        // `apply` refuses new ports once shutting down, so this is every server there will be.
        let servers: Vec<PortServer> = {
            let mut lifecycle = self
                .inner
                .lifecycle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut servers: Vec<PortServer> = lifecycle
                .servers
                .drain()
                .map(|(_, server)| server)
                .collect();
            servers.append(&mut lifecycle.retiring);
            servers
        };
        // Drained means: no socket accepts any more and nothing was in flight on two looks in a
        // row (a request read just as its connection's listener closed is counted in between).
        let mut idle_looks = 0;
        while idle_looks < 2 {
            let idle = self.requests_in_flight() == 0
                && servers.iter().all(|s| s.finished() || s.released());
            idle_looks = if idle { idle_looks + 1 } else { 0 };
            if Instant::now() >= deadline {
                tracing::warn!(
                    in_flight = self.requests_in_flight(),
                    grace_period = ?self.inner.settings.grace_period,
                    "grace period over; abandoning the requests still in flight"
                );
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        tracing::info!(
            drained_in_ms = started.elapsed().as_millis(),
            "every port closed and no request in flight"
        );
    }
}

/// What one thread serving a port needs.
struct PortWorker<'a> {
    declared_port: u16,
    protocol: PortProtocol,
    index: usize,
    threads: usize,
    conf: Arc<ServerConf>,
    sockets: &'a [(SocketAddr, socket2::Socket)],
    stopped: watch::Receiver<bool>,
}

/// A listening socket for `addr`, non-blocking as the runtimes need it: `SO_REUSEADDR` (a
/// restart can bind while old connections linger in TIME_WAIT) but never `SO_REUSEPORT` (a
/// second process on the port is an error, not a silent share of the connections); IPv6
/// sockets are IPv6-only, so `[::]` and `0.0.0.0` do not collide.
fn listen_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// When listening on `0.0.0.0`, the `[::]` address of the same port, if this host can bind it
/// (IPv6 enabled); bound IPv6-only so the two sockets do not collide.
fn dual_stack_twin(bound: SocketAddr) -> Option<SocketAddr> {
    let IpAddr::V4(ip) = bound.ip() else {
        return None;
    };
    if !ip.is_unspecified() {
        return None;
    }
    let v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), bound.port());
    std::net::TcpListener::bind(v6).ok().map(|_| v6)
}

/// Polls until a stopped server has closed every socket of its port, so the port can be bound
/// again (protocol change) or is really gone (removal).
fn wait_until_released(declared_port: u16, server: &PortServer) -> Result<(), GatewayError> {
    let started = Instant::now();
    while !server.released() {
        if server.finished() || started.elapsed() > RELEASE_DEADLINE {
            return Err(GatewayError::NotReleased {
                declared_port,
                addr: server.bound,
                waited_ms: started.elapsed().as_millis(),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Ok(())
}
