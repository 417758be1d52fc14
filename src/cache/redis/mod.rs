//! L2: a shared Redis, with short timeouts and a breaker. Redis is an optimisation: every
//! failure here turns into a miss or a skipped write, never into a failed request.
//!
//! Keys (with the configured prefix `p`), hash-tagged so Redis Cluster keeps what belongs
//! together in one slot:
//! - `p:o:{primary}` and `p:o:{primary}#v…`: stored responses and vary records;
//! - `p:t:{tag}`: set of object keys carrying a surrogate key;
//! - `p:l:{primary}`: coalescing lock; `p:purge`: the invalidation channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

mod conn;

use redis::AsyncCommands;

use super::object::Entry;
use crate::config::RedisConfig;
use conn::Conn;

/// Consecutive failures that open the breaker, and how long it then stays open when no
/// probe task runs (outside a runtime).
const BREAKER_FAILURES: u32 = 3;
const BREAKER_OPEN: Duration = Duration::from_secs(2);
/// While the breaker is open, Redis is PINGed this often, and the breaker closes at the
/// first answer: recovery takes about this long after Redis is back, and no request pays
/// a timeout to find out.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// A prefix purge walks the whole keyspace (every primary of a cluster): an admin action
/// that may take far longer than one cache command.
const PURGE_SCAN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid redis url: {0}")]
    Url(redis::RedisError),
}

#[derive(Debug, Default)]
pub struct RedisStats {
    pub commands: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub skipped: AtomicU64,
    pub latency_micros_total: AtomicU64,
    pub breaker_opened: AtomicU64,
}

pub struct RedisTier {
    /// What it was built from: a reload with the same settings keeps this connection.
    pub config: RedisConfig,
    conn: Conn,
    pubsub: Vec<redis::Client>,
    timeout: Duration,
    prefix: String,
    started: Instant,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `started` until which commands are skipped.
    open_until_ms: AtomicU64,
    open: AtomicBool,
    /// Whether a probe task watches the breaker (see [`probe_while_open`]).
    probing: AtomicBool,
    /// Wakes the probe task when the breaker opens.
    opened: Arc<tokio::sync::Notify>,
    /// Stops the probe task when the tier is dropped (a reload changed `[redis]`).
    shutdown: tokio_util::sync::CancellationToken,
    pub stats: RedisStats,
}

impl Drop for RedisTier {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

pub enum Lock {
    Acquired(String),
    HeldElsewhere,
    Unavailable,
}

impl RedisTier {
    /// Connects lazily: a Redis that is down at start is retried, not fatal.
    pub fn new(config: &RedisConfig) -> Result<Self, RedisError> {
        let connected = conn::connect(config).map_err(RedisError::Url)?;
        Ok(Self {
            config: config.clone(),
            conn: connected.conn,
            pubsub: connected.pubsub,
            timeout: config.timeout,
            prefix: config.key_prefix.clone(),
            started: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            opened: Arc::new(tokio::sync::Notify::new()),
            shutdown: tokio_util::sync::CancellationToken::new(),
            stats: RedisStats::default(),
        })
    }

    /// The instance's one Redis connection for a config: `previous`'s when its settings are
    /// unchanged (a reload keeps it), a new one otherwise; `None` without `[redis]` or with
    /// an unusable URL (logged: Redis is never required).
    pub fn shared(config: Option<&RedisConfig>, previous: Option<&Arc<Self>>) -> Option<Arc<Self>> {
        let config = config?;
        if let Some(old) = previous.filter(|old| old.config == *config) {
            return Some(Arc::clone(old));
        }
        match Self::new(config) {
            Ok(tier) => {
                let tier = Arc::new(tier);
                if tokio::runtime::Handle::try_current().is_ok() {
                    tier.probing.store(true, Relaxed);
                    tokio::spawn(probe_while_open(
                        Arc::downgrade(&tier),
                        Arc::clone(&tier.opened),
                        tier.shutdown.clone(),
                    ));
                }
                Some(tier)
            }
            Err(error) => {
                tracing::error!(%error, "redis disabled");
                None
            }
        }
    }

    /// Clients to subscribe through, in order of preference (several for a cluster).
    pub fn pubsub_clients(&self) -> &[redis::Client] {
        &self.pubsub
    }

    pub fn channel(&self) -> String {
        format!("{}:purge", self.prefix)
    }

    pub fn object_key(&self, key: &str) -> String {
        let primary = super::key::primary_of(key);
        let rest = &key[primary.len()..];
        format!("{}:o:{{{primary}}}{rest}", self.prefix)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}:t:{{{tag}}}", self.prefix)
    }

    fn lock_key(&self, primary: &str) -> String {
        format!("{}:l:{{{primary}}}", self.prefix)
    }

