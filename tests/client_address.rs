//! The real client behind a load balancer: PROXY protocol v1 and v2 on raw sockets
//! (whole, in pieces, truncated, malformed, missing, LOCAL), and `X-Forwarded-For` from
//! trusted proxies only, with every consumer (forwarding headers, rate limits, hashing)
//! seeing the one resolved address.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream that answers with the `X-Forwarded-For` and `Forwarded` it received.
async fn forwarded_echo() -> Upstream {
    upstream(|req: http::Request<hyper::body::Incoming>| async move {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let text = format!(
            "xff={}|fwd={}",
            header("x-forwarded-for"),
            header("forwarded")
        );
        http::Response::new(full(text))
    })
    .await
}

fn listener_config(upstream: SocketAddr, listener_extra: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n{listener_extra}\n\
         [[routes]]\npool = \"main\"\n{extra}\n\
         [pools.main]\nendpoints = [{{ address = \"{upstream}\" }}]\n"
    )
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

/// Sends `pieces` with a pause between them; returns all the connection gave back.
async fn exchange_in_pieces(proxy: SocketAddr, pieces: &[&[u8]]) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            // Pacing, not waiting for a state: the header must be read across segments.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if stream.write_all(piece).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    .unwrap()
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_give_the_client_address() {
    let up = forwarded_echo().await;
    let weir = weir(&listener_config(up.addr, "proxy_protocol = true", "")).await;
    let proxy = weir.listener_addr("http").unwrap();

    let v1 = [
        b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n".as_slice(),
        GET,
    ]
    .concat();
    let reply = raw_exchange(proxy, &v1).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("xff=203.0.113.7|fwd="), "{reply}");

    let v1_ipv6 = [
        b"PROXY TCP6 2001:db8::9 2001:db8::1 4000 443\r\n".as_slice(),
        GET,
    ]
    .concat();
    assert!(
        raw_exchange(proxy, &v1_ipv6)
            .await
            .ends_with("xff=2001:db8::9|fwd=")
    );

    let v2 = [
        v2_header(
            "198.51.100.20:5555".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        ),
        GET.to_vec(),
    ]
    .concat();
    assert!(
        raw_exchange(proxy, &v2)
            .await
            .ends_with("xff=198.51.100.20|fwd=")
    );

    // In pieces: the v2 header split inside its address block, then the request.
    let reply = exchange_in_pieces(proxy, &[&v2[..20], &v2[20..]]).await;
    assert!(reply.ends_with("xff=198.51.100.20|fwd="), "{reply}");
    let reply = exchange_in_pieces(proxy, &[&v1[..9], &v1[9..30], &v1[30..]]).await;
    assert!(reply.ends_with("xff=203.0.113.7|fwd="), "{reply}");

    // LOCAL (a balancer's health check) and UNKNOWN: the connection's own address.
    let local = ppp::v2::Builder::new(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
    )
    .build()
    .unwrap();
    let reply = raw_exchange(proxy, &[local, GET.to_vec()].concat()).await;
    assert!(reply.ends_with("xff=127.0.0.1|fwd="), "{reply}");
    let unknown = [b"PROXY UNKNOWN\r\n".as_slice(), GET].concat();
    assert!(
        raw_exchange(proxy, &unknown)
            .await
            .ends_with("xff=127.0.0.1|fwd=")
    );
    assert_eq!(weir.state().stats.proxy_header_refused.load(Relaxed), 0);
}

