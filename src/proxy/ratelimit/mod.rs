//! Per-route rate limits (GCRA): one bucket for the route, or one per client IP or per
//! value of a header (an API key). Over the limit: 429 with `Retry-After`.
//!
//! Buckets live in this instance (`governor`), or with `shared = true` in Redis, where
//! every instance draws on the same bucket ([`shared`]). A shared check that Redis cannot
//! answer falls back to the local bucket: Redis being down never fails a request.

mod shared;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, HeaderName};

use crate::cache::redis::RedisTier;
use crate::config::{RateLimitConfig, RateLimitKey};
use shared::SharedBucket;

/// Keyed limiters forget idle keys every this many checks, so memory stays bounded.
const CLEANUP_EVERY: u64 = 4096;

#[derive(Debug)]
enum Buckets {
    Route(DefaultDirectRateLimiter),
    ClientIp(DefaultKeyedRateLimiter<IpAddr>),
    /// Requests without the header share one bucket (the empty key).
    Header(HeaderName, DefaultKeyedRateLimiter<Bytes>),
}

/// A route's limit and the bucket one request falls in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BucketView {
    pub requests_per_second: u32,
    pub burst: u32,
    pub bucket: String,
    /// Keys with a bucket in this instance (keyed limits).
    pub keys_tracked: Option<usize>,
    /// Drawn from Redis, shared by every instance.
    pub shared: bool,
    /// Requests the route refused with 429 so far.
    pub rejected: u64,
    /// Shared checks Redis did not answer (decided locally).
    pub fallbacks: u64,
}

#[derive(Debug)]
pub struct RouteLimiter {
    pub config: RateLimitConfig,
    buckets: Buckets,
    /// With `shared = true` and Redis configured.
    shared: Option<SharedBucket>,
    checks: AtomicU64,
    pub rejected: AtomicU64,
    /// Shared checks Redis did not answer, decided by the local bucket instead.
    pub fallbacks: AtomicU64,
}

