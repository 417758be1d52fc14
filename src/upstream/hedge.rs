//! When a pool sends a hedge: its `[hedge]` policy and, for a quantile delay, the pool's
//! recent times to response head.
//!
//! The recent times live in log-spaced buckets (25 % apart, 0.1 ms to about 2 minutes) in
//! two halves of [`HEDGE_WINDOW`]: the current half and the one before, so the quantile
//! always covers between one and two halves of history. Recording is two atomic adds; the
//! quantile is recomputed at most every [`RECOMPUTE_EVERY_MS`] and read as one atomic.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::Method;

use crate::config::defaults::{HEDGE_MIN_SAMPLES, HEDGE_WINDOW};
use crate::config::{HedgeConfig, HedgeDelay};

/// Buckets: bucket `i` holds times up to `FIRST_BOUND_MICROS · GROWTH^i`.
const BUCKETS: usize = 64;
const FIRST_BOUND_MICROS: f64 = 100.0;
const GROWTH: f64 = 1.25;
/// How stale a computed quantile may be.
const RECOMPUTE_EVERY_MS: u64 = 250;
/// Stored in `cached_delay_micros` while too few answers are known to hedge by.
const NO_DELAY: u64 = u64::MAX;
/// `cached_at_ms` before the first computation.
const NEVER_COMPUTED: u64 = u64::MAX;

/// A pool's hedging policy and what it needs to decide each request's delay.
#[derive(Debug)]
pub struct Hedging {
    policy: HedgeConfig,
    recent: RecentTimes,
    /// The quantile delay in µs (or [`NO_DELAY`]) and when it was computed (ms on the
    /// pool's clock).
    cached_delay_micros: AtomicU64,
    cached_at_ms: AtomicU64,
}

impl Hedging {
    pub fn new(policy: HedgeConfig) -> Self {
        Self {
            policy,
            recent: RecentTimes::default(),
            cached_delay_micros: AtomicU64::new(NO_DELAY),
            cached_at_ms: AtomicU64::new(NEVER_COMPUTED),
        }
    }

    /// Whether a request with this method may be hedged (its body aside).
    pub fn allows(&self, method: &Method) -> bool {
        self.policy.non_idempotent || crate::upstream::is_idempotent(method)
    }

    /// Whether the delay depends on observed times (which must then be recorded).
    pub fn learns(&self) -> bool {
        matches!(self.policy.delay, HedgeDelay::Quantile(_))
    }

    /// Records one attempt's time to response head (only needed when [`Hedging::learns`]).
    pub fn record(&self, now_ms: u64, elapsed: Duration) {
        if self.learns() {
            self.recent.record(now_ms, elapsed);
        }
    }

    /// How long an attempt waits for its head before a hedge is sent; `None` while a
    /// quantile delay has too few answers to go by.
    pub fn delay(&self, now_ms: u64) -> Option<Duration> {
        let quantile = match self.policy.delay {
            HedgeDelay::Fixed(delay) => return Some(delay),
            HedgeDelay::Quantile(q) => q,
        };
        let cached_at = self.cached_at_ms.load(Relaxed);
        if (cached_at == NEVER_COMPUTED || now_ms.saturating_sub(cached_at) >= RECOMPUTE_EVERY_MS)
            && self
                .cached_at_ms
                .compare_exchange(cached_at, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            let micros = self
                .recent
                .quantile_micros(now_ms, quantile)
                .map_or(NO_DELAY, |micros| {
                    let scaled = (micros * self.policy.factor) as u64;
                    scaled.max(self.policy.min_delay.as_micros() as u64)
                });
            self.cached_delay_micros.store(micros, Relaxed);
        }
        match self.cached_delay_micros.load(Relaxed) {
            NO_DELAY => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }
}

/// Times to response head over the last one to two half-windows.
#[derive(Debug)]
struct RecentTimes {
    halves: [[AtomicU64; BUCKETS]; 2],
    /// Which half is current, as the number of half-windows since the clock's start.
    current_half: AtomicU64,
}

impl Default for RecentTimes {
    fn default() -> Self {
        Self {
            halves: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            current_half: AtomicU64::new(0),
        }
    }
}

impl RecentTimes {
    fn half_ms() -> u64 {
        (HEDGE_WINDOW.as_millis() as u64 / 2).max(1)
    }

    /// Moves to the half-window `now_ms` is in, clearing halves that are too old. Two
    /// racing callers may each clear a half: at worst a few fresh samples are lost, which
    /// a quantile over thousands does not notice.
    fn advance(&self, now_ms: u64) -> u64 {
        let half = now_ms / Self::half_ms();
        let current = self.current_half.load(Relaxed);
        if half > current
            && self
                .current_half
                .compare_exchange(current, half, Relaxed, Relaxed)
                .is_ok()
        {
            // The half now current starts empty; the previous one is kept only when it is
            // the one just before.
            self.clear((half % 2) as usize);
            if half > current + 1 {
                self.clear(((half + 1) % 2) as usize);
            }
        }
        half
    }

