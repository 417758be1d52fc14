//! The admin API's JSON views of live state: pools and their endpoints, one instance, the
//! cache's counters.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use crate::cache::Cache;
use crate::supervisor::Supervisor;
use crate::upstream::{Endpoint, EndpointState, Pool};

/// A pool and its endpoints: each endpoint's state, why it is in it, and the inputs the
/// balancer uses.
pub(super) fn pool_json(pool: &Pool) -> Value {
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
                "id": ep.id,
                "address": ep.address,
                "discovered_by": ep.discovered_by.as_deref(),
                "weight": ep.weight(),
                "state": ep.state(now).as_str(),
                "reason": transition.reason,
                "since": humantime::format_rfc3339_seconds(transition.at).to_string(),
                "health_check_passing": ep.is_healthy_by_checks(),
                "breaker": ep.breaker_state(now).as_str(),
                "slow_start_factor": ep.slow_start_factor(now),
                "in_flight": ep.in_flight(),
                "head_wait_ms": ep.head_wait_ms(now),
                "abandoned_waiting": ep.abandoned_waiting(),
                "stalled": ep.is_stalled(now),
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
    let discovery: Vec<Value> = pool
        .discovery()
        .iter()
        .map(|source| {
            let s = &source.stats;
            json!({
                "entry": &*source.label,
                "endpoints": s.endpoints.load(Relaxed),
                "answers": s.answers.load(Relaxed),
                "failures": s.failures.load(Relaxed),
                "last_error": s.last_error.lock().ok().and_then(|e| e.clone()),
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
        "hedges": stats.hedges.load(Relaxed),
        "hedges_won": stats.hedges_won.load(Relaxed),
        "hung_ejections": stats.hung_ejections.load(Relaxed),
        "hedge_delay_ms": pool
            .hedging
            .as_ref()
            .and_then(|h| h.delay(pool.now_ms()))
            .map(|d| d.as_secs_f64() * 1000.0),
        "panic_picks": stats.panic_picks.load(Relaxed),
        "capacity_rejections": stats.capacity_rejections.load(Relaxed),
        "endpoints": endpoints,
        "discovery": discovery,
    })
}

/// An instance as the admin API shows it, with its registration when it has one.
pub(super) fn instance_json(supervisor: &Supervisor, pool: &Pool, endpoint: &Endpoint) -> Value {
    let state = endpoint.state(pool.now_ms());
    let mut view = json!({
        "id": endpoint.id,
        "pool": pool.name,
        "address": endpoint.address,
        "weight": endpoint.weight(),
        "state": state.as_str(),
        "reason": endpoint.last_transition().reason,
        "in_flight": endpoint.in_flight(),
        "drained": state == EndpointState::Draining && endpoint.in_flight() == 0,
    });
    let registration = supervisor
        .registrations()
        .into_iter()
        .find(|r| r.pool == pool.name && r.address == endpoint.address);
    view["registered"] = json!(registration.is_some());
    if let Some(r) = registration {
        view["zone"] = json!(r.zone);
        view["metadata"] = json!(r.metadata);
    }
    view
}

/// The cache's counters.
pub(super) fn cache_summary(cache: &Cache) -> Value {
    let s = &cache.stats;
    let memory = cache.memory();
    memory.sync();
    let redis = cache.redis().map(|r| {
        json!({
            "up": !r.is_open(),
            "commands": r.stats.commands.load(Relaxed),
            "errors": r.stats.errors.load(Relaxed),
            "timeouts": r.stats.timeouts.load(Relaxed),
            "skipped": r.stats.skipped.load(Relaxed),
            "mean_latency_ms": r.stats.latency_micros_total.load(Relaxed) as f64
                / r.stats.commands.load(Relaxed).max(1) as f64 / 1000.0,
        })
    });
    json!({
        "hit_ratio": s.hit_ratio(),
        "hits": { "l1": s.hits_memory.load(Relaxed), "l2": s.hits_redis.load(Relaxed) },
        "misses": s.misses.load(Relaxed),
        "stale": s.stale.load(Relaxed),
        "bypass": s.bypass.load(Relaxed),
        "coalesced": s.coalesced.load(Relaxed),
        "revalidated": s.revalidated.load(Relaxed),
        "not_modified": s.not_modified.load(Relaxed),
        "stores": s.stores.load(Relaxed),
        "too_large": s.too_large.load(Relaxed),
        "purges": s.purges.load(Relaxed),
        "l1": {
            "entries": memory.entry_count(),
            "bytes": memory.weighted_size(),
            "evictions": memory.evictions.load(Relaxed),
        },
        "redis": redis,
    })
}

/// A route as the admin API shows it: name, what it does, its split sides (weight and
/// requests so far) and its mirror's counters.
pub fn route_json(route: &crate::proxy::route::Route) -> Value {
    use crate::proxy::route::Action;
    let (kind, sides) = match &route.action {
        Action::Forward(split) => (
            "forward",
            split
                .sides()
                .iter()
                .map(|side| {
                    json!({
                        "pool": side.pool.name,
                        "weight": side.weight(),
                        "requests": side.requests.load(Relaxed),
                    })
                })
                .collect(),
        ),
        Action::Redirect(_) => ("redirect", Vec::new()),
        Action::Respond(_) => ("respond", Vec::new()),
    };
    let mirror = route.mirror.as_ref().map(|m| {
        let stats = &m.stats;
        json!({
            "pool": m.pool.name,
            "sent": stats.sent.load(Relaxed),
            "dropped_busy": stats.dropped_busy.load(Relaxed),
            "skipped_body": stats.skipped_body.load(Relaxed),
            "failed": stats.failed.load(Relaxed),
            "responses": stats.responses.iter().map(|c| c.load(Relaxed)).collect::<Vec<_>>(),
        })
    });
    json!({
        "name": route.name.as_ref(),
        "action": kind,
        "pools": sides,
        "mirror": mirror,
    })
}
