//! Request limits through the real proxy: body size per route (413, declared or streamed)
//! and header field count (431, HTTP/1.1 and HTTP/2).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;

/// Reads the whole request body and answers with its length; counts requests.
async fn length_upstream(requests: Arc<AtomicUsize>) -> Upstream {
    upstream(move |req| {
        let requests = Arc::clone(&requests);
        async move {
            requests.fetch_add(1, SeqCst);
            let length = match req.into_body().collect().await {
                Ok(body) => body.to_bytes().len().to_string(),
                Err(_) => "cut".to_owned(),
            };
            Response::new(full(length))
        }
    })
    .await
}

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
[server]
max_request_body_bytes = 4000
max_request_headers = 30
[[listeners]]
name = "http"
address = "127.0.0.1:0"
[[routes]]
path_prefix = "/small"
pool = "main"
max_body_bytes = 1000
[[routes]]
path_prefix = "/any"
pool = "main"
max_body_bytes = 0
[[routes]]
pool = "main"
[pools.main]
endpoints = [{{ address = "{upstream}" }}]
retry = {{ attempts = 0 }}
"#
    )
}

fn post(proxy: SocketAddr, path: &str, length: usize) -> Request<Body> {
    Request::post(format!("http://{proxy}{path}"))
        .body(full(vec![b'x'; length]))
        .unwrap()
}

#[tokio::test]
async fn bodies_over_the_route_limit_get_413() {
    let requests = Arc::new(AtomicUsize::new(0));
    let up = length_upstream(Arc::clone(&requests)).await;
    let weir = weir(&config(up.addr)).await;
    let proxy = weir.listener_addr("http").unwrap();
    let client = http1_client();

    // Declared lengths: the route's own limit, the server default, and no limit.
    for (path, length, expected) in [
        ("/small", 1000, 200),
        ("/small", 1001, 413),
        ("/other", 4000, 200),
        ("/other", 4001, 413),
        ("/any", 100_000, 200),
    ] {
        let reply = send(&client, post(proxy, path, length)).await;
        assert_eq!(reply.status, expected, "{path} {length}");
        if expected == 413 {
            assert_eq!(
                reply.text(),
                "413 Payload Too Large: request body too large\n"
            );
            assert_eq!(reply.header("connection"), Some("close"));
        } else {
            assert_eq!(reply.text(), length.to_string());
        }
    }
    assert_eq!(
        requests.load(SeqCst),
        3,
        "declared oversize never goes upstream"
    );

    // Chunked (no declared length): cut when the stream passes the limit.
    let chunked = |length: usize| {
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..length
            / 100)
            .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'y'; 100]))))
            .collect();
        Request::post(format!("http://{proxy}/small"))
            .body(http_body_util::StreamBody::new(tokio_stream::iter(chunks)).boxed())
            .unwrap()
    };
    let chunked_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let small = chunked_client.request(chunked(900)).await.unwrap();
    assert_eq!(small.status(), 200);
    // weir answers 413 and closes as soon as the stream passes 1 000 bytes. A client still
    // writing may see that close (EPIPE) before it reads the answer: weir has no lingering
    // close yet. Either way the body is refused.
    match chunked_client.request(chunked(5000)).await {
        Ok(reply) => assert_eq!(reply.status(), 413),
        Err(err) => {
            let text = format!("{err:?}");
            assert!(
                text.contains("BodyWrite")
                    || text.contains("reset")
                    || text.contains("Broken pipe"),
                "{text}"
            );
        }
    }
    weir.shutdown().await;
}

#[tokio::test]
async fn too_many_header_fields_get_431_on_both_protocols() {
    let requests = Arc::new(AtomicUsize::new(0));
    let up = length_upstream(Arc::clone(&requests)).await;
    let weir = weir(&config(up.addr)).await;
    let proxy = weir.listener_addr("http").unwrap();
    let with_headers = |n: usize| {
        let mut request = Request::get(format!("http://{proxy}/"));
        for i in 0..n {
            request = request.header(format!("x-h{i}"), "v");
        }
        request.body(empty()).unwrap()
    };
    // 30 in all: the client adds none over HTTP/1.1 but Host.
    assert_eq!(send(&http1_client(), with_headers(29)).await.status, 200);
    assert_eq!(send(&http1_client(), with_headers(40)).await.status, 431);
    assert_eq!(send(&h2c_client(), with_headers(29)).await.status, 200);
    let h2 = send(&h2c_client(), with_headers(40)).await;
    assert_eq!(h2.status, 431);
    assert_eq!(
        h2.text(),
        "431 Request Header Fields Too Large: too many header fields\n"
    );
    assert_eq!(requests.load(SeqCst), 2);
    weir.shutdown().await;
}

