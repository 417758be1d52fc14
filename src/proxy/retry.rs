//! Retry decisions: which failures may be retried, backoff with full jitter, and reading
//! `Retry-After`.

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode, header};

use crate::config::{RetryConfig, RetryOn};
use crate::upstream::Outcome;

pub use crate::upstream::is_idempotent;

/// Whether `outcome` of an attempt may be retried under `policy`. A failed connect never
/// reached the upstream, so it is safe for any method; everything else needs an
/// idempotent request (or `non_idempotent = true`).
pub fn is_retryable(policy: &RetryConfig, method: &Method, outcome: &Outcome) -> bool {
    let idempotent = policy.non_idempotent || is_idempotent(method);
    match outcome {
        Outcome::ConnectFailed => policy.on.contains(&RetryOn::Connect),
        Outcome::Failed => idempotent && policy.on.contains(&RetryOn::Reset),
        Outcome::TimedOut => idempotent && policy.on.contains(&RetryOn::Timeout),
        Outcome::Response { status, .. } => {
            idempotent && policy.statuses.contains(&status.as_u16())
        }
    }
}

/// Whether weir may send this method again once it has been sent (a hedge, or a retry of
/// an attempt weir gave up on).
pub fn may_repeat(policy: &RetryConfig, method: &Method) -> bool {
    policy.non_idempotent || is_idempotent(method)
}

/// Whether an attempt cut by `per_try_timeout` may be retried: whenever the method may be
/// sent again (setting a per-try timeout asks for exactly that retry, whatever `on` says).
pub fn retries_cut_attempts(policy: &RetryConfig, method: &Method) -> bool {
    policy.per_try_timeout.is_some() && may_repeat(policy, method)
}

/// Full jitter: uniform in `[0, min(cap, base · 2^retry))` (AWS architecture blog).
pub fn backoff(policy: &RetryConfig, retry: u32) -> Duration {
    let ceiling = policy
        .backoff_base
        .saturating_mul(1u32 << retry.min(16))
        .min(policy.backoff_cap);
    ceiling.mul_f64(fastrand::f64())
}

/// `Retry-After` in delay-seconds form on a 429 or 503 (HTTP dates are ignored).
pub fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let seconds: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_by_cap_and_grows() {
        let policy = RetryConfig::default();
        for retry in 0..10 {
            let ceiling = Duration::from_millis((25u64 << retry).min(250));
            for _ in 0..200 {
                assert!(backoff(&policy, retry) <= ceiling);
            }
        }
        let mean = (0..2000)
            .map(|_| backoff(&policy, 0).as_secs_f64())
            .sum::<f64>()
            / 2000.0;
        assert!(
            (mean - 0.0125).abs() < 0.002,
            "full jitter averages half the ceiling: {mean}"
        );
    }

    #[test]
    fn what_is_retryable() {
        let p = RetryConfig::default();
        let status = |s: u16| Outcome::Response {
            status: StatusCode::from_u16(s).unwrap(),
            retry_after: None,
        };
        assert!(is_retryable(&p, &Method::POST, &Outcome::ConnectFailed));
        assert!(!is_retryable(&p, &Method::POST, &Outcome::Failed));
        assert!(is_retryable(&p, &Method::GET, &Outcome::Failed));
        assert!(
            !is_retryable(&p, &Method::GET, &Outcome::TimedOut),
            "timeouts are opt-in"
        );
        assert!(is_retryable(&p, &Method::GET, &status(503)));
        assert!(!is_retryable(&p, &Method::GET, &status(500)));
        assert!(!is_retryable(&p, &Method::POST, &status(503)));
        let all = RetryConfig {
            non_idempotent: true,
            ..RetryConfig::default()
        };
        assert!(is_retryable(&all, &Method::POST, &status(503)));
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(
            retry_after(StatusCode::TOO_MANY_REQUESTS, &h),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after(StatusCode::OK, &h), None);
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(StatusCode::SERVICE_UNAVAILABLE, &h), None);
    }
}
