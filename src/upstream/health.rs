//! Active health checks: one task per pool that checks every endpoint each interval
//! (with jitter, so a fleet of proxies does not check in lockstep) and feeds the results to
//! the endpoints' rise/fall counters. A check is an HTTP GET, or a call of the standard
//! gRPC health service (`grpc.health.v1.Health/Check`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
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
    if let Some(service) = &config.grpc_service {
        return grpc_probe(pool, endpoint, config, service).await;
    }
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

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; `status` 1 is SERVING.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

/// Largest health answer read (it is a few bytes).
const MAX_GRPC_HEALTH_ANSWER: usize = 64 * 1024;

async fn grpc_probe(
    pool: &Pool,
    endpoint: &Endpoint,
    config: &HealthCheckConfig,
    service: &str,
) -> (bool, String) {
    let uri = format!(
        "{}://{}/grpc.health.v1.Health/Check",
        pool.scheme, endpoint.authority
    );
    let message = prost::Message::encode_to_vec(&HealthCheckRequest {
        service: service.to_owned(),
    });
    // gRPC framing: uncompressed flag, big-endian length, message.
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.extend_from_slice(&message);
    let request = match Request::post(uri)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, "weir-health-check")
        .version(pool.version)
        .body(UpstreamRequestBody::buffered(framed.freeze()))
    {
        Ok(request) => request,
        Err(err) => return (false, format!("cannot build the check request: {err}")),
    };
    let answer = async {
        let response = pool.client.request(request).await.map_err(|err| {
            if err.is_connect() {
                "connect failed".to_owned()
            } else {
                format!("request failed: {err}")
            }
        })?;
        if response.status() != StatusCode::OK {
            return Err(format!("HTTP status {}", response.status().as_u16()));
        }
        let (parts, body) = response.into_parts();
        let collected = http_body_util::Limited::new(body, MAX_GRPC_HEALTH_ANSWER)
            .collect()
            .await
            .map_err(|err| format!("reading the answer: {err}"))?;
        // A status alone comes in the head; otherwise in the trailers.
        let status =
            grpc_status(collected.trailers()).or_else(|| grpc_status(Some(&parts.headers)));
        match status {
            Some(0) => {}
            Some(code) => return Err(format!("grpc-status {code}")),
            None => return Err("no grpc-status".to_owned()),
        }
        let bytes = collected.to_bytes();
        let message = bytes
            .get(5..)
            .ok_or_else(|| "no health message".to_owned())?;
        let answer: HealthCheckResponse = prost::Message::decode(message)
            .map_err(|err| format!("undecodable health message: {err}"))?;
        Ok(answer.status)
    };
    match tokio::time::timeout(config.timeout, answer).await {
        Err(_) => (false, format!("no answer within {:?}", config.timeout)),
        Ok(Err(detail)) => (false, detail),
        Ok(Ok(SERVING)) => (true, String::new()),
        Ok(Ok(status)) => (
            false,
            format!("health status {}", serving_status_name(status)),
        ),
    }
}

fn grpc_status(headers: Option<&HeaderMap>) -> Option<u32> {
    headers?
        .get("grpc-status")
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn serving_status_name(status: i32) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "unrecognised",
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
