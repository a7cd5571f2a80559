//! Revoked sessions shared by every replica through one Secret in torhaus's own namespace: a
//! back-channel logout reaches one replica (the provider calls one address), yet the session
//! must end on all of them. Each replica watches the Secret and merges what it holds into its
//! revocation list; a replica whose list gained entries merges them into the Secret
//! (read-modify-write with the resourceVersion, so concurrent writers never lose an entry).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use torhaus_policies::revocation::{RevocationList, Revoked};

/// The key of the Secret that holds the entries (JSON).
pub const REVOCATIONS_KEY: &str = "revocations.json";
/// Local revocations that arrive together are written together.
const BATCH_DELAY: Duration = Duration::from_millis(100);
/// Attempts at one read-modify-write before waiting for the next change (or retry tick).
const WRITE_ATTEMPTS: usize = 5;
/// How long after a failed write it is tried again, when nothing else happens.
const RETRY_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    what: Revoked,
    at: u64,
    until: u64,
}

fn decode(secret: &Secret) -> Result<Vec<Entry>, String> {
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(REVOCATIONS_KEY)) else {
        return Ok(Vec::new());
    };
    serde_json::from_slice(&bytes.0).map_err(|error| format!("{REVOCATIONS_KEY}: {error}"))
}

/// `theirs` plus `ours`, one entry per revoked thing with the latest times; `None` when that
/// is what `theirs` already says.
fn merged(theirs: &[Entry], ours: Vec<(Revoked, u64, u64)>) -> Option<Vec<Entry>> {
    let mut all: BTreeMap<String, Entry> = BTreeMap::new();
    let key = |what: &Revoked| serde_json::to_string(what).unwrap_or_default();
    for entry in theirs {
        all.insert(key(&entry.what), entry.clone());
    }
    let mut changed = false;
    for (what, at, until) in ours {
        match all.get_mut(&key(&what)) {
            Some(entry) if entry.at >= at && entry.until >= until => {}
            Some(entry) => {
                entry.at = entry.at.max(at);
                entry.until = entry.until.max(until);
                changed = true;
            }
            None => {
                all.insert(key(&what), Entry { what, at, until });
                changed = true;
            }
        }
    }
    changed.then(|| all.into_values().collect())
}

fn secret_with(meta: ObjectMeta, entries: &[Entry]) -> Result<Secret, serde_json::Error> {
    let json = serde_json::to_vec(entries)?;
    Ok(Secret {
        metadata: meta,
        type_: Some("Opaque".to_owned()),
        data: Some([(REVOCATIONS_KEY.to_owned(), ByteString(json))].into()),
        ..Secret::default()
    })
}

/// Keeps `list` and the Secret `namespace/name` in step until the task is aborted.
pub fn spawn_revocation_sync(
    client: kube::Client,
    namespace: &str,
    name: &str,
    list: Arc<RevocationList>,
) -> JoinHandle<()> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let name = name.to_owned();
    // Subscribed before the task runs, and marked changed: revocations made before the first
    // poll are shared too.
    let mut changes = list.subscribe();
    changes.mark_changed();
    tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher::watcher(api.clone(), config)
            .default_backoff()
            .boxed();
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(Event::Apply(secret) | Event::InitApply(secret))) => {
                        match decode(&secret) {
                            Ok(entries) => list.insert(
                                entries.into_iter().map(|e| (e.what, e.at, e.until)).collect(),
                            ),
                            Err(error) => tracing::warn!(secret = %name, %error, "cannot read the shared session revocations"),
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => tracing::debug!(%error, "watching the shared session revocations"),
                    None => return,
                },
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::time::sleep(BATCH_DELAY).await;
                    changes.borrow_and_update();
                    retry_at = publish(&api, &name, &list).await.err().map(|error| {
                        tracing::warn!(secret = %name, %error, "cannot share session revocations with the other replicas; retrying");
                        tokio::time::Instant::now() + RETRY_AFTER
                    });
                }
                () = retry => {
                    retry_at = publish(&api, &name, &list).await.err().map(|error| {
                        tracing::warn!(secret = %name, %error, "cannot share session revocations with the other replicas; retrying");
                        tokio::time::Instant::now() + RETRY_AFTER
                    });
                }
            }
        }
    })
}

/// Merges the local entries into the Secret, creating it when missing.
async fn publish(api: &Api<Secret>, name: &str, list: &RevocationList) -> Result<(), String> {
    let mut last_error = String::new();
    for _ in 0..WRITE_ATTEMPTS {
        let current = api.get_opt(name).await.map_err(|e| e.to_string())?;
        let result = match current {
            None => {
                let Some(entries) = merged(&[], list.export()) else {
                    return Ok(());
                };
                let meta = ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(
                        [(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "torhaus".to_owned(),
                        )]
                        .into(),
                    ),
                    ..ObjectMeta::default()
                };
                let secret = secret_with(meta, &entries).map_err(|e| e.to_string())?;
                api.create(&PostParams::default(), &secret).await.map(drop)
            }
            Some(secret) => {
                // An unreadable value is replaced: it holds nothing this replica could merge.
                let theirs = decode(&secret).unwrap_or_default();
                let Some(entries) = merged(&theirs, list.export()) else {
                    return Ok(());
                };
                let replacement =
                    secret_with(secret.metadata.clone(), &entries).map_err(|e| e.to_string())?;
                api.replace(name, &PostParams::default(), &replacement)
                    .await
                    .map(drop)
            }
        };
        match result {
            Ok(()) => return Ok(()),
            // Another replica wrote first (409) or created it meanwhile: merge again.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                last_error = status.message;
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    Err(format!(
        "gave up after {WRITE_ATTEMPTS} conflicting writes: {last_error}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_the_latest_times_and_reports_no_change_when_nothing_is_new() {
        let theirs = vec![Entry {
            what: Revoked::ProviderSession("sid-1".into()),
            at: 10,
            until: 100,
        }];
        assert_eq!(
            merged(
                &theirs,
                vec![(Revoked::ProviderSession("sid-1".into()), 10, 50)]
            ),
            None
        );
        let out = merged(
            &theirs,
            vec![
                (Revoked::ProviderSession("sid-1".into()), 20, 200),
                (Revoked::Subject("bob".into()), 30, 300),
            ],
        );
        let out = out.unwrap_or_default();
        assert_eq!(out.len(), 2);
        assert!(out.contains(&Entry {
            what: Revoked::ProviderSession("sid-1".into()),
            at: 20,
            until: 200
        }));
    }
}
