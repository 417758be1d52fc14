//! The shared tier on a Redis Cluster: three real redis-server primaries (started per
//! test on free ports). Objects spread over every node, a second instance finds them,
//! and purges by prefix and tag reach keys in every slot and every instance's L1.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::redis_server::RedisCluster;
use common::*;
use http::{Request, Response, StatusCode};

const TOKEN: &str = "test-token-0123456789";
const OBJECTS: usize = 30;

async fn tagged_origin() -> (Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let upstream = upstream(move |req| {
        let h = h.clone();
        async move {
            let n = h.fetch_add(1, SeqCst) + 1;
            let tag = if req.uri().path().starts_with("/a/") {
                "group-a"
            } else {
                "group-b"
            };
            Response::builder()
                .header("cache-control", "max-age=60")
                .header("surrogate-key", tag)
                .body(full(format!("{} #{n}", req.uri().path())))
                .unwrap()
        }
    })
    .await;
    (upstream, hits)
}

fn config(origin: SocketAddr, cluster: &RedisCluster) -> String {
    format!(
        "{}\n[cache]\nenabled = true\nshared_lock = true\n\n[redis]\ncluster_nodes = {:?}\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        simple_config(&[origin], ""),
        cluster.urls()
    )
}

async fn fetch(addr: SocketAddr, path: &str, method: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", "shared.example")
        .body(empty())
        .unwrap();
    send(&http1_client(), request).await
}

fn status(reply: &Reply) -> String {
    reply.header("cache-status").unwrap_or("-").to_owned()
}

async fn purge(admin: SocketAddr, body: &str) -> serde_json::Value {
    let request = Request::post(format!("http://{admin}/api/v1/cache/purge"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(full(body.to_owned()))
        .unwrap();
    let reply = send(&http1_client(), request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    serde_json::from_slice(&reply.body).unwrap()
}

fn paths() -> Vec<String> {
    (0..OBJECTS)
        .map(|i| format!("/{}/{i}", if i % 2 == 0 { "a" } else { "b" }))
        .collect()
}

/// Polls B with HEAD (never stored) until `path` misses its L1: the purge arrived.
async fn purged_in(addr: SocketAddr, path: &str) {
    wait::eventually(&format!("{path} purged from B's L1"), async || {
        status(&fetch(addr, path, "HEAD").await).contains("miss")
    })
    .await;
}

#[tokio::test]
async fn a_cluster_shares_objects_and_purges_across_slots() {
    let cluster = RedisCluster::start().await;
    let (origin, hits) = tagged_origin().await;
    let weir_a = weir(&config(origin.addr, &cluster)).await;
    let weir_b = weir(&config(origin.addr, &cluster)).await;
    let admin_a = weir_a.admin_addr().unwrap();
    let (a, b) = (
        weir_a.listener_addr("http").unwrap(),
        weir_b.listener_addr("http").unwrap(),
    );

    for path in paths() {
        let reply = fetch(a, &path, "GET").await;
        assert_eq!(status(&reply), "weir-l1; fwd=miss; stored", "{path}");
    }
    wait::settled(&weir_a).await;
    let per_node = cluster.keys_per_node().await;
    assert!(
        per_node.iter().all(|&n| n > 0),
        "objects should spread over every primary: {per_node:?}"
    );

    // B has an empty L1: every object comes from the cluster.
    for path in paths() {
        let reply = fetch(b, &path, "GET").await;
        assert!(
            status(&reply).starts_with("weir-l2; hit"),
            "{path}: {}",
            status(&reply)
        );
        assert!(reply.text().starts_with(&format!("{path} #")));
    }
    assert_eq!(hits.load(SeqCst), OBJECTS);
    wait::purge_bus_listening(&weir_a, 2, async |channel| {
        cluster.subscribers(&channel).await
    })
    .await;

    // A prefix purge has to SCAN every primary.
    let report = purge(admin_a, r#"{"prefix": "/a/"}"#).await;
    assert_eq!(report["report"]["redis"], OBJECTS / 2, "{report}");
    assert_eq!(report["report"]["published"], true, "{report}");
    purged_in(b, "/a/0").await;
    let after_prefix = fetch(b, "/a/2", "GET").await;
    assert_eq!(status(&after_prefix), "weir-l1; fwd=miss; stored");
    assert!(status(&fetch(b, "/b/1", "GET").await).contains("hit"));

    // The tag set lives in one slot, its members in many.
    let report = purge(admin_a, r#"{"tag": "group-b"}"#).await;
    assert_eq!(report["report"]["redis"], OBJECTS / 2, "{report}");
    purged_in(b, "/b/1").await;
    assert_eq!(
        status(&fetch(a, "/b/3", "GET").await),
        "weir-l1; fwd=miss; stored"
    );
}

#[tokio::test]
async fn concurrent_misses_on_two_instances_make_one_upstream_request_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let origin = upstream(move |_req| {
        let h = h.clone();
        async move {
            h.fetch_add(1, SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            Response::builder()
                .header("cache-control", "max-age=60")
                .body(full("slow"))
                .unwrap()
        }
    })
    .await;
    let a = weir(&config(origin.addr, &cluster)).await;
    let b = weir(&config(origin.addr, &cluster)).await;
    let addrs = [
        a.listener_addr("http").unwrap(),
        b.listener_addr("http").unwrap(),
    ];
    let mut tasks = Vec::new();
    for i in 0..40 {
        let addr = addrs[i % 2];
        tasks.push(tokio::spawn(
            async move { fetch(addr, "/slow", "GET").await },
        ));
    }
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "slow");
    }
    assert_eq!(hits.load(SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_cluster_fails_no_request() {
    // Ports that were free a moment ago: nothing answers there.
    let dead: Vec<String> = (0..3)
        .map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            format!("redis://127.0.0.1:{port}")
        })
        .collect();
    let (origin, hits) = tagged_origin().await;
    let text = format!(
        "{}\n[cache]\nenabled = true\n\n[redis]\ncluster_nodes = {dead:?}\n",
        simple_config(&[origin.addr], "")
    );
    let proxy = weir(&text).await;
    let addr = proxy.listener_addr("http").unwrap();
    for i in 0..20 {
        let reply = fetch(addr, &format!("/a/{}", i % 4), "GET").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // L1 still works: 4 distinct objects, 4 origin requests.
    assert_eq!(hits.load(SeqCst), 4);
}
