//! The HTTP server: shared state, the router, and serving until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::config::{Route, RouteTable};
use crate::headers::ForwardHeaders;
use crate::metrics::Metrics;
use crate::problem::{Problem, ProblemKind};
use crate::publish::Publisher;
use crate::{batch, ingest, ops};

/// Path of the single-event endpoint.
pub const EVENTS_PATH: &str = "/v1/namespaces/{ns}/routes/{route}/events";
/// Path of the batch endpoint.
pub const BATCH_PATH: &str = "/v1/namespaces/{ns}/routes/{route}/events:batch";

/// What every handler shares.
pub struct AppState {
    pub routes: watch::Receiver<Arc<RouteTable>>,
    pub publisher: Publisher,
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

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves until `shutdown` completes, then stops accepting connections and waits
/// for the requests in progress to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Answers are small and each is written once: send them at once rather than let
    // Nagle's algorithm hold them for the client's delayed ACK (a 40 ms stall).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY failed");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve)
}
