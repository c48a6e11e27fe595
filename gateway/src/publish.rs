//! Storing events in JetStream: one publish per event, answered only by JetStream's
//! acknowledgement, with a bounded number in flight.
//!
//! A publish holds a permit of the in-flight semaphore from before it is sent until
//! its acknowledgement (or failure) arrives. When every permit is taken, a request
//! waits a short, bounded time and then gets 503 instead of queueing without limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, ErrorCode};
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::event::Event;
use crate::nats::protocol::InvalidSubject;
use crate::nats::{self, Link, NoReply, SendError};
use crate::problem::{Problem, ProblemKind};

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_BUSY: u32 = 1;
const RETRY_AFTER_UNAVAILABLE: u32 = 2;
const RETRY_AFTER_STREAM_MISSING: u32 = 5;

/// JetStream's answer for a stored event: what the client gets in the 202.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stored {
    pub id: String,
    pub stream: String,
    pub sequence: u64,
    pub duplicate: bool,
}

impl Stored {
    /// The 202's body, as serde_json would write it, written directly: through
    /// serde it cost about 1% of the gateway's CPU (docs/benchmarks.md).
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = Vec::with_capacity(64 + self.id.len() + self.stream.len());
        json.extend_from_slice(br#"{"id":"#);
        json_string(&mut json, &self.id);
        json.extend_from_slice(br#","stream":"#);
        json_string(&mut json, &self.stream);
        json.extend_from_slice(br#","sequence":"#);
        json.extend_from_slice(itoa::Buffer::new().format(self.sequence).as_bytes());
        json.extend_from_slice(if self.duplicate {
            br#","duplicate":true}"#
        } else {
            br#","duplicate":false}"#
        });
        json
    }
}

/// `text` as a JSON string, escaped as serde_json escapes it.
fn json_string(json: &mut Vec<u8>, text: &str) {
    json.push(b'"');
    // Ids and stream names need no escape: copied whole.
    if !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        json.extend_from_slice(text.as_bytes());
        json.push(b'"');
        return;
    }
    for &b in text.as_bytes() {
        match b {
            b'"' => json.extend_from_slice(br#"\""#),
            b'\\' => json.extend_from_slice(br"\\"),
            b'\n' => json.extend_from_slice(br"\n"),
            b'\r' => json.extend_from_slice(br"\r"),
            b'\t' => json.extend_from_slice(br"\t"),
            0x08 => json.extend_from_slice(br"\b"),
            0x0c => json.extend_from_slice(br"\f"),
            0..0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                json.extend_from_slice(br"\u00");
                json.push(HEX[usize::from(b >> 4)]);
                json.push(HEX[usize::from(b & 0xf)]);
            }
            // Other bytes, UTF-8 included, as they are.
            _ => json.push(b),
        }
    }
    json.push(b'"');
}

/// Why an event was not (known to be) stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the gateway is not connected to NATS")]
    NotConnected,
    #[error("the gateway has {limit} publishes in flight and none finished within {waited:?}")]
    Busy { limit: usize, waited: Duration },
    #[error(
        "JetStream did not acknowledge the event within {0:?}; it may or may not be stored, so retry with the same Idempotency-Key"
    )]
    TimedOut(Duration),
    #[error("no JetStream stream stores subject {subject} (is the route provisioned?)")]
    StreamMissing { subject: String },
    #[error("stream {stream} is full ({reason}); it refuses new events until old ones expire")]
    StreamFull {
        stream: String,
        reason: String,
        #[source]
        source: jetstream::Error,
    },
    #[error("the event is larger than NATS or the stream accepts")]
    TooLarge(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("JetStream stored the event in stream {got}, not in the route's stream {expected}")]
    WrongStream { expected: String, got: String },
    #[error("JetStream refused the event: {0}")]
    Rejected(#[source] Refusal),
    #[error("the connection to NATS failed while publishing; retry with the same Idempotency-Key")]
    Connection,
}

