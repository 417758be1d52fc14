//! Who the client is when weir is not the first hop: the address a PROXY protocol header
//! (v1 or v2) gives for the connection, and the right-most untrusted `X-Forwarded-For`
//! hop when the connection comes from a trusted proxy. Every consumer (rate limits,
//! hashing, the access log, forwarding headers) uses the one address resolved here.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::IpBlock;

/// The v2 signature (RFC-less, haproxy.org/download/2.9/doc/proxy-protocol.txt §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes, CRLF included (§2.1).
const V1_MAX: usize = 107;
/// v2 headers longer than this are refused (addresses plus the TLVs load balancers add
/// are a few hundred bytes).
const V2_MAX: usize = 4096;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("connection closed before a complete PROXY header")]
    Truncated(#[source] std::io::Error),
    #[error("no PROXY protocol header (the connection starts with {0:?})")]
    Missing(String),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("PROXY v2 header of {0} bytes is over the {V2_MAX}-byte limit")]
    TooLong(usize),
}

/// Reads a PROXY header, exactly its bytes (what follows is the client's, for HTTP or
/// TLS), and gives the source address it names; `None` for `LOCAL`/`UNKNOWN` headers
/// (a load balancer's own health check), whose connection is the peer's.
pub async fn read_proxy_header(
    stream: &mut TcpStream,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // 15 bytes: no header is shorter ("PROXY UNKNOWN\r\n"), so nothing past one is read.
    let mut head = vec![0u8; 15];
    stream
        .read_exact(&mut head)
        .await
        .map_err(ProxyHeaderError::Truncated)?;
    if head.starts_with(b"PROXY ") {
        // v1: up to the CRLF, a byte at a time (a load balancer sends it in one segment;
        // reading past it would take the client's first bytes).
        while !head.ends_with(b"\r\n") {
            if head.len() >= V1_MAX {
                return Err(ProxyHeaderError::Malformed(
                    "v1 line without CRLF in 107 bytes".into(),
                ));
            }
            let byte = stream
                .read_u8()
                .await
                .map_err(ProxyHeaderError::Truncated)?;
            head.push(byte);
        }
        return match ppp::v1::Header::try_from(head.as_slice()) {
            Ok(header) => Ok(match header.addresses {
                ppp::v1::Addresses::Tcp4(ip) => Some(v4_source(&ip)),
                ppp::v1::Addresses::Tcp6(ip) => Some(v6_source(&ip)),
                ppp::v1::Addresses::Unknown => None,
            }),
            Err(err) => Err(ProxyHeaderError::Malformed(err.to_string())),
        };
    }
    if head.starts_with(&V2_SIGNATURE[..]) {
        // v2: 16 fixed bytes, the last two the length of what follows.
        head.push(
            stream
                .read_u8()
                .await
                .map_err(ProxyHeaderError::Truncated)?,
        );
        let length = usize::from(u16::from_be_bytes([head[14], head[15]]));
        if 16 + length > V2_MAX {
            return Err(ProxyHeaderError::TooLong(16 + length));
        }
        let mut rest = vec![0u8; length];
        stream
            .read_exact(&mut rest)
            .await
            .map_err(ProxyHeaderError::Truncated)?;
        head.extend_from_slice(&rest);
        return match ppp::v2::Header::try_from(head.as_slice()) {
            Ok(header) if header.command == ppp::v2::Command::Local => Ok(None),
            Ok(header) => Ok(match header.addresses {
                ppp::v2::Addresses::IPv4(ip) => Some(v4_source(&ip)),
                ppp::v2::Addresses::IPv6(ip) => Some(v6_source(&ip)),
                ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
            }),
            Err(err) => Err(ProxyHeaderError::Malformed(err.to_string())),
        };
    }
    Err(ProxyHeaderError::Missing(
        String::from_utf8_lossy(&head[..head.len().min(8)]).into_owned(),
    ))
}

