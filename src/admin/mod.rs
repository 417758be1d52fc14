//! The admin port (axum): liveness and readiness probes, and the token-protected API —
//! pools and endpoint states, instance registration, drain, weights, and reload. It reads
//! the state the data plane publishes and changes it only through the [`Supervisor`].
//!
//! May import: the data plane, `control`, `metrics`, `registry`, `config` and `supervisor`;
//! never `app` (which starts it).

mod alerts;
mod control;
mod simulate;
mod views;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cache::PurgeTarget;
use crate::config::AdminConfig;
use crate::proxy::ProxyState;
use crate::registry::Registration;
use crate::supervisor::{InstanceError, Supervisor};
use serde::Deserialize;
use views::{cache_summary, instance_json, pool_json};

#[derive(Clone)]
pub struct AdminContext {
    supervisor: Arc<Supervisor>,
    state: Arc<ProxyState>,
    /// `None`: no token configured, so the protected API refuses everyone.
    token: Option<Arc<str>>,
    draining: CancellationToken,
}

impl AdminContext {
    pub fn new(
        supervisor: Arc<Supervisor>,
        config: &AdminConfig,
        draining: CancellationToken,
    ) -> Self {
        let state = Arc::clone(supervisor.state());
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
            supervisor,
            state,
            token,
            draining,
        }
    }
}

/// Largest request body the admin API reads.
const MAX_ADMIN_BODY: usize = 64 * 1024;

pub fn router(context: AdminContext) -> Router {
    let api = Router::new()
        .route("/api/v1/pools", get(pools))
        .route("/api/v1/pools/{pool}", get(one_pool))
        .route("/api/v1/instances/register", post(register))
        .route(
            "/api/v1/instances/{id}",
            get(instance).delete(deregister).patch(reweight),
        )
        .route("/api/v1/instances/{id}/drain", post(drain))
        .route("/api/v1/instances/{id}/load", post(control::instance_load))
        .route("/api/v1/pools/{pool}/scaling", get(control::scaling))
        .route("/api/v1/report", get(control::report_json))
        .route("/api/v1/alerts", get(alerts::alerts))
        .route("/api/v1/alerts/silences", post(alerts::silence))
        .route(
            "/api/v1/alerts/silences/{id}",
            axum::routing::delete(alerts::unsilence),
        )
        .route("/api/v1/slos", get(alerts::slos))
        .route("/api/v1/simulate", post(simulate::simulate))
        .route("/api/v1/report.html", get(control::report_html))
        .route("/api/v1/routes", get(routes))
        .route(
            "/api/v1/routes/{route}/split",
            axum::routing::put(set_split),
        )
        .route("/api/v1/reload", post(reload).get(last_reload))
        .route("/api/v1/cache", get(cache_stats))
        .route("/api/v1/cache/purge", post(cache_purge))
        .route("/api/v1/cache/warm", post(cache_warm))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            context.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(api)
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY))
        .with_state(context)
}

