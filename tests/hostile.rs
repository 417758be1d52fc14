//! Hostile requests: smuggling vectors are refused before anything reaches an upstream,
//! path tricks cannot bypass route matching, broken bodies are the client's fault, and
//! invalid upstream framing is not passed on.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::Response;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A raw upstream that records every byte each connection sent and answers 200 to the
/// first request head it sees.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let mut answered = false;
                loop {
                    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => {
                            log.lock().unwrap().extend_from_slice(&buf[..n]);
                            if !answered && log.lock().unwrap().windows(4).any(|w| w == b"\r\n\r\n")
                            {
                                answered = true;
                                use tokio::io::AsyncWriteExt;
                                let _ = stream
                                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                    .await;
                            }
                        }
                        _ => return,
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn refused(raw: &[u8], expected_status: &[&str]) {
    let (up, seen) = recording_upstream().await;
    let weir = weir(&simple_config(&[up], "")).await;
    let proxy = weir.listener_addr("http").unwrap();
    let reply = raw_exchange(proxy, raw).await;
    assert!(
        expected_status
            .iter()
            .any(|status| reply.starts_with(&format!("HTTP/1.1 {status}"))),
        "{}: {reply}",
        String::from_utf8_lossy(raw)
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing may reach the upstream for {}",
        String::from_utf8_lossy(raw)
    );
    weir.shutdown().await;
}

/// hyper handles this the RFC 9112 §6.1 way: Transfer-Encoding wins, Content-Length is
/// dropped and the connection is closed after the response. What must hold: the upstream
/// gets one request with one framing, and the smuggled request never reaches it.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_never_forwarded_ambiguously() {
    let (up, seen) = recording_upstream().await;
    let weir = weir(&simple_config(&[up], "")).await;
    let proxy = weir.listener_addr("http").unwrap();
    let reply = raw_exchange(
        proxy,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    assert_eq!(
        reply.matches("HTTP/1.1 ").count(),
        1,
        "one response, then close: {reply}"
    );
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let upstream_saw = String::from_utf8_lossy(&seen.lock().unwrap()).to_ascii_lowercase();
    assert!(!upstream_saw.contains("smuggled"), "{upstream_saw}");
    assert!(
        !upstream_saw.contains("content-length: 4"),
        "{upstream_saw}"
    );
    assert!(
        upstream_saw.matches("post / http/1.1").count() <= 1,
        "{upstream_saw}"
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused() {
    refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        &["501"],
    )
    .await;
    refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        &["501"],
    )
    .await;
    // hyper itself refuses a final coding that is not chunked.
    refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        &["400", "501"],
    )
    .await;
}

#[tokio::test]
async fn malformed_heads_are_refused() {
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4x\r\n\r\nabcd",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\nabcd",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a%00b HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        refused(raw, &["400"]).await;
    }
}

