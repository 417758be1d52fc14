//! Serving runtimes (`[server] threads`): with more than one, each worker thread runs a
//! single-threaded runtime accepting on its own `SO_REUSEPORT` socket; with 1, weir serves
//! on the runtime it was started on. (Every other test file runs the default, `threads =
//! 0`: one runtime per core.)

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Names of this process's threads that are weir serving runtimes.
fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
                .filter(|name| name.starts_with("weir-worker"))
                .count()
        })
        .unwrap_or(0)
}

/// Waits until `n` serving runtime threads run (a thread names itself as it starts).
async fn worker_threads_become(n: usize) {
    common::wait::eventually(&format!("{n} weir-worker threads"), async || {
        worker_threads() == n
    })
    .await;
}

fn runtime_counts(weir: &weir::app::Running) -> Vec<u64> {
    weir.state()
        .stats
        .connections_by_runtime
        .iter()
        .map(|c| c.load(Relaxed))
        .collect()
}

fn config(up: std::net::SocketAddr, threads: usize, max_connections: usize) -> String {
    simple_config(&[up], "").replace(
        "[[listeners]]",
        &format!(
            "[server]\nthreads = {threads}\n\n[[listeners]]\nmax_connections = {max_connections}"
        ),
    )
}

/// One test, run alone in this binary, so that the thread counts are this weir's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtimes_share_the_listeners_the_limits_and_stop_with_weir() {
    assert_eq!(worker_threads(), 0);
    let up = named_upstream("u").await;

    // Two serving runtimes: connections reach both, every request is answered.
    let config_two = config(up.addr, 2, 10_000);
    let running = weir(&config_two).await;
    worker_threads_become(2).await;
    let proxy = running.listener_addr("http").unwrap();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..64 {
        clients.spawn(async move {
            let client = http1_client();
            for _ in 0..10 {
                let request = http::Request::get(format!("http://{proxy}/"))
                    .body(empty())
                    .unwrap();
                let reply = send(&client, request).await;
                assert_eq!(reply.status, 200);
                assert_eq!(reply.header("x-upstream"), Some("u"));
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let counts = runtime_counts(&running);
    assert_eq!(counts.iter().sum::<u64>(), 64, "{counts:?}");
    // The kernel hashes connections across the two sockets: both get some (all 64 on
    // one has odds of 2^-63).
    assert!(counts[0] > 0 && counts[1] > 0, "{counts:?}");
    assert!(counts[2..].iter().all(|&c| c == 0), "{counts:?}");
    let report = running.shutdown().await;
    assert!(report.completed);
    // Drained and stopped: the worker threads are gone.
    worker_threads_become(0).await;

    // `max_connections` holds for the listener as a whole, not per runtime.
    let config_limited = config(up.addr, 2, 3);
    let limited = weir(&config_limited).await;
    let proxy = limited.listener_addr("http").unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
        held.push(stream);
    }
    for _ in 0..4 {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    }
    assert_eq!(limited.state().stats.connections_refused.load(Relaxed), 4);
    drop(held);
    limited.shutdown().await;
    worker_threads_become(0).await;

    // One runtime: no worker threads, everything on the caller's.
    let config_one = config(up.addr, 1, 10_000);
    let single = weir(&config_one).await;
    assert_eq!(worker_threads(), 0);
    let proxy = single.listener_addr("http").unwrap();
    for _ in 0..5 {
        assert_eq!(get(proxy, "/").await.status, 200);
    }
    assert_eq!(runtime_counts(&single)[0], 5);
    single.shutdown().await;
}
