//! Step 4b, build: the route's dispatcher objects (ServiceAccount, ConfigMap,
//! Deployment; see [`crate::dispatcher_objects`]) from its rendering, its Secrets
//! and the operator's settings. Pure but for the settings read from the context.

use fanout_api::FanOutRoute;
use fanout_api::render::Rendered;

use crate::context::Context;
use crate::dispatcher_objects::{self, BuildError, DispatcherObjects};
use crate::secrets::{Found, SecretKeys};

/// The objects that run `replicas` dispatcher pods of `route`, mounting `secrets`
/// (as `found`, whose versions roll the pods when a Secret changes).
pub(super) fn objects(
    ctx: &Context,
    route: &FanOutRoute,
    rendered: &Rendered,
    replicas: i32,
    secrets: &SecretKeys,
    found: &Found,
) -> Result<DispatcherObjects, BuildError> {
    let keys = secrets
        .iter()
        .map(|(s, k)| (s.clone(), k.iter().cloned().collect()))
        .collect();
    dispatcher_objects::build(
        route,
        rendered,
        replicas,
        &keys,
        &found.versions,
        &ctx.dispatcher,
        &ctx.apiserver.current(),
    )
}
