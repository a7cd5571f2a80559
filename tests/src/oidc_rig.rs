//! The test OpenID Provider (oidc-provider on Node, laid out like Authentik) from
//! `tests/rigs/oidc/`: started on a free port, ready when its discovery document answers,
//! restartable with other keys, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::process::{TempDir, free_port, wait_for};

/// The rig's directory (`tests/rigs/oidc`).
pub fn rig_dir() -> PathBuf {
    crate::process::workspace_dir().join("tests/rigs/oidc")
}

/// Installs the rig's npm packages if they are missing (`scripts/install-deps.sh test` does
/// this too; repeating it here lets `cargo test` run alone).
pub fn ensure_installed() -> anyhow::Result<()> {
    let dir = rig_dir();
    if dir
        .join("node_modules/oidc-provider/package.json")
        .is_file()
    {
        return Ok(());
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .context(
            "running npm ci for the OIDC rig (is npm installed? scripts/install-deps.sh test)",
        )?;
    if !status.success() {
        bail!("npm ci in {} failed: {status}", dir.display());
    }
    Ok(())
}

/// Settings of one provider start (`OP_*` environment, see the rig's README).
#[derive(Debug, Clone, Default)]
pub struct OpOptions {
    /// Access-token lifetime in seconds (`OP_AT_TTL`).
    pub access_token_ttl: Option<u64>,
    /// `OP_BACKCHANNEL_LOGOUT_URI`.
    pub backchannel_logout_uri: Option<String>,
    /// `OP_JWKS_FILE`; default a file in the rig's temp dir (generated on first start).
    pub jwks_file: Option<PathBuf>,
    /// `OP_REDIRECT_URIS`, comma-separated.
    pub redirect_uris: Option<String>,
    /// `OP_POST_LOGOUT_URIS`, comma-separated.
    pub post_logout_uris: Option<String>,
    /// `OP_API_AUDIENCE`.
    pub api_audience: Option<String>,
}

/// A running test OpenID Provider.
#[derive(Debug)]
pub struct OidcProvider {
    child: Child,
    port: u16,
    options: OpOptions,
    dir: TempDir,
}

impl OidcProvider {
    /// Starts `node op.mjs` on a free port and waits (15 s at most) for discovery.
    pub async fn start(options: OpOptions) -> anyhow::Result<Self> {
        ensure_installed()?;
        let dir = TempDir::new("oidc-op")?;
        let port = free_port()?;
        let child = spawn(port, &options, dir.path())?;
        let mut op = Self {
            child,
            port,
            options,
            dir,
        };
        op.wait_ready().await?;
        Ok(op)
    }

    /// Stops the provider and starts it again on the same port, with `jwks_file` as its keys
    /// (a missing file gets a fresh key: key rotation). All sessions and tokens are lost.
    pub async fn restart(&mut self, jwks_file: Option<PathBuf>) -> anyhow::Result<()> {
        self.stop();
        if jwks_file.is_some() {
            self.options.jwks_file = jwks_file;
        }
        self.child = spawn(self.port, &self.options, self.dir.path())?;
        self.wait_ready().await
    }

    /// Changes the provider's settings and restarts it on the same port with the same keys:
    /// for settings that depend on a gateway started after the provider (its redirect URIs).
    /// All sessions and tokens are lost.
    pub async fn reconfigure(&mut self, change: impl FnOnce(&mut OpOptions)) -> anyhow::Result<()> {
        let keys = self.jwks_file();
        change(&mut self.options);
        self.options.jwks_file = Some(keys);
        self.restart(None).await
    }

    /// Kills the provider (the port then refuses connections).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", self.port);
        let request = format!(
            "GET /application/o/gateway/.well-known/openid-configuration HTTP/1.1\r\nHost: \
             {addr}\r\nConnection: close\r\n\r\n"
        );
        let result = wait_for(
            "the test OpenID Provider's discovery document",
            Duration::from_secs(15),
            || {
                let (addr, request) = (addr.clone(), request.clone());
                async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let mut stream = tokio::net::TcpStream::connect(&addr).await.ok()?;
                    stream.write_all(request.as_bytes()).await.ok()?;
                    let mut response = Vec::new();
                    stream.read_to_end(&mut response).await.ok()?;
                    let text = String::from_utf8_lossy(&response);
                    (text.starts_with("HTTP/1.1 200") && text.contains("\"issuer\"")).then_some(())
                }
            },
        )
        .await;
        if let Err(e) = result {
            let exited = self.child.try_wait().ok().flatten();
            bail!("{e}; provider exit status {exited:?}; log:\n{}", self.log());
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (no path).
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The issuer, with Authentik's path and trailing slash.
    pub fn issuer(&self) -> String {
        format!("{}/application/o/gateway/", self.origin())
    }

    pub fn jwks_file(&self) -> PathBuf {
        self.options
            .jwks_file
            .clone()
            .unwrap_or_else(|| self.dir.path().join("jwks.json"))
    }

    /// A path for another key file in the rig's temp dir.
    pub fn temp_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client-credentials access token for `api-client` (an RS256 JWT; audience `gateway`
    /// unless `api_audience` says otherwise).
    pub async fn client_credentials_token(&self) -> anyhow::Result<String> {
        let response = reqwest::Client::new()
            .post(format!("{}token", self.issuer()))
            .basic_auth("api-client", Some("api-secret"))
            .form(&[("grant_type", "client_credentials"), ("scope", "api:read")])
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = serde_json::from_str(&response.text().await?)?;
        let token = body
            .get("access_token")
            .and_then(|t| t.as_str())
            .with_context(|| format!("no access token ({status}): {body}"))?;
        Ok(token.to_owned())
    }

    /// The provider's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("op.log")).unwrap_or_default()
    }
}

fn spawn(port: u16, options: &OpOptions, dir: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("op.log"))
        .context("creating the provider log")?;
    let jwks = options
        .jwks_file
        .clone()
        .unwrap_or_else(|| dir.join("jwks.json"));
    let mut command = Command::new("node");
    command
        .arg("op.mjs")
        .current_dir(rig_dir())
        .env("OP_PORT", port.to_string())
        .env("OP_HOST", "127.0.0.1")
        .env("OP_JWKS_FILE", &jwks)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating log handle")?)
        .stderr(log);
    let optional = [
        ("OP_AT_TTL", options.access_token_ttl.map(|t| t.to_string())),
        (
            "OP_BACKCHANNEL_LOGOUT_URI",
            options.backchannel_logout_uri.clone(),
        ),
        ("OP_REDIRECT_URIS", options.redirect_uris.clone()),
        ("OP_POST_LOGOUT_URIS", options.post_logout_uris.clone()),
        ("OP_API_AUDIENCE", options.api_audience.clone()),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    command
        .spawn()
        .context("starting node op.mjs (is Node.js installed? scripts/install-deps.sh test)")
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}
