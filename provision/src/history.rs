//! Reading a route's delivery history (see [`fanout_config::history`]): what
//! `fanout attempts` and `fanout events` run.
//!
//! Reads go through an ephemeral ordered consumer that JetStream filters by subject
//! (one target's records, or the bucket of one event id) and starts at a time, so
//! only the batches that can hold what is asked for cross the wire.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer};
use fanout_config::history::{self, Record};
use fanout_config::names::RouteKey;
use futures::StreamExt;

/// Longest wait for the next batch once reading started; JetStream sends what a new
/// consumer has at once, so only a broken connection comes near it.
const NEXT_BATCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "route {route} has no delivery history: stream {stream} does not exist (is the route applied, with spec.history.enabled not false?)"
    )]
    Missing {
        route: String,
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("history stream {stream}: {action}")]
    Stream {
        stream: String,
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("history stream {stream}: no batch arrived within {NEXT_BATCH_TIMEOUT:?}")]
    Stalled { stream: String },
}

/// What to read.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Only this event's records.
    pub event: Option<String>,
    /// Only this target's records.
    pub target: Option<String>,
    /// Only records from this time on.
    pub since: Option<SystemTime>,
}

impl Query {
    fn wants(&self, record: &Record<'_>) -> bool {
        self.event.as_deref().is_none_or(|e| record.event == e)
            && self.target.as_deref().is_none_or(|t| record.target == t)
            && self
                .since
                .is_none_or(|since| record.at_ms >= unix_ms(since))
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What was read.
#[derive(Clone, Debug, Default)]
pub struct Read {
    /// In the order they were stored.
    pub records: Vec<Record<'static>>,
    /// Lines that were not records (a newer dispatcher's, or damaged).
    pub skipped: usize,
}

/// Reads the records of `key`'s route that `query` selects.
pub async fn read(
    js: &jetstream::Context,
    key: &RouteKey,
    query: &Query,
) -> Result<Read, HistoryError> {
    let stream_name = key.attempts_stream();
    let fail = |action: &'static str| {
        let stream = stream_name.clone();
        move |source: Box<dyn std::error::Error + Send + Sync>| HistoryError::Stream {
            stream,
            action,
            source,
        }
    };
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|source| HistoryError::Missing {
            route: key.to_string(),
            stream: stream_name.clone(),
            source,
        })?;
    let deliver_policy = match query.since {
        // A batch is stored after its records were made: it is never older than they
        // are, so starting at `since` misses none.
        Some(since) => consumer::DeliverPolicy::ByStartTime {
            start_time: async_nats::datetime::DateTime::from(since),
        },
        None => consumer::DeliverPolicy::All,
    };
    let mut reader = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: history::filter(key, query.target.as_deref(), query.event.as_deref()),
            deliver_policy,
            description: Some("fanout history read".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| fail("reading it")(Box::new(e)))?;
    let mut out = Read::default();
    // Nothing selected: an ordered consumer would wait for new messages.
    let info = reader
        .info()
        .await
        .map_err(|e| fail("reading it")(Box::new(e)))?;
    if info.num_pending == 0 {
        return Ok(out);
    }
    let mut messages = reader
        .messages()
        .await
        .map_err(|e| fail("reading it")(Box::new(e)))?;
    loop {
        let next = tokio::time::timeout(NEXT_BATCH_TIMEOUT, messages.next())
            .await
            .map_err(|_| HistoryError::Stalled {
                stream: stream_name.clone(),
            })?;
        let Some(message) = next else { break };
        let message = message.map_err(|e| fail("reading it")(Box::new(e)))?;
        let pending = message.info().map_err(|e| fail("reading it")(e))?.pending;
        let (records, skipped) = history::parse_batch(&message.subject, &message.payload);
        out.skipped += skipped;
        out.records
            .extend(records.into_iter().filter(|r| query.wants(r)));
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}
