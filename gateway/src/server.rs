//! The HTTP server: shared state, the router, and serving until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::{Listener, ListenerExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::config::{Route, RouteTable};
use crate::headers::ForwardHeaders;
use crate::metrics::Metrics;
use crate::problem::{Problem, ProblemKind};
use crate::publish::Publisher;
use crate::shard::Connections;
use crate::{batch, ingest, ops};

/// Path of the single-event endpoint.
pub const EVENTS_PATH: &str = "/v1/namespaces/{ns}/routes/{route}/events";
/// Path of the batch endpoint.
pub const BATCH_PATH: &str = "/v1/namespaces/{ns}/routes/{route}/events:batch";

/// What every handler of a shard shares.
pub struct AppState {
    pub routes: watch::Receiver<Arc<RouteTable>>,
    /// This shard's own NATS connection.
    pub publisher: Publisher,
    /// Every shard's, for readiness.
    pub connections: Arc<Connections>,
    pub metrics: Arc<Metrics>,
    pub forward: ForwardHeaders,
    pub body_limit: usize,
    pub max_batch_items: usize,
}

impl AppState {
    pub fn route(&self, namespace: &str, name: &str) -> Option<Arc<Route>> {
        self.routes.borrow().get(namespace, name).cloned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
}

/// The gateway's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(EVENTS_PATH, post(ingest::handle))
        .route(BATCH_PATH, post(batch::handle))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(|_panic| {
            Problem::new(
                ProblemKind::Internal,
                "the gateway failed to handle the request",
            )
            .into_response()
        }))
        // Request spans and failures at debug: the handlers log what matters, once.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
        .with_state(state)
}

async fn not_found() -> axum::response::Response {
    Problem::new(ProblemKind::NotFound, "no such endpoint; see /openapi.json").into_response()
}

async fn method_not_allowed() -> axum::response::Response {
    Problem::new(
        ProblemKind::MethodNotAllowed,
        "this endpoint does not take that method; see /openapi.json",
    )
    .into_response()
}

/// Connections the kernel may hold completed but not yet accepted (capped by
/// `net.core.somaxconn`). Producers connect in bursts (a gateway restart, a client
/// fleet scaling up); a connection that finds the queue full has its SYN dropped and
/// waits a whole second to retry. Tokio's `TcpListener::bind` asks for only 128.
const LISTEN_BACKLOG: u32 = 4096;

pub fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // A restarted gateway binds again at once, despite connections in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| ServeError::Bind { addr, source })
}

/// Serves until `shutdown` completes, then stops accepting connections and waits
/// for the requests in progress to finish.
pub async fn serve(
    listener: impl Listener<Io = TcpStream, Addr = SocketAddr>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Answers are small and each is written once: send them at once rather than let
    // Nagle's algorithm hold them for the client's delayed ACK (a 40 ms stall).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %fanout_config::error_chain(&e), "setting TCP_NODELAY failed");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A burst of connections larger than Tokio's default backlog (128) all complete
    /// their handshake while the gateway is too busy to accept them: none has its SYN
    /// dropped and waits a second to retry.
    #[tokio::test]
    async fn a_burst_of_connections_fits_in_the_listen_queue() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..400).map(|_| tokio::net::TcpStream::connect(addr));
        // A dropped SYN is retried after 1 s; the whole burst takes milliseconds.
        let connected = tokio::time::timeout(
            Duration::from_millis(900),
            futures::future::try_join_all(connects),
        )
        .await
        .expect("some connections waited for a SYN retry: the listen queue overflowed")
        .unwrap();
        assert_eq!(connected.len(), 400);
        drop(listener);
    }
}
