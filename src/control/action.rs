//! Acting on a decision: run the configured command (decision as JSON on stdin, the
//! essentials as `WEIR_*` variables) or POST it to a webhook, within a timeout. The
//! outcome goes back into the decision history.

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

pub async fn run(action: &ActionConfig, decision: &Decision) -> ActionOutcome {
    let started = Instant::now();
    let json = serde_json::to_vec(decision).unwrap_or_default();
    let result = if let Some(url) = &action.webhook {
        tokio::time::timeout(action.timeout, post(url, json)).await
    } else {
        tokio::time::timeout(action.timeout, command(&action.command, decision, json)).await
    };
    let (ok, detail) = match result {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (
            false,
            format!(
                "timed out after {}",
                humantime::format_duration(action.timeout)
            ),
        ),
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

async fn command(argv: &[String], decision: &Decision, json: Vec<u8>) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("no command configured")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("WEIR_POOL", &decision.pool)
        .env("WEIR_CURRENT", decision.current.to_string())
        .env("WEIR_DESIRED", decision.desired.to_string())
        .env(
            "WEIR_DIRECTION",
            serde_json::to_value(decision.direction)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        )
        .env("WEIR_RULE", &decision.rule)
        .env("WEIR_DRY_RUN", decision.dry_run.to_string())
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

async fn post(url: &str, json: Vec<u8>) -> Result<String, String> {
    // Details go to logs, the decision history and the admin API: never the credentials a
    // webhook URL may carry (user:password@, ?token=).
    let shown = crate::config::redact_url(url);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http();
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "weir-autoscaler")
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
