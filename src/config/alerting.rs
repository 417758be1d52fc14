//! `[[control.slo]]`, `[[control.alert]]` and `[[control.notify]]`: service-level
//! objectives, the rules that raise alerts, and where alerts are sent. The control loop
//! evaluates them every `control.interval`, never on the request path.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::control::ActionConfig;
use super::{Config, Problem};

/// How long an SLO's compliance is judged over (the error budget's period).
pub const DEFAULT_SLO_WINDOW: Duration = Duration::from_secs(28 * 86_400);
/// A firing alert is sent again this often while it keeps firing (Alertmanager's default).
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);
/// Attempts after the first when a notifier fails.
pub const DEFAULT_NOTIFY_RETRIES: u32 = 2;

/// An objective for the answers clients get on some routes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// Names the SLO in metrics, alerts and the API.
    pub name: String,
    /// The routes (by name) whose answers count.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Or: every route that sends to this pool (a split route counts for each of its pools).
    pub pool: Option<String>,
    /// Share of good answers to keep, e.g. 0.999. The error budget is 1 − objective.
    pub objective: f64,
    /// Absent: an availability SLO (good = not 5xx, weir's own 502/503/504 included).
    /// Set: a latency SLO (good = answered within this, measured at the bucket bound of
    /// weir's latency histogram at or below it).
    #[serde(with = "humantime_serde", default)]
    pub latency: Option<Duration>,
    /// The compliance window the budget is spent over.
    #[serde(with = "humantime_serde", default = "d_slo_window")]
    pub window: Duration,
    /// Multi-window, multi-burn-rate alerts; the SRE workbook's three by default. `[]`
    /// turns them off.
    #[serde(default = "default_burn_alerts")]
    pub burn_alerts: Vec<BurnAlertConfig>,
}

/// Fires when the budget burns faster than `factor` over both windows: the long one shows
/// it matters, the short one that it is still going on (so it resolves soon after a fix).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BurnAlertConfig {
    pub factor: f64,
    #[serde(with = "humantime_serde")]
    pub long: Duration,
    #[serde(with = "humantime_serde")]
    pub short: Duration,
    #[serde(default = "d_page")]
    pub severity: String,
}

/// The SRE workbook's defaults: 2 % of a 30-day budget in an hour pages, 5 % in six hours
/// pages, 10 % in three days opens a ticket.
pub fn default_burn_alerts() -> Vec<BurnAlertConfig> {
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let minutes = |m: u64| Duration::from_secs(m * 60);
    vec![
        BurnAlertConfig {
            factor: 14.4,
            long: hours(1),
            short: minutes(5),
            severity: "page".into(),
        },
        BurnAlertConfig {
            factor: 6.0,
            long: hours(6),
            short: minutes(30),
            severity: "page".into(),
        },
        BurnAlertConfig {
            factor: 1.0,
            long: hours(72),
            short: hours(6),
            severity: "ticket".into(),
        },
    ]
}

/// What a threshold or anomaly rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSignal {
    /// Per pool, from the control loop's samples.
    P50Ms,
    P95Ms,
    P99Ms,
    MeanMs,
    ErrorRate,
    InFlight,
    Rps,
    /// Per pool, as instances report their own load (0..1, 0..1, requests waiting).
    Cpu,
    Memory,
    Queue,
    /// Per pool: endpoints serving, and endpoints out (ejected, unhealthy, hung).
    HealthyEndpoints,
    UnhealthyEndpoints,
    /// Whole cache: hits / lookups over the interval, per tier and together.
    CacheHitRatio,
    CacheMemoryHitRatio,
    CacheRedisHitRatio,
    /// L1 entries evicted per second to make room.
    CacheEvictionsPerSecond,
    /// 1 while the Redis tier is unreachable, else 0.
    RedisUnavailable,
}

impl AlertSignal {
    /// Whether the signal belongs to a pool (else to the whole instance).
    pub fn per_pool(self) -> bool {
        !matches!(
            self,
            Self::CacheHitRatio
                | Self::CacheMemoryHitRatio
                | Self::CacheRedisHitRatio
                | Self::CacheEvictionsPerSecond
                | Self::RedisUnavailable
        )
    }

