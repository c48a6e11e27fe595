//! Makes JetStream match a route's [`RouteStreams`] plan: streams and consumers are
//! created or updated in place, consumers of removed targets are deleted, and
//! settings JetStream cannot change in place are reported instead of forced.
//!
//! Used by the operator's reconciler and by `fanout standalone`; every call is
//! idempotent, and deleting something that is already gone counts as success.
//!
//! [`dead_letters`] and [`history`] read a route's dead letters and its delivery
//! history for the CLI.

pub mod copies;
pub mod dead_letters;
pub mod history;
pub mod observe;
pub mod replay;
pub mod transient;

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use fanout_config::jetstream::{ConsumerPlan, ORDERED_GROUP, RouteStreams, Storage, StreamPlan};
use fanout_config::names::{
    HEALTH_BUCKET, ORDERING_BUCKET, REPLAY_READER_PREFIX, attempts_stream_of,
};
use futures::TryStreamExt;

/// What could not be provisioned, with the JetStream object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "stream {stream}: {field} cannot be changed in place (is {current}, wanted {wanted}); delete and recreate the route to change it"
    )]
    ImmutableChange {
        stream: String,
        field: &'static str,
        current: String,
        wanted: String,
    },
    #[error("stream {stream}: creating or updating failed")]
    Stream {
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("stream {stream}: consumer {consumer}: creating or updating failed")]
    Consumer {
        stream: String,
        consumer: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("KV bucket {bucket}: creating failed")]
    Bucket {
        bucket: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ProvisionError {
    /// A fixed label for metrics and condition reasons.
    pub fn category(&self) -> &'static str {
        match self {
            ProvisionError::ImmutableChange { .. } => "immutable_change",
            ProvisionError::Stream { .. } => "stream",
            ProvisionError::Consumer { .. } => "consumer",
            ProvisionError::Bucket { .. } => "kv_bucket",
        }
    }

    /// Whether JetStream was not ready for the request ([`transient`]): the same
    /// request may succeed in a moment.
    pub fn is_transient(&self) -> bool {
        match self {
            ProvisionError::ImmutableChange { .. } => false,
            ProvisionError::Stream { source, .. }
            | ProvisionError::Consumer { source, .. }
            | ProvisionError::Bucket { source, .. } => transient::is_transient(&**source),
        }
    }
}

fn boxed(
    e: impl std::error::Error + Send + Sync + 'static,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// What [`Provisioner::apply`] had to create because it did not exist: everything
/// for a new route; for one that existed, a sign that something was deleted behind
/// Fanout's back (an admin's mistake, a NATS node's storage lost).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Streams created (the route's and its dead-letter stream).
    pub created_streams: Vec<String>,
    /// Consumers created, by name.
    pub created_consumers: Vec<String>,
}

/// Applies plans to one JetStream account.
#[derive(Clone)]
pub struct Provisioner {
    js: jetstream::Context,
}

impl Provisioner {
    pub fn new(js: jetstream::Context) -> Self {
        Provisioner { js }
    }

    /// Creates or updates everything in `plan` and removes consumers of targets that
    /// are no longer in it; says what had to be created.
    pub async fn apply(&self, plan: &RouteStreams) -> Result<Applied, ProvisionError> {
        let mut applied = Applied::default();
        if self.ensure_stream(&plan.stream).await? {
            applied.created_streams.push(plan.stream.name.clone());
        }
        if let Some(dead_letter) = &plan.dead_letter
            && self.ensure_stream(dead_letter).await?
        {
            applied.created_streams.push(dead_letter.name.clone());
        }
        match &plan.history {
            // Recreating the history stream is not worth a report: it only ever held
            // records, and a new route's is created here too.
            Some(history) => {
                self.ensure_stream(history).await?;
            }
            // History turned off (or never on): its stream, if any, goes.
            None => {
                self.delete(&[attempts_stream_of(&plan.stream.name)])
                    .await?
            }
        }
        let stream =
            self.js
                .get_stream(&plan.stream.name)
                .await
                .map_err(|e| ProvisionError::Stream {
                    stream: plan.stream.name.clone(),
                    source: boxed(e),
                })?;
        let existing = consumer_names(&stream, &plan.stream.name).await?;
        for consumer in &plan.consumers {
            if ensure_consumer(&stream, &plan.stream.name, consumer).await? {
                applied.created_consumers.push(consumer.name.clone());
            }
        }
        self.remove_other_consumers(&stream, plan, &existing)
            .await?;
        Ok(applied)
    }

