//! The controller's alerting half: each tick's SLO and rule evaluation, the context an
//! alert carries, and what the admin API and metrics read (statuses, views, silences).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::{
    AlertingStats, Controller, RELOAD_CONTEXT, RELOADS_KEPT, alert, lock, report, rules, sample,
    slo, unix_ms,
};
use crate::config::ControlConfig;

impl Controller {
    /// Remembers a reload, as context for alerts that fire soon after.
    pub fn note_reload(&self, summary: String) {
        let mut reloads = lock(&self.reloads);
        reloads.push_back((unix_ms(SystemTime::now()), summary));
        while reloads.len() > RELOADS_KEPT {
            reloads.pop_front();
        }
    }

    /// Observes every SLO and alert rule, moves the alerts on, and hands their notices to
    /// the notifiers (which send in their own tasks).
    pub(super) fn evaluate_alerts(
        &self,
        config: &ControlConfig,
        snapshot: &crate::proxy::Snapshot,
        at_ms: u64,
    ) {
        let mut observations = rules::observe_slos(&lock(&self.slos));
        observations.extend(rules::observe_rules(config, &lock(&self.history)));
        let recipients: Vec<alert::Recipient> = config
            .notify
            .iter()
            .map(|n| alert::Recipient {
                name: n.name.clone(),
                severities: n.severities.clone(),
                repeat_ms: n.repeat_interval.as_millis() as u64,
            })
            .collect();
        let mut engine = lock(&self.alerts);
        let mut notices = engine.evaluate(at_ms, observations, &recipients);
        // Context is gathered once per alert that fired at this tick.
        let mut explained: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for alert in engine.alerts() {
            if alert.firing_since_ms == Some(at_ms) {
                let pool = match alert.observation.scope_label {
                    "pool" => alert.scope.as_str(),
                    _ => "",
                };
                explained.insert(
                    (alert.rule.clone(), alert.scope.clone()),
                    self.context(snapshot, pool, at_ms),
                );
            }
        }
        for ((rule, scope), context) in &explained {
            engine.set_context(rule, scope, context.clone());
        }
        drop(engine);
        for notice in &mut notices {
            let key = (notice.alert.rule.clone(), notice.alert.scope.clone());
            if let Some(context) = explained.get(&key) {
                notice.alert.context = context.clone();
            }
        }
        for notice in notices {
            if let Some(target) = config.notify.iter().find(|n| n.name == notice.recipient) {
                self.notifier.send(notice, target);
            }
        }
    }

    /// What weir knows around an alert on `pool` (all pools when empty): endpoints out of
    /// service, the autoscaler's last decision, the report's bottlenecks, recent reloads.
    fn context(&self, snapshot: &crate::proxy::Snapshot, pool: &str, at_ms: u64) -> Vec<String> {
        let mut context = Vec::new();
        for (name, live) in &snapshot.pools {
            if !pool.is_empty() && name != pool {
                continue;
            }
            let now_ms = live.now_ms();
            let out: Vec<String> = live
                .endpoints()
                .iter()
                .filter_map(|e| {
                    let state = e.state(now_ms);
                    (!matches!(
                        state,
                        crate::upstream::EndpointState::Healthy
                            | crate::upstream::EndpointState::SlowStart
                    ))
                    .then(|| format!("{} {}", e.address, state.as_str()))
                })
                .collect();
            if !out.is_empty() {
                context.push(format!(
                    "{name}: endpoints out of service: {}",
                    out.join(", ")
                ));
            }
        }
        if !pool.is_empty() {
            if let Some(decision) = lock(&self.scalers)
                .get(pool)
                .and_then(|s| s.last().cloned())
            {
                context.push(format!("autoscaler for {pool}: {}", decision.explanation));
            }
            let history = lock(&self.history);
            let hour_ago = at_ms.saturating_sub(3_600_000);
            let points: Vec<(u64, &sample::PoolSample)> = history
                .iter()
                .filter(|s| s.at_ms >= hour_ago)
                .filter_map(|s| {
                    s.pools
                        .iter()
                        .find(|p| p.pool == pool)
                        .map(|p| (s.at_ms, p))
                })
                .collect();
            context.extend(
                report::bottlenecks(pool, &points, None)
                    .into_iter()
                    .map(|b| format!("bottleneck: {b}")),
            );
        }
        let since = at_ms.saturating_sub(RELOAD_CONTEXT.as_millis() as u64);
        context.extend(
            lock(&self.reloads)
                .iter()
                .filter(|(at, _)| *at >= since)
                .map(|(_, summary)| summary.clone()),
        );
        context
    }

