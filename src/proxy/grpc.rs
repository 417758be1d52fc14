//! gRPC over the proxy: telling a gRPC call apart, its deadline (`grpc-timeout`), the
//! status an upstream gave before streaming anything, and weir's own errors in the shape
//! a gRPC client reads (HTTP 200 with `grpc-status` and `grpc-message`).

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::access_log::AccessLine;
use super::spans::RequestSpan;
use super::stats::RouteStats;
use crate::config::GrpcCode;

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether the request is a gRPC call: `application/grpc`, alone or with a `+format` or
/// parameters (gRPC-Web, `application/grpc-web`, is another protocol).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(content_type) = crate::header_maps::first(headers, &header::CONTENT_TYPE) else {
        return false;
    };
    let value = content_type.as_bytes();
    value.len() >= 16
        && value[..16].eq_ignore_ascii_case(b"application/grpc")
        && matches!(value.get(16), None | Some(b'+' | b';'))
}

/// The call's deadline from `grpc-timeout`: 1 to 8 digits and a unit (H, M, S, m, u, n).
/// `None` when absent or malformed (the call then has no deadline of its own).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `left` as a `grpc-timeout` value: milliseconds (rounded up, at least 1), or whole
/// seconds past the 8 digits the format allows.
pub fn timeout_value(left: Duration) -> HeaderValue {
    let millis = left.as_nanos().div_ceil(1_000_000).max(1);
    let text = if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("99999999S"))
}

/// The status of a response that carries it in its head: a trailers-only answer, which
/// streamed no message. `None` for a response whose status will come in trailers.
pub fn head_status(headers: &HeaderMap) -> Option<u8> {
    std::str::from_utf8(headers.get(GRPC_STATUS)?.as_bytes())
        .ok()?
        .parse()
        .ok()
}

/// The spec's name of status `code`, as metrics label it.
pub fn code_name(code: u8) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .get(usize::from(code))
        .copied()
        .unwrap_or("UNRECOGNISED")
}

/// What is done once a gRPC call's status is known (from trailers, or when the stream
/// ends without one): count it for the route, write the access log line. Done on drop at
/// the latest, so a call the client abandons is still logged.
#[derive(Debug)]
pub struct CallEnd {
    pub route_stats: Option<Arc<RouteStats>>,
    pub access: Option<AccessLine>,
    pub span: Option<RequestSpan>,
    done: bool,
}

impl CallEnd {
    pub fn new(
        route_stats: Option<Arc<RouteStats>>,
        access: Option<AccessLine>,
        span: Option<RequestSpan>,
    ) -> Self {
        Self {
            route_stats,
            access,
            span,
            done: false,
        }
    }

    /// The call ended with `status` (`None`: without one).
    pub fn finish(mut self, status: Option<u8>) {
        self.record(status);
    }

    fn record(&mut self, status: Option<u8>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let (Some(stats), Some(code)) = (&self.route_stats, status) {
            stats.record_grpc(code);
        }
        if let Some(line) = self.access.take() {
            line.write(Some(status));
        }
        if let Some(span) = self.span.take() {
            span.send(Some(status));
        }
    }
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        self.record(None);
    }
}

/// Whether a trailers-only answer's status is one `retryable` lists.
pub fn is_retryable_status(retryable: &[GrpcCode], headers: &HeaderMap) -> bool {
    head_status(headers).is_some_and(|code| retryable.iter().any(|c| c.number() == code))
}

/// A trailers-only gRPC answer (HTTP 200, no message) with `code` and `message`.
pub fn status_response_headers(code: GrpcCode, message: &str) -> HeaderMap {
    let mut headers = status_trailers(code, message);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers
}

/// The trailers that end a call with `code` and `message`.
pub fn status_trailers(code: GrpcCode, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(GRPC_STATUS, HeaderValue::from(u16::from(code.number())));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(GRPC_MESSAGE, value);
    }
    headers
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn grpc_content_types() {
        let grpc = |ct| is_grpc(&headers(&[("content-type", ct)]));
        assert!(grpc("application/grpc"));
        assert!(grpc("application/grpc+proto"));
        assert!(grpc("Application/GRPC;charset=utf-8"));
        assert!(!grpc("application/grpc-web"));
        assert!(!grpc("application/grpcx"));
        assert!(!grpc("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn timeouts_in_every_unit() {
        let t = |v| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S", " 1S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timeout_values_fit_the_format() {
        assert_eq!(timeout_value(Duration::from_millis(250)), "250m");
        assert_eq!(timeout_value(Duration::from_micros(1500)), "2m");
        assert_eq!(timeout_value(Duration::ZERO), "1m");
        assert_eq!(timeout_value(Duration::from_secs(200_000)), "200000S");
        let value = timeout_value(Duration::from_secs(3600));
        assert_eq!(
            timeout(&headers(&[("grpc-timeout", "3600000m")])),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(value, "3600000m");
    }

    #[test]
    fn status_in_the_head_and_retryable_codes() {
        let unavailable = headers(&[("grpc-status", "14")]);
        assert_eq!(head_status(&unavailable), Some(14));
        assert!(is_retryable_status(&[GrpcCode::Unavailable], &unavailable));
        assert!(!is_retryable_status(&[GrpcCode::Aborted], &unavailable));
        assert!(!is_retryable_status(
            &[GrpcCode::Unavailable],
            &HeaderMap::new()
        ));
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("no route"), "no route");
        assert_eq!(percent_encode("100% ü"), "100%25 %C3%BC");
        let h = status_response_headers(GrpcCode::Unavailable, "upstream down");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "upstream down");
        assert_eq!(h["content-type"], "application/grpc");
    }
}
