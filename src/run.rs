//! Wiring for each subcommand: the directory or Kubernetes source feeds translations to the data plane.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use torhaus_acme::{LocalCa, default_state_dir};
use torhaus_gateway::{DataPlane, DataPlaneOptions, EjectionPolicy, GatewaySettings};
use torhaus_k8s::{
    Condition, ListenerStatus, ObjectKind, ObjectStatus, Report, Severity, Translation,
};

use crate::admin::{self, AdminState};
use crate::cli::{CheckArgs, RunArgs, StateDirArg};

pub fn serve(args: RunArgs) -> anyhow::Result<ExitCode> {
    let state_dir = args
        .state
        .state_dir
        .clone()
        .unwrap_or_else(default_state_dir);
    let local_ca = LocalCa::load_or_create(&state_dir)
        .with_context(|| format!("loading the local CA from {}", state_dir.display()))?;
    // Standalone ACME: issued certificates are Secret manifests in the store, read as an extra
    // root of the directory source.
    let acme_store = match &args.config {
        Some(_) => Some(crate::acme::open_store(&args.acme, &state_dir)?),
        None => None,
    };
    // The control plane (directory watcher, signal handling) runs on its own small runtime;
    // pingora builds and owns the runtimes of the listeners.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("torhaus-control")
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    // Signal handlers first: a SIGTERM or SIGINT that arrives while the ports are being bound
    // must start a drain, not kill the process with the default action.
    let shutdown_signals = {
        let _runtime = control.enter();
        ShutdownSignals::install()
    };
    // Sessions revoked by a logout; in Kubernetes mode shared with the other replicas.
    let revocations = torhaus_policies::revocation::RevocationList::new();
    let (mut translations, mut controller) = match &args.config {
        Some(config) => {
            let translations = control
                .block_on(async {
                    torhaus_k8s::spawn_directory_source_with_roots(
                        config.clone(),
                        acme_store.iter().map(|s| s.secrets_dir()).collect(),
                        standalone_options(
                            &args.kube.addresses.gateway_addresses,
                            &args.cluster_resources,
                        ),
                        torhaus_k8s::WatchMode::Notify,
                    )
                })
                .with_context(|| format!("reading {}", config.display()))?;
            (translations, None)
        }
        None => {
            let (translations, controller) =
                control.block_on(start_controller(&args, Arc::clone(&revocations)))?;
            (translations, Some(controller))
        }
    };
    let first = translations.borrow_and_update().clone();
    // In Kubernetes mode endpoints change all the time: repeat a problem only when it is new.
    let mut logged = (controller.is_some()).then(HashSet::new);
    log_translation(&first, logged.as_mut());

    let settings = GatewaySettings {
        bind: args.bind,
        port_map: args.port_map.0,
        threads: args.threads.max(1),
        work_stealing: args.work_stealing,
        trusted_hops: args.trusted_hops,
        grace_period: args.grace_period,
        max_request_header_bytes: args.max_request_header_bytes,
        request_metrics: !args.observability.no_request_metrics,
        access_log: args.observability.access_log.clone(),
        engine: args.engine.into(),
        client_idle_timeout: args
            .client_idle_timeout
            .max(std::time::Duration::from_millis(1)),
        tls_handshake_timeout: args
            .tls_handshake_timeout
            .max(std::time::Duration::from_millis(1)),
    };
    let options = DataPlaneOptions {
        ejection: EjectionPolicy {
            consecutive_failures: args.eject_after_failures,
            base_backoff: args.eject_backoff,
            max_backoff: args.eject_max_backoff.max(args.eject_backoff),
        },
        auth_runtime: Some(control.handle().clone()),
        revocations: Some(revocations),
    };
    let dataplane = DataPlane::start_with_options(settings, Arc::new(local_ca), options)
        .context("starting the data plane")?;
    // The one writer of DNS records: in standalone mode the holder of the store's lock (which
    // also orders certificates); in Kubernetes mode the holder of the status Lease.
    let leader = match (&acme_store, &controller) {
        (Some(store), _) => Some(control.block_on(async { crate::acme::leader_lock(store) })?),
        (None, Some(controller)) => Some(controller.is_leader()),
        (None, None) => None,
    };
    let acme_status = match (acme_store, controller.as_mut(), &leader) {
        (Some(store), _, Some(leader)) => Some(control.block_on(async {
            crate::acme::start_lifecycle(
                Arc::new(store),
                leader.clone(),
                &args.acme,
                translations.clone(),
                Arc::clone(dataplane.metrics()),
            )
        })),
        // Kubernetes mode: certificates are Secrets, and the ACME Lease elects the orderer.
        (None, Some(controller), _) => {
            if args.acme.acme_store.is_some() {
                tracing::warn!(
                    "--acme-store is ignored in Kubernetes mode: certificates are Secrets in the cluster"
                );
            }
            Some(control.block_on(async {
                let acme = controller.start_acme();
                crate::acme::start_lifecycle(
                    acme.store,
                    acme.may_order,
                    &args.acme,
                    translations.clone(),
                    Arc::clone(dataplane.metrics()),
                )
            }))
        }
        _ => None,
    };
    let dns_status = leader.map(|leader| {
        control.block_on(async {
            crate::dns_records::start(
                translations.clone(),
                leader,
                &args.dns,
                Arc::clone(dataplane.metrics()),
            )
        })
    });
    match &controller {
        // Standalone mode has no election: this process is the only writer there is.
        None => dataplane.metrics().set_leader(true),
        Some(controller) => {
            let mut leader = controller.is_leader();
            let metrics = Arc::clone(dataplane.metrics());
            control.spawn(async move {
                loop {
                    metrics.set_leader(*leader.borrow_and_update());
                    if leader.changed().await.is_err() {
                        break;
                    }
                }
            });
        }
    }
    // Readiness is a signal, not a guess: it turns true once the first full configuration
    // serves (in Kubernetes mode the controller has waited for its first full sync).
    let (ready, ready_signal) = tokio::sync::watch::channel(false);
    let admin = Arc::new(AdminState::new(dataplane.clone(), ready_signal));
    if let Some(status) = acme_status {
        admin.watch_acme(status);
    }
    if let Some(status) = dns_status {
        admin.watch_dns_records(status);
    }
    if let Some(addr) = args.observability.admin_bind.0 {
        let bound = control.block_on(admin::serve(addr, Arc::clone(&admin)))?;
        tracing::info!(%bound, "admin listener (metrics, health, status page)");
    }
    let applied = dataplane.apply_with_policies(first.config.clone(), &first.policies);
    admin.record_load(
        Arc::clone(&first),
        applied.as_ref().err().map(ToString::to_string),
    );
    applied.context("applying the initial configuration")?;
    ready.send_replace(true);
    match &args.config {
        Some(config) => tracing::info!(config = %config.display(), "serving"),
        None => tracing::info!("serving the cluster's Gateway API objects"),
    }

    let forwarder = dataplane.clone();
    control.spawn(async move {
        while translations.changed().await.is_ok() {
            let translation = translations.borrow_and_update().clone();
            log_translation(&translation, logged.as_mut());
            let started = std::time::Instant::now();
            let applied =
                forwarder.apply_with_policies(translation.config.clone(), &translation.policies);
            tracing::debug!(
                compile_ms = started.elapsed().as_millis(),
                "compiled and swapped the snapshot"
            );
            admin.record_load(
                Arc::clone(&translation),
                applied.as_ref().err().map(ToString::to_string),
            );
            if let Err(error) = applied {
                tracing::error!(%error, "the new configuration could not be applied; the previous one keeps serving");
            }
        }
    });
    let stopper = dataplane.clone();
    control.spawn(async move {
        shutdown_signals.received().await;
        tracing::info!("shutting down: draining connections");
        if let Some(controller) = controller.take() {
            // Hand the Leases over first, so another replica writes status and orders at once.
            controller.shutdown().await;
        }
        stopper.shutdown();
    });
    dataplane.wait();
    control.shutdown_background();
    Ok(ExitCode::SUCCESS)
}

