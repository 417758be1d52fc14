//! Sampling: the control loop reads the counters the data plane publishes (atomics only)
//! on an interval and turns their differences into one [`Sample`] per tick.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use crate::proxy::Snapshot;
use crate::upstream::EndpointState;
use crate::upstream::signals::LATENCY_BUCKETS;

/// What instances report about themselves through the admin API.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceLoad {
    /// 0..1
    pub cpu: Option<f64>,
    /// 0..1
    pub memory: Option<f64>,
    /// Requests waiting inside the instance.
    pub queue: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Unix milliseconds at the end of the interval.
    pub at_ms: u64,
    pub interval_s: f64,
    pub pools: Vec<PoolSample>,
    /// Cache hits / lookups over the interval, when the cache saw traffic.
    pub cache_hit_ratio: Option<f64>,
    /// Per tier over the interval: memory hits / lookups, and Redis hits / lookups that
    /// missed memory.
    #[serde(default)]
    pub cache_memory_hit_ratio: Option<f64>,
    #[serde(default)]
    pub cache_redis_hit_ratio: Option<f64>,
    /// Entries the memory tier evicted for space, per second of the interval.
    #[serde(default)]
    pub cache_evictions_per_s: Option<f64>,
    /// Whether the Redis tier's breaker was open at the sample (when Redis is configured).
    #[serde(default)]
    pub redis_unavailable: Option<bool>,
    /// Per caching route that saw lookups in the interval: its hit ratios.
    #[serde(default)]
    pub routes: Vec<RouteCacheSample>,
}

