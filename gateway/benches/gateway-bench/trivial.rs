//! The ceiling: an axum server that reads the body and answers 202 with a small JSON
//! document, doing nothing else. Run as a child process, like the gateway, and served
//! the way the gateway serves: its listen backlog, its connection cap, its
//! connection serving (`TCP_NODELAY`, the header read timeout), and one
//! single-threaded runtime per core to which connections are handed in turn (a
//! multi-threaded runtime would make the ceiling lower than it is).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use fanout_gateway::accept;
use fanout_gateway::limit::ConnectionLimit;
use fanout_gateway::metrics::Metrics;
use fanout_gateway::server::{self, Protocol};
use fanout_gateway::shard::Phase;

fn app() -> Router {
    Router::new().route(
        "/v1/namespaces/{ns}/routes/{route}/events",
        post(|body: Bytes| async move {
            let answer = format!(
                r#"{{"id":"0190a6f0-0000-7000-8000-000000000000","stream":"fanout_bench_events","sequence":{},"duplicate":false}}"#,
                body.len()
            );
            (StatusCode::ACCEPTED, answer)
        }),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn serve(addr: SocketAddr) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handoffs = Vec::new();
    for _ in 0..cores {
        let (handoff, handed) = accept::channel();
        handoffs.push(handoff);
        std::thread::spawn(move || {
            runtime().block_on(async move {
                // The gateway's default header read timeout.
                let protocol = Protocol::new(Duration::from_secs(10), None);
                server::serve(handed, app(), protocol, std::future::pending()).await;
            })
        });
    }
    // Served until the bench kills the process.
    let (_serving, phase) = tokio::sync::watch::channel(Phase::Serve);
    runtime().block_on(async move {
        let listener = server::bind(addr, "listen").unwrap();
        let limit = ConnectionLimit::new(4096);
        accept::hand_out(listener, handoffs, limit, Arc::new(Metrics::new()), phase).await;
    });
}
