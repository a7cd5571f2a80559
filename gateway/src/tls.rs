//! TLS termination: the per-port SNI certificate resolver over the current snapshot, the
//! on-demand certificate cache, the handshake hook that records the client's SNI for the
//! Host/SNI (421) check, and (in [`termination`]) the handshake itself.
//!
//! Certificates are converted to rustls `CertifiedKey`s when a snapshot is built, so `resolve()`
//! only loads the snapshot, picks a listener and compares names. Listeners without a certificate
//! get one from the [`OnDemandIssuer`]; the converted keys are cached by name (bounded).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use torhaus_model::hostname::normalize_request_host;
use torhaus_model::{OnDemandIssuer, TlsCertificate};

use crate::metrics::{ConnectionGuard, Metrics};
use crate::router::{CompiledListener, CompiledPort};
use crate::snapshot::Snapshot;

/// On-demand certificates kept at most; beyond it names are issued but not cached, so a flood of
/// random SNIs cannot grow memory without bound.
const ON_DEMAND_CACHE_LIMIT: usize = 4096;

mod termination;

pub use termination::{HandshakeFailure, SessionTickets, TlsSetupError, TlsTermination};

/// A listener certificate ready for rustls.
#[derive(Debug)]
pub struct ServingCertificate {
    pub certificate: Arc<TlsCertificate>,
    pub key: Arc<CertifiedKey>,
}

/// Converts a parsed certificate into the form rustls serves. Fails when the key type is not
/// supported by the crypto provider.
pub fn certified_key(certificate: &TlsCertificate) -> Result<Arc<CertifiedKey>, String> {
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "no rustls crypto provider is installed".to_owned())?;
    let signing_key = provider
        .key_provider
        .load_private_key(certificate.key.clone_key())
        .map_err(|e| {
            format!(
                "certificate {}: unusable private key: {e}",
                certificate.source
            )
        })?;
    Ok(Arc::new(CertifiedKey::new(
        certificate.chain.clone(),
        signing_key,
    )))
}

/// Picks the certificate for `server_name` among a listener's certificates: one naming it
/// exactly, then one whose wildcard covers it, then the first.
pub fn choose_certificate<'a>(
    certificates: &'a [ServingCertificate],
    server_name: Option<&str>,
) -> Option<&'a ServingCertificate> {
    if let Some(name) = server_name {
        if let Some(exact) = certificates
            .iter()
            .find(|c| c.certificate.names_exactly(name))
        {
            return Some(exact);
        }
        if let Some(covering) = certificates.iter().find(|c| c.certificate.covers(name)) {
            return Some(covering);
        }
    }
    certificates.first()
}

/// The listener a TLS client addresses: by SNI when it sent one, else the catch-all listener
/// (no hostname), else the port's first listener.
pub fn listener_for_sni<'a>(
    port: &'a CompiledPort,
    server_name: Option<&str>,
) -> Option<&'a CompiledListener> {
    match server_name {
        Some(name) => port.listener_for_host(name),
        None => port
            .listeners()
            .iter()
            .find(|l| l.model().hostname == torhaus_model::HostMatch::Any)
            .or_else(|| port.listeners().first()),
    }
}

/// Certificates issued on demand, by server name; shared by every port and snapshot.
pub struct OnDemandCache {
    issuer: Arc<dyn OnDemandIssuer>,
    keys: ArcSwap<HashMap<String, OnDemandEntry>>,
}

/// A cached on-demand key and when to ask the issuer again: two thirds of the way from caching
/// to the leaf's notAfter, so an expiring leaf is replaced long before clients would reject it.
#[derive(Clone)]
struct OnDemandEntry {
    key: Arc<CertifiedKey>,
    refresh_at_unix: i64,
    not_after_unix: i64,
}

/// A certificate the on-demand issuer handed out, for metrics and the status page.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub server_name: String,
    pub not_after_unix: i64,
    /// When the cache asks the issuer again (the renewal time).
    pub refresh_at_unix: i64,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl fmt::Debug for OnDemandCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnDemandCache")
            .field("issuer", &self.issuer)
            .field("cached", &self.keys.load().len())
            .finish()
    }
}

impl OnDemandCache {
    pub fn new(issuer: Arc<dyn OnDemandIssuer>) -> Self {
        Self {
            issuer,
            keys: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// Every cached certificate (at most the cache's bound), in no particular order.
    pub fn issued(&self) -> Vec<IssuedCertificate> {
        self.keys
            .load()
            .iter()
            .map(|(name, entry)| IssuedCertificate {
                server_name: name.clone(),
                not_after_unix: entry.not_after_unix,
                refresh_at_unix: entry.refresh_at_unix,
            })
            .collect()
    }

    pub fn key_for(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let now = unix_now();
        if let Some(entry) = self.keys.load().get(server_name)
            && now < entry.refresh_at_unix
        {
            return Some(Arc::clone(&entry.key));
        }
        let certificate = self.issuer.certificate_for(server_name)?;
        let key = match certified_key(&certificate) {
            Ok(key) => key,
            Err(error) => {
                tracing::warn!(%error, server_name, "on-demand certificate unusable");
                return None;
            }
        };
        let entry = OnDemandEntry {
            key: Arc::clone(&key),
            not_after_unix: certificate.not_after_unix,
            refresh_at_unix: now
                .saturating_add(certificate.not_after_unix.saturating_sub(now).max(0) / 3 * 2),
        };
        let cached = self.keys.load();
        if cached.len() < ON_DEMAND_CACHE_LIMIT || cached.contains_key(server_name) {
            self.keys.rcu(|current| {
                let mut next = HashMap::clone(current);
                next.insert(server_name.to_owned(), entry.clone());
                next
            });
        }
        Some(key)
    }
}

/// The rustls certificate resolver of one HTTPS port. It reads the current snapshot on every
/// handshake, so certificate changes apply to the next handshake without a restart.
pub struct PortCertResolver {
    declared_port: u16,
    snapshot: Arc<ArcSwap<Snapshot>>,
    on_demand: Arc<OnDemandCache>,
}

impl fmt::Debug for PortCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortCertResolver")
            .field("declared_port", &self.declared_port)
            .finish_non_exhaustive()
    }
}

