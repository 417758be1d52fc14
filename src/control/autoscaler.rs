//! One pool's autoscaler: from averaged signals to a desired instance count, Kubernetes
//! HPA style, with every step of the reasoning kept in the [`Decision`].
//!
//! 1. Each rule recommends a count: in flight per instance against its target (Little's
//!    law; desired = ⌈current × observed / target⌉ outside the tolerance band), CPU and
//!    memory over their high marks (proportional), p95 latency, error rate (one more),
//!    queue depth (proportional), active schedule windows (a floor), and the forecast
//!    (up only). The highest wins.
//! 2. Scale-in needs CPU and memory (when reported) under their low marks.
//! 3. Stabilization: scale-down takes the highest recommendation over its window,
//!    scale-up the lowest over its own (usually 0 s: at once).
//! 4. Cooldowns since the last change, then the scale-up rate limit, then min/max.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::config::{AutoscaleConfig, DryRunFollows, Window};

/// Decisions kept per pool for the admin API and the report.
pub const HISTORY_DECISIONS: usize = 500;

/// What the autoscaler sees, averaged over its signal window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Signals {
    /// Unix milliseconds (or a simulation's clock).
    pub now_ms: u64,
    /// Instances serving now (not draining).
    pub current: u32,
    pub rps: f64,
    /// Slope of rps over the scale-down window (requests per second, per second).
    pub rps_trend: f64,
    /// The newest sample's rps (absent in older records): traffic still rising ends the
    /// window at or above its mean.
    #[serde(default)]
    pub rps_latest: Option<f64>,
    /// Requests in flight across the pool.
    pub in_flight: f64,
    pub p95_ms: f64,
    pub mean_ms: f64,
    pub error_rate: f64,
    /// Means of what instances report (0..1, and queued requests per instance).
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    pub queue: Option<f64>,
    /// Upper end of the traffic forecast over the lookahead (requests per second).
    pub forecast_rps: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
    Hold,
}

/// One rule's opinion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recommendation {
    pub rule: String,
    pub instances: u32,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    pub seq: u64,
    pub at_ms: u64,
    pub pool: String,
    pub current: u32,
    /// The highest recommendation before stabilization and limits.
    pub recommended: u32,
    pub desired: u32,
    pub direction: Direction,
    /// The rule whose recommendation won.
    pub rule: String,
    /// The limit that changed the recommendation, if one did.
    pub limited_by: Option<String>,
    pub recommendations: Vec<Recommendation>,
    pub signals: Signals,
    /// One sentence: what and why.
    pub explanation: String,
    pub dry_run: bool,
    /// What the configured action did (filled in after it ran).
    pub action: Option<ActionOutcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActionOutcome {
    pub ok: bool,
    /// Not run: the pool's previous action was still running.
    #[serde(default)]
    pub skipped: bool,
    pub detail: String,
    pub elapsed_ms: u64,
}

/// Monotonic counts for metrics (the history itself is bounded).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScaleCounts {
    pub decisions: u64,
    pub scale_ups: u64,
    pub scale_downs: u64,
    pub action_failures: u64,
}

pub struct Autoscaler {
    config: AutoscaleConfig,
    counts: ScaleCounts,
    windows: Vec<(Window, u32)>,
    /// (time, recommendation) over the longer stabilization window.
    recent: VecDeque<(u64, u32)>,
    last_change_ms: Option<u64>,
    seq: u64,
    history: VecDeque<Decision>,
    /// In a dry run that follows its decisions: the count they would have left.
    fleet: Option<DryRunFleet>,
}

/// The instances a dry run's decisions would have left: those serving, and additions on
/// their way (count, ready at).
#[derive(Debug, Clone, Default)]
struct DryRunFleet {
    serving: u32,
    arriving: VecDeque<(u64, u32)>,
}

impl DryRunFleet {
    fn starting_at(serving: u32) -> Self {
        Self {
            serving,
            arriving: VecDeque::new(),
        }
    }

    /// Those serving at `now` (additions that became ready join).
    fn serving_at(&mut self, now: u64) -> u32 {
        while let Some(&(ready, count)) = self.arriving.front()
            && ready <= now
        {
            self.serving += count;
            self.arriving.pop_front();
        }
        self.serving
    }

