//! Operating a running weir: registering, draining and reweighting instances through the
//! admin API, persistence across restarts, and reloads (admin and SIGHUP) under load.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;

const TOKEN: &str = "operations-token-0123456789";

fn config(endpoints: &[SocketAddr], extra: &str) -> String {
    config_with_pool(endpoints, "", extra)
}

fn config_with_pool(endpoints: &[SocketAddr], pool_extra: &str, extra: &str) -> String {
    simple_config(endpoints, pool_extra)
        + &format!("\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{extra}\n")
}

async fn admin(
    weir: &weir::app::Running,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let admin = weir.admin_addr().unwrap();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(match body {
            Some(v) => full(v.to_string()),
            None => empty(),
        })
        .unwrap();
    let reply = send(&http1_client(), request).await;
    let json = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, json)
}

#[tokio::test]
async fn registered_instances_get_traffic_and_can_be_reweighted_and_removed() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let weir = weir(&config_with_pool(&[a.addr], "strategy = \"weighted\"", "")).await;
    let proxy = weir.listener_addr("http").unwrap();

    let (status, body) = admin(
        &weir,
        Method::POST,
        "/api/v1/instances/register",
        Some(json!({ "pool": "main", "address": b.addr.to_string(), "weight": 1, "zone": "z2" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["pool"], "main");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(served_by(proxy, 20).await.get("b"), Some(&10));

    // Errors are clear 4xx and change nothing.
    let (status, body) = admin(
        &weir,
        Method::POST,
        "/api/v1/instances/register",
        Some(json!({ "pool": "nope", "address": "127.0.0.1:1" })),
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (404, Some("unknown pool \"nope\""))
    );
    let (status, body) = admin(
        &weir,
        Method::POST,
        "/api/v1/instances/register",
        Some(json!({ "pool": "main", "address": "no-port" })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin(
        &weir,
        Method::POST,
        "/api/v1/instances/register",
        Some(json!({ "pool": "main" })),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("missing field `address`"),
        "{body}"
    );
    let (status, _) = admin(
        &weir,
        Method::PATCH,
        &format!("/api/v1/instances/{id}"),
        Some(json!({ "weight": 0 })),
    )
    .await;
    assert_eq!(status, 400);

    let (status, body) = admin(
        &weir,
        Method::PATCH,
        &format!("/api/v1/instances/{id}"),
        Some(json!({ "weight": 3 })),
    )
    .await;
    assert_eq!((status.as_u16(), body["weight"].as_u64()), (200, Some(3)));
    assert_eq!(
        served_by(proxy, 40).await.get("b"),
        Some(&30),
        "weight 3 against 1"
    );
    let (_, pool) = admin(&weir, Method::GET, "/api/v1/pools/main", None).await;
    assert_eq!(pool["endpoints"][1]["weight"], 3);

    let (status, body) = admin(
        &weir,
        Method::DELETE,
        &format!("/api/v1/instances/{id}"),
        None,
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["removed"].as_bool()),
        (200, Some(true))
    );
    assert_eq!(served_by(proxy, 10).await.get("b"), None);
    let (status, _) = admin(&weir, Method::GET, &format!("/api/v1/instances/{id}"), None).await;
    assert_eq!(status, 404);
    weir.shutdown().await;
}

#[tokio::test]
async fn instance_api_needs_the_token() {
    let a = named_upstream("a").await;
    let weir = weir(&config(&[a.addr], "")).await;
    let admin_addr = weir.admin_addr().unwrap();
    let before = weir.state().snapshot.load().pools["main"].endpoints().len();
    for (method, path) in [
        (Method::POST, "/api/v1/instances/register"),
        (Method::POST, "/api/v1/reload"),
        (Method::DELETE, "/api/v1/instances/x"),
        (Method::GET, "/api/v1/pools/main"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{admin_addr}{path}"))
            .header("authorization", "Bearer wrong-token-0123456789")
            .body(full(
                json!({ "pool": "main", "address": "127.0.0.1:9" }).to_string(),
            ))
            .unwrap();
        assert_eq!(send(&http1_client(), request).await.status, 401, "{path}");
    }
    assert_eq!(
        weir.state().snapshot.load().pools["main"].endpoints().len(),
        before
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn drain_and_deregister_let_in_flight_requests_finish() {
    let arrived = Arc::new(Notify::new());
    let signal = arrived.clone();
    let slow = upstream(move |_req| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            tokio::time::sleep(Duration::from_millis(400)).await;
            Response::builder()
                .header("x-upstream", "slow")
                .body(full("slow"))
                .unwrap()
        }
    })
    .await;
    let fast = named_upstream("fast").await;
    for action in ["drain", "deregister"] {
        let weir = weir(&config(&[slow.addr, fast.addr], "")).await;
        let proxy = weir.listener_addr("http").unwrap();
        let id = weir.state().snapshot.load().pools["main"].endpoints()[0]
            .id
            .clone();
        let in_flight = tokio::spawn(async move { get(proxy, "/").await });
        arrived.notified().await;
        let (status, body) = if action == "drain" {
            admin(
                &weir,
                Method::POST,
                &format!("/api/v1/instances/{id}/drain"),
                None,
            )
            .await
        } else {
            admin(
                &weir,
                Method::DELETE,
                &format!("/api/v1/instances/{id}"),
                None,
            )
            .await
        };
        assert!(status.is_success(), "{action}: {body}");
        assert_eq!(
            body["in_flight"], 1,
            "{action}: the slow request is still running"
        );
        assert_eq!(
            served_by(proxy, 10).await.get("fast"),
            Some(&10),
            "{action}: no new traffic"
        );
        let reply = in_flight.await.unwrap();
        assert_eq!(
            (reply.status.as_u16(), reply.text().as_str()),
            (200, "slow"),
            "{action}"
        );
        if action == "drain" {
            let (_, body) =
                admin(&weir, Method::GET, &format!("/api/v1/instances/{id}"), None).await;
            assert_eq!(body["state"], "draining");
            assert_eq!(body["drained"], true, "drain reports completion");
        }
        weir.shutdown().await;
    }
}

#[tokio::test]
async fn registrations_survive_a_restart() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let text = config(
        &[a.addr],
        &format!("state_file = {:?}", state.display().to_string()),
    );
    let first = weir(&text).await;
    let (status, _) = admin(&first, Method::POST, "/api/v1/instances/register", Some(json!({ "pool": "main", "address": b.addr.to_string(), "metadata": { "version": "2.1" } }))).await;
    assert_eq!(status, 201);
    first.shutdown().await;
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["instances"][0]["address"], b.addr.to_string());
    assert_eq!(saved["instances"][0]["metadata"]["version"], "2.1");

    let second = weir(&text).await;
    let counts = served_by(second.listener_addr("http").unwrap(), 20).await;
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
    second.shutdown().await;
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_under_load_fail_no_request() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let good = config(&[a.addr, b.addr], "");
    write(&path, &good);
    let weir = start_from_file(&path).await;
    let proxy = weir.listener_addr("http").unwrap();
    let load = tokio::spawn(weir::loadtest::run(weir::loadtest::LoadOptions {
        targets: vec![format!("http://{proxy}/").parse().unwrap()],
        requests: 4_000,
        concurrency: 8,
        deadline: Duration::from_secs(60),
    }));
    let mut outcomes = Vec::new();
    for i in 0..10 {
        let text = match i % 3 {
            0 => config(&[b.addr, a.addr], ""),
            1 => good.replace("pool = \"main\"", "pool = \"mian\""),
            _ => config(&[a.addr, b.addr], "").replace(
                "[pools.main]",
                "[pools.main]\nstrategy = \"least_connections\"",
            ),
        };
        write(&path, &text);
        let (status, report) = admin(&weir, Method::POST, "/api/v1/reload", None).await;
        outcomes.push((status.as_u16(), report["ok"].as_bool().unwrap()));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let report = load.await.unwrap().unwrap();
    assert_eq!(report.failed(), 0, "{:?}", report.errors);
    assert_eq!(
        report.statuses.get(&200),
        Some(&4_000),
        "{:?}",
        report.statuses
    );
    let failed_reloads = outcomes.iter().filter(|(_, ok)| !ok).count();
    assert_eq!(failed_reloads, 3, "{outcomes:?}");
    assert!(outcomes.iter().all(|(status, ok)| (*status == 200) == *ok));
    let (_, stats) = admin(&weir, Method::GET, "/api/v1/reload", None).await;
    assert_eq!(
        (
            stats["reloads_ok"].as_u64(),
            stats["reloads_failed"].as_u64()
        ),
        (Some(7), Some(3))
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn a_bad_reload_keeps_the_old_config_and_says_why() {
    let a = named_upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    write(&path, &config(&[a.addr], ""));
    let weir = start_from_file(&path).await;
    let proxy = weir.listener_addr("http").unwrap();
    write(
        &path,
        &config(&[a.addr], "").replace("pool = \"main\"", "pool = \"mian\""),
    );
    let (status, report) = admin(&weir, Method::POST, "/api/v1/reload", None).await;
    assert_eq!(status, 422);
    assert_eq!(report["ok"], false);
    let error = report["error"].as_str().unwrap();
    assert!(
        error.ends_with("routes[0].pool: unknown pool \"mian\" (did you mean \"main\"?)"),
        "{error}"
    );
    assert!(error.starts_with(&path.display().to_string()), "{error}");
    assert_eq!(
        get(proxy, "/").await.status,
        200,
        "still serving the old config"
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn live_endpoint_state_survives_a_reload() {
    let bad = failing_upstream().await;
    let good = named_upstream("good").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let text = config(&[bad.addr, good.addr], "").replace(
        "[pools.main]",
        "[pools.main]\nretry = { attempts = 0 }\npassive = { consecutive_failures = 2, base_ejection = \"60s\" }",
    );
    write(&path, &text);
    let weir = start_from_file(&path).await;
    let proxy = weir.listener_addr("http").unwrap();
    for _ in 0..6 {
        get(proxy, "/").await;
    }
    let before = weir.state().snapshot.load().pools["main"]
        .endpoint(&bad.addr.to_string())
        .unwrap();
    assert_eq!(before.state(before.now_ms()).as_str(), "ejected");
    // Reload with another header setting: the pool is rebuilt, its endpoints are not.
    write(&path, &(text.clone() + "\n[headers]\nvia = false\n"));
    let (status, report) = admin(&weir, Method::POST, "/api/v1/reload", None).await;
    assert_eq!(status, 200, "{report}");
    let after = weir.state().snapshot.load().pools["main"]
        .endpoint(&bad.addr.to_string())
        .unwrap();
    assert!(Arc::ptr_eq(&before, &after), "same endpoint object");
    assert_eq!(
        after.state(after.now_ms()).as_str(),
        "ejected",
        "still ejected"
    );
    assert_eq!(
        after
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        get(proxy, "/").await.header("via"),
        None,
        "the new header policy applies"
    );
    for _ in 0..10 {
        assert_eq!(
            get(proxy, "/").await.status,
            200,
            "the ejected endpoint gets nothing"
        );
    }
    weir.shutdown().await;
}

#[tokio::test]
async fn reload_adds_and_removes_listeners_without_touching_the_others() {
    let a = named_upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let base = config(&[a.addr], "");
    write(&path, &base);
    let weir = start_from_file(&path).await;
    let proxy = weir.listener_addr("http").unwrap();
    let extra = closed_port().await;
    let with_second =
        base.clone() + &format!("\n[[listeners]]\nname = \"second\"\naddress = \"{extra}\"\n");
    write(&path, &with_second);
    let (status, report) = admin(&weir, Method::POST, "/api/v1/reload", None).await;
    assert_eq!(status, 200, "{report}");
    assert!(
        report["notes"]
            .to_string()
            .contains("listener \\\"second\\\" added"),
        "{report}"
    );
    assert_eq!(
        weir.listener_addr("http"),
        Some(proxy),
        "the first listener stays"
    );
    assert_eq!(get(extra, "/").await.status, 200);
    assert_eq!(get(proxy, "/").await.status, 200);
    write(&path, &base);
    let (status, _) = admin(&weir, Method::POST, "/api/v1/reload", None).await;
    assert_eq!(status, 200);
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(extra).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "the removed listener stops accepting");
    assert_eq!(get(proxy, "/").await.status, 200);
    weir.shutdown().await;
}

/// The real binary serving `path` with JSON logs: the child, the proxy address from its
/// "listening" line, and a thread collecting every log line until the process exits. With
/// `hup_on_listening`, the reading thread sends SIGHUP the moment that line appears.
/// The real binary serving `path`, its proxy address once it listens, the thread that
/// collects its log lines, and each log message as it comes.
struct Spawned {
    child: std::process::Child,
    proxy: SocketAddr,
    logs: std::thread::JoinHandle<Vec<String>>,
    messages: std::sync::mpsc::Receiver<String>,
}

/// Waits (up to 10 s) for a log message containing `text`.
fn wait_for_message(messages: &std::sync::mpsc::Receiver<String>, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match messages.recv_timeout(left) {
            Ok(message) if message.contains(text) => return,
            Ok(_) => {}
            Err(_) => panic!("no log message with {text:?}"),
        }
    }
}

fn spawn_binary(path: &Path, hup_on_listening: bool) -> Spawned {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (message_tx, messages) = std::sync::mpsc::channel();
    let logs = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                if event["message"] == "listening" {
                    if hup_on_listening {
                        let _ = Command::new("kill").args(["-HUP", &pid]).status();
                    }
                    let _ = tx.send(event["address"].as_str().unwrap().to_owned());
                }
                let _ = message_tx.send(event["message"].as_str().unwrap_or("").to_owned());
            }
            lines.push(line);
        }
        lines
    });
    let proxy: SocketAddr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap()
        .parse()
        .unwrap();
    Spawned {
        child,
        proxy,
        logs,
        messages,
    }
}

#[tokio::test]
async fn sighup_reloads_the_real_binary() {
    use std::process::Command;
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    write(&path, &simple_config(&[a.addr], ""));
    let Spawned {
        mut child,
        proxy,
        logs: reader,
        messages,
    } = spawn_binary(&path, false);
    assert_eq!(get(proxy, "/").await.header("x-upstream"), Some("a"));

    write(&path, &simple_config(&[b.addr], ""));
    let kill = |signal: &str| {
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap()
    };
    assert!(kill("-HUP").success());
    let mut switched = false;
    for _ in 0..200 {
        if get(proxy, "/").await.header("x-upstream") == Some("b") {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(switched, "SIGHUP applied the new pool");
    // A bad file on SIGHUP keeps the process and the current config.
    write(&path, "not = [valid");
    assert!(kill("-HUP").success());
    wait_for_message(
        &messages,
        "reload failed; the previous configuration keeps serving",
    );
    assert_eq!(get(proxy, "/").await.header("x-upstream"), Some("b"));
    assert!(kill("-TERM").success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    let logs = reader.join().unwrap();
    assert!(
        logs.iter().any(|l| l.contains("configuration reloaded")),
        "{logs:#?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("reload failed; the previous configuration keeps serving"))
    );
}

#[tokio::test]
async fn a_sighup_as_soon_as_weir_listens_reloads_it_rather_than_ending_it() {
    // SIGHUP's default action ends a process; weir installs its handler before it listens,
    // so a deploy tool may reload it the moment its port answers.
    use std::process::Command;
    let a = named_upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    write(&path, &simple_config(&[a.addr], ""));
    let Spawned {
        mut child,
        proxy,
        logs: reader,
        ..
    } = spawn_binary(&path, true);
    assert_eq!(get(proxy, "/").await.header("x-upstream"), Some("a"));
    assert!(child.try_wait().unwrap().is_none(), "weir is still running");
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "a clean drain, not death by SIGHUP");
    reader.join().unwrap();
}

#[tokio::test]
async fn the_config_file_wins_over_a_registration_of_the_same_address() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    write(&path, &config(&[a.addr], ""));
    let weir = start_from_file(&path).await;
    let (status, body) = admin(&weir, Method::POST, "/api/v1/instances/register", Some(json!({ "pool": "main", "address": b.addr.to_string(), "zone": "eu-1", "metadata": { "build": "42" } }))).await;
    assert_eq!(status, 201);
    assert_eq!(
        (body["registered"].as_bool(), body["zone"].as_str()),
        (Some(true), Some("eu-1"))
    );
    assert_eq!(body["metadata"]["build"], "42");
    // The file now lists the same address: a reload keeps one endpoint and says which won.
    write(&path, &config(&[a.addr, b.addr], ""));
    let (status, report) = admin(&weir, Method::POST, "/api/v1/reload", None).await;
    assert_eq!(status, 200);
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("is in the config file, which wins over its registration"),
        "{notes}"
    );
    assert_eq!(
        weir.state().snapshot.load().pools["main"].endpoints().len(),
        2
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn a_reload_applies_new_breaker_settings_to_kept_endpoints() {
    let bad = failing_upstream().await;
    let good = named_upstream("good").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let with_threshold = |n: u32| {
        config(&[bad.addr, good.addr], "").replace(
            "[pools.main]",
            &format!("[pools.main]\nretry = {{ attempts = 0 }}\npassive = {{ consecutive_failures = {n} }}"),
        )
    };
    write(&path, &with_threshold(100));
    let weir = start_from_file(&path).await;
    let proxy = weir.listener_addr("http").unwrap();
    for _ in 0..8 {
        get(proxy, "/").await;
    }
    let endpoint = weir.state().snapshot.load().pools["main"]
        .endpoint(&bad.addr.to_string())
        .unwrap();
    assert_eq!(
        endpoint.state(endpoint.now_ms()).as_str(),
        "healthy",
        "4 failures < 100"
    );
    write(&path, &with_threshold(2));
    let (status, _) = admin(&weir, Method::POST, "/api/v1/reload", None).await;
    assert_eq!(status, 200);
    for _ in 0..4 {
        get(proxy, "/").await;
    }
    assert_eq!(
        endpoint.state(endpoint.now_ms()).as_str(),
        "ejected",
        "the new threshold applies"
    );
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_and_reloads_leave_pool_and_registry_agreeing() {
    let a = named_upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    write(&path, &config(&[a.addr], ""));
    let weir = start_from_file(&path).await;
    let supervisor = Arc::clone(weir.supervisor());
    // Rounds of 100 concurrent registrations (a third deregistered again) racing three
    // reloads: a lost update anywhere shows as a difference at the end.
    let address = |round: u16, i: u16| format!("127.0.0.1:{}", 20_000 + round * 100 + i);
    let mut expected = std::collections::BTreeSet::new();
    for round in 0..20u16 {
        let mut tasks = Vec::new();
        for i in 0..100u16 {
            let supervisor = Arc::clone(&supervisor);
            let address = address(round, i);
            tasks.push(tokio::spawn(async move {
                let endpoint = supervisor
                    .register(weir::registry::Registration {
                        pool: "main".into(),
                        address,
                        weight: 1,
                        zone: None,
                        metadata: Default::default(),
                    })
                    .expect("registered");
                tokio::task::yield_now().await;
                if i % 3 == 0 {
                    supervisor.deregister(&endpoint.id).expect("deregistered");
                }
            }));
        }
        let reloader = {
            let supervisor = Arc::clone(&supervisor);
            tokio::spawn(async move {
                for _ in 0..3 {
                    assert!(supervisor.reload().await.ok);
                    tokio::task::yield_now().await;
                }
            })
        };
        for task in tasks {
            task.await.unwrap();
        }
        reloader.await.unwrap();
        expected.extend(
            (0..100u16)
                .filter(|i| i % 3 != 0)
                .map(|i| address(round, i)),
        );
    }

    let registered: std::collections::BTreeSet<String> = supervisor
        .registrations()
        .into_iter()
        .map(|r| r.address)
        .collect();
    let snapshot = weir.state().snapshot.load();
    let live: std::collections::BTreeSet<String> = snapshot.pools["main"]
        .endpoints()
        .iter()
        .map(|e| e.address.clone())
        .filter(|address| *address != a.addr.to_string())
        .collect();
    assert_eq!(registered, expected, "the registry");
    assert_eq!(live, expected, "the live pool");
    weir.shutdown().await;
}
