//! The ceiling: an axum server that reads the body and answers 202 with a small JSON
//! document, doing nothing else. Run as a child process, like the gateway.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use axum::serve::ListenerExt;

pub fn serve(addr: SocketAddr) {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let app = Router::new().route(
                "/v1/namespaces/{ns}/routes/{route}/events",
                post(|body: Bytes| async move {
                    let answer = format!(
                        r#"{{"id":"0190a6f0-0000-7000-8000-000000000000","stream":"fanout_bench_events","sequence":{},"duplicate":false}}"#,
                        body.len()
                    );
                    (StatusCode::ACCEPTED, answer)
                }),
            );
            // The gateway's listen backlog and TCP_NODELAY.
            let listener = fanout_gateway::server::bind(addr)
                .unwrap()
                .tap_io(|tcp| tcp.set_nodelay(true).unwrap());
            axum::serve(listener, app).await.unwrap();
        });
}
