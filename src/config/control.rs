//! The `[control]` section: the statistics sampler, the capacity report and one
//! `[[control.autoscale]]` table per pool the autoscaler watches.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often the control loop samples the data plane and evaluates the autoscalers.
pub const DEFAULT_CONTROL_INTERVAL: Duration = Duration::from_secs(10);
/// How much sampled history is kept in memory (and so reaches the report).
pub const DEFAULT_CONTROL_HISTORY: Duration = Duration::from_secs(24 * 3600);
/// The latency an instance must keep for the capacity report's sizing (mean, Little's law).
pub const DEFAULT_LATENCY_TARGET: Duration = Duration::from_millis(200);
/// Robust z-score above which a sample is reported as an anomaly (Iglewicz–Hoaglin).
pub const DEFAULT_ANOMALY_Z: f64 = 3.5;
/// How far ahead the capacity report forecasts.
pub const DEFAULT_FORECAST_HORIZON: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    #[serde(default = "d_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde", default = "d_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "d_history")]
    pub history: Duration,
    /// Samples are appended here (JSON lines) and read back at start; `weir report
    /// --history` reads it too.
    #[serde(default)]
    pub history_file: Option<PathBuf>,
    #[serde(with = "humantime_serde", default = "d_latency_target")]
    pub latency_target: Duration,
    /// The throughput the report sizes the fleet for (0: twice the peak seen).
    #[serde(default)]
    pub target_rps: f64,
    #[serde(with = "humantime_serde", default = "d_horizon")]
    pub forecast_horizon: Duration,
    #[serde(default = "d_anomaly_z")]
    pub anomaly_z: f64,
    #[serde(default)]
    pub autoscale: Vec<AutoscaleConfig>,
    /// Service-level objectives, each with its burn-rate alerts.
    #[serde(default)]
    pub slo: Vec<super::alerting::SloConfig>,
    /// Threshold and anomaly alert rules.
    #[serde(default)]
    pub alert: Vec<super::alerting::AlertRuleConfig>,
    /// Where alerts are sent.
    #[serde(default)]
    pub notify: Vec<super::alerting::NotifyConfig>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: DEFAULT_CONTROL_INTERVAL,
            history: DEFAULT_CONTROL_HISTORY,
            history_file: None,
            latency_target: DEFAULT_LATENCY_TARGET,
            target_rps: 0.0,
            forecast_horizon: DEFAULT_FORECAST_HORIZON,
            anomaly_z: DEFAULT_ANOMALY_Z,
            autoscale: Vec::new(),
            slo: Vec::new(),
            alert: Vec::new(),
            notify: Vec::new(),
        }
    }
}

