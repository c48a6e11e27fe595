//! Writing the delivery history (see [`fanout_config::history`]) off the delivery
//! path.
//!
//! A worker appends each record, as a JSON line, to its target's buffer for the
//! record's bucket: no await, no allocation beyond the line, an uncontended lock
//! (only the flusher also takes it, a few times a second). A buffer that reaches
//! [`BATCH_BYTES`] is handed to the route's flusher over a bounded channel; the
//! flusher also collects whatever is buffered every [`FLUSH_EVERY`], and publishes
//! each batch as one JetStream message.
//!
//! Deliveries never wait for the history. When the flusher falls behind (NATS slow
//! or unreachable, the history stream missing) and [`QUEUED_BATCHES`] batches are
//! waiting, further batches are dropped, and so are batches JetStream did not take:
//! both counted per target in `fanout_history_dropped_records_total` and logged at
//! most every [`WARN_EVERY`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use bytes::Bytes;
use fanout_config::history::{self, BUCKETS, Record};
use fanout_config::names::RouteKey;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A bucket's buffer is sent once it holds this much: large enough that a busy route
/// publishes a few hundred messages a second, small against NATS' 1 MiB payload.
pub const BATCH_BYTES: usize = 32 * 1024;
/// Records wait at most about this long before they are published.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Full batches waiting for the flusher, for the whole route, before more are dropped
/// (about 8 MiB).
pub const QUEUED_BATCHES: usize = 256;
/// Publishes whose acknowledgement the flusher waits for at once.
const OUTSTANDING_ACKS: usize = 16;
/// How often dropped records are logged at most.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// One JetStream message of records.
struct Batch {
    subject: String,
    payload: Bytes,
    records: u64,
    dropped: Counter,
}

#[derive(Default)]
struct Buffers {
    lines: [Vec<u8>; BUCKETS],
    records: [u64; BUCKETS],
}

/// The history writer of one target.
pub struct TargetHistory {
    /// One subject per bucket, made once.
    subjects: [String; BUCKETS],
    buffers: Mutex<Buffers>,
    batches: mpsc::Sender<Batch>,
    dropped: Counter,
}

impl TargetHistory {
    /// Appends `record` to its bucket's buffer; sends the buffer on when it is full.
    pub fn record(&self, record: &Record<'_>) {
        let bucket = history::bucket(&record.event);
        let full = {
            let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
            let line = &mut buffers.lines[bucket];
            if serde_json::to_writer(&mut *line, record).is_err() {
                return;
            }
            line.push(b'\n');
            buffers.records[bucket] += 1;
            if buffers.lines[bucket].len() < BATCH_BYTES {
                return;
            }
            take(&mut buffers, bucket)
        };
        if let Some((payload, records)) = full {
            self.send(bucket, payload, records);
        }
    }

    fn send(&self, bucket: usize, payload: Vec<u8>, records: u64) {
        let batch = Batch {
            subject: self.subjects[bucket].clone(),
            payload: Bytes::from(payload),
            records,
            dropped: self.dropped.clone(),
        };
        if let Err(refused) = self.batches.try_send(batch) {
            let batch = match refused {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
            };
            self.dropped.inc_by(batch.records);
        }
    }

    /// Everything buffered, as batches.
    fn take_all(&self) -> Vec<Batch> {
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        (0..BUCKETS)
            .filter_map(|bucket| {
                take(&mut buffers, bucket).map(|(payload, records)| Batch {
                    subject: self.subjects[bucket].clone(),
                    payload: Bytes::from(payload),
                    records,
                    dropped: self.dropped.clone(),
                })
            })
            .collect()
    }
}

fn take(buffers: &mut Buffers, bucket: usize) -> Option<(Vec<u8>, u64)> {
    if buffers.records[bucket] == 0 {
        return None;
    }
    let records = std::mem::take(&mut buffers.records[bucket]);
    let payload = std::mem::replace(
        &mut buffers.lines[bucket],
        Vec::with_capacity(BATCH_BYTES + 1024),
    );
    Some((payload, records))
}

/// The history writer of one route: a [`TargetHistory`] per target and the flusher
/// that publishes their batches.
pub struct RouteHistory {
    targets: Vec<Arc<TargetHistory>>,
    receiver: Option<mpsc::Receiver<Batch>>,
    sender: mpsc::Sender<Batch>,
    key: RouteKey,
}

impl RouteHistory {
    pub fn new(key: RouteKey) -> RouteHistory {
        let (sender, receiver) = mpsc::channel(QUEUED_BATCHES);
        RouteHistory {
            targets: Vec::new(),
            receiver: Some(receiver),
            sender,
            key,
        }
    }

    /// The writer of `target`; `dropped` counts its records that never got stored.
    pub fn target(&mut self, target: &str, dropped: Counter) -> Arc<TargetHistory> {
        let writer = Arc::new(TargetHistory {
            subjects: std::array::from_fn(|bucket| history::subject(&self.key, target, bucket)),
            buffers: Mutex::default(),
            batches: self.sender.clone(),
            dropped,
        });
        self.targets.push(writer.clone());
        writer
    }

    /// Starts the flusher. It runs until `done`, then publishes what is left: cancel
    /// `done` once the workers have stopped, so their last records are kept.
    pub fn start(mut self, js: jetstream::Context, done: CancellationToken) -> Flusher {
        let receiver = self.receiver.take().expect("started once");
        let task = tokio::spawn(flush(js, self.targets, receiver, done.clone(), self.key));
        Flusher { task, done }
    }
}

