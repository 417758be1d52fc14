//! The load test as one self-contained HTML page (inline SVG, no script, no network):
//! per scenario its settings, SLO verdicts and results, then on aligned time axes the
//! throughput, latency percentiles, and answers by status and failures by kind each
//! second, with stage starts marked, and the latency distribution HdrHistogram-style.
//! `--compare` draws two runs on the same axes with a table of deltas.
//!
//! Every series has a legend entry; colours are the Okabe–Ito palette; each time slot is
//! drawn over its whole width, so the last second of a run is there too.

use std::fmt::Write as _;

use plotters::prelude::*;

use super::Slot;
use super::saved::{Delta, SavedRun, duration_s};
use crate::chart::{self, colour, escape};

const WIDTH: u32 = 900;
const HEIGHT: u32 = 290;
/// The percentile axis ends here: 99.999 %.
const NINES: f64 = 5.0;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:940px;margin:2em auto;\
color:#222;padding:0 1em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}\
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;\
text-align:right}th{background:#f4f4f4;text-align:left}td.text{text-align:left}\
.pass{color:#006d4f;font-weight:600}.fail{color:#b34700;font-weight:600}\
.note{color:#555;font-size:.92em}svg{display:block;max-width:100%;height:auto;margin:.4em 0}\
@media print{body{max-width:none}section,svg{break-inside:avoid}}";

/// One line of a chart.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
}

/// The page for one or more runs (scenarios).
pub fn page(runs: &[SavedRun]) -> String {
    let mut page = header("weir loadtest");
    page.push_str("<h1>weir loadtest</h1>");
    for run in runs {
        run_section(&mut page, run);
    }
    page.push_str("</body></html>\n");
    page
}

/// Two runs on the same axes, and what changed.
pub fn compare_page(
    baseline: &SavedRun,
    current: &SavedRun,
    deltas: &[Delta],
    max_regression_percent: f64,
) -> String {
    let mut page = header("weir loadtest comparison");
    let regressed = deltas.iter().filter(|d| d.regressed).count();
    let title = if current.name() == baseline.name() {
        format!(
            "weir loadtest: {}, current run against its baseline",
            current.name()
        )
    } else {
        format!(
            "weir loadtest: {} against {}",
            current.name(),
            baseline.name()
        )
    };
    let _ = write!(
        page,
        "<h1>{}</h1><p class=\"{}\">{}</p>",
        escape(&title),
        if regressed > 0 { "fail" } else { "pass" },
        if regressed > 0 {
            format!("{regressed} measure(s) worse by more than {max_regression_percent} %.")
        } else {
            format!("No measure worse by more than {max_regression_percent} %.")
        }
    );
    page.push_str(
        "<table><tr><th>measure</th><th>baseline</th><th>current</th><th>change</th><th></th></tr>",
    );
    for delta in deltas {
        let change = delta
            .change_percent
            .map_or("–".to_owned(), |c| format!("{c:+.1} %"));
        let better = match delta.change_percent {
            Some(c) if c != 0.0 => (c > 0.0) == delta.higher_is_better,
            _ => false,
        };
        let verdict = if delta.regressed {
            "<span class=\"fail\">regressed</span>"
        } else if better {
            "<span class=\"pass\">better</span>"
        } else {
            ""
        };
        let _ = write!(
            page,
            "<tr><td class=\"text\">{}</td><td>{:.2}</td><td>{:.2}</td><td>{change}</td><td class=\"text\">{verdict}</td></tr>",
            delta.measure, delta.baseline, delta.current
        );
    }
    page.push_str("</table>");
    let runs = [("baseline", baseline), ("current", current)];
    let x_max = runs.iter().map(|(_, r)| time_span(r)).fold(1.0, f64::max);
    page.push_str("<h2>Throughput</h2>");
    let throughput: Vec<Line> = runs
        .iter()
        .map(|(label, run)| Line {
            name: format!("{label}: answered/s"),
            points: per_second(&run.timeline, |s| s.completed as f64),
        })
        .collect();
    page.push_str(&time_chart("requests per second", x_max, &[], &throughput));
    page.push_str("<h2>Latency each second</h2>");
    let mut latency = Vec::new();
    for (label, run) in runs {
        latency.push(Line {
            name: format!("{label}: p50"),
            points: steps(&run.timeline, |s| s.p50_ms),
        });
        latency.push(Line {
            name: format!("{label}: p99"),
            points: steps(&run.timeline, |s| s.p99_ms),
        });
    }
    page.push_str(&time_chart("milliseconds", x_max, &[], &latency));
    page.push_str("<h2>Latency distribution</h2>");
    let distributions: Vec<Line> = runs
        .iter()
        .map(|(label, run)| Line {
            name: format!("{label}: {}", run.distribution.recorded_label),
            points: run.distribution.recorded.clone(),
        })
        .collect();
    page.push_str(&percentile_chart(&distributions));
    for (label, run) in runs {
        let title = format!(
            "{}{}: scenario {}",
            &label[..1].to_uppercase(),
            &label[1..],
            run.name()
        );
        run_section_titled(&mut page, run, &title);
    }
    page.push_str("</body></html>\n");
    page
}

fn header(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{STYLE}</style></head><body>",
        escape(title)
    )
}

fn run_section(page: &mut String, run: &SavedRun) {
    run_section_titled(page, run, &format!("Scenario {}", run.name()));
}

fn run_section_titled(page: &mut String, run: &SavedRun, title: &str) {
    let _ = write!(page, "<section><h2>{}</h2>", escape(title));
    settings_table(page, run);
    results_table(page, run);
    stage_table(page, run);
    slo_table(page, run);
    let x_max = time_span(run);
    let stages = run.stage_starts();
    let open = run.plan["model"] == "open";
    page.push_str("<h3>Throughput and failures</h3>");
    let mut throughput = vec![
        Line {
            name: "answered/s".into(),
            points: per_second(&run.timeline, |s| s.completed as f64),
        },
        Line {
            name: "failed/s (5xx and errors)".into(),
            points: per_second(&run.timeline, |s| s.errors as f64),
        },
    ];
    if open {
        // Drawn first, so that answers meeting it exactly stay visible on top.
        throughput.insert(
            0,
            Line {
                name: "target rate".into(),
                points: steps(&run.timeline, |s| s.target),
            },
        );
    }
    page.push_str(&time_chart(
        "requests per second",
        x_max,
        &stages,
        &throughput,
    ));
    page.push_str("<h3>Latency each second</h3>");
    let latency = [
        ("p50", (|s: &Slot| s.p50_ms) as fn(&Slot) -> f64),
        ("p99", |s: &Slot| s.p99_ms),
        ("max", |s: &Slot| s.max_ms),
    ]
    .into_iter()
    .map(|(name, pick)| Line {
        name: name.into(),
        points: steps(&run.timeline, pick),
    })
    .collect::<Vec<_>>();
    page.push_str(&time_chart("milliseconds", x_max, &stages, &latency));
    page.push_str("<h3>Answers by status, failures by kind</h3>");
    let mut statuses: Vec<u16> = run
        .timeline
        .iter()
        .flat_map(|s| s.statuses.keys().copied())
        .collect();
    statuses.sort_unstable();
    statuses.dedup();
    let mut kinds: Vec<String> = run
        .timeline
        .iter()
        .flat_map(|s| s.error_kinds.keys().cloned())
        .collect();
    kinds.sort();
    kinds.dedup();
    let mut by_kind: Vec<Line> = statuses
        .iter()
        .map(|status| Line {
            name: format!("status {status}"),
            points: per_second(&run.timeline, |s| {
                s.statuses.get(status).copied().unwrap_or(0) as f64
            }),
        })
        .collect();
    by_kind.extend(kinds.iter().map(|kind| Line {
        name: format!("error: {kind}"),
        points: per_second(&run.timeline, |s| {
            s.error_kinds.get(kind).copied().unwrap_or(0) as f64
        }),
    }));
    page.push_str(&time_chart("per second", x_max, &stages, &by_kind));
    page.push_str("<h3>Latency distribution</h3>");
    let distribution = &run.distribution;
    let lines = [
        (&distribution.recorded_label, &distribution.recorded),
        (&distribution.other_label, &distribution.other),
    ]
    .into_iter()
    .filter(|(_, points)| !points.is_empty())
    .map(|(name, points)| Line {
        name: name.clone(),
        points: points.clone(),
    })
    .collect::<Vec<_>>();
    page.push_str(&percentile_chart(&lines));
    page.push_str(
        "<p class=\"note\">Latency at each percentile, on an axis that gives every nine the same \
         room (HdrHistogram's percentile distribution): the tail is where the two views part.</p></section>",
    );
}

fn settings_table(page: &mut String, run: &SavedRun) {
    let plan = &run.plan;
    let targets: Vec<&str> = plan["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
        .collect();
    let open = plan["model"] == "open";
    let stages: Vec<String> = plan["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{}{:.1} s at {} {}",
                if s["ramp"] == true { "ramp over " } else { "" },
                duration_s(&s["duration"]),
                s["target"].as_f64().unwrap_or(0.0),
                if open { "req/s" } else { "connections" }
            )
        })
        .collect();
    let rows = [
        ("target", targets.join(", ")),
        (
            "model",
            if open {
                "open (requests start on schedule, whatever the latency)".to_owned()
            } else {
                "closed (each connection sends when answered)".to_owned()
            },
        ),
        ("stages", stages.join("; ")),
        if open {
            ("connections at most", plan["max_connections"].to_string())
        } else {
            (
                "connections",
                "as many as the stage's target, each sending when answered".to_owned(),
            )
        },
        (
            "protocol",
            if plan["http2"] == true {
                "HTTP/2".to_owned()
            } else {
                "HTTP/1.1".to_owned()
            },
        ),
        (
            "duration",
            format!(
                "{:.1} s planned, {:.2} s run",
                run.planned_s(),
                run.elapsed_s
            ),
        ),
    ];
    page.push_str("<table>");
    for (name, value) in rows {
        let _ = write!(
            page,
            "<tr><th>{name}</th><td class=\"text\">{}</td></tr>",
            escape(&value)
        );
    }
    page.push_str("</table>");
}

