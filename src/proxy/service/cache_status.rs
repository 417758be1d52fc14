//! What the cache did with one request, as one value, rendered once into the response's
//! `Cache-Status` field (RFC 9211): `weir-l1; hit; ttl=42`, `weir-l2; fwd=miss; stored`,
//! `weir-l1; fwd=stale; fwd-status=304`.

use std::io::Write;

use http::{HeaderMap, HeaderValue};

use crate::cache::Tier;
use crate::cache::policy::CACHE_STATUS;

thread_local! {
    /// The last value rendered on this thread: a hot entry's fresh hits say the same
    /// (`weir-l1; hit; ttl=42`) for a second.
    static LAST_STATUS: crate::header_maps::LastValue = const { std::cell::RefCell::new(None) };
}

/// The cache's part in one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CacheStatus {
    /// `weir-l1` (memory) or `weir-l2` (Redis): the route's first tier, or the one that hit.
    pub cache: &'static str,
    pub outcome: Outcome,
    /// The response is copied into the cache as it streams.
    pub stored: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Fresh in the cache, `ttl` seconds left.
    Fresh { ttl: u64 },
    /// From the cache for a reason of its own (`stale-while-revalidate`, `coalesced`,
    /// `stale-if-error`, `origin-unreachable`).
    Hit { detail: &'static str },
    /// Not in the cache: fetched from the origin.
    Miss,
    /// Stale in the cache: the origin was asked; `status` is its answer when it gave one.
    Stale {
        status: Option<u16>,
        detail: Option<&'static str>,
    },
}

impl CacheStatus {
    pub fn new(cache: &'static str, outcome: Outcome) -> Self {
        Self {
            cache,
            outcome,
            stored: false,
        }
    }

    pub fn of_tier(tier: Tier, outcome: Outcome) -> Self {
        Self::new(tier.status_name(), outcome)
    }

    /// The field's value, written once (no intermediate string).
    pub fn render(self) -> HeaderValue {
        let mut buffer = [0u8; 96];
        let mut out = &mut buffer[..];
        // 96 bytes hold the longest value (about 70); a write cannot fail.
        let _ = match self.outcome {
            Outcome::Fresh { ttl } => write!(out, "{}; hit; ttl={ttl}", self.cache),
            Outcome::Hit { detail } => write!(out, "{}; hit; detail={detail}", self.cache),
            Outcome::Miss => write!(out, "{}; fwd=miss", self.cache),
            Outcome::Stale { status, detail } => {
                let _ = write!(out, "{}; fwd=stale", self.cache);
                if let Some(status) = status {
                    let _ = write!(out, "; fwd-status={status}");
                }
                match detail {
                    Some(detail) => write!(out, "; detail={detail}"),
                    None => Ok(()),
                }
            }
        };
        if self.stored {
            let _ = write!(out, "; stored");
        }
        let written = 96 - out.len();
        crate::header_maps::memoized(&LAST_STATUS, &buffer[..written])
            .unwrap_or(HeaderValue::from_static("weir"))
    }

    pub fn set_on(self, headers: &mut HeaderMap) {
        headers.insert(CACHE_STATUS.clone(), self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_outcome_as_rfc_9211_fields() {
        let cases = [
            (
                CacheStatus::new("weir-l1", Outcome::Fresh { ttl: 42 }),
                "weir-l1; hit; ttl=42",
            ),
            (
                CacheStatus::new(
                    "weir-l2",
                    Outcome::Hit {
                        detail: "stale-while-revalidate",
                    },
                ),
                "weir-l2; hit; detail=stale-while-revalidate",
            ),
            (
                CacheStatus {
                    stored: true,
                    ..CacheStatus::new("weir-l1", Outcome::Miss)
                },
                "weir-l1; fwd=miss; stored",
            ),
            (
                CacheStatus::new(
                    "weir-l1",
                    Outcome::Stale {
                        status: Some(503),
                        detail: Some("stale-if-error"),
                    },
                ),
                "weir-l1; fwd=stale; fwd-status=503; detail=stale-if-error",
            ),
            (
                CacheStatus::new(
                    "weir-l1",
                    Outcome::Stale {
                        status: None,
                        detail: Some("origin-unreachable"),
                    },
                ),
                "weir-l1; fwd=stale; detail=origin-unreachable",
            ),
            (
                CacheStatus {
                    stored: true,
                    ..CacheStatus::new(
                        "weir-l2",
                        Outcome::Stale {
                            status: Some(200),
                            detail: None,
                        },
                    )
                },
                "weir-l2; fwd=stale; fwd-status=200; stored",
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(status.render(), expected);
        }
    }
}
