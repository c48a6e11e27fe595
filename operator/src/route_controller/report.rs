//! Step 7, report: the route's status (computed in [`crate::route_status`] from the
//! outcome and the observation), written only when it changed; Events for what
//! happened (readiness or health changed, JetStream objects recreated); and when to
//! look at the route again.

use fanout_api::{FanOutRoute, FanOutRouteStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};

use super::observe::Observed;
use super::{Names, Outcome};
use crate::conditions::{BACKLOG_WITHIN_RETENTION, INGEST_READY, READY, TARGETS_HEALTHY};
use crate::context::Context;
use crate::error::Error;
use crate::route_status::{self, Findings, Problem};

/// Computes and writes the status of `route`. Fails only when the API server does.
pub(super) async fn status(
    ctx: &Context,
    route: &FanOutRoute,
    names: &Names,
    outcome: Outcome,
    observed: Observed,
) -> Result<(), Error> {
    let previous = observed.previous.as_ref();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let applied = outcome.jetstream.as_ref().and_then(|j| j.as_ref().ok());
    let recreated = applied.and_then(|applied| {
        route_status::recreated(
            previous,
            applied,
            |consumer| {
                route
                    .spec
                    .targets
                    .iter()
                    .find(|t| names.key.consumer(&t.name) == consumer)
                    .map(|t| t.name.clone())
            },
            &now,
        )
    });
    if let Some(r) = &recreated {
        tracing::warn!(route = %names.oref, message = %r.message, "JetStream objects were missing; created them again");
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
            previous,
            config: outcome.config.as_ref().map(|_| ()).map_err(|i| i.problem()),
            stream: outcome
                .jetstream
                .as_ref()
                .map(|j| j.as_ref().map(|_| ()).map_err(|n| n.problem())),
            deployment: observed.deployment.as_ref(),
            dispatcher_problem: outcome.dispatchers.problem(),
            observation: observed.jetstream.as_ref(),
            expiry: outcome.expiry,
            recreated,
            ingest: outcome.ingest.as_ref().map(|i| {
                i.as_ref()
                    .copied()
                    .map_err(|m| Problem::new("SecretNotFound", m.to_string()))
            }),
        },
        &now,
    );
    ctx.record_circuits(&names.oref, &status.targets);
    announce_changes(ctx, route, previous, &status).await;
    if previous != Some(&status) {
        ctx.apply_status::<FanOutRoute>(&names.namespace, &names.name, &status)
            .await?;
    }
    Ok(())
}

/// When to reconcile the route again: sooner, with backoff, while it is `troubled`;
/// else at the status interval, its backoff reset.
pub(super) fn next(ctx: &Context, names: &Names, troubled: bool) -> Action {
    if troubled {
        Action::requeue(ctx.backoff(&names.oref))
    } else {
        ctx.succeeded(&names.oref);
        Action::requeue(ctx.status_interval)
    }
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
        TARGETS_HEALTHY,
        BACKLOG_WITHIN_RETENTION,
        INGEST_READY,
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
pub(super) async fn publish(
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
