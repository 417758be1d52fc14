//! The file model: what `weir.toml` may contain. Unknown keys are errors, every optional key
//! has a named default in [`super::defaults`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

pub use super::cache::{CacheConfig, CacheTier, QueryKey, RedisConfig, RouteCacheConfig};
pub use super::control::{
    ActionConfig, AutoscaleConfig, ControlConfig, DEFAULT_ANOMALY_Z, DEFAULT_CONTROL_INTERVAL,
    DryRunFollows, ScheduleRule, Window, redact_url,
};
use super::defaults::*;
use super::route::RouteConfig;

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    #[serde(default)]
    pub control: ControlConfig,
    /// How names in `{ dns = .. }` and `{ srv = .. }` endpoints are resolved.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Spans sent to an OpenTelemetry collector; absent: none are made.
    pub trace_export: Option<TraceExportConfig>,
}

/// OTLP trace export: the request, each upstream attempt and cache lookups, as spans.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceExportConfig {
    /// Collector URL: `http(s)://host:4318/v1/traces` for `http_protobuf`,
    /// `http://host:4317` for `grpc`.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Share of traces weir starts that are recorded; a client's `traceparent` decides
    /// for the traces it starts (its sampled flag), as OpenTelemetry's parent-based
    /// sampler does.
    #[serde(default = "d_sample_ratio")]
    pub sample_ratio: f64,
    /// Spans waiting for export; when full (a slow or absent collector), new spans are
    /// dropped and counted, and requests never wait.
    #[serde(default = "d_trace_queue")]
    pub queue_spans: usize,
    /// Most spans in one export request.
    #[serde(default = "d_trace_batch")]
    pub batch_spans: usize,
    /// A batch is sent when full or when this has passed since its first span.
    #[serde(with = "humantime_serde", default = "d_trace_flush")]
    pub flush_interval: Duration,
    /// Time for one export request.
    #[serde(with = "humantime_serde", default = "d_trace_timeout")]
    pub timeout: Duration,
    /// `service.name` of the spans' resource.
    #[serde(default = "d_service_name")]
    pub service_name: String,
}

/// How spans reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (port 4318).
    #[default]
    HttpProtobuf,
    /// OTLP/gRPC (port 4317).
    Grpc,
}

/// Service discovery by DNS: where names are asked and how often they are asked again.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers (`ip:port`), asked over UDP with TCP for truncated answers. Empty: the
    /// system's (`/etc/resolv.conf`, and `/etc/hosts`).
    #[serde(default)]
    pub servers: Vec<SocketAddr>,
    /// A name is asked again when its records' TTL ends, but no sooner than this (records
    /// with TTL 0 would otherwise be asked for in a loop)…
    #[serde(with = "humantime_serde", default = "d_dns_min_ttl")]
    pub min_ttl: Duration,
    /// …and no later than this, so a long TTL cannot hide a moved endpoint for hours.
    #[serde(with = "humantime_serde", default = "d_dns_max_ttl")]
    pub max_ttl: Duration,
    /// Time for one query (each of `attempts`).
    #[serde(with = "humantime_serde", default = "d_dns_timeout")]
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            min_ttl: DEFAULT_DNS_MIN_TTL,
            max_ttl: DEFAULT_DNS_MAX_TTL,
            timeout: DEFAULT_DNS_TIMEOUT,
        }
    }
}

