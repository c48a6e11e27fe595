//! Delivery benchmark: the engine against a naive fan-out, side by side in one run.
//!
//!     cargo bench -p fanout-dispatcher --bench dispatch
//!
//! Events are pre-loaded into a real JetStream stream and delivered to two loopback
//! HTTP targets. The engine (production `fanout dispatch` code) and the baseline each
//! run as a child process of this binary, so CPU time and peak RSS are theirs alone.
//! Phases: throughput from a full stream; latency from publish to delivery at a fixed
//! offered rate; throughput of the healthy target while the other answers 503.
//! The throughput phase runs `FANOUT_BENCH_ROUNDS` times (default 3), alternating
//! baseline and engine so that a slow stretch of the machine hits both, and the
//! table gives each contender's median round (every round is printed too).
//! The engine's throughput is also measured with per-key ordering on (events of
//! 1000 keys, interleaved) and with adaptive concurrency on, in the same rounds, and
//! printed beside today's configuration.
//! `FANOUT_BENCH_EVENTS` sets the pre-loaded count (default 100000). For
//! experiments: `FANOUT_BENCH_LATENCY_ONLY=1` runs only the latency phase, and
//! `FANOUT_BENCH_NO_LIMIT=1` leaves the rate limiter out of the targets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use bytes::Bytes;
use fanout_api::manifests::Manifests;
use fanout_provision::Provisioner;
use fanout_testkit::nats::NatsServer;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const BODY_BYTES: usize = 256;
const SENT_HEADER: &str = "X-Bench-Sent";
/// The ordering key of each event (when ordering is on): one of [`KEYS`].
const KEY_HEADER: &str = "X-Bench-Key";
const KEYS: usize = 1000;
/// Concurrent deliveries per target, for both engine and baseline.
const IN_FLIGHT: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child-baseline") => child_baseline(&args[2], &args[3]),
        // `cargo bench` passes --bench; anything else runs the benchmark.
        _ => parent(),
    }
}

// ---------------------------------------------------------------------------------
// Children

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The straightforward fan-out: per target a consumer, a bounded set of concurrent
/// reqwest deliveries, one ack per message, no retry policy beyond nak.
fn child_baseline(config: &str, nats_url: &str) {
    let config: fanout_config::RouteConfig =
        serde_yaml_ng::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    runtime().block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = async_nats::connect(nats_url).await.unwrap();
        let js = jetstream::new(client);
        let stream = js.get_stream(&config.stream).await.unwrap();
        let mut tasks = Vec::new();
        for target in config.targets {
            let consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer(&target.consumer).await.unwrap();
            let http = reqwest::Client::new();
            let url = target.policy.url.clone();
            tasks.push(tokio::spawn(async move {
                let limit = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
                let mut messages = consumer.messages().await.unwrap();
                while let Some(Ok(message)) = messages.next().await {
                    let permit = limit.clone().acquire_owned().await.unwrap();
                    let http = http.clone();
                    let url = url.clone();
                    tokio::spawn(async move {
                        let mut request = http.post(&url).body(message.payload.clone());
                        if let Some(sent) =
                            message.headers.as_ref().and_then(|h| h.get(SENT_HEADER))
                        {
                            request = request.header(SENT_HEADER, sent.as_str());
                        }
                        match request.send().await {
                            Ok(r) if r.status().is_success() => message.ack().await.unwrap(),
                            _ => message
                                .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                                .await
                                .unwrap(),
                        }
                        drop(permit);
                    });
                }
            }));
        }
        futures::future::join_all(tasks).await;
    });
}

// ---------------------------------------------------------------------------------
// Targets: minimal HTTP servers that count and measure publish-to-delivery latency.

struct Target {
    addr: SocketAddr,
    delivered: AtomicU64,
    failing: AtomicBool,
    latencies_us: Mutex<Vec<u64>>,
}

