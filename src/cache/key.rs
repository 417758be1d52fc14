//! Cache keys: what makes two requests "the same resource" for the cache.
//!
//! A primary key is `host` + path + query (per the route's [`QueryKey`]) + any configured
//! key headers. A response with `Vary` is stored under a secondary key: the primary key,
//! the generation of its vary record and a hash of the nominated request headers' values.

use http::{HeaderMap, HeaderName};

use crate::config::{QueryKey, RouteCacheConfig};

/// How a route composes its keys; built once per config snapshot.
#[derive(Debug, Clone)]
pub struct KeySpec {
    query: QueryKey,
    headers: Vec<HeaderName>,
}

impl KeySpec {
    pub fn from_config(config: &RouteCacheConfig) -> Self {
        Self {
            query: config.query,
            headers: config
                .key_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
        }
    }

    /// Whether the key includes this request header.
    pub fn keys_on(&self, name: &HeaderName) -> bool {
        self.headers.contains(name)
    }

    /// The request target as the cache sees it: the path and the query as keyed, so
    /// that requests sharing an entry also match its policy.
    pub fn target(&self, path: &str, query: Option<&str>) -> String {
        let mut target = String::with_capacity(path.len() + 16);
        target.push_str(path);
        self.push_query(&mut target, query);
        target
    }

    fn push_query(&self, out: &mut String, query: Option<&str>) {
        match (self.query, query) {
            (QueryKey::Keep, Some(q)) if !q.is_empty() => {
                out.push('?');
                out.push_str(q);
            }
            (QueryKey::Sorted, Some(q)) if !q.is_empty() => {
                let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
                params.sort_unstable();
                out.push('?');
                out.push_str(&params.join("&"));
            }
            _ => {}
        }
    }

    /// The primary key of a request for `host` and `path`/`query`.
    pub fn primary(
        &self,
        host: &str,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> String {
        let mut key = String::with_capacity(host.len() + path.len() + 16);
        self.primary_into(&mut key, host, path, query, headers);
        key
    }

    /// [`Self::primary`] written into `key` (emptied first): a lookup can use a buffer it
    /// keeps, and copy the key only when it has to store or fetch.
    pub fn primary_into(
        &self,
        key: &mut String,
        host: &str,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) {
        key.clear();
        key.push_str(host);
        // In place, the whole host at once (char by char, it cost a hit 300 instructions).
        key.make_ascii_lowercase();
        key.push_str(path);
        self.push_query(key, query);
        for name in &self.headers {
            key.push('|');
            key.push_str(name.as_str());
            key.push('=');
            for (i, value) in headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    key.push(',');
                }
                key.push_str(&String::from_utf8_lossy(value.as_bytes()));
            }
        }
    }
}

/// The key of the variant of `primary` selected by `vary` names (lowercase) under a vary
/// record of `generation`.
pub fn variant(primary: &str, generation: u64, vary: &[String], headers: &HeaderMap) -> String {
    let mut hash = Fnv64::new();
    for name in vary {
        hash.write(name.as_bytes());
        hash.write(b":");
        // A present header (even an empty one) is another selection than an absent one.
        if let Some(value) = selecting_value(name, headers) {
            hash.write(b"=");
            hash.write(value.as_bytes());
        }
        hash.write(b"\0");
    }
    format!("{primary}#v{generation:x}.{:016x}", hash.finish())
}

/// The header names a response's `Vary` nominates, lowercased (`*` included).
pub fn vary_names(response: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    response
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
}

/// A selecting header's value as `Vary` compares it (RFC 9111 §4.1 lets a cache normalise
/// them): its field lines combined, list members trimmed of whitespace and empty ones
/// dropped, and, for `Accept-Language`, language tags lowercased (they are
/// case-insensitive, RFC 5646 §2.1.1). Member order is kept: it may express preference.
/// `None` when the request lacks the header. Cookies are compared as sent: their lines
/// are not a comma-separated list.
pub fn selecting_value(name: &str, headers: &HeaderMap) -> Option<String> {
    let mut lines = headers.get_all(name).iter().peekable();
    lines.peek()?;
    if name == "cookie" {
        let lines: Vec<&[u8]> = lines.map(|v| v.as_bytes()).collect();
        return Some(String::from_utf8_lossy(&lines.join(&b"; "[..])).into_owned());
    }
    let lowercase = name == "accept-language";
    let mut out = String::new();
    for line in lines {
        let line = String::from_utf8_lossy(line.as_bytes());
        for member in line.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            if lowercase {
                out.push_str(&member.to_ascii_lowercase());
            } else {
                out.push_str(member);
            }
        }
    }
    Some(out)
}

