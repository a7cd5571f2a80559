//! Tests of the local CA: persistence, trust of issued leaves, caching and renewal, refusal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::ring::default_provider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{ServerName, UnixTime};

use super::*;

/// A fresh directory under the system temp dir, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "torhaus-acme-test-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn ca_file(&self, name: &str) -> PathBuf {
        self.0.join(CA_DIR).join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Verifies `leaf` as a TLS client trusting only `root` would, for `server_name`.
fn verify(
    root: &CertificateDer<'static>,
    leaf: &Arc<TlsCertificate>,
    server_name: &str,
) -> Result<()> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone())?;
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(default_provider()))
            .build()?;
    let Some((end_entity, intermediates)) = leaf.chain.split_first() else {
        bail!("empty chain");
    };
    verifier.verify_server_cert(
        end_entity,
        intermediates,
        &ServerName::try_from(server_name.to_owned())?,
        &[],
        UnixTime::now(),
    )?;
    Ok(())
}

fn issue(ca: &LocalCa, name: &str) -> Result<Arc<TlsCertificate>> {
    ca.certificate_for(name)
        .with_context(|| format!("no certificate issued for {name}"))
}

#[test]
fn reload_gives_the_same_ca() -> Result<()> {
    let dir = ScratchDir::new()?;
    let created = LocalCa::load_or_create(&dir.0)?;
    let key_before = fs::read(dir.ca_file(ROOT_KEY_FILE))?;
    let reloaded = LocalCa::load_or_create(&dir.0)?;

    assert_eq!(created.ca_certificate_pem(), reloaded.ca_certificate_pem());
    assert_eq!(created.ca_certificate_der(), reloaded.ca_certificate_der());
    assert_eq!(key_before, fs::read(dir.ca_file(ROOT_KEY_FILE))?);
    assert_eq!(
        fs::read_to_string(created.ca_certificate_path())?,
        created.ca_certificate_pem()
    );
    // Trust survives a restart: a leaf from the reloaded CA verifies against the first root.
    verify(
        created.ca_certificate_der(),
        &issue(&reloaded, "app.example.com")?,
        "app.example.com",
    )?;
    Ok(())
}

