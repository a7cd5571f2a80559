//! The local CA: a root kept on disk that issues short-lived leaf certificates on demand, so an
//! HTTPS listener without a usable certificate still serves one (trusted by clients that
//! install the root), like Caddy's internal issuer.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};
use torhaus_model::hostname::normalize_request_host;
use torhaus_model::{HostMatch, OnDemandIssuer, TlsCertificate};

const CA_DIR: &str = "local-ca";
const ROOT_KEY_FILE: &str = "root.key.pem";
const ROOT_CERT_FILE: &str = "root.crt.pem";
const ROOT_COMMON_NAME: &str = "torhaus local CA";
const ROOT_VALIDITY: Duration = Duration::days(3650);
const LEAF_VALIDITY: Duration = Duration::days(7);
/// Certificates start slightly in the past so clients whose clock runs behind accept them.
const BACKDATE: Duration = Duration::hours(1);
/// X.509 caps a commonName at 64 characters; longer names live only in the SAN.
const MAX_COMMON_NAME_LEN: usize = 64;
/// Every distinct SNI costs one entry; the bound keeps a client cycling names from growing
/// memory without limit.
const MAX_CACHED_LEAVES: usize = 1024;
const SOURCE: &str = "local CA";

/// A certificate authority that torhaus creates once and keeps on disk, issuing leaf
/// certificates for any DNS name or IP address it is asked for during a TLS handshake.
///
/// # State directory layout
///
/// ```text
/// <state_dir>/local-ca/           mode 0700
/// <state_dir>/local-ca/root.key.pem   the root's ECDSA P-256 private key, PKCS#8 PEM, mode 0600
/// <state_dir>/local-ca/root.crt.pem   the root certificate, PEM; install it in clients to trust
///                                     the certificates torhaus serves
/// ```
///
/// The root (CN "torhaus local CA", valid 10 years, CA:true with path length 0, keyCertSign)
/// is created on first start and loaded on every later one. Files are written atomically
/// (temporary file, fsync, rename). A damaged or mismatched file is an error naming the file,
/// never a silent regeneration, because a new root would break every client that trusts the
/// old one; deleting the directory is the explicit way to start over.
///
/// Leaves are ECDSA P-256, valid 7 days, with the requested name as their only SAN (an IP SAN
/// for an IP literal); they live only in memory and are reissued once less than a third of
/// their validity remains.
pub struct LocalCa {
    directory: PathBuf,
    root_der: CertificateDer<'static>,
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
    leaves: RwLock<HashMap<String, Arc<TlsCertificate>>>,
    max_cached_leaves: usize,
}

/// Why the local CA could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum LocalCaError {
    #[error("local CA: cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "local CA file {} is corrupt: {reason}; restore it, or delete {} to create a new CA \
         (clients must then trust the new root)",
        path.display(),
        path.parent().unwrap_or(path).display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "local CA certificate {} does not belong to the key {}; restore the matching pair, or \
         delete {} to create a new CA (clients must then trust the new root)",
        certificate.display(),
        key.display(),
        key.parent().unwrap_or(key).display()
    )]
    KeyMismatch { certificate: PathBuf, key: PathBuf },
    #[error(
        "local CA key {} is missing but the certificate {} exists; restore the key, or delete \
         {} to create a new CA (clients must then trust the new root)",
        key.display(),
        certificate.display(),
        key.parent().unwrap_or(key).display()
    )]
    MissingKey { key: PathBuf, certificate: PathBuf },
    #[error(
        "local CA certificate {} expired at Unix time {not_after_unix}; delete {} to create a \
         new CA (clients must then trust the new root)",
        path.display(),
        path.parent().unwrap_or(path).display()
    )]
    Expired { path: PathBuf, not_after_unix: i64 },
    #[error("local CA: cannot generate the root: {0}")]
    Generate(#[source] rcgen::Error),
}

impl LocalCa {
    /// Loads the CA from `<state_dir>/local-ca/`, creating the directory and a new root on
    /// first use. See the type's documentation for the layout.
    pub fn load_or_create(state_dir: &Path) -> Result<LocalCa, LocalCaError> {
        Self::load_or_create_at(state_dir, OffsetDateTime::now_utc())
    }

