//! One target's consumer loop: fetch as many events as there is room for, deliver
//! each concurrently, and settle it: acknowledge, retry later, or dead-letter.
//!
//! Room is the in-flight semaphore (the target's maxInFlight; JetStream's
//! max_ack_pending enforces the same bound across replicas). While the circuit is
//! open, events in hand wait for admission with progress acks, so they keep their
//! place and no attempt is used up; once maxInFlight events are held nothing more is
//! read, JetStream stops delivering, and the backlog waits in the stream. A target
//! whose address the egress policy refuses waits the same way ([`EgressHold`]).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer::PullConsumer};
use fanout_config::expiry::Expiry;
use fanout_config::health::{Circuit, HealthSnapshot};
use fanout_config::{TargetConfig, error_chain};
use fanout_nats_client::pull::{Ack, Pull, PullConfig, PullError};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http::StatusCode;
use http::header::RETRY_AFTER;
use tokio_util::sync::CancellationToken;

use crate::backoff::parse_retry_after;
use crate::breaker::{Admission, Breaker};
use crate::classify::{Failure, Verdict, classify_status, classify_transport};
use crate::concurrency::{self, ConcurrencyLimit, Permit};
use crate::dead_letter::{DeadLetter, DeadLetterError, Stored};
use crate::delivery::{DeadLetterReason, Decision, decide};
use crate::egress_hold::EgressHold;
use crate::event::Event;
use crate::expressions::{Outgoing, Selection, TargetExpressions};
use crate::http::{HttpClient, Response, SendError};
use crate::message::Message;
use crate::oauth2::{SharedTokenError, TokenSource};
use crate::ordering;
use crate::ordering::{Fence, Gate, Ordered};
use crate::rate_share::SharedLimit;
use crate::report::{Attempt, AttemptEnd, Reporter};
use crate::request::RequestTemplate;
use crate::telemetry::TargetTelemetry;

/// Most events JetStream keeps on the way to one worker.
pub(crate) const MAX_BATCH: usize = 512;
/// Idle heartbeat of the pull, so a lost pull is noticed.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long one pull waits on the server before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Wait before pulling again after JetStream refused a pull.
const REFUSED_PAUSE: Duration = Duration::from_secs(1);
/// On stop, events still arriving are handed back until none came for this long...
const HAND_BACK_QUIET: Duration = Duration::from_millis(200);
/// ...or for at most this long.
const HAND_BACK_MAX: Duration = Duration::from_secs(2);

/// Bytes of an error response kept for the status and the dead letter.
const ERROR_BODY_LIMIT: usize = 1024;
/// Bytes of a success response read to keep the connection reusable.
const SUCCESS_BODY_LIMIT: usize = 64 * 1024;
/// Wait before settling again when a dead-letter publish failed.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(5);

/// What every target of a route shares.
pub struct RouteContext {
    /// `namespace/name`, for logs and metric labels.
    pub label: String,
    pub js: jetstream::Context,
    pub dead_letter_enabled: bool,
    /// When the stream removes events; undelivered ones are dead-lettered before.
    pub expiry: Option<Expiry>,
}

/// What stands between an event and its request once the event is in hand.
enum Wait<'a> {
    /// The breaker and the rate limiters let it go (with a permit of the
    /// concurrency limit, when there is one).
    Go(Option<Permit<'a>>),
    /// Stopping: hand it back.
    Drain,
    /// It reached its expiry deadline while waiting: dead-letter it.
    Expired,
    /// An ordered target's event this dispatcher may no longer deliver.
    Lost,
}

/// How an attempt went, or why none was made.
// Answered, the large variant, is the common one: boxing it would allocate per attempt.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Attempted {
    /// The target answered (or failed to: a timeout, a broken connection); the
    /// attempt is yet to be reported finished.
    Answered(Verdict, Attempt),
    /// Stopping: hand the event back.
    Drain,
    /// It reached its expiry deadline while waiting: dead-letter it; with the
    /// refusal that held it, if the egress policy did.
    Expired(Option<Failure>),
    /// An ordered target's event whose dispatcher is no longer the one delivering
    /// the target: leave it (unsettled) to the one that is.
    Fenced,
}

