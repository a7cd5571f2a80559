//! Gateway API conformance: the upstream v1.6.1 sample and torhaus's own cases, run against the
//! real binary with echo backends.

use std::path::PathBuf;

use torhaus_tests::runner::run_suite;

fn suite_dir(name: &str) -> PathBuf {
    torhaus_tests::process::package_dir(env!("CARGO_MANIFEST_DIR"))
        .join("conformance")
        .join(name)
}

async fn run(name: &str) -> anyhow::Result<()> {
    let filter = std::env::var("TORHAUS_CASE_FILTER").ok();
    let (total, failures) = run_suite(&suite_dir(name), filter.as_deref(), 3).await?;
    if failures.is_empty() {
        println!("{name}: all {total} cases passed");
        return Ok(());
    }
    let report: Vec<String> = failures.iter().map(ToString::to_string).collect();
    anyhow::bail!(
        "{name}: {} of {total} cases failed:\n{}",
        failures.len(),
        report.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_gateway_api_v1_6_1() -> anyhow::Result<()> {
    run("gateway-api-v1.6.1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torhaus_own_cases() -> anyhow::Result<()> {
    run("torhaus").await
}
