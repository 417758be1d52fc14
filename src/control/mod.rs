//! The control loop: beside the request path, never in it. It reads what the data plane
//! publishes (atomic counters, the swapped snapshot), keeps a bounded history of samples,
//! runs each pool's autoscaler, acts on its decisions, and builds capacity reports.
//!
//! - `sample.rs`: counters → one sample per interval (rps, in flight, percentiles, errors)
//! - `autoscaler.rs`: signals → an explained decision (HPA-style, stabilized)
//! - `action.rs`: a decision → a command or a webhook, with its outcome recorded
//! - `forecast.rs`, `usl.rs`, `anomaly.rs`: the models behind the report
//! - `report.rs`, `html.rs`: the capacity report as JSON and as a page with SVG charts
//! - `slo.rs`: good and total answers per SLO over any window (burn rates, budget)
//! - `rules.rs`: alert rules observed at a tick (burn rates, thresholds, anomalies)
//! - `alert.rs`: alert states (pending, firing, resolved), silences, history, notices
//! - `notify.rs`: notices to webhooks and commands, with retries, off the sampling path
//! - `alerting.rs`: the controller's alerting half (evaluation, context, API views)
//!
//! May import: `config`, `chart`, and what the data plane publishes (`proxy::ProxyState`,
//! `upstream`); the data plane never imports it.

pub mod action;
pub mod alert;
mod alerting;
pub mod anomaly;
pub mod autoscaler;
pub mod evaluate;
pub mod forecast;
pub mod html;
pub mod notify;
pub mod report;
pub mod rules;
pub mod sample;
pub mod slo;
pub mod usl;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::ControlConfig;
use crate::proxy::ProxyState;
use autoscaler::{Autoscaler, Decision, Direction, Signals};
use sample::{InstanceLoad, Sample, Sampler};

/// An instance's own load report counts for this many intervals.
const LOAD_REPORT_INTERVALS: u32 = 3;
/// Reloads remembered as alert context.
const RELOADS_KEPT: usize = 10;
/// How far back a reload counts as context for an alert.
const RELOAD_CONTEXT: Duration = Duration::from_secs(30 * 60);

/// One autoscaled pool's counters and last decision, as metrics export them.
#[derive(Debug, Clone)]
pub struct ScalerStats {
    pub pool: String,
    pub counts: autoscaler::ScaleCounts,
    pub last: Option<Decision>,
}

/// SLOs, alert rules and notifiers, as metrics export them.
#[derive(Debug, Default)]
pub struct AlertingStats {
    pub slos: Vec<slo::SloStatus>,
    /// Per rule: its name, severity and alerts firing now.
    pub rules: Vec<(String, String, usize)>,
    pub notifiers: Vec<(String, Arc<notify::NotifierCounts>)>,
}

