//! Prometheus exposition, built at scrape time from the counters and histograms the data
//! plane keeps in atomics. Recording is an atomic add on the request path, with no label
//! lookup and no lock; this module reads those values when `/metrics` is scraped.

use std::sync::atomic::Ordering::Relaxed;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use crate::app::Supervisor;
use crate::proxy::stats::LatencyHistogram;
use crate::upstream::EndpointState;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const STATES: [EndpointState; 6] = [
    EndpointState::Healthy,
    EndpointState::SlowStart,
    EndpointState::Degraded,
    EndpointState::Ejected,
    EndpointState::Unhealthy,
    EndpointState::Draining,
];

/// Families by name, kept in first-use order.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut MetricFamily {
        let index = match self.0.iter().position(|f| f.name() == name) {
            Some(index) => index,
            None => {
                let mut family = MetricFamily::default();
                family.set_name(name.to_owned());
                family.set_help(help.to_owned());
                family.set_field_type(kind);
                self.0.push(family);
                self.0.len() - 1
            }
        };
        &mut self.0[index]
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        let mut counter = Counter::default();
        counter.set_value(value as f64);
        let mut metric = metric(labels);
        metric.set_counter(counter);
        self.family(name, help, MetricType::COUNTER)
            .mut_metric()
            .push(metric);
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        let mut metric = metric(labels);
        metric.set_gauge(gauge);
        self.family(name, help, MetricType::GAUGE)
            .mut_metric()
            .push(metric);
    }

    fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], h: &LatencyHistogram) {
        let (buckets, sum, count) = h.snapshot();
        let mut histogram = Histogram::default();
        histogram.set_sample_count(count);
        histogram.set_sample_sum(sum);
        histogram.set_bucket(
            buckets
                .into_iter()
                .map(|(bound, cumulative)| {
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(bound);
                    bucket.set_cumulative_count(cumulative);
                    bucket
                })
                .collect(),
        );
        let mut metric = metric(labels);
        metric.set_histogram(histogram);
        self.family(name, help, MetricType::HISTOGRAM)
            .mut_metric()
            .push(metric);
    }
}

fn metric(labels: &[(&str, &str)]) -> Metric {
    let mut metric = Metric::default();
    metric.set_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect(),
    );
    metric
}

/// Everything weir exports, in the Prometheus text format.
pub fn render(supervisor: &Supervisor) -> String {
    let families = gather(supervisor);
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for well-formed families.
    let _ = TextEncoder::new().encode(&families, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn gather(supervisor: &Supervisor) -> Vec<MetricFamily> {
    let mut f = Families::default();
    let state = supervisor.state();
    let stats = &state.stats;
    f.counter(
        "weir_connections_accepted_total",
        "Client connections accepted.",
        &[],
        stats.connections_accepted.load(Relaxed),
    );
    f.counter(
        "weir_connections_refused_total",
        "Client connections refused at the connection limit.",
        &[],
        stats.connections_refused.load(Relaxed),
    );
    f.gauge(
        "weir_connections_active",
        "Client connections open now.",
        &[],
        stats.connections_active.load(Relaxed) as f64,
    );
    f.counter(
        "weir_requests_total",
        "Requests received.",
        &[],
        stats.requests.load(Relaxed),
    );
    for (class, counter) in CLASSES.iter().zip(&stats.responses) {
        f.counter(
            "weir_responses_total",
            "Responses sent to clients, weir's own included.",
            &[("class", class)],
            counter.load(Relaxed),
        );
    }
    f.counter(
        "weir_reloads_total",
        "Configuration reloads.",
        &[("result", "ok")],
        supervisor.reloads_ok.load(Relaxed),
    );
    f.counter(
        "weir_reloads_total",
        "Configuration reloads.",
        &[("result", "failed")],
        supervisor.reloads_failed.load(Relaxed),
    );

    let snapshot = state.snapshot.load();
    for route in snapshot.router.routes() {
        let name = route.name.as_ref();
        let pool = route.pool.name.as_str();
        for (class, counter) in CLASSES.iter().zip(&route.stats.responses) {
            f.counter(
                "weir_route_responses_total",
                "Responses by route and status class.",
                &[("route", name), ("pool", pool), ("class", class)],
                counter.load(Relaxed),
            );
        }
        f.histogram(
            "weir_route_duration_seconds",
            "Request start to response head by route, retries included.",
            &[("route", name), ("pool", pool)],
            &route.stats.latency,
        );
    }
    for pool in snapshot.pools.values() {
        let p = pool.name.as_str();
        let s = &pool.stats;
        f.gauge(
            "weir_pool_in_flight",
            "Requests in flight to the pool.",
            &[("pool", p)],
            s.in_flight.load(Relaxed) as f64,
        );
        f.counter(
            "weir_pool_retries_total",
            "Retries sent.",
            &[("pool", p)],
            s.retries.load(Relaxed),
        );
        f.counter(
            "weir_pool_retry_budget_exhausted_total",
            "Retries refused by the retry budget.",
            &[("pool", p)],
            s.retry_budget_exhausted.load(Relaxed),
        );
        f.counter(
            "weir_pool_panic_picks_total",
            "Requests sent in panic mode (no healthy endpoint).",
            &[("pool", p)],
            s.panic_picks.load(Relaxed),
        );
        f.counter(
            "weir_pool_capacity_rejections_total",
            "Requests refused by a bulkhead.",
            &[("pool", p)],
            s.capacity_rejections.load(Relaxed),
        );
        let now = pool.now_ms();
        for ep in pool.endpoints().iter() {
            let labels = [("pool", p), ("endpoint", ep.address.as_str())];
            let es = &ep.stats;
            for (class, counter) in CLASSES.iter().zip(&es.responses) {
                f.counter(
                    "weir_upstream_responses_total",
                    "Upstream responses by status class.",
                    &[labels[0], labels[1], ("class", class)],
                    counter.load(Relaxed),
                );
            }
            for (kind, counter) in [
                ("connect", &es.connect_errors),
                ("timeout", &es.timeouts),
                ("protocol", &es.protocol_errors),
            ] {
                f.counter(
                    "weir_upstream_errors_total",
                    "Attempts that got no response.",
                    &[labels[0], labels[1], ("kind", kind)],
                    counter.load(Relaxed),
                );
            }
            f.histogram(
                "weir_upstream_duration_seconds",
                "Time to upstream response head.",
                &labels,
                &es.latency,
            );
            f.gauge(
                "weir_upstream_in_flight",
                "Requests in flight to the endpoint.",
                &labels,
                ep.in_flight() as f64,
            );
            f.counter(
                "weir_endpoint_ejections_total",
                "Passive ejections (breaker opened).",
                &labels,
                es.ejections.load(Relaxed),
            );
            f.gauge(
                "weir_endpoint_latency_ewma_seconds",
                "Peak-EWMA time to response head.",
                &labels,
                ep.latency_ms(now) / 1000.0,
            );
            let current = ep.state(now);
            for candidate in STATES {
                f.gauge(
                    "weir_endpoint_state",
                    "1 for the endpoint's current state.",
                    &[labels[0], labels[1], ("state", candidate.as_str())],
                    f64::from(u8::from(candidate == current)),
                );
            }
        }
    }
    f.0
}
