//! TLS termination through the real proxy, with certificates made by rcgen: SNI, ALPN,
//! forwarded proto, bad key/cert errors, and certificates replaced by a reload.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::tls::{Ca, ca, leaf, tls_upstream_speaking};
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn client(ca: &Ca, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(connector: &TlsConnector, addr: std::net::SocketAddr, sni: &str) -> Tls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap()
}

fn peer_der(stream: &Tls) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn get_over_http1(stream: Tls, host: &str) -> (u16, String) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get("/")
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn tls_config(upstream: std::net::SocketAddr, certs: &[(PathBuf, PathBuf, &str)]) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|(c, k, names)| {
            format!(
                "{{ cert = {:?}, key = {:?}, names = [{names}] }}",
                c.display().to_string(),
                k.display().to_string()
            )
        })
        .collect();
    format!(
        r#"
[[listeners]]
name = "https"
address = "127.0.0.1:0"
tls = {{ certificates = [{}] }}
[[routes]]
pool = "main"
[pools.main]
endpoints = [{{ address = "{upstream}" }}]
"#,
        list.join(", ")
    )
}

async fn proto_echo() -> Upstream {
    upstream(|req| async move {
        let proto = req
            .headers()
            .get("x-forwarded-proto")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Response::new(full(proto))
    })
    .await
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_and_proto_is_https() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key, a_der) = leaf(&ca, dir.path(), "a", &["a.test"]);
    let (b_cert, b_key, b_der) = leaf(&ca, dir.path(), "b", &["*.b.test"]);
    let up = proto_echo().await;
    let weir = weir(&tls_config(
        up.addr,
        &[
            (a_cert, a_key, "\"a.test\""),
            (b_cert, b_key, "\"*.b.test\""),
        ],
    ))
    .await;
    let proxy = weir.listener_addr("https").unwrap();
    let connector = client(&ca, &[b"http/1.1"]);

    let stream = connect(&connector, proxy, "a.test").await;
    assert_eq!(peer_der(&stream), a_der);
    assert_eq!(
        get_over_http1(stream, "a.test").await,
        (200, "https".to_owned())
    );

    let stream = connect(&connector, proxy, "api.b.test").await;
    assert_eq!(peer_der(&stream), b_der, "wildcard name");
    assert_eq!(get_over_http1(stream, "api.b.test").await.0, 200);
    weir.shutdown().await;
}

#[tokio::test]
async fn alpn_offers_h2_and_http1() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = leaf(&ca, dir.path(), "a", &["a.test"]);
    let up = proto_echo().await;
    let weir = weir(&tls_config(up.addr, &[(cert, key, "\"a.test\"")])).await;
    let proxy = weir.listener_addr("https").unwrap();

    let stream = connect(&client(&ca, &[b"h2", b"http/1.1"]), proxy, "a.test").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = Request::get("https://a.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);

    let stream = connect(&client(&ca, &[b"http/1.1"]), proxy, "a.test").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(get_over_http1(stream, "a.test").await.0, 200);
    weir.shutdown().await;
}