/// Process-wide settings of the client side.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Serving runtimes: 0 = one per core; N = N; each a single-threaded runtime on its
    /// own thread accepting on its own `SO_REUSEPORT` socket (nginx's workers), so no
    /// work stealing and no task crossing threads. 1 = everything (admin and control
    /// loop too) on one thread.
    #[serde(default)]
    pub threads: usize,
    #[serde(with = "humantime_serde", default = "d_drain")]
    pub drain_timeout: Duration,
    /// Time a client has to send a complete request head (slowloris): from the
    /// connection's start for its first head, from a later head's first byte for the
    /// others, so that it does not also bound keep-alive idleness.
    #[serde(with = "humantime_serde", default = "d_header")]
    pub request_header_timeout: Duration,
    /// A client connection with no request in flight (between keep-alive requests) is
    /// closed after this (its accept loop looks once a second, or four times per timeout
    /// if that is shorter: it closes within one such period after the timeout).
    #[serde(with = "humantime_serde", default = "d_client_idle")]
    pub client_idle_timeout: Duration,
    /// A request body must arrive within this time plus one second per
    /// `min_request_body_rate` bytes received; a trickle gets 408.
    #[serde(with = "humantime_serde", default = "d_body_timeout")]
    pub request_body_timeout: Duration,
    /// Bytes that extend the body deadline by one second; 0 turns the body deadline off.
    #[serde(default = "d_body_rate")]
    pub min_request_body_rate: u64,
    /// One JSON-able line per request on the `weir::access` log target.
    #[serde(default)]
    pub access_log: bool,
    /// gzip/brotli for compressible responses over 1 KiB that the upstream did not
    /// compress, when the client accepts it (with `Vary: Accept-Encoding`).
    #[serde(default)]
    pub compression: bool,
    /// Largest request head accepted (HTTP/1 request line + headers, HTTP/2 header list).
    #[serde(default = "d_max_header_bytes")]
    pub max_request_header_bytes: usize,
    /// Most header fields in one request; more gets 431.
    #[serde(default = "d_max_headers")]
    pub max_request_headers: usize,
    /// Largest request body (bytes) on routes that set no `max_body_bytes`; more gets 413.
    /// 0 = no limit.
    #[serde(default)]
    pub max_request_body_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            request_header_timeout: DEFAULT_REQUEST_HEADER_TIMEOUT,
            client_idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT,
            max_request_header_bytes: DEFAULT_MAX_REQUEST_HEADER_BYTES,
            max_request_headers: DEFAULT_MAX_REQUEST_HEADERS,
            max_request_body_bytes: DEFAULT_MAX_REQUEST_BODY_BYTES,
            access_log: false,
            compression: false,
            request_body_timeout: DEFAULT_REQUEST_BODY_TIMEOUT,
            min_request_body_rate: DEFAULT_MIN_REQUEST_BODY_RATE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    /// `ip:port`; port 0 picks a free port (tests, demo).
    pub address: SocketAddr,
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    /// Terminate TLS on this listener.
    pub tls: Option<ListenerTlsConfig>,
    /// Every connection starts with a PROXY protocol header (v1 or v2, as an L4 load
    /// balancer sends): the client address is the one it carries. A connection without a
    /// valid header is closed, never read as HTTP.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDR blocks): when the
    /// connection comes from one, the client is the right-most hop not in this list (as
    /// nginx's `real_ip_recursive`). Empty: the connection's address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<IpBlock>,
}

/// An address or CIDR block (`10.0.0.0/8`, `192.0.2.7`, `::1`): `trusted_proxies`, a
/// route's `allow` and `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock(pub ipnet::IpNet);

impl<'de> Deserialize<'de> for IpBlock {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(IpBlock)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "{text:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\")"
                ))
            })
    }
}

impl IpBlock {
    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

/// Certificates of a TLS listener; the first is used when SNI matches none.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    pub certificates: Vec<CertificateConfig>,
    /// Client certificates (mutual TLS). Absent: none are asked for.
    pub client_auth: Option<ClientAuthConfig>,
}

/// Mutual TLS on a listener: clients present certificates that chain to `ca_file`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca_file: std::path::PathBuf,
    /// true: a client without a valid certificate cannot connect. false: it may connect
    /// without one, but a certificate it presents must verify.
    #[serde(default = "d_true")]
    pub required: bool,
    /// Request header that tells upstreams who the client is, in Envoy's
    /// `x-forwarded-client-cert` form (`Hash=…;Subject="…";URI=…;DNS=…`). The header is
    /// removed from every client request on every listener, so only weir can set it.
    /// Absent: nothing is sent.
    pub header: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file: the certificate, then its chain.
    pub cert: std::path::PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    /// SNI names served with it: exact or `*.domain`.
    #[serde(default)]
    pub names: Vec<String>,
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Continue (or start) a W3C trace: send `traceparent` upstream with weir's span.
    #[serde(default = "d_true")]
    pub traceparent: bool,
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
            traceparent: true,
        }
    }
}

