//! Upgrade passthrough (WebSocket and friends): 101, then bytes both ways; the tunnel
//! counts as in flight until it closes.

mod common;

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that accepts `Upgrade: echo` (reporting the WebSocket key it saw) and then
/// echoes every byte.
async fn echo_upgrade_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    let key = req
                        .headers()
                        .get("sec-websocket-key")
                        .cloned()
                        .unwrap_or(http::HeaderValue::from_static("-"));
                    if req.headers().get("upgrade").is_none() {
                        return Ok::<_, Infallible>(Response::new(full("plain")));
                    }
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(upgraded) = on_upgrade.await {
                            let mut io = TokioIo::new(upgraded);
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                    Ok(Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("connection", "upgrade")
                        .header("upgrade", "echo")
                        .header("x-seen-key", key)
                        .body(empty())
                        .unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upgrades_are_tunnelled_and_counted_in_flight() {
    let up = echo_upgrade_upstream().await;
    let weir = weir(&simple_config(&[up], "")).await;
    let proxy = weir.listener_addr("http").unwrap();

    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(
        head.contains("x-seen-key: dghlihnhbxbszsbub25jzq=="),
        "the handshake headers reach the upstream: {head}"
    );

    for message in [&b"hello"[..], b"second message"] {
        stream.write_all(message).await.unwrap();
        let mut buf = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, message);
    }
    let in_flight = || weir.state().snapshot.load().pools["main"].endpoints()[0].in_flight();
    assert_eq!(in_flight(), 1, "the open tunnel counts as in flight");
    drop(stream);
    for _ in 0..100 {
        if in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(in_flight(), 0, "released when the tunnel closes");
    // Plain requests still work on the same pool.
    assert_eq!(get(proxy, "/").await.text(), "plain");
    weir.shutdown().await;
}

#[tokio::test]
async fn shutdown_waits_for_open_tunnels_until_the_drain_deadline() {
    let up = echo_upgrade_upstream().await;
    let config = simple_config(&[up], "") + "\n[server]\ndrain_timeout = \"300ms\"\n";
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&read_head(&mut stream).await).starts_with("HTTP/1.1 101"));
    let pool = weir.state().snapshot.load().pools["main"].clone();
    let report = weir.shutdown().await;
    assert!(
        !report.completed,
        "an open tunnel holds the drain until its deadline"
    );
    assert_eq!(
        pool.stats.in_flight.load(Relaxed),
        0,
        "then it is cut and released"
    );
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the client side is closed"
    );
}

/// A real WebSocket echo server (tungstenite): every text and binary message comes back.
async fn websocket_echo_upstream() -> std::net::SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_sessions_pass_through_with_the_real_handshake() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = websocket_echo_upstream().await;
    let weir = weir(&simple_config(&[up], "")).await;
    let proxy = weir.listener_addr("http").unwrap();
    let in_flight = || weir.state().snapshot.load().pools["main"].endpoints()[0].in_flight();

    // The client checks Sec-WebSocket-Accept against its own key: the handshake went
    // through weir unaltered.
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{proxy}/chat"))
        .await
        .expect("handshake through weir");
    assert_eq!(response.status(), 101);
    let mut second = tokio_tungstenite::connect_async(format!("ws://{proxy}/chat"))
        .await
        .unwrap()
        .0;
    assert_eq!(in_flight(), 2, "each open session counts as in flight");

    let big = "x".repeat(100_000);
    for message in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text(big.as_str()),
    ] {
        ws.send(message.clone()).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, message);
    }
    second.send(Message::text("other")).await.unwrap();
    assert_eq!(
        second.next().await.unwrap().unwrap(),
        Message::text("other")
    );

    ws.close(None).await.unwrap();
    drop(ws);
    for _ in 0..100 {
        if in_flight() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        in_flight(),
        1,
        "a closed session is released, the other stays"
    );
    drop(second);
    weir.shutdown().await;
}
