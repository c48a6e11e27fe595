//! The loop of an ordered target: takes events from its pinned pull, holds each key's
//! later events behind its head, and after a takeover waits until everything the
//! last deliverer held is back before sending anything (see the module above).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin as StdPin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::consumer::PullConsumer;
use fanout_config::jetstream::ORDERED_GROUP;
use fanout_config::route::AfterDeadLetter;
use fanout_nats_client::pull::{Ack, PIN_HEADER, Pull, PullConfig, PullError};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::lanes::{Finished, Start};
use super::{Fence, Gate, Ordered, progress_every};
use crate::classify::{Failure, Verdict};
use crate::concurrency::ConcurrencyLimit;
use crate::delivery::{DeadLetterReason, Decision, decide};
use crate::event::Event;
use crate::expressions::{Outgoing, Selection, Transformed, Unusable};
use crate::message::Message;
use crate::report::AttemptEnd;
use crate::worker::{Attempted, MAX_BATCH, Worker, alongside_with};

/// A pull of an ordered consumer expires after this and is renewed; the pin lasts
/// while pulls keep coming.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How often the consumer is read while taking over, and while delivering.
const CHECK_TAKING_OVER: Duration = Duration::from_millis(250);
const CHECK_DELIVERING: Duration = Duration::from_secs(2);
/// Wait before trying again to record a dead letter or a blocked key.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Wait before pulling again after JetStream refused a pull.
const REFUSED_PAUSE: Duration = Duration::from_secs(1);

/// One event in hand.
#[derive(Debug)]
pub struct Held {
    message: Message,
    event: Event,
    /// What its target's expressions made of it: what its transform computed, or why it
    /// must be dead-lettered (which happens in its key's turn).
    selected: Result<Option<Box<Transformed>>, Unusable>,
    key: Option<String>,
    received_at: Instant,
}

/// What a finished delivery reports to the loop.
struct Done {
    epoch: u64,
    /// The event's stream sequence, if it was in hand (a filtered event is not).
    sequence: Option<u64>,
    key: Option<String>,
    finished: Finished,
}

type Delivery = StdPin<Box<dyn Future<Output = Done> + Send>>;

/// Where the loop stands with the pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing received in this epoch: standing by (or not yet served).
    Unpinned,
    /// Pinned; holding everything until what the last deliverer held is back.
    TakingOver,
    Delivering,
}

/// The consumer as read by the checker.
struct PinView {
    pinned: Option<String>,
    pending: Pending,
}

/// What a takeover waits for: everything JetStream counted as pending, up to the
/// sequence it had delivered, in hand.
#[derive(Clone, Copy)]
struct Pending {
    /// The loop's epoch when the read began: a read from an older one is stale.
    epoch: u64,
    delivered: u64,
    ack_pending: u64,
}

struct Loop {
    worker: Arc<Worker>,
    phase: Phase,
    /// The pin id of this epoch's events.
    pin_id: Option<String>,
    /// Stream sequences in hand in this epoch (waiting, out, or held while taking
    /// over), so that a redelivery of one of them is recognised.
    in_hand: foldhash::HashSet<u64>,
    /// Events received while taking over.
    taken: Vec<Held>,
    /// While taking over: the last read of the consumer that confirmed the pin. The
    /// takeover completes as soon as what it counted is in hand, not at the next read.
    pending: Option<Pending>,
    /// Heads that may go (with whether delivering them lifts a block), waiting for a
    /// free request: a head is started only when one is, so that a busy target does
    /// not hold a parked delivery, with its timers, for every key in hand.
    ready: VecDeque<(Held, bool)>,
    /// Deliveries started but not yet polled: they take their permits on their
    /// first poll, so the permits free now are not all for new heads.
    unclaimed: Arc<AtomicUsize>,
    deliveries: FuturesUnordered<Delivery>,
    drain: CancellationToken,
    /// Asks the checker for an immediate look.
    check_now: Arc<Notify>,
}

