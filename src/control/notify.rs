//! Sending alert notices: each in its own task (so a slow or dead receiver never delays
//! sampling), with a timeout per attempt, bounded retries with doubling backoff, at most
//! [`MAX_PENDING`] deliveries at a time, and a bounded log of how each went.
//!
//! The JSON is Alertmanager's webhook format (version 4), which its receivers (PagerDuty
//! and Opsgenie bridges, `alertmanager-webhook-*` relays) take as is, plus a top-level
//! `text` line that Slack-style incoming webhooks post, and a `weir` object with the full
//! explanation.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};

use super::action::{self, Call};
use super::alert::Notice;
use super::lock;
use crate::config::NotifyConfig;

/// Deliveries in progress at most; more are dropped (and counted), never queued without end.
pub const MAX_PENDING: usize = 64;
/// Deliveries kept in the log.
const LOG_KEPT: usize = 200;

/// How one notice's delivery went.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub at_ms: u64,
    pub notifier: String,
    pub rule: String,
    pub scope: String,
    /// `firing` or `resolved`.
    pub status: &'static str,
    pub ok: bool,
    pub attempts: u32,
    pub detail: String,
    pub elapsed_ms: u64,
}

/// Per notifier: notices delivered, failed after every retry, and dropped when too many
/// were in progress.
#[derive(Debug, Default)]
pub struct NotifierCounts {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Notifier {
    pending: Arc<AtomicUsize>,
    counts: Mutex<BTreeMap<String, Arc<NotifierCounts>>>,
    log: Arc<Mutex<VecDeque<Delivery>>>,
}

impl Notifier {
    fn counts(&self, notifier: &str) -> Arc<NotifierCounts> {
        Arc::clone(lock(&self.counts).entry(notifier.to_owned()).or_default())
    }

    /// Starts delivering `notice` to `config` in the background (needs a tokio runtime;
    /// without one the notice is counted as dropped).
    pub fn send(&self, notice: Notice, config: &NotifyConfig) {
        let counts = self.counts(&config.name);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            counts.dropped.fetch_add(1, Relaxed);
            return;
        };
        if self.pending.fetch_add(1, Relaxed) >= MAX_PENDING {
            self.pending.fetch_sub(1, Relaxed);
            counts.dropped.fetch_add(1, Relaxed);
            tracing::warn!(notifier = %config.name, rule = %notice.alert.rule, "alert notice dropped: {MAX_PENDING} deliveries already in progress");
            return;
        }
        let pending = Arc::clone(&self.pending);
        let log = Arc::clone(&self.log);
        let config = config.clone();
        runtime.spawn(async move {
            let delivery = deliver(&notice, &config).await;
            if delivery.ok {
                counts.delivered.fetch_add(1, Relaxed);
                tracing::info!(notifier = %config.name, rule = %notice.alert.rule, status = notice.status, attempts = delivery.attempts, "alert notice sent");
            } else {
                counts.failed.fetch_add(1, Relaxed);
                tracing::warn!(notifier = %config.name, rule = %notice.alert.rule, status = notice.status, attempts = delivery.attempts, detail = %delivery.detail, "alert notice failed");
            }
            let mut log = lock(&log);
            log.push_back(delivery);
            while log.len() > LOG_KEPT {
                log.pop_front();
            }
            pending.fetch_sub(1, Relaxed);
        });
    }

    /// Deliveries still in progress.
    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    pub fn log(&self) -> Vec<Delivery> {
        lock(&self.log).iter().cloned().collect()
    }

    pub fn all_counts(&self) -> Vec<(String, Arc<NotifierCounts>)> {
        lock(&self.counts)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }
}

async fn deliver(notice: &Notice, config: &NotifyConfig) -> Delivery {
    let started = Instant::now();
    let action = config.action();
    let json = serde_json::to_vec(&payload(notice)).unwrap_or_default();
    let mut attempts = 0;
    let mut backoff = config.retry_backoff;
    let result = loop {
        attempts += 1;
        let call = Call {
            json: json.clone(),
            env: environment(notice),
            agent: "weir-alerts",
        };
        match action::invoke(&action, call).await {
            Ok(detail) => break Ok(detail),
            Err(detail) if attempts > config.retries => break Err(detail),
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    };
    let (ok, detail) = match result {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    Delivery {
        at_ms: super::unix_ms(std::time::SystemTime::now()),
        notifier: config.name.clone(),
        rule: notice.alert.rule.clone(),
        scope: notice.alert.scope.clone(),
        status: notice.status,
        ok,
        attempts,
        detail,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

fn environment(notice: &Notice) -> Vec<(&'static str, String)> {
    let alert = &notice.alert;
    let scoped = |label: &str| {
        if alert.observation.scope_label == label {
            alert.scope.clone()
        } else {
            String::new()
        }
    };
    vec![
        ("WEIR_ALERT_RULE", alert.rule.clone()),
        ("WEIR_ALERT_STATUS", notice.status.to_owned()),
        ("WEIR_ALERT_SEVERITY", alert.observation.severity.clone()),
        ("WEIR_ALERT_POOL", scoped("pool")),
        ("WEIR_ALERT_ROUTE", scoped("route")),
        ("WEIR_ALERT_DETAIL", alert.observation.detail.clone()),
    ]
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The notice as Alertmanager's webhook document, with `text` and `weir` added.
pub fn payload(notice: &Notice) -> Value {
    let alert = &notice.alert;
    let observation = &alert.observation;
    let mut labels = serde_json::Map::new();
    labels.insert("alertname".into(), json!(alert.rule));
    labels.insert("severity".into(), json!(observation.severity));
    labels.insert("kind".into(), json!(observation.kind));
    if !alert.scope.is_empty() {
        labels.insert(observation.scope_label.into(), json!(alert.scope));
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert("description".into(), json!(observation.detail));
    if !observation.summary.is_empty() {
        annotations.insert("summary".into(), json!(observation.summary));
    }
    if !alert.context.is_empty() {
        annotations.insert("context".into(), json!(alert.context.join("\n")));
    }
    let starts = alert.firing_since_ms.unwrap_or(alert.pending_since_ms);
    let ends = notice
        .resolved_ms
        .map_or_else(|| "0001-01-01T00:00:00Z".to_owned(), rfc3339);
    let fingerprint = format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(format!("{}\u{0}{}", alert.rule, alert.scope).as_bytes())
    );
    let scope = if alert.scope.is_empty() {
        String::new()
    } else {
        format!(" ({})", alert.scope)
    };
    let text = format!(
        "[{}] {}{scope} {}: {}",
        notice.status.to_uppercase(),
        alert.rule,
        observation.severity,
        observation.detail
    );
    json!({
        "version": "4",
        "groupKey": format!("weir:{}:{}", alert.rule, alert.scope),
        "truncatedAlerts": 0,
        "status": notice.status,
        "receiver": notice.recipient,
        "groupLabels": { "alertname": alert.rule },
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": notice.status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(starts),
            "endsAt": ends,
            "generatorURL": "",
            "fingerprint": fingerprint,
        }],
        "text": text,
        "weir": {
            "repeat": notice.repeat,
            "observation": observation,
            "context": alert.context,
            "firing_since": alert.firing_since_ms.map(rfc3339),
        },
    })
}
