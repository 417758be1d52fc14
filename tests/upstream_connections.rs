//! Upstream HTTP/1.1 connections driven by the request's own task (`upstream::exchange`):
//! reused across every kind of response framing, replaced when the upstream closes them or
//! a response is abandoned, and never handing one response's bytes to another request.
//! On one serving runtime, whose idle connections the counts here are about.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use common::wait::eventually;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the raw upstream saw.
#[derive(Default)]
struct Seen {
    /// Connections accepted.
    accepted: AtomicUsize,
    /// Connections that ended (weir closed them, or the upstream did).
    ended: AtomicUsize,
}

/// How the raw upstream treats its connections.
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    /// Keep-alive until weir closes them.
    Alive,
    /// Close each connection after one response, without saying so in the response.
    CloseSilently,
    /// Keep-alive, and hold the first answer on each of the first N connections until all
    /// N have a request waiting, so that each of those requests needs a connection.
    GatherFirst(usize),
}

/// The answer to `method path`, framed as the path says.
fn answer(method: &str, path: &str, n: usize) -> Vec<u8> {
    let body = format!("answer {n} to {path}");
    let head_only = method == "HEAD";
    let text = match path {
        "/length" => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            if head_only { "" } else { &body }
        ),
        "/chunked" => format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        ),
        "/no-content" => "HTTP/1.1 204 No Content\r\n\r\n".to_owned(),
        "/zero" => "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned(),
        "/not-modified" => "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n".to_owned(),
        "/close" => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        // Informational heads before the answer: skipped.
        "/early" => format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        // Neither length nor chunks: the body ends when the upstream closes.
        "/until-close" => format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}"),
        "/trailers" => format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
             {:x};ext=1\r\n{body}\r\n0\r\nx-checksum: 42\r\n\r\n",
            body.len()
        ),
        // Bytes no request asked for after the answer: the connection is spoiled.
        "/extra" => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}HTTP/1.1 200 OK\r\n\r\n",
            body.len()
        ),
        "/large" => {
            // 4 MiB: far more than socket buffers hold, so most is still unsent when
            // the client gives up.
            let size = 4 << 20;
            let mut text =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes();
            text.resize(text.len() + size, b'x');
            return text;
        }
        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
    };
    text.into_bytes()
}

/// Reads one request (head, and a `Content-Length` body): its method and path, or `None`
/// at the end of the connection.
async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<(String, String)> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            while pending.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                pending.extend_from_slice(&chunk[..n]);
            }
            pending.drain(..end + 4 + length);
            let mut words = head.split(' ');
            let method = words.next()?.to_owned();
            let path = words.next()?.to_owned();
            return Some((method, path));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

async fn raw_keepalive_upstream(keep: Keep) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    let gathering = match keep {
        Keep::GatherFirst(n) => Some((n, Arc::new(tokio::sync::Barrier::new(n)))),
        Keep::Alive | Keep::CloseSilently => None,
    };
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let index = counts.accepted.fetch_add(1, SeqCst);
            let counts = Arc::clone(&counts);
            let mut hold = gathering
                .as_ref()
                .filter(|(n, _)| index < *n)
                .map(|(_, barrier)| Arc::clone(barrier));
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut n = 0;
                while let Some((method, path)) = read_request(&mut stream, &mut pending).await {
                    n += 1;
                    if let Some(barrier) = hold.take() {
                        barrier.wait().await;
                    }
                    if stream.write_all(&answer(&method, &path, n)).await.is_err() {
                        break;
                    }
                    if path == "/close" || path == "/until-close" || keep == Keep::CloseSilently {
                        let _ = stream.shutdown().await;
                        break;
                    }
                }
                counts.ended.fetch_add(1, SeqCst);
            });
        }
    });
    (addr, seen)
}

async fn request(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
    proxy: SocketAddr,
    method: Method,
    path: &str,
) -> Reply {
    let body = if method == Method::POST {
        full("a posted body")
    } else {
        empty()
    };
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .body(body)
        .unwrap();
    send(client, request).await
}