    /// Every SLO's standing now.
    pub fn slo_statuses(&self) -> Vec<slo::SloStatus> {
        lock(&self.slos).values().map(|t| t.status()).collect()
    }

    /// Each SLO's budget remaining over time (for the report's burn-down chart).
    pub fn slo_burn_down(&self) -> BTreeMap<String, Vec<(u64, f64)>> {
        lock(&self.slos)
            .iter()
            .map(|(name, t)| (name.clone(), t.burn_down()))
            .collect()
    }

    /// Alerts now (firing and pending), recent events (newest first), silences and the
    /// last deliveries.
    pub fn alerts_view(&self, limit: usize) -> serde_json::Value {
        let rules: Vec<serde_json::Value> = self
            .alerts_firing()
            .into_iter()
            .map(|(rule, severity, firing)| {
                serde_json::json!({ "rule": rule, "severity": severity, "firing": firing })
            })
            .collect();
        let engine = lock(&self.alerts);
        let alerts: Vec<&alert::Alert> = engine.alerts().collect();
        let (firing, pending): (Vec<_>, Vec<_>) = alerts
            .into_iter()
            .partition(|a| a.state == alert::AlertState::Firing);
        let events: Vec<&alert::AlertEvent> = engine.events().rev().take(limit).collect();
        let mut deliveries = self.notifier.log();
        deliveries.reverse();
        deliveries.truncate(limit);
        serde_json::json!({
            "rules": rules,
            "firing": firing,
            "pending": pending,
            "events": events,
            "silences": engine.silences(),
            "deliveries": deliveries,
            "deliveries_in_progress": self.notifier.pending(),
        })
    }

    /// The alert history, oldest first (for the report's timeline).
    pub fn alert_events(&self) -> Vec<alert::AlertEvent> {
        lock(&self.alerts).events().cloned().collect()
    }

    /// Per configured rule (burn alerts included): its severity and how many of its
    /// alerts fire now (for `weir_alerts_firing`).
    pub fn alerts_firing(&self) -> Vec<(String, String, usize)> {
        let config = self.config.load_full();
        let engine = lock(&self.alerts);
        let firing = |rule: &str| {
            engine
                .alerts()
                .filter(|a| a.rule == rule && a.state == alert::AlertState::Firing)
                .count()
        };
        let mut out = Vec::new();
        for slo in &config.slo {
            for burn in &slo.burn_alerts {
                let rule = rules::burn_rule_name(&slo.name, burn.factor, burn.long);
                let count = firing(&rule);
                out.push((rule, burn.severity.clone(), count));
            }
        }
        for rule in &config.alert {
            out.push((rule.name.clone(), rule.severity.clone(), firing(&rule.name)));
        }
        out
    }

    pub fn alerting_stats(&self) -> AlertingStats {
        AlertingStats {
            slos: self.slo_statuses(),
            rules: self.alerts_firing(),
            notifiers: self.notifier.all_counts(),
        }
    }

    /// Silences a rule (one pool of it, or all) for `duration` from now.
    pub fn silence(
        &self,
        rule: String,
        pool: Option<String>,
        duration: Duration,
        comment: String,
    ) -> alert::Silence {
        let now = unix_ms(SystemTime::now());
        let until = now.saturating_add(duration.as_millis() as u64);
        lock(&self.alerts).silence(rule, pool, now, until, comment)
    }

    /// Ends silence `id` now; false when there is none.
    pub fn unsilence(&self, id: u64) -> bool {
        lock(&self.alerts).unsilence(id, unix_ms(SystemTime::now()))
    }
}
