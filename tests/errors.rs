//! Failures map to the right status with a short plain body and the request id.

mod common;

use common::*;
use http::{Request, Response};
use std::time::Duration;

#[tokio::test]
async fn refused_connection_is_502() {
    let dead = closed_port().await;
    let weir = weir(&simple_config(&[dead], "")).await;
    let reply = get(weir.listener_addr("http").unwrap(), "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "502 Bad Gateway: upstream connect failed\n");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(reply.header("x-request-id").map(str::len), Some(32));
    let snapshot = weir.state().snapshot.load();
    let endpoint = &snapshot.pools["main"].endpoints()[0];
    // One attempt and the two default retries (the only endpoint, so the same one).
    assert_eq!(
        endpoint
            .stats
            .connect_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    drop(snapshot);
    weir.shutdown().await;
}

#[tokio::test]
async fn upstream_closing_without_response_is_502() {
    let up = raw_upstream(b"").await;
    let weir = weir(&simple_config(&[up], "")).await;
    let reply = get(weir.listener_addr("http").unwrap(), "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "502 Bad Gateway: upstream request failed\n");
    weir.shutdown().await;
}

#[tokio::test]
async fn garbage_from_upstream_is_502() {
    let up = raw_upstream(b"this is not http\r\n\r\n").await;
    let weir = weir(&simple_config(&[up], "")).await;
    let reply = get(weir.listener_addr("http").unwrap(), "/").await;
    assert_eq!(reply.status, 502);
    weir.shutdown().await;
}

#[tokio::test]
async fn empty_pool_is_503_with_retry_after() {
    let weir = weir(&simple_config(&[], "")).await;
    let reply = get(weir.listener_addr("http").unwrap(), "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        reply.text(),
        "503 Service Unavailable: no upstream endpoint available\n"
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_is_504_after_response_timeout() {
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(full("late"))
    })
    .await;
    let weir = weir(&simple_config(&[up.addr], "response_timeout = \"200ms\"")).await;
    let started = std::time::Instant::now();
    let reply = get(weir.listener_addr("http").unwrap(), "/").await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.text(), "504 Gateway Timeout: upstream timed out\n");
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    weir.shutdown().await;
}

#[tokio::test]
async fn unmatched_route_is_404() {
    let up = named_upstream("a").await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
[[routes]]
path_prefix = "/api"
pool = "main"
[pools.main]
endpoints = [{{ address = "{}" }}]
"#,
        up.addr
    );
    let weir = weir(&config).await;
    let reply = get(weir.listener_addr("http").unwrap(), "/other").await;
    assert_eq!(reply.status, 404);
    weir.shutdown().await;
}

#[tokio::test]
async fn missing_or_duplicate_host_is_400_and_connect_is_405() {
    let up = named_upstream("a").await;
    let weir = weir(&simple_config(&[up.addr], "")).await;
    let proxy = weir.listener_addr("http").unwrap();
    let no_host = raw_exchange(proxy, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    assert!(no_host.contains("missing Host header"), "{no_host}");
    let two_hosts = raw_exchange(proxy, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    let connect = raw_exchange(
        proxy,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    // HTTP/1.0 may omit Host.
    let old = raw_exchange(proxy, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn proxy_counts_responses_by_class() {
    let dead = closed_port().await;
    let weir = weir(&simple_config(&[dead], "")).await;
    let proxy = weir.listener_addr("http").unwrap();
    for _ in 0..3 {
        assert_eq!(get(proxy, "/").await.status, 502);
    }
    let request = Request::get(format!("http://{proxy}/"))
        .body(empty())
        .unwrap();
    let _ = send(&http1_client(), request).await;
    assert_eq!(weir.state().stats.responses_of_class(5), 4);
    weir.shutdown().await;
}

#[tokio::test]
async fn connect_timeout_is_504() {
    // A listener that never accepts, with its backlog filled: the kernel drops further SYNs,
    // so connecting hangs until the connect timeout — all on loopback.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_millis(100),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let weir = weir(&simple_config(&[addr], "connect_timeout = \"300ms\"")).await;
    let started = std::time::Instant::now();
    let reply = get(weir.listener_addr("http").unwrap(), "/").await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(
        reply.text(),
        "504 Gateway Timeout: upstream connect timed out\n"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(listener);
    weir.shutdown().await;
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(full("ok")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    // One serving runtime: each keeps idle connections of its own.
    let weir = weir(&(simple_config(&[addr], "") + ONE_RUNTIME)).await;
    let proxy = weir.listener_addr("http").unwrap();
    for _ in 0..50 {
        assert_eq!(get(proxy, "/").await.status, 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection for 50 sequential requests"
    );
    weir.shutdown().await;
}
