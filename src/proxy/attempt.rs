//! One attempt of a forwarded request (the upstream request for one endpoint, sent with
//! its time limit, and its span), and the hedge race between two attempts of the same
//! request.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response};

use super::body::UpstreamRequestBody;
use super::error::ProxyError;
use super::grpc;
use super::spans::{ChildSpan, Recording};
use super::trace::{TRACEPARENT, TraceContext};
use crate::telemetry::SpanKind;
use crate::upstream::breaker::BreakerState;
use crate::upstream::{
    Dispatched, Endpoint, InFlightGuard, Outcome, Pool, ResponseFuture, SendError, UpstreamBody,
};

/// What waiting for an attempt's response head gave.
pub(super) type Sent = Result<Result<Response<UpstreamBody>, SendError>, Cut>;

/// Why weir stopped waiting for a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    /// The attempt's time (response timeout, per-try timeout or call deadline) ran out.
    TimedOut,
    /// It had waited `stall_after` when its endpoint was ejected (hung): the request goes
    /// elsewhere now instead of waiting out its timeout. The retry is already paid.
    EndpointEjected,
}

/// What an attempt's result means (see [`Attempt::verdict`]).
pub(super) enum Verdict {
    /// The endpoint answered or failed: `outcome` is what it is judged by, `result` what
    /// the request goes on with.
    Judged {
        outcome: Outcome,
        result: Result<Response<UpstreamBody>, ProxyError>,
    },
    /// The client's request body failed: the endpoint learns nothing from it.
    ClientFault(ProxyError),
    /// The gRPC call's deadline ran out: the caller's time, not the endpoint's slowness.
    Deadline,
    /// The endpoint was ejected while the attempt waited; its retry is paid.
    Ejected,
}

/// An attempt's response head, still to come; [`Pending::head`] waits for it.
pub(super) struct Pending {
    response: ResponseFuture,
    /// When the attempt's time runs out.
    ends: tokio::time::Instant,
    /// Set when the request could go elsewhere: from this long on, the wait checks (every
    /// quarter of it) whether the endpoint was ejected meanwhile.
    rescue_after: Option<Duration>,
}

impl Pending {
    /// Waits for the head until the attempt's time runs out, or until its endpoint is
    /// ejected once the attempt has waited `rescue_after` (and the retry budget allows
    /// the retry). Looked at again by the next check's time: in an HTTP/1 connection's
    /// task, by the connection's one timer ([`super::deadlines`]); elsewhere by a timer
    /// of its own, reset for each check.
    pub(super) async fn head(self, pool: &Pool, endpoint: Arc<Endpoint>) -> Sent {
        let Pending {
            mut response,
            ends,
            rescue_after,
        } = self;
        let check_every = rescue_after.map(|after| (after / 4).max(Duration::from_millis(10)));
        let mut next_check =
            rescue_after.map_or(ends, |after| (crate::clock::now() + after).min(ends));
        let mut own_timer = pin!(None::<tokio::time::Sleep>);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = Pin::new(&mut response).poll(cx) {
                return Poll::Ready(Ok(result));
            }
            let mut own_timer_fired = false;
            loop {
                let mut now = crate::clock::now();
                if own_timer_fired {
                    // The timer's word that the time has come stands even if a reading
                    // taken earlier in this poll says otherwise.
                    now = now.max(next_check);
                }
                if now >= next_check {
                    if now >= ends {
                        return Poll::Ready(Err(Cut::TimedOut));
                    }
                    if endpoint.breaker_state(endpoint.now_ms()) == BreakerState::Open
                        && pool.try_retry()
                    {
                        return Poll::Ready(Err(Cut::EndpointEjected));
                    }
                    let every = check_every.unwrap_or(ends - now);
                    next_check = (now + every).min(ends);
                }
                if super::deadlines::wake_by(next_check) {
                    return Poll::Pending;
                }
                if own_timer.is_none() {
                    own_timer.set(Some(tokio::time::sleep_until(next_check)));
                }
                let Some(mut timer) = own_timer.as_mut().as_pin_mut() else {
                    continue;
                };
                if timer.deadline() != next_check {
                    timer.as_mut().reset(next_check);
                }
                if timer.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                own_timer_fired = true;
            }
        })
        .await
    }
}

