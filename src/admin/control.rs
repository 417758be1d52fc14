//! The control loop on the admin port: autoscaler state and history per pool, capacity
//! reports (JSON and HTML), and instances reporting their own load.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{AdminContext, error, parse_body};
use crate::control::sample::InstanceLoad;

/// Decisions returned when the query does not say.
const DEFAULT_HISTORY_LIMIT: usize = 50;

pub(super) async fn scaling(
    State(ctx): State<AdminContext>,
    Path(pool): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if !ctx.state.snapshot.load().pools.contains_key(&pool) {
        return error(StatusCode::NOT_FOUND, format!("unknown pool {pool:?}"));
    }
    let limit = match limit_from(query.as_deref(), DEFAULT_HISTORY_LIMIT) {
        Ok(limit) => limit,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match ctx.supervisor.control().scaling(&pool, limit) {
        Some(body) => Json(body).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("pool {pool:?} has no autoscaler (add a [[control.autoscale]] table for it)"),
        ),
    }
}

/// The `limit=N` of a query string, or `default`; why not when it is not a count.
pub(super) fn limit_from(query: Option<&str>, default: usize) -> Result<usize, String> {
    match query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit="))) {
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| format!("limit={text:?} is not a count")),
        None => Ok(default),
    }
}

pub(super) async fn report_json(State(ctx): State<AdminContext>) -> Response {
    let control = std::sync::Arc::clone(ctx.supervisor.control());
    // Forecasting and fitting take a while on a long history: off the async workers.
    match tokio::task::spawn_blocking(move || control.report()).await {
        Ok(report) => Json(report).into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

pub(super) async fn report_html(State(ctx): State<AdminContext>) -> Response {
    let control = std::sync::Arc::clone(ctx.supervisor.control());
    match tokio::task::spawn_blocking(move || crate::control::html::render(&control.report())).await
    {
        Ok(page) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

pub(super) async fn instance_load(
    State(ctx): State<AdminContext>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let load: InstanceLoad = match parse_body(&body) {
        Ok(load) => load,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let fraction_ok = |v: Option<f64>| v.is_none_or(|v| (0.0..=1.0).contains(&v));
    if !fraction_ok(load.cpu) || !fraction_ok(load.memory) {
        return error(
            StatusCode::BAD_REQUEST,
            "cpu and memory are fractions from 0 to 1",
        );
    }
    if load.queue.is_some_and(|q| !(q >= 0.0 && q.is_finite())) {
        return error(StatusCode::BAD_REQUEST, "queue must be 0 or more");
    }
    let Some((pool, endpoint)) = ctx.supervisor.find(&id) else {
        return error(StatusCode::NOT_FOUND, format!("unknown instance {id:?}"));
    };
    ctx.supervisor
        .control()
        .report_load(&endpoint.address, load);
    Json(serde_json::json!({ "id": id, "pool": pool.name, "address": endpoint.address, "load": load }))
        .into_response()
}
