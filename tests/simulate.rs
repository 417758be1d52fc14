//! `POST /api/v1/simulate` against a running weir: the route and why, access, the pool's
//! endpoints and the pick the next request really gets, the cache entry, the rate limit;
//! and that simulating sends nothing upstream and moves nothing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use common::*;
use http::{Request, Response, StatusCode};

const TOKEN: &str = "simulate-test-token-01";

/// Answers with its name, counts what it is sent, and lets responses be cached a minute.
async fn counted(name: &'static str, seen: Arc<AtomicUsize>) -> Upstream {
    upstream(move |_req| {
        let seen = Arc::clone(&seen);
        async move {
            seen.fetch_add(1, SeqCst);
            Response::builder()
                .header("x-upstream", name)
                .header("cache-control", "max-age=60")
                .body(full(name))
                .unwrap()
        }
    })
    .await
}

async fn simulate(admin: SocketAddr, body: &str) -> (StatusCode, serde_json::Value) {
    let request = Request::post(format!("http://{admin}/api/v1/simulate"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(full(body.to_owned()))
        .unwrap();
    let reply = send(&http1_client(), request).await;
    let value = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
    (reply.status, value)
}

#[tokio::test]
async fn simulation_explains_the_route_pool_pick_cache_and_limit_and_changes_nothing() {
    let seen = Arc::new(AtomicUsize::new(0));
    let a = counted("a", Arc::clone(&seen)).await;
    let b = counted("b", Arc::clone(&seen)).await;
    let c = counted("c", Arc::clone(&seen)).await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[routes]]
name = "internal"
host = "internal.example"
allow = ["10.0.0.0/8"]
pool = "main"

[[routes]]
name = "tenants"
path_prefix = "/api"
headers = [{{ name = "x-tenant", value = "blue" }}]
rate_limit = {{ requests_per_second = 5, burst = 10 }}
pool = "main"

[[routes]]
name = "default"
pool = "main"

[pools.main]
strategy = "round_robin"
endpoints = [{{ address = "{}" }}, {{ address = "{}" }}, {{ address = "{}" }}]

[cache]
enabled = true

[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"
"#,
        a.addr, b.addr, c.addr
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let admin = weir.admin_addr().unwrap();

    // One real request fills the cache for /cached.
    assert_eq!(get(proxy, "/cached").await.status, StatusCode::OK);
    common::wait::settled(&weir).await;
    let upstream_before = seen.load(SeqCst);
    let endpoint_requests = async || -> u64 {
        let pool: serde_json::Value =
            serde_json::from_slice(&admin_get(admin, "/api/v1/pools/main", TOKEN).await.body)
                .unwrap();
        pool["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["requests"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(endpoint_requests().await, 1);

    // Simulated as it was sent: to the proxy's address as its host.
    let (status, cached) = simulate(
        admin,
        &format!(r#"{{"host": "{proxy}", "path": "/cached"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cached}");
    assert_eq!(cached["route"], "default");
    let tried = cached["routes_tried"].as_array().unwrap();
    assert_eq!(tried.len(), 3, "{cached}");
    assert_eq!(
        tried[0]["reasons"][0],
        "host \"127.0.0.1\" is not \"internal.example\""
    );
    assert_eq!(tried[1]["matched"], false);
    assert!(
        tried[1]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "path \"/cached\" is not under \"/api\""),
        "{cached}"
    );
    assert_eq!(tried[2]["matched"], true);
    assert_eq!(cached["cache"]["key"], format!("{proxy}/cached"));
    assert_eq!(cached["cache"]["in_memory"]["fresh"], true, "{cached}");
    assert_eq!(
        cached["cache"]["in_memory"]["answered_without_upstream"],
        true
    );
    let pool = &cached["pools"][0];
    assert_eq!(pool["strategy"], "round_robin");
    assert_eq!(pool["endpoints"].as_array().unwrap().len(), 3);
    assert_eq!(pool["endpoints"][0]["state"], "healthy");

    // The pick the simulation names is the one the next real (uncached) request gets, and
    // simulating again does not move the rotation.
    for round in 0..4 {
        let (_, first) = simulate(admin, r#"{"path": "/fresh"}"#).await;
        let (_, again) = simulate(admin, r#"{"path": "/fresh"}"#).await;
        let named = first["pools"][0]["would_pick"].as_str().unwrap().to_owned();
        assert_eq!(
            again["pools"][0]["would_pick"],
            named.as_str(),
            "round {round}"
        );
        assert_eq!(
            seen.load(SeqCst),
            upstream_before + round,
            "simulating sent nothing upstream"
        );
        let real = get(proxy, &format!("/fresh/{round}")).await;
        let expected = [&a, &b, &c]
            .iter()
            .zip(["a", "b", "c"])
            .find(|(u, _)| u.addr.to_string() == named)
            .map(|(_, n)| n)
            .unwrap();
        assert_eq!(real.header("x-upstream"), Some(expected), "round {round}");
    }

    // Conditions, the rate-limit bucket, and access.
    let (_, tenant) = simulate(
        admin,
        r#"{"method": "POST", "path": "/api/orders?id=3", "headers": {"x-tenant": "blue"}, "client": "10.1.2.3"}"#,
    )
    .await;
    assert_eq!(tenant["route"], "tenants", "{tenant}");
    assert!(
        tenant["routes_tried"][1]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "header x-tenant is \"blue\": yes")
    );
    assert_eq!(tenant["rate_limit"]["bucket"], "client 10.1.2.3");
    assert_eq!(tenant["rate_limit"]["requests_per_second"], 5);
    assert_eq!(tenant["rate_limit"]["burst"], 10);
    assert_eq!(
        tenant["cache"]["why"],
        "only GET and HEAD are answered from the cache"
    );

    let (_, refused) = simulate(
        admin,
        r#"{"host": "internal.example", "path": "/", "client": "192.0.2.1"}"#,
    )
    .await;
    assert_eq!(
        refused["outcome"],
        "route internal does not allow client 192.0.2.1: weir answers 403"
    );
    let (_, allowed) = simulate(
        admin,
        r#"{"host": "internal.example:8080", "path": "/", "client": "10.9.9.9"}"#,
    )
    .await;
    assert_eq!(allowed["route"], "internal", "{allowed}");

    // Bad input is refused with the reason.
    for (body, reason) in [
        (r#"{"path": "relative"}"#, "path must start with /"),
        (
            r#"{"method": "GE T", "path": "/"}"#,
            "\"GE T\" is not a method",
        ),
        (
            r#"{"path": "/", "headers": {"bad header": "x"}}"#,
            "header \"bad header\" is not a valid field",
        ),
    ] {
        let (status, reply) = simulate(admin, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(reply["error"].as_str().unwrap().contains(reason), "{reply}");
    }

    // Nothing moved: the endpoints counted the 5 real requests only.
    assert_eq!(seen.load(SeqCst), upstream_before + 4);
    assert_eq!(endpoint_requests().await, 5);
    weir.shutdown().await;
}
