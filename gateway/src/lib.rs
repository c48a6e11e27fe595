//! `fanout gateway`: the HTTP ingest. A producer sends an event; the gateway stores
//! it in the route's JetStream stream and answers 202 with the event id only once
//! JetStream has acknowledged it.
//!
//! Where things are decided:
//! - [`config`], [`reload`]: which routes exist and their tokens (from the rendered
//!   configuration file, re-read periodically).
//! - [`auth`]: bearer tokens; [`body`]: the body limit and read timeout.
//! - [`cloudevents`], [`event`], [`headers`]: the event id, subject and headers.
//! - [`ingest`], [`batch`]: the two ingest endpoints; [`ops`]: health, readiness and
//!   metrics on the ops port.
//! - [`publish`]: JetStream publishes, the in-flight bound, error classification;
//!   [`nats`]: the NATS client they are written with.
//! - [`shard`]: the threads that serve, each with its own runtime and NATS
//!   connection; [`accept`]: which shard serves a connection, and [`limit`]: how
//!   many may be open; [`server`]: serving connections (timeouts, graceful drain);
//!   [`tls`]: the certificate, re-read when its files change.
//! - [`problem`]: RFC 9457 error answers; [`metrics`]; [`openapi`].

pub mod accept;
pub mod args;
pub mod auth;
pub mod batch;
pub mod body;
pub mod cloudevents;
pub mod config;
pub mod event;
pub mod headers;
pub mod ingest;
pub mod limit;
pub mod metrics;
pub mod nats;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod publish;
pub mod reload;
pub mod server;
pub mod shard;
pub mod spans;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fanout_otel::opentelemetry_sdk::trace::SdkTracer;
use tokio::sync::{mpsc, watch};

pub use args::Args;

