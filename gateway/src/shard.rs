//! Shards: the gateway serves HTTP on several threads, by default one per CPU the
//! process may use. Each shard is a thread with a current-thread runtime and a NATS
//! connection of its own, and serves the connections [`crate::accept`] hands it. A
//! request, its publish and JetStream's acknowledgement then stay on one thread: no
//! cross-thread wake-ups, which cost a multi-threaded runtime more CPU per event
//! (docs/benchmarks.md, "Gateway").
//!
//! The shards share the route table, the metrics, the bound on publishes in flight,
//! and the list of their NATS connections (the gateway is ready when all are up).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fanout_otel::opentelemetry_sdk::trace::SdkTracer;
use fanout_process::nats::NatsArgs;
use fanout_process::thread::on_own_thread;
use tokio::sync::{mpsc, oneshot, watch};

use crate::accept::Handed;
use crate::config::RouteTable;
use crate::headers::ForwardHeaders;
use crate::metrics::Metrics;
use crate::nats::handshake::Settings;
use crate::nats::{self, Link, Server};
use crate::publish::{InFlight, Publisher};
use crate::server::{self, AppState, Protocol};
use crate::{ShutdownError, StartError};

/// What the gateway asks of its shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serve,
    /// Stop accepting connections, finish the requests in progress.
    Drain,
    /// Stop now (draining took too long, or another shard failed to start).
    Abort,
}

/// The NATS connections of all shards.
pub struct Connections {
    expected: usize,
    links: Mutex<Vec<Link>>,
}

impl Connections {
    pub fn new(expected: usize) -> Self {
        Connections {
            expected,
            links: Mutex::new(Vec::with_capacity(expected)),
        }
    }

    /// How many shards the gateway runs.
    pub fn shards(&self) -> usize {
        self.expected
    }

    fn add(&self, link: Link) {
        self.lock().push(link);
    }

