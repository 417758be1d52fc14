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
    let (head, body) = read_raw_response(stream, pending).await;
    let status = head[9..12].parse().unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
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

/// An upstream that answers `GET /down/N` with N bytes (`i % 251`), and anything else as
/// [`echo`] does, with an `X-Path` field naming the request it answers.
async fn echo_and_download() -> Upstream {
    upstream(|req| async move {
        let path = req.uri().path().to_owned();
        if let Some(size) = path.strip_prefix("/down/") {
            let size: usize = size.parse().unwrap();
            let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            return Response::builder()
                .header("x-path", path.as_str())
                .body(full(body))
                .unwrap();
        }
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .unwrap()
            .to_bytes();
        let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
        Response::builder()
            .header("x-path", path.as_str())
            .body(full(format!("{path} {} {sum}", body.len())))
            .unwrap()
    })
    .await
}

/// Reads one response and returns its head and body bytes.
async fn read_raw_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
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
            let body = pending[end + 4..end + 4 + length].to_vec();
            pending.drain(..end + 4 + length);
            return (head, body);
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a response: {pending:?}");
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Large bodies grow hyper's read size; the small messages after them read through the
/// stack again (the patch's second path), and head buffers pass between connections of
/// one thread. Two keep-alive clients alternate uploads, downloads and small requests on
/// one serving runtime: every head names its own request and every byte arrives.
#[tokio::test]
async fn large_then_small_messages_alternating_between_connections_come_through_whole() {
    let up = echo_and_download().await;
    let weir = weir(&(simple_config(&[up.addr], "") + ONE_RUNTIME)).await;
    let proxy = weir.listener_addr("http").unwrap();
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push((TcpStream::connect(proxy).await.unwrap(), Vec::new()));
    }
    let upload: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let upload_sum: u64 = upload.iter().map(|&b| u64::from(b)).sum();
    for round in 0..3 {
        for (who, (stream, pending)) in clients.iter_mut().enumerate() {
            let tag = format!("{round}-{who}");
            // Upload, then a small request.
            let head = format!(
                "POST /up-{tag} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                upload.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&upload).await.unwrap();
            let (head, body) = read_raw_response(stream, pending).await;
            assert!(head.contains(&format!("x-path: /up-{tag}")), "{head}");
            assert_eq!(
                String::from_utf8(body).unwrap(),
                format!("/up-{tag} {} {upload_sum}", upload.len())
            );
            let small = format!("GET /small-{tag} HTTP/1.1\r\nHost: x\r\n\r\n");
            stream.write_all(small.as_bytes()).await.unwrap();
            let (head, body) = read_raw_response(stream, pending).await;
            assert!(head.contains(&format!("x-path: /small-{tag}")), "{head}");
            assert_eq!(body, format!("/small-{tag} 0 0").into_bytes());
            // Download, then two small requests pipelined.
            let size = 2 * 1024 * 1024 + round * 1000 + who;
            let down = format!("GET /down/{size} HTTP/1.1\r\nHost: x\r\n\r\n");
            stream.write_all(down.as_bytes()).await.unwrap();
            let (head, body) = read_raw_response(stream, pending).await;
            assert!(head.contains(&format!("x-path: /down/{size}")), "{head}");
            assert_eq!(body.len(), size);
            assert!(
                body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
                "download {tag} corrupted"
            );
            let pipelined = format!(
                "GET /p1-{tag} HTTP/1.1\r\nHost: x\r\n\r\nGET /p2-{tag} HTTP/1.1\r\nHost: x\r\n\r\n"
            );
            stream.write_all(pipelined.as_bytes()).await.unwrap();
            for p in ["p1", "p2"] {
                let (head, body) = read_raw_response(stream, pending).await;
                assert!(head.contains(&format!("x-path: /{p}-{tag}")), "{head}");
                assert_eq!(body, format!("/{p}-{tag} 0 0").into_bytes());
            }
        }
    }
    for (_, pending) in &clients {
        assert!(pending.is_empty());
    }
    weir.shutdown().await;
}

