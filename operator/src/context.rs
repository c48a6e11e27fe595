//! What every reconcile shares: clients, caches, settings and metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use fanout_api::{ApiTarget, FanOutRoute};
use fanout_provision::Provisioner;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::autoscale::Autoscaler;
use crate::dispatcher_objects::DispatcherSettings;
use crate::metrics::Metrics;

/// The field manager of every object and status the operator applies.
pub const FIELD_MANAGER: &str = "fanout-operator";

pub struct Context {
    pub client: kube::Client,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub provisioner: Provisioner,
    /// Every ApiTarget in the cluster, kept current by a watch.
    pub targets: Store<ApiTarget>,
    /// Every FanOutRoute in the cluster, kept current by a watch.
    pub routes: Store<FanOutRoute>,
    pub dispatcher: DispatcherSettings,
    pub status_interval: Duration,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub autoscaler: Autoscaler,
    /// Consecutive failed reconciles per route, for the retry backoff.
    failures: Mutex<HashMap<ObjectRef<FanOutRoute>, u32>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        nats: async_nats::Client,
        targets: Store<ApiTarget>,
        routes: Store<FanOutRoute>,
        dispatcher: DispatcherSettings,
        status_interval: Duration,
        metrics: Arc<Metrics>,
        instance: String,
    ) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(instance),
            },
        );
        let js = jetstream::new(nats.clone());
        Context {
            provisioner: Provisioner::new(js.clone()),
            client,
            nats,
            js,
            targets,
            routes,
            dispatcher,
            status_interval,
            metrics,
            recorder,
            autoscaler: Autoscaler::default(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failed reconcile of `route` and returns how long to wait before the
    /// next attempt: 1 s doubling up to the status interval (at most a minute).
    pub fn backoff(&self, route: &ObjectRef<FanOutRoute>) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        let n = failures.entry(route.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let cap = self
            .status_interval
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        Duration::from_secs(1u64 << (*n - 1).min(6)).min(cap)
    }

    /// Forgets the failures of `route` after a clean reconcile.
    pub fn succeeded(&self, route: &ObjectRef<FanOutRoute>) {
        self.failures.lock().expect("failures lock").remove(route);
    }
}
