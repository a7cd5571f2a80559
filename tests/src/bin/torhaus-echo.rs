//! A stand-alone echo backend (the conformance suite's echo-basic look-alike) for the quickstart.

use anyhow::Context as _;
use torhaus_tests::echo::{EchoIdentity, EchoServer};

fn flag(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let listen = flag(&args, "--listen", "127.0.0.1:9080");
    let listen = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not an address:port"))?;
    let identity = EchoIdentity {
        namespace: flag(&args, "--namespace", "default"),
        pod: flag(&args, "--pod", "echo"),
        service: flag(&args, "--service", "echo"),
    };
    let server = EchoServer::start_on(listen, identity).await?;
    eprintln!("torhaus-echo listening on {}", server.addr());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
