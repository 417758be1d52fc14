//! One connection type for a standalone Redis and a Redis Cluster, so every command in
//! the tier is written once. Both reconnect by themselves; both connect lazily, so a
//! Redis that is down at start is retried rather than fatal.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterConfig;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::RedisConfig;

/// Keys asked for per SCAN step.
const SCAN_COUNT: usize = 500;

#[derive(Clone)]
pub enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// What `RedisTier::new` needs: the command connection and clients for pub/sub.
pub struct Connected {
    pub conn: Conn,
    /// Plain clients for subscribing: the standalone server, or each seed node of a
    /// cluster (classic pub/sub reaches every node of a cluster, so any one will do).
    pub pubsub: Vec<redis::Client>,
}

pub fn connect(config: &RedisConfig) -> RedisResult<Connected> {
    let connect_timeout = config.timeout.max(Duration::from_millis(200));
    if config.cluster_nodes.is_empty() {
        let url = config.url.as_deref().unwrap_or_default();
        let client = redis::Client::open(url)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        return Ok(Connected {
            conn: Conn::Standalone(conn),
            pubsub: vec![client],
        });
    }
    let pubsub = config
        .cluster_nodes
        .iter()
        .map(|url| redis::Client::open(url.as_str()))
        .collect::<RedisResult<Vec<_>>>()?;
    let client = redis::cluster::ClusterClientBuilder::new(config.cluster_nodes.clone())
        .retries(1)
        .max_retry_wait(500)
        .build()?;
    let cluster_config = ClusterConfig::new()
        .set_connection_timeout(connect_timeout)
        .set_response_timeout(config.timeout);
    let conn = client.get_pending_async_connection_with_config(cluster_config);
    Ok(Connected {
        conn: Conn::Cluster(conn),
        pubsub,
    })
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Every key matching `pattern`. On a cluster each primary is scanned with its own
    /// cursor: one SCAN only ever sees the node it ran on.
    pub async fn scan_all(&mut self, pattern: &str) -> RedisResult<Vec<String>> {
        let mut keys = Vec::new();
        match self {
            Conn::Standalone(conn) => {
                let mut cursor = 0u64;
                loop {
                    let (next, batch): (u64, Vec<String>) =
                        scan_step(cursor, pattern).query_async(conn).await?;
                    keys.extend(batch);
                    if next == 0 {
                        return Ok(keys);
                    }
                    cursor = next;
                }
            }
            Conn::Cluster(conn) => {
                let everywhere =
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let first = conn
                    .route_command(scan_step(0, pattern), everywhere)
                    .await?;
                let Value::Map(per_node) = first else {
                    return Err(unexpected("SCAN on every primary"));
                };
                for (address, reply) in per_node {
                    let address: String = redis::from_redis_value(address)?;
                    let (mut cursor, batch): (u64, Vec<String>) = redis::from_redis_value(reply)?;
                    keys.extend(batch);
                    let (host, port) = address
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                        .ok_or_else(|| unexpected("node address"))?;
                    while cursor != 0 {
                        let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        let reply = conn.route_command(scan_step(cursor, pattern), node).await?;
                        let (next, batch): (u64, Vec<String>) = redis::from_redis_value(reply)?;
                        keys.extend(batch);
                        cursor = next;
                    }
                }
                Ok(keys)
            }
        }
    }
}

fn scan_step(cursor: u64, pattern: &str) -> Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_COUNT);
    cmd
}

fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}
