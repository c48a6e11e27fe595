//! A JetStream message seen as an event: its id, subject, headers and body, and how
//! many times JetStream has handed it to this target.

use std::time::SystemTime;

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use bytes::Bytes;

use crate::message::Message;

pub use fanout_config::EVENT_ID_HEADER;

/// Headers that describe the message inside NATS/Fanout and are not sent to targets.
pub fn is_internal_header(name: &str) -> bool {
    // Called for every header of every request: compares in place, no lower-cased copy.
    let has_prefix = |prefix: &str| {
        name.get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    has_prefix("nats-") || has_prefix("fanout-")
}

/// The parts of a message a delivery needs, copied out once.
#[derive(Clone, Debug)]
pub struct Event {
    /// Stable across retries and redeliveries: the Idempotency-Key targets see.
    pub id: String,
    pub subject: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// 1 for the first delivery of this message to this target.
    pub delivery: u32,
    pub stream_sequence: u64,
    /// When JetStream stored it: the stream's maxAge counts from here.
    pub stored_at: SystemTime,
}

impl Event {
    /// The parts of a message taken from a target's consumer.
    pub fn from_message(message: &Message) -> Event {
        let taken = message.taken();
        let (delivery, stream_sequence, stream, stored_at) = match taken.info() {
            Some(info) => (
                u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1),
                info.stream_sequence,
                info.stream,
                info.published,
            ),
            // Only a message that did not come from a consumer lacks this.
            None => (1, 0, "", SystemTime::now()),
        };
        let headers = header_map(&taken.headers);
        Event {
            id: event_id(&headers, stream, stream_sequence),
            subject: String::from_utf8_lossy(&taken.subject).into_owned(),
            headers,
            body: taken.payload.clone(),
            delivery,
            stream_sequence,
            stored_at,
        }
    }

    /// An event read from `stream` directly rather than through a consumer (one
    /// that no dispatcher has fetched yet); `delivery` is 0, it was never attempted.
    pub fn from_stored(message: StreamMessage, stream: &str) -> Event {
        Event {
            id: event_id(&message.headers, stream, message.sequence),
            subject: message.subject.to_string(),
            headers: message.headers,
            body: message.payload,
            delivery: 0,
            stream_sequence: message.sequence,
            stored_at: SystemTime::from(message.time),
        }
    }

    /// Whether the event came back through a redrive of its dead letter (to one
    /// target's redrive subject).
    pub fn is_redrive(&self) -> bool {
        self.subject.starts_with("fanout.redrive.")
    }

    /// A header's first value, matching the name case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// The producer's id, or (none given) the stream position, unique and stable.
fn event_id(headers: &HeaderMap, stream: &str, sequence: u64) -> String {
    header(headers, EVENT_ID_HEADER)
        .or_else(|| header(headers, "Nats-Msg-Id"))
        .map_or_else(|| format!("{stream}:{sequence}"), str::to_string)
}

/// A `NATS/1.0` header block (the status line, then `Name: value` lines) as a map.
fn header_map(block: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    let text = String::from_utf8_lossy(block);
    for line in text.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            map.append(name.trim(), value.trim());
        }
    }
    map
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.iter().find_map(|(k, values)| {
        let key: &str = k.as_ref();
        key.eq_ignore_ascii_case(name)
            .then(|| values.first().map(|v| v.as_str()))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_headers_are_recognised_case_insensitively() {
        assert!(is_internal_header("Nats-Msg-Id"));
        assert!(is_internal_header("fanout-event-id"));
        assert!(!is_internal_header("X-Event-Type"));
        assert!(!is_internal_header("traceparent"));
    }

    #[test]
    fn header_lookup_ignores_case() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Event-Type", "order.placed");
        assert_eq!(header(&headers, "x-event-type"), Some("order.placed"));
        assert_eq!(header(&headers, "X-Other"), None);
    }
}
