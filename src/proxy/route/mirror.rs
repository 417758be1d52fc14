//! Shadow traffic: copies of a share of a route's requests sent to another pool, their
//! answers read and discarded. A copy never delays or fails the real request: it starts
//! on its own task after the real one is on its way, at most `max_in_flight` run at once
//! (more are dropped and counted, never queued), and only bodies weir holds whole (up to
//! `max_body_bytes`) are copied.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;

use crate::config::MirrorConfig;
use crate::proxy::attempt::{self, AttemptPlan, Launch, Verdict};
use crate::proxy::body::UpstreamRequestBody;
use crate::upstream::signals::LatencyHistogram;
use crate::upstream::{Endpoint, Outcome, Pool, UpstreamBody};

/// Most of a mirrored response's body read before the connection is given up on.
const MAX_DRAINED_BYTES: usize = 1 << 20;

/// What happened to a route's copies, kept across reloads for routes of the same name.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Copies sent.
    pub sent: AtomicU64,
    /// Not sent: `max_in_flight` copies (or the pool's capacity) were busy.
    pub dropped_busy: AtomicU64,
    /// Not sent: the body was larger than `max_body_bytes`, of unknown length, or an
    /// upgrade.
    pub skipped_body: AtomicU64,
    /// Sent but not answered: no endpoint, connection failure, timeout.
    pub failed: AtomicU64,
    /// The mirror pool's answers by class, index 0 = 1xx … 4 = 5xx.
    pub responses: [AtomicU64; 5],
    /// Copy sent to its response head.
    pub latency: LatencyHistogram,
}

#[derive(Debug)]
pub struct Mirror {
    pub pool: Arc<Pool>,
    /// Chance a request is copied, 0–1.
    share: f64,
    pub max_body: u64,
    host: Option<HeaderValue>,
    slots: Arc<Semaphore>,
    pub stats: Arc<MirrorStats>,
}

/// A request as it goes to the real pool, to be copied.
pub struct MirrorRequest<'a> {
    pub method: &'a Method,
    pub path_and_query: &'a PathAndQuery,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    pub client: IpAddr,
}

impl Mirror {
    pub fn new(config: &MirrorConfig, pool: Arc<Pool>) -> Self {
        Self {
            pool,
            share: (config.percent / 100.0).clamp(0.0, 1.0),
            max_body: config.max_body_bytes,
            host: config
                .host
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok()),
            slots: Arc::new(Semaphore::new(config.max_in_flight as usize)),
            stats: Arc::default(),
        }
    }

    /// Whether this request is one of the share to copy.
    pub fn chosen(&self) -> bool {
        self.share >= 1.0 || (self.share > 0.0 && fastrand::f64() < self.share)
    }

    /// Counts a chosen request whose body cannot be copied.
    pub fn skip(&self) {
        self.stats.skipped_body.fetch_add(1, Relaxed);
    }

    /// Starts the copy on its own task, or drops it when too many are in flight.
    pub fn send(&self, request: MirrorRequest<'_>) {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            self.stats.dropped_busy.fetch_add(1, Relaxed);
            return;
        };
        let Ok(pool_slot) = self.pool.acquire_slot() else {
            self.stats.dropped_busy.fetch_add(1, Relaxed);
            return;
        };
        let mut headers = request.headers.clone();
        let host = self
            .host
            .clone()
            .or_else(|| headers.get(header::HOST).and_then(shadow_host));
        if let Some(host) = &host {
            headers.insert(header::HOST, host.clone());
        }
        let copy = Copy {
            pool: Arc::clone(&self.pool),
            stats: Arc::clone(&self.stats),
            method: request.method.clone(),
            path_and_query: request.path_and_query.clone(),
            headers,
            host,
            body: request.body,
            client: request.client,
        };
        self.stats.sent.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            copy.run().await;
            drop(pool_slot);
            drop(permit);
        });
    }
}

/// `api.example.com:8080` → `api.example.com-shadow:8080` (Envoy's convention, so that
/// the candidate can tell copies from real requests by their host).
fn shadow_host(host: &HeaderValue) -> Option<HeaderValue> {
    let host = host.to_str().ok()?;
    let (name, port) = super::split_port(host);
    let shadow = match port {
        Some(port) => format!("{name}-shadow:{port}"),
        None => format!("{name}-shadow"),
    };
    HeaderValue::from_str(&shadow).ok()
}

/// One copy on its way.
struct Copy {
    pool: Arc<Pool>,
    stats: Arc<MirrorStats>,
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    host: Option<HeaderValue>,
    body: Bytes,
    client: IpAddr,
}

impl Copy {
    async fn run(self) {
        let pool = &self.pool;
        let Ok(endpoint) = pool.pick(self.client, &self.headers, &[]) else {
            self.stats.failed.fetch_add(1, Relaxed);
            return;
        };
        let send = |endpoint: &Endpoint, request, keep| pool.send(endpoint, request, keep);
        let plan = AttemptPlan {
            pool,
            method: &self.method,
            path_and_query: &self.path_and_query,
            call_deadline: None,
            trace: None,
            recording: None,
            send_traceparent: false,
            send: &send,
        };
        let launch = Launch {
            endpoint,
            headers: self.headers.clone(),
            body: UpstreamRequestBody::buffered(self.body.clone()),
            number: 1,
            per_try: None,
            may_follow: false,
            host: self.host.clone(),
            keep_headers: false,
        };
        let Ok(attempt::Launched {
            mut attempt,
            pending,
            ..
        }) = attempt::launch(&plan, launch)
        else {
            self.stats.failed.fetch_add(1, Relaxed);
            return;
        };
        let sent = pending.head(pool, Arc::clone(&attempt.endpoint)).await;
        attempt.finish(&plan, &sent);
        let elapsed = attempt.elapsed;
        let Verdict::Judged { outcome, result } = attempt.verdict(sent) else {
            self.stats.failed.fetch_add(1, Relaxed);
            return;
        };
        let mut guard = attempt.guard;
        pool.report(&mut guard, outcome, elapsed);
        match result {
            Ok(response) => {
                self.record(response.status(), elapsed);
                drain(response.into_body(), pool.response_timeout).await;
            }
            Err(_) => {
                self.stats.failed.fetch_add(1, Relaxed);
                if outcome == Outcome::TimedOut {
                    tracing::debug!(pool = %pool.name, "mirrored request timed out");
                }
            }
        }
        drop(guard);
    }

    fn record(&self, status: StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.stats.responses[class].fetch_add(1, Relaxed);
        self.stats.latency.record(elapsed);
    }
}

/// Reads and drops a mirrored body (so the connection can be reused), up to a bound in
/// size and time.
async fn drain(mut body: UpstreamBody, limit: Duration) {
    let read = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > MAX_DRAINED_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(limit, read).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_hosts_keep_the_port() {
        let shadow = |h: &'static str| shadow_host(&HeaderValue::from_static(h)).unwrap();
        assert_eq!(shadow("api.example.com"), "api.example.com-shadow");
        assert_eq!(
            shadow("api.example.com:8080"),
            "api.example.com-shadow:8080"
        );
        assert_eq!(shadow("[::1]:8080"), "[::1]-shadow:8080");
    }
}