#[tokio::test]
async fn one_upstream_connection_serves_every_kind_of_response() {
    let (up, seen) = raw_keepalive_upstream(Keep::Alive).await;
    let weir = weir(&(simple_config(&[up], "") + ONE_RUNTIME)).await;
    let proxy = weir.listener_addr("http").unwrap();
    let client = http1_client();
    let kinds: [(Method, &str, StatusCode, bool); 7] = [
        (Method::GET, "/length", StatusCode::OK, true),
        (Method::GET, "/chunked", StatusCode::OK, true),
        (Method::GET, "/no-content", StatusCode::NO_CONTENT, false),
        (Method::GET, "/zero", StatusCode::OK, false),
        (Method::HEAD, "/length", StatusCode::OK, false),
        (
            Method::GET,
            "/not-modified",
            StatusCode::NOT_MODIFIED,
            false,
        ),
        (Method::POST, "/length", StatusCode::OK, true),
    ];
    for round in 0..30 {
        for (number, (method, path, status, has_body)) in kinds.iter().enumerate() {
            let reply = request(&client, proxy, method.clone(), path).await;
            assert_eq!(reply.status, *status, "{method} {path}, round {round}");
            let expected_n = round * kinds.len() + number + 1;
            if *has_body {
                assert_eq!(
                    reply.text(),
                    format!("answer {expected_n} to {path}"),
                    "{method} {path}, round {round}"
                );
            } else {
                assert!(reply.body.is_empty(), "{method} {path}: {:?}", reply.body);
            }
        }
    }
    // 210 requests, one after another: one upstream connection carried them all.
    assert_eq!(seen.accepted.load(SeqCst), 1);
    assert_eq!(seen.ended.load(SeqCst), 0);
    weir.shutdown().await;
}

#[tokio::test]
async fn connections_the_upstream_closes_are_replaced_without_failing_a_request() {
    let (up, seen) = raw_keepalive_upstream(Keep::CloseSilently).await;
    // No retries: a request written to a connection the upstream had already closed
    // would fail. The closed connection has to be noticed before it is used.
    let weir = weir(&(simple_config(&[up], "retry = { attempts = 0 }") + ONE_RUNTIME)).await;
    let proxy = weir.listener_addr("http").unwrap();
    let client = http1_client();
    for n in 1..=20 {
        // The upstream closed the previous connection (after its answer, unannounced).
        eventually("the upstream closed its connection", async || {
            seen.ended.load(SeqCst) == n - 1
        })
        .await;
        let reply = request(&client, proxy, Method::GET, "/length").await;
        assert_eq!(reply.status, StatusCode::OK, "request {n}");
        assert_eq!(reply.text(), "answer 1 to /length");
    }
    assert_eq!(seen.accepted.load(SeqCst), 20);
    weir.shutdown().await;
}

#[tokio::test]
async fn a_response_announcing_close_is_not_reused() {
    let (up, seen) = raw_keepalive_upstream(Keep::Alive).await;
    let weir = weir(&(simple_config(&[up], "retry = { attempts = 0 }") + ONE_RUNTIME)).await;
    let proxy = weir.listener_addr("http").unwrap();
    let client = http1_client();
    for n in 1..=5 {
        let reply = request(&client, proxy, Method::GET, "/close").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "answer 1 to /close", "request {n}");
    }
    let reply = request(&client, proxy, Method::GET, "/length").await;
    assert_eq!(reply.text(), "answer 1 to /length");
    assert_eq!(seen.accepted.load(SeqCst), 6);
    weir.shutdown().await;
}