/// A GCRA rate limit: `requests_per_second` sustained, bursts of `burst`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_second: u32,
    /// Defaults to one second's worth.
    pub burst: Option<u32>,
    /// `client_ip` (default), `header:NAME` (e.g. an API key), or `route` (one bucket).
    #[serde(default = "d_rate_key")]
    pub key: String,
    /// One bucket per key across every instance sharing `[redis]` (GCRA in a Lua script);
    /// while Redis is unreachable, each instance falls back to its own bucket.
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx's algorithm).
    Weighted,
    /// Power of two choices on in-flight requests per unit of weight.
    LeastConnections,
    /// Peak-EWMA latency × load, penalised by errors (see [`ScoreWeights`]).
    Score,
    /// Ring hash on a request key, for session affinity.
    ConsistentHash,
}

/// How weir speaks to a pool's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over cleartext: many requests on one connection.
    H2c,
    /// HTTP/2 over TLS: ALPN offers only `h2`.
    H2,
    /// TLS with ALPN offering `h2` and `http/1.1`: each connection uses what the endpoint
    /// picks.
    Auto,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Connect to endpoints over TLS (certificates always verified).
    pub tls: Option<UpstreamTlsConfig>,
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
    /// A newly available endpoint ramps its share up over this window (0 = off).
    #[serde(with = "humantime_serde", default)]
    pub slow_start: Duration,
    /// When no endpoint is available by health, send to all non-draining ones instead of
    /// failing every request (panic mode).
    #[serde(default = "d_true")]
    pub fail_open: bool,
    /// Requests in flight to the whole pool; above it, 503 with `Retry-After` (0 = no limit).
    #[serde(default)]
    pub max_in_flight: u64,
    /// Requests in flight to one endpoint; a full endpoint is skipped (0 = no limit).
    #[serde(default)]
    pub max_in_flight_per_endpoint: u64,
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub passive: PassiveHealthConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Required with `strategy = "consistent_hash"`.
    pub hash: Option<HashConfig>,
    /// Pin a client to the endpoint that served it through this cookie (any strategy).
    pub sticky_cookie: Option<String>,
    #[serde(default)]
    pub score: ScoreWeights,
    /// Send a PROXY protocol header naming the client first on every connection to the
    /// endpoints (HAProxy's `send-proxy`): such connections serve one client connection
    /// each, never shared.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// Hedged requests (off when absent): a request whose attempt has no response head
    /// after a delay gets a second attempt on another endpoint; the first answer wins.
    pub hedge: Option<HedgeConfig>,
}

/// Hedged requests (Dean and Barroso, "The Tail at Scale"; Envoy's
/// `hedge_on_per_try_timeout`): an idempotent request whose first attempt has waited
/// `delay` for its response head gets one more attempt on another endpoint, paid from the
/// retry budget; the first usable answer wins and the other attempt is cancelled.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeConfig {
    /// A fixed wait (`"50ms"`), or a quantile of the pool's recent times to response head
    /// (`"p95"`, `"p99.9"`) times `factor`.
    pub delay: HedgeDelay,
    /// Multiplies a quantile delay (a fixed one is used as written).
    #[serde(default = "d_hedge_factor")]
    pub factor: f64,
    /// A quantile delay is never shorter than this, so that ordinary jitter on a fast
    /// pool does not double its requests.
    #[serde(with = "humantime_serde", default = "d_hedge_min_delay")]
    pub min_delay: Duration,
    /// Also hedge POST and PATCH (the upstream may then carry out such a request twice).
    #[serde(default)]
    pub non_idempotent: bool,
}

/// When a hedge is sent.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub enum HedgeDelay {
    /// After this long.
    Fixed(Duration),
    /// After this quantile (0 < q < 1) of the pool's recent times to response head.
    Quantile(f64),
}

impl TryFrom<String> for HedgeDelay {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if let Some(percent) = text.strip_prefix('p') {
            let percent: f64 = percent
                .parse()
                .map_err(|_| format!("{text:?} is not a percentile like \"p95\""))?;
            if !(percent > 0.0 && percent < 100.0) {
                return Err(format!(
                    "{text:?}: the percentile must be above 0 and below 100"
                ));
            }
            return Ok(HedgeDelay::Quantile(percent / 100.0));
        }
        humantime::parse_duration(&text)
            .map(HedgeDelay::Fixed)
            .map_err(|e| {
                format!("{text:?} is neither a duration (\"50ms\") nor a percentile (\"p95\"): {e}")
            })
    }
}

/// Which PROXY protocol header a pool sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocolVersion {
    /// The text form (`PROXY TCP4 …`).
    V1,
    /// The binary form.
    V2,
}

