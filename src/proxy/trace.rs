//! W3C Trace Context (`traceparent`): weir continues the client's trace with a span of its
//! own, or starts one, so the upstream and weir's access log share a trace id.

use http::{HeaderMap, HeaderName, HeaderValue};

/// A constant name: inserting by `&str` would allocate the name on every request.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The trace this request belongs to and weir's span in it, as lowercase hex (kept in
/// fixed arrays: nothing is allocated per request but the outgoing header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 32],
    /// weir's own span id, sent upstream as the parent.
    span_id: [u8; 16],
    /// Trace flags from the client (its sampling decision); for traces weir starts, `01`
    /// when weir records the trace, `00` otherwise.
    flags: [u8; 2],
    /// The client's span, when it sent a `traceparent`: the parent of weir's.
    parent_id: Option<[u8; 16]>,
}

/// Bytes in a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

impl TraceContext {
    /// Continues a valid incoming `traceparent` or starts a new trace; `sample_new` says
    /// whether a trace weir starts is recorded (a continued one keeps the client's flag).
    pub fn from_headers(headers: &HeaderMap, sample_new: impl FnOnce() -> bool) -> Self {
        let mut span_id = [0u8; 16];
        random_hex(&mut span_id);
        let incoming =
            crate::header_maps::first(headers, &TRACEPARENT).and_then(|v| parse(v.as_bytes()));
        match incoming {
            Some((trace_id, parent_id, flags)) => Self {
                trace_id,
                span_id,
                flags,
                parent_id: Some(parent_id),
            },
            None => {
                let mut trace_id = [0u8; 32];
                random_hex(&mut trace_id);
                Self {
                    trace_id,
                    span_id,
                    flags: if sample_new() { *b"01" } else { *b"00" },
                    parent_id: None,
                }
            }
        }
    }

    /// The same trace with a new span of weir's (an upstream attempt), whose parent is
    /// this one's span.
    pub fn child(&self) -> Self {
        let mut span_id = [0u8; 16];
        random_hex(&mut span_id);
        Self {
            trace_id: self.trace_id,
            span_id,
            flags: self.flags,
            parent_id: Some(self.span_id),
        }
    }

    /// Whether the trace is recorded (the sampled bit of its flags).
    pub fn sampled(&self) -> bool {
        let low = self.flags[1];
        let digit = if low.is_ascii_digit() {
            low - b'0'
        } else {
            low.wrapping_sub(b'a') + 10
        };
        digit & 1 == 1
    }

    /// (trace id, span id, parent span id) as lowercase hex.
    pub fn ids(&self) -> ([u8; 32], [u8; 16], Option<[u8; 16]>) {
        (self.trace_id, self.span_id, self.parent_id)
    }

    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or("-")
    }

    pub fn span_id(&self) -> &str {
        std::str::from_utf8(&self.span_id).unwrap_or("-")
    }

    pub fn flags(&self) -> &str {
        std::str::from_utf8(&self.flags).unwrap_or("-")
    }

    /// The `traceparent` value sent upstream, cut from the thread's id block (shared from
    /// the start: a retry's copy of the head clones it without allocating).
    pub fn header_value(&self) -> Option<HeaderValue> {
        let mut out = [0u8; TRACEPARENT_LEN];
        self.write_traceparent(&mut out);
        super::headers::shared_value(&out)
    }

    /// Writes the `traceparent` value into `out`.
    pub fn write_traceparent(&self, out: &mut [u8; TRACEPARENT_LEN]) {
        out[..3].copy_from_slice(b"00-");
        out[3..35].copy_from_slice(&self.trace_id);
        out[35] = b'-';
        out[36..52].copy_from_slice(&self.span_id);
        out[52] = b'-';
        out[53..].copy_from_slice(&self.flags);
    }
}

/// The `traceparent` one client request sends upstream.
#[derive(Debug)]
pub enum Traceparent {
    /// Made with the request: a tracer or the access log needs its trace context
    /// anyway, or without a cache it goes upstream (`None` when it could not be made).
    Made(Option<HeaderValue>),
    /// Made when the request first goes upstream, continuing the trace its head names
    /// then. A cache hit that no tracer records and no access log names sends nothing
    /// upstream: its random ids and header value (~800 of a hit's 19 000 instructions)
    /// are never made. A lock rather than a cell: the request's future crosses threads.
    Deferred(std::sync::OnceLock<Option<HeaderValue>>),
}

impl Traceparent {
    /// A traceparent made on first use.
    pub fn deferred() -> Self {
        Self::Deferred(std::sync::OnceLock::new())
    }

    /// The value to send, given the client's head (read only the first time a deferred
    /// value is made).
    pub fn value(&self, client_head: &HeaderMap) -> Option<&HeaderValue> {
        match self {
            Self::Made(value) => value.as_ref(),
            Self::Deferred(cell) => cell
                .get_or_init(|| {
                    // Deferred only when no tracer records the request: a trace weir
                    // starts for it is not sampled.
                    TraceContext::from_headers(client_head, || false).header_value()
                })
                .as_ref(),
        }
    }
}