#[tokio::test]
async fn an_abandoned_response_closes_its_connection() {
    let (up, seen) = raw_keepalive_upstream(Keep::Alive).await;
    let weir = weir(&(simple_config(&[up], "retry = { attempts = 0 }") + ONE_RUNTIME)).await;
    let proxy = weir.listener_addr("http").unwrap();
    for round in 1..=3 {
        // Read the head and the first bytes of a 4 MiB body, then hang up.
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        raw_get_ok(&mut stream, "/large").await;
        drop(stream);
        // The rest of that body must not become the next request's answer.
        eventually(
            "weir closed the abandoned upstream connection",
            async || seen.ended.load(SeqCst) == round,
        )
        .await;
        let client = http1_client();
        let reply = request(&client, proxy, Method::GET, "/length").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "answer 1 to /length", "round {round}");
    }
    weir.shutdown().await;
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_answer() {
    let up = upstream(|req| async move {
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        http::Response::new(full(format!("{path} {}", body.len())))
    })
    .await;
    // Every serving runtime (two or more here), each with its own idle connections.
    let weir = weir(&simple_config(&[up.addr], "")).await;
    let proxy = weir.listener_addr("http").unwrap();
    let client = http1_client();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let client = client.clone();
        tasks.spawn(async move {
            for n in 0..50 {
                let path = format!("/t{task}/n{n}");
                let size = (task * 50 + n) * 7;
                let request = Request::post(format!("http://{proxy}{path}"))
                    .body(full(vec![b'b'; size]))
                    .unwrap();
                let reply = send(&client, request).await;
                assert_eq!(reply.status, StatusCode::OK);
                assert_eq!(reply.text(), format!("{path} {size}"));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    weir.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_bounded_per_endpoint_and_closed_after_idle_timeout() {
    let (up, seen) = raw_keepalive_upstream(Keep::GatherFirst(4)).await;
    let pool = "max_idle_per_endpoint = 2\nidle_timeout = \"200ms\"";
    let weir = weir(&(simple_config(&[up], pool) + ONE_RUNTIME)).await;
    let proxy = weir.listener_addr("http").unwrap();
    // Four requests at once: four upstream connections, then all four idle.
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        clients.spawn(async move {
            let reply = request(&http1_client(), proxy, Method::GET, "/length").await;
            assert_eq!(reply.status, StatusCode::OK);
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    assert_eq!(seen.accepted.load(SeqCst), 4);
    // Only two are kept idle; the other two are closed as they come back.
    eventually("two idle connections closed", async || {
        seen.ended.load(SeqCst) == 2
    })
    .await;
    // Past the idle timeout, the next request finds the kept ones expired: it closes
    // them and opens a new one. (Waiting out the timeout is what is tested here.)
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let reply = request(&http1_client(), proxy, Method::GET, "/length").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(seen.accepted.load(SeqCst), 5);
    eventually("the expired connections closed", async || {
        seen.ended.load(SeqCst) == 4
    })
    .await;
    weir.shutdown().await;
}

#[tokio::test]
async fn informational_heads_trailers_and_bodies_ended_by_close_reach_the_client() {
    let (up, seen) = raw_keepalive_upstream(Keep::Alive).await;
    let weir = weir(&(simple_config(&[up], "") + ONE_RUNTIME)).await;
    let proxy = weir.listener_addr("http").unwrap();
    let client = http1_client();

    let reply = request(&client, proxy, Method::GET, "/early").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "answer 1 to /early");

    // A chunked answer with an extension and trailers: read to its end, and its
    // connection carries the next request ("answer 3"). (weir does not pass trailers on
    // to HTTP/1.1 clients: it drops `Trailer` with the hop-by-hop fields.)
    let raw = raw_exchange(
        proxy,
        b"GET /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("answer 2 to /trailers"), "{raw}");

    let reply = request(&client, proxy, Method::GET, "/until-close").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "answer 3 to /until-close");
    // That connection ended with its body: the next request has a new one.
    let reply = request(&client, proxy, Method::GET, "/length").await;
    assert_eq!(reply.text(), "answer 1 to /length");
    assert_eq!(seen.accepted.load(SeqCst), 2);
    weir.shutdown().await;
}

#[tokio::test]
async fn bytes_after_a_response_keep_its_connection_from_being_reused() {
    let (up, seen) = raw_keepalive_upstream(Keep::Alive).await;
    let weir = weir(&(simple_config(&[up], "retry = { attempts = 0 }") + ONE_RUNTIME)).await;
    let proxy = weir.listener_addr("http").unwrap();
    let client = http1_client();
    let reply = request(&client, proxy, Method::GET, "/extra").await;
    assert_eq!(reply.text(), "answer 1 to /extra");
    // The stray bytes are never taken for an answer to a later request, which goes on a
    // new connection; answers that spoil nothing let the next request reuse theirs.
    let reply = request(&client, proxy, Method::GET, "/length").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "answer 1 to /length");
    let reply = request(&client, proxy, Method::GET, "/length").await;
    assert_eq!(reply.text(), "answer 2 to /length");
    assert_eq!(seen.accepted.load(SeqCst), 2);
    weir.shutdown().await;
}

/// Two endpoints on one upstream: whichever gets the first request answers 503, the
/// other echoes each request it gets (head and body) as its answer's body.
async fn fail_once_then_echo() -> [SocketAddr; 2] {
    let failed = Arc::new(AtomicUsize::new(0));
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let failed = Arc::clone(&failed);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let failed = Arc::clone(&failed);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Head, then the body its Content-Length announces.
                        let complete = seen.windows(4).position(|w| w == b"\r\n\r\n").map(|end| {
                            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            end + 4 + length
                        });
                        if let Some(total) = complete.filter(|total| seen.len() >= *total) {
                            let request: Vec<u8> = seen.drain(..total).collect();
                            let answer = if failed.fetch_add(1, SeqCst) == 0 {
                                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                                    .to_vec()
                            } else {
                                let mut answer = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                    request.len()
                                )
                                .into_bytes();
                                answer.extend_from_slice(&request);
                                answer
                            };
                            if stream.write_all(&answer).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
    }
    [addrs[0], addrs[1]]
}

#[tokio::test]
async fn a_retried_request_carries_the_same_head_and_body() {
    // The first attempt's header map goes back to the retry without a copy made
    // beforehand (weir's own client writes the head and returns the map): what the
    // second endpoint receives must be the whole request all the same.
    for (method, body) in [(Method::GET, ""), (Method::PUT, "the body, buffered")] {
        let endpoints = fail_once_then_echo().await;
        let weir = weir(&(simple_config(&endpoints, "") + ONE_RUNTIME)).await;
        let proxy = weir.listener_addr("http").unwrap();
        let request = Request::builder()
            .method(method.clone())
            .uri(format!("http://{proxy}/items/7?full=1"))
            .header("x-tenant", "blue")
            .header("x-tag", "one")
            .header("x-tag", "two")
            .header("authorization", "Bearer t0ken")
            .body(full(body))
            .unwrap();
        let reply = send(&http1_client(), request).await;
        assert_eq!(reply.status, StatusCode::OK, "{method}");
        let echoed = reply.text().to_ascii_lowercase();
        assert!(
            echoed.starts_with(
                &format!("{method} /items/7?full=1 http/1.1\r\n").to_ascii_lowercase()
            ),
            "{echoed}"
        );
        for line in [
            "x-tenant: blue",
            "x-tag: one",
            "x-tag: two",
            "authorization: bearer t0ken",
            "x-forwarded-for: 127.0.0.1",
        ] {
            assert_eq!(
                echoed.matches(line).count(),
                1,
                "{method}: {line} in {echoed}"
            );
        }
        assert_eq!(echoed.matches("\r\nhost: ").count(), 1, "{echoed}");
        assert!(
            echoed.ends_with(&format!("\r\n\r\n{body}")),
            "{method}: {echoed}"
        );
        if !body.is_empty() {
            assert!(
                echoed.contains(&format!("content-length: {}", body.len())),
                "{echoed}"
            );
        }
        weir.shutdown().await;
    }
}
