//! Alert states: each rule's observations go pending → firing → resolved, one alert per
//! rule and scope (pool), with silences, a bounded history of events, and the decision of
//! which notifier gets which notice (first firing, repeats, resolution).
//!
//! The engine is pure: it is handed the tick's time and observations and returns notices.
//! What observes the signals is `rules.rs`; what sends notices is `notify.rs`.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Events kept for `GET /api/v1/alerts` and the report's timeline.
const EVENTS_KEPT: usize = 500;
/// Silences kept after they end (for the API).
const ENDED_SILENCES_KEPT: usize = 50;

/// What a rule saw at one tick, for one scope.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Observation {
    pub rule: String,
    /// The pool or route the alert is about; empty for instance-wide signals and SLOs.
    pub scope: String,
    /// What `scope` names: `pool`, `route`, or empty.
    pub scope_label: &'static str,
    /// `slo_burn`, `threshold` or `anomaly`.
    pub kind: &'static str,
    pub severity: String,
    /// Whether the rule's condition holds now.
    pub active: bool,
    /// The observed value (for burn alerts: the lower of the two windows' burn rates).
    pub value: f64,
    pub threshold: f64,
    /// Each window's value where the rule looks at several.
    pub windows: Vec<WindowValue>,
    /// One sentence with the numbers: what was seen against what.
    pub detail: String,
    /// The rule's own text (runbook, what to check).
    pub summary: String,
    #[serde(skip)]
    pub hold_ms: u64,
    #[serde(skip)]
    pub resolve_after_ms: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowValue {
    pub window_s: f64,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition holds but not yet for the rule's `for`.
    Pending,
    Firing,
}

/// One alert: a rule and a scope.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub rule: String,
    pub scope: String,
    pub state: AlertState,
    pub pending_since_ms: u64,
    pub firing_since_ms: Option<u64>,
    /// While firing: since when the condition has not held.
    pub clear_since_ms: Option<u64>,
    pub observation: Observation,
    /// What weir knew around the alert when it fired (filled by the controller).
    pub context: Vec<String>,
    pub silenced: bool,
    /// When each notifier was last sent this alert firing.
    #[serde(skip)]
    sent: BTreeMap<String, u64>,
}

/// A change of an alert's state, as the history keeps it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertEvent {
    pub at_ms: u64,
    pub rule: String,
    pub scope: String,
    pub severity: String,
    /// `firing` or `resolved`.
    pub status: &'static str,
    pub detail: String,
    pub silenced: bool,
}

/// Notifications muted for a rule (and optionally one scope) until `until_ms`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Silence {
    pub id: u64,
    pub rule: String,
    /// Absent: every scope of the rule.
    pub scope: Option<String>,
    pub created_ms: u64,
    pub until_ms: u64,
    pub comment: String,
}

impl Silence {
    fn covers(&self, rule: &str, scope: &str, now_ms: u64) -> bool {
        now_ms < self.until_ms
            && self.rule == rule
            && self.scope.as_deref().is_none_or(|s| s == scope)
    }
}

/// What a notifier wants: its name, severities and repeat interval.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub name: String,
    pub severities: Vec<String>,
    pub repeat_ms: u64,
}

impl Recipient {
    fn wants(&self, severity: &str) -> bool {
        self.severities.is_empty() || self.severities.iter().any(|s| s == severity)
    }
}

/// A notice for one notifier.
#[derive(Debug, Clone)]
pub struct Notice {
    pub recipient: String,
    /// `firing` or `resolved`.
    pub status: &'static str,
    /// Resend of a still-firing alert.
    pub repeat: bool,
    pub alert: Alert,
    /// When it resolved (for `resolved` notices).
    pub resolved_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct AlertEngine {
    alerts: BTreeMap<(String, String), Alert>,
    events: VecDeque<AlertEvent>,
    silences: Vec<Silence>,
    next_silence: u64,
}

impl AlertEngine {
    /// Moves every alert on by one tick. Alerts whose rule produced no observation (the
    /// rule or its pool is gone) resolve.
    pub fn evaluate(
        &mut self,
        now_ms: u64,
        observations: Vec<Observation>,
        recipients: &[Recipient],
    ) -> Vec<Notice> {
        let mut notices = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for observation in observations {
            let key = (observation.rule.clone(), observation.scope.clone());
            seen.insert(key.clone());
            let silenced = self.silenced(&key.0, &key.1, now_ms);
            let Some(alert) = self.alerts.get_mut(&key) else {
                if observation.active {
                    let mut alert = Alert {
                        rule: key.0.clone(),
                        scope: key.1.clone(),
                        state: AlertState::Pending,
                        pending_since_ms: now_ms,
                        firing_since_ms: None,
                        clear_since_ms: None,
                        observation,
                        context: Vec::new(),
                        silenced,
                        sent: BTreeMap::new(),
                    };
                    if alert.observation.hold_ms == 0 {
                        self.fire(&mut alert, now_ms, recipients, &mut notices);
                    }
                    self.alerts.insert(key, alert);
                }
                continue;
            };
            alert.silenced = silenced;
            let active = observation.active;
            alert.observation = observation;
            match (alert.state, active) {
                (AlertState::Pending, false) => {
                    self.alerts.remove(&key);
                }
                (AlertState::Pending, true) => {
                    if now_ms - alert.pending_since_ms >= alert.observation.hold_ms
                        && let Some(mut alert) = self.alerts.remove(&key)
                    {
                        self.fire(&mut alert, now_ms, recipients, &mut notices);
                        self.alerts.insert(key, alert);
                    }
                }
                (AlertState::Firing, true) => {
                    alert.clear_since_ms = None;
                    send_due(alert, now_ms, recipients, &mut notices);
                }
                (AlertState::Firing, false) => {
                    let clear_since = *alert.clear_since_ms.get_or_insert(now_ms);
                    if now_ms - clear_since >= alert.observation.resolve_after_ms
                        && let Some(alert) = self.alerts.remove(&key)
                    {
                        self.resolve(alert, now_ms, &mut notices);
                    }
                }
            }
        }
        let gone: Vec<(String, String)> = self
            .alerts
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(mut alert) = self.alerts.remove(&key)
                && alert.state == AlertState::Firing
            {
                alert.observation.detail = "the rule or its pool is gone".into();
                self.resolve(alert, now_ms, &mut notices);
            }
        }
        notices
    }

