//! What a load test does: targets, the load model (closed: N connections as fast as they
//! go; open: a set arrival rate), stages, bounds and SLO thresholds — from flags or from a
//! scenarios TOML file.

use std::path::Path;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

pub use super::request::{RequestSpec, TlsSpec};

/// No run, stage or scenario goes on longer than this.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECTIONS: usize = 16;
/// Connections an open-model run may open to keep its rate.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Each connection sends its next request when the previous answer is in.
    Closed,
    /// Requests start on a schedule, whether or not earlier ones have finished; latency
    /// counts from the scheduled start (no coordinated omission).
    Open,
}

/// Holds `target` (connections, or requests per second) for `duration`; with `ramp`,
/// moves linearly there from the previous stage's target instead of stepping.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stage {
    pub duration: Duration,
    pub target: f64,
    pub ramp: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// Failed requests (transport errors and 5xx) over all sent.
    pub max_error_rate: Option<f64>,
    pub min_rps: Option<f64>,
}

impl Slo {
    pub fn is_empty(&self) -> bool {
        *self == Slo::default()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    #[serde(serialize_with = "uris")]
    pub targets: Vec<Uri>,
    pub http2: bool,
    pub model: Model,
    pub stages: Vec<Stage>,
    pub max_requests: u64,
    pub timeout: Duration,
    /// Open model: connections (HTTP/1.1) or streams (HTTP/2) in use at most.
    pub max_connections: usize,
    pub slo: Slo,
    /// Method, headers and body of every request.
    pub request: RequestSpec,
    /// How `https://` targets are trusted.
    pub tls: TlsSpec,
}

fn uris<S: serde::Serializer>(uris: &[Uri], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(uris.iter().map(|u| u.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

impl Plan {
    pub fn duration(&self) -> Duration {
        self.stages.iter().map(|s| s.duration).sum()
    }

    /// Connections (closed) or rate (open) wanted `elapsed` into the run.
    pub fn target_at(&self, elapsed: Duration) -> f64 {
        let mut start = Duration::ZERO;
        let mut previous = self
            .stages
            .first()
            .map_or(0.0, |s| if s.ramp { 0.0 } else { s.target });
        for stage in &self.stages {
            let end = start + stage.duration;
            if elapsed < end {
                if !stage.ramp || stage.duration.is_zero() {
                    return stage.target;
                }
                let into = (elapsed - start).as_secs_f64() / stage.duration.as_secs_f64();
                return previous + (stage.target - previous) * into;
            }
            previous = stage.target;
            start = end;
        }
        previous
    }

    /// Highest connection count any stage asks for (closed model).
    pub fn peak_target(&self) -> f64 {
        self.stages.iter().map(|s| s.target).fold(0.0, f64::max)
    }

    pub fn validate(&self) -> Result<(), PlanError> {
        let bad = |m: String| Err(PlanError::Invalid(m));
        if self.targets.is_empty() {
            return bad("no target URL".into());
        }
        for target in &self.targets {
            if !matches!(target.scheme_str(), Some("http" | "https"))
                || target.authority().is_none()
            {
                return bad(format!(
                    "{target}: targets are http://host[:port]/… or https://host[:port]/…"
                ));
            }
        }
        let first = &self.targets[0];
        if self
            .targets
            .iter()
            .any(|t| t.scheme_str() != first.scheme_str() || t.authority() != first.authority())
        {
            return bad("all targets share one scheme and host:port (paths may differ)".into());
        }
        if self.stages.is_empty() {
            return bad("no stage".into());
        }
        if self.duration() > MAX_DURATION {
            return bad(format!(
                "{} is longer than the {} limit",
                humantime::format_duration(self.duration()),
                humantime::format_duration(MAX_DURATION)
            ));
        }
        for stage in &self.stages {
            if !(stage.target.is_finite() && stage.target >= 0.0) {
                return bad(format!("stage target {} is not a count", stage.target));
            }
        }
        if self.model == Model::Closed && self.peak_target() < 1.0 {
            return bad("a closed-model run needs at least 1 connection".into());
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1".into());
        }
        Ok(())
    }
}

/// `--stages "10s:50,30s:200,10s:0"`: duration:target pairs; a leading `~` ramps
/// (`~30s:500` climbs linearly to 500 over 30 s).
pub fn parse_stages(text: &str) -> Result<Vec<Stage>, PlanError> {
    text.split(',')
        .map(|part| {
            let part = part.trim();
            let (ramp, part) = match part.strip_prefix('~') {
                Some(rest) => (true, rest),
                None => (false, part),
            };
            let (duration, target) = part.split_once(':').ok_or_else(|| {
                PlanError::Invalid(format!(
                    "stage {part:?} is not duration:target (e.g. 30s:200)"
                ))
            })?;
            Ok(Stage {
                duration: humantime::parse_duration(duration)
                    .map_err(|e| PlanError::Invalid(format!("stage {part:?}: {e}")))?,
                target: target.parse().map_err(|_| {
                    PlanError::Invalid(format!("stage {part:?}: {target:?} is not a number"))
                })?,
                ramp,
            })
        })
        .collect()
}

/// A scenarios file: shared settings and one `[[scenario]]` per run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    http2: bool,
    #[serde(with = "humantime_serde", default = "d_timeout")]
    timeout: Duration,
    #[serde(default = "d_max_connections")]
    max_connections: usize,
    /// Default method, headers and body of every scenario's requests.
    method: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    body: Option<String>,
    /// `https://` targets: trust this PEM CA file instead of the public roots.
    ca_file: Option<std::path::PathBuf>,
    /// `https://` targets: accept any certificate.
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    scenario: Vec<ScenarioConfig>,
}

/// Method, headers and body, as the file or a scenario sets them.
struct RequestConfig<'a> {
    method: Option<&'a String>,
    headers: &'a std::collections::BTreeMap<String, String>,
    body: Option<&'a String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioConfig {
    name: String,
    model: Model,
    stages: Vec<StageConfig>,
    #[serde(default)]
    targets: Vec<String>,
    max_requests: Option<u64>,
    #[serde(default)]
    slo: Slo,
    /// This scenario's method, headers (merged over the file's) and body.
    method: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageConfig {
    #[serde(with = "humantime_serde")]
    duration: Duration,
    connections: Option<f64>,
    rate: Option<f64>,
    #[serde(default)]
    ramp: bool,
}

fn d_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn d_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

/// Reads the scenarios of `path`; `extra_targets` (from the command line) replace the
/// file's when given.
pub fn load_scenarios(path: &Path, extra_targets: &[Uri]) -> Result<Vec<Plan>, PlanError> {
    let file_error = |reason: String| PlanError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let file: ScenarioFile = toml::from_str(&text).map_err(|e| file_error(e.to_string()))?;
    if file.scenario.is_empty() {
        return Err(file_error("no [[scenario]] table".into()));
    }
    let parse = |list: &[String], key: &str| -> Result<Vec<Uri>, PlanError> {
        list.iter()
            .map(|u| {
                u.parse()
                    .map_err(|e| file_error(format!("{key}: {u:?}: {e}")))
            })
            .collect()
    };
    let shared = parse(&file.targets, "targets")?;
    let mut plans = Vec::new();
    for (i, s) in file.scenario.iter().enumerate() {
        let key = format!("scenario[{i}] ({})", s.name);
        let own = parse(&s.targets, &format!("{key}.targets"))?;
        let targets = if !extra_targets.is_empty() {
            extra_targets.to_vec()
        } else if !own.is_empty() {
            own
        } else {
            shared.clone()
        };
        let stages = s
            .stages
            .iter()
            .enumerate()
            .map(|(j, st)| {
                let target = match (s.model, st.connections, st.rate) {
                    (Model::Closed, Some(c), None) => Ok(c),
                    (Model::Open, None, Some(r)) => Ok(r),
                    (Model::Closed, _, _) => Err(file_error(format!(
                        "{key}.stages[{j}]: a closed model stage sets connections (only)"
                    ))),
                    (Model::Open, _, _) => Err(file_error(format!(
                        "{key}.stages[{j}]: an open model stage sets rate (only)"
                    ))),
                }?;
                Ok(Stage {
                    duration: st.duration,
                    target,
                    ramp: st.ramp,
                })
            })
            .collect::<Result<Vec<_>, PlanError>>()?;
        let request = request_spec(
            &RequestConfig {
                method: file.method.as_ref(),
                headers: &file.headers,
                body: file.body.as_ref(),
            },
            &RequestConfig {
                method: s.method.as_ref(),
                headers: &s.headers,
                body: s.body.as_ref(),
            },
        )
        .map_err(|e| file_error(format!("{key}: {e}")))?;
        let plan = Plan {
            name: s.name.clone(),
            targets,
            http2: file.http2,
            model: s.model,
            stages,
            max_requests: s.max_requests.unwrap_or(u64::MAX),
            timeout: file.timeout,
            max_connections: file.max_connections,
            slo: s.slo.clone(),
            request,
            tls: TlsSpec {
                ca_file: file.ca_file.clone(),
                insecure: file.insecure,
            },
        };
        plan.validate()
            .map_err(|e| file_error(format!("{key}: {e}")))?;
        plans.push(plan);
    }
    Ok(plans)
}

/// A scenario's request: the file's settings with the scenario's over them (headers
/// merge, the scenario's value winning).
fn request_spec(file: &RequestConfig, scenario: &RequestConfig) -> Result<RequestSpec, PlanError> {
    let mut spec = RequestSpec::default();
    if let Some(method) = scenario.method.or(file.method) {
        spec.method = RequestSpec::parse_method(method)?;
    }
    for (name, value) in file.headers.iter().chain(scenario.headers) {
        let (name, value) = RequestSpec::header(name, value)
            .map_err(|e| PlanError::Invalid(format!("headers: {e}")))?;
        spec.headers.insert(name, value);
    }
    if let Some(body) = scenario.body.or(file.body) {
        spec.body = bytes::Bytes::from(body.clone());
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(stages: Vec<Stage>) -> Plan {
        Plan {
            name: "t".into(),
            targets: vec!["http://127.0.0.1:1/".parse().unwrap()],
            http2: false,
            model: Model::Open,
            stages,
            max_requests: u64::MAX,
            timeout: DEFAULT_TIMEOUT,
            max_connections: 4,
            slo: Slo::default(),
            request: RequestSpec::default(),
            tls: TlsSpec::default(),
        }
    }

    #[test]
    fn stages_step_or_ramp() {
        let p = plan(parse_stages("10s:100, ~10s:300, 5s:50").unwrap());
        assert_eq!(p.duration(), Duration::from_secs(25));
        assert_eq!(p.target_at(Duration::from_secs(3)), 100.0);
        assert_eq!(p.target_at(Duration::from_secs(15)), 200.0);
        assert_eq!(p.target_at(Duration::from_secs(22)), 50.0);
        assert_eq!(p.target_at(Duration::from_secs(99)), 50.0);
        assert!(parse_stages("10s").is_err());
        assert!(parse_stages("ten:5").is_err());
    }

    #[test]
    fn scenario_files_are_checked_and_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            r#"
targets = ["http://127.0.0.1:8080/api"]
[[scenario]]
name = "baseline"
model = "open"
stages = [{ duration = "30s", rate = 200 }]
slo = { p99_ms = 500, max_error_rate = 0.01 }
[[scenario]]
name = "stress"
model = "closed"
stages = [{ duration = "10s", connections = 8 }, { duration = "20s", connections = 64, ramp = true }]
"#,
        )
        .unwrap();
        let plans = load_scenarios(&path, &[]).unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].slo.p99_ms, Some(500.0));
        assert_eq!(plans[1].target_at(Duration::from_secs(20)), 36.0);
        std::fs::write(
            &path,
            "[[scenario]]\nname = \"x\"\nmodel = \"open\"\nstages = [{ duration = \"1s\", connections = 3 }]\ntargets = [\"http://h:1/\"]\n",
        )
        .unwrap();
        let err = load_scenarios(&path, &[]).unwrap_err().to_string();
        assert!(
            err.contains("scenario[0] (x).stages[0]: an open model stage sets rate"),
            "{err}"
        );
    }

