//! Endpoints for operators: liveness, readiness, metrics and the API description.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::openapi;
use crate::problem::{Problem, ProblemKind};
use crate::server::AppState;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The process is up and serving HTTP.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready when every shard is connected to NATS: only then can any request store its
/// event.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.connections.disconnected() {
        0 => {
            let routes = state.routes.borrow().len();
            Json(json!({"status": "ready", "routes": routes})).into_response()
        }
        down => Problem::new(
            ProblemKind::Unavailable,
            format!(
                "the gateway is not connected to NATS on {down} of its {} shards",
                state.connections.shards()
            ),
        )
        .retry_after(2)
        .into_response(),
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.set_in_flight(state.publisher.in_flight());
    let mut response = state.metrics.encode().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    response
}

pub async fn openapi() -> Response {
    let mut response = openapi::document().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
