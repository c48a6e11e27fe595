//! Delivery benchmark: the engine against a naive fan-out, side by side in one run.
//!
//!     cargo bench -p fanout-dispatcher --bench dispatch
//!
//! Events are pre-loaded into a real JetStream stream and delivered to two loopback
//! HTTP targets. The engine (the release `fanout dispatch` binary) and the baseline
//! (`naive-fanout` of `fanout-baselines`: built like `fanout`, with mimalloc and a
//! thread with a single-threaded runtime per target) each run as a child process, so
//! CPU time and peak RSS are theirs alone.
//! Phases: throughput from a full stream; latency from publish to delivery at a fixed
//! offered rate; throughput of the healthy target while the other answers 503.
//! The engine runs as configured by default (every attempt recorded in the route's
//! delivery history) and in variants, each printed beside it from the same rounds:
//! with the history off (what recording costs); with a CEL filter and transform on
//! both targets (every event passes the filter, so both deliver the same count); with
//! per-key ordering on both targets (events of 1000 keys, interleaved); and with
//! adaptive concurrency on both ApiTargets.
//! The throughput phase runs `FANOUT_BENCH_ROUNDS` times (default 3), alternating
//! baseline and engine so that a slow stretch of the machine hits both, and the
//! table gives each contender's median round (every round is printed too).
//! `FANOUT_BENCH_EVENTS` sets the pre-loaded count (default 100000).
//! `FANOUT_BENCH_SHORT=1` prints the same table in a minute or two (30000 events, two
//! rounds, 2 s of latency), to run before every change to the delivery path. For
//! experiments: `FANOUT_BENCH_LATENCY_ONLY=1` runs only the latency phase, and
//! `FANOUT_BENCH_NO_LIMIT=1` leaves the rate limiter out of the targets, and
//! `FANOUT_BENCH_ONLY=ordering,cel` measures only the baseline, the engine and the
//! variants named (`no-history`, `cel`, `ordering`, `adaptive`; none: those two only).
//! `FANOUT_BENCH_COMPARE=<another fanout binary>` adds that build's engine beside this
//! one's in every round, and prints this build's CPU per event over its, by round: a
//! change's after against its before under the same conditions.
//! Before the rounds, `FANOUT_BENCH_GOAL_PAIRS` times (default 5, 2 in the short form,
//! 0 for none), the engine and the baseline run at the same time, each on a route and
//! targets of its own: the baseline's CPU per event over the engine's over the same
//! seconds, the throughput goal (1.6x) as this machine can judge it.
//! After the table, the same goal by rate where this machine can judge it: the engine
//! and the baseline at the same time, each on a route and targets of its own and each
//! within the same CPU limit, as a Kubernetes CPU limit enforces it (a cgroup with a
//! CFS quota; `FANOUT_BENCH_CPU_LIMIT` millicores, default 400, none in the short form;
//! needs root), as many runs as the goal's pairs.
//! `FANOUT_BENCH_PAIRED=<runs>` (with `FANOUT_BENCH_COMPARE`) first runs both engines
//! at the same time, each on a route and targets of its own, `runs` times, and prints
//! their CPU per event over the same seconds: phases one after another drift by more
//! than most changes move.

#[path = "shared/events.rs"]
mod events;
#[path = "shared/expressions.rs"]
mod expressions;

use events::{BODY_BYTES, body};
use expressions::{CEL_BODY, CEL_FILTER, CEL_HEADER};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use bytes::Bytes;
use fanout_api::manifests::Manifests;
use fanout_provision::Provisioner;
use fanout_testkit::cpu_limit::CpuLimit;
use fanout_testkit::nats::NatsServer;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const SENT_HEADER: &str = "X-Bench-Sent";
/// The route of every phase, and the second route of a paired run.
const ROUTE: &str = "bench";
const PAIRED_ROUTE: &str = "pair";
/// The ordering key of each event (used when ordering is on): one of [`KEYS`].
const KEY_HEADER: &str = "X-Bench-Key";
const KEYS: usize = 1000;
/// Concurrent deliveries per target, for both engine and baseline:
/// `FANOUT_BENCH_IN_FLIGHT`, 256 unless set (the product's default `maxInFlight` is 64).
fn in_flight() -> usize {
    static IN_FLIGHT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *IN_FLIGHT.get_or_init(|| {
        std::env::var("FANOUT_BENCH_IN_FLIGHT")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(256)
    })
}

