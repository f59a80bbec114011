//! A bounded map whose entries expire a fixed time after insertion: what the
//! session cache needs and no more. Keys are hashed once (with a per-process random
//! seed) to 64 bits and the map stores only that hash, the value and a 32-bit
//! insertion time, so an entry costs about 24 bytes beside its value; the value is
//! asked whether it belongs to the key looked up ([`Keyed`]), so a hash collision
//! is a miss, never another key's value. Sixteen shards under read-write locks keep
//! event loops from contending on reads.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// A value that knows its own key.
pub trait Keyed {
    fn has_key(&self, key: &str) -> bool;
}

type Shard<V> = RwLock<HashMap<u64, Entry<V>, BuildHasherDefault<Prehashed>>>;

#[derive(Debug)]
pub struct ExpiringMap<V> {
    shards: Vec<Shard<V>>,
    seed: RandomState,
    epoch: Instant,
    ttl_secs: u32,
    per_shard: usize,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    /// Seconds since the map's epoch.
    inserted: u32,
}

/// The keys are hashes already.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in rather than panic.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl<V: Clone + Keyed> ExpiringMap<V> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            seed: RandomState::new(),
            epoch: Instant::now(),
            ttl_secs: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn hash(&self, key: &str) -> u64 {
        self.seed.hash_one(key)
    }

    fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn shard(&self, hash: u64) -> &Shard<V> {
        // The high bits pick the shard; the map uses the whole hash.
        &self.shards[(hash >> 60) as usize % SHARDS]
    }

    fn live(&self, entry: &Entry<V>, now: u32) -> bool {
        now.saturating_sub(entry.inserted) < self.ttl_secs
    }

    pub fn get(&self, key: &str) -> Option<V> {
        let hash = self.hash(key);
        let shard = read(self.shard(hash));
        let entry = shard.get(&hash)?;
        (self.live(entry, self.now()) && entry.value.has_key(key)).then(|| entry.value.clone())
    }

    #[cfg(test)]
    pub fn insert(&self, key: &str, value: V) {
        self.insert_if(key, value, || true);
    }

    /// Inserts unless `still` says no, asked under the shard's lock: a removal or
    /// clear that runs after `still` answered waits for the lock and removes the
    /// entry, so a caller that checks an invalidation epoch in `still` can never
    /// install a value an invalidation meant to remove.
    pub fn insert_if(&self, key: &str, value: V, still: impl FnOnce() -> bool) -> bool {
        let hash = self.hash(key);
        let now = self.now();
        let mut shard = write(self.shard(hash));
        if !still() {
            return false;
        }
        if shard.len() >= self.per_shard
            && !shard.contains_key(&hash)
            && let Some(victim) = shard.keys().next().copied()
        {
            // Full (expired entries are purged by `purge_expired`, every minute):
            // one arbitrary entry makes room, in constant time.
            shard.remove(&victim);
        }
        shard.insert(
            hash,
            Entry {
                value,
                inserted: now,
            },
        );
        true
    }

    pub fn remove(&self, key: &str) {
        let hash = self.hash(key);
        let mut shard = write(self.shard(hash));
        if shard.get(&hash).is_some_and(|e| e.value.has_key(key)) {
            shard.remove(&hash);
        }
    }

    pub fn clear(&self) {
        for shard in &self.shards {
            write(shard).clear();
        }
    }

    /// Drops expired entries (the map never returns them; this gives back memory).
    pub fn purge_expired(&self) {
        let now = self.now();
        for shard in &self.shards {
            write(shard).retain(|_, entry| now.saturating_sub(entry.inserted) < self.ttl_secs);
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct V(&'static str);

    impl Keyed for V {
        fn has_key(&self, key: &str) -> bool {
            self.0 == key
        }
    }

    #[test]
    fn get_insert_remove_clear() {
        let map = ExpiringMap::new(100, Duration::from_secs(300));
        map.insert("a", V("a"));
        map.insert("b", V("b"));
        assert_eq!(map.get("a"), Some(V("a")));
        assert_eq!(map.get("c"), None);
        map.remove("a");
        assert_eq!(map.get("a"), None);
        assert_eq!(map.len(), 1);
        map.clear();
        assert_eq!(map.get("b"), None);
    }

    #[test]
    fn a_value_under_another_key_is_a_miss() {
        // As if "x" collided with "y": the value says whose it is.
        let map = ExpiringMap::new(100, Duration::from_secs(300));
        let hash = map.hash("x");
        write(map.shard(hash)).insert(
            hash,
            Entry {
                value: V("y"),
                inserted: 0,
            },
        );
        assert_eq!(map.get("x"), None);
    }

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let map = ExpiringMap::new(100, Duration::from_secs(0));
        map.insert("a", V("a"));
        assert_eq!(map.get("a"), None, "a zero lifetime expires at once");
        let map = ExpiringMap::new(SHARDS * 2, Duration::from_secs(300));
        let keys: Vec<&'static str> = (0..1000)
            .map(|i| &*Box::leak(format!("k{i}").into_boxed_str()))
            .collect();
        for key in &keys {
            map.insert(key, V(key));
        }
        assert!(map.len() <= SHARDS * 2, "{}", map.len());
    }
}
