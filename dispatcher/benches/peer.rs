//! Peer benchmark: Fanout's dispatcher against Bento, the stream processor that many
//! teams would pick for "consume from NATS and POST to several HTTP APIs".
//!
//!     e2e/tools.sh bento        # once: the pinned Bento, into the tool cache
//!     cargo bench -p fanout-dispatcher --bench peer
//!
//! The same work for every contender: a real JetStream stream pre-loaded with
//! `FANOUT_BENCH_EVENTS` events of 256 B (default 100000), delivered to two loopback
//! HTTP targets. The targets run in a child process of their own (peer/targets.rs),
//! so that their CPU time is measured too; each contender is a child process, so its
//! CPU time and peak RSS are its own. Contenders:
//! - Fanout: the release `fanout dispatch`, as users run it and as configured in the
//!   dispatcher benchmark (dispatch.rs): every feature on, `maxInFlight: 256`; and
//!   again with `maxInFlight` left at its default (64), as a user's targets have it;
//! - Bento with a `broker` of `pattern: fan_out` to two `http_client` outputs
//!   (peer/bento-fan-out.yaml), at two `max_in_flight` settings: 256, as Fanout, and
//!   `FANOUT_PEER_BENTO_IN_FLIGHT` (default 2, its fastest here);
//! - Bento with one pipeline per target (streams mode: peer/bento-streams.yaml), each
//!   with its own durable consumer, at `FANOUT_PEER_BENTO_IN_FLIGHT`.
//!
//! Throughput runs `FANOUT_BENCH_ROUNDS` rounds (default 3), each contender once per
//! round in turn, so that a slow stretch of the machine hits all of them; the table
//! gives each contender's median round. Once per contender after the rounds: the
//! healthy target's rate while the other answers 503 (a run ends when the healthy
//! target has every event or has received nothing for 10 s). Then the latency from
//! publish to delivery at a fixed offered rate of 5,000 events/s for both Fanouts and
//! the fastest Bento.
//!
//! Then the rate each contender reaches within the same CPU limit, as a Kubernetes
//! CPU limit enforces it (a cgroup with a CFS quota: `FANOUT_PEER_CPU_LIMIT`
//! millicores, default 500, 0 for none; needs root), in `FANOUT_BENCH_ROUNDS`
//! alternating rounds of both Fanouts and both Bentos at their fastest setting. On 2
//! cores the unlimited rates follow the CPU of the whole chain (contender, targets and
//! nats-server); half a core each leaves the targets and nats-server room, so that
//! each contender's own cost sets its rate.
//!
//! `FANOUT_PEER_SWEEP="1 2 4 8 64 256"` runs instead one throughput round of both
//! Bento configurations at each of these `max_in_flight` settings (how the default
//! of `FANOUT_PEER_BENTO_IN_FLIGHT` was chosen).

#[path = "peer/targets.rs"]
mod targets;

#[path = "shared/events.rs"]
mod events;

use events::{BODY_BYTES, body, event_headers};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use fanout_api::manifests::Manifests;
use fanout_config::names::RouteKey;
use fanout_provision::Provisioner;
use fanout_testkit::cpu_limit::CpuLimit;
use fanout_testkit::nats::NatsServer;

use targets::{Counts, SENT_HEADER, Targets, now_us};

/// Fanout's concurrent deliveries per target, as in the dispatcher benchmark.
const IN_FLIGHT: usize = 256;
/// Bento's unacknowledged events per consumer: above every `max_in_flight` here, so
/// that the outputs and not the consumer set the pace.
const BENTO_MAX_ACK_PENDING: usize = 1024;
/// A run with a failing target ends when the healthy one got nothing for this long.
const STALL: Duration = Duration::from_secs(10);
const LATENCY_RATE: u64 = 5_000;
const LATENCY_SECONDS: u64 = 5;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child-targets") => targets::serve(),
        // `cargo bench` passes --bench; anything else runs the benchmark.
        _ => parent(),
    }
}

// ---------------------------------------------------------------------------------
// Contenders