/// The control loop's state: samples, per-pool autoscalers and forecasts, reconfigured on
/// reload and read by the admin API and metrics.
pub struct Controller {
    state: Arc<ProxyState>,
    config: ArcSwap<ControlConfig>,
    sampler: Mutex<Sampler>,
    history: Mutex<VecDeque<Sample>>,
    scalers: Mutex<BTreeMap<String, Autoscaler>>,
    loads: Mutex<HashMap<String, (Instant, InstanceLoad)>>,
    /// Pools whose action is running now.
    acting: Mutex<std::collections::BTreeSet<String>>,
    slos: Mutex<BTreeMap<String, slo::SloTracker>>,
    alerts: Mutex<alert::AlertEngine>,
    notifier: notify::Notifier,
    /// Recent reloads (wall-clock ms, what happened), as context for alerts.
    reloads: Mutex<VecDeque<(u64, String)>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("pools", &lock(&self.scalers).keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Controller {
    pub fn new(state: Arc<ProxyState>, config: &ControlConfig) -> Arc<Self> {
        let controller = Arc::new(Self {
            state,
            config: ArcSwap::from_pointee(config.clone()),
            sampler: Mutex::new(Sampler::default()),
            history: Mutex::new(VecDeque::new()),
            scalers: Mutex::new(BTreeMap::new()),
            loads: Mutex::new(HashMap::new()),
            acting: Mutex::new(std::collections::BTreeSet::new()),
            slos: Mutex::new(BTreeMap::new()),
            alerts: Mutex::new(alert::AlertEngine::default()),
            notifier: notify::Notifier::default(),
            reloads: Mutex::new(VecDeque::new()),
        });
        controller.reconfigure(config);
        if let Some(path) = &config.history_file {
            match read_history(path, config.history) {
                Ok(samples) => {
                    tracing::info!(path = %path.display(), samples = samples.len(), "control history loaded");
                    *lock(&controller.history) = samples;
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "control history not loaded")
                }
            }
        }
        controller
    }

    /// Takes a reloaded `[control]`: autoscalers of the same pool keep their history.
    pub fn reconfigure(&self, config: &ControlConfig) {
        let mut scalers = lock(&self.scalers);
        let mut next = BTreeMap::new();
        for scaler_config in &config.autoscale {
            let scaler = match scalers.remove(&scaler_config.pool) {
                Some(mut existing) => {
                    existing.reconfigure(scaler_config.clone());
                    existing
                }
                None => Autoscaler::new(scaler_config.clone()),
            };
            next.insert(scaler_config.pool.clone(), scaler);
        }
        *scalers = next;
        drop(scalers);
        let mut slos = lock(&self.slos);
        let mut kept = BTreeMap::new();
        for slo_config in &config.slo {
            let tracker = match slos.remove(&slo_config.name) {
                Some(mut existing) => {
                    existing.reconfigure(slo_config.clone(), config.interval);
                    existing
                }
                None => slo::SloTracker::new(slo_config.clone(), config.interval),
            };
            kept.insert(slo_config.name.clone(), tracker);
        }
        *slos = kept;
        drop(slos);
        self.config.store(Arc::new(config.clone()));
    }

    pub fn config(&self) -> Arc<ControlConfig> {
        self.config.load_full()
    }

    /// Samples and decides every interval until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut last = Instant::now();
        // Prime the sampler so the first tick reports a whole interval. A loop that starts
        // disabled leaves that to its first tick (tests drive `tick_at` themselves).
        if self.config.load().enabled {
            self.tick_at(SystemTime::now(), 0.0);
        }
        loop {
            let interval = self.config.load().interval;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let elapsed = last.elapsed().as_secs_f64();
            last = Instant::now();
            if !self.config.load().enabled {
                continue;
            }
            // Forecasts for predictive scaling fit models: keep that off the async workers.
            let controller = Arc::clone(&self);
            let decisions = match tokio::task::spawn_blocking(move || {
                controller.tick_at(SystemTime::now(), elapsed)
            })
            .await
            {
                Ok(decisions) => decisions,
                Err(err) => {
                    tracing::error!(error = %err, "control tick failed");
                    continue;
                }
            };
            self.act(decisions);
        }
    }

    /// One sample and one decision per autoscaled pool. Public for tests and the demo.
    pub fn tick_at(&self, now: SystemTime, interval_s: f64) -> Vec<Decision> {
        let config = self.config.load_full();
        let loads = self.fresh_loads(config.interval);
        let snapshot = self.state.snapshot.load();
        let at_ms = unix_ms(now);
        for tracker in lock(&self.slos).values_mut() {
            tracker.record(&snapshot, at_ms);
        }
        let Some(sample) = lock(&self.sampler).sample(&snapshot, &loads, at_ms, interval_s) else {
            self.evaluate_alerts(&config, &snapshot, at_ms);
            return Vec::new();
        };
        if let Some(path) = &config.history_file
            && let Err(err) = append_history(path, &sample)
        {
            tracing::warn!(path = %path.display(), error = %err, "control history not written");
        }
        {
            let mut history = lock(&self.history);
            history.push_back(sample);
            let keep_from = at_ms.saturating_sub(config.history.as_millis() as u64);
            while history.front().is_some_and(|s| s.at_ms < keep_from) {
                history.pop_front();
            }
        }
        self.evaluate_alerts(&config, &snapshot, at_ms);
        let history = lock(&self.history);
        let mut scalers = lock(&self.scalers);
        scalers
            .values_mut()
            .filter_map(|scaler| {
                let signals = signals_for(scaler, &history, at_ms)?;
                let decision = scaler.decide(&signals);
                if decision.direction != Direction::Hold {
                    tracing::info!(pool = %decision.pool, dry_run = decision.dry_run, "autoscaler: {}", decision.explanation);
                }
                Some(decision)
            })
            .collect()
    }