#[test]
fn root_is_a_ten_year_ecdsa_ca_named_torhaus_local_ca() -> Result<()> {
    let dir = ScratchDir::new()?;
    let ca = LocalCa::load_or_create(&dir.0)?;
    let (_, root) = x509_parser::parse_x509_certificate(ca.ca_certificate_der())?;

    assert!(root.is_ca());
    let common_names: Vec<&str> = root
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .collect();
    assert_eq!(common_names, vec![ROOT_COMMON_NAME]);
    assert!(
        root.key_usage()?
            .context("no keyUsage")?
            .value
            .key_cert_sign()
    );
    let lifetime = root.validity().not_after.timestamp() - root.validity().not_before.timestamp();
    assert_eq!(lifetime, (ROOT_VALIDITY + BACKDATE).whole_seconds());
    assert_eq!(
        root.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    Ok(())
}

#[test]
fn issued_leaf_verifies_against_the_root_and_only_for_its_name() -> Result<()> {
    let dir = ScratchDir::new()?;
    let ca = LocalCa::load_or_create(&dir.0)?;
    let leaf = issue(&ca, "App.Example.com.")?;

    verify(ca.ca_certificate_der(), &leaf, "app.example.com")?;
    assert!(verify(ca.ca_certificate_der(), &leaf, "other.example.com").is_err());

    assert_eq!(leaf.source, "local CA");
    assert_eq!(leaf.dns_names, vec!["app.example.com".to_owned()]);
    assert!(leaf.covers("app.example.com"));
    assert_eq!(leaf.chain.len(), 2);
    assert_eq!(&leaf.chain[1], ca.ca_certificate_der());
    let expected_not_after = (OffsetDateTime::now_utc() + LEAF_VALIDITY).unix_timestamp();
    assert!((leaf.not_after_unix - expected_not_after).abs() <= 5);
    // The key is the leaf's own, as the data plane will check when building its CertifiedKey.
    CertifiedKey::from_der(
        leaf.chain.clone(),
        leaf.key.clone_key(),
        &default_provider(),
    )?
    .keys_match()?;
    Ok(())
}

#[test]
fn leaf_from_another_ca_does_not_verify() -> Result<()> {
    let first = ScratchDir::new()?;
    let second = ScratchDir::new()?;
    let ours = LocalCa::load_or_create(&first.0)?;
    let theirs = LocalCa::load_or_create(&second.0)?;
    let leaf = issue(&theirs, "app.example.com")?;
    assert!(verify(ours.ca_certificate_der(), &leaf, "app.example.com").is_err());
    Ok(())
}

#[test]
fn ip_literals_get_an_ip_san() -> Result<()> {
    let dir = ScratchDir::new()?;
    let ca = LocalCa::load_or_create(&dir.0)?;
    for ip in ["127.0.0.1", "::1"] {
        let leaf = issue(&ca, ip)?;
        verify(ca.ca_certificate_der(), &leaf, ip)?;
        assert!(leaf.dns_names.is_empty(), "{ip}: {:?}", leaf.dns_names);
    }
    assert!(
        verify(
            ca.ca_certificate_der(),
            &issue(&ca, "127.0.0.1")?,
            "127.0.0.2"
        )
        .is_err()
    );
    Ok(())
}

#[test]
fn cache_returns_the_same_leaf_for_the_same_name() -> Result<()> {
    let dir = ScratchDir::new()?;
    let ca = LocalCa::load_or_create(&dir.0)?;
    let first = issue(&ca, "app.example.com")?;
    let again = issue(&ca, "APP.example.com.")?;
    let other = issue(&ca, "api.example.com")?;
    assert!(Arc::ptr_eq(&first, &again));
    assert!(!Arc::ptr_eq(&first, &other));
    Ok(())
}

#[test]
fn leaf_is_renewed_once_less_than_a_third_of_its_validity_remains() -> Result<()> {
    let dir = ScratchDir::new()?;
    let ca = LocalCa::load_or_create(&dir.0)?;
    let issued_at = OffsetDateTime::now_utc();
    let first = ca
        .leaf_at("app.example.com", issued_at)
        .context("not issued")?;

    let still_fresh = issued_at + LEAF_VALIDITY * 2_i32 / 3_i32 - Duration::minutes(1);
    let kept = ca
        .leaf_at("app.example.com", still_fresh)
        .context("not issued")?;
    assert!(Arc::ptr_eq(&first, &kept));

    let due = issued_at + LEAF_VALIDITY * 2_i32 / 3_i32 + Duration::minutes(1);
    let renewed = ca.leaf_at("app.example.com", due).context("not issued")?;
    assert!(!Arc::ptr_eq(&first, &renewed));
    assert_eq!(
        renewed.not_after_unix,
        (due + LEAF_VALIDITY).unix_timestamp()
    );
    Ok(())
}

#[test]
fn cache_stays_within_its_bound() -> Result<()> {
    let dir = ScratchDir::new()?;
    let mut ca = LocalCa::load_or_create(&dir.0)?;
    ca.max_cached_leaves = 3;
    let now = OffsetDateTime::now_utc();
    let first = ca.leaf_at("a.example.com", now).context("a")?;
    for (offset, name) in ["b.example.com", "c.example.com", "d.example.com"]
        .into_iter()
        .enumerate()
    {
        let later = now + Duration::seconds(i64::try_from(offset)? + 1);
        ca.leaf_at(name, later).context("issue")?;
    }
    let leaves = ca.leaves.read().unwrap_or_else(PoisonError::into_inner);
    assert_eq!(leaves.len(), 3);
    // The leaf expiring first made room.
    assert!(!leaves.contains_key("a.example.com"));
    drop(leaves);
    let reissued = ca.leaf_at("a.example.com", now).context("a again")?;
    assert!(!Arc::ptr_eq(&first, &reissued));
    Ok(())
}

#[test]
fn names_that_are_neither_dns_names_nor_ips_are_refused() -> Result<()> {
    let dir = ScratchDir::new()?;
    let ca = LocalCa::load_or_create(&dir.0)?;
    let too_long = format!("{}.example.com", "a".repeat(250));
    let label_too_long = format!("{}.example.com", "a".repeat(64));
    for name in [
        "",
        ".",
        "*.example.com",
        "*",
        "exa mple.com",
        "-bad.example.com",
        "a..example.com",
        "under_score.example.com",
        "example.com:443",
        "[::1]",
        "café.example.com",
        too_long.as_str(),
        label_too_long.as_str(),
    ] {
        assert!(ca.certificate_for(name).is_none(), "issued for {name:?}");
    }
    assert!(
        ca.leaves
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    );
    // Single-label names are valid DNS names and common on a LAN.
    verify(
        ca.ca_certificate_der(),
        &issue(&ca, "localhost")?,
        "localhost",
    )?;
    Ok(())
}

#[test]
fn files_are_private_and_no_temporary_files_remain() -> Result<()> {
    let dir = ScratchDir::new()?;
    LocalCa::load_or_create(&dir.0)?;
    let mode =
        |path: &Path| -> Result<u32> { Ok(fs::metadata(path)?.permissions().mode() & 0o777) };
    assert_eq!(mode(&dir.0.join(CA_DIR))?, 0o700);
    assert_eq!(mode(&dir.ca_file(ROOT_KEY_FILE))?, 0o600);
    // The certificate is public; only group/other write would matter, and the umask decides.
    assert_eq!(mode(&dir.ca_file(ROOT_CERT_FILE))? & 0o022, 0);
    let mut names: Vec<String> = fs::read_dir(dir.0.join(CA_DIR))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    assert_eq!(names, vec![ROOT_CERT_FILE, ROOT_KEY_FILE]);
    Ok(())
}

#[test]
fn corrupt_key_file_is_an_error_naming_it_and_nothing_is_regenerated() -> Result<()> {
    let dir = ScratchDir::new()?;
    LocalCa::load_or_create(&dir.0)?;
    let key_path = dir.ca_file(ROOT_KEY_FILE);
    let certificate_before = fs::read(dir.ca_file(ROOT_CERT_FILE))?;
    fs::write(
        &key_path,
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    )?;

    let error = match LocalCa::load_or_create(&dir.0) {
        Ok(_) => bail!("a corrupt key loaded"),
        Err(error) => error,
    };
    assert!(
        matches!(&error, LocalCaError::Corrupt { path, .. } if *path == key_path),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&key_path.display().to_string()),
        "{error}"
    );
    assert_eq!(certificate_before, fs::read(dir.ca_file(ROOT_CERT_FILE))?);
    assert!(fs::read_to_string(&key_path)?.contains("garbage"));
    Ok(())
}

