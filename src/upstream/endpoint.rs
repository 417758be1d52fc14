//! One upstream endpoint: its live state for the balancer (health, breaker, latency,
//! errors, slow start) and the counters the data plane publishes. Everything requests
//! touch is an atomic; only state transitions (rare) take the endpoint's own small lock.

use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::uri::Authority;
use http::{HeaderValue, StatusCode};

use super::breaker::{Breaker, BreakerEvent, BreakerState};
use super::signals::LatencyHistogram;
use super::signals::{Clock, DecayingRate, PeakEwma};
use crate::config::PassiveHealthConfig;

/// `available_since_ms` of an endpoint that has never had to ramp up.
const NOT_RAMPING: u64 = u64::MAX;

/// What an operator sees: why an endpoint does or does not get traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Takes its full share.
    Healthy,
    /// Recently became available; its share is ramping up.
    SlowStart,
    /// Breaker half-open: only probe requests go through.
    Degraded,
    /// Breaker open (passive outlier ejection) until the ejection ends.
    Ejected,
    /// Failing active health checks.
    Unhealthy,
    /// Finishing what it has, taking nothing new.
    Draining,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Healthy => "healthy",
            EndpointState::SlowStart => "slow_start",
            EndpointState::Degraded => "degraded",
            EndpointState::Ejected => "ejected",
            EndpointState::Unhealthy => "unhealthy",
            EndpointState::Draining => "draining",
        }
    }
}

/// The last change of an endpoint's state and why it happened.
#[derive(Debug, Clone)]
pub struct Transition {
    pub state: EndpointState,
    pub reason: String,
    pub at: SystemTime,
}

/// How one attempt to an endpoint ended, as far as the response head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Response {
        status: StatusCode,
        /// From `Retry-After` on a 429 or 503.
        retry_after: Option<Duration>,
    },
    ConnectFailed,
    TimedOut,
    /// Reset or protocol error after the request was sent.
    Failed,
}

impl Outcome {
    /// Whether the breaker counts it as a failure (5xx or no response).
    pub fn is_failure(&self) -> bool {
        match self {
            Outcome::Response { status, .. } => status.is_server_error(),
            _ => true,
        }
    }
}

/// Settings the pool gives each of its endpoints.
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    pub passive: PassiveHealthConfig,
    pub slow_start: Duration,
    /// Time constant of latency and error decay.
    pub decay: Duration,
}

/// A time that has not happened.
const NEVER: u64 = u64::MAX;
/// How often a held-back ejection is logged per endpoint.
const HELD_EJECTION_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// An upstream server, shared by the balancer, in-flight guards and (read-only) the admin
/// and control sides.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` as configured (or `ip:port` as discovered); identifies the endpoint
    /// across reloads.
    pub address: String,
    /// The `dns`/`srv` entry that found it (its label): only that entry's answers add or
    /// remove it, and a reload keeps it while the entry stays.
    pub discovered_by: Option<Arc<str>>,
    pub authority: Authority,
    /// Opaque id for sticky-session cookies.
    pub id: String,
    /// Unique in the process (never reused): names the endpoint's idle upstream
    /// connections (see `super::exchange`).
    pub serial: u64,
    /// `Host` sent when the pool does not preserve the client's.
    host_header: HeaderValue,
    clock: Clock,
    weight: AtomicU32,
    draining: AtomicBool,
    healthy: AtomicBool,
    health_passes: AtomicU32,
    health_failures: AtomicU32,
    pub(crate) breaker: Breaker,
    latency: PeakEwma,
    /// Share of recent responses that were 5xx or 429.
    error_rate: DecayingRate,
    /// Share of recent attempts with no response (connect, timeout, reset).
    failure_rate: DecayingRate,
    backoff_until_ms: AtomicU64,
    /// When a held-back ejection was last logged (see [`Endpoint::should_log_held_ejection`]).
    held_ejection_logged_ms: AtomicU64,
    available_since_ms: AtomicU64,
    slow_start_ms: AtomicU64,
    /// Bits of an `f64`.
    decay_ms: AtomicU64,
    /// Attempts waiting for a response head, and the sum of their start times: the mean
    /// age of what the endpoint owes is evidence before any answer comes (a hung endpoint
    /// answers nothing, so its latency estimate alone would never learn).
    awaiting_head: AtomicU64,
    awaiting_since_sum_ms: AtomicU64,
    /// `passive.stall_after` in ms (0 = stall detection off) and `stall_factor` (bits).
    stall_after_ms: AtomicU64,
    stall_factor: AtomicU64,
    /// When the endpoint last sent a response head (ms): an endpoint that answers nothing
    /// while attempts wait is hung, not merely slow on some requests.
    last_head_ms: AtomicU64,
    /// Start times of attempts weir stopped waiting for (a hedge answered first, or a
    /// per-try timeout cut them) while the endpoint still owes them an answer. They stay
    /// in `awaiting_head` (evidence of a stall) until the endpoint answers anything or the
    /// pool's response timeout has passed for them. Touched only by abandoned attempts,
    /// the pool's stall sweep, and an answer while `ghost_count` is not 0.
    ghosts: Mutex<Vec<u64>>,
    ghost_count: AtomicU64,
    /// Start of the oldest abandoned attempt still owed (`NEVER` when none): since any
    /// answer clears them all, the endpoint has answered nothing since. A mean would be
    /// pulled down by each new abandoned attempt and let the endpoint in and out.
    oldest_ghost_ms: AtomicU64,
    /// When an endpoint stalled only by abandoned attempts was last let through for one
    /// request (see [`Endpoint::avoid_as_stalled`]).
    stall_probe_ms: AtomicU64,
    transition: Mutex<Transition>,
    pub stats: EndpointStats,
}

