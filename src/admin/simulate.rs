//! `POST /api/v1/simulate`: what weir would do with a request, without doing it. Which
//! route takes it and why (each route tried before, with the check that failed), whether
//! the client may use it, the pool and each endpoint's state and cost, the endpoint the
//! balancer would pick now, the cache key and whether a fresh answer is in memory, and
//! the rate-limit bucket. Nothing is sent upstream, no rotation turns, no counter moves.

use std::net::IpAddr;
use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminContext, error, parse_body};
use crate::proxy::normalize::normalize_path;
use crate::proxy::route::conditions::RouteRequest;
use crate::proxy::route::{Action, Route};
use crate::upstream::Pool;

/// The request to simulate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulatedRequest {
    #[serde(default = "d_method")]
    method: String,
    #[serde(default)]
    host: String,
    /// Path and query, e.g. `/v1/items?id=3`.
    path: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// The client's address as weir would resolve it (PROXY protocol, trusted
    /// `X-Forwarded-For`); loopback when absent.
    #[serde(default = "d_client")]
    client: IpAddr,
}

fn d_method() -> String {
    "GET".into()
}

fn d_client() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

pub(super) async fn simulate(State(ctx): State<AdminContext>, body: Bytes) -> Response {
    let request: SimulatedRequest = match parse_body(&body) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let Ok(method) = Method::from_bytes(request.method.as_bytes()) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a method", request.method),
        );
    };
    let (raw_path, query) = match request.path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.path.as_str(), None),
    };
    if !raw_path.starts_with('/') {
        return error(StatusCode::BAD_REQUEST, "path must start with /");
    }
    let path = match normalize_path(raw_path) {
        Ok(path) => path.into_owned(),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{raw_path:?} is a path weir refuses (400)"),
            );
        }
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("header {name:?} is not a valid field"),
            );
        };
        headers.append(name, value);
    }
    let host = if request.host.is_empty() {
        headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    } else {
        request.host.clone()
    };
    let routed = RouteRequest {
        host: &host,
        path: &path,
        method: &method,
        headers: &headers,
        query,
        client: request.client,
    };
    let snapshot = ctx.state.snapshot.load();
    let verdicts = snapshot.router.explain(&routed);
    let mut answer = json!({
        "request": {
            "method": method.as_str(),
            "host": host,
            "path": path,
            "query": query,
            "client": request.client.to_string(),
        },
        "routes_tried": verdicts,
    });
    let Some(route) = snapshot.router.find(&routed) else {
        answer["outcome"] = json!("no route matches: weir answers 404");
        return Json(answer).into_response();
    };
    answer["route"] = json!(route.name.as_ref());
    if !route.access.permits(request.client) {
        answer["outcome"] = json!(format!(
            "route {} does not allow client {}: weir answers 403",
            route.name, request.client
        ));
        return Json(answer).into_response();
    }
    answer["rate_limit"] = match &route.rate_limit {
        Some(limiter) => json!(limiter.bucket_of(request.client, &headers)),
        None => Value::Null,
    };
    match &route.action {
        Action::Redirect(redirect) => {
            answer["outcome"] = json!(format!(
                "redirect {} to {}",
                redirect.status(&method).as_u16(),
                redirect
                    .location(&routed, "http")
                    .and_then(|l| l.to_str().ok().map(str::to_owned))
                    .unwrap_or_else(|| "(no location)".into())
            ));
        }
        Action::Respond(fixed) => {
            answer["outcome"] = json!(format!("weir answers {} itself", fixed.status().as_u16()));
        }
        Action::Forward(split) => {
            let sides: Vec<Value> = split
                .sides()
                .iter()
                .map(|side| {
                    let mut view = pool_view(&side.pool, request.client, &headers);
                    view["weight"] = json!(side.weight());
                    view
                })
                .collect();
            answer["outcome"] = json!(if sides.len() > 1 {
                "forward to one of the split's pools (chosen per request by weight)"
            } else {
                "forward"
            });
            answer["pools"] = json!(sides);
            answer["cache"] = cache_view(
                &snapshot,
                route,
                CacheQuery {
                    method: &method,
                    host: &host,
                    path: &path,
                    query,
                    headers: &headers,
                },
            );
        }
    }
    Json(answer).into_response()
}

/// A pool's endpoints (state, in flight, the strategy's cost) and its pick right now.
fn pool_view(pool: &Pool, client: IpAddr, headers: &HeaderMap) -> Value {
    let now = pool.now_ms();
    let endpoints: Vec<Value> = pool
        .endpoints()
        .iter()
        .map(|endpoint| {
            json!({
                "address": endpoint.address,
                "state": endpoint.state(now).as_str(),
                "weight": endpoint.weight(),
                "in_flight": endpoint.in_flight(),
                "cost": pool.cost(endpoint),
            })
        })
        .collect();
    let pick = match pool.preview_pick(client, headers) {
        Ok(endpoint) => json!(endpoint.address),
        Err(err) => json!(format!("none: {err}")),
    };
    json!({
        "pool": pool.name,
        "strategy": pool.strategy(),
        "endpoints": endpoints,
        "would_pick": pick,
    })
}

/// The parts of a request the cache looks at.
struct CacheQuery<'a> {
    method: &'a Method,
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
}

fn cache_view(snapshot: &crate::proxy::Snapshot, route: &Route, request: CacheQuery<'_>) -> Value {
    let (Some(cache), Some(policy)) = (&snapshot.cache, &route.cache) else {
        return json!({ "caches": false });
    };
    if !matches!(*request.method, Method::GET | Method::HEAD) {
        return json!({ "caches": false, "why": "only GET and HEAD are answered from the cache" });
    }
    let key = policy
        .key
        .primary(request.host, request.path, request.query, request.headers);
    let now = SystemTime::now();
    let stored = cache.peek_memory(policy, &key, request.headers).map(|stored| {
        json!({
            "status": stored.status.as_u16(),
            "fresh": stored.is_fresh_at(now) && !stored.policy.is_stale(now),
            "stale_for_s": stored.staleness(now).as_secs_f64(),
            "kept_for_s": stored.keep_for(now).as_secs_f64(),
            "answered_without_upstream": crate::cache::policy::plainly_fresh(&stored, request.headers, now),
        })
    });
    json!({
        "caches": true,
        "key": key,
        "tiers": { "memory": policy.memory, "redis": policy.redis },
        "in_memory": stored,
        "note": "only the memory tier is read: the simulation sends nothing to Redis",
    })
}
