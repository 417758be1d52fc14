//! Counters the data plane publishes for metrics, the admin port and the control loop.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use http::StatusCode;

#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections_accepted: AtomicU64,
    /// Refused because the listener was at `max_connections`.
    pub connections_refused: AtomicU64,
    pub connections_active: AtomicU64,
    pub requests: AtomicU64,
    /// Responses sent to clients by class, index 0 = 1xx … 4 = 5xx, including weir's own.
    pub responses: [AtomicU64; 5],
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

/// Per-route counters, kept across reloads for routes of the same name.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Responses by class, index 0 = 1xx … 4 = 5xx, including weir's own.
    pub responses: [AtomicU64; 5],
    /// Request start to response head, retries included.
    pub latency: LatencyHistogram,
}

impl RouteStats {
    pub fn record(&self, status: StatusCode, elapsed: std::time::Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Relaxed);
        self.latency.record(elapsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
