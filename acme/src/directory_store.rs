//! The standalone store: issued certificates as `kubernetes.io/tls` Secret manifests in a
//! directory that the directory source reads as an extra root (so a new certificate goes live
//! through the normal watch → translate → swap path), ACME accounts beside it, and a file lock
//! that lets exactly one process on the machine order.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::watch;
use torhaus_model::ObjectName;

use crate::store::{CertificateStore, StoreError, StoredCertificate};

/// Certificates under `<root>/secrets/<namespace>/<name>.json`, accounts under
/// `<root>/accounts/<namespace>/<name>.json`, the leader lock at `<root>/leader.lock`.
#[derive(Debug, Clone)]
pub struct DirectoryStore {
    root: PathBuf,
}

impl DirectoryStore {
    /// A store rooted at `root` (created if missing, private to the user: it holds keys).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for dir in [root.clone(), root.join("secrets"), root.join("accounts")] {
            create_private_dir(&dir)?;
        }
        Ok(Self { root })
    }

    /// The directory of Secret manifests, to be read by the directory source as an extra root.
    pub fn secrets_dir(&self) -> PathBuf {
        Self::secrets_dir_of(&self.root)
    }

    /// [`DirectoryStore::secrets_dir`] of a store rooted at `root`, without opening (creating) it.
    pub fn secrets_dir_of(root: &Path) -> PathBuf {
        root.join("secrets")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("leader.lock")
    }

    fn certificate_path(&self, secret: &ObjectName) -> Result<PathBuf, StoreError> {
        Ok(self
            .secrets_dir()
            .join(path_component(&secret.namespace, secret)?)
            .join(format!("{}.json", path_component(&secret.name, secret)?)))
    }

    fn account_path(&self, secret: &ObjectName) -> Result<PathBuf, StoreError> {
        Ok(self
            .root
            .join("accounts")
            .join(path_component(&secret.namespace, secret)?)
            .join(format!("{}.json", path_component(&secret.name, secret)?)))
    }
}

/// Kubernetes object names are DNS labels/subdomains; anything else could escape the store.
fn path_component<'a>(part: &'a str, secret: &ObjectName) -> Result<&'a str, StoreError> {
    let valid = !part.is_empty()
        && part.len() <= 253
        && part != "."
        && part != ".."
        && !part.starts_with('.')
        && part
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if valid {
        Ok(part)
    } else {
        Err(StoreError::Invalid(format!(
            "Secret {secret}: {part:?} is not a valid Kubernetes name (lowercase letters, digits, '-' and '.')"
        )))
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))
}

/// Writes `bytes` to `path` atomically: a hidden temporary file in the same directory (the
/// directory source skips hidden files), flushed, then renamed over the target.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .ok_or_else(|| StoreError::Io(format!("{} has no parent directory", path.display())))?;
    create_private_dir(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        fastrand::u32(..)
    ));
    let io =
        |what: &str, e: std::io::Error| StoreError::Io(format!("{what} {}: {e}", path.display()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|e| io("cannot create a temporary file for", e))?;
        file.write_all(bytes).map_err(|e| io("cannot write", e))?;
        file.sync_all().map_err(|e| io("cannot flush", e))?;
        std::fs::rename(&temporary, path).map_err(|e| io("cannot replace", e))?;
        // The rename itself must survive a crash too.
        if let Ok(directory) = File::open(dir) {
            let _ = directory.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// The manifest of a `kubernetes.io/tls` Secret holding `certificate`.
fn secret_manifest(secret: &ObjectName, certificate: &StoredCertificate) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret.name,
            "namespace": secret.namespace,
            "annotations": certificate.annotations,
            "labels": {"app.kubernetes.io/managed-by": "torhaus"},
        },
        "type": "kubernetes.io/tls",
        "stringData": {
            "tls.crt": certificate.chain_pem,
            "tls.key": certificate.key_pem,
        },
    })
}

fn parse_secret_manifest(path: &Path, bytes: &[u8]) -> Result<StoredCertificate, StoreError> {
    let invalid = |why: String| StoreError::Invalid(format!("{}: {why}", path.display()));
    let manifest: Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let field = |name: &str| -> Result<String, StoreError> {
        if let Some(text) = manifest
            .pointer(&format!("/stringData/{}", name.replace('/', "~1")))
            .and_then(Value::as_str)
        {
            return Ok(text.to_owned());
        }
        if let Some(encoded) = manifest
            .get("data")
            .and_then(|d| d.get(name))
            .and_then(Value::as_str)
        {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| invalid(format!("data.{name} is not base64: {e}")))?;
            return String::from_utf8(bytes)
                .map_err(|_| invalid(format!("data.{name} is not UTF-8 PEM")));
        }
        Err(invalid(format!("has no {name}")))
    };
    let annotations: BTreeMap<String, String> = manifest
        .pointer("/metadata/annotations")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();
    Ok(StoredCertificate {
        chain_pem: field("tls.crt")?,
        key_pem: field("tls.key")?,
        annotations,
    })
}

#[async_trait]
impl CertificateStore for DirectoryStore {
    async fn load_certificate(
        &self,
        secret: &ObjectName,
    ) -> Result<Option<StoredCertificate>, StoreError> {
        let path = self.certificate_path(secret)?;
        match read_optional(&path)? {
            None => Ok(None),
            Some(bytes) => parse_secret_manifest(&path, &bytes).map(Some),
        }
    }

