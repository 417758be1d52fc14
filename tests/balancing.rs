//! Strategies through the real proxy, against upstreams whose latency the test controls.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use http::{Request, Response};
use tokio::sync::Notify;

#[tokio::test]
async fn weighted_split_through_the_proxy() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let c = named_upstream("c").await;
    let weir = weir(&weighted_config(
        &[(a.addr, 5), (b.addr, 3), (c.addr, 2)],
        "strategy = \"weighted\"",
    ))
    .await;
    let counts = served_by(weir.listener_addr("http").unwrap(), 1000).await;
    for (name, expected) in [("a", 500.0), ("b", 300.0), ("c", 200.0)] {
        let got = counts[name] as f64;
        assert!((got - expected).abs() / 1000.0 <= 0.02, "{counts:?}");
    }
    weir.shutdown().await;
}

/// An upstream that holds every request until released, and says so when one arrives.
async fn holding_upstream(name: &'static str) -> (Upstream, Arc<Notify>, Arc<Notify>) {
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (a, r) = (arrived.clone(), release.clone());
    let up = upstream(move |_req| {
        let (a, r) = (a.clone(), r.clone());
        async move {
            a.notify_one();
            r.notified().await;
            Response::builder()
                .header("x-upstream", name)
                .body(full(name))
                .unwrap()
        }
    })
    .await;
    (up, arrived, release)
}

#[tokio::test]
async fn least_connections_never_sends_to_the_busier_endpoint() {
    let (busy, arrived, release) = holding_upstream("busy").await;
    let idle = named_upstream("idle").await;
    let weir = weir(&weighted_config(
        &[(busy.addr, 1), (idle.addr, 1)],
        "strategy = \"least_connections\"\nretry = { attempts = 0 }",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    // Park one request on the holding upstream (ties may send a few to the idle one first).
    let mut parked = Vec::new();
    let held = loop {
        parked.push(tokio::spawn(async move { get(proxy, "/").await }));
        tokio::select! {
            _ = arrived.notified() => break true,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if parked.len() > 20 { break false; }
            }
        }
    };
    assert!(held, "a request reached the holding upstream");
    // With one request in flight there and none on the other, every new request goes to
    // the idle endpoint. Round robin would park half of these and time out.
    let counts = tokio::time::timeout(Duration::from_secs(10), served_by(proxy, 50))
        .await
        .expect("no request was sent to the busy endpoint");
    assert_eq!(counts.get("idle"), Some(&50));
    release.notify_waiters();
    release.notify_one();
    for p in parked {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    weir.shutdown().await;
}

async fn delayed_upstream(name: &'static str, delay: Duration) -> Upstream {
    upstream(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::builder()
            .header("x-upstream", name)
            .body(full(name))
            .unwrap()
    })
    .await
}

/// Share of `requests` (at `concurrency`) that the slow upstream served.
async fn slow_share(strategy: &str, requests: u64) -> f64 {
    let mut ups = Vec::new();
    for name in ["f1", "f2", "f3"] {
        ups.push(delayed_upstream(name, Duration::from_millis(1)).await);
    }
    ups.push(delayed_upstream("slow", Duration::from_millis(200)).await);
    let endpoints: Vec<(SocketAddr, u32)> = ups.iter().map(|u| (u.addr, 1)).collect();
    let weir = weir(&weighted_config(
        &endpoints,
        &format!("strategy = \"{strategy}\""),
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    let report = weir::loadtest::run(weir::loadtest::LoadOptions {
        targets: vec![format!("http://{proxy}/").parse().unwrap()],
        requests,
        concurrency: 8,
        deadline: Duration::from_secs(30),
    })
    .await
    .unwrap();
    assert_eq!(report.completed(), requests);
    let snapshot = weir.state().snapshot.load();
    let slow = snapshot.pools["main"]
        .endpoints()
        .iter()
        .find(|e| e.address == ups[3].addr.to_string())
        .unwrap()
        .stats
        .requests
        .load(Relaxed);
    drop(snapshot);
    weir.shutdown().await;
    slow as f64 / requests as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_routing_avoids_a_slow_endpoint_round_robin_does_not() {
    let score = slow_share("score", 800).await;
    assert!(
        score < 0.05,
        "score sent {:.1}% to the slow endpoint",
        score * 100.0
    );
    let round_robin = slow_share("round_robin", 200).await;
    eprintln!(
        "slow endpoint share: score {:.2}%, round robin {:.2}%",
        score * 100.0,
        round_robin * 100.0
    );
    assert!(
        (0.2..=0.3).contains(&round_robin),
        "round robin sent {:.1}%",
        round_robin * 100.0
    );
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_one_endpoint() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let c = named_upstream("c").await;
    let weir = weir(&weighted_config(
        &[(a.addr, 1), (b.addr, 1), (c.addr, 1)],
        "strategy = \"consistent_hash\"\nhash = { key = \"header:x-user\" }",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    let client = http1_client();
    let mut owners = BTreeMap::new();
    for user in 0..60 {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let request = Request::get(format!("http://{proxy}/"))
                .header("x-user", format!("user-{user}"))
                .body(empty())
                .unwrap();
            seen.insert(
                send(&client, request)
                    .await
                    .header("x-upstream")
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(seen.len(), 1, "user-{user} moved between {seen:?}");
        *owners.entry(seen.into_iter().next().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        owners.len(),
        3,
        "keys spread over every endpoint: {owners:?}"
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn sticky_cookie_pins_a_client() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let weir = weir(&weighted_config(
        &[(a.addr, 1), (b.addr, 1)],
        "sticky_cookie = \"weir_affinity\"",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    let first = get(proxy, "/").await;
    let set_cookie = first
        .header("set-cookie")
        .expect("a sticky cookie")
        .to_owned();
    assert!(set_cookie.starts_with("weir_affinity="), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly"));
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let pinned = first.header("x-upstream").unwrap().to_owned();
    for _ in 0..20 {
        let request = Request::get(format!("http://{proxy}/"))
            .header("cookie", &cookie)
            .body(empty())
            .unwrap();
        let reply = send(&http1_client(), request).await;
        assert_eq!(reply.header("x-upstream"), Some(pinned.as_str()));
        assert_eq!(
            reply.header("set-cookie"),
            None,
            "no new cookie while pinned"
        );
    }
    weir.shutdown().await;
}