    fn fire(
        &mut self,
        alert: &mut Alert,
        now_ms: u64,
        recipients: &[Recipient],
        notices: &mut Vec<Notice>,
    ) {
        alert.state = AlertState::Firing;
        alert.firing_since_ms = Some(now_ms);
        alert.clear_since_ms = None;
        self.record(alert, now_ms, "firing");
        send_due(alert, now_ms, recipients, notices);
    }

    /// A resolved notice goes to each recipient that was told of the firing.
    fn resolve(&mut self, alert: Alert, now_ms: u64, notices: &mut Vec<Notice>) {
        self.record(&alert, now_ms, "resolved");
        if alert.silenced {
            return;
        }
        for recipient in alert.sent.keys() {
            notices.push(Notice {
                recipient: recipient.clone(),
                status: "resolved",
                repeat: false,
                alert: alert.clone(),
                resolved_ms: Some(now_ms),
            });
        }
    }

    fn record(&mut self, alert: &Alert, now_ms: u64, status: &'static str) {
        match status {
            "firing" => tracing::warn!(
                rule = %alert.rule, scope = %alert.scope, severity = %alert.observation.severity,
                silenced = alert.silenced, "alert firing: {}", alert.observation.detail
            ),
            _ => tracing::info!(
                rule = %alert.rule, scope = %alert.scope, severity = %alert.observation.severity,
                "alert resolved: {}", alert.observation.detail
            ),
        }
        self.events.push_back(AlertEvent {
            at_ms: now_ms,
            rule: alert.rule.clone(),
            scope: alert.scope.clone(),
            severity: alert.observation.severity.clone(),
            status,
            detail: alert.observation.detail.clone(),
            silenced: alert.silenced,
        });
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
    }

    fn silenced(&self, rule: &str, scope: &str, now_ms: u64) -> bool {
        self.silences.iter().any(|s| s.covers(rule, scope, now_ms))
    }

    /// Attaches context to a firing alert (what the controller knew when it fired).
    pub fn set_context(&mut self, rule: &str, scope: &str, context: Vec<String>) {
        if let Some(alert) = self.alerts.get_mut(&(rule.to_owned(), scope.to_owned())) {
            alert.context = context;
        }
    }

    pub fn silence(
        &mut self,
        rule: String,
        scope: Option<String>,
        now_ms: u64,
        until_ms: u64,
        comment: String,
    ) -> Silence {
        self.next_silence += 1;
        let silence = Silence {
            id: self.next_silence,
            rule,
            scope,
            created_ms: now_ms,
            until_ms,
            comment,
        };
        self.silences.push(silence.clone());
        self.prune_silences(now_ms);
        silence
    }

    /// Ends a silence now; false when there is no such silence.
    pub fn unsilence(&mut self, id: u64, now_ms: u64) -> bool {
        match self.silences.iter_mut().find(|s| s.id == id) {
            Some(silence) => {
                silence.until_ms = silence.until_ms.min(now_ms);
                true
            }
            None => false,
        }
    }

    fn prune_silences(&mut self, now_ms: u64) {
        let ended = self
            .silences
            .iter()
            .filter(|s| s.until_ms <= now_ms)
            .count();
        if ended > ENDED_SILENCES_KEPT {
            let mut drop = ended - ENDED_SILENCES_KEPT;
            self.silences.retain(|s| {
                let keep = s.until_ms > now_ms || drop == 0;
                if !keep {
                    drop -= 1;
                }
                keep
            });
        }
    }

    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }

    pub fn events(&self) -> impl DoubleEndedIterator<Item = &AlertEvent> {
        self.events.iter()
    }

    pub fn silences(&self) -> &[Silence] {
        &self.silences
    }
}

