//! The control loop inside a running weir: real origins, real load, the autoscaler's
//! decisions through the admin API, actions run as real commands and webhooks, instance
//! load reports, metrics and the capacity report.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};

const TOKEN: &str = "test-token-0123456789";

/// An origin that takes `delay` per request, so load shows up as requests in flight.
async fn slow_origin(delay: Duration) -> Upstream {
    upstream(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::new(full("ok"))
    })
    .await
}

fn config(origin: SocketAddr, autoscale: &str) -> String {
    format!(
        "{}\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n[control]\ninterval = \"100ms\"\n\n[[control.autoscale]]\npool = \"main\"\nmin_instances = 1\nmax_instances = 8\ntarget_in_flight = 2.0\nsignal_window = \"300ms\"\nscale_down_window = \"1s\"\nscale_up_cooldown = \"10s\"\n{autoscale}\n",
        simple_config(&[origin], "")
    )
}

async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(full(body.to_owned()))
        .unwrap();
    send(&http1_client(), request).await
}

/// Keeps `concurrency` requests going for `duration` (bounded).
async fn load(proxy: SocketAddr, concurrency: usize, duration: Duration) {
    let until = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            while tokio::time::Instant::now() < until && sent < 10_000 {
                assert_eq!(get(proxy, "/work").await.status, StatusCode::OK);
                sent += 1;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Polls the scaling endpoint until `done` accepts it (at most ~5 s).
async fn wait_for_scaling(
    admin_addr: SocketAddr,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let reply = admin(admin_addr, "GET", "/api/v1/pools/main/scaling", "").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        last = serde_json::from_slice(&reply.body).unwrap();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("scaling never got there: {last}");
}

fn last_up(scaling: &serde_json::Value) -> Option<&serde_json::Value> {
    scaling["history"]
        .as_array()?
        .iter()
        .find(|d| d["direction"] == "up")
}

#[tokio::test]
async fn load_scales_up_and_the_command_gets_the_decision() {
    let origin = slow_origin(Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("decision.json");
    let script = format!(
        "cat > {out}; echo \"$WEIR_POOL $WEIR_CURRENT $WEIR_DESIRED $WEIR_DIRECTION\" >> {out}.env",
        out = out.display()
    );
    let proxy = weir(&config(
        origin.addr,
        &format!("dry_run = false\naction = {{ command = [\"sh\", \"-c\", {script:?}], timeout = \"5s\" }}"),
    ))
    .await;
    let addr = proxy.listener_addr("http").unwrap();
    let admin_addr = proxy.admin_addr().unwrap();
    // 8 concurrent 50 ms requests: ~8 in flight on one instance, target 2 → 4 instances.
    load(addr, 8, Duration::from_millis(800)).await;
    let scaling = wait_for_scaling(admin_addr, |s| {
        last_up(s).is_some_and(|d| d["action"].is_object())
    })
    .await;
    let up = last_up(&scaling).unwrap();
    assert_eq!(up["current"], 1);
    let desired = up["desired"].as_u64().unwrap();
    assert!((3..=5).contains(&desired), "{up}");
    assert_eq!(up["rule"], "in_flight");
    let explanation = up["explanation"].as_str().unwrap();
    assert!(
        explanation.starts_with(&format!("1 → {desired}: ")),
        "{explanation}"
    );
    assert!(
        explanation.contains("in flight per instance vs target 2"),
        "{explanation}"
    );
    assert_eq!(up["action"]["ok"], true, "{up}");
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(written["desired"], desired);
    assert_eq!(written["pool"], "main");
    let env = std::fs::read_to_string(format!("{}.env", out.display())).unwrap();
    assert_eq!(env.trim(), format!("main 1 {desired} up"));

    // The cooldown holds the next decisions, and they say so.
    let held = wait_for_scaling(admin_addr, |s| {
        s["last"]["limited_by"]
            .as_str()
            .is_some_and(|l| l.contains("cooldown"))
            || s["last"]["direction"] == "hold"
    })
    .await;
    assert_eq!(held["last"]["current"], 1);

    let metrics = admin(admin_addr, "GET", "/metrics", "").await.text();
    assert!(
        metrics.contains("weir_autoscale_changes_total{pool=\"main\",direction=\"up\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("weir_autoscale_action_failures_total{pool=\"main\"} 0"));
}

#[tokio::test]
async fn dry_run_decides_but_runs_nothing_and_a_webhook_gets_posts_when_live() {
    let origin = slow_origin(Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let proxy = weir(&config(
        origin.addr,
        &format!(
            "action = {{ command = [\"touch\", \"{}\"] }}",
            marker.display()
        ),
    ))
    .await;
    load(
        proxy.listener_addr("http").unwrap(),
        8,
        Duration::from_millis(600),
    )
    .await;
    let scaling = wait_for_scaling(proxy.admin_addr().unwrap(), |s| last_up(s).is_some()).await;
    let up = last_up(&scaling).unwrap();
    assert_eq!(up["dry_run"], true);
    assert!(up["action"].is_null());
    assert!(!marker.exists(), "a dry run must not act");

    let received = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = received.clone();
    let hook = upstream(move |req| {
        let sink = sink.clone();
        async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            sink.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            Response::new(full("thanks"))
        }
    })
    .await;
    let proxy = weir(&config(
        origin.addr,
        &format!(
            "dry_run = false\naction = {{ webhook = \"http://{}/scale\" }}",
            hook.addr
        ),
    ))
    .await;
    load(
        proxy.listener_addr("http").unwrap(),
        8,
        Duration::from_millis(600),
    )
    .await;
    let scaling = wait_for_scaling(proxy.admin_addr().unwrap(), |s| {
        last_up(s).is_some_and(|d| d["action"].is_object())
    })
    .await;
    let up = last_up(&scaling).unwrap();
    assert_eq!(up["action"]["ok"], true, "{up}");
    assert!(up["action"]["detail"].as_str().unwrap().contains("200 OK"));
    let posts = received.lock().unwrap().clone();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0]["desired"], up["desired"]);
}

#[tokio::test]
async fn a_slow_action_times_out_and_is_recorded_as_failed() {
    let origin = slow_origin(Duration::from_millis(50)).await;
    let proxy = weir(&config(
        origin.addr,
        "dry_run = false\naction = { command = [\"sleep\", \"10\"], timeout = \"200ms\" }",
    ))
    .await;
    load(
        proxy.listener_addr("http").unwrap(),
        8,
        Duration::from_millis(600),
    )
    .await;
    let admin_addr = proxy.admin_addr().unwrap();
    let scaling = wait_for_scaling(admin_addr, |s| {
        last_up(s).is_some_and(|d| d["action"].is_object())
    })
    .await;
    let action = &last_up(&scaling).unwrap()["action"];
    assert_eq!(action["ok"], false);
    assert!(
        action["detail"]
            .as_str()
            .unwrap()
            .contains("timed out after 200ms"),
        "{action}"
    );
    assert!(action["elapsed_ms"].as_u64().unwrap() < 2000);
    let metrics = admin(admin_addr, "GET", "/metrics", "").await.text();
    assert!(
        metrics.contains("weir_autoscale_action_failures_total{pool=\"main\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn reported_cpu_scales_up_and_blocks_scale_in() {
    let origin = slow_origin(Duration::from_millis(1)).await;
    let proxy = weir(&config(origin.addr, "")).await;
    let admin_addr = proxy.admin_addr().unwrap();
    let pools: serde_json::Value = serde_json::from_slice(
        &admin(admin_addr, "GET", "/api/v1/pools/main", "")
            .await
            .body,
    )
    .unwrap();
    let id = pools["endpoints"][0]["id"].as_str().unwrap().to_owned();
    let bad = admin(
        admin_addr,
        "POST",
        &format!("/api/v1/instances/{id}/load"),
        r#"{"cpu": 1.7}"#,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let missing = admin(
        admin_addr,
        "POST",
        "/api/v1/instances/nope/load",
        r#"{"cpu": 0.5}"#,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let ok = admin(
        admin_addr,
        "POST",
        &format!("/api/v1/instances/{id}/load"),
        r#"{"cpu": 0.96, "memory": 0.4}"#,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    // Light traffic, but the instance says its CPU is at 96 %: 96 / 80 → 2 instances.
    load(
        proxy.listener_addr("http").unwrap(),
        1,
        Duration::from_millis(300),
    )
    .await;
    let scaling = wait_for_scaling(admin_addr, |s| last_up(s).is_some()).await;
    let up = last_up(&scaling).unwrap();
    assert_eq!(up["rule"], "cpu", "{up}");
    assert_eq!(up["desired"], 2);
    assert!(
        up["explanation"]
            .as_str()
            .unwrap()
            .contains("cpu 96 % over 80 %")
    );
}

#[tokio::test]
async fn the_report_and_scaling_endpoints_answer_with_what_was_sampled() {
    let origin = slow_origin(Duration::from_millis(5)).await;
    let proxy = weir(&config(origin.addr, "")).await;
    let admin_addr = proxy.admin_addr().unwrap();
    let addr = proxy.listener_addr("http").unwrap();
    for concurrency in [1, 2, 4, 8] {
        load(addr, concurrency, Duration::from_millis(400)).await;
    }
    let control = Arc::clone(proxy.supervisor().control());
    wait::eventually("12 samples", async || control.samples().len() >= 12).await;
    let reply = admin(admin_addr, "GET", "/api/v1/report", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let report: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(
        report["samples"].as_u64().unwrap() >= 12,
        "{}",
        report["samples"]
    );
    let pool = &report["pools"][0];
    assert_eq!(pool["pool"], "main");
    assert!(pool["summary"]["rps_peak"].as_f64().unwrap() > 50.0);
    assert!(pool["forecast"].is_object(), "{}", pool["forecast_note"]);
    assert!(!pool["recommendations"].as_array().unwrap().is_empty());
    let html = admin(admin_addr, "GET", "/api/v1/report.html", "").await;
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let page = html.text();
    assert!(page.contains("<h2>Pool main</h2>") && page.matches("<svg").count() >= 3);

    let limited = admin(admin_addr, "GET", "/api/v1/pools/main/scaling?limit=2", "").await;
    let limited: serde_json::Value = serde_json::from_slice(&limited.body).unwrap();
    assert_eq!(limited["history"].as_array().unwrap().len(), 2);
    assert_eq!(
        admin(admin_addr, "GET", "/api/v1/pools/nope/scaling", "")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let unauthorized = send(
        &http1_client(),
        Request::get(format!("http://{admin_addr}/api/v1/report"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn history_survives_a_restart_and_weir_report_reads_it() {
    let origin = slow_origin(Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("control.jsonl");
    let text = config(origin.addr, "").replace(
        "[control]\n",
        &format!(
            "[control]\nhistory_file = {:?}\n",
            history.display().to_string()
        ),
    );
    let first = weir(&text).await;
    load(
        first.listener_addr("http").unwrap(),
        2,
        Duration::from_millis(600),
    )
    .await;
    let control = Arc::clone(first.supervisor().control());
    wait::eventually("5 samples", async || control.samples().len() >= 5).await;
    let written = control.samples().len();
    assert!(written >= 5, "{written} samples");
    first.shutdown().await;
    let lines = std::fs::read_to_string(&history).unwrap().lines().count();
    assert!(lines >= written, "{lines} lines for {written} samples");

    // A restarted weir starts from the persisted samples.
    let second = weir(&text).await;
    assert!(second.supervisor().control().samples().len() >= written);
    second.shutdown().await;

    let out = dir.path().join("report");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["report", "--history"])
        .arg(&history)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let page = std::fs::read_to_string(out.join("capacity-report.html")).unwrap();
    assert!(page.contains("<h2>Pool main</h2>"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("capacity-report.json")).unwrap()).unwrap();
    assert!(json["pools"][0]["summary"]["requests"].as_f64().unwrap() > 100.0);
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["report", "--history", "/nonexistent/history.jsonl"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("reading /nonexistent/history.jsonl")
    );
}

#[tokio::test]
async fn a_reload_keeps_the_decision_history_and_takes_new_settings() {
    let origin = slow_origin(Duration::from_millis(50)).await;
    let text = config(origin.addr, "");
    let proxy = weir(&text).await;
    load(
        proxy.listener_addr("http").unwrap(),
        8,
        Duration::from_millis(600),
    )
    .await;
    let admin_addr = proxy.admin_addr().unwrap();
    let before = wait_for_scaling(admin_addr, |s| last_up(s).is_some()).await;
    let up_seq = last_up(&before).unwrap()["seq"].clone();
    let reloaded = weir::config::load_str(
        &text.replace("target_in_flight = 2.0", "target_in_flight = 5.0"),
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    let report = proxy.supervisor().apply(reloaded).await;
    assert!(report.ok, "{:?}", report.error);
    let after = wait_for_scaling(admin_addr, |s| s["config"]["target_in_flight"] == 5.0).await;
    assert_eq!(last_up(&after).unwrap()["seq"], up_seq, "history kept");
}

#[tokio::test]
async fn a_slow_action_does_not_hold_up_sampling() {
    let origin = slow_origin(Duration::from_millis(50)).await;
    let proxy = weir(&config(
        origin.addr,
        "dry_run = false\naction = { command = [\"sleep\", \"1.5\"], timeout = \"5s\" }",
    ))
    .await;
    let admin_addr = proxy.admin_addr().unwrap();
    load(
        proxy.listener_addr("http").unwrap(),
        8,
        Duration::from_millis(600),
    )
    .await;
    let scaling = wait_for_scaling(admin_addr, |s| last_up(s).is_some()).await;
    let up_seq = last_up(&scaling).unwrap()["seq"].as_u64().unwrap();
    // Sampling goes on while the 1.5 s action runs.
    let during = wait_for_scaling(admin_addr, |s| {
        s["last"]["seq"]
            .as_u64()
            .is_some_and(|seq| seq >= up_seq + 4)
    })
    .await;
    let up = during["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["seq"] == up_seq)
        .unwrap();
    assert!(up["action"].is_null(), "the action is still running: {up}");
    let last_seq = during["last"]["seq"].as_u64().unwrap();
    assert!(
        last_seq >= up_seq + 4,
        "sampling went on: {up_seq} → {last_seq}"
    );
    let after = wait_for_scaling(admin_addr, |s| {
        s["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["seq"] == up_seq && d["action"]["ok"] == true)
    })
    .await;
    assert!(after["last"]["seq"].as_u64().unwrap() > last_seq);
}