    /// Whether the breaker lets a command through now.
    pub fn available(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        now >= self.open_until_ms.load(Relaxed)
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Relaxed)
    }

    /// Runs one command under the timeout and breaker; `None` when skipped or failed.
    async fn run<T, F>(&self, what: &'static str, command: F) -> Option<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        self.run_within(self.timeout, what, command).await
    }

    async fn run_within<T, F>(&self, timeout: Duration, what: &'static str, command: F) -> Option<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if !self.available() {
            self.stats.skipped.fetch_add(1, Relaxed);
            return None;
        }
        self.stats.commands.fetch_add(1, Relaxed);
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, command).await;
        self.stats
            .latency_micros_total
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        match result {
            Ok(Ok(value)) => {
                self.succeeded();
                Some(value)
            }
            Ok(Err(err)) => {
                self.stats.errors.fetch_add(1, Relaxed);
                self.failed(what, &err.to_string());
                None
            }
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Relaxed);
                self.failed(what, "timed out");
                None
            }
        }
    }

    fn succeeded(&self) {
        self.consecutive_failures.store(0, Relaxed);
        if self.open.swap(false, Relaxed) {
            self.open_until_ms.store(0, Relaxed);
            tracing::info!("redis is reachable again; L2 cache and shared limits resumed");
        }
    }

    fn failed(&self, what: &str, error: &str) {
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures >= BREAKER_FAILURES {
            // With a probe running, only its PING closes the breaker: requests stop paying
            // for failed commands until Redis answers. Without one, retry after a while.
            let until = if self.probing.load(Relaxed) {
                u64::MAX
            } else {
                (self.started.elapsed() + BREAKER_OPEN).as_millis() as u64
            };
            self.open_until_ms.store(until, Relaxed);
            if !self.open.swap(true, Relaxed) {
                self.stats.breaker_opened.fetch_add(1, Relaxed);
                self.opened.notify_one();
                tracing::warn!(
                    command = what,
                    error,
                    "redis unavailable; L2 cache bypassed until it answers again"
                );
            }
        } else {
            tracing::debug!(command = what, error, "redis command failed");
        }
    }

    pub async fn get(&self, key: &str) -> Option<Entry> {
        let mut conn = self.conn.clone();
        let redis_key = self.object_key(key);
        let bytes: Option<Vec<u8>> = self
            .run("GET", async move { conn.get(redis_key).await })
            .await
            .flatten();
        match Entry::decode(&bytes?) {
            Ok(entry) => Some(entry),
            Err(err) => {
                tracing::warn!(key, error = %err, "unreadable L2 entry ignored");
                None
            }
        }
    }

    pub async fn put(&self, key: &str, entry: &Entry, keep: Duration, tags: &[String]) {
        let ms = keep.as_millis().max(1) as u64;
        let redis_key = self.object_key(key);
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(&redis_key).arg(entry.encode()).arg("PX").arg(ms);
        let stored: Option<()> = self
            .run("SET", async move { set.query_async(&mut conn).await })
            .await;
        if stored.is_none() {
            return;
        }
        // One pipeline per tag: the object and each tag set live in different slots,
        // and a cluster only pipelines commands of one slot.
        for tag in tags {
            let tag_key = self.tag_key(tag);
            let mut pipe = redis::pipe();
            pipe.cmd("SADD").arg(&tag_key).arg(&redis_key).ignore();
            // The set outlives its longest member: NX sets a first expiry, GT extends it.
            pipe.cmd("PEXPIRE").arg(&tag_key).arg(ms).arg("NX").ignore();
            pipe.cmd("PEXPIRE").arg(&tag_key).arg(ms).arg("GT").ignore();
            let mut conn = self.conn.clone();
            let _: Option<()> = self
                .run("SADD", async move { pipe.query_async(&mut conn).await })
                .await;
        }
    }

    /// Marks the entries stale in place, keeping their remaining lifetime.
    async fn mark_stale(&self, redis_keys: &[String]) -> usize {
        let mut marked = 0;
        for redis_key in redis_keys {
            let mut conn = self.conn.clone();
            let k = redis_key.clone();
            let bytes: Option<Vec<u8>> = self
                .run("GET", async move { conn.get(k).await })
                .await
                .flatten();
            let Some(Ok(Entry::Response(r))) = bytes.map(|b| Entry::decode(&b)) else {
                continue;
            };
            let stale = Entry::Response(std::sync::Arc::new(r.marked_stale()));
            let mut conn = self.conn.clone();
            let k = redis_key.clone();
            let ok: Option<()> = self
                .run("SET", async move {
                    redis::cmd("SET")
                        .arg(k)
                        .arg(stale.encode())
                        .arg("KEEPTTL")
                        .query_async(&mut conn)
                        .await
                })
                .await;
            marked += usize::from(ok.is_some());
        }
        marked
    }

    async fn purge_redis_keys(&self, redis_keys: Vec<String>, soft: bool) -> usize {
        if soft {
            return self.mark_stale(&redis_keys).await;
        }
        let mut deleted = 0;
        // One key per DEL: keys of different slots cannot share a command on a cluster.
        for k in redis_keys {
            let mut conn = self.conn.clone();
            let n: Option<usize> = self.run("DEL", async move { conn.del(k).await }).await;
            deleted += n.unwrap_or(0);
        }
        deleted
    }

    /// Purges an exact key (soft: marks stale).
    pub async fn purge_key(&self, key: &str, soft: bool) -> usize {
        self.purge_redis_keys(vec![self.object_key(key)], soft)
            .await
    }

    /// Purges every object whose key starts with `prefix`; a leading `/` matches the
    /// path of any host (SCAN; admin use only).
    pub async fn purge_prefix(&self, prefix: &str, soft: bool) -> usize {
        let any_host = prefix.starts_with('/');
        let pattern = if any_host {
            format!("{}:o:{{*", self.prefix)
        } else {
            format!("{}:o:{{{}*", self.prefix, glob_escape(prefix))
        };
        let mut conn = self.conn.clone();
        let keys: Option<Vec<String>> = self
            .run_within(PURGE_SCAN_TIMEOUT, "SCAN", async move {
                conn.scan_all(&pattern).await
            })
            .await;
        let object_start = self.prefix.len() + 4;
        let keys = keys
            .unwrap_or_default()
            .into_iter()
            .filter(|k| {
                !any_host
                    || k.get(object_start..)
                        .and_then(|key| key.find('/').map(|at| &key[at..]))
                        .is_some_and(|path| path.starts_with(prefix))
            })
            .collect();
        self.purge_redis_keys(keys, soft).await
    }

    /// Purges every object tagged `tag`, then the tag's index.
    pub async fn purge_tag(&self, tag: &str, soft: bool) -> usize {
        let tag_key = self.tag_key(tag);
        let mut conn = self.conn.clone();
        let k = tag_key.clone();
        let members: Option<Vec<String>> = self
            .run("SMEMBERS", async move { conn.smembers(k).await })
            .await;
        let purged = self
            .purge_redis_keys(members.unwrap_or_default(), soft)
            .await;
        if !soft {
            let mut conn = self.conn.clone();
            let _: Option<usize> = self
                .run("DEL", async move { conn.del(tag_key).await })
                .await;
        }
        purged
    }

    /// Takes the cross-instance coalescing lock for `primary`.
    pub async fn lock(&self, primary: &str, hold: Duration) -> Lock {
        let token = format!("{:016x}", fastrand::u64(..));
        let key = self.lock_key(primary);
        let mut conn = self.conn.clone();
        let t = token.clone();
        let set: Option<Option<String>> = self
            .run("SET NX", async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(t)
                    .arg("NX")
                    .arg("PX")
                    .arg(hold.as_millis().max(1) as u64)
                    .query_async(&mut conn)
                    .await
            })
            .await;
        match set {
            Some(Some(_)) => Lock::Acquired(token),
            Some(None) => Lock::HeldElsewhere,
            None => Lock::Unavailable,
        }
    }

    /// Releases the lock if it is still ours.
    pub async fn unlock(&self, primary: &str, token: &str) {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        let key = self.lock_key(primary);
        let mut conn = self.conn.clone();
        let token = token.to_owned();
        let _: Option<i64> = self
            .run("UNLOCK", async move {
                script.key(key).arg(token).invoke_async(&mut conn).await
            })
            .await;
    }

    /// Runs a Lua script on one key (so a cluster routes it to the key's node) and reads
    /// an integer back; `None` when skipped or failed. EVAL rather than EVALSHA: a cluster
    /// node may not have the script loaded, and Redis caches the compiled script anyway.
    pub async fn eval_int(
        &self,
        what: &'static str,
        script: &'static str,
        key: &[u8],
        args: &[u64],
    ) -> Option<i64> {
        let mut command = redis::cmd("EVAL");
        command.arg(script).arg(1).arg(key).arg(args);
        let mut conn = self.conn.clone();
        self.run(what, async move { command.query_async(&mut conn).await })
            .await
    }

    /// `true` if Redis took the message.
    pub async fn publish(&self, message: String) -> bool {
        let channel = self.channel();
        let mut conn = self.conn.clone();
        let sent: Option<i64> = self
            .run(
                "PUBLISH",
                async move { conn.publish(channel, message).await },
            )
            .await;
        sent.is_some()
    }
}

/// While the breaker is open, PINGs Redis every [`PROBE_INTERVAL`] and closes the breaker
/// at the first answer. Ends with the tier.
async fn probe_while_open(
    tier: std::sync::Weak<RedisTier>,
    opened_signal: Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        // Wait for the breaker to open, holding no strong reference meanwhile.
        let opened = opened_signal.notified();
        tokio::pin!(opened);
        opened.as_mut().enable();
        let Some(already_open) = tier.upgrade().map(|t| t.is_open()) else {
            return;
        };
        if !already_open {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut opened => {}
            }
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
            let Some(strong) = tier.upgrade() else { return };
            if !strong.is_open() {
                break;
            }
            let mut conn = strong.conn.clone();
            let ping = redis::cmd("PING");
            let answered = tokio::time::timeout(
                strong.timeout.max(PROBE_INTERVAL),
                ping.query_async::<String>(&mut conn),
            )
            .await;
            if let Ok(Ok(_)) = answered {
                strong.succeeded();
                break;
            }
        }
    }
}

/// Escapes Redis glob metacharacters so a prefix matches literally.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
