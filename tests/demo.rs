//! The README's main job, run in-process with a small request count.

use weir::demo::{DemoOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_every_request_through_every_endpoint() {
    let summary = run(DemoOptions {
        requests: 400,
        concurrency: 8,
    })
    .await
    .expect("demo runs");
    assert_eq!(summary.load.sent, 400);
    assert_eq!(summary.load.completed(), 400);
    assert_eq!(summary.load.failed(), 0);
    assert_eq!(summary.load.statuses.get(&200), Some(&400));
    assert!(summary.admin_ready);
    assert!(summary.drained);
    // api: 3 endpoints, static: 2; each served its round-robin share.
    assert_eq!(summary.endpoints.len(), 5);
    let api: Vec<u64> = summary
        .endpoints
        .iter()
        .filter(|e| e.pool == "api")
        .map(|e| e.requests)
        .collect();
    assert_eq!(api.iter().sum::<u64>(), 300, "3 of 4 demo paths are /api");
    assert!(api.iter().all(|&n| n == 100), "{api:?}");
    let slow = summary
        .endpoints
        .iter()
        .find(|e| e.upstream == "gamma-slow")
        .unwrap();
    assert!(
        slow.mean_latency_ms >= 25.0,
        "slow upstream shows its delay"
    );
    let printed = summary.to_string();
    assert!(printed.contains("latency p50"), "{printed}");
    assert!(printed.contains("gamma-slow"), "{printed}");
}
