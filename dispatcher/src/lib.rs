//! The delivery engine (`fanout dispatch`). Work in progress.

/// Command-line settings of `fanout dispatch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The rendered route configuration (YAML or JSON).
    #[arg(long, env = "FANOUT_DISPATCH_CONFIG")]
    pub config: std::path::PathBuf,
}

/// Runs the dispatcher until a shutdown signal.
pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!(
        "the dispatcher is not implemented yet (config {})",
        args.config.display()
    )
}