fn results_table(page: &mut String, run: &SavedRun) {
    let l = &run.latency_ms;
    let statuses: Vec<String> = run
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .chain(run.errors.iter().map(|(k, n)| format!("{k}: {n}")))
        .collect();
    let _ = write!(
        page,
        "<table><tr><th>sent</th><th>answered</th><th>failed</th><th>req/s</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.2} ms</td><td>{:.2} ms</td><td>{:.2} ms</td><td>{:.2} ms</td><td>{:.2} ms</td></tr></table>\
         <p class=\"note\">Outcomes: {}.{}</p>",
        run.sent,
        run.answered,
        run.failed,
        run.rps,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        escape(&statuses.join(", ")),
        if run.late > 0 {
            format!(
                " {} requests started late: every connection was busy.",
                run.late
            )
        } else {
            String::new()
        }
    );
}

/// Per stage (when there are several): what the seconds inside it saw.
fn stage_table(page: &mut String, run: &SavedRun) {
    let stages: Vec<&serde_json::Value> = run.plan["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if stages.len() < 2 {
        return;
    }
    let open = run.plan["model"] == "open";
    page.push_str(
        "<table><tr><th>stage</th><th>seconds</th><th>target</th><th>answered</th><th>failed</th><th>req/s</th><th>worst second's p99</th></tr>",
    );
    let mut from = 0.0;
    for (i, stage) in stages.iter().enumerate() {
        let length = duration_s(&stage["duration"]);
        let to = from + length;
        // A slot belongs to the stage its start falls in (the last stage takes the rest).
        let inside: Vec<&Slot> = run
            .timeline
            .iter()
            .filter(|s| s.at_s >= from - 1e-9 && (s.at_s < to - 1e-9 || i + 1 == stages.len()))
            .collect();
        let answered: u64 = inside.iter().map(|s| s.completed).sum();
        let failed: u64 = inside.iter().map(|s| s.errors).sum();
        let seconds: f64 = inside.iter().map(|s| s.width_s).sum();
        let worst = inside.iter().map(|s| s.p99_ms).fold(0.0, f64::max);
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{from:.1}–{to:.1}</td><td class=\"text\">{}{} {}</td><td>{answered}</td><td>{failed}</td><td>{:.1}</td><td>{worst:.2} ms</td></tr>",
            i + 1,
            if stage["ramp"] == true {
                "ramp to "
            } else {
                ""
            },
            stage["target"].as_f64().unwrap_or(0.0),
            if open { "req/s" } else { "connections" },
            answered as f64 / seconds.max(1e-9),
        );
        from = to;
    }
    page.push_str("</table>");
}

