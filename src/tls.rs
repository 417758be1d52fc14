//! TLS termination material: certificates and keys loaded from PEM files into a rustls
//! server config (ring provider, TLS 1.3 and 1.2, ALPN h2 and http/1.1), with the
//! certificate chosen by SNI.
//!
//! [`TlsMaterial::load`] is the one place certificate files are read: `check-config`,
//! start and reload all call it, and the runtime is built from what it returns.
//!
//! May import: `config` (the file model of certificates).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{
    CertificateConfig, ClientAuthConfig, Config, ListenerTlsConfig, Problem, UpstreamTlsConfig,
};

/// Every certificate, key and trust store a config names, loaded and checked.
#[derive(Debug, Clone, Default)]
pub struct TlsMaterial {
    /// By listener name, for listeners with a `tls` table.
    listeners: BTreeMap<String, Arc<rustls::ServerConfig>>,
    /// By pool name, for pools with a `tls` table.
    pools: BTreeMap<String, Arc<rustls::ClientConfig>>,
}

impl TlsMaterial {
    /// Reads every file the config's `tls` tables name; each failure is a [`Problem`] with
    /// the full key (e.g. `listeners[0].tls.certificates[1].key`).
    pub fn load(config: &Config) -> Result<Self, Vec<Problem>> {
        let mut material = Self::default();
        let mut problems = Vec::new();
        for (i, listener) in config.listeners.iter().enumerate() {
            if let Some(tls) = &listener.tls {
                match server_config(tls) {
                    Ok(server) => {
                        material.listeners.insert(listener.name.clone(), server);
                    }
                    Err(error) => problems.push(Problem::new(
                        format!("listeners[{i}].{}", error.key),
                        error.reason,
                    )),
                }
            }
        }
        for (name, pool) in &config.pools {
            if let Some(tls) = &pool.tls {
                match client_config(tls) {
                    Ok(client) => {
                        material.pools.insert(name.clone(), Arc::new(client));
                    }
                    Err(error) => problems.push(Problem::new(
                        format!("pools.{name}.{}", error.key),
                        error.reason,
                    )),
                }
            }
        }
        if problems.is_empty() {
            Ok(material)
        } else {
            Err(problems)
        }
    }

    /// The server config of the listener named `name`, if it terminates TLS.
    pub fn listener(&self, name: &str) -> Option<&Arc<rustls::ServerConfig>> {
        self.listeners.get(name)
    }

    /// The client config toward the pool named `name`, if it speaks TLS upstream.
    pub fn pool(&self, name: &str) -> Option<&Arc<rustls::ClientConfig>> {
        self.pools.get(name)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TlsError {
    /// Config key of the offending entry, e.g. `tls.certificates[1].key`.
    pub key: String,
    pub reason: String,
}

/// Builds the rustls server config a listener's `tls` table describes.
pub fn server_config(config: &ListenerTlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut resolver = SniResolver::default();
    for (i, certificate) in config.certificates.iter().enumerate() {
        let key =
            load_certified_key(certificate, &provider).map_err(|(field, reason)| TlsError {
                key: format!("tls.certificates[{i}].{field}"),
                reason,
            })?;
        resolver.add(certificate.names.clone(), Arc::new(key));
    }
    if resolver.entries.is_empty() {
        return Err(TlsError {
            key: "tls.certificates".into(),
            reason: "at least one certificate is required".into(),
        });
    }
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            key: "tls".into(),
            reason: e.to_string(),
        })?;
    let builder = match &config.client_auth {
        Some(client_auth) => {
            builder.with_client_cert_verifier(client_verifier(client_auth, provider)?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// Verifies client certificates against `ca_file`; without `required`, a client may
/// also present none.
fn client_verifier(
    config: &ClientAuthConfig,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let roots = load_roots(&config.ca_file, "tls.client_auth.ca_file")?;
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if config.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| TlsError {
        key: "tls.client_auth.ca_file".into(),
        reason: e.to_string(),
    })
}

/// The CA certificates of a PEM bundle; `key` names the setting in errors.
fn load_roots(path: &Path, key: &str) -> Result<rustls::RootCertStore, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| TlsError {
            key: key.into(),
            reason: describe(path, e),
        })?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError {
            key: key.into(),
            reason: format!("{}: no usable CA certificate", path.display()),
        });
    }
    Ok(roots)
}

