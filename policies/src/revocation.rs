//! Revoked sessions: our session ids (RP logout), provider session ids and subjects
//! (back-channel logout). Readers on the request path only load a snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::jwt::now_secs;

/// What a back-channel logout or a logout revoked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Revoked {
    /// One of our session ids.
    Session(String),
    /// The provider's session id (`sid`): every session created under it.
    ProviderSession(String),
    /// Every session of `sub` issued at or before the revocation time.
    Subject(String),
}

#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// Entry -> (revoked at, forget after) in unix seconds.
    entries: HashMap<Revoked, (u64, u64)>,
}

/// A revocation list shared by every policy of a process. Entries are kept until the longest
/// session they can affect has expired. Export and import let replicas share it, and
/// [`RevocationList::subscribe`] tells a replication task when there is something to share.
#[derive(Debug)]
pub struct RevocationList {
    snapshot: ArcSwap<Snapshot>,
    /// Serializes writers only; readers never take it.
    write: Mutex<()>,
    /// Bumped whenever an entry is added or extended.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for RevocationList {
    fn default() -> Self {
        Self {
            snapshot: ArcSwap::default(),
            write: Mutex::new(()),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl RevocationList {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Wakes whenever entries are added or extended (locally or by [`RevocationList::insert`]).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Revokes `what` now, remembering it for `keep_secs`.
    pub fn revoke(&self, what: Revoked, keep_secs: u64) {
        let now = now_secs();
        self.insert(vec![(what, now, now + keep_secs)]);
    }

    /// Merges entries from another replica: `(what, revoked_at, forget_after)`.
    pub fn insert(&self, entries: Vec<(Revoked, u64, u64)>) {
        let _guard = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = now_secs();
        let mut next = (**self.snapshot.load()).clone();
        next.entries.retain(|_, (_, until)| *until > now);
        let mut changed = false;
        for (what, at, until) in entries {
            if until <= now {
                continue;
            }
            let slot = next.entries.entry(what).or_insert((0, 0));
            if at > slot.0 || until > slot.1 {
                changed = true;
            }
            slot.0 = slot.0.max(at);
            slot.1 = slot.1.max(until);
        }
        self.snapshot.store(Arc::new(next));
        if changed {
            self.changes.send_modify(|version| *version += 1);
        }
    }

    /// Every live entry, for replication to other replicas.
    pub fn export(&self) -> Vec<(Revoked, u64, u64)> {
        let now = now_secs();
        self.snapshot
            .load()
            .entries
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(w, (at, until))| (w.clone(), *at, *until))
            .collect()
    }

    /// Is a session with these ids, issued at `issued_at`, revoked? Lock-free.
    pub fn is_revoked(
        &self,
        session_id: &str,
        sid: Option<&str>,
        sub: &str,
        issued_at: u64,
    ) -> bool {
        let snap = self.snapshot.load();
        if snap.entries.is_empty() {
            return false;
        }
        let hit = |k: Revoked| snap.entries.get(&k).map(|(at, _)| *at);
        hit(Revoked::Session(session_id.to_owned())).is_some()
            || sid.is_some_and(|s| hit(Revoked::ProviderSession(s.to_owned())).is_some())
            || hit(Revoked::Subject(sub.to_owned())).is_some_and(|at| issued_at <= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_by_session_sid_and_subject() {
        let list = RevocationList::new();
        let now = now_secs();
        assert!(!list.is_revoked("a", Some("sid"), "alice", now));
        list.revoke(Revoked::Session("a".into()), 60);
        assert!(list.is_revoked("a", None, "alice", now));
        assert!(!list.is_revoked("b", None, "alice", now));
        list.revoke(Revoked::ProviderSession("sid-1".into()), 60);
        assert!(list.is_revoked("b", Some("sid-1"), "bob", now));
        list.revoke(Revoked::Subject("carol".into()), 60);
        assert!(list.is_revoked("c", None, "carol", now));
        assert!(
            !list.is_revoked("c", None, "carol", now + 5),
            "a later login stays valid"
        );
    }

    #[test]
    fn export_and_import_replicate() {
        let a = RevocationList::new();
        a.revoke(Revoked::ProviderSession("sid-9".into()), 60);
        let b = RevocationList::new();
        b.insert(a.export());
        assert!(b.is_revoked("x", Some("sid-9"), "u", now_secs()));
        b.insert(vec![(Revoked::Session("old".into()), 1, 2)]);
        assert!(
            b.export()
                .iter()
                .all(|(w, _, _)| *w != Revoked::Session("old".into()))
        );
    }
}
