//! Which pool a forwarding route sends a request to: its one pool, or one of weighted
//! pools, chosen per request or kept per client (sticky). Weights are atomics, so the
//! admin API can move them while requests run; a reload sets the file's weights again.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use http::HeaderMap;

use crate::config::HashKey;
use crate::stable_hash;
use crate::upstream::Pool;

/// One side of a split.
#[derive(Debug)]
pub struct Side {
    pub pool: Arc<Pool>,
    weight: AtomicU32,
    /// Requests this side was chosen for.
    pub requests: AtomicU64,
}

impl Side {
    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }
}

/// A weight change that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WeightError {
    #[error("the route splits to no pool named {0:?}")]
    UnknownPool(String),
    #[error("the weights sum to 0: no side would get a request")]
    AllZero,
    #[error("the weights sum to more than {}", u32::MAX)]
    TooLarge,
}

/// The pools a forwarding route sends to.
#[derive(Debug)]
pub struct Split {
    sides: Vec<Side>,
    /// Keeps one client on one side; requests without the key are split one by one.
    sticky: Option<HashKey>,
}

impl Split {
    /// `sides` come validated: at least one, weights summing to 1..=u32::MAX.
    pub fn new(sides: Vec<(Arc<Pool>, u32)>, sticky: Option<HashKey>) -> Self {
        Self {
            sides: sides
                .into_iter()
                .map(|(pool, weight)| Side {
                    pool,
                    weight: AtomicU32::new(weight),
                    requests: AtomicU64::new(0),
                })
                .collect(),
            sticky,
        }
    }

    pub fn sides(&self) -> &[Side] {
        &self.sides
    }

    /// The first pool: the only one of a plain route, the one metrics name the route by.
    pub fn primary(&self) -> &Arc<Pool> {
        &self.sides[0].pool
    }

    /// The pool for one request. With a sticky key, a client's point in the weight range
    /// is a hash of its key, so it stays on its side while the weights stay; when the
    /// last side grows (5 % → 50 %), clients only move onto it, never off it.
    /// Returns the side's position and its pool.
    pub fn pick(&self, client: IpAddr, headers: &HeaderMap) -> (usize, &Arc<Pool>) {
        let [first, rest @ ..] = self.sides.as_slice() else {
            unreachable!("a split has at least one side");
        };
        if rest.is_empty() {
            return (0, &first.pool);
        }
        let total: u64 = self.sides.iter().map(|s| u64::from(s.weight())).sum();
        let point = match self
            .sticky
            .as_ref()
            .and_then(|key| sticky_hash(key, client, headers))
        {
            // Scaled into 0..total without the bias of a modulo.
            Some(hash) => ((u128::from(hash) * u128::from(total)) >> 64) as u64,
            None => fastrand::u64(0..total.max(1)),
        };
        let mut below = 0u64;
        for (index, side) in self.sides.iter().enumerate() {
            below += u64::from(side.weight());
            if point < below {
                side.requests.fetch_add(1, Relaxed);
                return (index, &side.pool);
            }
        }
        // Only when every weight is 0, which neither the file nor the admin API allows.
        first.requests.fetch_add(1, Relaxed);
        (0, &first.pool)
    }

    /// Sets the weights of the named sides (others keep theirs); all or nothing.
    pub fn set_weights(&self, weights: &[(String, u32)]) -> Result<(), WeightError> {
        let mut next: Vec<u32> = self.sides.iter().map(Side::weight).collect();
        for (pool, weight) in weights {
            let index = self
                .sides
                .iter()
                .position(|s| s.pool.name == *pool)
                .ok_or_else(|| WeightError::UnknownPool(pool.clone()))?;
            next[index] = *weight;
        }
        let total: u64 = next.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return Err(WeightError::AllZero);
        }
        if total > u64::from(u32::MAX) {
            return Err(WeightError::TooLarge);
        }
        for (side, weight) in self.sides.iter().zip(next) {
            side.weight.store(weight, Relaxed);
        }
        Ok(())
    }
}

