//! `kubectl fanout`: the kubectl plugin. The `fanout` binary runs it when it is called
//! as `kubectl-fanout` (a link or copy of that name on PATH, which is how kubectl finds
//! plugins; `scripts/install-kubectl-fanout.sh` puts one there).
//!
//! It takes kubectl's conventions ([`cluster`]: `--kubeconfig`/KUBECONFIG, `--context`,
//! `-n`; [`output`]: `-o json|yaml|wide`) and finds the NATS that Fanout uses from the
//! cluster ([`connection`]), so its user needs no NATS settings of their own. One file
//! per command: [`status`], [`dlq`], [`replay`], [`history`] (`attempts` and `events`).

mod cluster;
mod connection;
mod dlq;
mod history;
mod output;
mod progress;
mod replay;
mod status;

use anyhow::Context as _;
use clap::Parser;

/// Whether the process was started as the kubectl plugin (`kubectl-fanout`).
pub fn invoked() -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .is_some_and(|name| name == "kubectl-fanout")
}

#[derive(Parser)]
#[command(
    name = "kubectl fanout",
    bin_name = "kubectl fanout",
    version,
    about = "Fanout from kubectl: a route's delivery status, its dead letters, replays of its events to one target, and what happened to each event"
)]
struct Cli {
    #[command(flatten)]
    cluster: cluster::ClusterArgs,

    #[command(flatten)]
    nats: connection::NatsFlags,

    /// Output format: json, yaml, or wide (a table with more columns). Default: a table.
    #[arg(short = 'o', long, global = true, value_enum, help_heading = "Output")]
    output: Option<output::Format>,

    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// The per-target delivery table of routes, from their status (like
    /// `fanout standalone`'s /status.txt).
    Status(status::Args),
    /// List a route's dead letters, or send them again to their target.
    Dlq(dlq::Args),
    /// Send the events a route's stream still holds for a window again to one target
    /// only, with their original Idempotency-Keys, at the target's rate limit.
    Replay(replay::Args),
    /// Every target's attempts at one event, from the route's delivery history.
    Attempts(history::AttemptsArgs),
    /// A route's recent events and where each stands at each target (`--failed`: only
    /// those not delivered), from its delivery history.
    Events(history::EventsArgs),
}

/// What every command gets: the cluster, how to reach NATS, the output format.
pub struct Session {
    pub kube: cluster::Cluster,
    nats: connection::NatsFlags,
    pub output: Option<output::Format>,
}

impl Session {
    /// A connection to the NATS Fanout uses (see [`connection`]).
    pub async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        Ok(connection::connect(&self.kube, &self.nats).await?)
    }
}

/// Runs the plugin with the process's arguments.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FANOUT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let session = Session {
                kube: cli.cluster.connect().await?,
                nats: cli.nats,
                output: cli.output,
            };
            match cli.command {
                Command::Status(args) => status::run(&session, args).await,
                Command::Dlq(args) => dlq::run(&session, args).await,
                Command::Replay(args) => replay::run(&session, args).await,
                Command::Attempts(args) => history::attempts(&session, args).await,
                Command::Events(args) => history::events(&session, args).await,
            }
        })
}

/// `arg` as a shell reads it back: quoted only when it needs to be.
pub(crate) fn shell_quote(arg: &str) -> String {
    let plain = arg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@".contains(&b));
    if plain && !arg.is_empty() {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(shell_quote("--since"), "--since");
        assert_eq!(shell_quote("2026-11-27T02:00:00Z"), "2026-11-27T02:00:00Z");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