    /// Runs each decision's action in its own task, so a slow hook never delays the next
    /// sample; one action per pool at a time (a decision made while its pool's previous
    /// action still runs records that it was skipped).
    fn act(self: &Arc<Self>, decisions: Vec<Decision>) {
        for decision in decisions {
            if decision.direction == Direction::Hold || decision.dry_run {
                continue;
            }
            let action = lock(&self.scalers)
                .get(&decision.pool)
                .and_then(|s| s.config().action.clone());
            let Some(action) = action else { continue };
            if !lock(&self.acting).insert(decision.pool.clone()) {
                if let Some(scaler) = lock(&self.scalers).get_mut(&decision.pool) {
                    scaler.record_action(
                        decision.seq,
                        autoscaler::ActionOutcome {
                            ok: false,
                            skipped: true,
                            detail: "skipped: the previous action for this pool is still running"
                                .into(),
                            elapsed_ms: 0,
                        },
                    );
                }
                continue;
            }
            let controller = Arc::clone(self);
            tokio::spawn(async move {
                let outcome = action::run(&action, &decision).await;
                if let Some(scaler) = lock(&controller.scalers).get_mut(&decision.pool) {
                    scaler.record_action(decision.seq, outcome);
                }
                lock(&controller.acting).remove(&decision.pool);
            });
        }
    }

    /// Records what an instance says about its own load.
    pub fn report_load(&self, address: &str, load: InstanceLoad) {
        lock(&self.loads).insert(address.to_owned(), (Instant::now(), load));
    }

    fn fresh_loads(&self, interval: Duration) -> HashMap<String, InstanceLoad> {
        let max_age = interval * LOAD_REPORT_INTERVALS;
        let mut loads = lock(&self.loads);
        loads.retain(|_, (at, _)| at.elapsed() <= max_age);
        loads.iter().map(|(k, (_, l))| (k.clone(), *l)).collect()
    }

    pub fn samples(&self) -> Vec<Sample> {
        lock(&self.history).iter().cloned().collect()
    }

    /// The pool's autoscaler state and decision history (newest first), if it has one.
    pub fn scaling(&self, pool: &str, limit: usize) -> Option<serde_json::Value> {
        let scalers = lock(&self.scalers);
        let scaler = scalers.get(pool)?;
        let history: Vec<&Decision> = scaler.history().rev().take(limit).collect();
        Some(serde_json::json!({
            "pool": pool,
            "config": scaler.config(),
            "last": scaler.last(),
            "history": history,
        }))
    }

    /// Per autoscaled pool: its counts and last decision (for metrics).
    pub fn scaler_stats(&self) -> Vec<ScalerStats> {
        lock(&self.scalers)
            .iter()
            .map(|(pool, s)| ScalerStats {
                pool: pool.clone(),
                counts: s.counts(),
                last: s.last().cloned(),
            })
            .collect()
    }

    /// Last decision per autoscaled pool.
    pub fn last_decisions(&self) -> Vec<Decision> {
        lock(&self.scalers)
            .values()
            .filter_map(|s| s.last().cloned())
            .collect()
    }

    pub fn decisions(&self, pool: &str) -> Vec<Decision> {
        lock(&self.scalers)
            .get(pool)
            .map(|s| s.history().cloned().collect())
            .unwrap_or_default()
    }

    pub fn report(&self) -> report::CapacityReport {
        let config = self.config.load_full();
        let samples = self.samples();
        let decisions: BTreeMap<String, Vec<Decision>> = lock(&self.scalers)
            .iter()
            .map(|(pool, s)| (pool.clone(), s.history().cloned().collect()))
            .collect();
        let mut report = report::build(&samples, &decisions, &config, unix_ms(SystemTime::now()));
        let burn_down = self.slo_burn_down();
        report.slos = self
            .slo_statuses()
            .into_iter()
            .map(|status| report::SloReport {
                burn_down: burn_down.get(&status.name).cloned().unwrap_or_default(),
                status,
            })
            .collect();
        report.alerts = self
            .alert_events()
            .into_iter()
            .map(|e| report::AlertReport {
                at_ms: e.at_ms,
                rule: e.rule,
                scope: e.scope,
                severity: e.severity,
                status: e.status.to_owned(),
                detail: e.detail,
                silenced: e.silenced,
            })
            .collect();
        report
    }
}

