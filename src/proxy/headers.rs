//! Header rewriting on the way through: hop-by-hop removal, forwarding headers, `Via`,
//! and the request id.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use http::Version;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

use crate::config::{ForwardedForMode, HeadersConfig};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection and never travel past it (RFC 9110 §7.6.1), and
/// `Upgrade`: upgrades are forwarded only by the tunnel code, which sets it again. A
/// `const`: its standard names then compare as integers (as a `static` the search cost
/// ~600 instructions more a proxied request).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
///
/// A `Connection` header cannot make weir drop `Host` or `Content-Length`: that would change
/// how the message is routed or framed, which is a request-smuggling vector.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (standard names compare as integers) finds which are
    // present, so that only those are hashed and removed; most messages have one or none.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // HOP_BY_HOP[0] is Connection. Its values are cloned (a reference count, not a copy)
    // so the map can change while their tokens are read, and the named headers are
    // looked up by `&str`, which allocates nothing: `Connection: keep-alive` on every
    // upstream response cost two allocations before.
    if present & 1 != 0 {
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        for value in first.iter().chain(&more) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                let protected = token.eq_ignore_ascii_case(header::HOST.as_str())
                    || token.eq_ignore_ascii_case(header::CONTENT_LENGTH.as_str());
                if !token.is_empty() && !protected {
                    headers.remove(token);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Makes `value` the field's only value, whether the field was there or not (an
/// [`Entry`] found once serves both the question and the answer).
fn set_only(entry: Entry<'_, HeaderValue>, value: HeaderValue) {
    match entry {
        Entry::Occupied(mut present) => {
            present.insert(value);
        }
        Entry::Vacant(absent) => {
            absent.insert(value);
        }
    }
}

/// Whether a request's `TE` accepts trailers: the one `TE` value that goes on upstream
/// (gRPC servers require it), whatever else the field lists.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    crate::header_maps::all(headers, &header::TE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let name = coding.split(';').next().unwrap_or("").trim();
            name.eq_ignore_ascii_case("trailers")
        })
}

/// `TE: trailers`, the value forwarded when the client sent it.
pub const TE_TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// A client connection's address, with the `X-Forwarded-For` value it gives made once per
/// connection rather than once per request.
#[derive(Debug, Clone)]
pub struct ClientAddress {
    pub ip: IpAddr,
    header: HeaderValue,
}

impl ClientAddress {
    pub fn new(ip: IpAddr) -> Self {
        // Written on the stack and copied once into a value of its own size: through a
        // `String` it took two allocations (the text, then a record to share it), held
        // by every connection.
        let mut text = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        let written = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
        let length = usize::try_from(cursor.position()).unwrap_or(0);
        // An address's text is ASCII digits, dots and colons: always a valid value.
        let header = written
            .ok()
            .and_then(|()| HeaderValue::from_bytes(&text[..length]).ok())
            .unwrap_or_else(|| HeaderValue::from_static("unknown"));
        Self { ip, header }
    }
}

/// The addresses a request's forwarding headers name: the connection it came over (the
/// hop appended to `X-Forwarded-For`), and the client resolved behind trusted proxies
/// (what `replace` mode and `Forwarded: for=` say). The same when weir is the first hop.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    pub connection: &'a ClientAddress,
    pub client: &'a ClientAddress,
}

impl<'a> From<&'a ClientAddress> for Hop<'a> {
    fn from(address: &'a ClientAddress) -> Self {
        Hop {
            connection: address,
            client: address,
        }
    }
}

/// The header settings compiled once per config, so requests only copy values.
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    pub x_forwarded_for: ForwardedForMode,
    pub x_forwarded_proto: bool,
    pub forwarded: bool,
    pub request_id: HeaderName,
    pub traceparent: bool,
    via_1_0: Option<HeaderValue>,
    via_1_1: Option<HeaderValue>,
    via_2: Option<HeaderValue>,
    proxy_name: String,
}