/// One pool's autoscaler. Defaults follow the usual thresholds (scale up above 80 % CPU,
/// 85 % memory, 2 s p95, 5 % errors or a queue of 100; down only below 30 % CPU and
/// 50 % memory) and Kubernetes' HPA (10 % tolerance, 300 s scale-down window).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleConfig {
    pub pool: String,
    #[serde(default = "d_min")]
    pub min_instances: u32,
    #[serde(default = "d_max")]
    pub max_instances: u32,
    /// Requests in flight per instance the pool should run at (Little's law: rps ×
    /// latency); the primary signal.
    #[serde(default = "d_target_in_flight")]
    pub target_in_flight: f64,
    /// No change while observed/target stays within 1 ± tolerance.
    #[serde(default = "d_tolerance")]
    pub tolerance: f64,
    /// Signals are averaged over this window before a recommendation.
    #[serde(with = "humantime_serde", default = "d_signal_window")]
    pub signal_window: Duration,
    #[serde(default = "d_cpu_high")]
    pub cpu_high: f64,
    #[serde(default = "d_memory_high")]
    pub memory_high: f64,
    #[serde(with = "humantime_serde", default = "d_latency_high")]
    pub latency_high: Duration,
    #[serde(default = "d_error_rate_high")]
    pub error_rate_high: f64,
    #[serde(default = "d_queue_high")]
    pub queue_high: f64,
    /// Scale-in needs CPU and memory (where instances report them) under these.
    #[serde(default = "d_cpu_low")]
    pub cpu_low: f64,
    #[serde(default = "d_memory_low")]
    pub memory_low: f64,
    /// Scale-up uses the lowest recommendation over this window (0: act at once).
    #[serde(with = "humantime_serde", default)]
    pub scale_up_window: Duration,
    /// Scale-down uses the highest recommendation over this window.
    #[serde(with = "humantime_serde", default = "d_down_window")]
    pub scale_down_window: Duration,
    /// After any change, no scale-up for this long (new instances take time to arrive).
    #[serde(with = "humantime_serde", default = "d_up_cooldown")]
    pub scale_up_cooldown: Duration,
    /// After any change, no scale-down for this long.
    #[serde(with = "humantime_serde", default = "d_down_cooldown")]
    pub scale_down_cooldown: Duration,
    /// One scale-up adds at most max(this many, the current count) instances.
    #[serde(default = "d_up_step")]
    pub scale_up_max_step: u32,
    /// One scale-down removes at most this share of the instances (at least one).
    #[serde(default = "d_down_fraction")]
    pub scale_down_max_fraction: f64,
    /// Scale up ahead of the forecast (never scale in on a forecast alone).
    #[serde(default)]
    pub predictive: bool,
    #[serde(with = "humantime_serde", default = "d_lookahead")]
    pub predictive_lookahead: Duration,
    #[serde(default)]
    pub schedule: Vec<ScheduleRule>,
    /// Decide and record, but do not run the action.
    #[serde(default = "d_true")]
    pub dry_run: bool,
    /// In a dry run, the count decisions start from (see [`DryRunFollows`]).
    #[serde(default)]
    pub dry_run_follows: DryRunFollows,
    /// How long an added instance takes to serve. In a dry run that follows its decisions,
    /// instances asked for count only after this long, as they would in the pool.
    #[serde(with = "humantime_serde", default)]
    pub provisioning_delay: Duration,
    pub action: Option<ActionConfig>,
}

/// Which instance count a dry run decides from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DryRunFollows {
    /// The count the autoscaler's own decisions would have left, had they been applied
    /// (after `provisioning_delay` for additions): the dry run shows what acting would
    /// do, decision after decision. The default: a dry run is how an autoscaler is judged
    /// before it is let act, and judging it from a count it never chose shows steps it
    /// would never take.
    #[default]
    Decisions,
    /// The pool's real count: each decision is the next step from where the pool is. For
    /// a pool scaled by something else (an HPA, a person) that weir only advises.
    Pool,
}

/// A recurring window (UTC) during which the pool keeps at least `min_instances`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRule {
    /// `"mon-fri"`, `"sat,sun"`, `"*"`.
    #[serde(default = "d_all_days")]
    pub days: String,
    /// `"08:00"`; the window may cross midnight (`from = "22:00", to = "02:00"`).
    pub from: String,
    pub to: String,
    pub min_instances: u32,
}

/// What to do with a decision that changes the instance count. Serialized (admin API,
/// history) without what may be secret: a webhook's credentials and query, a command's
/// arguments.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// Program and arguments; gets the decision as JSON on stdin and `WEIR_*` variables.
    #[serde(default, serialize_with = "serialize_command")]
    pub command: Vec<String>,
    /// Or: POST the decision as JSON here.
    #[serde(serialize_with = "serialize_webhook")]
    pub webhook: Option<String>,
    #[serde(with = "humantime_serde", default = "d_action_timeout")]
    pub timeout: Duration,
}

/// A URL without its user information and query: `scheme://host:port/path`.
pub fn redact_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => format!(
            "{}://{}{}{}",
            uri.scheme_str().unwrap_or("http"),
            uri.host().unwrap_or("?"),
            uri.port().map(|p| format!(":{p}")).unwrap_or_default(),
            uri.path()
        ),
        Err(_) => "<webhook URL>".to_owned(),
    }
}