    #[test]
    fn scenario_requests_merge_over_the_file_and_bad_ones_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            r#"
targets = ["https://api.test/orders"]
method = "POST"
headers = { authorization = "Bearer t", x-tenant = "a" }
body = "{}"
insecure = true
[[scenario]]
name = "create"
model = "closed"
stages = [{ duration = "1s", connections = 1 }]
[[scenario]]
name = "read"
model = "closed"
stages = [{ duration = "1s", connections = 1 }]
method = "GET"
headers = { x-tenant = "b" }
body = ""
"#,
        )
        .unwrap();
        let plans = load_scenarios(&path, &[]).unwrap();
        let (create, read) = (&plans[0].request, &plans[1].request);
        assert_eq!(
            (create.method.as_str(), &create.body[..]),
            ("POST", &b"{}"[..])
        );
        assert_eq!((read.method.as_str(), &read.body[..]), ("GET", &b""[..]));
        assert_eq!(create.headers["x-tenant"], "a");
        assert_eq!(read.headers["x-tenant"], "b");
        assert_eq!(read.headers["authorization"], "Bearer t");
        assert!(plans.iter().all(|p| p.tls.insecure));

        std::fs::write(
            &path,
            "targets = [\"http://h:1/\"]\n[[scenario]]\nname = \"x\"\nmodel = \"closed\"\nstages = [{ duration = \"1s\", connections = 1 }]\nheaders = { content-length = \"3\" }\n",
        )
        .unwrap();
        let err = load_scenarios(&path, &[]).unwrap_err().to_string();
        assert!(
            err.contains(
                "scenario[0] (x): headers: header content-length: set by the load generator"
            ),
            "{err}"
        );
    }
}
