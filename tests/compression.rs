//! Response compression: gzip/brotli when the client accepts it, the body is compressible
//! and over 1 KiB, and the upstream did not compress; `Vary: Accept-Encoding` always.

mod common;

use std::io::Read;
use std::sync::{Arc, Mutex};

use common::redis_server::RedisServer;
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

/// A cacheable 4 KiB JSON document with a strong ETag, answering `If-None-Match` with 304;
/// records the `Accept-Encoding` of every request it gets.
async fn cacheable_upstream(seen: Arc<Mutex<Vec<String>>>) -> Upstream {
    upstream(move |req| {
        let seen = Arc::clone(&seen);
        async move {
            let accept = req
                .headers()
                .get("accept-encoding")
                .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
            seen.lock().unwrap().push(accept);
            let response = Response::builder()
                .header("content-type", "application/json")
                .header("cache-control", "max-age=60")
                .header("etag", "\"v1\"");
            if req.headers().get("if-none-match").is_some() {
                return response.status(304).body(empty()).unwrap();
            }
            response.body(full(TEXT.repeat(4096 / TEXT.len()))).unwrap()
        }
    })
    .await
}

fn decode(reply: &Reply) -> String {
    let mut text = String::new();
    match reply.header("content-encoding") {
        Some("br") => {
            brotli::Decompressor::new(&reply.body[..], 4096)
                .read_to_string(&mut text)
                .unwrap();
        }
        Some("gzip") => {
            flate2::read::GzDecoder::new(&reply.body[..])
                .read_to_string(&mut text)
                .unwrap();
        }
        None => text = reply.text(),
        Some(other) => panic!("unexpected coding {other}"),
    }
    text
}

/// As [`fetch`], with one Host for every instance (the cache key includes it).
async fn fetch_doc(proxy: std::net::SocketAddr, accept: Option<&str>) -> Reply {
    let mut request = Request::get(format!("http://{proxy}/doc")).header("host", "doc.example");
    if let Some(accept) = accept {
        request = request.header("accept-encoding", accept);
    }
    send(&http1_client(), request.body(empty()).unwrap()).await
}

fn cache_status(reply: &Reply) -> &str {
    reply.header("cache-status").unwrap_or("-")
}

#[tokio::test]
async fn compressed_variants_are_cached_apart_and_served_without_recompressing() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = cacheable_upstream(Arc::clone(&seen)).await;
    let redis = RedisServer::start().await;
    let config = simple_config(&[up.addr], "")
        + &format!(
            "\n[server]\ncompression = true\n[cache]\nenabled = true\n[redis]\nurl = \"{}\"\n",
            redis.url()
        );
    let a = weir(&config).await;
    let proxy = a.listener_addr("http").unwrap();
    let original = TEXT.repeat(4096 / TEXT.len());

    // (Accept-Encoding, coding served, cache outcome): spellings that pick the same coding
    // share one variant; each coding is fetched once.
    let mut bodies: std::collections::BTreeMap<&str, Vec<u8>> = Default::default();
    for (accept, coding, outcome) in [
        (Some("gzip, deflate, br"), Some("br"), "fwd=miss; stored"),
        (Some("br, gzip"), Some("br"), "hit"),
        (Some("br;q=0.9, gzip;q=0.1, zstd"), Some("br"), "hit"),
        (Some("gzip"), Some("gzip"), "fwd=miss; stored"),
        (Some("deflate, gzip;q=0.8"), Some("gzip"), "hit"),
        (None, None, "fwd=miss; stored"),
        (Some("identity"), None, "hit"),
        (Some("br;q=0, gzip;q=0"), None, "hit"),
    ] {
        let reply = fetch_doc(proxy, accept).await;
        // A stored variant is in the cache before the next request asks for it (the
        // store finishes in the background, maybe on another serving runtime).
        common::wait::settled(&a).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-encoding"), coding, "{accept:?}");
        assert!(
            cache_status(&reply).contains(outcome),
            "{accept:?}: {}",
            cache_status(&reply)
        );
        assert_eq!(decode(&reply), original, "{accept:?}");
        assert!(
            reply
                .header("vary")
                .unwrap_or("")
                .eq_ignore_ascii_case("accept-encoding"),
            "{accept:?}"
        );
        // A compressed body is not the identity representation: its ETag is weak.
        let expected_etag = if coding.is_some() {
            "W/\"v1\""
        } else {
            "\"v1\""
        };
        assert_eq!(reply.header("etag"), Some(expected_etag), "{accept:?}");
        let coding = coding.unwrap_or("identity");
        match bodies.get(coding) {
            // A hit is the stored bytes, not a fresh compression.
            Some(first) => assert_eq!(first, &reply.body.to_vec(), "{accept:?}"),
            None => {
                bodies.insert(coding, reply.body.to_vec());
            }
        }
    }
    assert!(
        bodies["br"].len() < original.len() / 4,
        "{} bytes",
        bodies["br"].len()
    );
    assert!(bodies["gzip"].len() < original.len() / 4);
    // The upstream was asked once per coding, each time for that coding alone.
    assert_eq!(*seen.lock().unwrap(), ["br", "gzip", "identity"]);

    // The client's own validators are answered from the compressed variant.
    let request = Request::get(format!("http://{proxy}/doc"))
        .header("host", "doc.example")
        .header("accept-encoding", "br")
        .header("if-none-match", "W/\"v1\"")
        .body(empty())
        .unwrap();
    let not_modified = send(&http1_client(), request).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(seen.lock().unwrap().len(), 3);

    // Another instance finds each variant in Redis (L2).
    wait::settled(&a).await;
    let b = weir(&config).await;
    let other = b.listener_addr("http").unwrap();
    for (accept, coding) in [("br", "br"), ("gzip", "gzip"), ("identity", "identity")] {
        let reply = fetch_doc(other, Some(accept)).await;
        assert!(
            cache_status(&reply).starts_with("weir-l2; hit"),
            "{accept}: {}",
            cache_status(&reply)
        );
        assert_eq!(&reply.body.to_vec(), &bodies[coding], "{accept}");
    }
    assert_eq!(seen.lock().unwrap().len(), 3, "no more upstream requests");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_revalidated_compressed_variant_keeps_its_weak_etag() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = upstream({
        let seen = Arc::clone(&seen);
        move |req| {
            let seen = Arc::clone(&seen);
            async move {
                let conditional = req.headers().get("if-none-match").is_some();
                seen.lock().unwrap().push(conditional);
                // Fresh for no time at all, so every request revalidates.
                let response = Response::builder()
                    .header("content-type", "text/plain")
                    .header("cache-control", "max-age=0, must-revalidate")
                    .header("etag", "\"v7\"");
                if conditional {
                    response.status(304).body(empty()).unwrap()
                } else {
                    response.body(full(TEXT.repeat(100))).unwrap()
                }
            }
        }
    })
    .await;
    let config =
        simple_config(&[up.addr], "") + "\n[server]\ncompression = true\n[cache]\nenabled = true\n";
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let first = fetch(proxy, "/t", Some("gzip")).await;
    assert_eq!(first.header("etag"), Some("W/\"v7\""));
    common::wait::settled(&weir).await;
    for _ in 0..2 {
        let again = fetch(proxy, "/t", Some("gzip")).await;
        common::wait::settled(&weir).await;
        assert!(
            cache_status(&again).contains("fwd-status=304"),
            "{}",
            cache_status(&again)
        );
        assert_eq!(again.header("content-encoding"), Some("gzip"));
        assert_eq!(
            again.header("etag"),
            Some("W/\"v7\""),
            "still weak after the 304"
        );
        assert_eq!(again.body, first.body);
    }
    assert_eq!(*seen.lock().unwrap(), [false, true, true]);
    weir.shutdown().await;
}

