//! A route's status, computed from what one reconcile learned: whether the route
//! rendered, whether JetStream was provisioned, how the dispatcher Deployment is
//! doing, and the per-target observation (consumer info plus the dispatchers' health
//! snapshots). Pure, so every rule here is unit-tested.

use std::time::{Duration, SystemTime};

use fanout_api::FanOutRouteStatus;
use fanout_api::route::{RecreatedStatus, StreamStatus, TargetStatus};
use fanout_api::status::CircuitState;
use fanout_api::status::Condition;
use fanout_config::expiry::Expiry;
use fanout_config::health::Circuit;
use fanout_provision::Applied;
use fanout_provision::observe::{RouteObservation, StreamCounts, is_healthy};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::conditions::{
    BACKLOG_WITHIN_RETENTION, DISPATCHER_AVAILABLE, Draft, INGEST_READY, READY, STREAM_READY,
    State, TARGETS_HEALTHY, carry_over, stamp,
};

/// Something wrong, as a condition reason and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
    pub message: String,
}

impl Problem {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// What one reconcile of a route found.
pub struct Findings<'a> {
    pub generation: i64,
    pub previous: Option<&'a FanOutRouteStatus>,
    /// The route rendered and every referenced Secret key exists.
    pub config: Result<(), Problem>,
    /// JetStream provisioning; `None` when it was not attempted (the route did not
    /// render), so the previous condition stands.
    pub stream: Option<Result<(), Problem>>,
    /// The dispatcher Deployment as the API server returned it, if it exists.
    pub deployment: Option<&'a Deployment>,
    /// Why the dispatcher objects were not applied (an object of their name that
    /// is not the route's); overrides what `deployment` says.
    pub dispatcher_problem: Option<Problem>,
    /// `None` when the route could not be observed (stream missing, NATS down).
    pub observation: Option<&'a RouteObservation>,
    /// When the stream removes events, from the rendering; `None` when it keeps them
    /// for ever or the route did not render.
    pub expiry: Option<Expiry>,
    /// Streams or consumers this reconcile found missing and created again (see
    /// [`recreated`]).
    pub recreated: Option<RecreatedStatus>,
    /// How the gateway takes the route's producers, or the ingest token Secret key
    /// that is missing; `None` when not looked at (the route did not render).
    pub ingest: Option<Result<Ingest, Problem>>,
}

/// How the gateway takes a route's producers, when nothing is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingest {
    /// With one of this many bearer tokens, each from a Secret key that exists.
    Tokens(usize),
    /// Without a token (`gateway.allowUnauthenticated`).
    Unauthenticated,
    /// Not at all (no `gateway.bearerTokens`): producers publish to NATS.
    NatsOnly,
}