impl Worker {
    fn ordered_part(&self) -> &Ordered {
        self.ordered().expect("an ordered target's worker")
    }

    /// Events an ordered target holds at most: its requests and those waiting
    /// behind their key's head.
    fn ordered_capacity(&self) -> usize {
        self.max_in_flight() + self.ordered_part().max_waiting
    }
}

/// Fetches and delivers until `shutdown`, then hands back what it holds and lets go
/// of the pin; requests in flight get `grace`.
pub(crate) async fn run(
    worker: Arc<Worker>,
    pull: Pull,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let ordered = worker.ordered_part();
    let capacity = worker.ordered_capacity();
    let (views_tx, mut views) = mpsc::channel(1);
    let check_now = Arc::new(Notify::new());
    let taking_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = tokio::spawn(check(
        worker.clone(),
        worker.consumer().clone(),
        views_tx,
        check_now.clone(),
        taking_over.clone(),
        shutdown.clone(),
    ));
    let mut state = Loop {
        worker: worker.clone(),
        phase: Phase::Unpinned,
        pin_id: None,
        in_hand: foldhash::HashSet::default(),
        taken: Vec::new(),
        pending: None,
        ready: VecDeque::new(),
        unclaimed: Arc::new(AtomicUsize::new(0)),
        deliveries: FuturesUnordered::new(),
        drain: CancellationToken::new(),
        check_now,
    };
    let mut progress = tokio::time::interval(progress_every(worker.ack_wait()));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set after JetStream refused a pull: nothing is taken until it has passed.
    let mut paused: StdPin<Box<tokio::time::Sleep>> = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut is_paused = false;
    // One wait for the whole loop: a new one per turn would register and drop a
    // waiter on the token for every event.
    let mut stopping = std::pin::pin!(shutdown.cancelled());
    loop {
        taking_over.store(
            state.phase == Phase::TakingOver,
            std::sync::atomic::Ordering::Relaxed,
        );
        ordered.set_active(state.phase == Phase::Delivering);
        // Nothing more is taken while a head that may go waits for a free request:
        // taken now, an event would only wait too (its key's lane or the same queue),
        // costing memory and a cold cache when its turn comes.
        let room = state.in_hand.len() < capacity && state.ready.is_empty() && !is_paused;
        tokio::select! {
            biased;
            _ = &mut stopping => break,
            Some(done) = state.deliveries.next(), if !state.deliveries.is_empty() => state.finished(done),
            _ = free_request(&worker), if !state.ready.is_empty() => state.start_ready(),
            Some(view) = views.recv() => state.checked(view).await,
            _ = progress.tick() => state.keep_waiting_in_hand().await,
            _ = &mut paused, if is_paused => is_paused = false,
            next = pull.next(), if room => match next {
                Ok(message) => {
                    state.received(Message::new(message, pull.clone()));
                    if state.phase == Phase::TakingOver {
                        state.take_over_if_all_back().await;
                    }
                }
                Err(PullError::Closed) => break,
                Err(error) => {
                    tracing::warn!(target = %worker.name(), error = %fanout_config::error_chain(&error), "pulling events failed; retrying");
                    paused.as_mut().reset(tokio::time::Instant::now() + REFUSED_PAUSE);
                    is_paused = true;
                }
            },
        }
    }
    checker.abort();
    state.stop(&pull, grace).await;
}

/// How an ordered target's consumer is pulled: from its pinned group, with pulls that
/// expire soon, so that a pin another dispatcher was given is noticed.
pub(crate) fn pull_config(worker: &Worker) -> PullConfig {
    let info = worker.consumer().cached_info();
    PullConfig {
        stream: info.stream_name.clone(),
        consumer: info.name.clone(),
        batch: worker.ordered_capacity().clamp(1, MAX_BATCH),
        expires: PULL_EXPIRES,
        heartbeat: HEARTBEAT,
        group: Some(ORDERED_GROUP.to_string()),
    }
}