/// The sticky key's hash, salted so that a split does not line up with a consistent-hash
/// ring on the same key; `None` when the request lacks the key.
fn sticky_hash(key: &HashKey, client: IpAddr, headers: &HeaderMap) -> Option<u64> {
    const SALT: &[u8] = b"split";
    match key {
        HashKey::ClientIp => Some(match client.to_canonical() {
            IpAddr::V4(v4) => stable_hash::hash_parts(&[SALT, &v4.octets()]),
            IpAddr::V6(v6) => stable_hash::hash_parts(&[SALT, &v6.octets()]),
        }),
        HashKey::Header(_) | HashKey::Cookie(_) => crate::balancer::key_value(key, headers)
            .map(|value| stable_hash::hash_parts(&[SALT, value])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Snapshot;

    fn snapshot() -> Snapshot {
        let text = r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[routes]]
pools = [{ pool = "stable", weight = 90 }, { pool = "canary", weight = 10 }]
sticky = "header:x-user"

[pools.stable]
endpoints = [{ address = "127.0.0.1:9001" }]
[pools.canary]
endpoints = [{ address = "127.0.0.1:9002" }]
"#;
        let config = crate::config::load_str(text, std::path::Path::new("t.toml")).unwrap();
        Snapshot::build(&config, &Default::default(), None)
    }

    fn split(snapshot: &Snapshot) -> &Split {
        match &snapshot.router.routes()[0].action {
            crate::proxy::route::Action::Forward(split) => split,
            _ => unreachable!("the route forwards"),
        }
    }

    fn user(n: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", format!("user-{n}").parse().unwrap());
        headers
    }

    #[test]
    fn sticky_points_are_pinned_so_that_every_instance_agrees() {
        let key = HashKey::Header(http::HeaderName::from_static("x-user"));
        let client = IpAddr::from([192, 0, 2, 1]);
        // Changing these moves users between sides across a fleet: only on purpose.
        assert_eq!(
            sticky_hash(&key, client, &user(1)),
            Some(stable_hash::hash_parts(&[b"split", b"user-1"]))
        );
        assert_eq!(
            sticky_hash(
                &HashKey::ClientIp,
                "::ffff:192.0.2.1".parse().unwrap(),
                &user(1)
            ),
            sticky_hash(&HashKey::ClientIp, client, &user(1)),
            "an IPv4-mapped client is its IPv4 address"
        );
        assert_eq!(sticky_hash(&key, client, &HeaderMap::new()), None);
    }

    #[test]
    fn growing_the_last_side_only_moves_clients_onto_it() {
        let snapshot = snapshot();
        let split = split(&snapshot);
        let client = IpAddr::from([192, 0, 2, 1]);
        let side = |n: usize| split.pick(client, &user(n)).1.name.clone();
        let before: Vec<String> = (0..2000).map(side).collect();
        let on_canary = before.iter().filter(|s| *s == "canary").count();
        assert!(
            (140..=260).contains(&on_canary),
            "{on_canary} of 2000 at 10 %"
        );
        split
            .set_weights(&[("stable".into(), 50), ("canary".into(), 50)])
            .unwrap();
        let after: Vec<String> = (0..2000).map(side).collect();
        for (n, (was, is)) in before.iter().zip(&after).enumerate() {
            assert!(
                !(was == "canary" && is == "stable"),
                "user-{n} left the canary"
            );
        }
        let now = after.iter().filter(|s| *s == "canary").count();
        assert!((900..=1100).contains(&now), "{now} of 2000 at 50 %");
        assert_eq!(
            split.set_weights(&[("stable".into(), 0), ("canary".into(), 0)]),
            Err(WeightError::AllZero)
        );
        assert_eq!(
            split.set_weights(&[("nope".into(), 1)]),
            Err(WeightError::UnknownPool("nope".into()))
        );
        assert_eq!(
            split.sides()[1].weight(),
            50,
            "a refused change changes nothing"
        );
    }
}
