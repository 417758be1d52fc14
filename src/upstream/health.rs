//! Active HTTP health checks: one task per pool that checks every endpoint each interval
//! (with jitter, so a fleet of proxies does not check in lockstep) and feeds the results to
//! the endpoints' rise/fall counters.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use tokio_util::sync::CancellationToken;

use super::request_body::UpstreamRequestBody;
use super::{Endpoint, Pool};
use crate::config::HealthCheckConfig;

/// Checks `pool`'s endpoints until `stop` is cancelled. Checks go through the pool's own
/// client, so they use its protocol and TLS settings.
pub async fn run(pool: Arc<Pool>, config: HealthCheckConfig, stop: CancellationToken) {
    loop {
        let endpoints = pool.endpoints().clone();
        let mut checks = tokio::task::JoinSet::new();
        for endpoint in endpoints.iter() {
            checks.spawn(check_one(
                Arc::clone(&pool),
                Arc::clone(endpoint),
                config.clone(),
            ));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = async { while checks.join_next().await.is_some() {} } => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(jittered(config.interval, config.jitter)) => {}
        }
    }
}

fn jittered(interval: Duration, jitter: f64) -> Duration {
    let spread = (fastrand::f64() * 2.0 - 1.0) * jitter;
    interval.mul_f64((1.0 + spread).max(0.0))
}

async fn check_one(pool: Arc<Pool>, endpoint: Arc<Endpoint>, config: HealthCheckConfig) {
    let (passed, detail) = probe(&pool, &endpoint, &config).await;
    endpoint.record_health_check(passed, config.rise, config.fall, &detail);
}

async fn probe(pool: &Pool, endpoint: &Endpoint, config: &HealthCheckConfig) -> (bool, String) {
    let uri = format!("{}://{}{}", pool.scheme, endpoint.authority, config.path);
    let host = config
        .host
        .clone()
        .unwrap_or_else(|| endpoint.authority.to_string());
    let request = match Request::get(uri)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "weir-health-check")
        .version(pool.version)
        .body(UpstreamRequestBody::buffered(Bytes::new()))
    {
        Ok(request) => request,
        Err(err) => return (false, format!("cannot build the check request: {err}")),
    };
    match tokio::time::timeout(config.timeout, pool.client.request(request)).await {
        Err(_) => (false, format!("no answer within {:?}", config.timeout)),
        Ok(Err(err)) if err.is_connect() => (false, "connect failed".into()),
        Ok(Err(err)) => (false, format!("request failed: {err}")),
        Ok(Ok(response)) => {
            let status = response.status();
            if accepted(status, &config.expected_status) {
                (true, String::new())
            } else {
                (false, format!("status {}", status.as_u16()))
            }
        }
    }
}

fn accepted(status: StatusCode, expected: &[u16]) -> bool {
    if expected.is_empty() {
        status.is_success()
    } else {
        expected.contains(&status.as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_statuses() {
        assert!(accepted(StatusCode::OK, &[]));
        assert!(accepted(StatusCode::NO_CONTENT, &[]));
        assert!(!accepted(StatusCode::MOVED_PERMANENTLY, &[]));
        assert!(accepted(StatusCode::MOVED_PERMANENTLY, &[301, 200]));
        assert!(!accepted(StatusCode::OK, &[204]));
    }

    #[test]
    fn jitter_stays_in_its_band() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(2), 0.1);
            assert!(d >= Duration::from_millis(1800) && d <= Duration::from_millis(2200));
        }
    }
}
