//! Test rig for the data plane: hand-built configurations, tiny raw-TCP HTTP/1 backends, raw
//! HTTP/1 and TLS clients, and certificates from rcgen.
#![allow(
    clippy::expect_used,
    dead_code,
    reason = "a broken test fixture should fail the test loudly; not every test uses every helper"
)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use pingora::tls::{
    CertificateDer, ClientConfig, DigitallySignedStruct, PrivateKeyDer, ServerName,
    SignatureScheme, TlsConnector, UnixTime,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use torhaus_gateway::{DataPlane, DataPlaneOptions, EjectionPolicy, GatewaySettings};
use torhaus_model::*;

pub const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Configuration builders

pub fn free_port() -> u16 {
    torhaus_tests::process::free_port().expect("a free port")
}

pub fn backend(name: &str, endpoints: Vec<SocketAddr>, protocol: UpstreamProtocol) -> Arc<Backend> {
    Arc::new(Backend {
        id: BackendId {
            service: ObjectName::new("test", name),
            port: 80,
        },
        protocol,
        endpoints,
    })
}

pub fn to(backend: &Arc<Backend>, weight: u32) -> WeightedBackend {
    WeightedBackend {
        weight,
        target: BackendTarget::Service(Arc::clone(backend)),
        filters: vec![],
    }
}

pub fn prefix(path: &str) -> RequestMatch {
    RequestMatch {
        path: PathMatch::Prefix(path.to_owned()),
        ..RequestMatch::default()
    }
}

pub fn rule(
    matches: Vec<RequestMatch>,
    filters: Vec<Filter>,
    backends: Vec<WeightedBackend>,
) -> Rule {
    Rule {
        index: 0,
        name: None,
        matches,
        filters,
        backends,
        timeouts: Timeouts::default(),
        retry: None,
    }
}

pub fn route(name: &str, rules: Vec<Rule>) -> Arc<HttpRoute> {
    Arc::new(HttpRoute {
        kind: RouteKind::Http,
        id: ObjectName::new("test", name),
        created_unix: 0,
        rules: rules
            .into_iter()
            .enumerate()
            .map(|(index, mut rule)| {
                rule.index = index;
                Arc::new(rule)
            })
            .collect(),
    })
}

pub fn host(pattern: &str) -> HostMatch {
    HostMatch::parse(pattern).expect("valid hostname")
}

pub fn listener(
    section: &str,
    hostname: HostMatch,
    tls: Option<ListenerTls>,
    routes: Vec<Arc<HttpRoute>>,
) -> Listener {
    let hostnames = vec![hostname.clone()];
    Listener {
        id: ListenerId {
            gateway: ObjectName::new("test", "gw"),
            section: section.to_owned(),
        },
        hostname,
        tls,
        routes: routes
            .into_iter()
            .map(|route| AttachedRoute {
                route,
                hostnames: hostnames.clone(),
                auth: Vec::new(),
            })
            .collect(),
    }
}

pub fn http_port(port: u16, listeners: Vec<Listener>) -> PortConfig {
    PortConfig {
        port,
        protocol: PortProtocol::Http,
        listeners,
    }
}

pub fn https_port(port: u16, listeners: Vec<Listener>) -> PortConfig {
    PortConfig {
        port,
        protocol: PortProtocol::Https,
        listeners,
    }
}

/// A one-port, one-listener, one-route configuration sending `/` to `backend`.
pub fn simple(port: u16, rules: Vec<Rule>) -> Arc<DataPlaneConfig> {
    Arc::new(DataPlaneConfig {
        ports: vec![http_port(
            port,
            vec![listener(
                "http",
                HostMatch::Any,
                None,
                vec![route("r", rules)],
            )],
        )],
    })
}

/// One HTTPS listener on port 443 for `hostname`, serving `certificates`, every path to
/// `backend`.
pub fn https_site(
    hostname: &str,
    certificates: Vec<Arc<TlsCertificate>>,
    backend: &Arc<Backend>,
) -> Arc<DataPlaneConfig> {
    Arc::new(DataPlaneConfig {
        ports: vec![https_port(
            443,
            vec![listener(
                "https",
                host(hostname),
                Some(ListenerTls { certificates }),
                vec![route(
                    "r",
                    vec![rule(vec![prefix("/")], vec![], vec![to(backend, 1)])],
                )],
            )],
        )],
    })
}

// ---------------------------------------------------------------------------------------------
// Certificates

pub fn certificate(names: &[&str]) -> Arc<TlsCertificate> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let generated = rcgen::generate_simple_self_signed(names.clone()).expect("rcgen certificate");
    Arc::new(TlsCertificate {
        source: format!("test/{}", names.join(",")),
        chain: vec![generated.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into()),
        dns_names: names,
        not_after_unix: i64::MAX,
    })
}

