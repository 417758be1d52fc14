//! Alerts and SLOs in a running weir: real requests through the proxy, a real webhook
//! receiver and command, the admin API and metrics.
//!
//! The control loop is turned off (`enabled = false`) in the tests with known answers, and
//! the test ticks it itself at virtual times one second apart, so the expected firing and
//! resolving ticks are computed from the traffic the test sends, not from timing.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::wait::eventually;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

const TOKEN: &str = "alerts-test-token-0123";

/// An origin answering 500 while `failing` is set, 200 otherwise.
async fn switchable_origin(failing: Arc<AtomicBool>) -> Upstream {
    upstream(move |_req| {
        let failing = Arc::clone(&failing);
        async move {
            let mut response = Response::new(full("answer"));
            if failing.load(SeqCst) {
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            response
        }
    })
    .await
}

/// A webhook receiver that keeps every JSON document it is sent.
async fn receiver() -> (Upstream, Arc<Mutex<Vec<serde_json::Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&received);
    let server = upstream(move |req: Request<hyper::body::Incoming>| {
        let kept = Arc::clone(&kept);
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            kept.lock().unwrap().push(value);
            Response::new(full("ok"))
        }
    })
    .await;
    (server, received)
}

fn config(origin: SocketAddr, control: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[routes]]
name = "api"
pool = "main"

[pools.main]
endpoints = [{{ address = "{origin}" }}]

[pools.main.passive]
enabled = false

[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"

[control]
{control}
"#
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

async fn admin_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let reply = admin(addr, "GET", path, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    serde_json::from_slice(&reply.body).unwrap()
}

/// Sends `n` requests, each answered (200 or 500).
async fn requests(proxy: SocketAddr, n: usize) {
    for _ in 0..n {
        let reply = get(proxy, "/").await;
        assert!(
            matches!(reply.status.as_u16(), 200 | 500),
            "{}",
            reply.status
        );
    }
}

/// Events (status, second after `start`) from the admin API, oldest first.
async fn events(admin_addr: SocketAddr, start: SystemTime) -> Vec<(String, String, u64)> {
    let start_ms = start
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let view = admin_json(admin_addr, "/api/v1/alerts").await;
    let mut out: Vec<(String, String, u64)> = view["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["rule"].as_str().unwrap().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
                (e["at_ms"].as_u64().unwrap() - start_ms) / 1000,
            )
        })
        .collect();
    out.reverse();
    out
}

/// A running weir whose control loop the test ticks itself, at whole virtual seconds
/// after `start`.
struct Ticked {
    weir: weir::app::Running,
    proxy: SocketAddr,
    admin: SocketAddr,
    control: Arc<weir::control::Controller>,
    start: SystemTime,
}

impl Ticked {
    async fn new(config: &str) -> Self {
        let weir = weir(config).await;
        Self {
            proxy: weir.listener_addr("http").unwrap(),
            admin: weir.admin_addr().unwrap(),
            control: Arc::clone(weir.supervisor().control()),
            start: SystemTime::now(),
            weir,
        }
    }

    fn tick(&self, second: u64) {
        self.control
            .tick_at(self.start + Duration::from_secs(second), 1.0);
    }
}

