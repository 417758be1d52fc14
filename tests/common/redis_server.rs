//! A real redis-server for the tests that need one, on a free loopback port.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    pub port: u16,
    extra_args: Vec<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports: all are held at once while they are chosen, so none repeats.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("a bound port").port())
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    async fn start_with(extra_args: Vec<String>) -> Self {
        Self::start_on(free_port(), extra_args).await
    }

    async fn start_on(port: u16, extra_args: Vec<String>) -> Self {
        let mut server = RedisServer {
            port,
            extra_args,
            child: None,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    /// Clients subscribed to `channel` on this server (`PUBSUB NUMSUB`).
    pub async fn subscribers(&self, channel: &str) -> i64 {
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut self.connection().await)
            .await
            .unwrap();
        count
    }

    pub async fn dbsize(&self) -> i64 {
        let mut conn = self.connection().await;
        redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-primary Redis Cluster (no replicas), each node a real redis-server on free
/// ports, its slots split in thirds; built with CLUSTER ADDSLOTSRANGE and MEET.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    bus_ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Client and bus ports chosen together, so that no node's bus port is another's.
        let ports = free_ports::<6>();
        let (client_ports, bus_ports) = ports.split_at(3);
        let mut nodes = Vec::new();
        for (i, (&port, &bus_port)) in client_ports.iter().zip(bus_ports).enumerate() {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let args = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-port".into(),
                bus_port.to_string(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--dir".into(),
                node_dir.display().to_string(),
            ];
            nodes.push(RedisServer::start_on(port, args).await);
        }
        let slots = [(0, 5460), (5461, 10922), (10923, 16383)];
        for (node, (first, last)) in nodes.iter().zip(slots) {
            let mut conn = node.connection().await;
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let cluster = RedisCluster {
            nodes,
            bus_ports: bus_ports.to_vec(),
            _dir: dir,
        };
        cluster.wait_until_ok().await;
        cluster
    }

    /// Node 0 meets the others (again: a handshake lost on a busy machine is retried).
    async fn meet(&self) {
        let mut first = self.nodes[0].connection().await;
        for (node, bus_port) in self.nodes.iter().zip(&self.bus_ports).skip(1) {
            // The bus port is not port + 10000 here, so MEET has to be told it.
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port)
                .arg(*bus_port)
                .query_async(&mut first)
                .await
                .unwrap();
        }
    }

    /// Waits up to 30 s for every node to know the others and serve all slots.
    async fn wait_until_ok(&self) {
        for attempt in 0..1200 {
            if attempt % 80 == 0 {
                self.meet().await;
            }
            let mut all_ok = true;
            for node in &self.nodes {
                let mut conn = node.connection().await;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                all_ok &=
                    info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3");
            }
            if all_ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the redis cluster did not reach cluster_state:ok");
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Clients subscribed to `channel` on any node (each subscribes through one).
    pub async fn subscribers(&self, channel: &str) -> i64 {
        let mut total = 0;
        for node in &self.nodes {
            total += node.subscribers(channel).await;
        }
        total
    }

    /// Keys held by each node, in node order.
    pub async fn keys_per_node(&self) -> Vec<i64> {
        let mut sizes = Vec::new();
        for node in &self.nodes {
            sizes.push(node.dbsize().await);
        }
        sizes
    }
}