fn main() {
    // `cargo bench` passes --bench; nothing else is read from the command line.
    parent();
}

/// The parent's own runtime: the targets and the publisher. Its CPU is not measured.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
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

/// Event `i`'s headers (see [`events::event_headers`]) with its ordering key.
fn event_headers(i: usize) -> async_nats::HeaderMap {
    let mut headers = events::event_headers(i);
    headers.insert(KEY_HEADER, format!("key-{}", i % KEYS).as_str());
    headers
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
    /// `naive-fanout`: mimalloc, a thread and runtime per target, like the engine.
    Baseline,
    /// `fanout dispatch` with `spec.history.enabled: false`.
    EngineNoHistory,
    /// `fanout dispatch` as configured by default: the delivery history on.
    Engine,
    /// The engine with a CEL filter and transform on each target.
    EngineCel,
    /// The engine with `ordering: {key: {header: X-Bench-Key}}` on both targets.
    EngineOrdered,
    /// The engine with `concurrency: {adaptive: true}` on both ApiTargets.
    EngineAdaptive,
    /// The engine of another `fanout` build (`FANOUT_BENCH_COMPARE`), as configured
    /// by default: a change's before beside its after, in the same rounds.
    EngineCompare,
}

const CONTENDERS: [Contender; 6] = [
    Contender::Baseline,
    Contender::Engine,
    Contender::EngineNoHistory,
    Contender::EngineCel,
    Contender::EngineOrdered,
    Contender::EngineAdaptive,
];

/// The contenders this run measures: all of them, or the baseline, the engine and
/// those named in `FANOUT_BENCH_ONLY` (comma-separated short names, e.g.
/// `ordering,cel`), for a quicker look at one feature or a profile of it.
fn contenders() -> Vec<Contender> {
    let Ok(only) = std::env::var("FANOUT_BENCH_ONLY") else {
        return CONTENDERS.to_vec();
    };
    let named: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let known: Vec<&str> = CONTENDERS.iter().map(|c| c.short()).collect();
    if let Some(unknown) = named.iter().find(|n| !known.contains(n)) {
        panic!(
            "FANOUT_BENCH_ONLY: unknown contender {unknown:?}; known: {}",
            known.join(", ")
        );
    }
    CONTENDERS
        .into_iter()
        .filter(|c| {
            matches!(c, Contender::Baseline | Contender::Engine) || named.contains(&c.short())
        })
        .collect()
}

/// [`contenders`], and the other build's engine right after this one's when
/// `FANOUT_BENCH_COMPARE` names a `fanout` binary.
fn contenders_with_compare() -> Vec<Contender> {
    let mut all = contenders();
    if compare_binary().is_some() {
        let engine = all.iter().position(|c| *c == Contender::Engine).unwrap();
        all.insert(engine + 1, Contender::EngineCompare);
    }
    all
}

/// `FANOUT_BENCH_COMPARE`: another build's `fanout` binary.
fn compare_binary() -> Option<&'static Path> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| std::env::var_os("FANOUT_BENCH_COMPARE").map(PathBuf::from))
        .as_deref()
}

impl Contender {
    /// Its binary: built on first use (cargo, seconds on a fresh checkout), so a
    /// measurement that starts two contenders resolves both first.
    fn binary(self) -> &'static Path {
        match self {
            Contender::Baseline => naive_fanout_binary(),
            Contender::EngineCompare => {
                compare_binary().expect("FANOUT_BENCH_COMPARE names the other build")
            }
            _ => fanout_binary(),
        }
    }

    /// The short name `FANOUT_BENCH_ONLY` takes.
    fn short(self) -> &'static str {
        match self {
            Contender::Baseline => "baseline",
            Contender::Engine => "engine",
            Contender::EngineNoHistory => "no-history",
            Contender::EngineCel => "cel",
            Contender::EngineOrdered => "ordering",
            Contender::EngineAdaptive => "adaptive",
            Contender::EngineCompare => "compare",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Contender::Baseline => "baseline (naive reqwest fan-out)",
            Contender::Engine => "engine (fanout dispatch)",
            Contender::EngineNoHistory => "engine, history off",
            Contender::EngineCel => "engine + CEL filter and transform",
            Contender::EngineOrdered => "engine + per-key ordering (1000 keys)",
            Contender::EngineAdaptive => "engine + adaptive concurrency",
            Contender::EngineCompare => "engine of FANOUT_BENCH_COMPARE",
        }
    }
}

