//! A small least-recently-used cache bounded by the total weight of what it holds
//! (bytes: of the blobs, of the bundles, of the trees with their index). Eviction scans
//! the entries: there are a few hundred at most.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::format::Id;

struct Slot<V> {
    value: Arc<V>,
    weight: u64,
    used: u64,
}

struct Inner<K, V> {
    slots: HashMap<K, Slot<V>>,
    total: u64,
    tick: u64,
}

/// Keyed by `K`: a blob's or a tree's id, or where a bundle is.
pub struct Lru<V, K = Id> {
    inner: Mutex<Inner<K, V>>,
    budget: u64,
}

impl<V, K: Copy + Eq + Hash> Lru<V, K> {
    pub fn new(budget: u64) -> Lru<V, K> {
        Lru {
            inner: Mutex::new(Inner {
                slots: HashMap::new(),
                total: 0,
                tick: 0,
            }),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        // A panic elsewhere leaves the cache consistent enough: every step below is whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &K) -> Option<Arc<V>> {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        let slot = g.slots.get_mut(id)?;
        slot.used = tick;
        Some(slot.value.clone())
    }

    /// Keeps `value`, evicting the least recently used until the budget holds; a value
    /// heavier than the whole budget is kept alone. It is in memory anyway while it is
    /// used, and the tree of a directory larger than the budget, looked up in name after
    /// name by `ls -l`, would otherwise be read and decrypted again for every name.
    pub fn put(&self, id: K, value: Arc<V>, weight: u64) {
        let mut g = self.lock();
        g.tick += 1;
        let used = g.tick;
        if let Some(old) = g.slots.insert(
            id,
            Slot {
                value,
                weight,
                used,
            },
        ) {
            g.total -= old.weight;
        }
        g.total += weight;
        while g.total > self.budget {
            let Some(victim) = g
                .slots
                .iter()
                .filter(|(k, _)| **k != id)
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(s) = g.slots.remove(&victim) {
                g.total -= s.weight;
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_within_budget() {
        let c: Lru<u8> = Lru::new(10);
        c.put(Id([1; 32]), Arc::new(1), 4);
        c.put(Id([2; 32]), Arc::new(2), 4);
        assert!(c.get(&Id([1; 32])).is_some());
        c.put(Id([3; 32]), Arc::new(3), 4);
        assert!(c.get(&Id([2; 32])).is_none(), "2 was least recently used");
        assert!(c.get(&Id([1; 32])).is_some() && c.get(&Id([3; 32])).is_some());
        c.put(Id([4; 32]), Arc::new(4), 11);
        assert_eq!(c.len(), 1, "heavier than the budget: kept alone");
        assert!(c.get(&Id([4; 32])).is_some());
        c.put(Id([5; 32]), Arc::new(5), 4);
        assert!(c.get(&Id([4; 32])).is_none() && c.get(&Id([5; 32])).is_some());
    }
}
