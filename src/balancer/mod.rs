//! Endpoint selection. Each strategy lives in its own file behind [`Balancer`]; the rule
//! for which endpoints may be picked at all ([`PickContext::usable`]) is shared.
//!
//! May import: `config`, `upstream` (the endpoints it picks from), `stable_hash`.

mod consistent_hash;
mod least_connections;
mod round_robin;
mod score;
mod weighted;

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

pub use consistent_hash::{ConsistentHash, cookie as cookie_value, key_value};
pub use least_connections::LeastConnections;
pub use round_robin::RoundRobin;
pub use score::Score;
pub use weighted::Weighted;

use crate::config::{PoolConfig, Strategy};
use crate::upstream::Endpoint;

/// What a strategy may look at about the request being placed.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
    pub now_ms: u64,
    /// Endpoints this request already tried: a retry goes elsewhere.
    pub exclude: &'a [Arc<Endpoint>],
    /// Per-endpoint in-flight limit (bulkhead); 0 = none.
    pub max_in_flight: u64,
    /// Changes whenever the pool's endpoints or weights change, for cached tables.
    pub generation: u64,
    /// Panic mode: every non-draining endpoint is usable whatever its health.
    pub ignore_health: bool,
    /// Skip stalled endpoints ([`Endpoint::avoid_as_stalled`]): the pool's first choice, given
    /// up when only stalled ones are left.
    pub avoid_stalled: bool,
    /// The routing simulation asks which endpoint a request would get: the pick takes no
    /// turn (a rotation does not move).
    pub preview: bool,
}

impl PickContext<'_> {
    /// Whether `endpoint` may take this request.
    pub fn usable(&self, endpoint: &Arc<Endpoint>) -> bool {
        let healthy_enough = if self.ignore_health {
            !endpoint.is_draining()
        } else {
            endpoint.is_available(self.now_ms)
        };
        healthy_enough
            && (self.max_in_flight == 0 || endpoint.in_flight() < self.max_in_flight)
            && !self.exclude.iter().any(|e| Arc::ptr_eq(e, endpoint))
            && !(self.avoid_stalled && endpoint.avoid_as_stalled(self.now_ms))
    }

    /// Slow start as a coin toss: an endpoint at 30 % of its ramp is accepted 30 % of the
    /// time when a strategy offers it.
    pub fn accepts_ramping(&self, endpoint: &Endpoint) -> bool {
        let factor = endpoint.slow_start_factor(self.now_ms);
        factor >= 1.0 || fastrand::f64() < factor
    }
}

/// Chooses the endpoint for one request. Implementations keep their own state in atomics
/// or swapped tables: `pick` runs on every request, concurrently, and must not take a lock.
pub trait Balancer: Send + Sync + Debug {
    /// The strategy's config name, e.g. `round_robin`.
    fn strategy(&self) -> &'static str;

    /// Picks one of `endpoints` that is [`PickContext::usable`], or `None` when none is.
    fn pick<'e>(
        &self,
        endpoints: &'e [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'e Arc<Endpoint>>;

    /// The strategy's current cost of an endpoint, lower is better, for operators; `None`
    /// for strategies without one.
    fn cost(&self, _endpoint: &Endpoint, _now_ms: u64) -> Option<f64> {
        None
    }
}

/// The rotation position for this pick. A retry (or a preview) looks from the current
/// position without taking a turn, so it does not shift the rotation for every later
/// request.
pub(crate) fn take_turn(next: &std::sync::atomic::AtomicUsize, ctx: &PickContext<'_>) -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    if ctx.exclude.is_empty() && !ctx.preview {
        next.fetch_add(1, Relaxed)
    } else {
        next.load(Relaxed)
    }
}

/// A table a strategy derives from the endpoint list (a schedule, a hash ring), rebuilt when
/// the pool's generation or endpoint count changes. Readers never block; two threads may
/// both rebuild after a change, and the last store wins.
#[derive(Debug, Default)]
pub(crate) struct TableCache<T> {
    current: arc_swap::ArcSwapOption<CachedTable<T>>,
}

#[derive(Debug)]
struct CachedTable<T> {
    generation: u64,
    endpoints: usize,
    table: Arc<T>,
}

