//! A request forwarded to its pool, in four steps: the outgoing head and body
//! ([`ProxyService::outgoing`], [`ProxyService::request_body`]), the attempts (pick an
//! endpoint, send, race a hedge, [`classify`] what came back: retry or answer), and the
//! answer's head on its way back ([`ProxyService::finish`]).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Version};
use hyper::body::{Body, Incoming};

use super::super::attempt::{self, Attempt, AttemptPlan, Launch, RaceEnd, Verdict};
use super::super::body::{PendingVerdict, RequestGuards, ResponseBody, UpstreamRequestBody};
use super::super::conn::ConnRequestGuard;
use super::super::error::ProxyError;
use super::super::grpc;
use super::super::headers::{self, strip_hop_by_hop};
use super::super::retry;
use super::super::route::mirror::MirrorRequest;
use super::super::route::rewrite::HeaderVariables;
use super::super::trace::TRACEPARENT;
use super::{
    BodyPlan, Exchange, Failure, ProxyService, RequestBody, Served, Source, tunnel,
    upgrade_protocol,
};
use crate::upstream::{Endpoint, Outcome, PickError, PoolSlot, UpstreamBody};

/// The outgoing request's parts that are not its head.
struct Outgoing {
    /// An HTTP/1.1 upgrade: the protocol asked for and the client side of the tunnel.
    upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    /// The endpoint the client's sticky cookie names.
    sticky_id: Option<String>,
    path_and_query: PathAndQuery,
    /// A gRPC call's timeout and when it ends: it bounds every attempt.
    call_deadline: Option<(Duration, tokio::time::Instant)>,
}

/// The endpoint's answer the client gets, with what its bookkeeping needs.
struct Answered {
    response: Response<UpstreamBody>,
    endpoint: Arc<Endpoint>,
    guard: crate::upstream::InFlightGuard,
    /// Time to the head.
    elapsed: Duration,
    outcome: Outcome,
    /// The breaker's verdict waits for the body's end.
    deferred: bool,
    /// Attempts made, the answering one included.
    attempts: u32,
}

/// What to do with an attempt's result.
#[expect(
    clippy::large_enum_variant,
    reason = "one per attempt, moved once; boxing the answer would allocate per request"
)]
enum Next {
    /// Try again after the retry backoff (another endpoint, unless a failure without an
    /// answer allows the same).
    Retry,
    /// Try again now: the endpoint was ejected while the attempt waited.
    RetryNow,
    Answer(Answered),
}

/// What [`classify`] weighs besides the attempt itself.
#[derive(Clone, Copy)]
struct Weighing<'a> {
    exchange: &'a Exchange<'a>,
    method: &'a Method,
    body: &'a RequestBody,
    retries: u32,
    call_deadline: Option<(Duration, tokio::time::Instant)>,
}

impl ProxyService {
    /// Sends the request to the route's pool (retrying as the pool allows) and returns the
    /// response with its body streaming. Without `body`, the request has none (cache
    /// refreshes); without `conn_guard`, no client connection waits on it. `parts` is
    /// rewritten into the upstream request's head, and its header map is taken once no
    /// attempt follows.
    pub(super) async fn forward_upstream(
        &self,
        exchange: &Exchange<'_>,
        parts: &mut http::request::Parts,
        body: Option<Incoming>,
        conn_guard: Option<ConnRequestGuard>,
    ) -> Result<(Response<ResponseBody>, Served), Failure> {
        let (route, pool) = (exchange.route, exchange.pool);
        let pool_slot = pool
            .acquire_slot()
            .map_err(|_| Failure::at(route, ProxyError::AtCapacity(pool.name.clone()), None))?;
        let outgoing = self.outgoing(exchange, parts);
        let mut body = self.request_body(exchange, parts, body, &outgoing).await?;
        let answered = self.attempts(exchange, parts, &mut body, &outgoing).await?;
        // No attempt follows: the map kept for one becomes the next response head's.
        crate::header_maps::recycle(std::mem::take(&mut parts.headers));
        Ok(self.finish(exchange, outgoing, answered, pool_slot, conn_guard))
    }

