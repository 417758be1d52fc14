//! Answers a route gives itself: redirects and fixed responses.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};

use super::conditions::RouteRequest;
use super::split_port;
use crate::config::{RedirectConfig, RespondConfig};
use crate::proxy::body::ResponseBody;

#[derive(Debug)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    /// The route's prefix and what replaces it.
    prefix: Option<(String, String)>,
    status: Option<StatusCode>,
    drop_query: bool,
}

impl Redirect {
    pub fn new(config: &RedirectConfig, route_prefix: &str) -> Self {
        Self {
            scheme: config.scheme.clone(),
            host: config.host.clone(),
            port: config.port,
            path: config.path.clone(),
            prefix: config
                .prefix
                .clone()
                .map(|to| (route_prefix.to_owned(), to)),
            status: config.status.and_then(|s| StatusCode::from_u16(s).ok()),
            drop_query: config.drop_query,
        }
    }

    /// The location for a request the client sent with `request_scheme` (`http` or
    /// `https`); `None` when the parts make no valid URI (a request host that is not one),
    /// which the caller answers as a bad request.
    pub fn location(&self, from: &RouteRequest<'_>, request_scheme: &str) -> Option<HeaderValue> {
        let scheme = self.scheme.as_deref().unwrap_or(request_scheme);
        let (request_host, request_port) = match split_port(from.host) {
            (name, Some(port)) => match port.parse::<u16>() {
                Ok(port) => (name, Some(port)),
                Err(_) => (from.host, None),
            },
            (name, None) => (name, None),
        };
        let host = self.host.as_deref().unwrap_or(request_host);
        // A port the request named stays only while the scheme and host stay.
        let port = self.port.or_else(|| {
            let same = scheme == request_scheme && self.host.is_none();
            request_port.filter(|_| same)
        });
        let default_port = if scheme == "https" { 443 } else { 80 };
        let path = match (&self.path, &self.prefix) {
            (Some(path), _) => path.clone(),
            (None, Some((old, new))) => replace_prefix(from.path, old, new),
            (None, None) => from.path.to_owned(),
        };
        let mut location = format!("{scheme}://{host}");
        if let Some(port) = port.filter(|p| *p != default_port) {
            location.push_str(&format!(":{port}"));
        }
        location.push_str(&path);
        if let Some(query) = from.query.filter(|q| !self.drop_query && !q.is_empty()) {
            location.push('?');
            location.push_str(query);
        }
        location
            .parse::<http::Uri>()
            .ok()
            .and_then(|_| HeaderValue::from_str(&location).ok())
    }

    /// The redirect's status: the configured one, or 301 for GET and HEAD and 308 (which
    /// keeps method and body) for the others.
    pub fn status(&self, method: &Method) -> StatusCode {
        self.status.unwrap_or(match *method {
            Method::GET | Method::HEAD => StatusCode::MOVED_PERMANENTLY,
            _ => StatusCode::PERMANENT_REDIRECT,
        })
    }

    pub fn response(&self, location: HeaderValue, method: &Method) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = self.status(method);
        response.headers_mut().insert(header::LOCATION, location);
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        response
    }
}

/// Replaces `old` at the start of `path` with `new`, on segment boundaries (the route
/// matched `old`, so it is there).
pub fn replace_prefix(path: &str, old: &str, new: &str) -> String {
    let rest = path.strip_prefix(old.trim_end_matches('/')).unwrap_or(path);
    let joined = format!("{}{}", new.trim_end_matches('/'), rest);
    if joined.is_empty() {
        "/".to_owned()
    } else if !joined.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

/// A fixed response, built once.
#[derive(Debug)]
pub struct FixedResponse {
    status: StatusCode,
    body: Bytes,
    content_type: HeaderValue,
}

impl FixedResponse {
    pub fn new(config: &RespondConfig) -> Self {
        Self {
            status: StatusCode::from_u16(config.status).unwrap_or(StatusCode::OK),
            body: Bytes::from(config.body.clone()),
            content_type: HeaderValue::from_str(&config.content_type)
                .unwrap_or(HeaderValue::from_static("text/plain")),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn response(&self, method: &Method) -> Response<ResponseBody> {
        let body = if *method == Method::HEAD {
            ResponseBody::empty()
        } else {
            ResponseBody::full(self.body.clone())
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, self.content_type.clone());
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_HEADERS: std::sync::LazyLock<http::HeaderMap> =
        std::sync::LazyLock::new(http::HeaderMap::new);

    /// Where `redirect` sends a GET with these parts.
    fn location(
        redirect: &Redirect,
        (scheme, host, path, query): (&str, &str, &str, Option<&str>),
    ) -> HeaderValue {
        let request = RouteRequest {
            host,
            path,
            method: &Method::GET,
            headers: &NO_HEADERS,
            query,
            client: std::net::Ipv4Addr::LOCALHOST.into(),
        };
        redirect.location(&request, scheme).unwrap()
    }

    fn redirect(text: &str) -> Redirect {
        let config: RedirectConfig = toml::from_str(text).unwrap();
        Redirect::new(&config, "/old")
    }

    #[test]
    fn https_keeps_host_path_and_query_and_drops_the_http_port() {
        let to_https = redirect(r#"scheme = "https""#);
        let found = location(
            &to_https,
            ("http", "example.com:8080", "/a/b", Some("x=1&y=2")),
        );
        assert_eq!(found, "https://example.com/a/b?x=1&y=2");
        assert_eq!(to_https.status(&Method::GET), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            to_https.status(&Method::POST),
            StatusCode::PERMANENT_REDIRECT
        );
        let with_port = redirect("scheme = \"https\"\nport = 8443");
        assert_eq!(
            location(&with_port, ("http", "example.com", "/", None)),
            "https://example.com:8443/"
        );
    }

    #[test]
    fn prefix_path_and_host_replacements() {
        let moved = redirect("prefix = \"/new\"\nstatus = 302\ndrop_query = true");
        assert_eq!(
            location(&moved, ("https", "example.com", "/old/page", Some("q=1"))),
            "https://example.com/new/page"
        );
        assert_eq!(moved.status(&Method::POST), StatusCode::FOUND);
        let elsewhere = redirect("host = \"www.example.org\"\npath = \"/\"");
        assert_eq!(
            location(&elsewhere, ("http", "example.com:8080", "/x", None)),
            "http://www.example.org/"
        );
        assert_eq!(
            location(
                &redirect("scheme = \"https\""),
                ("http", "[::1]:8080", "/", None)
            ),
            "https://[::1]/"
        );
    }

    #[test]
    fn prefixes_are_replaced_on_segments() {
        assert_eq!(replace_prefix("/api/users", "/api", ""), "/users");
        assert_eq!(replace_prefix("/api", "/api", ""), "/");
        assert_eq!(replace_prefix("/api/users", "/api/", "/v2"), "/v2/users");
        assert_eq!(replace_prefix("/api/users", "/api", "/v2/"), "/v2/users");
    }
}
