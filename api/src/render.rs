//! Renders a `FanOutRoute` and the `ApiTarget`s it references into what runs it:
//! the dispatcher configuration and the JetStream objects. Pure: no client, no I/O,
//! so the operator and `fanout standalone` share it and tests need nothing running.
//!
//! [`render`] runs these steps, each failing with a [`RenderError`] that names the
//! part of the spec at fault: the route's identity and subjects; the stream windows
//! and history limits (`settings`); each target ([`target`]: policy, expressions,
//! filters, ordering, credentials from [`credentials`]); the streams ([`streams`]);
//! the gateway's entry ([`gateway_route`]); and the dispatcher configuration.

mod credentials;
mod streams;
mod target;

use std::path::{Path, PathBuf};

use fanout_config::expiry::Expiry;
use fanout_config::gateway::GatewayRoute;
use fanout_config::history::HistoryConfig;
use fanout_config::jetstream::RouteStreams;
use fanout_config::names::{RouteKey, subject_patterns_collide};
use fanout_config::policy::defaults;
use fanout_config::route::{RouteConfig, TargetConfig};

use crate::expressions::{self, ExpressionError};
use crate::policy::SecretKeyRef;
use crate::route::{FanOutRoute, FanOutRouteSpec, SourceSpec};
use crate::settings::{self, SettingsError};
use crate::target::ApiTarget;

pub use credentials::secret_keys;
// Named by the tests below, which predate the split into steps.
#[cfg(test)]
use {crate::route::OrderingSpec, fanout_config::route::OrderingKey};

/// Everything a route turns into.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub config: RouteConfig,
    pub streams: RouteStreams,
    pub gateway: GatewayRoute,
}

/// Why a route cannot be rendered; each names the part of the spec at fault.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("metadata: the route has no {0}")]
    MissingMetadata(&'static str),
    #[error("targets[{target}].apiTargetRef: ApiTarget {api_target:?} does not exist")]
    MissingApiTarget { target: String, api_target: String },
    #[error("targets[{target}]: ApiTarget {api_target:?}: {source}")]
    InvalidPolicy {
        target: String,
        api_target: String,
        #[source]
        source: SettingsError,
    },
    #[error(
        "targets[{target}].filter.subjects: {subject:?} is not within the route's subjects {route_subjects:?}"
    )]
    FilterOutsideRoute {
        target: String,
        subject: String,
        route_subjects: Vec<String>,
    },
    /// JetStream refuses a stream whose subjects could match the same event. The CRD
    /// refuses repeats only: finding overlaps would cost its CEL rules too much.
    #[error(
        "source.subjects: {first:?} and {second:?} overlap; JetStream refuses a stream whose subjects overlap"
    )]
    OverlappingSubjects { first: String, second: String },
    /// JetStream refuses a consumer one of whose filter subjects contains another.
    #[error(
        "targets[{target}].filter.subjects: {first:?} and {second:?} overlap; JetStream refuses a consumer whose filter subjects overlap"
    )]
    OverlappingFilters {
        target: String,
        first: String,
        second: String,
    },
    /// A CEL filter or transform that does not compile, or a computed header the
    /// dispatcher may not set.
    #[error("targets[{target}].{source}")]
    InvalidExpression {
        target: String,
        #[source]
        source: ExpressionError,
    },
    /// A retention or duplicate window JetStream would refuse.
    #[error(transparent)]
    InvalidStream(#[from] SettingsError),
    #[error("targets[{target}].ordering: {problem}")]
    InvalidOrdering { target: String, problem: String },
}
/// Renders `route`. `api_target` looks up ApiTargets of the route's namespace by name;
/// `secrets_dir` is where Secret keys are readable as `<secret>/<key>` files (a volume
/// in a pod, a private directory in standalone mode).
pub fn render<'a>(
    route: &FanOutRoute,
    api_target: impl Fn(&str) -> Option<&'a ApiTarget>,
    secrets_dir: &Path,
) -> Result<Rendered, RenderError> {
    let (namespace, name) = identity(route)?;
    let key = RouteKey::new(namespace, name);
    let spec = &route.spec;
    let source = spec.source.clone().unwrap_or_default();
    let route_subjects = route_subjects(&key, &source)?;
    let windows = settings::resolve_streams(spec.source.as_ref(), spec.dead_letter.as_ref())?;
    let history = settings::resolve_history(spec.history.as_ref())?;

    let mut targets = Vec::with_capacity(spec.targets.len());
    let mut consumers = Vec::with_capacity(spec.targets.len());
    for t in &spec.targets {
        let (target, consumer) =
            target::render(&key, t, &api_target, &route_subjects, secrets_dir)?;
        targets.push(target);
        consumers.push(consumer);
    }

    let streams = streams::plan(
        &key,
        spec,
        &source,
        route_subjects,
        windows,
        history,
        consumers,
    );
    let gateway = gateway_route(route, |_, t| secrets_dir.join(&t.name).join(&t.key))?;
    Ok(Rendered {
        gateway,
        config: route_config(namespace, name, spec, &streams, targets),
        streams,
    })
}

