//! The torhaus command line as a user runs it: `torhaus check` verdicts (exit codes, warnings)
//! and refusing a port another process already listens on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, ensure};
use torhaus_tests::process::{TempDir, Torhaus, TorhausOptions, free_port, torhaus_bin};

fn repo_root() -> PathBuf {
    let tests = torhaus_tests::process::package_dir(env!("CARGO_MANIFEST_DIR"));
    tests
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// A config directory holding the quickstart's manifests plus `extra` (file name, text).
fn quickstart_with(extra: &[(&str, &str)]) -> anyhow::Result<TempDir> {
    let dir = TempDir::new("check")?;
    for name in ["gateway.yaml", "backend.yaml"] {
        let source = repo_root().join("examples/quickstart").join(name);
        std::fs::copy(&source, dir.path().join(name))
            .with_context(|| format!("copying {}", source.display()))?;
    }
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text)?;
    }
    Ok(dir)
}

/// Runs `torhaus check` on `dir` and insists on a rejection (exit 1); returns its output.
fn check_rejects(dir: &Path) -> anyhow::Result<String> {
    let (output, text) = check(dir)?;
    ensure!(
        output.status.code() == Some(1) && text.contains("result: rejected"),
        "exit {:?}:\n{text}",
        output.status
    );
    Ok(text)
}

fn check(dir: &Path) -> anyhow::Result<(Output, String)> {
    let output = Command::new(torhaus_bin()?)
        .args(["check", "--config"])
        .arg(dir)
        .output()
        .context("running torhaus check")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output, text))
}

#[test]
fn check_warns_but_passes_when_the_local_ca_covers_a_missing_secret() -> anyhow::Result<()> {
    let (output, text) = check(&repo_root().join("examples/quickstart"))?;
    ensure!(output.status.success(), "exit {:?}:\n{text}", output.status);
    ensure!(
        text.contains("warning: Gateway default/home listener https")
            && text.contains("Secret default/home-tls not found")
            && text.contains("local CA"),
        "the missing Secret must be reported as a warning:\n{text}"
    );
    ensure!(text.contains("result: ok, with 1 warning(s)"), "{text}");
    Ok(())
}

const INVALID_SECRET: &str = "apiVersion: v1
kind: Secret
metadata: { name: home-tls, namespace: default }
type: kubernetes.io/tls
data:
  tls.crt: bm90IGEgY2VydGlmaWNhdGU=
  tls.key: bm90IGEga2V5
";

#[test]
fn check_rejects_a_secret_that_exists_but_is_invalid() -> anyhow::Result<()> {
    let dir = quickstart_with(&[("secret.yaml", INVALID_SECRET)])?;
    let text = check_rejects(dir.path())?;
    ensure!(
        text.contains("ResolvedRefs=False (InvalidCertificateRef)"),
        "{text}"
    );
    ensure!(
        !text.contains("warning:"),
        "an invalid Secret is no warning:\n{text}"
    );
    Ok(())
}

#[test]
fn check_rejects_a_certificate_in_another_namespace_without_reference_grant() -> anyhow::Result<()>
{
    let gateway = std::fs::read_to_string(repo_root().join("examples/quickstart/gateway.yaml"))?
        .replace(
            "- name: home-tls",
            "- name: home-tls\n            namespace: certs",
        );
    let dir = quickstart_with(&[])?;
    std::fs::write(dir.path().join("gateway.yaml"), gateway)?;
    let text = check_rejects(dir.path())?;
    ensure!(text.contains("RefNotPermitted"), "{text}");
    Ok(())
}

#[test]
fn check_rejects_an_invalid_route() -> anyhow::Result<()> {
    let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: broken, namespace: default }
spec:
  parentRefs: [{ name: home }]
  rules:
    - matches: [{ path: { type: RegularExpression, value: \"/(unclosed\" } }]
      backendRefs: [{ name: echo, port: 8080 }]
";
    let dir = quickstart_with(&[("broken.yaml", route)])?;
    let text = check_rejects(dir.path())?;
    ensure!(text.contains("HTTPRoute default/broken"), "{text}");
    Ok(())
}

/// A second torhaus on ports the first one serves must exit with a clear error instead of
/// sharing the port (and half of its connections) with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_torhaus_on_the_same_ports_fails_loudly() -> anyhow::Result<()> {
    let config = quickstart_with(&[])?;
    let first = Torhaus::start(
        config.path(),
        &TorhausOptions {
            gateway_ports: vec![80, 443],
            ..TorhausOptions::default()
        },
    )
    .await?;
    let taken = first.addr(80)?.port();
    let state = TempDir::new("second-state")?;
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(torhaus_bin()?)
            .args(["run", "--config"])
            .arg(config.path())
            .arg("--port-map")
            .arg(format!("80:{taken},443:{}", free_port()?))
            .arg("--state-dir")
            .arg(state.path())
            .output(),
    )
    .await
    .context("the second torhaus kept running on a taken port")??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(1),
        "exit {:?}; stderr:\n{stderr}",
        output.status
    );
    ensure!(
        stderr.contains(&format!("cannot listen on 0.0.0.0:{taken}")),
        "the error must name the address: {stderr}"
    );
    Ok(())
}
