//! Service-level objectives: good and total answers on an SLO's routes, kept as a
//! cumulative series so any window's error rate, burn rate and remaining budget are one
//! subtraction away.
//!
//! The series is exact for recent ticks and thinned with age (one point per
//! `window / 4096`), so a 28-day SLO sampled every 10 s holds about 4 500 points.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::SloConfig;
use crate::proxy::Snapshot;
use crate::proxy::route::Route;
use crate::upstream::signals::LATENCY_BUCKETS;

/// Points kept for the part of the window older than the fine span.
const COARSE_POINTS: u64 = 4096;
/// Points in a burn-down series handed to the report.
const BURN_DOWN_POINTS: usize = 200;

/// Cumulative counts at a tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Point {
    pub at_ms: u64,
    pub good: u64,
    pub total: u64,
}

/// Good and total answers over some window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub good: u64,
    pub total: u64,
}

impl Counts {
    pub fn bad(&self) -> u64 {
        self.total.saturating_sub(self.good)
    }

    /// Share of bad answers (0 without traffic).
    pub fn error_rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.bad() as f64 / self.total as f64
        }
    }
}

/// One SLO's counts over time.
#[derive(Debug)]
pub struct SloTracker {
    config: SloConfig,
    /// Every tick within the fine span (the burn alerts' windows).
    recent: VecDeque<Point>,
    /// Older ticks, at least `coarse_step_ms` apart.
    coarse: VecDeque<Point>,
    fine_span_ms: u64,
    coarse_step_ms: u64,
    /// The routes' counters at the last tick, to take differences (routes keep theirs
    /// across reloads; a new route starts from zero).
    previous: HashMap<String, Counts>,
    cumulative: Counts,
}

/// What an SLO stands at, for the API, metrics, alerts and the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SloStatus {
    pub name: String,
    /// `availability` or `latency`.
    pub kind: String,
    pub objective: f64,
    /// For a latency SLO: the histogram bound requests are judged against.
    pub latency_bound_ms: Option<f64>,
    pub window_s: u64,
    /// Over the compliance window (or as much of it as has been seen).
    pub good: u64,
    pub total: u64,
    /// Share of good answers; `None` before any traffic.
    pub sli: Option<f64>,
    /// 1 = untouched, 0 = spent, below 0 = overspent.
    pub error_budget_remaining: f64,
    /// Burn rate over each window the burn alerts use (1 = spending exactly the budget).
    pub burn_rates: Vec<BurnRate>,
    /// Seconds of history behind these numbers.
    pub seen_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BurnRate {
    pub window_s: u64,
    pub rate: f64,
}

impl SloTracker {
    pub fn new(config: SloConfig, interval: Duration) -> Self {
        let mut tracker = Self {
            config: SloConfig {
                burn_alerts: Vec::new(),
                ..config.clone()
            },
            recent: VecDeque::new(),
            coarse: VecDeque::new(),
            fine_span_ms: 0,
            coarse_step_ms: 0,
            previous: HashMap::new(),
            cumulative: Counts::default(),
        };
        tracker.reconfigure(config, interval);
        tracker
    }

    /// A reloaded SLO of the same name keeps its series.
    pub fn reconfigure(&mut self, config: SloConfig, interval: Duration) {
        let ms = |d: Duration| d.as_millis() as u64;
        // The fastest burn alert's windows are exact; longer ones are off by at most one
        // coarse step (10 min of a 6 h window for a 28-day SLO).
        let fine = config
            .burn_alerts
            .iter()
            .map(|b| ms(b.long))
            .min()
            .unwrap_or(3_600_000);
        self.fine_span_ms = (fine + ms(interval)).min(ms(config.window));
        self.coarse_step_ms = (ms(config.window) / COARSE_POINTS).max(ms(interval));
        self.config = config;
    }

    pub fn config(&self) -> &SloConfig {
        &self.config
    }

    /// Reads the routes' counters and appends a point at `at_ms`.
    pub fn record(&mut self, snapshot: &Snapshot, at_ms: u64) {
        let mut change = Counts::default();
        let mut seen = HashMap::new();
        for route in snapshot.router.routes() {
            if !self.covers(route) {
                continue;
            }
            let now = self.read(route);
            let before = self.previous.get(&*route.name).copied();
            // A counter below its last reading belongs to a new route of that name.
            let before = before
                .filter(|b| b.total <= now.total && b.good <= now.good)
                .unwrap_or_default();
            change.good += now.good - before.good;
            change.total += now.total - before.total;
            seen.insert(route.name.to_string(), now);
        }
        self.previous = seen;
        self.push(at_ms, change);
    }

