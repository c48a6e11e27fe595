//! The operations endpoints of `fanout standalone`: `/status` (JSON), `/status.txt`
//! (the table), the dispatchers' `/metrics`, `/healthz` and `/readyz`. The gateway
//! keeps its own address and its own `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::status::{self, StatusSource};

#[derive(Clone)]
struct AppState {
    status: Arc<StatusSource>,
    metrics: Arc<fanout_dispatcher::Metrics>,
    nats: async_nats::Client,
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: Arc<StatusSource>,
    metrics: Arc<fanout_dispatcher::Metrics>,
    nats: async_nats::Client,
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

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    match state.nats.connection_state() {
        async_nats::connection::State::Connected => (StatusCode::OK, "ready".to_string()),
        other => (StatusCode::SERVICE_UNAVAILABLE, format!("NATS {other:?}")),
    }
}