    fn load_or_create_at(state_dir: &Path, now: OffsetDateTime) -> Result<LocalCa, LocalCaError> {
        let directory = state_dir.join(CA_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&directory)
            .map_err(io_error("create directory", &directory))?;
        let key_path = directory.join(ROOT_KEY_FILE);
        let certificate_path = directory.join(ROOT_CERT_FILE);

        let key = match read_if_present(&key_path)? {
            Some(pem) => {
                warn_if_key_readable_by_others(&key_path);
                KeyPair::from_pem(&pem).map_err(|error| LocalCaError::Corrupt {
                    path: key_path.clone(),
                    reason: format!("not a PEM private key rcgen can use: {error}"),
                })?
            }
            None => {
                if exists(&certificate_path)? {
                    return Err(LocalCaError::MissingKey {
                        key: key_path,
                        certificate: certificate_path,
                    });
                }
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                    .map_err(LocalCaError::Generate)?;
                write_atomically(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                key
            }
        };

        // A key without a certificate means a crash between the two writes: the certificate was
        // never published, so nobody can trust it yet and creating it now breaks no one.
        let root_pem = match read_if_present(&certificate_path)? {
            Some(pem) => pem,
            None => {
                let root = root_params(now)
                    .self_signed(&key)
                    .map_err(LocalCaError::Generate)?;
                let pem = root.pem();
                write_atomically(&certificate_path, pem.as_bytes(), 0o644)?;
                tracing::info!(
                    certificate = %certificate_path.display(),
                    "created the local CA; install its root certificate in clients to trust it"
                );
                pem
            }
        };

        let root_der = check_root(&certificate_path, &root_pem, &key_path, &key, now)?;
        let issuer =
            Issuer::from_ca_cert_der(&root_der, key).map_err(|error| LocalCaError::Corrupt {
                path: certificate_path.clone(),
                reason: format!("cannot use it as an issuer: {error}"),
            })?;
        Ok(LocalCa {
            directory,
            root_der,
            root_pem,
            issuer,
            leaves: RwLock::new(HashMap::new()),
            max_cached_leaves: MAX_CACHED_LEAVES,
        })
    }

    /// The root certificate, PEM-encoded: what clients install to trust this CA.
    pub fn ca_certificate_pem(&self) -> String {
        self.root_pem.clone()
    }

    /// The root certificate, DER-encoded.
    pub fn ca_certificate_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// Where the root certificate is stored (`<state_dir>/local-ca/root.crt.pem`).
    pub fn ca_certificate_path(&self) -> PathBuf {
        self.directory.join(ROOT_CERT_FILE)
    }

    fn leaf_at(&self, server_name: &str, now: OffsetDateTime) -> Option<Arc<TlsCertificate>> {
        let subject = match LeafSubject::parse(server_name) {
            Ok(subject) => subject,
            Err(reason) => {
                // Debug, not warn: server names come from any client on the internet.
                tracing::debug!(server_name, %reason, "local CA refuses to issue");
                return None;
            }
        };
        let cache_key = subject.cache_key();
        if let Some(cached) = self
            .leaves
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&cache_key)
            .filter(|leaf| is_fresh(leaf, now))
        {
            return Some(Arc::clone(cached));
        }

        let issued = match self.issue(&subject, now) {
            Ok(leaf) => Arc::new(leaf),
            Err(error) => {
                tracing::warn!(server_name, %error, "local CA failed to issue a certificate");
                return None;
            }
        };
        let mut leaves = self.leaves.write().unwrap_or_else(PoisonError::into_inner);
        // Another handshake may have issued the same name meanwhile; keep one answer per name.
        if let Some(raced) = leaves.get(&cache_key).filter(|leaf| is_fresh(leaf, now)) {
            return Some(Arc::clone(raced));
        }
        if leaves.len() >= self.max_cached_leaves && !leaves.contains_key(&cache_key) {
            evict(&mut leaves, self.max_cached_leaves, now);
        }
        leaves.insert(cache_key, Arc::clone(&issued));
        tracing::debug!(server_name, "local CA issued a certificate");
        Some(issued)
    }

    fn issue(
        &self,
        subject: &LeafSubject,
        now: OffsetDateTime,
    ) -> Result<TlsCertificate, rcgen::Error> {
        let not_after = now + LEAF_VALIDITY;
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        params.distinguished_name = DistinguishedName::new();
        let (san, dns_names) = match subject {
            LeafSubject::Dns(name) => {
                if name.len() <= MAX_COMMON_NAME_LEN {
                    params
                        .distinguished_name
                        .push(DnType::CommonName, name.as_str());
                }
                (
                    SanType::DnsName(Ia5String::try_from(name.as_str())?),
                    vec![name.clone()],
                )
            }
            LeafSubject::Ip(ip) => {
                params
                    .distinguished_name
                    .push(DnType::CommonName, ip.to_string());
                // TlsCertificate::dns_names lists DNS SANs only.
                (SanType::IpAddress(*ip), Vec::new())
            }
        };
        params.subject_alt_names = vec![san];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let leaf = params.signed_by(&key, &self.issuer)?;
        Ok(TlsCertificate {
            source: SOURCE.to_owned(),
            chain: vec![leaf.der().clone(), self.root_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            dns_names,
            not_after_unix: not_after.unix_timestamp(),
        })
    }
}

impl OnDemandIssuer for LocalCa {
    fn certificate_for(&self, server_name: &str) -> Option<Arc<TlsCertificate>> {
        self.leaf_at(server_name, OffsetDateTime::now_utc())
    }
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

/// What a leaf certifies: a validated, normalized DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LeafSubject {
    Dns(String),
    Ip(IpAddr),
}

impl LeafSubject {
    fn parse(server_name: &str) -> Result<Self, String> {
        if let Ok(ip) = server_name.parse::<IpAddr>() {
            return Ok(LeafSubject::Ip(ip));
        }
        // normalize_request_host would strip a `:port`, which has no place in a server name.
        if server_name.contains(':') {
            return Err("neither an IP address nor a DNS name".to_owned());
        }
        let normalized =
            normalize_request_host(server_name).ok_or_else(|| "empty name".to_owned())?;
        match HostMatch::parse(&normalized) {
            Ok(HostMatch::Exact(name)) => Ok(LeafSubject::Dns(name)),
            Ok(_) => Err("a wildcard is not a server name".to_owned()),
            Err(error) => Err(error.to_string()),
        }
    }

