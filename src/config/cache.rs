//! The `[cache]` and `[redis]` sections and the per-route `cache` table.

use std::time::Duration;

use serde::Deserialize;

use super::defaults::*;

/// The two-tier HTTP cache: an in-process L1 and, when `[redis]` is set, a shared L2.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub enabled: bool,
    /// L1 capacity: the sum of stored bodies and headers.
    #[serde(default = "d_cache_bytes")]
    pub memory_bytes: u64,
    /// Responses larger than this stream through uncached (routes may lower it).
    #[serde(default = "d_max_object")]
    pub max_object_bytes: u64,
    /// Concurrent misses for one key wait this long for the first one's response, then
    /// go upstream themselves.
    #[serde(with = "humantime_serde", default = "d_coalesce_wait")]
    pub coalesce_wait: Duration,
    /// Also coalesce across weir instances with a short Redis lock (`SET NX PX`).
    #[serde(default)]
    pub shared_lock: bool,
    /// How long past freshness an entry with a validator (ETag/Last-Modified) is kept so
    /// that it can be revalidated with a conditional request instead of fetched again.
    #[serde(with = "humantime_serde", default = "d_keep_stale")]
    pub keep_stale: Duration,
    /// How long past freshness a stored response may still answer when the origin cannot
    /// be reached at all (refused or reset connection, no response head in time): an
    /// outage then costs clients staleness, not errors. Responses that forbid stale use
    /// (`must-revalidate`, `proxy-revalidate`, `no-cache`, `s-maxage`) never get it; an
    /// origin's 5xx answer is served stale only under its own `stale-if-error`. `0s` turns
    /// it off.
    #[serde(with = "humantime_serde", default = "d_stale_if_unreachable")]
    pub stale_if_unreachable: Duration,
    /// Fraction of `now - Last-Modified` used as freshness when the origin gave none.
    #[serde(default = "d_heuristic")]
    pub heuristic_fraction: f32,
    /// URLs (`http://host/path`, host as routed) fetched into the cache at start.
    #[serde(default)]
    pub warm_urls: Vec<String>,
    #[serde(default = "d_warm_concurrency")]
    pub warm_concurrency: usize,
    /// Refresh the most requested entries shortly before they go stale.
    #[serde(default)]
    pub rewarm_hot: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            memory_bytes: DEFAULT_CACHE_MEMORY_BYTES,
            max_object_bytes: DEFAULT_CACHE_MAX_OBJECT_BYTES,
            coalesce_wait: DEFAULT_CACHE_COALESCE_WAIT,
            shared_lock: false,
            keep_stale: DEFAULT_CACHE_KEEP_STALE,
            stale_if_unreachable: DEFAULT_CACHE_STALE_IF_UNREACHABLE,
            heuristic_fraction: DEFAULT_CACHE_HEURISTIC,
            warm_urls: Vec::new(),
            warm_concurrency: DEFAULT_CACHE_WARM_CONCURRENCY,
            rewarm_hot: false,
        }
    }
}

/// Shared Redis: the cache's L2, the invalidation channel and the coalescing locks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// A standalone Redis: `redis://host:port/db` or `rediss://…`.
    #[serde(default)]
    pub url: Option<String>,
    /// A Redis Cluster instead: some of its nodes (`redis://host:port`); the rest of the
    /// topology is discovered from them.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
    /// Each Redis command gets this long; a slower one counts as a failure.
    #[serde(with = "humantime_serde", default = "d_redis_timeout")]
    pub timeout: Duration,
    /// Prefix of every key and channel weir uses, so instances of different clusters can
    /// share one Redis.
    #[serde(default = "d_redis_prefix")]
    pub key_prefix: String,
}

/// Where a route's responses may be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheTier {
    Memory,
    Redis,
}

/// How the query string enters the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueryKey {
    /// As sent.
    #[default]
    Keep,
    /// Parameters sorted, so `?b=1&a=2` and `?a=2&b=1` share an entry.
    Sorted,
    /// Left out of the key entirely.
    Ignore,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(default = "d_tiers")]
    pub tiers: Vec<CacheTier>,
    /// Freshness to use instead of the origin's (for responses that may be stored).
    #[serde(with = "humantime_serde", default)]
    pub ttl: Option<Duration>,
    #[serde(with = "humantime_serde", default)]
    pub min_ttl: Option<Duration>,
    #[serde(with = "humantime_serde", default)]
    pub max_ttl: Option<Duration>,
    pub max_object_bytes: Option<u64>,
    #[serde(default)]
    pub query: QueryKey,
    /// Request headers whose values are part of the key (beside the origin's `Vary`).
    #[serde(default)]
    pub key_headers: Vec<String>,
}

impl Default for RouteCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tiers: d_tiers(),
            ttl: None,
            min_ttl: None,
            max_ttl: None,
            max_object_bytes: None,
            query: QueryKey::Keep,
            key_headers: Vec::new(),
        }
    }
}

fn d_true() -> bool {
    true
}
fn d_tiers() -> Vec<CacheTier> {
    vec![CacheTier::Memory, CacheTier::Redis]
}
fn d_cache_bytes() -> u64 {
    DEFAULT_CACHE_MEMORY_BYTES
}
fn d_max_object() -> u64 {
    DEFAULT_CACHE_MAX_OBJECT_BYTES
}
fn d_coalesce_wait() -> Duration {
    DEFAULT_CACHE_COALESCE_WAIT
}
fn d_keep_stale() -> Duration {
    DEFAULT_CACHE_KEEP_STALE
}
fn d_stale_if_unreachable() -> Duration {
    DEFAULT_CACHE_STALE_IF_UNREACHABLE
}
fn d_heuristic() -> f32 {
    DEFAULT_CACHE_HEURISTIC
}
fn d_warm_concurrency() -> usize {
    DEFAULT_CACHE_WARM_CONCURRENCY
}
fn d_redis_timeout() -> Duration {
    DEFAULT_REDIS_TIMEOUT
}
fn d_redis_prefix() -> String {
    DEFAULT_REDIS_KEY_PREFIX.to_owned()
}