/// The running flusher of a route.
pub struct Flusher {
    task: tokio::task::JoinHandle<()>,
    done: CancellationToken,
}

impl Flusher {
    /// Publishes what is buffered and returns when JetStream has answered for it.
    pub async fn finish(self) {
        self.done.cancel();
        if let Err(error) = self.task.await {
            tracing::warn!(error = %error, "the delivery history's flusher failed");
        }
    }
}

async fn flush(
    js: jetstream::Context,
    targets: Vec<Arc<TargetHistory>>,
    mut batches: mpsc::Receiver<Batch>,
    done: CancellationToken,
    key: RouteKey,
) {
    let mut publisher = Publisher {
        js,
        acks: FuturesOrdered::new(),
        key,
        last_warning: None,
    };
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(batch) = batches.recv() => publisher.publish(batch).await,
            _ = ticker.tick() => {
                for target in &targets {
                    for batch in target.take_all() {
                        publisher.publish(batch).await;
                    }
                }
            }
            () = done.cancelled() => break,
        }
    }
    // Stopping while NATS is away: each publish would wait out JetStream's timeout for
    // an acknowledgement that cannot come, and a pod told to stop must stop. The
    // records left are counted as dropped instead.
    let away = fanout_process::nats::is_away(&publisher.js.client());
    let mut last = Vec::new();
    while let Ok(batch) = batches.try_recv() {
        last.push(batch);
    }
    last.extend(targets.iter().flat_map(|target| target.take_all()));
    for batch in last {
        if away {
            publisher.lost(batch.records, &batch.dropped, "NATS is away at stop");
        } else {
            publisher.publish(batch).await;
        }
    }
    if !away {
        publisher.settle_all().await;
    }
}

type Ack = std::pin::Pin<Box<dyn Future<Output = (Result<(), String>, u64, Counter)> + Send>>;

struct Publisher {
    js: jetstream::Context,
    acks: FuturesOrdered<Ack>,
    key: RouteKey,
    last_warning: Option<Instant>,
}

impl Publisher {
    /// Publishes `batch`, first waiting for the oldest acknowledgement when
    /// [`OUTSTANDING_ACKS`] are awaited.
    async fn publish(&mut self, batch: Batch) {
        while self.acks.len() >= OUTSTANDING_ACKS {
            self.settle_one().await;
        }
        let Batch {
            subject,
            payload,
            records,
            dropped,
        } = batch;
        match self.js.publish(subject, payload).await {
            Ok(ack) => self.acks.push_back(Box::pin(async move {
                let stored = ack.await.map(|_| ()).map_err(|e| e.to_string());
                (stored, records, dropped)
            })),
            Err(error) => self.lost(records, &dropped, &error.to_string()),
        }
    }

    async fn settle_one(&mut self) {
        if let Some((stored, records, dropped)) = self.acks.next().await
            && let Err(error) = stored
        {
            self.lost(records, &dropped, &error);
        }
    }

    async fn settle_all(&mut self) {
        while !self.acks.is_empty() {
            self.settle_one().await;
        }
    }

    fn lost(&mut self, records: u64, dropped: &Counter, error: &str) {
        dropped.inc_by(records);
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARN_EVERY)
        {
            self.last_warning = Some(now);
            tracing::warn!(route = %self.key, stream = %self.key.attempts_stream(), records, error, "delivery history records not stored (counted in fanout_history_dropped_records_total); deliveries go on");
        }
    }
}

/// Milliseconds since the Unix epoch, as records write time.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use fanout_config::history::Outcome;

    use super::*;

    fn record(event: &str) -> Record<'_> {
        Record {
            event: Cow::Borrowed(event),
            target: Cow::Borrowed("crm"),
            attempt: 1,
            at_ms: 1,
            outcome: Outcome::Delivered,
            status: Some(200),
            error: None,
            latency_ms: Some(0.5),
            retry_in_ms: None,
            reason: None,
            seq: 1,
            redrive: false,
            trace_id: None,
        }
    }

    #[test]
    fn records_wait_in_their_bucket_until_taken() {
        let mut route = RouteHistory::new(RouteKey::new("shop", "orders"));
        let writer = route.target("crm", Counter::default());
        writer.record(&record("a"));
        writer.record(&record("a"));
        writer.record(&record("b"));
        let batches = writer.take_all();
        let total: u64 = batches.iter().map(|b| b.records).sum();
        assert_eq!(total, 3);
        let of_a = batches
            .iter()
            .find(|b| b.subject == history::subject(&route.key, "crm", history::bucket("a")))
            .unwrap();
        let (records, skipped) = history::parse_batch(&of_a.subject, &of_a.payload);
        assert_eq!(skipped, 0);
        assert!(records.iter().filter(|r| r.event == "a").count() == 2);
        assert!(writer.take_all().is_empty(), "taken once");
    }

    #[test]
    fn full_batches_beyond_the_queue_are_dropped_and_counted() {
        let mut route = RouteHistory::new(RouteKey::new("shop", "orders"));
        let dropped = Counter::<u64>::default();
        let writer = route.target("crm", dropped.clone());
        // Nobody takes batches: the queue fills, then records are counted as dropped.
        let line = serde_json::to_vec(&record("a")).unwrap().len() + 1;
        let per_batch = BATCH_BYTES.div_ceil(line) as u64;
        let records = per_batch * (QUEUED_BATCHES as u64 + 2);
        for _ in 0..records {
            writer.record(&record("a"));
        }
        assert_eq!(dropped.get(), 2 * per_batch);
    }
}