impl Target {
    async fn start() -> Arc<Target> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Arc::new(Target {
            addr: listener.local_addr().unwrap(),
            delivered: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            latencies_us: Mutex::new(Vec::new()),
        });
        let t = target.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let t = t.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let t = t.clone();
                        async move { Ok::<_, std::convert::Infallible>(t.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        target
    }

    async fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let sent = req
            .headers()
            .get(SENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let _ = req.into_body().collect().await;
        if self.failing.load(Ordering::Relaxed) {
            return hyper::Response::builder()
                .status(503)
                .body(Full::default())
                .unwrap();
        }
        if let Some(sent) = sent {
            let latency = now_us().saturating_sub(sent);
            self.latencies_us.lock().unwrap().push(latency);
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        hyper::Response::new(Full::default())
    }

    fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    fn reset(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        self.latencies_us.lock().unwrap().clear();
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

// ---------------------------------------------------------------------------------
// The parent: set up, run each phase for each contender, print the table.

#[derive(Clone, Copy, PartialEq)]
enum Contender {
    Baseline,
    Engine,
    /// The engine with `ordering: {key: {header: X-Bench-Key}}` on both targets.
    Ordered,
    /// The engine with `concurrency: {adaptive: true}` on both ApiTargets.
    Adaptive,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Baseline => "baseline (naive reqwest fan-out)",
            Contender::Engine => "engine (fanout dispatch)",
            Contender::Ordered => "engine, per-key ordering (1000 keys)",
            Contender::Adaptive => "engine, adaptive concurrency",
        }
    }
}

struct Child {
    process: std::process::Child,
}

impl Child {
    fn spawn(contender: Contender, config: &Path, nats_url: &str) -> Child {
        let mut command = match contender {
            Contender::Baseline => {
                let mut c = std::process::Command::new(std::env::current_exe().unwrap());
                c.arg("--child-baseline").arg(config).arg(nats_url);
                c
            }
            Contender::Engine | Contender::Ordered | Contender::Adaptive => {
                let mut c = std::process::Command::new(fanout_testkit::fanout_release_binary());
                c.arg("dispatch").arg("--config").arg(config).args([
                    "--nats-url",
                    nats_url,
                    "--listen",
                    "127.0.0.1:0",
                    "--pod-name",
                    "bench",
                    // The bench's targets are on loopback.
                    "--egress-allow",
                    "127.0.0.0/8",
                ]);
                c
            }
        };
        let process = command
            .env("FANOUT_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Child { process }
    }

    /// (CPU seconds used so far, peak RSS in MiB).
    fn usage(&self) -> (f64, f64) {
        let pid = self.process.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let hwm_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
            .unwrap();
        (ticks / 100.0, hwm_kib / 1024.0)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

struct Bench {
    nats: NatsServer,
    js: jetstream::Context,
    a: Arc<Target>,
    b: Arc<Target>,
    dir: tempfile::TempDir,
}

impl Bench {
    /// Fresh streams and consumers for the route as `contender` runs it; returns the
    /// config file path.
    async fn fresh_route(&self, contender: Contender) -> PathBuf {
        let limit = if std::env::var_os("FANOUT_BENCH_NO_LIMIT").is_some() {
            ""
        } else {
            "  rateLimit: {requestsPerSecond: 1000000, burst: 100000}\n"
        };
        let adaptive = match contender {
            Contender::Adaptive => "  concurrency: {adaptive: true}\n",
            _ => "",
        };
        let ordering = match contender {
            Contender::Ordered => format!(", ordering: {{key: {{header: {KEY_HEADER}}}}}"),
            _ => String::new(),
        };
        let manifests = format!(
            "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: a}}
spec:
  url: {a}
  maxInFlight: {IN_FLIGHT}
{limit}{adaptive}---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: b}}
spec:
  url: {b}
  maxInFlight: {IN_FLIGHT}
{limit}{adaptive}---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: bench}}
spec:
  targets:
    - {{name: a, apiTargetRef: {{name: a}}{ordering}}}
    - {{name: b, apiTargetRef: {{name: b}}{ordering}}}
",
            a = self.a.url(),
            b = self.b.url(),
        );
        let rendered = Manifests::parse(&manifests, "bench")
            .unwrap()
            .render(self.dir.path())
            .unwrap()
            .remove(0);
        let provisioner = Provisioner::new(self.js.clone());
        let mut names = vec![rendered.streams.stream.name.clone()];
        names.extend(rendered.streams.dead_letter.iter().map(|s| s.name.clone()));
        provisioner.delete(&names).await.unwrap();
        provisioner.apply(&rendered.streams).await.unwrap();
        let path = self.dir.path().join("route.yaml");
        std::fs::write(&path, serde_yaml_ng::to_string(&rendered.config).unwrap()).unwrap();
        self.a.reset();
        self.b.reset();
        path
    }

    async fn publish(&self, count: usize, stamped: bool) {
        let body = Bytes::from(vec![b'x'; BODY_BYTES]);
        let mut acks = Vec::with_capacity(1000);
        for i in 0..count {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Fanout-Event-Id", format!("evt-{i}").as_str());
            headers.insert("Content-Type", "application/json");
            headers.insert(KEY_HEADER, format!("key-{}", i % KEYS).as_str());
            if stamped {
                headers.insert(SENT_HEADER, now_us().to_string().as_str());
            }
            let ack = self
                .js
                .publish_with_headers("fanout.in.bench.bench.event", headers, body.clone())
                .await
                .unwrap();
            acks.push(ack);
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

    async fn wait_delivered(&self, target: &Target, count: u64, limit: Duration) -> Duration {
        let start = Instant::now();
        while target.delivered.load(Ordering::Relaxed) < count {
            assert!(
                start.elapsed() < limit,
                "only {} of {count} delivered",
                target.delivered.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }
}

#[derive(Clone, Copy)]
struct Throughput {
    events_per_sec: f64,
    cpu_per_1000: f64,
    peak_rss_mib: f64,
}

async fn throughput(bench: &Bench, contender: Contender, events: usize) -> Throughput {
    let config = bench.fresh_route(contender).await;
    bench.publish(events, false).await;
    let child = Child::spawn(contender, &config, &bench.nats.url());
    let start = Instant::now();
    let limit = Duration::from_secs(300);
    bench.wait_delivered(&bench.a, events as u64, limit).await;
    bench.wait_delivered(&bench.b, events as u64, limit).await;
    let elapsed = start.elapsed();
    let (cpu, rss) = child.usage();
    drop(child);
    Throughput {
        events_per_sec: events as f64 / elapsed.as_secs_f64(),
        cpu_per_1000: cpu / (events as f64 / 1000.0),
        peak_rss_mib: rss,
    }
}

/// The round with the median rate (the lower middle one for an even count).
fn median(rounds: &[Throughput]) -> Throughput {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
    sorted[(sorted.len() - 1) / 2]
}

/// Healthy target's rate while the other answers 503 for the whole run.
async fn throughput_with_failing_peer(bench: &Bench, contender: Contender, events: usize) -> f64 {
    let config = bench.fresh_route(contender).await;
    bench.publish(events, false).await;
    bench.b.failing.store(true, Ordering::Relaxed);
    let child = Child::spawn(contender, &config, &bench.nats.url());
    let elapsed = bench
        .wait_delivered(&bench.a, events as u64, Duration::from_secs(300))
        .await;
    drop(child);
    bench.b.failing.store(false, Ordering::Relaxed);
    events as f64 / elapsed.as_secs_f64()
}

/// (p50, p99) publish-to-delivery latency in ms at `rate` events/s for `seconds`.
async fn latency(bench: &Bench, contender: Contender, rate: u64, seconds: u64) -> (f64, f64) {
    let config = bench.fresh_route(contender).await;
    let _child = Child::spawn(contender, &config, &bench.nats.url());
    // Warm up until the child delivers, so start-up is not measured.
    bench.publish(100, false).await;
    bench
        .wait_delivered(&bench.a, 100, Duration::from_secs(30))
        .await;
    bench
        .wait_delivered(&bench.b, 100, Duration::from_secs(30))
        .await;
    bench.a.reset();
    bench.b.reset();

    let total = rate * seconds;
    let start = Instant::now();
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    let mut acks = Vec::new();
    for i in 0..total {
        // Open-loop pacing: event i leaves at i/rate, however long earlier ones took.
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Fanout-Event-Id", format!("lat-{i}").as_str());
        headers.insert(SENT_HEADER, now_us().to_string().as_str());
        acks.push(
            bench
                .js
                .publish_with_headers("fanout.in.bench.bench.event", headers, body.clone())
                .await
                .unwrap(),
        );
        if acks.len() >= 500 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    bench
        .wait_delivered(&bench.a, total, Duration::from_secs(60))
        .await;
    bench
        .wait_delivered(&bench.b, total, Duration::from_secs(60))
        .await;
    let mut all: Vec<u64> = bench.a.latencies_us.lock().unwrap().clone();
    all.extend(bench.b.latencies_us.lock().unwrap().iter());
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    (pct(0.50), pct(0.99))
}

fn parent() {
    let events: usize = std::env::var("FANOUT_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rate = 5_000;
    runtime().block_on(async move {
        let nats = NatsServer::start().unwrap();
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let bench = Bench {
            a: Target::start().await,
            b: Target::start().await,
            nats,
            js,
            dir: tempfile::tempdir().unwrap(),
        };
        let mut results = Vec::new();
        if std::env::var_os("FANOUT_BENCH_LATENCY_ONLY").is_some() {
            for contender in [Contender::Baseline, Contender::Engine] {
                let (p50, p99) = latency(&bench, contender, rate, 5).await;
                println!("{}: p50 {p50:.2} ms p99 {p99:.2} ms", contender.name());
            }
            return;
        }
        let rounds = std::env::var("FANOUT_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3usize)
            .max(1);
        let all = [Contender::Baseline, Contender::Engine, Contender::Ordered, Contender::Adaptive];
        let mut rates: Vec<Vec<Throughput>> = vec![Vec::new(); all.len()];
        for round in 1..=rounds {
            for (i, contender) in all.into_iter().enumerate() {
                eprintln!("{}: throughput of {events} pre-loaded events, round {round}/{rounds} ...", contender.name());
                rates[i].push(throughput(&bench, contender, events).await);
            }
        }
        for (i, contender) in [Contender::Baseline, Contender::Engine].into_iter().enumerate() {
            eprintln!("{}: latency at {rate}/s ...", contender.name());
            let (p50, p99) = latency(&bench, contender, rate, 5).await;
            eprintln!("{}: healthy target while the other answers 503 ...", contender.name());
            let degraded = throughput_with_failing_peer(&bench, contender, events).await;
            results.push((contender, median(&rates[i]), p50, p99, degraded));
        }
        let baseline_rate = results[0].1.events_per_sec;
        println!();
        for (i, contender) in all.into_iter().enumerate() {
            let each: Vec<String> = rates[i].iter().map(|t| format!("{:.0}", t.events_per_sec)).collect();
            println!("{} events/s by round: {}", contender.name(), each.join(", "));
        }
        println!();
        println!("Delivery benchmark: {events} events of {BODY_BYTES} B, 2 loopback targets, {} cores; throughput is the median of {rounds} alternating rounds", std::thread::available_parallelism().map_or(0, |n| n.get()));
        println!();
        println!("| contender | events/s to both | vs baseline | CPU s / 1000 events | peak RSS MiB | p50 ms @ {rate}/s | p99 ms @ {rate}/s | healthy target events/s, peer 503 | vs own healthy run |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (contender, t, p50, p99, degraded) in &results {
            println!(
                "| {} | {:.0} | {:.2}x | {:.3} | {:.1} | {:.2} | {:.2} | {:.0} | {:.0}% |",
                contender.name(),
                t.events_per_sec,
                t.events_per_sec / baseline_rate,
                t.cpu_per_1000,
                t.peak_rss_mib,
                p50,
                p99,
                degraded,
                100.0 * degraded / t.events_per_sec
            );
        }
        let engine = median(&rates[1]);
        println!();
        println!("Engine options, same rounds (median of {rounds}):");
        println!();
        println!("| configuration | events/s to both | vs today's engine | CPU s / 1000 events | peak RSS MiB |");
        println!("|---|---:|---:|---:|---:|");
        for (i, contender) in all.into_iter().enumerate().skip(1) {
            let t = median(&rates[i]);
            println!(
                "| {} | {:.0} | {:.2}x | {:.3} | {:.1} |",
                contender.name(),
                t.events_per_sec,
                t.events_per_sec / engine.events_per_sec,
                t.cpu_per_1000,
                t.peak_rss_mib,
            );
        }
    });
}
