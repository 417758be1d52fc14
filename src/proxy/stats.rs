//! Counters the data plane publishes for metrics, the admin port and the control loop.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use http::StatusCode;

use crate::upstream::signals::LatencyHistogram;

/// Serving runtimes counted apart in [`ProxyStats::connections_by_runtime`]; more share
/// the last slot.
pub const COUNTED_RUNTIMES: usize = 64;

#[derive(Debug)]
pub struct ProxyStats {
    pub connections_accepted: AtomicU64,
    /// Connections accepted by each serving runtime (see `supervisor::workers`): whether
    /// the kernel spreads them evenly across the `SO_REUSEPORT` sockets.
    pub connections_by_runtime: [AtomicU64; COUNTED_RUNTIMES],
    /// Refused because the listener was at `max_connections`.
    pub connections_refused: AtomicU64,
    pub connections_active: AtomicU64,
    /// Closed for a missing or malformed PROXY protocol header.
    pub proxy_header_refused: AtomicU64,
    pub requests: AtomicU64,
    /// Responses sent to clients by class, index 0 = 1xx … 4 = 5xx, including weir's own.
    pub responses: [AtomicU64; 5],
}

impl Default for ProxyStats {
    fn default() -> Self {
        Self {
            connections_accepted: AtomicU64::new(0),
            connections_by_runtime: std::array::from_fn(|_| AtomicU64::new(0)),
            connections_refused: AtomicU64::new(0),
            connections_active: AtomicU64::new(0),
            proxy_header_refused: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            responses: Default::default(),
        }
    }
}

impl ProxyStats {
    pub fn record_response(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Relaxed);
    }

    pub fn responses_of_class(&self, class: u16) -> u64 {
        match class {
            1..=5 => self.responses[class as usize - 1].load(Relaxed),
            _ => 0,
        }
    }
}

/// Per-route counters, kept across reloads for routes of the same name.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Responses by class, index 0 = 1xx … 4 = 5xx, including weir's own.
    pub responses: [AtomicU64; 5],
    /// Request start to response head, retries included.
    pub latency: LatencyHistogram,
    /// gRPC calls by the status they ended with (index = code), weir's own included.
    pub grpc: [AtomicU64; 17],
    /// Cache lookups on the route by [`CacheLookup`]: hits from memory, from Redis, and
    /// the rest (misses and stale answers). Its hit ratios per tier come from these.
    pub cache: [AtomicU64; 3],
}

/// How a cache lookup on a route went, as the route counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLookup {
    MemoryHit = 0,
    RedisHit = 1,
    /// A miss, or an answer that was not fresh (stale, revalidated).
    Other = 2,
}

impl RouteStats {
    pub fn record(&self, status: StatusCode, elapsed: std::time::Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Relaxed);
        self.latency.record(elapsed);
    }

    pub fn record_cache(&self, lookup: CacheLookup) {
        self.cache[lookup as usize].fetch_add(1, Relaxed);
    }

    pub fn record_grpc(&self, code: u8) {
        if let Some(counter) = self.grpc.get(usize::from(code)) {
            counter.fetch_add(1, Relaxed);
        }
    }
}