/// The subjects the route's stream takes: the gateway's ingest subjects first, then
/// whatever else the user publishes to. (The user's cannot collide with Fanout's
/// own, which are under `fanout.`; JetStream refuses a stream whose subjects could
/// match the same event.)
fn route_subjects(key: &RouteKey, source: &SourceSpec) -> Result<Vec<String>, RenderError> {
    if let Some((first, second)) = first_overlap(&source.subjects, subject_patterns_collide) {
        return Err(RenderError::OverlappingSubjects { first, second });
    }
    let mut subjects = vec![key.ingest_subjects()];
    subjects.extend(source.subjects.iter().cloned());
    Ok(subjects)
}

/// What the dispatcher pods of the route run.
fn route_config(
    namespace: &str,
    name: &str,
    spec: &FanOutRouteSpec,
    streams: &RouteStreams,
    targets: Vec<TargetConfig>,
) -> RouteConfig {
    RouteConfig {
        namespace: namespace.to_string(),
        name: name.to_string(),
        stream: streams.stream.name.clone(),
        dead_letter_stream: streams.dead_letter.as_ref().map(|s| s.name.clone()),
        replicas: u32::try_from(dispatcher_replicas(spec)).unwrap_or(0).max(1),
        expiry: Expiry::new(streams.stream.max_age),
        history: streams.history.as_ref().map(|h| HistoryConfig {
            stream: h.name.clone(),
        }),
        targets,
    }
}

/// The replicas a pod assumes share a rate limit until it has counted those that
/// run: with autoscaling the most there can be, so that a route never starts above a
/// target's limit.
fn dispatcher_replicas(spec: &FanOutRouteSpec) -> i32 {
    spec.dispatcher
        .as_ref()
        .and_then(|d| {
            d.autoscaling
                .as_ref()
                .map(|a| a.max_replicas)
                .or(d.replicas)
        })
        .unwrap_or(defaults::DISPATCHER_REPLICAS)
}

/// What the gateway needs to accept events for `route`. `token_file` says where the
/// gateway reads each bearer token (by its index in `spec.gateway.bearerTokens`): the
/// dispatcher's Secret layout in standalone mode, a copy in the gateway's own Secret
/// when the operator runs it.
pub fn gateway_route(
    route: &FanOutRoute,
    token_file: impl Fn(usize, &SecretKeyRef) -> PathBuf,
) -> Result<GatewayRoute, RenderError> {
    let (namespace, name) = identity(route)?;
    let key = RouteKey::new(namespace, name);
    let gateway = route.spec.gateway.clone().unwrap_or_default();
    Ok(GatewayRoute {
        namespace: namespace.to_string(),
        name: name.to_string(),
        stream: key.stream(),
        ingest_prefix: key.ingest_prefix(),
        token_files: gateway
            .bearer_tokens
            .iter()
            .enumerate()
            .map(|(i, t)| token_file(i, t))
            .collect(),
        allow_unauthenticated: gateway.allow_unauthenticated.unwrap_or(false),
        tokens_pending: false,
        forward_headers: filter_headers(route),
    })
}