/// Kubernetes mode: connects, waits for the first full sync (the replica is not ready before)
/// and returns the translations and the controller.
async fn start_controller(
    args: &RunArgs,
    revocations: Arc<torhaus_policies::revocation::RevocationList>,
) -> anyhow::Result<(
    tokio::sync::watch::Receiver<Arc<Translation>>,
    torhaus_k8s::Controller,
)> {
    let mut addresses = args.kube.addresses.gateway_addresses.clone();
    if addresses.is_empty()
        && let Ok(pod_ip) = std::env::var("POD_IP")
    {
        addresses.push(pod_ip);
    }
    let identity = args
        .kube
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("torhaus-{}", std::process::id()));
    let settings = torhaus_k8s::ControllerSettings {
        addresses: addresses
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| torhaus_k8s::GatewayAddress::parse(a))
            .collect(),
        lease_namespace: args.kube.lease_namespace.clone(),
        lease_name: args.kube.lease_name.clone(),
        acme_lease_name: args.kube.acme_lease_name.clone(),
        cluster_resource_namespace: args.cluster_resources.cluster_resource_namespace.clone(),
        identity,
        revocations: Some(revocations),
    };
    let mut controller = torhaus_k8s::Controller::start(settings).await?;
    let translations = controller
        .translations()
        .await
        .context("the Kubernetes source stopped before its first sync")?;
    Ok((translations, controller))
}

pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    // The ACME store only when named: validating manifests must not depend on local state.
    let store = args
        .acme_store
        .clone()
        .or_else(|| args.state_dir.as_ref().map(|dir| dir.join("acme")));
    let objects = torhaus_k8s::DirectorySource::new(&args.config)
        .with_extra_roots(
            store
                .iter()
                .map(|root| torhaus_acme::DirectoryStore::secrets_dir_of(root))
                .collect(),
        )
        .load()
        .with_context(|| format!("reading {}", args.config.display()))?;
    let translation = torhaus_k8s::translate(
        &objects,
        &standalone_options(&args.addresses.gateway_addresses, &args.cluster_resources),
    );
    println!("{}", translation.report);
    for line in torhaus_k8s::describe_certificates(
        &translation.certificates,
        &translation.issuers,
        &translation.config,
    ) {
        println!("{line}");
    }
    for line in torhaus_k8s::describe_publishers(&translation.publishers) {
        println!("{line}");
    }
    let verdict = CheckVerdict::of(&translation.report);
    for warning in &verdict.warnings {
        println!("warning: {warning}");
    }
    Ok(if verdict.rejected {
        println!("result: rejected (see the conditions and problems above)");
        ExitCode::FAILURE
    } else {
        match verdict.warnings.len() {
            0 => println!("result: ok"),
            n => println!("result: ok, with {n} warning(s)"),
        }
        ExitCode::SUCCESS
    })
}

/// Standalone translation: `--gateway-address` values are the gateway's addresses (published
/// in Gateway status and by DNSPublishers without addresses of their own).
fn standalone_options(
    addresses: &[String],
    cluster_resources: &crate::cli::ClusterResourceNamespaceArg,
) -> torhaus_k8s::TranslateOptions {
    torhaus_k8s::TranslateOptions {
        addresses: addresses
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| torhaus_k8s::GatewayAddress::parse(a))
            .collect(),
        ..cluster_resources.translate_options()
    }
}

/// What `torhaus check` concludes from a translation report.
#[derive(Debug, Default)]
struct CheckVerdict {
    rejected: bool,
    /// Problems that do not stop anything from being served as the user expects.
    warnings: Vec<String>,
}

impl CheckVerdict {
    fn of(report: &Report) -> Self {
        let mut verdict = CheckVerdict {
            rejected: report
                .problems
                .iter()
                .any(|p| p.severity == Severity::Error),
            warnings: Vec::new(),
        };
        for object in &report.objects {
            let own = object.conditions.iter();
            let parents = object.parents.iter().flat_map(|p| p.conditions.iter());
            if own.chain(parents).any(Condition::is_problem) {
                verdict.rejected = true;
            }
            for listener in &object.listeners {
                for condition in listener.conditions.iter().filter(|c| c.is_problem()) {
                    if served_by_local_ca(report, object, listener, condition) {
                        verdict.warnings.push(format!(
                            "{} listener {}: {condition} (HTTPS is served with certificates \
                             from the local CA, see `torhaus ca export`, until the Secret exists)",
                            object.key, listener.name
                        ));
                    } else {
                        verdict.rejected = true;
                    }
                }
            }
        }
        verdict
    }
}

/// Whether `condition` only says that a listener's certificate Secret does not exist (yet)
/// while the listener serves anyway, with certificates from the local CA: the quickstart's
/// situation, and a normal one before cert-manager or ACME has written the Secret. A Secret
/// that exists but is invalid, or one the Gateway may not reference, stays a rejection.
fn served_by_local_ca(
    report: &Report,
    gateway: &ObjectStatus,
    listener: &ListenerStatus,
    condition: &Condition,
) -> bool {
    if gateway.key.kind != ObjectKind::Gateway
        || condition.type_ != "ResolvedRefs"
        || condition.reason != "InvalidCertificateRef"
        || !condition.message.contains(" not found")
        || listener
            .conditions
            .iter()
            .any(|c| c.type_ != "ResolvedRefs" && c.is_problem())
    {
        return false;
    }
    report
        .config
        .ports
        .iter()
        .flat_map(|port| &port.listeners)
        .filter(|served| {
            served.id.gateway.namespace == gateway.key.namespace
                && served.id.gateway.name == gateway.key.name
                && served.id.section == listener.name
        })
        .any(|served| {
            served
                .tls
                .as_ref()
                .is_some_and(|tls| tls.certificates.is_empty())
        })
}

pub fn export_ca(args: &StateDirArg) -> anyhow::Result<ExitCode> {
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let local_ca = LocalCa::load_or_create(&state_dir)
        .with_context(|| format!("loading the local CA from {}", state_dir.display()))?;
    print!("{}", local_ca.ca_certificate_pem());
    Ok(ExitCode::SUCCESS)
}

/// Logs the translation's problems; with `seen`, only those the previous one did not have.
fn log_translation(translation: &Translation, seen: Option<&mut HashSet<String>>) {
    let problems: Vec<String> = translation
        .report
        .problems()
        .iter()
        .map(ToString::to_string)
        .collect();
    match seen {
        None => problems.iter().for_each(|p| tracing::warn!("{p}")),
        Some(seen) => {
            for problem in problems.iter().filter(|p| !seen.contains(*p)) {
                tracing::warn!("{problem}");
            }
            *seen = problems.into_iter().collect();
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed (signals that arrive before
/// anyone waits are kept, not lost).
struct ShutdownSignals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl ShutdownSignals {
    /// Must run inside a Tokio runtime context.
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => ShutdownSignals(Some((term, int))),
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, "cannot install signal handlers; stop torhaus with SIGKILL");
                ShutdownSignals(None)
            }
        }
    }

    async fn received(self) {
        match self.0 {
            Some((mut term, mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}
