use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{Balancer, PickContext, take_turn, walk_rotation};
use crate::upstream::Endpoint;

/// Each usable endpoint in turn. Unusable endpoints are skipped without giving their turn
/// to the next one twice in a row.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn strategy(&self) -> &'static str {
        "round_robin"
    }

    fn pick<'e>(
        &self,
        endpoints: &'e [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'e Arc<Endpoint>> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let start = take_turn(&self.next, ctx);
        let pick = walk_rotation(
            (0..n).map(|offset| &endpoints[start.wrapping_add(offset) % n]),
            ctx,
        )?;
        if let Some(offset) = pick.clean_offset
            && offset > 0
            && !ctx.preview
        {
            // Move past the unusable ones so the next pick does not land on them again.
            // (A ramping endpoint that declined keeps its place in turn.)
            self.next.fetch_add(offset, Relaxed);
        }
        Some(pick.endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::*;
    use http::HeaderMap;

    #[test]
    fn spreads_evenly() {
        let eps = endpoints(&[1, 1, 1, 1]);
        let h = HeaderMap::new();
        let counts = tally(&RoundRobin::default(), &eps, &ctx(&h), 4000);
        assert_eq!(counts, [1000; 4]);
    }

    #[test]
    fn skips_draining_endpoints_evenly() {
        let eps = endpoints(&[1, 1, 1]);
        eps[1].set_draining(true, "test");
        let h = HeaderMap::new();
        let counts = tally(&RoundRobin::default(), &eps, &ctx(&h), 3000);
        assert_eq!(counts, [1500, 0, 1500]);
    }

    #[test]
    fn none_when_nothing_is_usable_and_panic_mode_ignores_health() {
        let eps = endpoints(&[1, 1]);
        for ep in &eps {
            ep.record_health_check(false, 1, 1, "down");
        }
        let h = HeaderMap::new();
        let rr = RoundRobin::default();
        assert!(rr.pick(&eps, &ctx(&h)).is_none());
        assert!(rr.pick(&[], &ctx(&h)).is_none());
        let panic = PickContext {
            ignore_health: true,
            ..ctx(&h)
        };
        assert!(rr.pick(&eps, &panic).is_some());
        eps[0].set_draining(true, "test");
        eps[1].set_draining(true, "test");
        assert!(
            rr.pick(&eps, &panic).is_none(),
            "panic mode never uses draining endpoints"
        );
    }

    #[test]
    fn excluded_and_full_endpoints_are_skipped() {
        let eps = endpoints(&[1, 1, 1]);
        let h = HeaderMap::new();
        let exclude = [eps[0].clone()];
        let c = PickContext {
            exclude: &exclude,
            ..ctx(&h)
        };
        assert_eq!(tally(&RoundRobin::default(), &eps, &c, 100)[0], 0);
        let _busy = eps[1].begin_request();
        let c = PickContext {
            max_in_flight: 1,
            ..ctx(&h)
        };
        assert_eq!(tally(&RoundRobin::default(), &eps, &c, 100)[1], 0);
    }
}