/// TLS to a pool's endpoints. Certificates are always verified.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM bundle of trusted CAs; absent = the bundled Mozilla roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Name to verify (and send as SNI); absent = the endpoint's host.
    pub server_name: Option<String>,
}

/// Active HTTP health checks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "d_health_path")]
    pub path: String,
    /// Accepted statuses: exact codes; any 2xx when absent.
    #[serde(default)]
    pub expected_status: Vec<u16>,
    #[serde(with = "humantime_serde", default = "d_health_interval")]
    pub interval: Duration,
    /// Random spread of each interval, as a share of it (0.1 = ±10 %).
    #[serde(default = "d_health_jitter")]
    pub jitter: f64,
    #[serde(with = "humantime_serde", default = "d_health_timeout")]
    pub timeout: Duration,
    /// Consecutive passes to mark an endpoint up.
    #[serde(default = "d_health_rise")]
    pub rise: u32,
    /// Consecutive failures to mark an endpoint down.
    #[serde(default = "d_health_fall")]
    pub fall: u32,
    /// `Host` sent with checks; the endpoint's address when absent.
    pub host: Option<String>,
    /// Check with the standard gRPC health service (`grpc.health.v1.Health/Check`) for
    /// this service name ("" asks about the server as a whole) instead of a GET of
    /// `path`: passing means SERVING. Needs an HTTP/2 pool (`h2c` or `h2`).
    pub grpc_service: Option<String>,
}

/// Passive outlier detection and the per-endpoint circuit breaker, one state machine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthConfig {
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Open after this many failures in a row (connect errors, timeouts, resets, 5xx).
    #[serde(default = "d_consecutive_failures")]
    pub consecutive_failures: u32,
    /// Or open when this share of requests failed over `window`…
    #[serde(default = "d_error_rate")]
    pub error_rate: f64,
    /// …counting only windows with at least this many requests.
    #[serde(default = "d_error_rate_min")]
    pub min_requests: u32,
    #[serde(with = "humantime_serde", default = "d_error_window")]
    pub window: Duration,
    /// First ejection lasts this long; each repeat adds as much again, up to `max_ejection`.
    #[serde(with = "humantime_serde", default = "d_base_ejection")]
    pub base_ejection: Duration,
    #[serde(with = "humantime_serde", default = "d_max_ejection")]
    pub max_ejection: Duration,
    /// Probe requests let through when half-open; all must succeed to close.
    #[serde(default = "d_half_open_probes")]
    pub half_open_probes: u32,
    /// Largest share of the pool that may be ejected at once (one endpoint always may).
    #[serde(default = "d_max_ejected_share")]
    pub max_ejected_share: f64,
    /// An endpoint whose requests have waited for their response heads longer than this
    /// on average (and longer than `stall_factor` × its latency estimate) is stalled: new
    /// requests go to others while any is available (0 = off).
    #[serde(with = "humantime_serde", default = "d_stall_after")]
    pub stall_after: Duration,
    #[serde(default = "d_stall_factor")]
    pub stall_factor: f64,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            error_rate: DEFAULT_ERROR_RATE_THRESHOLD,
            min_requests: DEFAULT_ERROR_RATE_MIN_REQUESTS,
            window: DEFAULT_ERROR_RATE_WINDOW,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            half_open_probes: DEFAULT_HALF_OPEN_PROBES,
            max_ejected_share: DEFAULT_MAX_EJECTED_SHARE,
            stall_after: DEFAULT_STALL_AFTER,
            stall_factor: DEFAULT_STALL_FACTOR,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The connection could not be opened (the request was never sent).
    Connect,
    /// The connection failed or reset after the request was sent.
    Reset,
    /// No response head within `response_timeout`.
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Extra attempts after the first (0 = no retries).
    #[serde(default = "d_retry_attempts")]
    pub attempts: u32,
    #[serde(default = "d_retry_on")]
    pub on: Vec<RetryOn>,
    /// Upstream statuses that are retried (idempotent requests only).
    #[serde(default = "d_retry_statuses")]
    pub statuses: Vec<u16>,
    /// Also retry POST/PATCH (after the request was sent). Connect failures are always safe.
    #[serde(default)]
    pub non_idempotent: bool,
    #[serde(with = "humantime_serde", default = "d_backoff_base")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde", default = "d_backoff_cap")]
    pub backoff_cap: Duration,
    /// Retries may add at most this share of requests…
    #[serde(default = "d_budget_ratio")]
    pub budget_ratio: f64,
    /// …plus this many per second, over a 10 s window.
    #[serde(default = "d_budget_min")]
    pub budget_min_per_second: u32,
    /// Time one attempt may wait for its response head when another attempt could follow
    /// (the request is retryable on timeout and attempts remain); past it the attempt is
    /// abandoned, counted as a timeout, and the request retried elsewhere. Absent: each
    /// attempt may take the whole `response_timeout`.
    #[serde(default, with = "humantime_serde")]
    pub per_try_timeout: Option<Duration>,
    /// Request bodies up to this many bytes (by Content-Length) are buffered to be
    /// retryable; larger ones stream and are not retried after being sent. gRPC bodies
    /// (no Content-Length) stream while a copy of up to this many bytes is kept.
    #[serde(default = "d_retry_buffer")]
    pub buffer_body_bytes: u64,
    /// gRPC statuses that are retried when the upstream answered with the status alone
    /// (no message streamed yet), whatever the method: gRPC calls are all POSTs, and
    /// these codes say the call was not carried out.
    #[serde(default = "d_retry_grpc_statuses")]
    pub grpc_statuses: Vec<GrpcCode>,
}