    /// Whether the signal can be narrowed to one caching route (`route = "…"`).
    pub fn per_route(self) -> bool {
        matches!(
            self,
            Self::CacheHitRatio | Self::CacheMemoryHitRatio | Self::CacheRedisHitRatio
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::P50Ms => "p50_ms",
            Self::P95Ms => "p95_ms",
            Self::P99Ms => "p99_ms",
            Self::MeanMs => "mean_ms",
            Self::ErrorRate => "error_rate",
            Self::InFlight => "in_flight",
            Self::Rps => "rps",
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Queue => "queue",
            Self::HealthyEndpoints => "healthy_endpoints",
            Self::UnhealthyEndpoints => "unhealthy_endpoints",
            Self::CacheHitRatio => "cache_hit_ratio",
            Self::CacheMemoryHitRatio => "cache_memory_hit_ratio",
            Self::CacheRedisHitRatio => "cache_redis_hit_ratio",
            Self::CacheEvictionsPerSecond => "cache_evictions_per_second",
            Self::RedisUnavailable => "redis_unavailable",
        }
    }
}

/// A rule on one signal: over or under a threshold for a while, or an anomaly.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleConfig {
    pub name: String,
    pub signal: AlertSignal,
    /// For per-pool signals: this pool only (absent: every pool, one alert each).
    pub pool: Option<String>,
    /// For the cache hit ratios: this route's lookups only (absent: the whole cache).
    pub route: Option<String>,
    /// Condition: the signal is above this …
    pub above: Option<f64>,
    /// … or below this …
    pub below: Option<f64>,
    /// … or its robust z-score against the recent `anomaly_window` exceeds this.
    pub anomaly_z: Option<f64>,
    #[serde(with = "humantime_serde", default = "d_anomaly_window")]
    pub anomaly_window: Duration,
    /// The condition must hold this long before the alert fires (pending until then).
    #[serde(rename = "for", with = "humantime_serde", default)]
    pub hold: Duration,
    /// The condition must stay false this long before a firing alert resolves (absent:
    /// as long as `for`), so a signal that hovers at the threshold does not flap.
    #[serde(with = "humantime_serde", default)]
    pub resolve_after: Option<Duration>,
    #[serde(default = "d_warning")]
    pub severity: String,
    /// Free text carried in every notification (a runbook link, what to check first).
    #[serde(default)]
    pub summary: String,
    /// A schedule: the rule holds only within these windows (UTC), e.g. a traffic floor
    /// that only means something in business hours. Empty: always.
    #[serde(default)]
    pub during: Vec<TimeWindowConfig>,
}

/// A recurring window of days and hours (UTC), as `[[control.autoscale]]` schedules use.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindowConfig {
    /// `"mon-fri"`, `"sat,sun"`, `"*"`.
    #[serde(default = "d_all_days")]
    pub days: String,
    /// `"08:00"`; the window may cross midnight.
    pub from: String,
    pub to: String,
}

impl TimeWindowConfig {
    pub fn window(&self) -> Result<super::control::Window, String> {
        Ok(super::control::Window::new(
            super::control::parse_days(&self.days)?,
            super::control::parse_minute(&self.from)?,
            super::control::parse_minute(&self.to)?,
        ))
    }
}

impl AlertRuleConfig {
    /// Whether the rule's schedule covers `unix_seconds` (always, without one).
    pub fn scheduled_at(&self, unix_seconds: u64) -> bool {
        self.during.is_empty()
            || self
                .during
                .iter()
                .filter_map(|w| w.window().ok())
                .any(|w| w.contains(unix_seconds))
    }
}

