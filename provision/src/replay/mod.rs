//! Replay: the events a route's stream still holds for a window, sent again to one
//! target only. `kubectl fanout replay` and the operator's FanOutReplay controller both
//! run [`run`]; `--dry-run` runs [`plan`].
//!
//! - Which events: those of the window on the subjects the target's consumer reads
//!   that pass its header filter ([`Scope`]), oldest first. The window is fixed when a
//!   replay starts: its end is the given sequence or time, or the stream's last event.
//! - Where to: the target's redrive subject, which only that target's consumer reads,
//!   so the route's other targets get nothing twice. Each copy keeps the event's
//!   headers, its id among them: the target sees the original Idempotency-Key.
//! - How fast: no faster than the target's rate limit ([`pace`]).
//! - Resuming: progress is recorded under the replay's id ([`record`]) about once a
//!   second. A run with the same id resumes after the last sequence recorded. Copies
//!   carry the message id `replay:<id>:<sequence>`, so what a resumed run publishes
//!   again of the second before the interruption is stored once, if it resumes within
//!   the route's duplicate window (default 2m); later, those few events are delivered
//!   once more, with the same Idempotency-Key (at least once, as every delivery).

pub mod pace;
pub mod reader;
pub mod record;
pub mod scope;

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use fanout_config::EVENT_ID_HEADER;
use fanout_config::names::replay_message_id;
use futures::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use reader::From;
pub use record::{Record, Records};
pub use scope::{Scope, UnknownTarget};

use crate::copies;
use reader::{Reader, Stored};

/// How often progress is recorded while a replay runs.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Copies published whose acknowledgement is not in yet, at most.
const MAX_UNACKED: usize = 256;

/// The events to replay: from a sequence or a time, to a sequence or a time, or to the
/// stream's last event when the replay starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub from: From,
    pub until: Until,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// The stream's last event when the replay starts.
    Latest,
    /// This sequence, included.
    Sequence(u64),
    /// Events stored at this time or earlier.
    Time(SystemTime),
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "replay id {id:?}: use 1 to 200 letters, digits, '-', '_', '=' or '.', not starting or ending with '.'"
    )]
    InvalidId { id: String },
    #[error(
        "replay {id} was started for route {route}, target {target}; choose another id for this one"
    )]
    OtherReplay {
        id: String,
        route: String,
        target: String,
    },
    #[error(
        "replay {id}: its record changed under this process: another one is running the same replay"
    )]
    Taken { id: String },
    #[error(
        "replay {id} has no record (it never started, or its record expired {} after its last change): a window is needed to start it",
        fanout_config::Duration::from(record::RECORD_TTL)
    )]
    NotStarted { id: String },
    #[error("stream {stream}: {action}")]
    Stream {
        stream: String,
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the progress record of replay {id:?}: {action}")]
    Record {
        id: String,
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("publishing the event stored at sequence {sequence} to {subject}")]
    Publish {
        sequence: u64,
        subject: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ReplayError {
    fn stream(
        stream: &str,
        action: &'static str,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ReplayError {
        ReplayError::Stream {
            stream: stream.to_string(),
            action,
            source: e.into(),
        }
    }

    fn record(
        id: &str,
        action: &'static str,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ReplayError {
        ReplayError::Record {
            id: id.to_string(),
            action,
            source: e.into(),
        }
    }
}

/// Whether `id` can name a replay (it is a key in the KV bucket).
pub fn check_id(id: &str) -> Result<(), ReplayError> {
    let valid = (1..=200).contains(&id.len())
        && !id.starts_with('.')
        && !id.ends_with('.')
        && !id.contains("..")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(ReplayError::InvalidId { id: id.to_string() })
    }
}

/// One event a replay would send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub sequence: u64,
    pub stored: SystemTime,
    pub subject: String,
    pub event_id: Option<String>,
}

/// The window of a replay, in sequences, and how many of its events are for the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub total: u64,
}

/// What a replay of `window` would send, without sending anything: `each` is called
/// for every event, oldest first. Reads headers only.
pub async fn plan(
    js: &jetstream::Context,
    scope: &Scope,
    window: &Window,
    mut each: impl FnMut(&Planned),
) -> Result<Resolved, ReplayError> {
    let (from, bounds) = bounds(js, scope, window).await?;
    let mut reader = Reader::open(js, scope, from, bounds, true, 256).await?;
    let mut resolved = Resolved::default();
    while let Some(stored) = reader.next().await? {
        let headers = stored.message.headers.clone().unwrap_or_default();
        let subject = stored.message.subject.to_string();
        if !scope
            .filter
            .matches(&subject, |h| copies::header(&headers, h))
        {
            continue;
        }
        if resolved.total == 0 {
            resolved.first_sequence = stored.sequence;
        }
        resolved.last_sequence = stored.sequence;
        resolved.total += 1;
        each(&Planned {
            sequence: stored.sequence,
            stored: stored.stored,
            event_id: copies::header(&headers, EVENT_ID_HEADER).map(str::to_string),
            subject,
        });
    }
    reader.close().await;
    Ok(resolved)
}