/// Cumulative counters; readers take differences between samples.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    pub responses: [AtomicU64; 5],
    pub connect_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub ejections: AtomicU64,
    /// Sum of time-to-response-head in microseconds, with `responses` gives the mean.
    pub latency_micros_total: AtomicU64,
    /// Time to response head, for percentiles.
    pub latency: LatencyHistogram,
}

/// When an endpoint comes into its pool, which decides whether it ramps up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// One of a new pool's first endpoints: they start together, each at its full share.
    WithThePool,
    /// Added to a running pool: it ramps up over the pool's slow-start window from now.
    Joining,
}

/// What identifies a new endpoint and how it arrives.
#[derive(Debug, Clone)]
pub struct NewEndpoint<'a> {
    pub pool: &'a str,
    /// `host:port` as configured.
    pub address: String,
    pub authority: Authority,
    pub weight: u32,
    pub arrival: Arrival,
    /// `Host` sent when the pool does not preserve the client's; absent: `address`.
    pub host: Option<&'a str>,
    /// The `dns`/`srv` entry that found it (its label), if one did.
    pub discovered_by: Option<Arc<str>>,
}

impl Endpoint {
    pub fn new(new: NewEndpoint<'_>, policy: &EndpointPolicy, clock: Clock) -> Self {
        let NewEndpoint {
            pool,
            address,
            authority,
            weight,
            arrival,
            host,
            discovered_by,
        } = new;
        let host_header = HeaderValue::from_str(host.unwrap_or(authority.as_str()))
            .unwrap_or(HeaderValue::from_static("localhost"));
        let now = clock.now_ms();
        let slow_start_ms = policy.slow_start.as_millis() as u64;
        Self {
            id: endpoint_id(pool, &address),
            serial: NEXT_SERIAL.fetch_add(1, Relaxed),
            address,
            discovered_by,
            authority,
            host_header,
            clock,
            weight: AtomicU32::new(weight),
            draining: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            health_passes: AtomicU32::new(0),
            health_failures: AtomicU32::new(0),
            breaker: Breaker::new(policy.passive.clone()),
            latency: PeakEwma::default(),
            error_rate: DecayingRate::default(),
            failure_rate: DecayingRate::default(),
            backoff_until_ms: AtomicU64::new(0),
            held_ejection_logged_ms: AtomicU64::new(NEVER),
            available_since_ms: AtomicU64::new(match arrival {
                Arrival::Joining => now,
                Arrival::WithThePool => NOT_RAMPING,
            }),
            slow_start_ms: AtomicU64::new(slow_start_ms),
            decay_ms: AtomicU64::new((policy.decay.as_millis().max(1) as f64).to_bits()),
            awaiting_head: AtomicU64::new(0),
            awaiting_since_sum_ms: AtomicU64::new(0),
            stall_after_ms: AtomicU64::new(policy.passive.stall_after.as_millis() as u64),
            stall_factor: AtomicU64::new(policy.passive.stall_factor.to_bits()),
            last_head_ms: AtomicU64::new(now),
            ghosts: Mutex::new(Vec::new()),
            ghost_count: AtomicU64::new(0),
            stall_probe_ms: AtomicU64::new(0),
            oldest_ghost_ms: AtomicU64::new(NEVER),
            transition: Mutex::new(Transition {
                state: EndpointState::Healthy,
                reason: "added".into(),
                at: SystemTime::now(),
            }),
            stats: EndpointStats::default(),
        }
    }

