//! No request waits on a stalled endpoint (issue #21, first part): a per-try timeout moves a
//! request off an endpoint that accepts and never answers, and an endpoint whose requests
//! have waited too long gets no new ones while another is available — for every strategy.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::wait::eventually;
use common::*;
use weir::upstream::Endpoint;

/// An upstream that takes requests and never answers them.
async fn hung_upstream() -> Upstream {
    upstream(|_req| std::future::pending()).await
}

const STRATEGIES: [&str; 4] = ["round_robin", "weighted", "least_connections", "score"];

fn pool_endpoint(weir: &weir::app::Running, address: std::net::SocketAddr) -> Arc<Endpoint> {
    weir.state().snapshot.load().pools["main"]
        .endpoint(&address.to_string())
        .expect("the endpoint is in the pool")
}

/// A hung and a good upstream behind weir: a pool of `strategy` with a 30 s response
/// timeout and `extra` settings.
struct HungAndGood {
    hung: Upstream,
    _good: Upstream,
    weir: weir::app::Running,
    proxy: std::net::SocketAddr,
}

async fn hung_and_good(strategy: &str, extra: &str) -> HungAndGood {
    let hung = hung_upstream().await;
    let good = named_upstream("good").await;
    let weir = weir(&simple_config(
        &[hung.addr, good.addr],
        &format!("strategy = \"{strategy}\"\nresponse_timeout = \"30s\"\n{extra}"),
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    HungAndGood {
        hung,
        _good: good,
        weir,
        proxy,
    }
}

/// A GET that must be answered well inside the pool's 30 s response timeout.
async fn quick_get(proxy: std::net::SocketAddr) -> Reply {
    tokio::time::timeout(Duration::from_secs(5), get(proxy, "/"))
        .await
        .expect("answered without waiting out the response timeout")
}

#[tokio::test]
async fn a_per_try_timeout_moves_requests_off_a_hung_endpoint() {
    for strategy in STRATEGIES {
        let HungAndGood {
            hung,
            _good,
            weir,
            proxy,
        } = hung_and_good(strategy, "retry = { per_try_timeout = \"200ms\" }").await;
        for _ in 0..12 {
            let reply = quick_get(proxy).await;
            assert_eq!(reply.status, 200, "{strategy}");
            assert_eq!(reply.header("x-upstream"), Some("good"), "{strategy}");
        }
        let stuck = pool_endpoint(&weir, hung.addr);
        // Round robin and weighted alternate: the hung endpoint was tried and cut.
        if matches!(strategy, "round_robin" | "weighted") {
            assert!(stuck.stats.timeouts.load(Relaxed) >= 1, "{strategy}");
        }
    }
}

#[tokio::test]
async fn new_requests_avoid_an_endpoint_whose_requests_wait() {
    for strategy in STRATEGIES {
        let HungAndGood {
            hung,
            _good,
            weir,
            proxy,
        } = hung_and_good(
            strategy,
            "retry = { attempts = 0 }\npassive = { stall_after = \"100ms\" }",
        )
        .await;
        let stuck = pool_endpoint(&weir, hung.addr);
        // Requests until one is held by the hung endpoint (the others are answered).
        let mut held = Vec::new();
        while stuck.in_flight() == 0 {
            held.push(tokio::spawn(async move { get(proxy, "/").await }));
            eventually("the request to be answered or held", async || {
                held.last().is_some_and(|h| h.is_finished()) || stuck.in_flight() > 0
            })
            .await;
        }
        eventually("the held request to count as a stall", async || {
            stuck.is_stalled(stuck.now_ms())
        })
        .await;
        let sent_to_stuck = stuck.stats.requests.load(Relaxed);
        for _ in 0..20 {
            let reply = quick_get(proxy).await;
            assert_eq!(reply.header("x-upstream"), Some("good"), "{strategy}");
        }
        assert_eq!(
            stuck.stats.requests.load(Relaxed),
            sent_to_stuck,
            "{strategy}: nothing new for the stalled endpoint"
        );
        for task in held {
            task.abort();
        }
    }
}

#[tokio::test]
async fn a_stalled_endpoint_is_still_used_when_it_is_the_only_one() {
    let hung = hung_upstream().await;
    let weir = weir(&simple_config(
        &[hung.addr],
        "response_timeout = \"500ms\"\nretry = { attempts = 0 }\npassive = { stall_after = \"50ms\" }",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    let stuck = pool_endpoint(&weir, hung.addr);
    let first = tokio::spawn(async move { get(proxy, "/").await });
    eventually("the endpoint to stall", async || {
        stuck.is_stalled(stuck.now_ms())
    })
    .await;
    // Stalled is a preference, not an ejection: with no other endpoint it still gets the
    // request (and its timeout answers it).
    let second = get(proxy, "/").await;
    assert_eq!(second.status, 504);
    assert_eq!(first.await.unwrap().status, 504);
    assert!(stuck.stats.requests.load(Relaxed) >= 2);
}
