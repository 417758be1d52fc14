//! Memory held by work a cached request leaves behind, measured as the process's peak
//! resident set. In a file of its own: the peak is per process, and the other cache
//! tests running beside it would move it.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, StatusCode};

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/self/status")
        * 1024
}

const BODY_BYTES: usize = 256 * 1024 * 1024;
/// The piece `streaming_upstream` sends.
const CHUNK: usize = 64 * 1024;

#[tokio::test]
async fn a_client_304_for_a_256_mib_response_holds_no_body() {
    // A fresh 200 of 256 MiB, streamed without a length, whose ETag the client already
    // has: weir answers 304. What is left of the upstream body is read only within the
    // drain's bounds, and no copy of it is kept past the cache's max_object_bytes.
    let origin = streaming_upstream(
        BODY_BYTES / CHUNK,
        &[("cache-control", "max-age=60"), ("etag", "\"big\"")],
    )
    .await;
    let config = format!(
        "{}\n[cache]\nenabled = true\n",
        simple_config(&[origin.addr], "")
    );
    let weir = weir(&config).await;
    let addr = weir.listener_addr("http").unwrap();
    let cache = weir.state().snapshot.load().cache.clone().unwrap();
    let before = peak_rss();
    for _ in 0..3 {
        let request = Request::get(format!("http://{addr}/big"))
            .header("if-none-match", "\"big\"")
            .body(empty())
            .unwrap();
        let reply = send(&http1_client(), request).await;
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cache.background_tasks() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background drain did not end"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let grown = peak_rss().saturating_sub(before);
    println!(
        "peak RSS grew by {:.1} MiB over three 304s for a {} MiB body",
        grown as f64 / 1048576.0,
        BODY_BYTES / 1048576
    );
    assert!(
        grown < 64 * 1024 * 1024,
        "peak RSS grew by {grown} bytes: the upstream body was held"
    );
    assert_eq!(
        cache.stats.stores.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
