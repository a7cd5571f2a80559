//! The torhaus binary: the command line and the wiring of source, translation and data plane.
#![forbid(unsafe_code)]

mod acme;
mod admin;
mod cli;
mod dns_records;
mod run;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{CaCommand, Cli, Command, LogFormat};

#[global_allocator]
static GLOBAL: torhaus_alloc::Mimalloc = torhaus_alloc::Mimalloc;

fn main() -> ExitCode {
    // mimalloc asks for transparent huge pages on its arenas, so the first small allocation in
    // a 2 MiB region makes all of it resident: 16 of an idle gateway's 32 MiB. A proxy's heap
    // is small and hot; the TLB gains do not pay for that on the small nodes torhaus runs on.
    // Pages faulted in after this call are normal pages. Failure (a kernel without THP) is fine.
    let _ = nix::sys::prctl::set_thp_disable(true);
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run::serve(*args),
        Command::Check(args) => run::check(&args),
        Command::Ca {
            command: CaCommand::Export(args),
        } => run::export_ca(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter unless `TORHAUS_LOG` sets one. rustls warns about what a client sent (an IP
/// address as SNI, as wrk and some scanners send); at info level any client could make torhaus
/// write a line per connection, so only its errors are shown.
const DEFAULT_LOG_FILTER: &str = "info,rustls=error";

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TORHAUS_LOG")
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
