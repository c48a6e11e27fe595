//! `fanout operator` flags. Every flag has an environment variable (the Helm chart
//! sets those); secrets are only ever read from files.

use std::net::SocketAddr;
use std::path::PathBuf;

use fanout_config::Duration;
use fanout_config::egress::Entry;
use fanout_process::nats::NatsArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The operator's own namespace: its Lease, the gateway's ConfigMap and token
    /// Secret live here. Default: the pod's service-account namespace, else "default".
    #[arg(long, env = "FANOUT_NAMESPACE")]
    pub namespace: Option<String>,

    /// Reconcile only these namespaces (a namespaced install, whose RBAC covers only
    /// them): repeat the flag or separate names with commas. Default: every namespace.
    #[arg(
        long = "watch-namespace",
        env = "FANOUT_WATCH_NAMESPACE",
        value_delimiter = ','
    )]
    pub watch_namespaces: Vec<String>,

    /// Identity in leader election. Default: $HOSTNAME.
    #[arg(long, env = "FANOUT_POD_NAME")]
    pub pod_name: Option<String>,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "FANOUT_OPERATOR_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,

    /// Run controllers only while holding the Lease, so that two replicas can run
    /// with one active.
    #[arg(long, env = "FANOUT_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(long, env = "FANOUT_LEASE_NAME", default_value = "fanout-operator")]
    pub lease_name: String,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub dispatcher: DispatcherArgs,

    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// Watch the metadata of Secrets in the watched namespaces, so that a rotated
    /// ingest token reaches the gateway at once instead of at the next
    /// --gateway-resync. Needs list and watch on Secrets, which is read access to all
    /// of them (the chart's `operator.watchSecrets`); off by default.
    #[arg(long, env = "FANOUT_WATCH_SECRETS", default_value_t = false, action = clap::ArgAction::Set)]
    pub watch_secrets: bool,

    /// How often each route's status is refreshed from JetStream and the dispatchers'
    /// health reports.
    #[arg(long, env = "FANOUT_STATUS_INTERVAL", default_value = "10s")]
    pub status_interval: Duration,
}

