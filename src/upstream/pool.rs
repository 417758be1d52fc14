//! A pool: the endpoints behind a route, how to pick among them, how to reach them, and
//! the pool-wide rules around that (panic mode, bulkheads, ejection share, retry budget).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::breaker::{BreakerEvent, BreakerState, Trip};
use super::connector::{UpstreamConnector, local_header, proxy_header};
use super::discovery::Source;
use super::endpoint::{Arrival, Endpoint, EndpointPolicy, InFlightGuard, NewEndpoint, Outcome};
use super::exchange::{Dispatched, InTaskClient, ResponseFuture};
use super::hedge::Hedging;
use super::request_body::UpstreamRequestBody;
use super::signals::{Clock, RollingCounts};
use crate::balancer::{self, Balancer, PickContext};
use crate::config::{
    HealthCheckConfig, PoolConfig, ProxyProtocolVersion, RetryConfig, UpstreamProtocol,
    parse_endpoint_address,
};

/// Speaks plain HTTP to `http://` endpoints and TLS to `https://` ones.
pub type UpstreamClient = Client<HttpsConnector<UpstreamConnector>, UpstreamRequestBody>;

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// None is available (and panic mode is off or found none either).
    #[error("no endpoint is available (weir answers 503)")]
    NoEndpoint,
    /// Endpoints are available but all at their in-flight limit, or the pool is at its own.
    #[error("every available endpoint is at its in-flight limit (weir answers 503)")]
    AtCapacity,
}

/// Pool-wide counters.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub retry_budget_exhausted: AtomicU64,
    pub panic_picks: AtomicU64,
    pub capacity_rejections: AtomicU64,
    /// Hedges sent (each also counted in `retries`: they share the budget)…
    pub hedges: AtomicU64,
    /// …and those whose answer the client got.
    pub hedges_won: AtomicU64,
    /// Endpoints ejected by the stall sweep for answering nothing while attempts waited.
    pub hung_ejections: AtomicU64,
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    /// Replaced whole when endpoints are added or removed; readers never block.
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// Bumped on every change of endpoints or weights (strategies cache tables by it).
    generation: AtomicU64,
    balancer: Arc<dyn Balancer>,
    /// The config this pool was built from, to tell what a reload may keep.
    config: PoolConfig,
    /// hyper-util's pooled client: TLS, HTTP/2, PROXY headers, upgrades, health checks.
    pub client: UpstreamClient,
    /// Plain HTTP/1.1 exchanges driven by the request's task (see [`super::exchange`]);
    /// absent for pools with TLS, HTTP/2 or PROXY headers.
    in_task: Option<Arc<InTaskClient>>,
    pub response_timeout: Duration,
    /// HTTP version requests to this pool are sent with.
    pub version: http::Version,
    /// `https` when the pool has `[tls]`.
    pub scheme: http::uri::Scheme,
    pub preserve_host: bool,
    pub fail_open: bool,
    pub max_in_flight: u64,
    pub max_in_flight_per_endpoint: u64,
    pub max_ejected_share: f64,
    pub retry: RetryConfig,
    /// When to hedge (absent: never). Shared with the pool's next version while the
    /// `[hedge]` table is unchanged, so a reload keeps the recent times.
    pub hedging: Option<Arc<Hedging>>,
    pub sticky_cookie: Option<String>,
    pub health_check: Option<HealthCheckConfig>,
    policy: EndpointPolicy,
    clock: Clock,
    /// a = requests, b = retries, over the budget window.
    retry_budget: Arc<RollingCounts>,
    /// Shared with the pool's earlier and later versions across reloads.
    pub stats: Arc<PoolStats>,
    /// The `dns`/`srv` entries whose answers keep endpoints in this pool.
    discovery: Vec<Source>,
    /// Woken when a connection to a discovered endpoint fails, so its entry asks again.
    pub(crate) rediscover: tokio::sync::Notify,
    /// Whether this pool replaced another (a reload): endpoints found from now on join
    /// with slow start instead of arriving with the pool.
    replaced_another: bool,
    /// The PROXY header to send first on each connection, when the pool asks for one.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// The loaded TLS client config, for the clients [`Pool::private_client`] builds (kept
    /// only when the pool sends PROXY headers).
    tls: Option<rustls::ClientConfig>,
}