pub(super) fn serialize_webhook<S: serde::Serializer>(
    url: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    url.as_deref().map(redact_url).serialize(serializer)
}

/// The program, and how many arguments follow it (they may carry tokens).
pub(super) fn serialize_command<S: serde::Serializer>(
    command: &[String],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let shown: Vec<String> = match command.split_first() {
        None => Vec::new(),
        Some((program, [])) => vec![program.clone()],
        Some((program, args)) => vec![program.clone(), format!("<{} arguments>", args.len())],
    };
    shown.serialize(serializer)
}

fn d_true() -> bool {
    true
}
fn d_interval() -> Duration {
    DEFAULT_CONTROL_INTERVAL
}
fn d_history() -> Duration {
    DEFAULT_CONTROL_HISTORY
}
fn d_latency_target() -> Duration {
    DEFAULT_LATENCY_TARGET
}
fn d_horizon() -> Duration {
    DEFAULT_FORECAST_HORIZON
}
fn d_anomaly_z() -> f64 {
    DEFAULT_ANOMALY_Z
}
fn d_min() -> u32 {
    1
}
fn d_max() -> u32 {
    100
}
fn d_target_in_flight() -> f64 {
    8.0
}
fn d_tolerance() -> f64 {
    0.1
}
fn d_signal_window() -> Duration {
    Duration::from_secs(60)
}
fn d_cpu_high() -> f64 {
    0.80
}
fn d_memory_high() -> f64 {
    0.85
}
fn d_latency_high() -> Duration {
    Duration::from_secs(2)
}
fn d_error_rate_high() -> f64 {
    0.05
}
fn d_queue_high() -> f64 {
    100.0
}
fn d_cpu_low() -> f64 {
    0.30
}
fn d_memory_low() -> f64 {
    0.50
}
fn d_down_window() -> Duration {
    Duration::from_secs(300)
}
fn d_up_cooldown() -> Duration {
    Duration::from_secs(60)
}
fn d_down_cooldown() -> Duration {
    Duration::from_secs(300)
}
fn d_up_step() -> u32 {
    4
}
fn d_down_fraction() -> f64 {
    1.0
}
fn d_lookahead() -> Duration {
    Duration::from_secs(300)
}
fn d_all_days() -> String {
    "*".into()
}
fn d_action_timeout() -> Duration {
    Duration::from_secs(10)
}

impl AutoscaleConfig {
    /// The defaults for `pool`, as if the table named only the pool.
    pub fn for_pool(pool: &str) -> Self {
        Self {
            pool: pool.to_owned(),
            min_instances: d_min(),
            max_instances: d_max(),
            target_in_flight: d_target_in_flight(),
            tolerance: d_tolerance(),
            signal_window: d_signal_window(),
            cpu_high: d_cpu_high(),
            memory_high: d_memory_high(),
            latency_high: d_latency_high(),
            error_rate_high: d_error_rate_high(),
            queue_high: d_queue_high(),
            cpu_low: d_cpu_low(),
            memory_low: d_memory_low(),
            scale_up_window: Duration::ZERO,
            scale_down_window: d_down_window(),
            scale_up_cooldown: d_up_cooldown(),
            scale_down_cooldown: d_down_cooldown(),
            scale_up_max_step: d_up_step(),
            scale_down_max_fraction: d_down_fraction(),
            predictive: false,
            predictive_lookahead: d_lookahead(),
            schedule: Vec::new(),
            dry_run: true,
            dry_run_follows: DryRunFollows::default(),
            provisioning_delay: Duration::ZERO,
            action: None,
        }
    }
}

/// A parsed [`ScheduleRule`]: days of the week (bit 0 = Monday) and minutes of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    days: u8,
    from_minute: u32,
    to_minute: u32,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl ScheduleRule {
    pub fn window(&self) -> Result<Window, String> {
        Ok(Window {
            days: parse_days(&self.days)?,
            from_minute: parse_minute(&self.from)?,
            to_minute: parse_minute(&self.to)?,
        })
    }
}

impl Window {
    pub(super) fn new(days: u8, from_minute: u32, to_minute: u32) -> Self {
        Self {
            days,
            from_minute,
            to_minute,
        }
    }

