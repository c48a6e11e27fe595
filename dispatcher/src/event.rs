//! A JetStream message seen as an event: its id, subject, headers and body, and how
//! many times JetStream has handed it to this target.

use std::ops::Range;
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
    pub headers: Headers,
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
        let headers = Headers::from_block(taken.headers.clone());
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
        let headers = Headers::from_map(&message.headers);
        Event {
            id: event_id(&headers, stream, message.sequence),
            subject: message.subject.to_string(),
            headers,
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
        self.headers.get(name)
    }
}

/// An event's headers as they came: JetStream's `NATS/1.0` header block, with where
/// each header's name and value sit in it, found in one pass. A map built for every
/// event cost more than the few lookups a delivery makes of it, and so did reading
/// the block again for each (docs/benchmarks.md, "A consumer of its own").
#[derive(Clone, Debug, Default)]
pub struct Headers {
    /// `NATS/1.0`, then `Name: value` lines, each ending in CRLF, then CRLF; or
    /// empty.
    block: Bytes,
    /// Each header's name and value in `block`, trimmed and known to be UTF-8, in
    /// the order they came.
    entries: Vec<(Range<u32>, Range<u32>)>,
}

impl Headers {
    /// Reads `block`; a line that is not `Name: value` text is left out.
    pub fn from_block(block: Bytes) -> Headers {
        let mut entries = Vec::new();
        let mut start = match memchr::memchr(b'\n', &block) {
            Some(end) => end + 1,
            None => block.len(),
        };
        while start < block.len() {
            let end = memchr::memchr(b'\n', &block[start..]).map_or(block.len(), |e| start + e);
            if let Some(entry) = entry(&block, start, end) {
                entries.push(entry);
            }
            start = end + 1;
        }
        Headers { block, entries }
    }

    /// These names and values in this order (a name with several values comes
    /// once for each).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Headers {
        let mut block = b"NATS/1.0\r\n".to_vec();
        for (name, value) in pairs {
            block.extend_from_slice(name.as_bytes());
            block.extend_from_slice(b": ");
            block.extend_from_slice(value.as_bytes());
            block.extend_from_slice(b"\r\n");
        }
        block.extend_from_slice(b"\r\n");
        Headers::from_block(block.into())
    }

    /// The headers of async-nats' map (of an event read from the stream directly).
    pub fn from_map(map: &HeaderMap) -> Headers {
        Headers::from_pairs(map.iter().flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values.iter().map(move |value| (name, value.as_str()))
        }))
    }

    /// Each header's name and value, in the order they came; a name comes once for
    /// each of its values.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(name, value)| (self.text(name), self.text(value)))
    }

    /// Each header's name, and its value as a slice of the block (no copy), in the
    /// order they came.
    pub fn iter_shared(&self) -> impl Iterator<Item = (&str, Bytes)> {
        self.entries
            .iter()
            .map(|(name, value)| (self.text(name), self.block.slice(to_usize(value))))
    }

    /// The first value of `name`, matched without regard to case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| self.block[to_usize(n)].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| self.text(value))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn text(&self, range: &Range<u32>) -> &str {
        // Checked when the entry was made.
        std::str::from_utf8(&self.block[to_usize(range)]).unwrap_or_default()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.iter().eq(other.iter())
    }
}

/// The line `block[start..end]` (its CR included) as a header's name and value.
fn entry(block: &[u8], start: usize, end: usize) -> Option<(Range<u32>, Range<u32>)> {
    let line = &block[start..end];
    let colon = memchr::memchr(b':', line)?;
    let name = trimmed(line, 0, colon)?;
    let value = trimmed(line, colon + 1, line.len())?;
    if name.is_empty() {
        return None;
    }
    let at = |r: Range<usize>| -> Option<Range<u32>> {
        Some(u32::try_from(start + r.start).ok()?..u32::try_from(start + r.end).ok()?)
    };
    Some((at(name)?, at(value)?))
}

/// `line[from..to]` without the whitespace around it, if it is UTF-8.
fn trimmed(line: &[u8], from: usize, to: usize) -> Option<Range<usize>> {
    let text = std::str::from_utf8(&line[from..to]).ok()?;
    let kept = text.trim();
    let skipped = kept.as_ptr() as usize - text.as_ptr() as usize;
    Some(from + skipped..from + skipped + kept.len())
}

fn to_usize(range: &Range<u32>) -> Range<usize> {
    range.start as usize..range.end as usize
}

/// The producer's id, or (none given) the stream position, unique and stable.
fn event_id(headers: &Headers, stream: &str, sequence: u64) -> String {
    headers
        .get(EVENT_ID_HEADER)
        .or_else(|| headers.get("Nats-Msg-Id"))
        .map_or_else(|| format!("{stream}:{sequence}"), str::to_string)
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
    fn header_lookup_ignores_case_and_takes_the_first_value() {
        let headers =
            Headers::from_pairs([("X-Event-Type", "order.placed"), ("x-event-type", "second")]);
        assert_eq!(headers.get("x-EVENT-type"), Some("order.placed"));
        assert_eq!(headers.get("X-Other"), None);
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn a_header_block_reads_as_its_lines() {
        let block = Bytes::from_static(
            b"NATS/1.0\r\nFanout-Event-Id: e-1\r\nX-Url:  https://a.example/x?y=1 \r\nbroken line\r\n: no name\r\nX-Empty:\r\n\r\n",
        );
        let headers = Headers::from_block(block);
        let all: Vec<(&str, &str)> = headers.iter().collect();
        assert_eq!(
            all,
            [
                ("Fanout-Event-Id", "e-1"),
                ("X-Url", "https://a.example/x?y=1"),
                ("X-Empty", "")
            ]
        );
        assert!(Headers::default().is_empty());
        assert_eq!(Headers::default().iter().count(), 0);
    }

    #[test]
    fn a_map_becomes_the_same_lines() {
        let mut map = HeaderMap::new();
        map.insert("Fanout-Event-Id", "e-1");
        map.append("X-Tag", "a");
        map.append("X-Tag", "b");
        let headers = Headers::from_map(&map);
        let mut all: Vec<(&str, &str)> = headers.iter().collect();
        all.sort();
        assert_eq!(
            all,
            [("Fanout-Event-Id", "e-1"), ("X-Tag", "a"), ("X-Tag", "b")]
        );
    }
}
