//! Counters the cache publishes for `/metrics` and the demo summary.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::Tier;

#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits_memory: AtomicU64,
    pub hits_redis: AtomicU64,
    pub hit_bytes_memory: AtomicU64,
    pub hit_bytes_redis: AtomicU64,
    pub misses: AtomicU64,
    pub miss_bytes: AtomicU64,
    /// Served stale (stale-while-revalidate, stale-if-error).
    pub stale: AtomicU64,
    /// Stale entries refreshed by a 304.
    pub revalidated: AtomicU64,
    /// Requests on caching routes the cache could not take part in (method, Range…).
    pub bypass: AtomicU64,
    pub stores: AtomicU64,
    pub stored_bytes: AtomicU64,
    /// Responses too large to store; they streamed through.
    pub too_large: AtomicU64,
    /// Misses that waited for another request's fetch.
    pub coalesced: AtomicU64,
    /// Answered 304 to the client's own conditional request.
    pub not_modified: AtomicU64,
    pub purges: AtomicU64,
    pub warmed: AtomicU64,
}

impl CacheStats {
    pub fn record_hit(&self, tier: Tier, bytes: usize) {
        let (count, sum) = match tier {
            Tier::Memory => (&self.hits_memory, &self.hit_bytes_memory),
            Tier::Redis => (&self.hits_redis, &self.hit_bytes_redis),
        };
        count.fetch_add(1, Relaxed);
        sum.fetch_add(bytes as u64, Relaxed);
    }

    pub fn record_store(&self, bytes: u64) {
        self.stores.fetch_add(1, Relaxed);
        self.stored_bytes.fetch_add(bytes, Relaxed);
    }

    /// Hits over lookups (hits + misses + stale), 0 when nothing was looked up.
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.hits_memory.load(Relaxed) + self.hits_redis.load(Relaxed);
        let total = hits + self.misses.load(Relaxed) + self.stale.load(Relaxed);
        if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        }
    }
}