impl HeaderPolicy {
    pub fn from_config(config: &HeadersConfig) -> Self {
        let via = |version: &str| {
            config
                .via
                .then(|| HeaderValue::from_str(&format!("{version} {}", config.proxy_name)).ok())
                .flatten()
        };
        Self {
            x_forwarded_for: config.x_forwarded_for,
            x_forwarded_proto: config.x_forwarded_proto,
            forwarded: config.forwarded,
            request_id: HeaderName::from_bytes(config.request_id_header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-request-id")),
            traceparent: config.traceparent,
            via_1_0: via("1.0"),
            via_1_1: via("1.1"),
            via_2: via("2"),
            proxy_name: config.proxy_name.clone(),
        }
    }

    /// Adds this hop to `Via` for a message received with `version`.
    pub fn add_via(&self, headers: &mut HeaderMap, version: Version) {
        let value = match version {
            Version::HTTP_10 | Version::HTTP_09 => &self.via_1_0,
            Version::HTTP_2 | Version::HTTP_3 => &self.via_2,
            _ => &self.via_1_1,
        };
        if let Some(value) = value {
            headers.append(header::VIA, value.clone());
        }
    }

    /// Sets `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` as configured.
    pub fn add_forwarding(
        &self,
        headers: &mut HeaderMap,
        hop: Hop<'_>,
        proto: &'static str,
        host: Option<&str>,
    ) {
        self.add_x_forwarded_for(headers, hop);
        if self.x_forwarded_proto {
            // One lookup for both the question and the answer (each is a hash and a probe).
            match headers.entry(X_FORWARDED_PROTO) {
                // Appending to a chain, the first proxy's scheme stays.
                Entry::Occupied(_) if self.x_forwarded_for == ForwardedForMode::Append => {}
                entry => set_only(entry, HeaderValue::from_static(proto)),
            }
        }
        if self.forwarded {
            self.add_rfc7239_forwarded(headers, hop.client.ip, proto, host);
        }
    }

    fn add_x_forwarded_for(&self, headers: &mut HeaderMap, hop: Hop<'_>) {
        use std::fmt::Write as _;
        let mode = self.x_forwarded_for;
        if mode == ForwardedForMode::Off {
            return;
        }
        // One lookup finds the prior hops and puts the new value (each is a hash and a
        // probe).
        match headers.entry(X_FORWARDED_FOR) {
            Entry::Occupied(mut prior) if mode == ForwardedForMode::Append => {
                // One string, written in place: prior hops, then the client.
                let mut value = String::with_capacity(48);
                for prior_hop in prior
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                {
                    value.push_str(prior_hop);
                    value.push_str(", ");
                }
                let _ = write!(value, "{}", hop.connection.ip);
                if let Ok(value) = HeaderValue::try_from(value) {
                    prior.insert(value);
                }
            }
            entry => {
                // No prior hops (most requests), or replacing them: the ready-made value.
                // Replacing, the whole chain becomes the client; appending, the
                // connection is the new hop.
                let address = match mode {
                    ForwardedForMode::Replace => hop.client,
                    _ => hop.connection,
                };
                set_only(entry, address.header.clone());
            }
        }
    }

    fn add_rfc7239_forwarded(
        &self,
        headers: &mut HeaderMap,
        client_ip: IpAddr,
        proto: &'static str,
        host: Option<&str>,
    ) {
        let node = match client_ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("\"[{ip}]\""),
        };
        let mut element = format!("for={node};proto={proto};by={}", self.proxy_name);
        if let Some(host) = host.filter(|h| is_quotable(h)) {
            element.push_str(";host=\"");
            element.push_str(host);
            element.push('"');
        }
        if self.x_forwarded_for == ForwardedForMode::Replace {
            headers.remove(header::FORWARDED);
        }
        if let Ok(value) = HeaderValue::try_from(element) {
            headers.append(header::FORWARDED, value);
        }
    }
}

