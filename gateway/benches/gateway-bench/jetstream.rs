//! The storage side: the route's stream, the gateway's configuration, and the raw
//! JetStream publish rate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use fanout_config::gateway::{GatewayConfig, GatewayRoute};
use fanout_config::jetstream::{RouteStreams, Storage, StreamPlan};
use fanout_provision::Provisioner;
use fanout_testkit::nats::NatsServer;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::load::{Pace, Report};

pub const STREAM: &str = "fanout_bench_events";
pub const PREFIX: &str = "fanout.in.bench.events";

/// Creates the route's stream the way the operator does.
pub async fn provision(nats: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let plan = RouteStreams {
        stream: StreamPlan {
            name: STREAM.into(),
            subjects: vec![format!("{PREFIX}.>")],
            max_age: "1h".parse().unwrap(),
            max_bytes: None,
            max_messages: None,
            storage: Storage::File,
            replicas: 1,
            duplicate_window: "2m".parse().unwrap(),
            discard_old: false,
        },
        dead_letter: None,
        consumers: vec![],
        history: None,
    };
    Provisioner::new(js.clone()).apply(&plan).await.unwrap();
    js
}

pub fn write_gateway_config(dir: &Path, token: &str) -> PathBuf {
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let config = GatewayConfig {
        routes: vec![GatewayRoute {
            namespace: "bench".into(),
            name: "events".into(),
            stream: STREAM.into(),
            ingest_prefix: PREFIX.into(),
            token_files: vec![token_file],
            allow_unauthenticated: false,
            tokens_pending: false,
            forward_headers: Vec::new(),
        }],
    };
    let path = dir.join("gateway.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    path
}

/// Publishes with up to `window` acknowledgements outstanding, counting
/// acknowledgements. Without a Nats-Msg-Id, as the gateway stores an event the client
/// sent without an Idempotency-Key.
pub async fn publish_pipelined(
    js: &jetstream::Context,
    payload: &Bytes,
    window: usize,
    warmup: Duration,
    duration: Duration,
) -> Report {
    let subject = format!("{PREFIX}.event");
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut pending: FuturesUnordered<<PublishAckFuture as IntoFuture>::IntoFuture> =
        FuturesUnordered::new();
    let mut report = Report {
        elapsed: duration,
        ..Report::default()
    };
    loop {
        while pending.len() < window {
            let message = PublishMessage::build().payload(payload.clone());
            let ack = js.send_publish(subject.clone(), message).await.unwrap();
            pending.push(ack.into_future());
        }
        let acked = pending.next().await.expect("an outstanding publish");
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= start {
            match acked {
                Ok(_) => report.ok += 1,
                Err(_) => report.failed += 1,
            }
        }
    }
    report
}

/// `rate` publishes per second from `tasks` publishers (each waiting for its ack before
/// the next, like a gateway request), measuring the acknowledgement latency: the
/// storage's own share of the gateway's latency.
pub async fn publish_at_rate(
    js: &jetstream::Context,
    payload: &Bytes,
    tasks: usize,
    rate: f64,
    duration: Duration,
) -> Report {
    let pace = Pace::new(tasks, rate, duration);
    let begin = Instant::now() + Duration::from_millis(200);
    // Driven together by this task, as a gateway shard drives its requests.
    let publishers = (0..tasks).map(|t| {
        pace.run(t, begin, async || {
            let message = PublishMessage::build().payload(payload.clone());
            match js.send_publish(format!("{PREFIX}.event"), message).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        })
    });
    let mut total = Report {
        elapsed: duration,
        ..Report::default()
    };
    for report in futures::future::join_all(publishers).await {
        total.merge(report);
    }
    total
}

/// The gateway's store step and nothing else, shaped like its shards: `shards` threads,
/// each with a current-thread runtime and a NATS connection of its own, driving
/// `per_shard` publishers in a closed loop. Each publish is what the gateway sends for
/// an event without an Idempotency-Key (its three headers, a plain request, one
/// acknowledgement awaited under a timer); this process's CPU per acknowledgement is
/// then what the NATS client alone costs a gateway at that concurrency.
pub fn publish_like_shards(
    url: &str,
    payload: &Bytes,
    shards: usize,
    per_shard: usize,
    warmup: Duration,
    duration: Duration,
) -> Report {
    let (url, payload) = (url.to_string(), payload.clone());
    on_shard_threads(shards, warmup, duration, move |start, end| async move {
        let client = async_nats::connect(url).await.unwrap();
        let subject = async_nats::Subject::from(format!("{PREFIX}.event"));
        closed_loops(per_shard, start, end, async || {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Content-Type", "application/json");
            headers.insert("Fanout-Event-Id", uuid::Uuid::now_v7().to_string().as_str());
            headers.insert("Nats-Expected-Stream", STREAM);
            let request = async_nats::Request::new()
                .headers(headers)
                .payload(payload.clone())
                .timeout(None);
            let sent = client.send_request(subject.clone(), request);
            matches!(tokio::time::timeout(ACK_TIMEOUT, sent).await, Ok(Ok(reply)) if stored(&reply.payload))
        })
        .await
    })
}

/// Whether JetStream's answer to a publish says it stored the event (an answer with an
/// error, such as a full stream's, does not count).
pub fn stored(answer: &[u8]) -> bool {
    !answer.is_empty() && !answer.windows(8).any(|w| w == b"\"error\"")
}

/// How long a publisher of [`publish_like_shards`] waits for its acknowledgement.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `shard` on `shards` threads, each with a current-thread runtime (and a
/// `LocalSet`, for what a shard shares without locks), from `warmup` from now for
/// `duration`, and adds up their reports.
pub fn on_shard_threads<F, Fut>(
    shards: usize,
    warmup: Duration,
    duration: Duration,
    shard: F,
) -> Report
where
    F: FnOnce(Instant, Instant) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Report> + 'static,
{
    let start = Instant::now() + warmup;
    let end = start + duration;
    let threads: Vec<_> = (0..shards)
        .map(|_| {
            let shard = shard.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                tokio::task::LocalSet::new().block_on(&runtime, shard(start, end))
            })
        })
        .collect();
    let mut total = Report {
        elapsed: duration,
        ..Report::default()
    };
    for thread in threads {
        total.merge(thread.join().unwrap());
    }
    total
}

/// `publishers` closed loops, each calling `publish` (true: acknowledged) again as soon
/// as it returns; those that return between `start` and `end` count.
pub async fn closed_loops(
    publishers: usize,
    start: Instant,
    end: Instant,
    publish: impl AsyncFn() -> bool,
) -> Report {
    let publisher = async || {
        let mut report = Report::default();
        loop {
            let acked = publish().await;
            let now = Instant::now();
            if now >= end {
                return report;
            }
            if now < start {
                continue;
            }
            if acked {
                report.ok += 1;
            } else {
                report.failed += 1;
            }
        }
    };
    let mut total = Report::default();
    for report in futures::future::join_all((0..publishers).map(|_| publisher())).await {
        total.merge(report);
    }
    total
}
