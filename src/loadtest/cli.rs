//! `weir loadtest` from the command line: flags (or a scenarios file) to plans, runs on
//! the chosen number of threads, prints, and tells whether every SLO held.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use super::engine::Progress;
use super::html;
use super::output::{self, Verdict};
use super::plan::{self, Model, Plan, RequestSpec, Slo, Stage, TlsSpec};
use super::saved::{self, SavedRun};
use super::{LoadError, LoadReport};

#[derive(Debug, clap::Args)]
pub struct LoadtestArgs {
    /// Target URLs, `http://host:port/path` (requests cycle through them; one host:port).
    pub urls: Vec<String>,
    /// Closed model: connections, each sending as fast as it is answered.
    #[arg(short = 'c', long)]
    pub connections: Option<usize>,
    /// Open model: requests per second, started on schedule whatever the latency.
    #[arg(short = 'r', long)]
    pub rate: Option<f64>,
    /// How long to run (bounded to 24 h).
    #[arg(short = 'd', long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Stop after this many requests, even before the duration.
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Stages instead of one constant level: `10s:50,~30s:500,10s:0` (`~` ramps).
    #[arg(long)]
    pub stages: Option<String>,
    /// HTTP/2 instead of HTTP/1.1: prior knowledge (h2c) on http://, ALPN h2 on https://.
    #[arg(long)]
    pub http2: bool,
    /// Request method.
    #[arg(short = 'm', long, default_value = "GET")]
    pub method: String,
    /// A request header, `"Name: value"` (repeatable); `Host` replaces the target's.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Request body.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Request body, read from this file.
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// https:// targets: trust the CA certificates of this PEM file instead of the public roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// https:// targets: accept any certificate (self-signed test services).
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// A request not answered in this time counts as a timeout.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Open model: connections (or HTTP/2 streams) in use at most.
    #[arg(long, default_value_t = plan::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Run the scenarios of this TOML file (see docs/loadtest.md) instead.
    #[arg(long)]
    pub scenarios: Option<PathBuf>,
    /// Only these scenarios of the file (by name; repeatable).
    #[arg(long = "scenario")]
    pub only: Vec<String>,
    /// Print JSON instead of the text summary.
    #[arg(long)]
    pub json: bool,
    /// Also write an HTML page: settings, SLOs, throughput, latency and failures over
    /// time, the latency distribution (with --compare or --baseline: both runs and deltas).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Compare two saved runs (`--json` output), baseline first; runs nothing. Exits 3
    /// when a measure regressed past --max-regression.
    #[arg(long, num_args = 2, value_names = ["BASELINE", "CURRENT"], conflicts_with_all = ["scenarios", "baseline"])]
    pub compare: Vec<PathBuf>,
    /// Compare this run against a saved one (`--json` output of an earlier run).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// With --compare or --baseline: the worsening (percent of the baseline's value) that
    /// counts as a regression, for throughput, p50/p90/p99/p99.9 and the error rate.
    #[arg(long, default_value_t = 10.0)]
    pub max_regression: f64,
    /// Runtime threads for the generator (1 leaves the other cores to the server).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// SLO: p50 latency must stay at or under this many milliseconds.
    #[arg(long)]
    pub p50: Option<f64>,
    /// SLO: p95 latency must stay at or under this many milliseconds.
    #[arg(long)]
    pub p95: Option<f64>,
    /// SLO: p99 latency must stay at or under this many milliseconds.
    #[arg(long)]
    pub p99: Option<f64>,
    /// SLO: failed requests (errors and 5xx) over sent, at most.
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// SLO: answered requests per second, at least.
    #[arg(long)]
    pub min_rps: Option<f64>,
}

/// Runs what the flags ask; `Ok(true)` when every SLO held and nothing regressed.
pub fn run(args: LoadtestArgs) -> Result<bool, LoadError> {
    if !args.compare.is_empty() {
        return compare_saved(&args);
    }
    let plans = plans(&args)?;
    let baseline = args.baseline.as_deref().map(read_first).transpose()?;
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| LoadError::Plan(plan::PlanError::Invalid(format!("runtime: {e}"))))?;
    let mut runs: Vec<(Plan, LoadReport, Vec<Verdict>)> = Vec::new();
    for plan in plans {
        let report = runtime.block_on(super::execute(&plan, Progress::Show))?;
        let verdicts = output::verdicts(&plan, &report);
        if !args.json {
            println!("{}", output::summary(&plan, &report, &verdicts));
        }
        runs.push((plan, report, verdicts));
    }
    let all: Vec<serde_json::Value> = runs.iter().map(|(p, r, v)| output::json(p, r, v)).collect();
    if args.json {
        let value = if all.len() == 1 {
            all[0].clone()
        } else {
            serde_json::Value::Array(all.clone())
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    }
    let saved = all
        .into_iter()
        .map(SavedRun::from_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::Plan(plan::PlanError::Invalid(format!("run JSON: {e}"))))?;
    let slos_held = runs.iter().all(|(_, _, v)| v.iter().all(|v| v.ok));
    let Some(baseline) = baseline else {
        if let Some(path) = &args.html {
            write_page(path, &html::page(&saved))?;
        }
        return Ok(slos_held);
    };
    let Some(current) = saved.first() else {
        return Ok(slos_held);
    };
    let regressed = report_comparison(&args, &baseline, current)?;
    Ok(slos_held && !regressed)
}

