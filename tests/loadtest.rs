//! `weir loadtest` against real servers on loopback: the closed and open models, stages,
//! the coordinated-omission correction, HTTP/2, SLO verdicts and the command line
//! (exit codes, JSON, scenarios file, HTML). Every run is bounded to a few seconds.

mod common;

use std::time::Duration;

use common::*;
use http::Response;
use weir::loadtest::engine::Progress;
use weir::loadtest::{Model, Plan, Slo, Stage, execute};

async fn origin(delay: Duration) -> Upstream {
    upstream(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::new(full("ok"))
    })
    .await
}

fn plan(origin: &Upstream, model: Model, stages: Vec<Stage>) -> Plan {
    Plan {
        name: "test".into(),
        targets: vec![format!("http://{}/x", origin.addr).parse().unwrap()],
        http2: false,
        model,
        stages,
        max_requests: u64::MAX,
        timeout: Duration::from_secs(5),
        max_connections: 64,
        slo: Slo::default(),
    }
}

fn constant(seconds: f64, target: f64) -> Vec<Stage> {
    vec![Stage {
        duration: Duration::from_secs_f64(seconds),
        target,
        ramp: false,
    }]
}

#[tokio::test]
async fn the_closed_model_stops_at_its_request_count() {
    let origin = origin(Duration::ZERO).await;
    let mut p = plan(&origin, Model::Closed, constant(10.0, 8.0));
    p.max_requests = 2_000;
    let report = execute(&p, Progress::Silent).await.unwrap();
    assert_eq!(report.completed(), 2_000);
    assert_eq!(report.failed(), 0);
    assert!(report.elapsed < Duration::from_secs(10));
    assert_eq!(
        report.timeline.iter().map(|s| s.completed).sum::<u64>(),
        2_000
    );
}

#[tokio::test]
async fn the_open_model_keeps_its_rate_whatever_the_latency() {
    // 200 req/s for 2 s against a 30 ms origin: 400 requests, none waiting.
    let origin = origin(Duration::from_millis(30)).await;
    let report = execute(
        &plan(&origin, Model::Open, constant(2.0, 200.0)),
        Progress::Silent,
    )
    .await
    .unwrap();
    assert_eq!(report.completed(), 400);
    assert!(report.latency_ms(0.5) >= 30.0 && report.latency_ms(0.5) < 60.0);
    assert_eq!(report.late, 0);
}

#[tokio::test]
async fn waiting_for_a_busy_connection_counts_against_the_server() {
    // One connection, 50 ms per answer, 40 req/s scheduled: the server can do 20/s, so
    // requests queue. Latency from the scheduled start shows the queue; the service
    // time alone would hide it (coordinated omission).
    let origin = origin(Duration::from_millis(50)).await;
    let mut p = plan(&origin, Model::Open, constant(1.0, 40.0));
    p.max_connections = 1;
    let report = execute(&p, Progress::Silent).await.unwrap();
    let service = report.service_latency.as_ref().unwrap();
    let service_p99 = service.value_at_quantile(0.99) as f64 / 1000.0;
    assert!(service_p99 < 100.0, "service p99 {service_p99}");
    assert!(
        report.latency_ms(0.99) > 400.0,
        "corrected p99 {}",
        report.latency_ms(0.99)
    );
    assert!(report.late >= 15, "{} late", report.late);
}

#[tokio::test]
async fn stages_change_the_load_during_the_run() {
    // 1 connection, then 4, against a 10 ms origin: about 100 then 400 answers a second.
    let origin = origin(Duration::from_millis(10)).await;
    let stages = weir::loadtest::plan::parse_stages("1s:1,1s:4").unwrap();
    let report = execute(&plan(&origin, Model::Closed, stages), Progress::Silent)
        .await
        .unwrap();
    let first = report.timeline[0].completed as f64;
    let second = report.timeline[1].completed as f64;
    assert!(second > 2.5 * first, "{first} then {second}");
    assert_eq!(report.timeline[1].target, 4.0);
}

#[tokio::test]
async fn http2_multiplexes_over_h2c() {
    let origin = origin(Duration::from_millis(5)).await;
    let mut p = plan(&origin, Model::Open, constant(1.0, 300.0));
    p.http2 = true;
    let report = execute(&p, Progress::Silent).await.unwrap();
    assert!(report.completed() >= 298, "{}", report.completed());
    assert_eq!(report.failed(), 0);
}

#[tokio::test]
async fn unreachable_targets_fail_fast_and_fail_the_slo() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut p = Plan {
        targets: vec![format!("http://127.0.0.1:{port}/").parse().unwrap()],
        ..plan(
            &origin(Duration::ZERO).await,
            Model::Closed,
            constant(0.5, 2.0),
        )
    };
    p.slo.p99_ms = Some(100.0);
    p.slo.max_error_rate = Some(0.01);
    let report = execute(&p, Progress::Silent).await.unwrap();
    assert!(report.errors.contains_key("connect"));
    // Bounded: a refused connection backs off instead of spinning.
    assert!(report.failed() < 500, "{} attempts", report.failed());
    let verdicts = weir::loadtest::output::verdicts(&p, &report);
    assert!(verdicts.iter().all(|v| !v.ok), "{verdicts:?}");
}

fn weir_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
}

#[tokio::test]
async fn the_command_line_reports_json_and_exits_3_when_an_slo_fails() {
    let origin = origin(Duration::from_millis(20)).await;
    let url = format!("http://{}/x", origin.addr);
    let ok = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            weir_bin()
                .args([
                    "loadtest", &url, "-c", "4", "-d", "1s", "--json", "--p99", "1000",
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert!(json["answered"].as_u64().unwrap() > 50);
    assert_eq!(json["slo"][0]["check"], "p99_ms");
    assert_eq!(json["slo"][0]["ok"], true);
    assert!(json["latency_ms"]["p50"].as_f64().unwrap() >= 20.0);
    assert!(!json["timeline"].as_array().unwrap().is_empty());

    let failing = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            weir_bin()
                .args(["loadtest", &url, "--rate", "50", "-d", "1s", "--p99", "5"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(failing.status.code(), Some(3));
    let text = String::from_utf8_lossy(&failing.stdout);
    assert!(text.contains("p99_ms") && text.contains("FAILED"), "{text}");

    let bad = weir_bin()
        .args(["loadtest", "https://example.com/"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("https is not supported yet"));
}

#[tokio::test]
async fn a_scenarios_file_runs_each_scenario_and_writes_the_chart() {
    let origin = origin(Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let scenarios = dir.path().join("scenarios.toml");
    std::fs::write(
        &scenarios,
        format!(
            r#"
targets = ["http://{}/api"]

[[scenario]]
name = "baseline"
model = "open"
stages = [{{ duration = "1s", rate = 100 }}]
slo = {{ p99_ms = 500, max_error_rate = 0.01, min_rps = 90 }}

[[scenario]]
name = "spike"
model = "open"
stages = [{{ duration = "500ms", rate = 50 }}, {{ duration = "500ms", rate = 400 }}]
"#,
            origin.addr
        ),
    )
    .unwrap();
    let html = dir.path().join("run.html");
    let (scenarios, html_path) = (scenarios.clone(), html.clone());
    let out = tokio::task::spawn_blocking(move || {
        weir_bin()
            .args(["loadtest", "--scenarios"])
            .arg(&scenarios)
            .arg("--html")
            .arg(&html_path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("\"baseline\"") && text.contains("\"spike\""),
        "{text}"
    );
    assert!(
        text.contains("min_rps") && !text.contains("FAILED"),
        "{text}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<svg").count(), 2);
}
