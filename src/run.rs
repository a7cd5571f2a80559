//! Wiring for each subcommand: the directory source feeds translations to the data plane.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use torhaus_acme::{LocalCa, default_state_dir};
use torhaus_gateway::{DataPlane, DataPlaneOptions, EjectionPolicy, GatewaySettings};
use torhaus_k8s::{
    Condition, ListenerStatus, ObjectKind, ObjectStatus, Report, Severity, TranslateOptions,
    Translation,
};

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
    };
    let options = DataPlaneOptions {
        ejection: EjectionPolicy {
            consecutive_failures: args.eject_after_failures,
            base_backoff: args.eject_backoff,
            max_backoff: args.eject_max_backoff.max(args.eject_backoff),
        },
    };
    let dataplane = DataPlane::start_with_options(settings, Arc::new(local_ca), options)
        .context("starting the data plane")?;
    dataplane
        .apply(first.config.clone())
        .context("applying the initial configuration")?;
    tracing::info!(config = %args.config.display(), "serving");

    let forwarder = dataplane.clone();
    control.spawn(async move {
        while translations.changed().await.is_ok() {
            let translation = translations.borrow_and_update().clone();
            log_translation(&translation);
            if let Err(error) = forwarder.apply(translation.config.clone()) {
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
