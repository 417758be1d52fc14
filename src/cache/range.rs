//! Byte ranges served from a complete stored response (RFC 9110 §14): one range per
//! request (`bytes=0-99`, `bytes=100-`, `bytes=-100`), `If-Range`, and the 416 answer.
//! Several ranges in one request get the whole response, as RFC 9110 §14.2 allows.

use http::header::{self, HeaderMap, HeaderValue};

/// What a `Range` request gets from a stored body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole response (no usable range: another unit, several ranges, bad syntax).
    Whole,
    /// 206 with bytes `first..=last`.
    Partial { first: u64, last: u64 },
    /// 416: every range starts past the end.
    Unsatisfiable,
}

impl RangeAnswer {
    /// `Content-Range` for a 206 or 416 of a body of `len` bytes.
    pub fn content_range(self, len: u64) -> Option<HeaderValue> {
        let text = match self {
            RangeAnswer::Whole => return None,
            RangeAnswer::Partial { first, last } => format!("bytes {first}-{last}/{len}"),
            RangeAnswer::Unsatisfiable => format!("bytes */{len}"),
        };
        HeaderValue::from_str(&text).ok()
    }
}

/// Reads the request's `Range` against a body of `len` bytes.
pub fn select(range: &HeaderValue, len: u64) -> RangeAnswer {
    let Some(spec) = range
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(|r| r.split_once('='))
        .filter(|(unit, _)| unit.trim().eq_ignore_ascii_case("bytes"))
        .map(|(_, spec)| spec.trim())
    else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeAnswer::Whole;
    };
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(suffix) => RangeAnswer::Partial {
                first: len.saturating_sub(suffix),
                last: len - 1,
            },
            None => RangeAnswer::Whole,
        },
        // bytes=N-: from N to the end.
        (false, true) => match number(first) {
            Some(first) if first < len => RangeAnswer::Partial {
                first,
                last: len - 1,
            },
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Whole,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(first), Some(last)) if first <= last => {
                if first >= len {
                    RangeAnswer::Unsatisfiable
                } else {
                    RangeAnswer::Partial {
                        first,
                        last: last.min(len - 1),
                    }
                }
            }
            // An invalid range-spec makes the field invalid: ignore it.
            _ => RangeAnswer::Whole,
        },
        (true, true) => RangeAnswer::Whole,
    }
}

/// Whether `If-Range` (if the request has one) lets a range be served from the stored
/// response: an entity tag must match the stored one strongly, a date must equal the
/// stored `Last-Modified` (RFC 9110 §13.1.5). Otherwise the whole response is sent.
pub fn if_range_allows(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(condition) = request.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(condition) = condition.to_str().map(str::trim) else {
        return false;
    };
    if condition.starts_with('"') || condition.starts_with("W/") {
        let stored_tag = stored
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        return !condition.starts_with("W/") && stored_tag == Some(condition);
    }
    let stored_date = stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let asked = httpdate::parse_http_date(condition).ok();
    matches!((asked, stored_date), (Some(a), Some(s)) if a == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(range: &str, len: u64) -> RangeAnswer {
        select(&HeaderValue::from_str(range).unwrap(), len)
    }

    #[test]
    fn single_ranges() {
        use RangeAnswer::*;
        assert_eq!(answer("bytes=0-1", 11), Partial { first: 0, last: 1 });
        assert_eq!(answer("bytes=1-", 11), Partial { first: 1, last: 10 });
        assert_eq!(
            answer("bytes=-1", 11),
            Partial {
                first: 10,
                last: 10
            }
        );
        assert_eq!(answer("bytes=-50", 11), Partial { first: 0, last: 10 });
        assert_eq!(answer("bytes=5-500", 11), Partial { first: 5, last: 10 });
        assert_eq!(answer("BYTES = 2-3", 11), Partial { first: 2, last: 3 });
        assert_eq!(answer("bytes=11-", 11), Unsatisfiable);
        assert_eq!(answer("bytes=20-30", 11), Unsatisfiable);
        assert_eq!(answer("bytes=-0", 11), Unsatisfiable);
        assert_eq!(answer("bytes=0-", 0), Unsatisfiable);
        assert_eq!(answer("bytes=0-1,3-4", 11), Whole);
        assert_eq!(answer("bytes=3-1", 11), Whole);
        assert_eq!(answer("bytes=a-1", 11), Whole);
        assert_eq!(answer("bytes=+1-2", 11), Whole);
        assert_eq!(answer("items=0-1", 11), Whole);
        assert_eq!(answer("bytes=-", 11), Whole);
        assert_eq!(
            Partial { first: 4, last: 9 }.content_range(10).unwrap(),
            "bytes 4-9/10"
        );
        assert_eq!(Unsatisfiable.content_range(10).unwrap(), "bytes */10");
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        stored.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Tue, 01 Dec 2026 10:00:00 GMT"),
        );
        let with = |value: &'static str| {
            let mut request = HeaderMap::new();
            request.insert(header::IF_RANGE, HeaderValue::from_static(value));
            if_range_allows(&request, &stored)
        };
        assert!(if_range_allows(&HeaderMap::new(), &stored));
        assert!(with("\"v1\""));
        assert!(!with("\"v2\""));
        assert!(!with("W/\"v1\""), "weak tags never satisfy If-Range");
        assert!(with("Tue, 01 Dec 2026 10:00:00 GMT"));
        assert!(!with("Tue, 01 Dec 2026 10:00:01 GMT"));
        assert!(!with("yesterday"));
    }
}
