//! The `ApiTarget` controller: `Ready` (the policy resolves and every referenced
//! Secret key exists), the routes in the namespace that use the target, and the
//! worst circuit state those routes report for it. Routes carry the delivery work;
//! this status is the per-API summary.

use std::sync::Arc;
use std::time::Instant;

use fanout_api::status::CircuitState;
use fanout_api::{ApiTarget, ApiTargetStatus, FanOutRoute, settings};
use fanout_config::error_chain;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use crate::conditions::{Draft, READY, stamp};
use crate::context::{Circuits, Context};
use crate::error::Error;
use crate::secrets;

/// The controller's name in metrics.
pub const CONTROLLER: &str = "apitarget";

pub async fn reconcile(target: Arc<ApiTarget>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // With the "reconciled" line at the end: a reconcile that never ends shows.
    tracing::debug!(target = %ObjectRef::from_obj(target.as_ref()), "reconciling");
    let result = refresh(&target, &ctx).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciled(CONTROLLER, outcome, started.elapsed());
    result
}

/// Called by the controller when `reconcile` failed (see [`crate::retry`]).
pub fn error_policy(target: Arc<ApiTarget>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::retry::on_error(CONTROLLER, target, error, ctx)
}

async fn refresh(target: &ApiTarget, ctx: &Context) -> Result<Action, Error> {
    let namespace = target.namespace().unwrap_or_default();
    let name = target.name_any();
    ctx.routes_ready
        .wait()
        .await
        .map_err(|_| Error::CacheGone)?;

    let ready = match settings::resolve(&target.spec, None) {
        Err(e) => Draft::new(READY, false, "InvalidPolicy", error_chain(&e)),
        Ok(_) => {
            let wanted = secrets::dispatcher_secrets([target]);
            match secrets::check(&ctx.client, &namespace, &wanted).await? {
                Ok(_) => Draft::new(
                    READY,
                    true,
                    "Ready",
                    "the policy is valid and every referenced Secret key exists",
                ),
                Err(missing) => Draft::new(READY, false, "SecretNotFound", missing.to_string()),
            }
        }
    };

    let users = users(&ctx.routes.state(), &namespace, &name, |r| {
        ctx.circuits(&ObjectRef::from_obj(r))
    });
    let previous = target.status.clone().unwrap_or_default();
    let generation = target.metadata.generation.unwrap_or(0);
    let status = ApiTargetStatus {
        observed_generation: Some(generation),
        conditions: stamp(
            &previous.conditions,
            std::slice::from_ref(&ready),
            generation,
            &Time(k8s_openapi::jiff::Timestamp::now()),
        ),
        routes: users.iter().map(|(route, _)| route.clone()).collect(),
        circuit: users
            .iter()
            .filter_map(|(_, c)| *c)
            .reduce(CircuitState::worst),
    };

    let was = previous.conditions.iter().find(|c| c.type_ == READY);
    let changed = was.is_none_or(|c| {
        c.status != if ready.is_true() { "True" } else { "False" } || c.reason != ready.reason
    });
    if changed {
        let event = Event {
            type_: if ready.is_true() {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: ready.reason.clone(),
            note: Some(ready.message.chars().take(1000).collect()),
            action: READY.into(),
            secondary: None,
        };
        ctx.publish(&event, &target.object_ref(&()), false).await;
    }
    let write = target.status.as_ref() != Some(&status);
    if write {
        ctx.apply_status::<ApiTarget>(&namespace, &name, &status)
            .await?;
    }
    let oref = ObjectRef::from_obj(target);
    tracing::debug!(target = %oref, ready = ready.is_true(), circuit = ?status.circuit, wrote = write, "reconciled");
    ctx.succeeded(&oref);
    Ok(Action::requeue(ctx.status_interval))
}

/// Routes of `namespace` that reference the ApiTarget `name`, sorted, each with the
/// worst circuit state it reports for targets pointing at it (if it reports any).
/// `recorded` gives a route's circuits as this process last computed them; without
/// them, the route's status (as cached) says.
pub fn users(
    routes: &[Arc<FanOutRoute>],
    namespace: &str,
    name: &str,
    recorded: impl Fn(&FanOutRoute) -> Option<Circuits>,
) -> Vec<(String, Option<CircuitState>)> {
    let mut out: Vec<(String, Option<CircuitState>)> = routes
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(namespace))
        .filter_map(|r| {
            let using: Vec<&str> = r
                .spec
                .targets
                .iter()
                .filter(|t| t.api_target_ref.name == name)
                .map(|t| t.name.as_str())
                .collect();
            if using.is_empty() {
                return None;
            }
            let circuits = recorded(r).unwrap_or_else(|| {
                r.status
                    .iter()
                    .flat_map(|s| &s.targets)
                    .map(|t| (t.name.clone(), t.circuit))
                    .collect()
            });
            let circuit = circuits
                .iter()
                .filter(|(target, _)| using.contains(&target.as_str()))
                .map(|(_, c)| *c)
                .reduce(CircuitState::worst);
            Some((r.name_any(), circuit))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use fanout_api::FanOutRouteSpec;
    use fanout_api::route::{ApiTargetRef, RouteTargetSpec, TargetStatus};

    use super::*;

    fn route(ns: &str, name: &str, targets: &[(&str, &str, CircuitState)]) -> Arc<FanOutRoute> {
        let mut r = FanOutRoute::new(
            name,
            FanOutRouteSpec {
                source: None,
                targets: targets
                    .iter()
                    .map(|(t, api, _)| RouteTargetSpec {
                        name: (*t).into(),
                        api_target_ref: ApiTargetRef {
                            name: (*api).into(),
                        },
                        filter: None,
                        transform: None,
                        overrides: None,
                        ordering: None,
                    })
                    .collect(),
                dead_letter: None,
                dispatcher: None,
                gateway: None,
                history: None,
            },
        );
        r.metadata.namespace = Some(ns.into());
        r.status = Some(fanout_api::FanOutRouteStatus {
            targets: targets
                .iter()
                .map(|(t, _, c)| TargetStatus {
                    name: (*t).into(),
                    circuit: *c,
                    ..TargetStatus::default()
                })
                .collect(),
            ..Default::default()
        });
        Arc::new(r)
    }

    #[test]
    fn users_are_routes_of_the_namespace_with_their_worst_circuit() {
        let routes = vec![
            route(
                "shop",
                "orders",
                &[
                    ("crm", "crm", CircuitState::Closed),
                    ("crm-eu", "crm", CircuitState::Open),
                ],
            ),
            route("shop", "audit", &[("crm", "crm", CircuitState::HalfOpen)]),
            route("shop", "other", &[("mail", "mail", CircuitState::Open)]),
            route("billing", "orders", &[("crm", "crm", CircuitState::Open)]),
        ];
        let cached = |_: &FanOutRoute| None;
        assert_eq!(
            users(&routes, "shop", "crm", cached),
            vec![
                ("audit".to_string(), Some(CircuitState::HalfOpen)),
                ("orders".to_string(), Some(CircuitState::Open)),
            ]
        );
        assert!(users(&routes, "shop", "nobody", cached).is_empty());
        // What this process last computed wins over a cached status that lags.
        let recorded = |r: &FanOutRoute| {
            (r.name_any() == "audit")
                .then(|| Circuits::from([("crm".to_string(), CircuitState::Open)]))
        };
        assert_eq!(
            users(&routes, "shop", "crm", recorded)[0],
            ("audit".to_string(), Some(CircuitState::Open))
        );
    }
}