pub fn compute(f: &Findings<'_>, now: &Time) -> FanOutRouteStatus {
    let previous = f.previous.cloned().unwrap_or_default();

    let stream = match &f.stream {
        Some(Ok(())) => Draft::new(
            STREAM_READY,
            true,
            "Provisioned",
            "stream, dead-letter stream and consumers match the spec",
        ),
        Some(Err(p)) => Draft::new(STREAM_READY, false, p.reason.clone(), p.message.clone()),
        None => carry_over(&previous.conditions, STREAM_READY).unwrap_or_else(|| {
            Draft::new(
                STREAM_READY,
                State::Unknown,
                "NotProvisioned",
                "waiting for the route to render",
            )
        }),
    };
    let dispatcher = match &f.dispatcher_problem {
        Some(p) => Draft::new(
            DISPATCHER_AVAILABLE,
            false,
            p.reason.clone(),
            p.message.clone(),
        ),
        None => dispatcher_condition(f.deployment),
    };
    let targets = targets_condition(f.observation, &previous.conditions);
    let retention = retention_condition(f, &previous.conditions, now);
    let ingest = ingest_condition(f.ingest.as_ref(), &previous.conditions);
    let ready = match (&f.config, stream.is_true(), dispatcher.is_true()) {
        (Err(p), _, _) => Draft::new(READY, false, p.reason.clone(), p.message.clone()),
        (Ok(()), false, _) => {
            Draft::new(READY, false, stream.reason.clone(), stream.message.clone())
        }
        (Ok(()), true, false) => Draft::new(
            READY,
            false,
            dispatcher.reason.clone(),
            dispatcher.message.clone(),
        ),
        (Ok(()), true, true) => Draft::new(READY, true, "Ready", "events are being delivered"),
    };
    let drafts = [ready, stream, dispatcher, targets, retention, ingest];

    let mut status = FanOutRouteStatus {
        observed_generation: Some(f.generation),
        conditions: stamp(&previous.conditions, &drafts, f.generation, now),
        dispatchers: f.deployment.map(|d| {
            let (available, desired) = replicas(d);
            format!("{available}/{desired}")
        }),
        // The last one stays in status until there is another.
        recreated: f.recreated.clone().or(previous.recreated.clone()),
        ..FanOutRouteStatus::default()
    };
    match f.observation {
        Some(o) => {
            status.stream = Some(stream_status(&o.stream));
            status.dead_letter_stream = o.dead_letter.as_ref().map(stream_status);
            status.targets = o.targets.iter().map(target_status).collect();
            let healthy = o.targets.iter().filter(|t| is_healthy(t)).count();
            status.healthy_targets = Some(format!("{healthy}/{}", o.targets.len()));
            status.pending = Some(o.targets.iter().map(|t| t.pending).sum());
            status.delivered_summary = Some(
                o.targets
                    .iter()
                    .map(|t| format!("{}={}", t.name, t.delivered))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            // The dead-letter stream survives dispatcher restarts; the pods' counters
            // do not.
            status.dead_lettered = Some(match &o.dead_letter {
                Some(d) => d.messages,
                None => o.targets.iter().map(|t| t.dead_lettered).sum(),
            });
            status.oldest_undelivered_time = o
                .targets
                .iter()
                .filter_map(|t| t.oldest_unsettled)
                .min()
                .and_then(time);
        }
        None => {
            // Keep the last numbers rather than blanking them while NATS is away.
            status.stream = previous.stream;
            status.dead_letter_stream = previous.dead_letter_stream;
            status.targets = previous.targets;
            status.healthy_targets = previous.healthy_targets;
            status.pending = previous.pending;
            status.delivered_summary = previous.delivered_summary;
            status.dead_lettered = previous.dead_lettered;
            status.oldest_undelivered_time = previous.oldest_undelivered_time;
        }
    }
    status
}

/// (available, desired) pods of a Deployment.
fn replicas(d: &Deployment) -> (i32, i32) {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let available = d
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    (available, desired)
}

fn dispatcher_condition(deployment: Option<&Deployment>) -> Draft {
    let Some(d) = deployment else {
        return Draft::new(
            DISPATCHER_AVAILABLE,
            false,
            "NotCreated",
            "the dispatcher Deployment does not exist yet",
        );
    };
    let (available, desired) = replicas(d);
    let status = d.status.clone().unwrap_or_default();
    if desired == 0 {
        return Draft::new(
            DISPATCHER_AVAILABLE,
            false,
            "ScaledToZero",
            "spec.dispatcher.replicas is 0: nothing delivers",
        );
    }
    if available > 0 {
        return Draft::new(
            DISPATCHER_AVAILABLE,
            true,
            "Available",
            format!("{available}/{desired} dispatcher pods available"),
        );
    }
    // The Deployment controller's own words say why (quota, image, scheduling).
    let detail = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Available" || c.type_ == "Progressing" && c.status == "False")
        .and_then(|c| c.message)
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    Draft::new(
        DISPATCHER_AVAILABLE,
        false,
        "NoPodAvailable",
        format!("0/{desired} dispatcher pods available{detail}"),
    )
}

fn targets_condition(
    observation: Option<&RouteObservation>,
    previous: &[fanout_api::status::Condition],
) -> Draft {
    let Some(o) = observation else {
        return carry_over(previous, TARGETS_HEALTHY).unwrap_or_else(|| {
            Draft::new(
                TARGETS_HEALTHY,
                State::Unknown,
                "NotObserved",
                "the route's stream could not be read",
            )
        });
    };
    let unhealthy: Vec<String> = o
        .targets
        .iter()
        .filter(|t| !is_healthy(t))
        .map(|t| {
            if !t.consumer_found {
                format!("{}: no consumer", t.name)
            } else {
                let error = t
                    .last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                format!("{}: circuit {}{error}", t.name, circuit(t.circuit))
            }
        })
        .collect();
    if !unhealthy.is_empty() {
        return Draft::new(
            TARGETS_HEALTHY,
            false,
            "TargetsFailing",
            unhealthy.join("; "),
        );
    }
    if o.targets.iter().all(|t| t.reporting_pods == 0) {
        return Draft::new(
            TARGETS_HEALTHY,
            State::Unknown,
            "NoHealthReports",
            "no dispatcher has reported target health yet",
        );
    }
    Draft::new(
        TARGETS_HEALTHY,
        true,
        "CircuitsClosed",
        "every target's circuit is closed",
    )
}

/// A missing ingest token does not make the route un-`Ready`: events published to
/// NATS are still delivered, and the route's other tokens still work.
fn ingest_condition(ingest: Option<&Result<Ingest, Problem>>, previous: &[Condition]) -> Draft {
    match ingest {
        Some(Ok(Ingest::Tokens(n))) => Draft::new(
            INGEST_READY,
            true,
            "TokensFound",
            format!("the Secret key of each of the route's {n} ingest token(s) exists"),
        ),
        Some(Ok(Ingest::Unauthenticated)) => Draft::new(
            INGEST_READY,
            true,
            "Unauthenticated",
            "the gateway accepts requests without a token (gateway.allowUnauthenticated)",
        ),
        Some(Ok(Ingest::NatsOnly)) => Draft::new(
            INGEST_READY,
            true,
            "NoTokens",
            "no gateway.bearerTokens: the gateway refuses this route's requests (403); producers publish to NATS",
        ),
        Some(Err(p)) => Draft::new(
            INGEST_READY,
            false,
            p.reason.clone(),
            format!(
                "{}: the gateway answers a token it does not have with 503 route-not-ready until it exists",
                p.message
            ),
        ),
        None => carry_over(previous, INGEST_READY).unwrap_or_else(|| {
            Draft::new(
                INGEST_READY,
                State::Unknown,
                "NotChecked",
                "waiting for the route to render",
            )
        }),
    }
}

/// Whether any target's oldest undelivered event has reached the age at which it is
/// reported (half of maxAge), long before it would be dead-lettered as expired.
fn retention_condition(f: &Findings<'_>, previous: &[Condition], now: &Time) -> Draft {
    let Some(o) = f.observation else {
        return carry_over(previous, BACKLOG_WITHIN_RETENTION).unwrap_or_else(|| {
            Draft::new(
                BACKLOG_WITHIN_RETENTION,
                State::Unknown,
                "NotObserved",
                "the route's stream could not be read",
            )
        });
    };
    let Some(expiry) = f.expiry else {
        if f.config.is_err() {
            // Not rendered: the stream's maxAge is not known this time.
            if let Some(last) = carry_over(previous, BACKLOG_WITHIN_RETENTION) {
                return last;
            }
        }
        return Draft::new(
            BACKLOG_WITHIN_RETENTION,
            true,
            "NoMaxAge",
            "the stream keeps events until they are delivered (no retention.maxAge)",
        );
    };
    let now = SystemTime::from(now.0);
    let aged: Vec<String> = o
        .targets
        .iter()
        .filter_map(|t| {
            let age = now.duration_since(t.oldest_unsettled?).ok()?;
            (age >= expiry.warn_after()).then(|| {
                format!(
                    "target {}'s oldest undelivered event is {} old",
                    t.name,
                    whole_seconds(age)
                )
            })
        })
        .collect();
    let rule = format!(
        "the stream keeps events {} (spec.source.retention.maxAge); an event not delivered to a target within {} is dead-lettered for it with reason expired",
        expiry.max_age,
        whole_seconds(expiry.dead_letter_after())
    );
    if aged.is_empty() {
        Draft::new(
            BACKLOG_WITHIN_RETENTION,
            true,
            "WithinRetention",
            format!(
                "no target's oldest undelivered event is older than {}; {rule}",
                whole_seconds(expiry.warn_after())
            ),
        )
    } else {
        Draft::new(
            BACKLOG_WITHIN_RETENTION,
            false,
            "EventsNearExpiry",
            format!("{}; {rule}", aged.join("; ")),
        )
    }
}

/// A span for people, to the second: `41s`, `71h`.
fn whole_seconds(d: Duration) -> fanout_config::Duration {
    fanout_config::Duration::from(Duration::from_secs(d.as_secs()))
}

fn time(t: SystemTime) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::try_from(t).ok().map(Time)
}