/// One route's cache over an interval.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RouteCacheSample {
    pub route: String,
    pub lookups: u64,
    /// Hits (either tier) over lookups.
    pub hit_ratio: f64,
    pub memory_hit_ratio: f64,
    /// Redis hits over the lookups that missed memory (absent when none did).
    pub redis_hit_ratio: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PoolSample {
    pub pool: String,
    /// Endpoints taking traffic or able to (everything but draining).
    pub instances: u32,
    pub healthy: u32,
    /// Requests started in the interval.
    #[serde(default)]
    pub requests: u64,
    pub rps: f64,
    /// Mean requests in flight over the interval (Little's law: time in flight / time).
    pub in_flight: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// (5xx + connect errors + timeouts) / requests.
    pub error_rate: f64,
    #[serde(default)]
    pub load: InstanceLoad,
    pub endpoints: Vec<EndpointSample>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointSample {
    pub address: String,
    pub state: String,
    pub rps: f64,
    pub in_flight: f64,
    pub mean_ms: f64,
    pub error_rate: f64,
}

#[derive(Debug, Clone, Default)]
struct Counters {
    requests: u64,
    errors: u64,
    latency_micros: u64,
    responses: u64,
    buckets: Vec<u64>,
}

/// Keeps the previous counters so each tick reports differences.
#[derive(Debug, Default)]
pub struct Sampler {
    previous: HashMap<(String, String), Counters>,
    previous_cache: Option<CacheCounters>,
    /// Each caching route's lookups by outcome at the last tick.
    previous_routes: HashMap<String, [u64; 3]>,
    primed: bool,
}

impl Sampler {
    /// One sample over the last `interval_s`; `None` on the first call, which only
    /// records where the counters start.
    pub fn sample(
        &mut self,
        snapshot: &Snapshot,
        loads: &HashMap<String, InstanceLoad>,
        at_ms: u64,
        interval_s: f64,
    ) -> Option<Sample> {
        let mut pools = Vec::new();
        let mut seen = HashMap::new();
        for (name, pool) in &snapshot.pools {
            let now_ms = pool.now_ms();
            let mut total = PoolSample {
                pool: name.clone(),
                ..PoolSample::default()
            };
            let mut buckets = vec![0u64; LATENCY_BUCKETS.len() + 1];
            let (mut requests, mut errors, mut micros, mut responses) = (0u64, 0u64, 0u64, 0u64);
            let mut reported = Vec::new();
            for endpoint in pool.endpoints().iter() {
                let state = endpoint.state(now_ms);
                if state != EndpointState::Draining {
                    total.instances += 1;
                }
                if matches!(state, EndpointState::Healthy | EndpointState::SlowStart) {
                    total.healthy += 1;
                }
                let stats = &endpoint.stats;
                let (cumulative, _, count) = stats.latency.snapshot();
                let mut now_buckets: Vec<u64> = Vec::with_capacity(cumulative.len() + 1);
                let mut below = 0;
                for (_, c) in &cumulative {
                    now_buckets.push(c - below);
                    below = *c;
                }
                now_buckets.push(count.saturating_sub(below));
                let now = Counters {
                    requests: stats.requests.load(Relaxed),
                    errors: stats.responses[4].load(Relaxed)
                        + stats.connect_errors.load(Relaxed)
                        + stats.timeouts.load(Relaxed),
                    latency_micros: stats.latency_micros_total.load(Relaxed),
                    responses: count,
                    buckets: now_buckets,
                };
                let key = (name.clone(), endpoint.address.clone());
                let before = self.previous.get(&key).cloned().unwrap_or_default();
                let d_requests = now.requests.saturating_sub(before.requests);
                let d_errors = now.errors.saturating_sub(before.errors);
                let d_micros = now.latency_micros.saturating_sub(before.latency_micros);
                let d_responses = now.responses.saturating_sub(before.responses);
                for (i, b) in now.buckets.iter().enumerate() {
                    buckets[i] += b.saturating_sub(before.buckets.get(i).copied().unwrap_or(0));
                }
                requests += d_requests;
                errors += d_errors;
                micros += d_micros;
                responses += d_responses;
                total.endpoints.push(EndpointSample {
                    address: endpoint.address.clone(),
                    state: state.as_str().to_owned(),
                    rps: d_requests as f64 / interval_s,
                    in_flight: d_micros as f64 / 1e6 / interval_s,
                    mean_ms: mean_ms(d_micros, d_responses),
                    error_rate: rate(d_errors, d_requests),
                });
                if let Some(load) = loads.get(&endpoint.address) {
                    reported.push(*load);
                }
                seen.insert(key, now);
            }
            total.requests = requests;
            total.rps = requests as f64 / interval_s;
            total.in_flight = micros as f64 / 1e6 / interval_s;
            total.mean_ms = mean_ms(micros, responses);
            total.p50_ms = quantile_ms(&buckets, 0.50);
            total.p95_ms = quantile_ms(&buckets, 0.95);
            total.p99_ms = quantile_ms(&buckets, 0.99);
            total.error_rate = rate(errors, requests);
            total.load = mean_load(&reported);
            pools.push(total);
        }
        self.previous = seen;
        let cache = snapshot.cache.as_ref().map(|cache| {
            let s = &cache.stats;
            CacheCounters {
                memory_hits: s.hits_memory.load(Relaxed),
                redis_hits: s.hits_redis.load(Relaxed),
                lookups: s.hits_memory.load(Relaxed)
                    + s.hits_redis.load(Relaxed)
                    + s.misses.load(Relaxed)
                    + s.stale.load(Relaxed),
                evictions: cache.memory().evictions.load(Relaxed),
            }
        });
        let cache_change = match (cache, self.previous_cache) {
            (Some(now), Some(before)) => Some(now.since(&before)),
            _ => None,
        };
        self.previous_cache = cache;
        let redis_unavailable = snapshot.redis.as_ref().map(|redis| redis.is_open());
        let routes = self.route_caches(snapshot);
        if !std::mem::replace(&mut self.primed, true) {
            return None;
        }
        let lookups = cache_change.map_or(0, |c| c.lookups);
        let ratio = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
        Some(Sample {
            at_ms,
            interval_s,
            pools,
            cache_hit_ratio: cache_change
                .and_then(|c| ratio(c.memory_hits + c.redis_hits, lookups)),
            cache_memory_hit_ratio: cache_change.and_then(|c| ratio(c.memory_hits, lookups)),
            cache_redis_hit_ratio: cache_change.and_then(|c| {
                snapshot.redis.as_ref()?;
                ratio(c.redis_hits, lookups.saturating_sub(c.memory_hits))
            }),
            cache_evictions_per_s: cache_change
                .filter(|_| interval_s > 0.0)
                .map(|c| c.evictions as f64 / interval_s),
            redis_unavailable,
            routes,
        })
    }

    /// Each caching route's hit ratios since the last tick.
    fn route_caches(&mut self, snapshot: &Snapshot) -> Vec<RouteCacheSample> {
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for route in snapshot.router.routes() {
            if route.cache.is_none() {
                continue;
            }
            let now: [u64; 3] = std::array::from_fn(|i| route.stats.cache[i].load(Relaxed));
            let before = self
                .previous_routes
                .get(&*route.name)
                .copied()
                .filter(|b| b.iter().zip(&now).all(|(b, n)| b <= n))
                .unwrap_or_default();
            let [memory, redis, other]: [u64; 3] = std::array::from_fn(|i| now[i] - before[i]);
            seen.insert(route.name.to_string(), now);
            let lookups = memory + redis + other;
            if lookups == 0 {
                continue;
            }
            let missed_memory = lookups - memory;
            out.push(RouteCacheSample {
                route: route.name.to_string(),
                lookups,
                hit_ratio: (memory + redis) as f64 / lookups as f64,
                memory_hit_ratio: memory as f64 / lookups as f64,
                redis_hit_ratio: (snapshot.redis.is_some() && missed_memory > 0)
                    .then(|| redis as f64 / missed_memory as f64),
            });
        }
        self.previous_routes = seen;
        out
    }
}

/// The cache's cumulative counters, or (from [`CacheCounters::since`]) their change.
#[derive(Debug, Clone, Copy, Default)]
struct CacheCounters {
    memory_hits: u64,
    redis_hits: u64,
    lookups: u64,
    evictions: u64,
}

impl CacheCounters {
    fn since(&self, before: &Self) -> Self {
        Self {
            memory_hits: self.memory_hits.saturating_sub(before.memory_hits),
            redis_hits: self.redis_hits.saturating_sub(before.redis_hits),
            lookups: self.lookups.saturating_sub(before.lookups),
            evictions: self.evictions.saturating_sub(before.evictions),
        }
    }
}

fn mean_ms(micros: u64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        micros as f64 / count as f64 / 1000.0
    }
}

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 / whole as f64).min(1.0)
    }
}