/// Whether `s` can sit in a quoted-string without escaping.
fn is_quotable(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// What [`request_ids`] does about a request's `traceparent`.
#[derive(Clone, Copy)]
pub enum TraceparentPlan<'a> {
    /// weir sends none.
    None,
    /// Made now, with the request id: one cut from the id block for both.
    Now(&'a super::trace::TraceContext),
    /// Made if the request goes upstream ([`super::trace::Traceparent::Deferred`]): a new
    /// id's cut leaves room for it in the block. The block cannot be reclaimed while the
    /// request's own id lives, so without the room one in 23 requests started a block
    /// (two allocations).
    Later,
}

/// The request id (the client's when it is sane, otherwise a new one) and, for a request
/// whose `traceparent` is made now, its value. New values are cut from the thread's id
/// block (see [`cut_from_id_block`]).
pub fn request_ids(
    headers: &HeaderMap,
    name: &HeaderName,
    traceparent: TraceparentPlan<'_>,
) -> (HeaderValue, Option<HeaderValue>) {
    use super::trace::TRACEPARENT_LEN;
    let kept = crate::header_maps::first(headers, name)
        .filter(|existing| is_acceptable_request_id(existing));
    match (kept, traceparent) {
        (Some(existing), TraceparentPlan::Now(trace)) => (existing.clone(), trace.header_value()),
        (Some(existing), _) => (existing.clone(), None),
        (None, TraceparentPlan::None) => (new_request_id(0), None),
        (None, TraceparentPlan::Later) => (new_request_id(TRACEPARENT_LEN), None),
        (None, TraceparentPlan::Now(trace)) => {
            let mut both = [0u8; REQUEST_ID_LEN + TRACEPARENT_LEN];
            let (id, traceparent) = both.split_at_mut(REQUEST_ID_LEN);
            if let Ok(id) = <&mut [u8; REQUEST_ID_LEN]>::try_from(id) {
                write_request_id(id);
            }
            if let Ok(traceparent) = <&mut [u8; TRACEPARENT_LEN]>::try_from(traceparent) {
                trace.write_traceparent(traceparent);
            }
            let both = cut_from_id_block(&both, 0);
            let id = HeaderValue::from_maybe_shared(both.slice(..REQUEST_ID_LEN))
                .unwrap_or(HeaderValue::from_static("0"));
            (
                id,
                HeaderValue::from_maybe_shared(both.slice(REQUEST_ID_LEN..)).ok(),
            )
        }
    }
}

/// Hex digits in a request id weir makes.
const REQUEST_ID_LEN: usize = 32;

fn is_acceptable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| (0x21..0x7f).contains(b))
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

/// 32 hex digits: a per-process random prefix and a counter, unique without coordination;
/// the id block keeps `room` bytes after it for the request's next value.
pub fn new_request_id(room: usize) -> HeaderValue {
    let mut digits = [0u8; REQUEST_ID_LEN];
    write_request_id(&mut digits);
    HeaderValue::from_maybe_shared(cut_from_id_block(&digits, room))
        .unwrap_or(HeaderValue::from_static("0"))
}

/// Bytes of a block shared by the ids this thread makes.
const ID_BLOCK_BYTES: usize = 2048;

thread_local! {
    /// The rest of this thread's id block.
    static ID_BLOCK: std::cell::RefCell<bytes::BytesMut> =
        std::cell::RefCell::new(bytes::BytesMut::new());
}

/// `value` as shared bytes cut from this thread's id block. Each new request id (and
/// `traceparent`) was an allocation of its own; cut from a 2 KiB block they cost two
/// (the block and its share record) per 23 to 64 requests, and none when the block's
/// earlier ids are all gone by the time it runs out (its room is reclaimed). Shared from the start: the id goes upstream and
/// back to the client, and a clone of a value copied into a `Vec` allocates to share it.
/// A long-lived request (a tunnel, a stream) keeps its block's 2 KiB alive.
/// `room`: bytes the block is to have left after this cut (see [`TraceparentPlan::Later`]).
fn cut_from_id_block(value: &[u8], room: usize) -> bytes::Bytes {
    let cut = |block: &mut bytes::BytesMut| {
        if block.capacity() < value.len() + room && !block.try_reclaim(ID_BLOCK_BYTES) {
            *block = bytes::BytesMut::with_capacity(ID_BLOCK_BYTES.max(value.len()));
        }
        block.extend_from_slice(value);
        block.split().freeze()
    };
    ID_BLOCK
        .try_with(|block| cut(&mut block.borrow_mut()))
        // A thread being torn down: bytes of its own.
        .unwrap_or_else(|_| bytes::Bytes::copy_from_slice(value))
}

/// `value` (ASCII made by weir) as a header value cut from this thread's id block.
pub fn shared_value(value: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(cut_from_id_block(value, 0)).ok()
}

/// A new id's digits: a per-process random prefix and a counter.
fn write_request_id(out: &mut [u8; REQUEST_ID_LEN]) {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| fastrand::u64(..));
    let n = REQUEST_COUNTER.fetch_add(1, Relaxed);
    out[..16].copy_from_slice(&hex_digits(prefix));
    out[16..].copy_from_slice(&hex_digits(n));
}

/// `v`'s 16 hex digits, lowercase, the most significant first. All digits at once in
/// two words (a digit at a time was ~100 instructions a `u64`, and a proxied request
/// writes six: its id, its trace and its attempt's span).
pub(super) fn hex_digits(v: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hex_word((v >> 32) as u32).to_be_bytes());
    out[8..].copy_from_slice(&hex_word(v as u32).to_be_bytes());
    out
}

