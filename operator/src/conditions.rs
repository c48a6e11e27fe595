//! Status conditions: the six a route reports, one for targets, and the rule that
//! `lastTransitionTime` only moves when a condition's status does.

use fanout_api::status::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Everything below is in place and delivering is possible.
pub const READY: &str = "Ready";
/// The route's stream, dead-letter stream and consumers match the spec.
pub const STREAM_READY: &str = "StreamReady";
/// At least one dispatcher pod is available.
pub const DISPATCHER_AVAILABLE: &str = "DispatcherAvailable";
/// Every target's circuit is closed.
pub const TARGETS_HEALTHY: &str = "TargetsHealthy";
/// No target's oldest undelivered event is near the stream's maxAge.
pub const BACKLOG_WITHIN_RETENTION: &str = "BacklogWithinRetention";
/// The gateway can take the route's producers: every ingest token's Secret key
/// exists (or the route needs none).
pub const INGEST_READY: &str = "IngestReady";

/// A condition's status, as Kubernetes spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    True,
    False,
    Unknown,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::True => "True",
            State::False => "False",
            State::Unknown => "Unknown",
        }
    }
}

impl From<bool> for State {
    fn from(b: bool) -> State {
        if b { State::True } else { State::False }
    }
}

/// A condition before it is stamped with a transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    pub type_: &'static str,
    pub state: State,
    /// CamelCase, machine-readable.
    pub reason: String,
    /// For people: what is wrong and, where it helps, what to do.
    pub message: String,
}

impl Draft {
    pub fn new(
        type_: &'static str,
        state: impl Into<State>,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Draft {
        Draft {
            type_,
            state: state.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn is_true(&self) -> bool {
        self.state == State::True
    }
}

/// Turns drafts into conditions. A condition whose status did not change keeps its
/// `lastTransitionTime` from `previous`, so the time says when it last flipped, not
/// when it was last written.
pub fn stamp(
    previous: &[Condition],
    drafts: &[Draft],
    generation: i64,
    now: &Time,
) -> Vec<Condition> {
    drafts
        .iter()
        .map(|d| {
            let since = previous
                .iter()
                .find(|p| p.type_ == d.type_ && p.status == d.state.as_str())
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: d.type_.to_string(),
                status: d.state.as_str().to_string(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: Some(generation),
                last_transition_time: since,
            }
        })
        .collect()
}

/// The previous condition of `type_`, as a draft (to carry it over unchanged when
/// this reconcile learned nothing new about it).
pub fn carry_over(previous: &[Condition], type_: &'static str) -> Option<Draft> {
    previous.iter().find(|c| c.type_ == type_).map(|c| Draft {
        type_,
        state: match c.status.as_str() {
            "True" => State::True,
            "False" => State::False,
            _ => State::Unknown,
        },
        reason: c.reason.clone(),
        message: c.message.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let first = stamp(
            &[],
            &[Draft::new(READY, false, "StreamError", "nats down")],
            1,
            &at("2026-11-27T10:00:00Z"),
        );
        // Same status, new message: the time stays.
        let second = stamp(
            &first,
            &[Draft::new(READY, false, "StreamError", "still down")],
            1,
            &at("2026-11-27T10:01:00Z"),
        );
        assert_eq!(second[0].last_transition_time, at("2026-11-27T10:00:00Z"));
        assert_eq!(second[0].message, "still down");
        // Flipped: the time moves.
        let third = stamp(
            &second,
            &[Draft::new(READY, true, "Ready", "")],
            2,
            &at("2026-11-27T10:02:00Z"),
        );
        assert_eq!(third[0].last_transition_time, at("2026-11-27T10:02:00Z"));
        assert_eq!(third[0].status, "True");
        assert_eq!(third[0].observed_generation, Some(2));
    }

    #[test]
    fn carry_over_keeps_status_reason_and_message() {
        let previous = stamp(
            &[],
            &[Draft::new(STREAM_READY, true, "Provisioned", "ok")],
            1,
            &at("2026-11-27T10:00:00Z"),
        );
        let draft = carry_over(&previous, STREAM_READY).unwrap();
        assert!(draft.is_true());
        assert_eq!(draft.reason, "Provisioned");
        assert!(carry_over(&previous, READY).is_none());
    }
}
