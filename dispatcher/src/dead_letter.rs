//! Publishing an undeliverable event to the route's dead-letter stream, with why it
//! was given up on. The original is only terminated after JetStream has acknowledged
//! the dead letter, so an event is never lost between the two streams.

use async_nats::HeaderMap;
use async_nats::jetstream;

use crate::delivery::DeadLetterReason;
use crate::event::{EVENT_ID_HEADER, Event};

// Headers describing a dead letter (besides the event's own headers); `fanout dlq`
// reads them by the same names.
use fanout_config::dead_letter as headers;

/// Longest `Fanout-Last-Error` kept; response bodies can be large.
const MAX_ERROR_LEN: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("publishing to {subject}")]
    Publish {
        subject: String,
        #[source]
        source: jetstream::context::PublishError,
    },
}

/// The dead letter of `event` for one target.
pub struct DeadLetter<'a> {
    pub subject: &'a str,
    pub target: &'a str,
    pub event: &'a Event,
    pub attempts: u32,
    pub reason: DeadLetterReason,
    /// The last attempt's HTTP status, if it got one.
    pub last_status: Option<u16>,
    /// Why the event was given up on: the last attempt's failure, or for an expired
    /// event how old it was.
    pub last_error: &'a str,
}

impl DeadLetter<'_> {
    pub fn headers(&self) -> HeaderMap {
        let mut out = HeaderMap::new();
        for (name, value) in self.event.headers.iter() {
            if headers::travels_with_copy(name) {
                out.append(name, value);
            }
        }
        out.insert(EVENT_ID_HEADER, self.event.id.as_str());
        out.insert(headers::TARGET, self.target);
        out.insert(headers::ATTEMPTS, self.attempts.to_string().as_str());
        out.insert(headers::REASON, self.reason.as_str());
        if let Some(code) = self.last_status {
            out.insert(headers::LAST_STATUS, code.to_string().as_str());
        }
        out.insert(headers::LAST_ERROR, header_safe(self.last_error).as_str());
        out.insert(headers::ORIGINAL_SUBJECT, self.event.subject.as_str());
        out.insert(
            headers::ORIGINAL_SEQUENCE,
            self.event.stream_sequence.to_string().as_str(),
        );
        // Publishing the same dead letter twice (a crash between publish and
        // terminate) stores it once within the duplicate window.
        out.insert(
            "Nats-Msg-Id",
            format!("{}:{}:dead-letter", self.event.id, self.target).as_str(),
        );
        out
    }

    /// Publishes and waits for JetStream's acknowledgement. `Stored::Already` when
    /// the dead-letter stream had this letter (the same event and target) already.
    pub async fn publish(&self, js: &jetstream::Context) -> Result<Stored, DeadLetterError> {
        let publish_error = |source| DeadLetterError::Publish {
            subject: self.subject.to_string(),
            source,
        };
        let ack = js
            .publish_with_headers(
                self.subject.to_string(),
                self.headers(),
                self.event.body.clone(),
            )
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        Ok(if ack.duplicate {
            Stored::Already
        } else {
            Stored::Now
        })
    }
}

/// Whether a publish stored the dead letter or found it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    Now,
    /// Within the stream's duplicate window, e.g. an expiring event that a sweep
    /// dead-lettered and a worker fetched before the stream removed it.
    Already,
}

/// One line of printable text, short enough for a header.
fn header_safe(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::classify::Failure;
    use crate::event::Headers;

    fn event() -> Event {
        let headers = Headers::from_pairs([
            ("Nats-Msg-Id", "evt-1"),
            // What the gateway stores with every event: a copy to the dead-letter
            // stream carrying it is refused by JetStream.
            ("Nats-Expected-Stream", "FANOUT_shop_orders"),
            ("X-Event-Type", "order.placed"),
        ]);
        Event {
            id: "evt-1".into(),
            subject: "fanout.in.shop.orders.order".into(),
            headers,
            body: Bytes::from_static(b"{}"),
            delivery: 3,
            stream_sequence: 42,
            stored_at: std::time::SystemTime::now(),
        }
    }

    #[test]
    fn headers_say_which_target_why_and_after_how_many_attempts() {
        let e = event();
        let failure = Failure::Status {
            code: 400,
            body: "bad\nrequest".into(),
        };
        let error = failure.to_string();
        let dl = DeadLetter {
            subject: "fanout.dlq.shop.orders.email",
            target: "email",
            event: &e,
            attempts: 3,
            reason: DeadLetterReason::Permanent,
            last_status: failure.status(),
            last_error: &error,
        };
        let h = dl.headers();
        let get = |k: &str| h.get(k).map(|v| v.as_str().to_string());
        assert_eq!(get(headers::TARGET).as_deref(), Some("email"));
        assert_eq!(get(headers::ATTEMPTS).as_deref(), Some("3"));
        assert_eq!(get(headers::REASON).as_deref(), Some("permanent"));
        assert_eq!(get(headers::LAST_STATUS).as_deref(), Some("400"));
        assert_eq!(
            get(headers::LAST_ERROR).as_deref(),
            Some("HTTP 400: bad request")
        );
        assert_eq!(
            get(headers::ORIGINAL_SUBJECT).as_deref(),
            Some("fanout.in.shop.orders.order")
        );
        assert_eq!(get(headers::ORIGINAL_SEQUENCE).as_deref(), Some("42"));
        assert_eq!(get(EVENT_ID_HEADER).as_deref(), Some("evt-1"));
        assert_eq!(get("X-Event-Type").as_deref(), Some("order.placed"));
        assert_eq!(
            get("Nats-Msg-Id").as_deref(),
            Some("evt-1:email:dead-letter")
        );
        assert_eq!(get("Nats-Expected-Stream"), None);
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(600);
        let safe = header_safe(&long);
        assert!(safe.len() <= MAX_ERROR_LEN + '…'.len_utf8());
        assert!(safe.ends_with('…'));
    }
}