#[tokio::test]
async fn ranges_of_a_compressed_variant_are_ranges_of_its_stored_bytes() {
    let up = upstream(|_req| async move {
        Response::builder()
            .header("content-type", "application/json")
            .header("cache-control", "max-age=60")
            .header("etag", "\"s1\"")
            .header("accept-ranges", "bytes")
            .body(full(TEXT.repeat(4096 / TEXT.len())))
            .unwrap()
    })
    .await;
    let config =
        simple_config(&[up.addr], "") + "\n[server]\ncompression = true\n[cache]\nenabled = true\n";
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let ask = |headers: &'static [(&'static str, &'static str)]| async move {
        let mut request = Request::get(format!("http://{proxy}/doc"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        send(&http1_client(), request.body(empty()).unwrap()).await
    };

    // weir compressed it: the stored bytes are not the origin's, and the origin could not
    // serve ranges of them, so the gzip variant does not offer ranges.
    let gz = ask(&[("accept-encoding", "gzip")]).await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.header("accept-ranges"), None);
    assert_eq!(gz.header("etag"), Some("W/\"s1\""));
    let identity = ask(&[("accept-encoding", "identity")]).await;
    assert_eq!(identity.header("accept-ranges"), Some("bytes"));
    wait::stored(&weir, 2).await;
    let gz_hit = ask(&[("accept-encoding", "gzip")]).await;
    assert_eq!(gz_hit.header("accept-ranges"), None);
    // A range a client asks anyway is cut from the variant it selects: gzip bytes for
    // gzip, the origin's bytes for identity.
    let gz_part = ask(&[("accept-encoding", "gzip"), ("range", "bytes=0-9")]).await;
    assert_eq!(gz_part.status, 206);
    assert_eq!(gz_part.header("content-encoding"), Some("gzip"));
    assert_eq!(&gz_part.body[..], &gz.body[..10]);
    let id_part = ask(&[("accept-encoding", "identity"), ("range", "bytes=0-9")]).await;
    assert_eq!(id_part.status, 206);
    assert_eq!(&id_part.body[..], &identity.body[..10]);
    // The origin's strong tag never matches the weakened one: If-Range gets it all.
    let whole = ask(&[
        ("accept-encoding", "gzip"),
        ("range", "bytes=0-9"),
        ("if-range", "\"s1\""),
    ])
    .await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, gz.body);
}