impl RouteLimiter {
    /// Builds from validated config (zero rates were rejected; clamp defensively). `route`
    /// names the shared buckets in Redis.
    pub fn new(config: &RateLimitConfig, route: &str, redis: Option<&Arc<RedisTier>>) -> Self {
        let rate = NonZeroU32::new(config.requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.burst.unwrap_or(config.requests_per_second))
            .unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        // Validation refused any other key; fall back to per-client buckets defensively.
        let buckets = match RateLimitKey::parse(&config.key) {
            Ok(RateLimitKey::Route) => Buckets::Route(RateLimiter::direct(quota)),
            Ok(RateLimitKey::Header(header)) => Buckets::Header(header, RateLimiter::keyed(quota)),
            Ok(RateLimitKey::ClientIp) | Err(_) => Buckets::ClientIp(RateLimiter::keyed(quota)),
        };
        let shared = redis
            .filter(|_| config.shared)
            .map(|redis| SharedBucket::new(Arc::clone(redis), route, config, burst.get()));
        Self {
            config: config.clone(),
            buckets,
            shared,
            checks: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// Whether a reload may keep this limiter (and its buckets) for `config`.
    pub fn fits(&self, config: &RateLimitConfig, redis: Option<&Arc<RedisTier>>) -> bool {
        let kept = self.shared.as_ref().map(|s| Arc::as_ptr(s.redis()));
        self.config == *config && kept == redis.filter(|_| config.shared).map(Arc::as_ptr)
    }

    /// `Ok` to go on, or how long until this key may send again.
    pub async fn check(&self, client_ip: IpAddr, headers: &HeaderMap) -> Result<(), Duration> {
        if let Some(shared) = &self.shared {
            let value = match &self.buckets {
                Buckets::Route(_) => None,
                Buckets::ClientIp(_) => Some(shared::KeyValue::Ip(client_ip)),
                Buckets::Header(name, _) => Some(shared::KeyValue::Bytes(
                    headers.get(name).map_or(&[][..], |v| v.as_bytes()),
                )),
            };
            match shared.check(value).await {
                Some(outcome) => {
                    if outcome.is_err() {
                        self.rejected.fetch_add(1, Relaxed);
                    }
                    return outcome;
                }
                None => {
                    self.fallbacks.fetch_add(1, Relaxed);
                }
            }
        }
        self.check_local(client_ip, headers)
    }

    /// Which bucket a request draws on, read only (the routing simulation). governor
    /// offers no read of a bucket's tokens without taking one, so the view stops at the
    /// bucket and the route's counters.
    pub fn bucket_of(&self, client_ip: IpAddr, headers: &HeaderMap) -> BucketView {
        let (bucket, keys_tracked) = match &self.buckets {
            Buckets::Route(_) => ("the route's one bucket".to_owned(), None),
            Buckets::ClientIp(limiter) => (format!("client {client_ip}"), Some(limiter.len())),
            Buckets::Header(name, limiter) => (
                match headers.get(name) {
                    // The value may be a credential: its size says enough to tell keys apart.
                    Some(value) => format!("header {name} (a {}-byte value)", value.len()),
                    None => format!("requests without {name} (one shared bucket)"),
                },
                Some(limiter.len()),
            ),
        };
        BucketView {
            requests_per_second: self.config.requests_per_second,
            burst: self.config.burst.unwrap_or(self.config.requests_per_second),
            bucket,
            keys_tracked,
            shared: self.shared.is_some(),
            rejected: self.rejected.load(Relaxed),
            fallbacks: self.fallbacks.load(Relaxed),
        }
    }

    /// The instance's own bucket.
    fn check_local(&self, client_ip: IpAddr, headers: &HeaderMap) -> Result<(), Duration> {
        let checks = self.checks.fetch_add(1, Relaxed) + 1;
        let clock = DefaultClock::default();
        let outcome = match &self.buckets {
            Buckets::Route(limiter) => limiter.check().map_err(|n| n.wait_time_from(clock.now())),
            Buckets::ClientIp(limiter) => {
                if checks.is_multiple_of(CLEANUP_EVERY) {
                    limiter.retain_recent();
                }
                limiter
                    .check_key(&client_ip)
                    .map_err(|n| n.wait_time_from(clock.now()))
            }
            Buckets::Header(name, limiter) => {
                if checks.is_multiple_of(CLEANUP_EVERY) {
                    limiter.retain_recent();
                }
                let key = headers
                    .get(name)
                    .map(|v| Bytes::copy_from_slice(v.as_bytes()))
                    .unwrap_or_default();
                limiter
                    .check_key(&key)
                    .map_err(|n| n.wait_time_from(clock.now()))
            }
        };
        if outcome.is_err() {
            self.rejected.fetch_add(1, Relaxed);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(key: &str, rps: u32, burst: u32) -> RouteLimiter {
        let config = RateLimitConfig {
            requests_per_second: rps,
            burst: Some(burst),
            key: key.into(),
            shared: false,
        };
        RouteLimiter::new(&config, "r", None)
    }

    #[test]
    fn burst_then_refusal_per_key() {
        let l = limiter("client_ip", 1, 3);
        let headers = HeaderMap::new();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check_local(a, &headers).is_ok());
        }
        let wait = l.check_local(a, &headers).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            l.check_local(b, &headers).is_ok(),
            "another client has its own bucket"
        );
        assert_eq!(l.rejected.load(Relaxed), 1);
    }

    #[test]
    fn header_keys_and_the_route_bucket() {
        let l = limiter("header:x-api-key", 1, 1);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut k1 = HeaderMap::new();
        k1.insert("x-api-key", "one".parse().unwrap());
        let mut k2 = HeaderMap::new();
        k2.insert("x-api-key", "two".parse().unwrap());
        assert!(l.check_local(ip, &k1).is_ok());
        assert!(l.check_local(ip, &k1).is_err());
        assert!(l.check_local(ip, &k2).is_ok());

        let route = limiter("route", 1, 2);
        let other: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(route.check_local(ip, &k1).is_ok());
        assert!(route.check_local(other, &k2).is_ok());
        assert!(
            route.check_local(other, &HeaderMap::new()).is_err(),
            "one bucket for everyone"
        );
    }

    #[test]
    fn keys() {
        assert_eq!(RateLimitKey::parse("route"), Ok(RateLimitKey::Route));
        assert_eq!(RateLimitKey::parse("client_ip"), Ok(RateLimitKey::ClientIp));
        assert!(matches!(
            RateLimitKey::parse("header:x-api-key"),
            Ok(RateLimitKey::Header(_))
        ));
        assert!(RateLimitKey::parse("cookie:x").is_err());
        assert!(RateLimitKey::parse("header:bad name").is_err());
    }
}
