//! `fanout gateway`: the HTTP ingest. A producer sends an event; the gateway stores
//! it in the route's JetStream stream and answers 202 with the event id only once
//! JetStream has acknowledged it.
//!
//! Where things are decided:
//! - [`config`], [`reload`]: which routes exist and their tokens (from the rendered
//!   configuration file, re-read periodically).
//! - [`auth`]: bearer tokens; [`body`]: the body limit.
//! - [`cloudevents`], [`event`], [`headers`]: the event id, subject and headers.
//! - [`ingest`], [`batch`]: the two ingest endpoints; [`ops`]: health, metrics, API.
//! - [`publish`]: JetStream publishes, the in-flight bound, error classification.
//! - [`problem`]: RFC 9457 error answers; [`metrics`]; [`openapi`]; [`server`].

pub mod args;
pub mod auth;
pub mod batch;
pub mod body;
pub mod cloudevents;
pub mod config;
pub mod event;
pub mod headers;
pub mod ingest;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod publish;
pub mod reload;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use args::Args;

use crate::config::ConfigError;
use crate::headers::{ForwardHeaders, InvalidHeaderName};
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::server::{AppState, ServeError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("loading the gateway configuration")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    ForwardHeaders(#[from] InvalidHeaderName),
    #[error("--{flag} must be at least 1")]
    Zero { flag: &'static str },
    /// A credentials or token file that cannot be read (the error names the file).
    #[error("{0:#}")]
    NatsSettings(anyhow::Error),
    #[error("connecting to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("starting the HTTP server")]
    Serve(#[from] ServeError),
}

/// Why the gateway did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("requests in progress did not finish within {0:?}")]
    DrainTimedOut(Duration),
    #[error("the HTTP server failed")]
    Serve(#[from] ServeError),
    #[error("the HTTP server task panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<(), ServeError>>,
    publisher: Publisher,
    shutdown_timeout: Duration,
}

impl Gateway {
    /// Loads the configuration, connects to NATS (in the background: the gateway
    /// serves, and answers 503, until NATS is reachable) and starts serving HTTP.
    pub async fn start(args: Args) -> Result<Gateway, StartError> {
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
        let routes = match config::load(&args.config) {
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
        let forward = ForwardHeaders::new(&args.forward_headers)?;
        let metrics = Arc::new(Metrics::new());
        let client = connect(&args).await?;
        let publisher = Publisher::new(
            client,
            args.max_in_flight,
            args.in_flight_wait.as_std(),
            args.publish_timeout.as_std(),
            metrics.clone(),
        );
        let (routes_tx, routes_rx) = watch::channel(Arc::new(routes));
        let (stop, stop_rx) = watch::channel(false);
        if !poll.is_zero() {
            tokio::spawn(reload::watch_config(
                args.config.clone(),
                poll,
                routes_tx,
                metrics.clone(),
                stop_rx.clone(),
            ));
        }
        let state = Arc::new(AppState {
            routes: routes_rx,
            publisher: publisher.clone(),
            metrics,
            forward,
            body_limit: args.body_limit,
            max_batch_items: args.max_batch_items,
        });
        let listener = server::bind(args.listen)?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: args.listen,
            source,
        })?;
        let mut stopped = stop_rx;
        let server = tokio::spawn(server::serve(listener, state, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        tracing::info!(%addr, nats = %args.nats.url, "gateway listening");
        Ok(Gateway {
            addr,
            stop,
            server,
            publisher,
            shutdown_timeout: args.shutdown_timeout.as_std(),
        })
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets the requests in progress finish (up to the
    /// shutdown timeout) and flushes the NATS connection.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        let _ = self.stop.send(true);
        let mut server = self.server;
        let served = match tokio::time::timeout(self.shutdown_timeout, &mut server).await {
            Ok(joined) => joined.map_err(ShutdownError::Panicked)?,
            Err(_) => {
                server.abort();
                return Err(ShutdownError::DrainTimedOut(self.shutdown_timeout));
            }
        };
        self.publisher.flush().await;
        served?;
        Ok(())
    }
}

/// Runs the gateway until SIGTERM or SIGINT, then shuts it down gracefully.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let signal = shutdown_signal()?;
    let gateway = Gateway::start(args).await?;
    signal.await;
    tracing::info!("shutdown signal received; finishing requests in progress");
    gateway.shutdown().await?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed before this
/// returns, so a signal that arrives during start-up is not missed.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

async fn connect(args: &Args) -> Result<async_nats::Client, StartError> {
    let url = &args.nats.url;
    let options = args
        .nats
        .options()
        .await
        .map_err(StartError::NatsSettings)?;
    options
        .name("fanout-gateway")
        .retry_on_initial_connect()
        .max_reconnects(None)
        // Reconnect quickly after a NATS restart: while disconnected every ingest
        // request is answered 503.
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((attempt as u64).saturating_mul(100).min(1000))
        })
        .connect(url.as_str())
        .await
        .map_err(|source| StartError::Connect {
            url: url.clone(),
            source,
        })
}