/// Where alerts go (besides the log and the `weir_alerts_firing` metric, which always get
/// them).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    pub name: String,
    /// POST the alert here as JSON: Alertmanager's webhook format, with a `text` line for
    /// Slack-style incoming webhooks.
    #[serde(serialize_with = "super::control::serialize_webhook", default)]
    pub webhook: Option<String>,
    /// Or run this program with the alert as JSON on stdin and `WEIR_ALERT_*` variables.
    #[serde(serialize_with = "super::control::serialize_command", default)]
    pub command: Vec<String>,
    #[serde(with = "humantime_serde", default = "d_notify_timeout")]
    pub timeout: Duration,
    /// Attempts after the first, `retry_backoff` apart (doubling).
    #[serde(default = "d_retries")]
    pub retries: u32,
    #[serde(with = "humantime_serde", default = "d_backoff")]
    pub retry_backoff: Duration,
    /// Only alerts of these severities (empty: all).
    #[serde(default)]
    pub severities: Vec<String>,
    /// A firing alert is sent again this often while it keeps firing.
    #[serde(with = "humantime_serde", default = "d_repeat")]
    pub repeat_interval: Duration,
}

impl NotifyConfig {
    /// The runner's view: what to run and for how long each attempt.
    pub fn action(&self) -> ActionConfig {
        ActionConfig {
            command: self.command.clone(),
            webhook: self.webhook.clone(),
            timeout: self.timeout,
        }
    }

    pub fn wants(&self, severity: &str) -> bool {
        self.severities.is_empty() || self.severities.iter().any(|s| s == severity)
    }
}

fn d_all_days() -> String {
    "*".into()
}
fn d_slo_window() -> Duration {
    DEFAULT_SLO_WINDOW
}
fn d_page() -> String {
    "page".into()
}
fn d_warning() -> String {
    "warning".into()
}
fn d_anomaly_window() -> Duration {
    Duration::from_secs(3600)
}
fn d_notify_timeout() -> Duration {
    Duration::from_secs(10)
}
fn d_retries() -> u32 {
    DEFAULT_NOTIFY_RETRIES
}
fn d_backoff() -> Duration {
    Duration::from_secs(1)
}
fn d_repeat() -> Duration {
    DEFAULT_REPEAT_INTERVAL
}

/// Most notification attempts one alert event may take.
const MAX_RETRIES: u32 = 10;

