//! What a replay sends, worked out from the route as it is declared: the route rendered
//! the way it runs (`fanout_api::render`), so the replay reads exactly the subjects the
//! target's consumer reads, applies its filter and paces at its rate limit. Shared by
//! the FanOutReplay controller and `kubectl fanout replay`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use fanout_api::render::{RenderError, render};
use fanout_api::replay::ReplayWindow;
use fanout_api::{ApiTarget, FanOutRoute};
use fanout_provision::replay::{From, Scope, UnknownTarget, Until, Window};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::dispatcher_objects::SECRETS_DIR;

/// Why a replay cannot start; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("FanOutRoute {namespace}/{route} does not exist")]
    RouteNotFound { namespace: String, route: String },
    #[error(transparent)]
    TargetNotFound(#[from] UnknownTarget),
    /// The route does not render (it is not running either): its own status says why.
    #[error("route {route} cannot run as declared (its Ready condition says why)")]
    RouteInvalid {
        route: String,
        #[source]
        source: RenderError,
    },
}

impl ScopeError {
    /// The reason of the `Complete` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            ScopeError::RouteNotFound { .. } => "RouteNotFound",
            ScopeError::TargetNotFound(_) => "TargetNotFound",
            ScopeError::RouteInvalid { .. } => "RouteInvalid",
        }
    }
}

/// The scope of a replay of `route`'s events to `target`. `api_target` looks up the
/// ApiTargets of the route's namespace by name.
pub fn scope<'a>(
    route: &FanOutRoute,
    api_target: impl Fn(&str) -> Option<&'a ApiTarget>,
    target: &str,
) -> Result<Scope, ScopeError> {
    let rendered = render(route, api_target, Path::new(SECRETS_DIR)).map_err(|source| {
        ScopeError::RouteInvalid {
            route: format!(
                "{}/{}",
                route.metadata.namespace.as_deref().unwrap_or_default(),
                route.metadata.name.as_deref().unwrap_or_default()
            ),
            source,
        }
    })?;
    Ok(Scope::of(&rendered.config, &rendered.streams, target)?)
}

/// The window a FanOutReplay declares; `since` counts back from `created`, its
/// creation time, so that the window stays the same whenever the replay (re)starts.
pub fn window(spec: &ReplayWindow, created: SystemTime) -> Window {
    let time = |t: &Time| SystemTime::from(t.0);
    let from = match (&spec.since, &spec.from_time, spec.from_sequence) {
        (Some(since), _, _) => From::Time(
            created
                .checked_sub(since.as_std())
                .unwrap_or(SystemTime::UNIX_EPOCH),
        ),
        (None, Some(t), _) => From::Time(time(t)),
        (None, None, Some(n)) => From::Sequence(n),
        // The CRD requires one of them; an object that slipped through replays all.
        (None, None, None) => From::Sequence(1),
    };
    let until = match (&spec.until_time, spec.until_sequence) {
        (Some(t), _) => Until::Time(time(t)),
        (None, Some(n)) => Until::Sequence(n),
        (None, None) => Until::Latest,
    };
    Window { from, until }
}

/// `since` as a start time counted back from now (for the CLI's `--since`).
pub fn since(ago: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_counts_back_from_creation() {
        let created = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let w = window(
            &ReplayWindow {
                since: Some("2h".parse().unwrap()),
                until_sequence: Some(40),
                ..Default::default()
            },
            created,
        );
        assert_eq!(
            w.from,
            From::Time(SystemTime::UNIX_EPOCH + Duration::from_secs(2_800))
        );
        assert_eq!(w.until, Until::Sequence(40));
        let w = window(
            &ReplayWindow {
                from_sequence: Some(7),
                ..Default::default()
            },
            created,
        );
        assert_eq!((w.from, w.until), (From::Sequence(7), Until::Latest));
    }
}
