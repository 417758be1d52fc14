//! The two-tier HTTP cache: L1 in process ([`memory`]), L2 in a shared Redis ([`redis`]),
//! RFC 9111 semantics in [`policy`], keys in [`key`], cross-instance invalidation in
//! [`bus`], miss coalescing in [`coalesce`], warming in [`warm`].
//!
//! The data plane calls [`Cache::lookup`] / [`Cache::store`]; the admin API calls
//! [`Cache::purge`]. A Redis that is down or slow only costs L2 hits.
//!
//! May import: `config` and `header_maps` only; the proxy drives it, the admin side purges through it.

pub mod bus;
pub mod coalesce;
pub mod key;
pub mod memory;
pub mod object;
pub mod policy;
pub mod range;
pub mod redis;
pub mod stats;
pub mod warm;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::config::{CacheConfig, CacheTier, RouteCacheConfig};
pub use coalesce::{Flight, FlightGuard};
use key::KeySpec;
use memory::MemoryTier;
use object::{Entry, StoredResponse, VaryRecord, unix_ms};
use policy::Lifetimes;
use redis::RedisTier;
pub use stats::CacheStats;

/// What the memory tier holds for a request ([`Cache::probe_memory`]).
#[derive(Debug)]
pub enum MemoryProbe {
    /// The response (the request's variant, under `Vary`).
    Found(Arc<StoredResponse>),
    /// The primary key holds a `Vary` record, and the request's variant is not in memory.
    Vary(Arc<VaryRecord>),
    /// Nothing (or the route does not use the memory tier).
    Miss,
}

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Redis,
}

impl Tier {
    /// The cache's name in `Cache-Status` (RFC 9211).
    pub fn status_name(self) -> &'static str {
        match self {
            Tier::Memory => "weir-l1",
            Tier::Redis => "weir-l2",
        }
    }
}

/// A route's caching policy, built with each config snapshot.
#[derive(Debug, Clone)]
pub struct RouteCache {
    pub key: KeySpec,
    pub memory: bool,
    pub redis: bool,
    pub lifetimes: Lifetimes,
    pub max_object_bytes: u64,
}

impl RouteCache {
    /// `None` when the route does not cache.
    pub fn from_config(global: &CacheConfig, route: Option<&RouteCacheConfig>) -> Option<Self> {
        if !global.enabled {
            return None;
        }
        let default = RouteCacheConfig::default();
        let route = route.unwrap_or(&default);
        if !route.enabled {
            return None;
        }
        Some(Self {
            key: KeySpec::from_config(route),
            memory: route.tiers.contains(&CacheTier::Memory),
            redis: route.tiers.contains(&CacheTier::Redis),
            lifetimes: Lifetimes {
                ttl: route.ttl,
                min_ttl: route.min_ttl,
                max_ttl: route.max_ttl,
                keep_stale: global.keep_stale,
                stale_if_unreachable: global.stale_if_unreachable,
                heuristic: global.heuristic_fraction,
            },
            max_object_bytes: route
                .max_object_bytes
                .unwrap_or(global.max_object_bytes)
                .min(global.max_object_bytes),
        })
    }
}

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeTarget {
    /// One primary key (`host/path?query`), with all its variants.
    Key(String),
    /// Every key starting with this (`host/path…`); a leading `/` matches any host.
    Prefix(String),
    /// Every response tagged with this surrogate key.
    Tag(String),
}

