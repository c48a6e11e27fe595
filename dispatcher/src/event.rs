//! A JetStream message seen as an event: its id, subject, headers and body, and how
//! many times JetStream has handed it to this target.

use async_nats::HeaderMap;
use async_nats::jetstream::Message;
use bytes::Bytes;

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
}

impl Event {
    /// Moves the headers out of `message` (only its reply subject is needed later, to
    /// settle it), so no event pays for a copy of its header map.
    pub fn from_message(message: &mut Message) -> Event {
        let (delivery, stream_sequence, stream) = match message.info() {
            Ok(info) => (
                u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1),
                info.stream_sequence,
                info.stream.to_string(),
            ),
            // Only a message that did not come from a consumer lacks this.
            Err(_) => (1, 0, String::new()),
        };
        let headers = message.message.headers.take().unwrap_or_default();
        let id = header(&headers, EVENT_ID_HEADER)
            .or_else(|| header(&headers, "Nats-Msg-Id"))
            .map(str::to_string)
            // No id given by the producer: the stream position is unique and stable.
            .unwrap_or_else(|| format!("{stream}:{stream_sequence}"));
        Event {
            id,
            subject: message.subject.to_string(),
            headers,
            body: message.payload.clone(),
            delivery,
            stream_sequence,
        }
    }

    /// A header's first value, matching the name case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
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
