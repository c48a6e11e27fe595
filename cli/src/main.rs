//! `fanout`: one binary, one subcommand per component. Each component crate owns its
//! flags (`Args`) and its `run`; this file only wires them up. Called as
//! `kubectl-fanout`, the same binary is the kubectl plugin ([`plugin`]).

mod dlq;
mod history;
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
    /// Show every attempt at delivering one event, at every target, from the route's
    /// delivery history.
    Attempts(history::AttemptsArgs),
    /// List a route's recent events with their delivery state at each target.
    Events(history::EventsArgs),
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
        Command::Attempts(args) => one_shot(history::attempts(args)),
        Command::Events(args) => one_shot(history::events(args)),
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

/// Runs a command that does one thing and exits.
fn one_shot(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(command)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap keys parsed values by id; a subcommand argument with a global flag's id
    /// makes every parse of that subcommand panic.
    #[test]
    fn no_subcommand_argument_shares_an_id_with_a_global_flag() {
        let root = Cli::command();
        root.clone().debug_assert();
        let globals: Vec<String> = root
            .get_arguments()
            .filter(|a| a.is_global_set())
            .map(|a| a.get_id().to_string())
            .collect();
        let mut pending: Vec<(String, clap::Command)> = root
            .get_subcommands()
            .map(|c| (c.get_name().to_string(), c.clone()))
            .collect();
        let mut clashes = Vec::new();
        while let Some((path, command)) = pending.pop() {
            for arg in command.get_arguments() {
                if globals.iter().any(|g| g == arg.get_id().as_str()) {
                    clashes.push(format!("{path}: {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                pending.push((format!("{path} {}", sub.get_name()), sub.clone()));
            }
        }
        assert!(
            clashes.is_empty(),
            "ids of global flags reused: {clashes:?}"
        );
    }

    #[test]
    fn the_operator_parses_with_its_dispatcher_log_flags() {
        let cli = Cli::try_parse_from([
            "fanout",
            "--log-format",
            "json",
            "operator",
            "--dispatcher-image",
            "fanout:dev",
            "--dispatcher-log-format",
            "text",
        ])
        .expect("parses");
        assert!(matches!(cli.log_format, LogFormat::Json));
        assert!(matches!(cli.command, Command::Operator(_)));
    }
}