fn slo_table(page: &mut String, run: &SavedRun) {
    if run.slo.is_empty() {
        page.push_str("<p class=\"note\">No SLO set for this scenario.</p>");
        return;
    }
    page.push_str("<table><tr><th>SLO</th><th>threshold</th><th>measured</th><th>result</th></tr>");
    for verdict in &run.slo {
        let _ = write!(
            page,
            "<tr><td class=\"text\">{}</td><td>{} {}</td><td>{:.3}</td><td class=\"{}\">{}</td></tr>",
            escape(&verdict.check),
            if verdict.check == "min_rps" {
                "≥"
            } else {
                "≤"
            },
            verdict.limit,
            verdict.observed,
            if verdict.ok { "pass" } else { "fail" },
            if verdict.ok { "pass" } else { "FAIL" }
        );
    }
    page.push_str("</table>");
}

/// How long the time axes run: the plan, or longer if answers came after it.
fn time_span(run: &SavedRun) -> f64 {
    let last = run.timeline.last().map_or(0.0, |s| s.at_s + s.width_s);
    run.planned_s().max(last).max(1.0)
}

/// A slot's value drawn over its whole width (two points per slot).
fn steps(timeline: &[Slot], value: impl Fn(&Slot) -> f64) -> Vec<(f64, f64)> {
    timeline
        .iter()
        .flat_map(|s| {
            let v = value(s);
            [(s.at_s, v), (s.at_s + s.width_s, v)]
        })
        .collect()
}

