//! What a run prints: progress while it goes, then the summary, the SLO verdicts, and
//! on request JSON (what `--compare` and the HTML page read back; see `saved.rs`).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::engine::View;
use super::plan::{Model, Plan};
use super::{LoadReport, Slot};

/// Plain progress lines (no terminal) come this often.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub async fn progress(view: Arc<View>) {
    let total = view.duration();
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40.cyan/blue} {elapsed}/{duration} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let mut last = 0;
        while !view.finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (answered, failed, p99) = view.counts();
            bar.set_position(view.elapsed().as_millis().min(total.as_millis()) as u64);
            bar.set_message(format!(
                "{answered} answered ({} req/s), {failed} failed, p99 {p99:.1} ms",
                (answered - last) * 5
            ));
            last = answered;
        }
        bar.finish_and_clear();
    } else {
        let mut last = 0;
        let mut next_line = PLAIN_EVERY;
        while !view.finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if view.finished() || view.elapsed() < next_line {
                continue;
            }
            next_line += PLAIN_EVERY;
            let (answered, failed, p99) = view.counts();
            eprintln!(
                "[{:>5.0} s] {answered} answered ({:.0} req/s), {failed} failed, p99 {p99:.1} ms",
                view.elapsed().as_secs_f64(),
                (answered - last) as f64 / PLAIN_EVERY.as_secs_f64()
            );
            last = answered;
        }
    }
}

/// One SLO check and its result.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Verdict {
    pub check: String,
    pub limit: f64,
    pub observed: f64,
    pub ok: bool,
}

pub fn verdicts(plan: &Plan, report: &LoadReport) -> Vec<Verdict> {
    let slo = &plan.slo;
    let mut out = Vec::new();
    // Latency over no answers cannot meet anything.
    let answered = report.completed() > 0;
    let mut below = |check: &str, limit: Option<f64>, observed: f64| {
        if let Some(limit) = limit {
            out.push(Verdict {
                check: check.to_owned(),
                limit,
                observed,
                ok: observed <= limit && (answered || check == "max_error_rate"),
            });
        }
    };
    below("p50_ms", slo.p50_ms, report.latency_ms(0.50));
    below("p90_ms", slo.p90_ms, report.latency_ms(0.90));
    below("p95_ms", slo.p95_ms, report.latency_ms(0.95));
    below("p99_ms", slo.p99_ms, report.latency_ms(0.99));
    below("p999_ms", slo.p999_ms, report.latency_ms(0.999));
    let error_rate = report.failures() as f64 / report.sent.max(1) as f64;
    below("max_error_rate", slo.max_error_rate, error_rate);
    if let Some(min) = slo.min_rps {
        let observed = report.throughput();
        out.push(Verdict {
            check: "min_rps".into(),
            limit: min,
            observed,
            ok: observed >= min,
        });
    }
    out
}

