//! Writes each target's health snapshot to the `fanout_health` KV bucket every few
//! seconds (and once more on stop); the operator turns them into status.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use fanout_config::names::RouteKey;
use tokio_util::sync::CancellationToken;

use crate::worker::Worker;

pub async fn report(
    workers: Vec<Arc<Worker>>,
    bucket: kv::Store,
    pod: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = shutdown.cancelled() => true,
        };
        for worker in &workers {
            let snapshot = worker.snapshot(&pod);
            let key =
                RouteKey::new(&snapshot.namespace, &snapshot.route).health_key(worker.name(), &pod);
            let value = serde_json::to_vec(&snapshot).expect("snapshots serialize");
            if let Err(error) = bucket.put(&key, value.into()).await {
                tracing::warn!(%key, error = %fanout_config::error_chain(&error), "writing the health snapshot failed");
            }
        }
        if stopping {
            return;
        }
    }
}
