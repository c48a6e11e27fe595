//! When a watch cache is filled, for any number of tasks waiting at once.
//!
//! kube-runtime's `Store::wait_until_ready` (5.0) keeps the waker of only the task
//! that polled it last (a oneshot receiver behind a mutex): of several tasks waiting
//! at the same time, the others are never woken. The first reconciles of an operator
//! that just started all wait at once, so an ApiTarget's reconcile could wait for good
//! and the ApiTarget stay without status. Here the stream that fills the cache marks
//! it filled when it passes the end of the initial listing, and a watch channel wakes
//! every waiter.

use kube::runtime::watcher;
use tokio::sync::watch;

/// Whether one watch cache is filled; clones share it.
#[derive(Clone, Debug)]
pub struct Readiness(watch::Receiver<bool>);

/// Marks a cache filled; held by the stream that fills it. Dropped before that, the
/// cache's waiters get [`CacheGone`].
#[derive(Debug)]
pub struct Marker(watch::Sender<bool>);

/// The stream that fills the cache stopped before the cache was filled.
#[derive(Debug, thiserror::Error)]
#[error("the watch cache's stream stopped before the cache was filled")]
pub struct CacheGone;

impl Readiness {
    pub fn new() -> (Readiness, Marker) {
        let (tx, rx) = watch::channel(false);
        (Readiness(rx), Marker(tx))
    }

    /// Waits until the cache is filled.
    pub async fn wait(&self) -> Result<(), CacheGone> {
        let mut rx = self.0.clone();
        rx.wait_for(|filled| *filled)
            .await
            .map(|_| ())
            .map_err(|_| CacheGone)
    }
}

impl Marker {
    /// Call it with each event of the reflector stream, after the reflector applied
    /// it (`reflector(..).inspect(..)`): the end of the first listing fills the cache.
    pub fn on_event<K>(&self, event: &Result<watcher::Event<K>, watcher::Error>) {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            self.0
                .send_if_modified(|filled| !std::mem::replace(filled, true));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    #[tokio::test]
    async fn every_task_waiting_at_once_is_woken_when_the_cache_fills() {
        let (readiness, marker) = Readiness::new();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let r = readiness.clone();
                tokio::spawn(async move { r.wait().await })
            })
            .collect();
        // Let every waiter start waiting before the cache fills.
        tokio::time::sleep(Duration::from_millis(20)).await;
        marker.on_event::<ConfigMap>(&Ok(watcher::Event::Init));
        marker.on_event::<ConfigMap>(&Ok(watcher::Event::InitDone));
        for waiter in waiters {
            let woken = tokio::time::timeout(Duration::from_secs(5), waiter).await;
            assert!(
                matches!(woken, Ok(Ok(Ok(())))),
                "a waiter was not woken: {woken:?}"
            );
        }
        // One that comes later does not wait.
        readiness.wait().await.unwrap();
    }

    #[tokio::test]
    async fn a_stream_gone_before_the_cache_filled_is_an_error() {
        let (readiness, marker) = Readiness::new();
        marker.on_event::<ConfigMap>(&Ok(watcher::Event::Init));
        drop(marker);
        assert!(readiness.wait().await.is_err());
    }
}
