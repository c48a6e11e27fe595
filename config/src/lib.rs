//! Fanout's rendered configuration: the contract between whoever renders it (the
//! operator, or `fanout standalone`) and the processes that run it (dispatchers and
//! the gateway). It depends on no Kubernetes crate.
//!
//! - [`duration`]: durations as manifests write them (`500ms`, `72h`).
//! - [`names`]: how streams, subjects, consumers and KV keys are named.
//! - [`policy`]: the effective delivery policy of one target.
//! - [`route`]: what one route's dispatchers run with.
//! - [`jetstream`]: the JetStream objects a route needs.
//! - [`gateway`]: the routes the gateway accepts events for.
//! - [`health`]: the per-target snapshots dispatchers report.
//! - [`dead_letter`]: the headers of a dead letter.
//! - [`history`]: the records of the delivery history (every attempt).
//! - [`egress`]: where dispatchers may connect (the egress policy).
//! - [`expiry`]: when an undelivered event is dead-lettered before the stream's
//!   maxAge would remove it, and when its age is reported.
//!
//! Plus [`EVENT_ID_HEADER`], which every stored event carries, and [`error_chain`],
//! the one way every Fanout process writes an error and its causes on one line.

pub mod dead_letter;
pub mod duration;
pub mod egress;
pub mod expiry;
pub mod gateway;
pub mod health;
pub mod history;
pub mod jetstream;
pub mod names;
pub mod policy;
pub mod route;

pub use duration::Duration;

/// The header that carries an event's id in its stream: the gateway sets it (from
/// `Idempotency-Key`, the CloudEvent id, or a new UUIDv7), dispatchers send it to
/// targets as `Idempotency-Key`, and dead letters keep it.
pub const EVENT_ID_HEADER: &str = "Fanout-Event-Id";
pub use names::RouteKey;
pub use policy::DeliveryPolicy;
pub use route::{RouteConfig, TargetConfig};

/// An error and its causes on one line ("sending the request: connection refused"),
/// for logs, status conditions and messages people read. A cause whose text the line
/// already holds (libraries often repeat their source in their own message) is not
/// repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod error_chain_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);
    #[derive(Debug, thiserror::Error)]
    #[error("middle: inner")]
    struct Middle(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn causes_are_joined_and_a_repeated_one_is_left_out() {
        assert_eq!(
            super::error_chain(&Outer(Middle(Inner))),
            "outer: middle: inner"
        );
    }
}
