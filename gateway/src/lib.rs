//! The HTTP ingest gateway (`fanout gateway`). Work in progress.

/// Command-line settings of `fanout gateway`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The rendered gateway configuration (YAML or JSON).
    #[arg(long, env = "FANOUT_GATEWAY_CONFIG")]
    pub config: std::path::PathBuf,
}

/// Runs the gateway until a shutdown signal.
pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!(
        "the gateway is not implemented yet (config {})",
        args.config.display()
    )
}
