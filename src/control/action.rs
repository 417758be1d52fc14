//! Running an action: the configured command (a JSON document on stdin, the essentials as
//! `WEIR_*` variables) or a POST of the document to a webhook, within a timeout. The
//! autoscaler acts on decisions through [`run`] (the outcome goes back into the decision
//! history); alert notifiers send through [`invoke`].

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::autoscaler::{ActionOutcome, Decision};
use crate::config::ActionConfig;

/// Bytes of a command's stderr or a webhook's reply kept in the outcome.
const DETAIL_BYTES: usize = 300;

/// One invocation of a command or webhook: the JSON it gets and the variables a command
/// is given besides.
#[derive(Debug)]
pub struct Call {
    pub json: Vec<u8>,
    pub env: Vec<(&'static str, String)>,
    /// Sent as the webhook's `User-Agent`.
    pub agent: &'static str,
}

/// Runs the command or posts to the webhook within the action's timeout: `Ok(detail)` on
/// exit 0 or a 2xx answer, `Err(detail)` otherwise.
pub async fn invoke(action: &ActionConfig, call: Call) -> Result<String, String> {
    let attempt = async {
        match &action.webhook {
            Some(url) => post(url, call.json, call.agent).await,
            None => command(&action.command, &call.env, call.json).await,
        }
    };
    match tokio::time::timeout(action.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "timed out after {}",
            humantime::format_duration(action.timeout)
        )),
    }
}

pub async fn run(action: &ActionConfig, decision: &Decision) -> ActionOutcome {
    let started = Instant::now();
    let call = Call {
        json: serde_json::to_vec(decision).unwrap_or_default(),
        env: vec![
            ("WEIR_POOL", decision.pool.clone()),
            ("WEIR_CURRENT", decision.current.to_string()),
            ("WEIR_DESIRED", decision.desired.to_string()),
            (
                "WEIR_DIRECTION",
                serde_json::to_value(decision.direction)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ),
            ("WEIR_RULE", decision.rule.clone()),
            ("WEIR_DRY_RUN", decision.dry_run.to_string()),
        ],
        agent: "weir-autoscaler",
    };
    let (ok, detail) = match invoke(action, call).await {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    if ok {
        tracing::info!(pool = %decision.pool, desired = decision.desired, %detail, "scaling action done");
    } else {
        tracing::warn!(pool = %decision.pool, desired = decision.desired, %detail, "scaling action failed");
    }
    ActionOutcome {
        ok,
        skipped: false,
        detail,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

async fn command(
    argv: &[String],
    env: &[(&'static str, String)],
    json: Vec<u8>,
) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("no command configured")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // A timed-out action must not outlive its timeout.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that ignores its stdin may close it early; that is not a failure.
        let _ = stdin.write_all(&json).await;
    }
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_end(&mut stderr).await;
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    let tail = tail(&stderr);
    if status.success() {
        Ok(format!("{program} exited 0{}", suffix(&tail)))
    } else {
        Err(format!("{program} {status}{}", suffix(&tail)))
    }
}

async fn post(url: &str, json: Vec<u8>, agent: &'static str) -> Result<String, String> {
    // Details go to logs, the decision history and the admin API: never the credentials a
    // webhook URL may carry (user:password@, ?token=).
    let shown = crate::config::redact_url(url);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http();
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, agent)
        .body(Full::new(Bytes::from(json)))
        .map_err(|e| format!("{shown}: {e}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{shown}: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let detail = format!("{shown} answered {status}{}", suffix(&tail(&body)));
    if status.is_success() {
        Ok(detail)
    } else {
        Err(detail)
    }
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text
        .char_indices()
        .map(|(i, _)| i)
        .find(|i| text.len() - i <= DETAIL_BYTES)
        .unwrap_or(text.len());
    text[start..].to_owned()
}

fn suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn webhook_urls_lose_credentials_and_query() {
        let redacted = crate::config::redact_url;
        assert_eq!(
            redacted("http://ops:hunter2@scaler.internal:8080/hooks/api?token=abc"),
            "http://scaler.internal:8080/hooks/api"
        );
        assert_eq!(redacted("http://scaler/x"), "http://scaler/x");
        assert_eq!(redacted("not a url"), "<webhook URL>");
    }
}
