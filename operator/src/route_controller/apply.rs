//! Step 5, apply: the dispatcher objects, by server-side apply as the operator's
//! field manager, unless one of them exists without being this route's (see
//! [`crate::ownership`]): then nothing is changed and the route reports the conflict.

use fanout_api::FanOutRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use super::Names;
use crate::context::{Context, FIELD_MANAGER};
use crate::dispatcher_objects::DispatcherObjects;
use crate::error::{Error, kube_error};
use crate::ownership::{self, Conflict};
use crate::route_status::Problem;

/// What became of the route's dispatcher objects.
pub(super) enum Dispatchers {
    /// Applied; the Deployment as the API server returned it (boxed: it is large).
    Applied(Box<Deployment>),
    /// Left alone: an object of their name is not the route's.
    Conflict(Conflict),
    /// Not applied, because new pods could not start (a Secret missing) or would
    /// fail at once (streams not provisioned), or the route is not valid: whatever
    /// runs now keeps running.
    Kept,
}

impl Dispatchers {
    /// Why the objects were not applied, when that is the route's problem.
    pub(super) fn problem(&self) -> Option<Problem> {
        match self {
            Dispatchers::Conflict(conflict) => Some(Problem::new(
                "DispatcherObjectConflict",
                conflict.to_string(),
            )),
            Dispatchers::Applied(_) | Dispatchers::Kept => None,
        }
    }
}

/// Applies the ServiceAccount, ConfigMap and Deployment of `route`. Fails only when
/// the API server does.
pub(super) async fn dispatcher_objects(
    ctx: &Context,
    route: &FanOutRoute,
    names: &Names,
    objects: DispatcherObjects,
) -> Result<Dispatchers, Error> {
    let namespace = names.namespace.as_str();
    let uid = route.uid().unwrap_or_default();
    let name = objects.deployment.metadata.name.clone().unwrap_or_default();
    let service_accounts = Api::<ServiceAccount>::namespaced(ctx.client.clone(), namespace);
    let config_maps = Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace);
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), namespace);
    // All three are looked at before any is changed, so a conflict leaves every one
    // of them as it was.
    let existing = [
        (
            "ServiceAccount",
            metadata(&service_accounts, "ServiceAccount", namespace, &name).await?,
        ),
        (
            "ConfigMap",
            metadata(&config_maps, "ConfigMap", namespace, &name).await?,
        ),
        (
            "Deployment",
            metadata(&deployments, "Deployment", namespace, &name).await?,
        ),
    ];
    for (kind, meta) in &existing {
        if let Err(conflict) = ownership::check(kind, namespace, &name, meta.as_ref(), &uid) {
            tracing::info!(route = %names.oref, %conflict, "dispatcher object not ours; left alone");
            return Ok(Dispatchers::Conflict(conflict));
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    service_accounts
        .patch(&name, &params, &Patch::Apply(&objects.service_account))
        .await
        .map_err(kube_error(format!(
            "applying ServiceAccount {namespace}/{name}"
        )))?;
    config_maps
        .patch(&name, &params, &Patch::Apply(&objects.config_map))
        .await
        .map_err(kube_error(format!("applying ConfigMap {namespace}/{name}")))?;
    deployments
        .patch(&name, &params, &Patch::Apply(&objects.deployment))
        .await
        .map(|d| Dispatchers::Applied(Box::new(d)))
        .map_err(kube_error(format!(
            "applying Deployment {namespace}/{name}"
        )))
}

/// The metadata of `name`, if it exists.
async fn metadata<K>(
    api: &Api<K>,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<ObjectMeta>, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_metadata_opt(name)
        .await
        .map(|m| m.map(|m| m.metadata))
        .map_err(kube_error(format!("reading {kind} {namespace}/{name}")))
}
