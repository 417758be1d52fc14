//! Certificates made by rcgen (a CA and leaves it signs) and an HTTPS server that uses them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;

use super::full;

pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

pub fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// Writes a leaf certificate for `names` signed by `ca`; returns (cert path, key path, DER).
pub fn leaf(ca: &Ca, dir: &Path, file: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let cert_path = dir.join(format!("{file}.pem"));
    let key_path = dir.join(format!("{file}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.der().to_vec())
}

/// A server TLS config for an upstream: a certificate for `name` signed by `ca`,
/// accepting the protocols in `alpn` (h2 and/or http/1.1).
pub fn upstream_server_config(
    ca: &Ca,
    dir: &Path,
    name: &str,
    alpn: &[&[u8]],
) -> Arc<rustls::ServerConfig> {
    let (cert, key, _) = leaf(ca, dir, "backend", &[name]);
    let mut config = weir::tls::server_config(&weir::config::ListenerTlsConfig {
        certificates: vec![weir::config::CertificateConfig {
            cert,
            key,
            names: vec![],
        }],
        client_auth: None,
    })
    .unwrap();
    Arc::get_mut(&mut config).unwrap().alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// An HTTPS upstream with a certificate for `name` signed by `ca`; answers with the SNI it
/// was asked for and the HTTP version the request came in. `alpn` is what it accepts
/// (h2 and/or http/1.1).
pub async fn tls_upstream_speaking(
    ca: &Ca,
    dir: &Path,
    name: &str,
    alpn: &[&[u8]],
) -> std::net::SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(upstream_server_config(ca, dir, name, alpn));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let reply = if req.version() == http::Version::HTTP_2 {
                        format!("{sni} h2")
                    } else {
                        sni.clone()
                    };
                    async move { Ok::<_, std::convert::Infallible>(Response::new(full(reply))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(tls), service)
                .await;
            });
        }
    });
    addr
}
