//! Cross-instance invalidation over Redis pub/sub: every purge is published, and every
//! instance applies the others' purges to its own L1.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::redis::RedisTier;
use super::{Cache, PurgeTarget};

#[derive(Debug, Serialize, Deserialize)]
struct PurgeMessage {
    origin: u64,
    target: PurgeTarget,
    soft: bool,
}

/// Publishes a purge; `true` if Redis took it.
pub async fn publish(cache: &Cache, redis: &RedisTier, target: &PurgeTarget, soft: bool) -> bool {
    let message = PurgeMessage {
        origin: cache.instance,
        target: target.clone(),
        soft,
    };
    let Ok(text) = serde_json::to_string(&message) else {
        return false;
    };
    redis.publish(text).await
}

/// Listens on the purge channel until `stop`, reconnecting with backoff when Redis goes
/// away. Holds only a weak reference: a dropped cache ends the task.
pub async fn subscribe(cache: Weak<Cache>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    // A cluster gives several nodes to subscribe through: move on to the next after a failure.
    let mut attempt = 0usize;
    loop {
        let Some((client, channel)) = cache.upgrade().and_then(|c| {
            let redis = c.redis()?;
            let clients = redis.pubsub_clients();
            let client = clients.get(attempt % clients.len().max(1))?.clone();
            Some((client, redis.channel()))
        }) else {
            return;
        };
        attempt += 1;
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()) => pubsub,
        };
        match connected {
            Ok(Ok(mut pubsub)) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    tracing::debug!(channel, "listening for purges from other instances");
                    let mut messages = pubsub.into_on_message();
                    loop {
                        let message = tokio::select! {
                            _ = stop.cancelled() => return,
                            m = messages.next() => m,
                        };
                        let Some(message) = message else { break };
                        let Some(cache) = cache.upgrade() else { return };
                        apply(&cache, message.get_payload_bytes());
                    }
                    tracing::warn!("purge channel lost; reconnecting");
                }
                Err(err) => tracing::debug!(error = %err, "purge channel subscribe failed"),
            },
            Ok(Err(err)) => tracing::debug!(error = %err, "purge channel connect failed"),
            Err(_) => tracing::debug!("purge channel connect timed out"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn apply(cache: &Arc<Cache>, payload: &[u8]) {
    let message: PurgeMessage = match serde_json::from_slice(payload) {
        Ok(m) => m,
        Err(err) => {
            tracing::warn!(error = %err, "unreadable purge message ignored");
            return;
        }
    };
    if message.origin == cache.instance {
        return;
    }
    let purged = cache.purge_memory(&message.target, message.soft);
    tracing::debug!(target = ?message.target, soft = message.soft, purged, "applied a purge from another instance");
}