    /// Deletes a route's streams (and with them its consumers). Streams that do not
    /// exist are skipped.
    pub async fn delete(&self, stream_names: &[String]) -> Result<(), ProvisionError> {
        for name in stream_names {
            match self.js.delete_stream(name).await {
                Ok(_) => tracing::info!(stream = %name, "deleted stream"),
                Err(e)
                    if matches!(e.kind(), jetstream::context::DeleteStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
                {
                    tracing::debug!(stream = %name, "stream already gone");
                }
                Err(e) => {
                    return Err(ProvisionError::Stream {
                        stream: name.clone(),
                        source: boxed(e),
                    });
                }
            }
        }
        Ok(())
    }

    /// Creates the KV bucket dispatchers report health to; entries expire after `ttl`
    /// so a dead pod's snapshot disappears by itself.
    pub async fn ensure_health_bucket(&self, ttl: Duration) -> Result<kv::Store, ProvisionError> {
        let config = kv::Config {
            bucket: HEALTH_BUCKET.to_string(),
            description: "Fanout dispatcher health snapshots, one key per route/target/pod".into(),
            history: 1,
            max_age: ttl,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        match self.js.get_key_value(HEALTH_BUCKET).await {
            Ok(store) => Ok(store),
            Err(_) => self
                .js
                .create_key_value(config)
                .await
                .map_err(|e| ProvisionError::Bucket {
                    bucket: HEALTH_BUCKET.to_string(),
                    source: boxed(e),
                }),
        }
    }

    /// Creates the KV bucket where ordered targets record the keys they hold back
    /// until a dead letter is redriven (`afterDeadLetter: block`). Entries never
    /// expire: a block lasts until the redrive, across dispatcher restarts.
    pub async fn ensure_ordering_bucket(&self) -> Result<kv::Store, ProvisionError> {
        let config = kv::Config {
            bucket: ORDERING_BUCKET.to_string(),
            description: "Fanout ordered targets: keys blocked until a dead letter is redriven"
                .into(),
            history: 1,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        match self.js.get_key_value(ORDERING_BUCKET).await {
            Ok(store) => Ok(store),
            Err(_) => self
                .js
                .create_key_value(config)
                .await
                .map_err(|e| ProvisionError::Bucket {
                    bucket: ORDERING_BUCKET.to_string(),
                    source: boxed(e),
                }),
        }
    }

    /// True when the stream had to be created.
    async fn ensure_stream(&self, plan: &StreamPlan) -> Result<bool, ProvisionError> {
        let wanted = stream_config(plan);
        let mut created = true;
        if let Ok(mut existing) = self.js.get_stream(&plan.name).await {
            created = false;
            let current = existing
                .info()
                .await
                .map_err(|e| ProvisionError::Stream {
                    stream: plan.name.clone(),
                    source: boxed(e),
                })?
                .config
                .clone();
            if current.storage != wanted.storage {
                return Err(ProvisionError::ImmutableChange {
                    stream: plan.name.clone(),
                    field: "storage",
                    current: format!("{:?}", current.storage),
                    wanted: format!("{:?}", wanted.storage),
                });
            }
        }
        self.js
            .create_or_update_stream(wanted)
            .await
            .map_err(|e| ProvisionError::Stream {
                stream: plan.name.clone(),
                source: boxed(e),
            })?;
        tracing::debug!(stream = %plan.name, created, "stream up to date");
        Ok(created)
    }

    async fn remove_other_consumers(
        &self,
        stream: &stream::Stream,
        plan: &RouteStreams,
        existing: &BTreeSet<String>,
    ) -> Result<(), ProvisionError> {
        let wanted: BTreeSet<&str> = plan.consumers.iter().map(|c| c.name.as_str()).collect();
        // A replay's reader is not a target's: it goes away by itself when idle.
        let others = existing
            .iter()
            .filter(|n| !wanted.contains(n.as_str()) && !n.starts_with(REPLAY_READER_PREFIX));
        for name in others {
            match stream.delete_consumer(name).await {
                Ok(_) => {
                    tracing::info!(stream = %plan.stream.name, consumer = %name, "deleted consumer of a removed target")
                }
                Err(e)
                    if matches!(e.kind(), stream::ConsumerErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) => {}
                Err(e) => {
                    return Err(ProvisionError::Consumer {
                        stream: plan.stream.name.clone(),
                        consumer: name.clone(),
                        source: boxed(e),
                    });
                }
            }
        }
        Ok(())
    }
}

async fn consumer_names(
    stream: &stream::Stream,
    stream_name: &str,
) -> Result<BTreeSet<String>, ProvisionError> {
    stream
        .consumer_names()
        .try_collect()
        .await
        .map_err(|e| ProvisionError::Stream {
            stream: stream_name.to_string(),
            source: boxed(e),
        })
}

/// Updates the consumer, or creates it if it does not exist; true when it created
/// it. The server decides which, so a consumer deleted after the consumers were
/// listed is still reported as created (a create-or-update hid that: the operator
/// then repaired it without a word).
async fn ensure_consumer(
    stream: &stream::Stream,
    stream_name: &str,
    plan: &ConsumerPlan,
) -> Result<bool, ProvisionError> {
    let failed = |source| ProvisionError::Consumer {
        stream: stream_name.to_string(),
        consumer: plan.name.clone(),
        source,
    };
    match stream.update_consumer(consumer_config(plan)).await {
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == stream::ConsumerUpdateErrorKind::DoesNotExist => {}
        Err(e) => return Err(failed(boxed(e))),
    }
    match stream.create_consumer_strict(consumer_config(plan)).await {
        Ok(_) => Ok(true),
        // Created in between by someone else (another operator replica): it exists.
        Err(e) if e.kind() == stream::ConsumerCreateStrictErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(failed(boxed(e))),
    }
}

/// The JetStream configuration of a stream plan.
pub fn stream_config(plan: &StreamPlan) -> stream::Config {
    stream::Config {
        name: plan.name.clone(),
        subjects: plan.subjects.clone(),
        max_age: plan.max_age.as_std(),
        max_bytes: plan.max_bytes.unwrap_or(-1),
        max_messages: plan.max_messages.unwrap_or(-1),
        storage: match plan.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        num_replicas: usize::from(plan.replicas),
        duplicate_window: plan.duplicate_window.as_std(),
        // Limits retention: the stream keeps each event until every target's consumer
        // is past it *and* the limits expire it, so a redrive can still find it.
        retention: stream::RetentionPolicy::Limits,
        // When full, refuse new events (the gateway answers 507) instead of silently
        // discarding the oldest undelivered ones; only a bounded log (the delivery
        // history) drops its oldest records.
        discard: if plan.discard_old {
            stream::DiscardPolicy::Old
        } else {
            stream::DiscardPolicy::New
        },
        ..Default::default()
    }
}

/// The JetStream configuration of a consumer plan.
pub fn consumer_config(plan: &ConsumerPlan) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(plan.name.clone()),
        description: Some("Fanout delivery to one target".into()),
        filter_subjects: plan.filter_subjects.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: plan.ack_wait.as_std(),
        max_ack_pending: plan.max_ack_pending,
        // Attempts are counted and bounded by the dispatcher, which dead-letters the
        // event itself; a JetStream limit would drop it silently instead.
        max_deliver: -1,
        deliver_policy: consumer::DeliverPolicy::All,
        // An ordered target is delivered by one dispatcher at a time: JetStream pins
        // the client it hands events to, and moves the pin only after that client
        // stopped pulling for the takeover time (see the dispatcher's `ordering`).
        priority_policy: match plan.pinned {
            Some(_) => consumer::PriorityPolicy::PinnedClient,
            None => consumer::PriorityPolicy::None,
        },
        priority_groups: match plan.pinned {
            Some(_) => vec![ORDERED_GROUP.to_string()],
            None => Vec::new(),
        },
        priority_timeout: plan.pinned.map_or(Duration::ZERO, |d| d.as_std()),
        ..Default::default()
    }
}
