//! Observability of the torhaus binary, end to end: the admin listener's endpoints, `promtool
//! check metrics` on a scrape under traffic, `promtool check rules` and `promtool test rules` on
//! the shipped alerts, a real Prometheus scraping torhaus, the status page in headless Chromium,
//! and the dashboard and alerts naming only metrics torhaus defines.
//!
//! Needs Debian's `prometheus` (promtool, prometheus) and `chromium`, and playwright-core in
//! tests/browser: `scripts/install-deps.sh test` installs them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use torhaus_tests::client::{self, TestRequest, TestResponse, TlsSettings, Transport};
use torhaus_tests::echo::{EchoIdentity, EchoServer};
use torhaus_tests::process::{TempDir, Torhaus, TorhausOptions, free_port, wait_for};

const DEADLINE: Duration = Duration::from_secs(20);

fn repo_root() -> PathBuf {
    torhaus_tests::process::package_dir(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs torhaus on a copy of examples/quickstart whose EndpointSlice points at a fresh echo
/// backend (the example's fixed port 9080 could be taken).
struct Quickstart {
    torhaus: Torhaus,
    _echo: EchoServer,
    _config: TempDir,
}

impl Quickstart {
    async fn start(extra_args: &[&str]) -> anyhow::Result<Quickstart> {
        let echo = EchoServer::start(EchoIdentity {
            namespace: "default".into(),
            pod: "echo".into(),
            service: "echo".into(),
        })
        .await?;
        let config = TempDir::new("quickstart")?;
        let example = repo_root().join("examples/quickstart");
        for entry in std::fs::read_dir(&example).context("reading examples/quickstart")? {
            let path = entry?.path();
            let text = std::fs::read_to_string(&path)?;
            let text = text.replace("port: 9080", &format!("port: {}", echo.addr().port()));
            let name = path.file_name().context("file name")?;
            std::fs::write(config.path().join(name), text)?;
        }
        let torhaus = Torhaus::start(
            config.path(),
            &TorhausOptions {
                gateway_ports: vec![80, 443],
                extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
                ..TorhausOptions::default()
            },
        )
        .await?;
        Ok(Quickstart {
            torhaus,
            _echo: echo,
            _config: config,
        })
    }

    async fn admin(&self, path: &str) -> anyhow::Result<TestResponse> {
        client::send(
            self.torhaus.admin_addr()?,
            &Transport::Http1,
            &TestRequest::get("127.0.0.1", path),
        )
        .await
    }

    /// Sends `count` requests over HTTP and one over HTTPS (local CA, SNI `name`).
    async fn traffic(&self, count: usize, name: &str) -> anyhow::Result<()> {
        let http = self.torhaus.addr(80)?;
        for _ in 0..count {
            let response =
                client::send(http, &Transport::Http1, &TestRequest::get(name, "/hello")).await?;
            ensure!(response.status == 200, "HTTP answered {}", response.status);
        }
        let ca = self.torhaus.export_ca()?;
        let tls = Transport::Http1Tls(TlsSettings::new(name, &ca)?);
        let response = client::send(
            self.torhaus.addr(443)?,
            &tls,
            &TestRequest::get(name, "/hello"),
        )
        .await?;
        ensure!(response.status == 200, "HTTPS answered {}", response.status);
        Ok(())
    }

    /// Waits until the scrape shows `expected` for the series of `name` whose line contains
    /// every `labels` fragment (pingora counts a request after its response was sent).
    async fn wait_for_sample(
        &self,
        name: &str,
        labels: &[&str],
        expected: f64,
    ) -> anyhow::Result<String> {
        wait_for(
            &format!("{name} {labels:?} = {expected}"),
            DEADLINE,
            || async {
                let text = body(&self.admin("/metrics").await.ok()?);
                let value = sample(&text, name, labels)?;
                (value == expected).then_some(text)
            },
        )
        .await
    }
}

fn body(response: &TestResponse) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| labels.iter().all(|fragment| l.contains(fragment)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn tool(name: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!("{name} is not installed: run scripts/install-deps.sh test")
}

/// Runs `command` with `stdin`, failing with its output unless it succeeds.
fn run_with_input(command: &mut Command, stdin: &[u8]) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin)?;
    }
    let output = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success(),
        "{command:?} failed ({}):\n{text}",
        output.status
    );
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_serve_health_readiness_metrics_and_config() -> anyhow::Result<()> {
    let quickstart = Quickstart::start(&[]).await?;
    let healthz = quickstart.admin("/healthz").await?;
    assert_eq!(healthz.status, 200);
    // Ready once the first configuration serves (the ports listen a moment before).
    let readyz = wait_for("/readyz to answer 200", DEADLINE, || async {
        let response = quickstart.admin("/readyz").await.ok()?;
        (response.status == 200).then_some(response)
    })
    .await?;
    assert_eq!(body(&readyz), "ready\n");

    quickstart.traffic(3, "localhost").await?;
    let text = quickstart
        .wait_for_sample(
            "torhaus_http_requests_total",
            &[
                "route=\"default/echo\"",
                "listener=\"http\"",
                "backend=\"default/echo:8080\"",
                "status_class=\"2xx\"",
            ],
            3.0,
        )
        .await?;
    let metrics = quickstart.admin("/metrics").await?;
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for family in [
        "torhaus_http_request_duration_seconds_bucket",
        "torhaus_http_upstream_duration_seconds_bucket",
        "torhaus_tls_handshakes_total",
        "torhaus_config_last_reload_success_timestamp_seconds",
        "torhaus_route_table_size",
        "torhaus_backend_endpoints",
        "torhaus_leader",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    // The quickstart's missing Secret is a rejected reference: counted, and the status page's
    // recent errors list it.
    assert_eq!(
        sample(&text, "torhaus_config_rejected_objects", &[]),
        Some(1.0)
    );

    let config = quickstart.admin("/debug/config").await?;
    assert_eq!(config.status, 200);
    assert_eq!(config.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_slice(&config.body)?;
    let listeners = json["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .flat_map(|p| p["listeners"].as_array().cloned().unwrap_or_default())
        .collect::<Vec<_>>();
    assert!(
        listeners
            .iter()
            .any(|l| l["routes"][0]["route"] == "default/echo")
    );
    // Header values set by filters are redacted; no key material ever appears.
    let config_text = body(&config);
    assert!(config_text.contains("(redacted)") && !config_text.contains("\"torhaus\""));
    assert!(!config_text.contains("PRIVATE KEY"));

    let post = client::send(
        quickstart.torhaus.admin_addr()?,
        &Transport::Http1,
        &TestRequest {
            method: "POST".into(),
            ..TestRequest::get("127.0.0.1", "/metrics")
        },
    )
    .await?;
    assert_eq!(post.status, 405);
    assert_eq!(quickstart.admin("/nope").await?.status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_a_scrape_under_traffic() -> anyhow::Result<()> {
    let promtool = tool("promtool")?;
    let quickstart = Quickstart::start(&[]).await?;
    // Traffic while scraping: the exposition must be valid mid-flight, not only at rest.
    let load = {
        let http = quickstart.torhaus.addr(80)?;
        tokio::spawn(async move {
            for _ in 0..200 {
                let _ = client::send(http, &Transport::Http1, &TestRequest::get("a", "/x")).await;
            }
        })
    };
    quickstart.traffic(2, "localhost").await?;
    for _ in 0..3 {
        let scrape = quickstart.admin("/metrics").await?;
        run_with_input(
            Command::new(&promtool).args(["check", "metrics"]),
            &scrape.body,
        )?;
    }
    load.await?;
    Ok(())
}

/// Writes prometheus-rule.yaml's `spec` as a plain rules file in `dir`.
fn extract_rules(dir: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(repo_root().join("deploy/monitoring/prometheus-rule.yaml"))?;
    let rule: serde_yaml::Value = serde_yaml::from_str(&text)?;
    ensure!(rule["kind"] == "PrometheusRule", "not a PrometheusRule");
    let path = dir.join("rules.yaml");
    std::fs::write(&path, serde_yaml::to_string(&rule["spec"])?)?;
    Ok(path)
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() -> anyhow::Result<()> {
    let promtool = tool("promtool")?;
    let dir = TempDir::new("rules")?;
    let rules = extract_rules(dir.path())?;
    let checked = run_with_input(
        Command::new(&promtool)
            .arg("check")
            .arg("rules")
            .arg(&rules),
        b"",
    )?;
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tests = dir.path().join("alerts.test.yaml");
    std::fs::copy(
        repo_root().join("deploy/monitoring/tests/alerts.test.yaml"),
        &tests,
    )?;
    let tested = run_with_input(
        Command::new(&promtool)
            .current_dir(dir.path())
            .args(["test", "rules", "alerts.test.yaml"]),
        b"",
    )?;
    assert!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

/// Every `torhaus_*` name in `text`, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("torhaus_") {
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let name = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .map_or(name.clone(), str::to_owned);
        names.insert(name);
    }
    names
}

#[test]
fn dashboard_and_alerts_name_only_metrics_torhaus_defines() -> anyhow::Result<()> {
    let defined = metric_names(&std::fs::read_to_string(
        repo_root().join("gateway/src/metrics.rs"),
    )?);
    let monitoring = repo_root().join("deploy/monitoring");
    let dashboard = std::fs::read_to_string(monitoring.join("grafana-dashboard.json"))?;
    let parsed: serde_json::Value = serde_json::from_str(&dashboard)?;
    let titles: Vec<&str> = parsed["panels"]
        .as_array()
        .context("panels")?
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for section in [
        "Traffic",
        "Errors",
        "Latency",
        "Certificates",
        "Authentication",
    ] {
        assert!(
            titles.contains(&section),
            "dashboard lacks {section}: {titles:?}"
        );
    }
    let rules = std::fs::read_to_string(monitoring.join("prometheus-rule.yaml"))?;
    for (file, text) in [("dashboard", &dashboard), ("rules", &rules)] {
        let used = metric_names(text);
        let unknown: Vec<&String> = used.difference(&defined).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses undefined metrics {unknown:?}"
        );
    }
    for monitor in ["service-monitor.yaml", "pod-monitor.yaml"] {
        let text = std::fs::read_to_string(monitoring.join(monitor))?;
        let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|doc| {
                let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).ok()?;
                value["kind"].as_str().map(str::to_owned)
            })
            .collect();
        assert!(
            kinds
                .iter()
                .any(|k| k == "ServiceMonitor" || k == "PodMonitor"),
            "{monitor}: {kinds:?}"
        );
    }
    Ok(())
}

/// A Prometheus server on loopback, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: SocketAddr) -> anyhow::Result<Prometheus> {
        let binary = tool("prometheus")?;
        let dir = TempDir::new("prometheus")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: torhaus\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        Ok(Prometheus {
            child,
            addr,
            _dir: dir,
        })
    }

    /// The single value of an instant query, if it has exactly one.
    async fn query(&self, promql: &str) -> Option<f64> {
        let mut encoded = String::new();
        for byte in promql.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                encoded.push(char::from(byte));
            } else {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        }
        let request = TestRequest::get(
            &self.addr.to_string(),
            &format!("/api/v1/query?query={encoded}"),
        );
        let response = client::send(self.addr, &Transport::Http1, &request)
            .await
            .ok()?;
        let json: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
        let results = json["data"]["result"].as_array()?;
        if results.len() != 1 {
            return None;
        }
        results[0]["value"][1].as_str()?.parse().ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_torhaus_and_counts_the_requests() -> anyhow::Result<()> {
    let quickstart = Quickstart::start(&[]).await?;
    let prometheus = Prometheus::start(quickstart.torhaus.admin_addr()?)?;
    wait_for("prometheus to scrape torhaus", DEADLINE, || async {
        (prometheus.query("up{job=\"torhaus\"}").await? == 1.0).then_some(())
    })
    .await?;
    quickstart.traffic(7, "localhost").await?;
    let query = "sum(torhaus_http_requests_total{route=\"default/echo\",listener=\"http\",status_class=\"2xx\"})";
    let count = wait_for("Prometheus to see 7 requests", DEADLINE, || async {
        let value = prometheus.query(query).await?;
        (value == 7.0).then_some(value)
    })
    .await?;
    assert_eq!(count, 7.0);
    let https = wait_for("the HTTPS request", DEADLINE, || async {
        prometheus
            .query("sum(torhaus_http_requests_total{listener=\"https\"})")
            .await
            .filter(|v| *v == 1.0)
    })
    .await?;
    assert_eq!(https, 1.0);
    Ok(())
}

/// Where test artifacts are kept: `<target dir>/artifacts` (the test binary lives in
/// `<target dir>/debug/deps`).
fn artifacts_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("test binary is not inside a cargo target directory")?;
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_quickstart_in_headless_chromium() -> anyhow::Result<()> {
    let node = tool("node")?;
    tool("chromium")?;
    let script = repo_root().join("tests/browser/status-page.mjs");
    ensure!(
        repo_root()
            .join("tests/browser/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is not installed in tests/browser: run scripts/install-deps.sh test"
    );
    let quickstart = Quickstart::start(&[]).await?;
    // An HTTPS request makes the local CA issue the certificate the page then lists.
    quickstart.traffic(1, "localhost").await?;
    let screenshot = artifacts_dir()?.join("status-page.png");
    let url = format!("http://{}/", quickstart.torhaus.admin_addr()?);
    let output = tokio::task::spawn_blocking({
        let screenshot = screenshot.clone();
        move || {
            run_with_input(
                Command::new(node)
                    .arg(script)
                    .arg(url)
                    .arg(&screenshot)
                    // Gateway, listeners, route, backend, certificate and the rejected reference.
                    .args([
                        "Gateway default/home",
                        "https",
                        "HTTPRoute default/echo",
                        "ResponseHeaderModifier",
                        "default/echo:8080",
                        "1 ready",
                        "localhost",
                        "local-ca",
                        "expires in",
                        "ResolvedRefs=False",
                        "home-tls",
                        "ready",
                    ]),
                b"",
            )
        }
    })
    .await??;
    assert!(output.contains("torhaus status"), "{output}");
    let png = std::fs::read(&screenshot)?;
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    println!("status page screenshot: {}", screenshot.display());
    Ok(())
}

/// An idle gateway sleeps: serving HTTP/1.1, HTTPS and HTTP/2 must not leave pingora's
/// 100-per-second clock thread running (its first use would start it for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_leaves_no_clock_thread_behind() -> anyhow::Result<()> {
    let quickstart = Quickstart::start(&[]).await?;
    quickstart.traffic(3, "localhost").await?;
    let ca = quickstart.torhaus.export_ca()?;
    for transport in [
        Transport::H2c,
        Transport::H2Tls(TlsSettings::new("localhost", &ca)?),
    ] {
        let addr = match transport {
            Transport::H2c => quickstart.torhaus.addr(80)?,
            _ => quickstart.torhaus.addr(443)?,
        };
        let response =
            client::send(addr, &transport, &TestRequest::get("localhost", "/hello")).await?;
        ensure!(
            response.status == 200,
            "HTTP/2 answered {}",
            response.status
        );
    }
    let tasks = format!("/proc/{}/task", quickstart.torhaus.pid());
    let mut names = Vec::new();
    for task in std::fs::read_dir(&tasks).context("listing the process's threads")? {
        let comm = task?.path().join("comm");
        names.push(std::fs::read_to_string(comm)?.trim().to_owned());
    }
    ensure!(
        !names.iter().any(|name| name == "Timer thread"),
        "pingora's clock thread is running: {names:?}"
    );
    Ok(())
}

/// Handshakes that fail are what a public address sees all day: clients sending an IP address
/// as SNI (wrk does, and so do scanners), plain HTTP on the TLS port, TCP health checks that
/// connect and close. Each is counted, and none makes torhaus log a line: rustls warns about
/// IP-address SNI (the default filter keeps only rustls's errors), and pingora's listener
/// logged every failed handshake as an error (torhaus runs the handshake itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tls_handshakes_are_counted_and_leave_no_log_line() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let quickstart = Quickstart::start(&[]).await?;
    let https = quickstart.torhaus.addr(443)?;
    let openssl = tool("openssl")?;
    for _ in 0..3 {
        // rustls drops the IP-address SNI, so the quickstart's on-demand issuer has no name to
        // issue for and the handshake fails; the ClientHello was read all the same.
        Command::new(&openssl)
            .args(["s_client", "-connect", &https.to_string()])
            .args(["-servername", "127.0.0.1", "-tls1_3"])
            .stdin(Stdio::null())
            .output()
            .context("running openssl s_client")?;
    }
    let text = quickstart
        .wait_for_sample(
            "torhaus_tls_handshakes_total",
            &["outcome=\"no_certificate\""],
            3.0,
        )
        .await?;
    // The harness's readiness probe (connect, then close) may already be counted.
    let failed_before = sample(
        &text,
        "torhaus_tls_handshakes_total",
        &["outcome=\"failed\""],
    )
    .unwrap_or(0.0);
    let mut plain = tokio::net::TcpStream::connect(https).await?;
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer))
        .await
        .context("plain HTTP on the TLS port was kept open")??;
    drop(tokio::net::TcpStream::connect(https).await?);
    quickstart
        .wait_for_sample(
            "torhaus_tls_handshakes_total",
            &["outcome=\"failed\""],
            failed_before + 2.0,
        )
        .await?;
    let log = quickstart.torhaus.log_tail();
    ensure!(
        !log.contains("rustls"),
        "rustls logged the client's IP-address SNI:\n{log}"
    );
    ensure!(
        !log.to_lowercase().contains("handshake"),
        "a failed handshake was logged:\n{log}"
    );
    Ok(())
}
