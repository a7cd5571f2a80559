//! A bounded, lock-free memo of recent expensive results (verified bearer tokens, opened session
//! cookies), keyed by the exact credential string: a direct-mapped table whose slots are swapped
//! atomically, so a hit costs a hash, one atomic load and a comparison. Two keys that share a
//! slot simply evict each other; callers re-check every time-dependent condition on a hit.

use std::hash::BuildHasher as _;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

/// One remembered result and the credential it belongs to.
#[derive(Debug)]
pub(crate) struct Remembered<V> {
    key: Box<str>,
    pub(crate) value: V,
}

pub(crate) struct Recent<V> {
    slots: Box<[ArcSwapOption<Remembered<V>>]>,
    /// Randomly keyed per process: a client cannot aim its credentials at one slot.
    hasher: std::hash::RandomState,
}

impl<V> std::fmt::Debug for Recent<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent")
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl<V> Recent<V> {
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots.max(1)).map(|_| ArcSwapOption::empty()).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn slot(&self, key: &str) -> &ArcSwapOption<Remembered<V>> {
        let index = (self.hasher.hash_one(key) as usize) % self.slots.len();
        &self.slots[index]
    }

    /// What was remembered for exactly `key`, if it is still in its slot.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Remembered<V>>> {
        self.slot(key)
            .load_full()
            .filter(|remembered| &*remembered.key == key)
    }

    pub(crate) fn put(&self, key: &str, value: V) {
        self.slot(key).store(Some(Arc::new(Remembered {
            key: key.into(),
            value,
        })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_key_hits_and_a_slot_holds_one_entry() {
        let recent: Recent<u32> = Recent::new(1);
        assert!(recent.get("a").is_none());
        recent.put("a", 1);
        assert_eq!(recent.get("a").map(|r| r.value), Some(1));
        assert!(recent.get("a ").is_none());
        recent.put("b", 2);
        assert!(
            recent.get("a").is_none(),
            "evicted by the other key in its slot"
        );
        assert_eq!(recent.get("b").map(|r| r.value), Some(2));
    }
}
