//! Wiring for each subcommand: the directory or Kubernetes source feeds translations to the data plane.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use torhaus_acme::{LocalCa, default_state_dir};
use torhaus_gateway::{DataPlane, GatewaySettings};
use torhaus_k8s::{TranslateOptions, Translation};

use crate::cli::{CheckArgs, RunArgs, StateDirArg};

pub fn serve(args: RunArgs) -> anyhow::Result<ExitCode> {
    let state_dir = args
        .state
        .state_dir
        .clone()
        .unwrap_or_else(default_state_dir);
    let local_ca = LocalCa::load_or_create(&state_dir)
        .with_context(|| format!("loading the local CA from {}", state_dir.display()))?;
    // The control plane (directory watcher, signal handling) runs on its own small runtime;
    // pingora builds and owns the runtimes of the listeners.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("torhaus-control")
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    let (mut translations, mut controller) = match &args.config {
        Some(config) => {
            let translations = control
                .block_on(async {
                    torhaus_k8s::spawn_directory_source(config.clone(), TranslateOptions::default())
                })
                .with_context(|| format!("reading {}", config.display()))?;
            (translations, None)
        }
        None => {
            let (translations, controller) = control.block_on(start_controller(&args))?;
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
        trusted_hops: args.trusted_hops,
        grace_period: args.grace_period,
        max_request_header_bytes: args.max_request_header_bytes,
    };
    let dataplane =
        DataPlane::start(settings, Arc::new(local_ca)).context("starting the data plane")?;
    dataplane
        .apply(first.config.clone())
        .context("applying the initial configuration")?;
    match &args.config {
        Some(config) => tracing::info!(config = %config.display(), "serving"),
        None => tracing::info!("serving the cluster's Gateway API objects"),
    }

    let forwarder = dataplane.clone();
    control.spawn(async move {
        while translations.changed().await.is_ok() {
            let translation = translations.borrow_and_update().clone();
            log_translation(&translation, logged.as_mut());
            if let Err(error) = forwarder.apply(translation.config.clone()) {
                tracing::error!(%error, "the new configuration could not be applied; the previous one keeps serving");
            }
        }
    });
    let stopper = dataplane.clone();
    control.spawn(async move {
        wait_for_shutdown_signal().await;
        tracing::info!("shutting down: draining connections");
        if let Some(controller) = controller.take() {
            // Hand the status Lease over first, so another replica writes status at once.
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
) -> anyhow::Result<(
    tokio::sync::watch::Receiver<Arc<Translation>>,
    torhaus_k8s::Controller,
)> {
    let mut addresses = args.kube.gateway_addresses.clone();
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
        identity,
    };
    let mut controller = torhaus_k8s::Controller::start(settings).await?;
    let translations = controller
        .translations()
        .await
        .context("the Kubernetes source stopped before its first sync")?;
    Ok((translations, controller))
}

pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let objects = torhaus_k8s::load_directory(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let translation = torhaus_k8s::translate(&objects, &TranslateOptions::default());
    println!("{}", translation.report);
    Ok(if translation.report.rejected() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
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

async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop torhaus with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
