//! Faults under continuous, bounded load (loopback only): an upstream killed and brought
//! back, an upstream that hangs, an upstream that resets mid-body, Redis stopped and
//! restarted under a caching route.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;
use http::Response;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// An upstream on a fixed port that can be killed (listener closed, every connection
/// dropped mid-flight) and started again.
struct Killable {
    stop: CancellationToken,
}

impl Killable {
    async fn start(addr: SocketAddr, name: &'static str) -> Self {
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("x-upstream", name)
                                .body(full(name))
                                .unwrap(),
                        )
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! { _ = conn => {}, _ = token.cancelled() => {} }
                });
            }
        });
        Self { stop }
    }

    fn kill(self) {
        self.stop.cancel();
    }
}

fn load(proxy: SocketAddr, requests: u64) -> tokio::task::JoinHandle<weir::loadtest::LoadReport> {
    tokio::spawn(async move {
        weir::loadtest::run(weir::loadtest::LoadOptions {
            targets: vec![format!("http://{proxy}/").parse().unwrap()],
            requests,
            concurrency: 8,
            deadline: Duration::from_secs(60),
        })
        .await
        .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_upstream_under_load_fails_no_request_and_it_comes_back() {
    let port = closed_port().await;
    let victim = Killable::start(port, "victim").await;
    let b = named_upstream("b").await;
    let c = named_upstream("c").await;
    let config = simple_config(
        &[port, b.addr, c.addr],
        "passive = { consecutive_failures = 3, base_ejection = \"300ms\", half_open_probes = 1 }",
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let running = load(proxy, 6_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim.kill();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let revived = Killable::start(port, "victim").await;
    let report = running.await.unwrap();
    assert_eq!(report.failed(), 0, "{:?}", report.errors);
    assert_eq!(
        report.statuses.get(&200),
        Some(&6_000),
        "{:?}",
        report.statuses
    );
    // It is back in rotation within the ejection interval plus a probe.
    let mut back = false;
    for _ in 0..100 {
        if get(proxy, "/").await.header("x-upstream") == Some("victim") {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "the revived endpoint gets traffic again");
    let pool = &weir.state().snapshot.load().pools["main"];
    eprintln!(
        "kill/revive: 6000 requests, 0 failed, retries {}, ejections {}",
        pool.stats.retries.load(Relaxed),
        pool.endpoint(&port.to_string())
            .unwrap()
            .stats
            .ejections
            .load(Relaxed)
    );
    assert_eq!(pool.stats.in_flight.load(Relaxed), 0, "nothing leaked");
    revived.kill();
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upstream_costs_bounded_failures() {
    // Accepts connections and never answers.
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = hang.accept().await {
            keep.lock().unwrap().push(stream);
        }
    });
    let good = named_upstream("good").await;
    let config = simple_config(
        &[hang_addr, good.addr],
        "response_timeout = \"200ms\"\nretry = { on = [\"connect\", \"reset\", \"timeout\"] }\npassive = { consecutive_failures = 2, base_ejection = \"10s\" }",
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let report = load(proxy, 2_000).await.unwrap();
    // Timeouts are retried on the good endpoint, and the hanging one is ejected after 2.
    assert_eq!(report.failed(), 0, "{:?}", report.errors);
    assert_eq!(
        report.statuses.get(&200),
        Some(&2_000),
        "{:?}",
        report.statuses
    );
    let snapshot = weir.state().snapshot.load();
    let hung = snapshot.pools["main"]
        .endpoint(&hang_addr.to_string())
        .unwrap();
    let timeouts = hung.stats.timeouts.load(Relaxed);
    assert!(
        timeouts <= 10,
        "bounded: {timeouts} requests waited for the hanging endpoint"
    );
    eprintln!("hanging upstream: 2000 requests, 0 failed, {timeouts} timed out and were retried");
    drop(snapshot);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_mid_body_are_reported_not_hidden() {
    // Sends a head promising 1000 bytes, 10 of them, then resets.
    let flaky = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789").await;
    let good = named_upstream("good").await;
    // Passive ejection off, to see every cut body reach the client as one (with ejection
    // on they stop after a few: the next test).
    let config = simple_config(&[flaky, good.addr], "passive = { enabled = false }");
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let report = load(proxy, 400).await.unwrap();
    // The head was already on its way when the body broke: the client sees a cut body,
    // or, when the break came in the same read as the head (the exchange runs in the
    // request's task, so weir can learn of both before it writes), a connection closed
    // before any answer. Both are errors to the client; never a silently shortened 200.
    let failed = report.failed();
    assert_eq!(
        failed + report.statuses.get(&200).copied().unwrap_or(0),
        400
    );
    assert!(
        (150..=250).contains(&failed),
        "about half went to the flaky one: {failed}"
    );
    assert!(
        report
            .errors
            .keys()
            .all(|k| k == "body read failed" || k == "request failed"),
        "{:?}",
        report.errors
    );
    eprintln!("reset mid-body: 400 requests, {failed} cut bodies reported to the client");
    weir.shutdown().await;
}

/// Runs bounded batches of `batch` requests over `targets` until `stop` is set (or 30 s
/// pass); every batch's report.
fn load_until(
    targets: Vec<http::Uri>,
    batch: u64,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<weir::loadtest::LoadReport>> {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut reports = Vec::new();
        while !stop.is_cancelled() && tokio::time::Instant::now() < deadline {
            let options = weir::loadtest::LoadOptions {
                targets: targets.clone(),
                requests: batch,
                concurrency: 8,
                deadline: Duration::from_secs(10),
            };
            reports.push(weir::loadtest::run(options).await.unwrap());
        }
        reports
    })
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_and_restarting_redis_under_load_fails_no_request() {
    let mut redis = RedisServer::start().await;
    // 64 objects fresh for 1 s: the load keeps missing, reading and writing L2.
    let origin = upstream(|req| async move {
        Response::builder()
            .header("cache-control", "max-age=1")
            .body(full(req.uri().path().to_owned()))
            .unwrap()
    })
    .await;
    let config = simple_config(&[origin.addr], "")
        + &format!(
            "\n[cache]\nenabled = true\n[redis]\nurl = \"{}\"\n",
            redis.url()
        );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let targets: Vec<http::Uri> = (0..64)
        .map(|i| format!("http://{proxy}/object/{i}").parse().unwrap())
        .collect();
    let snapshot = weir.state().snapshot.load_full();
    let tier = snapshot.redis.clone().expect("redis configured");

    // Warm up at the same concurrency, then count what is alive.
    let stop = CancellationToken::new();
    let _ = weir::loadtest::run(weir::loadtest::LoadOptions {
        targets: targets.clone(),
        requests: 400,
        concurrency: 8,
        deadline: Duration::from_secs(10),
    })
    .await
    .unwrap();
    let tasks_before = alive_tasks();

    let running = load_until(targets.clone(), 500, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(tier.is_open(), "the breaker opened while Redis was down");
    redis.restart().await;
    let restarted = tokio::time::Instant::now();
    // Reconnected: the breaker closed and writes reach the new (empty) server.
    let reconnected = loop {
        if !tier.is_open() && redis.dbsize().await > 0 {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "Redis never came back into use"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let reports = running.await.unwrap();
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let failures: u64 = reports.iter().map(|r| r.failures()).sum();
    let ok: u64 = reports
        .iter()
        .map(|r| r.statuses.get(&200).copied().unwrap_or(0))
        .sum();
    assert_eq!(
        failures,
        0,
        "{:?}",
        reports.iter().map(|r| &r.errors).collect::<Vec<_>>()
    );
    assert_eq!(ok, sent);
    assert!(
        sent >= 2_000,
        "the load spanned the outage: {sent} requests"
    );
    // Recovery: the breaker's PING probe (every 250 ms) finds Redis back; allow for a
    // loaded machine.
    assert!(reconnected < Duration::from_secs(3), "{reconnected:?}");
    let stats = &tier.stats;

    // Nothing leaked: connections and in-flight back to zero, tasks back to the count
    // before the fault give or take the pooled upstream connections (one task each, at most
    // one per concurrent request); a per-request leak would show in the tens of thousands.
    let pool = &snapshot.pools["main"];
    let mut settled = false;
    for _ in 0..100 {
        if pool.stats.in_flight.load(Relaxed) == 0
            && weir.state().stats.connections_active.load(Relaxed) == 0
            && alive_tasks() <= tasks_before + 8
        {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        settled,
        "in flight {}, connections {}, tasks {} (before {tasks_before})",
        pool.stats.in_flight.load(Relaxed),
        weir.state().stats.connections_active.load(Relaxed),
        alive_tasks()
    );
    eprintln!(
        "redis stop/restart: {sent} requests, 0 failed; {} redis errors, {} timeouts, {} skipped while open, breaker opened {}x; reconnected {reconnected:?} after restart; tasks {} (before {tasks_before})",
        stats.errors.load(Relaxed),
        stats.timeouts.load(Relaxed),
        stats.skipped.load(Relaxed),
        stats.breaker_opened.load(Relaxed),
        alive_tasks(),
    );
    drop(snapshot);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_resets_mid_body_is_ejected() {
    let flaky = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789").await;
    let good = named_upstream("good").await;
    let config = simple_config(
        &[flaky, good.addr],
        "passive = { consecutive_failures = 3, base_ejection = \"10s\" }",
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let report = load(proxy, 2_000).await.unwrap();
    // Cut bodies count against the endpoint like resets before the head: after a few it
    // is ejected and the rest go to the good one.
    let failed = report.failed();
    assert_eq!(
        failed + report.statuses.get(&200).copied().unwrap_or(0),
        2_000
    );
    assert!(failed <= 12, "bounded: {failed} cut bodies");
    let snapshot = weir.state().snapshot.load();
    let endpoint = snapshot.pools["main"].endpoint(&flaky.to_string()).unwrap();
    assert!(endpoint.stats.ejections.load(Relaxed) >= 1);
    eprintln!("reset mid-body with ejection: 2000 requests, {failed} cut bodies, then ejected");
    drop(snapshot);
    weir.shutdown().await;
}
