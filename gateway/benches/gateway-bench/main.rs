//! The gateway benchmark: `cargo bench -p fanout-gateway --bench gateway-bench`.
//!
//! In one run, on loopback, with the same load generator throughout:
//! (a) a trivial axum server answering 202 (`trivial-server` of `fanout-baselines`,
//!     built like `fanout`: mimalloc, a single-threaded runtime per core): the HTTP
//!     ceiling, and the CPU a request costs a server that does nothing else;
//! (c) the gateway (`fanout gateway` from the release binary users run, as a child
//!     process) at its maximum rate with 256-byte bodies, counting acknowledged
//!     events (202s), and its own CPU per event against (a)'s per request;
//! (d) the gateway at half of that rate: latency percentiles; and (d') JetStream's own
//!     publish+ack at the same rate: what the gateway adds to the storage's latency;
//!     and (d-) the trivial server at that rate too: the gateway's CPU per event
//!     against the trivial server's at the same offered load, below the maximum
//!     where pods usually run.
//! (a1) and (c1): the same with one serving thread each, the trivial server's and the
//!     gateway's (`--shards 1`): the shape the Helm chart gives the gateway by default
//!     (a shard per requested CPU, rounded up, and it requests 100m).
//! (a), (a1), (c), (c1), (d), (d') and (d-) run in rounds (`BENCH_ROUNDS`, default
//! 3), each ceiling and its gateway back to back in alternating order, (d), (d') and
//! (d-) too, because this machine's speed drifts by tens of percent within minutes:
//! each round compares them under the same conditions, and the goals are judged on
//! the median CPU ratio and on the p99 of every round's (d) and (d') together.
//! Then the CPU goal in pairs (`BENCH_GOAL_PAIRS` runs, default 5, 2 in the short
//! form): the gateway and its ceiling under load at the same time, half the
//! connections each, (c) with (a) and (c1) with (a1), so that both meet the same
//! stretch of the machine. Then the one-shard pair again, each within a CPU limit
//! of its own (`BENCH_CPU_LIMIT` millicores, default 300; 0 skips it), as a pod at
//! its `resources.limits.cpu`: each server sets its own rate, and nats-server and the
//! load generator have cores to spare ([`within_limit`]).
//! Then (e) the gateway, (e1) the one-shard gateway and (e') JetStream alone, each
//! at 5,000/s, in as many rounds, alternating: what the gateway adds to the storage's
//! latency where the cores are not saturated, judged on the median of the rounds'
//! p99 differences. Then, once: (c') the gateway with an Idempotency-Key on every
//! request; the trivial server's latency at the median half rate; (b) raw JetStream publishes, pipelined: the
//! storage ceiling; (b2) the gateway's store step alone on async-nats (publishing as
//! the gateway did until it had a client of its own, on threads and connections
//! shaped like its shards, at (c)'s concurrency); (b3) the same on the gateway's own
//! client (`fanout_gateway::nats`): the NATS client's CPU per event, and with (a) what
//! is left of the gateway's CPU per event for its own code; and the gateway's peak
//! resident memory (VmHWM of its process).
//!
//! Environment: `FANOUT_BENCH_SHORT=1` (the same tables in a minute or two: 3 s
//! phases, two rounds, without (b), (b2), (b3) and (c')), `BENCH_CONNECTIONS` (default 64),
//! `BENCH_SECONDS` per phase (default 5), `BENCH_ROUNDS` (default 3), `BENCH_RATE`
//! (offered rate of (d) instead of half of (c)), `BENCH_DUMP_METRICS` (print the
//! gateway's publish latencies and the processes' waits for a CPU during the first
//! round's (d)), `BENCH_COMPARE_FANOUT=<paths of other fanout binaries, comma-separated>`
//! (their gateways measured in the same rounds, (c) and (d) beside this build's: a
//! change's before and after under the same conditions), `BENCH_PAIRED=<runs>` (the
//! first two of them under load at the same time, half the connections each: their
//! CPU per event over the same seconds, then their latency at half of (e)'s rate
//! each).

mod jetstream;
mod load;
mod own_client;
mod within_limit;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout_testkit::cpu_limit::CpuLimit;
use fanout_testkit::nats::NatsServer;
use load::{Report, Target};

const TOKEN: &str = "bench-token";
const PATH: &str = "/v1/namespaces/bench/routes/events/events";
const WARMUP: Duration = Duration::from_secs(1);
/// A fixed rate for latency, comparable across runs and machines.
const FIXED_RATE: f64 = 5000.0;

fn main() {
    // The load generator's runtime (its connections run on threads of their own).
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child process, killed when dropped (and when the bench ends: `tied::spawn`).
struct ChildProcess(Child);

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    format!("127.0.0.1:{}", fanout_testkit::free_port())
        .parse()
        .unwrap()
}

/// Waits until `addr` answers `GET path` with 200.
async fn wait_http_ok(addr: SocketAddr, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let request = format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
            let mut answer = Vec::new();
            if stream.write_all(request.as_bytes()).await.is_ok()
                && stream.read_to_end(&mut answer).await.is_ok()
                && answer.starts_with(b"HTTP/1.1 200")
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr}{path} did not answer 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A JSON body of exactly `size` bytes.
fn body(size: usize) -> Bytes {
    let mut text = String::from(r#"{"type":"order.placed","order":{"id":12345,"note":""#);
    let tail = r#""}}"#;
    while text.len() + tail.len() < size {
        text.push('x');
    }
    text.push_str(tail);
    assert_eq!(text.len(), size);
    Bytes::from(text)
}

/// User + system CPU time of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = user_and_system_seconds(pid);
    user + system
}

/// User and system CPU time of a process so far, in seconds.
fn user_and_system_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// The processes that spend CPU on an event sent through the gateway.
fn gateway_processes(gateway: &ChildProcess, nats: &NatsServer) -> [(&'static str, u32); 3] {
    [
        ("gateway", gateway.0.id()),
        ("nats-server", nats_pid(nats.port())),
        ("load generator", std::process::id()),
    ]
}

fn cpu_now(processes: &[(&str, u32)]) -> Vec<f64> {
    processes.iter().map(|(_, pid)| cpu_seconds(*pid)).collect()
}

/// The successful requests of a closed-loop run of `seconds`, counting those of its
/// warm-up at the same rate: they used CPU too.
fn requests(report: &Report, seconds: Duration) -> f64 {
    report.ok as f64 * (1.0 + WARMUP.as_secs_f64() / seconds.as_secs_f64())
}

/// CPU microseconds per successful request of a closed-loop run, by process.
fn cpu_per_request<'a>(
    processes: &[(&'a str, u32)],
    before: &[f64],
    report: &Report,
    seconds: Duration,
) -> Vec<(&'a str, f64)> {
    let requests = requests(report, seconds);
    processes
        .iter()
        .zip(before)
        .map(|((name, pid), before)| (*name, (cpu_seconds(*pid) - before) / requests * 1e6))
        .collect()
}

/// The pid of the nats-server listening on `port`.
fn nats_pid(port: u16) -> u32 {
    let port = port.to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"nats-server"))
            && args
                .windows(2)
                .any(|w| w[0] == b"-p" && w[1] == port.as_bytes())
        {
            return pid;
        }
    }
    panic!("no nats-server on port {port}");
}