use crate::config::ConfigError;
use crate::headers::{ForwardHeaders, InvalidHeaderName};
use crate::limit::ConnectionLimit;
use crate::metrics::Metrics;
use crate::ops::Ops;
use crate::publish::InFlight;
use crate::server::{Listening, Protocol, ServeError};
use crate::shard::{Connections, NatsLink, Phase, Shared, Stopped};
use crate::tls::{Certificates, TlsError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("loading the gateway configuration")]
    Config(#[from] ConfigError),
    #[error("--forward-headers")]
    ForwardHeaders(#[from] InvalidHeaderName),
    #[error("--{flag} must be at least 1")]
    Zero { flag: &'static str },
    #[error("--{flag} must be longer than 0s")]
    NoTime { flag: &'static str },
    #[error("loading the TLS certificate (--tls-cert-file, --tls-key-file)")]
    Tls(#[from] TlsError),
    /// A NATS URL, credentials, token or CA file that cannot be used (the error
    /// names it).
    #[error("the NATS settings (--nats-*)")]
    NatsSettings(#[from] nats::SettingsError),
    #[error("starting the HTTP server")]
    Serve(#[from] ServeError),
    #[error("starting shard {index} (a thread and its runtime)")]
    Shard {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("shard {index} stopped while starting (its thread panicked)")]
    ShardLost { index: usize },
}

/// Why the gateway did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("requests in progress did not finish within {0:?}")]
    DrainTimedOut(Duration),
    #[error("shard {index} stopped unexpectedly (its thread panicked)")]
    ShardLost { index: usize },
}

/// Whether the gateway serves its ops port itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpsPort {
    /// On `--listen-ops`, as `fanout gateway` does.
    Listen,
    /// Not at all: the process that embeds the gateway serves [`Gateway::ops`] with
    /// its own health and metrics (`fanout standalone`).
    Embedded,
}

/// A running gateway: its shards, each serving on a thread of its own.
pub struct Gateway {
    addr: SocketAddr,
    ops_addr: Option<SocketAddr>,
    ops: Arc<Ops>,
    phase: watch::Sender<Phase>,
    /// Each shard, once it has stopped.
    ended: mpsc::UnboundedReceiver<Stopped>,
    /// Shards not heard from on `ended` yet.
    running: usize,
    shutdown_delay: Duration,
    shutdown_timeout: Duration,
    connections: Arc<Connections>,
}

impl Gateway {
    /// Loads the configuration (and the TLS certificate), binds the events and ops
    /// ports and starts the shards. Each connects to NATS in the background: a shard
    /// serves, and answers 503, until NATS is reachable.
    pub async fn start(args: Args) -> Result<Gateway, StartError> {
        Gateway::start_with(args, OpsPort::Listen).await
    }

    /// [`Gateway::start`], serving the ops port or leaving it to the caller.
    pub async fn start_with(args: Args, ops_port: OpsPort) -> Result<Gateway, StartError> {
        Gateway::start_traced(args, ops_port, None).await
    }

    /// [`Gateway::start_with`], with spans of each request and publish sent to
    /// `tracer` (the process's; `args.otlp` is not looked at here).
    pub async fn start_traced(
        args: Args,
        ops_port: OpsPort,
        tracer: Option<SdkTracer>,
    ) -> Result<Gateway, StartError> {
        if args.max_connections == 0 {
            return Err(StartError::Zero {
                flag: "max-connections",
            });
        }
        for (flag, value) in [
            ("header-read-timeout", args.header_read_timeout),
            ("body-read-timeout", args.body_read_timeout),
        ] {
            if value.as_std().is_zero() {
                return Err(StartError::NoTime { flag });
            }
        }
        if args.max_in_flight == 0 {
            return Err(StartError::Zero {
                flag: "max-in-flight",
            });
        }
        if args.max_batch_items == 0 {
            return Err(StartError::Zero {
                flag: "max-batch-items",
            });
        }
        let poll = args.config_poll_interval.as_std();
        let routes = match config::load(&args.config, config::MissingTokenFile::Refuse) {
            Ok(routes) => {
                tracing::info!(routes = routes.len(), config = %args.config.display(), "loaded gateway configuration");
                routes
            }
            // The operator writes the file (a ConfigMap) after it first reconciles;
            // until then serve no routes and pick the file up on a later reload.
            Err(e) if e.is_missing_file() && !poll.is_zero() => {
                tracing::info!(config = %args.config.display(), "the gateway configuration does not exist yet; serving no routes until it appears");
                config::RouteTable::default()
            }
            Err(e) => return Err(e.into()),
        };
        let certificates = match (&args.tls_cert_file, &args.tls_key_file) {
            (Some(cert), Some(key)) => Some(Certificates::load(cert, key)?),
            _ => None,
        };
        let shard_count = args.shard_count().get();
        let metrics = Arc::new(Metrics::new());
        metrics.routes_configured(routes.routes().map(|r| &r.label));
        let (routes_tx, routes_rx) = watch::channel(Arc::new(routes));
        let limit = ConnectionLimit::new(args.max_connections);
        let header_read_timeout = args.header_read_timeout.as_std();
        let shared = Shared {
            routes: routes_rx,
            metrics: metrics.clone(),
            forward: ForwardHeaders::from_flag(&args.forward_headers)?,
            body_limit: args.body_limit,
            body_read_timeout: args.body_read_timeout.as_std(),
            max_batch_items: args.max_batch_items,
            protocol: Protocol::new(
                header_read_timeout,
                certificates.as_ref().map(Certificates::acceptor),
            ),
            in_flight: InFlight::new(args.max_in_flight),
            permit_wait: args.in_flight_wait.as_std(),
            ack_timeout: args.publish_timeout.as_std(),
            connections: Arc::new(Connections::new(shard_count)),
            nats: NatsLink::from_args(&args.nats)?,
            tracer,
        };
        let listener = server::bind(args.listen, "listen")?;
        let addr = local_addr(&listener, args.listen, "listen")?;
        let ops_listener = match ops_port {
            OpsPort::Listen => Some(server::bind(args.listen_ops, "listen-ops")?),
            OpsPort::Embedded => None,
        };
        let ops_addr = match &ops_listener {
            Some(listener) => Some(local_addr(listener, args.listen_ops, "listen-ops")?),
            None => None,
        };
        let connections = shared.connections.clone();
        let (phase, phase_rx) = watch::channel(Phase::Serve);
        let ops = Arc::new(Ops {
            routes: shared.routes.clone(),
            metrics: metrics.clone(),
            connections: connections.clone(),
            in_flight: shared.in_flight.clone(),
            limit: limit.clone(),
            phase: phase_rx.clone(),
            leaving: AtomicBool::new(false),
        });
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let mut handoffs = Vec::with_capacity(shard_count);
        for index in 0..shard_count {
            let (handoff, handed) = accept::channel();
            // On an early return, dropping `phase` stops the shards started so far.
            shard::start(
                index,
                handed,
                shared.clone(),
                phase_rx.clone(),
                ended_tx.clone(),
            )
            .await?;
            handoffs.push(handoff);
        }
        tokio::spawn(accept::hand_out(
            listener,
            handoffs,
            limit,
            metrics.clone(),
            phase_rx.clone(),
        ));
        if let Some(listener) = ops_listener {
            let mut phase = phase_rx.clone();
            // Serves until the gateway has stopped (the phase's sender is gone), so
            // that probes are answered while the shards drain.
            let stopped = async move {
                let _ = phase.wait_for(|phase| *phase == Phase::Abort).await;
            };
            tokio::spawn(server::serve(
                Listening {
                    listener,
                    limit: ConnectionLimit::new(ops::MAX_CONNECTIONS),
                },
                ops::router(ops.clone()),
                Protocol::new(header_read_timeout, None),
                stopped,
            ));
        }
        if let Some(certificates) = certificates {
            let interval = args.tls_poll_interval.as_std();
            if !interval.is_zero() {
                tokio::spawn(tls::watch_files(
                    certificates,
                    interval,
                    metrics.clone(),
                    phase_rx.clone(),
                ));
            }
        }
        if !poll.is_zero() {
            tokio::spawn(reload::watch_config(
                args.config.clone(),
                poll,
                routes_tx,
                metrics,
                phase_rx,
            ));
        }
        tracing::info!(%addr, ops = ?ops_addr, tls = args.tls_cert_file.is_some(), shards = shard_count, nats = %nats::handshake::redacted(&args.nats.url), "gateway listening");
        Ok(Gateway {
            addr,
            ops_addr,
            ops,
            phase,
            ended,
            running: shard_count,
            shutdown_delay: args.shutdown_delay.as_std(),
            shutdown_timeout: args.shutdown_timeout.as_std(),
            connections,
        })
    }

    /// The shards' NATS connections: the gateway can store events only when
    /// [`Connections::disconnected`] is zero (what its `/readyz` reports). For a process
    /// that embeds the gateway and has readiness of its own.
    pub fn connections(&self) -> Arc<Connections> {
        self.connections.clone()
    }

    /// The address of the events port.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the ops port, unless the embedding process serves it.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// Readiness and metrics, for a process that embeds the gateway
    /// ([`OpsPort::Embedded`]) and serves them with its own.
    pub fn ops(&self) -> Arc<Ops> {
        self.ops.clone()
    }

    /// Resolves with a shard's index if one stops while the gateway serves: a bug made
    /// its thread panic. Its share of the connections would then be refused, so the
    /// gateway should stop and be restarted.
    pub async fn shard_lost(&mut self) -> usize {
        match self.ended.recv().await {
            Some(stopped) => {
                self.running -= 1;
                stopped.index
            }
            // Every shard's report holds a sender until it has sent.
            None => std::future::pending().await,
        }
    }

    /// Begins a shutdown: `/readyz` answers 503 from now on, while requests are still
    /// served, for the shutdown delay (a shard lost meanwhile cuts it short). Then
    /// [`Gateway::shutdown`].
    pub async fn leave(&mut self) {
        self.ops.leaving.store(true, Ordering::Relaxed);
        if self.shutdown_delay.is_zero() {
            return;
        }
        tracing::info!(delay = ?self.shutdown_delay, "not ready any more; serving on until load balancers have stopped sending");
        tokio::select! {
            _ = tokio::time::sleep(self.shutdown_delay) => {}
            index = self.shard_lost() => {
                tracing::error!(shard = index, "a shard stopped while leaving");
            }
        }
    }

    /// Stops accepting connections, lets the requests in progress finish (up to the
    /// shutdown timeout) and flushes the NATS connections.
    pub async fn shutdown(mut self) -> Result<(), ShutdownError> {
        let _ = self.phase.send(Phase::Drain);
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let mut outcome = Ok(());
        while self.running > 0 {
            match tokio::time::timeout_at(deadline, self.ended.recv()).await {
                Ok(Some(stopped)) => {
                    self.running -= 1;
                    outcome = outcome.and(stopped.result);
                }
                Ok(None) => break,
                Err(_) => {
                    let _ = self.phase.send(Phase::Abort);
                    while self.running > 0 && self.ended.recv().await.is_some() {
                        self.running -= 1;
                    }
                    return Err(ShutdownError::DrainTimedOut(self.shutdown_timeout));
                }
            }
        }
        outcome
    }
}

fn local_addr(
    listener: &tokio::net::TcpListener,
    addr: SocketAddr,
    flag: &'static str,
) -> Result<SocketAddr, ServeError> {
    listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, flag, source })
}

/// Runs the gateway until SIGTERM or SIGINT, then shuts it down gracefully. Fails if
/// a shard stops on its own, so that the gateway is restarted.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let signal = fanout_process::signal::shutdown()?;
    let tracing = fanout_otel::Tracing::start(&args.otlp, "fanout-gateway")?;
    let tracer = tracing.as_ref().map(fanout_otel::Tracing::tracer);
    let mut gateway = Gateway::start_traced(args, OpsPort::Listen, tracer).await?;
    let result = tokio::select! {
        () = signal => {
            tracing::info!("shutdown signal received; finishing requests in progress");
            gateway.leave().await;
            gateway.shutdown().await.map_err(anyhow::Error::from).map(|()| {
                tracing::info!("gateway stopped");
            })
        }
        index = gateway.shard_lost() => {
            tracing::error!(shard = index, "a shard stopped unexpectedly; stopping the gateway so that it is restarted");
            if let Err(e) = gateway.shutdown().await {
                tracing::warn!(error = %fanout_config::error_chain(&e), "the other shards did not stop cleanly");
            }
            Err(ShutdownError::ShardLost { index }.into())
        }
    };
    if let Some(tracing) = tracing {
        // Sends the last spans; blocking, so off the runtime's thread.
        let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    }
    result
}
