//! Observing the alert rules at one tick: SLO burn rates over their window pairs,
//! thresholds on the latest sample, robust z-scores against the recent history.

use std::collections::{BTreeMap, VecDeque};

use crate::config::{AlertRuleConfig, AlertSignal, ControlConfig};

use super::alert::{Observation, WindowValue};
use super::anomaly;
use super::sample::{PoolSample, Sample};
use super::slo::SloTracker;

/// The burn alert's rule name: the SLO's name and the burn it watches.
pub fn burn_rule_name(slo: &str, factor: f64, long: std::time::Duration) -> String {
    format!("{slo} burn {factor}x/{}", humantime::format_duration(long))
}

/// Every burn alert of every SLO, evaluated on its two windows.
pub fn observe_slos(slos: &BTreeMap<String, SloTracker>) -> Vec<Observation> {
    let mut out = Vec::new();
    for tracker in slos.values() {
        let slo = tracker.config();
        let remaining = tracker.status().error_budget_remaining;
        for burn in &slo.burn_alerts {
            let long = tracker.burn_rate(burn.long);
            let short = tracker.burn_rate(burn.short);
            let value = long.min(short);
            let window = |w: std::time::Duration| humantime::format_duration(w).to_string();
            out.push(Observation {
                rule: burn_rule_name(&slo.name, burn.factor, burn.long),
                scope: String::new(),
                scope_label: "",
                kind: "slo_burn",
                severity: burn.severity.clone(),
                // Strictly above, past float rounding: 1 − 0.9 is 0.09999999999999998,
                // so a burn of exactly 2 computes as 2.0000000000000004.
                active: value > burn.factor * (1.0 + 1e-9),
                value,
                threshold: burn.factor,
                windows: vec![
                    WindowValue {
                        window_s: burn.long.as_secs_f64(),
                        value: long,
                    },
                    WindowValue {
                        window_s: burn.short.as_secs_f64(),
                        value: short,
                    },
                ],
                detail: format!(
                    "SLO {} ({} objective {}): error budget burning {long:.1}× over {} and {short:.1}× over {}, alert above {}×; {:.1} % of the budget left",
                    slo.name,
                    if slo.latency.is_some() { "latency" } else { "availability" },
                    slo.objective,
                    window(burn.long),
                    window(burn.short),
                    burn.factor,
                    remaining * 100.0,
                ),
                summary: String::new(),
                hold_ms: 0,
                resolve_after_ms: 0,
            });
        }
    }
    out
}

/// Threshold and anomaly rules on the newest sample (one observation per pool they cover).
pub fn observe_rules(config: &ControlConfig, history: &VecDeque<Sample>) -> Vec<Observation> {
    let Some(latest) = history.back() else {
        return Vec::new();
    };
    let mut out: Vec<Observation> = Vec::new();
    for rule in &config.alert {
        let scheduled = rule.scheduled_at(latest.at_ms / 1000);
        let first = out.len();
        if rule.signal.per_pool() {
            for pool in &latest.pools {
                if rule.pool.as_ref().is_some_and(|p| *p != pool.pool) {
                    continue;
                }
                let value = pool_value(pool, rule.signal);
                out.push(observe(rule, &pool.pool, value, || {
                    series(history, rule, |s| {
                        s.pools
                            .iter()
                            .find(|p| p.pool == pool.pool)
                            .and_then(|p| pool_value(p, rule.signal))
                    })
                }));
            }
        } else if let Some(route) = &rule.route {
            let value = route_value(latest, route, rule.signal);
            let mut observation = observe(rule, route, value, || {
                series(history, rule, |s| route_value(s, route, rule.signal))
            });
            observation.scope_label = "route";
            out.push(observation);
        } else {
            let value = instance_value(latest, rule.signal);
            out.push(observe(rule, "", value, || {
                series(history, rule, |s| instance_value(s, rule.signal))
            }));
        }
        if !scheduled {
            // Outside its schedule a rule does not hold: pending alerts drop, firing ones
            // resolve after `resolve_after`.
            for observation in &mut out[first..] {
                observation.active = false;
                observation.detail =
                    format!("{} (outside the rule's schedule)", observation.detail);
            }
        }
    }
    out
}