/// What every attempt of one request shares.
#[derive(Clone, Copy)]
pub(super) struct AttemptPlan<'a> {
    pub pool: &'a Pool,
    pub method: &'a Method,
    pub path_and_query: &'a PathAndQuery,
    /// The gRPC call's timeout and when it ends.
    pub call_deadline: Option<(Duration, tokio::time::Instant)>,
    pub trace: Option<&'a TraceContext>,
    pub recording: Option<Recording<'a>>,
    pub send_traceparent: bool,
    /// Sends one request to an endpoint, on the pool's clients or a client of this
    /// connection's; with `true`, the request's header map comes back.
    pub send: &'a (dyn Fn(&Endpoint, Request<UpstreamRequestBody>, bool) -> Dispatched + Sync),
}

/// One attempt to start: where, with what, and whether a per-try timeout may cut it.
pub(super) struct Launch {
    pub endpoint: Arc<Endpoint>,
    pub headers: HeaderMap,
    pub body: UpstreamRequestBody,
    /// 1 for the first attempt.
    pub number: u32,
    /// The per-try timeout, when another attempt may follow this one.
    pub per_try: Option<Duration>,
    /// Whether another attempt may follow this one (the method may be repeated, the body
    /// can be sent again, attempts are left): then a wait on an endpoint that gets ejected
    /// is cut (see [`Cut::EndpointEjected`]).
    pub may_follow: bool,
    /// A `Host` for this attempt alone (a mirrored copy's), over the pool's choice.
    pub host: Option<HeaderValue>,
    /// Whether the header map is wanted back for another attempt. It comes back with
    /// this attempt's `Host`, `grpc-timeout` and `traceparent`, which the next attempt
    /// sets again.
    pub keep_headers: bool,
}

/// A started attempt, and the request's header map back when [`Launch::keep_headers`]
/// asked for it.
pub(super) struct Launched {
    pub attempt: Attempt,
    pub pending: Pending,
    pub headers: Option<HeaderMap>,
}

/// An attempt in flight (or just finished).
pub(super) struct Attempt {
    pub endpoint: Arc<Endpoint>,
    pub guard: InFlightGuard,
    pub started: Instant,
    /// Time to its head (or to giving up), once finished.
    pub elapsed: Duration,
    pub number: u32,
    /// How long it may wait for its head.
    pub wait: Duration,
    /// The wait is what is left of the gRPC call's deadline (its end is no fault of the
    /// endpoint's).
    pub deadline_bound: bool,
    /// The wait is the per-try timeout: a timeout is retried elsewhere.
    pub cut_by_per_try: bool,
    /// A hedge (sent while an earlier attempt still waited).
    pub hedge: bool,
    /// Its own span context when the request is recorded (boxed: most are not).
    trace: Option<Box<(TraceContext, SystemTime)>>,
}

/// Starts an attempt: builds the upstream request, counts it on the endpoint and sends it;
/// gives the header map back if asked to. Fails (giving the endpoint back) only when a
/// gRPC call's deadline has already passed.
pub(super) fn launch(
    plan: &AttemptPlan<'_>,
    launch: Launch,
) -> Result<Launched, (ProxyError, Arc<Endpoint>)> {
    let Launch {
        endpoint,
        mut headers,
        body,
        number,
        per_try,
        may_follow,
        host,
        keep_headers,
    } = launch;
    let pool = plan.pool;
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    } else if !pool.preserve_host {
        headers.insert(header::HOST, endpoint.host_header().clone());
    }
    let mut request = Request::new(body);
    *request.method_mut() = plan.method.clone();
    // Origin-form; the pool adds the endpoint's authority where its client needs it.
    *request.uri_mut() = Uri::from(plan.path_and_query.clone());
    *request.version_mut() = pool.version;
    *request.headers_mut() = headers;

    let (wait, deadline_bound) = match plan.call_deadline {
        Some((timeout, at)) => {
            let left = at.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err((ProxyError::Deadline(timeout), endpoint));
            }
            // The upstream learns what is left of the call's time, not the whole of it
            // (time spent here and in earlier attempts is gone).
            request
                .headers_mut()
                .insert(grpc::GRPC_TIMEOUT, grpc::timeout_value(left));
            (
                left.min(pool.response_timeout),
                left < pool.response_timeout,
            )
        }
        None => (pool.response_timeout, false),
    };
    // A per-try timeout cuts an attempt that another may follow; the last one (or one
    // that could not be retried) gets the whole wait.
    let per_try = per_try.filter(|per_try| *per_try < wait);
    let (wait, deadline_bound) = match per_try {
        Some(per_try) => (per_try, false),
        None => (wait, deadline_bound),
    };
    // A recorded attempt is a span of its own, and the upstream's parent.
    let trace = plan
        .recording
        .and(plan.trace)
        .map(|t| Box::new((t.child(), SystemTime::now())));
    if plan.send_traceparent
        && let Some(value) = trace.as_ref().and_then(|a| a.0.header_value())
    {
        request.headers_mut().insert(TRACEPARENT, value);
    }
    let guard = endpoint.begin_request();
    let started = crate::clock::now_std();
    let stall_after = pool.stall_after();
    let dispatched = (plan.send)(&endpoint, request, keep_headers);
    let pending = Pending {
        response: dispatched.response,
        ends: crate::clock::now() + wait,
        rescue_after: (may_follow && !stall_after.is_zero() && stall_after < wait)
            .then_some(stall_after),
    };
    Ok(Launched {
        attempt: Attempt {
            endpoint,
            guard,
            started,
            elapsed: Duration::ZERO,
            number,
            wait,
            deadline_bound,
            cut_by_per_try: per_try.is_some(),
            hedge: false,
            trace,
        },
        pending,
        headers: dispatched.headers,
    })
}

