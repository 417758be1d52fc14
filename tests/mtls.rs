//! Mutual TLS on listeners: required or optional client certificates verified against a
//! CA bundle, who the client is told upstream in one header only weir can set, and the
//! CA reloaded with the config.

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::tls::{Ca, ca, leaf};
use common::*;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;

/// A client certificate for CN `svc-a`, DNS `client.test` and a SPIFFE URI, signed by `ca`.
fn client_identity(ca: &Ca) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "svc-a");
    params.subject_alt_names.push(SanType::URI(
        "spiffe://example.org/ns/a/sa/b".try_into().unwrap(),
    ));
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// A TLS client trusting `server_ca`, presenting `identity` when given.
fn connector(
    server_ca: &Ca,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// GET / over a new TLS connection with a forged certificate header; the upstream's
/// answer (the header it got), or `None` when the connection was refused.
async fn ask(connector: &tokio_rustls::TlsConnector, addr: std::net::SocketAddr) -> Option<String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("a.test".to_owned()).unwrap();
    let stream = connector.connect(name, tcp).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let request = Request::get("/")
        .header("host", "a.test")
        .header("x-client-cert", "Subject=\"CN=forged\"")
        .body(Empty::<Bytes>::new())
        .unwrap();
    // TLS 1.3: a refused certificate shows on the first exchange after the handshake.
    let response = sender.send_request(request).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// An upstream answering with the `x-client-cert` it received ("-" when none).
async fn cert_echo() -> Upstream {
    upstream(|req: http::Request<hyper::body::Incoming>| async move {
        let seen = req
            .headers()
            .get("x-client-cert")
            .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
        http::Response::new(full(seen))
    })
    .await
}

struct Setup {
    server_ca: Ca,
    client_ca: Ca,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Self {
            server_ca: ca(),
            client_ca: ca(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write_client_ca(&self, ca: &Ca) -> std::path::PathBuf {
        let path = self.dir.path().join("clients.pem");
        std::fs::write(&path, &ca.pem).unwrap();
        path
    }

    /// An https listener with client_auth (`required`), and a plain one.
    fn config(&self, upstream: std::net::SocketAddr, required: bool) -> String {
        let (cert, key, _) = leaf(&self.server_ca, self.dir.path(), "server", &["a.test"]);
        let ca_file = self.write_client_ca(&self.client_ca);
        format!(
            "[[listeners]]\nname = \"https\"\naddress = \"127.0.0.1:0\"\n\
             tls = {{ certificates = [{{ cert = {:?}, key = {:?} }}], \
             client_auth = {{ ca_file = {:?}, required = {required}, header = \"x-client-cert\" }} }}\n\
             [[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n\
             [[routes]]\npool = \"main\"\n[pools.main]\nendpoints = [{{ address = \"{upstream}\" }}]\n",
            cert.display().to_string(),
            key.display().to_string(),
            ca_file.display().to_string(),
        )
    }
}

fn expected_header(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("Hash={hash};Subject=\"CN=svc-a\";DNS=client.test;URI=spiffe://example.org/ns/a/sa/b")
}

#[tokio::test]
async fn required_client_certificates_are_verified_and_described_upstream() {
    let setup = Setup::new();
    let up = cert_echo().await;
    let weir = weir(&setup.config(up.addr, true)).await;
    let https = weir.listener_addr("https").unwrap();

    let identity = client_identity(&setup.client_ca);
    let cert = identity.0.clone();
    let with_cert = connector(&setup.server_ca, Some(identity));
    assert_eq!(
        ask(&with_cert, https).await.as_deref(),
        Some(expected_header(&cert).as_str()),
        "the verified certificate, not the client's forged header"
    );

    let without = connector(&setup.server_ca, None);
    assert_eq!(
        ask(&without, https).await,
        None,
        "no certificate, no connection"
    );
    let stranger = connector(&setup.server_ca, Some(client_identity(&setup.server_ca)));
    assert_eq!(
        ask(&stranger, https).await,
        None,
        "a certificate from another CA"
    );

    // The plain listener cannot be used to forge it either.
    let request = Request::get(format!("http://{}/", weir.listener_addr("http").unwrap()))
        .header("x-client-cert", "Subject=\"CN=forged\"")
        .body(empty())
        .unwrap();
    assert_eq!(send(&http1_client(), request).await.text(), "-");
}

#[tokio::test]
async fn optional_client_certificates_let_anonymous_clients_in_unnamed() {
    let setup = Setup::new();
    let up = cert_echo().await;
    let weir = weir(&setup.config(up.addr, false)).await;
    let https = weir.listener_addr("https").unwrap();
    let anonymous = connector(&setup.server_ca, None);
    assert_eq!(ask(&anonymous, https).await.as_deref(), Some("-"));
    let identity = client_identity(&setup.client_ca);
    let cert = identity.0.clone();
    let named = connector(&setup.server_ca, Some(identity));
    assert_eq!(
        ask(&named, https).await.as_deref(),
        Some(expected_header(&cert).as_str())
    );
    // A certificate that does not verify is refused even when none is required.
    let stranger = connector(&setup.server_ca, Some(client_identity(&setup.server_ca)));
    assert_eq!(ask(&stranger, https).await, None);
}

#[tokio::test]
async fn a_reload_brings_a_new_client_ca() {
    let setup = Setup::new();
    let up = cert_echo().await;
    let path = setup.dir.path().join("weir.toml");
    std::fs::write(&path, setup.config(up.addr, true)).unwrap();
    let weir = start_from_file(&path).await;
    let https = weir.listener_addr("https").unwrap();
    let old_client = connector(&setup.server_ca, Some(client_identity(&setup.client_ca)));
    assert!(ask(&old_client, https).await.is_some());

    let next_ca = ca();
    setup.write_client_ca(&next_ca);
    let report = weir.supervisor().reload().await;
    assert!(report.ok, "{report:?}");
    let new_client = connector(&setup.server_ca, Some(client_identity(&next_ca)));
    assert!(
        ask(&new_client, https).await.is_some(),
        "the new CA's clients"
    );
    assert_eq!(ask(&old_client, https).await, None, "the old CA's are out");

    // The header is fixed while the listener runs, and a reload says so.
    let renamed = std::fs::read_to_string(&path).unwrap().replace(
        "header = \"x-client-cert\"",
        "header = \"x-verified-client\"",
    );
    std::fs::write(&path, renamed).unwrap();
    let report = weir.supervisor().reload().await;
    assert!(
        report.ok
            && report
                .notes
                .iter()
                .any(|n| n.contains("client_auth.header")),
        "{report:?}"
    );
    weir.shutdown().await;
}

#[test]
fn client_auth_errors_name_the_key() {
    let setup = Setup::new();
    let text = setup
        .config("127.0.0.1:9".parse().unwrap(), true)
        .replace("clients.pem", "missing.pem");
    let origin = Path::new("weir.toml");
    let config = weir::config::load_str(&text, origin).unwrap();
    let err = weir::app::Prepared::new(config, origin)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("listeners[0].tls.client_auth.ca_file: ") && err.contains("missing.pem"),
        "{err}"
    );
    let bad_header = setup
        .config("127.0.0.1:9".parse().unwrap(), true)
        .replace("header = \"x-client-cert\"", "header = \"bad header\"");
    let err = weir::config::load_str(&bad_header, origin)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "listeners[0].tls.client_auth.header: \"bad header\" is not a valid header name"
        ),
        "{err}"
    );
}
