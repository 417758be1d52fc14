//! Trace context propagation and access log lines.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::{Request, Response};
use serde_json::Value;

/// Upstream answering with the trace headers it received; `/static/…` is cacheable.
async fn trace_echo() -> Upstream {
    upstream(|req| async move {
        let get = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let mut response = Response::new(full(format!(
            "{}|{}",
            get("traceparent"),
            get("tracestate")
        )));
        if req.uri().path().starts_with("/static/") {
            response
                .headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
        }
        response
    })
    .await
}

/// Sends `path` with a client trace and without one: the upstream gets the client's trace
/// continued under weir's span, then a trace weir started.
async fn assert_traceparent_continued_or_started(proxy: std::net::SocketAddr, path: &str) {
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = Request::get(format!("http://{proxy}{path}"))
        .header("traceparent", incoming)
        .header("tracestate", "vendor=abc")
        .body(empty())
        .unwrap();
    let reply = send(&http1_client(), request).await.text();
    let (sent, state) = reply.split_once('|').unwrap();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts[0], "00", "{path}");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "weir's own span is the parent upstream"
    );
    assert_eq!(parts[3], "01", "the client's sampling decision is kept");
    assert_eq!(state, "vendor=abc");

    let fresh = get(proxy, &format!("{path}-fresh")).await.text();
    let parts: Vec<&str> = fresh.split('|').next().unwrap().split('-').collect();
    assert_eq!(
        (parts.len(), parts[1].len(), parts[2].len(), parts[3]),
        (4, 32, 16, "00"),
        "{fresh}"
    );
}

#[tokio::test]
async fn traceparent_is_continued_or_started() {
    let up = trace_echo().await;
    let weir = weir(&simple_config(&[up.addr], "")).await;
    let proxy = weir.listener_addr("http").unwrap();
    assert_traceparent_continued_or_started(proxy, "/").await;
    weir.shutdown().await;

    // With a cache the value is made only when a request goes upstream: the same for a
    // cacheable miss and an uncacheable request; a hit sends nothing.
    let cached = simple_config(&[up.addr], "") + "\n[cache]\nenabled = true\n";
    let weir = crate::weir(&cached).await;
    let proxy = weir.listener_addr("http").unwrap();
    assert_traceparent_continued_or_started(proxy, "/static/a").await;
    assert_traceparent_continued_or_started(proxy, "/dynamic").await;
    let stored = get(proxy, "/static/a").await;
    assert_eq!(
        stored.header("cache-status").map(|s| s.contains("hit")),
        Some(true),
        "the second request is a hit"
    );
    assert!(
        stored
            .text()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "a hit answers what the first request's upstream said"
    );
    weir.shutdown().await;

    let off = simple_config(&[up.addr], "") + "\n[headers]\ntraceparent = false\n";
    let weir = crate::weir(&off).await;
    assert_eq!(
        get(weir.listener_addr("http").unwrap(), "/").await.text(),
        "|"
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn access_log_lines_carry_request_trace_route_and_timings() {
    let up = trace_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(
        &path,
        simple_config(&[up.addr], "") + "\n[server]\naccess_log = true\n[cache]\nenabled = true\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(event);
            }
        }
    });
    let proxy: std::net::SocketAddr = loop {
        let event = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        if event["message"] == "listening" {
            break event["address"].as_str().unwrap().parse().unwrap();
        }
    };
    let request = Request::get(format!("http://{proxy}/orders/7?x=1"))
        .header("x-request-id", "log-test-1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(empty())
        .unwrap();
    assert_eq!(send(&http1_client(), request).await.status, 200);
    let next_access_line = || loop {
        let event = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        if event["message"] == "access" {
            break event;
        }
    };
    let line = next_access_line();
    // A cacheable object: fetched once, then answered by the memory tier.
    let mut cache_lines = Vec::new();
    for _ in 0..2 {
        get(proxy, "/static/app.js").await;
        cache_lines.push(next_access_line());
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert_eq!(line["target"], "weir::access");
    assert_eq!(line["request_id"], "log-test-1");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/orders/7");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "routes[0]");
    assert_eq!(line["endpoint"], up.addr.to_string());
    assert_eq!(line["attempts"], 1);
    assert!(line["duration_ms"].as_f64().unwrap() >= line["upstream_ms"].as_f64().unwrap());
    assert_eq!(line["cache"], "weir-l1; fwd=miss");
    assert_eq!(cache_lines[0]["cache"], "weir-l1; fwd=miss; stored");
    assert_eq!(cache_lines[0]["endpoint"], up.addr.to_string());
    assert!(
        cache_lines[1]["cache"]
            .as_str()
            .unwrap()
            .starts_with("weir-l1; hit"),
        "{}",
        cache_lines[1]
    );
    assert_eq!(cache_lines[1]["endpoint"], "cache");
    assert_eq!(cache_lines[1]["upstream_ms"], 0.0);
}
