//! `/metrics`, `/healthz` and `/readyz`. A standby replica (not leading) is ready: it
//! is healthy and waiting, and nothing routes traffic to the operator anyway.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fanout_process::probes::{self, Probes};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let probes = Probes {
        metrics: Box::new(move || metrics.encode()),
        ready: Box::new(move || {
            if ready.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("starting".into())
            }
        }),
    };
    probes::serve(listener, probes, shutdown.cancelled_owned()).await
}
