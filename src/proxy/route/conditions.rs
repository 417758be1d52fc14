//! A route's conditions beyond host and path prefix: exact or regex path, method, header,
//! query parameter, cookie and client address. They are checked only once host and prefix
//! match, and a route without any pays nothing for them.

use std::borrow::Cow;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::config::{FieldMatch, IpBlock, RouteConfig, whole_value_regex};

/// What a route is matched against.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// May carry a port; it is ignored.
    pub host: &'a str,
    /// The normalised path.
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    /// The resolved client (PROXY protocol, trusted `X-Forwarded-For`).
    pub client: IpAddr,
}

/// How a field's value is judged.
#[derive(Debug)]
enum ValueTest {
    Present,
    Absent,
    Exact(String),
    Regex(Regex),
}

impl ValueTest {
    fn describe(&self) -> String {
        match self {
            ValueTest::Present => "is present".into(),
            ValueTest::Absent => "is absent".into(),
            ValueTest::Exact(value) => format!("is {value:?}"),
            ValueTest::Regex(re) => format!("matches /{}/", re.as_str()),
        }
    }

    fn from_config(field: &FieldMatch) -> Self {
        match (&field.value, &field.regex) {
            _ if field.absent => ValueTest::Absent,
            (Some(value), _) => ValueTest::Exact(value.clone()),
            // Validation compiled it already; a pattern that fails here matches nothing.
            (None, Some(pattern)) => whole_value_regex(pattern)
                .map(ValueTest::Regex)
                .unwrap_or(ValueTest::Absent),
            (None, None) => ValueTest::Present,
        }
    }

    /// Judges a field by its values (a repeated header or parameter holds when any of its
    /// values does).
    fn holds<'v>(&self, mut values: impl Iterator<Item = Cow<'v, str>>) -> bool {
        match self {
            ValueTest::Present => values.next().is_some(),
            ValueTest::Absent => values.next().is_none(),
            ValueTest::Exact(expected) => values.any(|v| v == expected.as_str()),
            ValueTest::Regex(re) => values.any(|v| re.is_match(&v)),
        }
    }
}

#[derive(Debug)]
enum Condition {
    ExactPath(String),
    PathRegex(Regex),
    Methods(Vec<Method>),
    Header(HeaderName, ValueTest),
    Query(String, ValueTest),
    Cookie(String, ValueTest),
    Clients(Vec<IpBlock>),
}

impl Condition {
    /// The condition in words, for the routing simulation.
    fn describe(&self) -> String {
        match self {
            Condition::ExactPath(path) => format!("path is {path:?}"),
            Condition::PathRegex(re) => format!("path matches /{}/", re.as_str()),
            Condition::Methods(methods) => {
                let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
                format!("method is one of {}", names.join(", "))
            }
            Condition::Header(name, test) => format!("header {name} {}", test.describe()),
            Condition::Query(name, test) => format!("query parameter {name} {}", test.describe()),
            Condition::Cookie(name, test) => format!("cookie {name} {}", test.describe()),
            Condition::Clients(blocks) => {
                let shown: Vec<String> = blocks.iter().map(|b| format!("{b:?}")).collect();
                format!("client is in {}", shown.join(", "))
            }
        }
    }

    fn holds(&self, request: &RouteRequest<'_>) -> bool {
        match self {
            Condition::ExactPath(path) => request.path == path,
            Condition::PathRegex(re) => re.is_match(request.path),
            Condition::Methods(methods) => methods.contains(request.method),
            Condition::Header(name, test) => test.holds(
                request
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(Cow::Borrowed),
            ),
            Condition::Query(name, test) => test.holds(
                form_urlencoded::parse(request.query.unwrap_or_default().as_bytes())
                    .filter(|(key, _)| key == name)
                    .map(|(_, value)| value),
            ),
            Condition::Cookie(name, test) => test.holds(
                crate::balancer::cookie_value(request.headers, name)
                    .into_iter()
                    .map(Cow::Borrowed),
            ),
            Condition::Clients(blocks) => blocks.iter().any(|b| b.contains(request.client)),
        }
    }
}

/// Every condition of a route past host and prefix; all must hold.
#[derive(Debug, Default)]
pub struct Conditions(Vec<Condition>);

impl Conditions {
    pub fn from_config(config: &RouteConfig) -> Self {
        let mut all = Vec::new();
        if let Some(path) = &config.path {
            all.push(Condition::ExactPath(path.clone()));
        }
        if let Some(pattern) = &config.path_regex
            && let Ok(re) = whole_value_regex(pattern)
        {
            all.push(Condition::PathRegex(re));
        }
        let methods: Vec<Method> = config
            .methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        if !methods.is_empty() {
            all.push(Condition::Methods(methods));
        }
        for field in &config.headers {
            if let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) {
                all.push(Condition::Header(name, ValueTest::from_config(field)));
            }
        }
        for field in &config.query {
            all.push(Condition::Query(
                field.name.clone(),
                ValueTest::from_config(field),
            ));
        }
        for field in &config.cookies {
            all.push(Condition::Cookie(
                field.name.clone(),
                ValueTest::from_config(field),
            ));
        }
        if !config.clients.is_empty() {
            all.push(Condition::Clients(config.clients.clone()));
        }
        Self(all)
    }

    /// Inlined for the common case (no conditions); the checks themselves are not.
    #[inline]
    pub fn hold(&self, request: &RouteRequest<'_>) -> bool {
        self.0.is_empty() || self.all_hold(request)
    }

    /// Each condition in words and whether it holds (the routing simulation).
    pub fn explain(&self, request: &RouteRequest<'_>) -> Vec<(String, bool)> {
        self.0
            .iter()
            .map(|c| (c.describe(), c.holds(request)))
            .collect()
    }

    #[inline(never)]
    fn all_hold(&self, request: &RouteRequest<'_>) -> bool {
        self.0.iter().all(|c| c.holds(request))
    }
}