struct Child {
    process: std::process::Child,
}

/// The release `fanout` binary, built on first use.
fn fanout_binary() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(fanout_testkit::fanout_release_binary)
}

/// The baseline's binary, built on first use.
fn naive_fanout_binary() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fanout_testkit::release_binary("fanout-baselines", "naive-fanout"))
}

impl Child {
    fn spawn(contender: Contender, config: &Path, nats_url: &str) -> Child {
        Self::spawn_on(contender, config, nats_url, 0, None)
    }

    /// With the engine's /metrics on `metrics_port` (0: any), inside `limit`'s cgroup
    /// if there is one.
    fn spawn_on(
        contender: Contender,
        config: &Path,
        nats_url: &str,
        metrics_port: u16,
        limit: Option<&CpuLimit>,
    ) -> Child {
        let listen = format!("127.0.0.1:{metrics_port}");
        let mut command = std::process::Command::new(contender.binary());
        match contender {
            Contender::Baseline => {
                command.arg("--config").arg(config).args([
                    "--nats-url",
                    nats_url,
                    "--in-flight",
                    &in_flight().to_string(),
                    "--forward-header",
                    SENT_HEADER,
                ]);
            }
            Contender::Engine
            | Contender::EngineNoHistory
            | Contender::EngineCel
            | Contender::EngineOrdered
            | Contender::EngineAdaptive
            | Contender::EngineCompare => {
                command.arg("dispatch").arg("--config").arg(config).args([
                    "--nats-url",
                    nats_url,
                    "--listen",
                    &listen,
                    "--pod-name",
                    "bench",
                    // The bench's targets are on loopback.
                    "--egress-allow",
                    "127.0.0.0/8",
                ]);
            }
        }
        command.env("FANOUT_LOG", "warn");
        if let Some(limit) = limit {
            command = limit.wrap(&command);
        }
        command.stdout(std::process::Stdio::null());
        let process = fanout_testkit::tied::spawn(command).unwrap();
        Child { process }
    }

    /// (CPU seconds used so far, of them in user space, peak RSS in MiB).
    fn usage(&self) -> (f64, f64, f64) {
        let pid = self.process.id();
        let (user, system) = fanout_testkit::process::user_and_system_cpu(pid);
        (
            user + system,
            user,
            fanout_testkit::process::peak_rss_mib(pid),
        )
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
        self.fresh_route_named(contender, ROUTE, &self.a, &self.b)
            .await
    }

    /// The same for route `route`, delivering to `a` and `b`.
    async fn fresh_route_named(
        &self,
        contender: Contender,
        route: &str,
        a: &Target,
        b: &Target,
    ) -> PathBuf {
        let history = if contender == Contender::EngineNoHistory {
            "  history: {enabled: false}\n"
        } else {
            ""
        };
        let expressions = if contender == Contender::EngineCel {
            format!(
                "      filter: {{cel: '{CEL_FILTER}'}}\n      transform:\n        body: '{CEL_BODY}'\n        headers: {{X-Order-Total: '{CEL_HEADER}'}}\n"
            )
        } else {
            String::new()
        };
        let ordering = match contender {
            Contender::EngineOrdered => {
                format!("      ordering: {{key: {{header: {KEY_HEADER}}}}}\n")
            }
            _ => String::new(),
        };
        let adaptive = match contender {
            Contender::EngineAdaptive => "  concurrency: {adaptive: true}\n",
            _ => "",
        };
        let in_flight = in_flight();
        let manifests = format!(
            "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: a}}
spec:
  url: {a}
  maxInFlight: {in_flight}
{limit}
{adaptive}---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: b}}
spec:
  url: {b}
  maxInFlight: {in_flight}
{limit}
{adaptive}---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: {route}}}
spec:
  targets:
    - name: a
      apiTargetRef: {{name: a}}
{expressions}{ordering}    - name: b
      apiTargetRef: {{name: b}}
{expressions}{ordering}{history}",
            a = a.url(),
            b = b.url(),
            limit = if std::env::var_os("FANOUT_BENCH_NO_LIMIT").is_some() {
                ""
            } else {
                "  rateLimit: {requestsPerSecond: 1000000, burst: 100000}"
            },
        );
        let rendered = Manifests::parse(&manifests, "bench")
            .unwrap()
            .render(self.dir.path())
            .unwrap()
            .remove(0);
        let provisioner = Provisioner::new(self.js.clone());
        let mut names = vec![rendered.streams.stream.name.clone()];
        names.extend(rendered.streams.dead_letter.iter().map(|s| s.name.clone()));
        names.push(fanout_config::names::RouteKey::new("bench", route).attempts_stream());
        provisioner.delete(&names).await.unwrap();
        provisioner.apply(&rendered.streams).await.unwrap();
        let path = self.dir.path().join(format!("{route}.yaml"));
        std::fs::write(&path, serde_yaml_ng::to_string(&rendered.config).unwrap()).unwrap();
        a.reset();
        b.reset();
        path
    }

    async fn publish(&self, count: usize, stamped: bool) {
        self.publish_to(ROUTE, count, stamped).await
    }

    async fn publish_to(&self, route: &str, count: usize, stamped: bool) {
        let subject = format!("fanout.in.bench.{route}.event");
        let mut acks = Vec::with_capacity(1000);
        for i in 0..count {
            let mut headers = event_headers(i);
            if stamped {
                headers.insert(SENT_HEADER, now_us().to_string().as_str());
            }
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers, body(i))
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
    /// Of it, in user space: without the loopback TCP stack, which every contender
    /// pays alike, what the contender's own design costs.
    user_cpu_per_1000: f64,
    peak_rss_mib: f64,
    /// History records the engine did not store (its metric), when it records.
    history_dropped: Option<f64>,
}

