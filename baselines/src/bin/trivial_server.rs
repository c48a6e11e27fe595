//! The gateway benchmark's ceiling: an axum server that reads the body and answers 202
//! with a small JSON document, doing nothing else.
//!
//! Served the way `fanout gateway` serves, so that the benchmark compares what the
//! gateway does per request rather than how it is built: mimalloc; the gateway's listen
//! backlog, connection cap and connection serving (`TCP_NODELAY`, the header read
//! timeout); and one thread per core with a single-threaded runtime, to which the
//! accepting thread hands connections in turn (the gateway's shards and `accept`
//! module).
//!
//!     trivial-server 127.0.0.1:8080 [threads]
//!
//! `threads` serve connections (default: one per CPU the process may use, as the
//! gateway's default shards); pass the gateway's `--shards` to compare like with like.

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

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        .expect("a runtime")
}

fn main() {
    const USAGE: &str = "usage: trivial-server <listen address> [threads]";
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().and_then(|a| a.parse().ok()).expect(USAGE);
    // By default as many as the gateway's default shards: one per CPU the process may use.
    let threads = match args.next() {
        Some(n) => n.parse::<std::num::NonZeroUsize>().expect(USAGE).get(),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut handoffs = Vec::new();
    for _ in 0..threads {
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
        let listener = server::bind(addr, "listen").expect("binding the listen address");
        let limit = ConnectionLimit::new(4096);
        accept::hand_out(listener, handoffs, limit, Arc::new(Metrics::new()), phase).await;
    });
}
