//! The dispatcher's own HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use async_nats::connection::State;
use fanout_process::probes::{self, Probes};
use tokio_util::sync::CancellationToken;

use crate::engine::Readiness;
use crate::telemetry::Metrics;

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    nats: async_nats::Client,
    targets: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let probes = Probes {
        metrics: Box::new(move || metrics.encode()),
        // Ready while connected to NATS, the engine and every target: without it
        // nothing can be fetched or settled.
        ready: Box::new(move || match nats.connection_state() {
            State::Connected => targets.check(),
            other => Err(format!("NATS {other:?}")),
        }),
    };
    probes::serve(listener, probes, shutdown.cancelled_owned()).await
}
