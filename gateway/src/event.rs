//! Turning an accepted request (or one batch item) into the message stored in
//! JetStream: its id, its subject and the headers that travel with it.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, header};
use bytes::Bytes;

use crate::cloudevents::{self, CloudEventError};
use crate::config::Route;
use crate::headers::{ForwardHeaders, InvalidHeaderValue};
use crate::nats::headers::{Headers, LineBreak};

pub use fanout_config::EVENT_ID_HEADER;
/// JetStream's de-duplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Makes JetStream refuse the message unless it lands in the route's stream.
pub const EXPECTED_STREAM_HEADER: &str = "Nats-Expected-Stream";
/// Request header a client sets so that retries are stored once.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest event id accepted.
pub const MAX_ID_LEN: usize = 256;

// Made once: looking a header up by its text parses the name on every event.
const IDEMPOTENCY_KEY_NAME: HeaderName = HeaderName::from_static(IDEMPOTENCY_KEY);
const CONTENT_TYPE: &str = "Content-Type";

/// Why an event id is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("it contains characters other than printable ASCII")]
    NotPrintable,
}

/// Why a request cannot become an event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the Idempotency-Key header is not a valid event id: {0}")]
    IdempotencyKey(#[source] IdError),
    #[error("the CloudEvent id is not a valid event id: {0}")]
    CloudEventId(#[source] IdError),
    #[error("invalid CloudEvent: {0}")]
    CloudEvent(#[from] CloudEventError),
    #[error(transparent)]
    Header(#[from] InvalidHeaderValue),
}

// Values with line breaks never get this far (the HTTP parser, `check_id` and the
// configuration refuse them); should one, it is the header's problem all the same.
impl From<LineBreak> for EventError {
    fn from(e: LineBreak) -> Self {
        EventError::Header(e.into())
    }
}

/// A message ready to be published.
#[derive(Clone, Debug)]
pub struct Event {
    pub id: String,
    pub subject: String,
    pub headers: Headers,
    pub payload: Bytes,
}

/// What a batch item contributes; the rest comes from the request.
#[derive(Clone, Debug)]
pub struct ItemParts {
    pub payload: Bytes,
    pub content_type: &'static str,
    pub cloudevent: Option<cloudevents::Attributes>,
}

/// Event ids become NATS header values and, downstream, HTTP header values: printable
/// ASCII only, bounded length.
pub fn check_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        Err(IdError::Empty)
    } else if id.len() > MAX_ID_LEN {
        Err(IdError::TooLong)
    } else if !id.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Err(IdError::NotPrintable)
    } else {
        Ok(())
    }
}

/// A new, time-ordered event id.
pub fn new_id() -> String {
    let mut text = uuid::Uuid::encode_buffer();
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut text)
        .to_owned()
}

/// The lower-cased media type of `Content-Type`, without parameters.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    (!essence.is_empty()).then(|| essence.to_ascii_lowercase())
}

/// Whether `Content-Type` is `expected` (ignoring case and parameters).
pub fn is_media_type(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(expected))
}

/// The client's `Idempotency-Key`, checked.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, EventError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_NAME) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| EventError::IdempotencyKey(IdError::NotPrintable))?;
    check_id(key).map_err(EventError::IdempotencyKey)?;
    Ok(Some(key.to_string()))
}

/// One event from one request: structured CloudEvent, binary CloudEvent or any body.
/// The id is the `Idempotency-Key`, else the CloudEvent id, else a new one.
pub fn single(
    route: &Route,
    forward: &ForwardHeaders,
    request: &HeaderMap,
    body: Bytes,
) -> Result<Event, EventError> {
    let cloudevent = if is_media_type(request, cloudevents::STRUCTURED) {
        Some(cloudevents::from_structured(&body)?)
    } else {
        cloudevents::from_binary(request).transpose()?
    };
    let client_id = match (idempotency_key(request)?, &cloudevent) {
        (Some(key), _) => Some(key),
        (None, Some(ce)) => {
            check_id(&ce.id).map_err(EventError::CloudEventId)?;
            Some(ce.id.clone())
        }
        (None, None) => None,
    };
    let mut headers = Headers::new();
    if let Some(content_type) = request.get(header::CONTENT_TYPE) {
        let text = content_type.to_str().map_err(|_| InvalidHeaderValue {
            name: CONTENT_TYPE.into(),
        })?;
        headers.append(CONTENT_TYPE, text)?;
    }
    forward.copy(request, &mut headers, true)?;
    route.forward.copy_listed(request, &mut headers)?;
    finish(route, client_id, cloudevent.as_ref(), headers, body)
}

