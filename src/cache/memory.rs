//! L1: an in-process moka cache bounded by bytes, each entry expiring with its own
//! storage lifetime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use moka::Expiry;
use moka::notification::RemovalCause;
use moka::sync::Cache;

use super::object::Entry;

pub struct MemoryTier {
    cache: Cache<Arc<str>, Entry>,
    pub evictions: Arc<AtomicU64>,
}

struct EntryLifetime;

impl Expiry<Arc<str>, Entry> for EntryLifetime {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Entry,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.keep_for(SystemTime::now()))
    }
    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        value: &Entry,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep_for(SystemTime::now()))
    }
}

impl MemoryTier {
    pub fn new(capacity_bytes: u64) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&evictions);
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &Arc<str>, value: &Entry| {
                value.weight().saturating_add(key.len() as u32)
            })
            .expire_after(EntryLifetime)
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Relaxed);
                }
            })
            .build();
        Self { cache, evictions }
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.cache.get(key)
    }

    pub fn insert(&self, key: &str, entry: Entry) {
        self.cache.insert(Arc::from(key), entry);
    }

    pub fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    /// Drops (or, with `soft`, marks stale) every entry whose key `matches`.
    pub fn purge_where(
        &self,
        soft: bool,
        matches: impl Fn(&str, &Entry) -> bool + Send + Sync + 'static,
    ) -> usize {
        let keys: Vec<Arc<str>> = self
            .cache
            .iter()
            .filter(|(k, v)| matches(k, v))
            .map(|(k, _)| Arc::clone(&*k))
            .collect();
        for key in &keys {
            match (soft, self.cache.get(key.as_ref())) {
                (true, Some(Entry::Response(r))) => {
                    self.cache
                        .insert(Arc::clone(key), Entry::Response(Arc::new(r.marked_stale())));
                }
                (true, _) => {}
                (false, _) => self.cache.invalidate(key.as_ref()),
            }
        }
        keys.len()
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Runs moka's pending maintenance so counts are current (tests and metrics).
    pub fn sync(&self) {
        self.cache.run_pending_tasks();
    }
}