    async fn save_certificate(
        &self,
        secret: &ObjectName,
        certificate: &StoredCertificate,
    ) -> Result<(), StoreError> {
        let path = self.certificate_path(secret)?;
        let bytes = serde_json::to_vec_pretty(&secret_manifest(secret, certificate))
            .map_err(|e| StoreError::Invalid(format!("Secret {secret}: {e}")))?;
        write_atomic(&path, &bytes)
    }

    async fn load_account(&self, secret: &ObjectName) -> Result<Option<Vec<u8>>, StoreError> {
        read_optional(&self.account_path(secret)?)
    }

    async fn save_account(
        &self,
        secret: &ObjectName,
        credentials: &[u8],
    ) -> Result<(), StoreError> {
        write_atomic(&self.account_path(secret)?, credentials)
    }
}

/// Becomes leader by holding an exclusive lock on `path` (released by the kernel when the
/// process exits, so a crashed leader never blocks the others). The receiver turns `true` once
/// the lock is held; a follower retries every `poll`.
pub fn spawn_leader_lock(
    path: PathBuf,
    poll: Duration,
) -> Result<watch::Receiver<bool>, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| {
            StoreError::Io(format!("cannot open the lock file {}: {e}", path.display()))
        })?;
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        let mut logged = false;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    tracing::info!(lock = %path.display(), "this process orders certificates (holds the ACME lock)");
                    sender.send_replace(true);
                    // Held for as long as anybody listens; the lock goes with the file.
                    sender.closed().await;
                    return;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !logged {
                        tracing::info!(lock = %path.display(), "another process holds the ACME lock; this one loads the certificates it writes");
                        logged = true;
                    }
                }
                Err(std::fs::TryLockError::Error(error)) => {
                    tracing::error!(lock = %path.display(), %error, "cannot take the ACME lock; not ordering");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = sender.closed() => return,
            }
        }
    });
    Ok(receiver)
}

#[cfg(test)]
#[allow(clippy::expect_used, reason = "tests fail loudly on broken fixtures")]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "torhaus-store-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn certificate() -> StoredCertificate {
        StoredCertificate {
            chain_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n".into(),
            annotations: BTreeMap::from([("torhaus.dev/issuer".into(), "Issuer a/b".into())]),
        }
    }

    #[tokio::test]
    async fn certificates_round_trip_as_secret_manifests() {
        let dir = temp_dir("roundtrip");
        let store = DirectoryStore::open(&dir).expect("store");
        let secret = ObjectName::new("apps", "example-tls");
        assert!(
            store
                .load_certificate(&secret)
                .await
                .expect("load")
                .is_none()
        );
        store
            .save_certificate(&secret, &certificate())
            .await
            .expect("save");
        let loaded = store.load_certificate(&secret).await.expect("load");
        assert_eq!(loaded, Some(certificate()));
        let path = dir.join("secrets/apps/example-tls.json");
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("file")).expect("json");
        assert_eq!(manifest["kind"], "Secret");
        assert_eq!(manifest["type"], "kubernetes.io/tls");
        assert_eq!(manifest["metadata"]["namespace"], "apps");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "key material must be private");
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("secrets/apps"))
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn names_that_could_escape_the_store_are_refused() {
        let dir = temp_dir("escape");
        let store = DirectoryStore::open(&dir).expect("store");
        for (namespace, name) in [("..", "x"), ("apps", "../x"), ("apps", ""), ("Apps", "x")] {
            let secret = ObjectName::new(namespace, name);
            let error = store
                .save_certificate(&secret, &certificate())
                .await
                .expect_err("refused");
            assert!(
                error.to_string().contains("not a valid Kubernetes name"),
                "{error}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn accounts_round_trip() {
        let dir = temp_dir("account");
        let store = DirectoryStore::open(&dir).expect("store");
        let secret = ObjectName::new("torhaus-system", "le-account");
        assert!(store.load_account(&secret).await.expect("load").is_none());
        store.save_account(&secret, b"{}").await.expect("save");
        assert_eq!(
            store.load_account(&secret).await.expect("load").as_deref(),
            Some(&b"{}"[..])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn only_one_holder_of_the_leader_lock() {
        let dir = temp_dir("lock");
        let store = DirectoryStore::open(&dir).expect("store");
        let mut first =
            spawn_leader_lock(store.lock_path(), Duration::from_millis(20)).expect("first");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        tokio::time::timeout_at(deadline, first.wait_for(|held| *held))
            .await
            .expect("first becomes leader")
            .expect("watch");
        let second =
            spawn_leader_lock(store.lock_path(), Duration::from_millis(20)).expect("second");
        // Give the second several chances to (wrongly) take the lock.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!*second.borrow(), "two leaders at once");
        }
        // The first lets go: the second takes over.
        drop(first);
        let mut second = second;
        tokio::time::timeout_at(
            tokio::time::Instant::now() + Duration::from_secs(5),
            second.wait_for(|held| *held),
        )
        .await
        .expect("second becomes leader after the first released")
        .expect("watch");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
