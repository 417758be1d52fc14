//! The capacity report as one self-contained HTML page: inline SVG charts drawn with
//! plotters, tables, and the recommendations. No scripts, no external resources.

use plotters::prelude::*;

use super::report::{CapacityReport, PoolReport};
use crate::chart::{self, escape};

const WIDTH: u32 = 860;
const HEIGHT: u32 = 300;
/// The instances chart under the traffic one.
const SMALL_HEIGHT: u32 = 170;

pub fn render(report: &CapacityReport) -> String {
    let mut page = String::new();
    page.push_str(&format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>weir capacity report</title><style>{STYLE}</style></head><body>\
         <h1>Capacity report</h1><p class=\"meta\">Generated {} from {} samples ({} to {}, every {}). Latency target {:.0} ms.{}</p>",
        escape(&report.generated_at),
        report.samples,
        time_of(report.from_ms),
        time_of(report.to_ms),
        interval_text(report.interval_s),
        report.latency_target_ms,
        report
            .cache_hit_ratio
            .map_or(String::new(), |r| format!(" Cache hit ratio {:.1} %.", r * 100.0)),
    ));
    if report.pools.is_empty() {
        page.push_str("<p>No pool has samples yet.</p>");
    }
    slo_section(&mut page, report);
    for pool in &report.pools {
        pool_section(&mut page, pool);
    }
    page.push_str("</body></html>\n");
    page
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}\
h2{border-bottom:1px solid #ccc;padding-bottom:.2em}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}\
.meta{color:#666}li{margin:.3em 0}svg{display:block;margin:.5em 0}";

fn pool_section(page: &mut String, pool: &PoolReport) {
    let s = &pool.summary;
    page.push_str(&format!(
        "<h2>Pool {}</h2><h3>Recommendations</h3><ul>{}</ul>\
         <table><tr><th>requests</th><th>mean rps</th><th>peak rps</th><th>peak p95</th><th>mean p99</th><th>errors</th><th>peak in flight</th><th>instances</th></tr>\
         <tr><td>{:.0}</td><td>{:.1}</td><td>{:.1}</td><td>{:.0} ms</td><td>{:.0} ms</td><td>{:.2} %</td><td>{:.1}</td><td>{}</td></tr></table>",
        escape(&pool.pool),
        pool.recommendations
            .iter()
            .map(|r| format!("<li>{}</li>", escape(r)))
            .collect::<String>(),
        s.requests,
        s.rps_mean,
        s.rps_peak,
        s.p95_peak_ms,
        s.p99_mean_ms,
        s.error_rate_mean * 100.0,
        s.in_flight_peak,
        s.instances_now
    ));
    let axis = TimeAxis::for_span(span_ms(&pool.series.at_ms));
    let x = axis.offsets(&pool.series.at_ms);
    page.push_str("<h3>Traffic</h3>");
    page.push_str(&line_chart(
        "requests per second",
        axis.unit,
        &x,
        &[("rps", &pool.series.rps, chart::colour(0))],
    ));
    // Instances on their own small chart: on the rps axis a count of 3 is a flat line.
    page.push_str(&sized_line_chart(
        (WIDTH, SMALL_HEIGHT),
        "instances",
        axis.unit,
        &x,
        &[(
            "instances serving",
            &pool.series.instances,
            chart::colour(2),
        )],
    ));
    page.push_str("<h3>Latency</h3>");
    page.push_str(&line_chart(
        "milliseconds",
        axis.unit,
        &x,
        &[
            ("p50", &pool.series.p50_ms, chart::colour(2)),
            ("p95", &pool.series.p95_ms, chart::colour(0)),
            ("p99", &pool.series.p99_ms, chart::colour(3)),
        ],
    ));
    page.push_str("<h3>Forecast</h3>");
    match &pool.forecast {
        Some(f) => {
            page.push_str(&format!(
                "<p>{} — {:.0} % prediction interval, step {}.</p>",
                escape(&f.model),
                f.level * 100.0,
                interval_text(f.step_s)
            ));
            page.push_str(&forecast_chart(&x, &pool.series.rps, f, axis));
        }
        None => page.push_str(&format!(
            "<p>{}</p>",
            escape(pool.forecast_note.as_deref().unwrap_or("no forecast"))
        )),
    }
    page.push_str("<h3>Scalability (Universal Scalability Law)</h3>");
    match &pool.usl {
        Some(u) => {
            page.push_str(&format!(
                "<p>X(N) = λN / (1 + σ(N−1) + κN(N−1)) with λ = {:.1} rps, σ = {:.4}, κ = {:.5} (R² = {:.3}). {}</p>",
                u.lambda,
                u.sigma,
                u.kappa,
                u.r_squared,
                match u.saturation_in_flight {
                    Some(n) => format!(
                        "Throughput per instance peaks at {:.0} rps with {n:.1} requests in flight.",
                        u.peak_rps_per_instance
                    ),
                    None => "No retrograde region: throughput only flattens.".to_owned(),
                }
            ));
            page.push_str(&usl_chart(u));
        }
        None => page.push_str(&format!(
            "<p>{}</p>",
            escape(pool.usl_note.as_deref().unwrap_or("no fit"))
        )),
    }
    if !pool.bottlenecks.is_empty() {
        page.push_str("<h3>Bottlenecks</h3><ul>");
        for b in &pool.bottlenecks {
            page.push_str(&format!("<li>{}</li>", escape(b)));
        }
        page.push_str("</ul>");
    }
    page.push_str("<h3>Anomalies</h3>");
    if pool.anomalies.is_empty() {
        page.push_str("<p>None (robust z-score, median/MAD).</p>");
    } else {
        page.push_str(
            "<table><tr><th>time</th><th>metric</th><th>value</th><th>median</th><th>z</th></tr>",
        );
        for a in &pool.anomalies {
            page.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:+.1}</td></tr>",
                time_of(a.at_ms),
                escape(&a.metric),
                a.value,
                a.median,
                a.z
            ));
        }
        page.push_str("</table>");
    }
}