impl<T> TableCache<T> {
    pub fn get(
        &self,
        endpoints: &[Arc<Endpoint>],
        generation: u64,
        build: impl FnOnce(&[Arc<Endpoint>]) -> T,
    ) -> Arc<T> {
        if let Some(cached) = self.current.load().as_ref()
            && cached.generation == generation
            && cached.endpoints == endpoints.len()
        {
            return Arc::clone(&cached.table);
        }
        let table = Arc::new(build(endpoints));
        self.current.store(Some(Arc::new(CachedTable {
            generation,
            endpoints: endpoints.len(),
            table: Arc::clone(&table),
        })));
        table
    }
}

/// What a walk along a rotation found.
pub(crate) struct RotationPick<'e> {
    pub endpoint: &'e Arc<Endpoint>,
    /// Its position in the walk when only unusable candidates came before it (round robin
    /// moves its cursor past those); `None` when a ramping endpoint declined first.
    pub clean_offset: Option<usize>,
}

/// Walks candidates in rotation order: the first usable one that takes its slow-start
/// share, else the first usable one.
pub(crate) fn walk_rotation<'e>(
    candidates: impl IntoIterator<Item = &'e Arc<Endpoint>>,
    ctx: &PickContext<'_>,
) -> Option<RotationPick<'e>> {
    let mut fallback = None;
    for (offset, candidate) in candidates.into_iter().enumerate() {
        if !ctx.usable(candidate) {
            continue;
        }
        if ctx.accepts_ramping(candidate) {
            return Some(RotationPick {
                endpoint: candidate,
                clean_offset: fallback.is_none().then_some(offset),
            });
        }
        fallback.get_or_insert(candidate);
    }
    fallback.map(|endpoint| RotationPick {
        endpoint,
        clean_offset: None,
    })
}

/// Builds the balancer a pool's config asks for.
pub fn for_pool(config: &PoolConfig) -> Box<dyn Balancer> {
    match config.strategy {
        Strategy::RoundRobin => Box::new(RoundRobin::default()),
        Strategy::Weighted => Box::new(Weighted::default()),
        Strategy::LeastConnections => Box::new(LeastConnections),
        Strategy::Score => Box::new(Score::new(&config.score)),
        Strategy::ConsistentHash => Box::new(ConsistentHash::new(config.hash.as_ref())),
    }
}

/// Pools up to this size are scanned exactly: reading a few atomics is cheap, and the pick
/// is better (slow-backend benchmark, 40 000 requests: exact least-connections let 116 wait
/// ≥ 500 ms on the slow endpoint, two random choices 153).
const EXACT_SCAN_MAX: usize = 8;

/// The better of two random usable endpoints by `cost` (lower wins). Small pools are
/// scanned exactly; larger ones sample, and scan if sampling keeps missing.
pub(crate) fn best_of_two<'e>(
    endpoints: &'e [Arc<Endpoint>],
    ctx: &PickContext<'_>,
    cost: impl Fn(&Endpoint) -> f64,
) -> Option<&'e Arc<Endpoint>> {
    let n = endpoints.len();
    if n > EXACT_SCAN_MAX {
        for _ in 0..4 {
            let i = fastrand::usize(..n);
            let j = (i + 1 + fastrand::usize(..n - 1)) % n;
            let (a, b) = (&endpoints[i], &endpoints[j]);
            if ctx.usable(a) && ctx.usable(b) {
                return Some(if cost(b) < cost(a) { b } else { a });
            }
        }
    }
    // Each cost once: `min_by` on the endpoints would evaluate it twice per comparison.
    let start = fastrand::usize(..n.max(1));
    (0..n)
        .map(|k| &endpoints[(start + k) % n])
        .filter(|e| ctx.usable(e))
        .map(|e| (cost(e), e))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, e)| e)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Arc::new(Endpoint::with_defaults(&format!("127.0.0.1:{}", 1000 + i), w).unwrap())
            })
            .collect()
    }

    pub fn ctx(headers: &HeaderMap) -> PickContext<'_> {
        PickContext {
            client_ip: [127, 0, 0, 1].into(),
            headers,
            now_ms: 0,
            exclude: &[],
            max_in_flight: 0,
            generation: 0,
            ignore_health: false,
            avoid_stalled: false,
            preview: false,
        }
    }

    /// Picks `n` times and counts by endpoint index.
    pub fn tally(
        b: &dyn Balancer,
        eps: &[Arc<Endpoint>],
        ctx: &PickContext<'_>,
        n: usize,
    ) -> Vec<usize> {
        let mut counts = vec![0; eps.len()];
        for _ in 0..n {
            let picked = b.pick(eps, ctx).expect("an endpoint");
            let i = eps.iter().position(|e| Arc::ptr_eq(e, picked)).unwrap();
            counts[i] += 1;
        }
        counts
    }
}
