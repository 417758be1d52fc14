//! Least connections as power of two choices: of two random usable endpoints, the one with
//! fewer requests in flight per unit of weight (scaled down while ramping up) wins.

use std::sync::Arc;

use super::{Balancer, PickContext, best_of_two};
use crate::upstream::Endpoint;

#[derive(Debug, Default)]
pub struct LeastConnections;

pub(crate) fn load(endpoint: &Endpoint, now_ms: u64) -> f64 {
    let capacity = f64::from(endpoint.weight().max(1)) * endpoint.slow_start_factor(now_ms);
    (endpoint.in_flight() as f64 + 1.0) / capacity
}

impl Balancer for LeastConnections {
    fn strategy(&self) -> &'static str {
        "least_connections"
    }

    fn pick<'e>(
        &self,
        endpoints: &'e [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'e Arc<Endpoint>> {
        best_of_two(endpoints, ctx, |e| load(e, ctx.now_ms))
    }

    fn cost(&self, endpoint: &Endpoint, now_ms: u64) -> Option<f64> {
        Some(load(endpoint, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::*;
    use http::HeaderMap;

    #[test]
    fn never_picks_the_busier_of_two() {
        let eps = endpoints(&[1, 1]);
        let _held: Vec<_> = (0..5).map(|_| eps[0].begin_request()).collect();
        let _other: Vec<_> = (0..2).map(|_| eps[1].begin_request()).collect();
        let h = HeaderMap::new();
        assert_eq!(tally(&LeastConnections, &eps, &ctx(&h), 1000), [0, 1000]);
    }

    #[test]
    fn sampled_pairs_favour_idle_endpoints() {
        // Larger than the exact-scan size, so pairs are sampled.
        let eps = endpoints(&[1; 12]);
        // Endpoint 0 is very busy: P2C picks it only when paired with… nothing idler.
        let _held: Vec<_> = (0..50).map(|_| eps[0].begin_request()).collect();
        let h = HeaderMap::new();
        let counts = tally(&LeastConnections, &eps, &ctx(&h), 12_000);
        assert_eq!(counts[0], 0, "{counts:?}");
    }

    #[test]
    fn weight_scales_capacity() {
        let eps = endpoints(&[3, 1]);
        let _a: Vec<_> = (0..2).map(|_| eps[0].begin_request()).collect();
        // (2+1)/3 = 1.0 vs (0+1)/1 = 1.0: a tie goes to the first scanned; add one more to b.
        let _b = eps[1].begin_request();
        let h = HeaderMap::new();
        assert_eq!(tally(&LeastConnections, &eps, &ctx(&h), 100), [100, 0]);
    }
}
