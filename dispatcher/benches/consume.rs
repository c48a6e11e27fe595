//! What taking events from JetStream and acknowledging them costs the dispatcher's
//! NATS client, apart from delivering them: async-nats' pull consumer, which the
//! workers used until 2026-12-07, against Fanout's own (`fanout_nats_client::pull`),
//! which they use now (docs/benchmarks.md, "A consumer of its own").
//!
//!     cargo bench -p fanout-dispatcher --bench consume
//!
//! A stream is pre-loaded with `FANOUT_BENCH_EVENTS` events (default 100000) as the
//! gateway stores them (shared/events.rs). Each round, each client in turn takes
//! every event through a fresh durable pull consumer on a thread of its own with a
//! current-thread runtime, as a worker does: batches of up to 512, each event turned
//! into what a delivery needs (its id, subject, headers, body, delivery count and
//! stream sequence) and acknowledged. The figure is that thread's CPU time per event
//! (`/proc/thread-self/schedstat`: user and kernel), so everything each client does
//! is counted and nothing else is. `FANOUT_BENCH_ROUNDS` rounds (default 5); the
//! table gives each client's median.

#[path = "shared/events.rs"]
mod events;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use bytes::Bytes;
use events::{BODY_BYTES, body, event_headers};
use fanout_dispatcher::event::Event;
use fanout_dispatcher::message::Message;
use fanout_nats_client::pull::{Ack, Pull, PullConfig};
use fanout_process::nats::NatsArgs;
use fanout_testkit::nats::NatsServer;
use futures::StreamExt;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STREAM: &str = "consume";
const SUBJECT: &str = "consume.event";
/// As the worker pulls at `maxInFlight: 256` and above (`worker.rs`, `MAX_BATCH`).
const BATCH: usize = 512;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Client {
    AsyncNats,
    /// Fanout's own, each message made an [`Event`] and settled as a worker does.
    Own,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::AsyncNats => "async-nats pull consumer (what workers used)",
            Client::Own => "Fanout's own pull consumer (what workers use)",
        }
    }
}

/// One client's round: CPU µs per event on its thread, and events per second.
#[derive(Clone, Copy)]
struct Round {
    cpu_us: f64,
    rate: f64,
}

fn main() {
    let events = env_number("FANOUT_BENCH_EVENTS", 100_000);
    let rounds = env_number("FANOUT_BENCH_ROUNDS", 5).max(1);
    let nats = NatsServer::start().expect("nats-server starts");
    let url = nats.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(preload(&url, events));
    let clients = [Client::AsyncNats, Client::Own];
    let mut results: Vec<Vec<Round>> = vec![Vec::new(); clients.len()];
    for round in 1..=rounds {
        for (i, client) in clients.iter().enumerate() {
            let consumer = format!("r{round}-{i}");
            runtime.block_on(create_consumer(&url, &consumer));
            let url = url.clone();
            let client = *client;
            let r = std::thread::spawn(move || consume(client, &url, &consumer, events))
                .join()
                .expect("the consuming thread ends");
            eprintln!(
                "round {round}/{rounds}: {}: {:.2} µs per event, {:.0} events/s",
                client.name(),
                r.cpu_us,
                r.rate
            );
            results[i].push(r);
        }
    }
    println!();
    println!(
        "Consume and acknowledge: {events} events of {BODY_BYTES} B with {} headers, batches of {BATCH}, {rounds} alternating rounds, median",
        event_headers(0).iter().count()
    );
    println!();
    println!("| client | CPU µs per event (rounds) | events/s |");
    println!("|---|---:|---:|");
    let mut medians = Vec::new();
    for (client, rounds) in clients.iter().zip(&results) {
        let cpu = median(rounds.iter().map(|r| r.cpu_us).collect());
        let rate = median(rounds.iter().map(|r| r.rate).collect());
        let each: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.cpu_us)).collect();
        println!(
            "| {} | {cpu:.2} ({}) | {rate:.0} |",
            client.name(),
            each.join(", ")
        );
        medians.push(cpu);
    }
    println!();
    for i in 1..clients.len() {
        let by_round: Vec<String> = results[i]
            .iter()
            .zip(&results[0])
            .map(|(d, a)| format!("{:.2}", d.cpu_us / a.cpu_us))
            .collect();
        println!(
            "{} over async-nats, CPU per event: {:.2} (rounds {}); {:.2} µs less per event taken and acknowledged",
            clients[i].name(),
            medians[i] / medians[0],
            by_round.join(", "),
            medians[0] - medians[i]
        );
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[(values.len() - 1) / 2]
}

