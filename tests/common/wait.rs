//! Waiting for state, never for a fixed time: each helper polls what it waits for until a
//! deadline, so a busy machine makes a test slower, not red.

use std::future::Future;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

/// How long any awaited state may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Polls `check` every 10 ms until it holds; fails the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn cache_of(weir: &weir::app::Running) -> std::sync::Arc<weir::cache::Cache> {
    weir.state()
        .snapshot
        .load()
        .cache
        .clone()
        .expect("the cache is on")
}

/// Waits until the work requests left behind (stores in L1 and L2, drains, refreshes) has
/// finished: after it, what is not stored will not be.
pub async fn settled(weir: &weir::app::Running) {
    let cache = cache_of(weir);
    eventually("background cache work to finish", async || {
        cache.background_tasks() == 0
    })
    .await;
}

/// Waits until weir's cache has stored `n` responses in all.
pub async fn stored(weir: &weir::app::Running, n: u64) {
    let cache = cache_of(weir);
    eventually(&format!("{n} stores"), async || {
        cache.stats.stores.load(SeqCst) >= n
    })
    .await;
}

/// Waits until `instances` clients listen on `weir`'s purge channel, as `subscribers`
/// (the Redis server's or cluster's count) reports: pub/sub keeps no backlog, so a purge
/// published earlier would not reach an instance still connecting.
pub async fn purge_bus_listening<F: Future<Output = i64>>(
    weir: &weir::app::Running,
    instances: i64,
    subscribers: impl Fn(String) -> F,
) {
    let channel = weir
        .state()
        .snapshot
        .load()
        .redis
        .as_ref()
        .expect("[redis] is configured")
        .channel();
    eventually("every instance on the purge channel", async || {
        subscribers(channel.clone()).await >= instances
    })
    .await;
}
