//! Per-endpoint circuit breaker, which is also passive outlier detection: closed → open
//! (ejected) on consecutive failures or an error rate over a window; open → half-open when
//! the ejection time is over; half-open lets a few probe requests through and closes when
//! all succeed, or reopens for longer on the first failure.
//!
//! State lives in atomics: requests only load and add. Whether a trip may eject (the pool's
//! `max_ejected_share`) is the caller's decision, so this type knows nothing of pools.

use super::signals::RollingCounts;
use crate::config::PassiveHealthConfig;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Why a closed breaker wants to open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trip {
    ConsecutiveFailures(u32),
    ErrorRate {
        rate: f64,
        requests: u64,
    },
    /// Attempts waited on average this long and the endpoint answered nothing meanwhile.
    Hung {
        waited_ms: u64,
        waiting: u64,
    },
}

impl std::fmt::Display for Trip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trip::ConsecutiveFailures(n) => write!(f, "{n} consecutive failures"),
            Trip::ErrorRate { rate, requests } => write!(
                f,
                "error rate {:.0}% over {requests} requests",
                rate * 100.0
            ),
            Trip::Hung { waited_ms, waiting } => write!(
                f,
                "hung: {waiting} attempts waiting {waited_ms} ms on average, and no answer to any request meanwhile"
            ),
        }
    }
}

/// What a result did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BreakerEvent {
    None,
    /// Closed and wants to open; call [`Breaker::open`] if the pool allows it.
    WouldOpen(Trip),
    /// A half-open probe failed: open again, for longer.
    Reopened {
        for_ms: u64,
    },
    /// Every half-open probe succeeded.
    Closed,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug)]
pub struct Breaker {
    /// Swapped by a reload; the rolling window keeps the length it was created with.
    policy: arc_swap::ArcSwap<PassiveHealthConfig>,
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    open_until_ms: AtomicU64,
    /// Ejections in a row; reset after staying closed for `max_ejection`.
    ejections: AtomicU32,
    closed_since_ms: AtomicU64,
    probes_in_flight: AtomicU32,
    probe_successes: AtomicU32,
    /// a = successes, b = failures.
    window: RollingCounts,
}

impl Breaker {
    pub fn new(policy: PassiveHealthConfig) -> Self {
        Self {
            window: RollingCounts::new(policy.window),
            policy: arc_swap::ArcSwap::from_pointee(policy),
            state: AtomicU8::new(CLOSED),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            closed_since_ms: AtomicU64::new(0),
            probes_in_flight: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
        }
    }

    /// The state as requests see it: an open breaker whose time is up is half-open.
    pub fn state(&self, now_ms: u64) -> BreakerState {
        match self.state.load(Relaxed) {
            OPEN if now_ms >= self.open_until_ms.load(Relaxed) => BreakerState::HalfOpen,
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// When the current ejection ends (meaningful while open).
    pub fn open_until_ms(&self) -> u64 {
        self.open_until_ms.load(Relaxed)
    }

    /// Whether a new request may go to this endpoint now.
    pub fn admits(&self, now_ms: u64) -> bool {
        match self.state(now_ms) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                self.probes_in_flight.load(Relaxed) < self.policy.load().half_open_probes
            }
        }
    }

