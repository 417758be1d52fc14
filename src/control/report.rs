//! The capacity report: what the history says about each pool — traffic and latency, a
//! forecast, the Universal Scalability Law fit and what it implies for sizing,
//! bottlenecks, anomalies — and recommendations in plain words with their numbers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::anomaly;
use super::autoscaler::{Decision, Direction};
use super::forecast;
use super::sample::{PoolSample, Sample};
use super::usl::Usl;
use crate::config::ControlConfig;

/// Points per chart series; longer histories are averaged down to this.
const MAX_POINTS: usize = 600;
/// Steps a forecast is fitted on at most.
const MAX_FORECAST_STEPS: usize = 720;
/// Anomalies listed per pool (largest |z| first).
const MAX_ANOMALIES: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapacityReport {
    pub generated_at: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub samples: usize,
    pub interval_s: f64,
    pub latency_target_ms: f64,
    pub cache_hit_ratio: Option<f64>,
    pub pools: Vec<PoolReport>,
    /// Each SLO's standing and budget over time (filled by a running controller).
    #[serde(default)]
    pub slos: Vec<SloReport>,
    /// Alerts that fired and resolved, oldest first.
    #[serde(default)]
    pub alerts: Vec<AlertReport>,
}

/// An SLO's standing (as `GET /api/v1/slos` gives it) and its budget over time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SloReport {
    #[serde(flatten)]
    pub status: super::slo::SloStatus,
    /// (unix ms, budget remaining over the window ending there): the burn-down chart.
    pub burn_down: Vec<(u64, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertReport {
    pub at_ms: u64,
    pub rule: String,
    pub scope: String,
    pub severity: String,
    pub status: String,
    pub detail: String,
    pub silenced: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolReport {
    pub pool: String,
    pub summary: Summary,
    pub series: Series,
    pub forecast: Option<ForecastReport>,
    pub forecast_note: Option<String>,
    pub usl: Option<UslReport>,
    pub usl_note: Option<String>,
    pub bottlenecks: Vec<String>,
    pub anomalies: Vec<AnomalyReport>,
    pub scaling: Option<ScalingSummary>,
    pub recommendations: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub requests: f64,
    pub rps_mean: f64,
    pub rps_peak: f64,
    pub p95_peak_ms: f64,
    pub p99_mean_ms: f64,
    pub error_rate_mean: f64,
    pub in_flight_peak: f64,
    pub instances_now: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Series {
    pub at_ms: Vec<u64>,
    pub rps: Vec<f64>,
    pub p50_ms: Vec<f64>,
    pub p95_ms: Vec<f64>,
    pub p99_ms: Vec<f64>,
    pub in_flight: Vec<f64>,
    pub instances: Vec<f64>,
    pub error_rate: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForecastReport {
    pub model: String,
    pub step_s: f64,
    /// How far ahead: the configured horizon, but never longer than the history.
    pub horizon_s: f64,
    pub level: f64,
    pub at_ms: Vec<u64>,
    pub point: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    pub peak_upper_rps: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UslReport {
    pub sigma: f64,
    pub kappa: f64,
    pub lambda: f64,
    pub r_squared: f64,
    /// In flight per instance where throughput peaks (none when κ = 0).
    pub saturation_in_flight: Option<f64>,
    pub peak_rps_per_instance: f64,
    /// Highest rps one instance sustains within the latency target, and its in flight.
    pub rps_per_instance_at_target: Option<f64>,
    pub in_flight_at_target: Option<f64>,
    pub target_rps: f64,
    pub instances_for_target: Option<u32>,
    /// (in flight per instance, rps per instance) observed.
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnomalyReport {
    pub at_ms: u64,
    pub metric: String,
    pub value: f64,
    pub median: f64,
    pub z: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalingSummary {
    pub decisions: usize,
    pub scale_ups: usize,
    pub scale_downs: usize,
    pub desired: u32,
    pub current: u32,
    pub last: String,
}

pub fn build(
    samples: &[Sample],
    decisions: &BTreeMap<String, Vec<Decision>>,
    config: &ControlConfig,
    now_ms: u64,
) -> CapacityReport {
    let mut pools: BTreeMap<&str, Vec<(u64, &PoolSample)>> = BTreeMap::new();
    for sample in samples {
        for pool in &sample.pools {
            pools
                .entry(&pool.pool)
                .or_default()
                .push((sample.at_ms, pool));
        }
    }
    let interval_s = samples
        .last()
        .map_or(config.interval.as_secs_f64(), |s| s.interval_s);
    let ratios: Vec<f64> = samples.iter().filter_map(|s| s.cache_hit_ratio).collect();
    let latency_target_ms = config.latency_target.as_secs_f64() * 1000.0;
    CapacityReport {
        generated_at: humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms),
        )
        .to_string(),
        from_ms: samples.first().map_or(now_ms, |s| s.at_ms),
        to_ms: samples.last().map_or(now_ms, |s| s.at_ms),
        samples: samples.len(),
        interval_s,
        latency_target_ms,
        cache_hit_ratio: (!ratios.is_empty())
            .then(|| ratios.iter().sum::<f64>() / ratios.len() as f64),
        pools: pools
            .into_iter()
            .map(|(name, points)| {
                pool_report(name, &points, decisions.get(name), config, interval_s)
            })
            .collect(),
        slos: Vec::new(),
        alerts: Vec::new(),
    }
}

fn pool_report(
    name: &str,
    points: &[(u64, &PoolSample)],
    decisions: Option<&Vec<Decision>>,
    config: &ControlConfig,
    interval_s: f64,
) -> PoolReport {
    let rps: Vec<f64> = points.iter().map(|(_, p)| p.rps).collect();
    let n = points.len().max(1) as f64;
    let summary = Summary {
        requests: points.iter().map(|(_, p)| p.requests as f64).sum(),
        rps_mean: rps.iter().sum::<f64>() / n,
        rps_peak: rps.iter().copied().fold(0.0, f64::max),
        p95_peak_ms: points.iter().map(|(_, p)| p.p95_ms).fold(0.0, f64::max),
        p99_mean_ms: points.iter().map(|(_, p)| p.p99_ms).sum::<f64>() / n,
        error_rate_mean: points.iter().map(|(_, p)| p.error_rate).sum::<f64>() / n,
        in_flight_peak: points.iter().map(|(_, p)| p.in_flight).fold(0.0, f64::max),
        instances_now: points.last().map_or(0, |(_, p)| p.instances),
    };
    let target_rps = if config.target_rps > 0.0 {
        config.target_rps
    } else {
        (summary.rps_peak * 2.0).max(1.0)
    };
    let latency_target_s = config.latency_target.as_secs_f64();
    let (usl, usl_note) = match fit_usl(points, target_rps, latency_target_s) {
        Ok(report) => (Some(report), None),
        Err(note) => (None, Some(note)),
    };
    let (forecast, forecast_note) = match forecast_rps(points, interval_s, config) {
        Ok(f) => (Some(f), None),
        Err(note) => (None, Some(note)),
    };
    let anomalies = find_anomalies(points, config.anomaly_z);
    let bottlenecks = bottlenecks(name, points, usl.as_ref());
    let scaling = decisions.map(|history| ScalingSummary {
        decisions: history.len(),
        scale_ups: history
            .iter()
            .filter(|d| d.direction == Direction::Up)
            .count(),
        scale_downs: history
            .iter()
            .filter(|d| d.direction == Direction::Down)
            .count(),
        desired: history.last().map_or(0, |d| d.desired),
        current: history.last().map_or(0, |d| d.current),
        last: history
            .last()
            .map_or(String::new(), |d| d.explanation.clone()),
    });
    let mut report = PoolReport {
        pool: name.to_owned(),
        series: series(points),
        summary,
        forecast,
        forecast_note,
        usl,
        usl_note,
        bottlenecks,
        anomalies,
        scaling,
        recommendations: Vec::new(),
    };
    report.recommendations = recommend(&report, config);
    report
}

fn series(points: &[(u64, &PoolSample)]) -> Series {
    let chunk = points.len().div_ceil(MAX_POINTS).max(1);
    let mut out = Series::default();
    for group in points.chunks(chunk) {
        let n = group.len() as f64;
        let mean = |f: fn(&PoolSample) -> f64| group.iter().map(|(_, p)| f(p)).sum::<f64>() / n;
        out.at_ms.push(group[group.len() - 1].0);
        out.rps.push(mean(|p| p.rps));
        out.p50_ms.push(mean(|p| p.p50_ms));
        out.p95_ms.push(mean(|p| p.p95_ms));
        out.p99_ms.push(mean(|p| p.p99_ms));
        out.in_flight.push(mean(|p| p.in_flight));
        out.instances.push(mean(|p| p.instances as f64));
        out.error_rate.push(mean(|p| p.error_rate));
    }
    out
}

fn fit_usl(
    points: &[(u64, &PoolSample)],
    target_rps: f64,
    latency_target_s: f64,
) -> Result<UslReport, String> {
    let observed: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, p)| p.instances > 0 && p.rps > 0.0)
        .map(|(_, p)| (p.in_flight / p.instances as f64, p.rps / p.instances as f64))
        .collect();
    let usl = Usl::fit(&observed).map_err(|e| format!("no scalability fit: {e}"))?;
    let saturation = usl.saturation();
    let peak = saturation.map_or(usl.lambda / usl.sigma.max(1e-9), |n| usl.throughput(n));
    let at_target = usl.at_latency(latency_target_s);
    let step = observed.len().div_ceil(300).max(1);
    Ok(UslReport {
        sigma: usl.sigma,
        kappa: usl.kappa,
        lambda: usl.lambda,
        r_squared: usl.r_squared,
        saturation_in_flight: saturation,
        peak_rps_per_instance: peak,
        rps_per_instance_at_target: at_target.map(|(_, x)| x),
        in_flight_at_target: at_target.map(|(n, _)| n),
        target_rps,
        instances_for_target: at_target
            .filter(|(_, x)| *x > 0.0)
            .map(|(_, x)| (target_rps / x).ceil() as u32),
        points: observed.into_iter().step_by(step).collect(),
    })
}

fn forecast_rps(
    points: &[(u64, &PoolSample)],
    interval_s: f64,
    config: &ControlConfig,
) -> Result<ForecastReport, String> {
    let chunk = points.len().div_ceil(MAX_FORECAST_STEPS).max(1);
    let series: Vec<f64> = points
        .chunks(chunk)
        .map(|g| g.iter().map(|(_, p)| p.rps).sum::<f64>() / g.len() as f64)
        .collect();
    let step_s = interval_s * chunk as f64;
    let season = (86_400.0 / step_s).round() as usize;
    // Forecasting further ahead than the history reaches back is guessing.
    let horizon = ((config.forecast_horizon.as_secs_f64() / step_s).ceil() as usize)
        .clamp(1, 720)
        .min(series.len());
    let f = forecast::forecast(&series, Some(season), horizon, 0.9)
        .map_err(|e| format!("no forecast: {e}"))?;
    let last = points.last().map_or(0, |(at, _)| *at);
    let at_ms = (1..=horizon)
        .map(|h| last + (h as f64 * step_s * 1000.0) as u64)
        .collect();
    // Traffic is never negative, whatever the interval says.
    let clip = |v: Vec<f64>| v.into_iter().map(|x| x.max(0.0)).collect::<Vec<_>>();
    let upper = clip(f.upper);
    Ok(ForecastReport {
        model: f.model,
        step_s,
        horizon_s: horizon as f64 * step_s,
        level: f.level,
        at_ms,
        peak_upper_rps: upper.iter().copied().fold(0.0, f64::max),
        point: clip(f.point),
        lower: clip(f.lower),
        upper,
    })
}

fn find_anomalies(points: &[(u64, &PoolSample)], threshold: f64) -> Vec<AnomalyReport> {
    let mut found = Vec::new();
    for (metric, pick) in [
        ("rps", (|p: &PoolSample| p.rps) as fn(&PoolSample) -> f64),
        ("p95_ms", |p| p.p95_ms),
        ("error_rate", |p| p.error_rate),
    ] {
        let values: Vec<f64> = points.iter().map(|(_, p)| pick(p)).collect();
        for a in anomaly::find(&values, threshold) {
            found.push(AnomalyReport {
                at_ms: points[a.index].0,
                metric: metric.to_owned(),
                value: a.value,
                median: a.median,
                z: a.z,
            });
        }
    }
    found.sort_by(|a, b| b.z.abs().total_cmp(&a.z.abs()));
    found.truncate(MAX_ANOMALIES);
    found.sort_by_key(|a| a.at_ms);
    found
}

pub(crate) fn bottlenecks(
    pool: &str,
    points: &[(u64, &PoolSample)],
    usl: Option<&UslReport>,
) -> Vec<String> {
    let mut out = Vec::new();
    // Per endpoint, request-weighted over the history.
    let mut per_endpoint: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new(); // requests, latency·req, errors·req
    for (_, p) in points {
        for e in &p.endpoints {
            let entry = per_endpoint.entry(&e.address).or_default();
            entry.0 += e.rps;
            entry.1 += e.mean_ms * e.rps;
            entry.2 += e.error_rate * e.rps;
        }
    }
    let means: Vec<(&str, f64, f64)> = per_endpoint
        .iter()
        .filter(|(_, v)| v.0 > 0.0)
        .map(|(k, v)| (*k, v.1 / v.0, v.2 / v.0))
        .collect();
    if means.len() >= 2 {
        let median = anomaly::median(&mut means.iter().map(|m| m.1).collect::<Vec<_>>());
        for (address, latency, errors) in &means {
            if *latency > 2.0 * median && *latency - median > 5.0 {
                out.push(format!(
                    "endpoint {address} of {pool}: mean {latency:.0} ms against the pool's median {median:.0} ms"
                ));
            }
            if *errors > 0.05 {
                out.push(format!(
                    "endpoint {address} of {pool}: {:.1} % of its requests failed",
                    errors * 100.0
                ));
            }
        }
    }
    if let Some((_, last)) = points.last()
        && last.healthy < last.instances
    {
        out.push(format!(
            "{} of {} instances of {pool} were not healthy at the last sample (ejected, half-open or failing health checks): the pool runs on less capacity than it has",
            last.instances - last.healthy,
            last.instances
        ));
    }
    if let (Some(usl), Some(saturation)) = (usl, usl.and_then(|u| u.saturation_in_flight)) {
        let peak_per_instance = points
            .iter()
            .filter(|(_, p)| p.instances > 0)
            .map(|(_, p)| p.in_flight / p.instances as f64)
            .fold(0.0, f64::max);
        if peak_per_instance > saturation {
            out.push(format!(
                "{pool} ran past its saturation point: {peak_per_instance:.1} in flight per instance where throughput peaks at {saturation:.1} ({:.0} rps per instance); more concurrency only added latency",
                usl.peak_rps_per_instance
            ));
        }
    }
    out
}

/// What to do about a pool, from the rest of its report.
fn recommend(report: &PoolReport, config: &ControlConfig) -> Vec<String> {
    let pool = report.pool.as_str();
    let summary = &report.summary;
    let usl = report.usl.as_ref();
    let forecast = report.forecast.as_ref();
    let scaling = report.scaling.as_ref();
    let bottlenecks = report.bottlenecks.as_slice();
    let mut out = Vec::new();
    let target_ms = config.latency_target.as_secs_f64() * 1000.0;
    if let Some(u) = usl {
        match (u.rps_per_instance_at_target, u.instances_for_target) {
            (Some(per), Some(needed)) => out.push(format!(
                "One {pool} instance sustains {per:.0} rps within a {target_ms:.0} ms mean latency (USL σ = {:.3}, κ = {:.4}, R² = {:.2}); {:.0} rps needs {needed} instances, {} now.",
                u.sigma, u.kappa, u.r_squared, u.target_rps, summary.instances_now
            )),
            _ => out.push(format!(
                "Even a single request to {pool} takes longer than the {target_ms:.0} ms latency target: more instances will not fix it; the service itself has to get faster."
            )),
        }
        if let (Some(f), Some(per)) = (forecast, u.rps_per_instance_at_target)
            && per > 0.0
        {
            let needed = (f.peak_upper_rps / per).ceil() as u32;
            out.push(format!(
                "Traffic is forecast at up to {:.0} rps ({:.0} % upper bound) within {}; that needs {needed} instances of {pool}.",
                f.peak_upper_rps,
                f.level * 100.0,
                span(f.horizon_s)
            ));
        }
    } else if let Some(f) = forecast {
        out.push(format!(
            "Traffic to {pool} is forecast at up to {:.0} rps ({:.0} % upper bound) within {}; peak so far {:.0} rps.",
            f.peak_upper_rps,
            f.level * 100.0,
            span(f.horizon_s),
            summary.rps_peak
        ));
    }
    if let Some(s) = scaling {
        out.push(format!(
            "The autoscaler wants {} instances of {pool} ({} now; {} scale-ups, {} scale-downs over {} decisions): {}",
            s.desired, s.current, s.scale_ups, s.scale_downs, s.decisions, s.last
        ));
    }
    if summary.error_rate_mean > 0.01 {
        out.push(format!(
            "{:.1} % of {pool}'s requests failed on average: look at the bottlenecks below before adding capacity.",
            summary.error_rate_mean * 100.0
        ));
    }
    if summary.p95_peak_ms > target_ms * 2.0 {
        out.push(format!(
            "{pool}'s p95 peaked at {:.0} ms, more than twice the {target_ms:.0} ms target.",
            summary.p95_peak_ms
        ));
    }
    for b in bottlenecks {
        out.push(format!("Bottleneck: {b}."));
    }
    if out.is_empty() {
        out.push(format!(
            "No change needed for {pool}: {:.0} rps at peak, p95 at most {:.0} ms, {:.2} % errors.",
            summary.rps_peak,
            summary.p95_peak_ms,
            summary.error_rate_mean * 100.0
        ));
    }
    out
}

fn span(seconds: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(
        seconds.round().max(1.0) as u64
    ))
    .to_string()
}