fn observe(
    rule: &AlertRuleConfig,
    scope: &str,
    value: Option<f64>,
    series: impl FnOnce() -> Vec<f64>,
) -> Observation {
    let name = rule.signal.as_str();
    let of = if scope.is_empty() {
        String::new()
    } else {
        format!(" of {scope}")
    };
    let (active, threshold, detail) = match (value, rule.above, rule.below, rule.anomaly_z) {
        (None, ..) => (false, f64::NAN, format!("{name}{of}: no data")),
        (Some(v), Some(above), _, _) => (
            v > above,
            above,
            format!("{name}{of} is {} (alert above {})", shown(v), shown(above)),
        ),
        (Some(v), None, Some(below), _) => (
            v < below,
            below,
            format!("{name}{of} is {} (alert below {})", shown(v), shown(below)),
        ),
        (Some(v), None, None, Some(z_max)) => {
            let series = series();
            match anomaly::find(&series, z_max)
                .into_iter()
                .find(|a| a.index + 1 == series.len())
            {
                Some(found) => (
                    true,
                    z_max,
                    format!(
                        "{name}{of} is {} against a median of {} over the last {} samples: robust z-score {:.1} (alert beyond ±{z_max})",
                        shown(v),
                        shown(found.median),
                        series.len(),
                        found.z
                    ),
                ),
                None => (
                    false,
                    z_max,
                    format!("{name}{of} is {} (no anomaly)", shown(v)),
                ),
            }
        }
        (Some(_), None, None, None) => (false, f64::NAN, format!("{name}{of}: no condition")),
    };
    let hold_ms = rule.hold.as_millis() as u64;
    Observation {
        rule: rule.name.clone(),
        scope: scope.to_owned(),
        scope_label: if scope.is_empty() { "" } else { "pool" },
        kind: if rule.anomaly_z.is_some() {
            "anomaly"
        } else {
            "threshold"
        },
        severity: rule.severity.clone(),
        active,
        value: value.unwrap_or(f64::NAN),
        threshold,
        windows: Vec::new(),
        detail,
        summary: rule.summary.clone(),
        hold_ms,
        resolve_after_ms: rule.resolve_after.map_or(hold_ms, |d| d.as_millis() as u64),
    }
}

/// The signal's values over the rule's anomaly window, oldest first, ending at the newest.
fn series(
    history: &VecDeque<Sample>,
    rule: &AlertRuleConfig,
    value: impl Fn(&Sample) -> Option<f64>,
) -> Vec<f64> {
    let Some(newest) = history.back() else {
        return Vec::new();
    };
    let from = newest
        .at_ms
        .saturating_sub(rule.anomaly_window.as_millis() as u64);
    history
        .iter()
        .filter(|s| s.at_ms > from)
        .filter_map(value)
        .collect()
}

fn pool_value(pool: &PoolSample, signal: AlertSignal) -> Option<f64> {
    Some(match signal {
        AlertSignal::P50Ms => pool.p50_ms,
        AlertSignal::P95Ms => pool.p95_ms,
        AlertSignal::P99Ms => pool.p99_ms,
        AlertSignal::MeanMs => pool.mean_ms,
        AlertSignal::ErrorRate => pool.error_rate,
        AlertSignal::InFlight => pool.in_flight,
        AlertSignal::Rps => pool.rps,
        AlertSignal::Cpu => pool.load.cpu?,
        AlertSignal::Memory => pool.load.memory?,
        AlertSignal::Queue => pool.load.queue?,
        AlertSignal::HealthyEndpoints => f64::from(pool.healthy),
        AlertSignal::UnhealthyEndpoints => f64::from(pool.instances.saturating_sub(pool.healthy)),
        _ => return None,
    })
}

/// A cache hit ratio of one route (no data when it saw no lookups in the interval).
fn route_value(sample: &Sample, route: &str, signal: AlertSignal) -> Option<f64> {
    let found = sample.routes.iter().find(|r| r.route == route)?;
    match signal {
        AlertSignal::CacheHitRatio => Some(found.hit_ratio),
        AlertSignal::CacheMemoryHitRatio => Some(found.memory_hit_ratio),
        AlertSignal::CacheRedisHitRatio => found.redis_hit_ratio,
        _ => None,
    }
}

