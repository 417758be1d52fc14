//! Rate limits through the real proxy: 429 with Retry-After after the burst; buckets
//! shared by instances through a real redis-server, and the local fallback without it.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;
use http::Request;

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_per_api_key() {
    let up = named_upstream("a").await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
[[routes]]
pool = "main"
rate_limit = {{ requests_per_second = 1, burst = 3, key = "header:x-api-key" }}
[pools.main]
endpoints = [{{ address = "{}" }}]
"#,
        up.addr
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let with_key = |key: &'static str| {
        Request::get(format!("http://{proxy}/"))
            .header("x-api-key", key)
            .body(empty())
            .unwrap()
    };
    let client = http1_client();
    for _ in 0..3 {
        assert_eq!(send(&client, with_key("alpha")).await.status, 200);
    }
    let limited = send(&client, with_key("alpha")).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(
        limited.text(),
        "429 Too Many Requests: rate limit exceeded\n"
    );
    assert_eq!(
        send(&client, with_key("beta")).await.status,
        200,
        "other keys are unaffected"
    );
    let snapshot = weir.state().snapshot.load();
    let route = &snapshot.router.routes()[0];
    assert_eq!(
        route
            .rate_limit
            .as_ref()
            .unwrap()
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(snapshot);
    weir.shutdown().await;
}

#[test]
fn bad_rate_limits_are_config_errors() {
    let base = "[[listeners]]\nname = \"h\"\naddress = \"127.0.0.1:1\"\n[[routes]]\npool = \"p\"\nrate_limit = RL\n[pools.p]\n";
    for (limit, expected) in [
        (
            "{ requests_per_second = 0 }",
            "routes[0].rate_limit: requests_per_second and burst must be at least 1",
        ),
        (
            "{ requests_per_second = 5, key = \"cookie:x\" }",
            "routes[0].rate_limit.key: \"cookie:x\": expected",
        ),
        (
            "{ requests_per_second = 5, shared = true }",
            "routes[0].rate_limit.shared: shared limits live in Redis; add a [redis] table",
        ),
    ] {
        let text = base.replace("RL", limit);
        let err = weir::config::load_str(&text, std::path::Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
    }
}

fn shared_config(upstream: SocketAddr, redis: &str, shared: bool) -> String {
    format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
[[routes]]
name = "api"
pool = "main"
rate_limit = {{ requests_per_second = 1, burst = 4, key = "header:x-api-key", shared = {shared} }}
[pools.main]
endpoints = [{{ address = "{upstream}" }}]
[redis]
url = "{redis}"
"#
    )
}

async fn status(proxy: SocketAddr, key: &str) -> (u16, Option<String>) {
    let request = Request::get(format!("http://{proxy}/"))
        .header("x-api-key", key)
        .body(empty())
        .unwrap();
    let reply = send(&http1_client(), request).await;
    (
        reply.status.as_u16(),
        reply.header("retry-after").map(str::to_owned),
    )
}

/// Sends `n` requests with `key`, alternating between the instances; the statuses.
async fn alternate(proxies: &[SocketAddr], key: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        statuses.push(status(proxies[i % proxies.len()], key).await.0);
    }
    statuses
}

fn limiter_counter(
    weir: &weir::app::Running,
    counter: fn(&weir::proxy::ratelimit::RouteLimiter) -> u64,
) -> u64 {
    let snapshot = weir.state().snapshot.load();
    counter(snapshot.router.routes()[0].rate_limit.as_ref().unwrap())
}

#[tokio::test]
async fn shared_limits_are_one_bucket_across_instances_and_fall_back_locally_without_redis() {
    let up = named_upstream("a").await;
    let mut redis = RedisServer::start().await;
    let config = shared_config(up.addr, &redis.url(), true);
    let a = weir(&config).await;
    let b = weir(&config).await;
    let proxies = [
        a.listener_addr("http").unwrap(),
        b.listener_addr("http").unwrap(),
    ];

    // Burst 4 in all, whichever instance a request reaches; then 429 on both.
    assert_eq!(
        alternate(&proxies, "alpha", 6).await,
        [200, 200, 200, 200, 429, 429]
    );
    assert_eq!(status(proxies[1], "alpha").await, (429, Some("1".into())));
    assert_eq!(
        alternate(&proxies, "beta", 2).await,
        [200, 200],
        "keys are apart"
    );
    // A second later one more request's worth has dripped back into the bucket.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(alternate(&proxies, "alpha", 2).await, [200, 429]);
    let rejected = |w: &weir::app::Running| limiter_counter(w, |l| l.rejected.load(Relaxed));
    assert_eq!(rejected(&a) + rejected(&b), 4);

    // Redis down: every request is still answered, each instance by its own bucket.
    redis.kill();
    let down = alternate(&proxies, "gamma", 12).await;
    assert_eq!(
        down,
        [200, 200, 200, 200, 200, 200, 200, 200, 429, 429, 429, 429]
    );
    let fallbacks = |w: &weir::app::Running| limiter_counter(w, |l| l.fallbacks.load(Relaxed));
    assert_eq!(fallbacks(&a) + fallbacks(&b), 12);

    // Redis back: shared again once the breaker lets commands through (≤ 2 s).
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let key = format!("delta-{n}");
        if alternate(&proxies, &key, 5).await == [200, 200, 200, 200, 429]
            && redis.dbsize().await > 0
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never shared again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn unshared_limits_are_per_instance() {
    let up = named_upstream("a").await;
    let redis = RedisServer::start().await;
    let config = shared_config(up.addr, &redis.url(), false);
    let a = weir(&config).await;
    let b = weir(&config).await;
    let proxies = [
        a.listener_addr("http").unwrap(),
        b.listener_addr("http").unwrap(),
    ];
    let statuses = alternate(&proxies, "alpha", 10).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 8);
    assert_eq!(redis.dbsize().await, 0, "nothing written to Redis");
    a.shutdown().await;
    b.shutdown().await;
}
