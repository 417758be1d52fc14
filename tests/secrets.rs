//! Secrets in the config (the admin token, a Redis password, webhook credentials) never
//! appear in weir's logs or in anything the admin API answers, even while Redis and the
//! webhook fail and are logged at debug level.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const SECRETS: [&str; 3] = [
    "S3CRET-admin-token-0123456789",
    "S3CRET-redis-password",
    "S3CRET-hook",
];

async fn admin_answer(admin: std::net::SocketAddr, path: &str) -> (u16, String) {
    let reply = admin_get(admin, path, SECRETS[0]).await;
    (reply.status.as_u16(), reply.text())
}

#[tokio::test]
async fn secrets_stay_out_of_logs_and_admin_answers() {
    let up = named_upstream("a").await;
    let closed = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
[[routes]]
pool = "main"
[pools.main]
endpoints = [{{ address = "{up}" }}]
[admin]
address = "127.0.0.1:0"
token = "{admin}"
[cache]
enabled = true
[redis]
url = "redis://:{redis}@{closed}/0"
[control]
interval = "100ms"
[[control.autoscale]]
pool = "main"
min_instances = 2
max_instances = 4
dry_run = false
action = {{ webhook = "http://ops:{hook}@{closed}/scale?token={hook}", timeout = "1s" }}
"#,
        up = up.addr,
        admin = SECRETS[0],
        redis = SECRETS[1],
        hook = SECRETS[2],
    );
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
    {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    let message = event["fields"]["message"]
                        .as_str()
                        .or(event["message"].as_str())
                        .unwrap_or_default()
                        .to_owned();
                    let address = event["fields"]["address"]
                        .as_str()
                        .or(event["address"].as_str())
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send((message, address));
                }
            }
        });
    }
    let (mut proxy, mut admin) = (None, None);
    while proxy.is_none() || admin.is_none() {
        let (message, address) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        match message.as_str() {
            "listening" => proxy = address.parse::<std::net::SocketAddr>().ok(),
            "admin listening" => admin = address.parse::<std::net::SocketAddr>().ok(),
            _ => {}
        }
    }
    let (proxy, admin) = (proxy.unwrap(), admin.unwrap());

    // Traffic through the cache (Redis fails), and time for the autoscaler to act on its
    // minimum (the webhook fails).
    for _ in 0..20 {
        assert_eq!(get(proxy, "/").await.status, 200);
    }
    let mut answers = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, scaling) = admin_answer(admin, "/api/v1/pools/main/scaling").await;
        assert_eq!(status, 200);
        // The webhook's failure recorded in the decision history.
        if scaling.contains("\"ok\":false") || tokio::time::Instant::now() > deadline {
            answers.push_str(&scaling);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answers.contains("\"ok\":false") && answers.contains("/scale"),
        "the failed webhook is in the history: {answers}"
    );
    for path in [
        "/api/v1/pools",
        "/api/v1/pools/main",
        "/api/v1/cache",
        "/api/v1/report",
        "/api/v1/report.html",
        "/api/v1/reload",
        "/metrics",
        "/healthz",
        "/readyz",
    ] {
        let (_, body) = admin_answer(admin, path).await;
        answers.push_str(&body);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = log.lock().unwrap().clone();
    assert!(
        log.contains("redis"),
        "Redis failures were logged (the test would prove nothing otherwise)"
    );
    assert!(
        log.contains("scaling action failed"),
        "the webhook failure was logged"
    );
    for secret in SECRETS {
        assert!(!log.contains(secret), "{secret} in the log");
        if let Some(at) = answers.find(secret) {
            let from = answers[..at]
                .char_indices()
                .rev()
                .nth(200)
                .map_or(0, |(i, _)| i);
            panic!(
                "{secret} in an admin answer: …{}",
                &answers[from..at + secret.len()]
            );
        }
    }
}