/// Time the threads of a process spent runnable but waiting for a CPU, and how many
/// times they were put on one (`/proc/<pid>/task/*/schedstat`).
fn run_delay(pid: u32) -> (Duration, u64) {
    let mut waited = 0u64;
    let mut slices = 0u64;
    for stat in task_files(pid, "schedstat") {
        let fields: Vec<u64> = stat
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if let [_, delay, count] = fields[..] {
            waited += delay;
            slices += count;
        }
    }
    (Duration::from_nanos(waited), slices)
}

/// The text of `/proc/<pid>/task/<each thread>/<name>`, for the threads still there.
fn task_files(pid: u32, name: &str) -> impl Iterator<Item = String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |task| std::fs::read_to_string(task.path().join(name)).ok())
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

/// How long the bench runs: the full form, or `FANOUT_BENCH_SHORT=1`'s (the same
/// tables in a minute or two: 3 s phases, two rounds, without (b), (b2), (b3) and (c')).
/// `BENCH_SECONDS` and `BENCH_ROUNDS` override either.
struct Settings {
    connections: usize,
    seconds: Duration,
    rounds: usize,
    /// Runs of each gateway shape loaded together with its ceiling ([`goal_pairs`]).
    goal_pairs: u64,
    /// The CPU limit of [`within_limit`], in millicores (0: not run).
    cpu_limit: u64,
    short: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let short = std::env::var_os("FANOUT_BENCH_SHORT").is_some_and(|v| v != "0");
        Settings {
            connections: env_number("BENCH_CONNECTIONS", 64) as usize,
            seconds: Duration::from_secs(env_number("BENCH_SECONDS", if short { 3 } else { 5 })),
            rounds: env_number("BENCH_ROUNDS", if short { 2 } else { 3 }).max(1) as usize,
            goal_pairs: env_number("BENCH_GOAL_PAIRS", if short { 2 } else { 5 }),
            cpu_limit: env_number("BENCH_CPU_LIMIT", 300),
            short,
        }
    }
}

