//! `weir demo`: sample upstreams, weir in front of them, a bounded burst of traffic, and a
//! summary of what happened. Everything runs in-process on free loopback ports and is shut
//! down before it returns.
//!
//! May import: `app`, `config`, `control`, `loadtest`: it runs weir as a user would.

pub mod upstream;

use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::Uri;

use crate::app;
use crate::config;
use crate::loadtest::{self, LoadOptions, LoadReport};
use upstream::SampleUpstream;

pub const DEFAULT_REQUESTS: u64 = 3_000;
pub const DEFAULT_CONCURRENCY: usize = 16;
/// The demo stops sending after this even if requests remain.
const DEMO_DEADLINE: Duration = Duration::from_secs(30);
const DEMO_CONTROL_INTERVAL: Duration = Duration::from_millis(100);
const FAST_DELAY: Duration = Duration::from_millis(2);
const SLOW_DELAY: Duration = Duration::from_millis(25);

#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    pub requests: u64,
    pub concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start a sample upstream: {0}")]
    Upstream(#[source] std::io::Error),
    #[error("demo config is invalid: {0}")]
    Config(#[from] config::ConfigError),
    #[error("cannot start weir: {0}")]
    Start(#[from] app::StartError),
    #[error("load generator: {0}")]
    Load(#[from] loadtest::LoadError),
}

pub struct EndpointLine {
    pub pool: String,
    pub strategy: &'static str,
    pub state: &'static str,
    pub upstream: String,
    pub address: String,
    pub requests: u64,
    pub mean_latency_ms: f64,
}

/// What the demo prints.
pub struct DemoSummary {
    pub proxy_address: String,
    pub admin_address: String,
    pub admin_ready: bool,
    pub load: LoadReport,
    pub endpoints: Vec<EndpointLine>,
    pub cache: Option<CacheLine>,
    pub control: Option<ControlLine>,
    pub drained: bool,
}

/// The control loop's part: the autoscaler's last word on the API pool and the report.
pub struct ControlLine {
    pub samples: usize,
    pub decision: Option<crate::control::autoscaler::Decision>,
    pub report_html: Option<std::path::PathBuf>,
    pub report_json: Option<std::path::PathBuf>,
    pub report_error: Option<String>,
    /// The API route's availability SLO.
    pub slo: Option<crate::control::slo::SloStatus>,
    /// Alerts raised (and resolved) during the run, and how many rules were watched.
    pub alerts: Vec<crate::control::alert::AlertEvent>,
    pub rules: usize,
}

/// The cache's part of the run (the static route caches; the API route does not).
pub struct CacheLine {
    pub hit_ratio: f64,
    pub hits_memory: u64,
    pub hits_redis: u64,
    pub misses: u64,
    pub stores: u64,
    /// `redis://…` when `REDIS_URL` gave the demo a shared tier.
    pub redis: Option<String>,
}

pub async fn run(options: DemoOptions) -> Result<DemoSummary, DemoError> {
    let upstreams = vec![
        SampleUpstream::start("alpha", FAST_DELAY)
            .await
            .map_err(DemoError::Upstream)?,
        SampleUpstream::start("beta", FAST_DELAY)
            .await
            .map_err(DemoError::Upstream)?,
        SampleUpstream::start("gamma-slow", SLOW_DELAY)
            .await
            .map_err(DemoError::Upstream)?,
    ];
    let redis_url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    let config_text = demo_config(&upstreams, redis_url.as_deref());
    let config = config::load_str(&config_text, Path::new("(demo config)"))?;
    let running = app::start(&config).await?;
    let proxy = running
        .listener_addr("http")
        .expect("the demo config names its listener \"http\"");
    let admin = running.admin_addr();

    let targets: Vec<Uri> = [
        "/api/orders/1",
        "/api/orders/2",
        "/api/users/7",
        "/static/logo.svg",
    ]
    .iter()
    .filter_map(|path| format!("http://{proxy}{path}").parse().ok())
    .collect();
    // A short ramp first (1, 2, 4, 8 connections) so the control loop sees the pool at
    // several concurrency levels: the capacity report fits its scalability curve to them.
    let ramp_targets: Vec<Uri> = targets
        .iter()
        .filter(|t| t.path().starts_with("/api"))
        .cloned()
        .collect();
    for concurrency in [1, 2, 4, 8] {
        loadtest::run(LoadOptions {
            targets: ramp_targets.clone(),
            requests: (options.requests / 8).max(50),
            concurrency,
            deadline: DEMO_DEADLINE / 4,
        })
        .await?;
    }
    let load = loadtest::run(LoadOptions {
        targets,
        requests: options.requests,
        concurrency: options.concurrency,
        deadline: DEMO_DEADLINE,
    })
    .await?;
    // One more control interval so the last of the load is sampled and decided on.
    tokio::time::sleep(DEMO_CONTROL_INTERVAL * 2).await;
    let control = control_line(&running);

    let admin_ready = match admin {
        Some(addr) => probe_ready(addr).await,
        None => false,
    };
    let endpoints = endpoint_lines(&running, &upstreams);
    let cache = running.state().snapshot.load().cache.as_ref().map(|cache| {
        let s = &cache.stats;
        CacheLine {
            hit_ratio: s.hit_ratio(),
            hits_memory: s.hits_memory.load(Relaxed),
            hits_redis: s.hits_redis.load(Relaxed),
            misses: s.misses.load(Relaxed),
            stores: s.stores.load(Relaxed),
            redis: redis_url.clone(),
        }
    });
    let report = running.shutdown().await;
    for upstream in upstreams {
        upstream.stop().await;
    }
    Ok(DemoSummary {
        proxy_address: proxy.to_string(),
        admin_address: admin.map_or_else(|| "-".into(), |a| a.to_string()),
        admin_ready,
        load,
        endpoints,
        cache,
        control: Some(control),
        drained: report.completed,
    })
}

fn control_line(running: &app::Running) -> ControlLine {
    let control = running.supervisor().control();
    // The last change says more than the holds after it (a dry run never sees its effect).
    let decisions = control.decisions("api");
    let decision = decisions
        .iter()
        .rev()
        .find(|d| d.direction != crate::control::autoscaler::Direction::Hold)
        .or(decisions.last())
        .cloned();
    let report = control.report();
    let directory = std::env::temp_dir().join(format!("weir-demo-{}", std::process::id()));
    let html = directory.join("capacity-report.html");
    let json = directory.join("capacity-report.json");
    let written = std::fs::create_dir_all(&directory)
        .and_then(|()| std::fs::write(&html, crate::control::html::render(&report)))
        .and_then(|()| {
            let text = serde_json::to_vec_pretty(&report).map_err(std::io::Error::other)?;
            std::fs::write(&json, text)
        });
    let (report_html, report_json, report_error) = match written {
        Ok(()) => (Some(html), Some(json), None),
        Err(err) => (None, None, Some(format!("{}: {err}", directory.display()))),
    };
    ControlLine {
        samples: report.samples,
        decision,
        report_html,
        report_json,
        report_error,
        slo: control.slo_statuses().into_iter().next(),
        alerts: control.alert_events(),
        rules: control.alerts_firing().len(),
    }
}

fn demo_config(upstreams: &[SampleUpstream], redis_url: Option<&str>) -> String {
    let endpoint_list = |list: &[&SampleUpstream]| {
        list.iter()
            .map(|u| format!("{{ address = \"{}\" }}", u.address))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all: Vec<&SampleUpstream> = upstreams.iter().collect();
    let fast: Vec<&SampleUpstream> = upstreams.iter().take(2).collect();
    format!(
        r#"
[server]
drain_timeout = "5s"

[[listeners]]
name = "http"
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"
token = "{token}"

[[routes]]
name = "static"
path_prefix = "/static/"
pool = "static"

[[routes]]
name = "api"
path_prefix = "/api"
pool = "api"
cache = {{ enabled = false }}

[cache]
enabled = true
memory_bytes = 16777216
max_object_bytes = 1048576
{redis}

[pools.api]
strategy = "score"
endpoints = [{all}]
response_timeout = "5s"

[pools.static]
strategy = "round_robin"
endpoints = [{fast}]

# The demo's control loop runs fast (a real one samples every 10 s) and only advises.
[control]
interval = "{interval}ms"
latency_target = "20ms"

[[control.autoscale]]
pool = "api"
min_instances = 2
max_instances = 12
target_in_flight = 2.0
signal_window = "1s"
scale_down_window = "2s"
scale_up_cooldown = "500ms"
scale_down_cooldown = "2s"
dry_run = true

# The API's availability objective, with the SRE workbook's burn-rate alerts.
[[control.slo]]
name = "api-availability"
routes = ["api"]
objective = 0.999
window = "28d"

# Capacity: warn when an API instance is out of service.
[[control.alert]]
name = "api-capacity"
signal = "healthy_endpoints"
pool = "api"
below = 3
severity = "warning"
"#,
        interval = DEMO_CONTROL_INTERVAL.as_millis(),
        token = demo_token(),
        all = endpoint_list(&all),
        fast = endpoint_list(&fast),
        redis = redis_url.map_or_else(String::new, |url| format!("\n[redis]\nurl = {url:?}\n")),
    )
}

/// A throw-away admin token for this run only.
fn demo_token() -> String {
    (0..32)
        .map(|_| char::from(b"0123456789abcdef"[fastrand::usize(..16)]))
        .collect()
}

async fn probe_ready(admin: std::net::SocketAddr) -> bool {
    let probe = async {
        let stream = tokio::net::TcpStream::connect(admin).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let request = http::Request::get("/readyz")
            .header(http::header::HOST, admin.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        Some(response.status().is_success())
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn endpoint_lines(running: &app::Running, upstreams: &[SampleUpstream]) -> Vec<EndpointLine> {
    let snapshot = running.state().snapshot.load();
    let mut lines = Vec::new();
    for pool in snapshot.pools.values() {
        for ep in pool.endpoints().iter() {
            let responses = ep.total_responses();
            let upstream = upstreams
                .iter()
                .find(|u| u.address.to_string() == ep.address)
                .map_or_else(|| "?".to_owned(), |u| u.name.to_string());
            lines.push(EndpointLine {
                pool: pool.name.clone(),
                strategy: pool.strategy(),
                state: ep.state(pool.now_ms()).as_str(),
                upstream,
                address: ep.address.clone(),
                requests: ep.stats.requests.load(Relaxed),
                mean_latency_ms: if responses == 0 {
                    0.0
                } else {
                    ep.stats.latency_micros_total.load(Relaxed) as f64 / responses as f64 / 1000.0
                },
            });
        }
    }
    lines
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let load = &self.load;
        writeln!(f, "weir demo")?;
        writeln!(
            f,
            "  proxy  http://{}   admin http://{} (/readyz: {})",
            self.proxy_address,
            self.admin_address,
            if self.admin_ready {
                "ready"
            } else {
                "NOT ready"
            }
        )?;
        writeln!(
            f,
            "  sent {} requests in {:.2} s ({:.0} req/s), {} completed, {} failed",
            load.sent,
            load.elapsed.as_secs_f64(),
            load.throughput(),
            load.completed(),
            load.failed()
        )?;
        let statuses: Vec<String> = load
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        writeln!(f, "  status  {}", statuses.join(", "))?;
        if !load.errors.is_empty() {
            let errors: Vec<String> = load
                .errors
                .iter()
                .map(|(kind, count)| format!("{kind}: {count}"))
                .collect();
            writeln!(f, "  errors  {}", errors.join(", "))?;
        }
        writeln!(
            f,
            "  latency p50 {:.2} ms   p95 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
            load.latency_ms(0.50),
            load.latency_ms(0.95),
            load.latency_ms(0.99),
            load.latency.max() as f64 / 1000.0
        )?;
        if let Some(cache) = &self.cache {
            writeln!(
                f,
                "  cache   hit ratio {:.1} % on /static/ (L1 hits {}, L2 hits {}, misses {}, stored {}){}",
                cache.hit_ratio * 100.0,
                cache.hits_memory,
                cache.hits_redis,
                cache.misses,
                cache.stores,
                cache.redis.as_deref().map_or_else(
                    || "; memory only (set REDIS_URL for L2)".to_owned(),
                    |u| format!("; L2 {u}")
                )
            )?;
        }
        if let Some(control) = &self.control {
            match &control.decision {
                Some(d) => writeln!(
                    f,
                    "  control autoscaler for api (dry run, {} samples; the pool has {}): {}",
                    control.samples, d.signals.current, d.explanation
                )?,
                None => writeln!(
                    f,
                    "  control no autoscaler decision yet ({} samples)",
                    control.samples
                )?,
            }
            if let Some(slo) = &control.slo {
                let burn = slo
                    .burn_rates
                    .first()
                    .map(|b| {
                        format!(
                            ", burning {:.2}× over {}",
                            b.rate,
                            humantime::format_duration(std::time::Duration::from_secs(b.window_s))
                        )
                    })
                    .unwrap_or_default();
                writeln!(
                    f,
                    "  slo     {} ({} % over {}): {} of {} good, {:.1} % of the error budget left{burn}",
                    slo.name,
                    slo.objective * 100.0,
                    humantime::format_duration(std::time::Duration::from_secs(slo.window_s)),
                    slo.good,
                    slo.total,
                    slo.error_budget_remaining * 100.0,
                )?;
            }
            if control.alerts.is_empty() {
                writeln!(f, "  alerts  none raised ({} rules watched)", control.rules)?;
            }
            for alert in &control.alerts {
                writeln!(
                    f,
                    "  alert   {} {} [{}]: {}",
                    alert.rule, alert.status, alert.severity, alert.detail
                )?;
            }
            match (
                &control.report_html,
                &control.report_json,
                &control.report_error,
            ) {
                (Some(html), Some(json), _) => {
                    writeln!(f, "  report  {} (and {})", html.display(), json.display())?
                }
                (_, _, Some(err)) => writeln!(f, "  report  not written: {err}")?,
                _ => {}
            }
        }
        writeln!(f, "  endpoints:")?;
        for line in &self.endpoints {
            writeln!(
                f,
                "    {:<7} {:<12} {:<11} {:<22} {:>6} requests   mean {:>6.2} ms   {}",
                line.pool,
                line.strategy,
                line.upstream,
                line.address,
                line.requests,
                line.mean_latency_ms,
                line.state
            )?;
        }
        write!(
            f,
            "  shutdown: {}",
            if self.drained {
                "drained cleanly"
            } else {
                "drain deadline passed"
            }
        )
    }
}