pub(super) fn check(config: &Config, problems: &mut Vec<Problem>) {
    let control = &config.control;
    let route_names: std::collections::BTreeSet<&str> = config
        .routes
        .iter()
        .filter_map(|r| r.name.as_deref())
        .collect();
    let mut names = std::collections::BTreeSet::new();
    for (i, slo) in control.slo.iter().enumerate() {
        let key = |field: &str| format!("control.slo[{i}].{field}");
        if slo.name.is_empty() || !names.insert(slo.name.as_str()) {
            problems.push(Problem::new(
                key("name"),
                format!("{:?} must be set and unique among SLOs", slo.name),
            ));
        }
        match (&slo.pool, slo.routes.is_empty()) {
            (None, true) | (Some(_), false) => problems.push(Problem::new(
                key("routes"),
                "set either routes (names) or pool, not both",
            )),
            (Some(pool), true) if !config.pools.contains_key(pool) => {
                problems.push(Problem::new(key("pool"), format!("no pool named {pool:?}")))
            }
            _ => {}
        }
        for route in &slo.routes {
            if !route_names.contains(route.as_str()) {
                problems.push(Problem::new(
                    key("routes"),
                    format!("no route named {route:?} (give the route a name)"),
                ));
            }
        }
        if !(slo.objective > 0.0 && slo.objective < 1.0) {
            problems.push(Problem::new(
                key("objective"),
                format!(
                    "must be a fraction strictly between 0 and 1, got {}",
                    slo.objective
                ),
            ));
        }
        if slo.latency.is_some_and(|l| l < Duration::from_millis(1)) {
            problems.push(Problem::new(key("latency"), "must be at least 1ms"));
        }
        if slo.window < control.interval {
            problems.push(Problem::new(
                key("window"),
                "must be at least control.interval",
            ));
        }
        for (j, burn) in slo.burn_alerts.iter().enumerate() {
            let key = |field: &str| format!("control.slo[{i}].burn_alerts[{j}].{field}");
            if !(burn.factor > 0.0 && burn.factor.is_finite()) {
                problems.push(Problem::new(key("factor"), "must be more than 0"));
            }
            if burn.short < control.interval || burn.short >= burn.long {
                problems.push(Problem::new(
                    key("short"),
                    "must be at least control.interval and shorter than long",
                ));
            }
            if burn.long > slo.window {
                problems.push(Problem::new(
                    key("long"),
                    "must not exceed the SLO's window",
                ));
            }
            if burn.severity.is_empty() {
                problems.push(Problem::new(key("severity"), "must not be empty"));
            }
        }
    }
    let mut rule_names = std::collections::BTreeSet::new();
    for (i, rule) in control.alert.iter().enumerate() {
        let key = |field: &str| format!("control.alert[{i}].{field}");
        if rule.name.is_empty() || !rule_names.insert(rule.name.as_str()) {
            problems.push(Problem::new(
                key("name"),
                format!("{:?} must be set and unique among alert rules", rule.name),
            ));
        }
        if names.contains(rule.name.as_str()) {
            problems.push(Problem::new(
                key("name"),
                format!(
                    "{:?} is also an SLO's name (its burn alerts use it)",
                    rule.name
                ),
            ));
        }
        let conditions = [rule.above, rule.below, rule.anomaly_z];
        if conditions.iter().flatten().count() != 1 {
            problems.push(Problem::new(
                key("above"),
                "set exactly one of above, below and anomaly_z",
            ));
        }
        if conditions.iter().flatten().any(|v| !v.is_finite()) {
            problems.push(Problem::new(key("above"), "must be a finite number"));
        }
        if rule.anomaly_z.is_some_and(|z| z <= 0.0) {
            problems.push(Problem::new(key("anomaly_z"), "must be more than 0"));
        }
        if rule.anomaly_z.is_some() && rule.anomaly_window < control.interval * 8 {
            problems.push(Problem::new(
                key("anomaly_window"),
                "must hold at least 8 intervals (control.interval × 8)",
            ));
        }
        match &rule.pool {
            Some(_) if !rule.signal.per_pool() => problems.push(Problem::new(
                key("pool"),
                format!(
                    "{} belongs to the whole instance, not a pool",
                    rule.signal.as_str()
                ),
            )),
            Some(pool) if !config.pools.contains_key(pool) => {
                problems.push(Problem::new(key("pool"), format!("no pool named {pool:?}")))
            }
            _ => {}
        }
        match &rule.route {
            Some(_) if !rule.signal.per_route() => problems.push(Problem::new(
                key("route"),
                format!(
                    "{} is not counted per route (the cache hit ratios are)",
                    rule.signal.as_str()
                ),
            )),
            Some(route) if !route_names.contains(route.as_str()) => problems.push(Problem::new(
                key("route"),
                format!("no route named {route:?}"),
            )),
            _ => {}
        }
        if rule.severity.is_empty() {
            problems.push(Problem::new(key("severity"), "must not be empty"));
        }
        for (j, window) in rule.during.iter().enumerate() {
            if let Err(reason) = window.window() {
                problems.push(Problem::new(key(&format!("during[{j}]")), reason));
            }
        }
    }
    let mut notifier_names = std::collections::BTreeSet::new();
    for (i, notify) in control.notify.iter().enumerate() {
        let key = |field: &str| format!("control.notify[{i}].{field}");
        if notify.name.is_empty() || !notifier_names.insert(notify.name.as_str()) {
            problems.push(Problem::new(
                key("name"),
                format!("{:?} must be set and unique among notifiers", notify.name),
            ));
        }
        match (notify.command.is_empty(), &notify.webhook) {
            (true, None) | (false, Some(_)) => problems.push(Problem::new(
                key("webhook"),
                "set exactly one of webhook and command",
            )),
            (true, Some(url)) if !url.starts_with("http://") => problems.push(Problem::new(
                key("webhook"),
                "must be an http:// URL (a local relay can forward to HTTPS)",
            )),
            _ => {}
        }
        if notify.timeout.is_zero() {
            problems.push(Problem::new(key("timeout"), "must be more than 0"));
        }
        if notify.retries > MAX_RETRIES {
            problems.push(Problem::new(
                key("retries"),
                format!("must be at most {MAX_RETRIES}"),
            ));
        }
        if notify.repeat_interval < control.interval {
            problems.push(Problem::new(
                key("repeat_interval"),
                "must be at least control.interval",
            ));
        }
    }
}
