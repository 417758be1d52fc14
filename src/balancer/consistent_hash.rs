//! Consistent hashing on a request key (client IP, a header or a cookie) over a ring of
//! virtual nodes, so that when one of N endpoints leaves only its ~1/N of keys move. An
//! unusable endpoint's keys go to the next usable one on the ring.

use std::sync::Arc;

use super::{Balancer, PickContext, TableCache};
use crate::config::{HashConfig, HashKey, defaults::DEFAULT_HASH_VNODES};
use crate::stable_hash;
use crate::upstream::Endpoint;

#[derive(Debug)]
pub struct ConsistentHash {
    key: HashKey,
    vnodes: u32,
    /// (point, endpoint index), sorted by point.
    ring: TableCache<Vec<(u64, u32)>>,
}

impl ConsistentHash {
    pub fn new(config: Option<&HashConfig>) -> Self {
        let (key, vnodes) = match config {
            Some(c) => (
                HashKey::parse(&c.key).unwrap_or(HashKey::ClientIp),
                c.vnodes,
            ),
            None => (HashKey::ClientIp, DEFAULT_HASH_VNODES),
        };
        Self {
            key,
            vnodes: vnodes.max(1),
            ring: TableCache::default(),
        }
    }

    fn build_ring(&self, endpoints: &[Arc<Endpoint>]) -> Vec<(u64, u32)> {
        let mean_weight = endpoints.iter().map(|e| f64::from(e.weight())).sum::<f64>()
            / endpoints.len().max(1) as f64;
        let mut points = Vec::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let share = f64::from(endpoint.weight()) / mean_weight.max(1e-9);
            let count = ((f64::from(self.vnodes) * share).round() as u32).clamp(1, 100_000);
            // Points depend on the address only, so other endpoints' points never move.
            // The same in every build and process (`stable_hash`), so that a fleet agrees.
            points.extend((0..count).map(|v| {
                let point =
                    stable_hash::hash_parts(&[endpoint.address.as_bytes(), &v.to_le_bytes()]);
                (point, index as u32)
            }));
        }
        points.sort_unstable();
        points
    }

    fn request_key(&self, ctx: &PickContext<'_>) -> u64 {
        key_value(&self.key, ctx.headers)
            .map(stable_hash::hash)
            .unwrap_or_else(|| stable_hash::hash_ip(ctx.client_ip))
    }
}

/// The request's value for a `header:NAME` or `cookie:NAME` key; `None` for `client_ip`
/// (the caller hashes the address its own way) or a request without the key.
pub fn key_value<'h>(key: &HashKey, headers: &'h http::HeaderMap) -> Option<&'h [u8]> {
    match key {
        HashKey::ClientIp => None,
        HashKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
        HashKey::Cookie(name) => cookie(headers, name).map(str::as_bytes),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

impl Balancer for ConsistentHash {
    fn strategy(&self) -> &'static str {
        "consistent_hash"
    }

    fn pick<'e>(
        &self,
        endpoints: &'e [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'e Arc<Endpoint>> {
        if endpoints.is_empty() {
            return None;
        }
        let ring = self
            .ring
            .get(endpoints, ctx.generation, |e| self.build_ring(e));
        let key = self.request_key(ctx);
        let start = ring.partition_point(|(point, _)| *point < key);
        let len = ring.len();
        (0..len)
            .map(|k| ring[(start + k) % len].1 as usize)
            .filter_map(|index| endpoints.get(index))
            .find(|e| ctx.usable(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::*;
    use http::{HeaderMap, HeaderValue};

    fn by_header() -> ConsistentHash {
        ConsistentHash::new(Some(&HashConfig {
            key: "header:x-user".into(),
            vnodes: DEFAULT_HASH_VNODES,
        }))
    }

    fn assignments(ch: &ConsistentHash, eps: &[Arc<Endpoint>], generation: u64) -> Vec<String> {
        (0..10_000)
            .map(|user| {
                let mut h = HeaderMap::new();
                h.insert(
                    "x-user",
                    HeaderValue::from_str(&format!("user-{user}")).unwrap(),
                );
                let c = PickContext {
                    generation,
                    ..ctx(&h)
                };
                ch.pick(eps, &c).unwrap().address.clone()
            })
            .collect()
    }

    /// The ring is the same in every build: these placements only change if
    /// `stable_hash` or the ring's byte layout does (which moves every key in a fleet).
    #[test]
    fn placements_are_pinned() {
        let eps = endpoints(&[1; 5]);
        let first: Vec<String> = assignments(&by_header(), &eps, 0)
            .into_iter()
            .take(8)
            .collect();
        assert_eq!(first, PINNED);
    }

    /// Where `user-0` … `user-7` go among 127.0.0.1:1000–1004.
    const PINNED: [&str; 8] = [
        "127.0.0.1:1004",
        "127.0.0.1:1002",
        "127.0.0.1:1002",
        "127.0.0.1:1000",
        "127.0.0.1:1002",
        "127.0.0.1:1004",
        "127.0.0.1:1001",
        "127.0.0.1:1000",
    ];

    #[test]
    fn same_key_same_endpoint() {
        let eps = endpoints(&[1; 5]);
        let ch = by_header();
        assert_eq!(assignments(&ch, &eps, 0), assignments(&ch, &eps, 0));
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth_of_keys() {
        let n = 10;
        let eps = endpoints(&[1; 10]);
        let ch = by_header();
        let before = assignments(&ch, &eps, 0);
        let mut fewer = eps.clone();
        let removed = fewer.remove(3);
        let after = assignments(&ch, &fewer, 1);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let owned_by_removed = before.iter().filter(|a| **a == removed.address).count();
        // Only the removed endpoint's keys move…
        assert_eq!(moved, owned_by_removed);
        // …and that is about 1/N of them (with a margin for ring variance).
        let share = moved as f64 / 10_000.0;
        assert!(share <= 1.0 / n as f64 + 0.04, "{share}");
        // The spread over endpoints is reasonably even.
        for ep in &eps {
            let owned = before.iter().filter(|a| **a == ep.address).count();
            assert!((600..=1400).contains(&owned), "{} owns {owned}", ep.address);
        }
    }

    #[test]
    fn unusable_endpoint_keys_go_to_the_next_on_the_ring_and_come_back() {
        let eps = endpoints(&[1; 4]);
        let ch = by_header();
        let before = assignments(&ch, &eps, 0);
        eps[2].set_draining(true, "test");
        let during = assignments(&ch, &eps, 0);
        assert!(during.iter().all(|a| *a != eps[2].address));
        let moved = before.iter().zip(&during).filter(|(a, b)| a != b).count();
        assert_eq!(
            moved,
            before.iter().filter(|a| **a == eps[2].address).count()
        );
        eps[2].set_draining(false, "test");
        assert_eq!(assignments(&ch, &eps, 0), before);
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_static("a=1; session=\"abc\"; b=2"),
        );
        assert_eq!(cookie(&h, "session"), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
    }
}