/// Where reading starts and where it ends (the last sequence, and a time for windows
/// that end at one). The end never lies beyond the stream's last event now, so that
/// live events arriving during the replay are not part of it.
async fn bounds(
    js: &jetstream::Context,
    scope: &Scope,
    window: &Window,
) -> Result<(From, (u64, Option<SystemTime>)), ReplayError> {
    let mut stream = js
        .get_stream(&scope.stream)
        .await
        .map_err(|e| ReplayError::stream(&scope.stream, "opening it", e))?;
    let latest = stream
        .info()
        .await
        .map_err(|e| ReplayError::stream(&scope.stream, "reading its state", e))?
        .state
        .last_sequence;
    let end = match window.until {
        Until::Latest => (latest, None),
        Until::Sequence(n) => (n.min(latest), None),
        Until::Time(t) => (latest, Some(t)),
    };
    Ok((window.from, end))
}

/// Runs the replay `id` of `window` to `scope`'s target, or resumes it when `id` has a
/// record (a complete one sends nothing; the window it resolved to when it started
/// holds, `window` may then be `None`). `progress` follows every event; the record
/// is saved about once a second and when the replay ends. Returns when every event of
/// the window is sent (the record says `complete`), or when `stop` fires (it does not).
pub async fn run(
    js: &jetstream::Context,
    scope: &Scope,
    window: Option<&Window>,
    id: &str,
    progress: &watch::Sender<Record>,
    stop: &CancellationToken,
) -> Result<Record, ReplayError> {
    check_id(id)?;
    let records = Records::open(js).await?;
    let mut revision = match records.load(id).await? {
        Some((record, revision)) => {
            if record.route != scope.route.to_string() || record.target != scope.target {
                return Err(ReplayError::OtherReplay {
                    id: id.to_string(),
                    route: record.route,
                    target: record.target,
                });
            }
            progress.send_replace(record);
            revision
        }
        None => {
            let window = window.ok_or_else(|| ReplayError::NotStarted { id: id.to_string() })?;
            let resolved = tokio::select! {
                _ = stop.cancelled() => return Ok(progress.borrow().clone()),
                resolved = plan(js, scope, window, |_| {}) => resolved?,
            };
            let now = record::now();
            let record = Record {
                id: id.to_string(),
                route: scope.route.to_string(),
                target: scope.target.clone(),
                first_sequence: resolved.first_sequence,
                last_sequence: resolved.last_sequence,
                total: resolved.total,
                position: resolved.first_sequence.saturating_sub(1),
                complete: resolved.total == 0,
                started: now.clone(),
                updated: now,
                ..Record::default()
            };
            let revision = records.create(&record).await?;
            progress.send_replace(record);
            revision
        }
    };
    if progress.borrow().complete {
        return Ok(progress.borrow().clone());
    }

    let mut sender = Sender::new(js, scope, id, progress);
    let start = progress.borrow().position + 1;
    let last = progress.borrow().last_sequence;
    let mut reader = Reader::open(
        js,
        scope,
        From::Sequence(start),
        (last, None),
        false,
        sender.pacer.batch,
    )
    .await?;
    let mut saved = Instant::now();
    let outcome: Result<bool, ReplayError> = async {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return Ok(false),
                next = reader.next() => next?,
            };
            let Some(stored) = next else {
                return Ok(true);
            };
            if !sender.send(stored, stop).await? {
                return Ok(false);
            }
            if saved.elapsed() >= SAVE_EVERY {
                let snapshot = progress.borrow().clone();
                revision = records.save(&snapshot, revision).await?;
                saved = Instant::now();
            }
        }
    }
    .await;
    // What was published is acknowledged before the record is written, so the record
    // never claims less than was sent (a stop or an error then resends nothing twice).
    let settled = sender.settle_all().await;
    reader.close().await;
    let finished = outcome.as_ref().is_ok_and(|done| *done) && settled.is_ok();
    progress.send_modify(|r| {
        if finished {
            r.complete = true;
            r.position = r.last_sequence;
        }
        r.updated = record::now();
    });
    let record = progress.borrow().clone();
    let saved = records.save(&record, revision).await;
    outcome?;
    settled?;
    saved?;
    Ok(record)
}