impl Pool {
    /// Builds a pool from validated config. With `previous` (the pool of the same name
    /// before a reload) it keeps what is live: endpoints at unchanged addresses with their
    /// state (latency, breaker, health, in-flight), the clock their times refer to,
    /// counters, the retry budget, the balancer when its settings are unchanged, and the
    /// upstream connections when their settings are unchanged.
    ///
    /// `tls` is the loaded client config when the pool has a `tls` table (see
    /// `tls::TlsMaterial`).
    pub fn from_config(
        name: &str,
        config: &PoolConfig,
        tls: Option<&rustls::ClientConfig>,
        previous: Option<&Pool>,
    ) -> Self {
        let clock = previous.map_or_else(Clock::new, |p| p.clock);
        let policy = EndpointPolicy {
            passive: config.passive.clone(),
            slow_start: config.slow_start,
            decay: config.score.decay,
        };
        let old_endpoints = previous.map(|p| p.endpoints.load_full());
        let discovery: Vec<Source> = config
            .endpoints
            .iter()
            .filter_map(|e| {
                let label = e.source.label();
                let kept = previous
                    .and_then(|p| p.discovery.iter().find(|s| *s.label == *label))
                    .map(|s| &s.stats);
                Source::new(&e.source, e.weight, kept)
            })
            .collect();
        let fixed = config.endpoints.iter().filter_map(|e| {
            let address = e.source.address()?;
            let kept = old_endpoints.as_ref().and_then(|list| {
                list.iter()
                    .find(|old| old.address == address && old.discovered_by.is_none())
            });
            if let Some(kept) = kept {
                kept.set_weight(e.weight);
                kept.set_policy(&policy);
                return Some(Arc::clone(kept));
            }
            // Validation has already rejected bad addresses; skip defensively.
            let authority = parse_endpoint_address(address).ok()?;
            let new = NewEndpoint {
                pool: name,
                address: address.to_owned(),
                authority,
                weight: e.weight,
                arrival: if previous.is_some() {
                    Arrival::Joining
                } else {
                    Arrival::WithThePool
                },
                host: None,
                discovered_by: None,
            };
            Some(Arc::new(Endpoint::new(new, &policy, clock)))
        });
        // Endpoints found by an entry the new config still has stay, with their state,
        // until that entry's next answer says otherwise.
        let discovered = old_endpoints
            .iter()
            .flat_map(|list| list.iter())
            .filter_map(|old| {
                let label = old.discovered_by.as_deref()?;
                let source = discovery.iter().find(|s| &*s.label == label)?;
                if let Some(weight) = source.weight {
                    old.set_weight(weight);
                }
                old.set_policy(&policy);
                Some(Arc::clone(old))
            });
        let mut endpoints: Vec<Arc<Endpoint>> = fixed.collect();
        for endpoint in discovered {
            if endpoints.iter().all(|e| e.address != endpoint.address) {
                endpoints.push(endpoint);
            }
        }
        let balancer = match previous {
            Some(p) if same_balancing(&p.config, config) => Arc::clone(&p.balancer),
            _ => Arc::from(balancer::for_pool(config)),
        };
        let (client, in_task) = match previous {
            Some(p) if same_connections(&p.config, config) => (p.client.clone(), p.in_task.clone()),
            // Connections without a client (health checks) say so in their header.
            _ => (
                build_client(config, tls, config.proxy_protocol.map(local_header)),
                build_in_task_client(config),
            ),
        };
        Self {
            name: name.to_owned(),
            endpoints: ArcSwap::from_pointee(endpoints),
            generation: AtomicU64::new(previous.map_or(0, |p| p.generation.load(Relaxed) + 1)),
            balancer,
            client,
            in_task,
            response_timeout: config.response_timeout,
            scheme: if config.tls.is_some() {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            },
            version: match config.protocol {
                // `auto` sends HTTP/1.1-versioned requests: the client speaks h2 on
                // connections where ALPN chose it.
                UpstreamProtocol::Http1 | UpstreamProtocol::Auto => http::Version::HTTP_11,
                UpstreamProtocol::H2c | UpstreamProtocol::H2 => http::Version::HTTP_2,
            },
            preserve_host: config.preserve_host,
            fail_open: config.fail_open,
            max_in_flight: config.max_in_flight,
            max_in_flight_per_endpoint: config.max_in_flight_per_endpoint,
            max_ejected_share: config.passive.max_ejected_share,
            retry: config.retry.clone(),
            hedging: match previous {
                Some(p) if p.config.hedge == config.hedge => p.hedging.clone(),
                _ => config.hedge.clone().map(|h| Arc::new(Hedging::new(h))),
            },
            sticky_cookie: config.sticky_cookie.clone(),
            health_check: config.health_check.clone(),
            retry_budget: previous.map_or_else(
                || {
                    Arc::new(RollingCounts::new(
                        crate::config::defaults::DEFAULT_RETRY_BUDGET_WINDOW,
                    ))
                },
                |p| Arc::clone(&p.retry_budget),
            ),
            stats: previous.map_or_else(Default::default, |p| Arc::clone(&p.stats)),
            config: config.clone(),
            policy,
            clock,
            discovery,
            rediscover: tokio::sync::Notify::new(),
            replaced_another: previous.is_some(),
            proxy_protocol: config.proxy_protocol,
            // Only private clients need it.
            tls: config.proxy_protocol.and_then(|_| tls.cloned()),
        }
    }