/// Why JetStream's answer is not an acknowledgement, or the event could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Api(jetstream::Error),
    #[error("its answer is not an acknowledgement")]
    Unreadable(#[source] serde_json::Error),
    #[error("its acknowledgement names no stream or sequence")]
    Incomplete,
    #[error("the event cannot be sent")]
    Unsendable(#[source] InvalidSubject),
}

impl From<&PublishError> for Problem {
    fn from(e: &PublishError) -> Self {
        let detail = e.to_string();
        match e {
            PublishError::NotConnected | PublishError::TimedOut(_) | PublishError::Connection => {
                Problem::new(ProblemKind::Unavailable, detail).retry_after(RETRY_AFTER_UNAVAILABLE)
            }
            PublishError::StreamMissing { .. } => Problem::new(ProblemKind::Unavailable, detail)
                .retry_after(RETRY_AFTER_STREAM_MISSING),
            PublishError::Busy { .. } => {
                Problem::new(ProblemKind::Busy, detail).retry_after(RETRY_AFTER_BUSY)
            }
            PublishError::StreamFull { .. } => Problem::new(ProblemKind::StreamFull, detail),
            PublishError::TooLarge(_) => Problem::new(ProblemKind::PayloadTooLarge, detail),
            PublishError::WrongStream { .. } | PublishError::Rejected(_) => {
                Problem::new(ProblemKind::StorageRejected, detail)
            }
        }
    }
}

/// The bound on publishes in flight, shared by every shard of the gateway, so that
/// `--max-in-flight` bounds the whole process.
#[derive(Clone)]
pub struct InFlight {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl InFlight {
    pub fn new(limit: usize) -> Self {
        InFlight {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Publishes currently waiting for their acknowledgement.
    pub fn in_use(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

/// Publishes events to JetStream over one NATS connection.
#[derive(Clone)]
pub struct Publisher {
    link: Link,
    in_flight: InFlight,
    permit_wait: Duration,
    /// This shard's publish latencies.
    latency: Histogram,
}

/// A right to have one publish in flight, given back when dropped.
pub struct Permit {
    _held: OwnedSemaphorePermit,
}

/// A sent event whose acknowledgement has not arrived yet. It borrows the route's
/// stream name: nothing is copied per event to check the acknowledgement.
pub struct Pending<'a> {
    reply: nats::Pending,
    id: String,
    stream: &'a str,
    subject: String,
    started: Instant,
    latency: Histogram,
    _permit: Permit,
}

impl Publisher {
    pub fn new(link: Link, in_flight: InFlight, permit_wait: Duration, latency: Histogram) -> Self {
        Publisher {
            link,
            in_flight,
            permit_wait,
            latency,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// Fails fast when NATS is not connected: a publish now would only wait for the
    /// acknowledgement timeout.
    pub fn check_connected(&self) -> Result<(), PublishError> {
        if self.is_connected() {
            Ok(())
        } else {
            Err(PublishError::NotConnected)
        }
    }

    /// Publishes waiting for their acknowledgement, in every shard.
    pub fn in_flight(&self) -> usize {
        self.in_flight.in_use()
    }

    /// A permit if one is free right now.
    pub fn try_reserve(&self) -> Option<Permit> {
        self.in_flight
            .permits
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|held| Permit { _held: held })
    }

    /// A permit, waiting at most the configured bound.
    pub async fn reserve(&self) -> Result<Permit, PublishError> {
        let busy = || PublishError::Busy {
            limit: self.in_flight.limit,
            waited: self.permit_wait,
        };
        // The common case, a free permit, needs no timer.
        if let Some(permit) = self.try_reserve() {
            return Ok(permit);
        }
        match tokio::time::timeout(
            self.permit_wait,
            self.in_flight.permits.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(held)) => Ok(Permit { _held: held }),
            // The semaphore is never closed; treat it like a timeout anyway.
            Ok(Err(_)) | Err(_) => Err(busy()),
        }
    }

    /// Sends one event (into the connection's buffer) without waiting for its
    /// acknowledgement.
    pub fn send<'a>(
        &self,
        permit: Permit,
        event: Event,
        stream: &'a str,
    ) -> Result<Pending<'a>, PublishError> {
        let started = Instant::now();
        let reply = self
            .link
            .request(&event.subject, &event.headers, &event.payload)
            .map_err(send_error)?;
        Ok(Pending {
            reply,
            id: event.id,
            stream,
            subject: event.subject,
            started,
            latency: self.latency.clone(),
            _permit: permit,
        })
    }

    /// Sends one event and waits for JetStream to store it.
    pub async fn publish(&self, event: Event, stream: &str) -> Result<Stored, PublishError> {
        self.check_connected()?;
        let permit = self.reserve().await?;
        self.send(permit, event, stream)?.stored().await
    }

    /// Writes what is buffered towards NATS (used at shutdown).
    pub async fn flush(&self) {
        self.link.flush(Duration::from_secs(1)).await;
    }
}

/// Why a publish could not be sent, as [`PublishError`].
fn send_error(e: SendError) -> PublishError {
    match e {
        SendError::NotConnected => PublishError::NotConnected,
        SendError::TooLarge { .. } => PublishError::TooLarge(Box::new(e)),
        SendError::Invalid(e) => PublishError::Rejected(Refusal::Unsendable(e)),
    }
}

impl Pending<'_> {
    /// Waits for the acknowledgement: only `Ok` means the event is stored.
    pub async fn stored(self) -> Result<Stored, PublishError> {
        // The link times the wait out (`--publish-timeout`).
        let reply = match self.reply.await {
            Ok(reply) => reply,
            Err(NoReply::TimedOut(waited)) => return Err(PublishError::TimedOut(waited)),
            Err(NoReply::Lost) => return Err(PublishError::Connection),
        };
        // No responders: nothing stores the subject.
        if reply.status == Some(503) {
            return Err(PublishError::StreamMissing {
                subject: self.subject,
            });
        }
        let ack =
            Acknowledgement::read(&reply.payload).map_err(|e| classify_refusal(e, self.stream))?;
        self.latency.observe(self.started.elapsed().as_secs_f64());
        stored(self.id, self.stream, ack)
    }
}

/// JetStream's answer to a publish: the stream and sequence that stored it, or an
/// error. Read as one struct, whichever it is (fields it does not know are skipped).
#[derive(Debug, Deserialize)]
struct Acknowledgement {
    stream: Option<String>,
    seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    error: Option<jetstream::Error>,
}

/// An acknowledgement that says where the event is stored.
struct Ack {
    stream: String,
    sequence: u64,
    duplicate: bool,
}

impl Acknowledgement {
    /// Reads an acknowledgement; an error in it, or an unreadable one, is a
    /// [`Refusal`].
    fn read(payload: &[u8]) -> Result<Ack, Refusal> {
        if let Some(ack) = Ack::usual(payload) {
            return Ok(ack);
        }
        let ack: Acknowledgement = serde_json::from_slice(payload).map_err(Refusal::Unreadable)?;
        if let Some(error) = ack.error {
            return Err(Refusal::Api(error));
        }
        ack.checked().ok_or(Refusal::Incomplete)
    }

    fn checked(self) -> Option<Ack> {
        Some(Ack {
            stream: self.stream?,
            sequence: self.seq?,
            duplicate: self.duplicate,
        })
    }
}

impl Ack {
    /// Reads the acknowledgement nats-server writes for nearly every publish,
    /// `{"stream":"<name>","seq":<n>}` with an optional `"domain"` and
    /// `"duplicate":true` after it, without a JSON parser: parsing it with serde cost
    /// about 1% of the gateway's CPU (docs/benchmarks.md). Anything else (an error,
    /// an escape in a string, fields in another order or added by a newer server) is
    /// `None`, left to [`Acknowledgement::read`]'s parser.
    fn usual(payload: &[u8]) -> Option<Ack> {
        let rest = payload.strip_prefix(br#"{"stream":""#)?;
        let (stream, rest) = plain_string(rest)?;
        let rest = rest.strip_prefix(br#","seq":"#)?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        // A u64 has at most 20 digits; `parse` refuses those past its maximum.
        // JSON has no leading zeros; nats-server writes none.
        if digits == 0 || digits > 20 || (digits > 1 && rest[0] == b'0') {
            return None;
        }
        let sequence = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        let mut rest = &rest[digits..];
        if let Some(after) = rest.strip_prefix(br#","domain":""#) {
            rest = plain_string(after)?.1;
        }
        let duplicate = match rest.strip_prefix(br#","duplicate":true"#) {
            Some(after) => {
                rest = after;
                true
            }
            None => false,
        };
        (rest == b"}").then(|| Ack {
            stream: stream.to_string(),
            sequence,
            duplicate,
        })
    }
}

/// A JSON string's text up to its closing quote, when it has no escapes, and what
/// follows the quote.
fn plain_string(text: &[u8]) -> Option<(&str, &[u8])> {
    let end = text
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    if text[end] != b'"' {
        return None;
    }
    let string = std::str::from_utf8(&text[..end]).ok()?;
    Some((string, &text[end + 1..]))
}

/// The answer to the client, once the stream is the route's.
fn stored(id: String, stream: &str, ack: Ack) -> Result<Stored, PublishError> {
    if ack.stream != stream {
        return Err(PublishError::WrongStream {
            expected: stream.to_string(),
            got: ack.stream,
        });
    }
    Ok(Stored {
        id,
        stream: ack.stream,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// What JetStream's refusal means for the client.
fn classify_refusal(refusal: Refusal, stream: &str) -> PublishError {
    match refusal {
        Refusal::Api(api) if is_stream_full(&api) => PublishError::StreamFull {
            stream: stream.to_string(),
            reason: description(&api),
            source: api,
        },
        Refusal::Api(api) if api.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => {
            PublishError::TooLarge(Box::new(api))
        }
        refusal => PublishError::Rejected(refusal),
    }
}

/// JetStream's ways of saying "no room": the stream's limits with discard=new, or the
/// account's or server's storage.
fn is_stream_full(e: &jetstream::Error) -> bool {
    let code = e.error_code();
    (code == ErrorCode::STREAM_STORE_FAILED && e.to_string().contains("maximum"))
        || code == ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
        || code == ErrorCode::STORAGE_RESOURCES_EXCEEDED
        || code == ErrorCode::MEMORY_RESOURCES_EXCEEDED
        || code == ErrorCode::INSUFFICIENT_RESOURCES
}

/// The server's description without the codes async-nats appends.
fn description(e: &jetstream::Error) -> String {
    let text = e.to_string();
    match text.find(" (code ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<Stored, PublishError> {
        let ack =
            Acknowledgement::read(json.as_bytes()).map_err(|e| classify_refusal(e, "orders"))?;
        stored("e1".into(), "orders", ack)
    }

    #[test]
    fn an_acknowledgement_gives_the_sequence_and_whether_it_was_a_duplicate() {
        let fresh = read(r#"{"stream":"orders","seq":7,"domain":"hub"}"#).unwrap();
        assert_eq!(
            fresh,
            Stored {
                id: "e1".into(),
                stream: "orders".into(),
                sequence: 7,
                duplicate: false,
            }
        );
        let again = read(r#"{"stream":"orders","seq":7,"duplicate":true}"#).unwrap();
        assert!(again.duplicate);
    }

    #[test]
    fn an_event_stored_elsewhere_is_not_reported_stored() {
        let error = read(r#"{"stream":"other","seq":1}"#).unwrap_err();
        assert!(
            matches!(error, PublishError::WrongStream { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn errors_in_acknowledgements_are_told_apart() {
        let full =
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#;
        let error = read(full).unwrap_err();
        assert!(
            matches!(&error, PublishError::StreamFull { reason, .. } if reason == "maximum messages exceeded"),
            "{error:?}"
        );
        let refused = r#"{"error":{"code":400,"err_code":10060,"description":"expected stream does not match"}}"#;
        let error = read(refused).unwrap_err();
        assert!(matches!(error, PublishError::Rejected(_)), "{error:?}");
        for unreadable in ["", "{}", r#"{"stream":"orders"}"#, "not json"] {
            let error = read(unreadable).unwrap_err();
            assert!(
                matches!(error, PublishError::Rejected(_)),
                "{unreadable}: {error:?}"
            );
        }
    }

    #[test]
    fn the_answer_is_written_as_serde_json_writes_it() {
        let mut every_byte: String = (0u8..0x80).map(char::from).collect();
        every_byte.push_str("é€😀");
        for (id, stream, duplicate) in [
            (
                "0190a6f0-0000-7000-8000-000000000000",
                "fanout_shop_orders",
                false,
            ),
            (r#"key "quoted" \ back\slashed"#, "orders", true),
            (every_byte.as_str(), every_byte.as_str(), false),
            ("", "", true),
        ] {
            for sequence in [0, 7, u64::MAX] {
                let stored = Stored {
                    id: id.into(),
                    stream: stream.into(),
                    sequence,
                    duplicate,
                };
                assert_eq!(
                    String::from_utf8(stored.to_json()).unwrap(),
                    serde_json::to_string(&stored).unwrap()
                );
            }
        }
        // One byte at a time: each is escaped, or copied whole with the rest.
        for byte in 0u8..0x80 {
            let text = format!("id-{}-1", char::from(byte));
            let stored = Stored {
                id: text.clone(),
                stream: text,
                sequence: 1,
                duplicate: false,
            };
            assert_eq!(
                String::from_utf8(stored.to_json()).unwrap(),
                serde_json::to_string(&stored).unwrap(),
                "byte {byte:#04x}"
            );
        }
    }

    /// What the parser makes of it, for comparison with the usual form's reading.
    fn parsed(json: &str) -> Option<(String, u64, bool)> {
        let ack: Acknowledgement = serde_json::from_str(json).ok()?;
        if ack.error.is_some() {
            return None;
        }
        ack.checked().map(|a| (a.stream, a.sequence, a.duplicate))
    }

    #[test]
    fn the_usual_acknowledgement_is_read_without_the_parser_and_as_the_parser_reads_it() {
        let usual = [
            r#"{"stream":"orders","seq":7}"#,
            r#"{"stream":"orders","seq":7,"duplicate":true}"#,
            r#"{"stream":"fanout_shop-orders","seq":18446744073709551615,"domain":"hub"}"#,
            r#"{"stream":"orders","seq":0,"domain":"hub","duplicate":true}"#,
        ];
        for json in usual {
            let ack = Ack::usual(json.as_bytes()).unwrap_or_else(|| panic!("{json}"));
            assert_eq!(
                Some((ack.stream, ack.sequence, ack.duplicate)),
                parsed(json),
                "{json}"
            );
        }
        // Left to the parser, which reads each of these its own way (or refuses it).
        let other = [
            r#"{"stream":"orders","seq":7,"duplicate":false}"#,
            r#"{"seq":7,"stream":"orders"}"#,
            r#"{"stream":"ord\"ers","seq":7}"#,
            r#"{"stream":"orders","seq":7,"val":"1"}"#,
            r#"{"stream":"orders","seq":99999999999999999999}"#,
            r#"{"stream":"orders","seq":-1}"#,
            r#"{"stream":"orders","seq":07}"#,
            r#"{"stream":"orders","seq":}"#,
            r#"{"stream":"orders","seq":7} "#,
            r#"{"stream":"orders","seq":7}}"#,
            "{\"stream\":\"or\tders\",\"seq\":7}",
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
            "",
        ];
        for json in other {
            assert!(Ack::usual(json.as_bytes()).is_none(), "{json}");
        }
        // And through `read`, the parser's answer stands for them.
        let not_duplicate = read(r#"{"stream":"orders","seq":7,"duplicate":false}"#).unwrap();
        assert!(!not_duplicate.duplicate);
        let reordered = read(r#"{"seq":8,"stream":"orders"}"#).unwrap();
        assert_eq!(reordered.sequence, 8);
    }

    #[test]
    fn an_event_too_large_for_the_stream_is_told_apart() {
        let large = r#"{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}"#;
        let error = read(large).unwrap_err();
        assert!(matches!(error, PublishError::TooLarge(_)), "{error:?}");
    }
}
