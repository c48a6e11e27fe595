//! Command-line flags of `fanout gateway`; each is also an environment variable.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use fanout_config::Duration;

/// Command-line settings of `fanout gateway`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The rendered gateway configuration (YAML or JSON): routes, streams, token files.
    #[arg(long, env = "FANOUT_GATEWAY_CONFIG")]
    pub config: PathBuf,

    /// Traces of each request and publish (off unless --otlp-endpoint is set).
    #[command(flatten)]
    pub otlp: fanout_otel::OtlpArgs,

    /// How often the configuration and token files are re-read for changes; 0s turns
    /// reloading off.
    #[arg(
        long,
        env = "FANOUT_GATEWAY_CONFIG_POLL_INTERVAL",
        default_value = "5s"
    )]
    pub config_poll_interval: Duration,

    /// Address the events API listens on (what producers reach).
    #[arg(long, env = "FANOUT_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of `/healthz`, `/readyz` and `/metrics`: for probes and scrapers, kept
    /// off the events port so that producers cannot read them.
    #[arg(
        long,
        env = "FANOUT_GATEWAY_LISTEN_OPS",
        default_value = "0.0.0.0:9090"
    )]
    pub listen_ops: SocketAddr,

    /// How long a client may take to send a request's headers; a connection that
    /// has not sent them by then is closed. It is also how long a keep-alive
    /// connection may stay idle between requests.
    #[arg(
        long,
        env = "FANOUT_GATEWAY_HEADER_READ_TIMEOUT",
        default_value = "10s"
    )]
    pub header_read_timeout: Duration,

    /// How long a client may take to send a request's body, from when the gateway
    /// starts reading it; then it is answered 408 and the connection is closed.
    #[arg(long, env = "FANOUT_GATEWAY_BODY_READ_TIMEOUT", default_value = "30s")]
    pub body_read_timeout: Duration,

    /// Most connections open at once on the events port (all shards together); a
    /// connection beyond it is closed as soon as it is accepted.
    #[arg(long, env = "FANOUT_GATEWAY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// TLS certificate chain (PEM) of the events port; with --tls-key-file. Without
    /// both, the events port speaks plain HTTP.
    #[arg(long, env = "FANOUT_GATEWAY_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// The TLS certificate's private key (PEM); with --tls-cert-file.
    #[arg(long, env = "FANOUT_GATEWAY_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// How often the TLS files are re-read; a changed pair is served to new
    /// connections, open ones keep theirs. 0s turns reloading off.
    #[arg(long, env = "FANOUT_GATEWAY_TLS_POLL_INTERVAL", default_value = "10s")]
    pub tls_poll_interval: Duration,

    /// Threads serving HTTP, each with its own NATS connection (docs/gateway.md,
    /// "Shards"). Default: the CPUs this process may use.
    #[arg(long, env = "FANOUT_GATEWAY_SHARDS")]
    pub shards: Option<NonZeroUsize>,

    #[command(flatten)]
    pub nats: fanout_process::nats::NatsArgs,

    /// Largest request body accepted, in bytes (single events and whole batches).
    #[arg(long, env = "FANOUT_GATEWAY_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,

    /// Most items accepted in one batch request.
    #[arg(long, env = "FANOUT_GATEWAY_MAX_BATCH_ITEMS", default_value_t = 1000)]
    pub max_batch_items: usize,

    /// Most publishes waiting for JetStream's acknowledgement at once (all shards
    /// together).
    #[arg(long, env = "FANOUT_GATEWAY_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// How long a request waits for an in-flight slot before it gets 503.
    #[arg(long, env = "FANOUT_GATEWAY_IN_FLIGHT_WAIT", default_value = "100ms")]
    pub in_flight_wait: Duration,

    /// How long to wait for JetStream's acknowledgement before answering 503 (the 503
    /// comes at most an eighth of it later).
    #[arg(long, env = "FANOUT_GATEWAY_PUBLISH_TIMEOUT", default_value = "5s")]
    pub publish_timeout: Duration,

    /// Request headers stored with each event, besides Content-Type, traceparent,
    /// tracestate and (for single events) every ce-* header. Comma-separated.
    #[arg(
        long,
        env = "FANOUT_GATEWAY_FORWARD_HEADERS",
        value_delimiter = ',',
        default_value = "X-Event-Type,X-Request-Id,X-Correlation-Id"
    )]
    pub forward_headers: Vec<String>,

    /// After SIGTERM/SIGINT, how long the gateway goes on serving while `/readyz`
    /// answers 503, before it stops accepting connections: time for load balancers
    /// (a Service's endpoints) to stop sending it requests, so that producers see no
    /// refused connections during a rollout. The chart sets 5s.
    #[arg(long, env = "FANOUT_GATEWAY_SHUTDOWN_DELAY", default_value = "0s")]
    pub shutdown_delay: Duration,

    /// After SIGTERM/SIGINT (and the delay), how long requests in progress may take
    /// to finish.
    #[arg(long, env = "FANOUT_GATEWAY_SHUTDOWN_TIMEOUT", default_value = "30s")]
    pub shutdown_timeout: Duration,
}

impl Args {
    /// How many shards to run: `--shards`, else one per CPU the process may use
    /// (which honours a container's CPU quota).
    pub fn shard_count(&self) -> NonZeroUsize {
        self.shards
            .unwrap_or_else(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
    }

    /// Parses flags as the command line would (for tests, benchmarks and embedding).
    pub fn from_flags<I, T>(flags: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: Args,
        }
        let argv = std::iter::once(std::ffi::OsString::from("fanout-gateway"))
            .chain(flags.into_iter().map(Into::into));
        <Command as clap::Parser>::try_parse_from(argv).map(|c| c.args)
    }
}
