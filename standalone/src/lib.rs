//! `fanout standalone`: the data plane for manifests read from files, in one process,
//! without Kubernetes. It is the quick start, the demo and a test bed, and it runs the
//! same code the operator and the pods run: `fanout_api` renders the routes,
//! `fanout_provision` creates the JetStream objects, the gateway and one dispatcher
//! engine per route deliver, and `fanout_provision::observe` reports the status.
//!
//! How a start goes, one module per step:
//! - [`manifests_dir`]: read `-f` files and directories; refuse bad documents by name.
//! - [`checks`]: what the apiserver would refuse across objects (duplicates, missing
//!   Secret keys), before anything is started.
//! - [`secrets`]: the private state directory; Secret keys as 0600 files.
//! - [`prepare`]: render every route and write the gateway's configuration.
//! - [`provisioning`]: the routes' streams and consumers, waiting for a JetStream that
//!   is not ready yet.
//! - [`run`]: provision, start gateway and engines, serve status, drain on a signal.
//! - [`status`]: the per-target table, from JetStream and the health snapshots;
//!   [`http`]: `/status`, `/metrics`, `/healthz`, `/readyz`.
//!
//! [`demo_target`] is `fanout demo-target`, a small HTTP API for trying it out.

pub mod checks;
pub mod demo_target;
pub mod http;
pub mod manifests_dir;
pub mod prepare;
pub mod provisioning;
pub mod run;
pub mod schema;
pub mod secrets;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use run::run;

/// Command-line settings of `fanout standalone`. Every flag is also an environment
/// variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Manifest file or directory (ApiTarget, FanOutRoute and Secret documents, YAML
    /// or JSON); repeat for more. Directories are read one level deep, in name order.
    #[arg(
        short = 'f',
        long = "filename",
        env = "FANOUT_STANDALONE_FILES",
        value_delimiter = ',',
        required = true
    )]
    pub files: Vec<PathBuf>,

    /// Namespace of objects whose metadata has none.
    #[arg(
        short = 'n',
        long,
        env = "FANOUT_STANDALONE_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,

    #[command(flatten)]
    pub nats: fanout_dispatcher::NatsArgs,

    /// Address of the ingest gateway.
    #[arg(
        long,
        env = "FANOUT_STANDALONE_LISTEN_GATEWAY",
        default_value = "127.0.0.1:8080"
    )]
    pub listen_gateway: SocketAddr,

    /// Address of `/status`, `/metrics` (the dispatchers' and the gateway's),
    /// `/healthz` and `/readyz`; the gateway's address serves the events API only.
    #[arg(
        long,
        env = "FANOUT_STANDALONE_LISTEN_METRICS",
        default_value = "127.0.0.1:9090"
    )]
    pub listen_metrics: SocketAddr,

    /// Where Secret keys and the rendered configuration are written (created with
    /// mode 0700). Default: a new temporary directory, removed on exit.
    #[arg(long, env = "FANOUT_STANDALONE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Print the per-target status table to stdout this often (e.g. 10s).
    #[arg(long, env = "FANOUT_STANDALONE_PRINT_STATUS_EVERY")]
    pub print_status_every: Option<fanout_config::Duration>,

    /// How often the engines write health snapshots, which `/status` reads.
    #[arg(long, env = "FANOUT_STANDALONE_HEALTH_INTERVAL", default_value = "1s")]
    pub health_interval: fanout_config::Duration,

    /// How long the start waits for JetStream to be ready for the routes' streams
    /// (a cluster still electing its leader, servers still joining); any other
    /// failure to create them stops the start at once.
    #[arg(long, env = "FANOUT_STANDALONE_JETSTREAM_WAIT", default_value = "60s")]
    pub jetstream_wait: fanout_config::Duration,

    /// How long deliveries in flight may take to finish after SIGTERM or SIGINT.
    #[arg(long, env = "FANOUT_STANDALONE_SHUTDOWN_GRACE", default_value = "25s")]
    pub shutdown_grace: fanout_config::Duration,

    /// Refuse loopback targets, as dispatcher pods do (here they are allowed by
    /// default: targets often run on the same machine).
    #[arg(long, env = "FANOUT_EGRESS_DENY_LOOPBACK")]
    pub egress_deny_loopback: bool,

    /// Where targets may be connected to, as for `fanout dispatch`.
    #[command(flatten)]
    pub egress: fanout_dispatcher::EgressArgs,

    /// Traces of the gateway's requests and of every attempt (off unless
    /// --otlp-endpoint is set).
    #[command(flatten)]
    pub otlp: fanout_otel::OtlpArgs,
}
