//! DNS service discovery: a pool's `{ dns = "name:port" }` and `{ srv = "_svc._proto.name" }`
//! entries become one endpoint per address, kept in step with the records.
//!
//! One task per entry asks again when the answer's TTL ends (bounded by `[dns] min_ttl` and
//! `max_ttl`) and soon after a connection to one of its endpoints fails. An answer is
//! applied the way a reload applies a new endpoint list: addresses that stay keep their
//! endpoint (latency, breaker, in-flight), new ones join with slow start, gone ones drain
//! (they take nothing new; what they have finishes). A failed or empty answer changes
//! nothing: the last good set stays, the failure is logged and counted.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio_util::sync::CancellationToken;

use super::endpoint::Arrival;
use super::pool::Pool;
use crate::config::{DnsConfig, EndpointSource};

/// Why a name gave no endpoints this time.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("resolver settings: {0}")]
    Setup(String),
    #[error("{0}")]
    Lookup(String),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("the answer has no usable address")]
    Empty,
}

/// Counters of one entry, kept across reloads that keep the entry.
#[derive(Debug, Default)]
pub struct DiscoveryStats {
    pub answers: AtomicU64,
    pub failures: AtomicU64,
    /// Endpoints the entry has in its pool now.
    pub endpoints: AtomicU64,
    /// The last failure, cleared by the next good answer.
    pub last_error: Mutex<Option<String>>,
    /// When the entry was last asked and when it is due again: a task started by a
    /// reload (or after startup's first answers) waits for that instead of asking at once.
    schedule: Mutex<Option<Schedule>>,
}

#[derive(Debug, Clone, Copy)]
struct Schedule {
    asked: tokio::time::Instant,
    due: tokio::time::Instant,
}

/// A `dns` or `srv` entry of a pool.
#[derive(Debug)]
pub struct Source {
    pub entry: EndpointSource,
    /// `dns:name:port` / `srv:name`: marks the endpoints it owns, labels logs and metrics.
    pub label: Arc<str>,
    /// Weight of each endpoint of a `dns` entry; `None` for `srv`, whose records carry
    /// their endpoints' weights.
    pub weight: Option<u32>,
    pub stats: Arc<DiscoveryStats>,
}

impl Source {
    /// The entry's source, or `None` for a fixed address. `previous` carries counters
    /// across a reload.
    pub fn new(
        entry: &EndpointSource,
        weight: u32,
        previous: Option<&Arc<DiscoveryStats>>,
    ) -> Option<Self> {
        if entry.address().is_some() {
            return None;
        }
        Some(Self {
            entry: entry.clone(),
            label: entry.label().into(),
            weight: (!matches!(entry, EndpointSource::Srv(_))).then_some(weight),
            stats: previous.cloned().unwrap_or_default(),
        })
    }

    fn schedule(&self) -> Option<Schedule> {
        self.stats.schedule.lock().ok().and_then(|s| *s)
    }

    fn set_schedule(&self, schedule: Schedule) {
        if let Ok(mut slot) = self.stats.schedule.lock() {
            *slot = Some(schedule);
        }
    }
}

/// What one resolution found: each address with what is known of it, and how long that
/// holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub endpoints: BTreeMap<SocketAddr, Found>,
    pub ttl: Duration,
}

/// One address of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The SRV records' weight (summed when several name it); 0 for A/AAAA records, whose
    /// entry gives the weight.
    pub weight: u32,
    /// `Host` for the endpoint when the pool does not preserve the client's: the name
    /// (with the port), never the address.
    pub host: String,
}

/// A resolver built from `[dns]`.
pub struct Resolver {
    inner: TokioResolver,
    /// Bound on one whole resolution (SRV plus its targets), past the resolver's own.
    limit: Duration,
}