pub fn summary(plan: &Plan, report: &LoadReport, verdicts: &[Verdict]) -> String {
    let mut s = String::new();
    let model = match plan.model {
        Model::Closed => format!("closed model, up to {:.0} connections", plan.peak_target()),
        Model::Open => format!(
            "open model, up to {:.0} req/s on at most {} connections{}",
            plan.peak_target(),
            plan.max_connections,
            if plan.http2 { " (streams)" } else { "" }
        ),
    };
    let _ = writeln!(
        s,
        "weir loadtest {:?}: {model}, {}, {} over {}",
        plan.name,
        if plan.http2 { "HTTP/2" } else { "HTTP/1.1" },
        plan.targets
            .first()
            .map_or(String::new(), |t| t.to_string()),
        humantime::format_duration(Duration::from_millis(plan.duration().as_millis() as u64)),
    );
    let _ = writeln!(
        s,
        "  requests   {} sent, {} answered, {} failed{}",
        report.sent,
        report.completed(),
        report.failed(),
        if report.errors.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                report
                    .errors
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let _ = writeln!(
        s,
        "  throughput {:.1} req/s, {:.2} MB/s of bodies, in {:.2} s",
        report.throughput(),
        report.body_bytes as f64 / report.elapsed.as_secs_f64().max(1e-9) / 1e6,
        report.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "  latency    p50 {:.2}  p90 {:.2}  p95 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms{}",
        report.latency_ms(0.50),
        report.latency_ms(0.90),
        report.latency_ms(0.95),
        report.latency_ms(0.99),
        report.latency_ms(0.999),
        report.latency.max() as f64 / 1000.0,
        if plan.model == Model::Open {
            " (from the scheduled start when a request had to wait)"
        } else {
            ""
        }
    );
    if let Some(service) = &report.service_latency {
        let _ = writeln!(
            s,
            "  service    p50 {:.2}  p99 {:.2}  max {:.2} ms (from the actual send; {} waited for a busy connection)",
            service.value_at_quantile(0.5) as f64 / 1000.0,
            service.value_at_quantile(0.99) as f64 / 1000.0,
            service.max() as f64 / 1000.0,
            report.late
        );
    }
    let _ = writeln!(
        s,
        "  status     {}",
        report
            .statuses
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for v in verdicts {
        let _ = writeln!(
            s,
            "  SLO        {:<15} {:>10.2} {} {:<10} {}",
            v.check,
            v.observed,
            if v.check == "min_rps" { "≥" } else { "≤" },
            v.limit,
            if v.ok { "ok" } else { "FAILED" }
        );
    }
    s
}

#[derive(Serialize)]
struct Json<'a> {
    plan: &'a Plan,
    sent: u64,
    answered: u64,
    failed: u64,
    errors: &'a std::collections::BTreeMap<String, u64>,
    statuses: &'a std::collections::BTreeMap<u16, u64>,
    elapsed_s: f64,
    rps: f64,
    body_bytes: u64,
    latency_ms: Percentiles,
    service_latency_ms: Option<Percentiles>,
    /// Answers that took at least 500 ms and at least 1 s (the slow tail, counted).
    at_least_500ms: u64,
    at_least_1s: u64,
    late: u64,
    slo: &'a [Verdict],
    timeline: &'a [Slot],
    /// The latency distribution, HdrHistogram style: (quantile, ms) points.
    distribution: Distribution,
}

/// Percentile distributions as (quantile, ms) points, for the HDR plot.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Distribution {
    /// What `recorded` is, in words.
    pub recorded_label: String,
    /// What the summary reports: in the open model from the scheduled start (corrected for
    /// coordinated omission by construction); in the closed model as measured.
    pub recorded: Vec<(f64, f64)>,
    /// The other view: in the open model from the actual send (uncorrected); in the closed
    /// model corrected by HdrHistogram for an expected interval of the median latency
    /// (each connection meant to send that often).
    pub other: Vec<(f64, f64)>,
    /// What `other` is, in words.
    pub other_label: String,
}

/// Points per distribution at most.
const DISTRIBUTION_POINTS: usize = 400;

fn quantile_points(h: &hdrhistogram::Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<(f64, f64)> = h
        .iter_quantiles(4)
        .map(|v| {
            (
                v.quantile_iterated_to(),
                v.value_iterated_to() as f64 / 1000.0,
            )
        })
        .filter(|(q, _)| *q < 0.999_999)
        .collect();
    points.dedup_by(|a, b| a.0 == b.0);
    let step = points.len().div_ceil(DISTRIBUTION_POINTS).max(1);
    points.into_iter().step_by(step).collect()
}

fn distribution(report: &LoadReport) -> Distribution {
    match &report.service_latency {
        Some(service) => Distribution {
            recorded_label: "corrected: from the scheduled start".into(),
            recorded: quantile_points(&report.latency),
            other: quantile_points(service),
            other_label: "uncorrected: from the actual send".into(),
        },
        None => {
            let median = report.latency.value_at_quantile(0.5).max(1);
            Distribution {
                recorded_label: "measured".into(),
                recorded: quantile_points(&report.latency),
                other: quantile_points(&report.latency.clone_correct(median)),
                other_label: format!(
                    "corrected for coordinated omission (expected interval {:.2} ms, the median)",
                    median as f64 / 1000.0
                ),
            }
        }
    }
}

/// Latency percentiles of a run, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// Recorded values of at least `micros`.
fn count_at_least(h: &hdrhistogram::Histogram<u64>, micros: u64) -> u64 {
    if h.max() < micros {
        return 0;
    }
    h.count_between(micros, h.max())
}

fn percentiles(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
    let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    Percentiles {
        p50: q(0.5),
        p90: q(0.9),
        p95: q(0.95),
        p99: q(0.99),
        p999: q(0.999),
        max: h.max() as f64 / 1000.0,
        mean: h.mean() / 1000.0,
    }
}

pub fn json(plan: &Plan, report: &LoadReport, verdicts: &[Verdict]) -> serde_json::Value {
    serde_json::to_value(Json {
        plan,
        sent: report.sent,
        answered: report.completed(),
        failed: report.failed(),
        errors: &report.errors,
        statuses: &report.statuses,
        elapsed_s: report.elapsed.as_secs_f64(),
        rps: report.throughput(),
        body_bytes: report.body_bytes,
        latency_ms: percentiles(&report.latency),
        service_latency_ms: report.service_latency.as_ref().map(percentiles),
        at_least_500ms: count_at_least(&report.latency, 500_000),
        at_least_1s: count_at_least(&report.latency, 1_000_000),
        late: report.late,
        slo: verdicts,
        timeline: &report.timeline,
        distribution: distribution(report),
    })
    .unwrap_or_default()
}