    /// A client whose connections start with a PROXY header naming `source` (the client)
    /// and `destination` (the address it reached weir at): for one client connection only,
    /// and dropped with it. `None` when the pool sends no PROXY header.
    pub fn private_client(
        &self,
        source: std::net::SocketAddr,
        destination: std::net::SocketAddr,
    ) -> Option<UpstreamClient> {
        let version = self.proxy_protocol?;
        let header = proxy_header(version, source, destination);
        Some(build_client(&self.config, self.tls.as_ref(), Some(header)))
    }

    /// Sends `request` to `endpoint`: in the calling task when the pool speaks plain
    /// HTTP/1.1 and the request is no upgrade, else through hyper-util's client. The
    /// request's target is origin-form (`/path?query`); this adds the endpoint's
    /// authority where the pooled client needs it. With `keep_headers` the request's
    /// header map comes back for another attempt (see [`Dispatched`]).
    pub fn send(
        &self,
        endpoint: &Endpoint,
        request: http::Request<UpstreamRequestBody>,
        keep_headers: bool,
    ) -> Dispatched {
        let upgrade = request.headers().contains_key(http::header::UPGRADE);
        match self.in_task.as_ref().filter(|_| !upgrade) {
            Some(in_task) => {
                in_task.send(endpoint.serial, &endpoint.authority, request, keep_headers)
            }
            None => self.send_on(&self.client, endpoint, request, keep_headers),
        }
    }

    /// Sends `request` through `client` (a connection's private client), as
    /// [`Pool::send`] would through the pool's.
    pub fn send_on(
        &self,
        client: &UpstreamClient,
        endpoint: &Endpoint,
        mut request: http::Request<UpstreamRequestBody>,
        keep_headers: bool,
    ) -> Dispatched {
        let headers = keep_headers.then(|| request.headers().clone());
        absolute_target(&mut request, &self.scheme, endpoint);
        Dispatched {
            response: ResponseFuture::Pooled(client.request(request)),
            headers,
        }
    }

    /// The pool's `dns`/`srv` entries.
    pub fn discovery(&self) -> &[Source] {
        &self.discovery
    }

    /// Whether this pool replaced another in a reload.
    pub fn has_history(&self) -> bool {
        self.replaced_another
    }

    /// Adds an endpoint found by `source`, unless its address is already in the pool.
    pub(crate) fn add_discovered(
        &self,
        address: &str,
        weight: u32,
        host: Option<&str>,
        source: &Source,
        arrival: Arrival,
    ) -> bool {
        let Ok(authority) = parse_endpoint_address(address) else {
            return false;
        };
        self.add_new(NewEndpoint {
            pool: &self.name,
            address: address.to_owned(),
            authority,
            weight,
            arrival,
            host,
            discovered_by: Some(Arc::clone(&source.label)),
        })
        .is_some()
    }