/// What was missing and created again, when provisioning had to create streams or
/// consumers of a route that existed: one the previous status showed (a new route
/// creates everything, and a new target its consumer). `consumer_target` names the
/// target of a consumer. The route's stream comes back empty: the events it held at
/// the last status are gone, and those some target had not received are lost.
pub fn recreated(
    previous: Option<&FanOutRouteStatus>,
    applied: &Applied,
    consumer_target: impl Fn(&str) -> Option<String>,
    now: &Time,
) -> Option<RecreatedStatus> {
    let previous = previous?;
    let stream = previous.stream.as_ref()?;
    let mut objects = Vec::new();
    let mut notes = Vec::new();
    let mut lost_events = None;
    for name in &applied.created_streams {
        // A stream the last status did not show is new (dead letters turned on).
        let Some(was) = [Some(stream), previous.dead_letter_stream.as_ref()]
            .into_iter()
            .flatten()
            .find(|s| &s.name == name)
        else {
            continue;
        };
        objects.push(format!("stream {name}"));
        if name == &stream.name {
            let undelivered = previous
                .targets
                .iter()
                .map(|t| t.pending + t.in_flight)
                .max()
                .unwrap_or(0);
            lost_events = Some(was.messages);
            notes.push(format!(
                "the {} events stream {name} held at the last status are gone, {undelivered} of them not yet delivered to every target",
                was.messages
            ));
        } else {
            notes.push(format!(
                "the {} dead letters stream {name} held are gone",
                was.messages
            ));
        }
    }
    let known: Vec<&str> = previous.targets.iter().map(|t| t.name.as_str()).collect();
    for name in &applied.created_consumers {
        let Some(target) = consumer_target(name).filter(|t| known.contains(&t.as_str())) else {
            continue;
        };
        objects.push(format!("consumer {name}"));
        notes.push(format!(
            "target {target} gets every event still in the stream again (it can deduplicate on Idempotency-Key)"
        ));
    }
    if objects.is_empty() {
        return None;
    }
    Some(RecreatedStatus {
        time: now.clone(),
        message: format!(
            "{} went missing (deleted behind Fanout's back, or lost with a NATS node's storage) and {} created again: {}",
            objects.join(", "),
            if objects.len() == 1 { "was" } else { "were" },
            notes.join("; ")
        ),
        objects,
        lost_events,
    })
}

