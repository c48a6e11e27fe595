//! One route target: what its dispatcher workers run (`TargetConfig`) and the
//! JetStream consumer they pull from. Each check names the target at fault.

use std::path::Path;

use fanout_config::jetstream::ConsumerPlan;
use fanout_config::names::{RouteKey, subject_pattern_within};
use fanout_config::policy::defaults;
use fanout_config::route::{Filter, Ordering, OrderingKey, TargetConfig};
use fanout_config::{DeliveryPolicy, Duration};

use super::RenderError;
use super::credentials::credentials;
use super::first_overlap;
use crate::expressions;
use crate::route::{OrderingSpec, RouteTargetSpec};
use crate::settings;
use crate::target::ApiTarget;

/// Slack added to a target's timeout for the consumer's ack wait, covering the time
/// between fetching an event and starting its request, and the dead-letter publish.
/// Longer waits (circuit open, rate limit) send progress acks, so this stays short:
/// it is also how long an event held by a crashed dispatcher waits for redelivery.
const ACK_WAIT_SLACK: Duration = Duration::from_secs(5);

/// Added to an ordered target's ack wait for how long its consumer keeps the pin of
/// a dispatcher that stopped pulling: the dispatcher renews its pull every few
/// seconds (a pull expires after 5s), and by the time the pin moves, every event
/// the old dispatcher held must be due for redelivery (see the dispatcher's
/// `ordering` module).
const TAKEOVER_SLACK: Duration = Duration::from_secs(15);

/// Renders target `t` of the route `key`, whose stream takes `route_subjects`.
/// Checked in this order (the first problem is the one reported): the ApiTarget
/// exists, its policy with the route's overrides resolves, the CEL expressions
/// compile, the subject filters are disjoint and within the route, the ordering works.
pub(super) fn render<'a>(
    key: &RouteKey,
    t: &RouteTargetSpec,
    api_target: &impl Fn(&str) -> Option<&'a ApiTarget>,
    route_subjects: &[String],
    secrets_dir: &Path,
) -> Result<(TargetConfig, ConsumerPlan), RenderError> {
    let referenced =
        api_target(&t.api_target_ref.name).ok_or_else(|| RenderError::MissingApiTarget {
            target: t.name.clone(),
            api_target: t.api_target_ref.name.clone(),
        })?;
    let policy: DeliveryPolicy = settings::resolve(&referenced.spec, t.overrides.as_ref())
        .map_err(|source| RenderError::InvalidPolicy {
            target: t.name.clone(),
            api_target: t.api_target_ref.name.clone(),
            source,
        })?;
    let auth_header = referenced
        .spec
        .auth
        .as_ref()
        .and_then(|a| a.header.as_ref());
    let checked =
        expressions::check(t, auth_header.map(|h| h.name.as_str())).map_err(|source| {
            RenderError::InvalidExpression {
                target: t.name.clone(),
                source,
            }
        })?;
    let filter = t.filter.clone().unwrap_or_default();
    check_filter_subjects(&t.name, &filter.subjects, route_subjects)?;
    let ack_wait = ack_wait(&policy);
    let ordering = t
        .ordering
        .as_ref()
        .map(|o| ordering(o, ack_wait))
        .transpose()
        .map_err(|problem| RenderError::InvalidOrdering {
            target: t.name.clone(),
            problem,
        })?;

    let consumer = ConsumerPlan {
        name: key.consumer(&t.name),
        filter_subjects: consumer_subjects(key, &t.name, &filter.subjects, route_subjects),
        ack_wait,
        // Events waiting behind the head of their key are in hand too.
        max_ack_pending: i64::from(policy.max_in_flight)
            + ordering.as_ref().map_or(0, |o| i64::from(o.max_waiting)),
        pinned: ordering.as_ref().map(|o| o.takeover_after),
    };
    let config = TargetConfig {
        name: t.name.clone(),
        consumer: key.consumer(&t.name),
        dead_letter_subject: key.dead_letter_subject(&t.name),
        filter: Filter {
            subjects: filter.subjects,
            headers: filter.headers,
            cel: checked.filter,
        },
        transform: checked.transform,
        credentials: credentials(referenced.spec.auth.as_ref(), secrets_dir),
        policy,
        ordering,
    };
    Ok((config, consumer))
}

/// A target's subject filters must not contain one another (JetStream refuses such
/// a consumer) and must each lie within the route's subjects (or match nothing).
fn check_filter_subjects(
    target: &str,
    subjects: &[String],
    route_subjects: &[String],
) -> Result<(), RenderError> {
    if let Some((first, second)) = first_overlap(subjects, subject_pattern_within) {
        return Err(RenderError::OverlappingFilters {
            target: target.to_string(),
            first,
            second,
        });
    }
    for subject in subjects {
        if !route_subjects
            .iter()
            .any(|r| subject_pattern_within(subject, r))
        {
            return Err(RenderError::FilterOutsideRoute {
                target: target.to_string(),
                subject: subject.clone(),
                route_subjects: route_subjects.to_vec(),
            });
        }
    }
    Ok(())
}

/// The consumer's filter subjects. Subject filters run in JetStream (the consumer
/// never sees other events); header filters run in the dispatcher. The redrive
/// subject is always added, so each consumer sees its own redrives and never another
/// target's.
fn consumer_subjects(
    key: &RouteKey,
    target: &str,
    filter: &[String],
    route_subjects: &[String],
) -> Vec<String> {
    let mut subjects = if filter.is_empty() {
        route_subjects.to_vec()
    } else {
        filter.to_vec()
    };
    subjects.push(key.redrive_subject(target));
    subjects
}

/// The consumer's ack wait: the target's timeout plus [`ACK_WAIT_SLACK`], at most
/// what JetStream can read (only a timeout of centuries comes near).
fn ack_wait(policy: &DeliveryPolicy) -> Duration {
    Duration::from(policy.timeout.as_std() + ACK_WAIT_SLACK.as_std()).min(Duration::MAX)
}

/// The effective ordering of a route target whose consumer's ack wait is `ack_wait`;
/// the problem, when the spec (which may not have passed an apiserver) cannot work.
pub(super) fn ordering(spec: &OrderingSpec, ack_wait: Duration) -> Result<Ordering, String> {
    let key = match (
        &spec.key.header,
        spec.key.partition_key.unwrap_or(false),
        &spec.key.cel,
    ) {
        (Some(header), false, None) => {
            let lower = header.to_ascii_lowercase();
            let token = !header.is_empty()
                && header.len() <= 128
                && header
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$%&*+.^_|~-".contains(c));
            if !token
                || ["authorization", "proxy-authorization", "cookie"].contains(&lower.as_str())
            {
                return Err(format!("key.header: {}", crate::rules::ORDERING_KEY_HEADER));
            }
            OrderingKey::Header(header.clone())
        }
        (None, true, None) => OrderingKey::PartitionKey,
        // Compiled with the target's other expressions (`expressions::check`).
        (None, false, Some(cel)) => OrderingKey::Cel(cel.clone()),
        _ => return Err(format!("key: {}", crate::rules::ORDERING_KEY_ONE_SOURCE)),
    };
    let max_waiting = spec.max_waiting.unwrap_or(defaults::ORDERING_MAX_WAITING);
    if max_waiting == 0 {
        return Err("maxWaiting: must be at least 1".into());
    }
    Ok(Ordering {
        key,
        after_dead_letter: spec.after_dead_letter.unwrap_or_default(),
        max_waiting,
        takeover_after: Duration::from(ack_wait.as_std() + TAKEOVER_SLACK.as_std())
            .min(Duration::MAX),
    })
}