    fn cache_key(&self) -> String {
        match self {
            LeafSubject::Dns(name) => name.clone(),
            LeafSubject::Ip(ip) => ip.to_string(),
        }
    }
}

fn is_fresh(leaf: &TlsCertificate, now: OffsetDateTime) -> bool {
    let remaining = leaf.not_after_unix - now.unix_timestamp();
    remaining > (LEAF_VALIDITY / 3_i32).whole_seconds()
}

/// Drops leaves due for renewal; if the cache is still full, the one expiring first.
fn evict(leaves: &mut HashMap<String, Arc<TlsCertificate>>, limit: usize, now: OffsetDateTime) {
    leaves.retain(|_, leaf| is_fresh(leaf, now));
    while leaves.len() >= limit {
        let Some(oldest) = leaves
            .iter()
            .min_by_key(|(_, leaf)| leaf.not_after_unix)
            .map(|(name, _)| name.clone())
        else {
            return;
        };
        leaves.remove(&oldest);
    }
}

fn root_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_VALIDITY;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, ROOT_COMMON_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "torhaus");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Parses the stored root and checks it can act as this CA: a CA certificate, for `key`, not
/// expired.
fn check_root(
    certificate_path: &Path,
    pem: &str,
    key_path: &Path,
    key: &KeyPair,
    now: OffsetDateTime,
) -> Result<CertificateDer<'static>, LocalCaError> {
    let corrupt = |reason: String| LocalCaError::Corrupt {
        path: certificate_path.to_path_buf(),
        reason,
    };
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| corrupt(format!("no PEM certificate in it: {error}")))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|error| corrupt(format!("not an X.509 certificate: {error}")))?;
    if !parsed.is_ca() {
        return Err(corrupt(
            "not a CA certificate (basicConstraints CA is not true)".to_owned(),
        ));
    }
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(LocalCaError::KeyMismatch {
            certificate: certificate_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    let not_after_unix = parsed.validity().not_after.timestamp();
    if not_after_unix <= now.unix_timestamp() {
        return Err(LocalCaError::Expired {
            path: certificate_path.to_path_buf(),
            not_after_unix,
        });
    }
    Ok(der)
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LocalCaError {
    let path = path.to_path_buf();
    move |source| LocalCaError::Io {
        action,
        path,
        source,
    }
}

fn exists(path: &Path) -> Result<bool, LocalCaError> {
    path.try_exists().map_err(io_error("inspect", path))
}

fn read_if_present(path: &Path) -> Result<Option<String>, LocalCaError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("read", path)(error)),
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| LocalCaError::Corrupt {
            path: path.to_path_buf(),
            reason: "not a PEM text file (invalid UTF-8)".to_owned(),
        })
}

fn warn_if_key_readable_by_others(path: &Path) {
    if let Ok(metadata) = fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            key = %path.display(),
            mode = format!("{:o}", metadata.permissions().mode() & 0o777),
            "the local CA key is accessible to other users; chmod 600 it"
        );
    }
}

/// Writes `contents` so that `path` holds either its old contents or all of the new ones,
/// even across a crash: temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), LocalCaError> {
    let mut temporary_name = path.file_name().unwrap_or_default().to_os_string();
    temporary_name.push(".tmp");
    let temporary = path.with_file_name(temporary_name);
    // A leftover from a crash may carry other permissions; the mode applies only on creation.
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("remove", &temporary)(error)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &temporary))?;
    drop(file);
    fs::rename(&temporary, path).map_err(io_error("rename into place", path))?;
    let directory = path.parent().unwrap_or(Path::new("."));
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("sync directory", directory))?;
    Ok(())
}

#[cfg(test)]
mod tests;