/// The gRPC status codes, by their names in the gRPC spec written in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The number carried in `grpc-status`.
    pub fn number(self) -> u8 {
        self as u8
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            on: d_retry_on(),
            statuses: DEFAULT_RETRY_STATUSES.to_vec(),
            non_idempotent: false,
            backoff_base: DEFAULT_RETRY_BACKOFF_BASE,
            backoff_cap: DEFAULT_RETRY_BACKOFF_CAP,
            budget_ratio: DEFAULT_RETRY_BUDGET_RATIO,
            budget_min_per_second: DEFAULT_RETRY_BUDGET_MIN_PER_SECOND,
            per_try_timeout: None,
            buffer_body_bytes: DEFAULT_RETRY_BUFFER_BYTES,
            grpc_statuses: d_retry_grpc_statuses(),
        }
    }
}

/// What the consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashConfig {
    /// `client_ip`, `header:NAME` or `cookie:NAME`; requests without the key hash the
    /// client IP.
    pub key: String,
    #[serde(default = "d_vnodes")]
    pub vnodes: u32,
}

/// A parsed `hash.key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

impl HashKey {
    pub fn parse(key: &str) -> Result<Self, String> {
        if key == "client_ip" {
            return Ok(HashKey::ClientIp);
        }
        if let Some(name) = key.strip_prefix("header:") {
            return http::HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("{name:?} is not a valid header name"));
        }
        if let Some(name) = key.strip_prefix("cookie:")
            && !name.is_empty()
        {
            return Ok(HashKey::Cookie(name.to_owned()));
        }
        Err(format!(
            "{key:?}: expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\""
        ))
    }
}

/// An endpoint's weight, checked once for every way a weight arrives (config file,
/// registration, weight change): 1 to [`super::defaults::MAX_WEIGHT`], so that weighted
/// sums cannot overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weight(u32);

impl Weight {
    pub fn new(weight: u32) -> Result<Self, String> {
        let max = super::defaults::MAX_WEIGHT;
        if (1..=max).contains(&weight) {
            Ok(Weight(weight))
        } else {
            Err(format!("must be between 1 and {max}, got {weight}"))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A parsed `rate_limit.key`: which requests share a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// One bucket for the whole route.
    Route,
    ClientIp,
    /// One bucket per value of this request header (requests without it share the
    /// client-IP buckets).
    Header(http::HeaderName),
}

impl RateLimitKey {
    pub fn parse(key: &str) -> Result<Self, String> {
        match key {
            "route" => Ok(RateLimitKey::Route),
            "client_ip" => Ok(RateLimitKey::ClientIp),
            other => match other.strip_prefix("header:") {
                Some(name) => http::HeaderName::from_bytes(name.as_bytes())
                    .map(RateLimitKey::Header)
                    .map_err(|_| format!("{name:?} is not a valid header name")),
                None => Err(format!(
                    "{key:?}: expected \"route\", \"client_ip\" or \"header:NAME\""
                )),
            },
        }
    }
}

/// Relative importance of each input to the score strategy's cost; only ratios matter.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreWeights {
    #[serde(default = "d_score_rt")]
    pub response_time: f64,
    #[serde(default = "d_score_availability")]
    pub availability: f64,
    #[serde(default = "d_score_load")]
    pub load: f64,
    #[serde(default = "d_score_success")]
    pub success_rate: f64,
    /// Time constant of the peak-EWMA latency decay.
    #[serde(with = "humantime_serde", default = "d_score_decay")]
    pub decay: Duration,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            response_time: DEFAULT_SCORE_RESPONSE_TIME,
            availability: DEFAULT_SCORE_AVAILABILITY,
            load: DEFAULT_SCORE_LOAD,
            success_rate: DEFAULT_SCORE_SUCCESS_RATE,
            decay: DEFAULT_SCORE_DECAY,
        }
    }
}