async fn preload(url: &str, events: usize) {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec![SUBJECT.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut acks = Vec::with_capacity(1000);
    for i in 0..events {
        acks.push(
            js.publish_with_headers(SUBJECT, event_headers(i), body(i))
                .await
                .unwrap(),
        );
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// A durable pull consumer from the stream's start, as the operator makes a
/// target's (explicit acks), with room for every batch in flight.
async fn create_consumer(url: &str, name: &str) {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let stream = js.get_stream(STREAM).await.unwrap();
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 4 * BATCH as i64,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Takes every event through consumer `name` on this thread; its CPU time per event.
fn consume(client: Client, url: &str, name: &str, events: usize) -> Round {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Connecting is not counted: a worker connects once.
    let taken = runtime.block_on(async {
        match client {
            Client::AsyncNats => {
                let (nats, consumer) = async_nats_consumer(url, name).await;
                measured(async {
                    let taken = with_async_nats(&consumer, events).await;
                    nats.flush().await.unwrap();
                    taken
                })
                .await
            }
            Client::Own => {
                let pull = own_consumer(url, name).await;
                measured(async {
                    let taken = with_own(&pull, events).await;
                    pull.flush(Duration::from_secs(10)).await;
                    taken
                })
                .await
            }
        }
    });
    let (count, cpu_ns, elapsed) = taken;
    assert_eq!(count, events, "{} took every event", client.name());
    Round {
        cpu_us: cpu_ns as f64 / 1000.0 / events as f64,
        rate: events as f64 / elapsed.as_secs_f64(),
    }
}

/// What `work` returns, with the CPU time this thread spent on it and how long it took.
async fn measured(work: impl Future<Output = usize>) -> (usize, u64, Duration) {
    let (cpu, start) = (thread_cpu_ns(), Instant::now());
    let taken = work.await;
    (taken, thread_cpu_ns() - cpu, start.elapsed())
}

async fn async_nats_consumer(url: &str, name: &str) -> (async_nats::Client, PullConsumer) {
    let client = async_nats::connect(url).await.unwrap();
    let consumer = jetstream::new(client.clone())
        .get_consumer_from_stream(name, STREAM)
        .await
        .unwrap();
    (client, consumer)
}

/// As workers did: a continuous pull, each message made what a delivery needs (its
/// header map moved out, not copied), then acked.
async fn with_async_nats(consumer: &PullConsumer, events: usize) -> usize {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut taken = 0;
    while taken < events {
        let mut message = messages.next().await.unwrap().unwrap();
        let info = message.info().unwrap();
        let (delivery, stream_sequence) = (info.delivered as u64, info.stream_sequence);
        let headers = message.message.headers.take().unwrap_or_default();
        let id = headers
            .get("Fanout-Event-Id")
            .expect("an event id")
            .to_string();
        let event = MappedEvent {
            id,
            subject: message.subject.to_string(),
            headers,
            body: message.payload.clone(),
            delivery,
            stream_sequence,
        };
        std::hint::black_box(&event);
        message.ack().await.unwrap();
        taken += 1;
    }
    taken
}

/// What a delivery needs of an event, its headers in async-nats' map.
#[allow(dead_code)] // Read only through black_box.
struct MappedEvent {
    id: String,
    subject: String,
    headers: async_nats::HeaderMap,
    body: Bytes,
    delivery: u64,
    stream_sequence: u64,
}

/// Fanout's own consumer, connected: batches of up to [`BATCH`] on the way.
async fn own_consumer(url: &str, name: &str) -> Pull {
    let args = NatsArgs::for_url(url);
    let (servers, settings) = fanout_nats_client::settings(&args, "consume-bench").unwrap();
    let config = PullConfig {
        stream: STREAM.into(),
        consumer: name.into(),
        batch: BATCH,
        expires: Duration::from_secs(30),
        heartbeat: Duration::from_secs(5),
        group: None,
    };
    let pull = Pull::start(servers, settings, Duration::from_secs(10), config);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pull.is_connected() {
        assert!(
            Instant::now() < deadline,
            "the own consumer did not connect"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pull
}

/// As a worker does: each message made an [`Event`], then settled.
async fn with_own(pull: &Pull, events: usize) -> usize {
    let mut taken = 0;
    while taken < events {
        let message = Message::new(pull.next().await.unwrap(), pull.clone());
        let event = Event::from_message(&message);
        std::hint::black_box(&event);
        message.settle(Ack::Ack);
        taken += 1;
    }
    taken
}

/// CPU time of the calling thread so far, user and kernel, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    schedstat.split(' ').next().unwrap().parse().unwrap()
}
