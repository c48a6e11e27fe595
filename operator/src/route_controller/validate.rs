//! Step 2, validate: the route renders (`api::render`: its dispatcher configuration,
//! JetStream plan and gateway entry), its image is one the platform allows, and,
//! once read (see [`super::dereference::secrets`]), every Secret key it mounts
//! exists. What fails here is the user's to fix: a condition, not an error.

use std::path::Path;
use std::sync::Arc;

use fanout_api::FanOutRoute;
use fanout_api::render::{RenderError, Rendered, render};
use fanout_config::error_chain;

use super::dereference::ApiTargets;
use crate::dispatcher_objects::SECRETS_DIR;
use crate::image_policy::{ImagePolicy, NotAllowed};
use crate::route_status::Problem;
use crate::secrets::Missing;

/// Why a route is not valid; [`Invalid::problem`] is its `Ready` condition.
#[derive(Debug, thiserror::Error)]
pub(super) enum Invalid {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("{0}")]
    Image(NotAllowed),
    #[error(transparent)]
    Secret(#[from] Missing),
}

impl Invalid {
    /// The condition reason and message.
    pub(super) fn problem(&self) -> Problem {
        match self {
            Invalid::Render(e) => {
                let reason = match e {
                    RenderError::MissingMetadata(_) => "InvalidMetadata",
                    RenderError::MissingApiTarget { .. } => "ApiTargetNotFound",
                    RenderError::InvalidPolicy { .. } => "InvalidPolicy",
                    RenderError::FilterOutsideRoute { .. }
                    | RenderError::OverlappingFilters { .. } => "InvalidFilter",
                    RenderError::OverlappingSubjects { .. } | RenderError::InvalidStream(_) => {
                        "InvalidSource"
                    }
                    RenderError::InvalidExpression { .. } => "InvalidExpression",
                    RenderError::InvalidOrdering { .. } => "InvalidOrdering",
                };
                Problem::new(reason, error_chain(e))
            }
            Invalid::Image(refused) => Problem::new("ImageNotAllowed", refused.to_string()),
            Invalid::Secret(missing) => Problem::new("SecretNotFound", missing.to_string()),
        }
    }
}

/// Renders `route` with its ApiTargets, then checks its image: a route that does not
/// render reports that first.
pub(super) fn route(
    route: &FanOutRoute,
    targets: &ApiTargets,
    images: &ImagePolicy,
) -> Result<Rendered, Invalid> {
    let rendered = render(
        route,
        |n| targets.get(n).map(Arc::as_ref),
        Path::new(SECRETS_DIR),
    )?;
    image(route, images)?;
    Ok(rendered)
}

/// `spec.dispatcher.image`, when set, must be one the platform allows.
fn image(route: &FanOutRoute, images: &ImagePolicy) -> Result<(), Invalid> {
    let image = route
        .spec
        .dispatcher
        .as_ref()
        .and_then(|d| d.image.as_deref());
    match image.map(|i| images.check(i)) {
        Some(Err(refused)) => Err(Invalid::Image(refused)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use fanout_api::route::DispatcherSpec;

    use super::*;

    fn orders(image: Option<&str>) -> FanOutRoute {
        crate::dispatcher_objects::tests::route(Some(DispatcherSpec {
            image: image.map(str::to_string),
            ..DispatcherSpec::default()
        }))
    }

    fn crm() -> ApiTargets {
        let target = serde_json::from_value(serde_json::json!({
            "apiVersion": "fanout.dev/v1alpha1", "kind": "ApiTarget",
            "metadata": {"name": "crm", "namespace": "shop"},
            "spec": {"url": "https://crm.example/hook"}
        }))
        .unwrap();
        ApiTargets::from([("crm".to_string(), Arc::new(target))])
    }

    #[test]
    fn a_route_that_does_not_render_says_why_before_its_image_is_looked_at() {
        let images = ImagePolicy::new("fanout:1", &[]).unwrap();
        let invalid = route(&orders(Some("evil:1")), &ApiTargets::new(), &images).unwrap_err();
        let problem = invalid.problem();
        assert_eq!(problem.reason, "ApiTargetNotFound");
        assert_eq!(
            problem.message,
            r#"targets[crm].apiTargetRef: ApiTarget "crm" does not exist"#
        );
    }

    #[test]
    fn an_image_the_platform_did_not_allow_is_refused() {
        let images = ImagePolicy::new("fanout:1", &[]).unwrap();
        assert!(route(&orders(Some("fanout:1")), &crm(), &images).is_ok());
        let invalid = route(&orders(Some("evil:1")), &crm(), &images).unwrap_err();
        let problem = invalid.problem();
        assert_eq!(problem.reason, "ImageNotAllowed");
        assert!(
            problem
                .message
                .starts_with(r#"spec.dispatcher.image "evil:1""#)
        );
    }

    #[test]
    fn a_missing_secret_names_itself() {
        let missing = Missing::Secret {
            namespace: "shop".into(),
            name: "crm-auth".into(),
        };
        let problem = Invalid::from(missing).problem();
        assert_eq!(problem.reason, "SecretNotFound");
        assert_eq!(problem.message, "Secret shop/crm-auth does not exist");
    }
}