impl PortCertResolver {
    pub fn new(
        declared_port: u16,
        snapshot: Arc<ArcSwap<Snapshot>>,
        on_demand: Arc<OnDemandCache>,
    ) -> Self {
        Self {
            declared_port,
            snapshot,
            on_demand,
        }
    }

    fn resolve_name(&self, raw_sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let server_name = raw_sni.and_then(normalize_request_host);
        let server_name = server_name.as_deref();
        let snapshot = self.snapshot.load();
        let port = snapshot.routes.port(self.declared_port)?;
        let listener = listener_for_sni(port, server_name)?;
        let certificates = snapshot.certificates_of(listener);
        if let Some(chosen) = choose_certificate(certificates, server_name) {
            return Some(Arc::clone(&chosen.key));
        }
        // No usable certificate on the listener: the local CA issues one for the name asked,
        // or for the listener's own exact hostname when the client sent no SNI.
        let name = match (server_name, &listener.model().hostname) {
            (Some(name), _) => name,
            (None, torhaus_model::HostMatch::Exact(host)) => host.as_str(),
            (None, _) => return None,
        };
        self.on_demand.key_for(name)
    }
}

impl ResolvesServerCert for PortCertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.resolve_name(client_hello.server_name());
        if key.is_none() {
            termination::note_certificate_refused();
        }
        key
    }
}

/// The SNI a TLS client sent, normalized; attached to the connection's TLS digest, which lives
/// as long as the connection: the second field counts the connection as open until then.
#[derive(Debug)]
pub struct ClientSni(pub Option<Box<str>>, pub Option<ConnectionGuard>);

/// Records the client's SNI at the end of the handshake, and counts the handshake.
#[derive(Debug, Default)]
pub struct SniRecorder {
    metrics: Option<Arc<Metrics>>,
}

impl SniRecorder {
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Self { metrics }
    }
}

#[async_trait]
impl TlsAccept for SniRecorder {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let sni = tls
            .server_name()
            .and_then(normalize_request_host)
            .map(String::into_boxed_str);
        let guard = self
            .metrics
            .as_ref()
            .map(|m| m.tls_handshake_completed(tls.version()));
        Some(Arc::new(ClientSni(sni, guard)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    /// Issues a fresh self-signed leaf on every call, with a fixed notAfter, and counts calls.
    #[derive(Debug)]
    struct CountingIssuer {
        not_after_unix: i64,
        calls: AtomicUsize,
    }

    impl OnDemandIssuer for CountingIssuer {
        fn certificate_for(&self, server_name: &str) -> Option<Arc<TlsCertificate>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let key = rcgen::KeyPair::generate().ok()?;
            let params = rcgen::CertificateParams::new(vec![server_name.to_owned()]).ok()?;
            let cert = params.self_signed(&key).ok()?;
            Some(Arc::new(TlsCertificate {
                source: "test issuer".to_owned(),
                chain: vec![CertificateDer::from(cert.der().to_vec())],
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                dns_names: vec![server_name.to_owned()],
                not_after_unix: self.not_after_unix,
            }))
        }
    }

    fn cache(not_after_unix: i64) -> (Arc<CountingIssuer>, OnDemandCache) {
        let issuer = Arc::new(CountingIssuer {
            not_after_unix,
            calls: AtomicUsize::new(0),
        });
        let cache = OnDemandCache::new(Arc::clone(&issuer) as Arc<dyn OnDemandIssuer>);
        (issuer, cache)
    }

    #[test]
    fn a_fresh_on_demand_key_is_cached() {
        let (issuer, cache) = cache(unix_now() + 7 * 24 * 3600);
        let first = cache.key_for("app.example.com");
        let second = cache.key_for("app.example.com");
        assert!(first.is_some() && second.is_some());
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 1);
        assert!(matches!((first, second), (Some(a), Some(b)) if Arc::ptr_eq(&a, &b)));
    }

    #[test]
    fn an_expiring_on_demand_key_is_asked_for_again() {
        let (issuer, cache) = cache(unix_now() - 1);
        assert!(cache.key_for("app.example.com").is_some());
        assert!(cache.key_for("app.example.com").is_some());
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 2);
    }
}
