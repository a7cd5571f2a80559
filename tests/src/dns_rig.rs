//! A real knotd (Debian's `knot`) serving a test zone on a free loopback port, accepting
//! TSIG-signed (hmac-sha256) RFC 2136 updates and AXFR; stopped and cleaned up on drop.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::process::{TempDir, free_port};

/// The zone the rig serves.
pub const ZONE: &str = "example.test";
/// TSIG key name and base64 secret the rig's knotd accepts.
pub const TSIG_KEY_NAME: &str = "torhaus-key.";
pub const TSIG_SECRET_B64: &str = "dG9yaGF1cy10ZXN0LXRzaWctc2VjcmV0LTMyYnl0ZXMh";

/// Path of knotd, or `None` when the package is not installed (tests then skip, saying so).
pub fn knotd_path() -> Option<PathBuf> {
    ["/usr/sbin/knotd", "/usr/bin/knotd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A running knotd; killed on drop.
#[derive(Debug)]
pub struct Knot {
    child: Child,
    pub addr: SocketAddr,
    dir: TempDir,
    knotd: PathBuf,
}

impl Knot {
    /// Starts knotd with the test zone and waits until it answers the zone's SOA.
    pub fn start(knotd: &Path) -> anyhow::Result<Self> {
        let dir = TempDir::new("knot")?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let zone_file = dir.path().join(format!("{ZONE}.zone"));
        std::fs::write(
            &zone_file,
            format!(
                "$ORIGIN {ZONE}.\n$TTL 60\n@ SOA ns1 hostmaster 1 60 60 600 60\n@ NS ns1\n\
                 ns1 A 127.0.0.1\nforeign A 192.0.2.99\n\
                 _acme-challenge.delegated CNAME _acme-challenge.target.acme-dns\n"
            ),
        )
        .context("writing the zone file")?;
        let d = dir.path().display();
        let config = format!(
            "server:\n  rundir: {d}\n  listen: 127.0.0.1@{port}\n\
             database:\n  storage: {d}\n\
             log:\n  - target: stderr\n    any: info\n\
             key:\n  - id: {TSIG_KEY_NAME}\n    algorithm: hmac-sha256\n    secret: {TSIG_SECRET_B64}\n\
             acl:\n  - id: torhaus\n    key: {TSIG_KEY_NAME}\n    action: [update, transfer]\n\
             zone:\n  - domain: {ZONE}\n    storage: {d}\n    file: {ZONE}.zone\n    acl: torhaus\n"
        );
        let config_path = dir.path().join("knot.conf");
        std::fs::write(&config_path, config).context("writing knot.conf")?;
        let log = std::fs::File::create(dir.path().join("knotd.log"))?;
        let child = Command::new(knotd)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", knotd.display()))?;
        let mut knot = Self {
            child,
            addr,
            dir,
            knotd: knotd.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !soa_answers(addr, ZONE) {
            if Instant::now() > deadline || knot.child.try_wait().ok().flatten().is_some() {
                let log =
                    std::fs::read_to_string(knot.dir.path().join("knotd.log")).unwrap_or_default();
                bail!("knotd did not serve {ZONE} on {addr}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(knot)
    }
}

impl Knot {
    /// Stops knotd (the "DNS server down" case); [`Knot::restart`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts knotd again on the same port with the same zone and keys, and waits until it
    /// answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("knotd.log"))?;
        self.child = Command::new(&self.knotd)
            .arg("-c")
            .arg(self.dir.path().join("knot.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("restarting {}", self.knotd.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !soa_answers(self.addr, ZONE) {
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                bail!("knotd did not come back on {}", self.addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a hand-built SOA query over UDP; true when the answer is NOERROR with an answer.
fn soa_answers(addr: SocketAddr, zone: &str) -> bool {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let mut query = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in zone.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 6, 0, 1]);
    if socket.send_to(&query, addr).is_err() {
        return false;
    }
    let mut answer = [0u8; 512];
    match socket.recv(&mut answer) {
        Ok(len) if len >= 12 => {
            answer[3] & 0x0f == 0 && u16::from_be_bytes([answer[6], answer[7]]) > 0
        }
        _ => false,
    }
}

/// The API key the rig's PowerDNS accepts.
pub const PDNS_API_KEY: &str = "torhaus-test-api-key";

/// Path of pdns_server, or `None` when not installed (tests then skip, saying so).
pub fn pdns_server_path() -> Option<PathBuf> {
    ["/usr/sbin/pdns_server", "/usr/bin/pdns_server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A running PowerDNS Authoritative server (sqlite3 backend) serving `ZONE` with the HTTP API
/// enabled; killed on drop.
#[derive(Debug)]
pub struct PowerDns {
    child: Child,
    /// DNS address (UDP/TCP).
    pub addr: SocketAddr,
    /// Base URL of the webserver/API.
    pub api_url: String,
    dir: TempDir,
}

impl PowerDns {
    pub fn start(pdns_server: &Path) -> anyhow::Result<Self> {
        let dir = TempDir::new("pdns")?;
        let d = dir.path().display().to_string();
        let db = dir.path().join("pdns.db");
        let schema =
            std::fs::read_to_string("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql")
                .context("reading the pdns sqlite3 schema (package pdns-backend-sqlite3)")?;
        run(
            Command::new("sqlite3").arg(&db).arg(&schema),
            "sqlite3 schema",
        )?;
        let port = free_port()?;
        let web_port = free_port()?;
        let config = format!(
            "launch=gsqlite3\ngsqlite3-database={}\nlocal-address=127.0.0.1:{port}\napi=yes\n\
             api-key={PDNS_API_KEY}\nwebserver=yes\nwebserver-address=127.0.0.1\n\
             webserver-port={web_port}\nwebserver-allow-from=127.0.0.0/8\nsocket-dir={d}\n\
             guardian=no\ndaemon=no\ndisable-syslog=yes\nwrite-pid=no\n",
            db.display()
        );
        std::fs::write(dir.path().join("pdns.conf"), config).context("writing pdns.conf")?;
        let pdnsutil = pdns_server.with_file_name("pdnsutil");
        let pdnsutil = if pdnsutil.is_file() {
            pdnsutil
        } else {
            PathBuf::from("/usr/bin/pdnsutil")
        };
        let config_dir = format!("--config-dir={d}");
        run(
            Command::new(&pdnsutil).args([
                &config_dir,
                "create-zone",
                ZONE,
                &format!("ns1.{ZONE}"),
            ]),
            "pdnsutil create-zone",
        )?;
        for (name, rtype, value) in [("ns1", "A", "127.0.0.1"), ("foreign", "A", "192.0.2.99")] {
            run(
                Command::new(&pdnsutil).args([&config_dir, "add-record", ZONE, name, rtype, value]),
                "pdnsutil add-record",
            )?;
        }
        let log = std::fs::File::create(dir.path().join("pdns.log"))?;
        let child = Command::new(pdns_server)
            .arg(&config_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", pdns_server.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut pdns = Self {
            child,
            addr,
            api_url: format!("http://127.0.0.1:{web_port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(soa_answers(addr, ZONE)
            && std::net::TcpStream::connect(("127.0.0.1", web_port)).is_ok())
        {
            if Instant::now() > deadline || pdns.child.try_wait().ok().flatten().is_some() {
                let log =
                    std::fs::read_to_string(pdns.dir.path().join("pdns.log")).unwrap_or_default();
                bail!("PowerDNS did not serve {ZONE} on {addr} and its API; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(pdns)
    }
}

impl Drop for PowerDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}