fn instance_value(sample: &Sample, signal: AlertSignal) -> Option<f64> {
    match signal {
        AlertSignal::CacheHitRatio => sample.cache_hit_ratio,
        AlertSignal::CacheMemoryHitRatio => sample.cache_memory_hit_ratio,
        AlertSignal::CacheRedisHitRatio => sample.cache_redis_hit_ratio,
        AlertSignal::CacheEvictionsPerSecond => sample.cache_evictions_per_s,
        AlertSignal::RedisUnavailable => sample
            .redis_unavailable
            .map(|down| f64::from(u8::from(down))),
        _ => None,
    }
}

/// A number as people read it: no trailing noise.
fn shown(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rule(signal: AlertSignal) -> AlertRuleConfig {
        AlertRuleConfig {
            name: "r".into(),
            signal,
            pool: None,
            route: None,
            above: None,
            below: None,
            anomaly_z: None,
            anomaly_window: Duration::from_secs(3600),
            hold: Duration::from_secs(60),
            resolve_after: None,
            severity: "warning".into(),
            summary: String::new(),
            during: Vec::new(),
        }
    }

    fn sample(at_ms: u64, rps: f64, p99_ms: f64) -> Sample {
        Sample {
            at_ms,
            interval_s: 10.0,
            pools: vec![PoolSample {
                pool: "api".into(),
                rps,
                p99_ms,
                instances: 3,
                healthy: 2,
                ..PoolSample::default()
            }],
            cache_hit_ratio: Some(0.5),
            ..Sample::default()
        }
    }

    #[test]
    fn thresholds_anomalies_and_missing_data() {
        let mut history: VecDeque<Sample> = (0..30)
            .map(|i| sample(i * 10_000, 100.0 + (i % 3) as f64, 200.0))
            .collect();
        let config = |rules: Vec<AlertRuleConfig>| ControlConfig {
            alert: rules,
            ..ControlConfig::default()
        };
        let mut p99 = rule(AlertSignal::P99Ms);
        p99.above = Some(150.0);
        let mut healthy = rule(AlertSignal::HealthyEndpoints);
        healthy.below = Some(3.0);
        let mut cpu = rule(AlertSignal::Cpu);
        cpu.above = Some(0.8);
        let mut hits = rule(AlertSignal::CacheHitRatio);
        hits.below = Some(0.4);
        let mut spike = rule(AlertSignal::Rps);
        spike.anomaly_z = Some(3.5);
        let seen = observe_rules(
            &config(vec![p99, healthy, cpu, hits, spike.clone()]),
            &history,
        );
        let active: Vec<(&str, bool)> =
            seen.iter().map(|o| (o.detail.as_str(), o.active)).collect();
        assert_eq!(
            active,
            vec![
                ("p99_ms of api is 200 (alert above 150)", true),
                ("healthy_endpoints of api is 2 (alert below 3)", true),
                ("cpu of api: no data", false),
                ("cache_hit_ratio is 0.500 (alert below 0.400)", false),
                ("rps of api is 102 (no anomaly)", false),
            ]
        );
        assert_eq!(
            seen[0].resolve_after_ms, 60_000,
            "resolves after `for` by default"
        );
        // A schedule: 1970-01-01 was a Thursday, and the samples are its first minutes.
        let mut office = rule(AlertSignal::P99Ms);
        office.above = Some(150.0);
        office.during = vec![crate::config::TimeWindowConfig {
            days: "thu".into(),
            from: "00:00".into(),
            to: "00:10".into(),
        }];
        let mut weekend = office.clone();
        weekend.name = "weekend".into();
        weekend.during[0].days = "sat,sun".into();
        let seen = observe_rules(&config(vec![office, weekend]), &history);
        assert!(seen[0].active, "{seen:?}");
        assert!(!seen[1].active);
        assert!(
            seen[1].detail.ends_with("(outside the rule's schedule)"),
            "{}",
            seen[1].detail
        );
        history.push_back(sample(300_000, 400.0, 200.0));
        let seen = observe_rules(&config(vec![spike]), &history);
        assert!(seen[0].active, "{}", seen[0].detail);
        assert_eq!(seen[0].kind, "anomaly");
        assert!(
            seen[0].detail.contains("against a median of 101"),
            "{}",
            seen[0].detail
        );
    }
}