#[tokio::test]
async fn connections_without_a_valid_proxy_header_are_closed_unread() {
    let (up, seen) = {
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        let up = upstream(move |_req| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Relaxed);
                http::Response::new(full("reached"))
            }
        })
        .await;
        (up, seen)
    };
    let weir = weir(&listener_config(up.addr, "proxy_protocol = true", "")).await;
    let proxy = weir.listener_addr("http").unwrap();
    let v2 = v2_header(
        "198.51.100.20:5555".parse().unwrap(),
        "10.0.0.1:443".parse().unwrap(),
    );
    let attempts: Vec<(&str, Vec<u8>)> = vec![
        ("no header: plain HTTP", GET.to_vec()),
        (
            "HTTP that starts like v1",
            b"PROXY-CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        ),
        (
            "malformed v1 address",
            [b"PROXY TCP4 999.0.113.7 10.0.0.1 1 2\r\n".as_slice(), GET].concat(),
        ),
        (
            "v1 without CRLF",
            [
                b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2".as_slice(),
                &[b'x'; 100],
            ]
            .concat(),
        ),
        (
            "truncated v1, then close",
            b"PROXY TCP4 203.0.113.7 10.0.".to_vec(),
        ),
        ("truncated v2, then close", v2[..20].to_vec()),
        ("v2 with a bad version", {
            let mut bad = v2.clone();
            bad[12] = 0x31;
            [bad, GET.to_vec()].concat()
        }),
    ];
    for (what, bytes) in &attempts {
        // Sent, then the client's side closed: a truncated header is truncated, not slow.
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        let reply = String::from_utf8_lossy(&out);
        assert_eq!(reply, "", "{what}: closed without an HTTP answer");
    }
    assert_eq!(seen.load(Relaxed), 0, "nothing reached the upstream");
    assert_eq!(
        weir.state().stats.proxy_header_refused.load(Relaxed),
        attempts.len() as u64
    );
}

#[tokio::test]
async fn x_forwarded_for_is_believed_from_trusted_proxies_only() {
    let up = forwarded_echo().await;
    let ask = |proxy: SocketAddr, xff: &'static str| async move {
        let request = http::Request::get(format!("http://{proxy}/"))
            .header("x-forwarded-for", xff)
            .body(empty())
            .unwrap();
        send(&http1_client(), request).await.text()
    };

    // The connection (127.0.0.1) is a trusted proxy: its chain names the client.
    let trusting = weir(&listener_config(
        up.addr,
        "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]",
        "",
    ))
    .await;
    let proxy = trusting.listener_addr("http").unwrap();
    assert_eq!(
        ask(proxy, "6.6.6.6, 203.0.113.5, 10.9.9.9").await,
        "xff=6.6.6.6, 203.0.113.5, 10.9.9.9, 127.0.0.1|fwd=",
        "appended: the chain plus the hop weir got it from"
    );

    let replacing = weir(
        &(listener_config(
            up.addr,
            "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]",
            "",
        ) + "[headers]\nx_forwarded_for = \"replace\"\nforwarded = true\n"),
    )
    .await;
    let proxy = replacing.listener_addr("http").unwrap();
    let reply = ask(proxy, "6.6.6.6, 203.0.113.5, 10.9.9.9").await;
    assert!(
        reply.starts_with("xff=203.0.113.5|fwd=for=203.0.113.5;"),
        "the right-most untrusted hop, not the forged left-most one: {reply}"
    );

    // Not trusted: a client's own X-Forwarded-For names nobody.
    let wary = weir(
        &(listener_config(up.addr, "trusted_proxies = [\"10.0.0.0/8\"]", "")
            + "[headers]\nx_forwarded_for = \"replace\"\n"),
    )
    .await;
    let proxy = wary.listener_addr("http").unwrap();
    assert_eq!(ask(proxy, "203.0.113.5").await, "xff=127.0.0.1|fwd=");
}

