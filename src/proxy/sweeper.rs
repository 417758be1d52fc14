//! One watcher per accept loop for the client connections it accepted: it closes those
//! idle past the listener's `client_idle_timeout`, and tells all of them when the
//! listener drains or aborts.
//!
//! A connection's task used to wait on all of that itself: a timer for its idle check and
//! a future for each shutdown signal, polled beside the connection at every wake-up and
//! held in every connection's task for its whole life. Here the accept loop, which runs on
//! the same runtime, looks at its connections once per quarter of the idle timeout (nginx
//! and HAProxy also check idle connections on a coarse tick) and sets a flag in the
//! connection's [`ConnActivity`], waking its task; the task reads the flag when polled.
//! Nothing is shared between runtimes and nothing is locked.

use std::sync::Arc;
use std::time::Duration;

use super::conn::{Closing, ConnActivity};

/// A connection under watch and what the last ticks saw of it.
struct Watched {
    activity: Arc<ConnActivity>,
    /// Requests it had started at the last tick.
    started: u64,
    /// Consecutive ticks with no request in flight and none started.
    quiet_ticks: u32,
}

/// The connections of one accept loop.
pub struct Sweeper {
    idle_timeout: Duration,
    watched: Vec<Watched>,
}

/// Ticks without a request after which a connection is idle: the check runs every
/// quarter of the timeout, so a connection closes between 1× and 1.25× the timeout
/// after its last request ended.
const QUIET_TICKS: u32 = 4;

impl Sweeper {
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            idle_timeout,
            watched: Vec::new(),
        }
    }

    /// How often [`Sweeper::tick`] should run.
    pub fn period(&self) -> Duration {
        (self.idle_timeout / QUIET_TICKS).max(Duration::from_millis(1))
    }

    pub fn watch(&mut self, activity: Arc<ConnActivity>) {
        self.watched.push(Watched {
            started: activity.started(),
            activity,
            quiet_ticks: 0,
        });
    }

    /// Forgets connections that have ended and asks those idle for the whole timeout to
    /// close (gracefully: hyper closes an HTTP/1.1 connection between requests and sends
    /// HTTP/2 a GOAWAY).
    pub fn tick(&mut self) {
        self.forget_ended();
        for watched in &mut self.watched {
            let started = watched.activity.started();
            if started == watched.started && watched.activity.in_flight() == 0 {
                watched.quiet_ticks += 1;
                if watched.quiet_ticks == QUIET_TICKS {
                    watched.activity.close(Closing::Gracefully);
                }
            } else {
                watched.started = started;
                watched.quiet_ticks = 0;
            }
        }
    }

    /// Asks every connection to close: gracefully when the listener drains, at once when
    /// the drain deadline has passed.
    pub fn close_all(&mut self, how: Closing) {
        self.forget_ended();
        for watched in &self.watched {
            watched.activity.close(how);
        }
    }

    /// A connection's task holds its activity until it ends; then only this list does.
    fn forget_ended(&mut self) {
        self.watched
            .retain(|watched| Arc::strong_count(&watched.activity) > 1);
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Waker};

    use super::*;

    fn closing(activity: &ConnActivity) -> Closing {
        activity.closing(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_connection_closes_after_four_quiet_ticks_and_not_before() {
        let mut sweeper = Sweeper::new(Duration::from_secs(60));
        assert_eq!(sweeper.period(), Duration::from_secs(15));
        let activity = Arc::new(ConnActivity::default());
        sweeper.watch(Arc::clone(&activity));
        for _ in 0..3 {
            sweeper.tick();
            assert_eq!(closing(&activity), Closing::No);
        }
        sweeper.tick();
        assert_eq!(closing(&activity), Closing::Gracefully);
    }

    #[test]
    fn a_request_started_or_in_flight_keeps_a_connection_open() {
        let mut sweeper = Sweeper::new(Duration::from_secs(60));
        let activity = Arc::new(ConnActivity::default());
        sweeper.watch(Arc::clone(&activity));
        sweeper.tick();
        sweeper.tick();
        sweeper.tick();
        // A request starts and ends between two ticks: the count starts again.
        drop(activity.begin_request());
        for _ in 0..4 {
            sweeper.tick();
        }
        assert_eq!(
            closing(&activity),
            Closing::No,
            "closed 3 ticks after a request"
        );
        sweeper.tick();
        assert_eq!(closing(&activity), Closing::Gracefully);

        // A request in flight for many ticks is never idle.
        let busy = Arc::new(ConnActivity::default());
        sweeper.watch(Arc::clone(&busy));
        let request = busy.begin_request();
        for _ in 0..20 {
            sweeper.tick();
        }
        assert_eq!(closing(&busy), Closing::No);
        drop(request);
        for _ in 0..4 {
            sweeper.tick();
        }
        assert_eq!(closing(&busy), Closing::Gracefully);
    }

    #[test]
    fn shutdown_reaches_every_live_connection_and_ended_ones_are_forgotten() {
        let mut sweeper = Sweeper::new(Duration::from_secs(60));
        let live = Arc::new(ConnActivity::default());
        sweeper.watch(Arc::clone(&live));
        sweeper.watch(Arc::new(ConnActivity::default()));
        sweeper.tick();
        assert_eq!(
            sweeper.watched.len(),
            1,
            "the ended connection is forgotten"
        );
        sweeper.close_all(Closing::Gracefully);
        assert_eq!(closing(&live), Closing::Gracefully);
        sweeper.close_all(Closing::Now);
        assert_eq!(closing(&live), Closing::Now);
        // Aborting is not undone by a later graceful request.
        sweeper.close_all(Closing::Gracefully);
        assert_eq!(closing(&live), Closing::Now);
        drop(live);
        sweeper.tick();
        assert!(sweeper.watched.is_empty());
    }

    #[test]
    fn closing_wakes_the_connection_task() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let activity = ConnActivity::default();
        assert_eq!(
            activity.closing(&mut Context::from_waker(&waker)),
            Closing::No
        );
        activity.close(Closing::Gracefully);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }
}