    fn clear(&self, index: usize) {
        for bucket in &self.halves[index] {
            bucket.store(0, Relaxed);
        }
    }

    fn record(&self, now_ms: u64, elapsed: Duration) {
        let half = self.advance(now_ms);
        let micros = elapsed.as_micros() as f64;
        self.halves[(half % 2) as usize][bucket_of(micros)].fetch_add(1, Relaxed);
    }

    /// The upper bound of the bucket holding quantile `q` of both halves, in µs; `None`
    /// with fewer than [`HEDGE_MIN_SAMPLES`] answers.
    fn quantile_micros(&self, now_ms: u64, q: f64) -> Option<f64> {
        self.advance(now_ms);
        let counts: Vec<u64> = (0..BUCKETS)
            .map(|i| self.halves[0][i].load(Relaxed) + self.halves[1][i].load(Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total < HEDGE_MIN_SAMPLES {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bound_of(i));
            }
        }
        Some(bound_of(BUCKETS - 1))
    }
}

fn bucket_of(micros: f64) -> usize {
    if micros <= FIRST_BOUND_MICROS {
        return 0;
    }
    let index = ((micros / FIRST_BOUND_MICROS).ln() / GROWTH.ln()).ceil() as usize;
    index.min(BUCKETS - 1)
}

fn bound_of(index: usize) -> f64 {
    FIRST_BOUND_MICROS * GROWTH.powi(index as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantile_policy(q: &str) -> HedgeConfig {
        HedgeConfig {
            delay: HedgeDelay::try_from(q.to_owned()).unwrap(),
            factor: 1.0,
            min_delay: Duration::from_millis(1),
            non_idempotent: false,
        }
    }

    #[test]
    fn buckets_bound_what_they_hold() {
        for micros in [1.0, 100.0, 101.0, 999.0, 5_000.0, 123_456.0, 9e7] {
            let i = bucket_of(micros);
            assert!(bound_of(i) >= micros || i == BUCKETS - 1, "{micros}");
            assert!(i == 0 || bound_of(i - 1) < micros, "{micros}");
        }
    }

    #[test]
    fn a_fixed_delay_is_used_as_written() {
        let hedging = Hedging::new(HedgeConfig {
            delay: HedgeDelay::Fixed(Duration::from_millis(40)),
            ..quantile_policy("p95")
        });
        assert_eq!(hedging.delay(0), Some(Duration::from_millis(40)));
        assert!(!hedging.learns());
    }

    #[test]
    fn a_quantile_delay_follows_recent_answers() {
        let hedging = Hedging::new(quantile_policy("p90"));
        for _ in 0..10 {
            hedging.record(0, Duration::from_millis(5));
        }
        assert_eq!(hedging.delay(0), None, "too few answers to hedge by");
        // 90 answers at 5 ms, 10 at 200 ms: p90 is in 5 ms's bucket (within 25 %).
        for _ in 0..80 {
            hedging.record(0, Duration::from_millis(5));
        }
        for _ in 0..10 {
            hedging.record(0, Duration::from_millis(200));
        }
        let delay = hedging.delay(300).unwrap();
        assert!(
            delay >= Duration::from_millis(5) && delay < Duration::from_micros(6_250),
            "{delay:?}"
        );
        // The delay is recomputed at most every 250 ms.
        for _ in 0..1000 {
            hedging.record(400, Duration::from_millis(200));
        }
        assert_eq!(hedging.delay(400), Some(delay));
        let later = hedging.delay(600).unwrap();
        assert!(later >= Duration::from_millis(200), "{later:?}");
        // Two half-windows later the old answers are gone.
        for _ in 0..30 {
            hedging.record(10_600, Duration::from_millis(2));
        }
        let fresh = hedging.delay(10_600).unwrap();
        assert!(fresh < Duration::from_millis(3), "{fresh:?}");
    }

    #[test]
    fn the_floor_and_factor_apply_to_quantiles() {
        let hedging = Hedging::new(HedgeConfig {
            factor: 2.0,
            min_delay: Duration::from_millis(10),
            ..quantile_policy("p50")
        });
        for _ in 0..100 {
            hedging.record(0, Duration::from_millis(1));
        }
        assert_eq!(hedging.delay(0), Some(Duration::from_millis(10)));
        for _ in 0..1000 {
            hedging.record(0, Duration::from_millis(20));
        }
        let delay = hedging.delay(1000).unwrap();
        assert!(
            delay >= Duration::from_millis(40) && delay < Duration::from_millis(50),
            "{delay:?}"
        );
    }

    #[test]
    fn only_idempotent_methods_unless_asked() {
        let hedging = Hedging::new(quantile_policy("p95"));
        assert!(hedging.allows(&Method::GET));
        assert!(hedging.allows(&Method::PUT));
        assert!(!hedging.allows(&Method::POST));
        let all = Hedging::new(HedgeConfig {
            non_idempotent: true,
            ..quantile_policy("p95")
        });
        assert!(all.allows(&Method::POST));
    }
}
