//! The shared tier: weir instances over one real redis-server (started per test on a
//! free port). L2 hits, promotion, eviction fallback, purge across instances, Redis dying
//! mid-load, and cross-instance coalescing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;
use http::{Request, Response, StatusCode};

const TOKEN: &str = "test-token-0123456789";

/// An origin that counts requests and answers `max-age=60` with a surrogate key.
async fn counting_origin(delay: Duration, body_bytes: usize) -> (Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let upstream = upstream(move |req| {
        let h = h.clone();
        async move {
            let n = h.fetch_add(1, SeqCst) + 1;
            tokio::time::sleep(delay).await;
            let mut body = format!("{} #{n}", req.uri().path());
            body.extend(std::iter::repeat_n(
                '.',
                body_bytes.saturating_sub(body.len()),
            ));
            Response::builder()
                .header("cache-control", "max-age=60")
                .header("surrogate-key", "all")
                .body(full(body))
                .unwrap()
        }
    })
    .await;
    (upstream, hits)
}

fn config(origin: SocketAddr, redis: &RedisServer, cache_extra: &str) -> String {
    format!(
        "{}\n[cache]\nenabled = true\n{cache_extra}\n[redis]\nurl = \"{}\"\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        simple_config(&[origin], ""),
        redis.url()
    )
}

fn status(reply: &Reply) -> String {
    reply.header("cache-status").unwrap_or("-").to_owned()
}

async fn admin_json(admin: SocketAddr, method: &str, path: &str, body: &str) -> serde_json::Value {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(full(body.to_owned()))
        .unwrap();
    let reply = send(&http1_client(), request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    serde_json::from_slice(&reply.body).unwrap()
}

#[tokio::test]
async fn a_second_instance_hits_l2_and_promotes_to_l1() {
    let redis = RedisServer::start().await;
    let (origin, hits) = counting_origin(Duration::ZERO, 0).await;
    let weir_a = weir(&config(origin.addr, &redis, "")).await;
    let weir_b = weir(&config(origin.addr, &redis, "")).await;
    let (a, b) = (
        weir_a.listener_addr("http").unwrap(),
        weir_b.listener_addr("http").unwrap(),
    );
    // Both instances see the same Host: the key does not depend on which one is asked.
    let get_host = |addr: SocketAddr, path: &'static str| async move {
        let request = Request::get(format!("http://{addr}{path}"))
            .header("host", "shared.example")
            .body(empty())
            .unwrap();
        send(&http1_client(), request).await
    };
    assert_eq!(
        status(&get_host(a, "/x").await),
        "weir-l1; fwd=miss; stored"
    );
    wait::settled(&weir_a).await;
    let from_l2 = get_host(b, "/x").await;
    assert!(
        status(&from_l2).starts_with("weir-l2; hit"),
        "{}",
        status(&from_l2)
    );
    assert_eq!(from_l2.text(), "/x #1");
    let from_l1 = get_host(b, "/x").await;
    assert!(
        status(&from_l1).starts_with("weir-l1; hit"),
        "{}",
        status(&from_l1)
    );
    assert_eq!(hits.load(SeqCst), 1);
    assert!(redis.dbsize().await >= 1);
}

#[tokio::test]
async fn l2_answers_what_l1_evicted() {
    let redis = RedisServer::start().await;
    let (origin, hits) = counting_origin(Duration::ZERO, 40_000).await;
    let proxy = weir(&config(
        origin.addr,
        &redis,
        "memory_bytes = 200000\nmax_object_bytes = 50000",
    ))
    .await;
    let addr = proxy.listener_addr("http").unwrap();
    for i in 0..20 {
        get(addr, &format!("/o/{i}")).await;
    }
    wait::settled(&proxy).await;
    // The stats call runs moka's pending maintenance, which enforces the byte bound.
    let stats = admin_json(proxy.admin_addr().unwrap(), "GET", "/api/v1/cache", "").await;
    assert!(stats["l1"]["bytes"].as_u64().unwrap() <= 200_000, "{stats}");
    assert!(stats["l1"]["evictions"].as_u64().unwrap() > 0, "{stats}");
    let mut from_l2 = 0;
    for i in 0..20 {
        let reply = get(addr, &format!("/o/{i}")).await;
        assert_eq!(reply.body.len(), 40_000);
        let s = status(&reply);
        assert!(s.contains("hit"), "/o/{i}: {s}");
        from_l2 += usize::from(s.starts_with("weir-l2"));
    }
    // 20 × 40 kB do not fit in 200 kB of L1; Redis has them all.
    assert!(from_l2 >= 10, "{from_l2} L2 hits");
    assert_eq!(hits.load(SeqCst), 20);
}