/// A verified client certificate as upstreams are told of it, in the form of Envoy's
/// `x-forwarded-client-cert`: `Hash=<SHA-256 of the DER, hex>;Subject="<DN>"`, then
/// `URI=` and `DNS=` for each such subject alternative name. Quotes and backslashes in
/// the subject are escaped, and bytes outside printable ASCII percent-encoded, so that the
/// value is always a valid header value.
pub fn describe_client_certificate(der: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::from("Hash=");
    for byte in digest.as_ref() {
        let _ = write!(out, "{byte:02x}");
    }
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
        return out;
    };
    out.push_str(";Subject=\"");
    for c in certificate.subject().to_string().chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            other => {
                let mut buffer = [0u8; 4];
                for byte in other.encode_utf8(&mut buffer).bytes() {
                    let _ = write!(out, "%{byte:02X}");
                }
            }
        }
    }
    out.push('"');
    if let Ok(Some(names)) = certificate.subject_alternative_name() {
        for name in &names.value.general_names {
            let (kind, value) = match name {
                x509_parser::extensions::GeneralName::URI(uri) => ("URI", *uri),
                x509_parser::extensions::GeneralName::DNSName(dns) => ("DNS", *dns),
                _ => continue,
            };
            // SAN values are IA5 (ASCII); anything else, or a separator, is left out.
            if value
                .bytes()
                .all(|b| (b'!'..=b'~').contains(&b) && b != b';' && b != b',')
            {
                let _ = write!(out, ";{kind}={value}");
            }
        }
    }
    out
}

fn load_certified_key(
    certificate: &CertificateConfig,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, (&'static str, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certificate.cert)
        .map_err(|e| ("cert", describe(&certificate.cert, e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| ("cert", describe(&certificate.cert, e)))?;
    if chain.is_empty() {
        return Err((
            "cert",
            format!("{}: no certificate in the file", certificate.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&certificate.key)
        .map_err(|e| ("key", describe(&certificate.key, e)))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        (
            "key",
            format!(
                "{} does not fit {}: {e}",
                certificate.key.display(),
                certificate.cert.display()
            ),
        )
    })
}

fn describe(path: &Path, error: rustls_pki_types::pem::Error) -> String {
    match error {
        rustls_pki_types::pem::Error::Io(io) => format!("{}: {io}", path.display()),
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("{}: no PEM item of the expected kind", path.display())
        }
        other => format!("{}: {other:?}", path.display()),
    }
}

/// Picks a certificate by SNI: exact names, then `*.domain` (one label), then the first
/// certificate.
#[derive(Debug, Default)]
struct SniResolver {
    entries: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl SniResolver {
    fn add(&mut self, names: Vec<String>, key: Arc<CertifiedKey>) {
        let names = names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
        self.entries.push((names, key));
    }

    fn find(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name.map(str::to_ascii_lowercase) {
            let exact = self.entries.iter().find(|(names, _)| names.contains(&name));
            let wildcard = || {
                self.entries.iter().find(|(names, _)| {
                    names.iter().any(|n| {
                        n.strip_prefix('*').is_some_and(|suffix| {
                            name.ends_with(suffix)
                                && name.len() > suffix.len()
                                && !name[..name.len() - suffix.len()].contains('.')
                        })
                    })
                })
            };
            if let Some((_, key)) = exact.or_else(wildcard) {
                return Some(Arc::clone(key));
            }
        }
        self.entries.first().map(|(_, key)| Arc::clone(key))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(client_hello.server_name())
    }
}

/// The rustls client config for TLS to a pool's endpoints (ALPN is set by the connector).
fn client_config(config: &UpstreamTlsConfig) -> Result<rustls::ClientConfig, TlsError> {
    let roots = match &config.ca_file {
        Some(path) => load_roots(path, "tls.ca_file")?,
        None => rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    };
    Ok(ring_client_config(roots))
}

/// A client config on the ring provider trusting `roots`.
pub fn ring_client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        // A constant: the ring provider supports TLS 1.2 and 1.3.
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