/// `v`'s eight hex digits as the bytes of a word, the least significant digit lowest.
fn hex_word(v: u32) -> u64 {
    const EACH_BYTE: u64 = 0x0101_0101_0101_0101;
    // Each nibble into a byte of its own.
    let mut nibbles = u64::from(v);
    nibbles = (nibbles | (nibbles << 16)) & 0x0000_ffff_0000_ffff;
    nibbles = (nibbles | (nibbles << 8)) & 0x00ff_00ff_00ff_00ff;
    nibbles = (nibbles | (nibbles << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose nibble is 10 or more: adding 6 carries it into bit 4.
    let letters = ((nibbles + 6 * EACH_BYTE) >> 4) & EACH_BYTE;
    // '0' + n, and for a letter the distance from '9' + 1 to 'a'.
    nibbles + b'0' as u64 * EACH_BYTE + letters * u64::from(b'a' - b'9' - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: ForwardedForMode, forwarded: bool) -> HeaderPolicy {
        HeaderPolicy::from_config(&HeadersConfig {
            x_forwarded_for: mode,
            forwarded,
            ..HeadersConfig::default()
        })
    }

    #[test]
    fn strips_each_hop_by_hop_header_alone_and_leaves_others_untouched() {
        for hop in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert("x-before", "1".parse().unwrap());
            h.insert(hop.clone(), "v".parse().unwrap());
            h.insert("x-after", "2".parse().unwrap());
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(hop), "{hop} kept");
            assert_eq!(h.len(), 2, "{hop}: {h:?}");
        }
        let mut plain = HeaderMap::new();
        plain.insert("host", "a".parse().unwrap());
        plain.append("accept", "x/y".parse().unwrap());
        plain.append("accept", "z/w".parse().unwrap());
        let before = plain.clone();
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain, before);
    }

    #[test]
    fn strips_standard_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            "keep-alive, x-secret, Content-Length, host"
                .parse()
                .unwrap(),
        );
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("content-length", "3".parse().unwrap());
        h.insert("host", "a".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        // A second Connection field, a mixed-case name, and tokens that name nothing.
        h.append(
            "connection",
            " X-Other ,, bad token, close".parse().unwrap(),
        );
        h.insert("x-other", "2".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(h.len(), 3, "{left:?}");
        assert!(
            h.contains_key("x-keep") && h.contains_key("content-length") && h.contains_key("host")
        );
    }

    #[test]
    fn x_forwarded_for_modes() {
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        policy(ForwardedForMode::Append, false).add_forwarding(
            &mut h,
            (&ClientAddress::new(ip)).into(),
            "http",
            None,
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        policy(ForwardedForMode::Replace, false).add_forwarding(
            &mut h,
            (&ClientAddress::new(ip)).into(),
            "http",
            None,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");

        // No prior hops: the connection's own value, the same on every request.
        let client = ClientAddress::new(ip);
        for _ in 0..2 {
            let mut h = HeaderMap::new();
            policy(ForwardedForMode::Append, false).add_forwarding(
                &mut h,
                (&client).into(),
                "http",
                None,
            );
            assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        }

        let mut h = HeaderMap::new();
        policy(ForwardedForMode::Off, false).add_forwarding(
            &mut h,
            (&ClientAddress::new(ip)).into(),
            "http",
            None,
        );
        assert!(!h.contains_key("x-forwarded-for"));

        // Behind a trusted proxy: appending adds the proxy (the connection's hop) to the
        // chain it sent; replacing names the client resolved from that chain.
        let (lb, real) = (
            ClientAddress::new("10.1.1.1".parse().unwrap()),
            ClientAddress::new("203.0.113.5".parse().unwrap()),
        );
        let hop = Hop {
            connection: &lb,
            client: &real,
        };
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.5".parse().unwrap());
        policy(ForwardedForMode::Append, true).add_forwarding(&mut h, hop, "http", None);
        assert_eq!(h["x-forwarded-for"], "203.0.113.5, 10.1.1.1");
        assert!(
            h["forwarded"]
                .to_str()
                .unwrap()
                .starts_with("for=203.0.113.5;")
        );
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.5".parse().unwrap());
        policy(ForwardedForMode::Replace, false).add_forwarding(&mut h, hop, "http", None);
        assert_eq!(h["x-forwarded-for"], "203.0.113.5");
    }

    #[test]
    fn rfc7239_forwarded_quotes_ipv6_and_host() {
        let mut h = HeaderMap::new();
        let ip: IpAddr = "::1".parse().unwrap();
        policy(ForwardedForMode::Append, true).add_forwarding(
            &mut h,
            (&ClientAddress::new(ip)).into(),
            "http",
            Some("a.example:8080"),
        );
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";proto=http;by=weir;host=\"a.example:8080\""
        );
    }

    #[test]
    fn via_per_version() {
        let p = policy(ForwardedForMode::Append, false);
        let mut h = HeaderMap::new();
        h.insert("via", "1.0 other".parse().unwrap());
        p.add_via(&mut h, Version::HTTP_2);
        let all: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(all, ["1.0 other", "2 weir"]);
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let name = HeaderName::from_static("x-request-id");
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(request_ids(&h, &name, TraceparentPlan::None).0, "abc-123");
        h.insert(
            "x-request-id",
            HeaderValue::from_bytes(b"bad value").unwrap(),
        );
        let fresh = request_ids(&h, &name, TraceparentPlan::None).0;
        assert_eq!(fresh.len(), 32);
        assert_ne!(new_request_id(0), new_request_id(0));
        // Ids cut from one block, past its end: each whole and different.
        let ids: Vec<HeaderValue> = (0..200).map(|_| new_request_id(0)).collect();
        assert!(ids.iter().all(|id| id.len() == 32));
        let distinct: std::collections::HashSet<&[u8]> =
            ids.iter().map(|id| id.as_bytes()).collect();
        assert_eq!(distinct.len(), ids.len());
        // A new id made beside a traceparent: both whole, the traceparent the trace's.
        let trace = super::super::trace::TraceContext::from_headers(&HeaderMap::new(), || true);
        let (id, traceparent) = request_ids(&h, &name, TraceparentPlan::Now(&trace));
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(traceparent, trace.header_value());
    }

    #[test]
    fn the_id_block_is_reused_once_its_ids_are_gone() {
        // A test runs on a thread of its own: this is the block's first id.
        let first = new_request_id(0);
        let start = first.as_bytes().as_ptr();
        drop(first);
        // Past the block's end with every earlier id dropped, its room is reclaimed
        // and ids are cut from its start again.
        let reused = (0..ID_BLOCK_BYTES / REQUEST_ID_LEN + 1)
            .map(|_| new_request_id(0))
            .any(|id| id.as_bytes().as_ptr() == start);
        assert!(reused, "a new block was allocated instead");
        // While an id from it lives, the block is not written over.
        let held = new_request_id(0);
        let copy = held.as_bytes().to_vec();
        for _ in 0..2 * ID_BLOCK_BYTES / REQUEST_ID_LEN {
            drop(new_request_id(0));
        }
        assert_eq!(held.as_bytes(), &copy[..]);
    }

    #[test]
    fn a_new_id_leaves_room_for_the_traceparent_made_later() {
        use super::super::trace::TRACEPARENT_LEN;
        // Request after request (each one's values gone before the next), past several
        // blocks' worth: the traceparent is cut right after its request's id, never
        // from a block of its own.
        for round in 0..3 * ID_BLOCK_BYTES / (REQUEST_ID_LEN + TRACEPARENT_LEN) {
            let id = new_request_id(TRACEPARENT_LEN);
            let traceparent = shared_value(&[b'0'; TRACEPARENT_LEN]).expect("a value");
            let after_id = id.as_bytes().as_ptr().wrapping_add(REQUEST_ID_LEN);
            assert_eq!(traceparent.as_bytes().as_ptr(), after_id, "round {round}");
        }
    }

    #[test]
    fn hex_digits_are_the_formatter_s() {
        let samples = [
            0,
            1,
            9,
            10,
            15,
            16,
            0xabcd_ef01_2345_6789,
            u64::MAX,
            1 << 63,
        ];
        for v in samples
            .into_iter()
            .chain((0..1000).map(|_| fastrand::u64(..)))
        {
            assert_eq!(hex_digits(v), format!("{v:016x}").as_bytes(), "{v:#x}");
        }
    }

    #[test]
    fn trailers_is_found_among_te_codings() {
        let te = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TE, v.parse().unwrap());
            }
            accepts_trailers(&h)
        };
        assert!(te(&["trailers"]));
        assert!(te(&["gzip;q=0.5, Trailers"]));
        assert!(te(&["gzip", "trailers;q=1"]));
        assert!(!te(&["gzip, deflate"]));
        assert!(!te(&["trailersx"]));
        assert!(!te(&[]));
    }
}
