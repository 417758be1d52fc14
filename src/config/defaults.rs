//! Named defaults for every optional setting, so the example config, the docs and the
//! code agree on one value.

use std::time::Duration;

/// Connections one listener accepts at once; above it new connections are refused fast.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Time a client has to send a complete request head (slowloris guard). On HTTP/1 this also
/// bounds how long a keep-alive connection may sit idle between requests.
pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body gets this long from its start…
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(20);
/// …plus one second per this many bytes received (Apache mod_reqtimeout's defaults).
pub const DEFAULT_MIN_REQUEST_BODY_RATE: u64 = 500;
/// Largest request head (request line and headers) accepted; larger gets 431/414.
pub const DEFAULT_MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields in one request (hyper's own HTTP/1 bound, kept on the stack); more
/// gets 431.
pub const DEFAULT_MAX_REQUEST_HEADERS: usize = 100;
/// Largest request body accepted unless a route says otherwise; 0 = no limit (bodies
/// stream, so the limit protects upstreams, not weir's memory).
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 0;
/// hyper needs at least this much read buffer.
pub const MIN_REQUEST_HEADER_BYTES: usize = 8 * 1024;
/// A client connection with no request in flight and no bytes moving is closed after this.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long shutdown waits for in-flight requests before it gives up on them.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed to open a TCP connection to an endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time from sending the request to receiving the upstream's response head.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle keep-alive connections to an endpoint are closed after this.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections kept per endpoint.
pub const DEFAULT_MAX_IDLE_PER_ENDPOINT: usize = 128;
/// Mean wait for response heads past which an endpoint counts as stalled…
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(1);
/// …when it is also this many times the endpoint's latency estimate.
pub const DEFAULT_STALL_FACTOR: f64 = 4.0;
/// A quantile hedge delay is multiplied by this…
pub const DEFAULT_HEDGE_FACTOR: f64 = 1.0;
/// …and is never below this.
pub const DEFAULT_HEDGE_MIN_DELAY: Duration = Duration::from_millis(10);
/// A quantile hedge delay needs this many answers in the pool's recent window; until then
/// nothing is hedged (an estimate from a handful of answers would hedge at random).
pub const HEDGE_MIN_SAMPLES: u64 = 20;
/// The recent window of times to response head that a quantile delay is taken from (two
/// halves: the current one and the one before).
pub const HEDGE_WINDOW: Duration = Duration::from_secs(10);
/// Share of the traces weir starts that it records (when trace export is on).
pub const DEFAULT_TRACE_SAMPLE_RATIO: f64 = 1.0;
/// Spans waiting for export before new ones are dropped.
pub const DEFAULT_TRACE_QUEUE_SPANS: usize = 4096;
/// Most spans in one export request (the OpenTelemetry SDK's batch default).
pub const DEFAULT_TRACE_BATCH_SPANS: usize = 512;
/// A partial batch goes out after this.
pub const DEFAULT_TRACE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Time for one export request.
pub const DEFAULT_TRACE_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// `service.name` of exported spans.
pub const DEFAULT_TRACE_SERVICE_NAME: &str = "weir";
/// A discovered name is asked again no sooner than this after its last answer.
pub const DEFAULT_DNS_MIN_TTL: Duration = Duration::from_secs(1);
/// …and no later than this, whatever the records' TTL.
pub const DEFAULT_DNS_MAX_TTL: Duration = Duration::from_secs(30);
/// Time for one DNS query.
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// Weight of an endpoint that does not name one.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest weight accepted, so weighted sums cannot overflow.
pub const MAX_WEIGHT: u32 = 10_000;

/// Header carrying the request id, kept when the client sends one.
pub const DEFAULT_REQUEST_ID_HEADER: &str = "x-request-id";
/// Token sent in `Via` and `Forwarded: by=`.
pub const DEFAULT_PROXY_NAME: &str = "weir";

/// Admin listener address: loopback only unless the operator says otherwise.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";
/// Environment variable read for the admin bearer token when the file names none.
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "WEIR_ADMIN_TOKEN";

/// In-memory cache size when the cache is enabled without a size.
pub const DEFAULT_CACHE_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// Larger responses stream through uncached.
pub const DEFAULT_CACHE_MAX_OBJECT_BYTES: u64 = 8 * 1024 * 1024;
/// Waiters on a coalesced miss give up and go upstream after this.
pub const DEFAULT_CACHE_COALESCE_WAIT: Duration = Duration::from_secs(5);
/// Stale entries with validators stay this long for conditional revalidation.
pub const DEFAULT_CACHE_KEEP_STALE: Duration = Duration::from_secs(600);
/// A stale entry may answer while the origin cannot be reached at all for this long past
/// its freshness (RFC 9111 §4.2.4, a disconnected cache), like Varnish's grace.
pub const DEFAULT_CACHE_STALE_IF_UNREACHABLE: Duration = Duration::from_secs(60);
/// RFC 9111 §4.2.2 suggests 10 % of the time since Last-Modified.
pub const DEFAULT_CACHE_HEURISTIC: f32 = 0.1;
pub const DEFAULT_CACHE_WARM_CONCURRENCY: usize = 4;
/// Redis is a cache: a command slower than this is treated as failed, not waited for.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "weir";

/// Active health checks (HAProxy-like): every 2 s ± 10 %, 1 s timeout, up after 2 passes,
/// down after 3 failures.
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_JITTER: f64 = 0.1;
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTH_RISE: u32 = 2;
pub const DEFAULT_HEALTH_FALL: u32 = 3;

/// Passive outlier detection / circuit breaker (Envoy-like): 5 consecutive failures eject
/// for 30 s, longer on each repeat up to 300 s; or a 50 % error rate over at least 20
/// requests in a 10 s window. Half-open lets 3 probe requests through.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
pub const DEFAULT_ERROR_RATE_THRESHOLD: f64 = 0.5;
pub const DEFAULT_ERROR_RATE_MIN_REQUESTS: u32 = 20;
pub const DEFAULT_ERROR_RATE_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
pub const DEFAULT_HALF_OPEN_PROBES: u32 = 3;
/// Never eject more than this share of a pool (at least one endpoint may always go).
pub const DEFAULT_MAX_EJECTED_SHARE: f64 = 0.5;

/// Retries: at most 2 more attempts, full-jitter backoff from 25 ms capped at 250 ms,
/// retries limited to 20 % of requests plus 10 per second.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
pub const DEFAULT_RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
pub const DEFAULT_RETRY_BACKOFF_CAP: Duration = Duration::from_millis(250);
pub const DEFAULT_RETRY_BUDGET_RATIO: f64 = 0.2;
pub const DEFAULT_RETRY_BUDGET_MIN_PER_SECOND: u32 = 10;
pub const DEFAULT_RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// Request bodies up to this size are buffered so that they can be retried.
pub const DEFAULT_RETRY_BUFFER_BYTES: u64 = 64 * 1024;
pub const DEFAULT_RETRY_STATUSES: [u16; 3] = [502, 503, 504];
/// UNAVAILABLE is gRPC's "not carried out, try again" (as 503 is HTTP's).
pub const DEFAULT_RETRY_GRPC_STATUSES: [super::GrpcCode; 1] = [super::GrpcCode::Unavailable];

/// Score strategy inputs (the seeds' composite weights).
pub const DEFAULT_SCORE_RESPONSE_TIME: f64 = 0.3;
pub const DEFAULT_SCORE_AVAILABILITY: f64 = 0.2;
pub const DEFAULT_SCORE_LOAD: f64 = 0.1;
pub const DEFAULT_SCORE_SUCCESS_RATE: f64 = 0.4;
/// Decay time constant of the peak-EWMA latency (linkerd/Finagle use 10 s).
pub const DEFAULT_SCORE_DECAY: Duration = Duration::from_secs(10);

/// Virtual nodes per endpoint of average weight on the consistent-hash ring.
pub const DEFAULT_HASH_VNODES: u32 = 160;