/// Publishes copies and keeps the record current as their acknowledgements come in,
/// in order.
struct Sender<'a> {
    js: &'a jetstream::Context,
    subject: String,
    id: &'a str,
    scope: &'a Scope,
    pacer: pace::Pacer,
    progress: &'a watch::Sender<Record>,
    /// Sequences handled, oldest first, with the acknowledgement still to come of the
    /// copy published (none for an event the target's filter leaves out).
    unsettled: VecDeque<(u64, Option<Ack>)>,
}

type AckResult = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>;
/// A copy's acknowledgement, to be polled without being given up.
type Ack = std::pin::Pin<Box<dyn Future<Output = AckResult> + Send>>;

impl<'a> Sender<'a> {
    fn new(
        js: &'a jetstream::Context,
        scope: &'a Scope,
        id: &'a str,
        progress: &'a watch::Sender<Record>,
    ) -> Sender<'a> {
        Sender {
            js,
            subject: scope.route.redrive_subject(&scope.target),
            id,
            scope,
            pacer: pace::Pacer::new(scope.rate_limit.as_ref()),
            progress,
            unsettled: VecDeque::new(),
        }
    }

    /// Publishes a copy of `stored` if the target's filter wants it, when the pace
    /// allows; false when `stop` fired first. Only the wait for the pace is cut
    /// short: a copy published is always tracked until acknowledged.
    async fn send(
        &mut self,
        stored: Stored,
        stop: &CancellationToken,
    ) -> Result<bool, ReplayError> {
        let original = stored.message.headers.clone().unwrap_or_default();
        let wanted = self
            .scope
            .filter
            .matches(&stored.message.subject, |h| copies::header(&original, h));
        let ack = if wanted {
            if !self.pacer.now() {
                // A wait for the pace: first take in what was acknowledged meanwhile,
                // so the progress shown and recorded during the wait is current.
                self.settle_all().await?;
                tokio::select! {
                    _ = stop.cancelled() => return Ok(false),
                    _ = self.pacer.ready() => {}
                }
            }
            let headers = copies::headers(
                &original,
                |_| false,
                &replay_message_id(self.id, stored.sequence),
            );
            let publish_error =
                |e: Box<dyn std::error::Error + Send + Sync>| ReplayError::Publish {
                    sequence: stored.sequence,
                    subject: self.subject.clone(),
                    source: e,
                };
            let ack = self
                .js
                .publish_with_headers(
                    self.subject.clone(),
                    headers,
                    stored.message.payload.clone(),
                )
                .await
                .map_err(|e| publish_error(Box::new(e)))?;
            Some(Box::pin(ack.into_future()) as Ack)
        } else {
            None
        };
        self.unsettled.push_back((stored.sequence, ack));
        // Take in the acknowledgements already there; wait for one only when too many
        // are outstanding.
        while let Some((_, front)) = self.unsettled.front_mut() {
            let ready = match front {
                Some(ack) => ack.as_mut().now_or_never().map(Some),
                None => Some(None),
            };
            match ready {
                Some(acked) => {
                    let (sequence, _) = self.unsettled.pop_front().expect("a front entry");
                    self.settled(sequence, acked)?;
                }
                None if self.unsettled.len() >= MAX_UNACKED => self.settle_one().await?,
                None => break,
            }
        }
        Ok(true)
    }

    async fn settle_all(&mut self) -> Result<(), ReplayError> {
        while !self.unsettled.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<(), ReplayError> {
        let Some((sequence, ack)) = self.unsettled.pop_front() else {
            return Ok(());
        };
        let acked = match ack {
            Some(ack) => Some(ack.await),
            None => None,
        };
        self.settled(sequence, acked)
    }

    /// Records the event at `sequence` as done: sent if its copy was acknowledged
    /// (`acked`), left out by the filter if there was no copy.
    fn settled(&mut self, sequence: u64, acked: Option<AckResult>) -> Result<(), ReplayError> {
        let duplicate = match acked {
            Some(ack) => Some(
                ack.map_err(|e| ReplayError::Publish {
                    sequence,
                    subject: self.subject.clone(),
                    source: Box::new(e),
                })?
                .duplicate,
            ),
            None => None,
        };
        self.progress.send_modify(|r| {
            r.position = sequence;
            if let Some(duplicate) = duplicate {
                r.sent += 1;
                r.duplicates += u64::from(duplicate);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kv_keys() {
        for id in ["night-1", "shop.crm-night.0f3c", "a_b=c", "x"] {
            assert!(check_id(id).is_ok(), "{id}");
        }
        for id in ["", ".a", "a.", "a..b", "a b", "a/b", "a*", &"x".repeat(201)] {
            let e = check_id(id).unwrap_err().to_string();
            assert!(e.contains("replay id"), "{e}");
        }
    }
}
