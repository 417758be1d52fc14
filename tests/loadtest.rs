//! `weir loadtest` against real servers on loopback: the closed and open models, stages,
//! the coordinated-omission correction, HTTP/2, SLO verdicts and the command line
//! (exit codes, JSON, scenarios file, HTML). Every run is bounded to a few seconds.

mod common;

use std::time::Duration;

use common::*;
use http::Response;
use weir::loadtest::engine::Progress;
use weir::loadtest::plan::{RequestSpec, TlsSpec};
use weir::loadtest::{Model, Plan, Slo, Stage, execute};

async fn origin(delay: Duration) -> Upstream {
    upstream(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::new(full("ok"))
    })
    .await
}

fn plan(origin: &Upstream, model: Model, stages: Vec<Stage>) -> Plan {
    plan_for(&format!("http://{}/x", origin.addr), model, stages)
}

fn plan_for(url: &str, model: Model, stages: Vec<Stage>) -> Plan {
    Plan {
        name: "test".into(),
        targets: vec![url.parse().unwrap()],
        http2: false,
        model,
        stages,
        max_requests: u64::MAX,
        timeout: Duration::from_secs(5),
        max_connections: 64,
        slo: Slo::default(),
        request: RequestSpec::default(),
        tls: TlsSpec::default(),
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

    for (args, reason) in [
        (vec!["ftp://127.0.0.1/"], "targets are http://host[:port]/"),
        (
            vec![url.as_str(), "-H", "no colon"],
            "expected \"Name: value\"",
        ),
        (
            vec![url.as_str(), "-H", "Content-Length: 3"],
            "set by the load generator",
        ),
        (
            vec![url.as_str(), "-m", "NOT A METHOD"],
            "is not an HTTP method",
        ),
        (
            vec![url.as_str(), "--body-file", "/nonexistent/body"],
            "/nonexistent/body",
        ),
    ] {
        let bad = weir_bin().arg("loadtest").args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(bad.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
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
    // Per scenario: throughput, latency, outcomes by kind, and the distribution.
    assert_eq!(page.matches("<svg").count(), 8);
    assert!(
        page.contains("<h2>Scenario baseline</h2>") && page.contains("<h2>Scenario spike</h2>")
    );
    assert!(page.contains("min_rps") && page.contains("class=\"pass\""));
}

/// The points of each polyline drawn in `stroke` with width 2 (data, not axes).
fn lines_of(svg: &str, stroke: &str) -> Vec<Vec<(f64, f64)>> {
    svg.split("<polyline")
        .skip(1)
        .filter(|p| p.contains(&format!("stroke=\"{stroke}\" stroke-width=\"2\"")))
        .filter_map(|p| p.split_once("points=\"").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once('"').map(|(points, _)| points))
        .map(|points| {
            points
                .split_whitespace()
                .filter_map(|xy| xy.split_once(','))
                .map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap()))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn the_html_page_draws_every_second_and_names_every_series() {
    let origin = origin(Duration::from_millis(1)).await;
    let stages = vec![
        Stage {
            duration: Duration::from_millis(1500),
            target: 20.0,
            ramp: false,
        },
        Stage {
            duration: Duration::from_millis(1500),
            target: 60.0,
            ramp: false,
        },
    ];
    let mut plan = plan(&origin, Model::Open, stages);
    plan.slo.p99_ms = Some(500.0);
    let report = execute(&plan, Progress::Silent).await.unwrap();
    let verdicts = weir::loadtest::output::verdicts(&plan, &report);
    let json = weir::loadtest::output::json(&plan, &report, &verdicts);
    let saved = weir::loadtest::saved::SavedRun::from_value(json).unwrap();
    let page = weir::loadtest::html::page(std::slice::from_ref(&saved));

    let charts: Vec<&str> = page.split("<svg").skip(1).collect();
    assert_eq!(charts.len(), 4);
    let expected: [&[&str]; 4] = [
        &[
            "answered/s",
            "failed/s (5xx and errors)",
            "target rate",
            "stage start",
            "seconds since the start",
            "requests per second",
        ],
        &[
            "p50",
            "p99",
            "max",
            "seconds since the start",
            "milliseconds",
        ],
        &["status 200", "seconds since the start", "per second"],
        &[
            "corrected: from the scheduled start",
            "uncorrected: from the actual send",
            "percentile",
            "milliseconds",
            "90 %",
            "99 %",
        ],
    ];
    for (chart, names) in charts.iter().zip(expected) {
        let found = weir::chart::texts(chart);
        for name in names {
            assert!(found.iter().any(|t| t == name), "{name:?} not in {found:?}");
        }
    }
    // Every slot of the timeline is drawn over its whole width: two points each, the
    // last reaching the right end of the time axis (3 s, or the slot past it).
    let slots = saved.timeline.len();
    assert!(slots >= 3, "{slots} slots for a 3 s run");
    let answered = &lines_of(charts[0], "#0072B2")[0];
    assert_eq!(answered.len(), 2 * slots);
    let axis_end = charts[0]
        .split("<polyline")
        .filter(|p| p.contains("stroke=\"#000000\""))
        .filter_map(|p| {
            p.split_once("points=\"")
                .and_then(|(_, r)| r.split_once('"'))
        })
        .filter_map(|(points, _)| {
            let xy: Vec<(f64, f64)> = points
                .split_whitespace()
                .filter_map(|p| p.split_once(','))
                .map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap()))
                .collect();
            (xy.len() == 2 && xy[0].1 == xy[1].1).then(|| xy[1].0)
        })
        .fold(0.0, f64::max);
    assert!(
        (answered[answered.len() - 1].0 - axis_end).abs() <= 1.0,
        "{answered:?} vs {axis_end}"
    );
    // Settings and the SLO, with its verdict.
    assert!(page.contains("open (requests start on schedule"), "{page}");
    assert!(page.contains("1.5 s at 20 req/s; 1.5 s at 60 req/s"));
    assert!(page.contains("<tr><th>connections at most</th><td class=\"text\">64</td></tr>"));
    // Per stage: its seconds and what they saw (slots start at 0, 1 and 2 s: the second
    // stage, from 1.5 s, takes the slot at 2 s and any after).
    assert!(page.contains("<th>worst second's p99</th>"));
    assert!(
        page.contains("<tr><td>1</td><td>0.0–1.5</td><td class=\"text\">20 req/s</td>"),
        "{page}"
    );
    assert!(page.contains("<tr><td>2</td><td>1.5–3.0</td><td class=\"text\">60 req/s</td>"));
    assert!(page.contains("<td class=\"text\">p99_ms</td><td>≤ 500</td>"));
    assert!(page.contains("class=\"pass\">pass</td>"));
}

#[tokio::test]
async fn comparing_two_saved_runs_shows_deltas_and_exits_3_past_the_threshold() {
    let fast = origin(Duration::from_millis(1)).await;
    let slow = origin(Duration::from_millis(25)).await;
    let dir = tempfile::tempdir().unwrap();
    let save = |url: String, file: std::path::PathBuf| {
        let out = weir_bin()
            .args(["loadtest", "-r", "40", "-d", "1s", "--json", &url])
            .output()
            .unwrap();
        std::fs::write(&file, &out.stdout).unwrap();
        file
    };
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    let (fast_url, slow_url) = (
        format!("http://{}/", fast.addr),
        format!("http://{}/", slow.addr),
    );
    let (a, b) = tokio::task::spawn_blocking(move || (save(fast_url, a), save(slow_url, b)))
        .await
        .unwrap();
    let html = dir.path().join("compare.html");
    let compare =
        |baseline: &std::path::Path, current: &std::path::Path, html: &std::path::Path| {
            weir_bin()
                .args(["loadtest", "--max-regression", "50", "--compare"])
                .arg(baseline)
                .arg(current)
                .arg("--html")
                .arg(html)
                .output()
                .unwrap()
        };
    let (a2, b2, html2) = (a.clone(), b.clone(), html.clone());
    let worse = tokio::task::spawn_blocking(move || compare(&a2, &b2, &html2))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&worse.stdout);
    assert_eq!(worse.status.code(), Some(3), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("p50 (ms)") && l.ends_with("REGRESSED")),
        "{text}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<span class=\"fail\">regressed</span>"),
        "{page}"
    );
    assert!(page.contains("baseline: answered/s") && page.contains("current: answered/s"));
    // Against itself nothing regressed.
    let same = tokio::task::spawn_blocking(move || compare(&a, &a, &html))
        .await
        .unwrap();
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
}

