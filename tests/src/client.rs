//! Test HTTP client: HTTP/1.1, h2c and both over TLS (ALPN), one request or a kept-alive
//! connection, plus raw-bytes exchanges for malformed-request tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, RootCertStore};

/// How long any single request may take before the test client gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to send; `authority` becomes the Host header (HTTP/1.1) or `:authority` (h2).
#[derive(Debug, Clone)]
pub struct TestRequest {
    pub method: String,
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl TestRequest {
    pub fn get(authority: &str, path: &str) -> Self {
        Self {
            method: "GET".to_owned(),
            authority: authority.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The echo backend's JSON, if the body is one.
    pub fn echo(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "status {} body is not echo JSON: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// TLS settings for a connection to torhaus.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub sni: String,
    pub roots: Arc<RootCertStore>,
}

impl TlsSettings {
    pub fn new(sni: &str, ca_pem: &[u8]) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(cert.context("parsing a CA certificate PEM")?)
                .context("adding a CA certificate to the trust store")?;
        }
        if roots.is_empty() {
            bail!("no certificate found in the CA PEM");
        }
        Ok(Self {
            sni: sni.to_owned(),
            roots: Arc::new(roots),
        })
    }
}

/// Which wire protocol to speak to torhaus.
#[derive(Debug, Clone)]
pub enum Transport {
    Http1,
    /// HTTP/2 with prior knowledge over cleartext.
    H2c,
    /// TLS offering ALPN `http/1.1` only.
    Http1Tls(TlsSettings),
    /// TLS offering ALPN `h2` only; fails if the server does not pick it.
    H2Tls(TlsSettings),
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// A kept-alive connection to torhaus.
pub struct Connection {
    sender: Sender,
    h2: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("h2", &self.h2).finish()
    }
}

fn tls_config(settings: &TlsSettings, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(Arc::clone(&settings.roots))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

impl Connection {
    pub async fn open(addr: SocketAddr, transport: &Transport) -> anyhow::Result<Self> {
        let tcp = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr} timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        match transport {
            Transport::Http1 => Self::h1(TokioIo::new(tcp)).await,
            Transport::H2c => Self::h2(TokioIo::new(tcp)).await,
            Transport::Http1Tls(settings) | Transport::H2Tls(settings) => {
                let want_h2 = matches!(transport, Transport::H2Tls(_));
                let alpn: &[u8] = if want_h2 { b"h2" } else { b"http/1.1" };
                let connector = TlsConnector::from(Arc::new(tls_config(settings, alpn)?));
                let name = ServerName::try_from(settings.sni.clone())
                    .with_context(|| format!("invalid SNI {:?}", settings.sni))?;
                let tls = tokio::time::timeout(REQUEST_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .context("TLS handshake timed out")?
                    .with_context(|| format!("TLS handshake with SNI {}", settings.sni))?;
                let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                if want_h2 {
                    if negotiated.as_deref() != Some(b"h2") {
                        bail!("server did not negotiate ALPN h2 (got {negotiated:?})");
                    }
                    Self::h2(TokioIo::new(tls)).await
                } else {
                    Self::h1(TokioIo::new(tls)).await
                }
            }
        }
    }

    async fn h1<IO>(io: TokioIo<IO>) -> anyhow::Result<Self>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(io).await.context("HTTP/1.1 handshake")?;
        tokio::spawn(connection);
        Ok(Self {
            sender: Sender::H1(sender),
            h2: false,
        })
    }

    async fn h2<IO>(io: TokioIo<IO>) -> anyhow::Result<Self>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .context("HTTP/2 handshake")?;
        tokio::spawn(connection);
        Ok(Self {
            sender: Sender::H2(sender),
            h2: true,
        })
    }

    pub async fn send(&mut self, request: &TestRequest) -> anyhow::Result<TestResponse> {
        let uri = if self.h2 {
            format!("http://{}{}", request.authority, request.path)
        } else {
            request.path.clone()
        };
        let mut builder = Request::builder()
            .method(request.method.as_str())
            .uri(uri.as_str());
        if !self.h2 {
            builder = builder.header(http::header::HOST, request.authority.as_str());
        }
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let http_request = builder
            .body(Full::new(request.body.clone()))
            .with_context(|| format!("building request {} {}", request.method, request.path))?;
        let exchange = async {
            let response = match &mut self.sender {
                Sender::H1(sender) => {
                    sender.ready().await.context("connection not ready")?;
                    sender.send_request(http_request).await
                }
                Sender::H2(sender) => {
                    sender.ready().await.context("connection not ready")?;
                    sender.send_request(http_request).await
                }
            }
            .context("sending request")?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.context("reading body")?.to_bytes();
            anyhow::Ok(TestResponse {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{} {} timed out", request.method, request.path))?
    }
}

/// Opens a connection, sends one request, and closes.
pub async fn send(
    addr: SocketAddr,
    transport: &Transport,
    request: &TestRequest,
) -> anyhow::Result<TestResponse> {
    Connection::open(addr, transport).await?.send(request).await
}

/// Writes raw bytes and returns everything the server answers until it closes or `REQUEST_TIMEOUT`.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream
        .write_all(bytes)
        .await
        .context("writing raw request")?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    if read.is_err() && answer.is_empty() {
        bail!("no answer to the raw request within {REQUEST_TIMEOUT:?}");
    }
    Ok(answer)
}

/// Status code of the first response in a raw HTTP/1.x answer.
pub fn raw_status(answer: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(answer.get(..answer.len().min(64))?).ok()?;
    let mut words = text.split_whitespace();
    let version = words.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    words.next()?.parse().ok()
}
