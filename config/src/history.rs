//! The delivery history: one record per attempt (and per event a target skipped or
//! gave up on), written by dispatchers to the route's history stream and read by
//! `fanout attempts` and `fanout events`.
//!
//! Dispatchers write records in batches, as JSON lines: one message holds many
//! records of one target and one bucket, so recording costs a publish per batch
//! rather than per attempt (docs/benchmarks.md). A record's subject is
//! `fanout.attempts.<ns>.<route>.<target>.<bucket>`, the bucket being one hex digit
//! of a hash of the event id: the attempts of one event are all in one sixteenth of
//! the stream, and one target's in its own subjects.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::names::RouteKey;

/// Buckets an event id is hashed into (one hex digit).
pub const BUCKETS: usize = 16;

/// What a record says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// The target answered with a success.
    Delivered,
    /// The attempt failed and another is scheduled (`retryInMs`).
    Retrying,
    /// The attempt failed and no other follows: a dead letter (or a discard) comes next.
    Failed,
    /// The event went to the dead-letter stream (`reason`).
    DeadLettered,
    /// Dead-lettering is off for the route: the event was dropped (`reason`).
    Discarded,
    /// The target's filter does not take the event.
    Filtered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retrying => "retrying",
            Outcome::Failed => "failed",
            Outcome::DeadLettered => "dead-lettered",
            Outcome::Discarded => "discarded",
            Outcome::Filtered => "filtered",
        }
    }

    /// Whether the event's delivery to the target went wrong, as far as this record
    /// tells.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Retrying | Outcome::Failed | Outcome::DeadLettered | Outcome::Discarded
        )
    }
}

/// One line of the history. Borrowed where a dispatcher writes it (no copies on the
/// delivery path), owned (`Record<'static>`) where it is read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record<'a> {
    /// The event id (its Idempotency-Key at the target).
    pub event: Cow<'a, str>,
    /// Empty where dispatchers write it: the message's subject names the target
    /// ([`parse_batch`] fills it in from there).
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub target: Cow<'a, str>,
    /// The attempt's number (JetStream's delivery count); for a dead letter or a
    /// discard the attempts made; 0 when no request was ever sent.
    pub attempt: u32,
    /// When the attempt started (or the event was settled), milliseconds since the
    /// Unix epoch.
    pub at_ms: u64,
    pub outcome: Outcome,
    /// The HTTP status of the answer, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why the attempt failed (or why the event was given up on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Cow<'a, str>>,
    /// From sending the request to the answer's headers, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// For `retrying`: when the next attempt is due, in milliseconds from `atMs` +
    /// `latencyMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// For `deadLettered` and `discarded`: permanent, exhausted or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    /// The event's sequence in the route's stream (a redriven event has a new one).
    pub seq: u64,
    /// The event came back through a redrive of its dead letter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redrive: bool,
    /// The trace the attempt belongs to (W3C trace id), when it was traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<Cow<'a, str>>,
}

/// The bucket of `event_id`: 0 to [`BUCKETS`] - 1, the same in every process (FNV-1a).
pub fn bucket(event_id: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in event_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % BUCKETS as u64) as usize
}

/// The subject a target's records of `bucket` are published to.
pub fn subject(key: &RouteKey, target: &str, bucket: usize) -> String {
    format!("{}.{target}.{bucket:x}", key.attempts_prefix())
}

/// The subject filter of the records of one target or all (`None`), and of one event
/// or all: an event's records are all in its bucket.
pub fn filter(key: &RouteKey, target: Option<&str>, event_id: Option<&str>) -> String {
    let target = target.unwrap_or("*");
    match event_id {
        Some(id) => format!("{}.{target}.{:x}", key.attempts_prefix(), bucket(id)),
        None => format!("{}.{target}.*", key.attempts_prefix()),
    }
}

/// What a dispatcher needs to record a route's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryConfig {
    /// The history stream (for logs; records are published to its subjects).
    pub stream: String,
}

/// Parses a batch published on `subject`: one record per line; lines that are not
/// records (written by a newer dispatcher, damaged) are skipped and counted.
pub fn parse_batch(subject: &str, payload: &[u8]) -> (Vec<Record<'static>>, usize) {
    // `fanout.attempts.<ns>.<route>.<target>.<bucket>`
    let target = subject.rsplit('.').nth(1).unwrap_or_default();
    let mut records = Vec::new();
    let mut skipped = 0;
    for line in payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Record>(line) {
            Ok(mut record) => {
                if record.target.is_empty() {
                    record.target = Cow::Owned(target.to_string());
                }
                records.push(record);
            }
            Err(_) => skipped += 1,
        }
    }
    (records, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("evt-1"), bucket("evt-1"));
        let used: std::collections::BTreeSet<usize> =
            (0..200).map(|i| bucket(&format!("evt-{i}"))).collect();
        assert_eq!(used.len(), BUCKETS, "200 ids reach every bucket");
        assert!(used.iter().all(|b| *b < BUCKETS));
    }

    #[test]
    fn an_events_records_are_found_by_its_bucket_filter() {
        let key = RouteKey::new("shop", "orders");
        let id = "order-17";
        let written = subject(&key, "email", bucket(id));
        let matches = |pattern: String| crate::names::subject_matches(&pattern, &written);
        assert!(matches(filter(&key, None, Some(id))));
        assert!(matches(filter(&key, Some("email"), Some(id))));
        assert!(matches(filter(&key, Some("email"), None)));
        assert!(matches(filter(&key, None, None)));
        assert!(!matches(filter(&key, Some("crm"), None)));
        let other = (0..100)
            .map(|i| format!("other-{i}"))
            .find(|o| bucket(o) != bucket(id))
            .unwrap();
        assert!(!matches(filter(&key, None, Some(&other))));
        assert!(crate::names::subject_matches(
            &key.attempts_subjects(),
            &written
        ));
    }

    #[test]
    fn a_batch_is_json_lines_and_bad_lines_are_skipped() {
        let record = Record {
            event: "e1".into(),
            target: "crm".into(),
            attempt: 2,
            at_ms: 1_700_000_000_000,
            outcome: Outcome::Retrying,
            status: Some(503),
            error: Some("HTTP 503".into()),
            latency_ms: Some(1.5),
            retry_in_ms: Some(1000),
            reason: None,
            seq: 9,
            redrive: false,
            trace_id: None,
        };
        let mut payload = serde_json::to_vec(&record).unwrap();
        payload.extend_from_slice(b"\n{not json}\n");
        payload.extend(serde_json::to_vec(&record).unwrap());
        let subject = subject(&RouteKey::new("shop", "orders"), "crm", 3);
        let (records, skipped) = parse_batch(&subject, &payload);
        assert_eq!(records, [record.clone(), record.clone()]);
        assert_eq!(skipped, 1);
        // As dispatchers write it: the target only in the subject.
        let written = Record {
            target: "".into(),
            ..record.clone()
        };
        let line = serde_json::to_vec(&written).unwrap();
        assert!(!String::from_utf8_lossy(&line).contains("target"));
        assert_eq!(parse_batch(&subject, &line).0, [record]);
        let line = String::from_utf8(serde_json::to_vec(&records[0]).unwrap()).unwrap();
        assert!(line.contains(r#""outcome":"retrying""#), "{line}");
        assert!(!line.contains("redrive"), "{line}");
    }
}