/// Issues self-signed certificates on demand and counts the calls.
#[derive(Debug, Default)]
pub struct TestIssuer {
    pub calls: AtomicUsize,
    issued: Mutex<HashMap<String, Arc<TlsCertificate>>>,
}

impl OnDemandIssuer for TestIssuer {
    fn certificate_for(&self, server_name: &str) -> Option<Arc<TlsCertificate>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut issued = self.issued.lock().expect("issuer lock");
        Some(Arc::clone(
            issued
                .entry(server_name.to_owned())
                .or_insert_with(|| certificate(&[server_name])),
        ))
    }
}

impl TestIssuer {
    pub fn issued_for(&self, name: &str) -> Option<Arc<TlsCertificate>> {
        self.issued.lock().expect("issuer lock").get(name).cloned()
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway under test

pub struct Gateway {
    pub dataplane: DataPlane,
    pub issuer: Arc<TestIssuer>,
    ports: HashMap<u16, u16>,
}

impl Gateway {
    pub fn start(declared: &[u16]) -> Gateway {
        Self::start_with(declared, DataPlaneOptions::default(), |_| {})
    }

    pub fn start_with(
        declared: &[u16],
        options: DataPlaneOptions,
        tweak: impl FnOnce(&mut GatewaySettings),
    ) -> Gateway {
        let ports: HashMap<u16, u16> = declared.iter().map(|p| (*p, free_port())).collect();
        let mut settings = GatewaySettings {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_map: ports.clone(),
            threads: 2,
            trusted_hops: 0,
            grace_period: Duration::from_secs(1),
            max_request_header_bytes: 32 * 1024,
            ..GatewaySettings::default()
        };
        tweak(&mut settings);
        let issuer = Arc::new(TestIssuer::default());
        let dataplane = DataPlane::start_with_options(settings, issuer.clone(), options)
            .expect("data plane starts");
        Gateway {
            dataplane,
            issuer,
            ports,
        }
    }

    pub fn fast_ejection() -> DataPlaneOptions {
        DataPlaneOptions {
            ejection: EjectionPolicy {
                consecutive_failures: 2,
                base_backoff: Duration::from_secs(3),
                max_backoff: Duration::from_secs(6),
            },
            ..DataPlaneOptions::default()
        }
    }

    pub fn addr(&self, declared: u16) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.ports[&declared])
    }

    pub fn apply(&self, config: Arc<DataPlaneConfig>) {
        self.dataplane.apply(config).expect("configuration applies");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.dataplane.shutdown();
    }
}

/// The backend `app` and a gateway on declared port 80 sending every request to it.
pub async fn app_behind_gateway(
    tweak: impl FnOnce(&mut GatewaySettings),
) -> (TestBackend, Gateway) {
    let app = TestBackend::spawn("app").await;
    let app_backend = backend("app", vec![app.addr], UpstreamProtocol::Http1);
    let gateway = Gateway::start_with(&[80], DataPlaneOptions::default(), tweak);
    gateway.apply(simple(
        80,
        vec![rule(vec![prefix("/")], vec![], vec![to(&app_backend, 1)])],
    ));
    (app, gateway)
}