#[derive(Clone, Copy, PartialEq)]
enum Contender {
    /// `fanout dispatch` at `maxInFlight: 256`, as the dispatcher benchmark runs it.
    Fanout,
    /// `fanout dispatch` with the targets as a user writes them, `maxInFlight` left
    /// at its default (64).
    FanoutDefault,
    /// Bento, one pipeline: `broker` with `pattern: fan_out`, at this `max_in_flight`
    /// per output.
    BentoFanOut(usize),
    /// Bento's streams mode, one pipeline per target, at this `max_in_flight`.
    BentoPerTarget(usize),
}

impl Contender {
    fn name(self) -> String {
        match self {
            Contender::Fanout => "Fanout (`fanout dispatch`)".into(),
            Contender::FanoutDefault => "Fanout, maxInFlight at its default (64)".into(),
            Contender::BentoFanOut(n) => format!("Bento fan_out, max_in_flight {n}"),
            Contender::BentoPerTarget(n) => {
                format!("Bento, a pipeline per target, max_in_flight {n}")
            }
        }
    }

    fn is_bento(self) -> bool {
        !matches!(self, Contender::Fanout | Contender::FanoutDefault)
    }

    /// Fanout's `maxInFlight` line for each target; none for its default.
    fn max_in_flight_line(self) -> String {
        match self {
            Contender::FanoutDefault => String::new(),
            _ => format!("\n  maxInFlight: {IN_FLIGHT}"),
        }
    }
}

/// A contender's process; killed when dropped.
struct Child {
    process: std::process::Child,
    log: PathBuf,
}

fn usage(pid: u32) -> (f64, f64) {
    fanout_testkit::process::cpu_and_peak_rss(pid)
}

impl Child {
    fn usage(&self) -> (f64, f64) {
        usage(self.process.id())
    }

    /// CPU seconds used so far in user space: without the kernel's part, which on
    /// loopback includes the targets' side of each request's TCP.
    fn user_cpu(&self) -> f64 {
        fanout_testkit::process::user_and_system_cpu(self.process.id()).0
    }

    /// The end of the contender's log, for a run that went wrong.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

// ---------------------------------------------------------------------------------
// The bench

struct Bench {
    nats: NatsServer,
    js: jetstream::Context,
    targets: Targets,
    bento: PathBuf,
    fanout: PathBuf,
    dir: tempfile::TempDir,
}

fn bento_configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer")
}

impl Bench {
    /// A fresh stream (and Fanout's consumers) for the route; returns Fanout's
    /// rendered config, for `contender` if it is Fanout. Bento's consumers go with the
    /// old stream.
    async fn fresh_route(&self, contender: Contender) -> PathBuf {
        let manifests = format!(
            "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: a}}
spec:
  url: {a}{in_flight}
  rateLimit: {{requestsPerSecond: 1000000, burst: 100000}}
---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: b}}
spec:
  url: {b}{in_flight}
  rateLimit: {{requestsPerSecond: 1000000, burst: 100000}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: bench}}
spec:
  targets:
    - name: a
      apiTargetRef: {{name: a}}
    - name: b
      apiTargetRef: {{name: b}}
