//! How a connection to an endpoint is opened: TCP (hyper's `HttpConnector`), then, for a
//! pool with `proxy_protocol`, the PROXY header naming the client before anything else
//! (TLS included). A header describes one client, so such connections are never shared
//! between clients: each client connection gets a client of its own (see
//! [`super::Pool::private_client`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::ProxyProtocolVersion;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens TCP connections to endpoints, writing `header` first when there is one.
#[derive(Debug, Clone)]
pub struct UpstreamConnector {
    http: HttpConnector,
    header: Option<Bytes>,
}

impl UpstreamConnector {
    pub fn new(http: HttpConnector, header: Option<Bytes>) -> Self {
        Self { http, header }
    }
}

impl tower::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let header = self.header.clone();
        Box::pin(async move {
            let mut io = connecting.await?;
            if let Some(header) = header {
                io.inner_mut().write_all(&header).await?;
            }
            Ok(io)
        })
    }
}

/// The PROXY header (v1 text or v2 binary) saying a TCP connection came from `source` to
/// `destination`. Mixed families are told as IPv6 (an IPv4 address as `::ffff:a.b.c.d`),
/// and IPv4-mapped IPv6 pairs as IPv4, as the receiving side would read them.
pub fn proxy_header(
    version: ProxyProtocolVersion,
    source: SocketAddr,
    destination: SocketAddr,
) -> Bytes {
    let (source, destination) = same_family(source, destination);
    match version {
        ProxyProtocolVersion::V1 => {
            let addresses = ppp::v1::Addresses::from((source, destination));
            Bytes::from(addresses.to_string())
        }
        ProxyProtocolVersion::V2 => {
            let built = ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                ppp::v2::Protocol::Stream,
                (source, destination),
            )
            .build();
            // Building into a Vec cannot fail; an empty header would be refused upstream.
            Bytes::from(built.unwrap_or_default())
        }
    }
}

/// The header of weir's own connections (health checks): v1 `UNKNOWN`, v2 `LOCAL`, which
/// a receiver reads as "the proxy itself", with no client to name.
pub fn local_header(version: ProxyProtocolVersion) -> Bytes {
    match version {
        ProxyProtocolVersion::V1 => Bytes::from_static(b"PROXY UNKNOWN\r\n"),
        ProxyProtocolVersion::V2 => {
            let built = ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Local,
                ppp::v2::Protocol::Unspecified,
                ppp::v2::Addresses::Unspecified,
            )
            .build();
            Bytes::from(built.unwrap_or_default())
        }
    }
}

fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let unmapped = |a: SocketAddr| match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    };
    let (source, destination) = (unmapped(source), unmapped(destination));
    let mapped = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        SocketAddr::V6(_) => a,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (mapped(source), mapped(destination))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_both_ends_in_one_family() {
        let v1 = proxy_header(
            ProxyProtocolVersion::V1,
            "192.0.2.7:51000".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );
        assert_eq!(&v1[..], b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n");
        let mixed = proxy_header(
            ProxyProtocolVersion::V1,
            "[2001:db8::1]:51000".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );
        assert_eq!(
            &mixed[..],
            b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 51000 443\r\n"
        );
        let mapped = proxy_header(
            ProxyProtocolVersion::V1,
            "[::ffff:192.0.2.7]:51000".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );
        assert_eq!(&mapped[..], b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n");
        let v2 = proxy_header(
            ProxyProtocolVersion::V2,
            "192.0.2.7:51000".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );
        let parsed = ppp::v2::Header::try_from(&v2[..]).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((
                "192.0.2.7:51000".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:443".parse::<SocketAddr>().unwrap()
            ))
        );
        assert_eq!(parsed.command, ppp::v2::Command::Proxy);
        let local = local_header(ProxyProtocolVersion::V2);
        let parsed = ppp::v2::Header::try_from(&local[..]).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Local);
        assert_eq!(
            &local_header(ProxyProtocolVersion::V1)[..],
            b"PROXY UNKNOWN\r\n"
        );
    }
}