/// Every header name a target filter of `route` matches on or takes its ordering
/// key from, and every one its CEL filters and transforms spell out
/// (`event.headers["x-tenant"]`), once, in order.
fn filter_headers(route: &FanOutRoute) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let filters = route.spec.targets.iter().filter_map(|t| t.filter.as_ref());
    let matched = filters.flat_map(|f| f.headers.keys().cloned());
    let keys = route
        .spec
        .targets
        .iter()
        .filter_map(|t| t.ordering.as_ref()?.key.header.clone());
    // An expression that does not compile names nothing: rendering reports it.
    let named = route
        .spec
        .targets
        .iter()
        .filter_map(|t| expressions::check(t, None).ok())
        .flat_map(|checked| checked.headers);
    for name in matched.chain(keys).chain(named) {
        // Header names are case-insensitive; filters may spell one two ways.
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            names.push(name);
        }
    }
    names
}

/// The route's namespace and name: every NATS name derives from them.
fn identity(route: &FanOutRoute) -> Result<(&str, &str), RenderError> {
    let namespace = route.metadata.namespace.as_deref();
    let name = route.metadata.name.as_deref();
    Ok((
        namespace.ok_or(RenderError::MissingMetadata("namespace"))?,
        name.ok_or(RenderError::MissingMetadata("name"))?,
    ))
}