    /// Call when a request is actually sent; returns whether it is a half-open probe.
    pub fn on_dispatch(&self, now_ms: u64) -> bool {
        match self.state(now_ms) {
            BreakerState::Closed | BreakerState::Open => false,
            BreakerState::HalfOpen => {
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Relaxed, Relaxed)
                    .is_ok()
                {
                    self.probes_in_flight.store(0, Relaxed);
                    self.probe_successes.store(0, Relaxed);
                }
                self.probes_in_flight.fetch_add(1, Relaxed);
                true
            }
        }
    }

    /// Records the outcome of a request sent to this endpoint.
    pub fn on_result(&self, now_ms: u64, success: bool, probe: bool) -> BreakerEvent {
        let policy = self.policy.load();
        if !policy.enabled {
            return BreakerEvent::None;
        }
        if probe {
            self.release_probe();
            if self.state.load(Relaxed) != HALF_OPEN {
                return BreakerEvent::None;
            }
            if !success {
                let for_ms = self.eject(now_ms);
                return BreakerEvent::Reopened { for_ms };
            }
            let successes = self.probe_successes.fetch_add(1, Relaxed) + 1;
            if successes >= policy.half_open_probes
                && self
                    .state
                    .compare_exchange(HALF_OPEN, CLOSED, Relaxed, Relaxed)
                    .is_ok()
            {
                self.consecutive_failures.store(0, Relaxed);
                self.closed_since_ms.store(now_ms, Relaxed);
                return BreakerEvent::Closed;
            }
            return BreakerEvent::None;
        }
        if self.state.load(Relaxed) != CLOSED {
            // A request placed before the breaker opened (or in panic mode): no news.
            return BreakerEvent::None;
        }
        if now_ms.saturating_sub(self.closed_since_ms.load(Relaxed))
            >= policy.max_ejection.as_millis() as u64
        {
            self.ejections.store(0, Relaxed);
        }
        if success {
            self.consecutive_failures.store(0, Relaxed);
            self.window.record(now_ms, 1, 0);
            return BreakerEvent::None;
        }
        self.window.record(now_ms, 0, 1);
        let consecutive = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if consecutive >= policy.consecutive_failures {
            return BreakerEvent::WouldOpen(Trip::ConsecutiveFailures(consecutive));
        }
        let (ok, failed) = self.window.totals(now_ms);
        let requests = ok + failed;
        if requests >= u64::from(policy.min_requests) {
            let rate = failed as f64 / requests as f64;
            if rate >= policy.error_rate {
                return BreakerEvent::WouldOpen(Trip::ErrorRate { rate, requests });
            }
        }
        BreakerEvent::None
    }

    /// Applies a new policy (from a reload) from the next request on.
    pub fn set_policy(&self, policy: PassiveHealthConfig) {
        self.policy.store(std::sync::Arc::new(policy));
    }

    /// Frees a probe slot whose request ended without an answer.
    pub fn release_probe(&self) {
        let _ = self
            .probes_in_flight
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }

    /// Opens (ejects) from closed; returns the ejection length in ms. No-op unless closed.
    pub fn open(&self, now_ms: u64) -> Option<u64> {
        if self.state.load(Relaxed) != CLOSED {
            return None;
        }
        Some(self.eject(now_ms))
    }

    fn eject(&self, now_ms: u64) -> u64 {
        let ejections = self.ejections.fetch_add(1, Relaxed) + 1;
        let policy = self.policy.load();
        let base = policy.base_ejection.as_millis() as u64;
        let max = policy.max_ejection.as_millis() as u64;
        let for_ms = base.saturating_mul(u64::from(ejections)).min(max);
        self.open_until_ms
            .store(now_ms.saturating_add(for_ms), Relaxed);
        self.state.store(OPEN, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        for_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> PassiveHealthConfig {
        PassiveHealthConfig {
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            ..PassiveHealthConfig::default()
        }
    }

    fn fail_until_trip(b: &Breaker, now: u64) -> Trip {
        for _ in 0..100 {
            if let BreakerEvent::WouldOpen(trip) = b.on_result(now, false, false) {
                return trip;
            }
        }
        panic!("never tripped");
    }

    /// Full cycle on tokio's paused clock: closed → open → half-open → closed, and a
    /// failed probe reopening for twice as long.
    #[tokio::test(start_paused = true)]
    async fn transitions_under_paused_time() {
        let clock = crate::upstream::signals::Clock::new();
        let b = Breaker::new(policy());
        assert_eq!(b.state(clock.now_ms()), BreakerState::Closed);

        let trip = fail_until_trip(&b, clock.now_ms());
        assert_eq!(trip, Trip::ConsecutiveFailures(5));
        assert_eq!(b.open(clock.now_ms()), Some(30_000));
        assert_eq!(b.state(clock.now_ms()), BreakerState::Open);
        assert!(!b.admits(clock.now_ms()));

        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert!(
            !b.admits(clock.now_ms()),
            "still ejected 1 ms before the end"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.state(clock.now_ms()), BreakerState::HalfOpen);

        // Three probes allowed at once, not four.
        let probes: Vec<bool> = (0..3).map(|_| b.on_dispatch(clock.now_ms())).collect();
        assert_eq!(probes, [true, true, true]);
        assert!(!b.admits(clock.now_ms()));
        // One probe fails: open again, now for 2 × 30 s.
        assert_eq!(
            b.on_result(clock.now_ms(), false, true),
            BreakerEvent::Reopened { for_ms: 60_000 }
        );
        b.on_result(clock.now_ms(), true, true);
        b.on_result(clock.now_ms(), true, true);
        assert_eq!(b.state(clock.now_ms()), BreakerState::Open);

        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert!(b.on_dispatch(clock.now_ms()));
        }
        assert_eq!(b.on_result(clock.now_ms(), true, true), BreakerEvent::None);
        assert_eq!(b.on_result(clock.now_ms(), true, true), BreakerEvent::None);
        assert_eq!(
            b.on_result(clock.now_ms(), true, true),
            BreakerEvent::Closed
        );
        assert_eq!(b.state(clock.now_ms()), BreakerState::Closed);
        assert!(b.admits(clock.now_ms()));

        // Tripping again soon after: the third ejection in the series lasts 90 s.
        fail_until_trip(&b, clock.now_ms());
        assert_eq!(b.open(clock.now_ms()), Some(90_000));
        // After staying closed for max_ejection, the series starts over at 30 s.
        tokio::time::advance(Duration::from_secs(90)).await;
        for _ in 0..3 {
            b.on_dispatch(clock.now_ms());
        }
        for _ in 0..3 {
            b.on_result(clock.now_ms(), true, true);
        }
        tokio::time::advance(Duration::from_secs(300)).await;
        fail_until_trip(&b, clock.now_ms());
        assert_eq!(b.open(clock.now_ms()), Some(30_000));
    }

    #[test]
    fn error_rate_over_the_window_trips() {
        let b = Breaker::new(policy());
        // Alternate success and failure: never 5 in a row, but 50 % over 20+ requests.
        let mut tripped = None;
        for i in 0..40 {
            if let BreakerEvent::WouldOpen(trip) = b.on_result(1_000, i % 2 == 0, false) {
                tripped = Some((i, trip));
                break;
            }
        }
        let (at, trip) = tripped.expect("error rate trips");
        assert_eq!(at, 19, "trips at the 20th request");
        assert_eq!(
            trip,
            Trip::ErrorRate {
                rate: 0.5,
                requests: 20
            }
        );
    }

    #[test]
    fn successes_reset_the_consecutive_count() {
        let b = Breaker::new(policy());
        for _ in 0..10 {
            for _ in 0..4 {
                assert_eq!(b.on_result(0, false, false), BreakerEvent::None);
            }
            // 8 successes keep the error rate (≤ 43 %) under the 50 % threshold too.
            for _ in 0..8 {
                b.on_result(0, true, false);
            }
        }
    }

    #[test]
    fn disabled_never_trips() {
        let b = Breaker::new(PassiveHealthConfig {
            enabled: false,
            ..policy()
        });
        for _ in 0..100 {
            assert_eq!(b.on_result(0, false, false), BreakerEvent::None);
        }
    }
}
