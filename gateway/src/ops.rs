//! The ops port: liveness, readiness and metrics, for the kubelet and Prometheus. It
//! listens apart from the events port (`--listen-ops`), so that producers, who may
//! reach the events port from anywhere the network allows, cannot read the metrics
//! (route names, traffic, errors) and a network policy can admit scrapers alone.
//! It serves on the gateway's main runtime, not the shards, and keeps answering
//! while the shards drain: `/readyz` then says the gateway is stopping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use crate::config::RouteTable;
use crate::limit::ConnectionLimit;
use crate::metrics::Metrics;
use crate::openapi;
use crate::problem::{Problem, ProblemKind};
use crate::publish::InFlight;
use crate::shard::{Connections, Phase};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Most connections open at once on the ops port. Probes and scrapers need a few;
/// a flood of connections there cannot use up the process's file descriptors, which
/// the events port needs.
pub const MAX_CONNECTIONS: usize = 64;

/// What the ops endpoints read: the gateway's state as a whole, across shards.
pub struct Ops {
    pub routes: watch::Receiver<Arc<RouteTable>>,
    pub metrics: Arc<Metrics>,
    pub connections: Arc<Connections>,
    pub in_flight: InFlight,
    pub limit: ConnectionLimit,
    pub phase: watch::Receiver<Phase>,
    /// Set when a shutdown begins: still serving, but no longer ready.
    pub leaving: AtomicBool,
}

impl Ops {
    /// Whether an event sent now can be stored; why not otherwise.
    pub fn ready(&self) -> Result<usize, String> {
        if *self.phase.borrow() != Phase::Serve || self.leaving.load(Ordering::Relaxed) {
            return Err("the gateway is shutting down".into());
        }
        match self.connections.disconnected() {
            0 => Ok(self.routes.borrow().len()),
            down => Err(format!(
                "the gateway is not connected to NATS on {down} of its {} shards",
                self.connections.shards()
            )),
        }
    }

    /// The OpenMetrics exposition, with the gauges read now.
    pub fn metrics_text(&self) -> String {
        self.metrics.set_in_flight(self.in_flight.in_use());
        self.metrics
            .set_connections(self.limit.open(), self.limit.max());
        self.metrics.encode()
    }
}

/// The ops port's routes.
pub fn router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(crate::server::not_found)
        .with_state(ops)
}

/// The process is up and serving HTTP.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready when every shard is connected to NATS (each publishes on its own
/// connection) and the gateway is not shutting down.
pub async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    match ops.ready() {
        Ok(routes) => Json(json!({"status": "ready", "routes": routes})).into_response(),
        Err(why) => Problem::new(ProblemKind::Unavailable, why)
            .retry_after(2)
            .into_response(),
    }
}

pub async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    let mut response = ops.metrics_text().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    response
}

/// `GET /openapi.json` on the events port.
pub async fn openapi() -> Response {
    let mut response = openapi::document().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