#[tokio::test]
async fn rate_limits_and_hashing_use_the_resolved_client() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let config = format!(
        "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [[routes]]\npool = \"main\"\nrate_limit = {{ requests_per_second = 1, burst = 2 }}\n\
         [pools.main]\nstrategy = \"consistent_hash\"\nhash = {{ key = \"client_ip\" }}\n\
         endpoints = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n",
        a.addr, b.addr
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let ask = |client: String| async move {
        let request = http::Request::get(format!("http://{proxy}/"))
            .header("x-forwarded-for", client)
            .body(empty())
            .unwrap();
        send(&http1_client(), request).await
    };
    // Each client behind the balancer has its own bucket of two.
    for client in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(ask(client.into()).await.status, 200);
        assert_eq!(ask(client.into()).await.status, 200);
        assert_eq!(ask(client.into()).await.status, 429, "{client}'s third");
    }
    // Clients spread over both endpoints by their own addresses, each always to one.
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..40 {
        let client = format!("198.51.100.{i}");
        let first = ask(client.clone()).await;
        if first.status == 429 {
            continue;
        }
        let served_by = first.header("x-upstream").unwrap().to_owned();
        assert_eq!(
            ask(client).await.header("x-upstream"),
            Some(served_by.as_str()),
            "a client stays on its endpoint"
        );
        *seen.entry(served_by).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn trusted_proxies_must_be_addresses_or_blocks() {
    let err = weir::config::load_str(
        &listener_config(
            "127.0.0.1:9".parse().unwrap(),
            "trusted_proxies = [\"10.0.0.0/8\", \"lb.internal\"]",
            "",
        ),
        std::path::Path::new("w.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("listeners[0].trusted_proxies[1]")
            && err.contains("\"lb.internal\" is not an IP address or CIDR block"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stalled_proxy_header_is_cut_at_the_header_timeout() {
    let up = forwarded_echo().await;
    let weir = weir(
        &(listener_config(up.addr, "proxy_protocol = true", "")
            + "[server]\nrequest_header_timeout = \"200ms\"\n"),
    )
    .await;
    let mut stream = TcpStream::connect(weir.listener_addr("http").unwrap())
        .await
        .unwrap();
    stream.write_all(b"PROXY TCP4 203.0").await.unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "closed by weir");
    assert!(out.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(weir.state().stats.proxy_header_refused.load(Relaxed), 1);
}

/// What an upstream that requires a PROXY header saw on each connection: the header (v1 as
/// its text, v2 as command and addresses) and the paths requested on it.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<String>)>>>;

/// An upstream that reads a PROXY header (v1 or v2, parsed by the `ppp` crate) first on
/// every connection, then serves HTTP/1.1 on the rest of it.
async fn proxy_protocol_upstream() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let record = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = std::sync::Arc::clone(&record);
            tokio::spawn(async move {
                let mut head = vec![0u8; 16];
                if stream.read_exact(&mut head).await.is_err() {
                    return;
                }
                let described = if head.starts_with(b"PROXY ") {
                    while !head.ends_with(b"\r\n") {
                        head.push(stream.read_u8().await.unwrap());
                    }
                    let text = String::from_utf8(head).unwrap();
                    ppp::v1::Header::try_from(text.as_str()).expect("a valid v1 header");
                    text.trim_end().to_owned()
                } else {
                    let length = usize::from(u16::from_be_bytes([head[14], head[15]]));
                    let mut rest = vec![0u8; length];
                    stream.read_exact(&mut rest).await.unwrap();
                    head.extend_from_slice(&rest);
                    let header = ppp::v2::Header::try_from(&head[..]).expect("a valid v2 header");
                    format!("v2 {:?} {:?}", header.command, header.addresses)
                };
                let index = {
                    let mut seen = record.lock().unwrap();
                    seen.push((described, Vec::new()));
                    seen.len() - 1
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let record = std::sync::Arc::clone(&record);
                        async move {
                            record.lock().unwrap()[index]
                                .1
                                .push(req.uri().path().to_owned());
                            Ok::<_, std::convert::Infallible>(http::Response::new(full("ok")))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Sends GETs for `paths` on one keep-alive connection; returns the connection's local
/// address (the client port the upstream should be told).
async fn keep_alive_gets(proxy: SocketAddr, paths: &[&str]) -> SocketAddr {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let local = stream.local_addr().unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for path in paths {
        let request = http::Request::get(*path)
            .header("host", "a")
            .body(empty())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
    }
    local
}

#[tokio::test]
async fn a_pool_sends_the_client_in_a_proxy_header_on_connections_of_its_own() {
    let (up, seen) = proxy_protocol_upstream().await;
    let weir = weir(
        &listener_config(up, "", "")
            .replace("[pools.main]\n", "[pools.main]\nproxy_protocol = \"v1\"\n"),
    )
    .await;
    let proxy = weir.listener_addr("http").unwrap();

    let first = keep_alive_gets(proxy, &["/a", "/b"]).await;
    let second = keep_alive_gets(proxy, &["/c"]).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (
                format!(
                    "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}",
                    first.port(),
                    proxy.port()
                ),
                vec!["/a".to_owned(), "/b".to_owned()],
            ),
            (
                format!(
                    "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}",
                    second.port(),
                    proxy.port()
                ),
                vec!["/c".to_owned()],
            ),
        ],
        "one upstream connection per client connection, reused by its requests"
    );
}

#[tokio::test]
async fn a_proxy_header_received_is_passed_on_in_v2_and_health_checks_say_local() {
    let (up, seen) = proxy_protocol_upstream().await;
    let weir = weir(&listener_config(up, "proxy_protocol = true", "").replace(
        "[pools.main]\n",
        "[pools.main]\nproxy_protocol = \"v2\"\n\
             health_check = { path = \"/health\", interval = \"50ms\" }\n",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    let reply = exchange_in_pieces(
        proxy,
        &[
            b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n".as_slice(),
            GET,
        ],
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    common::wait::eventually("a health check on a LOCAL connection", async || {
        seen.lock().unwrap().iter().any(|(header, paths)| {
            header.starts_with("v2 Local") && paths.iter().any(|p| p == "/health")
        })
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let client = seen
        .iter()
        .find(|(_, paths)| paths.iter().any(|p| p == "/"))
        .expect("the client's connection");
    let expected = format!(
        "v2 Proxy {:?}",
        ppp::v2::Addresses::from(("203.0.113.7:56324".parse::<SocketAddr>().unwrap(), proxy))
    );
    assert_eq!(
        client.0, expected,
        "the source the balancer named, weir's address as destination"
    );
}

#[tokio::test]
async fn route_allow_and_deny_lists_judge_the_resolved_client() {
    let up = forwarded_echo().await;
    // Behind a trusted proxy (127.0.0.1): the client is the one X-Forwarded-For names.
    let weir = weir(&listener_config(
        up.addr,
        "trusted_proxies = [\"127.0.0.1\"]",
        "allow = [\"10.0.0.0/8\", \"192.0.2.7\"]\ndeny = [\"10.6.6.0/24\"]",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    let status_for = |xff: Option<&'static str>| async move {
        let mut request = http::Request::get(format!("http://{proxy}/"));
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        let reply = send(&http1_client(), request.body(empty()).unwrap()).await;
        (reply.status.as_u16(), reply.text())
    };
    assert_eq!(status_for(Some("10.1.2.3")).await.0, 200, "allowed block");
    assert_eq!(
        status_for(Some("192.0.2.7")).await.0,
        200,
        "allowed address"
    );
    let (status, text) = status_for(Some("10.6.6.6")).await;
    assert_eq!(status, 403, "deny wins over allow");
    assert!(text.contains("not allowed from this address"), "{text}");
    assert_eq!(status_for(Some("203.0.113.5")).await.0, 403, "not listed");
    // No X-Forwarded-For: the client is the trusted proxy itself, which is not allowed.
    assert_eq!(status_for(None).await.0, 403);
    // A forged chain: the right-most untrusted hop is the client (10.6.6.6, denied).
    assert_eq!(status_for(Some("10.1.2.3, 10.6.6.6")).await.0, 403);
}