fn stream_status(s: &StreamCounts) -> StreamStatus {
    StreamStatus {
        name: s.name.clone(),
        messages: s.messages,
        bytes: s.bytes,
    }
}

pub fn circuit(c: Circuit) -> CircuitState {
    match c {
        Circuit::Closed => CircuitState::Closed,
        Circuit::HalfOpen => CircuitState::HalfOpen,
        Circuit::Open => CircuitState::Open,
    }
}

fn target_status(t: &fanout_provision::observe::TargetObservation) -> TargetStatus {
    TargetStatus {
        name: t.name.clone(),
        circuit: circuit(t.circuit),
        pending: t.pending,
        in_flight: t.in_flight,
        delivered: t.delivered,
        failed: t.failed,
        dead_lettered: t.dead_lettered,
        last_success_time: t
            .last_success_time
            .as_deref()
            .and_then(|s| s.parse().ok())
            .map(Time),
        last_error: t.last_error.clone(),
        oldest_undelivered_time: t.oldest_unsettled.and_then(time),
        concurrency_limit: t.concurrency_limit,
        blocked_keys: (t.blocked_keys > 0).then_some(t.blocked_keys),
        oldest_blocked_time: t
            .oldest_blocked_since
            .as_deref()
            .and_then(|s| s.parse().ok())
            .map(Time),
    }
}