// ---------------------------------------------------------------------------------------------
// Backends

/// The last request head a test upstream recorded (empty before any).
pub fn last_recorded(heads: &Mutex<Vec<String>>) -> String {
    heads
        .lock()
        .expect("heads lock")
        .last()
        .cloned()
        .unwrap_or_default()
}

/// A tiny HTTP/1.1 server. Paths select behaviour:
/// `/status/<code>`, `/sleep/<ms>`, `/drip/<n>/<ms>` (a byte every ms), `/bytes/<n>` (streams n bytes), `/upload` (counts the body),
/// `/ws` (101 then echo), anything else: 200 with `backend=<name>` and the request head.
#[derive(Clone)]
pub struct TestBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    pub heads: Arc<Mutex<Vec<String>>>,
}

impl TestBackend {
    pub async fn spawn(name: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("backend binds");
        let backend = TestBackend {
            addr: listener.local_addr().expect("backend address"),
            name: name.to_owned(),
            hits: Arc::new(AtomicUsize::new(0)),
            heads: Arc::new(Mutex::new(Vec::new())),
        };
        let serving = backend.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let serving = serving.clone();
                tokio::spawn(async move {
                    let _ = serving.serve(stream).await;
                });
            }
        });
        backend
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last_head(&self) -> String {
        last_recorded(&self.heads)
    }

    async fn serve(&self, mut stream: TcpStream) -> Result<()> {
        let mut buffer = Vec::new();
        loop {
            let Some(head) = read_head(&mut stream, &mut buffer).await? else {
                return Ok(());
            };
            self.hits.fetch_add(1, Ordering::SeqCst);
            self.heads
                .lock()
                .expect("heads lock")
                .push(head.text.clone());
            let received = read_body(&mut stream, &mut buffer, &head).await?;
            let path = head.target.split('?').next().unwrap_or_default().to_owned();
            if let Some(code) = path.strip_prefix("/status/") {
                let reply = format!(
                    "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nx-backend: {}\r\n\r\n{}",
                    self.name.len(),
                    self.name,
                    self.name
                );
                stream.write_all(reply.as_bytes()).await?;
            } else if let Some(ms) = path.strip_prefix("/sleep/") {
                let ms: u64 = ms.parse().context("sleep ms")?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let reply = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nslept";
                stream.write_all(reply.as_bytes()).await?;
            } else if let Some(drip) = path.strip_prefix("/drip/") {
                // `/drip/<n>/<ms>`: n bytes, one every ms, after the headers.
                let (count, every) = drip.split_once('/').context("/drip/<n>/<ms>")?;
                let count: u64 = count.parse().context("drip count")?;
                let every = Duration::from_millis(every.parse().context("drip ms")?);
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {count}\r\n\r\n");
                stream.write_all(head.as_bytes()).await?;
                for _ in 0..count {
                    tokio::time::sleep(every).await;
                    stream.write_all(b"d").await?;
                }
            } else if let Some(n) = path.strip_prefix("/bytes/") {
                let total: u64 = n.parse().context("byte count")?;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n");
                stream.write_all(head.as_bytes()).await?;
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = total;
                while left > 0 {
                    let n = usize::try_from(left.min(chunk.len() as u64)).context("chunk")?;
                    stream.write_all(&chunk[..n]).await?;
                    left -= n as u64;
                }
            } else if path == "/upload" {
                let body = received.to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(reply.as_bytes()).await?;
            } else if path == "/ws" {
                stream
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
                    )
                    .await?;
                stream.write_all(&buffer).await?;
                buffer.clear();
                let (mut reader, mut writer) = stream.split();
                tokio::io::copy(&mut reader, &mut writer).await?;
                return Ok(());
            } else {
                let body = format!("backend={}\n{}", self.name, head.text);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: {}\r\n\r\n{body}",
                    body.len(),
                    self.name
                );
                stream.write_all(reply.as_bytes()).await?;
            }
        }
    }
}

