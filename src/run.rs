//! Wiring for each subcommand: the directory source feeds translations to the data plane.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use torhaus_acme::{LocalCa, default_state_dir};
use torhaus_gateway::{DataPlane, GatewaySettings};
use torhaus_k8s::{TranslateOptions, Translation};

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
    // The control plane (directory watcher, signal handling) runs on its own small runtime;
    // pingora builds and owns the runtimes of the listeners.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("torhaus-control")
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    let mut translations = control
        .block_on(async {
            torhaus_k8s::spawn_directory_source(args.config.clone(), TranslateOptions::default())
        })
        .with_context(|| format!("reading {}", args.config.display()))?;
    let first = translations.borrow_and_update().clone();
    log_translation(&first);

    let settings = GatewaySettings {
        bind: args.bind,
        port_map: args.port_map.0,
        threads: args.threads.max(1),
        trusted_hops: args.trusted_hops,
        grace_period: args.grace_period,
        max_request_header_bytes: args.max_request_header_bytes,
        request_metrics: !args.observability.no_request_metrics,
        access_log: args.observability.access_log.clone(),
    };
    let dataplane =
        DataPlane::start(settings, Arc::new(local_ca)).context("starting the data plane")?;
    // Standalone mode has no election: this process is the only writer there is.
    dataplane.metrics().set_leader(true);
    // Readiness is a signal, not a guess: it turns true once the first full configuration
    // serves; the Kubernetes source can hold it back until its caches have synced.
    let (ready, ready_signal) = tokio::sync::watch::channel(false);
    let admin = Arc::new(AdminState::new(dataplane.clone(), ready_signal));
    if let Some(addr) = args.observability.admin_bind.0 {
        let bound = control.block_on(admin::serve(addr, Arc::clone(&admin)))?;
        tracing::info!(%bound, "admin listener (metrics, health, status page)");
    }
    let applied = dataplane.apply(first.config.clone());
    admin.record_load(
        Arc::clone(&first),
        applied.as_ref().err().map(ToString::to_string),
    );
    applied.context("applying the initial configuration")?;
    ready.send_replace(true);
    tracing::info!(config = %args.config.display(), "serving");

    let forwarder = dataplane.clone();
    control.spawn(async move {
        while translations.changed().await.is_ok() {
            let translation = translations.borrow_and_update().clone();
            log_translation(&translation);
            let applied = forwarder.apply(translation.config.clone());
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
        wait_for_shutdown_signal().await;
        tracing::info!("shutting down: draining connections");
        stopper.shutdown();
    });
    dataplane.wait();
    control.shutdown_background();
    Ok(ExitCode::SUCCESS)
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

fn log_translation(translation: &Translation) {
    for problem in translation.report.problems() {
        tracing::warn!("{problem}");
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
