//! Smooth weighted round robin (nginx's algorithm), precomputed as a schedule so a pick is
//! one atomic increment. The schedule is rebuilt when the pool's generation changes
//! (endpoints added or removed, weights changed at runtime).

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use super::{Balancer, PickContext, TableCache, take_turn, walk_rotation};
use crate::upstream::Endpoint;

/// Longest schedule kept; larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 1 << 16;

#[derive(Debug, Default)]
pub struct Weighted {
    next: AtomicUsize,
    /// Endpoint indices in smooth-WRR order, one full cycle.
    schedule: TableCache<Vec<u32>>,
}

/// nginx's smooth weighted round robin over `weights`, one full cycle.
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let mut weights: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        for w in &mut weights {
            *w = (*w * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Balancer for Weighted {
    fn strategy(&self) -> &'static str {
        "weighted"
    }

    fn pick<'e>(
        &self,
        endpoints: &'e [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'e Arc<Endpoint>> {
        if endpoints.is_empty() {
            return None;
        }
        let schedule = self.schedule.get(endpoints, ctx.generation, |endpoints| {
            let weights: Vec<u64> = endpoints.iter().map(|e| u64::from(e.weight())).collect();
            smooth_schedule(&weights)
        });
        let len = schedule.len();
        let start = take_turn(&self.next, ctx);
        let candidates = (0..len).filter_map(|offset| {
            endpoints.get(schedule[start.wrapping_add(offset) % len] as usize)
        });
        walk_rotation(candidates, ctx).map(|pick| pick.endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::*;
    use http::HeaderMap;

    #[test]
    fn nginx_sequence_is_smooth() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn split_is_within_two_percent_over_ten_thousand_picks() {
        let eps = endpoints(&[5, 3, 2]);
        let h = HeaderMap::new();
        let counts = tally(&Weighted::default(), &eps, &ctx(&h), 10_000);
        for (count, expected) in counts.iter().zip([5000.0, 3000.0, 2000.0]) {
            let error = (*count as f64 - expected).abs() / 10_000.0;
            assert!(error <= 0.02, "{counts:?}");
        }
    }

    #[test]
    fn runtime_weight_change_takes_effect_with_a_new_generation() {
        let eps = endpoints(&[1, 1]);
        let h = HeaderMap::new();
        let w = Weighted::default();
        assert_eq!(tally(&w, &eps, &ctx(&h), 1000), [500, 500]);
        eps[0].set_weight(3);
        let c = PickContext {
            generation: 1,
            ..ctx(&h)
        };
        assert_eq!(tally(&w, &eps, &c, 1000), [750, 250]);
    }

    #[test]
    fn huge_weights_are_scaled() {
        let order = smooth_schedule(&[10_000, 9_999, 1]);
        assert!(order.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(order.contains(&2));
    }
}