pub struct Head {
    pub text: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one message head (request or response); `None` on a clean EOF before any byte.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
) -> Result<Option<Head>> {
    loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            let raw: Vec<u8> = buffer.drain(..end + 4).collect();
            let text = String::from_utf8(raw).context("head is UTF-8")?;
            let mut lines = text.split("\r\n");
            let first = lines.next().unwrap_or_default();
            let target = first.split(' ').nth(1).unwrap_or_default().to_owned();
            let headers = lines
                .filter(|l| !l.is_empty())
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .collect();
            return Ok(Some(Head {
                text,
                target,
                headers,
            }));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            if buffer.is_empty() {
                return Ok(None);
            }
            bail!("connection closed inside a message head");
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Reads (and discards) a request body framed by Content-Length or chunked; returns its size.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    head: &Head,
) -> Result<u64> {
    if let Some(length) = head.header("content-length") {
        let length: u64 = length.parse().context("content-length")?;
        discard(stream, buffer, length).await?;
        return Ok(length);
    }
    if head
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        let mut total = 0;
        loop {
            let line = read_line(stream, buffer).await?;
            let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .context("chunk size")?;
            if size == 0 {
                // Trailers end with an empty line.
                while !read_line(stream, buffer).await?.is_empty() {}
                return Ok(total);
            }
            discard(stream, buffer, size).await?;
            read_line(stream, buffer).await?;
            total += size;
        }
    }
    Ok(0)
}

async fn read_line<S: AsyncRead + Unpin>(stream: &mut S, buffer: &mut Vec<u8>) -> Result<String> {
    loop {
        if let Some(end) = find(buffer, b"\r\n") {
            let raw: Vec<u8> = buffer.drain(..end + 2).collect();
            return Ok(String::from_utf8_lossy(&raw[..end]).into_owned());
        }
        fill(stream, buffer).await?;
    }
}

async fn discard<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    mut length: u64,
) -> Result<()> {
    loop {
        let take = usize::try_from(length.min(buffer.len() as u64))?;
        buffer.drain(..take);
        length -= take as u64;
        if length == 0 {
            return Ok(());
        }
        fill(stream, buffer).await?;
    }
}

async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buffer: &mut Vec<u8>) -> Result<()> {
    let mut chunk = [0u8; 65536];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        bail!("connection closed mid-message");
    }
    buffer.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Clients

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 client connection (plain or TLS) that can send several requests.
pub struct Client<S> {
    pub stream: S,
    buffer: Vec<u8>,
}