    /// Appends a tick's change (also how tests and simulations feed the tracker).
    pub fn push(&mut self, at_ms: u64, change: Counts) {
        self.cumulative.good += change.good;
        self.cumulative.total += change.total;
        self.recent.push_back(Point {
            at_ms,
            good: self.cumulative.good,
            total: self.cumulative.total,
        });
        // Points leaving the fine span move to the coarse series when far enough apart.
        let fine_from = at_ms.saturating_sub(self.fine_span_ms);
        while self.recent.len() > 1 && self.recent.front().is_some_and(|p| p.at_ms < fine_from) {
            let Some(point) = self.recent.pop_front() else {
                break;
            };
            let far_enough = self
                .coarse
                .back()
                .is_none_or(|last| point.at_ms >= last.at_ms + self.coarse_step_ms);
            if far_enough {
                self.coarse.push_back(point);
            }
        }
        // Keep one point at or before the window's start as its baseline.
        let window_from = at_ms.saturating_sub(self.config.window.as_millis() as u64);
        while self.coarse.len() > 1 && self.coarse.get(1).is_some_and(|p| p.at_ms <= window_from) {
            self.coarse.pop_front();
        }
    }

    fn covers(&self, route: &Route) -> bool {
        if self.config.routes.is_empty() {
            let Some(pool) = &self.config.pool else {
                return false;
            };
            match &route.action {
                crate::proxy::route::Action::Forward(split) => {
                    split.sides().iter().any(|side| side.pool.name == *pool)
                }
                _ => false,
            }
        } else {
            self.config.routes.iter().any(|r| **r == *route.name)
        }
    }

    /// The route's good and total answers since it was built.
    fn read(&self, route: &Route) -> Counts {
        let stats = &route.stats;
        match self.config.latency {
            None => {
                let total: u64 = stats.responses.iter().map(|c| c.load(Relaxed)).sum();
                let bad = stats.responses[4].load(Relaxed);
                Counts {
                    good: total.saturating_sub(bad),
                    total,
                }
            }
            Some(threshold) => {
                let (cumulative, _, count) = stats.latency.snapshot();
                let bound = threshold.as_secs_f64();
                let good = cumulative
                    .iter()
                    .take_while(|(le, _)| *le <= bound + 1e-12)
                    .last()
                    .map_or(0, |(_, c)| *c);
                Counts { good, total: count }
            }
        }
    }

    fn latest(&self) -> Option<Point> {
        self.recent.back().or(self.coarse.back()).copied()
    }

    /// The newest point at or before `at_ms`, else the oldest one.
    fn baseline(&self, at_ms: u64) -> Option<Point> {
        let before = |points: &VecDeque<Point>| {
            let index = points.partition_point(|p| p.at_ms <= at_ms);
            index.checked_sub(1).and_then(|i| points.get(i)).copied()
        };
        before(&self.recent)
            .or_else(|| before(&self.coarse))
            .or_else(|| self.coarse.front().or(self.recent.front()).copied())
    }

    /// Good and total over the `window` ending at the last tick.
    pub fn over(&self, window: Duration) -> Counts {
        let Some(latest) = self.latest() else {
            return Counts::default();
        };
        let from = latest.at_ms.saturating_sub(window.as_millis() as u64);
        let Some(base) = self.baseline(from) else {
            return Counts::default();
        };
        Counts {
            good: latest.good - base.good,
            total: latest.total - base.total,
        }
    }

    /// How fast the budget burns over `window`: the error rate over the allowed one.
    pub fn burn_rate(&self, window: Duration) -> f64 {
        self.over(window).error_rate() / self.allowed_error_rate()
    }

    fn allowed_error_rate(&self) -> f64 {
        1.0 - self.config.objective
    }

    fn budget_remaining(&self, counts: Counts) -> f64 {
        if counts.total == 0 {
            return 1.0;
        }
        1.0 - counts.bad() as f64 / (self.allowed_error_rate() * counts.total as f64)
    }

    /// The latency SLO's bound as the histogram counts it (the bucket bound at or below).
    pub fn latency_bound_ms(&self) -> Option<f64> {
        let threshold = self.config.latency?.as_secs_f64();
        let bound = LATENCY_BUCKETS
            .iter()
            .take_while(|le| **le <= threshold + 1e-12)
            .last()
            .copied()
            .unwrap_or(0.0);
        Some(bound * 1000.0)
    }

    pub fn status(&self) -> SloStatus {
        let window = self.over(self.config.window);
        let mut windows: Vec<Duration> = self
            .config
            .burn_alerts
            .iter()
            .flat_map(|b| [b.short, b.long])
            .collect();
        windows.sort();
        windows.dedup();
        let seen_s = match (self.coarse.front().or(self.recent.front()), self.latest()) {
            (Some(first), Some(last)) => (last.at_ms - first.at_ms) / 1000,
            _ => 0,
        };
        SloStatus {
            name: self.config.name.clone(),
            kind: if self.config.latency.is_some() {
                "latency"
            } else {
                "availability"
            }
            .to_owned(),
            objective: self.config.objective,
            latency_bound_ms: self.latency_bound_ms(),
            window_s: self.config.window.as_secs(),
            good: window.good,
            total: window.total,
            sli: (window.total > 0).then(|| window.good as f64 / window.total as f64),
            error_budget_remaining: self.budget_remaining(window),
            burn_rates: windows
                .into_iter()
                .map(|w| BurnRate {
                    window_s: w.as_secs(),
                    rate: self.burn_rate(w),
                })
                .collect(),
            seen_s,
        }
    }

