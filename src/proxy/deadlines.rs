//! One timer per client connection for the deadlines of the requests it carries, instead
//! of a timer armed and cancelled per request.
//!
//! An HTTP/1 connection's requests run inside its task: hyper polls the request's future
//! whenever it polls the connection. So a request waiting for its upstream's answer does
//! not need a timer of its own to be looked at again by its deadline (the end of its
//! response timeout, or its next check for an ejected endpoint): it is enough that the
//! connection's task is woken by then. While the connection is polled
//! ([`watch_scope`]), a waiting request says when it must be looked at again
//! ([`wake_by`]); afterwards the connection keeps its one timer ([`ConnectionTimer`])
//! armed no later than that.
//!
//! The timer is re-armed only when a deadline comes earlier than the armed one, or after
//! it fired. With equal timeouts each request's deadline is later than the previous
//! one's, so a busy connection re-arms it about once per timeout (or per second, with the
//! default one-second check for ejected endpoints) rather than once per request: a
//! tokio timer armed, polled and cancelled per request was ~500 instructions of a
//! proxied request's 29 000. A timer that fires before the request's deadline only
//! makes the request look at the clock and ask again.
//!
//! Outside a watched connection (HTTP/2 streams run in tasks of their own; tests) a
//! request arms a timer of its own, as before.

use std::cell::Cell;
use std::pin::Pin;
use std::task::Context;

use tokio::time::{Instant, Sleep};

/// What [`wake_by`] does on this thread.
#[derive(Clone, Copy)]
enum Watch {
    /// No connection is being polled: the caller needs a timer of its own.
    Outside,
    /// A connection is: the earliest time asked for during its poll so far.
    Polling(Option<Instant>),
}

thread_local! {
    static WATCH: Cell<Watch> = const { Cell::new(Watch::Outside) };
}

/// The poll of a connection whose task polls its requests' futures: the deadlines they
/// ask for are gathered for its [`ConnectionTimer`]. Scopes nest, the previous state
/// comes back when one ends.
#[must_use = "deadlines are gathered only while the scope lives"]
pub struct WatchScope {
    previous: Watch,
}

/// Starts gathering the deadlines of the connection about to be polled.
pub fn watch_scope() -> WatchScope {
    WatchScope {
        previous: WATCH.replace(Watch::Polling(None)),
    }
}

impl WatchScope {
    /// The earliest time a request polled in this scope asked to be looked at again.
    pub fn earliest(&self) -> Option<Instant> {
        match WATCH.get() {
            Watch::Polling(earliest) => earliest,
            Watch::Outside => None,
        }
    }
}

impl Drop for WatchScope {
    fn drop(&mut self) {
        WATCH.set(self.previous);
    }
}

/// Asks the connection being polled to wake its task by `at` (and so to poll the caller
/// again). `false` outside a connection's poll: the caller must arm a timer of its own.
pub fn wake_by(at: Instant) -> bool {
    WATCH.with(|watch| match watch.get() {
        Watch::Outside => false,
        Watch::Polling(earliest) => {
            watch.set(Watch::Polling(Some(earliest.map_or(at, |e| e.min(at)))));
            true
        }
    })
}

/// A connection's one timer for its requests' deadlines. Boxed and made with the first
/// deadline, so a connection that never waits on an upstream holds 8 bytes for it.
#[derive(Default)]
pub struct ConnectionTimer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl ConnectionTimer {
    /// Makes sure the task of `cx` is woken by `at`, if a request asked for a time. The
    /// armed timer is kept if it has not fired and fires no later than `at`.
    pub fn arm(&mut self, at: Option<Instant>, cx: &mut Context<'_>) {
        let Some(at) = at else { return };
        let sleep = match &mut self.sleep {
            Some(sleep) if !sleep.is_elapsed() && sleep.deadline() <= at => return,
            Some(sleep) => {
                sleep.as_mut().reset(at);
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        // Polled once to register the task's waker. Already due: the task looks again now.
        if sleep.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }

    /// Gives the timer back: the connection is quiet, no request of it waits.
    pub fn release(&mut self) {
        self.sleep = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    #[test]
    fn outside_a_connection_s_poll_the_caller_needs_its_own_timer() {
        assert!(!wake_by(Instant::now()));
    }

    #[test]
    fn a_scope_keeps_the_earliest_time_and_nested_scopes_their_own() {
        let now = Instant::now();
        let outer = watch_scope();
        assert_eq!(outer.earliest(), None);
        assert!(wake_by(now + Duration::from_secs(3)));
        assert!(wake_by(now + Duration::from_secs(1)));
        assert!(wake_by(now + Duration::from_secs(2)));
        {
            let inner = watch_scope();
            assert!(wake_by(now + Duration::from_secs(9)));
            assert_eq!(inner.earliest(), Some(now + Duration::from_secs(9)));
        }
        assert_eq!(outer.earliest(), Some(now + Duration::from_secs(1)));
        drop(outer);
        assert!(!wake_by(now));
    }

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_wakes_the_connection_by_the_earliest_deadline_and_is_rearmed_only_when_needed()
     {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Arc::clone(&wakes).into();
        let mut cx = Context::from_waker(&waker);
        let mut timer = ConnectionTimer::default();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        timer.arm(None, &mut cx);
        assert!(timer.sleep.is_none(), "nothing asked, nothing made");
        timer.arm(Some(at(100)), &mut cx);
        // A later deadline keeps the armed timer; an earlier one moves it.
        timer.arm(Some(at(300)), &mut cx);
        assert_eq!(timer.sleep.as_ref().map(|s| s.deadline()), Some(at(100)));
        timer.arm(Some(at(50)), &mut cx);
        assert_eq!(timer.sleep.as_ref().map(|s| s.deadline()), Some(at(50)));
        tokio::time::sleep_until(at(49)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        tokio::time::sleep_until(at(50)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken at the deadline");
        // Fired: a later deadline re-arms it.
        timer.arm(Some(at(400)), &mut cx);
        assert_eq!(timer.sleep.as_ref().map(|s| s.deadline()), Some(at(400)));
        tokio::time::sleep_until(at(400)).await;
        tokio::task::yield_now().await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        // Asked for a time already past: the task is woken at once.
        timer.arm(Some(at(10)), &mut cx);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 3);
        timer.release();
        assert!(timer.sleep.is_none());
    }
}