/// Averages the pool's samples over the scaler's signal window.
fn signals_for(scaler: &Autoscaler, history: &VecDeque<Sample>, now_ms: u64) -> Option<Signals> {
    let c = scaler.config();
    let since = now_ms.saturating_sub(c.signal_window.as_millis() as u64);
    let pool_samples = |from: u64| {
        history
            .iter()
            .filter(move |s| s.at_ms > from)
            .filter_map(|s| {
                s.pools
                    .iter()
                    .find(|p| p.pool == c.pool)
                    .map(|p| (s.at_ms, p))
            })
    };
    let window: Vec<_> = pool_samples(since).collect();
    let (_, latest) = window.last()?;
    let n = window.len() as f64;
    let mean =
        |f: fn(&sample::PoolSample) -> f64| window.iter().map(|(_, p)| f(p)).sum::<f64>() / n;
    let mean_of = |f: fn(&sample::PoolSample) -> Option<f64>| {
        let values: Vec<f64> = window.iter().filter_map(|(_, p)| f(p)).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let trend_since = now_ms.saturating_sub(c.scale_down_window.as_millis() as u64);
    let trend_points: Vec<(f64, f64)> = pool_samples(trend_since)
        .map(|(at, p)| (at as f64 / 1000.0, p.rps))
        .collect();
    let forecast_rps = if c.predictive {
        predicted_peak(history, &c.pool, c.predictive_lookahead)
    } else {
        None
    };
    Some(Signals {
        now_ms,
        current: latest.instances,
        rps: mean(|p| p.rps),
        rps_trend: slope(&trend_points),
        rps_latest: Some(latest.rps),
        in_flight: mean(|p| p.in_flight),
        p95_ms: mean(|p| p.p95_ms),
        mean_ms: mean(|p| p.mean_ms),
        error_rate: mean(|p| p.error_rate),
        cpu: mean_of(|p| p.load.cpu),
        memory: mean_of(|p| p.load.memory),
        queue: mean_of(|p| p.load.queue),
        forecast_rps,
    })
}

/// Least-squares slope of (x, y) points.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in points {
        num += (x - mean_x) * (y - mean_y);
        den += (x - mean_x).powi(2);
    }
    if den == 0.0 { 0.0 } else { num / den }
}

/// Upper end of the 90 % forecast of the pool's rps over `lookahead`, from the last hour.
fn predicted_peak(history: &VecDeque<Sample>, pool: &str, lookahead: Duration) -> Option<f64> {
    let recent: Vec<&Sample> = history.iter().rev().take(360).collect();
    let step_s = recent.first()?.interval_s.max(0.001);
    let series: Vec<f64> = recent
        .iter()
        .rev()
        .filter_map(|s| s.pools.iter().find(|p| p.pool == pool).map(|p| p.rps))
        .collect();
    let horizon = ((lookahead.as_secs_f64() / step_s).ceil() as usize).clamp(1, 360);
    let forecast = forecast::forecast(&series, None, horizon, 0.9).ok()?;
    forecast.upper.into_iter().reduce(f64::max)
}

fn read_history(path: &std::path::Path, keep: Duration) -> std::io::Result<VecDeque<Sample>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(VecDeque::new()),
        Err(err) => return Err(err),
    };
    let from = unix_ms(SystemTime::now()).saturating_sub(keep.as_millis() as u64);
    let samples: VecDeque<Sample> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Sample>(line).ok())
        .filter(|s| s.at_ms >= from)
        .collect();
    // Rewrite with only what is kept, so the file does not grow forever.
    let mut out = Vec::new();
    for sample in &samples {
        serde_json::to_writer(&mut out, sample)?;
        out.push(b'\n');
    }
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, out)?;
    std::fs::rename(&temporary, path)?;
    Ok(samples)
}

fn append_history(path: &std::path::Path, sample: &Sample) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(sample)?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(&line)
}

/// Reads a history file written by a running weir (for `weir report --history`).
pub fn load_history_file(path: &std::path::Path) -> std::io::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sample::PoolSample;

    fn history(rps: impl Iterator<Item = f64>) -> VecDeque<Sample> {
        rps.enumerate()
            .map(|(i, rps)| Sample {
                at_ms: i as u64 * 10_000,
                interval_s: 10.0,
                pools: vec![PoolSample {
                    pool: "api".into(),
                    rps,
                    ..PoolSample::default()
                }],
                ..Sample::default()
            })
            .collect()
    }

    #[test]
    fn the_predicted_peak_follows_a_rising_trend() {
        // 2 rps more every 10 s; 5 minutes ahead is 30 steps: about 60 rps above the last.
        let rising = history((0..60).map(|i| 100.0 + 2.0 * i as f64));
        let peak = predicted_peak(&rising, "api", Duration::from_secs(300)).unwrap();
        assert!((250.0..320.0).contains(&peak), "{peak}");
        assert_eq!(
            predicted_peak(&rising, "other", Duration::from_secs(300)),
            None
        );
        assert_eq!(
            predicted_peak(
                &history((0..5).map(f64::from)),
                "api",
                Duration::from_secs(60)
            ),
            None
        );
    }

    #[test]
    fn slope_is_least_squares() {
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-12);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
    }
}