    /// Budget remaining at each kept point (over the window ending there): the report's
    /// burn-down chart, at most [`BURN_DOWN_POINTS`] points.
    pub fn burn_down(&self) -> Vec<(u64, f64)> {
        let window_ms = self.config.window.as_millis() as u64;
        let points: Vec<Point> = self.coarse.iter().chain(&self.recent).copied().collect();
        let step = points.len().div_ceil(BURN_DOWN_POINTS).max(1);
        let mut out: Vec<(u64, f64)> = Vec::new();
        for (i, point) in points.iter().enumerate() {
            if i % step != 0 && i + 1 != points.len() {
                continue;
            }
            let from = point.at_ms.saturating_sub(window_ms);
            let base_index = points.partition_point(|p| p.at_ms <= from);
            let base = base_index
                .checked_sub(1)
                .and_then(|i| points.get(i))
                .or(points.first())
                .copied()
                .unwrap_or_default();
            let counts = Counts {
                good: point.good - base.good,
                total: point.total - base.total,
            };
            out.push((point.at_ms, self.budget_remaining(counts)));
        }
        out
    }

    /// Points held (for tests of the thinning).
    pub fn held(&self) -> usize {
        self.recent.len() + self.coarse.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BurnAlertConfig;

    fn slo(objective: f64, window: Duration, burn: Vec<BurnAlertConfig>) -> SloConfig {
        SloConfig {
            name: "api".into(),
            routes: vec!["api".into()],
            pool: None,
            objective,
            latency: None,
            window,
            burn_alerts: burn,
        }
    }

    #[test]
    fn windows_burn_rates_and_budget_have_known_answers() {
        let second = Duration::from_secs(1);
        let mut tracker = SloTracker::new(slo(0.99, 100 * second, Vec::new()), second);
        tracker.push(0, Counts::default());
        // 50 s of 100 good a second, then 10 s of 90 good, 10 bad a second.
        for t in 1..=50 {
            tracker.push(
                t * 1000,
                Counts {
                    good: 100,
                    total: 100,
                },
            );
        }
        for t in 51..=60 {
            tracker.push(
                t * 1000,
                Counts {
                    good: 90,
                    total: 100,
                },
            );
        }
        let last_10 = tracker.over(10 * second);
        assert_eq!(
            last_10,
            Counts {
                good: 900,
                total: 1000
            }
        );
        // 10 % errors against 1 % allowed: burning 10×.
        assert!((tracker.burn_rate(10 * second) - 10.0).abs() < 1e-9);
        // Over 20 s: 100 bad of 2 000, 5 %: 5×.
        assert!((tracker.burn_rate(20 * second) - 5.0).abs() < 1e-9);
        // Whole window (60 s seen): 100 bad of 6 000 against 60 allowed: 1 − 100/60.
        let status = tracker.status();
        assert_eq!((status.good, status.total), (5900, 6000));
        assert!((status.error_budget_remaining - (1.0 - 100.0 / 60.0)).abs() < 1e-9);
        assert_eq!(status.seen_s, 60);
    }

    #[test]
    fn old_points_thin_out_and_windows_stay_close() {
        let day = Duration::from_secs(86_400);
        let burn = crate::config::default_burn_alerts();
        let mut tracker = SloTracker::new(slo(0.999, 28 * day, burn), Duration::from_secs(10));
        // 30 days at one point per 10 s, one bad answer in a thousand.
        let ticks = 30 * 8640u64;
        for t in 0..=ticks {
            tracker.push(
                t * 10_000,
                Counts {
                    good: 999,
                    total: 1000,
                },
            );
        }
        assert!(tracker.held() < 6000, "held {}", tracker.held());
        let month = tracker.over(28 * day);
        let expected = 28 * 8640 * 1000;
        let error = (month.total as f64 - expected as f64).abs() / expected as f64;
        assert!(error < 0.001, "{month:?}");
        assert!((tracker.burn_rate(Duration::from_secs(3600)) - 1.0).abs() < 1e-9);
        assert!((tracker.burn_rate(3 * day) - 1.0).abs() < 1e-6);
        assert!(tracker.status().error_budget_remaining.abs() < 1e-6);
        let burn_down = tracker.burn_down();
        assert!(burn_down.len() <= BURN_DOWN_POINTS + 1 && burn_down.len() > 100);
    }

    #[test]
    fn latency_bounds_round_down_to_a_histogram_bound() {
        let mut config = slo(0.99, Duration::from_secs(60), Vec::new());
        config.latency = Some(Duration::from_millis(400));
        let tracker = SloTracker::new(config, Duration::from_secs(1));
        assert_eq!(tracker.latency_bound_ms(), Some(300.0));
        assert_eq!(tracker.status().kind, "latency");
        assert_eq!(tracker.status().error_budget_remaining, 1.0);
    }
}