    /// Rewrites the client's head, in place, into the upstream request's: hop-by-hop
    /// fields out, forwarding fields, `Via`, the request id, the route's header rules and
    /// `traceparent` in (an upgrade keeps its `Upgrade`/`Connection`).
    fn outgoing(&self, exchange: &Exchange<'_>, parts: &mut http::request::Parts) -> Outgoing {
        let Exchange {
            snapshot,
            route,
            pool,
            request_id,
            traceparent,
            client,
            is_grpc,
            ..
        } = *exchange;
        // Made (when deferred) from the client's own head, before any rule edits it.
        let traceparent = traceparent.and_then(|t| t.value(&parts.headers));
        let client_host = crate::header_maps::first(&parts.headers, &header::HOST).cloned();
        // An HTTP/1.1 upgrade (WebSocket…) keeps its Upgrade/Connection headers and, on
        // 101, becomes a tunnel between the two upgraded connections.
        let upgrade = self
            .listener
            .tunnels
            .as_ref()
            .filter(|_| pool.version == Version::HTTP_11)
            .and_then(|_| upgrade_protocol(parts))
            .and_then(|proto| {
                let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
                Some((proto, on_upgrade))
            });
        let sticky_id = pool.sticky_cookie.as_deref().and_then(|name| {
            crate::balancer::cookie_value(&parts.headers, name).map(str::to_owned)
        });
        let trailers = headers::accepts_trailers(&parts.headers);
        strip_hop_by_hop(&mut parts.headers);
        // Only weir says who a certificate belongs to.
        for name in &snapshot.client_cert_headers {
            parts.headers.remove(name);
        }
        if let Some(cert) = &self.client_cert {
            parts.headers.insert(cert.0.clone(), cert.1.clone());
        }
        if trailers {
            // Hop-by-hop like the rest of TE, but its meaning (the client reads trailers,
            // and weir passes them) holds end to end; HTTP/2 allows no other TE value.
            parts.headers.insert(header::TE, headers::TE_TRAILERS);
        }
        snapshot.headers.add_forwarding(
            &mut parts.headers,
            headers::Hop {
                connection: &self.client,
                client,
            },
            self.listener.proto,
            client_host.as_ref().and_then(|h| h.to_str().ok()),
        );
        snapshot.headers.add_via(&mut parts.headers, parts.version);
        if route.cache.is_some() && snapshot.cache.is_some() {
            // On caching routes weir is a surrogate: origins may target `Surrogate-Control`
            // directives at it. Added here, on the way out, so that it is not part of the
            // request head the cache stores with each response.
            parts.headers.append(
                crate::cache::policy::SURROGATE_CAPABILITY.clone(),
                crate::cache::policy::SURROGATE_CAPABILITY_VALUE.clone(),
            );
        }
        if let Some((proto, _)) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto.clone());
        }
        parts
            .headers
            .insert(snapshot.headers.request_id.clone(), request_id.clone());
        if let Some(rules) = &route.request_headers {
            let vars = HeaderVariables {
                client_ip: client.ip,
                request_id,
                route: &route.name,
                pool: &pool.name,
            };
            rules.apply(&mut parts.headers, &vars);
        }
        if let Some(value) = traceparent {
            // `tracestate` travels unchanged; weir adds no vendor entry.
            parts.headers.insert(TRACEPARENT, value.clone());
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // A gRPC call's deadline bounds every attempt (and the waits between them).
        let call_deadline = is_grpc
            .then(|| grpc::timeout(&parts.headers))
            .flatten()
            .map(|timeout| (timeout, tokio::time::Instant::now() + timeout));
        Outgoing {
            upgrade,
            sticky_id,
            path_and_query,
            call_deadline,
        }
    }

    /// The client's body as attempts will send it (held for retries when small enough),
    /// and the route's mirror copy, when this request is one it copies.
    async fn request_body(
        &self,
        exchange: &Exchange<'_>,
        parts: &http::request::Parts,
        body: Option<Incoming>,
        outgoing: &Outgoing,
    ) -> Result<RequestBody, Failure> {
        let Exchange {
            route,
            pool,
            mirror,
            client,
            is_grpc,
            ..
        } = *exchange;
        let upgrading = outgoing.upgrade.is_some();
        let body = match body {
            Some(body) => {
                let plan = BodyPlan {
                    retries: pool.retry.attempts,
                    buffer_limit: pool.retry.buffer_body_bytes,
                    pace: self.listener.body_pace,
                    max_body: route.max_body_bytes,
                    // gRPC bodies have no length to decide by: they stream, copied.
                    copy_while_streaming: is_grpc && !pool.retry.grpc_statuses.is_empty(),
                    mirror_limit: mirror.filter(|_| !upgrading).map_or(0, |m| m.max_body),
                };
                RequestBody::prepare(body, &parts.headers, plan)
                    .await
                    .map_err(|error| Failure::at(route, error, None))?
            }
            None => RequestBody::Replayable(Bytes::new()),
        };
        if let Some(mirror) = mirror {
            match &body {
                RequestBody::Replayable(bytes)
                    if !upgrading && bytes.len() as u64 <= mirror.max_body =>
                {
                    mirror.send(MirrorRequest {
                        method: &parts.method,
                        path_and_query: &outgoing.path_and_query,
                        headers: &parts.headers,
                        body: bytes.clone(),
                        client: client.ip,
                    })
                }
                _ => mirror.skip(),
            }
        }
        Ok(body)
    }

    /// Sends attempts until one answers in a way the client gets (or none is left): each
    /// picks an endpoint not yet tried, may race a hedge, and is [`classify`]d.
    async fn attempts(
        &self,
        exchange: &Exchange<'_>,
        parts: &mut http::request::Parts,
        body: &mut RequestBody,
        outgoing: &Outgoing,
    ) -> Result<Answered, Failure> {
        let Exchange {
            route,
            pool,
            client,
            is_grpc,
            trace,
            recording,
            snapshot,
            ..
        } = *exchange;
        // A pool that sends PROXY headers has clients private to each client connection.
        let private = pool.proxy_protocol.and_then(|_| {
            let (peer, local) = self.conn.ends();
            self.conn
                .private_client(pool, || pool.private_client(peer, local))
        });
        let send =
            |endpoint: &Endpoint, request: Request<UpstreamRequestBody>, keep: bool| match &private
            {
                Some(private) => pool.send_on(private, endpoint, request, keep),
                None => pool.send(endpoint, request, keep),
            };
        let plan = AttemptPlan {
            pool,
            method: &parts.method,
            path_and_query: &outgoing.path_and_query,
            call_deadline: outgoing.call_deadline,
            trace,
            recording,
            send_traceparent: snapshot.headers.traceparent,
            send: &send,
        };
        let may_cut = retry::retries_cut_attempts(&pool.retry, &parts.method);
        let may_repeat = retry::may_repeat(&pool.retry, &parts.method);
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut retries = 0u32;
        loop {
            let endpoint = pool.pick(client.ip, &parts.headers, &tried).map_err(|e| {
                let error = match e {
                    PickError::NoEndpoint => ProxyError::NoEndpoint(pool.name.clone()),
                    PickError::AtCapacity => ProxyError::AtCapacity(pool.name.clone()),
                };
                Failure::at(route, error, None)
            })?;
            let may_retry = retries < pool.retry.attempts && body.may_replay();
            let replayable = may_retry && body.is_replayable();
            // The header map comes back when another attempt may need it (weir's own
            // client hands it back as it is; the others copy it).
            // Taken apart at once: a `Launched` kept whole (and then its parts again)
            // would stay in the request's future beside them.
            let attempt::Launched {
                mut attempt,
                pending,
                headers,
            } = attempt::launch(
                &plan,
                Launch {
                    endpoint,
                    headers: std::mem::take(&mut parts.headers),
                    body: body.for_attempt(),
                    number: retries + 1,
                    per_try: pool.retry.per_try_timeout.filter(|_| replayable && may_cut),
                    may_follow: replayable && may_repeat,
                    host: None,
                    keep_headers: may_retry,
                },
            )
            .map_err(|(error, endpoint)| Failure::at(route, error, Some(&endpoint.address)))?;
            if let Some(headers) = headers {
                parts.headers = headers;
            }
            // A hedge needs a body that can be sent again, a method that may be sent
            // twice, and no upgrade (a tunnel has one upstream).
            let hedge_delay = pool
                .hedging
                .as_ref()
                .filter(|h| replayable && outgoing.upgrade.is_none() && h.allows(&parts.method))
                .and_then(|h| h.delay(pool.now_ms()))
                .filter(|delay| *delay < attempt.wait);
            let raced = match hedge_delay {
                Some(delay) => {
                    let first_endpoint = Arc::clone(&attempt.endpoint);
                    let start_hedge = || {
                        let mut exclude = tried.clone();
                        exclude.push(first_endpoint);
                        let other = pool.pick(client.ip, &parts.headers, &exclude).ok()?;
                        // Another endpoint, or no hedge.
                        if exclude.iter().any(|e| Arc::ptr_eq(e, &other)) || !pool.try_retry() {
                            return None;
                        }
                        pool.stats.hedges.fetch_add(1, Relaxed);
                        let more_after = retries + 1 < pool.retry.attempts;
                        attempt::launch(
                            &plan,
                            Launch {
                                endpoint: other,
                                headers: parts.headers.clone(),
                                body: body.for_attempt(),
                                number: retries + 2,
                                per_try: pool
                                    .retry
                                    .per_try_timeout
                                    .filter(|_| more_after && may_cut),
                                may_follow: more_after && may_repeat,
                                host: None,
                                keep_headers: false,
                            },
                        )
                        .ok()
                        .map(|launched| (launched.attempt, launched.pending))
                    };
                    // Boxed: the race holds two attempts and three timers, and only hedging
                    // pools need it; the request future of every other pool stays small.
                    let first = (attempt, pending);
                    Box::pin(attempt::race(&plan, first, delay, start_hedge, |sent| {
                        attempt::is_final_answer(&plan, is_grpc, sent)
                    }))
                    .await
                }
                None => {
                    let sent = pending.head(pool, Arc::clone(&attempt.endpoint)).await;
                    attempt.finish(&plan, &sent);
                    RaceEnd {
                        attempt,
                        sent,
                        failed_first: None,
                        hedged: false,
                    }
                }
            };
            if raced.hedged {
                retries += 1;
            }
            let weighing = Weighing {
                exchange,
                method: &parts.method,
                body,
                retries,
                call_deadline: outgoing.call_deadline,
            };
            // The wait is decided in the match and slept after it: awaited inside, the
            // match's temporaries (two 248-byte `Next`s) lived in the request's future.
            let backoff = match classify(weighing, &mut tried, raced)? {
                Next::Answer(answered) => return Ok(answered),
                Next::RetryNow => None,
                Next::Retry => Some(retry::backoff(&pool.retry, retries)),
            };
            if let Some(backoff) = backoff {
                tokio::time::sleep(backoff).await;
            }
            retries += 1;
        }
    }

    /// The answer's head on its way to the client (hop-by-hop fields out, `Via`, the
    /// sticky cookie), its body with the guards that end with it; a 101 becomes a tunnel.
    fn finish(
        &self,
        exchange: &Exchange<'_>,
        outgoing: Outgoing,
        answered: Answered,
        pool_slot: PoolSlot,
        conn_guard: Option<ConnRequestGuard>,
    ) -> (Response<ResponseBody>, Served) {
        let Exchange {
            snapshot,
            route,
            side,
            pool,
            ..
        } = *exchange;
        let Answered {
            mut response,
            endpoint,
            guard,
            elapsed,
            outcome,
            deferred,
            attempts,
        } = answered;
        let upstream_upgrade = (response.status() == http::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| hyper::upgrade::on(&mut response));
        let (mut parts, body) = response.into_parts();
        let upgraded_to = crate::header_maps::first(&parts.headers, &header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        snapshot.headers.add_via(&mut parts.headers, parts.version);
        parts.version = Version::HTTP_11;
        if let Some(name) = pool.sticky_cookie.as_deref()
            && outgoing.sticky_id.as_deref() != Some(endpoint.id.as_str())
            && let Ok(cookie) = HeaderValue::from_str(&format!(
                "{name}={}; Path=/; HttpOnly; SameSite=Lax",
                endpoint.id
            ))
        {
            parts.headers.append(header::SET_COOKIE, cookie);
        }
        let guards = RequestGuards {
            endpoint: guard,
            pool: pool_slot,
            connection: conn_guard,
            pending: deferred.then(|| PendingVerdict {
                head_ok: !outcome.is_failure(),
                elapsed,
                body_failed: false,
            }),
        };
        let served = Served {
            route_stats: Arc::clone(&route.stats),
            route: Arc::clone(&route.name),
            route_index: route.index,
            side: Some(side),
            source: Source::Endpoint(Arc::clone(&endpoint)),
            attempts,
            upstream: elapsed,
        };
        if let (
            Some(upstream_upgrade),
            Some((_, client_upgrade)),
            Some(proto),
            Some((tracker, abort)),
        ) = (
            upstream_upgrade,
            outgoing.upgrade,
            upgraded_to,
            self.listener.tunnels.as_ref(),
        ) {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto);
            tracker.spawn(tunnel(
                client_upgrade,
                upstream_upgrade,
                guards,
                abort.clone(),
            ));
            return (Response::from_parts(parts, ResponseBody::empty()), served);
        }
        let mut body = ResponseBody::upstream(body, guards);
        if let Some((_, at)) = outgoing.call_deadline {
            body = body.with_deadline(at);
        }
        (Response::from_parts(parts, body), served)
    }
}

