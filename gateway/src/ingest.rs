//! `POST /v1/namespaces/{ns}/routes/{route}/events`: one event, answered 202 once
//! JetStream has stored it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth;
use crate::body;
use crate::config::Route;
use crate::event;
use crate::metrics::{Endpoint, Outcome, RouteLabel};
use crate::problem::{Problem, ProblemKind};
use crate::publish::Stored;
use crate::server::AppState;
use crate::spans::{self, RequestSpan};

/// The 202's content type (what axum's `Json` sets).
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A request refused before any event was built.
pub struct Refused {
    route_label: RouteLabel,
    problem: Problem,
}

impl Refused {
    /// Counts and answers the refusal.
    pub fn respond(self, state: &AppState, endpoint: Endpoint) -> Response {
        respond_problem(state, &self.route_label, endpoint, self.problem)
    }
}

/// Finds the route in the path and checks the caller may use it (404, 401, 403).
pub fn authorized_route(
    state: &AppState,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: &HeaderMap,
) -> Result<Arc<Route>, Refused> {
    let refused = |route_label: &RouteLabel, problem| Refused {
        route_label: route_label.clone(),
        problem,
    };
    let Ok(Path((namespace, name))) = path else {
        let problem = Problem::new(ProblemKind::RouteNotFound, "the path does not name a route");
        return Err(refused(&RouteLabel::unknown(), problem));
    };
    let Some(route) = state.route(&namespace, &name) else {
        let problem = Problem::new(
            ProblemKind::RouteNotFound,
            format!("route {namespace}/{name} is not configured on this gateway"),
        );
        return Err(refused(&RouteLabel::unknown(), problem));
    };
    auth::authorize(
        &route.tokens,
        route.allow_unauthenticated,
        route.tokens_pending,
        headers.get(header::AUTHORIZATION),
    )
    .map_err(|e| refused(&route.label, e.into()))?;
    Ok(route)
}

/// Counts, logs and answers a problem.
pub fn respond_problem(
    state: &AppState,
    route_label: &RouteLabel,
    endpoint: Endpoint,
    problem: Problem,
) -> Response {
    let outcome = Outcome::Failed(problem.kind);
    state.metrics.request(route_label, endpoint, outcome);
    if problem.kind.is_storage_failure() {
        tracing::warn!(route = %route_label, endpoint = endpoint.as_str(), outcome = outcome.as_str(), detail = %problem.detail, "event not stored");
    } else {
        tracing::debug!(route = %route_label, endpoint = endpoint.as_str(), outcome = outcome.as_str(), detail = %problem.detail, "request refused");
    }
    problem.into_response()
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    // Headers read where they are: axum's `HeaderMap` extractor would copy them.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let route = match authorized_route(&state, path, headers) {
        Ok(route) => route,
        Err(refused) => return refused.respond(&state, Endpoint::Single),
    };
    let span = state
        .tracer
        .as_ref()
        .map(|t| spans::request(t, headers, Endpoint::Single, route.label.as_str()));
    let response = answer(&state, &route, headers, body, span.as_ref()).await;
    if let Some(span) = span {
        span.end(response.status());
    }
    response
}

async fn answer(
    state: &AppState,
    route: &Route,
    headers: &HeaderMap,
    body: Body,
    span: Option<&RequestSpan>,
) -> Response {
    match store(state, route, headers, body, span).await {
        Ok(stored) => {
            let outcome = if stored.duplicate {
                Outcome::Duplicate
            } else {
                Outcome::Accepted
            };
            state
                .metrics
                .request(&route.label, Endpoint::Single, outcome);
            state.metrics.event(&route.label, outcome);
            let json = [(header::CONTENT_TYPE, APPLICATION_JSON)];
            (StatusCode::ACCEPTED, json, stored.to_json()).into_response()
        }
        Err(problem) => {
            state
                .metrics
                .event(&route.label, Outcome::Failed(problem.kind));
            respond_problem(state, &route.label, Endpoint::Single, problem)
        }
    }
}

async fn store(
    state: &AppState,
    route: &Route,
    headers: &HeaderMap,
    body: Body,
    span: Option<&RequestSpan>,
) -> Result<Stored, Problem> {
    let body = body::read(headers, body, state.body_limit, state.body_read_timeout).await?;
    let mut event = event::single(route, &state.forward, headers, body)
        .map_err(|e| Problem::new(ProblemKind::InvalidEvent, e.to_string()))?;
    let publish = span.map(|s| s.publish(&mut event, &route.stream));
    let stored = state.publisher.publish(event, &route.stream).await;
    if let Some(publish) = publish {
        publish.end(stored.as_ref());
    }
    stored.map_err(|e| Problem::from(&e))
}
