//! ACME end to end through the torhaus binary in standalone mode, against a real Pebble that
//! validates DNS-01 at a real knotd updated over RFC 2136 with TSIG: apex + wildcard issuance
//! served to a client trusting Pebble's root, CNAME delegation, renewal without dropping a
//! kept-alive connection, renewal at the window the CA's renewalInfo (ARI) suggests, 30%
//! rejected nonces, Pebble down while the old certificate serves, a
//! wrong TSIG key failing loudly without a retry loop, and two processes sharing one store
//! placing exactly one order.
//!
//! Needs Debian's `pebble`, `knot` and `openssl` (`scripts/install-deps.sh test`); each test
//! says SKIPPED and passes when they are missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, ensure};
use torhaus_tests::ari_standin::{AriStandIn, Window};
use torhaus_tests::client::{Connection, TestRequest, TlsSettings, Transport};
use torhaus_tests::dns_rig::{Knot, TSIG_KEY_NAME, TSIG_SECRET_B64, knotd_path};
use torhaus_tests::pebble_rig::{Pebble, PebbleOptions, leaf_of, pebble_path, served_leaf};
use torhaus_tests::process::{TempDir, Torhaus, TorhausOptions, wait_for};

const NAMESPACE: &str = "acme";

/// The DNS and ACME services, or `None` (test skipped) when they are not installed.
fn rig(options: PebbleOptions) -> anyhow::Result<Option<(Knot, Pebble)>> {
    let (Some(knotd), Some(pebble)) = (knotd_path(), pebble_path()) else {
        eprintln!("SKIPPED: pebble or knotd is not installed (run scripts/install-deps.sh test)");
        return Ok(None);
    };
    let knot = Knot::start(&knotd)?;
    let pebble = Pebble::start(&pebble, knot.addr, options)?;
    Ok(Some((knot, pebble)))
}

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines()
        .map(|line| format!("{pad}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Manifests: a Gateway opted in to the Issuer `pebble`, with one HTTPS listener per hostname;
/// `secrets` maps each hostname to its certificate Secret.
fn manifests(
    knot: &Knot,
    pebble: &Pebble,
    listeners: &[(&str, &str)],
    tsig_secret: &str,
) -> String {
    manifests_for_directory(
        knot,
        &pebble.directory_url(),
        &pebble.tls_ca_pem,
        listeners,
        tsig_secret,
    )
}

/// [`manifests`] with the Issuer's ACME directory at `server`, served with a certificate that
/// `ca_pem` issued.
fn manifests_for_directory(
    knot: &Knot,
    server: &str,
    ca_pem: &str,
    listeners: &[(&str, &str)],
    tsig_secret: &str,
) -> String {
    let mut gateway_listeners = String::new();
    for (i, (hostname, secret)) in listeners.iter().enumerate() {
        gateway_listeners.push_str(&format!(
            "    - name: l{i}\n      port: 443\n      protocol: HTTPS\n      hostname: \"{hostname}\"\n      tls: {{certificateRefs: [{{name: {secret}}}]}}\n"
        ));
    }
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: torhaus}}
spec: {{controllerName: torhaus.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: {NAMESPACE}
  annotations: {{torhaus.dev/issuer: pebble}}
spec:
  gatewayClassName: torhaus
  listeners:
{gateway_listeners}---
apiVersion: torhaus.dev/v1alpha1
kind: Issuer
metadata: {{name: pebble, namespace: {NAMESPACE}}}
spec:
  acme:
    server: {server}
    email: admin@example.test
    privateKeySecretRef: {{name: pebble-account}}
    caBundle: |
{ca}
    dns01:
      rfc2136:
        nameserver: {nameserver}
        tsigKeyName: {TSIG_KEY_NAME}
        tsigSecretRef: {{name: tsig, key: secret}}
        timeoutSeconds: 2
---
apiVersion: v1
kind: Secret
metadata: {{name: tsig, namespace: {NAMESPACE}}}
stringData: {{secret: "{tsig_secret}"}}
"#,
        ca = indent(ca_pem, 6),
        nameserver = knot.addr,
    )
}

fn write_config(dir: &Path, text: &str) -> anyhow::Result<()> {
    // Written atomically, like an editor's save: the watcher never reads half a file.
    let temporary = dir.join(".acme.yaml.tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, dir.join("acme.yaml"))?;
    Ok(())
}

async fn start_torhaus(
    config: &Path,
    knot: &Knot,
    store: Option<&Path>,
) -> anyhow::Result<Torhaus> {
    let mut extra_args = vec![
        "--acme-dns-resolver".to_owned(),
        knot.addr.to_string(),
        "--acme-dns-port".to_owned(),
        knot.addr.port().to_string(),
        "--acme-retry-base".to_owned(),
        "1s".to_owned(),
        "--acme-propagation-timeout".to_owned(),
        "10s".to_owned(),
    ];
    if let Some(store) = store {
        extra_args.push("--acme-store".to_owned());
        extra_args.push(store.display().to_string());
    }
    Torhaus::start(
        config,
        &TorhausOptions {
            gateway_ports: vec![443],
            extra_args,
            ..TorhausOptions::default()
        },
    )
    .await
}

fn stored_secret(store: &Path, name: &str) -> Option<String> {
    let path = store
        .join("secrets")
        .join(NAMESPACE)
        .join(format!("{name}.json"));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    manifest["stringData"]["tls.crt"]
        .as_str()
        .map(str::to_owned)
}

/// Writes the manifests for `listeners` into a fresh config directory and starts torhaus on it.
async fn serve(
    knot: &Knot,
    pebble: &Pebble,
    listeners: &[(&str, &str)],
    tsig_secret: &str,
) -> anyhow::Result<(TempDir, Torhaus)> {
    let config = TempDir::new("acme-config")?;
    write_config(
        config.path(),
        &manifests(knot, pebble, listeners, tsig_secret),
    )?;
    let torhaus = start_torhaus(config.path(), knot, None).await?;
    Ok((config, torhaus))
}

/// Waits until torhaus serves, for `sni`, a certificate that verifies against Pebble's root.
async fn wait_served(
    torhaus: &Torhaus,
    sni: &str,
    root: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<u8>> {
    let addr = torhaus.addr(443)?;
    wait_for(
        &format!("a Pebble certificate for {sni}"),
        deadline,
        || async { served_leaf(addr, sni, root).await.ok() },
    )
    .await
    .with_context(|| format!("torhaus log:\n{}", torhaus.log_tail()))
}

#[tokio::test]
async fn apex_and_wildcard_are_issued_in_one_order_and_served() -> anyhow::Result<()> {
    let Some((knot, pebble)) = rig(PebbleOptions::default())? else {
        return Ok(());
    };
    let (_config, torhaus) = serve(
        &knot,
        &pebble,
        &[
            ("example.test", "example-tls"),
            ("*.example.test", "example-tls"),
            // `_acme-challenge.delegated` is a CNAME into `target.acme-dns`: the TXT value
            // must be written at the target (a TXT beside a CNAME would be refused).
            ("delegated.example.test", "delegated-tls"),
        ],
        TSIG_SECRET_B64,
    )
    .await?;
    let root = pebble.issuing_root_pem().await?;
    let apex = wait_served(&torhaus, "example.test", &root, Duration::from_secs(60)).await?;
    let wildcard =
        wait_served(&torhaus, "www.example.test", &root, Duration::from_secs(10)).await?;
    ensure!(
        apex == wildcard,
        "apex and wildcard must be one certificate (one order)"
    );
    let store = torhaus.state_dir().join("acme");
    let stored = stored_secret(&store, "example-tls").context("the Secret was stored")?;
    ensure!(
        leaf_of(&stored)? == apex,
        "torhaus serves the stored Secret"
    );
    let delegated = wait_served(
        &torhaus,
        "delegated.example.test",
        &root,
        Duration::from_secs(60),
    )
    .await?;
    ensure!(delegated != apex);
    // Two certificates, two orders: no duplicate for the same names.
    ensure!(
        pebble.new_order_requests() == 2,
        "expected 2 orders, Pebble saw {}",
        pebble.new_order_requests()
    );
    // The account was created once and persisted.
    let accounts = store
        .join("accounts")
        .join(NAMESPACE)
        .join("pebble-account.json");
    ensure!(
        accounts.is_file(),
        "account stored at {}",
        accounts.display()
    );
    ensure!(pebble.log().matches("POST /sign-me-up").count() == 1);

    // The metrics count the orders and DNS provider calls.
    let metrics = admin_get(torhaus.admin_addr()?, "/metrics").await?;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("torhaus_acme_orders_total")
                && l.contains("outcome=\"valid\"")
                && l.ends_with(" 2")),
        "metrics:\n{metrics}"
    );
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("torhaus_dns_provider_requests_total")
                && l.contains("operation=\"present\"")),
        "metrics:\n{metrics}"
    );

    // /debug/config and the status page show each managed certificate's state.
    let admin = torhaus.admin_addr()?;
    let debug: serde_json::Value = serde_json::from_str(&admin_get(admin, "/debug/config").await?)?;
    let rows = debug["acmeCertificates"]
        .as_array()
        .context("acmeCertificates")?;
    ensure!(rows.len() == 2, "{debug}");
    let example = rows
        .iter()
        .find(|r| r["secret"] == "acme/example-tls")
        .context("the example-tls row")?;
    ensure!(example["state"] == "valid", "{example}");
    ensure!(example["issuer"] == "Issuer acme/pebble", "{example}");
    ensure!(
        example["dnsNames"] == serde_json::json!(["*.example.test", "example.test"]),
        "{example}"
    );
    ensure!(example["notAfterUnix"].is_i64() && example["nextRenewalUnix"].is_i64());
    let page = admin_get(admin, "/").await?;
    ensure!(page.contains("Managed certificates (ACME)") && page.contains("acme/example-tls"));
    Ok(())
}