/// SLOs (standing, burn rates, burn-down chart) and the alert timeline, when configured.
fn slo_section(page: &mut String, report: &CapacityReport) {
    if !report.slos.is_empty() {
        page.push_str("<h2>Service-level objectives</h2><table><tr><th>SLO</th><th>objective</th><th>window</th><th>good / total</th><th>SLI</th><th>budget left</th><th>burn rates</th></tr>");
        for slo in &report.slos {
            let status = &slo.status;
            let objective = match status.latency_bound_ms {
                Some(bound) => format!("{} % within {bound:.0} ms", status.objective * 100.0),
                None => format!("{} % not 5xx", status.objective * 100.0),
            };
            let burns: Vec<String> = status
                .burn_rates
                .iter()
                .map(|burn| {
                    format!(
                        "{:.2}× over {}",
                        burn.rate,
                        humantime::format_duration(std::time::Duration::from_secs(burn.window_s))
                    )
                })
                .collect();
            page.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{:.1} %</td><td>{}</td></tr>",
                escape(&status.name),
                escape(&objective),
                humantime::format_duration(std::time::Duration::from_secs(status.window_s)),
                status.good,
                status.total,
                status.sli.map_or("–".to_owned(), |s| format!("{:.3} %", s * 100.0)),
                status.error_budget_remaining * 100.0,
                escape(&burns.join(", ")),
            ));
        }
        page.push_str("</table>");
        for slo in &report.slos {
            if slo.burn_down.len() < 2 {
                continue;
            }
            let at: Vec<u64> = slo.burn_down.iter().map(|(at, _)| *at).collect();
            let axis = TimeAxis::for_span(span_ms(&at));
            let x = axis.offsets(&at);
            let remaining: Vec<f64> = slo.burn_down.iter().map(|(_, r)| r * 100.0).collect();
            page.push_str(&format!(
                "<h3>Error budget of {}</h3>",
                escape(&slo.status.name)
            ));
            page.push_str(&line_chart(
                "budget left (%)",
                axis.unit,
                &x,
                &[("budget left", &remaining, chart::colour(0))],
            ));
        }
    }
    if !report.alerts.is_empty() {
        page.push_str("<h2>Alerts</h2><table><tr><th>time</th><th>rule</th><th>pool</th><th>severity</th><th>status</th><th>detail</th></tr>");
        for alert in &report.alerts {
            page.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td style=\"text-align:left\">{}</td></tr>",
                time_of(alert.at_ms),
                escape(&alert.rule),
                escape(&alert.scope),
                escape(&alert.severity),
                escape(&alert.status),
                if alert.silenced { " (silenced)" } else { "" },
                escape(&alert.detail),
            ));
        }
        page.push_str("</table>");
    }
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !low.is_finite() {
        return (0.0, 1.0);
    }
    let high = if high > low { high } else { low + 1.0 };
    (low.min(0.0), high * 1.1)
}

fn line_chart(
    y_label: &str,
    x_label: &str,
    x: &[f64],
    lines: &[(&str, &Vec<f64>, RGBColor)],
) -> String {
    sized_line_chart((WIDTH, HEIGHT), y_label, x_label, x, lines)
}

