//! What taking events from JetStream and acknowledging them costs the dispatcher's
//! NATS client, apart from delivering them: async-nats' pull consumer, which each
//! target's worker uses, against the NATS protocol read and written directly by a
//! minimal consumer that lives only in this bench. The gap is what a pull consumer of
//! the dispatcher's own could save (docs/benchmarks.md, "What a consumer of its own
//! would save").
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
//!
//! The direct consumer does only what this bench needs: no TLS or credentials, no
//! reconnection, no heartbeats. Those cost nothing per event in a real one.

#[path = "shared/events.rs"]
mod events;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use bytes::{Buf, Bytes, BytesMut};
use events::{BODY_BYTES, body, event_headers};
use fanout_dispatcher::event::Event;
use fanout_testkit::nats::NatsServer;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STREAM: &str = "consume";
const SUBJECT: &str = "consume.event";
/// As the worker pulls at `maxInFlight: 256` and above (`worker.rs`, `MAX_BATCH`).
const BATCH: usize = 512;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Client {
    AsyncNats,
    Direct,
    /// Direct, with the headers then parsed into async-nats' `HeaderMap`, as an
    /// [`Event`] holds them today.
    DirectHeaderMap,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::AsyncNats => "async-nats pull consumer (what workers use)",
            Client::Direct => "the protocol read and written directly (bench only)",
            Client::DirectHeaderMap => "directly, headers then put in async-nats' HeaderMap",
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
    let clients = [Client::AsyncNats, Client::Direct, Client::DirectHeaderMap];
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
            Client::Direct | Client::DirectHeaderMap => {
                let header_map = client == Client::DirectHeaderMap;
                let mut direct = Direct::connect(url, name, header_map).await;
                measured(direct.take(events)).await
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

/// As a worker does: a continuous pull, each message made an [`Event`], then acked.
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
        let event = Event::from_message(&mut message);
        std::hint::black_box(&event);
        message.ack().await.unwrap();
        taken += 1;
    }
    taken
}

/// What a delivery needs of an event, taken from the wire without a header map: the
/// header block stays the bytes it came as.
#[allow(dead_code)] // Read only through black_box.
struct RawEvent {
    id: String,
    subject: String,
    headers: Bytes,
    header_map: Option<async_nats::HeaderMap>,
    body: Bytes,
    delivery: u32,
    stream_sequence: u64,
}

/// The bench-only consumer: one connection, pull requests written by hand, messages
/// parsed from the read buffer, acks written into a buffer flushed once per read.
struct Direct {
    tcp: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
    pull_subject: String,
    /// Whether each event's headers are also parsed into a `HeaderMap`.
    header_map: bool,
}

const INBOX: &str = "_INBOX.consume";

impl Direct {
    async fn connect(url: &str, name: &str, header_map: bool) -> Direct {
        let address = url.trim_start_matches("nats://");
        let tcp = TcpStream::connect(address).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut direct = Direct {
            tcp,
            read: BytesMut::with_capacity(64 * 1024),
            write: Vec::with_capacity(64 * 1024),
            pull_subject: format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{name}"),
            header_map,
        };
        direct.line().await; // INFO
        let connect = r#"CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"protocol":1,"lang":"rust","version":"bench"}"#;
        let hello = format!("{connect}\r\nSUB {INBOX} 1\r\nPING\r\n");
        direct.tcp.write_all(hello.as_bytes()).await.unwrap();
        loop {
            let line = direct.line().await;
            if line.starts_with(b"PONG") {
                break;
            }
            assert!(!line.starts_with(b"-ERR"), "{line:?}");
        }
        direct
    }

    /// The next control line (before any message arrives).
    async fn line(&mut self) -> Bytes {
        loop {
            if let Some(end) = memchr::memmem::find(&self.read, b"\r\n") {
                let line = self.read.split_to(end + 2).freeze();
                return line.slice(..end);
            }
            assert!(self.tcp.read_buf(&mut self.read).await.unwrap() > 0);
        }
    }

