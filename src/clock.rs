//! One clock reading per poll of a connection's task, shared by everything that asks the
//! time during it: the request's start, its attempt's start and deadline, the pool's and
//! endpoints' millisecond clock, the idle connections' expiry. A proxied request asked
//! the clock about 13 times; each read is ~50 ns on a virtual machine (`clock_gettime`
//! through the vDSO), 2 % of the request's CPU. nginx reads the clock once per turn of
//! its event loop for the same reason.
//!
//! Within one poll, all of that work happens in a few microseconds: the reading taken
//! when the time is first asked is as good as another. Outside a connection's poll
//! (health checks, the control loop, HTTP/2 streams' own tasks, tests) [`now`] reads
//! the clock each time. Only instants that mark where a request is are taken from here
//! (its start, an attempt's launch and answer, deadlines): a duration between two polls'
//! readings is right to within microseconds, but one measured inside a poll would be
//! zero, so work is never timed with it (a request's own latency ends on the clock).
//!
//! The reading is tokio's clock, so paused time in tests holds for it too (and it never
//! advances within one poll: tokio moves paused time only between polls).

use std::cell::Cell;

use tokio::time::Instant;

/// What [`now`] answers on this thread.
#[derive(Clone, Copy)]
enum Reading {
    /// Not in a connection's poll: read the clock each time.
    Outside,
    /// In a poll that has not asked the time yet.
    NotYet,
    /// In a poll that has: this is its time, with the last [`millis_since`] answered
    /// from it (the base asked for and the answer).
    At(Instant, Option<(Instant, u64)>),
}

thread_local! {
    static READING: Cell<Reading> = const { Cell::new(Reading::Outside) };
}

/// A poll during which [`now`] reads the clock at most once. Scopes nest (the previous
/// state comes back when one ends), so a poll inside a poll keeps its own reading.
#[must_use = "the shared reading lasts as long as the scope"]
pub struct PollScope {
    previous: Reading,
}

/// Starts a poll's shared reading (taken when first asked for).
pub fn poll_scope() -> PollScope {
    PollScope {
        previous: READING.replace(Reading::NotYet),
    }
}

impl Drop for PollScope {
    fn drop(&mut self) {
        READING.set(self.previous);
    }
}

/// The time: this poll's reading inside a [`PollScope`], the clock's outside one.
pub fn now() -> Instant {
    READING.with(|reading| match reading.get() {
        Reading::Outside => Instant::now(),
        Reading::NotYet => {
            let now = Instant::now();
            reading.set(Reading::At(now, None));
            now
        }
        Reading::At(now, _) => now,
    })
}

/// Whole milliseconds from `base` to [`now`] (0 if `base` is later). Within a poll the
/// answer for the last base asked is kept: a pool and its endpoints share one base and
/// ask about five times per proxied request, and each answer is a subtraction and a
/// division of a `Duration`.
pub fn millis_since(base: Instant) -> u64 {
    let millis = |now: Instant| {
        now.saturating_duration_since(base)
            .as_millis()
            .min(u128::from(u64::MAX)) as u64
    };
    READING.with(|reading| match reading.get() {
        Reading::Outside => millis(Instant::now()),
        Reading::At(_, Some((asked, answer))) if asked == base => answer,
        Reading::NotYet => {
            let now = Instant::now();
            let answer = millis(now);
            reading.set(Reading::At(now, Some((base, answer))));
            answer
        }
        Reading::At(now, _) => {
            let answer = millis(now);
            reading.set(Reading::At(now, Some((base, answer))));
            answer
        }
    })
}

/// [`now`] as a `std` instant (the same reading; tokio's clock is `std`'s unless paused).
pub fn now_std() -> std::time::Instant {
    now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pause() {
        // Long enough for any clock to tell the two readings apart.
        std::thread::sleep(Duration::from_millis(2));
    }

    #[test]
    fn a_poll_reads_the_clock_once_and_the_next_poll_again() {
        let outside = now();
        pause();
        // Outside a scope every call reads the clock.
        assert!(now() > outside);
        let first = {
            let _scope = poll_scope();
            let first = now();
            pause();
            assert_eq!(now(), first);
            assert_eq!(now_std(), first.into_std());
            first
        };
        pause();
        let _scope = poll_scope();
        assert!(now() > first);
    }

    #[test]
    fn a_nested_scope_keeps_its_own_reading_and_gives_back_the_outer_one() {
        let outer_scope = poll_scope();
        let outer = now();
        pause();
        {
            let _inner = poll_scope();
            assert!(now() > outer);
        }
        assert_eq!(now(), outer);
        drop(outer_scope);
        pause();
        assert!(now() > outer);
    }

    #[tokio::test(start_paused = true)]
    async fn millis_are_the_reading_s_for_each_base_asked() {
        let early = Instant::now();
        tokio::time::advance(Duration::from_millis(40)).await;
        let late = Instant::now();
        tokio::time::advance(Duration::from_millis(3)).await;
        // Outside a scope, the clock's.
        assert_eq!(millis_since(early), 43);
        let _scope = poll_scope();
        assert_eq!(millis_since(early), 43);
        // Another base, then the first again: each answered from the one reading.
        assert_eq!(millis_since(late), 3);
        assert_eq!(millis_since(early), 43);
        assert_eq!(
            millis_since(now() + Duration::from_secs(1)),
            0,
            "a later base"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn paused_time_holds_for_the_reading() {
        let before = {
            let _scope = poll_scope();
            now()
        };
        tokio::time::advance(Duration::from_millis(7)).await;
        let _scope = poll_scope();
        assert_eq!(now() - before, Duration::from_millis(7));
    }
}