    /// Whether the window covers `unix_seconds` (UTC).
    pub fn contains(&self, unix_seconds: u64) -> bool {
        // 1970-01-01 was a Thursday (index 3 from Monday).
        let day = ((unix_seconds / 86_400 + 3) % 7) as u8;
        let minute = ((unix_seconds % 86_400) / 60) as u32;
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.from_minute <= self.to_minute {
            on(day) && (self.from_minute..self.to_minute).contains(&minute)
        } else {
            // Crosses midnight: the part after midnight belongs to the previous day's window.
            (on(day) && minute >= self.from_minute)
                || (on((day + 6) % 7) && minute < self.to_minute)
        }
    }
}

pub(super) fn parse_days(text: &str) -> Result<u8, String> {
    let text = text.trim().to_ascii_lowercase();
    if text == "*" {
        return Ok(0x7f);
    }
    let index = |name: &str| {
        DAY_NAMES
            .iter()
            .position(|d| *d == name.trim())
            .map(|i| i as u8)
            .ok_or_else(|| format!("{name:?} is not a day (mon … sun)"))
    };
    let mut days = 0u8;
    for part in text.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (mut day, last) = (index(first)?, index(last)?);
                loop {
                    days |= 1 << day;
                    if day == last {
                        break;
                    }
                    day = (day + 1) % 7;
                }
            }
            None => days |= 1 << index(part)?,
        }
    }
    Ok(days)
}

pub(super) fn parse_minute(text: &str) -> Result<u32, String> {
    let bad = || format!("{text:?} is not a time of day (HH:MM, 00:00 to 24:00)");
    let (hours, minutes) = text.trim().split_once(':').ok_or_else(bad)?;
    let (hours, minutes): (u32, u32) = (
        hours.parse().map_err(|_| bad())?,
        minutes.parse().map_err(|_| bad())?,
    );
    if minutes >= 60 || hours * 60 + minutes > 24 * 60 {
        return Err(bad());
    }
    Ok(hours * 60 + minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(days: &str, from: &str, to: &str) -> Window {
        ScheduleRule {
            days: days.into(),
            from: from.into(),
            to: to.into(),
            min_instances: 1,
        }
        .window()
        .unwrap()
    }

    // 2026-11-23 is a Monday.
    const MONDAY_MIDNIGHT: u64 = 1_795_392_000;

    #[test]
    fn windows_follow_days_and_hours() {
        let office = rule("mon-fri", "08:00", "18:00");
        assert!(office.contains(MONDAY_MIDNIGHT + 9 * 3600));
        assert!(!office.contains(MONDAY_MIDNIGHT + 18 * 3600));
        assert!(
            !office.contains(MONDAY_MIDNIGHT + 5 * 86_400 + 9 * 3600),
            "saturday"
        );
        let night = rule("fri", "22:00", "02:00");
        assert!(night.contains(MONDAY_MIDNIGHT + 4 * 86_400 + 23 * 3600));
        assert!(
            night.contains(MONDAY_MIDNIGHT + 5 * 86_400 + 3600),
            "saturday 01:00"
        );
        assert!(!night.contains(MONDAY_MIDNIGHT + 3600), "monday 01:00");
        let weekend = rule("sat,sun", "00:00", "24:00");
        assert!(weekend.contains(MONDAY_MIDNIGHT - 1));
        assert!(rule("sun-tue", "00:00", "24:00").contains(MONDAY_MIDNIGHT + 86_400 + 1));
    }

    #[test]
    fn bad_windows_say_why() {
        let bad = |days: &str, from: &str| {
            ScheduleRule {
                days: days.into(),
                from: from.into(),
                to: "10:00".into(),
                min_instances: 1,
            }
            .window()
            .unwrap_err()
        };
        assert!(bad("monday", "08:00").contains("not a day"));
        assert!(bad("mon", "8h").contains("not a time of day"));
        assert!(bad("mon", "25:00").contains("not a time of day"));
    }
}