    /// A plain endpoint with default policy, for tests and tools.
    pub fn with_defaults(address: &str, weight: u32) -> Option<Self> {
        let authority = address.parse().ok()?;
        let policy = EndpointPolicy {
            passive: PassiveHealthConfig::default(),
            slow_start: Duration::ZERO,
            decay: crate::config::defaults::DEFAULT_SCORE_DECAY,
        };
        let new = NewEndpoint {
            pool: "test",
            address: address.to_owned(),
            authority,
            weight,
            arrival: Arrival::WithThePool,
            host: None,
            discovered_by: None,
        };
        Some(Self::new(new, &policy, Clock::new()))
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Whether to log that this endpoint's ejection was held back by the pool's
    /// `max_ejected_share`: once per [`HELD_EJECTION_LOG_EVERY`], since a dead sole
    /// endpoint would otherwise log on every failed request.
    pub fn should_log_held_ejection(&self) -> bool {
        let now = self.clock.now_ms();
        let last = self.held_ejection_logged_ms.load(Relaxed);
        (last == NEVER || now.saturating_sub(last) >= HELD_EJECTION_LOG_EVERY.as_millis() as u64)
            && self
                .held_ejection_logged_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
    }

    fn decay_ms(&self) -> f64 {
        f64::from_bits(self.decay_ms.load(Relaxed))
    }

    /// Applies the pool's policy from a reload that kept this endpoint.
    pub(crate) fn set_policy(&self, policy: &EndpointPolicy) {
        self.breaker.set_policy(policy.passive.clone());
        self.stall_after_ms
            .store(policy.passive.stall_after.as_millis() as u64, Relaxed);
        self.stall_factor
            .store(policy.passive.stall_factor.to_bits(), Relaxed);
        self.slow_start_ms
            .store(policy.slow_start.as_millis() as u64, Relaxed);
        self.decay_ms
            .store((policy.decay.as_millis().max(1) as f64).to_bits(), Relaxed);
    }

    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    pub(crate) fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Relaxed);
    }

    pub fn in_flight(&self) -> u64 {
        self.stats.in_flight.load(Relaxed)
    }

    /// Whether the balancer may give it a new request (health, breaker, drain).
    pub fn is_available(&self, now_ms: u64) -> bool {
        !self.draining.load(Relaxed) && self.healthy.load(Relaxed) && self.breaker.admits(now_ms)
    }

    /// Whether the endpoint is draining: it takes no new requests, not even in panic mode
    /// (when no endpoint is available and the pool uses unhealthy ones rather than none).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Share of its weight the endpoint gets now: ramps from 10 % to 100 % over the
    /// pool's slow-start window after it became available.
    pub fn slow_start_factor(&self, now_ms: u64) -> f64 {
        let window = self.slow_start_ms.load(Relaxed);
        if window == 0 {
            return 1.0;
        }
        let since = self.available_since_ms.load(Relaxed);
        if since == NOT_RAMPING {
            return 1.0;
        }
        let elapsed = now_ms.saturating_sub(since);
        if elapsed >= window {
            1.0
        } else {
            (elapsed as f64 / window as f64).max(0.1)
        }
    }

    /// Peak-EWMA time to response head, in ms (0 = no recent observation).
    pub fn latency_ms(&self, now_ms: u64) -> f64 {
        self.latency.get(now_ms, self.decay_ms())
    }

    /// Whether the latency estimate is stale: there is one, no sample has come for half the
    /// decay time, and nothing is in flight. Such an estimate says how the endpoint was,
    /// not how it is; the score strategy sends it a probe (see `balancer::score`).
    pub fn latency_is_stale(&self, now_ms: u64) -> bool {
        self.latency.last_sample_ms().is_some_and(|last| {
            self.in_flight() == 0 && now_ms.saturating_sub(last) as f64 > self.decay_ms() / 2.0
        })
    }

    /// How long, on average, the attempts now waiting for a response head have waited
    /// (0 when none is): a request outstanding for 800 ms says latency is at least that.
    pub fn head_wait_ms(&self, now_ms: u64) -> u64 {
        // The sum is added to before the count and taken from after it (Release), and read
        // after the count (Acquire): a sum read here covers at least the attempts counted.
        // A count that changed between the two reads could pair a sum with the wrong count,
        // so it gives no evidence this time.
        let waiting = self.awaiting_head.load(Acquire);
        if waiting == 0 {
            return 0;
        }
        let sum = self.awaiting_since_sum_ms.load(Acquire);
        if self.awaiting_head.load(Acquire) != waiting {
            return 0;
        }
        now_ms.saturating_sub(sum / waiting)
    }

    /// Stalled: its waiting attempts are older than `passive.stall_after` on average (or
    /// the oldest attempt it owes since weir abandoned it is), and than `stall_factor`
    /// times its latency estimate. Strategies send new requests
    /// elsewhere while another endpoint is available.
    pub fn is_stalled(&self, now_ms: u64) -> bool {
        let floor = self.stall_after_ms.load(Relaxed);
        if floor == 0 {
            return false;
        }
        let owed_since = self.oldest_ghost_ms.load(Relaxed);
        let owed_for = if owed_since == NEVER {
            0
        } else {
            now_ms.saturating_sub(owed_since)
        };
        self.waited_too_long(self.head_wait_ms(now_ms).max(owed_for), floor, now_ms)
    }

    /// A wait is a stall's when it is over `stall_after` (`floor`) and over `stall_factor`
    /// times the latency estimate.
    fn waited_too_long(&self, waited_ms: u64, floor: u64, now_ms: u64) -> bool {
        // The cheap test first: the estimate (a decay computation) only past the floor.
        waited_ms > floor
            && waited_ms as f64
                > f64::from_bits(self.stall_factor.load(Relaxed)) * self.latency_ms(now_ms)
    }

    /// Whether a pick should pass over this endpoint as stalled. An endpoint stalled only
    /// by attempts weir abandoned (nothing it waits on now) is let through for one request
    /// every `stall_after`: weir stopped waiting for the abandoned ones, so only a new
    /// request can show the endpoint answers again (an answer clears what it owed). A
    /// recovered endpoint is back within `stall_after`; a hung one costs one more
    /// abandoned attempt per `stall_after`.
    pub fn avoid_as_stalled(&self, now_ms: u64) -> bool {
        self.is_stalled(now_ms) && !self.take_stall_probe(now_ms)
    }

    fn take_stall_probe(&self, now_ms: u64) -> bool {
        let ghosts = self.ghost_count.load(Relaxed);
        if ghosts == 0 || self.awaiting_head.load(Relaxed) > ghosts {
            return false;
        }
        let last = self.stall_probe_ms.load(Relaxed);
        now_ms.saturating_sub(last) >= self.stall_after_ms.load(Relaxed)
            && self
                .stall_probe_ms
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_ok()
    }

    /// Hung: the attempts weir is still waiting for (not those it abandoned) have waited
    /// as long as a stall takes, and the endpoint sent no response head at all for
    /// `stall_after` (one that keeps answering other requests is slow on some, not hung).
    /// The pool's stall sweep ejects a hung endpoint (see
    /// [`Pool::sweep_stalls`](super::Pool::sweep_stalls)). Abandoned attempts do not
    /// count here: weir stopped waiting for them (a hedge answered first), so they cannot
    /// tell a slow endpoint from a hung one; they only keep it avoided while stalled.
    pub fn is_hung(&self, now_ms: u64) -> bool {
        let floor = self.stall_after_ms.load(Relaxed);
        if floor == 0 || now_ms.saturating_sub(self.last_head_ms.load(Relaxed)) <= floor {
            return false;
        }
        // The abandoned attempts' part of the waiting counts, read under their lock (only
        // the sweep asks this).
        let (ghosts, ghost_sum) = {
            let ghosts = self.ghosts.lock().unwrap_or_else(|p| p.into_inner());
            (ghosts.len() as u64, ghosts.iter().sum::<u64>())
        };
        let waiting = self.awaiting_head.load(Acquire).saturating_sub(ghosts);
        if waiting == 0 {
            return false;
        }
        let sum = self
            .awaiting_since_sum_ms
            .load(Acquire)
            .saturating_sub(ghost_sum);
        self.waited_too_long(now_ms.saturating_sub(sum / waiting), floor, now_ms)
    }

    /// Attempts counted as waiting for a head (those weir abandoned included).
    pub fn waiting_heads(&self) -> u64 {
        self.awaiting_head.load(Relaxed)
    }

    /// Attempts weir stopped waiting for that the endpoint has not answered (see `ghosts`).
    pub fn abandoned_waiting(&self) -> u64 {
        self.ghost_count.load(Relaxed)
    }

    fn add_ghost(&self, since_ms: u64) {
        let mut ghosts = self.ghosts.lock().unwrap_or_else(|p| p.into_inner());
        ghosts.push(since_ms);
        self.oldest_ghost_ms.fetch_min(since_ms, Relaxed);
        self.ghost_count.store(ghosts.len() as u64, Relaxed);
    }

    /// Forgets abandoned attempts that started before `started_before_ms` (or all, with
    /// `u64::MAX`): they no longer count as waiting.
    pub(crate) fn expire_ghosts(&self, started_before_ms: u64) {
        if self.ghost_count.load(Relaxed) == 0 {
            return;
        }
        let mut ghosts = self.ghosts.lock().unwrap_or_else(|p| p.into_inner());
        ghosts.retain(|&since| {
            let expired = since < started_before_ms;
            if expired {
                self.awaiting_head.fetch_sub(1, Release);
                self.awaiting_since_sum_ms.fetch_sub(since, Release);
            }
            !expired
        });
        self.ghost_count.store(ghosts.len() as u64, Relaxed);
        self.oldest_ghost_ms
            .store(ghosts.iter().copied().min().unwrap_or(NEVER), Relaxed);
    }

    pub fn error_rate(&self, now_ms: u64) -> f64 {
        self.error_rate.get(now_ms, self.decay_ms())
    }

    pub fn failure_rate(&self, now_ms: u64) -> f64 {
        self.failure_rate.get(now_ms, self.decay_ms())
    }

    /// Whether the endpoint asked for a pause (429/503 with `Retry-After`).
    pub fn in_backoff(&self, now_ms: u64) -> bool {
        now_ms < self.backoff_until_ms.load(Relaxed)
    }

    pub fn breaker_state(&self, now_ms: u64) -> BreakerState {
        self.breaker.state(now_ms)
    }

    pub fn state(&self, now_ms: u64) -> EndpointState {
        if self.draining.load(Relaxed) {
            return EndpointState::Draining;
        }
        if !self.healthy.load(Relaxed) {
            return EndpointState::Unhealthy;
        }
        match self.breaker.state(now_ms) {
            BreakerState::Open => EndpointState::Ejected,
            BreakerState::HalfOpen => EndpointState::Degraded,
            BreakerState::Closed if self.slow_start_factor(now_ms) < 1.0 => {
                EndpointState::SlowStart
            }
            BreakerState::Closed => EndpointState::Healthy,
        }
    }

    pub fn last_transition(&self) -> Transition {
        match self.transition.lock() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Records why the state is what it is now, and logs it.
    pub(crate) fn record_transition(&self, reason: String) {
        let state = self.state(self.now_ms());
        tracing::info!(endpoint = %self.address, state = state.as_str(), %reason, "endpoint state changed");
        let transition = Transition {
            state,
            reason,
            at: SystemTime::now(),
        };
        match self.transition.lock() {
            Ok(mut t) => *t = transition,
            Err(poisoned) => *poisoned.into_inner() = transition,
        }
    }

    fn start_slow_start(&self, now_ms: u64) {
        self.available_since_ms.store(now_ms, Relaxed);
    }

    pub fn set_draining(&self, draining: bool, reason: &str) {
        if self.draining.swap(draining, Relaxed) != draining {
            if !draining {
                self.start_slow_start(self.now_ms());
            }
            self.record_transition(reason.to_owned());
        }
    }

    /// Feeds one active health-check result; records a transition when the endpoint goes
    /// up after `rise` passes or down after `fall` failures.
    pub fn record_health_check(&self, passed: bool, rise: u32, fall: u32, detail: &str) {
        if passed {
            self.health_failures.store(0, Relaxed);
            let passes = self.health_passes.fetch_add(1, Relaxed) + 1;
            if passes >= rise && !self.healthy.swap(true, Relaxed) {
                self.start_slow_start(self.now_ms());
                self.record_transition(format!("health check passed {passes} times"));
            }
        } else {
            self.health_passes.store(0, Relaxed);
            let failures = self.health_failures.fetch_add(1, Relaxed) + 1;
            if failures >= fall && self.healthy.swap(false, Relaxed) {
                self.record_transition(format!("health check failed {failures} times: {detail}"));
            }
        }
    }

    pub fn is_healthy_by_checks(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Counts a request as started; the guard counts it finished when dropped.
    pub fn begin_request(self: &Arc<Self>) -> InFlightGuard {
        self.stats.requests.fetch_add(1, Relaxed);
        self.stats.in_flight.fetch_add(1, Relaxed);
        let now = self.now_ms();
        let probe = self.breaker.on_dispatch(now);
        self.awaiting_since_sum_ms.fetch_add(now, Release);
        self.awaiting_head.fetch_add(1, Release);
        InFlightGuard {
            endpoint: Arc::clone(self),
            probe,
            recorded: false,
            awaiting_since_ms: Some(now),
        }
    }

    /// Records how an attempt ended (at the response head): counters, latency, error rates,
    /// backoff, and the breaker. Returns the breaker's event for the pool to act on.
    pub fn record_outcome(
        &self,
        guard: &mut InFlightGuard,
        outcome: Outcome,
        elapsed: Duration,
    ) -> BreakerEvent {
        self.observe(outcome, elapsed);
        self.judge(guard, !outcome.is_failure())
    }

    /// Gives the breaker an attempt's verdict (see [`Endpoint::observe`] for the rest).
    pub fn judge(&self, guard: &mut InFlightGuard, success: bool) -> BreakerEvent {
        guard.recorded = true;
        self.breaker.on_result(self.now_ms(), success, guard.probe)
    }

    /// Counters, latency, error rates and backoff for an outcome, without the breaker:
    /// what is known at the response head, while the breaker waits for the body's end.
    pub fn observe(&self, outcome: Outcome, elapsed: Duration) {
        let now = self.now_ms();
        let decay_ms = self.decay_ms();
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        match outcome {
            Outcome::Response {
                status,
                retry_after,
            } => {
                let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
                self.stats.responses[class].fetch_add(1, Relaxed);
                self.stats
                    .latency_micros_total
                    .fetch_add(elapsed.as_micros().min(u64::MAX as u128) as u64, Relaxed);
                self.latency.observe(now, elapsed_ms, decay_ms);
                self.stats.latency.record(elapsed);
                self.last_head_ms.store(now, Relaxed);
                // An answer says the endpoint is not hung: what it owed is no longer
                // evidence that it is.
                self.expire_ghosts(u64::MAX);
                let bad = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                self.error_rate.observe(now, bad, decay_ms);
                self.failure_rate.observe(now, false, decay_ms);
                if let Some(pause) = retry_after {
                    let pause = pause.min(Duration::from_secs(60)).as_millis() as u64;
                    self.backoff_until_ms.store(now + pause, Relaxed);
                }
            }
            Outcome::ConnectFailed | Outcome::TimedOut | Outcome::Failed => {
                let counter = match outcome {
                    Outcome::ConnectFailed => &self.stats.connect_errors,
                    Outcome::TimedOut => &self.stats.timeouts,
                    _ => &self.stats.protocol_errors,
                };
                counter.fetch_add(1, Relaxed);
                if outcome == Outcome::TimedOut {
                    // A timeout is at least as slow as the time waited.
                    self.latency.observe(now, elapsed_ms, decay_ms);
                }
                self.failure_rate.observe(now, true, decay_ms);
            }
        }
    }

    /// An attempt weir stopped waiting for without an answer (another attempt answered
    /// first): its wait is a lower bound on the endpoint's latency, and not a failure.
    pub fn observe_abandoned(&self, elapsed: Duration) {
        self.latency.observe(
            self.now_ms(),
            elapsed.as_secs_f64() * 1000.0,
            self.decay_ms(),
        );
    }

    /// Opens the breaker after a trip the pool allowed; records the transition. Returns
    /// whether it opened (it was not open already).
    pub(crate) fn eject(&self, reason: &str) -> bool {
        let opened = self.breaker.open(self.now_ms());
        if let Some(for_ms) = opened {
            self.stats.ejections.fetch_add(1, Relaxed);
            self.record_transition(format!(
                "ejected for {}: {reason}",
                humantime::format_duration(Duration::from_millis(for_ms))
            ));
        }
        opened.is_some()
    }

    /// Acts on breaker events other than a trip (which needs the pool's permission).
    pub(crate) fn apply_breaker_event(&self, event: BreakerEvent) {
        match event {
            BreakerEvent::Reopened { for_ms } => {
                self.stats.ejections.fetch_add(1, Relaxed);
                self.record_transition(format!(
                    "half-open probe failed; ejected for {}",
                    humantime::format_duration(Duration::from_millis(for_ms))
                ));
            }
            BreakerEvent::Closed => {
                self.start_slow_start(self.now_ms());
                self.record_transition("half-open probes succeeded".into());
            }
            BreakerEvent::None | BreakerEvent::WouldOpen(_) => {}
        }
    }

    pub fn total_responses(&self) -> u64 {
        self.stats.responses.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// Stable id of an endpoint in a pool, for sticky cookies and the admin API (16 hex
/// digits; reveals no address).
/// The same in every weir build (see [`crate::stable_hash`]): a client's cookie keeps
/// working across upgrades and across a fleet on mixed versions.
fn endpoint_id(pool: &str, address: &str) -> String {
    let id = crate::stable_hash::hash_parts(&[pool.as_bytes(), address.as_bytes()]);
    format!("{id:016x}")
}

/// Held while a request to an endpoint is in flight, until its response body has been
/// sent on or dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    endpoint: Arc<Endpoint>,
    probe: bool,
    recorded: bool,
    /// When the attempt started, while it waits for its response head.
    awaiting_since_ms: Option<u64>,
}

impl InFlightGuard {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Whether this attempt is one of a half-open breaker's probes.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The attempt's wait for a response head is over (an answer, an error or a timeout):
    /// it no longer counts as evidence of a stall.
    pub fn head_done(&mut self) {
        if let Some(since) = self.awaiting_since_ms.take() {
            self.endpoint.awaiting_head.fetch_sub(1, Release);
            self.endpoint
                .awaiting_since_sum_ms
                .fetch_sub(since, Release);
        }
    }

    /// Weir stops waiting for this attempt's head, but the endpoint still owes it: it
    /// keeps counting as waiting (evidence of a stall) until the endpoint answers anything
    /// or the pool's stall sweep expires it.
    pub fn abandon(&mut self) {
        if let Some(since) = self.awaiting_since_ms.take() {
            self.endpoint.add_ghost(since);
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.head_done();
        self.endpoint.stats.in_flight.fetch_sub(1, Relaxed);
        if self.probe && !self.recorded {
            // The client went away before an answer: free the probe slot, learn nothing.
            self.endpoint.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Arc<Endpoint> {
        Arc::new(Endpoint::with_defaults("127.0.0.1:1", 1).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_attempts_are_evidence_of_a_stall() {
        // Defaults: stalled past a mean wait of 1 s and 4x the latency estimate.
        let ep = endpoint();
        let mut first = ep.begin_request();
        tokio::time::advance(Duration::from_millis(600)).await;
        let _second = ep.begin_request();
        assert_eq!(ep.head_wait_ms(ep.now_ms()), 300, "the mean of 600 and 0");
        assert!(!ep.is_stalled(ep.now_ms()));
        tokio::time::advance(Duration::from_millis(900)).await;
        // Waits of 1500 and 900 ms: 1200 on average, and no latency estimate yet.
        assert_eq!(ep.head_wait_ms(ep.now_ms()), 1200);
        assert!(ep.is_stalled(ep.now_ms()));
        // An answer ends the first wait; the second alone (900 ms) is under the floor.
        first.head_done();
        assert_eq!(ep.head_wait_ms(ep.now_ms()), 900);
        assert!(!ep.is_stalled(ep.now_ms()));
        drop(first);
        drop(_second);
        assert_eq!(ep.head_wait_ms(ep.now_ms()), 0, "nothing waits");

        // An endpoint known to be slow is not stalled by its usual wait.
        let slow = endpoint();
        slow.observe(
            Outcome::Response {
                status: StatusCode::OK,
                retry_after: None,
            },
            Duration::from_secs(2),
        );
        let _waiting = slow.begin_request();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(
            !slow.is_stalled(slow.now_ms()),
            "1.5 s against a 2 s estimate"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_attempts_wait_until_an_answer_or_expiry() {
        let ok = Outcome::Response {
            status: StatusCode::OK,
            retry_after: None,
        };
        let ep = endpoint();
        // An attempt weir stopped waiting for still counts as waiting...
        let mut lost = ep.begin_request();
        tokio::time::advance(Duration::from_millis(100)).await;
        ep.observe_abandoned(Duration::from_millis(100));
        lost.abandon();
        drop(lost);
        assert_eq!((ep.in_flight(), ep.waiting_heads()), (0, 1));
        assert_eq!(ep.abandoned_waiting(), 1);
        assert_eq!(
            ep.latency_ms(ep.now_ms()),
            100.0,
            "a lower bound on latency"
        );
        tokio::time::advance(Duration::from_millis(1_100)).await;
        assert_eq!(ep.head_wait_ms(ep.now_ms()), 1_200);
        // ...so the endpoint is stalled (avoided), but not hung: weir did not wait.
        assert!(ep.is_stalled(ep.now_ms()) && !ep.is_hung(ep.now_ms()));
        // Once per stall_after a pick is let through, to see whether it answers again.
        assert!(!ep.avoid_as_stalled(ep.now_ms()), "a probe");
        assert!(ep.avoid_as_stalled(ep.now_ms()), "one");
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(
            !ep.avoid_as_stalled(ep.now_ms()),
            "the next, a stall_after later"
        );
        assert!(ep.avoid_as_stalled(ep.now_ms()));
        // An attempt really waited on, with no answer for stall_after, is a hang.
        let _waited = ep.begin_request();
        tokio::time::advance(Duration::from_millis(1_100)).await;
        assert!(ep.is_hung(ep.now_ms()));
        assert!(
            ep.avoid_as_stalled(ep.now_ms()),
            "no probe while weir waits on one"
        );
        drop(_waited);
        // Any answer clears what was owed: the endpoint is alive.
        ep.observe(ok, Duration::from_millis(3));
        assert_eq!((ep.waiting_heads(), ep.abandoned_waiting()), (0, 0));
        assert!(!ep.is_stalled(ep.now_ms()) && !ep.is_hung(ep.now_ms()));

        // Without an answer, an abandoned attempt expires (the pool's sweep passes the
        // oldest start that still counts).
        let mut lost = ep.begin_request();
        lost.abandon();
        drop(lost);
        let started = ep.now_ms();
        ep.expire_ghosts(started);
        assert_eq!(ep.abandoned_waiting(), 1, "not older than the cut");
        ep.expire_ghosts(started + 1);
        assert_eq!((ep.waiting_heads(), ep.abandoned_waiting()), (0, 0));
        assert_eq!(ep.head_wait_ms(ep.now_ms()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_that_answers_others_is_slow_not_hung() {
        let ep = endpoint();
        let _long = ep.begin_request();
        for _ in 0..15 {
            tokio::time::advance(Duration::from_millis(100)).await;
            ep.observe(
                Outcome::Response {
                    status: StatusCode::OK,
                    retry_after: None,
                },
                Duration::from_millis(2),
            );
        }
        assert!(ep.is_stalled(ep.now_ms()), "one request waited 1.5 s");
        assert!(!ep.is_hung(ep.now_ms()), "but others are answered");
    }

    #[test]
    fn endpoint_ids_are_the_same_in_every_build() {
        // XXH3-64 of "api\0" "10.0.0.1:8080\0" with weir's seed (see `stable_hash`).
        assert_eq!(endpoint_id("api", "10.0.0.1:8080"), "4bbda46c376732b1");
    }

    #[tokio::test(start_paused = true)]
    async fn held_ejections_are_logged_once_per_interval() {
        let ep = endpoint();
        assert!(ep.should_log_held_ejection());
        for _ in 0..1000 {
            assert!(!ep.should_log_held_ejection());
        }
        tokio::time::advance(HELD_EJECTION_LOG_EVERY - Duration::from_millis(1)).await;
        assert!(!ep.should_log_held_ejection());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(ep.should_log_held_ejection());
        assert!(!ep.should_log_held_ejection());
    }

    #[test]
    fn in_flight_follows_guards() {
        let ep = endpoint();
        let a = ep.begin_request();
        let b = ep.begin_request();
        assert_eq!(ep.in_flight(), 2);
        drop(a);
        assert_eq!(ep.in_flight(), 1);
        drop(b);
        assert_eq!(ep.in_flight(), 0);
        assert_eq!(ep.stats.requests.load(Relaxed), 2);
    }

    #[test]
    fn outcomes_feed_counters_and_rates() {
        let ep = endpoint();
        let mut guard = ep.begin_request();
        let ok = Outcome::Response {
            status: StatusCode::OK,
            retry_after: None,
        };
        ep.record_outcome(&mut guard, ok, Duration::from_millis(10));
        let bad = Outcome::Response {
            status: StatusCode::BAD_GATEWAY,
            retry_after: None,
        };
        ep.record_outcome(&mut guard, bad, Duration::from_millis(30));
        assert_eq!(ep.stats.responses[1].load(Relaxed), 1);
        assert_eq!(ep.stats.responses[4].load(Relaxed), 1);
        assert_eq!(ep.total_responses(), 2);
        assert_eq!(ep.stats.latency_micros_total.load(Relaxed), 40_000);
        assert!(ep.error_rate(ep.now_ms()) > 0.05);
        assert!(ep.latency_ms(ep.now_ms()) >= 29.0);
    }

    #[test]
    fn retry_after_sets_a_backoff() {
        let ep = endpoint();
        let mut guard = ep.begin_request();
        let limited = Outcome::Response {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(Duration::from_secs(5)),
        };
        ep.record_outcome(&mut guard, limited, Duration::from_millis(1));
        assert!(ep.in_backoff(ep.now_ms()));
        assert!(!ep.in_backoff(ep.now_ms() + 5_001));
    }

    #[test]
    fn health_checks_need_rise_and_fall_in_a_row() {
        let ep = endpoint();
        ep.record_health_check(false, 2, 3, "500");
        ep.record_health_check(false, 2, 3, "500");
        assert_eq!(ep.state(0), EndpointState::Healthy);
        ep.record_health_check(true, 2, 3, "");
        ep.record_health_check(false, 2, 3, "500");
        ep.record_health_check(false, 2, 3, "500");
        assert_eq!(
            ep.state(0),
            EndpointState::Healthy,
            "a pass resets the count"
        );
        ep.record_health_check(false, 2, 3, "500");
        assert_eq!(ep.state(0), EndpointState::Unhealthy);
        assert!(!ep.is_available(0));
        assert_eq!(
            ep.last_transition().reason,
            "health check failed 3 times: 500"
        );
        ep.record_health_check(true, 2, 3, "");
        assert_eq!(ep.state(0), EndpointState::Unhealthy);
        ep.record_health_check(true, 2, 3, "");
        assert!(ep.is_available(0));
        assert_eq!(ep.last_transition().reason, "health check passed 2 times");
    }

    #[test]
    fn draining_is_reported_with_its_reason() {
        let ep = endpoint();
        ep.set_draining(true, "drained by operator");
        assert_eq!(ep.state(0), EndpointState::Draining);
        assert!(!ep.is_available(0));
        let t = ep.last_transition();
        assert_eq!(
            (t.state, t.reason.as_str()),
            (EndpointState::Draining, "drained by operator")
        );
    }
}
