//! `fanout`: one binary, one subcommand per component. Each component crate owns its
//! flags (`Args`) and its `run`; this file only wires them up. Called as
//! `kubectl-fanout`, the same binary is the kubectl plugin ([`plugin`]).

mod dlq;
mod plugin;
mod table;

use std::io::Write;
use std::num::NonZeroUsize;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

// A large share of delivery CPU is small allocations (headers, requests, acks);
// mimalloc serves them markedly faster than glibc's malloc (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fanout",
    version,
    about = "Asynchronous fan-out of events to HTTP APIs on Kubernetes"
)]
struct Cli {
    /// Log format: text for people, json for log collectors.
    #[arg(long, env = "FANOUT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    /// Async runtime threads. Default: 1 for `dispatch` and `gateway`, whose work runs
    /// on threads of their own (a thread per target, a thread per gateway shard: no
    /// cross-thread wake-ups, which cost a third more CPU per event), all cores
    /// otherwise.
    #[arg(long, env = "FANOUT_WORKER_THREADS", global = true)]
    worker_threads: Option<NonZeroUsize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (ApiTarget, FanOutRoute) as YAML.
    Crd,
    /// Deliver one route's events to its targets.
    Dispatch(fanout_dispatcher::Args),
    /// Accept events over HTTP and store them in JetStream.
    Gateway(fanout_gateway::Args),
    /// List a route's dead letters, or send them again to their target.
    Dlq(dlq::Args),
    /// Reconcile FanOutRoutes and ApiTargets into JetStream, dispatcher Deployments
    /// and status.
    Operator(Box<fanout_operator::Args>),
    /// Run gateway and dispatchers for manifests from files, in one process, without
    /// Kubernetes (quick start, demos, tests).
    Standalone(fanout_standalone::Args),
    /// A small HTTP API that logs what it receives, for trying Fanout out.
    DemoTarget(fanout_standalone::demo_target::Args),
}

fn main() -> anyhow::Result<()> {
    if plugin::invoked() {
        return plugin::main();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            let yaml = fanout_api::crd::yaml().context("rendering the CRDs as YAML")?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing the CRDs to stdout")?;
            Ok(())
        }
        Command::Dispatch(args) => serve(
            cli.log_format,
            cli.worker_threads.or(NonZeroUsize::new(1)),
            fanout_dispatcher::run(args),
        ),
        Command::Gateway(args) => serve(
            cli.log_format,
            cli.worker_threads.or(NonZeroUsize::new(1)),
            fanout_gateway::run(args),
        ),
        Command::Dlq(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(dlq::run(args)),
        Command::Operator(args) => serve(
            cli.log_format,
            cli.worker_threads,
            fanout_operator::run(*args),
        ),
        Command::Standalone(args) => serve(
            cli.log_format,
            cli.worker_threads,
            fanout_standalone::run(args),
        ),
        Command::DemoTarget(args) => serve(
            cli.log_format,
            cli.worker_threads.or(NonZeroUsize::new(1)),
            fanout_standalone::demo_target::run(args),
        ),
    }
}

/// Runs a long-lived component with logging set up, on `threads` runtime threads
/// (all cores when `None`).
fn serve(
    format: LogFormat,
    threads: Option<NonZeroUsize>,
    component: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FANOUT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = match threads.map(NonZeroUsize::get) {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    runtime
        .context("starting the async runtime")?
        .block_on(component)
}