#[test]
fn missing_files_and_mismatched_keys_are_clear_config_errors() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, _a_key, _) = leaf(&ca, dir.path(), "a", &["a.test"]);
    let (_b_cert, b_key, _) = leaf(&ca, dir.path(), "b", &["b.test"]);
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();

    let text = tls_config(up, &[(a_cert.clone(), b_key, "")]);
    let err = prepare(&text, "weir.toml");
    assert!(
        err.starts_with("weir.toml: listeners[0].tls.certificates[0].key: "),
        "{err}"
    );
    assert!(
        err.contains("b.key does not fit") && err.contains("a.pem"),
        "{err}"
    );

    let missing = dir.path().join("missing.key");
    let text = tls_config(up, &[(a_cert, missing, "")]);
    let err = prepare(&text, "weir.toml");
    assert!(
        err.contains("listeners[0].tls.certificates[0].key: ") && err.contains("missing.key"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reload_replaces_certificates_without_dropping_connections() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, first_der) = leaf(&ca, dir.path(), "site", &["a.test"]);
    let up = proto_echo().await;
    let config_path = dir.path().join("weir.toml");
    std::fs::write(
        &config_path,
        tls_config(up.addr, &[(cert.clone(), key.clone(), "\"a.test\"")]),
    )
    .unwrap();
    let weir = start_from_file(&config_path).await;
    let proxy = weir.listener_addr("https").unwrap();
    let connector = client(&ca, &[b"http/1.1"]);

    // A keep-alive connection opened before the reload.
    let stream = connect(&connector, proxy, "a.test").await;
    assert_eq!(peer_der(&stream), first_der);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Renew: same file names, new key and certificate.
    let (_, _, renewed_der) = leaf(&ca, dir.path(), "site", &["a.test"]);
    assert_ne!(renewed_der, first_der);
    let report = weir.supervisor().reload().await;
    assert!(report.ok, "{report:?}");

    let fresh = connect(&connector, proxy, "a.test").await;
    assert_eq!(
        peer_der(&fresh),
        renewed_der,
        "new handshakes get the new certificate"
    );
    let request = Request::get("/")
        .header("host", "a.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .expect("the old connection still works");
    assert_eq!(response.status(), 200);

    // A key that cannot be read: the reload is refused, with the key, and nothing changes.
    std::fs::remove_file(&key).unwrap();
    let report = weir.supervisor().reload().await;
    assert!(!report.ok);
    let error = report.error.unwrap_or_default();
    assert!(
        error.contains("listeners[0].tls.certificates[0].key: ") && error.contains("site"),
        "{error}"
    );
    let after = connect(&connector, proxy, "a.test").await;
    assert_eq!(peer_der(&after), renewed_der);
    weir.shutdown().await;
}

async fn tls_upstream(ca: &Ca, dir: &Path, name: &str) -> std::net::SocketAddr {
    tls_upstream_speaking(ca, dir, name, &[b"http/1.1"]).await
}

fn tls_pool_config(upstream: std::net::SocketAddr, tls: &str) -> String {
    simple_config(
        &[upstream],
        &format!("retry = {{ attempts = 0 }}\ntls = {{ {tls} }}"),
    )
}

#[tokio::test]
async fn upstreams_over_tls_are_verified() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let up = tls_upstream(&ca, dir.path(), "backend.test").await;
    let ca_setting = format!("ca_file = {:?}", ca_file.display().to_string());

    // Trusted CA and the certificate's name: the request goes through, SNI included.
    let weir = weir(&tls_pool_config(
        up,
        &format!("{ca_setting}, server_name = \"backend.test\""),
    ))
    .await;
    let reply = get(weir.listener_addr("http").unwrap(), "/").await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "backend.test")
    );
    weir.shutdown().await;

    // A name the certificate does not have: refused (502), never sent in the clear.
    let weir = crate::weir(&tls_pool_config(
        up,
        &format!("{ca_setting}, server_name = \"other.test\""),
    ))
    .await;
    assert_eq!(
        get(weir.listener_addr("http").unwrap(), "/").await.status,
        502
    );
    weir.shutdown().await;

    // Without our CA (the bundled public roots): refused too.
    let weir = crate::weir(&tls_pool_config(up, "server_name = \"backend.test\"")).await;
    assert_eq!(
        get(weir.listener_addr("http").unwrap(), "/").await.status,
        502
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn http2_to_upstreams_over_tls_is_negotiated_by_alpn() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let tls = format!(
        "ca_file = {:?}, server_name = \"backend.test\"",
        ca_file.display().to_string()
    );
    let both = tls_upstream_speaking(&ca, dir.path(), "backend.test", &[b"h2", b"http/1.1"]).await;
    let http1_only = tls_upstream_speaking(&ca, dir.path(), "backend.test", &[b"http/1.1"]).await;

    // (upstream, protocol, what the upstream saw; None = refused with 502)
    let cases = [
        (both, "h2", Some("backend.test h2")),
        (both, "auto", Some("backend.test h2")),
        (both, "http1", Some("backend.test")),
        (http1_only, "auto", Some("backend.test")),
        // h2 demanded, the endpoint cannot: refused rather than downgraded.
        (http1_only, "h2", None),
    ];
    for (upstream, protocol, expected) in cases {
        let weir =
            weir(&(tls_pool_config(upstream, &tls) + &format!("protocol = \"{protocol}\"\n")))
                .await;
        let addr = weir.listener_addr("http").unwrap();
        for _ in 0..3 {
            let reply = get(addr, "/").await;
            match expected {
                Some(body) => assert_eq!(
                    (reply.status.as_u16(), reply.text().as_str()),
                    (200, body),
                    "protocol {protocol}"
                ),
                None => assert_eq!(reply.status, 502, "protocol {protocol}"),
            }
        }
        weir.shutdown().await;
    }
}

/// The error of preparing `text` as a config named `origin`: validation, then certificates.
fn prepare(text: &str, origin: &str) -> String {
    let origin = Path::new(origin);
    weir::config::load_str(text, origin)
        .map_err(|e| e.to_string())
        .and_then(|config| weir::app::Prepared::new(config, origin).map_err(|e| e.to_string()))
        .expect_err("the config should be refused")
}

#[test]
fn validation_reads_no_file_and_check_config_reads_them_all() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let (cert, _key, _) = leaf(&ca, dir.path(), "a", &["a.test"]);
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let missing = dir.path().join("missing.key");
    let text = tls_config(up, &[(cert, missing, "")])
        + "\n[pools.main.tls]\nca_file = \"/nonexistent/ca.pem\"\n";
    // The file model is valid: the files are read when the runtime is built.
    assert!(weir::config::load_str(&text, Path::new("weir.toml")).is_ok());

    let path = dir.path().join("weir.toml");
    std::fs::write(&path, &text).unwrap();
    let bin = env!("CARGO_BIN_EXE_weir");
    for command in [&["check-config"][..], &["serve", "--config"][..]] {
        let out = std::process::Command::new(bin)
            .args(command)
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{command:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "{}: listeners[0].tls.certificates[0].key: ",
                path.display()
            )) && stderr.contains("missing.key")
                && stderr.contains("; pools.main.tls.ca_file: /nonexistent/ca.pem"),
            "{command:?}: {stderr}"
        );
    }
}

#[test]
fn upstream_tls_config_errors() {
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let err = prepare(
        &tls_pool_config(up, "ca_file = \"/nonexistent/ca.pem\""),
        "w.toml",
    );
    assert!(
        err.contains("pools.main.tls.ca_file: /nonexistent/ca.pem"),
        "{err}"
    );
    let err = weir::config::load_str(
        &(tls_pool_config(up, "server_name = \"backend.test\"") + "protocol = \"h2c\"\n"),
        Path::new("w.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pools.main.protocol: h2c is HTTP/2 in cleartext"),
        "{err}"
    );
    let err = weir::config::load_str(
        &(simple_config(&[up], "protocol = \"h2\"")),
        Path::new("w.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pools.main.protocol: h2 and auto are negotiated by TLS ALPN and need [tls]"),
        "{err}"
    );
}
