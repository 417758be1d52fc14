//! Prometheus exposition, built at scrape time from the counters and histograms the data
//! plane keeps in atomics. Recording is an atomic add on the request path, with no label
//! lookup and no lock; this module reads those values when `/metrics` is scraped.
//!
//! May import: the data plane and `control` (for what they publish); never `supervisor`,
//! `admin` or `app`: the caller fills [`Sources`].

use std::sync::atomic::Ordering::Relaxed;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use crate::cache::Cache;
use crate::cache::redis::RedisTier;
use crate::control::{AlertingStats, ScalerStats};
use crate::proxy::ProxyState;
use crate::upstream::EndpointState;
use crate::upstream::signals::LatencyHistogram;

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

/// What the exposition reads; the admin API fills it from the running instance, a test from
/// a bare [`ProxyState`].
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// Connections, requests, and the current snapshot's routes, pools, cache and Redis.
    pub proxy: &'a ProxyState,
    /// Configuration reloads that succeeded.
    pub reloads_ok: u64,
    /// Configuration reloads that were refused.
    pub reloads_failed: u64,
    /// The autoscalers' counters and last decisions, one entry per pool.
    pub scalers: &'a [ScalerStats],
    /// SLO standings, alert rules and notifier counts.
    pub alerting: &'a AlertingStats,
}

