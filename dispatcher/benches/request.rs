//! What sending a request costs the dispatcher's HTTP client, apart from everything
//! else a delivery does (docs/benchmarks.md, "An HTTP client of its own"). Three
//! clients send the same requests, each built from the target's `RequestTemplate`
//! as a worker builds it:
//! - hyper's HTTP/1.1 client, which the workers used until 2026-12-07: a task per
//!   connection, the request and its answer handed across channels;
//! - Fanout's client as the workers use it now (`http::HttpClient`, its HTTP/1.1 of
//!   its own in `http/h1.rs`): the pool, the timeout, the answer's headers and body;
//! - HTTP/1.1 written and read directly, as little as a client can do: the request's
//!   bytes from a block encoded once, the answer's status and length parsed in place.
//!
//!     cargo bench -p fanout-dispatcher --bench request
//!
//! A loopback target (hyper's HTTP/1.1 server on a thread of its own, answering 200
//! with a short body) takes `FANOUT_BENCH_REQUESTS` requests (default 100000) from
//! each client in turn, `FANOUT_BENCH_IN_FLIGHT` at once (default 256, as the
//! dispatcher bench; the product's default `maxInFlight` is 64), each a POST of an
//! event of 256 B with its headers. The client runs on a thread of its own with a
//! current-thread runtime, as a target's worker does, and the figure is that thread's
//! CPU time per request (`/proc/thread-self/schedstat`: user and kernel; hyper's
//! connection tasks run there too). Each client writes one request and reads one
//! answer per exchange, so the kernel's part is the same; what differs is the
//! user-space work around it. `FANOUT_BENCH_ROUNDS` rounds (default 5); the table
//! gives each client's median. `FANOUT_BENCH_ONLY=fanout` (or `hyper`, `direct`,
//! comma-separated) runs only those, for a profile.

#[path = "shared/events.rs"]
mod events;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use events::{BODY_BYTES, body, event_headers};
use fanout_config::TargetConfig;
use fanout_config::egress::{EgressPolicy, Settings};
use fanout_dispatcher::event::{Event, Headers};
use fanout_dispatcher::expressions::Outgoing;
use fanout_dispatcher::http::{ClientSettings, HttpClient, Outbound};
use fanout_dispatcher::request::{Auth, RequestTemplate, is_forwarded};
use fanout_dispatcher::trace;
use fanout_nats_client::protocol::write_number;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Distinct events sent in turn (each with its own id and headers).
const EVENTS: usize = 1000;
const ROUTE: &str = "bench/bench";
const PATH: &str = "/hook";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Client {
    /// The attempt's request as `http::Request`, then hyper's HTTP/1.1 client.
    Hyper,
    /// `RequestTemplate::attempt` and `HttpClient::send`, as `Worker::attempt` does.
    Fanout,
    /// The same request's bytes written and the answer read directly.
    Direct,
}

impl Client {
    fn key(self) -> &'static str {
        match self {
            Client::Hyper => "hyper",
            Client::Fanout => "fanout",
            Client::Direct => "direct",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Client::Hyper => "hyper's HTTP/1.1 client (what workers used)",
            Client::Fanout => "Fanout's client (what workers use)",
            Client::Direct => "HTTP/1.1 written and read directly",
        }
    }
}

fn main() {
    let requests = env_number("FANOUT_BENCH_REQUESTS", 100_000);
    let in_flight = env_number("FANOUT_BENCH_IN_FLIGHT", 256).max(1);
    let rounds = env_number("FANOUT_BENCH_ROUNDS", 5).max(1);
    let target = start_target();
    let only = std::env::var("FANOUT_BENCH_ONLY").unwrap_or_default();
    let clients: Vec<Client> = [Client::Hyper, Client::Fanout, Client::Direct]
        .into_iter()
        .filter(|c| only.is_empty() || only.split(',').any(|o| o == c.key()))
        .collect();
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); clients.len()];
    for round in 1..=rounds {
        for (i, client) in clients.iter().enumerate() {
            let client = *client;
            let r = std::thread::spawn(move || send_all(client, target, requests, in_flight))
                .join()
                .expect("the sending thread ends");
            eprintln!(
                "round {round}/{rounds}: {}: {:.2} µs per request, {:.0} requests/s",
                client.name(),
                r.0,
                r.1
            );
            results[i].push(r);
        }
    }
    println!();
    println!(
        "Requests: {requests} POSTs of {BODY_BYTES} B with an event's {} headers, {in_flight} in flight, one loopback target, {rounds} alternating rounds, median",
        event_headers(0).iter().count()
    );
    println!();
    println!("| client | CPU µs per request (rounds) | requests/s |");
    println!("|---|---:|---:|");
    let mut medians = Vec::new();
    for (client, rounds) in clients.iter().zip(&results) {
        let cpu = median(rounds.iter().map(|r| r.0).collect());
        let rate = median(rounds.iter().map(|r| r.1).collect());
        let each: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.0)).collect();
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
            .map(|(d, f)| format!("{:.2}", d.0 / f.0))
            .collect();
        println!(
            "{} over {}, CPU per request: {:.2} (rounds {}); {:.2} µs less per request",
            clients[i].name(),
            clients[0].name(),
            medians[i] / medians[0],
            by_round.join(", "),
            medians[0] - medians[i]
        );
    }
}

