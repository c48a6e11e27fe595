//! What every reconcile shares: clients, caches, settings and metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use fanout_api::route::TargetStatus;
use fanout_api::status::CircuitState;
use fanout_api::{ApiTarget, FanOutReplay, FanOutRoute};
use fanout_provision::Provisioner;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};

use crate::apiserver_addresses::ApiserverAddresses;
use crate::autoscale::Autoscaler;
use crate::dispatcher_objects::DispatcherSettings;
use crate::error::{Error, kube_error};
use crate::image_policy::ImagePolicy;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::replay_runs::ReplayRuns;
use crate::retry::Failures;

/// The field manager of every object and status the operator applies.
pub const FIELD_MANAGER: &str = "fanout-operator";

pub struct Context {
    pub client: kube::Client,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub provisioner: Provisioner,
    /// Every ApiTarget in the watched scope, kept current by a watch.
    pub targets: Store<ApiTarget>,
    /// Every FanOutRoute in the watched scope, kept current by a watch.
    pub routes: Store<FanOutRoute>,
    /// When each cache is filled; await these, not the stores' own
    /// `wait_until_ready` (see [`crate::readiness`]).
    pub targets_ready: Readiness,
    pub routes_ready: Readiness,
    /// The FanOutReplays being run.
    pub replays: ReplayRuns,
    pub dispatcher: DispatcherSettings,
    /// The images routes may choose.
    pub images: ImagePolicy,
    /// What dispatchers are told to refuse as the apiserver, kept current.
    pub apiserver: Arc<ApiserverAddresses>,
    pub status_interval: Duration,
    pub metrics: Arc<Metrics>,
    /// Folds repeated failures into one Event series (see [`Context::publish`]).
    failures_recorder: Recorder,
    reporter: Reporter,
    pub autoscaler: Autoscaler,
    /// Consecutive failed reconciles per object, for the retry backoff.
    failures: Failures,
    /// Each route's target circuits as its last reconcile here computed them.
    circuits: Mutex<HashMap<ObjectRef<FanOutRoute>, Circuits>>,
}

/// Circuit state by target name within a route.
pub type Circuits = BTreeMap<String, CircuitState>;

impl Context {
    /// Applies `status` as the status of the `K` named `namespace/name`, as the
    /// operator's field manager (server-side apply, forced: the operator owns status).
    pub async fn apply_status<K>(
        &self,
        namespace: &str,
        name: &str,
        status: &impl serde::Serialize,
    ) -> Result<(), Error>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let kind = K::kind(&());
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": kind,
            "status": status,
        });
        Api::<K>::namespaced(self.client.clone(), namespace)
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(kube_error(format!(
                "writing the status of {kind} {namespace}/{name}"
            )))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        nats: async_nats::Client,
        (targets, targets_ready): (Store<ApiTarget>, Readiness),
        (routes, routes_ready): (Store<FanOutRoute>, Readiness),
        replays: Store<FanOutReplay>,
        dispatcher: DispatcherSettings,
        images: ImagePolicy,
        apiserver: Arc<ApiserverAddresses>,
        status_interval: Duration,
        metrics: Arc<Metrics>,
        instance: String,
    ) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(instance),
        };
        let failures_recorder = Recorder::new(client.clone(), reporter.clone());
        let js = jetstream::new(nats.clone());
        Context {
            provisioner: Provisioner::new(js.clone()),
            client,
            nats,
            js,
            targets_ready,
            routes_ready,
            targets,
            routes,
            replays: ReplayRuns::new(replays),
            dispatcher,
            images,
            apiserver,
            status_interval,
            metrics,
            failures_recorder,
            reporter,
            autoscaler: Autoscaler::default(),
            failures: Failures::default(),
            circuits: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes `event` about `object`; a failure to publish is logged, not returned.
    ///
    /// The recorder folds an Event into an earlier one with the same reason and
    /// action (within six minutes) and keeps the earlier note. That suits a failure
    /// that repeats (`repeats`), which then counts up. An Event of a change (a
    /// condition's new reason, a new replica count) is published on its own, so that
    /// its note is the one shown.
    pub async fn publish(&self, event: &Event, object: &ObjectReference, repeats: bool) {
        let result = if repeats {
            self.failures_recorder.publish(event, object).await
        } else {
            Recorder::new(self.client.clone(), self.reporter.clone())
                .publish(event, object)
                .await
        };
        if let Err(error) = result {
            tracing::warn!(error = %fanout_config::error_chain(&error), reason = %event.reason, "publishing an Event failed");
        }
    }

    /// Remembers the circuits of `route`'s targets just written to its status. The
    /// ApiTarget controller reads them here: the routes in the watch cache can lag
    /// behind what this process wrote.
    pub fn record_circuits(&self, route: &ObjectRef<FanOutRoute>, targets: &[TargetStatus]) {
        let circuits = targets
            .iter()
            .map(|t| (t.name.clone(), t.circuit))
            .collect();
        let mut all = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        all.insert(route.clone(), circuits);
    }

    /// The circuits last recorded for `route`, if this process reconciled it.
    pub fn circuits(&self, route: &ObjectRef<FanOutRoute>) -> Option<Circuits> {
        let all = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        all.get(route).cloned()
    }

    /// Forgets a deleted route's circuits.
    pub fn forget_circuits(&self, route: &ObjectRef<FanOutRoute>) {
        let mut all = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        all.remove(route);
    }

    /// Records a failed reconcile of `object`; how long to wait before the next.
    pub fn backoff<K: Resource<DynamicType = ()>>(&self, object: &ObjectRef<K>) -> Duration {
        self.failures.failed(object, self.status_interval)
    }

    /// Forgets the failures of `object` after a clean reconcile.
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, object: &ObjectRef<K>) {
        self.failures.succeeded(object);
    }
}