fn sized_line_chart(
    size: (u32, u32),
    y_label: &str,
    x_label: &str,
    x: &[f64],
    lines: &[(&str, &Vec<f64>, RGBColor)],
) -> String {
    let (x0, x1) = bounds(x.iter().copied());
    let (y0, y1) = bounds(lines.iter().flat_map(|l| l.1.iter().copied()));
    chart::svg(size, |root| {
        chart::plot(
            root,
            (x0.max(0.0)..x1 / 1.1, y0..y1),
            (x_label, y_label),
            |chart| {
                for (name, values, color) in lines {
                    let color = *color;
                    if let Ok(series) = chart.draw_series(LineSeries::new(
                        x.iter().copied().zip(values.iter().copied()),
                        color.stroke_width(2),
                    )) {
                        series.label(*name).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 16, y)], color)
                        });
                    }
                }
                chart::legend(chart);
            },
        )
    })
}

fn forecast_chart(
    x: &[f64],
    history: &[f64],
    f: &super::report::ForecastReport,
    axis: TimeAxis,
) -> String {
    let start_ms = f
        .at_ms
        .first()
        .map_or(0, |first| first.saturating_sub((f.step_s * 1000.0) as u64));
    let last_x = x.last().copied().unwrap_or(0.0);
    let fx: Vec<f64> = f
        .at_ms
        .iter()
        .map(|t| last_x + (t - start_ms) as f64 / axis.ms_per_unit)
        .collect();
    let (x0, x1) = bounds(x.iter().chain(fx.iter()).copied());
    let (y0, y1) = bounds(history.iter().chain(f.upper.iter()).copied());
    let ranges = (x0.max(0.0)..x1 / 1.1, y0..y1);
    chart::svg((WIDTH, HEIGHT), |root| {
        chart::plot(root, ranges, (axis.unit, "requests per second"), |chart| {
            let band: Vec<(f64, f64)> = fx
                .iter()
                .copied()
                .zip(f.upper.iter().copied())
                .chain(fx.iter().copied().zip(f.lower.iter().copied()).rev())
                .collect();
            let (history_colour, forecast_colour) = (chart::colour(6), chart::colour(0));
            if let Ok(series) = chart.draw_series(std::iter::once(Polygon::new(
                band,
                forecast_colour.mix(0.2),
            ))) {
                series
                    .label(format!("{:.0} % interval", f.level * 100.0))
                    .legend(move |(x, y)| {
                        Rectangle::new(
                            [(x, y - 5), (x + 18, y + 5)],
                            forecast_colour.mix(0.2).filled(),
                        )
                    });
            }
            if let Ok(series) = chart.draw_series(LineSeries::new(
                x.iter().copied().zip(history.iter().copied()),
                history_colour.stroke_width(1),
            )) {
                series.label("observed").legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], history_colour)
                });
            }
            if let Ok(series) = chart.draw_series(LineSeries::new(
                fx.iter().copied().zip(f.point.iter().copied()),
                forecast_colour.stroke_width(2),
            )) {
                series.label("forecast").legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], forecast_colour.stroke_width(2))
                });
            }
            chart::legend(chart);
        })
    })
}

fn usl_chart(u: &super::report::UslReport) -> String {
    let n_max = u
        .points
        .iter()
        .map(|p| p.0)
        .fold(u.saturation_in_flight.unwrap_or(1.0) * 1.5, f64::max)
        .max(2.0);
    let law = super::usl::Usl {
        lambda: u.lambda,
        sigma: u.sigma,
        kappa: u.kappa,
        r_squared: u.r_squared,
    };
    let curve: Vec<(f64, f64)> = (0..=200)
        .map(|i| {
            let n = n_max * i as f64 / 200.0;
            (n, if n > 0.0 { law.throughput(n) } else { 0.0 })
        })
        .collect();
    let (_, y1) = bounds(
        curve
            .iter()
            .map(|p| p.1)
            .chain(u.points.iter().map(|p| p.1)),
    );
    let axes = ("in flight per instance", "rps per instance");
    chart::svg((WIDTH, HEIGHT), |root| {
        chart::plot(root, (0.0..n_max, 0.0..y1), axes, |chart| {
            let (observed, fit, knee) = (chart::colour(0), chart::colour(3), chart::colour(6));
            if let Ok(series) = chart.draw_series(
                u.points
                    .iter()
                    .map(|p| Circle::new(*p, 3, observed.mix(0.5).filled())),
            ) {
                series
                    .label("observed")
                    .legend(move |(x, y)| Circle::new((x + 9, y), 3, observed.filled()));
            }
            if let Ok(series) = chart.draw_series(LineSeries::new(curve, fit.stroke_width(2))) {
                series.label("USL fit").legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], fit.stroke_width(2))
                });
            }
            if let Some(n) = u.saturation_in_flight
                && let Ok(series) = chart.draw_series(LineSeries::new(
                    vec![(n, 0.0), (n, y1)],
                    knee.stroke_width(1),
                ))
            {
                series.label("saturation").legend(move |(x, y)| {
                    PathElement::new(vec![(x + 9, y - 6), (x + 9, y + 6)], knee)
                });
            }
            chart::legend(chart);
        })
    })
}