/// Sends `requests` requests with `in_flight` at once on a thread's current-thread
/// runtime: that thread's CPU µs per request, and requests per second.
fn send_all(client: Client, target: SocketAddr, requests: usize, in_flight: usize) -> (f64, f64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events: Arc<Vec<Event>> = Arc::new((0..EVENTS).map(event).collect());
    let config = target_config(target);
    runtime.block_on(async move {
        let left = Arc::new(AtomicUsize::new(requests));
        let (cpu, started) = (thread_cpu_ns(), Instant::now());
        match client {
            Client::Fanout => {
                let template = RequestTemplate::new(ROUTE, &config, Auth::default()).unwrap();
                let settings = ClientSettings {
                    timeout: config.policy.timeout.as_std(),
                    max_idle: in_flight,
                    egress: Arc::new(EgressPolicy::new(Settings::default())),
                };
                let http = HttpClient::new(&config.policy.url, &settings, &mut None).unwrap();
                let (template, http) = (&template, &http);
                let mut senders: FuturesUnordered<_> = (0..in_flight)
                    .map(|_| {
                        let (left, events) = (left.clone(), events.clone());
                        async move {
                            while let Some(n) = take(&left) {
                                let event = &events[n % EVENTS];
                                let traceparent = trace::child_traceparent(
                                    event.header("traceparent"),
                                    &mut rand::rng(),
                                );
                                let request =
                                    template.attempt(Outgoing::new(event, None), &traceparent);
                                let response = http.send(request, |_| 4096).await.unwrap();
                                assert_eq!(response.status, 200);
                                assert!(response.body.is_ok());
                            }
                        }
                    })
                    .collect();
                while senders.next().await.is_some() {}
            }
            Client::Hyper => {
                let template = RequestTemplate::new(ROUTE, &config, Auth::default()).unwrap();
                let template = &template;
                let host = http::HeaderValue::from_str(&target.to_string()).unwrap();
                let host = &host;
                let mut senders: FuturesUnordered<_> = (0..in_flight)
                    .map(|_| {
                        let (left, events) = (left.clone(), events.clone());
                        async move {
                            let tcp = tokio::net::TcpStream::connect(target).await.unwrap();
                            tcp.set_nodelay(true).unwrap();
                            let (mut sender, connection) =
                                hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                                    .await
                                    .unwrap();
                            tokio::spawn(connection);
                            while let Some(n) = take(&left) {
                                let event = &events[n % EVENTS];
                                let traceparent = trace::child_traceparent(
                                    event.header("traceparent"),
                                    &mut rand::rng(),
                                );
                                let mut request = template
                                    .attempt(Outgoing::new(event, None), &traceparent)
                                    .to_request();
                                *request.uri_mut() = http::Uri::from_static(PATH);
                                request
                                    .headers_mut()
                                    .insert(http::header::HOST, host.clone());
                                let response = sender.send_request(request).await.unwrap();
                                assert_eq!(response.status(), 200);
                                response.into_body().collect().await.unwrap();
                            }
                        }
                    })
                    .collect();
                while senders.next().await.is_some() {}
            }
            Client::Direct => {
                let head = DirectHead::new(target);
                let head = &head;
                let mut senders: FuturesUnordered<_> = (0..in_flight)
                    .map(|_| {
                        let (left, events) = (left.clone(), events.clone());
                        async move {
                            let mut stream = tokio::net::TcpStream::connect(target).await.unwrap();
                            stream.set_nodelay(true).unwrap();
                            let (mut out, mut read) = (Vec::with_capacity(2048), Vec::new());
                            while let Some(n) = take(&left) {
                                let event = &events[n % EVENTS];
                                let traceparent = trace::child_traceparent(
                                    event.header("traceparent"),
                                    &mut rand::rng(),
                                );
                                head.write(&mut out, event, &traceparent);
                                stream.write_all(&out).await.unwrap();
                                let status = read_answer(&mut stream, &mut read).await;
                                assert_eq!(status, 200);
                            }
                        }
                    })
                    .collect();
                while senders.next().await.is_some() {}
            }
        }
        let cpu_us = (thread_cpu_ns() - cpu) as f64 / 1000.0 / requests as f64;
        (cpu_us, requests as f64 / started.elapsed().as_secs_f64())
    })
}