/// One entry of a pool's `endpoints`: a fixed address, or a name that stands for a
/// changing set of instances.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "EndpointEntry")]
pub struct EndpointConfig {
    pub source: EndpointSource,
    /// For `srv` entries the records' weights are used instead.
    pub weight: u32,
}

/// Where an entry's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointSource {
    /// `host:port`: one endpoint; a host name is resolved when connecting.
    Address(String),
    /// `host:port`: one endpoint per A/AAAA record of `host`, re-resolved at the TTL.
    Dns(String),
    /// `_service._proto.name`: one endpoint per address of each SRV target of the best
    /// priority, with the record's port and weight.
    Srv(String),
}

impl EndpointSource {
    /// The address of an `Address` entry.
    pub fn address(&self) -> Option<&str> {
        match self {
            EndpointSource::Address(address) => Some(address),
            _ => None,
        }
    }

    /// How the entry is written in the config (`dns:api.internal:8080`), in logs and
    /// metrics labels.
    pub fn label(&self) -> String {
        match self {
            EndpointSource::Address(address) => address.clone(),
            EndpointSource::Dns(name) => format!("dns:{name}"),
            EndpointSource::Srv(name) => format!("srv:{name}"),
        }
    }
}

/// The file's form of an endpoint entry: exactly one of the three keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    address: Option<String>,
    dns: Option<String>,
    srv: Option<String>,
    weight: Option<u32>,
}

impl TryFrom<EndpointEntry> for EndpointConfig {
    type Error = String;