/// How a history's length is best read on a time axis.
#[derive(Debug, Clone, Copy)]
struct TimeAxis {
    unit: &'static str,
    ms_per_unit: f64,
}

impl TimeAxis {
    /// Seconds up to two minutes, minutes up to two hours, then hours.
    fn for_span(span_ms: u64) -> Self {
        match span_ms {
            0..=120_000 => Self {
                unit: "seconds",
                ms_per_unit: 1000.0,
            },
            120_001..=7_200_000 => Self {
                unit: "minutes",
                ms_per_unit: 60_000.0,
            },
            _ => Self {
                unit: "hours",
                ms_per_unit: 3_600_000.0,
            },
        }
    }

    /// Each time since the first, in this axis' unit.
    fn offsets(&self, at_ms: &[u64]) -> Vec<f64> {
        let start = at_ms.first().copied().unwrap_or(0);
        at_ms
            .iter()
            .map(|t| t.saturating_sub(start) as f64 / self.ms_per_unit)
            .collect()
    }
}

fn span_ms(at_ms: &[u64]) -> u64 {
    match (at_ms.first(), at_ms.last()) {
        (Some(first), Some(last)) => last.saturating_sub(*first),
        _ => 0,
    }
}

/// The sampling interval as people write it: `100 ms`, `10 s`.
fn interval_text(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.0} s")
    }
}

fn time_of(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chart_has_its_legend_and_axis_labels() {
        use super::super::sample::{PoolSample, Sample};
        // Ten minutes at 10 s, load rising and falling, three then four instances.
        let samples: Vec<Sample> = (0..60u64)
            .map(|i| {
                let rps = 100.0 + 50.0 * ((i as f64) / 6.0).sin().abs() * (i % 7) as f64;
                Sample {
                    at_ms: 1_795_392_000_000 + i * 10_000,
                    interval_s: 10.0,
                    pools: vec![PoolSample {
                        pool: "api".into(),
                        instances: if i < 30 { 3 } else { 4 },
                        healthy: 3,
                        requests: (rps * 10.0) as u64,
                        rps,
                        in_flight: rps * 0.02,
                        mean_ms: 20.0,
                        p50_ms: 15.0,
                        p95_ms: 40.0,
                        p99_ms: 60.0,
                        ..PoolSample::default()
                    }],
                    ..Sample::default()
                }
            })
            .collect();
        let report = super::super::report::build(
            &samples,
            &Default::default(),
            &crate::config::ControlConfig::default(),
            1_795_392_600_000,
        );
        let page = render(&report);
        assert!(page.contains(", every 10 s)"));
        let charts: Vec<&str> = page.split("<svg").skip(1).collect();
        assert!(charts.len() >= 3, "{} charts", charts.len());
        let expected: [&[&str]; 3] = [
            &["rps", "minutes", "requests per second"],
            &["instances serving", "minutes", "instances"],
            &["p50", "p95", "p99", "minutes", "milliseconds"],
        ];
        for (chart, names) in charts.iter().zip(expected) {
            let found = chart::texts(chart);
            for name in names {
                assert!(found.iter().any(|t| t == name), "{name:?} not in {found:?}");
            }
        }
        // The forecast and the USL fit, when drawn, say what each mark is.
        for chart in &charts[3..] {
            let found = chart::texts(chart);
            assert!(found.iter().any(|t| t == "observed"), "{found:?}");
        }
    }

    #[test]
    fn time_axes_and_intervals_read_naturally() {
        assert_eq!(interval_text(0.1), "100 ms");
        assert_eq!(interval_text(10.0), "10 s");
        assert_eq!(TimeAxis::for_span(90_000).unit, "seconds");
        assert_eq!(TimeAxis::for_span(3_600_000).unit, "minutes");
        assert_eq!(TimeAxis::for_span(86_400_000).unit, "hours");
        let axis = TimeAxis::for_span(30_000);
        assert_eq!(axis.offsets(&[5_000, 6_000, 35_000]), vec![0.0, 1.0, 30.0]);
    }
}
