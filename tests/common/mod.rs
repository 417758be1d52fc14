//! Shared test harness: real upstream servers on 127.0.0.1:0, weir started in-process from
//! TOML text, and HTTP/1.1 / h2c clients.
#![allow(dead_code)]

pub mod redis_server;
pub mod tls;
pub mod wait;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A real HTTP server (HTTP/1.1 and h2c) running `handler` for every request.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_upstream(listener, handler)
}

/// As [`upstream`], on `address` (e.g. another loopback address on a port already used
/// on 127.0.0.1); the bind error when it is taken.
pub async fn upstream_on<F, Fut>(address: SocketAddr, handler: F) -> std::io::Result<Upstream>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    Ok(serve_upstream(TcpListener::bind(address).await?, handler))
}

fn serve_upstream<F, Fut>(listener: TcpListener, handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = token.cancelled() => return,
                accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            };
            let handler = handler.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::select! { _ = conn => {}, _ = token.cancelled() => {} }
            });
        }
    });
    Upstream { addr, stop }
}

/// An upstream answering every request with `headers` and `chunks` pieces of 64 KiB,
/// streamed without a length (one buffer shared by every piece: the upstream itself holds
/// 64 KiB however long the body).
pub async fn streaming_upstream(
    chunks: usize,
    headers: &'static [(&'static str, &'static str)],
) -> Upstream {
    upstream(move |_req| async move {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let frames = futures_util::stream::iter(
            (0..chunks).map(move |_| Ok::<_, BoxError>(hyper::body::Frame::data(chunk.clone()))),
        );
        let mut response = Response::builder();
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response
            .body(http_body_util::BodyExt::boxed(
                http_body_util::StreamBody::new(frames),
            ))
            .unwrap()
    })
    .await
}

/// An upstream that answers every request with `text` and the header `x-upstream: name`.
pub async fn named_upstream(name: &'static str) -> Upstream {
    upstream(move |_req| async move {
        Response::builder()
            .header("x-upstream", name)
            .body(full(name))
            .unwrap()
    })
    .await
}

/// An upstream that answers every request with 500.
pub async fn failing_upstream() -> Upstream {
    upstream(|_req| async {
        Response::builder()
            .status(500)
            .body(full("broken"))
            .unwrap()
    })
    .await
}

/// Sends `n` sequential GETs and counts the `x-upstream` header of each 200.
pub async fn served_by(proxy: SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let reply = get(proxy, "/").await;
        assert_eq!(reply.status, 200);
        *counts
            .entry(reply.header("x-upstream").unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// A raw TCP upstream: reads one request head, writes `response` verbatim, closes.
pub async fn raw_upstream(response: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_head(&mut stream).await;
                let _ = stream.write_all(response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// Reads from `stream` until the end of an HTTP head (or EOF); returns what was read.
pub async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// A loopback port with nothing listening on it.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// Starts weir in-process from config text (listener `http` on a free port).
pub async fn weir(config: &str) -> weir::app::Running {
    let config = weir::config::load_str(config, Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("test config invalid: {e}"));
    weir::app::start(&config).await.expect("weir starts")
}

/// Appended to a config: serve on the test's own runtime (`[server] threads = 1`), for
/// tests about what one runtime's upstream connections do (each serving runtime keeps its
/// own idle connections, so several would open more).
pub const ONE_RUNTIME: &str = "\n[server]\nthreads = 1\n";

/// Minimal config: one listener on a free port, every path to one pool.
/// weir started from the config file at `path`, which it reloads from (SIGHUP, admin
/// reload, `Supervisor::reload`).
pub async fn start_from_file(path: &Path) -> weir::app::Running {
    let prepared = weir::app::Prepared::from_file(path).unwrap();
    weir::app::start_with(prepared, Some(path.to_owned()))
        .await
        .unwrap()
}

pub fn simple_config(endpoints: &[SocketAddr], pool_extra: &str) -> String {
    let weighted: Vec<(SocketAddr, u32)> = endpoints.iter().map(|a| (*a, 1)).collect();
    weighted_config(&weighted, pool_extra)
}

/// As [`simple_config`], with a weight per endpoint.
pub fn weighted_config(endpoints: &[(SocketAddr, u32)], pool_extra: &str) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
        .collect();
    format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[routes]]
pool = "main"

[pools.main]
endpoints = [{}]
{pool_extra}
"#,
        list.join(", ")
    )
}

pub fn http1_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send(client: &Client<HttpConnector, Body>, request: Request<Body>) -> Reply {
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("response within 20 s")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(empty())
        .unwrap();
    send(&http1_client(), request).await
}

/// GET on the admin port with the bearer token.
pub async fn admin_get(admin: SocketAddr, path: &str, token: &str) -> Reply {
    let request = Request::get(format!("http://{admin}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    send(&http1_client(), request).await
}

/// Sends raw bytes on a fresh connection and returns everything read until close or 5 s.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A raw HTTP/1 exchange's status line, fields (in order, names lowercase) and body.
pub fn raw_parts(raw: &str) -> (String, Vec<(String, String)>, String) {
    let (head, body) = raw.split_once("\r\n\r\n").expect("a whole head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_owned();
    let fields = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("a field line");
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    (status, fields, body.to_owned())
}

pub fn values<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Sends `GET path` on a raw keep-alive connection and expects a 200 at the start of what
/// the first read returns (the head; a large body is left mostly unread).
pub async fn raw_get_ok(stream: &mut TcpStream, path: &str) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 4096];
    let n = stream.read(&mut first).await.unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200 OK"),
        "GET {path}: {}",
        String::from_utf8_lossy(&first[..n])
    );
}
