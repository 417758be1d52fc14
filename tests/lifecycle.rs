//! Connection lifecycle: graceful drain (in-process and by SIGTERM to the real binary),
//! the connection limit, and header/idle timeouts.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::wait::eventually;
use common::*;
use http::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// An upstream that signals when a request arrives, then answers after `delay`.
async fn slow_upstream(delay: Duration) -> (Upstream, Arc<Notify>) {
    let arrived = Arc::new(Notify::new());
    let signal = arrived.clone();
    let up = upstream(move |_req| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            tokio::time::sleep(delay).await;
            Response::new(full("finished"))
        }
    })
    .await;
    (up, arrived)
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let (up, arrived) = slow_upstream(Duration::from_millis(600)).await;
    let weir = weir(&simple_config(&[up.addr], "")).await;
    let proxy = weir.listener_addr("http").unwrap();
    let in_flight = tokio::spawn(async move { get(proxy, "/slow").await });
    arrived.notified().await;

    let shutdown = tokio::spawn(weir.shutdown());
    // The listener closes at once: new connections are refused while the old one drains.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match TcpStream::connect(proxy).await {
            Err(_) => break,
            Ok(_) if Instant::now() > deadline => panic!("still accepting during drain"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "finished");
    let report = shutdown.await.unwrap();
    assert!(report.completed);
    assert_eq!(report.aborted_connections, 0);
}

#[tokio::test]
async fn drain_deadline_closes_what_is_left() {
    let (up, arrived) = slow_upstream(Duration::from_secs(30)).await;
    let config = simple_config(&[up.addr], "") + "\n[server]\ndrain_timeout = \"200ms\"\n";
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let in_flight = tokio::spawn(async move {
        http1_client()
            .request(
                Request::get(format!("http://{proxy}/"))
                    .body(empty())
                    .unwrap(),
            )
            .await
    });
    arrived.notified().await;
    let started = Instant::now();
    let report = weir.shutdown().await;
    assert!(!report.completed);
    assert_eq!(report.aborted_connections, 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        in_flight.await.unwrap().is_err(),
        "aborted request must fail"
    );
}

#[tokio::test]
async fn sigterm_drains_the_real_binary_and_exits_zero() {
    sigterm_drains("").await;
}

#[tokio::test]
async fn the_single_threaded_runtime_serves_and_drains_the_same() {
    sigterm_drains("\n[server]\nthreads = 1\n").await;
}

async fn sigterm_drains(extra: &str) {
    let (up, arrived) = slow_upstream(Duration::from_millis(800)).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("weir.toml");
    std::fs::write(&config_path, simple_config(&[up.addr], "") + extra).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&config_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let log_reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                && event["message"] == "listening"
            {
                let _ = addr_tx.send(event["address"].as_str().unwrap().to_owned());
            }
            lines.push(line);
        }
        lines
    });
    let proxy: std::net::SocketAddr = addr_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("weir logs its listening address")
        .parse()
        .unwrap();

    let in_flight = tokio::spawn(async move { get(proxy, "/slow").await });
    arrived.notified().await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "in-flight request survives SIGTERM");
    assert_eq!(reply.text(), "finished");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    let logs = log_reader.join().unwrap();
    assert!(
        logs.iter().any(|l| l.contains("SIGTERM: draining")),
        "{logs:#?}"
    );
}

#[tokio::test]
async fn over_the_connection_limit_is_refused_fast() {
    let up = named_upstream("a").await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
max_connections = 2
[[routes]]
pool = "main"
[pools.main]
endpoints = [{{ address = "{}" }}]
"#,
        up.addr
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    // Two keep-alive connections hold the two slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        raw_get_ok(&mut stream, "/").await;
        held.push(stream);
    }
    let started = Instant::now();
    let refused = raw_exchange(proxy, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        weir.state()
            .stats
            .connections_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // A slot frees up when a connection closes.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = raw_exchange(
            proxy,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        if reply.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {reply}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    weir.shutdown().await;
}

/// Reads until the server closes; returns how long that took.
async fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn slow_request_headers_are_cut_at_the_header_timeout() {
    let up = named_upstream("a").await;
    let config = simple_config(&[up.addr], "") + "\n[server]\nrequest_header_timeout = \"300ms\"\n";
    let weir = weir(&config).await;
    let mut stream = TcpStream::connect(weir.listener_addr("http").unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let waited = time_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    weir.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let up = named_upstream("a").await;
    let config = simple_config(&[up.addr], "")
        + "\n[server]\nclient_idle_timeout = \"300ms\"\nrequest_header_timeout = \"30s\"\n";
    let weir = weir(&config).await;
    let mut stream = TcpStream::connect(weir.listener_addr("http").unwrap())
        .await
        .unwrap();
    raw_get_ok(&mut stream, "/").await;
    let waited = time_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    weir.shutdown().await;
}

/// The header timeout bounds a head from its first byte; the wait before it on a
/// keep-alive connection is the idle timeout's to bound. (Unpatched hyper started the
/// header timer right after each response, closing connections idle for the header
/// timeout whatever the idle timeout.) A later head that stalls is still cut.
#[tokio::test]
async fn a_keep_alive_connection_idles_past_the_header_timeout() {
    let up = named_upstream("a").await;
    let config = simple_config(&[up.addr], "")
        + "\n[server]\nrequest_header_timeout = \"200ms\"\nclient_idle_timeout = \"30s\"\n";
    let weir = weir(&config).await;
    let mut stream = TcpStream::connect(weir.listener_addr("http").unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    for round in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "round {round}");
        // Three header timeouts with nothing sent: the connection must stay open (the
        // read times out rather than seeing the close).
        let idle = tokio::time::timeout(Duration::from_millis(600), stream.read(&mut buf)).await;
        assert!(idle.is_err(), "round {round}: closed while idle: {idle:?}");
    }
    // A third head, begun and never finished: cut at the header timeout.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let waited = time_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    weir.shutdown().await;
}

/// A connection counts as active from its accept until it ends, however it ends: served
/// and closed by its client, closed before its first byte, or cut at the header timeout
/// while weir waited for its first bytes (opening and serving are two phases of the
/// connection's task; the count follows the task, not either phase).
#[tokio::test]
async fn connections_count_as_active_until_they_end_however_they_end() {
    use std::sync::atomic::Ordering::Relaxed;
    let up = named_upstream("a").await;
    let config = simple_config(&[up.addr], "") + "\n[server]\nrequest_header_timeout = \"2s\"\n";
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let active = || weir.state().stats.connections_active.load(Relaxed);
    assert_eq!(active(), 0);

    let mut served = TcpStream::connect(proxy).await.unwrap();
    raw_get_ok(&mut served, "/").await;
    let mut silent = TcpStream::connect(proxy).await.unwrap();
    eventually(
        "the served and the silent connection to be active",
        async || active() == 2,
    )
    .await;
    drop(TcpStream::connect(proxy).await.unwrap());
    // The closed one may or may not have been counted yet; it must not stay counted.
    eventually(
        "the connection closed before its first byte to end",
        async || active() == 2,
    )
    .await;
    time_until_closed(&mut silent, Duration::from_secs(10)).await;
    eventually(
        "the silent connection to end at the header timeout",
        async || active() == 1,
    )
    .await;
    // The served connection is still usable, then ends with its client.
    raw_get_ok(&mut served, "/").await;
    drop(served);
    eventually("the served connection to end with its client", async || {
        active() == 0
    })
    .await;
    weir.shutdown().await;
}
