//! Running the torhaus binary under test: locating it, temporary config/state directories, free
//! ports, start-up readiness and clean shutdown.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Path of the torhaus binary: `TORHAUS_BIN`, else next to the test binary's `deps/` directory.
pub fn torhaus_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TORHAUS_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("TORHAUS_BIN={} does not exist", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the test binary")?;
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("torhaus"))
        .context("test binary has no grandparent directory")?;
    if !candidate.is_file() {
        bail!(
            "torhaus binary not found at {}: run `cargo build --bin torhaus` first (same \
             CARGO_TARGET_DIR), or set TORHAUS_BIN",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// The directory of the package whose tests are running, for its fixtures: `cargo test` sets
/// `CARGO_MANIFEST_DIR` when it runs a test binary. The path compiled in is only the fallback,
/// because a target directory shared by two checkouts (CI's and a developer's) can hand one
/// checkout a test binary built in the other, with the other's path inside.
pub fn package_dir(compiled_in: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(|| PathBuf::from(compiled_in))
}

/// The workspace root (the directory holding `Cargo.lock`), for files the shared test code
/// needs whichever package's tests call it: found from the running package's directory (see
/// [`package_dir`]), else from this crate's compiled-in one.
pub fn workspace_dir() -> PathBuf {
    let start = package_dir(env!("CARGO_MANIFEST_DIR"));
    start
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map_or_else(|| start.join(".."), Path::to_path_buf)
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> anyhow::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "torhaus-test-{label}-{}-{unique}",
            std::process::id()
        ));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("clearing stale {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("TORHAUS_KEEP_TEMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Ports handed out by [`free_port`] lie below the kernel's ephemeral range (32768 and up on
/// Linux). Sockets bound to port 0 (test backends, rigs, outgoing connections) only ever get
/// ephemeral ports, so none of them can take a port between our pick and the bind that uses it.
const TEST_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// The next candidate; it starts at a pid-derived offset so that test binaries running one after
/// another (or side by side) walk different parts of the range.
static NEXT_TEST_PORT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A port free for TCP on every address and for UDP, never handed out twice by this process.
pub fn free_port() -> anyhow::Result<u16> {
    let span = TEST_PORTS.end - TEST_PORTS.start;
    let _ = NEXT_TEST_PORT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NEXT_TEST_PORT.fetch_add(1, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(TEST_PORTS.start + offset) else {
            continue;
        };
        let tcp_free = TcpListener::bind(("0.0.0.0", port)).is_ok();
        if tcp_free && UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port left in {TEST_PORTS:?}")
}

/// Polls `condition` every 20 ms until it returns `Some` or `deadline` passes.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut condition: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = condition().await {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Options for one torhaus process.
#[derive(Debug, Clone, Default)]
pub struct TorhausOptions {
    /// Gateway listener ports (as declared in the manifests) to expose; each gets a free local port.
    pub gateway_ports: Vec<u16>,
    pub threads: Option<u32>,
    pub extra_args: Vec<String>,
}

/// A running `torhaus run`; killed on drop.
#[derive(Debug)]
pub struct Torhaus {
    child: Child,
    ports: Vec<(u16, u16)>,
    state_dir: TempDir,
    log_path: PathBuf,
    /// The admin listener (metrics, health, status page), unless the test chose its own.
    admin: Option<SocketAddr>,
}

impl Torhaus {
    /// Starts torhaus on `config_dir` and waits until every mapped port accepts connections.
    pub async fn start(config_dir: &Path, options: &TorhausOptions) -> anyhow::Result<Self> {
        let bin = torhaus_bin()?;
        let state_dir = TempDir::new("state")?;
        let mut ports = Vec::new();
        for gateway_port in &options.gateway_ports {
            ports.push((*gateway_port, free_port()?));
        }
        let port_map = ports
            .iter()
            .map(|(declared, bound)| format!("{declared}:{bound}"))
            .collect::<Vec<_>>()
            .join(",");
        let log_path = state_dir.path().join("torhaus.log");
        let log = std::fs::File::create(&log_path).context("creating torhaus log file")?;
        let mut command = Command::new(&bin);
        command
            .arg("run")
            .arg("--config")
            .arg(config_dir)
            .arg("--state-dir")
            .arg(state_dir.path());
        if !options.extra_args.iter().any(|a| a == "--threads") {
            command
                .arg("--threads")
                .arg(options.threads.unwrap_or(1).to_string());
        }
        if !port_map.is_empty() {
            command.arg("--port-map").arg(&port_map);
        }
        // Never the default 9901: tests run torhaus processes side by side.
        let admin = if options.extra_args.iter().any(|a| a == "--admin-bind") {
            None
        } else {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            command.arg("--admin-bind").arg(addr.to_string());
            Some(addr)
        };
        command
            .args(&options.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating log handle")?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut torhaus = Self {
            child,
            ports,
            state_dir,
            log_path,
            admin,
        };
        for (declared, bound) in torhaus.ports.clone() {
            let addr = SocketAddr::from(([127, 0, 0, 1], bound));
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                // A process that already exited will never listen: stop waiting.
                let exited = torhaus.child.try_wait().ok().flatten();
                if exited.is_some() || Instant::now() > deadline {
                    bail!(
                        "torhaus did not listen on {addr} (gateway port {declared}); exit status \
                         {exited:?}; log:\n{}",
                        torhaus.log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(torhaus)
    }

    /// The local address serving the Gateway listener port `declared`.
    pub fn addr(&self, declared: u16) -> anyhow::Result<SocketAddr> {
        self.ports
            .iter()
            .find(|(d, _)| *d == declared)
            .map(|(_, bound)| SocketAddr::from(([127, 0, 0, 1], *bound)))
            .with_context(|| format!("gateway port {declared} was not mapped"))
    }

    /// The admin listener's address (picked by the harness).
    pub fn admin_addr(&self) -> anyhow::Result<SocketAddr> {
        self.admin
            .context("this torhaus was started with its own --admin-bind")
    }

    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last 8 KiB of torhaus's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log_path).unwrap_or_default();
        let start = text.len().saturating_sub(8192);
        String::from_utf8_lossy(text.get(start..).unwrap_or_default()).into_owned()
    }

    /// PEM of the local CA (`torhaus ca export`).
    pub fn export_ca(&self) -> anyhow::Result<Vec<u8>> {
        let output = Command::new(torhaus_bin()?)
            .args(["ca", "export", "--state-dir"])
            .arg(self.state_dir.path())
            .output()
            .context("running torhaus ca export")?;
        if !output.status.success() {
            bail!(
                "torhaus ca export failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output.stdout)
    }
}

impl Torhaus {
    /// Sends `signal` (e.g. `TERM`, `INT`) and waits up to `deadline` for the process to exit.
    pub async fn signal_and_wait(
        &mut self,
        signal: &str,
        deadline: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{signal} {} failed: {status}", self.child.id());
        }
        wait_for(
            &format!("torhaus to exit after SIG{signal}"),
            deadline,
            || {
                let exited = self.child.try_wait().ok().flatten();
                async move { exited }
            },
        )
        .await
        .with_context(|| format!("log:\n{}", self.log_tail()))
    }
}

impl Drop for Torhaus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
