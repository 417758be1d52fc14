//! The admin port (axum): liveness and readiness probes, and a token-protected read-only
//! view of pools. It reads the state the data plane publishes and never sits in its path.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::AdminConfig;
use crate::proxy::ProxyState;
use crate::upstream::Pool;

#[derive(Clone)]
pub struct AdminContext {
    state: Arc<ProxyState>,
    /// `None`: no token configured, so the protected API refuses everyone.
    token: Option<Arc<str>>,
    draining: CancellationToken,
}

impl AdminContext {
    pub fn new(state: Arc<ProxyState>, config: &AdminConfig, draining: CancellationToken) -> Self {
        let token = config
            .token
            .clone()
            .or_else(|| std::env::var(&config.token_env).ok())
            .filter(|t| !t.is_empty())
            .map(Arc::from);
        if token.is_none() {
            tracing::warn!(
                env = %config.token_env,
                "admin API has no token (admin.token or the token_env variable); only /healthz and /readyz answer"
            );
        }
        Self {
            state,
            token,
            draining,
        }
    }
}

pub fn router(context: AdminContext) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/pools", get(pools))
        .with_state(context)
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, context: AdminContext, stop: CancellationToken) {
    let result = axum::serve(listener, router(context))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "admin listener failed");
    }
}

async fn readyz(State(ctx): State<AdminContext>) -> Response {
    if ctx.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn pools(State(ctx): State<AdminContext>, headers: HeaderMap) -> Response {
    if !authorized(&ctx, &headers) {
        return unauthorized();
    }
    let snapshot = ctx.state.snapshot.load();
    let pools: Vec<Value> = snapshot
        .pools
        .values()
        .map(|pool| pool_json(pool))
        .collect();
    Json(json!({ "pools": pools })).into_response()
}

/// Whether the request carries the configured bearer token.
/// A pool and its endpoints: each endpoint's state, why it is in it, and the inputs the
/// balancer uses.
fn pool_json(pool: &Pool) -> Value {
    let now = pool.now_ms();
    let endpoints: Vec<Value> = pool
        .endpoints()
        .iter()
        .map(|ep| {
            let s = &ep.stats;
            let responses = ep.total_responses();
            let mean_ms = if responses == 0 {
                0.0
            } else {
                s.latency_micros_total.load(Relaxed) as f64 / responses as f64 / 1000.0
            };
            let transition = ep.last_transition();
            json!({
                "address": ep.address,
                "weight": ep.weight(),
                "state": ep.state(now).as_str(),
                "reason": transition.reason,
                "since": humantime::format_rfc3339_seconds(transition.at).to_string(),
                "health_check_passing": ep.is_healthy_by_checks(),
                "breaker": ep.breaker_state(now).as_str(),
                "slow_start_factor": ep.slow_start_factor(now),
                "in_flight": ep.in_flight(),
                "latency_ewma_ms": ep.latency_ms(now),
                "error_rate": ep.error_rate(now),
                "failure_rate": ep.failure_rate(now),
                "score_cost": pool.cost(ep),
                "requests": s.requests.load(Relaxed),
                "responses": {
                    "1xx": s.responses[0].load(Relaxed),
                    "2xx": s.responses[1].load(Relaxed),
                    "3xx": s.responses[2].load(Relaxed),
                    "4xx": s.responses[3].load(Relaxed),
                    "5xx": s.responses[4].load(Relaxed),
                },
                "connect_errors": s.connect_errors.load(Relaxed),
                "timeouts": s.timeouts.load(Relaxed),
                "protocol_errors": s.protocol_errors.load(Relaxed),
                "ejections": s.ejections.load(Relaxed),
                "mean_latency_ms": mean_ms,
            })
        })
        .collect();
    let stats = &pool.stats;
    json!({
        "name": pool.name,
        "strategy": pool.strategy(),
        "in_flight": stats.in_flight.load(Relaxed),
        "requests": stats.requests.load(Relaxed),
        "retries": stats.retries.load(Relaxed),
        "retry_budget_exhausted": stats.retry_budget_exhausted.load(Relaxed),
        "panic_picks": stats.panic_picks.load(Relaxed),
        "capacity_rejections": stats.capacity_rejections.load(Relaxed),
        "endpoints": endpoints,
    })
}

fn authorized(ctx: &AdminContext, headers: &HeaderMap) -> bool {
    let Some(expected) = &ctx.token else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|presented| constant_time_eq(presented.as_bytes(), expected.as_bytes()))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "missing or wrong bearer token\n",
    )
        .into_response()
}

/// Compares without an early exit on the first differing byte (only the length leaks).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abc", b"abcdef"));
    }
}