impl PurgeTarget {
    fn matches(&self, key: &str, entry: &Entry) -> bool {
        match self {
            PurgeTarget::Key(k) => key::primary_of(key) == k,
            PurgeTarget::Prefix(p) if p.starts_with('/') => key
                .find('/')
                .is_some_and(|at| key[at..].starts_with(p.as_str())),
            PurgeTarget::Prefix(p) => key.starts_with(p.as_str()),
            PurgeTarget::Tag(t) => entry.has_tag(t),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    pub memory: usize,
    pub redis: usize,
    pub soft: bool,
    /// Whether the purge was published to the other instances.
    pub published: bool,
}

pub struct Cache {
    memory: MemoryTier,
    redis: Option<Arc<RedisTier>>,
    flights: coalesce::Flights,
    pub stats: CacheStats,
    /// Identifies this instance's messages on the invalidation channel.
    pub instance: u64,
    pub coalesce_wait: Duration,
    pub shared_lock: bool,
    config: CacheConfig,
    /// Refresh entries requested in the last tenth of their freshness.
    pub rewarm_hot: bool,
    shutdown: tokio_util::sync::CancellationToken,
    /// Work that requests leave behind (stores, bounded drains of bodies a client did not
    /// take): tracked, so that it is counted and ends with the cache.
    background: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("redis", &self.redis.is_some())
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Cache {
    /// Builds the cache and, with Redis (the instance's shared connection, see
    /// [`RedisTier::shared`]), starts listening for other instances' purges.
    pub fn new(config: &CacheConfig, redis_tier: Option<Arc<RedisTier>>) -> Arc<Self> {
        let cache = Arc::new(Self {
            memory: MemoryTier::new(config.memory_bytes),
            redis: redis_tier,
            flights: coalesce::Flights::default(),
            stats: CacheStats::default(),
            instance: fastrand::u64(..),
            coalesce_wait: config.coalesce_wait,
            shared_lock: config.shared_lock,
            config: config.clone(),
            rewarm_hot: config.rewarm_hot,
            shutdown: tokio_util::sync::CancellationToken::new(),
            background: tokio_util::task::TaskTracker::new(),
        });
        if cache.redis.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(bus::subscribe(
                Arc::downgrade(&cache),
                cache.shutdown.clone(),
            ));
        }
        cache
    }

    /// Keeps `previous` (and its contents) when the cache settings did not change.
    pub fn rebuild(
        config: &CacheConfig,
        redis: Option<&Arc<RedisTier>>,
        previous: Option<&Arc<Cache>>,
    ) -> Option<Arc<Self>> {
        if !config.enabled {
            return None;
        }
        match previous {
            Some(old)
                if old.config == *config
                    && old.redis.as_ref().map(Arc::as_ptr) == redis.map(Arc::as_ptr) =>
            {
                Some(Arc::clone(old))
            }
            _ => Some(Self::new(config, redis.cloned())),
        }
    }

    /// Runs `task` beside the request path; it is cut short when the cache is dropped.
    pub fn spawn_background<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.background.spawn(async move {
            tokio::select! {
                () = task => {}
                () = shutdown.cancelled() => {}
            }
        });
    }

    /// Background tasks still running (see [`Cache::spawn_background`]).
    pub fn background_tasks(&self) -> usize {
        self.background.len()
    }

    pub fn redis(&self) -> Option<&Arc<RedisTier>> {
        self.redis.as_ref()
    }

    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    /// Finds the stored response for a request: L1, then L2 (promoting what it finds).
    /// What the memory tier holds for a request, reading nothing else and storing nothing
    /// (the routing simulation). moka counts the read toward the entry's popularity.
    pub fn peek_memory(
        &self,
        route: &RouteCache,
        primary: &str,
        request: &HeaderMap,
    ) -> Option<Arc<StoredResponse>> {
        if !route.memory {
            return None;
        }
        match self.memory.get(primary)? {
            Entry::Response(r) => Some(r),
            Entry::Vary(v) => {
                match self
                    .memory
                    .get(&key::variant(primary, v.generation, &v.names, request))?
                {
                    Entry::Response(r) => Some(r),
                    Entry::Vary(_) => None,
                }
            }
        }
    }

    pub async fn lookup(
        &self,
        route: &RouteCache,
        primary: &str,
        request: &HeaderMap,
    ) -> Option<(Arc<StoredResponse>, Tier)> {
        self.lookup_after(route, primary, request, None).await
    }

    /// The lookup's first, synchronous step: what the memory tier holds for `primary`
    /// (its variant for `request`, under `Vary`). Each entry is read once, as a lookup
    /// reads it, so it counts once toward its popularity.
    pub fn probe_memory(
        &self,
        route: &RouteCache,
        primary: &str,
        request: &HeaderMap,
    ) -> MemoryProbe {
        if !route.memory {
            return MemoryProbe::Miss;
        }
        match self.memory.get(primary) {
            Some(Entry::Response(r)) => MemoryProbe::Found(r),
            Some(Entry::Vary(v)) => {
                let variant = key::variant(primary, v.generation, &v.names, request);
                match self.memory.get(&variant) {
                    Some(Entry::Response(r)) => MemoryProbe::Found(r),
                    _ => MemoryProbe::Vary(v),
                }
            }
            None => MemoryProbe::Miss,
        }
    }

    /// A lookup that continues from `probe` (see [`Self::probe_memory`]), or probes the
    /// memory tier itself when given none.
    pub async fn lookup_after(
        &self,
        route: &RouteCache,
        primary: &str,
        request: &HeaderMap,
        probe: Option<MemoryProbe>,
    ) -> Option<(Arc<StoredResponse>, Tier)> {
        let l2 = self.redis.as_ref().filter(|_| route.redis);
        let probe = probe.unwrap_or_else(|| self.probe_memory(route, primary, request));
        let vary = match probe {
            MemoryProbe::Found(r) => return Some((r, Tier::Memory)),
            MemoryProbe::Vary(v) => Some(v),
            MemoryProbe::Miss => None,
        };
        let l2 = l2?;
        let vary = match vary {
            Some(v) => v,
            None => match l2.get(primary).await? {
                Entry::Response(r) => {
                    if route.memory {
                        self.memory.insert(primary, Entry::Response(Arc::clone(&r)));
                    }
                    return Some((r, Tier::Redis));
                }
                Entry::Vary(v) => {
                    if route.memory {
                        self.memory.insert(primary, Entry::Vary(Arc::clone(&v)));
                    }
                    v
                }
            },
        };
        let variant = key::variant(primary, vary.generation, &vary.names, request);
        match l2.get(&variant).await? {
            Entry::Response(r) => {
                if route.memory {
                    self.memory
                        .insert(&variant, Entry::Response(Arc::clone(&r)));
                }
                Some((r, Tier::Redis))
            }
            Entry::Vary(_) => None,
        }
    }

    /// Stores a complete response under `primary` (or its variant, with `Vary`).
    pub async fn store(
        &self,
        route: &RouteCache,
        primary: &str,
        request: &HeaderMap,
        response: StoredResponse,
    ) {
        let now = SystemTime::now();
        let keep = response.keep_for(now);
        let vary: Vec<String> = key::vary_names(&response.headers).collect();
        if vary.iter().any(|n| n == "*") || keep.is_zero() {
            return;
        }
        let l2 = self.redis.as_ref().filter(|_| route.redis);
        let tags = response.tags.clone();
        let bytes = response.body.len() as u64;
        let entry = Entry::Response(Arc::new(response));
        let object_key = if vary.is_empty() {
            primary.to_owned()
        } else {
            let existing = match self.memory.get(primary) {
                Some(Entry::Vary(v)) => Some(v),
                _ => match l2 {
                    Some(l2) => match l2.get(primary).await {
                        Some(Entry::Vary(v)) => Some(v),
                        _ => None,
                    },
                    None => None,
                },
            };
            let keep_until = unix_ms(now + keep);
            let record = match existing {
                Some(v) if v.names == vary && v.keep_until_ms >= keep_until => v,
                Some(v) if v.names == vary => Arc::new(VaryRecord {
                    keep_until_ms: keep_until,
                    ..(*v).clone()
                }),
                _ => Arc::new(VaryRecord {
                    names: vary,
                    generation: fastrand::u64(..),
                    keep_until_ms: keep_until,
                }),
            };
            let variant = key::variant(primary, record.generation, &record.names, request);
            let record = Entry::Vary(record);
            if route.memory {
                self.memory.insert(primary, record.clone());
            }
            if let Some(l2) = l2 {
                l2.put(primary, &record, record.keep_for(now), &[]).await;
            }
            variant
        };
        if route.memory {
            self.memory.insert(&object_key, entry.clone());
        }
        if let Some(l2) = l2 {
            l2.put(&object_key, &entry, keep, &tags).await;
        }
        self.stats.record_store(bytes);
    }

    /// Purges here, in Redis, and (published) in every other instance's L1.
    pub async fn purge(&self, target: &PurgeTarget, soft: bool) -> PurgeReport {
        let memory = self.purge_memory(target, soft);
        let mut report = PurgeReport {
            memory,
            soft,
            ..PurgeReport::default()
        };
        if let Some(l2) = &self.redis {
            report.redis = match target {
                PurgeTarget::Key(k) => {
                    // Removing the primary (response or vary record) orphans variants:
                    // a new vary record has a new generation.
                    l2.purge_key(k, soft).await
                }
                PurgeTarget::Prefix(p) => l2.purge_prefix(p, soft).await,
                PurgeTarget::Tag(t) => l2.purge_tag(t, soft).await,
            };
            report.published = bus::publish(self, l2, target, soft).await;
        }
        self.stats
            .purges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        report
    }

    /// L1 only: what a purge message from another instance asks.
    pub fn purge_memory(&self, target: &PurgeTarget, soft: bool) -> usize {
        match (target, soft) {
            // The common case (unsafe-method invalidation) without scanning L1.
            (PurgeTarget::Key(k), false) => {
                let present = self.memory.get(k).is_some();
                self.memory.remove(k);
                usize::from(present)
            }
            _ => {
                let target = target.clone();
                self.memory
                    .purge_where(soft, move |key, entry| target.matches(key, entry))
            }
        }
    }

    /// Joins the flight for `key`: the first caller leads, the rest wait for it.
    pub fn join_flight(&self, key: &str) -> Flight {
        self.flights.join(key)
    }
}
