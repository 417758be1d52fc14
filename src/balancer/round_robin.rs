use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{Balancer, PickContext};
use crate::upstream::Endpoint;

/// Each available endpoint in turn. Unavailable endpoints are skipped without giving their
/// turn to the next one twice in a row.
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
        _ctx: &PickContext<'_>,
    ) -> Option<&'e Arc<Endpoint>> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        for offset in 0..n {
            let candidate = &endpoints[start.wrapping_add(offset) % n];
            if candidate.is_available() {
                if offset > 0 {
                    // Move past the skipped ones so the next pick does not land here again.
                    self.next.fetch_add(offset, Relaxed);
                }
                return Some(candidate);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::EndpointState;
    use http::HeaderMap;
    use std::collections::HashMap;

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                let addr = format!("127.0.0.1:{}", 1000 + i);
                Arc::new(Endpoint::new(addr.clone(), addr.parse().unwrap(), 1))
            })
            .collect()
    }

    fn count_picks(rr: &RoundRobin, eps: &[Arc<Endpoint>], picks: usize) -> HashMap<String, usize> {
        let headers = HeaderMap::new();
        let ctx = PickContext {
            client_ip: [127, 0, 0, 1].into(),
            headers: &headers,
        };
        let mut counts = HashMap::new();
        for _ in 0..picks {
            let ep = rr.pick(eps, &ctx).expect("an endpoint");
            *counts.entry(ep.address.clone()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn spreads_evenly() {
        let eps = endpoints(4);
        let counts = count_picks(&RoundRobin::default(), &eps, 4000);
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|&c| c == 1000), "{counts:?}");
    }

    #[test]
    fn skips_draining_endpoints_evenly() {
        let eps = endpoints(3);
        eps[1].set_state(EndpointState::Draining);
        let counts = count_picks(&RoundRobin::default(), &eps, 3000);
        assert_eq!(counts.get("127.0.0.1:1001"), None);
        assert_eq!(counts["127.0.0.1:1000"], 1500);
        assert_eq!(counts["127.0.0.1:1002"], 1500);
    }

    #[test]
    fn none_when_nothing_available() {
        let eps = endpoints(2);
        for ep in &eps {
            ep.set_state(EndpointState::Draining);
        }
        let headers = HeaderMap::new();
        let ctx = PickContext {
            client_ip: [127, 0, 0, 1].into(),
            headers: &headers,
        };
        assert!(RoundRobin::default().pick(&eps, &ctx).is_none());
        assert!(RoundRobin::default().pick(&[], &ctx).is_none());
    }
}
