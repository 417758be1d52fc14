//! Faults under continuous, bounded load (loopback only): an upstream killed and brought
//! back, an upstream that hangs, an upstream that resets mid-body.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

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
    let config = simple_config(
        &[flaky, good.addr],
        "passive = { consecutive_failures = 1000 }",
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let report = load(proxy, 400).await.unwrap();
    // The head was already sent when the body broke: the client sees a cut body (counted
    // as an error), never a silently shortened 200.
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
        report.errors.keys().all(|k| k == "body read failed"),
        "{:?}",
        report.errors
    );
    eprintln!("reset mid-body: 400 requests, {failed} cut bodies reported to the client");
    weir.shutdown().await;
}