    fn try_from(entry: EndpointEntry) -> Result<Self, String> {
        let source = match (entry.address, entry.dns, entry.srv) {
            (Some(address), None, None) => EndpointSource::Address(address),
            (None, Some(name), None) => EndpointSource::Dns(name),
            (None, None, Some(name)) => {
                if entry.weight.is_some() {
                    return Err("an srv entry takes its weights from the SRV records; \
                                remove `weight`"
                        .into());
                }
                EndpointSource::Srv(name)
            }
            _ => {
                return Err("an endpoint needs exactly one of `address` (host:port), \
                            `dns` (host:port, one endpoint per address record) or `srv` \
                            (_service._proto.name)"
                    .into());
            }
        };
        Ok(Self {
            source,
            weight: entry.weight.unwrap_or(DEFAULT_WEIGHT),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "d_admin_address")]
    pub address: SocketAddr,
    /// Bearer token; prefer `token_env` so the secret stays out of the file.
    pub token: Option<String>,
    #[serde(default = "d_admin_token_env")]
    pub token_env: String,
    /// Where instances registered through the API are kept across restarts (JSON, written
    /// atomically). Absent: registrations last until the process exits.
    pub state_file: Option<std::path::PathBuf>,
}

fn d_stall_after() -> Duration {
    DEFAULT_STALL_AFTER
}
fn d_hedge_factor() -> f64 {
    DEFAULT_HEDGE_FACTOR
}
fn d_hedge_min_delay() -> Duration {
    DEFAULT_HEDGE_MIN_DELAY
}
fn d_stall_factor() -> f64 {
    DEFAULT_STALL_FACTOR
}
fn d_sample_ratio() -> f64 {
    DEFAULT_TRACE_SAMPLE_RATIO
}
fn d_trace_queue() -> usize {
    DEFAULT_TRACE_QUEUE_SPANS
}
fn d_trace_batch() -> usize {
    DEFAULT_TRACE_BATCH_SPANS
}
fn d_trace_flush() -> Duration {
    DEFAULT_TRACE_FLUSH_INTERVAL
}
fn d_trace_timeout() -> Duration {
    DEFAULT_TRACE_EXPORT_TIMEOUT
}
fn d_service_name() -> String {
    DEFAULT_TRACE_SERVICE_NAME.to_owned()
}
fn d_dns_min_ttl() -> Duration {
    DEFAULT_DNS_MIN_TTL
}
fn d_dns_max_ttl() -> Duration {
    DEFAULT_DNS_MAX_TTL
}
fn d_dns_timeout() -> Duration {
    DEFAULT_DNS_TIMEOUT
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
fn d_body_timeout() -> Duration {
    DEFAULT_REQUEST_BODY_TIMEOUT
}
fn d_body_rate() -> u64 {
    DEFAULT_MIN_REQUEST_BODY_RATE
}
fn d_max_headers() -> usize {
    DEFAULT_MAX_REQUEST_HEADERS
}
fn d_max_header_bytes() -> usize {
    DEFAULT_MAX_REQUEST_HEADER_BYTES
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
fn d_rate_key() -> String {
    "client_ip".to_owned()
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
fn d_admin_address() -> SocketAddr {
    // A constant literal: parsing cannot fail.
    DEFAULT_ADMIN_ADDRESS
        .parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9901)))
}
fn d_admin_token_env() -> String {
    DEFAULT_ADMIN_TOKEN_ENV.to_owned()
}
fn d_health_path() -> String {
    DEFAULT_HEALTH_PATH.to_owned()
}
fn d_health_interval() -> Duration {
    DEFAULT_HEALTH_INTERVAL
}
fn d_health_jitter() -> f64 {
    DEFAULT_HEALTH_JITTER
}
fn d_health_timeout() -> Duration {
    DEFAULT_HEALTH_TIMEOUT
}
fn d_health_rise() -> u32 {
    DEFAULT_HEALTH_RISE
}
fn d_health_fall() -> u32 {
    DEFAULT_HEALTH_FALL
}
fn d_consecutive_failures() -> u32 {
    DEFAULT_CONSECUTIVE_FAILURES
}
fn d_error_rate() -> f64 {
    DEFAULT_ERROR_RATE_THRESHOLD
}
fn d_error_rate_min() -> u32 {
    DEFAULT_ERROR_RATE_MIN_REQUESTS
}
fn d_error_window() -> Duration {
    DEFAULT_ERROR_RATE_WINDOW
}
fn d_base_ejection() -> Duration {
    DEFAULT_BASE_EJECTION
}
fn d_max_ejection() -> Duration {
    DEFAULT_MAX_EJECTION
}
fn d_half_open_probes() -> u32 {
    DEFAULT_HALF_OPEN_PROBES
}
fn d_max_ejected_share() -> f64 {
    DEFAULT_MAX_EJECTED_SHARE
}
fn d_retry_attempts() -> u32 {
    DEFAULT_RETRY_ATTEMPTS
}
fn d_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Connect, RetryOn::Reset]
}
fn d_retry_statuses() -> Vec<u16> {
    DEFAULT_RETRY_STATUSES.to_vec()
}
fn d_retry_grpc_statuses() -> Vec<GrpcCode> {
    DEFAULT_RETRY_GRPC_STATUSES.to_vec()
}
fn d_backoff_base() -> Duration {
    DEFAULT_RETRY_BACKOFF_BASE
}
fn d_backoff_cap() -> Duration {
    DEFAULT_RETRY_BACKOFF_CAP
}
fn d_budget_ratio() -> f64 {
    DEFAULT_RETRY_BUDGET_RATIO
}
fn d_budget_min() -> u32 {
    DEFAULT_RETRY_BUDGET_MIN_PER_SECOND
}
fn d_retry_buffer() -> u64 {
    DEFAULT_RETRY_BUFFER_BYTES
}
fn d_vnodes() -> u32 {
    DEFAULT_HASH_VNODES
}
fn d_score_rt() -> f64 {
    DEFAULT_SCORE_RESPONSE_TIME
}
fn d_score_availability() -> f64 {
    DEFAULT_SCORE_AVAILABILITY
}
fn d_score_load() -> f64 {
    DEFAULT_SCORE_LOAD
}
fn d_score_success() -> f64 {
    DEFAULT_SCORE_SUCCESS_RATE
}
fn d_score_decay() -> Duration {
    DEFAULT_SCORE_DECAY
}
