//! Which events a replay to one target sends, and how fast: what the target's own
//! consumer reads (the route's subjects, or the target's filter subjects), what its
//! header filter lets through, at its rate limit. Taken from the rendered route, so a
//! replay sends the target nothing it would not have received.

use fanout_config::RouteConfig;
use fanout_config::jetstream::RouteStreams;
use fanout_config::names::RouteKey;
use fanout_config::policy::RateLimit;
use fanout_config::route::Filter;

/// One target of one route, as a replay sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    pub route: RouteKey,
    pub target: String,
    /// The route's stream.
    pub stream: String,
    /// The subjects the target's consumer reads, its redrive subject left out: copies
    /// sent there earlier (redrives, other replays) are not events of the window.
    pub subjects: Vec<String>,
    /// The target's filter. Its consumer takes every event published to its redrive
    /// subject, so the replay applies the header filter itself.
    pub filter: Filter,
    /// The target's rate limit, `None` when it has none.
    pub rate_limit: Option<RateLimit>,
}

/// The route has no target of that name.
#[derive(Debug, thiserror::Error)]
#[error("route {route} has no target {target:?}; its targets: {known}")]
pub struct UnknownTarget {
    pub route: RouteKey,
    pub target: String,
    pub known: String,
}

impl Scope {
    /// The scope of `target` in a rendered route.
    pub fn of(
        config: &RouteConfig,
        streams: &RouteStreams,
        target: &str,
    ) -> Result<Scope, UnknownTarget> {
        let route = config.key();
        let unknown = || UnknownTarget {
            route: route.clone(),
            target: target.to_string(),
            known: config
                .targets
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let settings = config
            .targets
            .iter()
            .find(|t| t.name == target)
            .ok_or_else(unknown)?;
        let consumer = streams
            .consumers
            .iter()
            .find(|c| c.name == settings.consumer)
            .ok_or_else(unknown)?;
        let redrive = route.redrive_subject(target);
        Ok(Scope {
            stream: config.stream.clone(),
            subjects: consumer
                .filter_subjects
                .iter()
                .filter(|s| **s != redrive)
                .cloned()
                .collect(),
            filter: settings.filter.clone(),
            rate_limit: settings.policy.rate_limit.clone(),
            target: target.to_string(),
            route,
        })
    }
}