/// (trace id, parent span id, flags) of a valid version-00 `traceparent`.
fn parse(value: &[u8]) -> Option<([u8; 32], [u8; 16], [u8; 2])> {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let valid = value.len() == 55
        && value.starts_with(b"00-")
        && value[35] == b'-'
        && value[52] == b'-'
        && hex(&value[3..35])
        && hex(&value[36..52])
        && hex(&value[53..55])
        && value[3..35].iter().any(|b| *b != b'0')
        && value[36..52].iter().any(|b| *b != b'0');
    if !valid {
        return None;
    }
    let mut trace_id = [0u8; 32];
    trace_id.copy_from_slice(&value[3..35]);
    let mut parent_id = [0u8; 16];
    parent_id.copy_from_slice(&value[36..52]);
    Some((trace_id, parent_id, [value[53], value[54]]))
}

/// Fills `out` with random lowercase hex digits, never all zeros (an invalid id).
/// Each random `u64` gives 16 digits (a draw per digit was 3 % of a cache hit).
fn random_hex(out: &mut [u8]) {
    let mut any_bit = 0;
    for sixteen in out.chunks_mut(16) {
        let random = fastrand::u64(..);
        let digits = super::headers::hex_digits(random);
        // The digits written are the most significant ones.
        any_bit |= random >> (4 * (16 - sixteen.len()));
        sixteen.copy_from_slice(&digits[..sixteen.len()]);
    }
    if any_bit == 0
        && let Some(last) = out.last_mut()
    {
        *last = b'1';
    }
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
        let t = TraceContext::from_headers(&h, || false);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags(), "01");
        assert!(t.sampled(), "the client's decision stands");
        assert_ne!(t.span_id(), "00f067aa0ba902b7");
        assert_eq!(t.span_id().len(), 16);
        assert_eq!(t.ids().2, Some(*b"00f067aa0ba902b7"));
        let attempt = t.child();
        assert_eq!(attempt.trace_id(), t.trace_id());
        assert_ne!(attempt.span_id(), t.span_id());
        assert_eq!(attempt.ids().2.as_ref(), Some(&t.ids().1));
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
            let t = TraceContext::from_headers(&h, || false);
            assert_eq!(t.trace_id().len(), 32, "{bad}");
            assert_ne!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!(t.flags(), "00");
            assert!(!t.sampled());
            assert_eq!(t.ids().2, None);
            assert_eq!(TraceContext::from_headers(&h, || true).flags(), "01");
            let header = t.header_value().unwrap();
            assert!(parse(header.as_bytes()).is_some(), "we send valid ones");
        }
    }

    #[test]
    fn a_deferred_traceparent_is_made_once_from_the_head_it_first_sees() {
        let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut head = HeaderMap::new();
        head.insert(TRACEPARENT, HeaderValue::from_static(client));
        let deferred = Traceparent::deferred();
        let first = deferred.value(&head).cloned().expect("a value");
        let sent = parse(first.as_bytes()).expect("a valid traceparent");
        assert_eq!(
            &sent.0, b"4bf92f3577b34da6a3ce929d0e0e4736",
            "the client's trace"
        );
        assert_ne!(&sent.1, b"00f067aa0ba902b7", "weir's own span");
        assert_eq!(&sent.2, b"01", "the client's sampling decision");
        // Later calls (a retry's head already carries weir's value) give the same one.
        head.insert(TRACEPARENT, first.clone());
        assert_eq!(deferred.value(&head), Some(&first));
        assert_eq!(deferred.value(&HeaderMap::new()), Some(&first));

        let started = Traceparent::deferred();
        let new = started.value(&HeaderMap::new()).expect("a value");
        let new = parse(new.as_bytes()).expect("a valid traceparent");
        assert_eq!(
            &new.2, b"00",
            "a trace weir starts unrecorded is not sampled"
        );
        assert_eq!(Traceparent::Made(None).value(&head), None);
    }

    #[test]
    fn new_ids_use_every_hex_digit_in_every_place() {
        // 16 digits from each random word: every place of a trace id (32 digits, two
        // words) and a span id sees all 16 digits over a few hundred ids.
        let mut seen = [[false; 16]; 48];
        for _ in 0..400 {
            let t = TraceContext::from_headers(&HeaderMap::new(), || false);
            let (trace, span, _) = t.ids();
            for (place, digit) in trace.iter().chain(span.iter()).enumerate() {
                let value = (*digit as char)
                    .to_digit(16)
                    .expect("a lowercase hex digit");
                assert!(!digit.is_ascii_uppercase());
                seen[place][value as usize] = true;
            }
        }
        assert!(seen.iter().all(|place| place.iter().all(|&d| d)));
    }
}