#[test]
fn corrupt_certificate_file_is_an_error_naming_it() -> Result<()> {
    let dir = ScratchDir::new()?;
    LocalCa::load_or_create(&dir.0)?;
    let certificate_path = dir.ca_file(ROOT_CERT_FILE);
    for contents in [
        &b"not pem at all"[..],
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        &[0xff, 0xfe, 0x00],
    ] {
        fs::write(&certificate_path, contents)?;
        match LocalCa::load_or_create(&dir.0) {
            Ok(_) => bail!("a corrupt certificate loaded: {contents:?}"),
            Err(LocalCaError::Corrupt { path, .. }) => assert_eq!(path, certificate_path),
            Err(other) => bail!("unexpected error: {other}"),
        }
    }
    Ok(())
}

#[test]
fn certificate_of_another_key_is_a_mismatch() -> Result<()> {
    let ours = ScratchDir::new()?;
    let theirs = ScratchDir::new()?;
    LocalCa::load_or_create(&ours.0)?;
    LocalCa::load_or_create(&theirs.0)?;
    fs::copy(theirs.ca_file(ROOT_CERT_FILE), ours.ca_file(ROOT_CERT_FILE))?;
    match LocalCa::load_or_create(&ours.0) {
        Ok(_) => bail!("a mismatched pair loaded"),
        Err(LocalCaError::KeyMismatch { certificate, key }) => {
            assert_eq!(certificate, ours.ca_file(ROOT_CERT_FILE));
            assert_eq!(key, ours.ca_file(ROOT_KEY_FILE));
        }
        Err(other) => bail!("unexpected error: {other}"),
    }
    Ok(())
}

#[test]
fn missing_key_next_to_a_certificate_is_an_error() -> Result<()> {
    let dir = ScratchDir::new()?;
    LocalCa::load_or_create(&dir.0)?;
    fs::remove_file(dir.ca_file(ROOT_KEY_FILE))?;
    match LocalCa::load_or_create(&dir.0) {
        Ok(_) => bail!("a new key was generated next to the old certificate"),
        Err(LocalCaError::MissingKey { key, .. }) => assert_eq!(key, dir.ca_file(ROOT_KEY_FILE)),
        Err(other) => bail!("unexpected error: {other}"),
    }
    assert!(!dir.ca_file(ROOT_KEY_FILE).exists());
    Ok(())
}

#[test]
fn key_without_certificate_completes_the_interrupted_creation() -> Result<()> {
    let dir = ScratchDir::new()?;
    LocalCa::load_or_create(&dir.0)?;
    let key_before = fs::read(dir.ca_file(ROOT_KEY_FILE))?;
    fs::remove_file(dir.ca_file(ROOT_CERT_FILE))?;

    let ca = LocalCa::load_or_create(&dir.0)?;
    assert_eq!(key_before, fs::read(dir.ca_file(ROOT_KEY_FILE))?);
    verify(
        ca.ca_certificate_der(),
        &issue(&ca, "app.example.com")?,
        "app.example.com",
    )?;
    Ok(())
}

#[test]
fn expired_root_is_an_error_not_a_replacement() -> Result<()> {
    let dir = ScratchDir::new()?;
    let long_ago = OffsetDateTime::now_utc() - ROOT_VALIDITY - Duration::days(1);
    LocalCa::load_or_create_at(&dir.0, long_ago)?;
    let certificate_before = fs::read(dir.ca_file(ROOT_CERT_FILE))?;
    match LocalCa::load_or_create(&dir.0) {
        Ok(_) => bail!("an expired root loaded"),
        Err(LocalCaError::Expired { path, .. }) => assert_eq!(path, dir.ca_file(ROOT_CERT_FILE)),
        Err(other) => bail!("unexpected error: {other}"),
    }
    assert_eq!(certificate_before, fs::read(dir.ca_file(ROOT_CERT_FILE))?);
    Ok(())
}

#[test]
fn unwritable_state_dir_is_an_io_error_naming_the_directory() -> Result<()> {
    let dir = ScratchDir::new()?;
    // A regular file where the state directory should be.
    let blocker = dir.0.join("not-a-directory");
    fs::write(&blocker, "")?;
    match LocalCa::load_or_create(&blocker) {
        Ok(_) => bail!("created a CA inside a file"),
        Err(error @ LocalCaError::Io { .. }) => {
            assert!(error.to_string().contains("not-a-directory"), "{error}");
        }
        Err(other) => bail!("unexpected error: {other}"),
    }
    Ok(())
}
