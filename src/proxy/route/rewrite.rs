//! What a route changes on the way: the path sent upstream, and headers in both
//! directions.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use regex::Regex;

use super::answer::replace_prefix;
use crate::config::{HeaderRulesConfig, PathRewriteConfig, TemplatePart, parse_template};

/// `X-Forwarded-Prefix`: the part of the path a rewrite took away.
pub static FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

#[derive(Debug)]
pub enum PathRewrite {
    /// Replaces the route's prefix (the first) with the second (empty when stripped).
    Prefix(String, String),
    /// Replaces the first match.
    Regex(Regex, String),
}

impl PathRewrite {
    pub fn new(config: &PathRewriteConfig, route_prefix: &str) -> Option<Self> {
        if config.strip_prefix {
            return Some(PathRewrite::Prefix(route_prefix.to_owned(), String::new()));
        }
        if let Some(to) = &config.replace_prefix {
            return Some(PathRewrite::Prefix(route_prefix.to_owned(), to.clone()));
        }
        let (pattern, replacement) = (config.regex.as_ref()?, config.replacement.as_ref()?);
        Regex::new(pattern)
            .ok()
            .map(|re| PathRewrite::Regex(re, replacement.clone()))
    }

    /// The new path, and for a prefix change the prefix the upstream no longer sees
    /// (for `X-Forwarded-Prefix`).
    pub fn apply<'p>(&'p self, path: &str) -> (String, Option<&'p str>) {
        match self {
            PathRewrite::Prefix(old, new) => {
                let prefix = old.trim_end_matches('/');
                (
                    replace_prefix(path, old, new),
                    Some(prefix).filter(|p| !p.is_empty()),
                )
            }
            PathRewrite::Regex(re, replacement) => {
                let rewritten = re.replace(path, replacement.as_str());
                let rewritten = if rewritten.starts_with('/') {
                    rewritten.into_owned()
                } else {
                    format!("/{rewritten}")
                };
                (rewritten, None)
            }
        }
    }
}

/// The values a header rule's `${…}` variables stand for on one request.
#[derive(Debug, Clone, Copy)]
pub struct HeaderVariables<'a> {
    pub client_ip: IpAddr,
    pub request_id: &'a HeaderValue,
    pub route: &'a str,
    /// Empty for a route that answers itself.
    pub pool: &'a str,
}

#[derive(Debug)]
enum Template {
    /// No variables: built once.
    Fixed(HeaderValue),
    Parts(Vec<TemplatePart>),
}

impl Template {
    fn parse(text: &str) -> Option<Self> {
        let parts = parse_template(text).ok()?;
        if parts.iter().all(|p| matches!(p, TemplatePart::Text(_))) {
            return HeaderValue::from_str(text).ok().map(Template::Fixed);
        }
        Some(Template::Parts(parts))
    }

    fn value(&self, vars: &HeaderVariables<'_>) -> Option<HeaderValue> {
        let parts = match self {
            Template::Fixed(value) => return Some(value.clone()),
            Template::Parts(parts) => parts,
        };
        let mut text = String::new();
        for part in parts {
            let piece: Cow<'_, str> = match part {
                TemplatePart::Text(t) => Cow::Borrowed(t),
                TemplatePart::Variable("client_ip") => Cow::Owned(vars.client_ip.to_string()),
                TemplatePart::Variable("request_id") => {
                    Cow::Borrowed(vars.request_id.to_str().unwrap_or_default())
                }
                TemplatePart::Variable("route") => Cow::Borrowed(vars.route),
                TemplatePart::Variable("pool") => Cow::Borrowed(vars.pool),
                TemplatePart::Variable(_) => Cow::Borrowed(""),
            };
            text.push_str(&piece);
        }
        // A route name is config text; a value that makes no header is left out.
        HeaderValue::from_str(&text).ok()
    }
}

/// Header changes, applied in the order remove, set, add.
#[derive(Debug, Default)]
pub struct HeaderRules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Template)>,
    add: Vec<(HeaderName, Template)>,
}

impl HeaderRules {
    pub fn new(config: &HeaderRulesConfig) -> Self {
        let named = |entries: &std::collections::BTreeMap<String, String>| {
            entries
                .iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_bytes(name.as_bytes()).ok()?,
                        Template::parse(value)?,
                    ))
                })
                .collect()
        };
        Self {
            remove: config
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: named(&config.set),
            add: named(&config.add),
        }
    }

    pub fn apply(&self, headers: &mut HeaderMap, vars: &HeaderVariables<'_>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, template) in &self.set {
            if let Some(value) = template.value(vars) {
                headers.insert(name.clone(), value);
            }
        }
        for (name, template) in &self.add {
            if let Some(value) = template.value(vars) {
                headers.append(name.clone(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_regex_rewrites() {
        let strip = PathRewrite::Prefix("/api".into(), String::new());
        assert_eq!(
            strip.apply("/api/users/7"),
            ("/users/7".into(), Some("/api"))
        );
        assert_eq!(strip.apply("/api"), ("/".into(), Some("/api")));
        let replace = PathRewrite::Prefix("/api/".into(), "/v2".into());
        assert_eq!(
            replace.apply("/api/users"),
            ("/v2/users".into(), Some("/api"))
        );
        let regex = PathRewrite::Regex(
            Regex::new(r"^/users/(?P<id>\d+)/profile$").unwrap(),
            "/profiles/$id".into(),
        );
        assert_eq!(
            regex.apply("/users/42/profile"),
            ("/profiles/42".into(), None)
        );
        assert_eq!(regex.apply("/other"), ("/other".into(), None));
    }

    #[test]
    fn rules_remove_then_set_then_add_with_variables() {
        let config: HeaderRulesConfig = toml::from_str(
            r#"
remove = ["x-debug"]
set = { "x-client" = "${client_ip}", "x-env" = "prod" }
add = { "x-trail" = "${route}/${pool}/${request_id}" }
"#,
        )
        .unwrap();
        let rules = HeaderRules::new(&config);
        let mut headers = HeaderMap::new();
        headers.insert("x-debug", HeaderValue::from_static("1"));
        headers.insert("x-env", HeaderValue::from_static("dev"));
        headers.insert("x-trail", HeaderValue::from_static("earlier"));
        let request_id = HeaderValue::from_static("r-1");
        rules.apply(
            &mut headers,
            &HeaderVariables {
                client_ip: "192.0.2.9".parse().unwrap(),
                request_id: &request_id,
                route: "api",
                pool: "v2",
            },
        );
        assert!(!headers.contains_key("x-debug"));
        assert_eq!(headers["x-env"], "prod");
        assert_eq!(headers["x-client"], "192.0.2.9");
        let trail: Vec<_> = headers.get_all("x-trail").iter().collect();
        assert_eq!(trail, ["earlier", "api/v2/r-1"]);
    }
}