pub struct Worker {
    route: Arc<RouteContext>,
    config: TargetConfig,
    consumer: PullConsumer,
    ack_wait: Duration,
    template: RequestTemplate,
    client: HttpClient,
    /// The target's access tokens, when it uses OAuth 2.0.
    tokens: Option<TokenSource>,
    breaker: Option<Mutex<Breaker>>,
    /// Set while the egress policy refuses the target's address.
    egress: EgressHold,
    limiter: Option<SharedLimit>,
    telemetry: TargetTelemetry,
    /// The delivery history and the spans.
    report: Reporter,
    /// The target's maxInFlight: deliveries this worker has in hand at most.
    max_in_flight: usize,
    /// Its CEL filter and transform.
    expressions: TargetExpressions,
    /// Requests at once, when fewer may go than events are in hand (adaptive
    /// concurrency, ordered targets); `None`: every event in hand may go.
    concurrency: Option<ConcurrencyLimit>,
    /// Whether pushback counts against the breaker.
    count_pushback: bool,
    /// Set for an ordered target.
    ordered: Option<Ordered>,
    /// The consumer it takes events from, once started.
    pull: OnceLock<Pull>,
}

/// The parts a worker is built from (see `engine.rs`).
pub struct WorkerParts {
    pub route: Arc<RouteContext>,
    pub config: TargetConfig,
    pub consumer: PullConsumer,
    pub template: RequestTemplate,
    pub client: HttpClient,
    pub tokens: Option<TokenSource>,
    pub limiter: Option<SharedLimit>,
    pub telemetry: TargetTelemetry,
    pub report: Reporter,
    pub expressions: TargetExpressions,
    /// Set for an ordered target.
    pub ordered: Option<Ordered>,
}

impl Worker {
    pub fn new(parts: WorkerParts) -> Worker {
        let ack_wait = parts.consumer.cached_info().config.ack_wait;
        let max_in_flight = parts.config.policy.max_in_flight as usize;
        let breaker = parts
            .config
            .policy
            .circuit_breaker
            .clone()
            .map(|policy| Mutex::new(Breaker::new(policy, Instant::now())));
        let count_pushback = parts
            .config
            .policy
            .circuit_breaker
            .as_ref()
            .is_some_and(|b| b.count_pushback);
        let max = max_in_flight.max(1) as u32;
        let concurrency = match (&parts.config.policy.adaptive_concurrency, &parts.ordered) {
            (Some(adaptive), _) => Some(ConcurrencyLimit::adaptive(adaptive, max)),
            // More events are in hand than may be in flight: waiting behind their
            // key's head, or heads of more keys than maxInFlight.
            (None, Some(_)) => Some(ConcurrencyLimit::fixed(max)),
            (None, None) => None,
        };
        parts
            .telemetry
            .concurrency_changed(concurrency.as_ref().map_or(max, ConcurrencyLimit::limit));
        // An address URL the policy refuses shows in status at once, before any event.
        let egress = match parts.client.refused_without_lookup() {
            Some(refusal) => {
                let failure = refused(&refusal);
                parts.telemetry.refused_at_start(&failure);
                EgressHold::held(Instant::now(), failure)
            }
            None => EgressHold::default(),
        };
        Worker {
            egress,
            route: parts.route,
            ack_wait,
            template: parts.template,
            client: parts.client,
            tokens: parts.tokens,
            breaker,
            limiter: parts.limiter,
            telemetry: parts.telemetry,
            report: parts.report,
            consumer: parts.consumer,
            max_in_flight: max_in_flight.max(1),
            concurrency,
            count_pushback,
            ordered: parts.ordered,
            config: parts.config,
            expressions: parts.expressions,
            pull: OnceLock::new(),
        }
    }

    /// Whether its consumer's connection is up: without it no event comes or is
    /// settled.
    pub fn is_pulling(&self) -> bool {
        self.pull.get().is_some_and(Pull::is_connected)
    }

    /// An ordered target's part.
    pub fn ordered(&self) -> Option<&Ordered> {
        self.ordered.as_ref()
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    pub(crate) fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.route.js
    }

    pub(crate) fn policy(&self) -> &fanout_config::DeliveryPolicy {
        &self.config.policy
    }