#[cfg(test)]
mod tests {
    use fanout_provision::observe::TargetObservation;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};

    use super::*;

    fn now() -> Time {
        Time("2026-11-27T10:00:00Z".parse().unwrap())
    }

    fn target(name: &str, circuit: Circuit, pods: usize) -> TargetObservation {
        TargetObservation {
            name: name.into(),
            circuit,
            pending: 2,
            delivered: 10,
            reporting_pods: pods,
            consumer_found: true,
            last_success_time: Some("2026-11-27T09:59:58.123Z".into()),
            ..TargetObservation::default()
        }
    }

    fn observation(targets: Vec<TargetObservation>) -> RouteObservation {
        RouteObservation {
            stream: StreamCounts {
                name: "fanout_shop_orders".into(),
                messages: 5,
                bytes: 500,
            },
            dead_letter: Some(StreamCounts {
                name: "fanout_shop_orders_dlq".into(),
                messages: 1,
                bytes: 90,
            }),
            targets,
        }
    }

    fn deployment(available: i32) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                available_replicas: Some(available),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    /// Findings of a reconcile where everything was applied.
    fn in_place<'a>(d: &'a Deployment, o: &'a RouteObservation) -> Findings<'a> {
        Findings {
            generation: 1,
            expiry: None,
            recreated: None,
            previous: None,
            config: Ok(()),
            stream: Some(Ok(())),
            deployment: Some(d),
            dispatcher_problem: None,
            observation: Some(o),
            ingest: Some(Ok(Ingest::Tokens(1))),
        }
    }

    fn condition<'a>(s: &'a FanOutRouteStatus, type_: &str) -> &'a fanout_api::status::Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn everything_in_place_is_ready_with_per_target_numbers() {
        let d = deployment(2);
        let o = observation(vec![
            target("email", Circuit::Closed, 2),
            target("crm", Circuit::Closed, 2),
        ]);
        let s = compute(
            &Findings {
                generation: 3,
                expiry: None,
                recreated: None,
                ..in_place(&d, &o)
            },
            &now(),
        );
        assert_eq!(condition(&s, READY).status, "True");
        assert_eq!(condition(&s, TARGETS_HEALTHY).status, "True");
        assert_eq!(
            condition(&s, DISPATCHER_AVAILABLE).message,
            "2/2 dispatcher pods available"
        );
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.healthy_targets.as_deref(), Some("2/2"));
        assert_eq!(s.dispatchers.as_deref(), Some("2/2"));
        assert_eq!((s.pending, s.dead_lettered), (Some(4), Some(1)));
        assert_eq!(s.targets[0].delivered, 10);
        assert_eq!(s.delivered_summary.as_deref(), Some("email=10 crm=10"));
        assert!(s.targets[0].last_success_time.is_some());
    }

    #[test]
    fn an_open_circuit_makes_targets_unhealthy_but_not_the_route_unready() {
        let d = deployment(1);
        let mut failing = target("crm", Circuit::Open, 1);
        failing.last_error = Some("HTTP 503".into());
        let o = observation(vec![target("email", Circuit::Closed, 1), failing]);
        let s = compute(
            &Findings {
                generation: 1,
                expiry: None,
                recreated: None,
                ..in_place(&d, &o)
            },
            &now(),
        );
        let t = condition(&s, TARGETS_HEALTHY);
        assert_eq!(
            (t.status.as_str(), t.reason.as_str()),
            ("False", "TargetsFailing")
        );
        assert_eq!(t.message, "crm: circuit Open (HTTP 503)");
        assert_eq!(s.healthy_targets.as_deref(), Some("1/2"));
        assert_eq!(s.targets[1].circuit, CircuitState::Open);
        assert_eq!(condition(&s, READY).status, "True");
    }

    #[test]
    fn a_config_problem_is_the_ready_reason_and_stream_state_carries_over() {
        let first = compute(
            &Findings {
                generation: 1,
                expiry: None,
                recreated: None,
                previous: None,
                config: Ok(()),
                stream: Some(Ok(())),
                deployment: None,
                dispatcher_problem: None,
                observation: None,
                ingest: Some(Ok(Ingest::NatsOnly)),
            },
            &now(),
        );
        assert_eq!(condition(&first, READY).reason, "NotCreated");
        let second = compute(
            &Findings {
                generation: 2,
                expiry: None,
                recreated: None,
                previous: Some(&first),
                config: Err(Problem::new(
                    "ApiTargetNotFound",
                    "targets[crm].apiTargetRef: ApiTarget \"crm\" does not exist",
                )),
                stream: None,
                deployment: None,
                dispatcher_problem: None,
                observation: None,
                ingest: None,
            },
            &now(),
        );
        let ready = condition(&second, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ApiTargetNotFound")
        );
        assert!(ready.message.contains("crm"));
        assert_eq!(condition(&second, STREAM_READY).status, "True");
        assert_eq!(condition(&second, TARGETS_HEALTHY).status, "Unknown");
        assert_eq!(condition(&second, INGEST_READY).reason, "NoTokens");
    }

    #[test]
    fn a_missing_ingest_token_is_its_own_condition_and_leaves_the_route_ready() {
        let d = deployment(1);
        let o = observation(vec![target("email", Circuit::Closed, 1)]);
        let missing = compute(
            &Findings {
                ingest: Some(Err(Problem::new(
                    "SecretNotFound",
                    "Secret shop/orders-ingest does not exist",
                ))),
                ..in_place(&d, &o)
            },
            &now(),
        );
        let ingest = condition(&missing, INGEST_READY);
        assert_eq!(
            (ingest.status.as_str(), ingest.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert!(
            ingest.message.contains("shop/orders-ingest"),
            "{}",
            ingest.message
        );
        assert!(
            ingest.message.contains("503 route-not-ready"),
            "{}",
            ingest.message
        );
        assert_eq!(condition(&missing, READY).status, "True");
        let found = compute(
            &Findings {
                previous: Some(&missing),
                ingest: Some(Ok(Ingest::Tokens(2))),
                ..in_place(&d, &o)
            },
            &now(),
        );
        let ingest = condition(&found, INGEST_READY);
        assert_eq!(
            (ingest.status.as_str(), ingest.reason.as_str()),
            ("True", "TokensFound")
        );
        assert!(
            ingest.message.contains("2 ingest token"),
            "{}",
            ingest.message
        );
        for (ingest, reason) in [
            (Ingest::Unauthenticated, "Unauthenticated"),
            (Ingest::NatsOnly, "NoTokens"),
        ] {
            let s = compute(
                &Findings {
                    ingest: Some(Ok(ingest)),
                    ..in_place(&d, &o)
                },
                &now(),
            );
            assert_eq!(condition(&s, INGEST_READY).reason, reason);
            assert_eq!(condition(&s, INGEST_READY).status, "True");
        }
    }

    #[test]
    fn nats_down_keeps_the_last_numbers_and_says_why() {
        let d = deployment(1);
        let o = observation(vec![target("email", Circuit::Closed, 1)]);
        let healthy = compute(
            &Findings {
                generation: 1,
                expiry: None,
                recreated: None,
                ..in_place(&d, &o)
            },
            &now(),
        );
        let down = compute(
            &Findings {
                generation: 1,
                expiry: None,
                recreated: None,
                previous: Some(&healthy),
                config: Ok(()),
                stream: Some(Err(Problem::new(
                    "NatsUnavailable",
                    "connecting to NATS failed",
                ))),
                deployment: Some(&d),
                dispatcher_problem: None,
                observation: None,
                ingest: Some(Ok(Ingest::Tokens(1))),
            },
            &now(),
        );
        assert_eq!(condition(&down, STREAM_READY).status, "False");
        assert_eq!(condition(&down, READY).reason, "NatsUnavailable");
        assert_eq!(down.targets, healthy.targets);
        assert_eq!(down.pending, Some(2));
    }

    #[test]
    fn no_reports_yet_is_unknown_and_a_missing_consumer_is_unhealthy() {
        let d = deployment(0);
        let o = observation(vec![target("email", Circuit::Closed, 0)]);
        let s = compute(
            &Findings {
                generation: 1,
                expiry: None,
                recreated: None,
                ..in_place(&d, &o)
            },
            &now(),
        );
        assert_eq!(condition(&s, TARGETS_HEALTHY).reason, "NoHealthReports");
        assert_eq!(condition(&s, DISPATCHER_AVAILABLE).reason, "NoPodAvailable");
        let mut missing = target("email", Circuit::Closed, 1);
        missing.consumer_found = false;
        let o = observation(vec![missing]);
        let s = compute(
            &Findings {
                generation: 1,
                expiry: None,
                recreated: None,
                ..in_place(&d, &o)
            },
            &now(),
        );
        assert_eq!(condition(&s, TARGETS_HEALTHY).message, "email: no consumer");
    }

    fn aged(name: &str, age_secs: u64) -> TargetObservation {
        let now = SystemTime::from(now().0);
        TargetObservation {
            oldest_unsettled: Some(now - Duration::from_secs(age_secs)),
            ..target(name, Circuit::Closed, 1)
        }
    }

    fn expiry(max_age: &str) -> Option<Expiry> {
        Expiry::new(max_age.parse().unwrap())
    }

    #[test]
    fn a_backlog_older_than_half_of_max_age_is_reported_before_it_expires() {
        let d = deployment(2);
        let young = observation(vec![aged("email", 10), aged("crm", 20)]);
        let status = compute(
            &Findings {
                expiry: expiry("60s"),
                ..in_place(&d, &young)
            },
            &now(),
        );
        let c = condition(&status, BACKLOG_WITHIN_RETENTION);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "WithinRetention")
        );
        assert_eq!(
            status.oldest_undelivered_time,
            time(SystemTime::from(now().0) - Duration::from_secs(20)),
            "the route shows its oldest target's"
        );
        assert!(status.targets[0].oldest_undelivered_time.is_some());

        let old = observation(vec![aged("email", 10), aged("crm", 35)]);
        let status = compute(
            &Findings {
                expiry: expiry("60s"),
                ..in_place(&d, &old)
            },
            &now(),
        );
        let c = condition(&status, BACKLOG_WITHIN_RETENTION);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "EventsNearExpiry")
        );
        assert!(
            c.message
                .starts_with("target crm's oldest undelivered event is 35s old;"),
            "{}",
            c.message
        );
        assert!(!c.message.contains("email"), "{}", c.message);
        assert!(c.message.contains("keeps events 1m"), "{}", c.message);
        assert!(c.message.contains("within 54s"), "{}", c.message);
        assert!(
            c.message.contains("spec.source.retention.maxAge"),
            "{}",
            c.message
        );
        // Ready does not depend on it: delivery works, it is late.
        assert_eq!(condition(&status, READY).status, "True");
    }

    #[test]
    fn up_to_date_targets_and_streams_without_max_age_are_within_retention() {
        let d = deployment(2);
        let idle = observation(vec![target("email", Circuit::Closed, 1)]);
        let status = compute(
            &Findings {
                expiry: expiry("60s"),
                ..in_place(&d, &idle)
            },
            &now(),
        );
        assert_eq!(status.oldest_undelivered_time, None);
        assert_eq!(condition(&status, BACKLOG_WITHIN_RETENTION).status, "True");
        let forever = observation(vec![aged("email", 1_000_000)]);
        let status = compute(&in_place(&d, &forever), &now());
        let c = condition(&status, BACKLOG_WITHIN_RETENTION);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "NoMaxAge"));
    }

    #[test]
    fn without_an_observation_the_last_retention_condition_stands() {
        let d = deployment(2);
        let old = observation(vec![aged("crm", 50)]);
        let first = compute(
            &Findings {
                expiry: expiry("60s"),
                ..in_place(&d, &old)
            },
            &now(),
        );
        let blind = compute(
            &Findings {
                previous: Some(&first),
                observation: None,
                expiry: expiry("60s"),
                ..in_place(&d, &old)
            },
            &now(),
        );
        assert_eq!(
            condition(&blind, BACKLOG_WITHIN_RETENTION),
            condition(&first, BACKLOG_WITHIN_RETENTION)
        );
        assert_eq!(blind.oldest_undelivered_time, first.oldest_undelivered_time);
    }

    #[test]
    fn objects_missing_from_a_route_that_had_them_are_reported_with_what_was_lost() {
        let d = deployment(2);
        let o = observation(vec![
            target("email", Circuit::Closed, 1),
            target("crm", Circuit::Closed, 1),
        ]);
        let before = compute(&in_place(&d, &o), &now());
        let consumer_target = |c: &str| c.strip_prefix("c_").map(str::to_string);
        let applied = Applied {
            created_streams: vec!["fanout_shop_orders".into()],
            created_consumers: vec!["c_email".into(), "c_new".into()],
        };
        let r = recreated(Some(&before), &applied, consumer_target, &now()).unwrap();
        assert_eq!(
            r.objects,
            ["stream fanout_shop_orders", "consumer c_email"],
            "a new target's consumer is not news"
        );
        assert_eq!(r.lost_events, Some(5));
        assert!(
            r.message
                .contains("the 5 events stream fanout_shop_orders held"),
            "{}",
            r.message
        );
        assert!(
            r.message.contains("2 of them not yet delivered"),
            "{}",
            r.message
        );
        assert!(
            r.message
                .contains("target email gets every event still in the stream again"),
            "{}",
            r.message
        );

        // It stays in status until something else goes missing.
        let later = compute(
            &Findings {
                previous: Some(&before),
                recreated: Some(r.clone()),
                ..in_place(&d, &o)
            },
            &now(),
        );
        let after = compute(
            &Findings {
                previous: Some(&later),
                ..in_place(&d, &o)
            },
            &now(),
        );
        assert_eq!(after.recreated, Some(r));
    }

    #[test]
    fn a_new_route_creating_its_objects_is_not_a_recreation() {
        let applied = Applied {
            created_streams: vec!["fanout_shop_orders".into()],
            created_consumers: vec!["c_email".into()],
        };
        let never = |_: &str| Some("email".to_string());
        assert_eq!(recreated(None, &applied, never, &now()), None);
        let unobserved = FanOutRouteStatus::default();
        assert_eq!(recreated(Some(&unobserved), &applied, never, &now()), None);
        let d = deployment(2);
        let o = observation(vec![target("email", Circuit::Closed, 1)]);
        let before = compute(&in_place(&d, &o), &now());
        assert_eq!(
            recreated(Some(&before), &Applied::default(), never, &now()),
            None
        );
    }
}