#[tokio::test]
async fn purge_by_tag_reaches_every_instance() {
    let redis = RedisServer::start().await;
    let (origin, hits) = counting_origin(Duration::ZERO, 0).await;
    let weir_a = weir(&config(origin.addr, &redis, "")).await;
    let weir_b = weir(&config(origin.addr, &redis, "")).await;
    let admin_a = weir_a.admin_addr().unwrap();
    let (a, b) = (
        weir_a.listener_addr("http").unwrap(),
        weir_b.listener_addr("http").unwrap(),
    );
    let fetch = |addr: SocketAddr| async move {
        let request = Request::get(format!("http://{addr}/t"))
            .header("host", "shared.example")
            .body(empty())
            .unwrap();
        send(&http1_client(), request).await
    };
    fetch(a).await;
    wait::settled(&weir_a).await;
    fetch(b).await; // L2 hit, now in B's L1 too
    assert!(status(&fetch(b).await).starts_with("weir-l1; hit"));
    // B must be listening before the purge is published (pub/sub keeps no backlog).
    wait::purge_bus_listening(&weir_a, 2, async |channel| {
        redis.subscribers(&channel).await
    })
    .await;
    let report = admin_json(admin_a, "POST", "/api/v1/cache/purge", r#"{"tag": "all"}"#).await;
    assert_eq!(report["report"]["redis"], 1, "{report}");
    assert_eq!(report["report"]["published"], true, "{report}");
    wait::eventually("B's L1 to drop the purged entry", async || {
        // Look without storing: HEAD is not stored, and a miss shows the purge arrived.
        let request = Request::head(format!("http://{b}/t"))
            .header("host", "shared.example")
            .body(empty())
            .unwrap();
        status(&send(&http1_client(), request).await).contains("miss")
    })
    .await;
    assert!(hits.load(SeqCst) >= 2);
}

#[tokio::test]
async fn redis_dying_mid_load_fails_no_request() {
    let mut redis = RedisServer::start().await;
    let (origin, _hits) = counting_origin(Duration::ZERO, 512).await;
    let proxy = weir(&config(
        origin.addr,
        &redis,
        "memory_bytes = 1000000\nmax_object_bytes = 100000",
    ))
    .await;
    let addr = proxy.listener_addr("http").unwrap();
    let admin = proxy.admin_addr().unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (done, failed) = (done.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let client = http1_client();
            for i in 0..250 {
                let request = Request::get(format!("http://{addr}/k/{}", i * 8 + w))
                    .body(empty())
                    .unwrap();
                match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
                    Ok(Ok(r)) if r.status() == StatusCode::OK => {
                        use http_body_util::BodyExt;
                        if r.into_body().collect().await.is_err() {
                            failed.fetch_add(1, SeqCst);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, SeqCst);
                    }
                }
                done.fetch_add(1, SeqCst);
            }
        }));
    }
    while done.load(SeqCst) < 500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.kill();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(done.load(SeqCst), 2000);
    assert_eq!(
        failed.load(SeqCst),
        0,
        "requests failed while Redis was down"
    );
    let stats = admin_json(admin, "GET", "/api/v1/cache", "").await;
    assert_eq!(stats["redis"]["up"], false, "{stats}");

    // Back again: the breaker closes and L2 fills, with no restart of weir.
    redis.restart().await;
    let mut recovered = false;
    for i in 0..100 {
        get(addr, &format!("/again/{i}")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if redis.dbsize().await > 0 {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "weir never wrote to the restarted Redis");
    let stats = admin_json(admin, "GET", "/api/v1/cache", "").await;
    assert_eq!(stats["redis"]["up"], true, "{stats}");
}

#[tokio::test]
async fn a_shared_lock_makes_n_instances_one_upstream_request() {
    let redis = RedisServer::start().await;
    let (origin, hits) = counting_origin(Duration::from_millis(300), 0).await;
    let a = weir(&config(origin.addr, &redis, "shared_lock = true")).await;
    let b = weir(&config(origin.addr, &redis, "shared_lock = true")).await;
    let c = weir(&config(origin.addr, &redis, "shared_lock = true")).await;
    let addrs = [a, b, c].map(|w| w.listener_addr("http").unwrap());
    let mut tasks = Vec::new();
    for i in 0..60 {
        let addr = addrs[i % 3];
        tasks.push(tokio::spawn(async move {
            let request = Request::get(format!("http://{addr}/slow"))
                .header("host", "shared.example")
                .body(empty())
                .unwrap();
            send(&http1_client(), request).await
        }));
    }
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "/slow #1");
    }
    assert_eq!(hits.load(SeqCst), 1);
}
