//! Latency- and error-aware balancing: power of two choices on a cost built from the
//! seeds' four inputs.
//!
//! ```text
//! cost = latency^a · (in_flight + 1)^b · (1 + 9·error_rate)^c · (1 + 9·failure_rate)^d
//!        · (100 while in Retry-After backoff) / (weight · slow_start_factor)
//! ```
//!
//! `latency` is the peak-EWMA time to response head (linkerd/Finagle), `error_rate` the
//! decaying share of 5xx/429 responses (success rate), `failure_rate` the decaying share of
//! attempts with no response (availability). The exponents are the configured weights
//! scaled so that `a + b = 2`: with equal response-time and load weights the base is
//! linkerd's `latency × (in_flight + 1)`; the defaults (0.3, 0.1, 0.4, 0.2) give
//! a = 1.5, b = 0.5, c = 2, d = 1. An endpoint with no latency estimate gets one request at
//! a time until it answers (Finagle's rule), so a new endpoint is not flooded.
//!
//! An estimate only learns from answers, so an endpoint that was slow and is avoided would
//! keep its old estimate (decaying slowly) long after it recovered. An endpoint whose
//! estimate is stale (no sample for half the decay time, nothing in flight) costs nothing
//! when it is one of the two candidates: it gets one probe request, whose answer renews the
//! estimate — back to its share if it recovered, avoided again if not. A slow endpoint thus
//! costs one request per half decay time (5 s by default), and is never starved.

use std::sync::Arc;

use super::{Balancer, PickContext, best_of_two};
use crate::config::ScoreWeights;
use crate::upstream::Endpoint;

#[derive(Debug, Clone, Copy)]
struct Exponents {
    latency: f64,
    load: f64,
    errors: f64,
    failures: f64,
}

#[derive(Debug)]
pub struct Score {
    exponents: Exponents,
}

/// Latency estimates below this count as "no estimate yet".
const UNKNOWN_LATENCY_MS: f64 = 1e-3;
const BACKOFF_PENALTY: f64 = 100.0;

impl Score {
    pub fn new(weights: &ScoreWeights) -> Self {
        let base = weights.response_time + weights.load;
        // Validation rejects all-zero weights; guard anyway so costs stay finite.
        let scale = if base > 0.0 { 2.0 / base } else { 1.0 };
        Self {
            exponents: Exponents {
                latency: weights.response_time * scale,
                load: weights.load * scale,
                errors: weights.success_rate * scale,
                failures: weights.availability * scale,
            },
        }
    }

    fn cost_at(&self, endpoint: &Endpoint, now_ms: u64) -> f64 {
        if endpoint.latency_is_stale(now_ms) {
            return 0.0;
        }
        let e = self.exponents;
        // What it owes counts as evidence too: a request waiting 800 ms for its head says
        // latency is at least that, before any answer teaches the estimate.
        let estimate = endpoint.latency_ms(now_ms);
        let in_flight = endpoint.in_flight() as f64;
        if estimate < UNKNOWN_LATENCY_MS && in_flight > 0.0 {
            return f64::MAX / 4.0;
        }
        let latency = estimate.max(endpoint.head_wait_ms(now_ms) as f64);
        let capacity = f64::from(endpoint.weight().max(1)) * endpoint.slow_start_factor(now_ms);
        let mut cost = pow(latency.max(UNKNOWN_LATENCY_MS), e.latency)
            * pow(in_flight + 1.0, e.load)
            * pow(1.0 + 9.0 * endpoint.error_rate(now_ms), e.errors)
            * pow(1.0 + 9.0 * endpoint.failure_rate(now_ms), e.failures)
            / capacity;
        if endpoint.in_backoff(now_ms) {
            cost *= BACKOFF_PENALTY;
        }
        cost
    }
}

/// `x^e` without `powf` for the exponents the default weights give (0.5, 1, 1.5, 2) and 0.
fn pow(x: f64, e: f64) -> f64 {
    match e {
        0.0 => 1.0,
        0.5 => x.sqrt(),
        1.0 => x,
        1.5 => x * x.sqrt(),
        2.0 => x * x,
        _ => x.powf(e),
    }
}