/// 64 KiB of letters from a fixed-seed generator: gzip and brotli leave well over 1 KiB
/// of it, so a coded copy is still worth compressing by size.
fn letters() -> String {
    let mut state = 0x2545_f491_u32;
    (0..64 * 1024)
        .map(|_| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            char::from(b'a' + ((state >> 16) % 26) as u8)
        })
        .collect()
}

/// Upstream: [`letters`], cacheable for a minute.
async fn letters_upstream() -> Upstream {
    upstream(|_req| async move {
        Response::builder()
            .header("content-type", "text/plain")
            .header("cache-control", "max-age=60")
            .body(full(letters()))
            .unwrap()
    })
    .await
}

/// Upstream: a 4 KiB `image/png` (compressible bytes, but an image), cacheable for a
/// minute.
async fn image_upstream() -> Upstream {
    upstream(|_req| async move {
        Response::builder()
            .header("content-type", "image/png")
            .header("cache-control", "max-age=60")
            .body(full(TEXT.repeat(4096 / TEXT.len())))
            .unwrap()
    })
    .await
}

/// `path` fetched twice with `Accept-Encoding: accept`: stored by the first request,
/// a hit for the second.
async fn miss_then_hit(weir: &weir::app::Running, path: &str, accept: &str) -> (Reply, Reply) {
    let proxy = weir.listener_addr("http").unwrap();
    let miss = fetch(proxy, path, Some(accept)).await;
    common::wait::settled(weir).await;
    let hit = fetch(proxy, path, Some(accept)).await;
    let (stored, served) = (cache_status(&miss), cache_status(&hit));
    assert!(stored.contains("stored"), "{path}: {stored}");
    assert!(served.contains("hit"), "{path}: {served}");
    (miss, hit)
}

/// A stored compressed variant whose compressed bytes are still over the size worth
/// compressing: its hits carry the stored `Content-Encoding` where the listener's
/// compression layer sees it, so they are sent as stored, never compressed twice.
#[tokio::test]
async fn hits_of_a_large_compressed_variant_are_not_compressed_again() {
    let original = letters();
    let up = letters_upstream().await;
    let config =
        simple_config(&[up.addr], "") + "\n[server]\ncompression = true\n[cache]\nenabled = true\n";
    let weir = weir(&config).await;
    for coding in ["gzip", "br"] {
        let (miss, hit) = miss_then_hit(&weir, "/big", coding).await;
        for reply in [&miss, &hit] {
            let codings: Vec<_> = reply.headers.get_all("content-encoding").iter().collect();
            assert_eq!(codings, [coding], "{}", cache_status(reply));
            assert!(reply.body.len() > 1024 && reply.body.len() < original.len());
            assert_eq!(decode(reply), original, "{}", cache_status(reply));
        }
        assert_eq!(hit.body, miss.body, "a hit is the stored bytes");
    }
    weir.shutdown().await;
}

/// A connection keeps the compression layer it opened with. After a reload turns
/// compression off, a hit on that connection still shows the layer its stored
/// `Content-Type`: an image goes out as stored, not compressed.
#[tokio::test]
async fn a_connection_opened_with_compression_leaves_image_hits_alone_after_a_reload() {
    let up = image_upstream().await;
    let file = |compression: bool| {
        simple_config(&[up.addr], "")
            + &format!("\n[server]\ncompression = {compression}\n[cache]\nenabled = true\n")
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, file(true)).unwrap();
    let weir = start_from_file(&path).await;
    let proxy = weir.listener_addr("http").unwrap();
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut fetch_gzip = async || {
        let request = Request::get("/logo.png")
            .header("host", "a")
            .header("accept-encoding", "gzip")
            .body(empty())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = http_body_util::BodyExt::collect(body).await.unwrap();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.to_bytes(),
        }
    };
    let stored = fetch_gzip().await;
    assert!(
        cache_status(&stored).contains("stored"),
        "{}",
        cache_status(&stored)
    );
    common::wait::settled(&weir).await;

    std::fs::write(&path, file(false)).unwrap();
    let report = weir.supervisor().reload().await;
    assert!(report.ok, "{report:?}");
    let hit = fetch_gzip().await;
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(hit.header("content-encoding"), None);
    assert_eq!(hit.header("content-type"), Some("image/png"));
    assert_eq!(hit.body, stored.body);
    weir.shutdown().await;
}

/// With compression on, an image is stored as it came (no variant by coding). Its hits
/// are not compressed either: the listener's compression layer must see the stored
/// `Content-Type`, whatever form the stored head is sent in.
#[tokio::test]
async fn hits_of_an_image_are_not_compressed() {
    let up = image_upstream().await;
    let config =
        simple_config(&[up.addr], "") + "\n[server]\ncompression = true\n[cache]\nenabled = true\n";
    let weir = weir(&config).await;
    let (miss, hit) = miss_then_hit(&weir, "/logo.png", "gzip").await;
    for reply in [&miss, &hit] {
        assert_eq!(
            reply.header("content-encoding"),
            None,
            "{}",
            cache_status(reply)
        );
        assert_eq!(reply.header("content-type"), Some("image/png"));
        assert_eq!(reply.text(), TEXT.repeat(4096 / TEXT.len()));
    }
    weir.shutdown().await;
}
