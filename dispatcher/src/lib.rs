//! The delivery engine (`fanout dispatch`): every event of a route to every target,
//! independently, durably, at least once.
//!
//! Where things are decided:
//! - [`classify`]: what a response means (delivered / retry / permanent).
//! - [`backoff`]: how long to wait before the next attempt (jitter, Retry-After).
//! - [`breaker`]: whether a target is healthy enough to be sent to.
//! - [`concurrency`]: how many requests go to a target at once (adaptive or fixed).
//! - [`ordering`]: per-key ordering of a target's events.
//! - [`rate_share`]: each replica's share of a target's rate limit.
//! - [`delivery`]: ack, retry later or dead-letter, after an attempt.
//! - [`dead_letter`]: what a dead letter carries and how it is published.
//! - [`request`], [`signing`], [`trace`]: what each HTTP request carries.
//! - [`http`]: how it gets there (pooled connections, TLS, HTTP/2, timeouts, the
//!   egress policy's check of each new connection).
//! - [`egress_hold`]: a target whose address the egress policy refuses waits;
//!   [`egress_flags`]: the policy's flags.
//! - [`oauth2`]: access tokens of the client credentials grant.
//! - [`expressions`]: a target's CEL filter and transform on each event.
//! - [`worker`]: one target's fetch-deliver-settle loop.
//! - [`expiry`]: events nearing the stream's maxAge before anyone fetched them.
//! - [`engine`]: starting and stopping all workers of a route.
//! - [`telemetry`], [`health`], [`server`]: metrics, logs, health snapshots, probes.
//! - [`report`]: what each attempt leaves behind: its record in the delivery history
//!   ([`history`]) and its span ([`tracing_otel`]).
//! - [`load`]: reading the rendered configuration and credentials.

pub mod backoff;
pub mod breaker;
pub mod classify;
pub mod concurrency;
pub mod dead_letter;
pub mod delivery;
pub mod egress_flags;
pub mod egress_hold;
pub mod engine;
pub mod event;
pub mod expiry;
pub mod expressions;
pub mod health;
pub mod history;
pub mod http;
pub mod load;
pub mod message;
pub mod oauth2;
pub mod ordering;
pub mod rate_share;
pub mod report;
pub mod request;
pub mod server;
pub mod signing;
pub mod telemetry;
pub mod trace;
pub mod tracing_otel;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use fanout_process::nats::{FLUSH_AT_EXIT, flush_before_exit};
use tokio_util::sync::CancellationToken;

pub use egress_flags::EgressArgs;
pub use engine::{Engine, EngineOptions, Readiness};
pub use telemetry::Metrics;

/// Command-line settings of `fanout dispatch`. Every flag is also an environment variable.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The rendered route configuration (YAML or JSON), as written by the operator.
    #[arg(long, env = "FANOUT_DISPATCH_CONFIG")]
    pub config: PathBuf,

    #[command(flatten)]
    pub nats: NatsArgs,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "FANOUT_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,

    /// Name in health snapshots; defaults to $HOSTNAME (the pod name in Kubernetes).
    #[arg(long, env = "FANOUT_POD_NAME")]
    pub pod_name: Option<String>,

    /// How often per-target health snapshots are written to NATS.
    #[arg(long, env = "FANOUT_HEALTH_INTERVAL", default_value = "5s")]
    pub health_interval: fanout_config::Duration,

    /// How long requests in flight may take to finish after SIGTERM.
    #[arg(long, env = "FANOUT_SHUTDOWN_GRACE", default_value = "25s")]
    pub shutdown_grace: fanout_config::Duration,

    /// Where targets may be connected to. Loopback is refused unless allowed.
    #[command(flatten)]
    pub egress: EgressArgs,

    /// Traces of each attempt, dead letter and redrive (off unless --otlp-endpoint is
    /// set).
    #[command(flatten)]
    pub otlp: fanout_otel::OtlpArgs,
}

/// How to reach NATS (shared by every Fanout process).
pub use fanout_process::nats::NatsArgs;

/// Runs the dispatcher until SIGTERM or SIGINT, then drains and exits.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let signal = fanout_process::signal::shutdown().context("installing the signal handlers")?;
    let config = load::route_config(&args.config)?;
    let auths = config
        .targets
        .iter()
        .map(load::auth)
        .collect::<Result<Vec<_>, _>>()?;
    let tracing = fanout_otel::Tracing::start(&args.otlp, "fanout-dispatcher")?;
    let nats = args.nats.connect("fanout-dispatcher").await?;
    let metrics = Arc::new(Metrics::default());
    let pod = args
        .pod_name
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "dispatcher".into());
    let grace = args.shutdown_grace.as_std();
    let options = EngineOptions {
        pod,
        health_interval: args.health_interval.as_std(),
        shutdown_grace: grace,
        thread_per_target: true,
        egress: Arc::new(args.egress.policy(true)),
        tracer: tracing.as_ref().map(fanout_otel::Tracing::tracer),
        ..EngineOptions::new(args.nats.clone())
    };
    let mut engine = Engine::start(config, auths, nats.clone(), metrics.clone(), options).await?;

    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let server = tokio::spawn(server::serve(
        listener,
        metrics,
        nats.clone(),
        engine.readiness(),
        shutdown.clone(),
    ));

    // A target whose worker thread panicked gets nothing more from this process: stop
    // (and fail, so that Kubernetes restarts the pod) rather than deliver to the
    // other targets only.
    let lost = tokio::select! {
        () = signal => None,
        target = engine.worker_lost() => Some(target),
    };
    tracing::info!("stopping: no new fetches, finishing deliveries in flight");
    // Stopping talks to NATS (acks, the last health snapshot and history records),
    // each step with a limit of its own; this bounds them together, so that a pod
    // told to stop during a NATS outage stops within its termination grace period.
    let drain_limit = grace + FLUSH_AT_EXIT;
    let drained = tokio::time::timeout(drain_limit, engine.stop()).await;
    shutdown.cancel();
    server
        .await
        .context("metrics server task")?
        .context("metrics server")?;
    drained.map_err(|_| {
        anyhow::anyhow!(
            "deliveries did not drain within {drain_limit:?} (is NATS reachable?); unacknowledged events will be delivered again"
        )
    })?;
    // What the engine's connection still holds (the last health snapshot) reaches
    // the server before exit; the targets flushed their acks.
    flush_before_exit(&nats, FLUSH_AT_EXIT).await?;
    if let Some(tracing) = tracing {
        // Sends the last spans; blocking, so off the runtime's thread.
        let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    }
    tracing::info!("stopped");
    match lost {
        None => Ok(()),
        Some(target) => anyhow::bail!("the worker thread of target {target} panicked"),
    }
}