/// weir's hyper patch lets a quiet connection give back the header map and write queue it
/// keeps for its next request (weir asks after a tick of its accept loop). Asked at every
/// poll here, the harshest schedule: each of several keep-alive requests, answered with
/// a fixed length, chunked or empty, comes after the connection gave them back, and the
/// connection serves every one whole.
#[tokio::test]
async fn a_connection_that_gave_back_its_spare_memory_serves_its_next_requests() {
    use std::pin::pin;

    use bytes::Bytes;
    use http_body_util::{Empty, Full, StreamBody, combinators::BoxBody};
    use hyper::body::Frame;

    type Answer = BoxBody<Bytes, std::convert::Infallible>;
    let (client, server) = tokio::io::duplex(1 << 16);
    let service =
        hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
            let body: Answer = match req.uri().path() {
                "/chunked" => {
                    let frames = ["ab", "cd", "ef"]
                        .map(|piece| Ok(Frame::data(Bytes::from_static(piece.as_bytes()))));
                    BoxBody::new(StreamBody::new(tokio_stream::iter(frames)))
                }
                "/empty" => BoxBody::new(Empty::new()),
                path => BoxBody::new(Full::new(Bytes::from(format!("at {path}")))),
            };
            let mut response = Response::new(body);
            response
                .headers_mut()
                .insert("x-path", req.uri().path().parse().unwrap());
            Ok::<_, std::convert::Infallible>(response)
        });
    let serving = tokio::spawn(async move {
        let mut connection = pin!(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server), service)
                .with_upgrades()
        );
        std::future::poll_fn(|cx| {
            connection.as_mut().release_idle_memory();
            std::future::Future::poll(connection.as_mut(), cx)
        })
        .await
    });
    let (mut read_half, mut write_half) = tokio::io::split(client);
    let mut received = Vec::new();
    for (path, expected) in [
        ("/one", "at /one"),
        ("/chunked", "abcdef"),
        ("/empty", ""),
        ("/two", "at /two"),
        ("/chunked", "abcdef"),
    ] {
        write_half
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // Until this answer is whole: its head, then its body by length or chunks.
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let text = String::from_utf8_lossy(&received).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let head = &text[..end];
                    let rest = &text[end + 4..];
                    let whole = if head.contains("transfer-encoding: chunked") {
                        rest.find("0\r\n\r\n").map(|at| at + 5)
                    } else {
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |n| n.trim().parse().unwrap());
                        (rest.len() >= length).then_some(length)
                    };
                    if let Some(body_len) = whole {
                        let answer = (head.to_owned(), rest[..body_len].to_owned());
                        received.drain(..end + 4 + body_len);
                        return answer;
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = read_half.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the connection closed before answering {path}");
                received.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("an answer within 10 s");
        assert!(answer.0.starts_with("HTTP/1.1 200"), "{path}: {}", answer.0);
        assert!(
            answer.0.contains(&format!("x-path: {path}")),
            "{path}: {}",
            answer.0
        );
        let body = if answer.0.contains("transfer-encoding: chunked") {
            answer
                .1
                .split("\r\n")
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, piece)| piece)
                .collect::<String>()
        } else {
            answer.1
        };
        assert_eq!(body, expected, "{path}");
    }
    drop(write_half);
    drop(read_half);
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
}

/// Read buffers pass between the connections of one thread (weir patch: an idle
/// connection's empty buffer goes to the thread's spares, the next connection to read
/// takes it) and new request ids are cut from one per-thread block: eight keep-alive
/// clients on one serving runtime, each round's requests written before any answer is
/// read (two of them pipelined in one write), each naming itself in its path and a field.
/// Every answer names its own request, and every request id is new.
#[tokio::test]
async fn read_buffers_passed_between_connections_keep_requests_apart() {
    let up = upstream(|req| async move {
        let tag = req
            .headers()
            .get("x-tag")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Response::new(full(format!("{} {tag}", req.uri().path())))
    })
    .await;
    let weir = weir(&(simple_config(&[up.addr], "") + ONE_RUNTIME)).await;
    let proxy = weir.listener_addr("http").unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push((TcpStream::connect(proxy).await.unwrap(), Vec::new()));
    }
    let request = |round: usize, who: usize, n: usize| {
        format!("GET /r{round}/c{who}/{n} HTTP/1.1\r\nHost: x\r\nX-Tag: t{round}-{who}-{n}\r\n\r\n")
    };
    let mut ids = std::collections::HashSet::new();
    for round in 0..40 {
        for (who, (stream, _)) in clients.iter_mut().enumerate() {
            let mut write = request(round, who, 0);
            if who == 0 {
                write.push_str(&request(round, who, 1));
            }
            stream.write_all(write.as_bytes()).await.unwrap();
        }
        for (who, (stream, pending)) in clients.iter_mut().enumerate() {
            for n in 0..if who == 0 { 2 } else { 1 } {
                let (head, body) = read_raw_response(stream, pending).await;
                assert_eq!(
                    String::from_utf8_lossy(&body),
                    format!("/r{round}/c{who}/{n} t{round}-{who}-{n}")
                );
                let id = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-request-id: "))
                    .expect("a request id")
                    .to_owned();
                assert_eq!(id.len(), 32, "{id}");
                assert!(ids.insert(id), "a request id came twice");
            }
        }
    }
    weir.shutdown().await;
}
