//! Picks up changes to the configuration and token files (the operator updates a
//! ConfigMap, Kubernetes rotates a Secret) by re-reading them periodically. A change
//! that does not load keeps the routes as they were. A file that does not exist yet
//! (the gateway started before the operator rendered it) is waited for quietly, and
//! a token file named but not there yet leaves its route waiting for it
//! ([`MissingTokenFile::Wait`]), with a warning.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{self, MissingTokenFile, RouteTable};
use crate::metrics::Metrics;
use crate::shard::Phase;

/// Re-reads `path` every `interval` until the gateway stops serving, publishing
/// changed tables.
pub async fn watch_config(
    path: PathBuf,
    interval: Duration,
    routes: watch::Sender<Arc<RouteTable>>,
    metrics: Arc<Metrics>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the table is fresh
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = phase.wait_for(|phase| *phase != Phase::Serve) => return,
        }
        let path = path.clone();
        let loaded =
            tokio::task::spawn_blocking(move || config::load(&path, MissingTokenFile::Wait)).await;
        match loaded {
            Ok(Ok(table)) => {
                last_error = None;
                for route in table.routes() {
                    let before = routes.borrow().get(&route.namespace, &route.name).cloned();
                    for file in &route.absent_token_files {
                        let known = before
                            .as_ref()
                            .is_some_and(|r| r.absent_token_files.contains(file));
                        if !known {
                            tracing::warn!(route = %route.label, file = %file.display(), "token file named by the configuration does not exist (yet); requests with a token the route does not have are answered 503 route-not-ready until it does");
                        }
                    }
                }
                if **routes.borrow() != table {
                    tracing::info!(
                        routes = table.len(),
                        "gateway configuration changed; now serving the new routes"
                    );
                    metrics.routes_configured(table.routes().map(|r| &r.label));
                    routes.send_replace(Arc::new(table));
                    metrics.reload(true);
                }
            }
            // Still waiting for a file that never existed: start-up said so already.
            Ok(Err(e)) if e.is_missing_file() && routes.borrow().is_empty() => {}
            Ok(Err(e)) => {
                let message = fanout_config::error_chain(&e);
                // Say it once per distinct error rather than every interval.
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "gateway configuration did not load; keeping the previous routes");
                    metrics.reload(false);
                    last_error = Some(message);
                }
            }
            Err(e) => {
                tracing::error!(error = %fanout_config::error_chain(&e), "configuration reload task failed")
            }
        }
    }
}