/// The whole log of a torhaus process (`log_tail` keeps only the end).
/// The log lines about certificates, without the handshakes clients fail against the local CA.
fn acme_lines(torhaus: &Torhaus) -> String {
    full_log(torhaus)
        .lines()
        .filter(|line| !line.contains("handshake"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn full_log(torhaus: &Torhaus) -> String {
    std::fs::read_to_string(torhaus.state_dir().join("torhaus.log")).unwrap_or_default()
}

async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let response = torhaus_tests::client::send(
        addr,
        &Transport::Http1,
        &TestRequest::get("127.0.0.1", path),
    )
    .await?;
    Ok(String::from_utf8_lossy(&response.body).into_owned())
}

#[tokio::test]
async fn cluster_issuer_with_cert_manager_annotation_and_external_account_binding()
-> anyhow::Result<()> {
    // Pebble's example key pair: kid-1 and its base64url HMAC key.
    const KID: &str = "kid-1";
    const HMAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let Some((knot, pebble)) = rig(PebbleOptions {
        external_account: Some((KID.to_owned(), HMAC.to_owned())),
        ..PebbleOptions::default()
    })?
    else {
        return Ok(());
    };
    let config = TempDir::new("acme-config")?;
    let eab = format!(
        "    externalAccountBinding: {{keyID: {KID}, keySecretRef: {{name: eab, key: hmac}}}}\n"
    );
    let text = manifests(
        &knot,
        &pebble,
        &[
            ("example.test", "example-tls"),
            ("*.example.test", "example-tls"),
        ],
        TSIG_SECRET_B64,
    )
    .replace("    dns01:\n", &format!("{eab}    dns01:\n"))
        + &format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: eab, namespace: {NAMESPACE}}}\nstringData: {{hmac: {HMAC}}}\n"
        );
    // A ClusterIssuer named by cert-manager's annotation; its Secrets live in torhaus-system.
    let text = text
        .replace(
            &format!("kind: Issuer\nmetadata: {{name: pebble, namespace: {NAMESPACE}}}"),
            "kind: ClusterIssuer\nmetadata: {name: pebble}",
        )
        .replace(
            "torhaus.dev/issuer: pebble",
            "cert-manager.io/cluster-issuer: pebble",
        )
        .replace(
            &format!("metadata: {{name: tsig, namespace: {NAMESPACE}}}"),
            "metadata: {name: tsig, namespace: torhaus-system}",
        )
        .replace(
            &format!("metadata: {{name: eab, namespace: {NAMESPACE}}}"),
            "metadata: {name: eab, namespace: torhaus-system}",
        );
    write_config(config.path(), &text)?;

    // `torhaus check` lists the certificate as pending, and the listeners are not rejected.
    let output = std::process::Command::new(torhaus_tests::process::torhaus_bin()?)
        .arg("check")
        .arg("--config")
        .arg(config.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "check failed:\n{stdout}");
    ensure!(
        stdout.contains(
            "certificate Secret acme/example-tls: issuer ClusterIssuer pebble, names [*.example.test, example.test]: pending"
        ),
        "{stdout}"
    );
    ensure!(stdout.contains("certificate pending"), "{stdout}");

    // The account is created with the external account binding Pebble requires, and kept in
    // the ClusterIssuer's namespace.
    let torhaus = start_torhaus(config.path(), &knot, None).await?;
    let root = pebble.issuing_root_pem().await?;
    wait_served(&torhaus, "example.test", &root, Duration::from_secs(60)).await?;
    let account = torhaus
        .state_dir()
        .join("acme/accounts/torhaus-system/pebble-account.json");
    ensure!(account.is_file(), "{}", account.display());

    // `check` with the state directory sees the issued certificate.
    let output = std::process::Command::new(torhaus_tests::process::torhaus_bin()?)
        .arg("check")
        .arg("--config")
        .arg(config.path())
        .arg("--state-dir")
        .arg(torhaus.state_dir())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        stdout.contains("names [*.example.test, example.test]: issued, notAfter "),
        "{stdout}"
    );
    Ok(())
}

