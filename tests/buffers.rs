//! Messages that arrive in pieces, with waits between them, on both sides of the proxy.
//!
//! weir's hyper is patched (vendor/hyper/WEIR-PATCH.md) to give back a connection's read
//! and head buffers whenever a read would block with nothing buffered, and to read into
//! the stack until bytes arrive. Every wait below makes a read block, so each piece that
//! follows goes through that path: heads split mid-line, bodies trickled, pipelined
//! requests, a head larger than one stack read, and a keep-alive upstream that answers
//! in pieces. Every byte must come through, in order.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PAUSE: Duration = Duration::from_millis(40);

/// An upstream that answers `method path body-length body-checksum header-length`.
async fn echo() -> Upstream {
    upstream(|req| async move {
        let line = format!(
            "{} {} {}",
            req.method(),
            req.uri().path(),
            req.headers().get("x-big").map_or(0, |v| v.as_bytes().len())
        );
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .unwrap()
            .to_bytes();
        let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
        Response::new(full(format!("{line} {} {sum}", body.len())))
    })
    .await
}

/// Reads one response with a Content-Length body from `stream`; returns (status, body).
async fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (u16, String) {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let status = head[9..12].parse().unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            while pending.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed mid-body");
                pending.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&pending[end + 4..end + 4 + length]).into_owned();
            pending.drain(..end + 4 + length);
            return (status, body);
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a response: {pending:?}");
        pending.extend_from_slice(&chunk[..n]);
    }
}

async fn send_in_pieces(stream: &mut TcpStream, pieces: &[&[u8]]) {
    for piece in pieces {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(PAUSE).await;
    }
}

#[tokio::test]
async fn requests_in_pieces_with_waits_come_through_whole() {
    let up = echo().await;
    let weir = weir(&simple_config(&[up.addr], "")).await;
    let proxy = weir.listener_addr("http").unwrap();
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let mut pending = Vec::new();

    // A head split mid-line.
    send_in_pieces(
        &mut stream,
        &[b"GET /a HTTP/1.1\r\nHo", b"st: x\r\n", b"\r\n"],
    )
    .await;
    assert_eq!(
        read_response(&mut stream, &mut pending).await,
        (200, "GET /a 0 0 0".into())
    );

    // Idle, then a 20 000-byte body in three pieces on the same connection.
    tokio::time::sleep(PAUSE * 3).await;
    let body = vec![7u8; 20_000];
    let head = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n";
    send_in_pieces(
        &mut stream,
        &[head, &body[..5], &body[5..12_000], &body[12_000..]],
    )
    .await;
    assert_eq!(
        read_response(&mut stream, &mut pending).await,
        (200, "POST /b 0 20000 140000".into())
    );

    // Three pipelined requests in one write, answered in order.
    stream
        .write_all(b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\nGET /p3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for path in ["/p1", "/p2", "/p3"] {
        assert_eq!(
            read_response(&mut stream, &mut pending).await,
            (200, format!("GET {path} 0 0 0"))
        );
    }

    // A 20 KiB head (more than one 8 KiB stack read), sent as 9 KiB, a wait, the rest.
    let big = "v".repeat(20 * 1024);
    let request = format!("GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let (first, rest) = request.as_bytes().split_at(9 * 1024);
    send_in_pieces(&mut stream, &[first, rest]).await;
    assert_eq!(
        read_response(&mut stream, &mut pending).await,
        (200, format!("GET /big {} 0 0", big.len()))
    );
    assert!(pending.is_empty());
    weir.shutdown().await;
}

/// A keep-alive upstream that writes each response head and body in pieces with waits.
async fn piecemeal_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, connections) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = accepted.send(());
            tokio::spawn(async move {
                let mut n = 0;
                loop {
                    if read_head(&mut stream).await.is_empty() {
                        return;
                    }
                    n += 1;
                    let body = format!("answer {n} {}", "z".repeat(9_000));
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let (h1, h2) = head.as_bytes().split_at(10);
                    let (b1, b2) = body.as_bytes().split_at(7);
                    for piece in [h1, h2, b1, b2] {
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(PAUSE).await;
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn upstream_responses_in_pieces_come_through_whole_on_one_connection() {
    let (up, mut connections) = piecemeal_upstream().await;
    // One serving runtime: each keeps idle connections of its own.
    let weir = weir(&(simple_config(&[up], "") + ONE_RUNTIME)).await;
    let proxy = weir.listener_addr("http").unwrap();
    for n in 1..=3 {
        let reply = get(proxy, "/").await;
        let text = reply.text();
        assert_eq!(reply.status, http::StatusCode::OK);
        assert_eq!(text.len(), format!("answer {n} ").len() + 9_000, "{n}");
        assert!(text.starts_with(&format!("answer {n} zzz")), "{n}");
        tokio::time::sleep(PAUSE * 2).await;
    }
    // All three went over one pooled upstream connection, idle between them.
    connections.recv().await.unwrap();
    assert!(
        connections.try_recv().is_err(),
        "the upstream connection was not reused"
    );
    weir.shutdown().await;
}