/// One event of a batch: its id is the item's CloudEvent id, else
/// `<Idempotency-Key>-<index>` when the request has a key (so a retried batch is
/// stored once), else a new one.
pub fn batch_item(
    route: &Route,
    forward: &ForwardHeaders,
    request: &HeaderMap,
    index: usize,
    item: ItemParts,
) -> Result<Event, EventError> {
    let client_id = match (&item.cloudevent, idempotency_key(request)?) {
        (Some(ce), _) => {
            check_id(&ce.id).map_err(EventError::CloudEventId)?;
            Some(ce.id.clone())
        }
        (None, Some(key)) => {
            let id = format!("{key}-{index}");
            check_id(&id).map_err(EventError::IdempotencyKey)?;
            Some(id)
        }
        (None, None) => None,
    };
    let mut headers = Headers::new();
    headers.append(CONTENT_TYPE, item.content_type)?;
    forward.copy(request, &mut headers, false)?;
    route.forward.copy_listed(request, &mut headers)?;
    finish(
        route,
        client_id,
        item.cloudevent.as_ref(),
        headers,
        item.payload,
    )
}

/// Completes an event. An id the client chose (Idempotency-Key, CloudEvent id) is also
/// the JetStream message id, so a retry within the stream's duplicate window is stored
/// once. An id the gateway makes up is not: no retry can ever repeat it, and each
/// message id costs the server an entry in its duplicate table for the whole window
/// (at 30,000 events/s and a 2-minute window, millions of entries to look up, grow
/// and garbage-collect; docs/benchmarks.md, "Gateway").
fn finish(
    route: &Route,
    client_id: Option<String>,
    cloudevent: Option<&cloudevents::Attributes>,
    mut headers: Headers,
    payload: Bytes,
) -> Result<Event, EventError> {
    let type_token: Cow<'_, str> = match cloudevent {
        Some(ce) => cloudevents::subject_token(&ce.event_type).into(),
        None => cloudevents::DEFAULT_TYPE_TOKEN.into(),
    };
    let mut subject = String::with_capacity(route.ingest_prefix.len() + 1 + type_token.len());
    subject.push_str(&route.ingest_prefix);
    subject.push('.');
    subject.push_str(&type_token);
    let id = match client_id {
        Some(id) => {
            headers.append(MSG_ID_HEADER, &id)?;
            id
        }
        None => new_id(),
    };
    headers.append(EVENT_ID_HEADER, &id)?;
    headers.append(EXPECTED_STREAM_HEADER, &route.stream)?;
    Ok(Event {
        subject,
        id,
        headers,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Tokens;

    fn route() -> Route {
        Route {
            namespace: "shop".into(),
            name: "orders".into(),
            stream: "fanout_shop_orders".into(),
            ingest_prefix: "fanout.in.shop.orders".into(),
            tokens: Tokens::default(),
            allow_unauthenticated: true,
            tokens_pending: false,
            absent_token_files: Vec::new(),
            // What a route whose targets filter on these headers is rendered with.
            forward: ForwardHeaders::for_route(&["X-Account-Kind".into(), "x-event-type".into()])
                .unwrap(),
            label: crate::metrics::RouteLabel::new("shop", "orders"),
        }
    }

    #[test]
    fn headers_the_routes_filters_use_travel_once_besides_the_global_list() {
        let request = headers(&[
            ("x-account-kind", "customer"),
            ("x-event-type", "user.created"),
            ("x-other", "dropped"),
        ]);
        let event = single(&route(), &forward(), &request, Bytes::new()).unwrap();
        let values = |name: &str| -> Vec<String> {
            event.headers.get_all(name).map(str::to_string).collect()
        };
        assert_eq!(values("X-Account-Kind"), ["customer"]);
        assert_eq!(values("X-Event-Type"), ["user.created"], "not stored twice");
        assert!(event.headers.get("x-other").is_none());
    }

    fn forward() -> ForwardHeaders {
        ForwardHeaders::from_flag(&["X-Event-Type".into()]).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn idempotency_key_wins_over_the_cloudevent_id() {
        let request = headers(&[
            ("idempotency-key", "key-1"),
            ("ce-specversion", "1.0"),
            ("ce-id", "ce-1"),
            ("ce-source", "/s"),
            ("ce-type", "order.placed"),
        ]);
        let event = single(&route(), &forward(), &request, Bytes::new()).unwrap();
        assert_eq!(event.id, "key-1");
        assert_eq!(event.subject, "fanout.in.shop.orders.order.placed");
        assert_eq!(event.headers.get(MSG_ID_HEADER), Some("key-1"));
        assert_eq!(event.headers.get(EVENT_ID_HEADER), Some("key-1"));
        assert_eq!(event.headers.get("ce-id"), Some("ce-1"));
    }

    #[test]
    fn structured_cloudevents_give_id_and_subject() {
        let request = headers(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )]);
        let body = Bytes::from_static(
            br#"{"specversion":"1.0","id":"ce-9","source":"/s","type":"user created"}"#,
        );
        let event = single(&route(), &forward(), &request, body).unwrap();
        assert_eq!(event.id, "ce-9");
        assert_eq!(event.headers.get(MSG_ID_HEADER), Some("ce-9"));
        assert_eq!(event.subject, "fanout.in.shop.orders.user_created");
        assert_eq!(
            event.headers.get("Content-Type"),
            Some("application/cloudevents+json; charset=utf-8")
        );
        assert_eq!(
            event.headers.get(EXPECTED_STREAM_HEADER),
            Some("fanout_shop_orders")
        );
    }

    #[test]
    fn plain_bodies_get_a_new_id_and_the_default_subject() {
        let request = headers(&[("content-type", "text/plain")]);
        let a = single(&route(), &forward(), &request, Bytes::from_static(b"x")).unwrap();
        let b = single(&route(), &forward(), &request, Bytes::from_static(b"x")).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(uuid::Uuid::parse_str(&a.id).unwrap().get_version_num(), 7);
        assert_eq!(a.headers.get(EVENT_ID_HEADER), Some(a.id.as_str()));
        // No retry can repeat a made-up id: no duplicate-table entry for it.
        assert!(a.headers.get(MSG_ID_HEADER).is_none());
        assert_eq!(a.subject, "fanout.in.shop.orders.event");
    }

    #[test]
    fn unusable_ids_are_refused() {
        let request = headers(&[("idempotency-key", "")]);
        assert!(matches!(
            single(&route(), &forward(), &request, Bytes::new()),
            Err(EventError::IdempotencyKey(IdError::Empty))
        ));
        let request = headers(&[("content-type", "application/cloudevents+json")]);
        let body = Bytes::from_static(
            b"{\"specversion\":\"1.0\",\"id\":\"a\\nb\",\"source\":\"/s\",\"type\":\"t\"}",
        );
        assert!(matches!(
            single(&route(), &forward(), &request, body),
            Err(EventError::CloudEventId(IdError::NotPrintable))
        ));
        assert_eq!(check_id(&"x".repeat(MAX_ID_LEN + 1)), Err(IdError::TooLong));
    }

    #[test]
    fn batch_items_derive_their_id_from_the_idempotency_key_and_index() {
        let request = headers(&[("idempotency-key", "batch-7"), ("ce-id", "ignored")]);
        let item = ItemParts {
            payload: Bytes::from_static(b"{}"),
            content_type: "application/json",
            cloudevent: None,
        };
        let event = batch_item(&route(), &forward(), &request, 3, item).unwrap();
        assert_eq!(event.id, "batch-7-3");
        assert_eq!(event.headers.get(MSG_ID_HEADER), Some("batch-7-3"));
        assert!(event.headers.get("ce-id").is_none());
        assert_eq!(event.headers.get("Content-Type"), Some("application/json"));
    }
}