/// `--compare BASELINE CURRENT`: nothing runs.
fn compare_saved(args: &LoadtestArgs) -> Result<bool, LoadError> {
    let [baseline, current] = args.compare.as_slice() else {
        return Err(LoadError::Plan(plan::PlanError::Invalid(
            "--compare takes two files: BASELINE CURRENT".into(),
        )));
    };
    let baseline = read_first(baseline)?;
    let current = read_first(current)?;
    let regressed = report_comparison(args, &baseline, &current)?;
    Ok(!regressed)
}

/// Prints the deltas (and writes the page); `true` when something regressed.
fn report_comparison(
    args: &LoadtestArgs,
    baseline: &SavedRun,
    current: &SavedRun,
) -> Result<bool, LoadError> {
    let deltas = saved::compare(baseline, current, args.max_regression);
    println!(
        "{:<20} {:>12} {:>12} {:>9}",
        "measure", "baseline", "current", "change"
    );
    for delta in &deltas {
        println!(
            "{:<20} {:>12.2} {:>12.2} {:>9} {}",
            delta.measure,
            delta.baseline,
            delta.current,
            delta
                .change_percent
                .map_or("–".to_owned(), |c| format!("{c:+.1} %")),
            if delta.regressed { "REGRESSED" } else { "" }
        );
    }
    if let Some(path) = &args.html {
        write_page(
            path,
            &html::compare_page(baseline, current, &deltas, args.max_regression),
        )?;
    }
    Ok(deltas.iter().any(|d| d.regressed))
}

fn read_first(path: &std::path::Path) -> Result<SavedRun, LoadError> {
    let invalid = |reason: String| {
        LoadError::Plan(plan::PlanError::File {
            path: path.display().to_string(),
            reason,
        })
    };
    SavedRun::read(path)
        .map_err(|e| invalid(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| invalid("holds no run".into()))
}

fn write_page(path: &std::path::Path, page: &str) -> Result<(), LoadError> {
    std::fs::write(path, page).map_err(|e| {
        LoadError::Plan(plan::PlanError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    })?;
    eprintln!("page written to {}", path.display());
    Ok(())
}

fn plans(args: &LoadtestArgs) -> Result<Vec<Plan>, LoadError> {
    let invalid = |m: String| LoadError::Plan(plan::PlanError::Invalid(m));
    let urls = args
        .urls
        .iter()
        .map(|u| u.parse::<Uri>().map_err(|e| invalid(format!("{u:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &args.scenarios {
        if args.method != "GET"
            || !args.headers.is_empty()
            || args.body.is_some()
            || args.body_file.is_some()
        {
            return Err(invalid(
                "--method, --header and --body go in the scenarios file with --scenarios".into(),
            ));
        }
        let mut plans = plan::load_scenarios(path, &urls)?;
        for plan in &mut plans {
            plan.tls.insecure |= args.insecure;
            if args.ca_file.is_some() {
                plan.tls.ca_file.clone_from(&args.ca_file);
            }
        }
        if !args.only.is_empty() {
            plans.retain(|p| args.only.contains(&p.name));
            if plans.is_empty() {
                return Err(invalid(format!(
                    "no scenario named {:?} in {}",
                    args.only,
                    path.display()
                )));
            }
        }
        return Ok(plans);
    }
    if args.connections.is_some() && args.rate.is_some() {
        return Err(invalid(
            "--connections (closed model) and --rate (open model) exclude each other".into(),
        ));
    }
    let model = if args.rate.is_some() {
        Model::Open
    } else {
        Model::Closed
    };
    let stages = match &args.stages {
        Some(text) => plan::parse_stages(text)?,
        None => vec![Stage {
            duration: args.duration,
            target: match model {
                Model::Open => args.rate.unwrap_or_default(),
                Model::Closed => args.connections.unwrap_or(plan::DEFAULT_CONNECTIONS) as f64,
            },
            ramp: false,
        }],
    };
    let plan = Plan {
        request: request_spec(args)?,
        tls: TlsSpec {
            ca_file: args.ca_file.clone(),
            insecure: args.insecure,
        },
        name: "command line".into(),
        targets: urls,
        http2: args.http2,
        model,
        stages,
        max_requests: args.requests.unwrap_or(u64::MAX),
        timeout: args.timeout,
        max_connections: args.max_connections,
        slo: Slo {
            p50_ms: args.p50,
            p95_ms: args.p95,
            p99_ms: args.p99,
            max_error_rate: args.max_error_rate,
            min_rps: args.min_rps,
            ..Slo::default()
        },
    };
    plan.validate()?;
    Ok(vec![plan])
}

/// The request the flags describe.
fn request_spec(args: &LoadtestArgs) -> Result<RequestSpec, LoadError> {
    let mut spec = RequestSpec {
        method: RequestSpec::parse_method(&args.method)?,
        ..RequestSpec::default()
    };
    for header in &args.headers {
        let (name, value) = RequestSpec::parse_header(header)?;
        spec.headers.append(name, value);
    }
    if let Some(body) = &args.body {
        spec.body = bytes::Bytes::from(body.clone());
    } else if let Some(path) = &args.body_file {
        spec.body = std::fs::read(path)
            .map_err(|e| {
                LoadError::Plan(plan::PlanError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            })?
            .into();
    }
    Ok(spec)
}