impl Balancer for Score {
    fn strategy(&self) -> &'static str {
        "score"
    }

    fn pick<'e>(
        &self,
        endpoints: &'e [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'e Arc<Endpoint>> {
        best_of_two(endpoints, ctx, |e| self.cost_at(e, ctx.now_ms))
    }

    fn cost(&self, endpoint: &Endpoint, now_ms: u64) -> Option<f64> {
        Some(self.cost_at(endpoint, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_powers_agree_with_powf() {
        for x in [1e-3, 0.5, 1.0, 1.7, 10.0, 250.0, 1e6] {
            for e in [0.0, 0.5, 1.0, 1.5, 2.0, 0.7, 1.25] {
                let (fast, slow) = (pow(x, e), f64::powf(x, e));
                assert!(
                    (fast - slow).abs() <= slow.abs() * 1e-12,
                    "{x}^{e}: {fast} vs {slow}"
                );
            }
        }
    }
    use crate::balancer::test_support::*;
    use crate::upstream::Outcome;
    use http::{HeaderMap, StatusCode};
    use std::time::Duration;

    fn observe(ep: &Arc<Endpoint>, status: StatusCode, ms: u64) {
        let mut guard = ep.begin_request();
        ep.record_outcome(
            &mut guard,
            Outcome::Response {
                status,
                retry_after: None,
            },
            Duration::from_millis(ms),
        );
    }

    #[test]
    fn default_exponents() {
        let s = Score::new(&ScoreWeights::default());
        let e = s.exponents;
        assert!((e.latency - 1.5).abs() < 1e-9 && (e.load - 0.5).abs() < 1e-9);
        assert!((e.errors - 2.0).abs() < 1e-9 && (e.failures - 1.0).abs() < 1e-9);
    }

    #[test]
    fn slow_endpoint_gets_almost_nothing() {
        let eps = endpoints(&[1, 1, 1, 1]);
        for (i, ep) in eps.iter().enumerate() {
            observe(ep, StatusCode::OK, if i == 3 { 200 } else { 5 });
        }
        let s = Score::new(&ScoreWeights::default());
        let h = HeaderMap::new();
        let counts = tally(&s, &eps, &ctx(&h), 4000);
        assert_eq!(counts[3], 0, "{counts:?}");
    }

    #[test]
    fn errors_and_backoff_are_penalised() {
        let eps = endpoints(&[1, 1]);
        for _ in 0..20 {
            observe(&eps[0], StatusCode::OK, 5);
            observe(&eps[1], StatusCode::INTERNAL_SERVER_ERROR, 5);
        }
        let s = Score::new(&ScoreWeights::default());
        let now = eps[0].now_ms();
        assert!(s.cost_at(&eps[1], now) > 10.0 * s.cost_at(&eps[0], now));

        let limited = endpoints(&[1]);
        observe(&limited[0], StatusCode::OK, 1);
        let before = s.cost_at(&limited[0], limited[0].now_ms());
        let mut guard = limited[0].begin_request();
        limited[0].record_outcome(
            &mut guard,
            Outcome::Response {
                status: StatusCode::TOO_MANY_REQUESTS,
                retry_after: Some(Duration::from_secs(10)),
            },
            Duration::from_millis(1),
        );
        drop(guard);
        let after = s.cost_at(&limited[0], limited[0].now_ms());
        assert!(after > 100.0 * before, "{before} → {after}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovered_endpoint_is_probed_and_gets_its_share_back() {
        let eps = endpoints(&[1, 1]);
        let s = Score::new(&ScoreWeights::default());
        let h = HeaderMap::new();
        // eps[0] was slow (1 s); eps[1] answers in 5 ms and keeps answering.
        observe(&eps[0], StatusCode::OK, 1000);
        observe(&eps[1], StatusCode::OK, 5);
        let mut first_probe_ms = None;
        for step in 0..200u64 {
            tokio::time::advance(Duration::from_millis(50)).await;
            let c = PickContext {
                now_ms: eps[0].now_ms(),
                ..ctx(&h)
            };
            let picked = s.pick(&eps, &c).unwrap();
            if Arc::ptr_eq(picked, &eps[0]) {
                first_probe_ms.get_or_insert(step * 50);
                // It has recovered: the probe's answer is fast.
                observe(&eps[0], StatusCode::OK, 5);
            } else {
                observe(&eps[1], StatusCode::OK, 5);
            }
        }
        let probed_at = first_probe_ms.expect("the slow endpoint was probed");
        // Stale after half the default 10 s decay: probed about 5 s in, not starved.
        assert!((5000..=6000).contains(&probed_at), "{probed_at}");
        // After the probe, both answer in 5 ms: an even split.
        let c = PickContext {
            now_ms: eps[0].now_ms(),
            ..ctx(&h)
        };
        let counts = tally(&s, &eps, &c, 4000);
        assert!(counts[0] > 1500, "{counts:?}");
    }

    #[test]
    fn unknown_endpoints_get_one_request_at_a_time() {
        let eps = endpoints(&[1]);
        let s = Score::new(&ScoreWeights::default());
        assert!(s.cost_at(&eps[0], 0) < 1.0);
        let _in_flight = eps[0].begin_request();
        assert!(s.cost_at(&eps[0], 0) > 1e100);
    }
}