#[tokio::test]
async fn renewal_serves_the_new_certificate_without_dropping_a_connection() -> anyhow::Result<()> {
    // 30-second certificates: renewal is due at about 20 s (two thirds, minus jitter).
    let Some((knot, pebble)) = rig(PebbleOptions {
        validity_seconds: Some(30),
        ..PebbleOptions::default()
    })?
    else {
        return Ok(());
    };
    let (_config, torhaus) = serve(
        &knot,
        &pebble,
        &[
            ("example.test", "example-tls"),
            ("*.example.test", "example-tls"),
        ],
        TSIG_SECRET_B64,
    )
    .await?;
    let root = pebble.issuing_root_pem().await?;
    let first = wait_served(&torhaus, "example.test", &root, Duration::from_secs(60)).await?;
    let addr = torhaus.addr(443)?;
    let transport = Transport::Http1Tls(TlsSettings::new("example.test", root.as_bytes())?);
    let mut kept = Connection::open(addr, &transport).await?;
    let request = TestRequest::get("example.test", "/");
    let started = Instant::now();
    let mut requests = 0;
    let renewed = loop {
        // The kept-alive connection answers throughout (404: no route, but TLS and HTTP work).
        kept.send(&request)
            .await
            .with_context(|| format!("request {requests} on the kept-alive connection"))?;
        requests += 1;
        let served = served_leaf(addr, "example.test", &root).await?;
        if served != first {
            break served;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(45),
            "not renewed within 45 s; log:\n{}",
            torhaus.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(renewed != first);
    // And the old connection still works after the swap.
    kept.send(&request).await.context("after the renewal")?;
    ensure!(
        pebble.new_order_requests() == 2,
        "one order, then one renewal"
    );
    Ok(())
}

#[tokio::test]
async fn renewal_follows_the_renewal_window_the_ca_suggests() -> anyhow::Result<()> {
    // Pebble's default certificates live five years, so two thirds of the lifetime is years
    // away: only the CA's renewalInfo (ARI) can make torhaus renew now.
    let Some((knot, pebble)) = rig(PebbleOptions::default())? else {
        return Ok(());
    };
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let ari = AriStandIn::start(
        &pebble,
        vec![
            // The first certificate: its window has passed, renew at once.
            Window {
                start: now - hour,
                end: now - Duration::from_secs(60),
            },
            // Its replacement: not before next year.
            Window {
                start: now + 365 * 24 * hour,
                end: now + 366 * 24 * hour,
            },
        ],
    )
    .await?;
    let config = TempDir::new("acme-config")?;
    write_config(
        config.path(),
        &manifests_for_directory(
            &knot,
            &ari.directory_url(),
            &pebble.tls_ca_pem,
            &[("example.test", "example-tls")],
            TSIG_SECRET_B64,
        ),
    )?;
    let torhaus = start_torhaus(config.path(), &knot, None).await?;
    let root = pebble.issuing_root_pem().await?;
    let first = wait_served(&torhaus, "example.test", &root, Duration::from_secs(60))
        .await
        .with_context(|| acme_lines(&torhaus))?;
    let addr = torhaus.addr(443)?;
    wait_for(
        "the certificate renewed inside the CA's window",
        Duration::from_secs(60),
        || async {
            served_leaf(addr, "example.test", &root)
                .await
                .ok()
                .filter(|leaf| *leaf != first)
        },
    )
    .await
    .with_context(|| acme_lines(&torhaus))?;
    // The replacement is asked about too, and its far window orders nothing more.
    wait_for(
        "renewalInfo asked about the replacement",
        Duration::from_secs(30),
        || async { (ari.asked().len() >= 2).then_some(()) },
    )
    .await
    .with_context(|| acme_lines(&torhaus))?;
    // Pebble 2.4 ignores `replaces` and does not echo it: torhaus orders again without it
    // (one order for the first certificate, then the refused hint and the plain renewal).
    let log = full_log(&torhaus);
    ensure!(
        log.contains("did not take `replaces`"),
        "the renewal carried `replaces`; log:\n{log}"
    );
    ensure!(
        pebble.new_order_requests() == 3,
        "expected 3 new-order requests, Pebble saw {}",
        pebble.new_order_requests()
    );
    Ok(())
}

#[tokio::test]
async fn issuance_survives_thirty_percent_rejected_nonces() -> anyhow::Result<()> {
    let Some((knot, pebble)) = rig(PebbleOptions {
        nonce_reject_percent: 30,
        ..PebbleOptions::default()
    })?
    else {
        return Ok(());
    };
    let (_config, torhaus) = serve(
        &knot,
        &pebble,
        &[
            ("example.test", "example-tls"),
            ("*.example.test", "example-tls"),
        ],
        TSIG_SECRET_B64,
    )
    .await?;
    let root = pebble.issuing_root_pem().await?;
    wait_served(&torhaus, "www.example.test", &root, Duration::from_secs(60)).await?;
    let rejected = pebble.log().matches("badNonce").count();
    eprintln!("pebble rejected {rejected} nonces on the way");
    Ok(())
}

/// torhaus serving a Pebble certificate for `example.test`, from a config directory that can
/// still be changed.
struct Issued {
    config: TempDir,
    torhaus: Torhaus,
    /// Pebble's issuing root.
    root: String,
    /// The leaf served first.
    first: Vec<u8>,
}

impl Issued {
    async fn example(knot: &Knot, pebble: &Pebble) -> anyhow::Result<Self> {
        let (config, torhaus) = serve(
            knot,
            pebble,
            &[("example.test", "example-tls")],
            TSIG_SECRET_B64,
        )
        .await?;
        let root = pebble.issuing_root_pem().await?;
        let first = wait_served(&torhaus, "example.test", &root, Duration::from_secs(60)).await?;
        Ok(Self {
            config,
            torhaus,
            root,
            first,
        })
    }

    /// Adds `*.example.test` to the certificate (a new name needs a new order) and waits until
    /// an order has failed, for tests that took a service down first.
    async fn add_wildcard_and_wait_for_a_failed_order(
        &self,
        knot: &Knot,
        pebble: &Pebble,
    ) -> anyhow::Result<()> {
        let listeners = [
            ("example.test", "example-tls"),
            ("*.example.test", "example-tls"),
        ];
        write_config(
            self.config.path(),
            &manifests(knot, pebble, &listeners, TSIG_SECRET_B64),
        )?;
        wait_for(
            "a failed order to be logged",
            Duration::from_secs(30),
            || {
                let log = full_log(&self.torhaus);
                async move { log.contains("certificate order failed").then_some(()) }
            },
        )
        .await
        .with_context(|| self.torhaus.log_tail())
    }
}

#[tokio::test]
async fn pebble_down_keeps_the_old_certificate_serving_then_recovers() -> anyhow::Result<()> {
    let Some((knot, mut pebble)) = rig(PebbleOptions::default())? else {
        return Ok(());
    };
    let issued = Issued::example(&knot, &pebble).await?;
    let (torhaus, root, first) = (&issued.torhaus, &issued.root, &issued.first);
    pebble.stop();
    // A new name needs a new order, which cannot succeed while the CA is down.
    issued
        .add_wildcard_and_wait_for_a_failed_order(&knot, &pebble)
        .await?;
    // The old certificate keeps serving its name meanwhile.
    let still = served_leaf(torhaus.addr(443)?, "example.test", root)
        .await
        .with_context(|| format!("the old certificate; log:\n{}", torhaus.log_tail()))?;
    ensure!(still == *first);

    pebble.restart()?;
    let new_root = pebble
        .issuing_root_pem()
        .await
        .with_context(|| format!("pebble's new root; log:\n{}", pebble.log()))?;
    // Pebble forgot the account on restart: torhaus must create a new one, then order.
    let renewed = wait_served(
        torhaus,
        "www.example.test",
        &new_root,
        Duration::from_secs(60),
    )
    .await?;
    ensure!(renewed != *first);
    Ok(())
}

#[tokio::test]
async fn dns_server_down_then_back() -> anyhow::Result<()> {
    let Some((mut knot, pebble)) = rig(PebbleOptions::default())? else {
        return Ok(());
    };
    let issued = Issued::example(&knot, &pebble).await?;
    let (torhaus, root, first) = (&issued.torhaus, &issued.root, &issued.first);
    knot.stop();
    issued
        .add_wildcard_and_wait_for_a_failed_order(&knot, &pebble)
        .await?;
    // An unreachable DNS server is worth retrying (with backoff), not a reason to stop.
    ensure!(
        !full_log(torhaus).contains("ORDERING STOPPED"),
        "{}",
        torhaus.log_tail()
    );
    ensure!(served_leaf(torhaus.addr(443)?, "example.test", root).await? == *first);

    knot.restart()?;
    let renewed = wait_served(torhaus, "www.example.test", root, Duration::from_secs(60)).await?;
    ensure!(renewed != *first);
    // The retries resumed the order the failed attempt had placed: no duplicate orders.
    let attempts = full_log(torhaus).matches("ordering a certificate").count();
    ensure!(attempts >= 3, "expected retries, saw {attempts} attempts");
    ensure!(
        pebble.new_order_requests() == 2,
        "expected 2 orders (the first, then one resumed across retries), Pebble saw {}",
        pebble.new_order_requests()
    );
    Ok(())
}

#[tokio::test]
async fn wrong_tsig_key_fails_loudly_without_a_retry_loop() -> anyhow::Result<()> {
    let Some((knot, pebble)) = rig(PebbleOptions::default())? else {
        return Ok(());
    };
    let config = TempDir::new("acme-config")?;
    // A valid base64 secret, but not the one knotd knows.
    let wrong = "d3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmc=";
    write_config(
        config.path(),
        &manifests(&knot, &pebble, &[("example.test", "example-tls")], wrong),
    )?;
    let torhaus = start_torhaus(config.path(), &knot, None).await?;
    let stopped = wait_for(
        "ordering to stop with an error",
        Duration::from_secs(30),
        || {
            let log = torhaus.log_tail();
            async move { log.contains("ORDERING STOPPED").then_some(log) }
        },
    )
    .await?;
    let line = stopped
        .lines()
        .find(|l| l.contains("ORDERING STOPPED"))
        .unwrap_or_default()
        .to_owned();
    ensure!(
        line.contains("Issuer acme/pebble"),
        "the error names the issuer: {line}"
    );
    ensure!(
        line.contains("rfc2136"),
        "the error names the provider: {line}"
    );
    // Watch a window several times the retry base (1 s): no further attempt.
    let attempts_before = full_log(&torhaus).matches("ordering a certificate").count();
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let attempts_after = full_log(&torhaus).matches("ordering a certificate").count();
    ensure!(
        attempts_before == 1 && attempts_after == 1,
        "expected exactly one attempt, saw {attempts_before} then {attempts_after}:\n{}",
        torhaus.log_tail()
    );
    ensure!(pebble.new_order_requests() <= 1);
    Ok(())
}

#[tokio::test]
async fn failed_validations_stop_after_three_per_hour() -> anyhow::Result<()> {
    let (Some(knotd), Some(pebble_bin)) = (knotd_path(), pebble_path()) else {
        eprintln!("SKIPPED: pebble or knotd is not installed (run scripts/install-deps.sh test)");
        return Ok(());
    };
    // torhaus writes its TXT values to one knotd, but Pebble asks another that serves the same
    // zone without them: every validation fails at the CA.
    let knot = Knot::start(&knotd)?;
    let elsewhere = Knot::start(&knotd)?;
    let pebble = Pebble::start(&pebble_bin, elsewhere.addr, PebbleOptions::default())?;
    let (_config, torhaus) = serve(
        &knot,
        &pebble,
        &[("example.test", "example-tls")],
        TSIG_SECRET_B64,
    )
    .await?;
    let stopped = wait_for("ordering to stop", Duration::from_secs(60), || {
        let log = full_log(&torhaus);
        async move { log.contains("ORDERING STOPPED").then_some(log) }
    })
    .await
    .with_context(|| torhaus.log_tail())?;
    let line = stopped
        .lines()
        .find(|l| l.contains("ORDERING STOPPED"))
        .unwrap_or_default()
        .to_owned();
    ensure!(line.contains("3 failed validations"), "{line}");
    ensure!(line.contains("could not validate example.test"), "{line}");
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let attempts = full_log(&torhaus).matches("ordering a certificate").count();
    ensure!(attempts == 3, "expected 3 attempts, saw {attempts}");
    ensure!(
        pebble.new_order_requests() == 3,
        "Pebble saw {}",
        pebble.new_order_requests()
    );
    let metrics = admin_get(torhaus.admin_addr()?, "/metrics").await?;
    ensure!(
        metrics.lines().any(
            |l| l.starts_with("torhaus_certificate_renewal_failures_total") && l.ends_with(" 3")
        ),
        "metrics:\n{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn two_processes_sharing_a_store_place_one_order_and_hand_over() -> anyhow::Result<()> {
    let Some((knot, pebble)) = rig(PebbleOptions::default())? else {
        return Ok(());
    };
    let config = TempDir::new("acme-config")?;
    write_config(
        config.path(),
        &manifests(
            &knot,
            &pebble,
            &[
                ("example.test", "example-tls"),
                ("*.example.test", "example-tls"),
            ],
            TSIG_SECRET_B64,
        ),
    )?;
    let store = TempDir::new("acme-store")?;
    let store_path: PathBuf = store.path().to_owned();
    let first = start_torhaus(config.path(), &knot, Some(&store_path)).await?;
    let second = start_torhaus(config.path(), &knot, Some(&store_path)).await?;
    let root = pebble.issuing_root_pem().await?;
    let a = wait_served(&first, "example.test", &root, Duration::from_secs(60)).await?;
    let b = wait_served(&second, "example.test", &root, Duration::from_secs(30)).await?;
    ensure!(a == b, "both processes serve the one certificate");
    ensure!(
        pebble.new_order_requests() == 1,
        "exactly one order, Pebble saw {}",
        pebble.new_order_requests()
    );
    let leader_of = |t: &Torhaus| full_log(t).contains("this process orders certificates");
    ensure!(
        leader_of(&first) != leader_of(&second),
        "exactly one process holds the ACME lock"
    );

    // The leader goes away; the other takes the lock over and orders a new name.
    let (leader, survivor) = if leader_of(&first) {
        (first, second)
    } else {
        (second, first)
    };
    drop(leader);
    wait_for(
        "the survivor to take the lock",
        Duration::from_secs(10),
        || {
            let taken = leader_of(&survivor);
            async move { taken.then_some(()) }
        },
    )
    .await
    .with_context(|| survivor.log_tail())?;
    write_config(
        config.path(),
        &manifests(
            &knot,
            &pebble,
            &[
                ("example.test", "example-tls"),
                ("*.example.test", "example-tls"),
                // Two labels below the zone: the wildcard does not cover it.
                ("deep.sub.example.test", "deep-tls"),
            ],
            TSIG_SECRET_B64,
        ),
    )?;
    wait_served(
        &survivor,
        "deep.sub.example.test",
        &root,
        Duration::from_secs(60),
    )
    .await?;
    // The certificate the old leader stored was not ordered again.
    ensure!(
        pebble.new_order_requests() == 2,
        "Pebble saw {}",
        pebble.new_order_requests()
    );
    Ok(())
}
