//! How every Fanout process reaches NATS: one set of flags (URL, credentials file,
//! token file, CA file) and one way to connect. Secrets come from files only, never
//! from the command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// How long a stopping process waits for what its connection still buffers to reach
/// NATS.
pub const FLUSH_AT_EXIT: Duration = Duration::from_secs(5);

/// Whether `client` has lost its server and not yet reached another: anything that
/// waits for an answer from NATS would wait out its timeout.
pub fn is_away(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Disconnected
}

/// Sends what `client` still buffers (the last health snapshot, core publishes) before
/// the process exits, waiting at most `limit`. async-nats' own flush waits for a
/// reconnect for ever while NATS is away, and a process told to stop must stop: what
/// is dropped here was never acknowledged, so nothing accepted is lost (JetStream
/// redelivers events whose acks did not arrive, and dead letters are published with
/// an acknowledgement before their event is let go).
pub async fn flush_before_exit(client: &async_nats::Client, limit: Duration) -> anyhow::Result<()> {
    if is_away(client) {
        anyhow::bail!("NATS is away: what this process had not yet sent to it is dropped");
    }
    tokio::time::timeout(limit, client.flush())
        .await
        .map_err(|_| anyhow::anyhow!("flushing NATS took longer than {limit:?}"))?
        .context("flushing NATS")
}

#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated (a cluster's servers: the client moves to
    /// another one when its server goes away).
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
    /// How often the connection is checked with a PING. A server that stops
    /// answering (frozen, or cut off without the TCP connection closing) is given up
    /// on after two unanswered PINGs, and the client moves to another server of the
    /// cluster: the client's own default of 60s would keep publishes and acks
    /// waiting for minutes.
    #[arg(
        long = "nats-ping-interval",
        env = "FANOUT_NATS_PING_INTERVAL",
        default_value = "10s"
    )]
    pub ping_interval: fanout_config::Duration,
}

impl NatsArgs {
    /// `url` without credentials or TLS, pinged every 10 s (the flags' defaults):
    /// what a test or a benchmark on loopback connects with.
    pub fn for_url(url: impl Into<String>) -> NatsArgs {
        NatsArgs {
            url: url.into(),
            credentials_file: None,
            token_file: None,
            ca_file: None,
            ping_interval: fanout_config::Duration::from_secs(10),
        }
    }

    /// Connects, failing if NATS cannot be reached now (a process that cannot work
    /// without it should say so at start).
    pub async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        self.options()
            .await?
            .name(name)
            .connect(self.servers())
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
            .connect(self.servers())
            .await
            .with_context(|| format!("connecting to NATS at {}", self.url))
    }

    /// The servers `--nats-url` lists. The client library reads one URL per string,
    /// so the list is split here.
    pub fn servers(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
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
        Ok(options.ping_interval(self.ping_interval.as_std()))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        nats: NatsArgs,
    }

    #[test]
    fn a_comma_separated_url_lists_every_server_of_a_cluster() {
        let flags = Flags::parse_from([
            "test",
            "--nats-url",
            "nats://a:4222, nats://b:4222,nats://c:4222",
        ]);
        assert_eq!(
            flags.nats.servers(),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert_eq!(flags.nats.ping_interval.to_string(), "10s");
    }
}
