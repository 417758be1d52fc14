//! Health, ejection, retries, budgets and bulkheads through the real proxy.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::wait::eventually;
use common::*;
use http::{Request, Response, StatusCode};
use tokio::sync::Notify;

/// An upstream that answers `status` while `failing` is set, 200 otherwise, and counts hits.
async fn switchable_upstream(
    name: &'static str,
    status: StatusCode,
) -> (Upstream, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let failing = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    let (f, h) = (failing.clone(), hits.clone());
    let up = upstream(move |req| {
        let (f, h) = (f.clone(), h.clone());
        async move {
            let health = req.uri().path() == "/healthz";
            if !health {
                h.fetch_add(1, Relaxed);
            }
            let status = if f.load(Relaxed) {
                status
            } else {
                StatusCode::OK
            };
            Response::builder()
                .status(status)
                .header("x-upstream", name)
                .body(full(name))
                .unwrap()
        }
    })
    .await;
    (up, failing, hits)
}

async fn admin_pool(weir: &weir::app::Running) -> serde_json::Value {
    let admin = weir.admin_addr().unwrap();
    let request = Request::get(format!("http://{admin}/api/v1/pools"))
        .header("authorization", "Bearer test-token-0123456789")
        .body(empty())
        .unwrap();
    let reply = send(&http1_client(), request).await;
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    json["pools"][0].clone()
}

fn endpoint_json(pool: &serde_json::Value, addr: SocketAddr) -> &serde_json::Value {
    pool["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap()
}

const ADMIN: &str = "\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"test-token-0123456789\"\n";

#[tokio::test]
async fn failing_endpoint_is_ejected_and_returns_after_recovery() {
    let (bad, failing, bad_hits) =
        switchable_upstream("bad", StatusCode::INTERNAL_SERVER_ERROR).await;
    let (good, _, _) = switchable_upstream("good", StatusCode::OK).await;
    failing.store(true, Relaxed);
    let config = simple_config(
        &[bad.addr, good.addr],
        "retry = { attempts = 0 }\npassive = { consecutive_failures = 3, base_ejection = \"400ms\", half_open_probes = 2 }",
    ) + ADMIN;
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();

    let mut statuses = BTreeMap::new();
    for _ in 0..40 {
        *statuses
            .entry(get(proxy, "/").await.status.as_u16())
            .or_insert(0) += 1;
    }
    // Round robin sends every other request to "bad" until its 3rd consecutive 500.
    assert_eq!(bad_hits.load(Relaxed), 3, "{statuses:?}");
    assert_eq!(statuses[&500], 3);
    assert_eq!(statuses[&200], 37);
    let pool = admin_pool(&weir).await;
    let ep = endpoint_json(&pool, bad.addr);
    assert_eq!(ep["state"], "ejected");
    assert_eq!(ep["breaker"], "open");
    assert_eq!(ep["reason"], "ejected for 400ms: 3 consecutive failures");

    // It recovers; after the ejection, probes succeed and it is back in rotation.
    failing.store(false, Relaxed);
    eventually("the 400 ms ejection to end", async || {
        endpoint_json(&admin_pool(&weir).await, bad.addr)["state"] != "ejected"
    })
    .await;
    let before = bad_hits.load(Relaxed);
    let counts: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..40 {
            v.push(get(proxy, "/").await.status.as_u16());
        }
        v
    };
    assert!(counts.iter().all(|s| *s == 200));
    let served = bad_hits.load(Relaxed) - before;
    assert!(
        (15..=25).contains(&served),
        "back to its round-robin share: {served}"
    );
    let pool = admin_pool(&weir).await;
    let ep = endpoint_json(&pool, bad.addr);
    assert_eq!(ep["state"], "healthy");
    assert_eq!(ep["reason"], "half-open probes succeeded");
    assert_eq!(ep["ejections"], 1);
    weir.shutdown().await;
}