    /// Serving and on their way: what the decisions asked for.
    fn asked(&self) -> u32 {
        self.serving + self.arriving.iter().map(|(_, n)| n).sum::<u32>()
    }

    /// Applies a decision as an action would: additions arrive after `delay`, removals
    /// take the newest (still arriving) first and are at once.
    fn apply(&mut self, now: u64, desired: u32, delay_ms: u64) {
        let asked = self.asked();
        if desired > asked {
            if delay_ms == 0 {
                self.serving += desired - asked;
            } else {
                self.arriving.push_back((now + delay_ms, desired - asked));
            }
            return;
        }
        let mut remove = asked - desired;
        while remove > 0
            && let Some((_, count)) = self.arriving.back_mut()
        {
            let taken = remove.min(*count);
            *count -= taken;
            remove -= taken;
            if *count == 0 {
                self.arriving.pop_back();
            }
        }
        self.serving = self.serving.saturating_sub(remove);
    }
}

impl Autoscaler {
    /// `config` must have passed validation (schedule windows parse).
    pub fn new(config: AutoscaleConfig) -> Self {
        let windows = config
            .schedule
            .iter()
            .filter_map(|rule| Some((rule.window().ok()?, rule.min_instances)))
            .collect();
        Self {
            config,
            counts: ScaleCounts::default(),
            windows,
            recent: VecDeque::new(),
            last_change_ms: None,
            seq: 0,
            history: VecDeque::new(),
            fleet: None,
        }
    }

    /// Whether decisions start from the count earlier ones would have left.
    fn follows_decisions(&self) -> bool {
        self.config.dry_run && self.config.dry_run_follows == DryRunFollows::Decisions
    }

    pub fn config(&self) -> &AutoscaleConfig {
        &self.config
    }

    /// Takes a new configuration and keeps the history and stabilization state.
    pub fn reconfigure(&mut self, config: AutoscaleConfig) {
        let fresh = Self::new(config);
        self.config = fresh.config;
        self.windows = fresh.windows;
        if !self.follows_decisions() {
            // Acting (or advising from the pool's count) starts from the real count.
            self.fleet = None;
        }
    }

    pub fn history(&self) -> impl DoubleEndedIterator<Item = &Decision> {
        self.history.iter()
    }

    pub fn counts(&self) -> ScaleCounts {
        self.counts
    }

    pub fn last(&self) -> Option<&Decision> {
        self.history.back()
    }

    /// Records what the action did for decision `seq`.
    pub fn record_action(&mut self, seq: u64, outcome: ActionOutcome) {
        if !outcome.ok && !outcome.skipped {
            self.counts.action_failures += 1;
        }
        if let Some(decision) = self.history.iter_mut().rev().find(|d| d.seq == seq) {
            decision.action = Some(outcome);
        }
    }

