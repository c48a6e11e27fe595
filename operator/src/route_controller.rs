//! The `FanOutRoute` controller. Each reconcile of a route runs the same pipeline
//! of named steps, each in a module of its own (`route_controller/`):
//!
//! 1. [`dereference`]: the ApiTargets the route names, from the watch cache.
//! 2. [`validate`]: the route renders (`api::render`) and its image is allowed.
//!    A route that does not stops here: nothing is applied.
//! 3. [`dereference::secrets`]: the Secrets its pods would mount, keys checked;
//!    and [`dereference::ingest`]: its ingest tokens' Secrets, for `IngestReady`.
//! 4. [`provision`]: its JetStream streams and consumers.
//! 5. When every Secret key is there and the streams exist: [`scale`] (how many
//!    pods), [`build`] (the dispatcher objects), [`apply`] (server-side apply,
//!    unless an object of their name is not the route's). Otherwise whatever runs
//!    now keeps running.
//! 6. [`observe`]: the Deployment, JetStream and the dispatchers' health reports.
//! 7. [`report`]: the status, Events for what changed, when to look again.
//!
//! Problems the user can fix end a step as a value ([`validate::Invalid`],
//! [`provision::NotProvisioned`], [`apply::Dispatchers::Conflict`]) that becomes a
//! condition and an Event, never a crash loop; only the API server failing, a build
//! failure or shutdown ends the reconcile with an [`Error`] (see [`crate::retry`]).
//! The route is looked at again every status interval, or sooner with backoff while
//! something is wrong. A finalizer deletes the route's streams when the route is
//! deleted.

mod apply;
mod build;
mod dereference;
mod observe;
mod provision;
mod report;
mod scale;
mod validate;

use std::sync::Arc;
use std::time::Instant;

use fanout_api::FanOutRoute;
use fanout_api::names::RouteKey;
use fanout_api::render::Rendered;
use fanout_config::expiry::Expiry;
use fanout_provision::Applied;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use self::apply::Dispatchers;
use self::dereference::ApiTargets;
use self::provision::NotProvisioned;
use self::validate::Invalid;
use crate::context::Context;
use crate::error::Error;
use crate::route_status::Ingest;
use crate::secrets::Missing;

/// Held on every route until its JetStream streams are deleted.
pub const FINALIZER: &str = "fanout.dev/jetstream";
/// The controller's name in metrics.
pub const CONTROLLER: &str = "fanoutroute";