fn take(left: &AtomicUsize) -> Option<usize> {
    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .ok()
}

/// What a client of its own would keep per target: the request line and the
/// template's fixed headers, encoded once.
struct DirectHead {
    fixed: Vec<u8>,
}

impl DirectHead {
    fn new(target: SocketAddr) -> DirectHead {
        let fixed = format!(
            "POST {PATH} HTTP/1.1\r\nhost: {target}\r\nuser-agent: fanout/bench\r\nfanout-route: {ROUTE}\r\nfanout-target: api\r\n"
        );
        DirectHead {
            fixed: fixed.into_bytes(),
        }
    }

    /// The request for `event` into `out`: the event's forwarded headers checked as
    /// the `http` crate checks them, then Fanout's, then the body.
    fn write(&self, out: &mut Vec<u8>, event: &Event, traceparent: &str) {
        out.clear();
        out.extend_from_slice(&self.fixed);
        for (name, value) in event.headers.iter() {
            if !is_forwarded(name) || !valid_name(name) || !valid_value(value) {
                continue;
            }
            line(out, name, value);
        }
        let content_type = event
            .header("content-type")
            .unwrap_or("application/octet-stream");
        for (name, value) in [
            ("content-type", content_type),
            ("idempotency-key", &event.id),
            ("traceparent", traceparent),
        ] {
            if valid_value(value) {
                line(out, name, value);
            }
        }
        for (name, n) in [
            ("fanout-attempt", u64::from(event.delivery)),
            ("content-length", event.body.len() as u64),
        ] {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            write_number(out, n);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&event.body);
    }
}

fn line(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An RFC 9110 token.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible text, spaces and tabs (no CR, LF or other controls).
fn valid_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Reads one answer: its status, once its head and `Content-Length` body are in.
async fn read_answer(stream: &mut tokio::net::TcpStream, read: &mut Vec<u8>) -> u16 {
    read.clear();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = response.parse(read).unwrap() {
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap_or(0);
            let status = response.code.unwrap();
            while read.len() < head + length {
                read.reserve(4096);
                assert!(stream.read_buf(read).await.unwrap() > 0);
            }
            return status;
        }
        read.reserve(4096);
        assert!(
            stream.read_buf(read).await.unwrap() > 0,
            "the target closed"
        );
    }
}

fn event(i: usize) -> Event {
    let headers: Vec<(String, String)> = event_headers(i)
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_string()))
        })
        .collect();
    Event {
        id: format!("evt-{i}"),
        subject: "fanout.in.bench.bench.event".into(),
        headers: Headers::from_pairs(headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
        body: body(i),
        delivery: 1,
        stream_sequence: i as u64 + 1,
        stored_at: std::time::SystemTime::now(),
    }
}

fn target_config(target: SocketAddr) -> TargetConfig {
    serde_yaml_ng::from_str(&format!(
        "name: api
consumer: api
deadLetterSubject: fanout.dlq.bench.bench.api
filter: {{}}
policy:
  url: http://{target}{PATH}
  method: POST
  headers: {{}}
  timeout: 10s
  retry:
    maxAttempts: 3
    backoff: exponential
    jitter: full
    initialDelay: 100ms
    maxDelay: 1s
    retryAfterMax: 10s
    retryableStatusCodes: [\"5xx\"]
    nonRetryableStatusCodes: []
  maxInFlight: 256
"
    ))
    .unwrap()
}

/// A loopback HTTP/1.1 target on a thread of its own, answering 200 with a short body.
fn start_target() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_request| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"{\"ok\":true}",
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    addr
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

/// CPU time of the calling thread so far, user and kernel, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    schedstat.split(' ').next().unwrap().parse().unwrap()
}
