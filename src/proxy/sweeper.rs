//! One watcher per accept loop for the client connections it accepted: it closes those
//! idle past the listener's `client_idle_timeout`, has those quiet for a tick give back
//! what they keep for their next request, and tells all of them when the listener drains
//! or aborts.
//!
//! A connection's task used to wait on all of that itself: a timer for its idle check and
//! a future for each shutdown signal, polled beside the connection at every wake-up and
//! held in every connection's task for its whole life. Here the accept loop, which runs on
//! the same runtime, looks at its connections once a second (or four times per idle
//! timeout if that is shorter; nginx and HAProxy also check idle connections on a coarse
//! tick) and sets a flag in the connection's [`ConnActivity`], waking its task; the task
//! reads the flag when polled.
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
    period: Duration,
    /// Ticks without a request after which a connection is idle: it closes between the
    /// idle timeout and one period more after its last request ended.
    quiet_ticks_to_close: u32,
    watched: Vec<Watched>,
}

/// The longest period between two ticks. A connection that started no request since the
/// last tick and has none in flight gives back the header map and write queue it keeps
/// for its next request (about 1 KiB): an idle connection holds them for at most one
/// period, a busy one keeps reusing them.
const LONGEST_PERIOD: Duration = Duration::from_secs(1);

impl Sweeper {
    pub fn new(idle_timeout: Duration) -> Self {
        let period = (idle_timeout / 4)
            .min(LONGEST_PERIOD)
            .max(Duration::from_millis(1));
        // At least one: a zero timeout closes a connection at its first quiet tick.
        let quiet_ticks_to_close = idle_timeout.as_nanos().div_ceil(period.as_nanos()).max(1);
        Self {
            period,
            quiet_ticks_to_close: u32::try_from(quiet_ticks_to_close).unwrap_or(u32::MAX),
            watched: Vec::new(),
        }
    }

    /// How often [`Sweeper::tick`] should run.
    pub fn period(&self) -> Duration {
        self.period
    }

    pub fn watch(&mut self, activity: Arc<ConnActivity>) {
        self.watched.push(Watched {
            started: activity.started(),
            activity,
            quiet_ticks: 0,
        });
    }

    /// Forgets connections that have ended, has those quiet since the last tick give back
    /// what they keep for their next request, and asks those idle for the whole timeout
    /// to close (gracefully: hyper closes an HTTP/1.1 connection between requests and
    /// sends HTTP/2 a GOAWAY).
    pub fn tick(&mut self) {
        self.forget_ended();
        for watched in &mut self.watched {
            let started = watched.activity.started();
            if started == watched.started && watched.activity.in_flight() == 0 {
                watched.quiet_ticks = watched.quiet_ticks.saturating_add(1);
                if watched.quiet_ticks == 1 {
                    watched.activity.trim();
                }
                if watched.quiet_ticks == self.quiet_ticks_to_close {
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
    fn a_connection_closes_after_the_idle_timeout_in_ticks_and_not_before() {
        // Long timeouts: one tick a second, as many quiet ticks as seconds.
        let mut sweeper = Sweeper::new(Duration::from_secs(60));
        assert_eq!(sweeper.period(), Duration::from_secs(1));
        let activity = Arc::new(ConnActivity::default());
        sweeper.watch(Arc::clone(&activity));
        for _ in 0..59 {
            sweeper.tick();
            assert_eq!(closing(&activity), Closing::No);
        }
        sweeper.tick();
        assert_eq!(closing(&activity), Closing::Gracefully);

        // Short ones: four ticks per timeout.
        let mut sweeper = Sweeper::new(Duration::from_millis(200));
        assert_eq!(sweeper.period(), Duration::from_millis(50));
        let activity = Arc::new(ConnActivity::default());
        sweeper.watch(Arc::clone(&activity));
        for _ in 0..3 {
            sweeper.tick();
        }
        assert_eq!(closing(&activity), Closing::No);
        sweeper.tick();
        assert_eq!(closing(&activity), Closing::Gracefully);
    }

    #[test]
    fn a_zero_idle_timeout_closes_at_the_first_quiet_tick() {
        let mut sweeper = Sweeper::new(Duration::ZERO);
        assert_eq!(sweeper.period(), Duration::from_millis(1));
        let activity = Arc::new(ConnActivity::default());
        sweeper.watch(Arc::clone(&activity));
        sweeper.tick();
        assert_eq!(closing(&activity), Closing::Gracefully);
    }

    #[test]
    fn a_connection_quiet_for_a_tick_is_asked_once_to_give_back_its_spare_memory() {
        let mut sweeper = Sweeper::new(Duration::from_secs(60));
        let activity = Arc::new(ConnActivity::default());
        sweeper.watch(Arc::clone(&activity));
        let request = activity.begin_request();
        sweeper.tick();
        assert!(!activity.take_trim(), "asked with a request in flight");
        drop(request);
        // None started since the last tick, none in flight.
        sweeper.tick();
        assert!(activity.take_trim());
        assert!(!activity.take_trim(), "the request is taken once");
        sweeper.tick();
        assert!(!activity.take_trim(), "asked again while still quiet");
        // A request between two ticks: not at the next tick, at the one after.
        drop(activity.begin_request());
        sweeper.tick();
        assert!(
            !activity.take_trim(),
            "asked with a request since the last tick"
        );
        sweeper.tick();
        assert!(activity.take_trim());
    }

    #[test]
    fn a_request_started_or_in_flight_keeps_a_connection_open() {
        // Four ticks of one second.
        let mut sweeper = Sweeper::new(Duration::from_secs(4));
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