impl Attempt {
    /// The attempt's wait is over: it stops counting as waiting, its span is recorded, and
    /// a head teaches the pool's hedge delay.
    pub(super) fn finish(&mut self, plan: &AttemptPlan<'_>, sent: &Sent) {
        let elapsed = crate::clock::now_std().saturating_duration_since(self.started);
        self.elapsed = elapsed;
        let owed = match sent {
            Err(Cut::EndpointEjected) => true,
            Err(Cut::TimedOut) => self.cut_by_per_try,
            Ok(_) => false,
        };
        if owed {
            // Cut before its time was up: the endpoint still owes the answer.
            self.guard.abandon();
        } else {
            self.guard.head_done();
        }
        if let Ok(Ok(_)) = sent
            && let Some(hedging) = &plan.pool.hedging
        {
            hedging.record(plan.pool.now_ms(), elapsed);
        }
        self.record_span(plan, End::Sent(sent));
    }

    /// What its result means for the request and for its endpoint.
    pub(super) fn verdict(&self, sent: Sent) -> Verdict {
        match sent {
            Ok(Ok(response)) => {
                let status = response.status();
                Verdict::Judged {
                    outcome: Outcome::Response {
                        status,
                        retry_after: super::retry::retry_after(status, response.headers()),
                    },
                    result: Ok(response),
                }
            }
            Ok(Err(error)) => match ProxyError::from_client(error) {
                error @ (ProxyError::ClientBody(_)
                | ProxyError::ClientBodyTimeout
                | ProxyError::BodyTooLarge(_)) => Verdict::ClientFault(error),
                // Never sent: safe to retry whatever the method.
                error @ (ProxyError::Connect(_) | ProxyError::ConnectTimeout(_)) => {
                    Verdict::Judged {
                        outcome: Outcome::ConnectFailed,
                        result: Err(error),
                    }
                }
                error => Verdict::Judged {
                    outcome: Outcome::Failed,
                    result: Err(error),
                },
            },
            Err(Cut::TimedOut) if self.deadline_bound => Verdict::Deadline,
            Err(Cut::TimedOut) => Verdict::Judged {
                outcome: Outcome::TimedOut,
                result: Err(ProxyError::ResponseTimeout(self.wait)),
            },
            Err(Cut::EndpointEjected) => Verdict::Ejected,
        }
    }

    /// Weir stops waiting for this attempt because another answered first (see
    /// [`Pool::abandon`]).
    pub(super) fn abandon(mut self, plan: &AttemptPlan<'_>) {
        self.record_span(plan, End::Cancelled);
        plan.pool.abandon(self.guard, self.started.elapsed());
    }

    fn record_span(&mut self, plan: &AttemptPlan<'_>, end: End<'_>) {
        if let (Some(recording), Some(attempt)) = (plan.recording, self.trace.take()) {
            let (own, start) = *attempt;
            recording.child(
                attempt_span(AttemptSpan {
                    start,
                    pool: &plan.pool.name,
                    endpoint: &self.endpoint.address,
                    method: plan.method,
                    attempt: self.number,
                    hedge: self.hedge,
                    end,
                }),
                Some(&own),
            );
        }
    }
}

/// How a hedge race ended.
pub(super) struct RaceEnd {
    /// The attempt whose result the request goes on with.
    pub attempt: Attempt,
    pub sent: Sent,
    /// An attempt that finished first without a usable answer (the race then waited for
    /// the other): to be reported and not tried again.
    pub failed_first: Option<(Attempt, Sent)>,
    /// Whether a hedge was sent (an attempt paid from the retry budget).
    pub hedged: bool,
}

