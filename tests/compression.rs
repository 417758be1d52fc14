//! Response compression: gzip/brotli when the client accepts it, the body is compressible
//! and over 1 KiB, and the upstream did not compress; `Vary: Accept-Encoding` always.

mod common;

use std::io::Read;

use common::*;
use http::{Request, Response};

const TEXT: &str = "weir compresses repetitive JSON well. ";

/// Upstream: `/json` 4 KiB JSON, `/small` 100 bytes, `/png` 4 KiB image, `/gz` already gzip.
async fn content_upstream() -> Upstream {
    upstream(|req| async move {
        let big = TEXT.repeat(4096 / TEXT.len());
        let (content_type, body, encoding) = match req.uri().path() {
            "/json" => ("application/json", big, None),
            "/small" => ("application/json", "x".repeat(100), None),
            "/png" => ("image/png", big, None),
            _ => ("application/json", big, Some("gzip")),
        };
        let mut response = Response::builder().header("content-type", content_type);
        if let Some(encoding) = encoding {
            response = response.header("content-encoding", encoding);
        }
        response.body(full(body)).unwrap()
    })
    .await
}

async fn fetch(proxy: std::net::SocketAddr, path: &str, accept: Option<&str>) -> Reply {
    let mut request = Request::get(format!("http://{proxy}{path}"));
    if let Some(accept) = accept {
        request = request.header("accept-encoding", accept);
    }
    send(&http1_client(), request.body(empty()).unwrap()).await
}

#[tokio::test]
async fn compressible_responses_are_compressed_for_clients_that_accept_it() {
    let up = content_upstream().await;
    let weir = weir(&(simple_config(&[up.addr], "") + "\n[server]\ncompression = true\n")).await;
    let proxy = weir.listener_addr("http").unwrap();
    let original = TEXT.repeat(4096 / TEXT.len());

    let gz = fetch(proxy, "/json", Some("gzip")).await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert!(
        gz.header("vary")
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("accept-encoding")
    );
    assert!(
        gz.body.len() < original.len() / 4,
        "{} bytes",
        gz.body.len()
    );
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_string(&mut decoded)
        .unwrap();
    assert_eq!(decoded, original);

    let br = fetch(proxy, "/json", Some("br;q=1.0, gzip;q=0.5")).await;
    assert_eq!(br.header("content-encoding"), Some("br"));
    let mut decoded = String::new();
    brotli::Decompressor::new(&br.body[..], 4096)
        .read_to_string(&mut decoded)
        .unwrap();
    assert_eq!(decoded, original);

    for (path, accept, why) in [
        ("/json", None, "the client did not ask"),
        ("/json", Some("identity"), "the client refused"),
        ("/small", Some("gzip"), "under 1 KiB"),
        ("/png", Some("gzip"), "images are compressed already"),
    ] {
        let reply = fetch(proxy, path, accept).await;
        assert_eq!(reply.header("content-encoding"), None, "{why}");
    }
    let already = fetch(proxy, "/gz", Some("gzip, br")).await;
    assert_eq!(
        already.header("content-encoding"),
        Some("gzip"),
        "not compressed twice"
    );
    assert_eq!(
        already.body.len(),
        original.len(),
        "passed through as the upstream sent it"
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn compression_is_off_unless_configured() {
    let up = content_upstream().await;
    let weir = weir(&simple_config(&[up.addr], "")).await;
    let reply = fetch(weir.listener_addr("http").unwrap(), "/json", Some("gzip")).await;
    assert_eq!(reply.header("content-encoding"), None);
    weir.shutdown().await;
}