/// The first pair (in list order) of entries at different positions for which
/// `overlap` holds either way round; a repeated entry overlaps itself.
fn first_overlap(
    subjects: &[String],
    overlap: impl Fn(&str, &str) -> bool,
) -> Option<(String, String)> {
    subjects.iter().enumerate().find_map(|(i, a)| {
        subjects[i + 1..]
            .iter()
            .find(|b| overlap(a, b) || overlap(b, a))
            .map(|b| (a.clone(), b.clone()))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::route::{
        AfterDeadLetter, ApiTargetRef, DeadLetterSpec, FanOutRouteSpec, FilterSpec,
        HistoryRetentionSpec, HistorySpec, OrderingKeySpec, RetentionSpec, RouteTargetSpec,
        SourceSpec,
    };
    use crate::target::ApiTargetSpec;

    fn api_target(name: &str, url: &str) -> ApiTarget {
        let mut t = ApiTarget::new(
            name,
            ApiTargetSpec {
                url: url.into(),
                method: None,
                headers: BTreeMap::new(),
                timeout: Some("5s".parse().unwrap()),
                auth: None,
                retry: None,
                circuit_breaker: None,
                rate_limit: None,
                max_in_flight: Some(32),
                concurrency: None,
            },
        );
        t.metadata.namespace = Some("shop".into());
        t
    }

    fn target(name: &str, api_target: &str) -> RouteTargetSpec {
        RouteTargetSpec {
            name: name.into(),
            api_target_ref: ApiTargetRef {
                name: api_target.into(),
            },
            filter: None,
            transform: None,
            overrides: None,
            ordering: None,
        }
    }

    fn route(targets: Vec<RouteTargetSpec>) -> FanOutRoute {
        let mut r = FanOutRoute::new(
            "orders",
            FanOutRouteSpec {
                source: None,
                targets,
                dead_letter: None,
                dispatcher: None,
                gateway: None,
                history: None,
            },
        );
        r.metadata.namespace = Some("shop".into());
        r
    }

    fn render_with(route: &FanOutRoute, targets: &[ApiTarget]) -> Result<Rendered, RenderError> {
        render(
            route,
            |name| {
                targets
                    .iter()
                    .find(|t| t.metadata.name.as_deref() == Some(name))
            },
            Path::new("/var/run/fanout/secrets"),
        )
    }

    #[test]
    fn each_consumer_sees_the_route_subjects_and_only_its_own_redrives() {
        let r = route(vec![target("email", "mailer"), target("crm", "crm")]);
        let out = render_with(
            &r,
            &[
                api_target("mailer", "http://m"),
                api_target("crm", "http://c"),
            ],
        )
        .unwrap();
        assert_eq!(
            out.streams.consumers[0].filter_subjects,
            [
                "fanout.in.shop.orders.>",
                "fanout.redrive.shop.orders.email"
            ]
        );
        assert_eq!(
            out.streams.consumers[1].filter_subjects,
            ["fanout.in.shop.orders.>", "fanout.redrive.shop.orders.crm"]
        );
        assert_eq!(
            out.streams.stream.subjects,
            ["fanout.in.shop.orders.>", "fanout.redrive.shop.orders.*"]
        );
    }

    #[test]
    fn consumers_take_ack_wait_and_max_ack_pending_from_the_policy() {
        let r = route(vec![target("email", "mailer")]);
        let out = render_with(&r, &[api_target("mailer", "http://m")]).unwrap();
        let consumer = &out.streams.consumers[0];
        assert_eq!(
            consumer.ack_wait.to_string(),
            "10s",
            "5s timeout + 5s slack"
        );
        assert_eq!(consumer.max_ack_pending, 32);
        assert_eq!(
            out.config.targets[0].dead_letter_subject,
            "fanout.dlq.shop.orders.email"
        );
    }

    #[test]
    fn an_ordered_target_pins_its_consumer_and_holds_its_waiting_events_too() {
        let mut t = target("email", "mailer");
        t.ordering = Some(OrderingSpec {
            key: OrderingKeySpec {
                header: Some("X-Customer".into()),
                ..Default::default()
            },
            after_dead_letter: Some(AfterDeadLetter::Block),
            max_waiting: Some(500),
        });
        let out = render_with(&route(vec![t]), &[api_target("mailer", "http://m")]).unwrap();
        let consumer = &out.streams.consumers[0];
        assert_eq!(consumer.max_ack_pending, 32 + 500);
        assert_eq!(
            consumer.pinned.map(|d| d.to_string()).as_deref(),
            Some("25s"),
            "the 10s ack wait + 15s"
        );
        let ordering = out.config.targets[0].ordering.as_ref().unwrap();
        assert_eq!(ordering.key, OrderingKey::Header("X-Customer".into()));
        assert_eq!(ordering.after_dead_letter, AfterDeadLetter::Block);
        assert_eq!(
            out.gateway.forward_headers,
            ["X-Customer"],
            "the gateway stores the key's header"
        );
    }

    #[test]
    fn an_ordering_key_without_exactly_one_source_is_refused_by_name() {
        for key in [
            OrderingKeySpec::default(),
            OrderingKeySpec {
                header: Some("X-Customer".into()),
                partition_key: Some(true),
                cel: None,
            },
            OrderingKeySpec {
                header: Some("X-Customer".into()),
                partition_key: None,
                cel: Some("event.id".into()),
            },
            OrderingKeySpec {
                header: Some("Authorization".into()),
                ..Default::default()
            },
        ] {
            let mut t = target("email", "mailer");
            t.ordering = Some(OrderingSpec {
                key,
                after_dead_letter: None,
                max_waiting: None,
            });
            let err = render_with(&route(vec![t]), &[api_target("mailer", "http://m")])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("targets[email].ordering: key"), "{err}");
        }
    }

    #[test]
    fn subject_filters_narrow_the_consumer() {
        let mut t = target("email", "mailer");
        t.filter = Some(FilterSpec {
            subjects: vec!["shop.orders.placed".into()],
            headers: BTreeMap::new(),
            cel: None,
        });
        let mut r = route(vec![t]);
        r.spec.source = Some(SourceSpec {
            subjects: vec!["shop.orders.>".into()],
            ..Default::default()
        });
        let out = render_with(&r, &[api_target("mailer", "http://m")]).unwrap();
        assert_eq!(
            out.streams.consumers[0].filter_subjects,
            ["shop.orders.placed", "fanout.redrive.shop.orders.email"]
        );
    }

    #[test]
    fn a_filter_outside_the_route_subjects_is_refused_by_name() {
        let mut t = target("email", "mailer");
        t.filter = Some(FilterSpec {
            subjects: vec!["billing.>".into()],
            headers: BTreeMap::new(),
            cel: None,
        });
        let err = render_with(&route(vec![t]), &[api_target("mailer", "http://m")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("targets[email].filter.subjects: \"billing.>\""),
            "{err}"
        );
    }

    #[test]
    fn overlapping_stream_subjects_are_refused_by_name() {
        let mut r = route(vec![target("email", "mailer")]);
        r.spec.source = Some(SourceSpec {
            subjects: vec!["shop.orders.*".into(), "shop.*.placed".into()],
            ..Default::default()
        });
        let err = render_with(&r, &[api_target("mailer", "http://m")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "source.subjects: \"shop.orders.*\" and \"shop.*.placed\" overlap; JetStream refuses a stream whose subjects overlap"
        );
    }

    #[test]
    fn filter_subjects_within_one_another_are_refused_by_name() {
        let mut t = target("email", "mailer");
        t.filter = Some(FilterSpec {
            subjects: vec!["shop.orders.placed".into(), "shop.orders.>".into()],
            headers: BTreeMap::new(),
            cel: None,
        });
        let mut r = route(vec![t]);
        r.spec.source = Some(SourceSpec {
            subjects: vec!["shop.orders.>".into()],
            ..Default::default()
        });
        let err = render_with(&r, &[api_target("mailer", "http://m")]).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "targets[email].filter.subjects: \"shop.orders.placed\" and \"shop.orders.>\" overlap"
            ),
            "{err}"
        );

        // Filters that only intersect are fine for JetStream: each event matches one.
        let mut t = target("email", "mailer");
        t.filter = Some(FilterSpec {
            subjects: vec!["shop.orders.*".into(), "shop.*.placed".into()],
            headers: BTreeMap::new(),
            cel: None,
        });
        r.spec.targets = vec![t];
        r.spec.source = Some(SourceSpec {
            subjects: vec!["shop.>".into()],
            ..Default::default()
        });
        render_with(&r, &[api_target("mailer", "http://m")]).unwrap();
    }

    #[test]
    fn stream_windows_that_jetstream_refuses_are_named() {
        let mut r = route(vec![target("email", "mailer")]);
        r.spec.source = Some(SourceSpec {
            retention: Some(RetentionSpec {
                max_age: Some("1m".parse().unwrap()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = render_with(&r, &[api_target("mailer", "http://m")]).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "source.duplicateWindow: 2m (the default) is longer than source.retention.maxAge 1m"
            ),
            "{err}"
        );
    }

    #[test]
    fn the_dead_letter_stream_deduplicates_no_longer_than_it_keeps() {
        let mut r = route(vec![target("email", "mailer")]);
        r.spec.dead_letter = Some(DeadLetterSpec {
            enabled: None,
            retention: Some(RetentionSpec {
                max_age: Some("30s".parse().unwrap()),
                ..Default::default()
            }),
        });
        let out = render_with(&r, &[api_target("mailer", "http://m")]).unwrap();
        let dlq = out.streams.dead_letter.unwrap();
        assert_eq!(dlq.duplicate_window.to_string(), "30s");
        assert_eq!(out.streams.stream.duplicate_window.to_string(), "2m");
    }

    #[test]
    fn the_history_is_a_bounded_stream_of_its_own_by_default_and_can_be_turned_off() {
        let mut r = route(vec![target("email", "mailer")]);
        let targets = [api_target("mailer", "http://m")];
        let out = render_with(&r, &targets).unwrap();
        let history = out.streams.history.expect("on by default");
        assert_eq!(history.name, "fanout_shop_orders_attempts");
        assert_eq!(history.subjects, ["fanout.attempts.shop.orders.>"]);
        assert_eq!(history.max_age.to_string(), "24h");
        assert_eq!(history.max_bytes, Some(128 * 1024 * 1024));
        assert!(
            history.discard_old,
            "a full history drops its oldest records"
        );
        assert!(!out.streams.stream.discard_old, "events are never dropped");
        assert_eq!(
            out.config.history.map(|h| h.stream).as_deref(),
            Some("fanout_shop_orders_attempts")
        );

        r.spec.history = Some(HistorySpec {
            enabled: None,
            retention: Some(HistoryRetentionSpec {
                max_age: Some("1h".parse().unwrap()),
                max_bytes: Some(1 << 20),
            }),
        });
        let history = render_with(&r, &targets).unwrap().streams.history.unwrap();
        assert_eq!(history.max_age.to_string(), "1h");
        assert_eq!(history.max_bytes, Some(1 << 20));

        r.spec.history = Some(HistorySpec {
            enabled: Some(false),
            retention: None,
        });
        let out = render_with(&r, &targets).unwrap();
        assert!(out.streams.history.is_none());
        assert!(out.config.history.is_none());
    }

    #[test]
    fn a_history_too_small_names_the_field() {
        let mut r = route(vec![target("email", "mailer")]);
        r.spec.history = Some(HistorySpec {
            enabled: None,
            retention: Some(HistoryRetentionSpec {
                max_age: None,
                max_bytes: Some(1000),
            }),
        });
        let err = render_with(&r, &[api_target("mailer", "http://m")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "history.retention.maxBytes: 1000 is below the minimum of 1048576 (1 MiB)"
        );
    }

    #[test]
    fn a_missing_api_target_is_named() {
        let err = render_with(&route(vec![target("email", "mailer")]), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "targets[email].apiTargetRef: ApiTarget \"mailer\" does not exist"
        );
    }

    #[test]
    fn an_invalid_policy_names_the_target_and_field() {
        let err = render_with(
            &route(vec![target("email", "mailer")]),
            &[api_target("mailer", "ftp://m")],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "targets[email]: ApiTarget \"mailer\": url: scheme \"ftp\" is not supported; use http or https"
        );
    }

    #[test]
    fn the_gateway_refuses_anonymous_events_unless_allowed() {
        let mut r = route(vec![target("email", "mailer")]);
        let targets = [api_target("mailer", "http://m")];
        let out = render_with(&r, &targets).unwrap();
        assert!(!out.gateway.allow_unauthenticated);
        assert!(out.gateway.token_files.is_empty());
        assert_eq!(out.gateway.ingest_prefix, "fanout.in.shop.orders");
        assert_eq!(out.gateway.stream, "fanout_shop_orders");

        r.spec.gateway = Some(
            serde_json::from_value(serde_json::json!({
                "bearerTokens": [{"name": "ingest", "key": "token"}]
            }))
            .unwrap(),
        );
        let out = render_with(&r, &targets).unwrap();
        assert_eq!(
            out.gateway.token_files,
            [Path::new("/var/run/fanout/secrets/ingest/token")]
        );
    }

    #[test]
    fn dead_lettering_can_be_disabled_and_has_its_own_retention() {
        let mut r = route(vec![target("email", "mailer")]);
        let targets = [api_target("mailer", "http://m")];
        let out = render_with(&r, &targets).unwrap();
        let dlq = out.streams.dead_letter.expect("on by default");
        assert_eq!(dlq.name, "fanout_shop_orders_dlq");
        assert_eq!(dlq.subjects, ["fanout.dlq.shop.orders.*"]);
        assert_eq!(dlq.max_age.to_string(), "336h");
        assert_eq!(out.streams.stream.max_age.to_string(), "72h");

        r.spec.dead_letter = Some(DeadLetterSpec {
            enabled: Some(false),
            retention: None,
        });
        let out = render_with(&r, &targets).unwrap();
        assert!(out.streams.dead_letter.is_none());
        assert!(out.config.dead_letter_stream.is_none());
    }

    #[test]
    fn credentials_point_at_secret_files_never_values() {
        let mut mailer = api_target("mailer", "http://m");
        mailer.spec.auth = Some(
            serde_json::from_value(serde_json::json!({
                "basic": {"secretRef": {"name": "mail-creds"}, "passwordKey": "pw"},
                "signing": {"secretRef": {"name": "sig", "key": "secret"}}
            }))
            .unwrap(),
        );
        let out = render_with(&route(vec![target("email", "mailer")]), &[mailer.clone()]).unwrap();
        let creds = &out.config.targets[0].credentials;
        let basic = creds.basic.as_ref().unwrap();
        assert_eq!(
            basic.username_file,
            Path::new("/var/run/fanout/secrets/mail-creds/username")
        );
        assert_eq!(
            basic.password_file,
            Path::new("/var/run/fanout/secrets/mail-creds/pw")
        );
        assert_eq!(
            creds.signing_secret_file.as_deref(),
            Some(Path::new("/var/run/fanout/secrets/sig/secret"))
        );
        assert_eq!(
            secret_keys(mailer.spec.auth.as_ref()),
            [
                ("mail-creds".to_string(), "username".to_string()),
                ("mail-creds".to_string(), "pw".to_string()),
                ("sig".to_string(), "secret".to_string())
            ]
        );
    }

    #[test]
    fn new_auth_kinds_point_at_secret_files_with_the_documented_default_keys() {
        let mut crm = api_target("crm", "https://c");
        crm.spec.auth = Some(
            serde_json::from_value(serde_json::json!({
                "oauth2": {"tokenUrl": "https://idp/token", "secretRef": {"name": "crm-oauth"},
                           "scopes": ["a", "b"], "caBundle": {"secretRef": {"name": "idp-ca"}}},
                "header": {"name": "X-Api-Key", "secretRef": {"name": "crm-key", "key": "key"}},
                "tls": {"clientCertificate": {"secretRef": {"name": "crm-tls"}},
                        "caBundle": {"secretRef": {"name": "crm-ca"}, "key": "bundle.pem"}}
            }))
            .unwrap(),
        );
        let out = render_with(&route(vec![target("crm", "crm")]), &[crm.clone()]).unwrap();
        let creds = &out.config.targets[0].credentials;
        let dir = Path::new("/var/run/fanout/secrets");
        let oauth2 = creds.oauth2.as_ref().unwrap();
        assert_eq!(oauth2.client_id_file, dir.join("crm-oauth/client-id"));
        assert_eq!(
            oauth2.client_secret_file,
            dir.join("crm-oauth/client-secret")
        );
        assert_eq!(
            oauth2.ca_bundle_file.as_deref(),
            Some(dir.join("idp-ca/ca.crt").as_path())
        );
        assert_eq!(oauth2.scopes, ["a", "b"]);
        let header = creds.header.as_ref().unwrap();
        assert_eq!(
            (header.name.as_str(), header.value_file.as_path()),
            ("X-Api-Key", dir.join("crm-key/key").as_path())
        );
        let tls = creds.tls.as_ref().unwrap();
        let client = tls.client_certificate.as_ref().unwrap();
        assert_eq!(client.certificate_file, dir.join("crm-tls/tls.crt"));
        assert_eq!(client.private_key_file, dir.join("crm-tls/tls.key"));
        assert_eq!(
            tls.ca_bundle_file.as_deref(),
            Some(dir.join("crm-ca/bundle.pem").as_path())
        );
        assert_eq!(
            secret_keys(crm.spec.auth.as_ref()),
            [
                ("crm-oauth", "client-id"),
                ("crm-oauth", "client-secret"),
                ("idp-ca", "ca.crt"),
                ("crm-key", "key"),
                ("crm-tls", "tls.crt"),
                ("crm-tls", "tls.key"),
                ("crm-ca", "bundle.pem"),
            ]
            .map(|(s, k)| (s.to_string(), k.to_string()))
        );
    }
}