async fn run() {
    let settings = Settings::from_env();
    let Settings {
        connections,
        seconds,
        rounds,
        goal_pairs: pair_runs,
        cpu_limit,
        short,
    } = settings;
    let payload = body(256);
    println!("machine: {}", machine());
    println!(
        "load average before the run: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "gateway: its default shards ({} here: one per CPU), unless a row says otherwise",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "load: {connections} keep-alive HTTP/1.1 connections, {}s per phase after {}s warm-up, 256-byte JSON bodies; {rounds} rounds of (a), (c), (a1), (c1), (d) and (d'){}",
        seconds.as_secs(),
        WARMUP.as_secs(),
        if short {
            "; short form: (b), (b2), (b3) and (c') skipped"
        } else {
            ""
        }
    );

    let nats = NatsServer::start().expect("starting nats-server");
    let js = jetstream::provision(&nats).await;
    let dir = fanout_testkit::tied::temp_dir("fanout-gateway-bench-").unwrap();
    let config = jetstream::write_gateway_config(dir.path(), TOKEN);
    let fanout = fanout_testkit::fanout_release_binary();
    let addr = free_addr();
    let (gateway, gateway_ops) = start_gateway(&fanout, &config, addr, &nats, &[], None).await;
    let events = Target {
        addr,
        path: PATH.into(),
        headers: vec![
            ("content-type", "application/json".into()),
            ("authorization", format!("Bearer {TOKEN}")),
        ],
        body: payload.clone(),
        expect: 202,
        idempotency_keys: false,
    };
    // Other builds of the gateway measured in the same rounds: before and after a
    // change, under the same conditions.
    let mut compared = Vec::new();
    for binary in std::env::var("BENCH_COMPARE_FANOUT")
        .unwrap_or_default()
        .split(',')
        .filter(|b| !b.is_empty())
    {
        let binary = std::path::PathBuf::from(binary);
        let addr = free_addr();
        let (process, _) = start_gateway(&binary, &config, addr, &nats, &[], None).await;
        // The file's name, or its whole path when another binary has that name.
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !compared.iter().any(|(other, _, _)| other == n))
            .unwrap_or_else(|| binary.display().to_string());
        let target = Target {
            addr,
            ..events.clone()
        };
        compared.push((name, process, target));
    }
    // The gateway as the Helm chart runs it by default: one shard.
    let one_shard_addr = free_addr();
    let (one_shard, _) = start_gateway(
        &fanout,
        &config,
        one_shard_addr,
        &nats,
        &["--shards", "1"],
        None,
    )
    .await;
    // Each gateway's ceiling: a trivial server with as many serving threads as it has
    // shards.
    let (trivial, trivial_addr) = start_trivial_server(None, None).await;
    let (trivial_one, trivial_one_addr) = start_trivial_server(Some(1), None).await;
    let plain = Target {
        addr: trivial_addr,
        headers: vec![("content-type", "application/json".into())],
        ..events.clone()
    };
    // (a), then (a1): each with the processes whose CPU is measured.
    let load_generator = ("load generator", std::process::id());
    let ceilings = [
        (
            plain.clone(),
            [("trivial server", trivial.0.id()), load_generator],
        ),
        (
            Target {
                addr: trivial_one_addr,
                ..plain.clone()
            },
            [("trivial server", trivial_one.0.id()), load_generator],
        ),
    ];
    // Each gateway: its target, its processes and the ceiling it is judged against.
    let mut gateways = vec![(events.clone(), gateway_processes(&gateway, &nats), 0)];
    for (_, process, target) in &compared {
        gateways.push((target.clone(), gateway_processes(process, &nats), 0));
    }
    let one_shard_target = Target {
        addr: one_shard_addr,
        ..events.clone()
    };
    gateways.push((one_shard_target, gateway_processes(&one_shard, &nats), 1));
    let mut names = vec![GatewayName::default_shards("gateway".into())];
    names.extend(
        compared
            .iter()
            .map(|(name, _, _)| GatewayName::default_shards(format!("gateway `{name}`"))),
    );
    names.push(GatewayName::one_shard());

    // Rounds: each ceiling and the gateways judged against it back to back, in
    // alternating order, so that a slow or fast stretch of the machine hits the
    // ceiling and the gateway alike; then (d), each gateway at half of that round's
    // (c), and JetStream alone at the same rate (in alternating order too): what the
    // gateway adds to the storage's own latency.
    let dump = std::env::var_os("BENCH_DUMP_METRICS").is_some();
    let mut measured = Vec::new();
    for round in 0..rounds {
        let forward = round % 2 == 0;
        let mut order = Vec::new();
        for c in 0..ceilings.len() {
            order.push(Step::Ceiling(c));
            order.extend(
                (0..gateways.len())
                    .filter(|&g| gateways[g].2 == c)
                    .map(Step::Gateway),
            );
        }
        if !forward {
            order.reverse();
        }
        let mut ceiling: Vec<Option<Measured>> = ceilings.iter().map(|_| None).collect();
        let mut max: Vec<Option<Measured>> = gateways.iter().map(|_| None).collect();
        for step in order.iter().copied() {
            match step {
                Step::Ceiling(c) => {
                    let (target, processes) = &ceilings[c];
                    ceiling[c] =
                        Some(closed_loop_with_cpu(target, processes, connections, seconds).await);
                }
                Step::Gateway(g) => {
                    let (target, processes, _) = &gateways[g];
                    max[g] =
                        Some(closed_loop_with_cpu(target, processes, connections, seconds).await);
                }
            }
        }
        let ceilings_measured: Vec<Measured> = ceiling.into_iter().map(Option::unwrap).collect();
        let max: Vec<Measured> = max.into_iter().map(Option::unwrap).collect();
        let half_rate = std::env::var("BENCH_RATE")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(max[0].0.rate() / 2.0);
        // (d) of each gateway, (d') JetStream alone and (d-) each ceiling, all at the
        // same rate.
        let mut half_order = vec![HalfStep::Storage];
        half_order.extend((0..gateways.len()).map(HalfStep::Gateway));
        half_order.extend((0..ceilings.len()).map(HalfStep::Ceiling));
        if !forward {
            half_order.reverse();
        }
        let mut half: Vec<Option<(Report, f64)>> = gateways.iter().map(|_| None).collect();
        let mut ceilings_half: Vec<f64> = vec![f64::NAN; ceilings.len()];
        let mut storage_half = None;
        for step in half_order {
            match step {
                HalfStep::Gateway(g) => {
                    let (target, processes, _) = &gateways[g];
                    let observer = if dump && round == 0 && g == 0 {
                        Some(Observer::start(gateway_ops, processes).await)
                    } else {
                        None
                    };
                    half[g] = Some(
                        open_loop_with_cpu(target, processes[0].1, connections, half_rate, seconds)
                            .await,
                    );
                    if let Some(observer) = observer {
                        observer.print("(d) of round 1").await;
                    }
                }
                HalfStep::Ceiling(c) => {
                    let (target, processes) = &ceilings[c];
                    ceilings_half[c] =
                        open_loop_with_cpu(target, processes[0].1, connections, half_rate, seconds)
                            .await
                            .1;
                }
                HalfStep::Storage => {
                    storage_half = Some(
                        jetstream::publish_at_rate(&js, &payload, connections, half_rate, seconds)
                            .await,
                    );
                }
            }
        }
        let gateways_measured: Vec<GatewayRound> = max
            .into_iter()
            .zip(half)
            .zip(&gateways)
            .map(|(((max, cpu), half), (_, _, ceiling))| {
                let (half, half_cpu) = half.unwrap();
                GatewayRound {
                    max,
                    cpu,
                    half,
                    half_cpu,
                    ceiling: *ceiling,
                }
            })
            .collect();
        let mut this = Round {
            ceilings: ceilings_measured,
            ceilings_half,
            gateways: gateways_measured,
            half_rate,
            storage_half: storage_half.unwrap(),
        };
        let (p99, storage_p99) = (
            this.gateways[0].half.latency_ms(0.99),
            this.storage_half.latency_ms(0.99),
        );
        let one = this.gateways.len() - 1;
        eprintln!(
            "round {}: (a) {:.0} req/s, (c) {:.0} events/s = {:.1}%, CPU {:.1} / {:.1} µs; one thread each: CPU {:.1} / {:.1} µs; (d) at {half_rate:.0}/s p99 {p99:.2} ms, JetStream alone {storage_p99:.2} ms",
            round + 1,
            this.ceilings[0].0.rate(),
            this.gateways[0].max.rate(),
            this.share(0),
            this.gateways[0].cpu[0].1,
            this.ceiling_cpu(0),
            this.gateways[one].cpu[0].1,
            this.ceiling_cpu(one),
        );
        measured.push(this);
    }
    // The CPU goal again, each gateway shape loaded together with its ceiling: the
    // gateway's default shards with (a), one shard with (a1).
    let mut pairs = Vec::new();
    let one = gateways.len() - 1;
    for (label, g, c) in [("(c)/(a)", 0, 0), ("(c1)/(a1)", one, 1)] {
        let gateway = (&gateways[g].0, gateways[g].1[0].1);
        let ceiling = (&ceilings[c].0, ceilings[c].1[0].1);
        let ratios = goal_pairs(label, gateway, ceiling, connections, seconds, pair_runs).await;
        pairs.push((label, ratios));
    }
    // The same goal with each server of the chart's shape within the same CPU limit.
    let within_limit = if cpu_limit == 0 || pair_runs == 0 {
        None
    } else {
        let setup = within_limit::Setup {
            fanout: &fanout,
            config: &config,
            nats: &nats,
            events: &events,
            plain: &plain,
        };
        Some(within_limit::measure(setup, cpu_limit, connections, seconds, pair_runs).await)
    };
    paired(&compared, connections, seconds).await;
    drop(compared);
    drop(trivial_one);
    let median_half_rate = median(measured.iter().map(|r| r.half_rate));

    // (e), (e1) and (e') in rounds: the machine is far from busy at 5,000/s, so
    // (e) − (e') is what the gateway adds where the cores do not queue (at half the
    // maximum rate, on 2 cores, the three processes wait for a CPU). A single tail
    // moves by a tenth of a millisecond from minute to minute, so each round measures
    // the gateways and JetStream alone back to back, in alternating order.
    let one = gateways.len() - 1;
    let fixed = fixed_rate_rounds(
        [&events, &gateways[one].0],
        || jetstream::publish_at_rate(&js, &payload, connections, FIXED_RATE, seconds),
        connections,
        seconds,
        rounds,
    )
    .await;
    drop(one_shard);
    // (c') Every request with its own Idempotency-Key: each event then has a
    // Nats-Msg-Id, and nats-server keeps it in the stream's duplicate table.
    let keyed = Target {
        idempotency_keys: true,
        ..events.clone()
    };
    let max_keyed = if short {
        None
    } else {
        Some(load::closed_loop(&keyed, connections, WARMUP, seconds).await)
    };
    let rss_kib = peak_rss_kib(gateway.0.id());
    drop(gateway);

    // (d') for comparison: a trivial server's latency at the gateway's (median) half
    // rate.
    let trivial_half = load::open_loop(&plain, connections, median_half_rate, seconds).await;
    drop(trivial);
    // (b) The storage ceiling.
    let storage = if short {
        None
    } else {
        let storage = jetstream::publish_pipelined(&js, &payload, 1024, WARMUP, seconds).await;
        eprintln!("(b) JetStream publish: {:.0} msg/s", storage.rate());
        Some(storage)
    };
    // (b2) The gateway's store step alone, shaped like its shards, on async-nats;
    // (b3) the same on the gateway's own client: what each client costs per event at
    // the gateway's concurrency.
    let (shards, per_shard) = shard_shape(connections);
    let (client_alone, raw_alone) = if short {
        (None, None)
    } else {
        let client = store_step_alone("(b2) the store step alone", &nats, seconds, || {
            jetstream::publish_like_shards(
                &nats.url(),
                &payload,
                shards,
                per_shard,
                WARMUP,
                seconds,
            )
        });
        let raw = store_step_alone("(b3) on the gateway's own client", &nats, seconds, || {
            own_client::publish_like_shards(
                &nats.url(),
                &payload,
                shards,
                per_shard,
                WARMUP,
                seconds,
            )
        });
        (Some(client), Some(raw))
    };
    drop(nats);

    print_tables(Results {
        connections,
        names,
        short,
        rounds: measured,
        median_half_rate,
        trivial_half,
        storage,
        client_alone,
        raw_alone,
        max_keyed,
        fixed,
        rss_kib,
        pairs,
        within_limit,
    });
}