/// What an attempt's result means: an answer for the client, a retry, or the request's
/// failure. Endpoints not to try again join `tried`.
fn classify(
    weighing: Weighing<'_>,
    tried: &mut Vec<Arc<Endpoint>>,
    raced: RaceEnd,
) -> Result<Next, Failure> {
    let Weighing {
        exchange,
        method,
        body,
        retries,
        call_deadline,
    } = weighing;
    let (route, pool, is_grpc) = (exchange.route, exchange.pool, exchange.is_grpc);
    let request_id = exchange.request_id;
    let RaceEnd {
        attempt: current,
        sent,
        failed_first,
        hedged: _,
    } = raced;
    if let Some((mut failed, sent)) = failed_first {
        // Lost the race without a usable answer: what it says is learned, and the request
        // does not go back to it.
        if let Verdict::Judged { outcome, .. } = failed.verdict(sent) {
            pool.report(&mut failed.guard, outcome, failed.elapsed);
        }
        tried.push(Arc::clone(&failed.endpoint));
    }
    let verdict = current.verdict(sent);
    let Attempt {
        endpoint,
        mut guard,
        elapsed,
        wait,
        cut_by_per_try,
        hedge: answered_by_hedge,
        ..
    } = current;
    let (outcome, result) = match verdict {
        Verdict::Judged { outcome, result } => (outcome, result),
        Verdict::ClientFault(error) => {
            drop(guard);
            return Err(Failure::at(route, error, Some(&endpoint.address)));
        }
        Verdict::Ejected => {
            // Its endpoint was ejected while it waited (and the retry is paid): the
            // request goes elsewhere now rather than at its timeout.
            tracing::debug!(
                request_id = ?request_id,
                endpoint = %endpoint.address,
                retry = retries + 1,
                "endpoint ejected while the request waited; retrying elsewhere"
            );
            drop(guard);
            tried.push(endpoint);
            return Ok(Next::RetryNow);
        }
        Verdict::Deadline => {
            drop(guard);
            let timeout = call_deadline.map_or(wait, |(timeout, _)| timeout);
            let error = ProxyError::Deadline(timeout);
            return Err(Failure::at(route, error, Some(&endpoint.address)));
        }
    };
    // A response the client will get has its breaker verdict when its body ends (see
    // `PendingVerdict`); the rest is recorded now.
    let deferred = matches!(&result, Ok(response) if !response.body().is_end_stream());
    // A status answer is the endpoint's considered reply: asking it again would only
    // repeat it (and a 503 with Retry-After asked not to be), so statuses are retried on
    // another endpoint only. Failures without an answer may be retried anywhere, the same
    // endpoint included (a stale pooled connection).
    let another_endpoint =
        || !matches!(outcome, Outcome::Response { .. }) || pool.has_untried(tried, &endpoint);
    // A gRPC status alone (nothing streamed yet) that says the call was not carried out
    // may be retried whatever the method.
    let grpc_retryable = is_grpc
        && matches!(&result, Ok(response)
            if grpc::is_retryable_status(&pool.retry.grpc_statuses, response.headers()));
    // A hedge was an attempt too.
    let may_retry = retries < pool.retry.attempts && body.may_replay();
    let retrying = may_retry
        && body.is_replayable()
        && (grpc_retryable
            || retry::is_retryable(&pool.retry, method, &outcome)
            || (cut_by_per_try && outcome == Outcome::TimedOut))
        && another_endpoint()
        && pool.try_retry();
    if retrying || !deferred {
        pool.report(&mut guard, outcome, elapsed);
    } else {
        endpoint.observe(outcome, elapsed);
    }
    if retrying {
        tracing::debug!(
            request_id = ?request_id,
            endpoint = %endpoint.address,
            ?outcome,
            retry = retries + 1,
            "retrying on another endpoint"
        );
        drop(result);
        drop(guard);
        tried.push(endpoint);
        return Ok(Next::Retry);
    }
    let response = result.map_err(|error| Failure::at(route, error, Some(&endpoint.address)))?;
    if answered_by_hedge {
        pool.stats.hedges_won.fetch_add(1, Relaxed);
    }
    Ok(Next::Answer(Answered {
        response,
        endpoint,
        guard,
        elapsed,
        outcome,
        deferred,
        attempts: retries + 1,
    }))
}