impl Loop {
    fn ordered(&self) -> &Ordered {
        self.worker.ordered_part()
    }

    fn received(&mut self, message: Message) {
        let pin_id = message.header(PIN_HEADER).map(str::to_string);
        if self.phase == Phase::Unpinned || pin_id != self.pin_id {
            // The pin is new to us: what we held may have gone to another dispatcher
            // meanwhile, and anything the last deliverer held may be on its way.
            self.new_epoch(pin_id, Phase::TakingOver);
        }
        // JetStream just handed us this: the pin is ours right now.
        self.ordered().pin.confirm();
        let Some(sequence) = message.info().map(|info| info.stream_sequence) else {
            return;
        };
        if !self.in_hand.insert(sequence) {
            // Redelivered while in hand (an ack wait passed): the copy we hold stands,
            // and acks go by stream sequence.
            return;
        }
        let event = Event::from_message(&message);
        let selected = match self.worker.select(&event) {
            Selection::Send(transformed) => Ok(transformed),
            Selection::Unusable(unusable) => Err(unusable),
            Selection::Skip => {
                self.in_hand.remove(&sequence);
                self.worker.telemetry().filtered();
                self.worker.report().filtered(&event);
                let epoch = self.ordered().pin.epoch();
                self.deliveries.push(Box::pin(async move {
                    message.settle(Ack::Ack);
                    Done {
                        epoch,
                        sequence: None,
                        key: None,
                        finished: Finished::Delivered,
                    }
                }));
                return;
            }
        };
        // A key expression that cannot be evaluated dead-letters the event (unless
        // its transform already does).
        let (key, selected) = match (self.ordered().key.key_of(&event), selected) {
            (Ok(key), selected) => (key, selected),
            (Err(unusable), Ok(_)) => (None, Err(unusable)),
            (Err(_), selected) => (None, selected),
        };
        let held = Held {
            message,
            event,
            selected,
            key,
            received_at: Instant::now(),
        };
        match self.phase {
            Phase::TakingOver => self.taken.push(held),
            _ => self.dispatch(held),
        }
    }

    /// Starts `held` now, or queues it behind its key's head.
    fn dispatch(&mut self, held: Held) {
        let Some(key) = held.key.clone() else {
            self.start(held, false);
            return;
        };
        let sequence = held.event.stream_sequence;
        let id = held.event.id.clone();
        let redriven = held.event.subject.starts_with("fanout.redrive.");
        let start = self
            .ordered()
            .lanes()
            .offer(key, sequence, &id, redriven, held);
        if let Some(start) = start {
            self.start_head(start);
        }
    }

    fn start_head(&mut self, start: Start<Held>) {
        self.ready.push_back((start.item, start.unblocks));
        self.start_ready();
    }

    /// Starts ready heads while requests are free.
    fn start_ready(&mut self) {
        let free = self
            .worker
            .concurrency()
            .map_or(usize::MAX, ConcurrencyLimit::free)
            .saturating_sub(self.unclaimed.load(Relaxed));
        for _ in 0..free.min(self.ready.len()) {
            let (held, unblocks) = self.ready.pop_front().expect("counted above");
            self.start(held, unblocks);
        }
    }

    fn start(&mut self, held: Held, unblocks: bool) {
        self.unclaimed.fetch_add(1, Relaxed);
        let delivery = deliver(
            self.worker.clone(),
            held,
            unblocks,
            self.drain.clone(),
            self.unclaimed.clone(),
        );
        self.deliveries.push(Box::pin(delivery));
    }

    fn finished(&mut self, done: Done) {
        if done.epoch != self.ordered().pin.epoch() {
            return;
        }
        if let Some(sequence) = done.sequence {
            self.in_hand.remove(&sequence);
        }
        let Some(key) = done.key else { return };
        let next = self.ordered().lanes().finished(&key, done.finished);
        if let Some(next) = next {
            self.start_head(next);
        }
    }

