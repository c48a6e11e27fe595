//! Reading a window of the route's stream in order: an ephemeral pull consumer on the
//! target's subjects, fetched in batches, ending at the window's last sequence or time,
//! or where the stream ends. Events the stream's retention removes meanwhile are
//! simply not seen.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::{self, stream};
use fanout_config::names::REPLAY_READER_PREFIX;
use futures::StreamExt;

use super::{ReplayError, Scope};

/// An idle reading consumer is removed by the server after this long, so one left
/// behind by a killed process does not stay. A reader that finds its consumer gone
/// creates it again where it stopped.
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(300);

/// Where reading starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    Sequence(u64),
    Time(SystemTime),
}

/// One stored event: its sequence, when it was stored, its subject and headers (and
/// its body, unless only headers were read).
pub struct Stored {
    pub sequence: u64,
    pub stored: SystemTime,
    pub message: jetstream::Message,
}

pub struct Reader {
    stream: stream::Stream,
    /// The stream's name, for errors.
    name: String,
    config: consumer::pull::Config,
    consumer: PullConsumer,
    buffered: VecDeque<jetstream::Message>,
    /// The sequence after the last one read: where a recreated consumer starts.
    next: Option<u64>,
    /// The last sequence to read.
    last: u64,
    /// Events stored after this are not read.
    until: Option<SystemTime>,
    batch: usize,
    done: bool,
}

impl Reader {
    /// A reader of `scope`'s events from `from` to `last` (and stored no later than
    /// `until`). With `headers_only`, bodies are not read.
    pub async fn open(
        js: &jetstream::Context,
        scope: &Scope,
        from: From,
        (last, until): (u64, Option<SystemTime>),
        headers_only: bool,
        batch: usize,
    ) -> Result<Reader, ReplayError> {
        let stream = js
            .get_stream(&scope.stream)
            .await
            .map_err(|e| ReplayError::stream(&scope.stream, "opening it", e))?;
        let deliver_policy = match from {
            From::Sequence(n) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: n.max(1),
            },
            From::Time(t) => consumer::DeliverPolicy::ByStartTime {
                start_time: datetime(t),
            },
        };
        let config = consumer::pull::Config {
            name: Some(reader_name()),
            description: Some(format!("fanout replay to {}", scope.target)),
            filter_subjects: scope.subjects.clone(),
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            headers_only,
            inactive_threshold: INACTIVE_THRESHOLD,
            memory_storage: true,
            ..Default::default()
        };
        let consumer = create(&stream, &scope.stream, config.clone()).await?;
        let done = consumer.cached_info().num_pending == 0;
        Ok(Reader {
            stream,
            name: scope.stream.clone(),
            config,
            consumer,
            buffered: VecDeque::new(),
            next: None,
            last,
            until,
            batch,
            done,
        })
    }

    /// The next event of the window, `None` once the window or the stream ends.
    pub async fn next(&mut self) -> Result<Option<Stored>, ReplayError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(message) = self.buffered.pop_front() else {
                self.fill().await?;
                continue;
            };
            let info = message
                .info()
                .map_err(|e| ReplayError::stream(&self.name, "reading it", e))?;
            let (sequence, stored) = (info.stream_sequence, SystemTime::from(info.published));
            if sequence > self.last || self.until.is_some_and(|until| stored > until) {
                self.done = true;
                return Ok(None);
            }
            self.next = Some(sequence + 1);
            return Ok(Some(Stored {
                sequence,
                stored,
                message,
            }));
        }
    }

    /// Removes the reading consumer (the server would after a while anyway).
    pub async fn close(self) {
        let name = self.consumer.cached_info().name.clone();
        if let Err(e) = self.stream.delete_consumer(&name).await {
            tracing::debug!(consumer = %name, error = %e, "removing the replay's reading consumer");
        }
    }

    /// Fetches the next batch. An empty one ends the reading when nothing more is
    /// pending on the target's subjects.
    async fn fill(&mut self) -> Result<(), ReplayError> {
        let fetched = match self.fetch().await {
            Ok(batch) => batch,
            // The consumer went away (idle too long while a slow replay waited, or a
            // NATS restart): create it again where reading stopped.
            Err(first) => {
                tracing::debug!(error = %first, "the replay's reading consumer failed; creating it again");
                self.recreate().await?;
                self.fetch().await?
            }
        };
        if !fetched.is_empty() {
            self.buffered.extend(fetched);
            return Ok(());
        }
        let pending = self
            .consumer
            .info()
            .await
            .map_err(|e| ReplayError::stream(&self.name, "reading it", e))?
            .num_pending;
        if pending == 0 {
            self.done = true;
        } else {
            // The server has more than it handed out just now; ask again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn fetch(&self) -> Result<Vec<jetstream::Message>, ReplayError> {
        let stream = &self.name;
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(self.batch)
            .messages()
            .await
            .map_err(|e| ReplayError::stream(stream, "reading it", e))?;
        let mut out = Vec::with_capacity(self.batch);
        while let Some(message) = batch.next().await {
            out.push(message.map_err(|e| ReplayError::stream(stream, "reading it", e))?);
        }
        Ok(out)
    }

    async fn recreate(&mut self) -> Result<(), ReplayError> {
        let mut config = self.config.clone();
        config.name = Some(reader_name());
        if let Some(next) = self.next {
            config.deliver_policy = consumer::DeliverPolicy::ByStartSequence {
                start_sequence: next,
            };
        }
        self.consumer = create(&self.stream, &self.name, config).await?;
        self.buffered.clear();
        Ok(())
    }
}

/// A name of its own for each reader, under the prefix the provisioner leaves alone.
fn reader_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{REPLAY_READER_PREFIX}{:016x}", h.finish())
}

async fn create(
    stream: &stream::Stream,
    name: &str,
    config: consumer::pull::Config,
) -> Result<PullConsumer, ReplayError> {
    stream
        .create_consumer(config)
        .await
        .map_err(|e| ReplayError::stream(name, "reading it", e))
}

fn datetime(t: SystemTime) -> async_nats::datetime::DateTime {
    let nanos = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    async_nats::datetime::from_nanos(nanos).unwrap_or_else(|_| async_nats::datetime::now())
}
