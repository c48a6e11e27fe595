//! The `FanOutRoute` controller. Each reconcile runs the same pipeline:
//! dereference (ApiTargets from the cache, Secrets from the API) -> validate and
//! build (`api::render`, dispatcher objects) -> apply (JetStream, then the
//! ServiceAccount, ConfigMap and Deployment by server-side apply) -> status (from
//! JetStream, the dispatchers' health reports and the Deployment). Problems the user
//! can fix become conditions and Events, never a crash loop; the route is looked at
//! again every status interval, or sooner with backoff while something is wrong.
//! A finalizer deletes the route's streams when the route is deleted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use fanout_api::names::RouteKey;
use fanout_api::render::{RenderError, render};
use fanout_api::{ApiTarget, FanOutRoute, FanOutRouteStatus};
use fanout_config::error_chain;
use fanout_provision::ProvisionError;
use fanout_provision::observe::observe;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use crate::autoscale;
use crate::conditions::READY;
use crate::context::{Context, FIELD_MANAGER};
use crate::dispatcher_objects::{self, SECRETS_DIR};
use crate::error::{Error, kube_error};
use crate::ownership;
use crate::route_status::{self, Findings, Problem};
use crate::secrets;

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

async fn apply(route: &FanOutRoute, ctx: &Context) -> Result<Action, Error> {
    let namespace = route.namespace().unwrap_or_default();
    let name = route.name_any();
    let key = RouteKey::new(&namespace, &name);
    let oref = ObjectRef::from_obj(route);
    // Until the ApiTarget cache has synced, every target would look missing.
    ctx.targets
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;

    // Dereference.
    let referenced: BTreeMap<String, Arc<ApiTarget>> = route
        .spec
        .targets
        .iter()
        .filter_map(|t| {
            let name = &t.api_target_ref.name;
            ctx.targets
                .get(&ObjectRef::new(name).within(&namespace))
                .map(|a| (name.clone(), a))
        })
        .collect();

    // Validate and build, then apply.
    let mut stream = None;
    let mut deployment = None;
    let mut expiry = None;
    let mut applied = None;
    let mut dispatcher_problem = None;
    let validated = render(
        route,
        |n| referenced.get(n).map(Arc::as_ref),
        Path::new(SECRETS_DIR),
    )
    .map_err(|e| render_problem(&e))
    .and_then(|rendered| {
        check_image(route, ctx)?;
        Ok(rendered)
    });
    let config = match validated {
        Err(problem) => Err(problem),
        Ok(rendered) => {
            expiry = rendered.config.expiry;
            let mut wanted = secrets::dispatcher_secrets(referenced.values().map(Arc::as_ref));
            if let Some(auth) = &ctx.dispatcher.nats_auth {
                let (secret, key) = auth.secret_key();
                wanted
                    .entry(secret.to_string())
                    .or_default()
                    .insert(key.to_string());
            }
            if let Some(secret) = &ctx.dispatcher.nats_ca_secret {
                wanted
                    .entry(secret.clone())
                    .or_default()
                    .insert(dispatcher_objects::NATS_CA_KEY.to_string());
            }
            let otlp_headers = ctx.dispatcher.otlp.as_ref();
            if let Some(secret) = otlp_headers.and_then(|o| o.headers_secret.as_ref()) {
                wanted
                    .entry(secret.clone())
                    .or_default()
                    .insert(dispatcher_objects::OTLP_HEADERS_KEY.to_string());
            }
            let found = secrets::check(&ctx.client, &namespace, &wanted)
                .await?
                .map_err(|missing| Problem::new("SecretNotFound", missing.to_string()));
            let provisioned = ctx.provisioner.apply(&rendered.streams).await;
            applied = provisioned.as_ref().ok().cloned();
            stream = Some(
                provisioned
                    .map(|_| ())
                    .map_err(|e| provision_problem(&e, ctx)),
            );
            match (&found, &stream) {
                (Ok(found), Some(Ok(()))) => {
                    let keys = wanted
                        .iter()
                        .map(|(s, k)| (s.clone(), k.iter().cloned().collect()))
                        .collect();
                    let replicas = replicas(ctx, route, &oref, &namespace, &key).await?;
                    let objects = dispatcher_objects::build(
                        route,
                        &rendered,
                        replicas,
                        &keys,
                        &found.versions,
                        &ctx.dispatcher,
                        &ctx.apiserver.current(),
                    )
                    .map_err(Error::Build)?;
                    match apply_objects(ctx, &namespace, route, objects).await? {
                        Ok(applied) => deployment = Some(applied),
                        Err(conflict) => {
                            tracing::info!(route = %oref, %conflict, "dispatcher object not ours; left alone");
                            dispatcher_problem = Some(Problem::new(
                                "DispatcherObjectConflict",
                                conflict.to_string(),
                            ));
                        }
                    }
                }
                // Keep whatever runs now: new pods could not start (missing Secret) or
                // would fail at once (stream not provisioned).
                _ => deployment = current_deployment(ctx, &namespace, &key).await?,
            }
            found.map(|_| ())
        }
    };
    if config.is_err() && deployment.is_none() && dispatcher_problem.is_none() {
        deployment = current_deployment(ctx, &namespace, &key).await?;
    }

    // Status.
    let observation = if matches!(stream, Some(Err(_))) {
        None
    } else {
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
            &key,
            &key.stream(),
            dead_letter.as_deref(),
            &targets,
        )
        .await
        {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::debug!(route = %oref, error = %error_chain(&e), "route not observable yet");
                None
            }
        }
    };
    let troubled =
        config.is_err() || matches!(stream, Some(Err(_))) || dispatcher_problem.is_some();
    // Without a fresh observation the status carries the last numbers over. The
    // cached object may predate this controller's own last status write, so carry
    // over what the API server has, not what the cache has.
    let previous = if observation.is_none() {
        Api::<FanOutRoute>::namespaced(ctx.client.clone(), &namespace)
            .get_status(&name)
            .await
            .map_err(kube_error(format!(
                "reading FanOutRoute {namespace}/{name}"
            )))?
            .status
    } else {
        route.status.clone()
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let recreated = applied.as_ref().and_then(|applied| {
        route_status::recreated(
            previous.as_ref(),
            applied,
            |consumer| {
                route
                    .spec
                    .targets
                    .iter()
                    .find(|t| key.consumer(&t.name) == consumer)
                    .map(|t| t.name.clone())
            },
            &now,
        )
    });
    if let Some(r) = &recreated {
        tracing::warn!(route = %oref, message = %r.message, "JetStream objects were missing; created them again");
        publish(
            ctx,
            route,
            EventType::Warning,
            ("JetStreamObjectsRecreated", "Provision"),
            r.message.clone(),
            false,
        )
        .await;
    }
    let status = route_status::compute(
        &Findings {
            generation: route.metadata.generation.unwrap_or(0),
            previous: previous.as_ref(),
            config,
            stream,
            deployment: deployment.as_ref(),
            dispatcher_problem,
            observation: observation.as_ref(),
            expiry,
            recreated,
        },
        &now,
    );
    ctx.record_circuits(&oref, &status.targets);
    announce_changes(ctx, route, previous.as_ref(), &status).await;
    if previous.as_ref() != Some(&status) {
        ctx.apply_status::<FanOutRoute>(&namespace, &name, &status)
            .await?;
    }
    if troubled {
        Ok(Action::requeue(ctx.backoff(&oref)))
    } else {
        ctx.succeeded(&oref);
        Ok(Action::requeue(ctx.status_interval))
    }
}