    /// Drops everything held without settling it (JetStream hands it out again) and
    /// starts epoch `phase`; deliveries of the old epoch give up before their next
    /// request.
    fn new_epoch(&mut self, pin_id: Option<String>, phase: Phase) {
        let ordered = self.worker.ordered_part();
        ordered.pin.advance();
        let dropped = ordered.lanes().clear().len() + self.taken.len() + self.ready.len();
        self.taken.clear();
        self.ready.clear();
        self.pending = None;
        self.in_hand.clear();
        if self.phase != Phase::Unpinned || dropped > 0 {
            tracing::info!(target = %self.worker.name(), dropped, ?phase, "ordered target: the pin changed; starting over with what JetStream hands out");
        }
        self.pin_id = pin_id;
        self.phase = phase;
        if phase == Phase::TakingOver {
            self.check_now.notify_one();
        }
    }

    async fn checked(&mut self, view: Result<PinView, String>) {
        let view = match view {
            Ok(view) => view,
            Err(error) => {
                tracing::debug!(target = %self.worker.name(), %error, "reading the ordered target's consumer failed");
                return;
            }
        };
        if self.phase == Phase::Unpinned || view.pending.epoch != self.ordered().pin.epoch() {
            return;
        }
        // A consumer without a pin (not provisioned as ordered yet) has no ids.
        if view.pinned != self.pin_id {
            tracing::warn!(target = %self.worker.name(), "ordered target: another dispatcher holds the pin now; this one stands by");
            self.new_epoch(None, Phase::Unpinned);
            return;
        }
        self.ordered().pin.confirm();
        if self.phase != Phase::TakingOver {
            return;
        }
        self.pending = Some(view.pending);
        self.take_over_if_all_back().await;
    }

    /// Takes over once everything the last read counted as pending is in hand; also
    /// checked as events arrive, since the read usually comes before they all have.
    async fn take_over_if_all_back(&mut self) {
        let Some(pending) = self.pending else { return };
        if pending.epoch != self.ordered().pin.epoch()
            || (self.in_hand.len() as u64) < pending.ack_pending
        {
            return;
        }
        // Everything pending up to the delivered sequence is ours when we hold at
        // least as many of those events as JetStream counts. (A late ack from the
        // last deliverer can only make us hold more than it counts; events after
        // that sequence are new deliveries, which only this pin gets.)
        let held = self
            .in_hand
            .iter()
            .filter(|s| **s <= pending.delivered)
            .count() as u64;
        if held < pending.ack_pending {
            return;
        }
        self.take_over().await;
    }

    /// Everything is back: blocked keys are read, and what was received is put in
    /// stream order and started.
    async fn take_over(&mut self) {
        if let Some(store) = &self.ordered().blocked_store {
            match store.list().await {
                Ok(blocked) => {
                    let mut lanes = self.ordered().lanes();
                    for b in blocked {
                        let since = humantime::parse_rfc3339(&b.since).unwrap_or(SystemTime::now());
                        lanes.block(&b.key, &b.event_id, since);
                    }
                }
                Err(error) => {
                    // Not taken over yet: the next check tries again (not each event
                    // that arrives meanwhile).
                    self.pending = None;
                    tracing::warn!(target = %self.worker.name(), error = %fanout_config::error_chain(&error), "reading the keys blocked until a redrive failed; waiting");
                    return;
                }
            }
        }
        self.pending = None;
        let mut taken = std::mem::take(&mut self.taken);
        taken.sort_by_key(|h| h.event.stream_sequence);
        tracing::info!(target = %self.worker.name(), events = taken.len(), "ordered target: delivering");
        self.phase = Phase::Delivering;
        for held in taken {
            self.dispatch(held);
        }
    }

