//! The file model: what `weir.toml` may contain. Unknown keys are errors, every optional key
//! has a named default in [`super::defaults`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::defaults::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub headers: HeadersConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub cache: CacheConfig,
    pub redis: Option<RedisConfig>,
}

/// Process-wide settings of the client side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(with = "humantime_serde", default = "d_drain")]
    pub drain_timeout: Duration,
    #[serde(with = "humantime_serde", default = "d_header")]
    pub request_header_timeout: Duration,
    #[serde(with = "humantime_serde", default = "d_client_idle")]
    pub client_idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            request_header_timeout: DEFAULT_REQUEST_HEADER_TIMEOUT,
            client_idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    /// `ip:port`; port 0 picks a free port (tests, demo).
    pub address: SocketAddr,
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedForMode {
    /// Add the client address to what the client sent (behind another proxy).
    #[default]
    Append,
    /// Replace whatever the client sent with the client address (at the edge).
    Replace,
    /// Neither add nor strip.
    Off,
}

/// Which headers weir adds on the way to and from upstreams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    #[serde(default)]
    pub x_forwarded_for: ForwardedForMode,
    #[serde(default = "d_true")]
    pub x_forwarded_proto: bool,
    /// RFC 7239 `Forwarded` header.
    #[serde(default)]
    pub forwarded: bool,
    #[serde(default = "d_true")]
    pub via: bool,
    #[serde(default = "d_request_id_header")]
    pub request_id_header: String,
    #[serde(default = "d_proxy_name")]
    pub proxy_name: String,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            x_forwarded_for: ForwardedForMode::Append,
            x_forwarded_proto: true,
            forwarded: false,
            via: true,
            request_id_header: DEFAULT_REQUEST_ID_HEADER.to_owned(),
            proxy_name: DEFAULT_PROXY_NAME.to_owned(),
        }
    }
}

/// Routes are tried in file order; the first whose host and path prefix match wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: Option<String>,
    /// Exact host (`api.example.com`) or one-label wildcard (`*.example.com`); absent = any.
    pub host: Option<String>,
    /// Matches on whole path segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[serde(default = "d_path_prefix")]
    pub path_prefix: String,
    pub pool: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    RoundRobin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default)]
    pub strategy: Strategy,
    /// May be empty: instances can register later through the admin port.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    #[serde(with = "humantime_serde", default = "d_connect")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde", default = "d_response")]
    pub response_timeout: Duration,
    #[serde(with = "humantime_serde", default = "d_upstream_idle")]
    pub idle_timeout: Duration,
    #[serde(default = "d_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// Send the client's `Host` upstream (true) or the endpoint's address (false).
    #[serde(default = "d_true")]
    pub preserve_host: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `host:port`; a host name is resolved when connecting.
    pub address: String,
    #[serde(default = "d_weight")]
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "d_admin_address")]
    pub address: SocketAddr,
    /// Bearer token; prefer `token_env` so the secret stays out of the file.
    pub token: Option<String>,
    #[serde(default = "d_admin_token_env")]
    pub token_env: String,
}

/// Placeholder for the two-tier cache; only `enabled = false` is accepted until it lands.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "d_cache_bytes")]
    pub memory_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            memory_bytes: DEFAULT_CACHE_MEMORY_BYTES,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://…`.
    pub url: String,
}

fn d_drain() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}
fn d_header() -> Duration {
    DEFAULT_REQUEST_HEADER_TIMEOUT
}
fn d_client_idle() -> Duration {
    DEFAULT_CLIENT_IDLE_TIMEOUT
}
fn d_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn d_true() -> bool {
    true
}
fn d_request_id_header() -> String {
    DEFAULT_REQUEST_ID_HEADER.to_owned()
}
fn d_proxy_name() -> String {
    DEFAULT_PROXY_NAME.to_owned()
}
fn d_path_prefix() -> String {
    "/".to_owned()
}
fn d_connect() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn d_response() -> Duration {
    DEFAULT_RESPONSE_TIMEOUT
}
fn d_upstream_idle() -> Duration {
    DEFAULT_UPSTREAM_IDLE_TIMEOUT
}
fn d_max_idle() -> usize {
    DEFAULT_MAX_IDLE_PER_ENDPOINT
}
fn d_weight() -> u32 {
    DEFAULT_WEIGHT
}
fn d_admin_address() -> SocketAddr {
    // A constant literal: parsing cannot fail.
    DEFAULT_ADMIN_ADDRESS
        .parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9901)))
}
fn d_admin_token_env() -> String {
    DEFAULT_ADMIN_TOKEN_ENV.to_owned()
}
fn d_cache_bytes() -> u64 {
    DEFAULT_CACHE_MEMORY_BYTES
}