    /// Creates an endpoint with the pool's policy and clock and adds it, unless one with
    /// its address is there.
    fn add_new(&self, new: NewEndpoint<'_>) -> Option<Arc<Endpoint>> {
        let endpoint = Arc::new(Endpoint::new(new, &self.policy, self.clock));
        self.add_unless_present(&endpoint).then_some(endpoint)
    }

    /// Appends an existing endpoint (one registered at runtime, carried over a reload with
    /// its live state). No-op if the pool already has its address.
    pub fn adopt(&self, endpoint: Arc<Endpoint>) {
        endpoint.set_policy(&self.policy);
        self.add_unless_present(&endpoint);
    }

    /// Adds `endpoint` unless one with its address is there: a compare-and-swap loop
    /// (`ArcSwap::rcu`), so that concurrent changes are never lost to each other.
    fn add_unless_present(&self, endpoint: &Arc<Endpoint>) -> bool {
        let mut added = false;
        self.endpoints.rcu(|current| {
            added = current.iter().all(|e| e.address != endpoint.address);
            if !added {
                return Arc::clone(current);
            }
            let mut list = current.as_ref().clone();
            list.push(Arc::clone(endpoint));
            Arc::new(list)
        });
        if added {
            self.generation.fetch_add(1, Relaxed);
        }
        added
    }

    /// The endpoint at `address`, if the pool has it.
    pub fn endpoint(&self, address: &str) -> Option<Arc<Endpoint>> {
        self.endpoints
            .load()
            .iter()
            .find(|e| e.address == address)
            .cloned()
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The current endpoints (a cheap snapshot).
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<Vec<Arc<Endpoint>>>> {
        self.endpoints.load()
    }

    /// Replaces the endpoint list; requests already placed keep their endpoint.
    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.endpoints.store(Arc::new(endpoints));
        self.generation.fetch_add(1, Relaxed);
    }

    /// Adds an endpoint to the running pool; it ramps up over the slow-start window.
    pub fn add_endpoint(&self, address: &str, weight: u32) -> Result<Arc<Endpoint>, String> {
        let authority = parse_endpoint_address(address)?;
        self.add_new(NewEndpoint {
            pool: &self.name,
            address: address.to_owned(),
            authority,
            weight,
            arrival: Arrival::Joining,
            host: None,
            discovered_by: None,
        })
        .ok_or_else(|| format!("{address} is already in pool {}", self.name))
    }

    /// Changes an endpoint's weight at runtime.
    pub fn set_weight(&self, address: &str, weight: u32) -> bool {
        let endpoints = self.endpoints.load();
        let Some(endpoint) = endpoints.iter().find(|e| e.address == address) else {
            return false;
        };
        endpoint.set_weight(weight);
        self.generation.fetch_add(1, Relaxed);
        true
    }