#[tokio::test]
async fn broken_request_bodies_are_400_and_do_not_hurt_the_endpoint() {
    let up = upstream(|req| async move {
        use http_body_util::BodyExt;
        let _ = req.into_body().collect().await;
        Response::new(full("ok"))
    })
    .await;
    let weir = weir(&simple_config(
        &[up.addr],
        "passive = { consecutive_failures = 2 }",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    // A chunk size that is not hex, after a chunk that already went upstream (streamed).
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nabc\r\n0\r\n\r\n";
    for _ in 0..5 {
        let reply = raw_exchange(proxy, raw).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    }
    let snapshot = weir.state().snapshot.load();
    let endpoint = &snapshot.pools["main"].endpoints()[0];
    assert_eq!(
        endpoint.state(endpoint.now_ms()).as_str(),
        "healthy",
        "clients cannot eject endpoints"
    );
    drop(snapshot);
    assert_eq!(get(proxy, "/").await.status, 200);
    weir.shutdown().await;
}

#[tokio::test]
async fn dot_segments_cannot_bypass_route_matching() {
    let echo = |name: &'static str| async move {
        upstream(move |req| async move {
            Response::builder()
                .header("x-upstream", name)
                .body(full(req.uri().to_string()))
                .unwrap()
        })
        .await
    };
    let (api, admin) = (echo("api").await, echo("admin").await);
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
[[routes]]
path_prefix = "/api"
pool = "api"
[[routes]]
path_prefix = "/admin"
pool = "admin"
[pools.api]
endpoints = [{{ address = "{}" }}]
[pools.admin]
endpoints = [{{ address = "{}" }}]
"#,
        api.addr, admin.addr
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    for (target, pool, path) in [
        ("/api/../admin/users", "admin", "/admin/users"),
        ("/api/%2e%2e/admin", "admin", "/admin"),
        ("/api/%2E./admin?x=1", "admin", "/admin?x=1"),
        ("/admin/../api/x", "api", "/api/x"),
        ("/api/./v1", "api", "/api/v1"),
        ("/../../api", "api", "/api"),
    ] {
        let reply = raw_exchange(
            proxy,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            reply.contains(&format!("x-upstream: {pool}")),
            "{target}: {reply}"
        );
        assert!(
            reply.ends_with(path),
            "{target} must reach the upstream as {path}: {reply}"
        );
    }
    weir.shutdown().await;
}

#[tokio::test]
async fn invalid_upstream_framing_is_not_passed_on() {
    for response in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ] {
        let up = raw_upstream(response).await;
        let weir = weir(&simple_config(&[up], "retry = { attempts = 0 }")).await;
        let reply = raw_exchange(
            weir.listener_addr("http").unwrap(),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        // Either a clean 502, or (for a body that breaks mid-stream) a cut connection —
        // never the invalid framing itself.
        assert!(
            reply.starts_with("HTTP/1.1 502") || !reply.contains("hello\r\n0"),
            "{}: {reply}",
            String::from_utf8_lossy(response)
        );
        assert!(!reply.to_ascii_lowercase().contains("content-length: abc"));
        assert!(!reply.contains("Content-Length: 6"));
        weir.shutdown().await;
    }
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let (up, seen) = recording_upstream().await;
    let config = simple_config(&[up], "") + "\n[server]\nmax_request_header_bytes = 16384\n";
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let reply = raw_exchange(proxy, big_header.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(20_000));
    let reply = raw_exchange(proxy, long_target.as_bytes()).await;
    assert!(
        reply.starts_with("HTTP/1.1 414") || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );
    // Just under the limit is fine.
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(12_000)
    );
    assert!(
        raw_exchange(proxy, fits.as_bytes())
            .await
            .starts_with("HTTP/1.1 200")
    );
    let upstream_saw = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert_eq!(
        upstream_saw.matches("GET /").count(),
        1,
        "only the request that fits"
    );
    weir.shutdown().await;
}

/// Sends a request head, then `chunks` body pieces `gap` apart; returns the response.
async fn trickle(proxy: SocketAddr, length: usize, chunks: &[&[u8]], gap: Duration) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in chunks {
        if stream.write_all(chunk).await.is_err() {
            break;
        }
        tokio::time::sleep(gap).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn trickled_request_bodies_are_cut_steady_ones_are_not() {
    let up = upstream(|req| async move {
        use http_body_util::BodyExt;
        let n = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        Response::new(full(n.to_string()))
    })
    .await;
    // 300 ms, plus 1 s per 1000 bytes received.
    let config = simple_config(&[up.addr], "passive = { consecutive_failures = 2 }")
        + "\n[server]\nrequest_body_timeout = \"300ms\"\nmin_request_body_rate = 1000\n";
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    // Buffered path (small body): 1 byte every 100 ms cannot finish 100 bytes in time.
    let one: &[u8] = b"x";
    let drip = [one; 100];
    let reply = trickle(proxy, 100, &drip, Duration::from_millis(100)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    // Streamed path (above the retry buffer): the same trickle is cut too.
    let reply = trickle(proxy, 100_000, &drip, Duration::from_millis(100)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    // 2000 bytes every 50 ms (40 kB/s) keeps well ahead of its deadline.
    let piece = [b'y'; 2000];
    let pieces: Vec<&[u8]> = (0..20).map(|_| &piece[..]).collect();
    let reply = trickle(proxy, 40_000, &pieces, Duration::from_millis(50)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("40000"), "{reply}");
    // Slow clients are not the endpoint's fault.
    let snapshot = weir.state().snapshot.load();
    let endpoint = &snapshot.pools["main"].endpoints()[0];
    assert_eq!(endpoint.state(endpoint.now_ms()).as_str(), "healthy");
    drop(snapshot);
    weir.shutdown().await;
}