impl Resolver {
    pub fn new(config: &DnsConfig) -> Result<Self, DiscoveryError> {
        let mut builder = if config.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DiscoveryError::Setup(e.to_string()))?
        } else {
            let servers = config
                .servers
                .iter()
                .map(|server| {
                    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                        .into_iter()
                        .map(|mut connection| {
                            connection.port = server.port();
                            connection
                        })
                        .collect();
                    NameServerConfig::new(server.ip(), true, connections)
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options = builder.options_mut();
        options.timeout = config.timeout;
        options.attempts = 2;
        let inner = builder
            .build()
            .map_err(|e| DiscoveryError::Setup(e.to_string()))?;
        Ok(Self {
            inner,
            limit: config.timeout * 6,
        })
    }

    /// Resolves an entry now (nothing from an earlier answer is reused).
    pub async fn resolve(&self, entry: &EndpointSource) -> Result<Answer, DiscoveryError> {
        self.inner.clear_cache();
        let lookup = async {
            match entry {
                EndpointSource::Address(_) => Err(DiscoveryError::Empty),
                EndpointSource::Dns(name_port) => self.resolve_addresses(name_port).await,
                EndpointSource::Srv(name) => self.resolve_srv(name).await,
            }
        };
        let answer = tokio::time::timeout(self.limit, lookup)
            .await
            .map_err(|_| DiscoveryError::TimedOut(self.limit))??;
        if answer.endpoints.is_empty() {
            return Err(DiscoveryError::Empty);
        }
        Ok(answer)
    }

    async fn resolve_addresses(&self, name_port: &str) -> Result<Answer, DiscoveryError> {
        let (name, port) = split_name_port(name_port)?;
        let found = self
            .inner
            .lookup_ip(name)
            .await
            .map_err(|e| DiscoveryError::Lookup(e.to_string()))?;
        let endpoints = found
            .iter()
            .map(|ip| {
                let found = Found {
                    weight: 0,
                    host: name_port.to_owned(),
                };
                (SocketAddr::new(ip, port), found)
            })
            .collect();
        Ok(Answer {
            endpoints,
            ttl: remaining(found.valid_until()),
        })
    }

    async fn resolve_srv(&self, name: &str) -> Result<Answer, DiscoveryError> {
        let found = self
            .inner
            .srv_lookup(name)
            .await
            .map_err(|e| DiscoveryError::Lookup(e.to_string()))?;
        let mut ttl = remaining(found.valid_until());
        let records: Vec<_> = found
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) if srv.port != 0 => Some(srv.clone()),
                _ => None,
            })
            .collect();
        // RFC 2782: only the best (lowest) priority is used while it has targets.
        let best = records.iter().map(|srv| srv.priority).min();
        let mut endpoints: BTreeMap<SocketAddr, Found> = BTreeMap::new();
        for srv in records.iter().filter(|srv| Some(srv.priority) == best) {
            let target = srv.target.to_ascii();
            let target = target.trim_end_matches('.');
            // Servers usually send the targets' addresses along; ask only when they did not.
            let mut addresses = addresses_of(found.additionals(), &srv.target);
            if addresses.is_empty() {
                let ips = self
                    .inner
                    .lookup_ip(srv.target.clone())
                    .await
                    .map_err(|e| DiscoveryError::Lookup(format!("SRV target {target}: {e}")))?;
                ttl = ttl.min(remaining(ips.valid_until()));
                addresses = ips.iter().collect();
            }
            for ip in addresses {
                let address = SocketAddr::new(ip, srv.port);
                // Weight 0 means "only when nothing else is there"; 1 is as close as a
                // weighted pick gets.
                let weight = u32::from(srv.weight.max(1));
                endpoints
                    .entry(address)
                    .or_insert_with(|| Found {
                        weight: 0,
                        host: format!("{target}:{}", srv.port),
                    })
                    .weight += weight;
            }
        }
        Ok(Answer { endpoints, ttl })
    }
}

/// A/AAAA records for `name` among `records`.
fn addresses_of(records: &[Record], name: &hickory_resolver::proto::rr::Name) -> Vec<IpAddr> {
    records
        .iter()
        .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA) && &r.name == name)
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

fn split_name_port(name_port: &str) -> Result<(&str, u16), DiscoveryError> {
    name_port
        .rsplit_once(':')
        .and_then(|(name, port)| Some((name, port.parse().ok()?)))
        .ok_or_else(|| DiscoveryError::Setup(format!("{name_port:?} is not name:port")))
}

fn remaining(valid_until: Instant) -> Duration {
    valid_until.saturating_duration_since(Instant::now())
}

/// When to ask again after an answer with `ttl`, within the configured bounds.
pub fn next_interval(ttl: Duration, config: &DnsConfig) -> Duration {
    ttl.clamp(config.min_ttl, config.max_ttl)
}

/// When to ask again after `failures` failures in a row: from `min_ttl`, doubling, at most
/// `max_ttl`.
pub fn retry_interval(failures: u32, config: &DnsConfig) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    (config.min_ttl * factor).min(config.max_ttl)
}

/// Asks every `dns`/`srv` entry of `pools` once, together, and applies the answers: a
/// started weir has its discovered endpoints before it takes its first request. Bounded by
/// twice `[dns] timeout`; entries that fail stay empty until their task succeeds.
pub async fn first_answers<'a>(pools: impl Iterator<Item = &'a Arc<Pool>>, dns: &DnsConfig) {
    let mut jobs = tokio::task::JoinSet::new();
    let mut resolver = None;
    for pool in pools {
        for index in 0..pool.discovery().len() {
            let resolver = match &resolver {
                Some(resolver) => Arc::clone(resolver),
                None => match Resolver::new(dns) {
                    Ok(built) => Arc::clone(resolver.insert(Arc::new(built))),
                    // Each entry's task logs and counts it.
                    Err(_) => return,
                },
            };
            let pool = Arc::clone(pool);
            let dns = dns.clone();
            jobs.spawn(async move {
                if let Some(source) = pool.discovery().get(index) {
                    ask(&pool, source, &resolver, &dns, 0).await;
                }
            });
        }
    }
    // Startup waits for one attempt, not for the resolver's retries: the entries' tasks
    // keep asking, and add the endpoints when DNS answers.
    let limit = dns.timeout * 2;
    if tokio::time::timeout(limit, jobs.join_all()).await.is_err() {
        tracing::warn!(
            ?limit,
            "DNS gave no answer for some entries before the first request; their endpoints are added when it does"
        );
    }
}

