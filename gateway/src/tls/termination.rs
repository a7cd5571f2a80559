//! The TLS handshake of HTTPS ports, done by torhaus instead of pingora's listener: the rustls
//! server configuration (TLS 1.2 and 1.3, ALPN, the SNI resolver, session tickets), a deadline
//! on the handshake, and the accounting of handshakes that fail.
//!
//! Why not pingora's TLS listener: it logs every failed handshake at error level (on a public
//! address, every scanner and every TCP health check), holds a silent connection for a fixed
//! 60 s, and keeps rustls's default resumption state, a 256-entry session cache per port, so a
//! few hundred clients evict each other's sessions. Here failures are counted and logged at debug
//! level, the deadline is a setting, and sessions resume from tickets encrypted with keys shared
//! by every port and thread (rustls's `Ticketer`: new keys every 6 hours, the previous ones
//! still accepted), however many clients there are.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pingora::listeners::tls::Acceptor;
use pingora::protocols::Stream;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::tls::server::handshake_with_callback;
use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, ResolvesServerCert};
use rustls::{ServerConfig, version};

use super::SniRecorder;
use crate::metrics::Metrics;

tokio::task_local! {
    /// Set by the certificate resolver when it finds no certificate for a ClientHello, so the
    /// failed handshake that follows is counted once, as `no_certificate`.
    static CERTIFICATE_REFUSED: Cell<bool>;
}

/// Marks the handshake running on this task as refused for want of a certificate; a no-op
/// outside a [`TlsTermination::accept`].
pub(super) fn note_certificate_refused() {
    let _ = CERTIFICATE_REFUSED.try_with(|refused| refused.set(true));
}

/// Why the TLS layer of the data plane could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("no rustls crypto provider is installed")]
    NoCryptoProvider,
    #[error("TLS server configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("session ticket keys: {0}")]
    Tickets(#[source] rustls::Error),
}

/// The session ticket keys of the process: one set, so a ticket issued on any port or thread
/// resumes on any other.
#[derive(Clone)]
pub struct SessionTickets(Arc<dyn ProducesTickets>);

impl SessionTickets {
    /// Fresh random keys, rotated every 6 hours; they live in memory only, so a restart (or
    /// another replica) makes clients do one full handshake.
    pub fn generate() -> Result<Self, TlsSetupError> {
        rustls::crypto::ring::Ticketer::new()
            .map(Self)
            .map_err(TlsSetupError::Tickets)
    }
}

impl fmt::Debug for SessionTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTickets")
            .field("lifetime_s", &self.0.lifetime())
            .finish_non_exhaustive()
    }
}

/// How a handshake that did not complete ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client did not finish within the deadline.
    TimedOut,
    /// No certificate exists or could be issued for the name the client asked for.
    NoCertificate,
    /// Anything else: the client closed or reset, spoke something other than TLS, or offered
    /// nothing torhaus accepts (versions, ciphers, signature schemes).
    Failed,
}

impl HandshakeFailure {
    pub fn label(self) -> &'static str {
        match self {
            Self::TimedOut => "timeout",
            Self::NoCertificate => "no_certificate",
            Self::Failed => "failed",
        }
    }
}

/// Terminates TLS on one HTTPS port.
pub struct TlsTermination {
    acceptor: Acceptor,
    recorder: SniRecorder,
    handshake_timeout: Duration,
    metrics: Option<Arc<Metrics>>,
}

impl fmt::Debug for TlsTermination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTermination")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsTermination {
    /// TLS 1.3 and 1.2, ALPN `h2` then `http/1.1`, certificates from `resolver`.
    pub fn new(
        resolver: Arc<dyn ResolvesServerCert>,
        tickets: &SessionTickets,
        handshake_timeout: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, TlsSetupError> {
        pingora::tls::install_default_crypto_provider();
        let provider = CryptoProvider::get_default().ok_or(TlsSetupError::NoCryptoProvider)?;
        let mut config = ServerConfig::builder_with_provider(Arc::clone(provider))
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .map_err(TlsSetupError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.ticketer = Arc::clone(&tickets.0);
        let recorder = SniRecorder::new(metrics.clone());
        Ok(Self {
            acceptor: Acceptor::from_server_config(Arc::new(config)),
            recorder,
            handshake_timeout,
            metrics,
        })
    }

    /// Runs the server side of the handshake on a freshly accepted connection. `None` when it
    /// failed, which has been counted and logged; the connection is then dropped.
    pub async fn accept(&self, stream: Stream) -> Option<Stream> {
        match self.handshake(stream).await {
            Ok(stream) => Some(stream),
            Err((failure, peer, detail)) => {
                if let Some(metrics) = &self.metrics {
                    metrics.tls_handshake_failed(failure);
                }
                tracing::debug!(
                    peer = peer.as_deref().unwrap_or("unknown"),
                    outcome = failure.label(),
                    "TLS handshake did not complete: {detail}"
                );
                None
            }
        }
    }

    async fn handshake(
        &self,
        stream: Stream,
    ) -> Result<Stream, (HandshakeFailure, Option<String>, String)> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().map(ToString::to_string));
        // pingora's own TLS stream type wraps the TCP stream, exactly as its listener would.
        let tcp = match stream.into_any().downcast::<TcpStream>() {
            Ok(tcp) => *tcp,
            Err(_) => {
                return Err((
                    HandshakeFailure::Failed,
                    peer,
                    "the accepted connection is not a TCP stream".to_owned(),
                ));
            }
        };
        let attempt = CERTIFICATE_REFUSED.scope(Cell::new(false), async {
            let result = tokio::time::timeout(
                self.handshake_timeout,
                handshake_with_callback(&self.acceptor, tcp, &self.recorder),
            )
            .await;
            (result, CERTIFICATE_REFUSED.with(Cell::get))
        });
        match attempt.await {
            (Ok(Ok(tls)), _) => Ok(Box::new(tls)),
            (Ok(Err(error)), refused) => {
                let failure = if refused {
                    HandshakeFailure::NoCertificate
                } else {
                    HandshakeFailure::Failed
                };
                Err((failure, peer, error.to_string()))
            }
            (Err(_), _) => Err((
                HandshakeFailure::TimedOut,
                peer,
                format!("no handshake within {:?}", self.handshake_timeout),
            )),
        }
    }
}
