//! `fanout-gateway`: the gateway alone, the same as `fanout gateway`. Handy for a
//! small image, and used by the tests (real signals) and the benchmark (its memory
//! is measured as a separate process).

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "fanout-gateway",
    version,
    about = "Accept events over HTTP and store them in JetStream"
)]
struct Cli {
    #[command(flatten)]
    args: fanout_gateway::Args,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FANOUT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // One runtime thread for accepting connections, reloads and signals, as `fanout
    // gateway` runs by default; the shards have threads of their own.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(fanout_gateway::run(cli.args))
}
