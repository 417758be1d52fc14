//! Lock-free measurements kept per endpoint: a millisecond clock, rolling windows of
//! counts, peak-EWMA latency, decaying rates and latency histograms (also used per route
//! by the proxy). Concurrent updates may occasionally lose
//! one sample at a boundary; that is accepted to keep the request path free of locks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Milliseconds since a base instant on tokio's clock (so paused-time tests control it).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: tokio::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Self {
            base: tokio::time::Instant::now(),
        }
    }

    /// Milliseconds since the clock was made, by [`crate::clock::now`]: one reading per
    /// poll of a connection's task serves every endpoint and pool asked during it.
    pub fn now_ms(&self) -> u64 {
        crate::clock::millis_since(self.base)
    }
}

const BUCKETS: usize = 10;

/// Two counters over a sliding window split into ten buckets.
#[derive(Debug)]
pub struct RollingCounts {
    bucket_ms: u64,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Default)]
struct Bucket {
    /// Bucket index + 1 (0 = never used).
    epoch: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

impl RollingCounts {
    pub fn new(window: Duration) -> Self {
        Self {
            bucket_ms: (window.as_millis() as u64 / BUCKETS as u64).max(1),
            buckets: Default::default(),
        }
    }

    pub fn record(&self, now_ms: u64, a: u64, b: u64) {
        let index = now_ms / self.bucket_ms + 1;
        let bucket = &self.buckets[(index as usize) % BUCKETS];
        let epoch = bucket.epoch.load(Relaxed);
        if epoch != index
            && bucket
                .epoch
                .compare_exchange(epoch, index, Relaxed, Relaxed)
                .is_ok()
        {
            bucket.a.store(0, Relaxed);
            bucket.b.store(0, Relaxed);
        }
        if a > 0 {
            bucket.a.fetch_add(a, Relaxed);
        }
        if b > 0 {
            bucket.b.fetch_add(b, Relaxed);
        }
    }

    /// Sums over the buckets inside the window ending at `now_ms`.
    pub fn totals(&self, now_ms: u64) -> (u64, u64) {
        let index = now_ms / self.bucket_ms + 1;
        self.buckets
            .iter()
            .filter(|b| {
                let epoch = b.epoch.load(Relaxed);
                epoch != 0 && epoch <= index && index - epoch < BUCKETS as u64
            })
            .fold((0, 0), |(a, b), bucket| {
                (a + bucket.a.load(Relaxed), b + bucket.b.load(Relaxed))
            })
    }
}

/// An `f64` in an atomic.
#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn load(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
    fn store(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }
}

/// Peak-EWMA (Finagle/linkerd): jumps up to a slower observation at once, decays toward
/// faster ones with time constant `tau`, and decays toward zero while unobserved so an idle
/// endpoint is tried again.
#[derive(Debug, Default)]
pub struct PeakEwma {
    value_ms: AtomicF64,
    stamp_ms: AtomicU64,
}

impl PeakEwma {
    pub fn observe(&self, now_ms: u64, rtt_ms: f64, tau_ms: f64) {
        let elapsed = now_ms.saturating_sub(self.stamp_ms.load(Relaxed)) as f64;
        let previous = self.value_ms.load();
        // After half the time constant without samples the estimate says how the endpoint
        // was, not how it is (the score strategy probes it then): the new sample replaces it.
        let next = if rtt_ms > previous || elapsed > tau_ms / 2.0 {
            rtt_ms
        } else {
            let w = (-elapsed / tau_ms).exp();
            previous * w + rtt_ms * (1.0 - w)
        };
        self.value_ms.store(next);
        self.stamp_ms.store(now_ms, Relaxed);
    }

    /// When the last sample came, if one has.
    pub fn last_sample_ms(&self) -> Option<u64> {
        (self.value_ms.load() > 0.0).then(|| self.stamp_ms.load(Relaxed))
    }

    /// The estimate at `now_ms`, decayed for the time since the last observation.
    pub fn get(&self, now_ms: u64, tau_ms: f64) -> f64 {
        let elapsed = now_ms.saturating_sub(self.stamp_ms.load(Relaxed)) as f64;
        self.value_ms.load() * (-elapsed / tau_ms).exp()
    }
}