/// The primary key a stored key belongs to (itself unless it is a variant key).
pub fn primary_of(key: &str) -> &str {
    match key.rfind("#v") {
        Some(at) if key[at..].contains('.') => &key[..at],
        _ => key,
    }
}

/// FNV-1a: stable across processes and versions, which Redis-shared keys need.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(query: QueryKey, headers: &[&str]) -> KeySpec {
        KeySpec::from_config(&RouteCacheConfig {
            query,
            key_headers: headers.iter().map(|s| s.to_string()).collect(),
            ..RouteCacheConfig::default()
        })
    }

    #[test]
    fn query_modes() {
        let h = HeaderMap::new();
        let q = Some("b=1&a=2");
        assert_eq!(
            spec(QueryKey::Keep, &[]).primary("Ex.com", "/p", q, &h),
            "ex.com/p?b=1&a=2"
        );
        assert_eq!(
            spec(QueryKey::Sorted, &[]).primary("ex.com", "/p", q, &h),
            "ex.com/p?a=2&b=1"
        );
        assert_eq!(
            spec(QueryKey::Ignore, &[]).primary("ex.com", "/p", q, &h),
            "ex.com/p"
        );
    }

    #[test]
    fn key_headers_and_variants() {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "blue".parse().unwrap());
        let key = spec(QueryKey::Keep, &["x-tenant"]).primary("ex.com", "/p", None, &h);
        assert_eq!(key, "ex.com/p|x-tenant=blue");
        let vary = vec!["accept-language".to_string()];
        let mut a = HeaderMap::new();
        a.insert("accept-language", "en".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert("accept-language", "fr".parse().unwrap());
        let ka = variant(&key, 7, &vary, &a);
        let kb = variant(&key, 7, &vary, &b);
        assert_ne!(ka, kb);
        assert_eq!(ka, variant(&key, 7, &vary, &a));
        assert_ne!(ka, variant(&key, 8, &vary, &a));
        assert_eq!(primary_of(&ka), key);
        assert_eq!(primary_of(&key), key);
    }

    #[test]
    fn selecting_values_are_normalised() {
        let headers = |lines: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in lines {
                h.append(*name, value.parse().unwrap());
            }
            h
        };
        let vary = vec!["foo".to_string(), "accept-language".to_string()];
        let key = |lines| variant("p", 1, &vary, &headers(lines));
        let base = key(&[("foo", "1, 2"), ("accept-language", "en, de")]);
        assert_eq!(
            base,
            key(&[("foo", "1"), ("foo", "2"), ("accept-language", "en, de")])
        );
        assert_eq!(
            base,
            key(&[("foo", " 1 ,2 "), ("accept-language", "eN,De")])
        );
        assert_eq!(
            base,
            key(&[("foo", "1,,2"), ("accept-language", " en ,   de")])
        );
        assert_ne!(base, key(&[("foo", "2, 1"), ("accept-language", "en, de")]));
        assert_ne!(base, key(&[("foo", "1, 2"), ("accept-language", "de, en")]));
        assert_ne!(base, key(&[("foo", "1, 2")]), "absent is not empty");
        assert_ne!(
            key(&[("foo", "1, 2")]),
            key(&[("foo", "1, 2"), ("accept-language", "")]),
            "an empty header is not an absent one"
        );
        assert_ne!(
            key(&[("foo", "A")]),
            key(&[("foo", "a")]),
            "only language tags are case-folded"
        );
        assert_eq!(
            selecting_value("cookie", &headers(&[("cookie", "a=1"), ("cookie", "b=2")])),
            Some("a=1; b=2".to_string())
        );
    }
}