    /// Progress acks for the events waiting in hand, so JetStream keeps them with
    /// us; none while the pin is not confirmed (they should go to whoever has it).
    async fn keep_waiting_in_hand(&mut self) {
        let ordered = self.worker.ordered_part();
        if !ordered.pin.is_fresh(ordered.pin.epoch()) {
            return;
        }
        let messages: Vec<Message> = {
            let lanes = ordered.lanes();
            lanes
                .waiting_items()
                .chain(self.taken.iter())
                .chain(self.ready.iter().map(|(held, _)| held))
                .map(|h| h.message.clone())
                .collect()
        };
        for message in &messages {
            message.settle(Ack::Progress);
        }
    }

    /// On stop: the pin is let go first, so that what goes back (what waits in hand,
    /// what is still arriving) goes to a standby dispatcher, which takes over at once;
    /// requests in flight get `grace`.
    async fn stop(mut self, pull: &Pull, grace: Duration) {
        self.drain.cancel();
        if self.phase != Phase::Unpinned {
            alongside_with(&mut self.deliveries, unpin(&self.worker), drop).await;
        }
        let mut waiting = self.ordered().lanes().clear();
        waiting.append(&mut self.taken);
        waiting.extend(self.ready.drain(..).map(|(held, _)| held));
        for held in &waiting {
            held.message.settle(Ack::Nak(None));
        }
        alongside_with(&mut self.deliveries, self.worker.hand_back(pull), drop).await;
        self.ordered().set_active(false);
        let finished = tokio::time::timeout(grace, async {
            while self.deliveries.next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(target = %self.worker.name(), ?grace, "requests still in flight after the grace period; abandoning them (JetStream redelivers after the ack wait)");
        }
    }
}

/// Resolves when a request of the target may go (at once for a target without a
/// concurrency limit, which an ordered one always has).
async fn free_request(worker: &Worker) {
    if let Some(limit) = worker.concurrency() {
        limit.room().await;
    }
}

/// Lets go of the pin so that a standby dispatcher gets it at once.
async fn unpin(worker: &Worker) {
    let info = worker.consumer().cached_info();
    let result = async {
        let stream = worker.js().get_stream(&info.stream_name).await?;
        stream.unpin_consumer(&info.name, ORDERED_GROUP).await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(target = %worker.name(), error = format!("{error:#}"), "letting go of the ordered target's pin failed; another dispatcher takes over when it expires");
    }
}

/// Reads the consumer: often while taking over, now and then while delivering (to
/// confirm the pin), when asked.
async fn check(
    worker: Arc<Worker>,
    mut consumer: PullConsumer,
    views: mpsc::Sender<Result<PinView, String>>,
    now: Arc<Notify>,
    taking_over: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) {
    loop {
        let every = if taking_over.load(std::sync::atomic::Ordering::Relaxed) {
            CHECK_TAKING_OVER
        } else {
            CHECK_DELIVERING
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = now.notified() => {}
            _ = shutdown.cancelled() => return,
        }
        let epoch = worker.ordered_part().pin.epoch();
        let view = match consumer.info().await {
            Ok(info) => Ok(PinView {
                pinned: info
                    .priority_groups
                    .iter()
                    .find(|g| g.group == ORDERED_GROUP)
                    .and_then(|g| g.pinned_client_id.clone()),
                pending: Pending {
                    epoch,
                    delivered: info.delivered.stream_sequence,
                    ack_pending: info.num_ack_pending as u64,
                },
            }),
            Err(error) => Err(fanout_config::error_chain(&error)),
        };
        if views.send(view).await.is_err() {
            return;
        }
    }
}

/// Delivers one event of an ordered target: like any delivery, but a retry waits in
/// hand (with progress acks) instead of going back to JetStream, whose redelivery
/// would come after the key's later events.
async fn deliver(
    worker: Arc<Worker>,
    held: Held,
    unblocks: bool,
    drain: CancellationToken,
    unclaimed: Arc<AtomicUsize>,
) -> Done {
    // Polled: from here it waits for its permit itself.
    unclaimed.fetch_sub(1, Relaxed);
    let ordered = worker.ordered_part();
    let Held {
        message,
        mut event,
        selected,
        key,
        received_at,
    } = held;
    let mut fence = ordered.pin.fence(received_at);
    let sequence = event.stream_sequence;
    let transformed = match selected {
        Ok(transformed) => transformed,
        Err(unusable) => {
            worker
                .telemetry()
                .expression_failed(unusable.reason, &unusable.error);
            let finished = settle_dead(
                &worker,
                &message,
                &event,
                key.as_deref(),
                unusable.reason,
                None,
                &unusable.error,
                &fence,
                &drain,
            )
            .await;
            return Done {
                epoch: fence.epoch,
                sequence: Some(sequence),
                key,
                finished,
            };
        }
    };
    let finished = loop {
        if worker.time_left(&event) == Some(Duration::ZERO) {
            let error = worker.expired_error(&event, worker.egress_hold_reason().as_ref());
            break settle_dead(
                &worker,
                &message,
                &event,
                key.as_deref(),
                DeadLetterReason::Expired,
                None,
                &error,
                &fence,
                &drain,
            )
            .await;
        }
        let (verdict, attempt) = match worker
            .attempt_once(
                &message,
                &event,
                Outgoing::new(&event, transformed.as_deref()),
                &drain,
                Some(&fence),
            )
            .await
        {
            Attempted::Answered(verdict, attempt) => (verdict, attempt),
            Attempted::Drain => {
                message.settle(Ack::Nak(None));
                break Finished::Abandoned;
            }
            Attempted::Fenced => break Finished::Abandoned,
            Attempted::Expired(refusal) => {
                let error = worker.expired_error(&event, refusal.as_ref());
                let status = refusal.as_ref().and_then(Failure::status);
                break settle_dead(
                    &worker,
                    &message,
                    &event,
                    key.as_deref(),
                    DeadLetterReason::Expired,
                    status,
                    &error,
                    &fence,
                    &drain,
                )
                .await;
            }
        };
        let status = match &verdict {
            Verdict::Delivered { status } => *status,
            _ => 0,
        };
        let decision = decide(
            &worker.policy().retry,
            event.delivery,
            verdict,
            &mut rand::rng(),
        );
        match decision {
            Decision::Ack => {
                if unblocks
                    && let (Some(store), Some(key)) = (&ordered.blocked_store, &key)
                    && !retry_store(&worker, &message, &fence, &drain, || store.delete(key)).await
                {
                    break Finished::Abandoned;
                }
                worker
                    .telemetry()
                    .delivered(&event.id, event.delivery, status);
                worker
                    .report()
                    .finished(&event, attempt, AttemptEnd::Delivered { status });
                message.settle(Ack::Ack);
                break Finished::Delivered;
            }
            Decision::Retry { delay, failure } => {
                if worker.time_left(&event).is_some_and(|left| delay >= left) {
                    worker
                        .telemetry()
                        .attempt_failed(&event.id, event.delivery, &failure, None);
                    worker.report().finished(
                        &event,
                        attempt,
                        AttemptEnd::Failed { failure: &failure },
                    );
                    let error = worker.expired_error(&event, Some(&failure));
                    break settle_dead(
                        &worker,
                        &message,
                        &event,
                        key.as_deref(),
                        DeadLetterReason::Expired,
                        failure.status(),
                        &error,
                        &fence,
                        &drain,
                    )
                    .await;
                }
                worker
                    .telemetry()
                    .attempt_failed(&event.id, event.delivery, &failure, Some(delay));
                let end = AttemptEnd::Retrying {
                    failure: &failure,
                    delay,
                };
                worker.report().finished(&event, attempt, end);
                if let Some(key) = &key {
                    ordered.lanes().head_failed(key, SystemTime::now());
                }
                match wait_in_hand(&worker, &message, delay, &fence, &drain).await {
                    Gate::Open => {}
                    Gate::Drain => {
                        message.settle(Ack::Nak(None));
                        break Finished::Abandoned;
                    }
                    Gate::Lost => break Finished::Abandoned,
                }
                // Our own count: JetStream's stays where it was, the event never left.
                event.delivery += 1;
                fence.received_at = Instant::now();
            }
            Decision::DeadLetter { reason, failure } => {
                worker
                    .telemetry()
                    .attempt_failed(&event.id, event.delivery, &failure, None);
                worker
                    .report()
                    .finished(&event, attempt, AttemptEnd::Failed { failure: &failure });
                let error = failure.to_string();
                break settle_dead(
                    &worker,
                    &message,
                    &event,
                    key.as_deref(),
                    reason,
                    failure.status(),
                    &error,
                    &fence,
                    &drain,
                )
                .await;
            }
        }
    };
    Done {
        epoch: fence.epoch,
        sequence: Some(sequence),
        key,
        finished,
    }
}

/// Dead-letters an event in hand: the dead letter is published (and, with
/// `afterDeadLetter: block`, the key recorded as blocked) before the event is
/// terminated; a failure there keeps the event in hand and tries again.
#[allow(clippy::too_many_arguments)]
async fn settle_dead(
    worker: &Worker,
    message: &Message,
    event: &Event,
    key: Option<&str>,
    reason: DeadLetterReason,
    last_status: Option<u16>,
    error: &str,
    fence: &Fence<'_>,
    drain: &CancellationToken,
) -> Finished {
    if !retry_store(worker, message, fence, drain, || {
        worker.publish_dead_letter(event, reason, last_status, error)
    })
    .await
    {
        return Finished::Abandoned;
    }
    let at = SystemTime::now();
    let ordered = worker.ordered_part();
    if ordered.after_dead_letter == AfterDeadLetter::Block
        && let (Some(store), Some(key)) = (&ordered.blocked_store, key)
        && !retry_store(worker, message, fence, drain, || {
            store.put(key, &event.id, at)
        })
        .await
    {
        return Finished::Abandoned;
    }
    message.settle(Ack::Term);
    Finished::DeadLettered {
        event_id: event.id.clone(),
        at,
    }
}

/// Runs `store` until it succeeds, waiting in hand between tries; false when the
/// event had to be left (stopping: handed back; the pin lost: left unsettled).
async fn retry_store<F, Fut, E>(
    worker: &Worker,
    message: &Message,
    fence: &Fence<'_>,
    drain: &CancellationToken,
    mut store: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error,
{
    loop {
        match store().await {
            Ok(()) => return true,
            Err(error) => {
                tracing::warn!(target = %worker.name(), error = %fanout_config::error_chain(&error), "ordered target: storing failed; the event stays in hand and it is tried again");
            }
        }
        match wait_in_hand(worker, message, STORE_RETRY, fence, drain).await {
            Gate::Open => {}
            Gate::Drain => {
                message.settle(Ack::Nak(None));
                return false;
            }
            Gate::Lost => return false,
        }
    }
}

/// Waits `delay` with the event in hand, sending progress acks while the pin is
/// confirmed.
async fn wait_in_hand(
    worker: &Worker,
    message: &Message,
    delay: Duration,
    fence: &Fence<'_>,
    drain: &CancellationToken,
) -> Gate {
    let every = progress_every(worker.ack_wait());
    let end = Instant::now() + delay;
    loop {
        let next = (Instant::now() + every).min(end);
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = drain.cancelled() => return Gate::Drain,
        }
        if fence.lost() {
            return Gate::Lost;
        }
        if Instant::now() >= end {
            return Gate::Open;
        }
        if worker.ordered_part().pin.is_fresh(fence.epoch) {
            message.settle(Ack::Progress);
        }
    }
}