    /// Decides from `signals`; in a dry run that follows its decisions, from the count
    /// they would have left (the pool's real count is still in `signals.current`).
    pub fn decide(&mut self, signals: &Signals) -> Decision {
        let now = signals.now_ms;
        let current = if self.follows_decisions() {
            self.fleet
                .get_or_insert_with(|| DryRunFleet::starting_at(signals.current))
                .serving_at(now)
        } else {
            signals.current
        };
        let c = &self.config;
        let recommendations = self.recommend(signals, current);
        // The highest wins; on a tie the earlier rule (in flight first) names it.
        let (rule, mut recommended) = recommendations
            .iter()
            .rev()
            .max_by_key(|r| r.instances)
            .map_or(("none".to_owned(), current), |r| {
                (r.rule.clone(), r.instances)
            });
        let mut limited_by = None;
        // Rising: a positive trend over the scale-down window that the newest sample does
        // not contradict (a spike that just ended leaves a positive trend behind it, and
        // the capacity it needed is what the stabilization window keeps anyway).
        let still_rising = signals
            .rps_latest
            .is_none_or(|latest| latest >= signals.rps);
        if recommended < current && signals.rps_trend > 0.0 && signals.rps > 0.0 && still_rising {
            // Removing capacity into rising traffic only to add it back is the flap this
            // avoids: project the traffic one scale-down window ahead.
            let ahead = c.scale_down_window.as_secs_f64();
            let growth = (signals.rps + signals.rps_trend * ahead) / signals.rps;
            let projected = (signals.in_flight * growth / c.target_in_flight).ceil() as u32;
            // Growth inside the tolerance band is noise (a flat Poisson load has a small
            // trend either way), and the rounding up would make it one instance.
            if growth - 1.0 > c.tolerance && projected > recommended {
                limited_by = Some(format!(
                    "traffic rising {:+.1} rps/min: {:.0} in flight expected within {}",
                    signals.rps_trend * 60.0,
                    signals.in_flight * growth,
                    humantime::format_duration(c.scale_down_window)
                ));
                recommended = projected.min(current);
            }
        }
        if recommended < current {
            let busy = |value: Option<f64>, low: f64| value.is_some_and(|v| v >= low);
            if busy(signals.cpu, c.cpu_low) || busy(signals.memory, c.memory_low) {
                limited_by = Some(format!(
                    "scale-in needs CPU under {:.0} % and memory under {:.0} % (CPU {}, memory {})",
                    c.cpu_low * 100.0,
                    c.memory_low * 100.0,
                    percent(signals.cpu),
                    percent(signals.memory)
                ));
                recommended = current;
            }
        }

        // Stabilization over the recent recommendations (this one included).
        self.recent.push_back((now, recommended));
        let keep = c.scale_down_window.max(c.scale_up_window).as_millis() as u64;
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > keep)
        {
            self.recent.pop_front();
        }
        let within = |window: std::time::Duration| {
            let span = window.as_millis() as u64;
            self.recent
                .iter()
                // A window of 15 s holds the recommendations of the last 15 s, not 16.
                .filter(move |(at, _)| now.saturating_sub(*at) < span)
                .map(|(_, n)| *n)
        };
        let mut desired = recommended;
        if recommended > current {
            let lowest = within(c.scale_up_window).min().unwrap_or(recommended);
            if lowest < recommended {
                desired = lowest.max(current);
                limited_by = Some(format!(
                    "scale-up window {}: lowest recommendation {lowest}",
                    humantime::format_duration(c.scale_up_window)
                ));
            }
        } else if recommended < current {
            // Over the recommendations seen so far, as the HPA does: a loop that has just
            // started decides from its signal window, not from a count it never chose.
            let highest = within(c.scale_down_window).max().unwrap_or(recommended);
            if highest > recommended {
                desired = highest.min(current);
                limited_by = Some(format!(
                    "scale-down window {}: highest recommendation {highest}",
                    humantime::format_duration(c.scale_down_window)
                ));
            }
        }

        // Cooldowns since the last change.
        let since_change = self.last_change_ms.map(|at| now.saturating_sub(at));
        let cooling = |cooldown: std::time::Duration| {
            since_change.is_some_and(|since| since < cooldown.as_millis() as u64)
        };
        if desired > current && cooling(c.scale_up_cooldown) {
            limited_by = Some(format!(
                "scale-up cooldown {} since the last change",
                humantime::format_duration(c.scale_up_cooldown)
            ));
            desired = current;
        } else if desired < current && cooling(c.scale_down_cooldown) {
            limited_by = Some(format!(
                "scale-down cooldown {} since the last change",
                humantime::format_duration(c.scale_down_cooldown)
            ));
            desired = current;
        }
        let step_limit = current.saturating_add(c.scale_up_max_step.max(current));
        if desired > step_limit {
            limited_by = Some(format!(
                "scale-up rate: at most +{} at once",
                step_limit - current
            ));
            desired = step_limit;
        }
        // Scale-in is where a wrong estimate hurts (queues grow faster than they drain):
        // remove at most this share at once, and let the next window confirm the rest.
        let down_floor = current
            - ((current as f64 * c.scale_down_max_fraction).floor() as u32)
                .max(1)
                .min(current);
        if desired < down_floor {
            limited_by = Some(format!(
                "scale-down rate: at most −{} at once",
                current - down_floor
            ));
            desired = down_floor;
        }