fn mean_load(reports: &[InstanceLoad]) -> InstanceLoad {
    let mean = |pick: fn(&InstanceLoad) -> Option<f64>| {
        let values: Vec<f64> = reports.iter().filter_map(pick).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    InstanceLoad {
        cpu: mean(|l| l.cpu),
        memory: mean(|l| l.memory),
        queue: mean(|l| l.queue),
    }
}

/// Quantile from non-cumulative bucket counts (the last is +Inf), interpolating linearly
/// inside the bucket like Prometheus' `histogram_quantile`.
pub fn quantile_ms(buckets: &[u64], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, count) in buckets.iter().enumerate() {
        if (below + count) as f64 >= rank && *count > 0 {
            let Some(upper) = LATENCY_BUCKETS.get(i) else {
                // In +Inf: the best that can be said is "above the last bound".
                return LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 1000.0;
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let within = (rank - below as f64) / *count as f64;
            return (lower + (upper - lower) * within) * 1000.0;
        }
        below += count;
    }
    LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut buckets = vec![0u64; LATENCY_BUCKETS.len() + 1];
        // 100 requests between 10 and 25 ms (bucket index 4: 0.01..0.025).
        buckets[4] = 100;
        assert!((quantile_ms(&buckets, 0.5) - 17.5).abs() < 1e-9);
        assert!((quantile_ms(&buckets, 0.99) - 24.85).abs() < 1e-9);
        buckets[LATENCY_BUCKETS.len()] = 100;
        assert_eq!(quantile_ms(&buckets, 0.99), 10_000.0);
        assert_eq!(quantile_ms(&[0; 16], 0.5), 0.0);
    }
}
