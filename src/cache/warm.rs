//! Cache warming: fetch a list of URLs through weir's own listener, so that they are
//! routed, fetched and stored exactly as client requests would be.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Each warming request gets this long.
const WARM_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone, Serialize)]
pub struct WarmReport {
    pub requested: usize,
    /// Answered 2xx (stored when cacheable).
    pub ok: usize,
    pub failed: usize,
    /// URLs that were not absolute http(s) URLs.
    pub invalid: usize,
    pub elapsed_ms: u64,
}

/// Fetches `urls` through the proxy at `proxy` with at most `concurrency` in flight,
/// logging progress every tenth.
pub async fn warm(urls: &[String], proxy: SocketAddr, concurrency: usize) -> WarmReport {
    let started = Instant::now();
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut report = WarmReport {
        requested: urls.len(),
        ..WarmReport::default()
    };
    for url in urls {
        let Some((host, target)) = split_url(url) else {
            tracing::warn!(url, "cache warming skipped an invalid URL");
            report.invalid += 1;
            continue;
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let client = client.clone();
        tasks.spawn(async move {
            let request = http::Request::get(format!("http://{proxy}{target}"))
                .header(http::header::HOST, host)
                .body(Empty::new());
            let Ok(request) = request else { return false };
            let fetched = tokio::time::timeout(WARM_TIMEOUT, async {
                let response = client.request(request).await.ok()?;
                let ok = response.status().is_success();
                // The body must be read whole for the cache to store it.
                response.into_body().collect().await.ok()?;
                Some(ok)
            })
            .await;
            drop(permit);
            matches!(fetched, Ok(Some(true)))
        });
    }
    let total = urls.len().max(1);
    let mut done = report.invalid;
    let mut next_log = total / 10;
    while let Some(result) = tasks.join_next().await {
        done += 1;
        if matches!(result, Ok(true)) {
            report.ok += 1;
        } else {
            report.failed += 1;
        }
        if done >= next_log && total >= 10 {
            tracing::info!(done, total, "cache warming");
            next_log += total / 10;
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        requested = report.requested,
        ok = report.ok,
        failed = report.failed,
        invalid = report.invalid,
        elapsed_ms = report.elapsed_ms,
        "cache warming finished"
    );
    report
}

/// `http://host/path?q` → (`host`, `/path?q`).
fn split_url(url: &str) -> Option<(String, String)> {
    let uri: http::Uri = url.parse().ok()?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return None;
    }
    let host = uri.authority()?.as_str().to_owned();
    let target = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    Some((host, target))
}
