//! Request-target normalisation, so that what a route matches is what the upstream gets:
//! `/api/../admin` and `/api/%2e%2e/admin` are `/admin`, not something under `/api`.

use std::borrow::Cow;

/// Why a path cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%00`: no upstream means it kindly.
    Nul,
}

/// Decodes percent-encoded dots and removes dot segments (RFC 3986 §5.2.4). Other escapes
/// are kept as they are (an encoded slash stays data, not a separator). Returns the input
/// unchanged (borrowed) in the common case where there is nothing to do.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    let bytes = path.as_bytes();
    let mut has_escape = false;
    let mut has_dot = false;
    for (i, b) in bytes.iter().enumerate() {
        has_dot |= *b == b'.';
        if *b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(BadPath::BadEscape)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(BadPath::BadEscape);
            }
            if hex == b"00" {
                return Err(BadPath::Nul);
            }
            has_escape = true;
        }
    }
    // Only a path with a dot can have a dot segment: most are answered by the scan above.
    let has_dot_segment = has_dot
        && path
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    if !has_escape && !has_dot_segment {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = if has_escape {
        decode_dots(path)
    } else {
        path.to_owned()
    };
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// `%2e`/`%2E` → `.`; everything else untouched.
fn decode_dots(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escape = &rest[at..at + 3];
        if escape.eq_ignore_ascii_case("%2e") {
            out.push('.');
        } else {
            out.push_str(escape);
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    out
}

fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    output.push("");
                }
            }
            ".." => {
                // Never above the root.
                if output.len() > 1 {
                    output.pop();
                }
                if i == last {
                    output.push("");
                }
            }
            other => output.push(other),
        }
    }
    let joined = output.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments() {
        for (input, expected) in [
            ("/api/users", "/api/users"),
            ("/api/../admin", "/admin"),
            ("/api/./x", "/api/x"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2e/admin", "/admin"),
            ("/api/.%2e/admin", "/admin"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/%2fb", "/a/%2fb"),
            ("/a/%20b/../c", "/a/c"),
            ("/", "/"),
            ("/..", "/"),
            ("/a..b/c", "/a..b/c"),
        ] {
            assert_eq!(normalize_path(input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn unchanged_paths_are_not_copied() {
        assert!(matches!(
            normalize_path("/api/v1/items?x"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn bad_escapes() {
        assert_eq!(normalize_path("/a%zz"), Err(BadPath::BadEscape));
        assert_eq!(normalize_path("/a%2"), Err(BadPath::BadEscape));
        assert_eq!(normalize_path("/a%00b"), Err(BadPath::Nul));
    }
}
