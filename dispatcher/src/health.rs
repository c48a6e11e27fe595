//! Writes each target's health snapshot to the `fanout_health` KV bucket every few
//! seconds (and once more on stop); the operator turns them into status. The same
//! bucket tells how many replicas run the route, which sets each one's share of a
//! rate limit (see `rate_share.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use fanout_config::names::RouteKey;
use fanout_provision::observe;
use tokio_util::sync::CancellationToken;

use crate::worker::Worker;

pub async fn report(
    workers: Vec<Arc<Worker>>,
    bucket: kv::Store,
    nats: async_nats::Client,
    pod: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = shutdown.cancelled() => true,
        };
        if stopping && fanout_process::nats::is_away(&nats) {
            // The write would wait out JetStream's timeout for an answer that cannot
            // come; the operator sees this pod's snapshots age instead.
            tracing::info!("NATS is away: the last health snapshot is not written");
            return;
        }
        let mut route = None;
        for worker in &workers {
            let snapshot = worker.snapshot(&pod);
            let route_key = RouteKey::new(&snapshot.namespace, &snapshot.route);
            let key = route_key.health_key(worker.name(), &pod);
            route = Some(route_key);
            let value = serde_json::to_vec(&snapshot).expect("snapshots serialize");
            if let Err(error) = bucket.put(&key, value.into()).await {
                tracing::warn!(%key, error = %fanout_config::error_chain(&error), "writing the health snapshot failed");
            }
        }
        if stopping {
            return;
        }
        if let Some(route) = route {
            // Replicas that wrote within three intervals run; one missed write is
            // not a stop.
            match observe::live_pods(&bucket, &route, interval * 3).await {
                Ok(pods) => {
                    let replicas = u32::try_from(pods.len()).unwrap_or(u32::MAX).max(1);
                    for worker in &workers {
                        worker.set_replicas(replicas);
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %fanout_config::error_chain(&error), "counting the route's dispatchers failed; keeping the rate limit shares")
                }
            }
        }
    }
}