#[tokio::test]
async fn burn_rate_alerts_fire_and_resolve_at_the_computed_ticks() {
    let failing = Arc::new(AtomicBool::new(false));
    let origin = switchable_origin(Arc::clone(&failing)).await;
    let (hook, received) = receiver().await;
    let control = format!(
        r#"enabled = false
interval = "1s"

[[control.slo]]
name = "api-availability"
routes = ["api"]
objective = 0.9
window = "60s"
burn_alerts = [{{ factor = 2.0, long = "10s", short = "2s", severity = "page" }}]

[[control.notify]]
name = "hook"
webhook = "http://{}/alerts"
retries = 0
"#,
        hook.addr
    );
    let ticked = Ticked::new(&config(origin.addr, &control)).await;
    let (proxy, admin_addr, start) = (ticked.proxy, ticked.admin, ticked.start);
    let tick = |second: u64| ticked.tick(second);

    // Ten answers a second: good for 20 s, all 500 for seconds 21–30, good again after.
    // With an allowed error rate of 10 %, at second k ≥ 21 the 10 s window holds k − 20
    // bad seconds of ten: a burn of k − 20, over 2 (the factor) first at k = 23. The 2 s
    // window burns 10× until second 31 (one bad second of two: 5×) and 0 at second 32,
    // where the alert resolves.
    tick(0);
    for second in 1..=40u64 {
        failing.store((21..=30).contains(&second), SeqCst);
        requests(proxy, 10).await;
        tick(second);
        if second == 23 {
            let metrics = admin(admin_addr, "GET", "/metrics", "").await.text();
            assert!(
                metrics.contains(
                    "weir_alerts_firing{rule=\"api-availability burn 2x/10s\",severity=\"page\"} 1"
                ),
                "{metrics}"
            );
        }
    }
    let rule = "api-availability burn 2x/10s".to_owned();
    assert_eq!(
        events(admin_addr, start).await,
        vec![
            (rule.clone(), "firing".to_owned(), 23),
            (rule.clone(), "resolved".to_owned(), 32)
        ]
    );

    // 400 answers in the 40 s seen, 100 of them bad, against 10 % (40) allowed.
    let slos = admin_json(admin_addr, "/api/v1/slos").await;
    let slo = &slos["slos"][0];
    assert_eq!(
        (slo["good"].as_u64(), slo["total"].as_u64()),
        (Some(300), Some(400))
    );
    let remaining = slo["error_budget_remaining"].as_f64().unwrap();
    assert!((remaining - (1.0 - 100.0 / 40.0)).abs() < 1e-9, "{slo}");
    let metrics = admin(admin_addr, "GET", "/metrics", "").await.text();
    assert!(
        metrics.contains("weir_slo_error_budget_remaining{slo=\"api-availability\"} -1.5"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "weir_alerts_firing{rule=\"api-availability burn 2x/10s\",severity=\"page\"} 0"
        )
    );

    // The capacity report carries the SLO, its burn-down and the alert timeline.
    let report = admin_json(admin_addr, "/api/v1/report").await;
    assert_eq!(report["slos"][0]["name"], "api-availability");
    assert_eq!(report["slos"][0]["burn_down"].as_array().unwrap().len(), 41);
    let statuses: Vec<&str> = report["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["firing", "resolved"]);
    let page = admin(admin_addr, "GET", "/api/v1/report.html", "")
        .await
        .text();
    assert!(page.contains("<h2>Service-level objectives</h2>"), "{page}");
    assert!(
        page.contains("<td>300 / 400</td><td>75.000 %</td><td>-150.0 %</td>"),
        "{page}"
    );
    assert!(page.contains("<h3>Error budget of api-availability</h3><svg"));
    assert!(page.contains("<h2>Alerts</h2>") && page.contains("burning 3.0×"));
    // 40 s of history at 1 s: read in seconds, with the instances on their own chart.
    assert!(page.contains(", every 1 s)"), "{page}");
    assert!(page.contains("instances serving") && page.contains("seconds"));
    assert!(!page.contains("minutes"));

    // The receiver got the firing and the resolution, in Alertmanager's format.
    eventually("both notices", async || received.lock().unwrap().len() >= 2).await;
    let notices = received.lock().unwrap().clone();
    assert_eq!(notices.len(), 2, "{notices:?}");
    let firing = &notices[0];
    assert_eq!(firing["version"], "4");
    assert_eq!(firing["status"], "firing");
    assert_eq!(firing["receiver"], "hook");
    assert_eq!(firing["alerts"][0]["labels"]["alertname"], rule.as_str());
    assert_eq!(firing["alerts"][0]["labels"]["severity"], "page");
    assert_eq!(firing["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let description = firing["alerts"][0]["annotations"]["description"]
        .as_str()
        .unwrap();
    assert!(
        description.contains("burning 3.0× over 10s and 10.0× over 2s, alert above 2×"),
        "{description}"
    );
    assert!(
        firing["text"]
            .as_str()
            .unwrap()
            .starts_with("[FIRING] api-availability burn 2x/10s page")
    );
    let long_burn = firing["weir"]["observation"]["windows"][0]["value"]
        .as_f64()
        .unwrap();
    assert!((long_burn - 3.0).abs() < 1e-9, "{long_burn}");
    assert_eq!(notices[1]["status"], "resolved");
    assert_ne!(notices[1]["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    ticked.weir.shutdown().await;
}

#[tokio::test]
async fn latency_slo_burn_alerts_follow_a_slow_stream_through_the_proxy() {
    // Slow answers (120 ms, over the SLO's 100 ms bound) while `slow` is set.
    let slow = Arc::new(AtomicBool::new(false));
    let switch = Arc::clone(&slow);
    let origin = upstream(move |_req| {
        let slow = switch.load(SeqCst);
        async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
            Response::new(full("answer"))
        }
    })
    .await;
    let control = r#"enabled = false
interval = "1s"

[[control.slo]]
name = "api-latency"
routes = ["api"]
objective = 0.9
latency = "100ms"
window = "60s"
burn_alerts = [{ factor = 2.0, long = "10s", short = "2s", severity = "page" }]
"#;
    let ticked = Ticked::new(&config(origin.addr, control)).await;
    let proxy = ticked.proxy;

    // The same schedule as the availability test, with slow answers for bad ones: ten a
    // second, slow in seconds 21–30. Firing at 23 and resolved at 32, as computed there.
    ticked.tick(0);
    for second in 1..=34u64 {
        slow.store((21..=30).contains(&second), SeqCst);
        let batch: Vec<_> = (0..10).map(|_| tokio::spawn(requests(proxy, 1))).collect();
        for request in batch {
            request.await.unwrap();
        }
        ticked.tick(second);
    }
    let rule = "api-latency burn 2x/10s".to_owned();
    assert_eq!(
        events(ticked.admin, ticked.start).await,
        vec![
            (rule.clone(), "firing".to_owned(), 23),
            (rule, "resolved".to_owned(), 32)
        ]
    );
    let slos = admin_json(ticked.admin, "/api/v1/slos").await;
    let slo = &slos["slos"][0];
    assert_eq!(slo["kind"], "latency");
    assert_eq!(slo["latency_bound_ms"], 100.0);
    assert_eq!(
        (slo["good"].as_u64(), slo["total"].as_u64()),
        (Some(240), Some(340))
    );
    ticked.weir.shutdown().await;
}

#[tokio::test]
async fn threshold_rules_wait_for_their_hold_and_commands_get_the_alert() {
    let failing = Arc::new(AtomicBool::new(false));
    let origin = switchable_origin(Arc::clone(&failing)).await;
    let directory = std::env::temp_dir().join(format!("weir-alert-command-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let out = directory.join("notices");
    let _ = std::fs::remove_file(&out);
    let control = format!(
        r#"enabled = false
interval = "1s"

[[control.alert]]
name = "errors"
signal = "error_rate"
pool = "main"
above = 0.2
for = "3s"
severity = "warning"
summary = "check the origin's logs"

# Exactly at its threshold (half the answers fail in seconds 5–12): never above it.
[[control.alert]]
name = "errors-at-threshold"
signal = "error_rate"
pool = "main"
above = 0.5

[[control.notify]]
name = "script"
command = ["sh", "-c", "cat >> {out}; echo \" $WEIR_ALERT_RULE $WEIR_ALERT_STATUS $WEIR_ALERT_POOL\" >> {out}"]
"#,
        out = out.display()
    );
    let ticked = Ticked::new(&config(origin.addr, &control)).await;
    let (proxy, admin_addr, start) = (ticked.proxy, ticked.admin, ticked.start);
    let tick = |second: u64| ticked.tick(second);

    // Half the answers fail in seconds 5–12 (error rate 0.5 over 0.2): pending at 5,
    // firing at 8 after its 3 s hold; clear from 13, resolved 3 s later at 16 (resolve
    // after defaults to the hold). A single bad second at 20 stays pending and never fires.
    tick(0);
    for second in 1..=24u64 {
        for i in 0..10 {
            let bad = (5..=12).contains(&second) || second == 20;
            failing.store(bad && i % 2 == 0, SeqCst);
            requests(proxy, 1).await;
        }
        tick(second);
        if second == 6 {
            let view = admin_json(admin_addr, "/api/v1/alerts").await;
            assert_eq!(view["pending"][0]["rule"], "errors", "{view}");
            assert_eq!(view["firing"].as_array().unwrap().len(), 0);
        }
    }
    assert_eq!(
        events(admin_addr, start).await,
        vec![
            ("errors".to_owned(), "firing".to_owned(), 8),
            ("errors".to_owned(), "resolved".to_owned(), 16)
        ]
    );
    eventually("the command ran twice", async || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains("errors resolved main"))
    })
    .await;
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains(" errors firing main\n"), "{written}");
    let first_json = written.split(" errors firing main").next().unwrap();
    let notice: serde_json::Value = serde_json::from_str(first_json).unwrap();
    assert_eq!(
        notice["alerts"][0]["annotations"]["summary"],
        "check the origin's logs"
    );
    assert_eq!(
        notice["alerts"][0]["annotations"]["description"],
        "error_rate of main is 0.500 (alert above 0.200)"
    );
    let view = admin_json(admin_addr, "/api/v1/alerts").await;
    assert_eq!(view["deliveries"].as_array().unwrap().len(), 2, "{view}");
    assert!(view["deliveries"][0]["ok"].as_bool().unwrap());
    let _ = std::fs::remove_dir_all(&directory);
    ticked.weir.shutdown().await;
}

#[tokio::test]
async fn silences_hold_until_they_end() {
    let origin = switchable_origin(Arc::new(AtomicBool::new(false))).await;
    let (hook, received) = receiver().await;
    // One endpoint is fewer than two: the rule holds from the first tick.
    let control = format!(
        r#"enabled = false
interval = "1s"

[[control.alert]]
name = "capacity"
signal = "healthy_endpoints"
below = 2

[[control.notify]]
name = "hook"
webhook = "http://{}/alerts"
"#,
        hook.addr
    );
    let text = config(origin.addr, &control);
    let weir = weir(&text).await;
    let admin_addr = weir.admin_addr().unwrap();
    let control = Arc::clone(weir.supervisor().control());
    // A reload just before: alerts carry it as context.
    let same = weir::config::load_str(&text, std::path::Path::new("test.toml")).unwrap();
    assert!(weir.supervisor().apply(same).await.ok);
    let start = SystemTime::now();

    let refused = admin(
        admin_addr,
        "POST",
        "/api/v1/alerts/silences",
        r#"{"rule":"nope","duration":"1h"}"#,
    )
    .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.text());
    let refused = admin(
        admin_addr,
        "POST",
        "/api/v1/alerts/silences",
        r#"{"rule":"capacity","duration":"30d"}"#,
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refused.text()
    );
    let created = admin(
        admin_addr,
        "POST",
        "/api/v1/alerts/silences",
        r#"{"rule":"capacity","pool":"main","duration":"1h","comment":"adding a second instance"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let silence: serde_json::Value = serde_json::from_slice(&created.body).unwrap();

    for second in 0..=5u64 {
        control.tick_at(start + Duration::from_secs(second), 1.0);
    }
    let view = admin_json(admin_addr, "/api/v1/alerts").await;
    assert_eq!(view["firing"][0]["rule"], "capacity", "{view}");
    assert_eq!(view["firing"][0]["silenced"], true);
    assert_eq!(view["events"][0]["silenced"], true);
    assert_eq!(view["deliveries_in_progress"], 0);
    assert!(
        received.lock().unwrap().is_empty(),
        "silenced: nothing sent"
    );

    let ended = admin(
        admin_addr,
        "DELETE",
        &format!("/api/v1/alerts/silences/{}", silence["id"]),
        "",
    )
    .await;
    assert_eq!(ended.status, StatusCode::NO_CONTENT);
    control.tick_at(start + Duration::from_secs(3600), 1.0);
    eventually("the notice after the silence", async || {
        !received.lock().unwrap().is_empty()
    })
    .await;
    let notices = received.lock().unwrap().clone();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0]["status"], "firing");
    assert_eq!(notices[0]["alerts"][0]["labels"]["pool"], "main");
    // The context carries what weir knew when it fired: the reload just before.
    let context = notices[0]["weir"]["context"].as_array().unwrap();
    assert!(
        context
            .iter()
            .any(|c| c.as_str().unwrap().starts_with("reload at ")),
        "{context:?}"
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_delay_sampling() {
    let origin = switchable_origin(Arc::new(AtomicBool::new(false))).await;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            connections.push(stream);
        }
    });
    let control = format!(
        r#"interval = "100ms"

[[control.alert]]
name = "capacity"
signal = "healthy_endpoints"
below = 2

[[control.notify]]
name = "stuck"
webhook = "http://{silent_addr}/alerts"
timeout = "30s"
retries = 1
"#
    );
    let weir = weir(&config(origin.addr, &control)).await;
    let admin_addr = weir.admin_addr().unwrap();
    let control = Arc::clone(weir.supervisor().control());
    eventually("the alert to fire", async || {
        admin_json(admin_addr, "/api/v1/alerts").await["firing"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    })
    .await;
    let samples_then = control.samples().len();
    // Ten more samples while the delivery still hangs (its timeout is 30 s).
    eventually("ten more samples", async || {
        control.samples().len() >= samples_then + 10
    })
    .await;
    let view = admin_json(admin_addr, "/api/v1/alerts").await;
    assert_eq!(view["deliveries_in_progress"], 1, "{view}");
    assert_eq!(view["deliveries"].as_array().unwrap().len(), 0);
    held.abort();
    weir.shutdown().await;
}

#[tokio::test]
async fn a_routes_cache_hit_ratio_alerts_on_its_own_lookups() {
    let origin = upstream(|_req| async {
        Response::builder()
            .header("cache-control", "max-age=60")
            .body(full("cacheable"))
            .unwrap()
    })
    .await;
    let (hook, received) = receiver().await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[routes]]
name = "static"
path_prefix = "/static/"
pool = "main"

[[routes]]
name = "api"
pool = "main"
cache = {{ enabled = false }}

[pools.main]
endpoints = [{{ address = "{}" }}]

[cache]
enabled = true

[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"

[control]
enabled = false
interval = "1s"

[[control.alert]]
name = "static-hits"
signal = "cache_hit_ratio"
route = "static"
below = 0.5

[[control.notify]]
name = "hook"
webhook = "http://{}/alerts"
"#,
        origin.addr, hook.addr
    );
    let ticked = Ticked::new(&config).await;
    let (proxy, admin_addr, start) = (ticked.proxy, ticked.admin, ticked.start);
    let tick = |second: u64| ticked.tick(second);

    // Second 1: ten new paths, all misses (ratio 0): fires. Second 2: the same ten again,
    // all hits (ratio 1): resolves. The uncached API route's traffic counts for neither.
    tick(0);
    for second in 1..=2u64 {
        for i in 0..10 {
            assert_eq!(
                get(proxy, &format!("/static/{i}")).await.status,
                StatusCode::OK
            );
            assert_eq!(get(proxy, "/api/x").await.status, StatusCode::OK);
        }
        common::wait::settled(&ticked.weir).await;
        tick(second);
    }
    assert_eq!(
        events(admin_addr, start).await,
        vec![
            ("static-hits".to_owned(), "firing".to_owned(), 1),
            ("static-hits".to_owned(), "resolved".to_owned(), 2)
        ]
    );
    let samples = ticked.control.samples();
    let ratios: Vec<(String, u64, f64)> = samples
        .iter()
        .flat_map(|s| {
            s.routes
                .iter()
                .map(|r| (r.route.clone(), r.lookups, r.hit_ratio))
        })
        .collect();
    assert_eq!(
        ratios,
        vec![
            ("static".to_owned(), 10, 0.0),
            ("static".to_owned(), 10, 1.0)
        ]
    );
    eventually("both notices", async || received.lock().unwrap().len() >= 2).await;
    let firing = received.lock().unwrap()[0].clone();
    assert_eq!(firing["alerts"][0]["labels"]["route"], "static", "{firing}");
    assert_eq!(
        firing["alerts"][0]["annotations"]["description"],
        "cache_hit_ratio of static is 0 (alert below 0.500)"
    );
    ticked.weir.shutdown().await;
}