/// Waits for `first`; once it has waited `delay` without a head, starts a hedge with
/// `start_hedge` (which may decline: no other endpoint, no budget) and goes on with the
/// first usable answer of the two (`usable`: not one that would be retried), cancelling
/// the other. When neither answer is usable, it goes on with the later one.
pub(super) async fn race(
    plan: &AttemptPlan<'_>,
    (mut first, first_pending): (Attempt, Pending),
    delay: Duration,
    start_hedge: impl FnOnce() -> Option<(Attempt, Pending)>,
    usable: impl Fn(&Sent) -> bool,
) -> RaceEnd {
    let mut first_pending = pin!(first_pending.head(plan.pool, Arc::clone(&first.endpoint)));
    let hedge_at = tokio::time::sleep(delay);
    tokio::select! {
        biased;
        sent = &mut first_pending => {
            first.finish(plan, &sent);
            return RaceEnd { attempt: first, sent, failed_first: None, hedged: false };
        }
        () = hedge_at => {}
    }
    let Some((mut second, second_pending)) = start_hedge() else {
        let sent = first_pending.await;
        first.finish(plan, &sent);
        return RaceEnd {
            attempt: first,
            sent,
            failed_first: None,
            hedged: false,
        };
    };
    second.hedge = true;
    let mut second_pending = pin!(second_pending.head(plan.pool, Arc::clone(&second.endpoint)));
    // The first to finish with a usable answer wins; one that finishes without lets the
    // race wait for the other.
    let (mut done, sent, mut other, other_pending) = tokio::select! {
        sent = &mut first_pending => (first, sent, second, second_pending),
        sent = &mut second_pending => (second, sent, first, first_pending),
    };
    if usable(&sent) {
        done.finish(plan, &sent);
        other.abandon(plan);
        return RaceEnd {
            attempt: done,
            sent,
            failed_first: None,
            hedged: true,
        };
    }
    done.finish(plan, &sent);
    let later = other_pending.await;
    other.finish(plan, &later);
    RaceEnd {
        attempt: other,
        sent: later,
        failed_first: Some((done, sent)),
        hedged: true,
    }
}

/// How an attempt ended, for its span.
enum End<'a> {
    Sent(&'a Sent),
    /// Another attempt of the request answered first.
    Cancelled,
}

/// What an attempt's span says.
struct AttemptSpan<'a> {
    start: SystemTime,
    pool: &'a str,
    endpoint: &'a str,
    method: &'a Method,
    attempt: u32,
    hedge: bool,
    end: End<'a>,
}

fn attempt_span(attempt: AttemptSpan<'_>) -> ChildSpan {
    let mut attributes = vec![
        (
            "http.request.method",
            attempt.method.as_str().to_owned().into(),
        ),
        ("server.address", attempt.endpoint.to_owned().into()),
        ("weir.pool", attempt.pool.to_owned().into()),
        ("weir.attempt", i64::from(attempt.attempt).into()),
    ];
    if attempt.hedge {
        attributes.push(("weir.hedge", true.into()));
    }
    let error = match attempt.end {
        End::Sent(Ok(Ok(response))) => {
            let status = response.status().as_u16();
            attributes.push(("http.response.status_code", i64::from(status).into()));
            (status >= 500).then(|| format!("HTTP {status}"))
        }
        End::Sent(Ok(Err(error))) => Some(format!("no response: {error}")),
        End::Sent(Err(Cut::TimedOut)) => {
            Some("no response head within the time allowed".to_owned())
        }
        End::Sent(Err(Cut::EndpointEjected)) => {
            Some("endpoint ejected while the attempt waited; retried elsewhere".to_owned())
        }
        End::Cancelled => {
            attributes.push(("weir.cancelled", true.into()));
            None
        }
    };
    ChildSpan {
        kind: SpanKind::Client,
        name: std::borrow::Cow::Owned(format!("upstream {}", attempt.pool)),
        start: attempt.start,
        attributes,
        error,
    }
}

/// Whether an answer ends the race: a response that would not be retried.
pub(super) fn is_final_answer(plan: &AttemptPlan<'_>, is_grpc: bool, sent: &Sent) -> bool {
    let Ok(Ok(response)) = sent else {
        return false;
    };
    let retry = &plan.pool.retry;
    let retried_status = retry.statuses.contains(&response.status().as_u16());
    let retried_grpc =
        is_grpc && grpc::is_retryable_status(&retry.grpc_statuses, response.headers());
    !(retried_status || retried_grpc)
}