#[tokio::test]
async fn never_ejects_more_than_the_allowed_share() {
    let (a, fa, _) = switchable_upstream("a", StatusCode::INTERNAL_SERVER_ERROR).await;
    let (b, fb, _) = switchable_upstream("b", StatusCode::INTERNAL_SERVER_ERROR).await;
    fa.store(true, Relaxed);
    fb.store(true, Relaxed);
    let config = simple_config(
        &[a.addr, b.addr],
        "retry = { attempts = 0 }\npassive = { consecutive_failures = 2, max_ejected_share = 0.5 }",
    ) + ADMIN;
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    for _ in 0..20 {
        get(proxy, "/").await;
    }
    let pool = admin_pool(&weir).await;
    let states: Vec<&str> = pool["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "ejected").count(),
        1,
        "{states:?}"
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn active_health_checks_take_an_endpoint_out_and_back() {
    let (sick, failing, sick_hits) =
        switchable_upstream("sick", StatusCode::SERVICE_UNAVAILABLE).await;
    let (well, _, _) = switchable_upstream("well", StatusCode::OK).await;
    let config = simple_config(
        &[sick.addr, well.addr],
        "health_check = { path = \"/healthz\", interval = \"30ms\", timeout = \"200ms\", rise = 2, fall = 3 }",
    ) + ADMIN;
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    failing.store(true, Relaxed);
    eventually("the sick endpoint is marked unhealthy", async || {
        endpoint_json(&admin_pool(&weir).await, sick.addr)["state"] == "unhealthy"
    })
    .await;
    let ep = endpoint_json(&admin_pool(&weir).await, sick.addr).clone();
    assert_eq!(ep["reason"], "health check failed 3 times: status 503");
    let before = sick_hits.load(Relaxed);
    for _ in 0..20 {
        assert_eq!(get(proxy, "/").await.status, 200);
    }
    assert_eq!(
        sick_hits.load(Relaxed),
        before,
        "no traffic while unhealthy"
    );

    failing.store(false, Relaxed);
    eventually("the endpoint comes back", async || {
        endpoint_json(&admin_pool(&weir).await, sick.addr)["state"] == "healthy"
    })
    .await;
    assert_eq!(
        endpoint_json(&admin_pool(&weir).await, sick.addr)["reason"],
        "health check passed 2 times"
    );
    for _ in 0..20 {
        get(proxy, "/").await;
    }
    assert_eq!(sick_hits.load(Relaxed) - before, 10);
    weir.shutdown().await;
}

#[tokio::test]
async fn all_unhealthy_fails_open_or_closed_by_config() {
    for (fail_open, expected) in [
        (true, StatusCode::OK),
        (false, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let (a, fa, _) = switchable_upstream("a", StatusCode::OK).await;
        // Health checks fail (the check path 404s), but real requests would succeed.
        let config = simple_config(
            &[a.addr],
            &format!(
                "fail_open = {fail_open}\nhealth_check = {{ path = \"/missing\", interval = \"20ms\", expected_status = [299], fall = 1 }}"
            ),
        ) + ADMIN;
        fa.store(false, Relaxed);
        let weir = weir(&config).await;
        let proxy = weir.listener_addr("http").unwrap();
        eventually("the endpoint is unhealthy", async || {
            endpoint_json(&admin_pool(&weir).await, a.addr)["state"] == "unhealthy"
        })
        .await;
        assert_eq!(
            get(proxy, "/").await.status,
            expected,
            "fail_open = {fail_open}"
        );
        if fail_open {
            assert_eq!(admin_pool(&weir).await["panic_picks"], 1);
        }
        weir.shutdown().await;
    }
}

#[tokio::test]
async fn retries_go_to_another_endpoint() {
    let dead = closed_port().await;
    let (good, _, good_hits) = switchable_upstream("good", StatusCode::OK).await;
    let weir = weir(&(simple_config(&[dead, good.addr], "") + ADMIN)).await;
    let proxy = weir.listener_addr("http").unwrap();
    for _ in 0..10 {
        let reply = get(proxy, "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-upstream"), Some("good"));
    }
    // A buffered POST body is replayed on the other endpoint after a connect failure.
    for _ in 0..4 {
        let request = Request::post(format!("http://{proxy}/"))
            .body(full("payload"))
            .unwrap();
        assert_eq!(send(&http1_client(), request).await.status, 200);
    }
    assert_eq!(good_hits.load(Relaxed), 14);
    let pool = admin_pool(&weir).await;
    assert!(pool["retries"].as_u64().unwrap() >= 5, "{pool}");
    weir.shutdown().await;
}

#[tokio::test]
async fn resets_are_retried_only_for_idempotent_requests() {
    // Reads the request and closes without answering.
    let resetting = raw_upstream(b"").await;
    let (good, _, _) = switchable_upstream("good", StatusCode::OK).await;
    let weir = weir(&simple_config(
        &[resetting, good.addr],
        "passive = { enabled = false }",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    for _ in 0..10 {
        assert_eq!(get(proxy, "/").await.status, 200, "GET is retried");
    }
    let mut post_statuses = BTreeMap::new();
    for _ in 0..10 {
        let request = Request::post(format!("http://{proxy}/"))
            .body(full("x"))
            .unwrap();
        *post_statuses
            .entry(send(&http1_client(), request).await.status.as_u16())
            .or_insert(0) += 1;
    }
    // POSTs that land on the resetting endpoint (every other one) fail rather than risk a
    // double write.
    assert_eq!(post_statuses.get(&502), Some(&5), "{post_statuses:?}");
    assert_eq!(post_statuses.get(&200), Some(&5), "{post_statuses:?}");
    weir.shutdown().await;
}

#[tokio::test]
async fn retryable_statuses_move_to_another_endpoint() {
    let (busy, failing, busy_hits) =
        switchable_upstream("busy", StatusCode::SERVICE_UNAVAILABLE).await;
    let (good, _, _) = switchable_upstream("good", StatusCode::OK).await;
    failing.store(true, Relaxed);
    let weir = weir(&simple_config(
        &[busy.addr, good.addr],
        "passive = { enabled = false }",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    for _ in 0..10 {
        assert_eq!(get(proxy, "/").await.status, 200);
    }
    assert_eq!(
        busy_hits.load(Relaxed),
        5,
        "every other request tried it first"
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn the_retry_budget_stops_retry_storms() {
    let (a, fa, a_hits) = switchable_upstream("a", StatusCode::SERVICE_UNAVAILABLE).await;
    let (b, fb, b_hits) = switchable_upstream("b", StatusCode::SERVICE_UNAVAILABLE).await;
    fa.store(true, Relaxed);
    fb.store(true, Relaxed);
    let config = simple_config(
        &[a.addr, b.addr],
        "passive = { enabled = false }\nretry = { attempts = 2, budget_ratio = 0.2, budget_min_per_second = 1, backoff_base = \"1ms\", backoff_cap = \"2ms\" }",
    ) + ADMIN;
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    for _ in 0..100 {
        assert_eq!(get(proxy, "/").await.status, 503);
    }
    let attempts = a_hits.load(Relaxed) + b_hits.load(Relaxed);
    // Without a budget: 300 attempts. With it: 100 + at most 20 % of 100 + 1/s × 10 s.
    assert!(attempts <= 130, "{attempts} attempts");
    assert!(
        attempts >= 120,
        "the budget is used, not refused: {attempts}"
    );
    let pool = admin_pool(&weir).await;
    assert!(pool["retry_budget_exhausted"].as_u64().unwrap() > 0);
    assert_eq!(pool["retries"].as_u64().unwrap() as usize, attempts - 100);
    weir.shutdown().await;
}

#[tokio::test]
async fn bulkheads_shed_fast_with_retry_after() {
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (a, r) = (arrived.clone(), release.clone());
    let held = upstream(move |_req| {
        let (a, r) = (a.clone(), r.clone());
        async move {
            a.notify_one();
            r.notified().await;
            Response::new(full("done"))
        }
    })
    .await;
    for limit in ["max_in_flight_per_endpoint = 1", "max_in_flight = 1"] {
        let weir = weir(&simple_config(&[held.addr], limit)).await;
        let proxy = weir.listener_addr("http").unwrap();
        let first = tokio::spawn(async move { get(proxy, "/").await });
        arrived.notified().await;
        let started = Instant::now();
        let shed = get(proxy, "/").await;
        assert_eq!(shed.status, 503, "{limit}");
        assert_eq!(
            shed.text(),
            "503 Service Unavailable: upstream at capacity\n"
        );
        assert_eq!(shed.header("retry-after"), Some("1"));
        assert!(started.elapsed() < Duration::from_secs(1));
        release.notify_one();
        assert_eq!(first.await.unwrap().status, 200);
        weir.shutdown().await;
    }
}

/// An upstream answering 503 (with `Retry-After: 5` when `retry_after`) and counting hits.
async fn unavailable_upstream(retry_after: bool) -> (Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let up = upstream(move |_req| {
        counter.fetch_add(1, Relaxed);
        async move {
            let mut b = Response::builder().status(503);
            if retry_after {
                b = b.header("retry-after", "5");
            }
            b.body(full("unavailable")).unwrap()
        }
    })
    .await;
    (up, hits)
}

#[tokio::test]
async fn status_answers_are_retried_on_another_endpoint_only() {
    // One endpoint: its 503 is its answer; asking it again would only repeat it.
    let (only, only_hits) = unavailable_upstream(false).await;
    let weir1 = weir(&simple_config(&[only.addr], "")).await;
    let reply = get(weir1.listener_addr("http").unwrap(), "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(only_hits.load(Relaxed), 1, "no retry on the same endpoint");

    // Two endpoints answering 503: each is asked once, then the client gets the 503.
    let (a, a_hits) = unavailable_upstream(false).await;
    let (b, b_hits) = unavailable_upstream(false).await;
    let weir2 = weir(&simple_config(&[a.addr, b.addr], "")).await;
    let reply = get(weir2.listener_addr("http").unwrap(), "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        (a_hits.load(Relaxed), b_hits.load(Relaxed)),
        (1, 1),
        "the default two retries stop when no endpoint is left untried"
    );

    // A 503 with Retry-After never goes back to the endpoint that sent it; the other one
    // answers every request.
    let (busy, busy_hits) = unavailable_upstream(true).await;
    let (good, _, good_hits) = switchable_upstream("good", StatusCode::OK).await;
    let weir3 = weir(&simple_config(&[busy.addr, good.addr], "")).await;
    let proxy = weir3.listener_addr("http").unwrap();
    for _ in 0..20 {
        assert_eq!(get(proxy, "/").await.status, 200);
    }
    assert_eq!(good_hits.load(Relaxed), 20);
    assert!(
        busy_hits.load(Relaxed) <= 20,
        "{} attempts on the endpoint that asked to wait",
        busy_hits.load(Relaxed)
    );
}