        // Bounds last: they hold whatever the signals say.
        let floor = self.schedule_floor(now).max(c.min_instances);
        if desired > c.max_instances {
            limited_by = Some(format!("max_instances {}", c.max_instances));
            desired = c.max_instances;
        } else if desired < floor {
            limited_by = Some(if floor > c.min_instances {
                format!("schedule keeps at least {floor}")
            } else {
                format!("min_instances {}", c.min_instances)
            });
            desired = floor;
        }

        let direction = match desired.cmp(&current) {
            std::cmp::Ordering::Greater => Direction::Up,
            std::cmp::Ordering::Less => Direction::Down,
            std::cmp::Ordering::Equal => Direction::Hold,
        };
        if direction != Direction::Hold {
            self.last_change_ms = Some(now);
        }
        if let Some(fleet) = &mut self.fleet {
            fleet.apply(now, desired, c.provisioning_delay.as_millis() as u64);
        }
        self.counts.decisions += 1;
        match direction {
            Direction::Up => self.counts.scale_ups += 1,
            Direction::Down => self.counts.scale_downs += 1,
            Direction::Hold => {}
        }
        let winner = recommendations
            .iter()
            .find(|r| r.rule == rule)
            .map_or(String::new(), |r| r.detail.clone());
        let explanation = match direction {
            Direction::Hold => format!("hold at {current}: {winner}"),
            _ => format!("{current} → {desired}: {winner}"),
        } + &limited_by
            .as_ref()
            .map_or(String::new(), |l| format!(" (limited by {l})"));
        self.seq += 1;
        let decision = Decision {
            seq: self.seq,
            at_ms: now,
            pool: c.pool.clone(),
            current,
            recommended,
            desired,
            direction,
            rule,
            limited_by,
            recommendations,
            signals: signals.clone(),
            explanation,
            dry_run: c.dry_run,
            action: None,
        };
        if self.history.len() == HISTORY_DECISIONS {
            self.history.pop_front();
        }
        self.history.push_back(decision.clone());
        decision
    }

    fn schedule_floor(&self, now_ms: u64) -> u32 {
        self.windows
            .iter()
            .filter(|(window, _)| window.contains(now_ms / 1000))
            .map(|(_, min)| *min)
            .max()
            .unwrap_or(0)
    }

    fn recommend(&self, s: &Signals, current: u32) -> Vec<Recommendation> {
        let c = &self.config;
        let mut out = Vec::new();
        let mut push = |rule: &str, instances: u32, detail: String| {
            out.push(Recommendation {
                rule: rule.to_owned(),
                instances,
                detail,
            })
        };
        let proportional = |ratio: f64| (current as f64 * ratio).ceil().max(0.0) as u32;

        // Little's law: in flight = rps × latency; the primary load signal.
        if current == 0 {
            let needed = (s.in_flight / c.target_in_flight).ceil() as u32;
            push(
                "in_flight",
                needed,
                format!("{:.1} in flight and no instance serving", s.in_flight),
            );
        } else {
            let per_instance = s.in_flight / current as f64;
            let ratio = per_instance / c.target_in_flight;
            let within = (ratio - 1.0).abs() <= c.tolerance;
            let instances = if within { current } else { proportional(ratio) };
            push(
                "in_flight",
                instances,
                format!(
                    "{:.1} in flight per instance vs target {} (ratio {ratio:.2}{})",
                    per_instance,
                    c.target_in_flight,
                    if within { ", within tolerance" } else { "" }
                ),
            );
        }
        for (rule, value, high) in [
            ("cpu", s.cpu, c.cpu_high),
            ("memory", s.memory, c.memory_high),
        ] {
            if let Some(v) = value.filter(|v| *v > high) {
                push(
                    rule,
                    proportional(v / high),
                    format!("{rule} {:.0} % over {:.0} %", v * 100.0, high * 100.0),
                );
            }
        }
        let latency_high_ms = c.latency_high.as_secs_f64() * 1000.0;
        if s.p95_ms > latency_high_ms {
            push(
                "latency",
                current + 1,
                format!("p95 {:.0} ms over {latency_high_ms:.0} ms", s.p95_ms),
            );
        }
        if s.error_rate > c.error_rate_high {
            push(
                "errors",
                current + 1,
                format!(
                    "error rate {:.1} % over {:.1} %",
                    s.error_rate * 100.0,
                    c.error_rate_high * 100.0
                ),
            );
        }
        if let Some(q) = s.queue.filter(|q| *q > c.queue_high) {
            push(
                "queue",
                proportional(q / c.queue_high),
                format!("queue {q:.0} over {:.0}", c.queue_high),
            );
        }
        let floor = self.schedule_floor(s.now_ms);
        if floor > 0 {
            push(
                "schedule",
                floor,
                format!("a schedule window asks for at least {floor}"),
            );
        }
        if c.predictive
            && let Some(forecast) = s.forecast_rps
            && s.mean_ms > 0.0
        {
            // Little's law again, on the forecast traffic at today's latency.
            let needed = (forecast * s.mean_ms / 1000.0 / c.target_in_flight).ceil() as u32;
            if needed > current {
                push(
                    "forecast",
                    needed,
                    format!(
                        "forecast up to {forecast:.0} rps within {} needs {needed}",
                        humantime::format_duration(c.predictive_lookahead)
                    ),
                );
            }
        }
        out
    }
}

