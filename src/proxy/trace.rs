//! W3C Trace Context (`traceparent`): weir continues the client's trace with a span of its
//! own, or starts one, so the upstream and weir's access log share a trace id.

use http::{HeaderMap, HeaderValue};

pub const TRACEPARENT: &str = "traceparent";

/// The trace this request belongs to and weir's span in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// weir's own span id, sent upstream as the parent: 16 hex digits.
    pub span_id: String,
    /// Trace flags from the client (sampling decision), `00` for traces weir starts.
    pub flags: String,
}

impl TraceContext {
    /// Continues a valid incoming `traceparent` or starts a new trace.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let incoming = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse);
        match incoming {
            Some((trace_id, flags)) => Self {
                trace_id,
                span_id: random_hex(8),
                flags,
            },
            None => Self {
                trace_id: random_hex(16),
                span_id: random_hex(8),
                flags: "00".into(),
            },
        }
    }

    /// The `traceparent` value sent upstream.
    pub fn header_value(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "00-{}-{}-{}",
            self.trace_id, self.span_id, self.flags
        ))
        .ok()
    }
}

/// (trace id, flags) of a valid version-00 `traceparent`.
fn parse(value: &str) -> Option<(String, String)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    valid.then(|| (trace_id.to_owned(), flags.to_owned()))
}

fn random_hex(bytes: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        let b = fastrand::u8(..);
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    // All-zero ids are invalid; fastrand giving 16 zero bytes is negligible, but be exact.
    if out.bytes().all(|b| b == b'0') {
        out.replace_range(out.len() - 1.., "1");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace_with_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, "01");
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert_eq!(t.span_id.len(), 16);
    }

    #[test]
    fn starts_a_trace_when_absent_or_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let mut h = HeaderMap::new();
            if !bad.is_empty() {
                h.insert(TRACEPARENT, HeaderValue::from_str(bad).unwrap());
            }
            let t = TraceContext::from_headers(&h);
            assert_eq!(t.trace_id.len(), 32, "{bad}");
            assert_ne!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!(t.flags, "00");
            let header = t.header_value().unwrap();
            assert!(
                parse(header.to_str().unwrap()).is_some(),
                "we send valid ones"
            );
        }
    }
}