    /// How many shards cannot store events now: not connected to NATS, or not started
    /// yet. Each shard publishes on its own connection, so the gateway is ready only
    /// when this is zero.
    pub fn disconnected(&self) -> usize {
        let connected = self
            .lock()
            .iter()
            .filter(|link| link.is_connected())
            .count();
        self.expected - connected
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        // The list is only ever pushed to: a panic elsewhere cannot leave it torn.
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What every shard shares, and how each connects to NATS.
#[derive(Clone)]
pub struct Shared {
    pub routes: watch::Receiver<Arc<RouteTable>>,
    pub metrics: Arc<Metrics>,
    pub forward: ForwardHeaders,
    pub body_limit: usize,
    pub body_read_timeout: Duration,
    pub max_batch_items: usize,
    /// HTTP, maybe over TLS, with the header read timeout.
    pub protocol: Protocol,
    pub in_flight: InFlight,
    pub permit_wait: Duration,
    pub ack_timeout: Duration,
    pub connections: Arc<Connections>,
    pub nats: NatsLink,
    /// Where spans go, when tracing is on.
    pub tracer: Option<SdkTracer>,
}

/// A shard that has stopped, and how.
#[derive(Debug)]
pub struct Stopped {
    pub index: usize,
    /// `Ok` when it drained cleanly; [`ShutdownError::ShardLost`] when its thread
    /// panicked.
    pub result: Result<(), ShutdownError>,
}

/// Starts shard `index` on a thread of its own, serving the connections handed to it
/// until `phase` says otherwise, and returns once it serves (or failed to start).
/// `ended` hears when the shard stops, however it stops.
pub async fn start(
    index: usize,
    listener: Handed,
    shared: Shared,
    phase: watch::Receiver<Phase>,
    ended: mpsc::UnboundedSender<Stopped>,
) -> Result<(), StartError> {
    let (started_tx, started) = oneshot::channel();
    let work = move || serve(index, listener, shared, phase, started_tx);
    let stopped = on_own_thread(format!("gateway-shard-{index}"), work)
        .map_err(|source| StartError::Shard { index, source })?;
    tokio::spawn(report_stop(index, stopped, ended));
    started
        .await
        .unwrap_or(Err(StartError::ShardLost { index }))
}

/// Tells `ended` when the shard's thread has ended.
async fn report_stop(
    index: usize,
    stopped: oneshot::Receiver<Result<(), ShutdownError>>,
    ended: mpsc::UnboundedSender<Stopped>,
) {
    let result = stopped
        .await
        .unwrap_or(Err(ShutdownError::ShardLost { index }));
    let _ = ended.send(Stopped { index, result });
}

/// A shard's life: connect, serve, drain, flush.
async fn serve(
    index: usize,
    listener: Handed,
    shared: Shared,
    mut phase: watch::Receiver<Phase>,
    started: oneshot::Sender<Result<(), StartError>>,
) -> Result<(), ShutdownError> {
    // Connect on this thread, so that the connection's task runs on this runtime.
    let link = shared.nats.start(shared.ack_timeout);
    shared.connections.add(link.clone());
    let publisher = Publisher::new(
        link,
        shared.in_flight,
        shared.permit_wait,
        shared.metrics.publish_latency(index),
    );
    let state = Arc::new(AppState {
        routes: shared.routes,
        publisher: publisher.clone(),
        metrics: shared.metrics,
        forward: shared.forward,
        body_limit: shared.body_limit,
        body_read_timeout: shared.body_read_timeout,
        max_batch_items: shared.max_batch_items,
        tracer: shared.tracer,
    });
    let _ = started.send(Ok(()));
    let mut drain = phase.clone();
    let draining = async move {
        // Also when the gateway is gone without a shutdown: then stop too.
        let _ = drain.wait_for(|phase| *phase != Phase::Serve).await;
    };
    tokio::select! {
        () = server::serve(listener, server::router(state), shared.protocol, draining) => {
            // Publishes are buffered by the client: send them before the thread ends.
            publisher.flush().await;
            Ok(())
        }
        _ = phase.wait_for(|phase| *phase == Phase::Abort) => Ok(()),
    }
}

/// Where the shards' NATS connections go and how they authenticate, read once
/// from the `--nats-*` flags.
#[derive(Clone, Debug)]
pub struct NatsLink {
    servers: Vec<Server>,
    settings: Settings,
    ping_interval: Duration,
}

impl NatsLink {
    pub fn from_args(args: &NatsArgs) -> Result<NatsLink, nats::SettingsError> {
        let (servers, settings) = nats::settings(args, "fanout-gateway")?;
        Ok(NatsLink {
            servers,
            settings,
            ping_interval: args.ping_interval.as_std(),
        })
    }

    /// Connects in the background: the shard serves, and answers 503, until NATS is
    /// reachable. A publish not acknowledged within `ack_timeout` fails.
    fn start(&self, ack_timeout: Duration) -> Link {
        Link::start(
            self.servers.clone(),
            self.settings.clone(),
            self.ping_interval,
            ack_timeout,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shard_whose_thread_panics_is_reported_as_lost() {
        let (ended_tx, mut ended) = mpsc::unbounded_channel();
        let stopped = on_own_thread("shard".into(), || async {
            panic!("a bug in a shard");
        })
        .unwrap();
        report_stop(4, stopped, ended_tx).await;
        let stopped = ended.recv().await.unwrap();
        assert_eq!(stopped.index, 4);
        assert!(matches!(
            stopped.result,
            Err(ShutdownError::ShardLost { index: 4 })
        ));
    }

    #[tokio::test]
    async fn a_shard_that_drained_is_reported_with_its_result() {
        let (ended_tx, mut ended) = mpsc::unbounded_channel();
        let stopped = on_own_thread("shard".into(), || async { Ok(()) }).unwrap();
        report_stop(1, stopped, ended_tx).await;
        let stopped = ended.recv().await.unwrap();
        assert_eq!(stopped.index, 1);
        assert!(stopped.result.is_ok());
    }

    #[test]
    fn a_shard_that_has_not_started_counts_as_disconnected() {
        let connections = Connections::new(3);
        assert_eq!(connections.shards(), 3);
        // Until every shard has its connection, the gateway is not ready.
        assert_eq!(connections.disconnected(), 3);
    }
}
