//! The runtimes that serve client connections. With `threads = 1` that is the runtime
//! weir was started on (one thread for everything). Otherwise each worker thread runs a
//! single-threaded tokio runtime of its own, nginx's worker model: each accepts on its own
//! `SO_REUSEPORT` socket of every listener (the kernel spreads connections across them),
//! and a connection, its requests and their upstream exchanges stay on the thread that
//! accepted it, with that thread's idle upstream connections. No work stealing, no task
//! moving between threads; what the threads share (endpoint state, breakers, cache, rate
//! limits, counters) is lock-free. The admin port, the control loop, health checks and
//! discovery stay on the starting runtime.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The serving runtimes, stopped when dropped.
#[derive(Debug)]
pub(crate) struct Workers {
    handles: Vec<Handle>,
    /// Ends every worker thread's runtime.
    stop: CancellationToken,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Workers {
    /// `threads`: 1 = serve on the current runtime; 0 = one worker per core; N = N workers.
    /// Must be called from within a tokio runtime.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        if threads == 1 {
            return Ok(Self {
                handles: vec![Handle::current()],
                stop,
                threads: Mutex::new(Vec::new()),
            });
        }
        let count = match threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let mut handles = Vec::with_capacity(count);
        let mut joins = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let join = std::thread::Builder::new()
                .name(format!("weir-worker-{index}"))
                .spawn(move || runtime.block_on(stop.cancelled()))?;
            joins.push(join);
        }
        Ok(Self {
            handles,
            stop,
            threads: Mutex::new(joins),
        })
    }

    /// One handle per serving runtime.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Ends the worker threads (tasks still on them are dropped) and waits for them.
    pub fn stop(&self) {
        self.stop.cancel();
        let joins = self
            .threads
            .lock()
            .map(|mut joins| std::mem::take(&mut *joins))
            .unwrap_or_default();
        for join in joins {
            let _ = join.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Binds `count` listening sockets to `address` (with `SO_REUSEPORT` when more than one,
/// so each worker accepts on its own); a port of 0 is chosen once, by the first.
pub(crate) fn bind(
    address: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::with_capacity(count);
    let mut bound_to = address;
    for _ in 0..count.max(1) {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(bound_to),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if count > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&bound_to.into())?;
        socket.listen(1024)?;
        let listener = std::net::TcpListener::from(socket);
        bound_to = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(sockets)
}
