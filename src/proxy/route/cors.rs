//! A route's CORS policy (the Fetch standard's CORS protocol): weir answers preflights
//! itself and puts the `Access-Control-*` headers on responses to allowed origins,
//! replacing any the upstream sent, so that one place decides.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::config::CorsConfig;
use crate::proxy::body::ResponseBody;

#[derive(Debug)]
enum OriginRule {
    Any,
    Exact(String),
    /// `https://*.example.com` kept as (`https://`, `.example.com`).
    Subdomains(String, String),
}

#[derive(Debug)]
pub struct Cors {
    origins: Vec<OriginRule>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// `None`: echo what the preflight asks for (`headers = ["*"]`).
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

impl Cors {
    pub fn new(config: &CorsConfig) -> Self {
        let origins = config
            .origins
            .iter()
            .map(|origin| {
                let origin = origin.to_ascii_lowercase();
                if origin == "*" {
                    return OriginRule::Any;
                }
                match origin.split_once("://*.") {
                    Some((scheme, domain)) => {
                        OriginRule::Subdomains(format!("{scheme}://"), format!(".{domain}"))
                    }
                    None => OriginRule::Exact(origin),
                }
            })
            .collect();
        let methods: Vec<Method> = config
            .methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        let joined = |items: &[String]| {
            (!items.is_empty())
                .then(|| HeaderValue::from_str(&items.join(", ")).ok())
                .flatten()
        };
        Self {
            allow_methods: joined(&config.methods).unwrap_or(HeaderValue::from_static("GET")),
            methods,
            allow_headers: if config.headers.iter().any(|h| h == "*") {
                None
            } else {
                Some(joined(&config.headers).unwrap_or(HeaderValue::from_static("")))
            },
            expose_headers: joined(&config.expose_headers),
            credentials: config.credentials,
            max_age: HeaderValue::from(config.max_age.as_secs()),
            origins,
        }
    }

    fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|rule| match rule {
            OriginRule::Any => true,
            OriginRule::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            OriginRule::Subdomains(scheme, domain) => {
                let origin = origin.to_ascii_lowercase();
                origin.strip_prefix(scheme.as_str()).is_some_and(|host| {
                    host.len() > domain.len() && host.ends_with(domain.as_str())
                })
            }
        })
    }

    /// `*` for any origin without credentials (cacheable by every origin), else the
    /// origin itself.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        let any = self.origins.iter().any(|r| matches!(r, OriginRule::Any));
        if any && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Whether a request is a preflight: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight: 204 with the policy, or 403 when the origin or the
    /// method is not allowed (the browser then refuses the request itself).
    pub fn preflight(&self, headers: &HeaderMap) -> Response<ResponseBody> {
        let origin = headers.get(header::ORIGIN);
        let method = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        let allowed_origin = origin.filter(|o| o.to_str().is_ok_and(|o| self.allows(o)));
        let method_ok = method.is_some_and(|m| self.methods.contains(&m));
        let mut response = Response::new(ResponseBody::empty());
        response
            .headers_mut()
            .insert(header::VARY, VARY_PREFLIGHT.clone());
        let (Some(origin), true) = (allowed_origin, method_ok) else {
            *response.status_mut() = StatusCode::FORBIDDEN;
            return response;
        };
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        let allow_headers = match &self.allow_headers {
            Some(list) => Some(list.clone()),
            None => headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned(),
        };
        if let Some(list) = allow_headers.filter(|l| !l.is_empty()) {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, list);
        }
        out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        response
    }

    /// Puts the policy on a response to a request from `origin` (none: not a
    /// cross-origin request, nothing to add), replacing the upstream's own CORS headers.
    pub fn decorate(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        for name in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            response.remove(name);
        }
        let Some(origin) = origin else { return };
        let allow_origin = self.allow_origin(origin);
        if allow_origin != "*" {
            // The answer differs by origin: caches must keep them apart.
            response.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if !origin.to_str().is_ok_and(|o| self.allows(o)) {
            return;
        }
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.credentials {
            response.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose_headers {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(text: &str) -> Cors {
        Cors::new(&toml::from_str(text).unwrap())
    }

    fn preflight_headers(origin: &'static str, method: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static(method),
        );
        headers.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("content-type, x-api-key"),
        );
        headers
    }

    #[test]
    fn preflights_are_answered_for_allowed_origins_and_methods_only() {
        let policy = cors(
            r#"origins = ["https://app.example.com", "https://*.example.org"]
methods = ["GET", "PUT"]
headers = ["content-type", "x-api-key"]
credentials = true
max_age = "1h""#,
        );
        let ok = policy.preflight(&preflight_headers("https://app.example.com", "PUT"));
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        let h = ok.headers();
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT");
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, x-api-key"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "3600");
        let sub = policy.preflight(&preflight_headers("https://eu.shop.example.org", "GET"));
        assert_eq!(sub.status(), StatusCode::NO_CONTENT);
        for (origin, method) in [
            ("https://evil.example.net", "GET"),
            ("https://example.org", "GET"),
            ("http://app.example.com", "GET"),
            ("https://app.example.com", "DELETE"),
        ] {
            let refused = policy.preflight(&preflight_headers(origin, method));
            assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{origin} {method}");
            assert!(
                !refused
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            );
        }
    }

    #[test]
    fn responses_get_the_policy_and_lose_the_upstreams() {
        let open = cors(
            r#"origins = ["*"]
headers = ["*"]
expose_headers = ["x-request-id"]"#,
        );
        let mut response = HeaderMap::new();
        response.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://stale.example"),
        );
        open.decorate(
            Some(&HeaderValue::from_static("https://any.example")),
            &mut response,
        );
        assert_eq!(response[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(
            response[header::ACCESS_CONTROL_EXPOSE_HEADERS],
            "x-request-id"
        );
        assert!(!response.contains_key(header::VARY));
        let echoed = open.preflight(&preflight_headers("https://any.example", "POST"));
        assert_eq!(
            echoed.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, x-api-key"
        );

        let strict = cors(r#"origins = ["https://app.example.com"]"#);
        let mut response = HeaderMap::new();
        response.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        strict.decorate(
            Some(&HeaderValue::from_static("https://evil.example")),
            &mut response,
        );
        assert!(!response.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(response[header::VARY], "Origin");
    }
}
