//! Step 4a, scale: how many dispatcher pods the route runs. `spec.dispatcher.replicas`,
//! or with autoscaling what the route's last reported backlog calls for (see
//! [`crate::autoscale`]); a change of the autoscaled count is announced.

use std::time::Instant;

use fanout_api::FanOutRoute;
use kube::runtime::events::EventType;

use super::Names;
use super::observe::current_deployment;
use super::report::publish;
use crate::autoscale;
use crate::context::Context;
use crate::error::Error;

/// Dispatcher pods the route should run. Fails only when the current Deployment
/// cannot be read.
pub(super) async fn replicas(
    ctx: &Context,
    route: &FanOutRoute,
    names: &Names,
) -> Result<i32, Error> {
    let oref = &names.oref;
    let dispatcher = route.spec.dispatcher.as_ref();
    let Some(spec) = dispatcher.and_then(|d| d.autoscaling.as_ref()) else {
        ctx.autoscaler.forget(oref);
        return Ok(dispatcher
            .and_then(|d| d.replicas)
            .unwrap_or(fanout_config::policy::defaults::DISPATCHER_REPLICAS));
    };
    let current = current_deployment(ctx, names)
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