/// What the origin saw: method, host, one test header and the body, per request.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, Vec<u8>)>>>;

async fn recording_origin() -> (Upstream, Seen) {
    let seen = Seen::default();
    let log = seen.clone();
    let origin = upstream(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            // HTTP/2 carries the host as `:authority`, HTTP/1.1 as `Host`.
            let host = req
                .uri()
                .authority()
                .map_or_else(|| header("host"), |a| a.to_string());
            let entry = (req.method().to_string(), host, header("x-test"));
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .unwrap()
                .to_bytes();
            log.lock()
                .unwrap()
                .push((entry.0, entry.1, entry.2, body.to_vec()));
            Response::new(full("ok"))
        }
    })
    .await;
    (origin, seen)
}

#[tokio::test]
async fn requests_carry_the_method_headers_host_and_body_on_both_protocols() {
    for http2 in [false, true] {
        let (origin, seen) = recording_origin().await;
        let mut p = plan(&origin, Model::Closed, constant(5.0, 4.0));
        p.http2 = http2;
        p.max_requests = 40;
        p.request.method = http::Method::POST;
        for header in ["X-Test: yes", "Host: api.example"] {
            let (name, value) = RequestSpec::parse_header(header).unwrap();
            p.request.headers.insert(name, value);
        }
        p.request.body = bytes::Bytes::from_static(b"{\"n\":1}");
        let report = execute(&p, Progress::Silent).await.unwrap();
        assert_eq!((report.completed(), report.failed()), (40, 0), "h2 {http2}");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 40);
        for (method, host, test, body) in seen.iter() {
            assert_eq!(
                (method.as_str(), host.as_str(), test.as_str(), &body[..]),
                ("POST", "api.example", "yes", &b"{\"n\":1}"[..]),
                "h2 {http2}"
            );
        }
    }
}

