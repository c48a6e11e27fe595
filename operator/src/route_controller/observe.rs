//! Step 6, observe: what runs now. The dispatcher Deployment, the streams and
//! consumers with the dispatchers' health reports (`provision::observe`), and the
//! route's last status, which the report carries numbers over from when JetStream
//! could not be read.

use fanout_api::{FanOutRoute, FanOutRouteStatus};
use fanout_config::error_chain;
use fanout_provision::observe::{RouteObservation, observe};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

use super::apply::Dispatchers;
use super::{Names, Outcome};
use crate::context::Context;
use crate::error::{Error, kube_error};

/// What one reconcile saw of a route after applying it.
pub(super) struct Observed {
    /// The dispatcher Deployment, if it exists (none is looked for after a conflict).
    pub deployment: Option<Deployment>,
    /// `None` when the route could not be observed (stream missing, NATS down).
    pub jetstream: Option<RouteObservation>,
    /// The status before this reconcile.
    pub previous: Option<FanOutRouteStatus>,
}

/// Observes `route` after `outcome`. Fails only when the API server does.
pub(super) async fn route(
    ctx: &Context,
    route: &FanOutRoute,
    names: &Names,
    outcome: &Outcome,
) -> Result<Observed, Error> {
    let deployment = match &outcome.dispatchers {
        Dispatchers::Applied(deployment) => Some(deployment.as_ref().clone()),
        Dispatchers::Conflict(_) => None,
        Dispatchers::Kept => current_deployment(ctx, names).await?,
    };
    let jetstream = match &outcome.jetstream {
        // Nothing to read that provisioning did not already report.
        Some(Err(_)) => None,
        _ => jetstream(ctx, route, names).await,
    };
    // Without a fresh observation the status carries the last numbers over. The
    // cached object may predate this controller's own last status write, so carry
    // over what the API server has, not what the cache has.
    let previous = match jetstream {
        None => previous_status(ctx, names).await?,
        Some(_) => route.status.clone(),
    };
    Ok(Observed {
        deployment,
        jetstream,
        previous,
    })
}

/// The route's streams, consumers and health reports; `None` (logged) when they
/// cannot be read.
async fn jetstream(ctx: &Context, route: &FanOutRoute, names: &Names) -> Option<RouteObservation> {
    let key = &names.key;
    let dead_letter = route
        .spec
        .dead_letter
        .as_ref()
        .and_then(|d| d.enabled)
        .unwrap_or(true)
        .then(|| key.dead_letter_stream());
    let targets: Vec<String> = route.spec.targets.iter().map(|t| t.name.clone()).collect();
    match observe(
        &ctx.js,
        key,
        &key.stream(),
        dead_letter.as_deref(),
        &targets,
    )
    .await
    {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::debug!(route = %names.oref, error = %error_chain(&e), "route not observable yet");
            None
        }
    }
}

/// The route's status as the API server has it.
async fn previous_status(ctx: &Context, names: &Names) -> Result<Option<FanOutRouteStatus>, Error> {
    let (namespace, name) = (&names.namespace, &names.name);
    Ok(
        Api::<FanOutRoute>::namespaced(ctx.client.clone(), namespace)
            .get_status(name)
            .await
            .map_err(kube_error(format!(
                "reading FanOutRoute {namespace}/{name}"
            )))?
            .status,
    )
}

/// The route's dispatcher Deployment, if it exists.
pub(super) async fn current_deployment(
    ctx: &Context,
    names: &Names,
) -> Result<Option<Deployment>, Error> {
    let namespace = &names.namespace;
    let name = names.key.dispatcher_object_name();
    Api::<Deployment>::namespaced(ctx.client.clone(), namespace)
        .get_opt(&name)
        .await
        .map_err(kube_error(format!("reading Deployment {namespace}/{name}")))
}
