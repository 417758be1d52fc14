//! What each request of a run is (method, headers, body) and how its connections are
//! secured (`https://` targets: trusted roots, a CA file, or no verification).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Serialize;

use super::plan::PlanError;

/// The request every worker sends. Header values stay out of reports and JSON: they
/// often carry credentials.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: Method,
    /// Sent as given; a `Host` here replaces the target's authority (virtual hosts).
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Default for RequestSpec {
    fn default() -> Self {
        Self {
            method: Method::GET,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }
}

impl Serialize for RequestSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("RequestSpec", 3)?;
        out.serialize_field("method", self.method.as_str())?;
        let names: Vec<&str> = self.headers.keys().map(HeaderName::as_str).collect();
        out.serialize_field("headers", &names)?;
        out.serialize_field("body_bytes", &self.body.len())?;
        out.end()
    }
}

impl RequestSpec {
    /// `--method`: any token (`GET`, `POST`, `PURGE`…).
    pub fn parse_method(text: &str) -> Result<Method, PlanError> {
        Method::from_bytes(text.as_bytes())
            .map_err(|_| PlanError::Invalid(format!("{text:?} is not an HTTP method")))
    }

    /// `--header "Name: value"`.
    pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), PlanError> {
        let (name, value) = text.split_once(':').ok_or_else(|| {
            PlanError::Invalid(format!("header {text:?}: expected \"Name: value\""))
        })?;
        Self::header(name.trim(), value.trim())
    }

    /// One header from its name and value, with what is wrong when it is not valid.
    pub fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), PlanError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| PlanError::Invalid(format!("{name:?} is not a header name")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| PlanError::Invalid(format!("header {name}: invalid value")))?;
        if is_framing(&name) {
            return Err(PlanError::Invalid(format!(
                "header {name}: set by the load generator from the body"
            )));
        }
        Ok((name, value))
    }

    /// The `Host` a request carries: the spec's own, else the target's authority.
    pub fn host<'a>(&'a self, authority: &'a str) -> &'a str {
        self.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(authority)
    }
}

/// Headers that frame the message: hyper writes them from the body, and a second copy
/// would make an invalid (or smuggling) request.
fn is_framing(name: &HeaderName) -> bool {
    name == http::header::CONTENT_LENGTH
        || name == http::header::TRANSFER_ENCODING
        || name == http::header::CONNECTION
}

/// How `https://` targets are trusted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsSpec {
    /// PEM file of the CA(s) to trust instead of the public roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (self-signed test services). Never for production checks.
    pub insecure: bool,
}

impl TlsSpec {
    /// The client config for a run, offering `h2` or `http/1.1` by ALPN.
    pub fn client_config(&self, http2: bool) -> Result<Arc<rustls::ClientConfig>, PlanError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| PlanError::Invalid(format!("TLS: {e}")))?;
        let mut config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &self.ca_file {
                Some(path) => add_ca_file(&mut roots, path)?,
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Ok(Arc::new(config))
    }
}

fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), PlanError> {
    use rustls::pki_types::pem::PemObject;
    let file_error = |reason: String| PlanError::File {
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| file_error(e.to_string()))?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(file_error("no usable CA certificate".into()));
    }
    Ok(())
}

/// `--insecure`: any certificate is accepted, but handshake signatures are still checked
/// (so the run measures real TLS work).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_methods_parse_with_reasons() {
        let (name, value) = RequestSpec::parse_header("Authorization:  Bearer abc ").unwrap();
        assert_eq!(name, http::header::AUTHORIZATION);
        assert_eq!(value, "Bearer abc");
        let (_, empty) = RequestSpec::parse_header("x-empty:").unwrap();
        assert_eq!(empty, "");
        for (bad, reason) in [
            ("no colon", "expected \"Name: value\""),
            ("bad name: 1", "is not a header name"),
            ("x-a: line\nbreak", "invalid value"),
            ("Content-Length: 5", "set by the load generator"),
            ("transfer-encoding: chunked", "set by the load generator"),
        ] {
            let err = RequestSpec::parse_header(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
        assert_eq!(RequestSpec::parse_method("PATCH").unwrap(), Method::PATCH);
        assert!(RequestSpec::parse_method("BAD METHOD").is_err());
    }

    #[test]
    fn reports_name_headers_but_never_show_their_values() {
        let mut spec = RequestSpec::default();
        spec.headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer secret-token"),
        );
        spec.body = Bytes::from_static(b"{\"a\":1}");
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("authorization") && json.contains("\"body_bytes\":7"));
        assert!(!json.contains("secret-token"), "{json}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let spec = TlsSpec {
            ca_file: Some(path.clone()),
            insecure: false,
        };
        let err = spec.client_config(false).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(TlsSpec::default().client_config(true).is_ok());
    }
}
