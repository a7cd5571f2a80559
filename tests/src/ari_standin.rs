//! A stand-in for ACME Renewal Information (RFC 9773) in front of a real Pebble, because
//! Debian's Pebble 2.4 predates ARI. It serves Pebble's own directory with a `renewalInfo` URL
//! added and answers renewalInfo requests with scripted windows (RFC 9773 §4.2); every other
//! ACME request goes to Pebble itself, at the URLs its directory names. It is not a CA.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::pebble_rig::Pebble;

/// A suggested renewal window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: SystemTime,
    pub end: SystemTime,
}

/// The `Retry-After` of every renewalInfo answer, in seconds.
const RETRY_AFTER_SECONDS: u64 = 60;

#[derive(Debug)]
struct Shared {
    /// Pebble's directory with `renewalInfo` pointing here.
    directory: String,
    /// The window for the n-th distinct certificate asked about; the last one repeats.
    windows: Vec<Window>,
    /// The certificate identifiers asked about, in the order they were first asked.
    asked: Mutex<Vec<String>>,
}

/// A running stand-in; stops accepting on drop.
#[derive(Debug)]
pub struct AriStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_loop: JoinHandle<()>,
}

impl AriStandIn {
    /// Serves HTTPS with Pebble's own certificate (so clients trust it through the same CA) on
    /// a free loopback port. `windows` must not be empty.
    pub async fn start(pebble: &Pebble, windows: Vec<Window>) -> anyhow::Result<Self> {
        anyhow::ensure!(!windows.is_empty(), "the ARI stand-in needs a window");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the ARI stand-in")?;
        let addr = listener.local_addr()?;
        let mut directory: serde_json::Value =
            serde_json::from_str(&pebble.directory_json().await?)
                .context("Pebble's directory is not JSON")?;
        let object = directory
            .as_object_mut()
            .context("Pebble's directory is not a JSON object")?;
        object.insert(
            "renewalInfo".to_owned(),
            format!("https://localhost:{}/renewal-info", addr.port()).into(),
        );
        let shared = Arc::new(Shared {
            directory: directory.to_string(),
            windows,
            asked: Mutex::new(Vec::new()),
        });
        let acceptor = TlsAcceptor::from(Arc::new(server_config(pebble)?));
        let accept_shared = Arc::clone(&shared);
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let shared = Arc::clone(&accept_shared);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(answer(&shared, &request)) }
                    });
                    // Errors here are clients hanging up: nothing to report.
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            shared,
            accept_loop,
        })
    }

    /// The directory URL to give the ACME client instead of Pebble's.
    pub fn directory_url(&self) -> String {
        format!("https://localhost:{}/dir", self.addr.port())
    }

    /// The distinct certificate identifiers asked about so far, in order.
    pub fn asked(&self) -> Vec<String> {
        self.shared
            .asked
            .lock()
            .map(|asked| asked.clone())
            .unwrap_or_default()
    }
}

impl Drop for AriStandIn {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

fn server_config(pebble: &Pebble) -> anyhow::Result<rustls::ServerConfig> {
    let (certificate, key) = pebble.tls_certificate_and_key();
    let chain = CertificateDer::pem_file_iter(&certificate)
        .with_context(|| format!("reading {}", certificate.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key =
        PrivateKeyDer::from_pem_file(&key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?)
}

fn answer<B>(shared: &Shared, request: &Request<B>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path == "/dir" {
        return json(StatusCode::OK, shared.directory.clone(), None);
    }
    let Some(id) = path
        .strip_prefix("/renewal-info/")
        .filter(|id| !id.is_empty())
    else {
        return json(
            StatusCode::NOT_FOUND,
            r#"{"type":"about:blank"}"#.to_owned(),
            None,
        );
    };
    let index = match shared.asked.lock() {
        Ok(mut asked) => match asked.iter().position(|known| known == id) {
            Some(index) => index,
            None => {
                asked.push(id.to_owned());
                asked.len() - 1
            }
        },
        Err(_) => 0,
    };
    let window = shared.windows.get(index).or(shared.windows.last()).copied();
    let Some(window) = window else {
        return json(
            StatusCode::NOT_FOUND,
            r#"{"type":"about:blank"}"#.to_owned(),
            None,
        );
    };
    let body = serde_json::json!({"suggestedWindow": {
        "start": rfc3339(window.start),
        "end": rfc3339(window.end),
    }});
    json(StatusCode::OK, body.to_string(), Some(RETRY_AFTER_SECONDS))
}

fn json(status: StatusCode, body: String, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = retry_after {
        headers.insert(hyper::header::RETRY_AFTER, seconds.into());
    }
    response
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