/// Firing notices to each recipient that wants the severity and has not had one within
/// its repeat interval (a notice to one told before is a repeat); nothing while silenced
/// (the repeat is then due as soon as the silence ends).
fn send_due(alert: &mut Alert, now_ms: u64, recipients: &[Recipient], notices: &mut Vec<Notice>) {
    if alert.silenced {
        return;
    }
    for recipient in recipients {
        if !recipient.wants(&alert.observation.severity) {
            continue;
        }
        let told = alert.sent.get(&recipient.name).copied();
        if told.is_some_and(|at| now_ms - at < recipient.repeat_ms) {
            continue;
        }
        alert.sent.insert(recipient.name.clone(), now_ms);
        notices.push(Notice {
            recipient: recipient.name.clone(),
            status: "firing",
            repeat: told.is_some(),
            alert: alert.clone(),
            resolved_ms: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(value: f64, threshold: f64, hold_ms: u64, resolve_after_ms: u64) -> Observation {
        Observation {
            rule: "p99".into(),
            scope: "api".into(),
            scope_label: "pool",
            kind: "threshold",
            severity: "page".into(),
            active: value > threshold,
            value,
            threshold,
            windows: Vec::new(),
            detail: format!("{value} against {threshold}"),
            summary: String::new(),
            hold_ms,
            resolve_after_ms,
        }
    }

    fn ops(repeat_ms: u64) -> Vec<Recipient> {
        vec![Recipient {
            name: "ops".into(),
            severities: Vec::new(),
            repeat_ms,
        }]
    }

    /// Runs `values` one per second; returns (second, status) of every notice.
    fn run(
        engine: &mut AlertEngine,
        values: &[f64],
        hold: u64,
        resolve: u64,
    ) -> Vec<(u64, &'static str)> {
        let mut out = Vec::new();
        for (t, value) in values.iter().enumerate() {
            let now = t as u64 * 1000;
            for notice in engine.evaluate(
                now,
                vec![seen(*value, 500.0, hold, resolve)],
                &ops(3_600_000),
            ) {
                out.push((t as u64, notice.status));
            }
        }
        out
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved_after_resolve_after() {
        let mut engine = AlertEngine::default();
        // Over the threshold from second 2 to second 9; `for` 3 s, resolve after 2 s.
        let values: Vec<f64> = (0..16)
            .map(|t| if (2..10).contains(&t) { 600.0 } else { 100.0 })
            .collect();
        let notices = run(&mut engine, &values, 3000, 2000);
        // Pending at 2, firing at 5; first clear second is 10, resolved at 12.
        assert_eq!(notices, vec![(5, "firing"), (12, "resolved")]);
        let statuses: Vec<&str> = engine.events().map(|e| e.status).collect();
        assert_eq!(statuses, vec!["firing", "resolved"]);
    }

    #[test]
    fn a_signal_hovering_at_the_threshold_does_not_flap() {
        let mut engine = AlertEngine::default();
        // At the threshold with ±1 % noise, alternating: never 3 s over in a row.
        let values: Vec<f64> = (0..600)
            .map(|t| if t % 2 == 0 { 505.0 } else { 495.0 })
            .collect();
        assert!(run(&mut engine, &values, 3000, 3000).is_empty());
        // Once firing, the same hovering does not resolve it and fire it again.
        let mut engine = AlertEngine::default();
        let mut values = vec![600.0; 5];
        values.extend((0..600).map(|t| if t % 3 == 0 { 495.0 } else { 505.0 }));
        assert_eq!(run(&mut engine, &values, 3000, 3000), vec![(3, "firing")]);
    }

    #[test]
    fn repeats_follow_the_interval_and_silences_hold() {
        let mut engine = AlertEngine::default();
        let recipients = ops(10_000);
        let mut sent = Vec::new();
        engine.silence(
            "p99".into(),
            Some("api".into()),
            0,
            25_000,
            "deploying".into(),
        );
        for t in 0..60u64 {
            for notice in engine.evaluate(t * 1000, vec![seen(600.0, 500.0, 0, 0)], &recipients) {
                sent.push((t, notice.status, notice.repeat));
            }
        }
        // Silenced until 25 s: the first notice is at 25 s, then every 10 s.
        assert_eq!(
            sent,
            vec![
                (25, "firing", false),
                (35, "firing", true),
                (45, "firing", true),
                (55, "firing", true)
            ]
        );
        // The history still shows when it fired, marked silenced.
        let first = engine.events().next().unwrap();
        assert_eq!((first.at_ms, first.silenced), (0, true));
        assert!(engine.unsilence(1, 60_000));
        assert!(!engine.unsilence(9, 60_000));
    }

    #[test]
    fn a_rule_that_disappears_resolves() {
        let mut engine = AlertEngine::default();
        assert_eq!(
            engine
                .evaluate(0, vec![seen(600.0, 500.0, 0, 0)], &ops(1000))
                .len(),
            1
        );
        let notices = engine.evaluate(1000, Vec::new(), &ops(1000));
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].status, "resolved");
        assert_eq!(engine.alerts().count(), 0);
    }
}