    fn pull(&mut self, batch: usize) {
        let body = format!(r#"{{"batch":{batch},"expires":60000000000}}"#);
        let line = format!(
            "PUB {} {INBOX} {}\r\n{body}\r\n",
            self.pull_subject,
            body.len()
        );
        self.write.extend_from_slice(line.as_bytes());
    }

    /// Takes `events` events: two pulls of a batch each in flight, another asked for
    /// as each batch has arrived, every event acked as it is taken.
    async fn take(&mut self, events: usize) -> usize {
        self.pull(BATCH);
        self.pull(BATCH);
        let (mut taken, mut since_pull) = (0, 0);
        while taken < events {
            while let Some(event) = self.next_event() {
                std::hint::black_box(&event);
                taken += 1;
                since_pull += 1;
                if since_pull == BATCH {
                    self.pull(BATCH);
                    since_pull = 0;
                }
            }
            if !self.write.is_empty() {
                self.tcp.write_all(&self.write).await.unwrap();
                self.write.clear();
            }
            if taken < events {
                assert!(self.tcp.read_buf(&mut self.read).await.unwrap() > 0);
            }
        }
        self.tcp.write_all(&self.write).await.unwrap();
        taken
    }

    /// The next complete event in the read buffer, acked; status messages (a pull
    /// request's end), PINGs and INFOs are taken care of on the way.
    fn next_event(&mut self) -> Option<RawEvent> {
        loop {
            let end = memchr::memmem::find(&self.read, b"\r\n")?;
            let line = &self.read[..end];
            if line.starts_with(b"PING") {
                self.read.advance(end + 2);
                self.write.extend_from_slice(b"PONG\r\n");
                continue;
            }
            // The server's INFO again (after CONNECT, or a cluster's change).
            if line.starts_with(b"INFO ") || line.starts_with(b"+OK") {
                self.read.advance(end + 2);
                continue;
            }
            assert!(
                line.starts_with(b"HMSG "),
                "{:?}",
                Bytes::copy_from_slice(line)
            );
            // HMSG <subject> <sid> [reply] <header bytes> <total bytes>
            let mut fields = [&b""[..]; 5];
            let mut count = 0;
            for field in line[5..].split(|b| *b == b' ').filter(|f| !f.is_empty()) {
                assert!(count < 5, "too many fields");
                fields[count] = field;
                count += 1;
            }
            let (subject, reply, header_len, total_len) = match count {
                5 => (fields[0], Some(fields[2]), fields[3], fields[4]),
                4 => (fields[0], None, fields[2], fields[3]),
                _ => panic!("a malformed HMSG line"),
            };
            let (header_len, total_len) = (number(header_len), number(total_len));
            if self.read.len() < end + 2 + total_len + 2 {
                return None;
            }
            let subject = std::str::from_utf8(subject).unwrap().to_string();
            let reply = reply.map(|r| std::str::from_utf8(r).unwrap().to_string());
            self.read.advance(end + 2);
            let mut message = self.read.split_to(total_len + 2).freeze();
            message.truncate(total_len);
            let headers = message.slice(..header_len);
            let body = message.slice(header_len..);
            let Some(reply) = reply else {
                // A status: the end of a pull request, or a heartbeat.
                continue;
            };
            // $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
            let mut tokens = reply.split('.').skip(4);
            let delivery = tokens.next().unwrap().parse().unwrap();
            let stream_sequence = tokens.next().unwrap().parse().unwrap();
            let header_map = self.header_map.then(|| header_map(&headers));
            let id = header(&headers, "Fanout-Event-Id").unwrap().to_string();
            self.write.extend_from_slice(b"PUB ");
            self.write.extend_from_slice(reply.as_bytes());
            self.write.extend_from_slice(b" 0\r\n\r\n");
            return Some(RawEvent {
                id,
                subject,
                headers,
                header_map,
                body,
                delivery,
                stream_sequence,
            });
        }
    }
}

fn number(digits: &[u8]) -> usize {
    std::str::from_utf8(digits).unwrap().parse().unwrap()
}

/// A header's first value in a `NATS/1.0` header block, the name matched without
/// regard to case.
fn header<'a>(block: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(block).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// A `NATS/1.0` header block as async-nats' `HeaderMap`.
fn header_map(block: &[u8]) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    let text = std::str::from_utf8(block).unwrap();
    for line in text.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            map.append(name.trim(), value.trim());
        }
    }
    map
}

/// CPU time of the calling thread so far, user and kernel, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    schedstat.split(' ').next().unwrap().parse().unwrap()
}
