//! A replay's progress, recorded in the KV bucket `fanout_replays` under its id: the
//! window it resolved to when it started, how far it got, what it sent. A replay that
//! is run again with the same id resumes from here; one that is complete sends nothing.
//!
//! Every write names the revision it read, so two processes running the same replay
//! cannot both go on: the second to write is told the record changed under it.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv, stream};
use fanout_config::names::REPLAY_BUCKET;
use serde::{Deserialize, Serialize};

use super::ReplayError;

/// How long a replay's record is kept after its last change. Running the same replay
/// id again after that starts it afresh.
pub const RECORD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The progress of one replay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub id: String,
    /// `namespace/name` of the route.
    pub route: String,
    pub target: String,
    /// The window in stream sequences, both included; 0 and 0 when no event of the
    /// window is for the target.
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// Events of the window for the target (on its subjects, passing its filter).
    pub total: u64,
    /// Of those, published again and acknowledged by JetStream.
    pub sent: u64,
    /// Of those sent, copies an interrupted run had already published: JetStream
    /// stored them once (within the stream's duplicate window).
    pub duplicates: u64,
    /// The last sequence of the window done with; the replay resumes after it.
    pub position: u64,
    /// Every event of the window is sent, or gone from the stream.
    pub complete: bool,
    /// RFC 3339.
    pub started: String,
    pub updated: String,
}

impl Record {
    /// Events of the window that the stream's retention removed before they could be
    /// sent (known once the replay is complete).
    pub fn missing(&self) -> u64 {
        if self.complete {
            self.total.saturating_sub(self.sent)
        } else {
            0
        }
    }
}

/// The bucket of replay records.
pub struct Records {
    store: kv::Store,
}

impl Records {
    /// Opens the bucket, creating it if it does not exist yet.
    pub async fn open(js: &jetstream::Context) -> Result<Records, ReplayError> {
        if let Ok(store) = js.get_key_value(REPLAY_BUCKET).await {
            return Ok(Records { store });
        }
        let config = kv::Config {
            bucket: REPLAY_BUCKET.to_string(),
            description: "Fanout replays: progress per replay id".into(),
            history: 1,
            max_age: RECORD_TTL,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        match js.create_key_value(config).await {
            Ok(store) => Ok(Records { store }),
            // Created by another process meanwhile.
            Err(create) => js
                .get_key_value(REPLAY_BUCKET)
                .await
                .map(|store| Records { store })
                .map_err(|_| ReplayError::record("", "creating the bucket", create)),
        }
    }

    /// The record of `id` and its revision, if there is one.
    pub async fn load(&self, id: &str) -> Result<Option<(Record, u64)>, ReplayError> {
        let entry = self
            .store
            .entry(id)
            .await
            .map_err(|e| ReplayError::record(id, "reading it", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&entry.value)
            .map_err(|e| ReplayError::record(id, "reading it", e))?;
        Ok(Some((record, entry.revision)))
    }

    /// Stores a new record; fails if `id` has one already.
    pub async fn create(&self, record: &Record) -> Result<u64, ReplayError> {
        self.store
            .create(&record.id, encode(record))
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => ReplayError::Taken {
                    id: record.id.clone(),
                },
                _ => ReplayError::record(&record.id, "creating it", e),
            })
    }

    /// Replaces the record written at `revision`; its new revision.
    pub async fn save(&self, record: &Record, revision: u64) -> Result<u64, ReplayError> {
        self.store
            .update(&record.id, encode(record), revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => ReplayError::Taken {
                    id: record.id.clone(),
                },
                _ => ReplayError::record(&record.id, "saving it", e),
            })
    }
}

fn encode(record: &Record) -> bytes::Bytes {
    serde_json::to_vec(record)
        .expect("a record serializes")
        .into()
}

/// Now, as records write it.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