/// Share of recent events that were bad: each event moves it by `ALPHA`, and it decays
/// toward zero with time constant `tau` while nothing happens.
#[derive(Debug, Default)]
pub struct DecayingRate {
    value: AtomicF64,
    stamp_ms: AtomicU64,
}

impl DecayingRate {
    const ALPHA: f64 = 0.1;

    pub fn observe(&self, now_ms: u64, bad: bool, tau_ms: f64) {
        let current = self.get(now_ms, tau_ms);
        let x = if bad { 1.0 } else { 0.0 };
        self.value.store(current + (x - current) * Self::ALPHA);
        self.stamp_ms.store(now_ms, Relaxed);
    }

    pub fn get(&self, now_ms: u64, tau_ms: f64) -> f64 {
        let elapsed = now_ms.saturating_sub(self.stamp_ms.load(Relaxed)) as f64;
        self.value.load() * (-elapsed / tau_ms).exp()
    }
}

/// Upper bounds (seconds) of latency buckets: fine where API targets sit (P50 < 50 ms,
/// P95 < 200 ms, P99 < 500 ms) and coarse beyond.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram recorded with atomic adds only; exported as a Prometheus histogram.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: std::time::Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros().min(u64::MAX as u128) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Cumulative counts per bucket bound (Prometheus `le`), the sum in seconds, the count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut cumulative = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, count)| {
                cumulative += count.load(Relaxed);
                (*bound, cumulative)
            })
            .collect();
        let count = self.count.load(Relaxed);
        (buckets, self.sum_micros.load(Relaxed) as f64 / 1e6, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_window_forgets_old_buckets() {
        let counts = RollingCounts::new(Duration::from_secs(10));
        counts.record(0, 5, 1);
        counts.record(4_000, 2, 2);
        assert_eq!(counts.totals(5_000), (7, 3));
        // At 10.5 s the bucket of t=0 is outside the window; t=4 s still inside.
        assert_eq!(counts.totals(10_500), (2, 2));
        assert_eq!(counts.totals(30_000), (0, 0));
        counts.record(30_000, 1, 0);
        assert_eq!(counts.totals(30_000), (1, 0));
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let ewma = PeakEwma::default();
        ewma.observe(0, 10.0, 10_000.0);
        assert_eq!(ewma.get(0, 10_000.0), 10.0);
        ewma.observe(0, 200.0, 10_000.0);
        assert_eq!(ewma.get(0, 10_000.0), 200.0, "peak is taken at once");
        ewma.observe(2_000, 10.0, 10_000.0);
        let after = ewma.get(2_000, 10_000.0);
        // w = e^-0.2: 200·0.819 + 10·0.181 = 165.6
        assert!((after - 165.6).abs() < 0.1, "{after}");
        // Unobserved for one tau: decays by e^-1 toward zero.
        let idle = ewma.get(12_000, 10_000.0);
        assert!((idle - after / std::f64::consts::E).abs() < 0.1, "{idle}");
        // A sample after more than half a tau of silence replaces the stale estimate.
        ewma.observe(12_000, 10.0, 10_000.0);
        assert_eq!(ewma.get(12_000, 10_000.0), 10.0);
        assert_eq!(ewma.last_sample_ms(), Some(12_000));
        assert_eq!(PeakEwma::default().last_sample_ms(), None);
    }

    #[test]
    fn decaying_rate_tracks_errors() {
        let rate = DecayingRate::default();
        for _ in 0..50 {
            rate.observe(0, true, 10_000.0);
        }
        assert!(rate.get(0, 10_000.0) > 0.99);
        for _ in 0..50 {
            rate.observe(0, false, 10_000.0);
        }
        assert!(rate.get(0, 10_000.0) < 0.01);
    }
    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(800));
        h.record(Duration::from_millis(40));
        h.record(Duration::from_millis(40));
        h.record(Duration::from_secs(30));
        let (buckets, sum, count) = h.snapshot();
        assert_eq!(count, 4);
        assert!((sum - 30.0808).abs() < 1e-6);
        assert_eq!(buckets[0], (0.001, 1));
        assert_eq!(buckets[5], (0.05, 3));
        assert_eq!(buckets.last(), Some(&(10.0, 3)), "30 s is only in +Inf");
    }
}
