//! A run as its JSON says it (`weir loadtest --json`): what the HTML page draws, and what
//! `--compare A.json B.json` reads back. A live run goes through the same JSON, so the
//! page of a run and the page of its saved file are the same page.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Slot;
use super::output::{Distribution, Percentiles, Verdict};

#[derive(Debug, Clone, Deserialize)]
pub struct SavedRun {
    /// The plan as the run serialized it (name, targets, model, stages, …).
    pub plan: serde_json::Value,
    pub sent: u64,
    pub answered: u64,
    pub failed: u64,
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    #[serde(default)]
    pub statuses: BTreeMap<u16, u64>,
    pub elapsed_s: f64,
    pub rps: f64,
    pub latency_ms: Percentiles,
    #[serde(default)]
    pub service_latency_ms: Option<Percentiles>,
    #[serde(default)]
    pub late: u64,
    #[serde(default)]
    pub slo: Vec<Verdict>,
    #[serde(default)]
    pub timeline: Vec<Slot>,
    #[serde(default)]
    pub distribution: Distribution,
}

/// Why a saved run could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a weir loadtest JSON run ({reason})")]
    Parse { path: String, reason: String },
}

impl SavedRun {
    pub fn from_value(value: serde_json::Value) -> Result<Self, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// Reads a `--json` output: one run, or the first of several scenarios.
    pub fn read(path: &Path) -> Result<Vec<Self>, SavedError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SavedError::Read {
            path: shown.clone(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| SavedError::Parse {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        let values = match value {
            serde_json::Value::Array(all) => all,
            one => vec![one],
        };
        values
            .into_iter()
            .map(|v| {
                Self::from_value(v).map_err(|reason| SavedError::Parse {
                    path: shown.clone(),
                    reason,
                })
            })
            .collect()
    }

    pub fn name(&self) -> String {
        self.plan["name"].as_str().unwrap_or("run").to_owned()
    }

    pub fn error_rate(&self) -> f64 {
        let fivexx: u64 = self
            .statuses
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum();
        (self.failed + fivexx) as f64 / self.sent.max(1) as f64
    }

    /// Seconds at which each stage after the first starts.
    pub fn stage_starts(&self) -> Vec<f64> {
        let mut at = 0.0;
        let mut starts = Vec::new();
        for stage in self.plan["stages"].as_array().into_iter().flatten() {
            if at > 0.0 {
                starts.push(at);
            }
            at += duration_s(&stage["duration"]);
        }
        starts
    }

    /// The planned duration (what the time axes span, at least).
    pub fn planned_s(&self) -> f64 {
        self.plan["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| duration_s(&s["duration"]))
            .sum()
    }
}

/// A serialized `Duration` (`{secs, nanos}`), in seconds.
pub(super) fn duration_s(value: &serde_json::Value) -> f64 {
    value["secs"].as_f64().unwrap_or(0.0) + value["nanos"].as_f64().unwrap_or(0.0) / 1e9
}

/// One measure of two runs side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Delta {
    pub measure: &'static str,
    pub baseline: f64,
    pub current: f64,
    /// (current − baseline) / baseline × 100; `None` when the baseline is 0.
    pub change_percent: Option<f64>,
    /// Whether a higher value is better (throughput) or worse (latency, errors).
    pub higher_is_better: bool,
    /// Past the allowed regression.
    pub regressed: bool,
}

/// Throughput, latency percentiles and errors of `current` against `baseline`. A measure
/// regresses when it got worse by more than `max_regression_percent` of its baseline;
/// from a baseline of 0 (no errors), any error at all is a regression.
pub fn compare(baseline: &SavedRun, current: &SavedRun, max_regression_percent: f64) -> Vec<Delta> {
    let latency = |r: &SavedRun| r.latency_ms.clone();
    let (a, b) = (latency(baseline), latency(current));
    let rows = [
        ("throughput (req/s)", baseline.rps, current.rps, true),
        ("p50 (ms)", a.p50, b.p50, false),
        ("p90 (ms)", a.p90, b.p90, false),
        ("p99 (ms)", a.p99, b.p99, false),
        ("p99.9 (ms)", a.p999, b.p999, false),
        ("max (ms)", a.max, b.max, false),
        (
            "error rate (%)",
            baseline.error_rate() * 100.0,
            current.error_rate() * 100.0,
            false,
        ),
    ];
    rows.into_iter()
        .map(|(measure, base, now, higher_is_better)| {
            let change_percent = (base != 0.0).then(|| (now - base) / base * 100.0);
            let worse_by = match change_percent {
                Some(change) if higher_is_better => -change,
                Some(change) => change,
                // From nothing: any error (or latency) at all is a regression.
                None => {
                    if now > 0.0 && !higher_is_better {
                        f64::INFINITY
                    } else {
                        0.0
                    }
                }
            };
            Delta {
                measure,
                baseline: base,
                current: now,
                change_percent,
                higher_is_better,
                // `max` is one sample: shown, never judged.
                // Past the threshold beyond float rounding (4.0 → 4.2 computes as 5.000…04 %).
                regressed: measure != "max (ms)" && worse_by > max_regression_percent + 1e-9,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rps: f64, p99: f64, failed: u64) -> SavedRun {
        SavedRun::from_value(serde_json::json!({
            "plan": { "name": "r", "stages": [
                { "duration": { "secs": 10, "nanos": 0 }, "target": 5.0, "ramp": false },
                { "duration": { "secs": 5, "nanos": 500000000 }, "target": 9.0, "ramp": true }
            ] },
            "sent": 1000, "answered": 1000 - failed, "failed": failed,
            "statuses": { "200": 1000 - failed },
            "elapsed_s": 15.5, "rps": rps,
            "latency_ms": { "p50": 1.0, "p90": 2.0, "p95": 3.0, "p99": p99, "p999": 9.0, "max": 20.0, "mean": 1.2 },
        }))
        .unwrap()
    }

    #[test]
    fn deltas_and_regressions_have_known_answers() {
        let base = run(1000.0, 4.0, 0);
        assert_eq!(base.stage_starts(), vec![10.0]);
        assert!((base.planned_s() - 15.5).abs() < 1e-9);
        let deltas = compare(&base, &run(900.0, 4.2, 0), 5.0);
        let throughput = &deltas[0];
        assert_eq!(throughput.change_percent, Some(-10.0));
        assert!(throughput.regressed, "10 % less throughput is past 5 %");
        let p99 = &deltas[3];
        assert!((p99.change_percent.unwrap() - 5.0).abs() < 1e-9);
        assert!(!p99.regressed, "exactly 5 % is allowed");
        let errors = compare(&base, &run(1000.0, 4.0, 3), 5.0);
        assert!(errors[6].regressed && errors[6].change_percent.is_none());
        assert!(compare(&base, &base, 0.0).iter().all(|d| !d.regressed));
    }
}