fn v4_source(ip: &ppp::v1::IPv4) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip.source_address), ip.source_port)
}

fn v6_source(ip: &ppp::v1::IPv6) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(ip.source_address), ip.source_port)
}

/// The client of a request that came over a connection from `connection`: the
/// connection's address, unless it is a trusted proxy; then the right-most
/// `X-Forwarded-For` hop that is not one (all of them trusted: the left-most).
pub fn resolve(connection: IpAddr, trusted: &[IpBlock], headers: &HeaderMap) -> IpAddr {
    let is_trusted = |ip: IpAddr| is_trusted(ip, trusted);
    if trusted.is_empty() || !is_trusted(connection) {
        return connection;
    }
    let mut client = connection;
    // Header lines in order, hops left to right in each: walked from the right.
    let hops = headers
        .get_all(http::header::HeaderName::from_static("x-forwarded-for"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .rev();
    for hop in hops {
        let Some(ip) = parse_hop(hop) else {
            // Garbage from a hop we trust to have checked it: stop at what we know.
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` hop: an address, maybe with a port (`1.2.3.4:5`, `[::1]:5`).
/// Whether `ip` is one of the proxies whose forwarding headers are believed.
fn is_trusted(ip: IpAddr, trusted: &[IpBlock]) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// The scheme the client used: `own` (the listener's: `https` on TLS), or what a trusted
/// proxy in front says in `X-Forwarded-Proto` (it may have terminated TLS itself).
pub fn scheme(
    connection: IpAddr,
    trusted: &[IpBlock],
    headers: &HeaderMap,
    own: &'static str,
) -> &'static str {
    let forwarded = headers
        .get("x-forwarded-proto")
        .filter(|_| is_trusted(connection, trusted))
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match forwarded {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        _ => own,
    }
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpBlock> {
        list.iter().map(|n| IpBlock(n.parse().unwrap())).collect()
    }

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "192.0.2.1/32"]);
        let lb: IpAddr = "10.1.1.1".parse().unwrap();
        let resolve = |h: &[&'static str]| resolve(lb, &trusted, &xff(h)).to_string();
        assert_eq!(resolve(&["203.0.113.5"]), "203.0.113.5");
        // A client that forges a left-most hop gets its own address, not the forged one.
        assert_eq!(resolve(&["6.6.6.6, 203.0.113.5"]), "203.0.113.5");
        // Trusted hops on the right are skipped (recursive), over several header lines.
        assert_eq!(
            resolve(&["203.0.113.5, 10.2.2.2", "192.0.2.1"]),
            "203.0.113.5"
        );
        assert_eq!(resolve(&["[2001:db8::7]:443"]), "2001:db8::7");
        // Every hop trusted: the left-most.
        assert_eq!(resolve(&["10.3.3.3, 10.2.2.2"]), "10.3.3.3");
        // Garbage stops the walk at the last good hop.
        assert_eq!(resolve(&["203.0.113.5, junk, 10.2.2.2"]), "10.2.2.2");
        // No header: the proxy itself.
        assert_eq!(resolve(&[]), "10.1.1.1");
    }

    #[test]
    fn untrusted_connections_keep_their_own_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        let client: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(resolve(client, &trusted, &xff(&["1.2.3.4"])), client);
        assert_eq!(resolve(client, &[], &xff(&["1.2.3.4"])), client);
        // An IPv4-mapped peer is matched as IPv4.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            resolve(mapped, &trusted, &xff(&["1.2.3.4"])).to_string(),
            "1.2.3.4"
        );
    }

    #[test]
    fn the_scheme_comes_from_trusted_proxies_only() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-proto", " HTTPS ".parse().unwrap());
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(scheme(proxy, &trusted, &headers, "http"), "https");
        assert_eq!(scheme(stranger, &trusted, &headers, "http"), "http");
        headers.insert("x-forwarded-proto", "gopher".parse().unwrap());
        assert_eq!(scheme(proxy, &trusted, &headers, "https"), "https");
    }
}