    /// Where attempts are recorded (history, spans).
    pub(crate) fn report(&self) -> &Reporter {
        &self.report
    }

    /// The limit on requests at once, when fewer may go than events are in hand.
    pub(crate) fn concurrency(&self) -> Option<&ConcurrencyLimit> {
        self.concurrency.as_ref()
    }

    /// Requests this worker lets go at once now; `None` while it stands by for an
    /// ordered target another dispatcher delivers.
    pub fn concurrency_limit(&self) -> Option<u32> {
        if self.ordered.as_ref().is_some_and(|o| !o.is_active()) {
            return None;
        }
        Some(
            self.concurrency
                .as_ref()
                .map_or(self.max_in_flight as u32, ConcurrencyLimit::limit),
        )
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The target's consumer, as found at start on the engine's NATS connection.
    pub fn consumer(&self) -> &PullConsumer {
        &self.consumer
    }

    /// The breaker's state; open while the egress policy holds the target.
    pub fn circuit(&self) -> Circuit {
        if self.egress.is_held() {
            return Circuit::Open;
        }
        self.breaker.as_ref().map_or(Circuit::Closed, |b| {
            b.lock()
                .unwrap_or_else(|e| e.into_inner())
                .state(Instant::now())
        })
    }

    /// Why the egress policy holds the target's events, while it does.
    pub fn egress_hold_reason(&self) -> Option<Failure> {
        self.egress.reason()
    }

    pub fn snapshot(&self, pod: &str) -> HealthSnapshot {
        let circuit = self.circuit();
        self.telemetry.set_circuit_gauge(circuit);
        let mut snapshot = self.telemetry.snapshot(pod, circuit);
        snapshot.concurrency_limit = self.concurrency_limit();
        if let Some(ordered) = &self.ordered {
            let (blocked, oldest) = ordered.blocked();
            self.telemetry.blocked_keys(blocked);
            snapshot.blocked_keys = blocked;
            snapshot.oldest_blocked_since = oldest.map(crate::telemetry::rfc3339);
        }
        snapshot
    }

    /// Fetches and delivers until `shutdown`; then stops fetching, sends events that
    /// have not started back to JetStream, and gives requests in flight `grace` to end.
    ///
    /// Deliveries are futures driven by this one task, not spawned tasks: a spawn,
    /// its scheduling and its join bookkeeping per event cost more than the
    /// delivery's own code. The dispatcher runs one runtime thread by default, so
    /// nothing is lost in parallelism; targets still run side by side as tasks.
    /// `pull` reads the target's consumer on a connection of the worker's own, made
    /// with [`Worker::pull_config`].
    pub async fn run(self: Arc<Self>, pull: Pull, shutdown: CancellationToken, grace: Duration) {
        let _ = self.pull.set(pull.clone());
        if self.ordered.is_some() {
            return ordering::run::run(self, pull, shutdown, grace).await;
        }
        let drain = CancellationToken::new();
        let mut deliveries = FuturesUnordered::new();
        loop {
            // A free slot first: while every slot is taken (by requests, or by events
            // held back by an open circuit) nothing more is read, JetStream stops
            // delivering at max_ack_pending, and the backlog stays in the stream.
            while deliveries.len() >= self.max_in_flight {
                tokio::select! {
                    _ = deliveries.next() => {}
                    _ = shutdown.cancelled() => {}
                }
                if shutdown.is_cancelled() {
                    break;
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            let next = alongside(&mut deliveries, shutdown.run_until_cancelled(pull.next())).await;
            match next {
                None | Some(Err(PullError::Closed)) => break,
                Some(Ok(message)) => {
                    let message = Message::new(message, pull.clone());
                    deliveries.push(self.clone().deliver(message, drain.clone()));
                }
                Some(Err(error)) => {
                    // The consumer is gone (the operator recreates it), or a limit of
                    // its refused the pull: pull again after a pause.
                    tracing::warn!(route = %self.route.label, target = %self.name(), error = %fanout_config::error_chain(&error), "pulling events failed; retrying");
                    let pause = tokio::time::sleep(REFUSED_PAUSE);
                    alongside(&mut deliveries, shutdown.run_until_cancelled(pause)).await;
                }
            }
        }
        drain.cancel();
        alongside(&mut deliveries, self.hand_back(&pull)).await;
        let finished =
            tokio::time::timeout(grace, async { while deliveries.next().await.is_some() {} }).await;
        if finished.is_err() {
            tracing::warn!(route = %self.route.label, target = %self.name(), ?grace, in_flight = deliveries.len(), "requests still in flight after the grace period; abandoning them (JetStream redelivers after the ack wait)");
        }
    }

    /// How this target's consumer is pulled: JetStream keeps up to a batch of events
    /// on the way to the worker.
    pub fn pull_config(&self) -> PullConfig {
        if self.ordered.is_some() {
            return ordering::run::pull_config(self);
        }
        let info = self.consumer.cached_info();
        PullConfig {
            stream: info.stream_name.clone(),
            consumer: info.name.clone(),
            batch: self.max_in_flight.clamp(1, MAX_BATCH),
            expires: PULL_EXPIRES,
            heartbeat: HEARTBEAT,
            group: None,
        }
    }

    /// On stop: events already on their way to us go straight back (negative ack
    /// without delay) so another replica takes them now, not after the ack wait.
    pub(crate) async fn hand_back(&self, pull: &Pull) {
        pull.stop_asking();
        let deadline = tokio::time::Instant::now() + HAND_BACK_MAX;
        loop {
            let next = tokio::select! {
                next = pull.next() => next,
                _ = tokio::time::sleep(HAND_BACK_QUIET) => break,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            match next {
                Ok(message) => pull.ack(&message.reply, Ack::Nak(None)),
                Err(_) => break,
            }
        }
    }

    async fn deliver(self: Arc<Self>, message: Message, drain: CancellationToken) {
        let event = Event::from_message(&message);
        // What goes to the target: the event, and what its transform computed.
        let transformed = match self.select(&event) {
            Selection::Send(transformed) => transformed,
            Selection::Skip => {
                self.telemetry.filtered();
                self.report.filtered(&event);
                message.settle(Ack::Ack);
                return;
            }
            Selection::Unusable(unusable) => {
                self.telemetry
                    .expression_failed(unusable.reason, &unusable.error);
                Box::pin(self.dead_letter(
                    &message,
                    &event,
                    unusable.reason,
                    None,
                    &unusable.error,
                ))
                .await;
                return;
            }
        };
        let outgoing = Outgoing::new(&event, transformed.as_deref());
        if self.time_left(&event) == Some(Duration::ZERO) {
            Box::pin(self.expire(&message, &event, None)).await;
            return;
        }
        let (verdict, attempt) = match self
            .attempt_once(&message, &event, outgoing, &drain, None)
            .await
        {
            Attempted::Answered(verdict, attempt) => (verdict, attempt),
            Attempted::Drain => {
                message.settle(Ack::Nak(None));
                return;
            }
            Attempted::Expired(refusal) => {
                Box::pin(self.expire(&message, &event, refusal.as_ref())).await;
                return;
            }
            // Only ordered deliveries pass a fence.
            Attempted::Fenced => return,
        };
        let status = match &verdict {
            Verdict::Delivered { status } => *status,
            _ => 0,
        };
        let decision = decide(
            &self.config.policy.retry,
            event.delivery,
            verdict,
            &mut rand::rng(),
        );
        match decision {
            Decision::Ack => {
                self.telemetry.delivered(&event.id, event.delivery, status);
                self.report
                    .finished(&event, attempt, AttemptEnd::Delivered { status });
                message.settle(Ack::Ack);
            }
            Decision::Retry { delay, failure } => match self.time_left(&event) {
                // The next attempt would come after the event's expiry deadline, so
                // there will be none: dead-letter it now, while its last answer is
                // known.
                Some(left) if delay >= left => {
                    self.telemetry
                        .attempt_failed(&event.id, event.delivery, &failure, None);
                    self.report
                        .finished(&event, attempt, AttemptEnd::Failed { failure: &failure });
                    Box::pin(self.expire(&message, &event, Some(&failure))).await;
                }
                _ => {
                    self.telemetry
                        .attempt_failed(&event.id, event.delivery, &failure, Some(delay));
                    let end = AttemptEnd::Retrying {
                        failure: &failure,
                        delay,
                    };
                    self.report.finished(&event, attempt, end);
                    message.settle(Ack::Nak(Some(delay)));
                }
            },
            Decision::DeadLetter { reason, failure } => {
                self.telemetry
                    .attempt_failed(&event.id, event.delivery, &failure, None);
                self.report
                    .finished(&event, attempt, AttemptEnd::Failed { failure: &failure });
                // Boxed: rare, and its publish future would otherwise enlarge every
                // delivery's task.
                let error = failure.to_string();
                Box::pin(self.dead_letter(&message, &event, reason, failure.status(), &error))
                    .await;
            }
        }
    }

    /// Waits for admission (egress hold, breaker, rate limit, concurrency limit and,
    /// for an ordered target, `fence`), then sends one request and classifies its
    /// answer, which the breaker and the concurrency limit are told. A request the
    /// egress policy refuses was not sent: the event waits and tries again.
    /// `outgoing` is what is sent: `event`, with what its transform computed.
    pub(crate) async fn attempt_once(
        &self,
        message: &Message,
        event: &Event,
        outgoing: Outgoing<'_>,
        drain: &CancellationToken,
        fence: Option<&Fence<'_>>,
    ) -> Attempted {
        // Refused by the egress policy: nothing was sent, so the event stays in hand
        // and waits with the target's other events until the address is allowed.
        let mut refusal = None;
        loop {
            let mut permit = match self.admit(message, event, drain, fence).await {
                Wait::Go(permit) => permit,
                Wait::Drain => return Attempted::Drain,
                Wait::Expired => return Attempted::Expired(refusal),
                Wait::Lost => return Attempted::Fenced,
            };
            if let Some(fence) = fence {
                match fence.until_mine(message, drain).await {
                    Gate::Open => {}
                    Gate::Drain => return Attempted::Drain,
                    Gate::Lost => return Attempted::Fenced,
                }
            }
            if let Some(permit) = &mut permit {
                permit.sending();
            }
            self.telemetry.request_started();
            let started = Instant::now();
            let attempt = self.report.start(event);
            match self.attempt(outgoing, attempt.traceparent()).await {
                Ok(verdict) => {
                    let took = started.elapsed();
                    self.telemetry.request_finished(took, attempt.exemplar());
                    if self.egress.allowed() {
                        self.telemetry.egress_allowed();
                    }
                    if let Some(permit) = permit
                        && let Some(limit) = permit.finish(concurrency::signal(&verdict, took))
                    {
                        self.telemetry.concurrency_changed(limit);
                    }
                    self.record(&verdict);
                    return Attempted::Answered(verdict, attempt);
                }
                Err(failure) => {
                    drop(permit);
                    self.telemetry.request_not_sent();
                    let held = self.egress.refused(Instant::now(), failure.clone());
                    self.telemetry.egress_refused(&event.id, &failure, held);
                    self.report.refused(attempt, &failure);
                    refusal = Some(failure);
                }
            }
        }
    }

    /// Tells the breaker how an attempt went.
    fn record(&self, verdict: &Verdict) {
        if let Some(breaker) = &self.breaker {
            let failed = verdict.counts_against_target(self.count_pushback);
            let change = breaker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(!failed, Instant::now());
            if let Some(state) = change {
                self.telemetry.circuit_changed(state);
            }
        }
    }

    /// Waits until the egress hold, the breaker, the rate limiter and the concurrency
    /// limit let a request go, sending progress acks so JetStream keeps the event
    /// with us; gives up when draining for shutdown or when the event reaches its
    /// expiry deadline meanwhile, or (an ordered target's) when `fence` says the
    /// event is no longer this dispatcher's.
    async fn admit(
        &self,
        message: &Message,
        event: &Event,
        drain: &CancellationToken,
        fence: Option<&Fence<'_>>,
    ) -> Wait<'_> {
        let lost = || fence.is_some_and(Fence::lost);
        let progress_every = self.ack_wait / 3;
        let mut next_progress = Instant::now() + progress_every;
        // Far enough not to matter when the stream keeps events for ever.
        let deadline = Instant::now()
            + self
                .time_left(event)
                .unwrap_or(Duration::from_secs(86_400 * 365));
        if self.breaker.is_some() || self.egress.is_held() {
            loop {
                // The hold first: while it lasts nothing may be sent, and asking the
                // breaker would take one of its half-open probes for nothing.
                let admission = match self.egress.admit(Instant::now()) {
                    Admission::Allowed => match &self.breaker {
                        Some(breaker) => breaker
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .admit(Instant::now()),
                        None => Admission::Allowed,
                    },
                    denied => denied,
                };
                let until = match admission {
                    Admission::Allowed => break,
                    Admission::Denied { until } => until,
                };
                if Instant::now() >= deadline {
                    return Wait::Expired;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(until.min(next_progress).min(deadline).into()) => {}
                    _ = drain.cancelled() => return Wait::Drain,
                }
                if Instant::now() >= next_progress {
                    if lost() {
                        return Wait::Lost;
                    }
                    message.settle(Ack::Progress);
                    next_progress = Instant::now() + progress_every;
                }
            }
        }
        // A request that may go now registers no timer. The wait below polls its
        // sleeps, which registers them, and a timer due before the runtime's next
        // wake-up wakes its driver (an eventfd write); polled in random order, as
        // select! does by default, that was one write per four requests
        // (docs/benchmarks.md).
        if let Some(limit) = &self.limiter
            && !limit.try_now()
        {
            loop {
                tokio::select! {
                    biased;
                    _ = limit.until_ready() => break,
                    _ = tokio::time::sleep_until(next_progress.into()) => {
                        if lost() {
                            return Wait::Lost;
                        }
                        message.settle(Ack::Progress);
                        next_progress = Instant::now() + progress_every;
                    }
                    _ = tokio::time::sleep_until(deadline.into()) => return Wait::Expired,
                    _ = drain.cancelled() => return Wait::Drain,
                }
            }
        }
        let Some(limit) = &self.concurrency else {
            return Wait::Go(None);
        };
        let mut acquire = std::pin::pin!(limit.acquire());
        loop {
            tokio::select! {
                permit = &mut acquire => return Wait::Go(Some(permit)),
                _ = tokio::time::sleep_until(next_progress.into()) => {
                    if lost() {
                        return Wait::Lost;
                    }
                    message.settle(Ack::Progress);
                    next_progress = Instant::now() + progress_every;
                }
                _ = tokio::time::sleep_until(deadline.into()) => return Wait::Expired,
                _ = drain.cancelled() => return Wait::Drain,
            }
        }
    }

    /// How long until `event` is to be dead-lettered as expired (zero once it is
    /// due); `None` when the stream keeps events for ever.
    pub(crate) fn time_left(&self, event: &Event) -> Option<Duration> {
        let expiry = self.route.expiry?;
        Some(
            expiry
                .dead_letter_at(event.stored_at)
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }

    /// What this target does with `event`: a redriven event was addressed to it
    /// explicitly, others must pass its filter; then its transform applies.
    pub fn select(&self, event: &Event) -> Selection {
        let redriven = event.subject.starts_with("fanout.redrive.");
        if !redriven
            && !self
                .config
                .filter
                .matches(&event.subject, |h| event.header(h))
        {
            return Selection::Skip;
        }
        self.expressions.select(event, !redriven)
    }

    /// Whether this target takes `event` (an event its CEL filter cannot be evaluated
    /// on counts as taken: it is dead-lettered either way).
    pub fn wants(&self, event: &Event) -> bool {
        event.subject.starts_with("fanout.redrive.")
            || (self
                .config
                .filter
                .matches(&event.subject, |h| event.header(h))
                && self.expressions.filter_takes(event))
    }

    /// Dead-letters an event in hand that reached its expiry deadline. `last`: its
    /// last attempt's failure; without one, a refusal that held the target explains
    /// why it waited.
    async fn expire(&self, message: &Message, event: &Event, last: Option<&Failure>) {
        let held = self.egress.reason();
        let last = last.or(held.as_ref());
        let error = self.expired_error(event, last);
        self.dead_letter(
            message,
            event,
            DeadLetterReason::Expired,
            last.and_then(Failure::status),
            &error,
        )
        .await;
    }

    /// Why an expired event was given up on, for its dead letter.
    pub fn expired_error(&self, event: &Event, last: Option<&Failure>) -> String {
        let age = SystemTime::now()
            .duration_since(event.stored_at)
            .unwrap_or_default();
        let max_age = self.route.expiry.map_or_else(String::new, |e| {
            format!(
                ", and the stream keeps events {} (retention.maxAge)",
                e.max_age
            )
        });
        let last = match last {
            None => String::new(),
            // Not an attempt: nothing was sent.
            Some(refused @ Failure::Refused(_)) => format!("; {refused}"),
            Some(failure) => format!("; last attempt: {failure}"),
        };
        format!(
            "not delivered within the stream's retention: stored {} ago{max_age}{last}",
            fanout_config::Duration::from(Duration::from_millis(age.as_millis() as u64))
        )
    }

    /// Sends one request and classifies what came back; an error (a
    /// [`Failure::Refused`]) when the egress policy refused the connection, and so
    /// nothing was sent.
    async fn attempt(&self, outgoing: Outgoing<'_>, traceparent: &str) -> Result<Verdict, Failure> {
        let sent = match &self.tokens {
            None => {
                let request = self.template.attempt(outgoing, traceparent);
                self.client.send(request, body_limit).await
            }
            // Boxed: its two requests and token fetches would otherwise enlarge
            // every delivery's future, token or not (docs/benchmarks.md).
            Some(tokens) => {
                match Box::pin(self.send_with_token(tokens, outgoing, traceparent)).await {
                    Ok(sent) => sent,
                    Err(error) => {
                        return Ok(classify_transport(Failure::Token(error_chain(&*error))));
                    }
                }
            }
        };
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                if let Some(refusal) = error.egress_refusal() {
                    return Err(refused(refusal));
                }
                if error.is_timeout() {
                    return Ok(classify_transport(Failure::Timeout));
                }
                return Ok(classify_transport(Failure::Connection(error_chain(&error))));
            }
        };
        let code = response.status.as_u16();
        let retry_after = response
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let success = response.status.is_success();
        let body = match response.body {
            Ok(body) => body,
            // The status is known; a body that fails still counts for a success, the
            // response head was the answer.
            Err(error) if success => {
                tracing::debug!(error = %error_chain(&error), "reading a success response body failed");
                Vec::new()
            }
            Err(error) if error.is_timeout() => return Ok(classify_transport(Failure::Timeout)),
            Err(error) => {
                return Ok(classify_transport(Failure::Connection(error_chain(&error))));
            }
        };
        let text = if success {
            String::new()
        } else {
            String::from_utf8_lossy(&body).trim().to_string()
        };
        Ok(classify_status(
            &self.config.policy.retry,
            code,
            text,
            retry_after,
        ))
    }

    /// Sends the attempt's request with the target's access token. A 401 means the
    /// target no longer takes that token (revoked, or expired early): the request is
    /// sent once more with a new one, and that answer stands.
    async fn send_with_token(
        &self,
        tokens: &TokenSource,
        outgoing: Outgoing<'_>,
        traceparent: &str,
    ) -> Result<Result<Response, SendError>, SharedTokenError> {
        let token = tokens.authorization().await?;
        let request = self.template.attempt(outgoing, traceparent);
        let sent = self
            .client
            .send(request.authorized(token.clone()), body_limit)
            .await;
        if !matches!(&sent, Ok(r) if r.status == StatusCode::UNAUTHORIZED) {
            return Ok(sent);
        }
        let token = tokens.replace(&token).await?;
        let request = self.template.attempt(outgoing, traceparent);
        Ok(self
            .client
            .send(request.authorized(token), body_limit)
            .await)
    }

    async fn dead_letter(
        &self,
        message: &Message,
        event: &Event,
        reason: DeadLetterReason,
        last_status: Option<u16>,
        last_error: &str,
    ) {
        match self
            .publish_dead_letter(event, reason, last_status, last_error)
            .await
        {
            Ok(()) => message.settle(Ack::Term),
            // Not acknowledged: the event stays and comes back after the delay.
            Err(_) => message.settle(Ack::Nak(Some(DEAD_LETTER_RETRY))),
        }
    }

    /// Publishes `event`'s dead letter for this target (or, with dead-lettering off,
    /// counts it as discarded) and reports it. An error when JetStream did not take
    /// it: the caller keeps the event.
    pub async fn publish_dead_letter(
        &self,
        event: &Event,
        reason: DeadLetterReason,
        last_status: Option<u16>,
        last_error: &str,
    ) -> Result<(), DeadLetterError> {
        let started = SystemTime::now();
        if !self.route.dead_letter_enabled {
            self.telemetry
                .discarded(&event.id, event.delivery, reason.as_str(), last_error);
            let reason = reason.as_str();
            self.report
                .gave_up(event, true, reason, last_status, last_error, started);
            return Ok(());
        }
        let letter = DeadLetter {
            subject: &self.config.dead_letter_subject,
            target: &self.config.name,
            event,
            attempts: event.delivery,
            reason,
            last_status,
            last_error,
        };
        match letter.publish(&self.route.js).await {
            Ok(Stored::Now) => {
                self.telemetry.dead_lettered(
                    &event.id,
                    event.delivery,
                    reason.as_str(),
                    last_error,
                );
                let reason = reason.as_str();
                self.report
                    .gave_up(event, false, reason, last_status, last_error, started);
                Ok(())
            }
            Ok(Stored::Already) => {
                tracing::debug!(route = %self.route.label, target = %self.name(), event_id = %event.id, "dead letter stored already");
                Ok(())
            }
            Err(error) => {
                self.telemetry.dead_letter_failed(&event.id, &error);
                Err(error)
            }
        }
    }

    pub fn telemetry(&self) -> &TargetTelemetry {
        &self.telemetry
    }

    /// `replicas` dispatchers run the route now: the rate limit's share follows.
    pub fn set_replicas(&self, replicas: u32) {
        if let Some(limit) = &self.limiter {
            let before = limit.replicas();
            limit.set_replicas(replicas);
            if limit.replicas() != before {
                tracing::info!(route = %self.route.label, target = %self.name(), replicas, "rate limit shared by a new number of dispatchers");
            }
        }
    }
}

/// Awaits `future` while the deliveries in hand keep going. The future comes first
/// when both are ready, so a free slot is filled before finished deliveries are
/// collected.
pub(crate) async fn alongside<D, F>(deliveries: &mut FuturesUnordered<D>, future: F) -> F::Output
where
    D: Future<Output = ()>,
    F: Future,
{
    alongside_with(deliveries, future, |()| {}).await
}

/// [`alongside`], handing each finished delivery's output to `done`.
pub(crate) async fn alongside_with<D, F>(
    deliveries: &mut FuturesUnordered<D>,
    future: F,
    mut done: impl FnMut(D::Output),
) -> F::Output
where
    D: Future,
    F: Future,
{
    let mut future = std::pin::pin!(future);
    loop {
        tokio::select! {
            biased;
            output = &mut future => return output,
            Some(output) = deliveries.next(), if !deliveries.is_empty() => done(output),
        }
    }
}

/// The failure a refusal is reported as: the same words as the client's error.
fn refused(refusal: &fanout_config::egress::Refusal) -> Failure {
    Failure::Refused(format!("connection refused by egress policy: {refusal}"))
}

/// How much of a response body is worth reading: an error's start for the dead
/// letter, a success's whole (small) body so the connection can be used again.
fn body_limit(status: StatusCode) -> usize {
    if status.is_success() {
        SUCCESS_BODY_LIMIT
    } else {
        ERROR_BODY_LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, F: Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every event in flight holds one delivery future, and each is moved into the
    /// worker's set when it starts: its size is paid per delivery, whatever path the
    /// delivery takes. Rare paths (connecting, tokens, dead letters, expiry, spans)
    /// are boxed to keep it small (docs/benchmarks.md, "Delivery future").
    #[test]
    fn a_delivery_future_stays_small() {
        let size = future_size(Worker::deliver);
        assert!(
            size <= 3584,
            "a delivery's future is {size} bytes: box the rare path that grew it"
        );
    }
}
