//! How every Fanout process reaches NATS: one set of flags (URL, credentials file,
//! token file, CA file) and one way to connect. Secrets come from files only, never
//! from the command line.

use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long = "nats-url",
        env = "FANOUT_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// NATS credentials file (JWT and NKey seed).
    #[arg(long = "nats-credentials-file", env = "FANOUT_NATS_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,
    /// File holding a NATS token.
    #[arg(
        long = "nats-token-file",
        env = "FANOUT_NATS_TOKEN_FILE",
        conflicts_with = "credentials_file"
    )]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the NATS server's certificate; enables TLS.
    #[arg(long = "nats-ca-file", env = "FANOUT_NATS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl NatsArgs {
    /// Connects, failing if NATS cannot be reached now (a process that cannot work
    /// without it should say so at start).
    pub async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        self.options()
            .await?
            .name(name)
            .connect(&self.url)
            .await
            .with_context(|| format!("connecting to NATS at {}", self.url))
    }

    /// Connects in the background: returns at once and keeps retrying, for a process
    /// that reports NATS being away instead of failing (the operator).
    pub async fn connect_in_background(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        self.options()
            .await?
            .name(name)
            .retry_on_initial_connect()
            .connect(&self.url)
            .await
            .with_context(|| format!("connecting to NATS at {}", self.url))
    }

    /// The connection settings these flags give (authentication and TLS), for a
    /// process that sets more of its own before connecting (the gateway).
    pub async fn options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let mut options = match &self.credentials_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .with_context(|| format!("reading the NATS credentials file {}", path.display()))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("reading the NATS token file {}", path.display()))?;
            options = options.token(token.trim().to_string());
        }
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        Ok(options)
    }
}