/// Everything weir exports, in the Prometheus text format.
pub fn render(sources: Sources<'_>) -> String {
    let families = gather(sources);
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for well-formed families.
    let _ = TextEncoder::new().encode(&families, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

fn gather(sources: Sources<'_>) -> Vec<MetricFamily> {
    let mut f = Families::default();
    let state = sources.proxy;
    let stats = &state.stats;
    f.counter(
        "weir_connections_accepted_total",
        "Client connections accepted.",
        &[],
        stats.connections_accepted.load(Relaxed),
    );
    for (runtime, counter) in stats.connections_by_runtime.iter().enumerate() {
        let accepted = counter.load(Relaxed);
        if accepted > 0 {
            f.counter(
                "weir_runtime_connections_accepted_total",
                "Client connections accepted by each serving runtime ([server] threads).",
                &[("runtime", &runtime.to_string())],
                accepted,
            );
        }
    }
    f.counter(
        "weir_connections_refused_total",
        "Client connections refused at the connection limit.",
        &[],
        stats.connections_refused.load(Relaxed),
    );
    f.counter(
        "weir_proxy_header_refused_total",
        "Connections closed for a missing or malformed PROXY protocol header.",
        &[],
        stats.proxy_header_refused.load(Relaxed),
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
        sources.reloads_ok,
    );
    f.counter(
        "weir_reloads_total",
        "Configuration reloads.",
        &[("result", "failed")],
        sources.reloads_failed,
    );

    let snapshot = state.snapshot.load();
    for route in snapshot.router.routes() {
        let name = route.name.as_ref();
        let pool = route.pool_name(None);
        for (class, counter) in CLASSES.iter().zip(&route.stats.responses) {
            f.counter(
                "weir_route_responses_total",
                "Responses by route and status class.",
                &[("route", name), ("pool", pool), ("class", class)],
                counter.load(Relaxed),
            );
        }
        for (code, counter) in route.stats.grpc.iter().enumerate() {
            let calls = counter.load(Relaxed);
            // Only the statuses a route has seen: 17 mostly-zero series per route is noise.
            if calls > 0 {
                let code = u8::try_from(code).unwrap_or(u8::MAX);
                f.counter(
                    "weir_route_grpc_calls_total",
                    "gRPC calls by route and the status they ended with, weir's own included.",
                    &[
                        ("route", name),
                        ("pool", pool),
                        ("code", crate::proxy::grpc::code_name(code)),
                    ],
                    calls,
                );
            }
        }
        f.histogram(
            "weir_route_duration_seconds",
            "Request start to response head by route, retries included.",
            &[("route", name), ("pool", pool)],
            &route.stats.latency,
        );
        route_rules(&mut f, route);
        if let Some(limiter) = &route.rate_limit {
            f.counter(
                "weir_rate_limited_total",
                "Requests refused with 429 by the route's rate limit.",
                &[("route", name)],
                limiter.rejected.load(Relaxed),
            );
            f.counter(
                "weir_rate_limit_fallbacks_total",
                "Shared-limit checks Redis did not answer, decided by the local bucket.",
                &[("route", name)],
                limiter.fallbacks.load(Relaxed),
            );
        }
    }
    if let Some(tracer) = &snapshot.tracer {
        let stats = &tracer.stats;
        f.counter(
            "weir_trace_spans_exported_total",
            "Spans the OTLP collector accepted.",
            &[],
            stats.exported.load(Relaxed),
        );
        for (reason, counter) in [
            ("queue_full", &stats.dropped_queue_full),
            ("export_failed", &stats.dropped_export_failed),
        ] {
            f.counter(
                "weir_trace_spans_dropped_total",
                "Spans not exported: the queue was full (a slow or absent collector), or the export failed.",
                &[("reason", reason)],
                counter.load(Relaxed),
            );
        }
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
            "Retries sent (hedges included).",
            &[("pool", p)],
            s.retries.load(Relaxed),
        );
        f.counter(
            "weir_pool_retry_budget_exhausted_total",
            "Retries and hedges refused by the retry budget.",
            &[("pool", p)],
            s.retry_budget_exhausted.load(Relaxed),
        );
        f.counter(
            "weir_pool_hedges_total",
            "Hedged attempts sent (also counted in weir_pool_retries_total).",
            &[("pool", p)],
            s.hedges.load(Relaxed),
        );
        f.counter(
            "weir_pool_hedges_won_total",
            "Hedged attempts whose answer the client got.",
            &[("pool", p)],
            s.hedges_won.load(Relaxed),
        );
        f.counter(
            "weir_pool_hung_ejections_total",
            "Endpoints ejected for answering nothing while requests waited.",
            &[("pool", p)],
            s.hung_ejections.load(Relaxed),
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
        for source in pool.discovery() {
            let labels = [("pool", p), ("entry", &*source.label)];
            let ds = &source.stats;
            f.counter(
                "weir_discovery_answers_total",
                "DNS answers applied to the pool, by endpoint entry.",
                &labels,
                ds.answers.load(Relaxed),
            );
            f.counter(
                "weir_discovery_failures_total",
                "DNS resolutions that failed or found no address (the last good set was kept).",
                &labels,
                ds.failures.load(Relaxed),
            );
            f.gauge(
                "weir_discovery_endpoints",
                "Endpoints the entry has in the pool now.",
                &labels,
                ds.endpoints.load(Relaxed) as f64,
            );
        }
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
    if let Some(cache) = &state.snapshot.load().cache {
        cache_metrics(&mut f, cache);
    }
    if let Some(redis) = &state.snapshot.load().redis {
        redis_metrics(&mut f, redis);
    }
    control_metrics(&mut f, sources.scalers);
    alerting_metrics(&mut f, sources.alerting);
    process_metrics(&mut f);
    f.0
}

/// What leaks would show: live runtime tasks, open descriptors, resident memory.
fn process_metrics(f: &mut Families) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        f.gauge(
            "weir_runtime_alive_tasks",
            "Tasks alive in weir's runtime (connections, tunnels, health checks, background work).",
            &[],
            handle.metrics().num_alive_tasks() as f64,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        f.gauge(
            "process_open_fds",
            "Open file descriptors (sockets included).",
            &[],
            fds.count() as f64,
        );
    }
    if let Some(kib) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
    {
        f.gauge(
            "process_resident_memory_bytes",
            "Resident memory.",
            &[],
            kib * 1024.0,
        );
    }
}

/// The shared Redis connection: the cache's L2 and shared rate limits use it.
fn redis_metrics(f: &mut Families, redis: &RedisTier) {
    let r = &redis.stats;
    f.counter(
        "weir_redis_commands_total",
        "Redis commands sent.",
        &[],
        r.commands.load(Relaxed),
    );
    f.counter(
        "weir_redis_errors_total",
        "Redis commands that failed.",
        &[("kind", "error")],
        r.errors.load(Relaxed),
    );
    f.counter(
        "weir_redis_errors_total",
        "Redis commands that failed.",
        &[("kind", "timeout")],
        r.timeouts.load(Relaxed),
    );
    f.counter(
        "weir_redis_skipped_total",
        "Redis commands skipped while the breaker was open.",
        &[],
        r.skipped.load(Relaxed),
    );
    f.gauge(
        "weir_redis_latency_seconds_sum",
        "Total time spent in Redis commands (divide by weir_redis_commands_total).",
        &[],
        r.latency_micros_total.load(Relaxed) as f64 / 1e6,
    );
    f.gauge(
        "weir_redis_up",
        "0 while the Redis breaker is open.",
        &[],
        f64::from(u8::from(!redis.is_open())),
    );
    f.counter(
        "weir_redis_breaker_opened_total",
        "Times the Redis breaker opened.",
        &[],
        r.breaker_opened.load(Relaxed),
    );
}

fn control_metrics(f: &mut Families, scalers: &[ScalerStats]) {
    for ScalerStats { pool, counts, last } in scalers {
        let labels = [("pool", pool.as_str())];
        if let Some(decision) = last {
            f.gauge(
                "weir_autoscale_current_instances",
                "Instances the autoscaler's last decision started from (in a dry run that follows its decisions, the count they would have left).",
                &labels,
                f64::from(decision.current),
            );
            f.gauge(
                "weir_autoscale_desired_instances",
                "Instances the autoscaler's last decision asks for.",
                &labels,
                f64::from(decision.desired),
            );
        }
        f.counter(
            "weir_autoscale_decisions_total",
            "Autoscaler decisions (one per control interval).",
            &labels,
            counts.decisions,
        );
        for (direction, value) in [("up", counts.scale_ups), ("down", counts.scale_downs)] {
            f.counter(
                "weir_autoscale_changes_total",
                "Decisions that changed the desired instance count.",
                &[("pool", pool.as_str()), ("direction", direction)],
                value,
            );
        }
        f.counter(
            "weir_autoscale_action_failures_total",
            "Scaling actions (command or webhook) that failed or timed out.",
            &labels,
            counts.action_failures,
        );
    }
}

fn alerting_metrics(f: &mut Families, alerting: &AlertingStats) {
    for slo in &alerting.slos {
        let labels = [("slo", slo.name.as_str())];
        f.gauge(
            "weir_slo_objective",
            "The SLO's objective (share of good answers).",
            &labels,
            slo.objective,
        );
        f.gauge(
            "weir_slo_error_budget_remaining",
            "Share of the error budget left over the compliance window (below 0: overspent).",
            &labels,
            slo.error_budget_remaining,
        );
        if let Some(sli) = slo.sli {
            f.gauge(
                "weir_slo_sli",
                "Share of good answers over the compliance window.",
                &labels,
                sli,
            );
        }
        for burn in &slo.burn_rates {
            let window = format!("{}s", burn.window_s);
            f.gauge(
                "weir_slo_burn_rate",
                "Error rate over the window divided by the one the objective allows.",
                &[("slo", slo.name.as_str()), ("window", window.as_str())],
                burn.rate,
            );
        }
    }
    for (rule, severity, firing) in &alerting.rules {
        f.gauge(
            "weir_alerts_firing",
            "Alerts of the rule firing now (one per pool it covers; silenced ones count).",
            &[("rule", rule.as_str()), ("severity", severity.as_str())],
            *firing as f64,
        );
    }
    for (notifier, counts) in &alerting.notifiers {
        for (outcome, value) in [
            ("delivered", &counts.delivered),
            ("failed", &counts.failed),
            ("dropped", &counts.dropped),
        ] {
            f.counter(
                "weir_alert_notifications_total",
                "Alert notices by notifier and outcome (failed: after every retry).",
                &[("notifier", notifier.as_str()), ("outcome", outcome)],
                value.load(Relaxed),
            );
        }
    }
}

fn cache_metrics(f: &mut Families, cache: &Cache) {
    let s = &cache.stats;
    let lookups = "weir_cache_requests_total";
    let lookups_help = "Requests on caching routes by outcome and tier.";
    for (outcome, tier, value) in [
        ("hit", "l1", &s.hits_memory),
        ("hit", "l2", &s.hits_redis),
        ("miss", "upstream", &s.misses),
        ("stale", "any", &s.stale),
        ("bypass", "upstream", &s.bypass),
        ("coalesced", "any", &s.coalesced),
    ] {
        f.counter(
            lookups,
            lookups_help,
            &[("outcome", outcome), ("tier", tier)],
            value.load(Relaxed),
        );
    }
    for (outcome, tier, value) in [
        ("hit", "l1", &s.hit_bytes_memory),
        ("hit", "l2", &s.hit_bytes_redis),
        ("stored", "any", &s.stored_bytes),
    ] {
        f.counter(
            "weir_cache_bytes_total",
            "Body bytes served from or written to the cache.",
            &[("outcome", outcome), ("tier", tier)],
            value.load(Relaxed),
        );
    }
    for (name, help, value) in [
        ("weir_cache_stores_total", "Responses stored.", &s.stores),
        (
            "weir_cache_revalidations_total",
            "Stale entries refreshed by the origin.",
            &s.revalidated,
        ),
        (
            "weir_cache_not_modified_total",
            "304s answered to clients' conditional requests.",
            &s.not_modified,
        ),
        (
            "weir_cache_too_large_total",
            "Responses over the object size limit, streamed uncached.",
            &s.too_large,
        ),
        ("weir_cache_purges_total", "Purge operations.", &s.purges),
    ] {
        f.counter(name, help, &[], value.load(Relaxed));
    }
    let memory = cache.memory();
    f.gauge(
        "weir_cache_l1_entries",
        "Entries in the in-memory tier.",
        &[],
        memory.entry_count() as f64,
    );
    f.gauge(
        "weir_cache_l1_bytes",
        "Weighted size of the in-memory tier.",
        &[],
        memory.weighted_size() as f64,
    );
    f.counter(
        "weir_cache_l1_evictions_total",
        "Entries evicted from the in-memory tier for space.",
        &[],
        memory.evictions.load(Relaxed),
    );
    f.gauge(
        "weir_cache_hit_ratio",
        "Hits over lookups since start.",
        &[],
        s.hit_ratio(),
    );
}

/// A route's split sides and mirror.
fn route_rules(f: &mut Families, route: &crate::proxy::route::Route) {
    let name = route.name.as_ref();
    if let crate::proxy::route::Action::Forward(split) = &route.action
        && split.sides().len() > 1
    {
        for side in split.sides() {
            let labels = [("route", name), ("pool", side.pool.name.as_str())];
            f.counter(
                "weir_route_split_requests_total",
                "Requests a split route sent to each of its pools.",
                &labels,
                side.requests.load(Relaxed),
            );
            f.gauge(
                "weir_route_split_weight",
                "The current weight of each side of a split route.",
                &labels,
                f64::from(side.weight()),
            );
        }
    }
    if let Some(mirror) = &route.mirror {
        let pool = mirror.pool.name.as_str();
        let stats = &mirror.stats;
        for (result, counter) in [
            ("sent", &stats.sent),
            ("dropped_busy", &stats.dropped_busy),
            ("skipped_body", &stats.skipped_body),
            ("failed", &stats.failed),
        ] {
            f.counter(
                "weir_route_mirror_requests_total",
                "Copies of a route's requests by what became of them.",
                &[("route", name), ("pool", pool), ("result", result)],
                counter.load(Relaxed),
            );
        }
        for (class, counter) in CLASSES.iter().zip(&stats.responses) {
            f.counter(
                "weir_route_mirror_responses_total",
                "The mirror pool's answers to copies, by status class.",
                &[("route", name), ("pool", pool), ("class", class)],
                counter.load(Relaxed),
            );
        }
        f.histogram(
            "weir_route_mirror_duration_seconds",
            "Copy sent to the mirror pool's response head.",
            &[("route", name), ("pool", pool)],
            &stats.latency,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::autoscaler::ScaleCounts;
    use crate::proxy::Snapshot;

    /// The exposition of a bare state: no listener, admin port or supervisor running.
    #[test]
    fn renders_from_sources_alone() {
        let config = crate::config::load_str(
            r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
[[routes]]
pool = "api"
[pools.api]
endpoints = [{ address = "127.0.0.1:1" }]
"#,
            std::path::Path::new("metrics-test.toml"),
        )
        .unwrap();
        let snapshot = Snapshot::build(&config, &Default::default(), None);
        let proxy = ProxyState::new(snapshot);
        proxy.stats.requests.store(7, Relaxed);
        let scalers = [ScalerStats {
            pool: "api".into(),
            counts: ScaleCounts {
                decisions: 5,
                scale_ups: 2,
                ..ScaleCounts::default()
            },
            last: None,
        }];
        let text = render(Sources {
            proxy: &proxy,
            reloads_ok: 3,
            reloads_failed: 1,
            scalers: &scalers,
            alerting: &AlertingStats::default(),
        });
        for line in [
            "weir_requests_total 7",
            "weir_reloads_total{result=\"ok\"} 3",
            "weir_reloads_total{result=\"failed\"} 1",
            "weir_autoscale_decisions_total{pool=\"api\"} 5",
            "weir_autoscale_changes_total{pool=\"api\",direction=\"up\"} 2",
            "weir_pool_in_flight{pool=\"api\"} 0",
            "weir_endpoint_state{pool=\"api\",endpoint=\"127.0.0.1:1\",state=\"healthy\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