/// What the dispatcher pods the operator creates look like.
#[derive(Debug, Clone, clap::Args)]
pub struct DispatcherArgs {
    /// Image of dispatcher pods; always allowed (see --allowed-dispatcher-images).
    #[arg(long = "dispatcher-image", env = "FANOUT_DISPATCHER_IMAGE")]
    pub image: String,
    /// Further images routes may choose with `spec.dispatcher.image`, separated by
    /// commas. An entry with a tag or digest allows exactly that reference; one
    /// without allows that repository with any tag or digest. Default: none, so
    /// routes run --dispatcher-image only.
    #[arg(
        long = "allowed-dispatcher-images",
        env = "FANOUT_ALLOWED_DISPATCHER_IMAGES",
        value_delimiter = ','
    )]
    pub allowed_images: Vec<String>,
    /// Pull policy of dispatcher pods: Always, IfNotPresent or Never.
    #[arg(
        long = "dispatcher-image-pull-policy",
        env = "FANOUT_DISPATCHER_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    pub image_pull_policy: String,
    /// NATS URL as seen from dispatcher pods. Default: --nats-url.
    #[arg(long = "dispatcher-nats-url", env = "FANOUT_DISPATCHER_NATS_URL")]
    pub nats_url: Option<String>,
    /// Secret, in each route's namespace, whose key `nats.creds` is the NATS
    /// credentials file of that route's dispatchers.
    #[arg(
        long = "dispatcher-nats-credentials-secret",
        env = "FANOUT_DISPATCHER_NATS_CREDENTIALS_SECRET",
        conflicts_with = "nats_token_secret"
    )]
    pub nats_credentials_secret: Option<String>,
    /// Secret, in each route's namespace, whose key `token` is the NATS token of
    /// that route's dispatchers.
    #[arg(
        long = "dispatcher-nats-token-secret",
        env = "FANOUT_DISPATCHER_NATS_TOKEN_SECRET"
    )]
    pub nats_token_secret: Option<String>,
    /// Secret, in each route's namespace, whose key `ca.crt` is the CA (PEM) that
    /// signed the NATS server's certificate, for dispatchers reaching NATS over TLS.
    #[arg(
        long = "dispatcher-nats-ca-secret",
        env = "FANOUT_DISPATCHER_NATS_CA_SECRET"
    )]
    pub nats_ca_secret: Option<String>,
    /// Networks (10.0.0.0/8), addresses or host names dispatcher pods must not connect
    /// to, besides their defaults (loopback, link-local, cloud metadata and
    /// unspecified addresses, and the apiserver's addresses, which the operator
    /// finds and passes on). Comma-separated, or repeat the flag.
    #[arg(
        long = "dispatcher-egress-deny",
        env = "FANOUT_DISPATCHER_EGRESS_DENY",
        value_delimiter = ',',
        value_name = "NETWORK|HOST"
    )]
    pub egress_deny: Vec<Entry>,
    /// Networks, addresses or host names dispatcher pods may connect to although a
    /// default or a wider deny entry refuses them (the most specific network
    /// decides).
    #[arg(
        long = "dispatcher-egress-allow",
        env = "FANOUT_DISPATCHER_EGRESS_ALLOW",
        value_delimiter = ',',
        value_name = "NETWORK|HOST"
    )]
    pub egress_allow: Vec<Entry>,
    /// Log filter of dispatcher pods (tracing EnvFilter syntax, as `FANOUT_LOG`).
    #[arg(
        id = "dispatcher_log",
        long = "dispatcher-log",
        env = "FANOUT_DISPATCHER_LOG",
        default_value = "info"
    )]
    pub log: String,
    /// Log format of dispatcher pods: `json` or `text`.
    // The ids differ from the field names: `log_format` is also the CLI's global flag,
    // and clap keys matches by id.
    #[arg(
        id = "dispatcher_log_format",
        long = "dispatcher-log-format",
        env = "FANOUT_DISPATCHER_LOG_FORMAT",
        default_value = "json",
        value_parser = ["json", "text"]
    )]
    pub log_format: String,
    /// Base URL of the OTLP/HTTP collector dispatcher pods send their spans to (e.g.
    /// http://otel-collector.observability:4318). Default: none, no traces.
    #[arg(
        long = "dispatcher-otlp-endpoint",
        env = "FANOUT_DISPATCHER_OTLP_ENDPOINT"
    )]
    pub otlp_endpoint: Option<String>,
    /// Share of traces dispatcher pods record, from 0 to 1, for events that carry no
    /// sampling decision of their own.
    #[arg(
        long = "dispatcher-otlp-sampling-ratio",
        env = "FANOUT_DISPATCHER_OTLP_SAMPLING_RATIO",
        default_value_t = 1.0
    )]
    pub otlp_sampling_ratio: f64,
    /// Secret, in each route's namespace, whose key `headers` holds the headers
    /// dispatcher pods send to the collector, one `Name: value` per line.
    #[arg(
        long = "dispatcher-otlp-headers-secret",
        env = "FANOUT_DISPATCHER_OTLP_HEADERS_SECRET"
    )]
    pub otlp_headers_secret: Option<String>,
}

/// Where the gateway reads the routes the operator renders for it.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// ConfigMap (in --namespace) the operator writes the gateway's routes to.
    #[arg(
        long = "gateway-config-map",
        env = "FANOUT_GATEWAY_CONFIG_MAP",
        default_value = "fanout-gateway"
    )]
    pub config_map: String,
    /// Secret (in --namespace) the operator copies routes' ingest tokens into.
    #[arg(
        long = "gateway-tokens-secret",
        env = "FANOUT_GATEWAY_TOKENS_SECRET",
        default_value = "fanout-gateway-tokens"
    )]
    pub tokens_secret: String,
    /// Where the gateway pods mount that Secret.
    #[arg(
        long = "gateway-tokens-dir",
        env = "FANOUT_GATEWAY_TOKENS_DIR",
        default_value = "/var/run/fanout/gateway-tokens"
    )]
    pub tokens_dir: PathBuf,
    /// How often the gateway's routes and token copies are rewritten even when no
    /// watch reported a change. Without --watch-secrets this is how soon a rotated
    /// ingest token reaches the gateway. Default: 30s, or 5m with --watch-secrets
    /// (then only a backstop).
    #[arg(long = "gateway-resync", env = "FANOUT_GATEWAY_RESYNC")]
    pub resync: Option<Duration>,
}

impl GatewayArgs {
    /// `--gateway-resync`, or its default.
    pub fn resync(&self, watch_secrets: bool) -> std::time::Duration {
        match self.resync {
            Some(d) => d.as_std(),
            None if watch_secrets => std::time::Duration::from_secs(300),
            None => std::time::Duration::from_secs(30),
        }
    }
}