",
            a = self.targets.url_a(),
            b = self.targets.url_b(),
            in_flight = contender.max_in_flight_line(),
        );
        let rendered = Manifests::parse(&manifests, "bench")
            .unwrap()
            .render(self.dir.path())
            .unwrap()
            .remove(0);
        let provisioner = Provisioner::new(self.js.clone());
        let mut names = vec![rendered.streams.stream.name.clone()];
        names.extend(rendered.streams.dead_letter.iter().map(|s| s.name.clone()));
        names.push(route().attempts_stream());
        provisioner.delete(&names).await.unwrap();
        provisioner.apply(&rendered.streams).await.unwrap();
        let path = self.dir.path().join("route.yaml");
        std::fs::write(&path, serde_yaml_ng::to_string(&rendered.config).unwrap()).unwrap();
        self.targets.reset().await;
        path
    }

    /// Starts `contender`, inside `limit`'s cgroup if there is one.
    fn spawn(&self, contender: Contender, fanout_config: &Path, limit: Option<&CpuLimit>) -> Child {
        let log = self.dir.path().join("contender.log");
        let mut command = match contender {
            Contender::Fanout | Contender::FanoutDefault => {
                let mut c = std::process::Command::new(&self.fanout);
                c.arg("dispatch")
                    .arg("--config")
                    .arg(fanout_config)
                    .args([
                        "--nats-url",
                        &self.nats.url(),
                        "--listen",
                        "127.0.0.1:0",
                        "--pod-name",
                        "bench",
                        // The bench's targets are on loopback.
                        "--egress-allow",
                        "127.0.0.0/8",
                    ])
                    .env("FANOUT_LOG", "warn");
                c
            }
            Contender::BentoFanOut(in_flight) => {
                let mut c = self.bento_command(in_flight);
                c.arg("-c").arg(bento_configs().join("bento-fan-out.yaml"));
                c
            }
            Contender::BentoPerTarget(in_flight) => {
                let mut c = self.bento_command(in_flight);
                let dir = bento_configs();
                c.arg("-c")
                    .arg(dir.join("bento-streams.yaml"))
                    .args(["streams", "--no-api"])
                    .arg(dir.join("bento-stream-a.yaml"))
                    .arg(dir.join("bento-stream-b.yaml"));
                c
            }
        };
        if let Some(limit) = limit {
            command = limit.wrap(&command);
        }
        let file = std::fs::File::create(&log).unwrap();
        command.stdout(file.try_clone().unwrap()).stderr(file);
        let process = fanout_testkit::tied::spawn(command).unwrap();
        Child { process, log }
    }

    fn bento_command(&self, in_flight: usize) -> std::process::Command {
        let mut c = std::process::Command::new(&self.bento);
        c.env("NATS_URL", self.nats.url())
            .env("NATS_STREAM", route().stream())
            .env("NATS_SUBJECT", route().ingest_subjects())
            .env("TARGET_A_URL", self.targets.url_a())
            .env("TARGET_B_URL", self.targets.url_b())
            .env("BENTO_MAX_IN_FLIGHT", in_flight.to_string())
            .env("BENTO_MAX_ACK_PENDING", BENTO_MAX_ACK_PENDING.to_string());
        c
    }

    async fn publish(&self, count: usize) {
        let mut acks = Vec::with_capacity(1000);
        for i in 0..count {
            let ack = self
                .js
                .publish_with_headers(subject(), event_headers(i), body(i))
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

    /// CPU seconds nats-server has used so far.
    fn nats_cpu_seconds(&self) -> f64 {
        usage(self.nats.pid().expect("nats-server runs")).0
    }

    /// Waits until both targets have `count` events; the counts at the end.
    async fn wait_both(&self, child: &Child, count: u64, limit: Duration) -> Counts {
        let start = Instant::now();
        loop {
            let counts = self.targets.counts().await;
            if counts.a >= count && counts.b >= count {
                return counts;
            }
            assert!(
                start.elapsed() < limit,
                "only {} and {} of {count} delivered; the contender's log ends with:\n{}",
                counts.a,
                counts.b,
                child.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn route() -> RouteKey {
    RouteKey::new("bench", "bench")
}

fn subject() -> String {
    format!("{}.event", route().ingest_prefix())
}

// ---------------------------------------------------------------------------------
// Phases

#[derive(Clone, Copy)]
struct Throughput {
    events_per_sec: f64,
    cpu_per_1000: f64,
    /// Of it, in user space.
    user_cpu_per_1000: f64,
    peak_rss_mib: f64,
    targets_cpu_per_1000: f64,
    nats_cpu_per_1000: f64,
    /// Connections the targets accepted during the run.
    connections: u64,
    /// Under a CPU limit: the share of the contender's busy CFS periods that ended
    /// with its quota used up.
    throttled: Option<f64>,
}

impl Throughput {
    /// Cores the contender kept busy on average.
    fn cores(&self) -> f64 {
        self.cpu_per_1000 * self.events_per_sec / 1000.0
    }

    /// Cores the targets and nats-server kept busy on average.
    fn others_cores(&self) -> f64 {
        (self.targets_cpu_per_1000 + self.nats_cpu_per_1000) * self.events_per_sec / 1000.0
    }
}

async fn throughput(
    bench: &Bench,
    contender: Contender,
    events: usize,
    limit: Option<&CpuLimit>,
) -> Throughput {
    let config = bench.fresh_route(contender).await;
    bench.publish(events).await;
    bench.targets.reset().await;
    let targets_cpu = bench.targets.cpu_seconds();
    let nats_cpu = bench.nats_cpu_seconds();
    let throttling = |limit: &CpuLimit| limit.throttling().expect("the limit's cpu.stat");
    let throttled_before = limit.map(throttling).unwrap_or_default();
    let child = bench.spawn(contender, &config, limit);
    let start = Instant::now();
    let counts = bench
        .wait_both(&child, events as u64, Duration::from_secs(600))
        .await;
    let elapsed = start.elapsed();
    let (cpu, rss) = child.usage();
    let user_cpu = child.user_cpu();
    let throttled = limit.map(|l| throttling(l).share_since(throttled_before));
    drop(child);
    let thousands = events as f64 / 1000.0;
    Throughput {
        events_per_sec: events as f64 / elapsed.as_secs_f64(),
        cpu_per_1000: cpu / thousands,
        user_cpu_per_1000: user_cpu / thousands,
        peak_rss_mib: rss,
        targets_cpu_per_1000: (bench.targets.cpu_seconds() - targets_cpu) / thousands,
        nats_cpu_per_1000: (bench.nats_cpu_seconds() - nats_cpu) / thousands,
        connections: counts.connections,
        throttled,
    }
}

/// The round with the median rate (the lower middle one for an even count).
fn median(rounds: &[Throughput]) -> Throughput {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
    sorted[(sorted.len() - 1) / 2]
}

/// The healthy target's run while the other answers 503 for the whole run.
#[derive(Clone, Copy)]
struct Degraded {
    delivered: u64,
    events_per_sec: f64,
    /// The healthy target got nothing for [`STALL`] before it had every event.
    stalled: bool,
}

async fn with_failing_peer(bench: &Bench, contender: Contender, events: usize) -> Degraded {
    let config = bench.fresh_route(contender).await;
    bench.publish(events).await;
    bench.targets.reset().await;
    bench.targets.fail_b(true).await;
    let child = bench.spawn(contender, &config, None);
    let start = Instant::now();
    let (mut last, mut progress) = (0, Instant::now());
    let stalled = loop {
        let delivered = bench.targets.counts().await.a;
        if delivered >= events as u64 {
            break false;
        }
        if delivered > last {
            (last, progress) = (delivered, Instant::now());
        } else if progress.elapsed() >= STALL {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let elapsed = start.elapsed();
    drop(child);
    bench.targets.fail_b(false).await;
    let delivered = bench.targets.counts().await.a.min(events as u64);
    Degraded {
        delivered,
        events_per_sec: delivered as f64 / elapsed.as_secs_f64(),
        stalled,
    }
}

/// (p50, p99) publish-to-delivery latency in ms at [`LATENCY_RATE`] events/s.
async fn latency(bench: &Bench, contender: Contender) -> (f64, f64) {
    let config = bench.fresh_route(contender).await;
    let child = bench.spawn(contender, &config, None);
    // Warm up until the contender delivers, so start-up is not measured.
    bench.publish(100).await;
    bench.wait_both(&child, 100, Duration::from_secs(30)).await;
    bench.targets.reset().await;

    let total = LATENCY_RATE * LATENCY_SECONDS;
    let start = Instant::now();
    let mut acks = Vec::new();
    for i in 0..total {
        // Open-loop pacing: event i leaves at i/rate, however long earlier ones took.
        let due = start + Duration::from_secs_f64(i as f64 / LATENCY_RATE as f64);
        tokio::time::sleep_until(due.into()).await;
        let mut headers = event_headers(i as usize);
        headers.insert("Fanout-Event-Id", format!("lat-{i}").as_str());
        headers.insert(SENT_HEADER, now_us().to_string().as_str());
        let ack = bench
            .js
            .publish_with_headers(subject(), headers, body(i as usize))
            .await
            .unwrap();
        acks.push(ack);
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
        .wait_both(&child, total, Duration::from_secs(120))
        .await;
    let (samples, p50, p99) = bench.targets.latency().await;
    // At least: an event delivered twice counts twice.
    assert!(
        samples >= 2 * total,
        "every delivery carries its publish time"
    );
    (p50, p99)
}

// ---------------------------------------------------------------------------------
// The parent: set up, run each phase for each contender, print the table.

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The Bento the tool cache holds, or an exit with the command that builds it: this
/// bench does not build it itself (a few minutes, outside CI's critical path).
fn bento_binary() -> PathBuf {
    match fanout_testkit::tools::built_path("fanout-bento") {
        Ok(path) => path,
        Err(error) => {
            eprintln!(
                "The peer benchmark needs Bento (fanout-bento) from the tool cache:\n{error:#}\nBuild it with: e2e/tools.sh bento"
            );
            std::process::exit(2);
        }
    }
}

fn parent() {
    // The control client of the targets is reqwest, built without a default crypto
    // provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bento = bento_binary();
    let fanout = fanout_testkit::fanout_release_binary();
    let events = env_number("FANOUT_BENCH_EVENTS", 100_000);
    let rounds = env_number("FANOUT_BENCH_ROUNDS", 3).max(1);
    let tuned = env_number("FANOUT_PEER_BENTO_IN_FLIGHT", 2).max(1);
    let millicores = env_number("FANOUT_PEER_CPU_LIMIT", 500) as u64;
    let contenders = [
        Contender::Fanout,
        Contender::FanoutDefault,
        Contender::BentoFanOut(IN_FLIGHT),
        Contender::BentoFanOut(tuned),
        Contender::BentoPerTarget(tuned),
    ];
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let nats = NatsServer::start().unwrap();
            let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
            let bench = Bench {
                targets: Targets::start(std::env::current_exe().unwrap()),
                nats,
                js,
                bento,
                fanout,
                dir: fanout_testkit::tied::temp_dir("fanout-peer-bench-").unwrap(),
            };
            match std::env::var("FANOUT_PEER_SWEEP") {
                Ok(sweep) => {
                    let settings = sweep.split_whitespace().map(|n| n.parse().unwrap());
                    run_sweep(&bench, settings.collect(), events).await;
                }
                Err(_) => {
                    run(&bench, &contenders, events, rounds).await;
                    if millicores > 0 {
                        let limited = [
                            Contender::Fanout,
                            Contender::FanoutDefault,
                            Contender::BentoFanOut(tuned),
                            Contender::BentoPerTarget(tuned),
                        ];
                        run_limited(&bench, &limited, events, rounds, millicores).await;
                    }
                }
            }
        });
}

/// One throughput round of each Bento configuration at each `max_in_flight`.
async fn run_sweep(bench: &Bench, settings: Vec<usize>, events: usize) {
    let mut rows = Vec::new();
    for in_flight in settings {
        for contender in [
            Contender::BentoFanOut(in_flight),
            Contender::BentoPerTarget(in_flight),
        ] {
            eprintln!(
                "{}: throughput of {events} pre-loaded events ...",
                contender.name()
            );
            rows.push((contender, throughput(bench, contender, events, None).await));
        }
    }
    println!();
    println!(
        "| contender | events/s to both | CPU s / 1000 events | of it user space | peak RSS MiB | connections opened |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (contender, t) in rows {
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.1} | {} |",
            contender.name(),
            t.events_per_sec,
            t.cpu_per_1000,
            t.user_cpu_per_1000,
            t.peak_rss_mib,
            t.connections
        );
    }
}

/// `rounds` throughput rounds of every contender in turn, within `limit` if there is
/// one, so that a slow stretch of the machine hits all of them: each one's rounds.
async fn rounds_of(
    bench: &Bench,
    contenders: &[Contender],
    events: usize,
    rounds: usize,
    limit: Option<&CpuLimit>,
) -> Vec<Vec<Throughput>> {
    let within = limit.map_or(String::new(), |l| {
        format!(" within a CPU limit of {}m", l.millicores())
    });
    let mut rates: Vec<Vec<Throughput>> = vec![Vec::new(); contenders.len()];
    for round in 1..=rounds {
        for (i, contender) in contenders.iter().enumerate() {
            eprintln!(
                "{}: throughput of {events} pre-loaded events{within}, round {round}/{rounds} ...",
                contender.name()
            );
            let t = throughput(bench, *contender, events, limit).await;
            eprintln!(
                "  {:.0} events/s on {:.2} cores",
                t.events_per_sec,
                t.cores()
            );
            rates[i].push(t);
        }
    }
    rates
}

/// Each round's events/s, comma-separated.
fn by_round(rounds: &[Throughput]) -> String {
    let each: Vec<String> = rounds
        .iter()
        .map(|t| format!("{:.0}", t.events_per_sec))
        .collect();
    each.join(", ")
}

/// The Bento among `contenders` with the highest median rate.
fn fastest_bento(contenders: &[Contender], medians: &[Throughput]) -> usize {
    (0..contenders.len())
        .filter(|&i| contenders[i].is_bento())
        .max_by(|&i, &j| {
            medians[i]
                .events_per_sec
                .total_cmp(&medians[j].events_per_sec)
        })
        .expect("a Bento among the contenders")
}

async fn run(bench: &Bench, contenders: &[Contender], events: usize, rounds: usize) {
    let rates = rounds_of(bench, contenders, events, rounds, None).await;
    let medians: Vec<Throughput> = rates.iter().map(|r| median(r)).collect();
    let mut degraded = Vec::new();
    for contender in contenders {
        eprintln!(
            "{}: healthy target while the other answers 503 ...",
            contender.name()
        );
        degraded.push(with_failing_peer(bench, *contender, events).await);
    }
    // Latency for Fanout and the fastest Bento.
    let best_bento = fastest_bento(contenders, &medians);
    let mut latencies = vec![None; contenders.len()];
    let measured = (0..contenders.len()).filter(|&i| !contenders[i].is_bento() || i == best_bento);
    for i in measured {
        eprintln!("{}: latency at {LATENCY_RATE}/s ...", contenders[i].name());
        latencies[i] = Some(latency(bench, contenders[i]).await);
    }

    println!();
    for (contender, rounds) in contenders.iter().zip(&rates) {
        println!(
            "{} events/s by round: {}",
            contender.name(),
            by_round(rounds)
        );
    }
    println!();
    println!(
        "Peer benchmark: {events} events of {BODY_BYTES} B, 2 loopback targets, {} cores; throughput is the median of {rounds} alternating rounds",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| contender | events/s to both (rounds) | Fanout's rate against it | CPU s / 1000 events | of it user space | peak RSS MiB | targets' CPU s / 1000 events | nats-server CPU s / 1000 events | connections opened | healthy target events/s, peer 503 | vs own healthy run | p50 / p99 ms @ {LATENCY_RATE}/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let fanout = medians[0];
    for (i, contender) in contenders.iter().enumerate() {
        let t = medians[i];
        let d = degraded[i];
        let healthy = if d.stalled {
            format!("{:.0} (stalled after {})", d.events_per_sec, d.delivered)
        } else {
            format!("{:.0}", d.events_per_sec)
        };
        let latency = latencies[i].map_or("-".into(), |(p50, p99)| format!("{p50:.2} / {p99:.2}"));
        println!(
            "| {} | {:.0} ({}) | {:.2}x | {:.3} | {:.3} | {:.1} | {:.3} | {:.3} | {} | {} | {:.0}% | {} |",
            contender.name(),
            t.events_per_sec,
            by_round(&rates[i]),
            fanout.events_per_sec / t.events_per_sec,
            t.cpu_per_1000,
            t.user_cpu_per_1000,
            t.peak_rss_mib,
            t.targets_cpu_per_1000,
            t.nats_cpu_per_1000,
            t.connections,
            healthy,
            100.0 * d.events_per_sec / t.events_per_sec,
            latency,
        );
    }

    let best = medians[best_bento];
    let verdict = |met: bool| if met { "met" } else { "missed" };
    let (speed, cpu) = (
        fanout.events_per_sec / best.events_per_sec,
        fanout.cpu_per_1000 / best.cpu_per_1000,
    );
    let isolation = degraded[0].events_per_sec / fanout.events_per_sec;
    println!();
    println!(
        "Against the goals of issue 21 (the fastest Bento: {}):",
        contenders[best_bento].name()
    );
    println!(
        "- at least 4x its events/s: {speed:.2}x, {}",
        verdict(speed >= 4.0)
    );
    println!(
        "- at most a quarter of its CPU per event: {:.0}% ({:.3} against {:.3} CPU s / 1000 events), {}",
        100.0 * cpu,
        fanout.cpu_per_1000,
        best.cpu_per_1000,
        verdict(cpu <= 0.25)
    );
    println!(
        "  in user space: {:.0}% ({:.3} against {:.3})",
        100.0 * fanout.user_cpu_per_1000 / best.user_cpu_per_1000,
        fanout.user_cpu_per_1000,
        best.user_cpu_per_1000,
    );
    println!(
        "- the healthy target keeps at least 90% of its rate while the other fails: {:.0}%, {}",
        100.0 * isolation,
        verdict(isolation >= 0.9)
    );
    if let Some(i) = contenders
        .iter()
        .position(|c| *c == Contender::FanoutDefault)
    {
        let t = medians[i];
        println!(
            "{}: {:.2}x its events/s; {:.0}% of its CPU per event, {:.0}% in user space",
            contenders[i].name(),
            t.events_per_sec / best.events_per_sec,
            100.0 * t.cpu_per_1000 / best.cpu_per_1000,
            100.0 * t.user_cpu_per_1000 / best.user_cpu_per_1000,
        );
    }
}

/// Each contender's rate within the same CPU limit, in alternating rounds; the
/// first contender is Fanout, the one the others are compared with.
async fn run_limited(
    bench: &Bench,
    contenders: &[Contender],
    events: usize,
    rounds: usize,
    millicores: u64,
) {
    let limit = match CpuLimit::new("fanout-peer-bench", millicores) {
        Ok(limit) => limit,
        Err(error) => {
            println!();
            println!("At the same CPU limit: skipped, no cgroup for it: {error:#}");
            return;
        }
    };
    let rates = rounds_of(bench, contenders, events, rounds, Some(&limit)).await;
    let medians: Vec<Throughput> = rates.iter().map(|r| median(r)).collect();
    println!();
    println!(
        "At the same CPU limit: each contender in a cgroup with a CFS quota of {millicores}m (what `resources.limits.cpu: {millicores}m` sets), median of {rounds} alternating rounds; the targets and nats-server unlimited"
    );
    println!();
    println!(
        "| contender | events/s to both (rounds) | Fanout's rate against it | cores used | busy periods throttled | CPU s / 1000 events | targets' and nats-server's cores |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let fanout = medians[0];
    for (i, contender) in contenders.iter().enumerate() {
        let t = medians[i];
        println!(
            "| {} | {:.0} ({}) | {:.2}x | {:.2} | {:.0}% | {:.3} | {:.2} |",
            contender.name(),
            t.events_per_sec,
            by_round(&rates[i]),
            fanout.events_per_sec / t.events_per_sec,
            t.cores(),
            100.0 * t.throttled.unwrap_or_default(),
            t.cpu_per_1000,
            t.others_cores(),
        );
    }
    let best_bento = fastest_bento(contenders, &medians);
    let best = medians[best_bento];
    // Each round's Fanout over the same round's fastest Bento: the rounds alternate,
    // so a slow stretch of the machine hits both.
    let ratios: Vec<f64> = (0..rounds)
        .map(|r| rates[0][r].events_per_sec / rates[best_bento][r].events_per_sec)
        .collect();
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let speed = fanout.events_per_sec / best.events_per_sec;
    let each: Vec<String> = ratios.iter().map(|x| format!("{x:.2}x")).collect();
    println!();
    println!(
        "- at least 4x the fastest Bento's events/s ({}) within the same CPU limit: {speed:.2}x (rounds {}), {}",
        contenders[best_bento].name(),
        each.join(", "),
        if lowest >= 4.0 {
            "met in every round"
        } else if speed >= 4.0 {
            "met by the median"
        } else {
            "missed"
        }
    );
    if let Some(i) = contenders
        .iter()
        .position(|c| *c == Contender::FanoutDefault)
    {
        println!(
            "{}: {:.2}x its events/s within the limit",
            contenders[i].name(),
            medians[i].events_per_sec / best.events_per_sec
        );
    }
}
