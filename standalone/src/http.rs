//! The operations endpoints of `fanout standalone`: `/status` (JSON), `/status.txt`
//! (the table), `/metrics` (the dispatchers' and the gateway's), `/healthz` and
//! `/readyz`. The gateway's own address serves the events API only.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use fanout_gateway::ops::Ops;
use tokio_util::sync::CancellationToken;

use crate::status::{self, StatusSource};

#[derive(Clone)]
struct AppState {
    status: Arc<StatusSource>,
    metrics: Arc<fanout_dispatcher::Metrics>,
    nats: async_nats::Client,
    targets: Targets,
    gateway: Arc<Ops>,
}

/// Whether every route's targets can take events (each takes them over a NATS
/// connection of its own).
pub type Targets = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: Arc<StatusSource>,
    metrics: Arc<fanout_dispatcher::Metrics>,
    nats: async_nats::Client,
    targets: Targets,
    gateway: Arc<Ops>,
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
            targets,
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
        exposition(&state.metrics.encode(), &state.gateway.metrics_text()),
    )
}

/// Two OpenMetrics expositions as one: the `# EOF` that ends each may only end the
/// whole. Their metric names differ (`fanout_dispatcher_*`, `fanout_gateway_*`).
fn exposition(dispatchers: &str, gateway: &str) -> String {
    let without_eof = |text: &str| -> String {
        let text = text.trim_end();
        let body = text.strip_suffix("# EOF").unwrap_or(text).trim_end();
        if body.is_empty() {
            String::new()
        } else {
            format!("{body}\n")
        }
    };
    format!(
        "{}{}# EOF\n",
        without_eof(dispatchers),
        without_eof(gateway)
    )
}

/// Ready when events can be stored and delivered: the engines' connection is up, so
/// is every target's (each takes its events on its own) and every gateway shard's
/// (each publishes on its own), as the gateway's own `/readyz` requires.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let engines = state.nats.connection_state();
    if engines != async_nats::connection::State::Connected {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("NATS {engines:?}"));
    }
    if let Err(why) = (state.targets)() {
        return (StatusCode::SERVICE_UNAVAILABLE, why);
    }
    match state.gateway.ready() {
        Ok(_) => (StatusCode::OK, "ready".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_expositions_end_once() {
        let joined = exposition(
            "# TYPE a counter\na_total 1\n# EOF\n",
            "# TYPE b gauge\nb 2\n# EOF\n",
        );
        assert_eq!(
            joined,
            "# TYPE a counter\na_total 1\n# TYPE b gauge\nb 2\n# EOF\n"
        );
    }
}