async fn require_token(
    State(ctx): State<AdminContext>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if authorized(&ctx, request.headers()) {
        next.run(request).await
    } else {
        unauthorized()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Parses a JSON body; the error says what is wrong, for a 400.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

fn instance_error(err: InstanceError) -> Response {
    let status = match err {
        InstanceError::UnknownPool(_) | InstanceError::UnknownInstance(_) => StatusCode::NOT_FOUND,
        InstanceError::Invalid(_) => StatusCode::BAD_REQUEST,
        InstanceError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, err.to_string())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    pool: String,
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
    zone: Option<String>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    crate::config::defaults::DEFAULT_WEIGHT
}

async fn register(State(ctx): State<AdminContext>, body: Bytes) -> Response {
    let body: RegisterBody = match parse_body(&body) {
        Ok(body) => body,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let registration = Registration {
        pool: body.pool,
        address: body.address,
        weight: body.weight,
        zone: body.zone,
        metadata: body.metadata,
    };
    match ctx.supervisor.register(registration) {
        Ok(endpoint) => match ctx.supervisor.find(&endpoint.id) {
            Some((pool, endpoint)) => (
                StatusCode::CREATED,
                Json(instance_json(&ctx.supervisor, &pool, &endpoint)),
            )
                .into_response(),
            None => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "registered, then not found",
            ),
        },
        Err(err) => instance_error(err),
    }
}

async fn instance(State(ctx): State<AdminContext>, Path(id): Path<String>) -> Response {
    match ctx.supervisor.find(&id) {
        Some((pool, endpoint)) => {
            Json(instance_json(&ctx.supervisor, &pool, &endpoint)).into_response()
        }
        None => instance_error(InstanceError::UnknownInstance(id)),
    }
}

async fn deregister(State(ctx): State<AdminContext>, Path(id): Path<String>) -> Response {
    let pool_name = ctx.supervisor.find(&id).map(|(p, _)| p.name.clone());
    match ctx.supervisor.deregister(&id) {
        Ok((endpoint, was_registered)) => {
            let mut body = json!({
                "id": id,
                "pool": pool_name,
                "address": endpoint.address,
                "removed": true,
                "in_flight": endpoint.in_flight(),
            });
            if !was_registered {
                body["note"] =
                    json!("this endpoint is in the config file and comes back on the next reload");
            }
            Json(body).into_response()
        }
        Err(err) => instance_error(err),
    }
}

async fn drain(State(ctx): State<AdminContext>, Path(id): Path<String>) -> Response {
    match ctx.supervisor.drain(&id) {
        Ok(_) => match ctx.supervisor.find(&id) {
            Some((pool, endpoint)) => (
                StatusCode::ACCEPTED,
                Json(instance_json(&ctx.supervisor, &pool, &endpoint)),
            )
                .into_response(),
            None => instance_error(InstanceError::UnknownInstance(id)),
        },
        Err(err) => instance_error(err),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

async fn reweight(
    State(ctx): State<AdminContext>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let body: WeightBody = match parse_body(&body) {
        Ok(body) => body,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match ctx.supervisor.set_weight(&id, body.weight) {
        Ok(_) => match ctx.supervisor.find(&id) {
            Some((pool, endpoint)) => {
                Json(instance_json(&ctx.supervisor, &pool, &endpoint)).into_response()
            }
            None => instance_error(InstanceError::UnknownInstance(id)),
        },
        Err(err) => instance_error(err),
    }
}

/// Every route in match order, with its split and mirror.
async fn routes(State(ctx): State<AdminContext>) -> Response {
    let snapshot = ctx.state.snapshot.load();
    let list: Vec<Value> = snapshot
        .router
        .routes()
        .iter()
        .map(views::route_json)
        .collect();
    Json(json!({ "routes": list })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitBody {
    /// Pool name → new weight; pools not named keep theirs.
    weights: std::collections::BTreeMap<String, u32>,
}

async fn set_split(
    State(ctx): State<AdminContext>,
    Path(route): Path<String>,
    body: Bytes,
) -> Response {
    let body: SplitBody = match parse_body(&body) {
        Ok(body) => body,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let weights: Vec<(String, u32)> = body.weights.into_iter().collect();
    match ctx.supervisor.set_split_weights(&route, &weights) {
        Ok(()) => {
            let snapshot = ctx.state.snapshot.load();
            match snapshot.router.routes().iter().find(|r| *r.name == *route) {
                Some(found) => Json(views::route_json(found)).into_response(),
                None => error(StatusCode::NOT_FOUND, format!("no route named {route:?}")),
            }
        }
        Err(err @ crate::supervisor::SplitChangeError::UnknownRoute(_)) => {
            error(StatusCode::NOT_FOUND, err.to_string())
        }
        Err(err) => error(StatusCode::BAD_REQUEST, err.to_string()),
    }
}

async fn reload(State(ctx): State<AdminContext>) -> Response {
    let report = ctx.supervisor.reload().await;
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, Json(report)).into_response()
}

async fn last_reload(State(ctx): State<AdminContext>) -> Response {
    Json(json!({
        "reloads_ok": ctx.supervisor.reloads_ok.load(Relaxed),
        "reloads_failed": ctx.supervisor.reloads_failed.load(Relaxed),
        "last": ctx.supervisor.last_reload(),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    key: Option<String>,
    prefix: Option<String>,
    tag: Option<String>,
    /// Mark stale (served while revalidating, or on error) instead of removing.
    #[serde(default)]
    soft: bool,
}

fn cache_of(ctx: &AdminContext) -> Result<Arc<crate::cache::Cache>, Box<Response>> {
    ctx.state.snapshot.load().cache.clone().ok_or_else(|| {
        Box::new(error(
            StatusCode::CONFLICT,
            "the cache is not enabled ([cache] enabled = true)",
        ))
    })
}

async fn cache_purge(State(ctx): State<AdminContext>, body: Bytes) -> Response {
    let body: PurgeBody = match parse_body(&body) {
        Ok(body) => body,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let target = match (body.key, body.prefix, body.tag) {
        (Some(k), None, None) if !k.is_empty() => PurgeTarget::Key(k),
        (None, Some(p), None) if !p.is_empty() => PurgeTarget::Prefix(p),
        (None, None, Some(t)) if !t.is_empty() => PurgeTarget::Tag(t),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one non-empty \"key\", \"prefix\" or \"tag\"".to_owned(),
            );
        }
    };
    let cache = match cache_of(&ctx) {
        Ok(cache) => cache,
        Err(response) => return *response,
    };
    let report = cache.purge(&target, body.soft).await;
    tracing::info!(
        ?target,
        soft = body.soft,
        memory = report.memory,
        redis = report.redis,
        "cache purge"
    );
    Json(json!({ "target": target, "report": report })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmBody {
    urls: Vec<String>,
}

/// Most URLs one warm request may name (bigger lists: several requests).
const MAX_WARM_URLS: usize = 10_000;

async fn cache_warm(State(ctx): State<AdminContext>, body: Bytes) -> Response {
    let body: WarmBody = match parse_body(&body) {
        Ok(body) => body,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if body.urls.len() > MAX_WARM_URLS {
        return error(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_WARM_URLS} urls per request"),
        );
    }
    if let Err(response) = cache_of(&ctx) {
        return *response;
    }
    match ctx.supervisor.warm_cache(&body.urls).await {
        Some(report) => Json(report).into_response(),
        None => error(
            StatusCode::CONFLICT,
            "no plain-HTTP listener to warm through".to_owned(),
        ),
    }
}

async fn cache_stats(State(ctx): State<AdminContext>) -> Response {
    let cache = match cache_of(&ctx) {
        Ok(cache) => cache,
        Err(response) => return *response,
    };
    Json(cache_summary(&cache)).into_response()
}

async fn metrics(State(ctx): State<AdminContext>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            let scalers = ctx.supervisor.control().scaler_stats();
            let alerting = ctx.supervisor.control().alerting_stats();
            crate::metrics::render(crate::metrics::Sources {
                proxy: &ctx.state,
                reloads_ok: ctx.supervisor.reloads_ok.load(Relaxed),
                reloads_failed: ctx.supervisor.reloads_failed.load(Relaxed),
                scalers: &scalers,
                alerting: &alerting,
            })
        },
    )
        .into_response()
}

async fn one_pool(State(ctx): State<AdminContext>, Path(name): Path<String>) -> Response {
    let snapshot = ctx.state.snapshot.load();
    match snapshot.pools.get(&name) {
        Some(pool) => Json(pool_json(pool)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("unknown pool {name:?}")),
    }
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

async fn pools(State(ctx): State<AdminContext>) -> Response {
    let snapshot = ctx.state.snapshot.load();
    let pools: Vec<Value> = snapshot
        .pools
        .values()
        .map(|pool| pool_json(pool))
        .collect();
    Json(json!({ "pools": pools })).into_response()
}

/// Whether the request carries the configured bearer token.
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