/// Keeps one entry's endpoints in step with its records until `stop`.
pub async fn run(pool: Arc<Pool>, index: usize, dns: DnsConfig, stop: CancellationToken) {
    let Some(source) = pool.discovery().get(index) else {
        return;
    };
    let resolver = match Resolver::new(&dns) {
        Ok(resolver) => resolver,
        Err(error) => {
            record_failure(source, &error);
            tracing::error!(pool = %pool.name, entry = %source.label, %error, "DNS discovery cannot start");
            return;
        }
    };
    let mut failures = 0u32;
    loop {
        if let Some(Schedule { asked, due }) = source.schedule() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
                _ = pool.rediscover.notified() => {
                    // A connection failed: ask again, but not sooner than min_ttl after the
                    // last answer, however many connections fail.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep_until(asked + dns.min_ttl) => {}
                    }
                }
            }
        }
        failures = ask(&pool, source, &resolver, &dns, failures).await;
    }
}

/// One resolution of `source`, applied; returns the failures in a row after it.
async fn ask(
    pool: &Pool,
    source: &Source,
    resolver: &Resolver,
    dns: &DnsConfig,
    failures: u32,
) -> u32 {
    let asked = tokio::time::Instant::now();
    let (failures, wait) = match resolver.resolve(&source.entry).await {
        Ok(answer) => {
            apply(pool, source, &answer);
            source.stats.answers.fetch_add(1, Relaxed);
            if let Ok(mut last) = source.stats.last_error.lock() {
                *last = None;
            }
            (0, next_interval(answer.ttl, dns))
        }
        Err(error) => {
            record_failure(source, &error);
            tracing::warn!(
                pool = %pool.name,
                entry = %source.label,
                %error,
                kept = source.stats.endpoints.load(Relaxed),
                "DNS discovery failed; keeping the last good endpoints"
            );
            (failures + 1, retry_interval(failures + 1, dns))
        }
    };
    source.set_schedule(Schedule {
        asked,
        due: asked + wait,
    });
    failures
}

fn record_failure(source: &Source, error: &DiscoveryError) {
    source.stats.failures.fetch_add(1, Relaxed);
    if let Ok(mut last) = source.stats.last_error.lock() {
        *last = Some(error.to_string());
    }
}

/// Applies an answer to the entry's endpoints in `pool`.
pub fn apply(pool: &Pool, source: &Source, answer: &Answer) {
    let owned: Vec<_> = pool
        .endpoints()
        .iter()
        .filter(|e| e.discovered_by.as_deref() == Some(&*source.label))
        .cloned()
        .collect();
    let first = owned.is_empty();
    for endpoint in &owned {
        let stays = endpoint
            .address
            .parse::<SocketAddr>()
            .is_ok_and(|a| answer.endpoints.contains_key(&a));
        if !stays && pool.remove_endpoint(&endpoint.address).is_some() {
            endpoint.set_draining(true, "no longer in DNS");
            tracing::info!(pool = %pool.name, entry = %source.label, endpoint = %endpoint.address, "no longer in DNS: draining");
        }
    }
    for (address, found) in &answer.endpoints {
        let weight = source.weight.unwrap_or(found.weight);
        let address_text = address.to_string();
        if let Some(kept) = owned.iter().find(|e| e.address == address_text) {
            if kept.weight() != weight {
                pool.set_weight(&address_text, weight);
            }
            continue;
        }
        // The first answer of a pool's start is its initial set; later ones join.
        let arrival = if first && !pool.has_history() {
            Arrival::WithThePool
        } else {
            Arrival::Joining
        };
        if pool.add_discovered(&address_text, weight, Some(&found.host), source, arrival) {
            tracing::info!(pool = %pool.name, entry = %source.label, endpoint = %address_text, "found in DNS: added");
        }
    }
    let count = pool
        .endpoints()
        .iter()
        .filter(|e| e.discovered_by.as_deref() == Some(&*source.label))
        .count();
    source.stats.endpoints.store(count as u64, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_follow_the_ttl_within_bounds_and_back_off_on_failure() {
        let dns = DnsConfig {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30),
            ..DnsConfig::default()
        };
        assert_eq!(next_interval(Duration::ZERO, &dns), Duration::from_secs(1));
        assert_eq!(
            next_interval(Duration::from_secs(7), &dns),
            Duration::from_secs(7)
        );
        assert_eq!(
            next_interval(Duration::from_secs(86_400), &dns),
            Duration::from_secs(30)
        );
        let backoff: Vec<u64> = (1..=7).map(|n| retry_interval(n, &dns).as_secs()).collect();
        assert_eq!(backoff, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_interval(1000, &dns), Duration::from_secs(30));
    }

    #[test]
    fn name_and_port_split_at_the_last_colon() {
        assert_eq!(
            split_name_port("api.internal:8080").unwrap(),
            ("api.internal", 8080)
        );
        assert!(split_name_port("api.internal").is_err());
        assert!(split_name_port("api.internal:http").is_err());
    }
}