/// Dispatcher pods the route should run: `replicas`, or with `autoscaling` what its
/// last reported backlog calls for (see [`crate::autoscale`]). A change of the
/// autoscaled count is announced with an Event.
async fn replicas(
    ctx: &Context,
    route: &FanOutRoute,
    oref: &ObjectRef<FanOutRoute>,
    namespace: &str,
    key: &RouteKey,
) -> Result<i32, Error> {
    let dispatcher = route.spec.dispatcher.as_ref();
    let Some(spec) = dispatcher.and_then(|d| d.autoscaling.as_ref()) else {
        ctx.autoscaler.forget(oref);
        return Ok(dispatcher
            .and_then(|d| d.replicas)
            .unwrap_or(fanout_config::policy::defaults::DISPATCHER_REPLICAS));
    };
    let current = current_deployment(ctx, namespace, key)
        .await?
        .and_then(|d| d.spec)
        .and_then(|s| s.replicas);
    let targets = route
        .status
        .as_ref()
        .map(|s| s.targets.as_slice())
        .unwrap_or_default();
    let (recommended, why) = autoscale::recommend(spec, targets);
    let decided = ctx
        .autoscaler
        .decide(oref, spec, recommended, current, Instant::now());
    if let Some(current) = current
        && current != decided
    {
        let note = if decided > current {
            format!("dispatcher replicas {current} -> {decided}: {why}")
        } else {
            format!(
                "dispatcher replicas {current} -> {decided}: {why}, for at least the scale-down delay"
            )
        };
        tracing::info!(route = %oref, %note, "scaling");
        publish(
            ctx,
            route,
            EventType::Normal,
            ("Scaled", "Scale"),
            note,
            false,
        )
        .await;
    }
    Ok(decided)
}