#[tokio::test]
async fn the_command_line_sends_headers_and_a_body_file() {
    let (origin, seen) = recording_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, b"[1,2,3]").unwrap();
    let url = format!("http://{}/x", origin.addr);
    let out = tokio::task::spawn_blocking(move || {
        weir_bin()
            .args([
                "loadtest", &url, "-c", "2", "-n", "10", "-d", "5s", "--json",
            ])
            .args(["-m", "PUT", "-H", "x-test: from-cli", "--body-file"])
            .arg(&body)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["answered"], 10);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 10);
    assert!(
        seen.iter()
            .all(|(m, _, t, b)| m == "PUT" && t == "from-cli" && b == b"[1,2,3]"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn https_targets_are_verified_and_speak_h2_by_alpn() {
    use common::tls::{ca, tls_upstream_speaking};
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    // One origin that speaks only h2, one only http/1.1: a wrong protocol cannot pass.
    let h2_only = tls_upstream_speaking(&ca, dir.path(), "localhost", &[b"h2"]).await;
    let h1_only = tls_upstream_speaking(&ca, dir.path(), "localhost", &[b"http/1.1"]).await;
    let run = |addr: std::net::SocketAddr, http2: bool, tls: TlsSpec| {
        let url = format!("https://localhost:{}/x", addr.port());
        let mut p = Plan {
            http2,
            max_requests: 30,
            tls,
            ..plan_for(&url, Model::Closed, constant(5.0, 3.0))
        };
        p.timeout = Duration::from_secs(2);
        async move { execute(&p, Progress::Silent).await.unwrap() }
    };
    let trusted = || TlsSpec {
        ca_file: Some(ca_file.clone()),
        insecure: false,
    };
    for (addr, http2) in [(h2_only, true), (h1_only, false)] {
        let report = run(addr, http2, trusted()).await;
        assert_eq!(
            (report.completed(), report.failed()),
            (30, 0),
            "h2 {http2}: {:?}",
            report.errors
        );
    }
    // The wrong protocol, or a CA nobody trusts, fails the handshake and says so.
    let mismatched = run(h2_only, false, trusted()).await;
    assert_eq!(mismatched.completed(), 0);
    assert!(
        mismatched.errors.contains_key("tls handshake"),
        "{:?}",
        mismatched.errors
    );
    let untrusted = run(h1_only, false, TlsSpec::default()).await;
    assert_eq!(untrusted.completed(), 0);
    assert!(
        untrusted.errors.contains_key("tls handshake"),
        "{:?}",
        untrusted.errors
    );
    // --insecure accepts the certificate (still a real handshake).
    let insecure = run(
        h1_only,
        false,
        TlsSpec {
            ca_file: None,
            insecure: true,
        },
    )
    .await;
    assert_eq!((insecure.completed(), insecure.failed()), (30, 0));
}

#[tokio::test]
async fn https_server_names_come_from_the_host_without_port_or_brackets() {
    // IPv6 literals with and without a port make valid TLS names (an IP address); nothing
    // listens there, so the run ends with connect errors, not a plan error.
    for url in ["https://[::1]/x", "https://[::1]:1/x"] {
        let p = Plan {
            tls: TlsSpec {
                ca_file: None,
                insecure: true,
            },
            ..plan_for(url, Model::Closed, constant(0.3, 1.0))
        };
        let report = execute(&p, Progress::Silent)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(report.completed(), 0, "{url}");
        assert!(report.failed() > 0, "{url}: {:?}", report.errors);
    }
}