fn percent(value: Option<f64>) -> String {
    value.map_or("not reported".into(), |v| format!("{:.0} %", v * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScheduleRule;

    // 2026-11-23 (a Monday) 09:00 UTC, in milliseconds.
    const MONDAY_9AM_MS: u64 = (1_795_392_000 + 9 * 3600) * 1000;

    fn signals(now_ms: u64, current: u32, in_flight: f64) -> Signals {
        Signals {
            now_ms,
            current,
            in_flight,
            rps: 100.0,
            mean_ms: 50.0,
            ..Signals::default()
        }
    }

    #[test]
    fn a_schedule_window_is_a_floor_and_says_so() {
        let mut config = AutoscaleConfig::for_pool("api");
        config.schedule = vec![ScheduleRule {
            days: "mon-fri".into(),
            from: "08:00".into(),
            to: "18:00".into(),
            min_instances: 6,
        }];
        let mut scaler = Autoscaler::new(config);
        let d = scaler.decide(&signals(MONDAY_9AM_MS, 2, 1.0));
        assert_eq!((d.direction, d.desired), (Direction::Up, 6));
        assert_eq!(d.rule, "schedule");
        // Saturday: no floor, and a new loop with nothing in its window shrinks the idle
        // pool at once (as the HPA does).
        let saturday = MONDAY_9AM_MS + 5 * 86_400_000;
        let mut scaler = Autoscaler::new(scaler.config().clone());
        let d = scaler.decide(&signals(saturday, 6, 1.0));
        assert_eq!(
            (d.direction, d.desired),
            (Direction::Down, 1),
            "{}",
            d.explanation
        );
    }

    #[test]
    fn the_forecast_scales_up_early_but_never_in() {
        let mut config = AutoscaleConfig::for_pool("api");
        config.predictive = true;
        let mut scaler = Autoscaler::new(config);
        // 4 instances at target (8 in flight each); the forecast says traffic triples.
        let mut s = signals(1_000_000, 4, 32.0);
        s.rps = 640.0;
        s.forecast_rps = Some(1920.0);
        let d = scaler.decide(&s);
        // 1920 rps × 50 ms = 96 in flight / 8 = 12, capped by the rate limit at 4 + 4.
        assert_eq!(
            (d.rule.as_str(), d.desired),
            ("forecast", 8),
            "{}",
            d.explanation
        );
        assert!(d.limited_by.unwrap().contains("scale-up rate"));
        // A forecast of less traffic recommends nothing below the current count.
        let mut scaler = Autoscaler::new(scaler.config().clone());
        let mut s = signals(1_000_000, 4, 32.0);
        s.forecast_rps = Some(10.0);
        let d = scaler.decide(&s);
        assert!(d.recommendations.iter().all(|r| r.rule != "forecast"));
        assert_eq!(d.direction, Direction::Hold);
    }

    #[test]
    fn scale_in_waits_for_low_cpu_and_a_whole_window() {
        let mut config = AutoscaleConfig::for_pool("api");
        config.scale_down_max_fraction = 0.5;
        let mut scaler = Autoscaler::new(config);
        let mut busy = signals(0, 8, 8.0);
        busy.cpu = Some(0.55);
        let d = scaler.decide(&busy);
        assert_eq!(d.direction, Direction::Hold);
        assert!(d.limited_by.unwrap().contains("CPU under 30 %"));
        let mut idle = signals(100_000, 8, 8.0);
        idle.cpu = Some(0.1);
        let d = scaler.decide(&idle);
        assert_eq!(
            d.direction,
            Direction::Hold,
            "the busy recommendation is still in the window"
        );
        idle.now_ms = 301_000;
        let d = scaler.decide(&idle);
        // Wants 1, may remove at most half at once.
        assert_eq!(
            (d.direction, d.desired),
            (Direction::Down, 4),
            "{}",
            d.explanation
        );
    }

    #[test]
    fn a_dry_run_decides_from_the_count_its_decisions_would_have_left() {
        let mut config = AutoscaleConfig::for_pool("api");
        config.scale_down_window = std::time::Duration::ZERO;
        config.scale_up_cooldown = std::time::Duration::ZERO;
        config.scale_down_cooldown = std::time::Duration::ZERO;
        config.provisioning_delay = std::time::Duration::from_secs(30);
        let mut scaler = Autoscaler::new(config.clone());
        // The pool really has 8 and stays so (nothing acts); 16 in flight needs 2.
        let d = scaler.decide(&signals(0, 8, 16.0));
        assert_eq!((d.current, d.desired), (8, 2), "{}", d.explanation);
        let d = scaler.decide(&signals(10_000, 8, 16.0));
        assert_eq!(
            (d.current, d.direction),
            (2, Direction::Hold),
            "{}",
            d.explanation
        );
        assert_eq!(
            d.signals.current, 8,
            "the pool's real count is kept beside it"
        );
        // Load triples: 48 in flight needs 6; the 4 asked for count after 30 s.
        let d = scaler.decide(&signals(20_000, 8, 48.0));
        assert_eq!((d.current, d.desired), (2, 6));
        let d = scaler.decide(&signals(30_000, 8, 48.0));
        assert_eq!(d.current, 2, "still on their way");
        let d = scaler.decide(&signals(50_000, 8, 48.0));
        assert_eq!((d.current, d.direction), (6, Direction::Hold));

        // Following the pool instead: every decision starts from the real 8.
        config.dry_run_follows = DryRunFollows::Pool;
        let mut scaler = Autoscaler::new(config);
        scaler.decide(&signals(0, 8, 16.0));
        let d = scaler.decide(&signals(10_000, 8, 16.0));
        assert_eq!((d.current, d.desired), (8, 2));
    }

    #[test]
    fn noise_inside_the_tolerance_never_holds_a_scale_in() {
        // A new loop: its window holds only the decision at hand.
        let mut scaler = Autoscaler::new(AutoscaleConfig::for_pool("api"));
        // Flat traffic with a trend of +2 % over the window: noise, not a rise.
        let mut flat = signals(0, 8, 16.0);
        flat.rps = 500.0;
        flat.rps_trend = 500.0 * 0.02 / 300.0;
        flat.rps_latest = Some(505.0);
        let d = scaler.decide(&flat);
        assert_eq!(d.desired, 2, "{}", d.explanation);
        // A real rise (+50 % within the window, still rising) holds the scale-in.
        let mut scaler = Autoscaler::new(scaler.config().clone());
        let mut rising = flat.clone();
        rising.rps_trend = 500.0 * 0.5 / 300.0;
        rising.rps_latest = Some(600.0);
        let d = scaler.decide(&rising);
        assert_eq!(d.desired, 3, "{}", d.explanation);
        assert!(d.limited_by.unwrap().contains("traffic rising"));
        // The same trend after a spike that has ended (the newest sample under the mean).
        let mut scaler = Autoscaler::new(scaler.config().clone());
        let mut ended = rising;
        ended.rps_latest = Some(400.0);
        let d = scaler.decide(&ended);
        assert_eq!(d.desired, 2, "{}", d.explanation);
    }
}
