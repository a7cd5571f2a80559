//! A real Pebble (Let's Encrypt's test CA, Debian's `pebble`) on free loopback ports, with its
//! own TLS certificate made by openssl, validating DNS-01 against a given DNS server (the
//! knot rig); stopped and cleaned up on drop. Also the TLS probe the ACME tests use to see which
//! certificate torhaus serves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, RootCertStore};

use crate::process::{TempDir, free_port};

/// Path of pebble, or `None` when the package is not installed (tests then skip, saying so).
pub fn pebble_path() -> Option<PathBuf> {
    ["/usr/bin/pebble", "/usr/sbin/pebble"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// How to start Pebble.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// `PEBBLE_WFE_NONCEREJECT`: percentage of good nonces rejected (0 unless set).
    pub nonce_reject_percent: u8,
    /// `certificateValidityPeriod` in seconds (Pebble's default is five years).
    pub validity_seconds: Option<u64>,
    /// Require external account binding with this key id and base64url HMAC key.
    pub external_account: Option<(String, String)>,
}

/// A running Pebble; killed on drop.
#[derive(Debug)]
pub struct Pebble {
    child: Option<Child>,
    pub acme_port: u16,
    pub management_port: u16,
    dns_server: SocketAddr,
    options: PebbleOptions,
    /// PEM of the CA that signed Pebble's own TLS certificate: clients of the ACME API trust it.
    pub tls_ca_pem: String,
    dir: TempDir,
    pebble: PathBuf,
}

impl Pebble {
    /// Starts Pebble asking only `dns_server` for `_acme-challenge` TXT records, and waits until
    /// its directory is served.
    pub fn start(
        pebble: &Path,
        dns_server: SocketAddr,
        options: PebbleOptions,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("pebble")?;
        let tls_ca_pem = make_tls_certificates(dir.path())?;
        let mut rig = Self {
            child: None,
            acme_port: free_port()?,
            management_port: free_port()?,
            dns_server,
            options,
            tls_ca_pem,
            dir,
            pebble: pebble.to_owned(),
        };
        rig.spawn()?;
        Ok(rig)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let mut config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", self.acme_port),
            "managementListenAddress": format!("127.0.0.1:{}", self.management_port),
            "certificate": d.join("cert.pem"),
            "privateKey": d.join("key.pem"),
            "httpPort": free_port()?,
            "tlsPort": free_port()?,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some((kid, key)) = &self.options.external_account {
            config["pebble"]["externalAccountBindingRequired"] = true.into();
            config["pebble"]["externalAccountMACKeys"] = serde_json::json!({ kid: key });
        }
        if let Some(validity) = self.options.validity_seconds {
            config["pebble"]["certificateValidityPeriod"] = validity.into();
        }
        let config_path = d.join("pebble.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let log_path = d.join("pebble.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = Command::new(&self.pebble)
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(self.dns_server.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0")
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                self.options.nonce_reject_percent.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.pebble.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        let ready = format!("Listening on: 127.0.0.1:{}", self.acme_port);
        loop {
            // Pebble logs each start in the same file: count this start's line.
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let starts = text.matches("Starting Pebble").count();
            let listening = text.matches(ready.as_str()).count();
            // The log line comes just before the sockets are bound: wait for both to accept.
            let accepting = [self.acme_port, self.management_port].iter().all(|port| {
                std::net::TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], *port)),
                    Duration::from_millis(200),
                )
                .is_ok()
            });
            if starts > 0 && listening >= starts && accepting {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                bail!("pebble did not start (exit {exited:?}); log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://localhost:{}/dir", self.acme_port)
    }

    /// Pebble's own TLS certificate and key (for `localhost` and 127.0.0.1, signed by the CA in
    /// [`Pebble::tls_ca_pem`]), for servers that stand beside it.
    pub fn tls_certificate_and_key(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("cert.pem"),
            self.dir.path().join("key.pem"),
        )
    }

    /// Pebble's ACME directory, as JSON text.
    pub async fn directory_json(&self) -> anyhow::Result<String> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.tls_ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.acme_port));
        https_get(addr, "localhost", roots, "/dir").await
    }

    /// Stops Pebble (the "CA down" case). Its issuing root is regenerated on the next start.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped Pebble again on the same ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Pebble's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// How many new-order requests Pebble received (with nonce rejection off, one per order).
    pub fn new_order_requests(&self) -> usize {
        self.log().matches("POST /order-plz").count()
    }

    /// The root that issued certificates chain to (regenerated at every Pebble start).
    pub async fn issuing_root_pem(&self) -> anyhow::Result<String> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.tls_ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.management_port));
        let body = https_get(addr, "localhost", roots, "/roots/0").await?;
        if !body.contains("BEGIN CERTIFICATE") {
            bail!("pebble /roots/0 returned no certificate: {body}");
        }
        Ok(body)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA and a `localhost` certificate signed by it (openssl), for Pebble's own HTTPS.
fn make_tls_certificates(dir: &Path) -> anyhow::Result<String> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl (install the openssl package)")?;
        if !output.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=torhaus test pebble CA",
    ])?;
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ])?;
    std::fs::read_to_string(dir.join("ca.pem")).context("reading the generated CA")
}

/// A plain HTTP/1.1 GET over TLS, returning the body.
/// GET `path` over HTTPS from `addr` (SNI `sni`); Pebble builds the URLs it answers with from
/// the Host header, so it carries the port.
async fn https_get(
    addr: SocketAddr,
    sni: &str,
    roots: RootCertStore,
    path: &str,
) -> anyhow::Result<String> {
    let mut tls = tls_connect(addr, sni, roots).await?;
    let port = addr.port();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {sni}:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .context("reading the answer timed out")??;
    let text = String::from_utf8_lossy(&answer);
    let (_, body) = text
        .split_once("\r\n\r\n")
        .context("the answer has no header end")?;
    Ok(body.to_owned())
}

async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    roots: RootCertStore,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .context("connecting timed out")??;
    let name = ServerName::try_from(sni.to_owned())?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    Ok(tls)
}

/// Connects to `addr` with SNI `sni`, verifying against `root_pem`; returns the leaf served.
/// Fails when the certificate does not verify (e.g. the local CA still serves).
pub async fn served_leaf(addr: SocketAddr, sni: &str, root_pem: &str) -> anyhow::Result<Vec<u8>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let tls = tls_connect(addr, sni, roots).await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .context("no certificate served")?;
    Ok(leaf.as_ref().to_vec())
}

/// The leaf (DER) of a PEM chain.
pub fn leaf_of(chain_pem: &str) -> anyhow::Result<Vec<u8>> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .context("no certificate in the chain")??;
    Ok(leaf.as_ref().to_vec())
}
