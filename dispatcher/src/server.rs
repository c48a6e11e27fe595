//! The dispatcher's own HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    nats: async_nats::Client,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    nats: async_nats::Client,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(AppState { metrics, nats });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
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

/// Ready while connected to NATS: without it nothing can be fetched or settled.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    match state.nats.connection_state() {
        async_nats::connection::State::Connected => (StatusCode::OK, "ready".to_string()),
        other => (StatusCode::SERVICE_UNAVAILABLE, format!("NATS {other:?}")),
    }
}
