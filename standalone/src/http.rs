//! The operations endpoints of `fanout standalone`: `/status` (JSON), `/status.txt`
//! (the table), the dispatchers' `/metrics`, `/healthz` and `/readyz`. The gateway
//! keeps its own address and its own `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use fanout_gateway::shard::Connections;
use tokio_util::sync::CancellationToken;

use crate::status::{self, StatusSource};

#[derive(Clone)]
struct AppState {
    status: Arc<StatusSource>,
    metrics: Arc<fanout_dispatcher::Metrics>,
    nats: async_nats::Client,
    gateway: Arc<Connections>,
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: Arc<StatusSource>,
    metrics: Arc<fanout_dispatcher::Metrics>,
    nats: async_nats::Client,
    gateway: Arc<Connections>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/status", get(status_json))
        .route("/status.txt", get(status_text))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(AppState {
            status,
            metrics,
            nats,
            gateway,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn status_json(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(state.status.report().await)
}

async fn status_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        status::table(&state.status.report().await),
    )
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Ready when events can be stored and delivered: the engines' connection is up and
/// so is every gateway shard's (each publishes on its own), as the gateway's own
/// `/readyz` requires.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let engines = state.nats.connection_state();
    if engines != async_nats::connection::State::Connected {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("NATS {engines:?}"));
    }
    match state.gateway.disconnected() {
        0 => (StatusCode::OK, "ready".to_string()),
        down => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the gateway is not connected to NATS on {down} of its {} shards",
                state.gateway.shards()
            ),
        ),
    }
}