    pub fn strategy(&self) -> &'static str {
        self.balancer.strategy()
    }

    /// Removes an endpoint from the pool: it gets no new requests, and requests already on
    /// it finish (their guards hold it). Returns it, or `None` if it is not in the pool.
    pub fn remove_endpoint(&self, address: &str) -> Option<Arc<Endpoint>> {
        let mut removed = None;
        self.endpoints.rcu(|current| {
            removed = current.iter().find(|e| e.address == address).cloned();
            if removed.is_none() {
                return Arc::clone(current);
            }
            Arc::new(
                current
                    .iter()
                    .filter(|e| e.address != address)
                    .cloned()
                    .collect(),
            )
        });
        if removed.is_some() {
            self.generation.fetch_add(1, Relaxed);
        }
        removed
    }

    /// `passive.stall_after` (zero: stall detection is off).
    pub fn stall_after(&self) -> Duration {
        self.policy.passive.stall_after
    }

    /// The balancer's cost of an endpoint now, when the strategy has one.
    pub fn cost(&self, endpoint: &Endpoint) -> Option<f64> {
        self.balancer.cost(endpoint, self.now_ms())
    }

    /// Picks an endpoint for a request. `exclude` holds endpoints this request already
    /// tried; they are avoided while another endpoint is usable.
    pub fn pick(
        &self,
        client_ip: IpAddr,
        headers: &HeaderMap,
        exclude: &[Arc<Endpoint>],
    ) -> Result<Arc<Endpoint>, PickError> {
        self.select(client_ip, headers, exclude, false)
    }

    /// The endpoint a request would get now, changing nothing: no rotation turn, no
    /// counters (the routing simulation). Strategies that sample at random (two random
    /// choices in pools over 8, slow start's ramp) answer with one sample.
    pub fn preview_pick(
        &self,
        client_ip: IpAddr,
        headers: &HeaderMap,
    ) -> Result<Arc<Endpoint>, PickError> {
        self.select(client_ip, headers, &[], true)
    }

    fn select(
        &self,
        client_ip: IpAddr,
        headers: &HeaderMap,
        exclude: &[Arc<Endpoint>],
        preview: bool,
    ) -> Result<Arc<Endpoint>, PickError> {
        let endpoints = self.endpoints.load();
        let mut ctx = PickContext {
            client_ip,
            headers,
            now_ms: self.clock.now_ms(),
            exclude,
            max_in_flight: self.max_in_flight_per_endpoint,
            generation: self.generation.load(Relaxed),
            ignore_health: false,
            avoid_stalled: true,
            preview,
        };
        if exclude.is_empty()
            && let Some(sticky) = self.sticky_endpoint(&endpoints, &ctx)
        {
            return Ok(sticky);
        }
        // Preference: not stalled and not tried, not stalled, stalled and not tried, any.
        for avoid_stalled in [true, false] {
            ctx.avoid_stalled = avoid_stalled;
            ctx.exclude = exclude;
            if let Some(endpoint) = self.balancer.pick(&endpoints, &ctx) {
                return Ok(Arc::clone(endpoint));
            }
            if !exclude.is_empty() {
                ctx.exclude = &[];
                if let Some(endpoint) = self.balancer.pick(&endpoints, &ctx) {
                    return Ok(Arc::clone(endpoint));
                }
            }
        }
        let capacity_bound =
            ctx.max_in_flight > 0 && endpoints.iter().any(|e| e.is_available(ctx.now_ms));
        if capacity_bound {
            if !preview {
                self.stats.capacity_rejections.fetch_add(1, Relaxed);
            }
            return Err(PickError::AtCapacity);
        }
        if self.fail_open {
            ctx.ignore_health = true;
            if let Some(endpoint) = self.balancer.pick(&endpoints, &ctx) {
                if !preview {
                    self.stats.panic_picks.fetch_add(1, Relaxed);
                }
                tracing::debug!(pool = %self.name, "panic mode: no healthy endpoint, using all");
                return Ok(Arc::clone(endpoint));
            }
        }
        Err(PickError::NoEndpoint)
    }

    /// Whether an available endpoint other than `current` and those in `tried` exists: a
    /// retry that could only go back to the endpoints that already answered is not one.
    pub fn has_untried(&self, tried: &[Arc<Endpoint>], current: &Arc<Endpoint>) -> bool {
        let now_ms = self.clock.now_ms();
        self.endpoints.load().iter().any(|e| {
            !Arc::ptr_eq(e, current)
                && !tried.iter().any(|t| Arc::ptr_eq(t, e))
                && e.is_available(now_ms)
        })
    }

    fn sticky_endpoint(
        &self,
        endpoints: &[Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<Arc<Endpoint>> {
        let name = self.sticky_cookie.as_deref()?;
        let id = balancer::cookie_value(ctx.headers, name)?;
        endpoints
            .iter()
            .find(|e| e.id == id && ctx.usable(e))
            .cloned()
    }

    /// Takes a slot of the pool's in-flight limit, or says it is full.
    pub fn acquire_slot(self: &Arc<Self>) -> Result<PoolSlot, PickError> {
        let in_flight = self.stats.in_flight.fetch_add(1, Relaxed) + 1;
        let slot = PoolSlot {
            pool: Arc::clone(self),
        };
        if self.max_in_flight > 0 && in_flight > self.max_in_flight {
            drop(slot);
            self.stats.capacity_rejections.fetch_add(1, Relaxed);
            return Err(PickError::AtCapacity);
        }
        self.stats.requests.fetch_add(1, Relaxed);
        self.retry_budget.record(self.clock.now_ms(), 1, 0);
        Ok(slot)
    }

    /// Whether the retry budget allows one more retry now; counts it if so.
    pub fn try_retry(&self) -> bool {
        let now = self.clock.now_ms();
        let (requests, retries) = self.retry_budget.totals(now);
        let window_secs = crate::config::defaults::DEFAULT_RETRY_BUDGET_WINDOW.as_secs_f64();
        let allowed = self.retry.budget_ratio * requests as f64
            + f64::from(self.retry.budget_min_per_second) * window_secs;
        if (retries as f64) < allowed {
            self.retry_budget.record(now, 0, 1);
            self.stats.retries.fetch_add(1, Relaxed);
            true
        } else {
            self.stats.retry_budget_exhausted.fetch_add(1, Relaxed);
            false
        }
    }

    /// Records an attempt's outcome on its endpoint and acts on what the breaker says,
    /// ejecting only while the pool's `max_ejected_share` allows.
    pub fn report(&self, guard: &mut InFlightGuard, outcome: Outcome, elapsed: Duration) {
        let endpoint = Arc::clone(guard.endpoint());
        if outcome == Outcome::ConnectFailed && endpoint.discovered_by.is_some() {
            // The name may point elsewhere by now.
            self.rediscover.notify_waiters();
        }
        let event = endpoint.record_outcome(guard, outcome, elapsed);
        self.act_on(&endpoint, event);
    }

    /// An attempt weir stopped waiting for because another attempt of the same request
    /// answered first: the endpoint learns a lower bound on its latency, and the attempt
    /// keeps counting as waiting (stall evidence) until the endpoint answers anything.
    /// A half-open breaker's probe that lost the race has failed: it was to show the
    /// endpoint answers in time, and it did not (otherwise every probe of a hung endpoint
    /// would be hedged and forgotten, and the endpoint never ejected again).
    pub fn abandon(&self, mut guard: InFlightGuard, elapsed: Duration) {
        guard.endpoint().observe_abandoned(elapsed);
        if guard.is_probe() {
            self.judge(&mut guard, false);
        }
        guard.abandon();
    }

    /// One pass of the stall sweep (run every quarter of `passive.stall_after` by
    /// [`run_stall_sweep`]): forgets abandoned attempts older than the response timeout
    /// (they would have timed out by now), and ejects hung endpoints (stalled, and no
    /// answer of any kind for `stall_after`) as the breaker would, within
    /// `max_ejected_share`: a hung endpoint is out long before its requests time out.
    pub fn sweep_stalls(&self) {
        let now = self.clock.now_ms();
        let timeout_ms = self.response_timeout.as_millis() as u64;
        for endpoint in self.endpoints.load().iter() {
            endpoint.expire_ghosts(now.saturating_sub(timeout_ms));
            if endpoint.breaker_state(now) == BreakerState::Closed && endpoint.is_hung(now) {
                let trip = Trip::Hung {
                    waited_ms: endpoint.head_wait_ms(now),
                    waiting: endpoint.waiting_heads(),
                };
                if self.act_on(endpoint, BreakerEvent::WouldOpen(trip)) {
                    self.stats.hung_ejections.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// The breaker's part of [`Pool::report`], for a response whose body has ended:
    /// `success` unless the head said failure or the upstream cut the body off.
    pub fn judge(&self, guard: &mut InFlightGuard, success: bool) {
        let endpoint = Arc::clone(guard.endpoint());
        let event = endpoint.judge(guard, success);
        self.act_on(&endpoint, event);
    }

    /// Acts on the breaker's event, ejecting only while `max_ejected_share` allows.
    /// Returns whether it ejected the endpoint.
    fn act_on(&self, endpoint: &Endpoint, event: BreakerEvent) -> bool {
        match event {
            BreakerEvent::WouldOpen(trip) => {
                if self.may_eject() {
                    return endpoint.eject(&trip.to_string());
                }
                if endpoint.should_log_held_ejection() {
                    tracing::warn!(
                        pool = %self.name,
                        endpoint = %endpoint.address,
                        reason = %trip,
                        "not ejecting: max_ejected_share of the pool is already ejected (logged at most every 10 s)"
                    );
                }
                false
            }
            event => {
                endpoint.apply_breaker_event(event);
                false
            }
        }
    }

    fn may_eject(&self) -> bool {
        let endpoints = self.endpoints.load();
        let now = self.clock.now_ms();
        let ejected = endpoints
            .iter()
            .filter(|e| e.breaker_state(now) == BreakerState::Open)
            .count();
        let n = endpoints.len();
        let allowed =
            ((n as f64 * self.max_ejected_share).floor() as usize).max(usize::from(n >= 2));
        ejected < allowed
    }
}

/// Runs [`Pool::sweep_stalls`] every quarter of `passive.stall_after` until `stop` (not at
/// all when stall detection is off). One per pool, replaced with the pool on reload.
pub async fn run_stall_sweep(pool: Arc<Pool>, stop: tokio_util::sync::CancellationToken) {
    let stall_after = pool.stall_after();
    if stall_after.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval((stall_after / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => pool.sweep_stalls(),
        }
    }
}

/// Holds one unit of the pool's in-flight count.
#[derive(Debug)]
pub struct PoolSlot {
    pool: Arc<Pool>,
}

impl PoolSlot {
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Drop for PoolSlot {
    fn drop(&mut self) {
        self.pool.stats.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Whether a reload may keep the balancer (and with it round-robin position, schedules).
fn same_balancing(old: &PoolConfig, new: &PoolConfig) -> bool {
    old.strategy == new.strategy && old.score == new.score && old.hash == new.hash
}

/// Whether a reload may keep the upstream connection pool.
fn same_connections(old: &PoolConfig, new: &PoolConfig) -> bool {
    old.connect_timeout == new.connect_timeout
        && old.protocol == new.protocol
        && old.tls == new.tls
        && old.idle_timeout == new.idle_timeout
        && old.max_idle_per_endpoint == new.max_idle_per_endpoint
        && old.proxy_protocol == new.proxy_protocol
}

/// `request`'s target with the endpoint's scheme and authority: hyper-util's client
/// connects by it (and sends origin-form on HTTP/1.1).
fn absolute_target(
    request: &mut http::Request<UpstreamRequestBody>,
    scheme: &http::uri::Scheme,
    endpoint: &Endpoint,
) {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(endpoint.authority.clone());
    parts.path_and_query = request.uri().path_and_query().cloned();
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// The in-task client of a plain HTTP/1.1 pool: no TLS, no HTTP/2, no PROXY header.
fn build_in_task_client(config: &PoolConfig) -> Option<Arc<InTaskClient>> {
    let plain_http1 = matches!(
        config.protocol,
        UpstreamProtocol::Http1 | UpstreamProtocol::Auto
    );
    if !plain_http1 || config.tls.is_some() || config.proxy_protocol.is_some() {
        return None;
    }
    Some(Arc::new(InTaskClient::new(
        tcp_connector(config),
        config.idle_timeout,
        config.max_idle_per_endpoint,
    )))
}

/// TCP as every upstream connection opens it.
fn tcp_connector(config: &PoolConfig) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector
}

fn build_client(
    config: &PoolConfig,
    tls: Option<&rustls::ClientConfig>,
    proxy_header: Option<bytes::Bytes>,
) -> UpstreamClient {
    let mut connector = tcp_connector(config);
    // https:// URIs go to the TLS layer below.
    connector.enforce_http(false);
    let tls_config = match tls {
        Some(loaded) => loaded.clone(),
        // Plain-HTTP pools never use it.
        None => crate::tls::ring_client_config(rustls::RootCertStore::empty()),
    };
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_or_http();
    let builder = match config.tls.as_ref().and_then(|t| t.server_name.clone()) {
        Some(name) => match rustls_pki_types::ServerName::try_from(name) {
            Ok(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
            Err(_) => builder,
        },
        None => builder,
    };
    let connector = UpstreamConnector::new(connector, proxy_header);
    // The enabled versions are also what ALPN offers.
    let connector = match config.protocol {
        UpstreamProtocol::H2 => builder.enable_http2().wrap_connector(connector),
        UpstreamProtocol::Auto => builder.enable_all_versions().wrap_connector(connector),
        UpstreamProtocol::Http1 | UpstreamProtocol::H2c => {
            builder.enable_http1().wrap_connector(connector)
        }
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(config.idle_timeout)
        .pool_max_idle_per_host(config.max_idle_per_endpoint)
        // Headers go upstream exactly as weir prepared them.
        .set_host(false);
    if matches!(
        config.protocol,
        UpstreamProtocol::H2c | UpstreamProtocol::H2
    ) {
        builder.http2_only(true);
    }
    if config.protocol != UpstreamProtocol::Http1 {
        builder
            .http2_keep_alive_interval(Duration::from_secs(20))
            .http2_keep_alive_timeout(Duration::from_secs(20));
    }
    builder.build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn pool(extra: &str) -> Arc<Pool> {
        let config: PoolConfig = toml::from_str(&format!(
            "endpoints = [{{ address = \"127.0.0.1:1\" }}]\n{extra}"
        ))
        .unwrap();
        Arc::new(Pool::from_config("test", &config, None, None))
    }

    fn share_of(pool: &Pool, endpoint: &Arc<Endpoint>, picks: usize) -> f64 {
        let headers = HeaderMap::new();
        let hits = (0..picks)
            .filter(|_| {
                let picked = pool
                    .pick(Ipv4Addr::LOCALHOST.into(), &headers, &[])
                    .unwrap();
                Arc::ptr_eq(&picked, endpoint)
            })
            .count();
        hits as f64 / picks as f64
    }

    #[test]
    fn concurrent_membership_changes_are_never_lost() {
        // Four threads add 200 endpoints each and remove every other one they added; with
        // load-clone-store, one thread's change could overwrite another's.
        let pool = pool("");
        std::thread::scope(|scope| {
            for thread in 0..4u16 {
                let pool = &pool;
                scope.spawn(move || {
                    for i in 0..200u16 {
                        let address = format!("127.0.0.1:{}", 10_000 + thread * 1000 + i);
                        pool.add_endpoint(&address, 1).unwrap();
                        if i % 2 == 0 {
                            assert!(pool.remove_endpoint(&address).is_some());
                        }
                    }
                });
            }
        });
        let endpoints = pool.endpoints();
        assert_eq!(endpoints.len(), 1 + 4 * 100);
        assert!(
            pool.add_endpoint("127.0.0.1:10001", 1).is_err(),
            "still there"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_a_new_endpoint_over_its_window() {
        let pool = pool("slow_start = \"10s\"");
        let added = pool.add_endpoint("127.0.0.1:2", 1).unwrap();
        assert_eq!(added.state(pool.now_ms()).as_str(), "slow_start");
        // Offered every other pick by round robin, accepted at its ramp factor.
        let start = share_of(&pool, &added, 4000);
        assert!((0.03..0.08).contains(&start), "{start}");
        tokio::time::advance(Duration::from_secs(5)).await;
        let half = share_of(&pool, &added, 4000);
        assert!((0.2..0.3).contains(&half), "{half}");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(added.state(pool.now_ms()).as_str(), "healthy");
        assert_eq!(share_of(&pool, &added, 4000), 0.5);
    }

    #[test]
    fn duplicate_endpoints_are_refused_and_weights_change() {
        let pool = pool("strategy = \"weighted\"");
        assert!(pool.add_endpoint("127.0.0.1:1", 1).is_err());
        assert!(pool.add_endpoint("not an address", 1).is_err());
        let added = pool.add_endpoint("127.0.0.1:2", 1).unwrap();
        assert!(pool.set_weight("127.0.0.1:2", 3));
        assert!(!pool.set_weight("127.0.0.1:9", 3));
        let share = share_of(&pool, &added, 4000);
        assert!((share - 0.75).abs() < 0.01, "{share}");
    }

    #[test]
    fn retry_budget_allows_a_share_plus_a_floor() {
        let pool = pool("retry = { budget_ratio = 0.2, budget_min_per_second = 0 }");
        for _ in 0..100 {
            let _slot = pool.acquire_slot().unwrap();
        }
        let granted = (0..100).filter(|_| pool.try_retry()).count();
        assert_eq!(granted, 20);
        assert_eq!(pool.stats.retry_budget_exhausted.load(Relaxed), 80);
    }
}