#[test]
fn header_count_bounds_are_config_errors() {
    let base = "[[listeners]]\nname = \"h\"\naddress = \"127.0.0.1:1\"\n[[routes]]\npool = \"p\"\n[pools.p]\n";
    let err = weir::config::load_str(
        &format!("[server]\nmax_request_headers = 2\n{base}"),
        std::path::Path::new("w.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("server.max_request_headers: must be 8 to 10000, got 2"),
        "{err}"
    );
}

/// [`config`] with `max_request_header_bytes = limit`.
fn config_with_head_limit(upstream: SocketAddr, limit: usize) -> String {
    config(upstream).replace(
        "max_request_headers = 30",
        &format!("max_request_headers = 30\nmax_request_header_bytes = {limit}"),
    )
}

/// An HTTP/1.1 request head of exactly `size` bytes (request line, Host, one padding
/// field, blank line).
fn head_of(size: usize) -> Vec<u8> {
    let fixed = "GET / HTTP/1.1\r\nHost: weir.test\r\nX-Pad: \r\n\r\n".len();
    let pad = "p".repeat(size - fixed);
    format!("GET / HTTP/1.1\r\nHost: weir.test\r\nX-Pad: {pad}\r\n\r\n").into_bytes()
}

/// Sends `head` (in `pieces` writes, paced so that each arrives on its own) and returns
/// the response's status line.
async fn status_line(proxy: SocketAddr, head: &[u8], pieces: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for piece in head.chunks(head.len().div_ceil(pieces)) {
        if stream.write_all(piece).await.is_err() {
            break; // refused before the end: the answer is already on its way
        }
        if pieces > 1 {
            // Pacing, not waiting for a state: each piece is read on its own.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    let mut response = vec![0u8; 256];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read(&mut response),
    )
    .await
    .expect("an answer within 10 s")
    .unwrap_or(0);
    let text = String::from_utf8_lossy(&response[..n]).into_owned();
    text.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn the_header_bytes_limit_holds_to_the_byte() {
    for limit in [65536usize, 20000] {
        let requests = Arc::new(AtomicUsize::new(0));
        let up = length_upstream(Arc::clone(&requests)).await;
        let weir = weir(&config_with_head_limit(up.addr, limit)).await;
        let proxy = weir.listener_addr("http").unwrap();
        let mut forwarded = 0;
        for pieces in [1, 7] {
            for (size, fits) in [
                (limit - 1, true),
                (limit, true),
                (limit + 1, false),
                (100_000, false),
            ] {
                let line = status_line(proxy, &head_of(size), pieces).await;
                if fits {
                    forwarded += 1;
                    assert_eq!(
                        line, "HTTP/1.1 200 OK",
                        "{size} of {limit}, {pieces} pieces"
                    );
                } else {
                    assert!(
                        line.starts_with("HTTP/1.1 431"),
                        "{size} of {limit}, {pieces} pieces: {line}"
                    );
                }
            }
        }
        assert_eq!(
            requests.load(SeqCst),
            forwarded,
            "nothing over the limit went upstream"
        );
        weir.shutdown().await;
    }
}

#[tokio::test]
async fn the_header_list_limit_holds_on_http2() {
    // HTTP/2 counts a header list as RFC 9113 §6.5.2 does: each field's name and value
    // plus 32, pseudo-header fields included.
    let limit = 20000usize;
    let requests = Arc::new(AtomicUsize::new(0));
    let up = length_upstream(Arc::clone(&requests)).await;
    let weir = weir(&config_with_head_limit(up.addr, limit)).await;
    let proxy = weir.listener_addr("http").unwrap();
    let authority = proxy.to_string();
    // :method GET, :scheme http, :authority, :path /, x-pad
    let fixed = (7 + 3 + 32) + (7 + 4 + 32) + (10 + authority.len() + 32) + (5 + 1 + 32) + (5 + 32);
    for (size, fits) in [(limit - 1, true), (limit, true), (limit + 1, false)] {
        let request = Request::get(format!("http://{authority}/"))
            .header("x-pad", "p".repeat(size - fixed))
            .body(empty())
            .unwrap();
        let response = h2c_client()
            .request(request)
            .await
            .unwrap_or_else(|err| panic!("{size} of {limit}: {err}"));
        let expected = if fits { 200 } else { 431 };
        assert_eq!(response.status(), expected, "{size} of {limit}");
    }
    assert_eq!(requests.load(SeqCst), 2);
    weir.shutdown().await;
}