impl Client<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Client<TcpStream> {
        Client::new(TcpStream::connect(addr).await.expect("gateway accepts"))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    pub async fn send(&mut self, raw: &[u8]) -> Result<()> {
        self.stream.write_all(raw).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Reads one response; `head_request` says the body is absent whatever the headers say.
    pub async fn response(&mut self, head_request: bool) -> Result<Response> {
        let reading = async {
            let head = read_head(&mut self.stream, &mut self.buffer)
                .await?
                .ok_or_else(|| anyhow!("connection closed before a response"))?;
            let status: u16 = head
                .text
                .split(' ')
                .nth(1)
                .ok_or_else(|| anyhow!("no status"))?
                .parse()?;
            let mut body = Vec::new();
            if !(head_request || status == 101 || status == 204 || status == 304 || status < 200) {
                if let Some(length) = head.header("content-length") {
                    let length: usize = length.parse()?;
                    while self.buffer.len() < length {
                        fill(&mut self.stream, &mut self.buffer).await?;
                    }
                    body = self.buffer.drain(..length).collect();
                } else if head
                    .header("transfer-encoding")
                    .is_some_and(|te| te.contains("chunked"))
                {
                    loop {
                        let line = read_line(&mut self.stream, &mut self.buffer).await?;
                        let size = line.split(';').next().unwrap_or_default();
                        let size = usize::from_str_radix(size.trim(), 16)?;
                        if size == 0 {
                            while !read_line(&mut self.stream, &mut self.buffer)
                                .await?
                                .is_empty()
                            {}
                            break;
                        }
                        while self.buffer.len() < size + 2 {
                            fill(&mut self.stream, &mut self.buffer).await?;
                        }
                        body.extend(self.buffer.drain(..size));
                        self.buffer.drain(..2);
                    }
                } else {
                    body = std::mem::take(&mut self.buffer);
                    self.stream.read_to_end(&mut body).await?;
                }
            }
            Ok::<_, anyhow::Error>(Response {
                status,
                headers: head.headers,
                body,
            })
        };
        // Boxed so that callers' futures stay small (debug builds copy them on the stack).
        tokio::time::timeout(DEADLINE, Box::pin(reading))
            .await
            .map_err(|_| anyhow!("no response within {DEADLINE:?}"))?
    }

    /// Sends a GET and reads its response.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Response> {
        self.send(format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
            .await?;
        self.response(false).await
    }

    /// Whether the server closed the connection (EOF) within the deadline.
    pub async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(DEADLINE, self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// One request on a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Response> {
    Client::connect(addr).await.get(host, path).await
}

/// Sends raw bytes on a fresh connection and reads one response.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Result<Response> {
    let mut client = Client::connect(addr).await;
    client.send(request).await?;
    client.response(false).await
}

/// Polls `check` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > DEADLINE {
            bail!("{what}: not true within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS client

/// Accepts any server certificate: the tests assert which certificate was presented instead.
#[derive(Debug)]
struct AcceptAny;

impl pingora::tls::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<pingora::tls::ServerCertVerified, pingora::tls::RusTlsError> {
        Ok(pingora::tls::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<pingora::tls::HandshakeSignatureValid, pingora::tls::RusTlsError> {
        Ok(pingora::tls::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<pingora::tls::HandshakeSignatureValid, pingora::tls::RusTlsError> {
        Ok(pingora::tls::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}

pub type TlsStream = pingora::tls::ClientTlsStream<TcpStream>;

/// Connects with TLS; `sni: None` sends no SNI. `alpn` e.g. `&[b"h2"]`.
pub async fn tls_connect(addr: SocketAddr, sni: Option<&str>, alpn: &[&[u8]]) -> Result<TlsStream> {
    tls_connect_with(&tls_client_config(alpn), addr, sni).await
}

/// A client configuration that accepts any certificate. It keeps the sessions the server
/// offers (rustls's default in-memory store), so connections made with the same one resume.
pub fn tls_client_config(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    pingora::tls::install_default_crypto_provider();
    let mut config = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects with TLS using `config`; `sni: None` sends no SNI.
pub async fn tls_connect_with(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    sni: Option<&str>,
) -> Result<TlsStream> {
    let server_name = match sni {
        Some(name) => ServerName::try_from(name.to_owned())?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await?;
    let stream = Box::pin(TlsConnector::from(Arc::clone(config)).connect(server_name, tcp)).await?;
    Ok(stream)
}

/// The leaf certificate the server presented.
pub fn presented(stream: &TlsStream) -> Option<CertificateDer<'static>> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
}

/// Reads the process's resident set size in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One HTTP/2 GET on `stream` (TLS with ALPN h2, or h2c prior knowledge): status and body.
pub async fn h2_get<S>(stream: S, uri: &str) -> Result<(u16, String)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut h2, connection) = h2::client::handshake(stream).await?;
    tokio::spawn(connection);
    let (response, _) = h2.send_request(http::Request::get(uri).body(())?, true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        text.extend_from_slice(&chunk?);
    }
    Ok((status, String::from_utf8(text)?))
}