/// A count per slot as a rate per second.
fn per_second(timeline: &[Slot], count: impl Fn(&Slot) -> f64) -> Vec<(f64, f64)> {
    steps(timeline, |s| count(s) / s.width_s.max(1e-9))
}

fn y_top(lines: &[Line]) -> f64 {
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    if top > 0.0 { top * 1.15 } else { 1.0 }
}

/// Lines over time (seconds), with dashed marks where stages start.
fn time_chart(y_label: &str, x_max: f64, stage_starts: &[f64], lines: &[Line]) -> String {
    if lines.iter().all(|l| l.points.is_empty()) {
        return "<p class=\"note\">Nothing to draw.</p>".into();
    }
    let y_max = y_top(lines);
    chart::svg((WIDTH, HEIGHT), |root| {
        chart::plot(
            root,
            (0.0..x_max, 0.0..y_max),
            ("seconds since the start", y_label),
            |chart| {
                for (i, line) in lines.iter().enumerate() {
                    let color = colour(i);
                    if let Ok(series) = chart.draw_series(LineSeries::new(
                        line.points.iter().copied(),
                        color.stroke_width(2),
                    )) {
                        series.label(line.name.clone()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                        });
                    }
                }
                if !stage_starts.is_empty() {
                    let grey = RGBColor(120, 120, 120);
                    let marks = stage_starts.iter().map(|at| {
                        PathElement::new(vec![(*at, 0.0), (*at, y_max)], grey.stroke_width(1))
                    });
                    if let Ok(series) = chart.draw_series(marks) {
                        series.label("stage start").legend(move |(x, y)| {
                            PathElement::new(vec![(x + 9, y - 6), (x + 9, y + 6)], grey)
                        });
                    }
                }
                chart::legend(chart);
            },
        )
    })
}

/// Latency against percentile on HdrHistogram's axis: x = log10(1 / (1 − q)), so 90 %,
/// 99 %, 99.9 % … are evenly spaced.
fn percentile_chart(lines: &[Line]) -> String {
    let to_x = |q: f64| (1.0 / (1.0 - q.min(0.999_999))).log10();
    let plotted: Vec<Line> = lines
        .iter()
        .map(|l| Line {
            name: l.name.clone(),
            points: l.points.iter().map(|(q, ms)| (to_x(*q), *ms)).collect(),
        })
        .collect();
    if plotted.iter().all(|l| l.points.is_empty()) {
        return "<p class=\"note\">No answers: no distribution.</p>".into();
    }
    let x_max = plotted
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        .ceil()
        .min(NINES);
    let y_max = y_top(&plotted);
    let label = |x: &f64| {
        let q = 1.0 - 10f64.powf(-x);
        let percent = q * 100.0;
        if x.fract().abs() > 1e-6 {
            String::new()
        } else if percent < 1.0 {
            "0 %".to_owned()
        } else {
            let decimals = (*x as usize).saturating_sub(2);
            format!("{percent:.decimals$} %")
        }
    };
    chart::svg((WIDTH, HEIGHT), |root| {
        chart::plot_labelled(
            root,
            (0.0..x_max, 0.0..y_max),
            ("percentile", "milliseconds"),
            Some(&label),
            |chart| {
                for (i, line) in plotted.iter().enumerate() {
                    let color = colour(i);
                    if let Ok(series) = chart.draw_series(LineSeries::new(
                        line.points.iter().copied().filter(|p| p.0 <= x_max),
                        color.stroke_width(2),
                    )) {
                        series.label(line.name.clone()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                        });
                    }
                }
                chart::legend(chart);
            },
        )
    })
}