/// (e), (e1) and (e') by round: the gateway with its default shards and with one
/// shard, and JetStream alone, each at [`FIXED_RATE`].
struct FixedRate {
    gateways: [Vec<Report>; 2],
    storage: Vec<Report>,
}

/// Measures `gateways` (default shards, one shard) and `storage` (JetStream alone)
/// at [`FIXED_RATE`] in `rounds` rounds, in alternating order.
async fn fixed_rate_rounds<F: Future<Output = Report>>(
    gateways: [&Target; 2],
    storage: impl Fn() -> F,
    connections: usize,
    seconds: Duration,
    rounds: usize,
) -> FixedRate {
    let mut fixed = FixedRate {
        gateways: [Vec::new(), Vec::new()],
        storage: Vec::new(),
    };
    for round in 0..rounds {
        let mut order = [Some(0), Some(1), None];
        if round % 2 == 1 {
            order.reverse();
        }
        for step in order {
            match step {
                Some(g) => fixed.gateways[g]
                    .push(load::open_loop(gateways[g], connections, FIXED_RATE, seconds).await),
                None => fixed.storage.push(storage().await),
            }
        }
    }
    fixed
}

/// A closed loop's report, and the CPU each process spent per successful request.
type Measured = (Report, Vec<(&'static str, f64)>);

/// A maximum-rate phase of a round.
#[derive(Clone, Copy)]
enum Step {
    /// The trivial server with the gateways' default thread count, or with one thread.
    Ceiling(usize),
    Gateway(usize),
}

/// How the tables name a gateway and its ceiling.
struct GatewayName {
    who: String,
    /// Its maximum-rate phase: (c), or (c1) for one shard.
    phase: &'static str,
    /// The phase of its ceiling: (a), or (a1) for one thread.
    ceiling: &'static str,
}

impl GatewayName {
    fn default_shards(who: String) -> GatewayName {
        GatewayName {
            who,
            phase: "(c)",
            ceiling: "(a)",
        }
    }

    fn one_shard() -> GatewayName {
        GatewayName {
            who: "gateway, one shard".into(),
            phase: "(c1)",
            ceiling: "(a1)",
        }
    }
}

/// One round: each ceiling ((a), (a1)) and the maximum of each gateway judged against
/// it ((c), (c1)), measured back to back, and at half of the first gateway's maximum,
/// each gateway (d) and JetStream alone (d').
struct Round {
    /// The trivial server with one thread per CPU, then with one thread; each with
    /// the CPU per request of itself and the load generator.
    ceilings: Vec<Measured>,
    /// The same trivial servers' CPU µs per request at `half_rate`.
    ceilings_half: Vec<f64>,
    /// The gateway under test, those of `BENCH_COMPARE_FANOUT`, then the gateway with
    /// one shard.
    gateways: Vec<GatewayRound>,
    half_rate: f64,
    /// JetStream publish+ack alone at `half_rate`.
    storage_half: Report,
}

/// One gateway's part of a round.
struct GatewayRound {
    max: Report,
    cpu: Vec<(&'static str, f64)>,
    half: Report,
    /// Its own CPU µs per acknowledged event in `half`.
    half_cpu: f64,
    /// Which of the round's ceilings it is judged against.
    ceiling: usize,
}

impl Round {
    /// Gateway `g`'s rate as a share of its ceiling's, in percent.
    fn share(&self, g: usize) -> f64 {
        self.gateways[g].max.rate() / self.ceilings[self.gateways[g].ceiling].0.rate() * 100.0
    }

    /// The trivial server's CPU per request in gateway `g`'s ceiling.
    fn ceiling_cpu(&self, g: usize) -> f64 {
        self.ceilings[self.gateways[g].ceiling].1[0].1
    }

    /// Gateway `g`'s own CPU per acknowledged event against its ceiling's trivial
    /// server's per request.
    fn cpu_ratio(&self, g: usize) -> f64 {
        self.gateways[g].cpu[0].1 / self.ceiling_cpu(g)
    }

    /// Gateway `g`'s own CPU per acknowledged event at the half rate against its
    /// ceiling's trivial server's per request at the same offered rate.
    fn half_cpu_ratio(&self, g: usize) -> f64 {
        self.gateways[g].half_cpu / self.ceilings_half[self.gateways[g].ceiling]
    }

    /// What gateway `g` adds to JetStream's own p99 at the same rate, in ms.
    fn added_p99(&mut self, g: usize) -> f64 {
        self.gateways[g].half.latency_ms(0.99) - self.storage_half.latency_ms(0.99)
    }
}

/// The lowest value: of CPU per event, the round least disturbed by other work on the
/// machine (which only ever adds to it), for comparing builds measured together.
fn lowest(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(f64::INFINITY, f64::min)
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A closed loop, and the CPU each of `processes` spent per successful request.
async fn closed_loop_with_cpu(
    target: &Target,
    processes: &[(&'static str, u32)],
    connections: usize,
    seconds: Duration,
) -> (Report, Vec<(&'static str, f64)>) {
    let before = cpu_now(processes);
    let report = load::closed_loop(target, connections, WARMUP, seconds).await;
    let cpu = cpu_per_request(processes, &before, &report, seconds);
    (report, cpu)
}

/// A step of a round's phases at the half rate.
#[derive(Clone, Copy)]
enum HalfStep {
    /// (d') JetStream alone.
    Storage,
    /// (d) a gateway.
    Gateway(usize),
    /// (d-) a ceiling: the trivial server at the same offered rate.
    Ceiling(usize),
}

/// An open-loop run at `rate` and the CPU µs per successful request of process `pid`.
async fn open_loop_with_cpu(
    target: &Target,
    pid: u32,
    connections: usize,
    rate: f64,
    seconds: Duration,
) -> (Report, f64) {
    let before = cpu_seconds(pid);
    let report = load::open_loop(target, connections, rate, seconds).await;
    let cpu = (cpu_seconds(pid) - before) / report.ok.max(1) as f64 * 1e6;
    (report, cpu)
}

/// `BENCH_PAIRED=<runs>`: the first two `BENCH_COMPARE_FANOUT` gateways under load at
/// the same time, half the connections each, `runs` times. Phases one after the other
/// differ by this machine's drift (10% and more); two gateways measured over the same
/// seconds share it, so their CPU per event compares closely (a change's before and
/// after).
async fn paired(
    compared: &[(String, ChildProcess, Target)],
    connections: usize,
    seconds: Duration,
) {
    let runs = env_number("BENCH_PAIRED", 0);
    let [
        (first, first_process, first_target),
        (second, second_process, second_target),
        ..,
    ] = compared
    else {
        if runs > 0 {
            eprintln!("BENCH_PAIRED needs two gateways in BENCH_COMPARE_FANOUT");
        }
        return;
    };
    let half = (connections / 2).max(1);
    let mut ratios = Vec::new();
    for run in 1..=runs {
        let ((a, a_cpu), (b, b_cpu)) = loaded_together(
            (first_target, first_process.0.id()),
            (second_target, second_process.0.id()),
            half,
            seconds,
        )
        .await;
        ratios.push(b_cpu / a_cpu);
        println!(
            "paired run {run}: {first} {:.0} events/s at {a_cpu:.1} µs, {second} {:.0} events/s at {b_cpu:.1} µs per event: {second}/{first} {:.3}",
            a.rate(),
            b.rate(),
            b_cpu / a_cpu
        );
    }
    if !ratios.is_empty() {
        println!(
            "paired, {runs} runs of {half} connections each: CPU per event {second}/{first}, median {:.3} (lowest {:.3}, highest {:.3})",
            median(ratios.iter().copied()),
            lowest(ratios.iter().copied()),
            ratios.iter().copied().fold(f64::MIN, f64::max)
        );
    }
    // Latency the same way: each at half of (e)'s fixed rate over the same seconds,
    // so that the machine's drift between phases does not pass for a change.
    let mut differences = Vec::new();
    for run in 1..=runs {
        let (mut a, mut b) = tokio::join!(
            load::open_loop(first_target, half, FIXED_RATE / 2.0, seconds),
            load::open_loop(second_target, half, FIXED_RATE / 2.0, seconds),
        );
        let (a50, a99, b50, b99) = (
            a.latency_ms(0.5),
            a.latency_ms(0.99),
            b.latency_ms(0.5),
            b.latency_ms(0.99),
        );
        differences.push((b50 - a50, b99 - a99));
        println!(
            "paired latency run {run}, {:.0}/s each: {first} p50 {a50:.2} ms, p99 {a99:.2} ms; {second} p50 {b50:.2} ms, p99 {b99:.2} ms",
            FIXED_RATE / 2.0
        );
    }
    if !differences.is_empty() {
        let p50 = differences.iter().map(|d| d.0);
        let p99 = differences.iter().map(|d| d.1);
        println!(
            "paired latency, {runs} runs: {second} minus {first}, median p50 {:+.3} ms, median p99 {:+.3} ms (p99 lowest {:+.3}, highest {:+.3})",
            median(p50),
            median(p99.clone()),
            lowest(p99.clone()),
            p99.fold(f64::MIN, f64::max)
        );
    }
}

/// Two servers under closed-loop load over the same seconds, `connections` each: each
/// one's report and its own CPU µs per successful request.
async fn loaded_together(
    first: (&Target, u32),
    second: (&Target, u32),
    connections: usize,
    seconds: Duration,
) -> ((Report, f64), (Report, f64)) {
    let processes = [("first", first.1), ("second", second.1)];
    let before = cpu_now(&processes);
    let (a, b) = tokio::join!(
        load::closed_loop(first.0, connections, WARMUP, seconds),
        load::closed_loop(second.0, connections, WARMUP, seconds),
    );
    let a_cpu = cpu_per_request(&processes[..1], &before[..1], &a, seconds)[0].1;
    let b_cpu = cpu_per_request(&processes[1..], &before[1..], &b, seconds)[0].1;
    ((a, a_cpu), (b, b_cpu))
}

/// The CPU goal measured in pairs: a gateway and its ceiling, the trivial server of
/// the same shape, under load at the same time, half the connections each, `runs`
/// times. Phases one after the other differ by this machine's drift (a round's (c)/(a)
/// spreads by 0.2x and more); loaded together, both meet the same stretch of it.
/// Returns the gateway's CPU per acknowledged event over the trivial server's per
/// request, by run.
async fn goal_pairs(
    label: &str,
    gateway: (&Target, u32),
    ceiling: (&Target, u32),
    connections: usize,
    seconds: Duration,
    runs: u64,
) -> Vec<f64> {
    let half = (connections / 2).max(1);
    let mut ratios = Vec::new();
    for run in 1..=runs {
        let ((g, g_cpu), (t, t_cpu)) = loaded_together(gateway, ceiling, half, seconds).await;
        eprintln!(
            "{label} pair {run}: gateway {:.0} events/s at {g_cpu:.1} µs, trivial server {:.0} req/s at {t_cpu:.1} µs: {:.2}x",
            g.rate(),
            t.rate(),
            g_cpu / t_cpu
        );
        ratios.push(g_cpu / t_cpu);
    }
    ratios
}

/// `command`, run within `limit`'s cgroup when there is one.
fn within(limit: Option<&CpuLimit>, command: Command) -> Command {
    match limit {
        Some(limit) => limit.wrap(&command),
        None => command,
    }
}

/// The trivial server (`trivial-server` of `fanout-baselines`, built like `fanout`),
/// once it accepts connections.
/// `threads` serve (default: one per CPU, as the gateway's default shards).
/// Within `limit`'s cgroup when given.
async fn start_trivial_server(
    threads: Option<usize>,
    limit: Option<&CpuLimit>,
) -> (ChildProcess, SocketAddr) {
    let addr = free_addr();
    let exe = fanout_testkit::release_binary("fanout-baselines", "trivial-server");
    let mut command = Command::new(exe);
    command.arg(addr.to_string());
    command.args(threads.map(|n| n.to_string()));
    let command = within(limit, command);
    let trivial = ChildProcess(fanout_testkit::tied::spawn(command).unwrap());
    wait_port(addr).await;
    (trivial, addr)
}

/// What `BENCH_DUMP_METRICS` prints about one phase: the gateway's publish latencies
/// and how long each process waited for a CPU.
struct Observer {
    addr: SocketAddr,
    processes: Vec<(&'static str, u32)>,
    histogram: Vec<(String, u64)>,
    delays: Vec<(Duration, u64)>,
}

impl Observer {
    async fn start(addr: SocketAddr, processes: &[(&'static str, u32)]) -> Observer {
        Observer {
            addr,
            processes: processes.to_vec(),
            histogram: publish_histogram(addr).await,
            delays: processes.iter().map(|(_, pid)| run_delay(*pid)).collect(),
        }
    }

    async fn print(self, phase: &str) {
        print_histogram_delta(phase, &self.histogram, &publish_histogram(self.addr).await);
        for ((name, pid), (waited, slices)) in self.processes.iter().zip(&self.delays) {
            let (w, n) = run_delay(*pid);
            let (w, n) = (w - *waited, n - slices);
            eprintln!(
                "{phase} {name}: waited for a CPU {:.0} ms in all, {:.0} µs per time slice ({n} slices)",
                w.as_secs_f64() * 1e3,
                w.as_secs_f64() * 1e6 / n.max(1) as f64
            );
        }
    }
}

/// `fanout gateway` from `binary` (the release build, or the one compared with it), as
/// a child process, once it is ready; with the address of its ops port (probes,
/// metrics). Within `limit`'s cgroup when given.
async fn start_gateway(
    binary: &std::path::Path,
    config: &std::path::Path,
    addr: SocketAddr,
    nats: &NatsServer,
    extra: &[&str],
    limit: Option<&CpuLimit>,
) -> (ChildProcess, SocketAddr) {
    let ops = free_addr();
    let mut command = Command::new(binary);
    command
        .arg("gateway")
        .arg("--config")
        .arg(config)
        .args(["--listen", &addr.to_string(), "--nats-url", &nats.url()])
        .args(["--listen-ops", &ops.to_string()])
        .args(extra)
        .env("FANOUT_LOG", "warn");
    let mut command = within(limit, command);
    command.stdout(Stdio::null());
    let gateway = ChildProcess(fanout_testkit::tied::spawn(command).unwrap());
    wait_http_ok(ops, "/readyz").await;
    (gateway, ops)
}

/// The gateway's publish-latency histogram (from its ops port `addr`), its shards'
/// summed: cumulative counts by upper bound.
async fn publish_histogram(addr: SocketAddr) -> Vec<(String, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    // Lines like `..._bucket{le="0.0001",shard="0"} 42`, in bound order per shard.
    let mut buckets: Vec<(String, u64)> = Vec::new();
    for line in answer.lines() {
        let Some(rest) = line.strip_prefix("fanout_gateway_publish_duration_seconds_bucket{le=\"")
        else {
            continue;
        };
        let (Some((bound, _)), Some((_, count))) = (rest.split_once('"'), rest.rsplit_once(' '))
        else {
            continue;
        };
        let Ok(count) = count.trim().parse::<u64>() else {
            continue;
        };
        match buckets.iter_mut().find(|(b, _)| b == bound) {
            Some((_, total)) => *total += count,
            None => buckets.push((bound.to_string(), count)),
        }
    }
    buckets
}

/// Prints how the publishes of one phase were distributed (to tell the gateway's own
/// time from JetStream's round trip).
fn print_histogram_delta(phase: &str, before: &[(String, u64)], after: &[(String, u64)]) {
    let total = after.last().map_or(0, |(_, n)| *n) - before.last().map_or(0, |(_, n)| *n);
    eprintln!("publish latency during {phase}, {total} publishes (cumulative share):");
    for ((bound, b), (_, a)) in before.iter().zip(after) {
        let share = (a - b) as f64 / total.max(1) as f64 * 100.0;
        eprintln!("  <= {bound:>7} s: {share:6.2}%");
        if a - b == total {
            break;
        }
    }
}

/// Waits until something accepts connections on `addr`.
async fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

struct Results {
    connections: usize,
    /// Of the gateway under test, those of `BENCH_COMPARE_FANOUT` and the one-shard one.
    names: Vec<GatewayName>,
    short: bool,
    rounds: Vec<Round>,
    median_half_rate: f64,
    trivial_half: Report,
    storage: Option<Report>,
    client_alone: Option<ClientAlone>,
    raw_alone: Option<ClientAlone>,
    max_keyed: Option<Report>,
    fixed: FixedRate,
    rss_kib: Option<u64>,
    /// The CPU goal by pairs ([`goal_pairs`]): each shape's label and ratios by run.
    pairs: Vec<(&'static str, Vec<f64>)>,
    /// The one-shard pair within a CPU limit each, or why it could not run.
    within_limit: Option<Result<within_limit::WithinLimit, String>>,
}

/// (b2) or (b3): the gateway's store step without the gateway.
struct ClientAlone {
    report: Report,
    /// CPU per acknowledgement: this process (the publishers), nats-server.
    cpu: Vec<(&'static str, f64)>,
}

/// The gateway's shards (one per CPU) and how many of `connections` each serves.
fn shard_shape(connections: usize) -> (usize, usize) {
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
    (shards, connections.div_ceil(shards))
}

/// Runs `publish` (which blocks until its threads are done), with the CPU this process
/// and nats-server spent per acknowledgement.
fn store_step_alone(
    label: &str,
    nats: &NatsServer,
    seconds: Duration,
    publish: impl FnOnce() -> Report,
) -> ClientAlone {
    let processes = [
        ("publisher", std::process::id()),
        ("nats-server", nats_pid(nats.port())),
    ];
    let before = cpu_now(&processes);
    let report = tokio::task::block_in_place(publish);
    let cpu = cpu_per_request(&processes, &before, &report, seconds);
    eprintln!("{label}: {:.0} acks/s, {}", report.rate(), cpu_list(&cpu));
    ClientAlone { report, cpu }
}

fn latencies(report: &mut Report) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        report.latency_ms(0.50),
        report.latency_ms(0.99),
        report.latency_ms(0.999),
        report.latency_ms(1.0)
    )
}

fn cpu_list(cpu: &[(&str, f64)]) -> String {
    let items: Vec<String> = cpu
        .iter()
        .map(|(name, micros)| format!("{name} {micros:.1} µs"))
        .collect();
    items.join(", ")
}

/// CPU per request as numbers only, for a round's column (the row names the processes).
fn cpu_numbers(cpu: &[(&str, f64)]) -> String {
    let items: Vec<String> = cpu
        .iter()
        .map(|(_, micros)| format!("{micros:.1}"))
        .collect();
    items.join(" / ")
}

/// A goal's CPU ratio: the gateway's own CPU per acknowledged event at most this many
/// times the trivial server's per request (issue 21).
const CPU_RATIO_GOAL: f64 = 1.4;
/// A goal's added latency: the gateway's p99 at half its maximum rate at most this much
/// above JetStream's own publish+ack p99 at the same rate (issue 21), in ms.
const ADDED_P99_GOAL_MS: f64 = 0.3;

fn print_tables(mut r: Results) {
    let connections = r.connections;
    let ceiling = median(r.rounds.iter().map(|x| x.ceilings[0].0.rate()));
    // Every round's JetStream alone together: the p99 of all of them, not the best
    // round's; the same for each gateway's (d).
    let mut storage_half = Report::default();
    for round in &r.rounds {
        storage_half
            .latencies_us
            .extend_from_slice(&round.storage_half.latencies_us);
    }
    let storage_p99 = storage_half.latency_ms(0.99);
    let each = |f: &dyn Fn(&mut Round) -> String, rounds: &mut [Round]| -> String {
        rounds.iter_mut().map(f).collect::<Vec<_>>().join(" | ")
    };

    println!();
    if r.short {
        println!(
            "Short form (FANOUT_BENCH_SHORT=1): shorter phases and fewer rounds than the full run."
        );
        println!();
    }
    let names: Vec<String> = (1..=r.rounds.len()).map(|i| format!("round {i}")).collect();
    println!(
        "| measurement | {} | all rounds | goal |",
        names.join(" | ")
    );
    println!("|---|{}---|---|", "---|".repeat(names.len()));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ceilings = r.rounds.first().map_or(0, |x| x.ceilings.len());
    for c in 0..ceilings {
        let (phase, shape) = match c {
            0 => ("(a)", format!("{threads} threads (one per CPU)")),
            _ => ("(a1)", "one thread".to_string()),
        };
        println!(
            "| {phase} trivial server, {shape}, {connections} connections, req/s | {} | median {:.0} | ceiling |",
            each(&|x| format!("{:.0}", x.ceilings[c].0.rate()), &mut r.rounds),
            median(r.rounds.iter().map(|x| x.ceilings[c].0.rate())),
        );
        println!(
            "| {phase} CPU µs per request: trivial server / load generator | {} | lowest {:.1} | |",
            each(&|x| cpu_numbers(&x.ceilings[c].1), &mut r.rounds),
            lowest(r.rounds.iter().map(|x| x.ceilings[c].1[0].1)),
        );
    }
    println!(
        "| (d) offered/s: half of the round's (c) of the gateway | {} | | |",
        each(&|x| format!("{:.0}", x.half_rate), &mut r.rounds)
    );
    println!(
        "| (d') JetStream publish+ack alone at that rate, {connections} publishers: p99 | {} | {} | |",
        each(
            &|x| format!("{:.2} ms", x.storage_half.latency_ms(0.99)),
            &mut r.rounds
        ),
        latencies(&mut storage_half),
    );
    let gateways = r.rounds.first().map_or(0, |x| x.gateways.len());
    for g in 0..gateways {
        let GatewayName {
            who,
            phase,
            ceiling: ceiling_phase,
        } = &r.names[g];
        let max = median(r.rounds.iter().map(|x| x.gateways[g].max.rate()));
        let share = median(r.rounds.iter().map(|x| x.share(g)));
        let cpu_ratio = median(r.rounds.iter().map(|x| x.cpu_ratio(g)));
        let mut half = Report::default();
        for round in &r.rounds {
            half.latencies_us
                .extend_from_slice(&round.gateways[g].half.latencies_us);
        }
        let added = half.latency_ms(0.99) - storage_p99;
        println!(
            "| {phase} {who}, acked events/s | {} | median {max:.0} | |",
            each(
                &|x| format!("{:.0}", x.gateways[g].max.rate()),
                &mut r.rounds
            )
        );
        println!(
            "| {phase} share of the same round's {ceiling_phase} | {} | median {share:.1}% | history (was >= 40%) |",
            each(&|x| format!("{:.1}%", x.share(g)), &mut r.rounds),
        );
        println!(
            "| {phase} CPU µs per event: {who} / nats-server / load generator | {} | lowest {:.1} | |",
            each(&|x| cpu_numbers(&x.gateways[g].cpu), &mut r.rounds),
            lowest(r.rounds.iter().map(|x| x.gateways[g].cpu[0].1)),
        );
        println!(
            "| {phase}/{ceiling_phase} {who} CPU per acked event / trivial server CPU per request | {} | median **{cpu_ratio:.2}x** | <= {CPU_RATIO_GOAL}x: {} |",
            each(&|x| format!("{:.2}x", x.cpu_ratio(g)), &mut r.rounds),
            verdict(cpu_ratio <= CPU_RATIO_GOAL)
        );
        let half_cpu_ratio = median(r.rounds.iter().map(|x| x.half_cpu_ratio(g)));
        println!(
            "| (d)/(d-) at the same offered rate (half of (c)): {who} CPU µs per acked event / trivial server's per request | {} | median **{half_cpu_ratio:.2}x** | |",
            each(
                &|x| format!(
                    "{:.1} / {:.1} = {:.2}x",
                    x.gateways[g].half_cpu,
                    x.ceilings_half[x.gateways[g].ceiling],
                    x.half_cpu_ratio(g)
                ),
                &mut r.rounds
            ),
        );
        println!(
            "| (d) {who} p99 | {} | {} | |",
            each(
                &|x| format!("{:.2} ms", x.gateways[g].half.latency_ms(0.99)),
                &mut r.rounds
            ),
            latencies(&mut half),
        );
        println!(
            "| (d)-(d') p99 the {who} adds | {} | **{added:.2} ms** | <= {ADDED_P99_GOAL_MS} ms: {} |",
            each(&|x| format!("{:.2} ms", x.added_p99(g)), &mut r.rounds),
            verdict(added <= ADDED_P99_GOAL_MS)
        );
    }

    let median_half_rate = r.median_half_rate;
    let skipped = "skipped (short form)".to_string();
    println!();
    println!("| measurement | result | goal |");
    println!("|---|---|---|");
    let half = (connections / 2).max(1);
    for (label, ratios) in r.pairs.iter().filter(|(_, ratios)| !ratios.is_empty()) {
        let ratio = median(ratios.iter().copied());
        let runs: Vec<String> = ratios.iter().map(|x| format!("{x:.2}x")).collect();
        println!(
            "| {label} in pairs: the gateway and the trivial server under load at the same time, {half} connections each, {} runs | {}; median **{ratio:.2}x** | <= {CPU_RATIO_GOAL}x: {} |",
            ratios.len(),
            runs.join(", "),
            verdict(ratio <= CPU_RATIO_GOAL)
        );
    }
    match &r.within_limit {
        Some(Ok(limited)) => {
            let ratios: Vec<f64> = limited.runs.iter().map(|run| run.ratio()).collect();
            let ratio = median(ratios.iter().copied());
            let by_run: Vec<String> = ratios.iter().map(|x| format!("{x:.2}x")).collect();
            let of =
                |f: &dyn Fn(&within_limit::LimitedRun) -> f64| median(limited.runs.iter().map(f));
            println!(
                "| (c1)/(a1) within a CPU limit of {m}m each (a cgroup with a CFS quota, what `resources.limits.cpu: {m}m` sets), at the same time, {} connections each, {} runs | {}; median **{ratio:.2}x** (medians: gateway {:.0} events/s at {:.1} µs ({:.1} in the kernel), trivial server {:.0} req/s at {:.1} µs ({:.1}); throttled in {:.0}% and {:.0}% of their periods; context switches per request {:.3} and {:.3}; the machine {:.0}% idle) | <= {CPU_RATIO_GOAL}x: {} |",
                limited.connections_each,
                ratios.len(),
                by_run.join(", "),
                of(&|x| x.gateway_rate),
                of(&|x| x.gateway_cpu),
                of(&|x| x.gateway_system),
                of(&|x| x.trivial_rate),
                of(&|x| x.trivial_cpu),
                of(&|x| x.trivial_system),
                100.0 * of(&|x| x.gateway_throttled),
                100.0 * of(&|x| x.trivial_throttled),
                of(&|x| x.gateway_switches),
                of(&|x| x.trivial_switches),
                100.0 * of(&|x| x.idle),
                verdict(ratio <= CPU_RATIO_GOAL),
                m = limited.millicores,
            );
        }
        Some(Err(error)) => {
            println!("| (c1)/(a1) within a CPU limit | skipped, no cgroup for it: {error} | |")
        }
        None => {}
    }
    println!(
        "| (b) raw JetStream publish, file storage, 1024 in flight | {} | storage ceiling |",
        r.storage
            .as_ref()
            .map_or(skipped.clone(), |s| format!("{:.0} msg/s", s.rate()))
    );
    match (&r.client_alone, &r.raw_alone) {
        (Some(async_nats), Some(own)) => {
            let (shards, per_shard) = shard_shape(r.connections);
            println!(
                "| (b2) the gateway's store step alone on async-nats (as the gateway published until it had its own client), {shards} connections of {per_shard} publishers each, closed loop | {:.0} acks/s; CPU per ack: {} | |",
                async_nats.report.rate(),
                cpu_list(&async_nats.cpu)
            );
            println!(
                "| (b3) the same on the gateway's own client (`fanout_gateway::nats`) | {:.0} acks/s; CPU per ack: {} | |",
                own.report.rate(),
                cpu_list(&own.cpu)
            );
            // What the gateway spends besides serving HTTP (the trivial server's
            // share) and its NATS client ((b3)), against what 1.4x would leave it.
            let client = own.cpu[0].1;
            let beside = median(
                r.rounds
                    .iter()
                    .map(|round| round.gateways[0].cpu[0].1 - round.ceiling_cpu(0)),
            ) - client;
            let trivial = median(r.rounds.iter().map(|round| round.ceiling_cpu(0)));
            let left = (CPU_RATIO_GOAL - 1.0) * trivial - client;
            println!(
                "| (c)-(a)-(b3) the gateway's CPU per event besides HTTP and its NATS client (medians of rounds) | {beside:.1} µs | at {CPU_RATIO_GOAL}x: <= {left:.1} µs |"
            );
        }
        _ => println!("| (b2), (b3) the gateway's store step alone | {skipped} | |"),
    }
    println!(
        "| (c') (c) with its own Idempotency-Key on each request (a Nats-Msg-Id in the duplicate table) | {} | |",
        r.max_keyed.as_ref().map_or(skipped.clone(), |k| format!(
            "{:.0} events/s = {:.0}% of (a)'s median",
            k.rate(),
            k.rate() / ceiling * 100.0
        ))
    );
    let fixed_rounds = r.fixed.storage.len();
    let shapes = [("(e)", "the gateway"), ("(e1)", "the gateway, one shard,")];
    for ((label, who), rounds) in shapes.iter().zip(&r.fixed.gateways) {
        let mut all = Report::pooled(rounds);
        println!(
            "| {label} {who} at a fixed {FIXED_RATE:.0}/s offered, {fixed_rounds} rounds, achieved {:.0}/s | {} | |",
            all.rate(),
            latencies(&mut all)
        );
    }
    println!(
        "| (e') JetStream publish+ack alone at {FIXED_RATE:.0}/s, {} publishers, in the same rounds | {} | |",
        r.connections,
        latencies(&mut Report::pooled(&r.fixed.storage))
    );
    for ((label, who), rounds) in shapes.iter().zip(&mut r.fixed.gateways) {
        let added: Vec<f64> = rounds
            .iter_mut()
            .zip(r.fixed.storage.iter_mut())
            .map(|(gateway, storage)| gateway.latency_ms(0.99) - storage.latency_ms(0.99))
            .collect();
        let by_round = added
            .iter()
            .map(|a| format!("{a:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        let middle = median(added.iter().copied());
        println!(
            "| {label}-(e') p99 {who} adds at {FIXED_RATE:.0}/s, by round: {by_round} ms | median **{middle:.2} ms** | proposed in place of (d)-(d') on 2 cores, <= {ADDED_P99_GOAL_MS} ms: {} |",
            verdict(middle <= ADDED_P99_GOAL_MS)
        );
    }
    println!(
        "| (d'') the trivial server at {median_half_rate:.0}/s (the median half rate) | {} | |",
        latencies(&mut r.trivial_half)
    );
    match r.rss_kib.map(|k| k as f64 / 1024.0) {
        Some(mib) => println!(
            "| gateway peak RSS (VmHWM of the `fanout gateway` process, after every round and (e){}) | {mib:.1} MiB | < 64 MiB: {} |",
            if r.short { "" } else { " and (c')" },
            verdict(mib < 64.0)
        ),
        None => println!("| gateway peak RSS | unknown | < 64 MiB |"),
    }
    let mut failed: Vec<(&str, u64)> = Vec::new();
    for (label, reports) in [
        ("e", &r.fixed.gateways[0]),
        ("e1", &r.fixed.gateways[1]),
        ("e'", &r.fixed.storage),
    ] {
        failed.extend(reports.iter().map(|report| (label, report.failed)));
    }
    failed.extend(r.storage.as_ref().map(|s| ("b", s.failed)));
    failed.extend(r.client_alone.as_ref().map(|a| ("b2", a.report.failed)));
    failed.extend(r.raw_alone.as_ref().map(|a| ("b3", a.report.failed)));
    failed.extend(r.max_keyed.as_ref().map(|k| ("c'", k.failed)));
    for round in &r.rounds {
        failed.extend([
            ("a", round.ceilings[0].0.failed),
            ("a1", round.ceilings[1].0.failed),
            ("d'", round.storage_half.failed),
        ]);
        for gateway in &round.gateways {
            failed.extend([("c", gateway.max.failed), ("d", gateway.half.failed)]);
        }
    }
    if failed.iter().any(|(_, n)| *n > 0) {
        println!("\nnot counted (failed requests): {failed:?}");
    }
}