pub async fn reconcile(route: Arc<FanOutRoute>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = route.namespace().unwrap_or_default();
    let api: Api<FanOutRoute> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, route, |event| async {
        match event {
            finalizer::Event::Apply(route) => apply(&route, &ctx).await,
            finalizer::Event::Cleanup(route) => cleanup(&route, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let outcome = match &result {
        Ok(_) => "ok",
        Err(_) => "error",
    };
    ctx.metrics
        .reconciled(CONTROLLER, outcome, started.elapsed());
    result
}

/// Called by the controller when `reconcile` failed (see [`crate::retry`]).
pub fn error_policy(route: Arc<FanOutRoute>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::retry::on_error(CONTROLLER, route, error, ctx)
}

/// The pipeline of a live route (see the module's documentation).
async fn apply(route: &FanOutRoute, ctx: &Context) -> Result<Action, Error> {
    let names = Names::of(route);
    let targets = dereference::api_targets(ctx, route, &names).await?;
    let outcome = match validate::route(route, &targets, &ctx.images) {
        Err(invalid) => Outcome::invalid(invalid),
        Ok(rendered) => run(ctx, route, &names, &targets, &rendered).await?,
    };
    let observed = observe::route(ctx, route, &names, &outcome).await?;
    let troubled = outcome.troubled();
    report::status(ctx, route, &names, outcome, observed).await?;
    Ok(report::next(ctx, &names, troubled))
}

/// The steps that act on a route that renders: its Secrets, JetStream, then its
/// dispatchers.
async fn run(
    ctx: &Context,
    route: &FanOutRoute,
    names: &Names,
    targets: &ApiTargets,
    rendered: &Rendered,
) -> Result<Outcome, Error> {
    let secrets = dereference::secret_keys(targets, &ctx.dispatcher);
    let found = dereference::secrets(ctx, names, &secrets).await?;
    let ingest = dereference::ingest(ctx, route, names).await?;
    let jetstream = provision::jetstream(ctx, &rendered.streams).await;
    let dispatchers = match (&found, &jetstream) {
        (Ok(found), Ok(_)) => {
            let replicas = scale::replicas(ctx, route, names).await?;
            let objects = build::objects(ctx, route, rendered, replicas, &secrets, found)
                .map_err(Error::Build)?;
            apply::dispatcher_objects(ctx, route, names, objects).await?
        }
        // Keep whatever runs now: new pods could not start (missing Secret) or
        // would fail at once (stream not provisioned).
        _ => Dispatchers::Kept,
    };
    Ok(Outcome {
        config: found.map(|_| ()).map_err(Invalid::from),
        expiry: rendered.config.expiry,
        jetstream: Some(jetstream),
        dispatchers,
        ingest: Some(ingest),
    })
}

/// The names one reconcile of a route uses throughout.
struct Names {
    namespace: String,
    name: String,
    key: RouteKey,
    oref: ObjectRef<FanOutRoute>,
}

impl Names {
    fn of(route: &FanOutRoute) -> Names {
        let namespace = route.namespace().unwrap_or_default();
        let name = route.name_any();
        Names {
            key: RouteKey::new(&namespace, &name),
            oref: ObjectRef::from_obj(route),
            namespace,
            name,
        }
    }
}

/// What the steps up to [`apply`] ended with; [`observe`] and [`report`] read it.
struct Outcome {
    /// The route renders, its image is allowed and every Secret key exists.
    config: Result<(), Invalid>,
    /// When the stream removes events; `None` when it keeps them for ever or the
    /// route did not render.
    expiry: Option<Expiry>,
    /// JetStream provisioning; `None` when it was not attempted (the route did not
    /// render), so the previous condition stands.
    jetstream: Option<Result<Applied, NotProvisioned>>,
    dispatchers: Dispatchers,
    /// The gateway's side; `None` when not looked at (the route did not render).
    ingest: Option<Result<Ingest, Missing>>,
}

impl Outcome {
    /// A route that did not validate: nothing attempted, nothing changed.
    fn invalid(invalid: Invalid) -> Outcome {
        Outcome {
            config: Err(invalid),
            expiry: None,
            jetstream: None,
            dispatchers: Dispatchers::Kept,
            ingest: None,
        }
    }

    /// Whether something is wrong, so the route is looked at again sooner.
    fn troubled(&self) -> bool {
        self.config.is_err()
            || matches!(self.jetstream, Some(Err(_)))
            || matches!(self.ingest, Some(Err(_)))
            || self.dispatchers.problem().is_some()
    }
}

async fn cleanup(route: &FanOutRoute, ctx: &Context) -> Result<Action, Error> {
    let Names { key, oref, .. } = Names::of(route);
    ctx.autoscaler.forget(&oref);
    ctx.forget_circuits(&oref);
    // Names come from the route's identity alone, so this works even when the route
    // no longer renders. Streams already gone count as deleted.
    ctx.provisioner
        .delete(&[
            key.stream(),
            key.dead_letter_stream(),
            key.attempts_stream(),
        ])
        .await
        .map_err(Error::Cleanup)?;
    tracing::info!(route = %key, "route deleted; its streams are gone");
    // The Deployment, ConfigMap and ServiceAccount follow by garbage collection; an
    // object of that name that was not the route's has no ownerReference to it and
    // stays.
    Ok(Action::await_change())
}
