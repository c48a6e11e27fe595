//! `fanout`: one binary, one subcommand per component. Each component crate owns its
//! flags (`Args`) and its `run`; this file only wires them up.

use std::io::Write;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            let yaml = fanout_api::crd::yaml().context("rendering the CRDs as YAML")?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .context("writing the CRDs to stdout")?;
            Ok(())
        }
        Command::Dispatch(args) => serve(cli.log_format, fanout_dispatcher::run(args)),
        Command::Gateway(args) => serve(cli.log_format, fanout_gateway::run(args)),
    }
}

/// Runs a long-lived component with logging set up.
fn serve(
    format: LogFormat,
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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(component)
}
