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
    // api (score): 3 endpoints, the slow one gets the least; static (round robin): even.
    assert_eq!(summary.endpoints.len(), 5);
    let requests = |pool: &str, upstream: &str| {
        summary
            .endpoints
            .iter()
            .find(|e| e.pool == pool && e.upstream == upstream)
            .map(|e| e.requests)
            .unwrap()
    };
    let api = [
        requests("api", "alpha"),
        requests("api", "beta"),
        requests("api", "gamma-slow"),
    ];
    // 3 of 4 demo paths are /api, plus the ramp of 4 × 50 API requests before the load.
    assert_eq!(api.iter().sum::<u64>(), 300 + 200);
    assert!(
        api[2] < api[0] && api[2] < api[1],
        "score avoids the slow one: {api:?}"
    );
    // The static route is cached: one upstream request, coalesced, then hits.
    let cache = summary.cache.as_ref().expect("the demo caches /static/");
    assert_eq!(
        requests("static", "alpha") + requests("static", "beta"),
        1,
        "misses {}, memory hits {}, stores {}, statuses {:?}",
        cache.misses,
        cache.hits_memory,
        cache.stores,
        summary.load.statuses
    );
    assert_eq!(cache.misses, 1);
    assert_eq!(cache.hits_memory, 99);
    assert!(cache.hit_ratio > 0.98);
    let slow = summary
        .endpoints
        .iter()
        .find(|e| e.upstream == "gamma-slow")
        .unwrap();
    assert!(
        slow.mean_latency_ms >= 25.0,
        "slow upstream shows its delay"
    );
    assert!(summary.endpoints.iter().all(|e| e.state == "healthy"));
    let printed = summary.to_string();
    assert!(printed.contains("latency p50"), "{printed}");
    assert!(printed.contains("gamma-slow"), "{printed}");
    assert!(printed.contains("hit ratio 99.0 %"), "{printed}");
    // The control loop sampled the run, the autoscaler explained itself, the report exists.
    let control = summary
        .control
        .as_ref()
        .expect("the demo runs the control loop");
    assert!(control.samples >= 5, "{} samples", control.samples);
    let decision = control.decision.as_ref().expect("an autoscaler decision");
    assert_eq!(decision.pool, "api");
    assert!(!decision.explanation.is_empty());
    let html = control.report_html.as_ref().expect("a report file");
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.contains("<h2>Pool api</h2>") && page.contains("<svg"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(control.report_json.as_ref().unwrap()).unwrap())
            .unwrap();
    assert_eq!(json["pools"][0]["pool"], "api");
    assert!(printed.contains("control autoscaler for api"), "{printed}");
    assert!(printed.contains("capacity-report.html"), "{printed}");
    // The API's SLO: every answer of the run was good (the ramp's included).
    let slo = control.slo.as_ref().expect("the demo's SLO");
    assert_eq!(slo.name, "api-availability");
    assert!(slo.total >= 300 && slo.good == slo.total, "{slo:?}");
    assert_eq!(slo.error_budget_remaining, 1.0);
    assert!(
        printed.contains("slo     api-availability (99.9 % over 28days)"),
        "{printed}"
    );
    assert!(control.alerts.is_empty(), "{:?}", control.alerts);
    assert!(
        printed.contains("alerts  none raised (4 rules watched)"),
        "{printed}"
    );
    assert!(page.contains("<h2>Service-level objectives</h2>"));
}
