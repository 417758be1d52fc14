//! `weir loadtest`: a bounded load generator for HTTP/1.1 (keep-alive) and HTTP/2 (h2c, or
//! h2 over TLS), any method, headers and body,
//! closed or open model, with stages, HDR latency histograms, a timeline, SLO checks and
//! JSON / HTML output. Every run is bounded in time (and optionally in requests).
//!
//! - `plan.rs`: what to run (flags or a scenarios TOML file)
//! - `request.rs`: each request's method, headers and body; TLS for `https://` targets
//! - `engine.rs`: connections, the closed and open loops, recording
//! - `output.rs`: the text summary, SLO verdicts, JSON (with the latency distribution)
//! - `saved.rs`: a run read back from its JSON, and two runs compared
//! - `html.rs`: the HTML page of runs, or of a comparison
//!
//! May import: `chart` only: it is a client, and knows nothing of the proxy.

pub mod cli;
pub mod engine;
pub mod html;
pub mod output;
pub mod plan;
pub mod request;
pub mod saved;

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use http::Uri;
use serde::{Deserialize, Serialize};

pub use engine::execute;
pub use plan::{Model, Plan, Slo, Stage};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Requests cycle through these URIs (all must share scheme `http` and one authority).
    pub targets: Vec<Uri>,
    pub requests: u64,
    pub concurrency: usize,
    /// Hard stop even if not all requests were sent.
    pub deadline: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no target URI given")]
    NoTargets,
    #[error("target {0} has no host:port")]
    NoAuthority(Uri),
    #[error("{0}")]
    Plan(#[from] plan::PlanError),
}

/// One second (or more, on long runs) of the timeline: from `at_s` for `width_s`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Slot {
    pub at_s: f64,
    #[serde(default = "one_second")]
    pub width_s: f64,
    /// Answers (any status) and failures (5xx and transport errors) in the slot.
    pub completed: u64,
    pub errors: u64,
    /// Answers by status code and failures by kind, in the slot.
    #[serde(default)]
    pub statuses: BTreeMap<u16, u64>,
    #[serde(default)]
    pub error_kinds: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The plan's target at this time (connections or requests per second).
    pub target: f64,
}

fn one_second() -> f64 {
    1.0
}

#[derive(Debug)]
pub struct LoadReport {
    pub sent: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Latency in microseconds to the last body byte; in the open model from the
    /// scheduled start (corrected for coordinated omission).
    pub latency: Histogram<u64>,
    /// Open model: from the actual send, for comparison with `latency`.
    pub service_latency: Option<Histogram<u64>>,
    pub elapsed: Duration,
    pub body_bytes: u64,
    pub timeline: Vec<Slot>,
    /// Open model: requests started late because every connection was busy.
    pub late: u64,
}

impl LoadReport {
    pub fn completed(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Transport errors plus 5xx answers.
    pub fn failures(&self) -> u64 {
        self.failed()
            + self
                .statuses
                .iter()
                .filter(|(s, _)| **s >= 500)
                .map(|(_, n)| n)
                .sum::<u64>()
    }

    pub fn throughput(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` (0..=1) in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The demo's and tests' closed-loop run: `concurrency` connections until `requests`
/// are answered or `deadline` passes.
pub async fn run(options: LoadOptions) -> Result<LoadReport, LoadError> {
    let first = options.targets.first().ok_or(LoadError::NoTargets)?;
    if first.authority().is_none() {
        return Err(LoadError::NoAuthority(first.clone()));
    }
    let plan = Plan {
        name: "run".into(),
        targets: options.targets.clone(),
        http2: false,
        model: Model::Closed,
        stages: vec![Stage {
            duration: options.deadline,
            target: options.concurrency.max(1) as f64,
            ramp: false,
        }],
        max_requests: options.requests,
        timeout: options.deadline,
        max_connections: options.concurrency.max(1),
        slo: Slo::default(),
        request: plan::RequestSpec::default(),
        tls: plan::TlsSpec::default(),
    };
    execute(&plan, engine::Progress::Silent).await
}