async fn cleanup(route: &FanOutRoute, ctx: &Context) -> Result<Action, Error> {
    let key = RouteKey::new(route.namespace().unwrap_or_default(), route.name_any());
    ctx.autoscaler.forget(&ObjectRef::from_obj(route));
    ctx.forget_circuits(&ObjectRef::from_obj(route));
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

fn render_problem(e: &RenderError) -> Problem {
    let reason = match e {
        RenderError::MissingMetadata(_) => "InvalidMetadata",
        RenderError::MissingApiTarget { .. } => "ApiTargetNotFound",
        RenderError::InvalidPolicy { .. } => "InvalidPolicy",
        RenderError::FilterOutsideRoute { .. } | RenderError::OverlappingFilters { .. } => {
            "InvalidFilter"
        }
        RenderError::OverlappingSubjects { .. } | RenderError::InvalidStream(_) => "InvalidSource",
        RenderError::InvalidExpression { .. } => "InvalidExpression",
        RenderError::InvalidOrdering { .. } => "InvalidOrdering",
    };
    Problem::new(reason, error_chain(e))
}

fn provision_problem(e: &ProvisionError, ctx: &Context) -> Problem {
    let reason = match e {
        ProvisionError::ImmutableChange { .. } => "ImmutableStreamSetting",
        _ if ctx.nats.connection_state() != async_nats::connection::State::Connected => {
            "NatsUnavailable"
        }
        _ => "ProvisioningFailed",
    };
    Problem::new(reason, error_chain(e))
}

/// `spec.dispatcher.image`, when set, must be one the platform allows.
fn check_image(route: &FanOutRoute, ctx: &Context) -> Result<(), Problem> {
    let image = route
        .spec
        .dispatcher
        .as_ref()
        .and_then(|d| d.image.as_deref());
    match image.map(|i| ctx.images.check(i)) {
        Some(Err(refused)) => Err(Problem::new("ImageNotAllowed", refused.to_string())),
        _ => Ok(()),
    }
}

/// Applies the ServiceAccount, ConfigMap and Deployment, unless one of them exists
/// without being this route's (see [`ownership`]): then nothing is changed and the
/// conflict is returned.
async fn apply_objects(
    ctx: &Context,
    namespace: &str,
    route: &FanOutRoute,
    objects: dispatcher_objects::DispatcherObjects,
) -> Result<Result<Deployment, ownership::Conflict>, Error> {
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
            return Ok(Err(conflict));
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
        .map(Ok)
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

async fn current_deployment(
    ctx: &Context,
    namespace: &str,
    key: &RouteKey,
) -> Result<Option<Deployment>, Error> {
    let name = key.dispatcher_object_name();
    Api::<Deployment>::namespaced(ctx.client.clone(), namespace)
        .get_opt(&name)
        .await
        .map_err(kube_error(format!("reading Deployment {namespace}/{name}")))
}

/// An Event when the route's readiness or a target's health changes, not on every
/// refresh: Events are for what happened.
async fn announce_changes(
    ctx: &Context,
    route: &FanOutRoute,
    before: Option<&FanOutRouteStatus>,
    after: &FanOutRouteStatus,
) {
    let find = |s: Option<&FanOutRouteStatus>, type_: &str| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    for type_ in [
        READY,
        crate::conditions::TARGETS_HEALTHY,
        crate::conditions::BACKLOG_WITHIN_RETENTION,
    ] {
        let (old, new) = (find(before, type_), find(Some(after), type_));
        let Some((status, reason, message)) = new else {
            continue;
        };
        if old.as_ref().map(|(s, r, _)| (s, r)) == Some((&status, &reason)) {
            continue;
        }
        let type_event = if status == "False" {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(ctx, route, type_event, (&reason, type_), message, false).await;
    }
}

/// An Event about `route`; `repeats` for a failure that may recur (see
/// [`Context::publish`]).
async fn publish(
    ctx: &Context,
    route: &FanOutRoute,
    type_: EventType,
    (reason, action): (&str, &str),
    note: String,
    repeats: bool,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        // The Events API caps notes at 1 kB.
        note: Some(note.chars().take(1000).collect()),
        action: action.to_string(),
        secondary: None,
    };
    ctx.publish(&event, &route.object_ref(&()), repeats).await;
}
