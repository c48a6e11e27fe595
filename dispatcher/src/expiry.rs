//! Events a target has not received yet, seen from the stream rather than from the
//! events in hand: how old the oldest one is (a metric), and, when the stream's
//! maxAge is near for events no dispatcher has fetched (a backlog behind an open
//! circuit, a slow or rate-limited target, too few replicas), dead letters with
//! reason `expired` so that the stream's limit never removes an undelivered event
//! unseen.
//!
//! Events in hand are the worker's business (it dead-letters them at the same
//! deadline, and retries never wait past it), so this looks only beyond the
//! consumer's delivered sequence: events no worker holds. Such an event stays in
//! the stream after its dead letter (other targets may still need it) until maxAge
//! removes it; if a worker fetches it before that, the worker dead-letters it too,
//! and the dead-letter stream's duplicate window stores that once. When: see
//! [`fanout_config::expiry`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::stream::{RawMessageError, Stream};
use fanout_config::expiry::Expiry;
use fanout_provision::observe;
use tokio_util::sync::CancellationToken;

use crate::dead_letter::DeadLetterError;
use crate::delivery::DeadLetterReason;
use crate::event::Event;
use crate::worker::Worker;

/// How often the oldest event's age is measured when the stream keeps events for
/// ever (nothing to dead-letter then; the metric still tells of a stuck target).
const MEASURE_EVERY: Duration = Duration::from_secs(30);
/// Most dead letters one sweep writes; the next sweep goes on where it stopped.
const MAX_PER_SWEEP: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("reading consumer {consumer}")]
    Consumer {
        consumer: String,
        #[source]
        source: async_nats::jetstream::context::ConsumerInfoError,
    },
    #[error("reading stream {stream}")]
    Stream {
        stream: String,
        #[source]
        source: RawMessageError,
    },
    #[error("dead-lettering an expiring event")]
    DeadLetter(#[source] DeadLetterError),
}

/// Watches `worker`'s target until `shutdown`.
pub async fn watch(
    worker: Arc<Worker>,
    stream: Stream,
    expiry: Option<Expiry>,
    shutdown: CancellationToken,
) {
    let every = expiry.map_or(MEASURE_EVERY, Expiry::sweep_every);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last stream sequence dead-lettered here, so a sweep does not write the
    // same dead letters again while the stream still holds their events.
    let mut swept_through = 0;
    let mut warned = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match sweep(&worker, &stream, expiry, &mut swept_through).await {
            Ok(age) => warned = warn_once(&worker, expiry, age, warned),
            Err(error) => {
                tracing::warn!(target = %worker.name(), error = %fanout_config::error_chain(&error), "looking for expiring events failed; trying again");
            }
        }
    }
}

/// Logs when the oldest undelivered event's age crosses half of maxAge, either way
/// (the log's counterpart of the route's `BacklogWithinRetention` condition, and
/// what `fanout standalone` users see); returns whether it is past it now.
fn warn_once(worker: &Worker, expiry: Option<Expiry>, age: Option<Duration>, warned: bool) -> bool {
    let Some(expiry) = expiry else { return false };
    let old = age.is_some_and(|age| age >= expiry.warn_after());
    let whole = |d: Duration| fanout_config::Duration::from(Duration::from_secs(d.as_secs()));
    if old && !warned {
        tracing::warn!(
            target = %worker.name(),
            oldest_undelivered_age = %whole(age.unwrap_or_default()),
            max_age = %expiry.max_age,
            dead_lettered_at = %whole(expiry.dead_letter_after()),
            "the target's oldest undelivered event is older than half of the stream's maxAge; events not delivered in time are dead-lettered with reason expired"
        );
    } else if !old && warned {
        tracing::info!(target = %worker.name(), "the target's backlog is back within half of the stream's maxAge");
    }
    old
}

/// One look at the target: measures the age of its oldest undelivered event (which
/// it returns) and dead-letters what is due.
async fn sweep(
    worker: &Worker,
    stream: &Stream,
    expiry: Option<Expiry>,
    swept_through: &mut u64,
) -> Result<Option<Duration>, SweepError> {
    let mut consumer = worker.consumer().clone();
    let info = consumer
        .info()
        .await
        .map_err(|source| SweepError::Consumer {
            consumer: worker.consumer().cached_info().name.clone(),
            source,
        })?
        .clone();
    let stream_error = |source| SweepError::Stream {
        stream: info.stream_name.clone(),
        source,
    };
    let oldest = observe::oldest_unsettled(stream, &info)
        .await
        .map_err(stream_error)?;
    let now = SystemTime::now();
    let age = oldest.map(|stored| now.duration_since(stored).unwrap_or_default());
    worker.telemetry().oldest_undelivered(age);
    let (Some(expiry), Some(oldest)) = (expiry, oldest) else {
        return Ok(age);
    };
    if expiry.dead_letter_at(oldest) > now {
        return Ok(age);
    }
    let mut from = (info.delivered.stream_sequence + 1).max(*swept_through + 1);
    for _ in 0..MAX_PER_SWEEP {
        let Some(message) = observe::first_for_consumer(stream, &info.config, from)
            .await
            .map_err(stream_error)?
        else {
            break;
        };
        let event = Event::from_stored(message, &info.stream_name);
        if expiry.dead_letter_at(event.stored_at) > SystemTime::now() {
            break;
        }
        if worker.wants(&event) {
            // Behind a target the egress policy refuses: that is why it waited.
            let error = worker.expired_error(&event, worker.egress_hold_reason().as_ref());
            worker
                .publish_dead_letter(&event, DeadLetterReason::Expired, None, &error)
                .await
                .map_err(SweepError::DeadLetter)?;
        }
        *swept_through = event.stream_sequence;
        from = event.stream_sequence + 1;
    }
    Ok(age)
}
