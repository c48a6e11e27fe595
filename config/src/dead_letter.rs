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
