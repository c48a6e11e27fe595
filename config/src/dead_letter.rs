//! The headers of a dead letter: written by the dispatcher when it gives an event up
//! for one target, read by `fanout dlq` to list and redrive. The event's own headers
//! travel alongside them.

/// The event id (also the Idempotency-Key targets see); kept on redrive.
pub const EVENT_ID: &str = crate::EVENT_ID_HEADER;
/// The target the event could not be delivered to.
pub const TARGET: &str = "Fanout-Target";
/// Attempts made before giving up.
pub const ATTEMPTS: &str = "Fanout-Attempts";
/// Why: `permanent` (the target refused it) or `exhausted` (attempts used up).
pub const REASON: &str = "Fanout-Reason";
/// The last HTTP status, when there was one.
pub const LAST_STATUS: &str = "Fanout-Last-Status";
/// The last error, one line.
pub const LAST_ERROR: &str = "Fanout-Last-Error";
/// The subject the event was published to.
pub const ORIGINAL_SUBJECT: &str = "Fanout-Original-Subject";
/// Its sequence in the route's stream.
pub const ORIGINAL_SEQUENCE: &str = "Fanout-Original-Sequence";

/// Headers that describe the dead letter rather than the event; dropped on redrive.
pub const DESCRIPTIVE: [&str; 7] = [
    TARGET,
    ATTEMPTS,
    REASON,
    LAST_STATUS,
    LAST_ERROR,
    ORIGINAL_SUBJECT,
    ORIGINAL_SEQUENCE,
];

/// Whether a stored event's header goes along when the event is copied to another
/// stream (a dead letter, a redrive). Headers starting with `Nats-` are instructions
/// to JetStream for the original publish: `Nats-Msg-Id` (deduplication),
/// `Nats-Expected-Stream` (which the gateway sets), `Nats-Expected-Last-Sequence`,
/// `Nats-TTL`, `Nats-Rollup` and whatever later servers add. Repeated on a copy for
/// another stream they make JetStream refuse it ("expected stream does not match") or
/// drop it as a duplicate. The copy sets its own message id.
pub fn travels_with_copy(name: &str) -> bool {
    !name
        .get(..NATS_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(NATS_PREFIX))
}

const NATS_PREFIX: &str = "Nats-";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jetstream_instructions_stay_behind_and_event_headers_travel() {
        for name in [
            "Nats-Msg-Id",
            "Nats-Expected-Stream",
            "nats-expected-last-sequence",
            "NATS-TTL",
            "Nats-Rollup",
        ] {
            assert!(!travels_with_copy(name), "{name}");
        }
        for name in ["X-Event-Type", "traceparent", EVENT_ID, "Nats", "NatsX"] {
            assert!(travels_with_copy(name), "{name}");
        }
    }
}
