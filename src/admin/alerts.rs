//! Alerts and SLOs on the admin port: what fires and why, the history, silences, and
//! each SLO's budget and burn rates.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::control::limit_from;
use super::{AdminContext, error, parse_body};

/// Events and deliveries returned when the query does not say.
const DEFAULT_EVENTS: usize = 100;
/// The longest silence the API sets (a forgotten silence hides real trouble).
const MAX_SILENCE: Duration = Duration::from_secs(7 * 86_400);

pub(super) async fn alerts(State(ctx): State<AdminContext>, RawQuery(query): RawQuery) -> Response {
    match limit_from(query.as_deref(), DEFAULT_EVENTS) {
        Ok(limit) => Json(ctx.supervisor.control().alerts_view(limit)).into_response(),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

pub(super) async fn slos(State(ctx): State<AdminContext>) -> Response {
    Json(serde_json::json!({ "slos": ctx.supervisor.control().slo_statuses() })).into_response()
}

/// `POST /api/v1/alerts/silences`: `{"rule": …, "pool": …, "duration": "2h", "comment": …}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceRequest {
    rule: String,
    /// The pool (or, for a route's cache rule, the route) to silence; absent: all.
    #[serde(default, alias = "route")]
    pool: Option<String>,
    #[serde(with = "humantime_serde")]
    duration: Duration,
    #[serde(default)]
    comment: String,
}

pub(super) async fn silence(State(ctx): State<AdminContext>, body: Bytes) -> Response {
    let request: SilenceRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if request.duration.is_zero() || request.duration > MAX_SILENCE {
        return error(
            StatusCode::BAD_REQUEST,
            "duration must be more than 0 and at most 7 days",
        );
    }
    let control = ctx.supervisor.control();
    let known = control
        .alerts_firing()
        .iter()
        .any(|(rule, _, _)| *rule == request.rule);
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no alert rule named {:?} (GET /api/v1/alerts lists them under rules)",
                request.rule
            ),
        );
    }
    let silence = control.silence(
        request.rule,
        request.pool,
        request.duration,
        request.comment,
    );
    (StatusCode::CREATED, Json(silence)).into_response()
}

pub(super) async fn unsilence(State(ctx): State<AdminContext>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a silence id"),
        );
    };
    if ctx.supervisor.control().unsilence(id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no silence {id}"))
    }
}
