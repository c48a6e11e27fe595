//! The ceiling: an axum server that reads the body and answers 202 with a small JSON
//! document, doing nothing else. Run as a child process, like the gateway, and served
//! the way the gateway serves: its listen backlog, `TCP_NODELAY`, and one
//! single-threaded runtime per core to which connections are handed in turn (a
//! multi-threaded runtime would make the ceiling lower than it is).

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use axum::serve::ListenerExt;
use fanout_gateway::accept;
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
        let (handoff, handed) = accept::channel(addr);
        handoffs.push(handoff);
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = handed.tap_io(|tcp| tcp.set_nodelay(true).unwrap());
                axum::serve(listener, app()).await.unwrap();
            })
        });
    }
    // Served until the bench kills the process.
    let (_serving, phase) = tokio::sync::watch::channel(Phase::Serve);
    runtime().block_on(async move {
        let listener = fanout_gateway::server::bind(addr).unwrap();
        accept::hand_out(listener, handoffs, phase).await;
    });
}