async fn throughput(bench: &Bench, contender: Contender, events: usize) -> Throughput {
    let config = bench.fresh_route(contender).await;
    bench.publish(events, false).await;
    let metrics_port = fanout_testkit::free_port();
    let child = Child::spawn_on(contender, &config, &bench.nats.url(), metrics_port, None);
    let start = Instant::now();
    let limit = Duration::from_secs(300);
    bench.wait_delivered(&bench.a, events as u64, limit).await;
    bench.wait_delivered(&bench.b, events as u64, limit).await;
    let elapsed = start.elapsed();
    let (cpu, user_cpu, rss) = child.usage();
    let history_dropped = if contender == Contender::Engine {
        history_dropped(metrics_port).await
    } else {
        None
    };
    drop(child);
    Throughput {
        events_per_sec: events as f64 / elapsed.as_secs_f64(),
        cpu_per_1000: cpu / (events as f64 / 1000.0),
        user_cpu_per_1000: user_cpu / (events as f64 / 1000.0),
        peak_rss_mib: rss,
        history_dropped,
    }
}

/// When one engine of a pair had delivered everything, and its [`Child::usage`] then.
type Finished = (Duration, (f64, f64, f64));

/// Two contenders at the same time, each on a route of its own with two targets of its
/// own and `events` pre-loaded events, `runs` times (which one starts first
/// alternates): this build's engine and `other` (`FANOUT_BENCH_PAIRED`: the build of
/// `FANOUT_BENCH_COMPARE`; the goal's pairs: the baseline). Each one's CPU per event is
/// read when its targets have every event, so both are measured over nearly the same
/// seconds: the machine's drift between phases, larger here than most changes, hits
/// both alike. With `limits`, each runs within its own CPU limit (this build's engine
/// the first).
async fn paired(
    bench: &Bench,
    other: Contender,
    (a2, b2): (&Target, &Target),
    events: usize,
    runs: usize,
    limits: Option<[&CpuLimit; 2]>,
) -> Pairs {
    let mut pairs = Pairs::default();
    let [this_limit, other_limit] = limits.map_or([None, None], |[t, o]| [Some(t), Some(o)]);
    for run in 1..=runs {
        let this_config = bench
            .fresh_route_named(Contender::Engine, ROUTE, &bench.a, &bench.b)
            .await;
        let other_config = bench.fresh_route_named(other, PAIRED_ROUTE, a2, b2).await;
        bench.publish_to(ROUTE, events, false).await;
        bench.publish_to(PAIRED_ROUTE, events, false).await;
        let url = bench.nats.url();
        // Both binaries at hand before the clock starts: building one on first use
        // while the other ran alone would make the pair two separate runs.
        Contender::Engine.binary();
        other.binary();
        let idle_before = fanout_testkit::process::machine_idle_and_total();
        let start = Instant::now();
        let spawn_this = || Child::spawn_on(Contender::Engine, &this_config, &url, 0, this_limit);
        let spawn_other = || Child::spawn_on(other, &other_config, &url, 0, other_limit);
        let (this, that) = if run % 2 == 1 {
            let this = spawn_this();
            (this, spawn_other())
        } else {
            let that = spawn_other();
            (spawn_this(), that)
        };
        let contenders = [(&this, &*bench.a, &*bench.b), (&that, a2, b2)];
        let mut done: [Option<Finished>; 2] = [None, None];
        while done.iter().any(Option::is_none) {
            for (slot, (child, a, b)) in done.iter_mut().zip(contenders) {
                let all_in = |t: &Target| t.delivered.load(Ordering::Relaxed) >= events as u64;
                if slot.is_none() && all_in(a) && all_in(b) {
                    *slot = Some((start.elapsed(), child.usage()));
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "paired run {run} stalled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let [Some((this_time, this_use)), Some((that_time, that_use))] = done else {
            unreachable!("both finished")
        };
        let idle = fanout_testkit::process::idle_share_since(idle_before);
        let per_1000 = events as f64 / 1000.0;
        let ratio = this_use.0 / that_use.0;
        let user_ratio = this_use.1 / that_use.1;
        let (this_rate, that_rate) = (
            events as f64 / this_time.as_secs_f64(),
            events as f64 / that_time.as_secs_f64(),
        );
        eprintln!(
            "paired run {run}: this build's engine {this_rate:.0} events/s at {:.3} CPU s / 1000 events, {} {that_rate:.0} events/s at {:.3}: this/other {ratio:.3} (user space {user_ratio:.3}); the machine idle {:.0}% of the time",
            this_use.0 / per_1000,
            other.name(),
            that_use.0 / per_1000,
            100.0 * idle,
        );
        pairs.all.push(ratio);
        pairs.user.push(user_ratio);
        pairs.rates.push(this_rate / that_rate);
        pairs.idle.push(idle);
    }
    pairs
}

/// This build's engine's CPU per event over the other contender's, by paired run: all
/// of it and its user-space part.
#[derive(Default)]
struct Pairs {
    all: Vec<f64>,
    user: Vec<f64>,
    /// This build's engine's events/s over the other's.
    rates: Vec<f64>,
    /// The share of the machine's CPU time left idle while the pair ran.
    idle: Vec<f64>,
}

impl Pairs {
    /// (median, lowest, highest) of `ratios`, each turned by `f` first.
    fn spread(ratios: &[f64], f: impl Fn(f64) -> f64) -> (f64, f64, f64) {
        let mut v: Vec<f64> = ratios.iter().map(|&r| f(r)).collect();
        v.sort_by(f64::total_cmp);
        (v[(v.len() - 1) / 2], v[0], v[v.len() - 1])
    }
}

/// The sum of `fanout_history_dropped_records_total` on the engine's /metrics.
async fn history_dropped(port: u16) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("fanout_history_dropped_records_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// (messages, bytes) of the route's history stream.
async fn history_stream(bench: &Bench) -> Option<(u64, u64)> {
    let name = fanout_config::names::RouteKey::new("bench", "bench").attempts_stream();
    let mut stream = bench.js.get_stream(name).await.ok()?;
    let info = stream.info().await.ok()?;
    Some((info.state.messages, info.state.bytes))
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
    let mut acks = Vec::new();
    for i in 0..total {
        // Open-loop pacing: event i leaves at i/rate, however long earlier ones took.
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let mut headers = event_headers(i as usize);
        headers.insert("Fanout-Event-Id", format!("lat-{i}").as_str());
        headers.insert(SENT_HEADER, now_us().to_string().as_str());
        acks.push(
            bench
                .js
                .publish_with_headers("fanout.in.bench.bench.event", headers, body(i as usize))
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

/// How long the bench runs: the full form, or `FANOUT_BENCH_SHORT=1`'s (the same
/// table in a minute or two, to run before every change to the delivery path).
/// `FANOUT_BENCH_EVENTS` and `FANOUT_BENCH_ROUNDS` override either.
struct Settings {
    events: usize,
    rounds: usize,
    latency_seconds: u64,
    /// Runs of the engine and the baseline at the same time ([`paired`]).
    goal_pairs: usize,
    /// The CPU limit of [`within_cpu_limit`], in millicores (0: not run).
    cpu_limit: u64,
    short: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let short = std::env::var_os("FANOUT_BENCH_SHORT").is_some_and(|v| v != "0");
        let number = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Settings {
            events: number("FANOUT_BENCH_EVENTS", if short { 30_000 } else { 100_000 }),
            rounds: number("FANOUT_BENCH_ROUNDS", if short { 2 } else { 3 }).max(1),
            latency_seconds: if short { 2 } else { 5 },
            goal_pairs: number("FANOUT_BENCH_GOAL_PAIRS", if short { 2 } else { 5 }),
            cpu_limit: number("FANOUT_BENCH_CPU_LIMIT", if short { 0 } else { 400 }) as u64,
            short,
        }
    }
}

/// `value (round 1, round 2, ...)`.
fn with_rounds(value: String, rounds: impl Iterator<Item = String>) -> String {
    format!("{value} ({})", rounds.collect::<Vec<_>>().join(", "))
}

fn parent() {
    // The parent reads the engine's /metrics with reqwest, built without a default
    // crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings::from_env();
    let (events, rounds, latency_seconds) =
        (settings.events, settings.rounds, settings.latency_seconds);
    let rate = 5_000;
    runtime().block_on(async move {
        let nats = NatsServer::start().unwrap();
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let bench = Bench {
            a: Target::start().await,
            b: Target::start().await,
            nats,
            js,
            dir: fanout_testkit::tied::temp_dir("fanout-dispatch-bench-").unwrap(),
        };
        let paired_runs: usize = std::env::var("FANOUT_BENCH_PAIRED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (a2, b2) = (Target::start().await, Target::start().await);
        if paired_runs > 0 {
            let other = compare_binary().expect("FANOUT_BENCH_PAIRED needs FANOUT_BENCH_COMPARE");
            let pairs = paired(&bench, Contender::EngineCompare, (&a2, &b2), events, paired_runs, None).await;
            let (m, lo, hi) = Pairs::spread(&pairs.all, |r| r);
            let (um, ulo, uhi) = Pairs::spread(&pairs.user, |r| r);
            println!(
                "Paired, {paired_runs} runs of {events} events each: this build's engine over {}'s, CPU per event: median {m:.3} (lowest {lo:.3}, highest {hi:.3}); in user space {um:.3} ({ulo:.3}-{uhi:.3})",
                other.display()
            );
        }
        // The throughput goal by CPU: the engine and the baseline loaded together.
        let goal_pairs = if settings.goal_pairs > 0 {
            eprintln!("the engine and the baseline at the same time, {} runs ...", settings.goal_pairs);
            Some(paired(&bench, Contender::Baseline, (&a2, &b2), events, settings.goal_pairs, None).await)
        } else {
            None
        };
        let contenders = contenders_with_compare();
        let mut results = Vec::new();
        if std::env::var_os("FANOUT_BENCH_LATENCY_ONLY").is_some() {
            for &contender in &contenders {
                let (p50, p99) = latency(&bench, contender, rate, latency_seconds).await;
                println!("{}: p50 {p50:.2} ms p99 {p99:.2} ms", contender.name());
            }
            return;
        }
        let mut rates: Vec<Vec<Throughput>> = vec![Vec::new(); contenders.len()];
        let mut history = None;
        for round in 1..=rounds {
            for (i, &contender) in contenders.iter().enumerate() {
                eprintln!("{}: throughput of {events} pre-loaded events, round {round}/{rounds} ...", contender.name());
                rates[i].push(throughput(&bench, contender, events).await);
                if contender == Contender::Engine {
                    history = history_stream(&bench).await;
                }
            }
        }
        for (i, &contender) in contenders.iter().enumerate() {
            eprintln!("{}: latency at {rate}/s ...", contender.name());
            let (p50, p99) = latency(&bench, contender, rate, latency_seconds).await;
            eprintln!("{}: healthy target while the other answers 503 ...", contender.name());
            let degraded = throughput_with_failing_peer(&bench, contender, events).await;
            results.push((contender, median(&rates[i]), p50, p99, degraded));
        }
        let baseline = contenders.iter().position(|c| *c == Contender::Baseline).unwrap();
        let engine = contenders.iter().position(|c| *c == Contender::Engine).unwrap();
        // Against the baseline's and the engine's own round: the same stretch of the
        // machine.
        let by_round = |i: usize, against: usize| -> Vec<f64> {
            rates[i]
                .iter()
                .zip(&rates[against])
                .map(|(v, a)| v.events_per_sec / a.events_per_sec)
                .collect()
        };
        println!();
        println!(
            "Delivery benchmark{}: {events} events of {BODY_BYTES} B, 2 loopback targets, {} in flight per target, {} cores; throughput is the median of {rounds} alternating rounds (each round in parentheses)",
            if settings.short { " (short form)" } else { "" },
            in_flight(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!();
        println!("| contender | events/s to both (rounds) | vs baseline (rounds) | vs engine (rounds) | CPU s / 1000 events | of it user space | peak RSS MiB | p50 ms @ {rate}/s | p99 ms @ {rate}/s | healthy target events/s, peer 503 | vs own healthy run |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let (baseline_rate, engine_rate) = (
            results[baseline].1.events_per_sec,
            results[engine].1.events_per_sec,
        );
        for (i, (contender, t, p50, p99, degraded)) in results.iter().enumerate() {
            let rate_cell = with_rounds(
                format!("{:.0}", t.events_per_sec),
                rates[i].iter().map(|r| format!("{:.0}", r.events_per_sec)),
            );
            let vs_baseline = format!("{:.2}x", t.events_per_sec / baseline_rate);
            let vs_baseline = if i == baseline {
                vs_baseline
            } else {
                with_rounds(vs_baseline, by_round(i, baseline).into_iter().map(|x| format!("{x:.2}x")))
            };
            let vs_engine = format!("{:.0}%", 100.0 * t.events_per_sec / engine_rate);
            let vs_engine = if i == engine {
                vs_engine
            } else {
                with_rounds(vs_engine, by_round(i, engine).into_iter().map(|x| format!("{:.0}%", 100.0 * x)))
            };
            println!(
                "| {} | {rate_cell} | {vs_baseline} | {vs_engine} | {:.3} | {:.3} | {:.1} | {:.2} | {:.2} | {:.0} | {:.0}% |",
                contender.name(),
                t.cpu_per_1000,
                t.user_cpu_per_1000,
                t.peak_rss_mib,
                p50,
                p99,
                degraded,
                100.0 * degraded / t.events_per_sec
            );
        }
        // The goal of issues 4 and 21: the engine at least 1.6x the baseline in every
        // round, not only by the median.
        println!();
        for contender in [Contender::Engine, Contender::EngineNoHistory] {
            let Some(i) = contenders.iter().position(|c| *c == contender) else {
                continue;
            };
            let lowest = by_round(i, baseline).into_iter().fold(f64::INFINITY, f64::min);
            println!(
                "{} vs baseline, lowest round: {lowest:.2}x; at least 1.6x in every round: {}",
                contender.name(),
                if lowest >= 1.6 { "met" } else { "MISSED" }
            );
        }
        // What the design decides: the kernel's part of each contender's CPU (the
        // loopback TCP stack, about a third) is paid alike.
        let (b, e) = (
            results[baseline].1.user_cpu_per_1000,
            results[engine].1.user_cpu_per_1000,
        );
        println!(
            "User-space CPU s / 1000 events: baseline {b:.4}, engine {e:.4}; the baseline needs {:.2}x the engine's",
            b / e
        );
        // The same goal as this machine can judge it: the CPU per event of each, over
        // the same seconds, which is what sets the rate where the targets and NATS
        // do not share the contenders' cores.
        if let Some(pairs) = &goal_pairs {
            let (m, lo, hi) = Pairs::spread(&pairs.all, |r| 1.0 / r);
            let (um, ulo, uhi) = Pairs::spread(&pairs.user, |r| 1.0 / r);
            println!(
                "The engine and the baseline at the same time, {} runs of {events} events each: the baseline needs {m:.2}x the engine's CPU per event (lowest {lo:.2}x, highest {hi:.2}x), {um:.2}x in user space ({ulo:.2}x-{uhi:.2}x); at least 1.6x: {}",
                pairs.all.len(),
                if m >= 1.6 { "met" } else { "MISSED" }
            );
        }
        // A change's after (this build) against its before, round by round: the same
        // stretch of the machine for both.
        if let Some(other) = contenders.iter().position(|c| *c == Contender::EngineCompare) {
            let ratios = |cpu: fn(&Throughput) -> f64| -> (f64, Vec<String>) {
                let by_round: Vec<f64> = rates[engine]
                    .iter()
                    .zip(&rates[other])
                    .map(|(this, before)| cpu(this) / cpu(before))
                    .collect();
                let mut sorted = by_round.clone();
                sorted.sort_by(f64::total_cmp);
                let middle = sorted[(sorted.len() - 1) / 2];
                (middle, by_round.iter().map(|r| format!("{r:.3}")).collect())
            };
            let (all, all_rounds) = ratios(|t| t.cpu_per_1000);
            let (user, user_rounds) = ratios(|t| t.user_cpu_per_1000);
            println!(
                "This build's engine over {}'s, CPU per event: {all:.3} (rounds {}); in user space {user:.3} (rounds {})",
                compare_binary().unwrap().display(),
                all_rounds.join(", "),
                user_rounds.join(", ")
            );
        }
        // The cost of the delivery history: the engine against its run without it.
        if let Some(off_index) = contenders.iter().position(|c| *c == Contender::EngineNoHistory) {
            let (off, on) = (median(&rates[off_index]), median(&rates[engine]));
            let dropped: Vec<String> = rates[engine]
                .iter()
                .map(|t| t.history_dropped.map_or("?".into(), |d| format!("{d:.0}")))
                .collect();
            println!();
            println!(
                "History on: {:.0}% of the throughput with it off (medians {:.0} and {:.0} events/s), CPU s / 1000 events {:.3} against {:.3}; records dropped by round: {}",
                100.0 * on.events_per_sec / off.events_per_sec,
                on.events_per_sec,
                off.events_per_sec,
                on.cpu_per_1000,
                off.cpu_per_1000,
                dropped.join(", "),
            );
        }
        if let Some((messages, bytes)) = history {
            println!(
                "History stream after a round: {} records in {messages} messages, {:.1} MiB",
                2 * events,
                bytes as f64 / (1024.0 * 1024.0)
            );
        }
        if settings.cpu_limit > 0 {
            let runs = settings.goal_pairs.max(rounds);
            within_cpu_limit(&bench, (&a2, &b2), events, runs, settings.cpu_limit).await;
        }
    });
}

/// The throughput goal by rate where this machine can judge it: the engine and the
/// baseline at the same time, each within a CPU limit of `millicores`, as a Kubernetes
/// CPU limit enforces it (a cgroup with a CFS quota), `runs` times. Unlimited, both
/// rates follow the CPU of the whole chain (contender, targets and nats-server on two
/// cores); a limit that leaves the rest of the chain room makes each contender's own
/// cost set its rate, as in a pod with a limit, and running both at once puts them on
/// the same stretch of the machine.
async fn within_cpu_limit(
    bench: &Bench,
    targets: (&Target, &Target),
    events: usize,
    runs: usize,
    millicores: u64,
) {
    let limits = CpuLimit::new("fanout-dispatch-bench-engine", millicores).and_then(|engine| {
        Ok((
            engine,
            CpuLimit::new("fanout-dispatch-bench-baseline", millicores)?,
        ))
    });
    let (engine, baseline) = match limits {
        Ok(limits) => limits,
        Err(error) => {
            println!();
            println!("Within a CPU limit: skipped, no cgroup for it: {error:#}");
            return;
        }
    };
    eprintln!(
        "the engine and the baseline at the same time within {millicores}m each, {runs} runs ..."
    );
    let pairs = paired(
        bench,
        Contender::Baseline,
        targets,
        events,
        runs,
        Some([&engine, &baseline]),
    )
    .await;
    let (m, lo, hi) = Pairs::spread(&pairs.rates, |r| r);
    let each: Vec<String> = pairs.rates.iter().map(|r| format!("{r:.2}x")).collect();
    let idle: Vec<String> = pairs
        .idle
        .iter()
        .map(|i| format!("{:.0}%", 100.0 * i))
        .collect();
    let (cpu, _, _) = Pairs::spread(&pairs.all, |r| 1.0 / r);
    println!();
    println!(
        "Within a CPU limit of {millicores}m each (a cgroup with a CFS quota, what `resources.limits.cpu: {millicores}m` sets), the engine and the baseline at the same time, {} runs of {events} events each: the engine's events/s over the baseline's {m:.2}x (lowest {lo:.2}x, highest {hi:.2}x; by run {}); CPU per event {cpu:.2}x; the machine idle by run {}; at least 1.6x in every run: {}",
        pairs.rates.len(),
        each.join(", "),
        idle.join(", "),
        if lo >= 1.6 { "met" } else { "MISSED" }
    );
}
