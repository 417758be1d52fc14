//! What the cache did with one request, as one value, rendered once into the response's
//! `Cache-Status` field (RFC 9211): `weir-l1; hit; ttl=42`, `weir-l2; fwd=miss; stored`,
//! `weir-l1; fwd=stale; fwd-status=304`.

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

    /// The field's value, written once (no intermediate string, no formatting machinery:
    /// `write!` cost a fresh hit 400 instructions).
    pub fn render(self) -> HeaderValue {
        let mut line = Line::default();
        line.text(self.cache);
        match self.outcome {
            Outcome::Fresh { ttl } => {
                line.text("; hit; ttl=");
                line.number(ttl);
            }
            Outcome::Hit { detail } => {
                line.text("; hit; detail=");
                line.text(detail);
            }
            Outcome::Miss => line.text("; fwd=miss"),
            Outcome::Stale { status, detail } => {
                line.text("; fwd=stale");
                if let Some(status) = status {
                    line.text("; fwd-status=");
                    line.number(u64::from(status));
                }
                if let Some(detail) = detail {
                    line.text("; detail=");
                    line.text(detail);
                }
            }
        }
        if self.stored {
            line.text("; stored");
        }
        crate::header_maps::memoized(&LAST_STATUS, line.as_bytes())
            .unwrap_or(HeaderValue::from_static("weir"))
    }

    pub fn set_on(self, headers: &mut HeaderMap) {
        headers.insert(CACHE_STATUS.clone(), self.render());
    }
}

/// A value being written: 96 bytes hold the longest (about 70); more is cut, not a
/// panic.
struct Line {
    bytes: [u8; 96],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self {
            bytes: [0; 96],
            len: 0,
        }
    }
}

impl Line {
    fn text(&mut self, text: &str) {
        self.ascii(text.as_bytes());
    }

    fn ascii(&mut self, bytes: &[u8]) {
        let room = self.bytes.len() - self.len;
        let taken = bytes.len().min(room);
        self.bytes[self.len..self.len + taken].copy_from_slice(&bytes[..taken]);
        self.len += taken;
    }

    fn number(&mut self, value: u64) {
        let mut digits = [0; 20];
        // Digits are ASCII: no UTF-8 check (58 instructions a hit) on the way in.
        self.ascii(crate::header_maps::decimal(value, &mut digits));
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
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
                CacheStatus::new("weir-l1", Outcome::Fresh { ttl: 0 }),
                "weir-l1; hit; ttl=0",
            ),
            (
                CacheStatus::new("weir-l2", Outcome::Fresh { ttl: 31_536_000 }),
                "weir-l2; hit; ttl=31536000",
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
