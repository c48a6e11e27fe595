//! CloudEvents 1.0 over HTTP: structured mode (the whole event is a JSON document of
//! type `application/cloudevents+json`) and binary mode (attributes in `ce-*`
//! headers, the body is the data). Only what the gateway needs is read: the id and
//! the type; the event itself is stored unchanged.

use axum::http::{HeaderMap, HeaderName};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::error::Category;

/// Media type of one structured-mode event.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Media type of a batch of structured-mode events.
pub const BATCH: &str = "application/cloudevents-batch+json";
/// Subject token used when an event has no type.
pub const DEFAULT_TYPE_TOKEN: &str = "event";
/// Longest type (in bytes) kept in the subject; the full type travels in the event.
const MAX_TYPE_TOKEN_LEN: usize = 200;
/// The header that makes a request a binary-mode CloudEvent, looked up on every event.
const SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");

/// Why a CloudEvent could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CloudEventError {
    #[error("the body is not valid JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("a structured CloudEvent must be a JSON object")]
    NotAnObject,
    #[error("the CloudEvent has no {0} attribute")]
    MissingAttribute(&'static str),
    #[error("the CloudEvent attribute {0} must be a non-empty string")]
    InvalidAttribute(&'static str),
    #[error("binary-mode CloudEvent (ce-specversion is set) without the {0} header")]
    MissingHeader(&'static str),
    #[error("the {0} header is not valid text")]
    InvalidHeader(&'static str),
}

/// The attributes the gateway uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub id: String,
    pub event_type: String,
}

#[derive(Deserialize)]
struct Envelope {
    specversion: Option<Value>,
    id: Option<Value>,
    source: Option<Value>,
    #[serde(rename = "type")]
    event_type: Option<Value>,
}

/// What a JSON document is, as far as CloudEvents go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A valid structured-mode event.
    CloudEvent(Attributes),
    /// A JSON object without `specversion`: not a CloudEvent.
    Plain,
    /// Valid JSON, but not an object.
    NotAnObject,
}

/// Looks at one JSON document: an object with `specversion` must be a valid
/// CloudEvent; anything else valid is left alone.
pub fn probe(json: &[u8]) -> Result<Probe, CloudEventError> {
    let starts_as_object = json.trim_ascii_start().first() == Some(&b'{');
    let envelope: Envelope = match serde_json::from_slice(json) {
        Ok(envelope) => envelope,
        Err(e) if starts_as_object || e.classify() != Category::Data => {
            return Err(CloudEventError::NotJson(e));
        }
        Err(_) => {
            // Not an object; still make sure the whole document is valid JSON.
            serde_json::from_slice::<IgnoredAny>(json).map_err(CloudEventError::NotJson)?;
            return Ok(Probe::NotAnObject);
        }
    };
    if envelope.specversion.is_none() {
        return Ok(Probe::Plain);
    }
    let attribute = |value: Option<Value>, name: &'static str| match value {
        None | Some(Value::Null) => Err(CloudEventError::MissingAttribute(name)),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(CloudEventError::InvalidAttribute(name)),
    };
    attribute(envelope.specversion, "specversion")?;
    let id = attribute(envelope.id, "id")?;
    attribute(envelope.source, "source")?;
    let event_type = attribute(envelope.event_type, "type")?;
    Ok(Probe::CloudEvent(Attributes { id, event_type }))
}

/// Reads one structured-mode event, which must be a CloudEvent.
pub fn from_structured(json: &[u8]) -> Result<Attributes, CloudEventError> {
    match probe(json)? {
        Probe::CloudEvent(attributes) => Ok(attributes),
        Probe::Plain => Err(CloudEventError::MissingAttribute("specversion")),
        Probe::NotAnObject => Err(CloudEventError::NotAnObject),
    }
}

/// Reads a binary-mode event from the headers, or `None` when the request is not one
/// (no `ce-specversion` header).
pub fn from_binary(headers: &HeaderMap) -> Option<Result<Attributes, CloudEventError>> {
    headers.get(SPECVERSION)?;
    let header = |name: &'static str| -> Result<String, CloudEventError> {
        let value = headers
            .get(name)
            .ok_or(CloudEventError::MissingHeader(name))?;
        let text = value
            .to_str()
            .map_err(|_| CloudEventError::InvalidHeader(name))?;
        if text.is_empty() {
            return Err(CloudEventError::MissingHeader(name));
        }
        Ok(text.to_string())
    };
    Some((|| {
        header("ce-source")?;
        Ok(Attributes {
            id: header("ce-id")?,
            event_type: header("ce-type")?,
        })
    })())
}

/// The last part of the subject an event of type `event_type` is published to:
/// NATS-safe characters (`A-Z a-z 0-9 _ -`, dots between tokens) are kept, anything
/// else becomes `_`; an empty type becomes `event`.
pub fn subject_token(event_type: &str) -> String {
    if event_type.is_empty() {
        return DEFAULT_TYPE_TOKEN.to_string();
    }
    let mut out = String::with_capacity(event_type.len().min(MAX_TYPE_TOKEN_LEN));
    for token in event_type.split('.') {
        if !out.is_empty() {
            // Room for the dot and at least one character, so no token is left empty.
            if out.len() + 2 > MAX_TYPE_TOKEN_LEN {
                break;
            }
            out.push('.');
        }
        if token.is_empty() {
            out.push('_');
            continue;
        }
        for c in token.chars() {
            if out.len() >= MAX_TYPE_TOKEN_LEN {
                break;
            }
            out.push(if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_events_give_their_id_and_type() {
        let body = br#"{"specversion":"1.0","id":"e-1","source":"/shop","type":"order.placed","data":{"n":1}}"#;
        assert_eq!(
            from_structured(body).unwrap(),
            Attributes {
                id: "e-1".into(),
                event_type: "order.placed".into()
            }
        );
    }

    #[test]
    fn structured_events_need_the_required_attributes_as_strings() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"id":"1","source":"s","type":"t"}"#, "specversion"),
            (br#"{"specversion":"1.0","source":"s","type":"t"}"#, "id"),
            (
                br#"{"specversion":"1.0","id":7,"source":"s","type":"t"}"#,
                "id",
            ),
            (br#"{"specversion":"1.0","id":"1","type":"t"}"#, "source"),
            (
                br#"{"specversion":"1.0","id":"1","source":"s","type":""}"#,
                "type",
            ),
        ];
        for (body, attribute) in cases {
            let err = from_structured(body).unwrap_err().to_string();
            assert!(err.contains(attribute), "{err}");
        }
        assert!(matches!(
            from_structured(b"[1]"),
            Err(CloudEventError::NotAnObject)
        ));
        assert!(matches!(
            from_structured(b"[1"),
            Err(CloudEventError::NotJson(_))
        ));
        assert!(matches!(
            from_structured(b"{"),
            Err(CloudEventError::NotJson(_))
        ));
    }

    #[test]
    fn probing_tells_plain_json_from_cloudevents() {
        assert_eq!(probe(br#"{"n":1}"#).unwrap(), Probe::Plain);
        assert_eq!(probe(b" 42 ").unwrap(), Probe::NotAnObject);
        assert!(matches!(probe(b"4 2"), Err(CloudEventError::NotJson(_))));
        assert!(matches!(
            probe(br#"{"specversion":"1.0"}"#),
            Err(CloudEventError::MissingAttribute("id"))
        ));
    }

    #[test]
    fn binary_mode_is_recognised_by_ce_specversion() {
        let mut headers = HeaderMap::new();
        assert!(from_binary(&headers).is_none());
        headers.insert("ce-specversion", "1.0".parse().unwrap());
        headers.insert("ce-id", "abc".parse().unwrap());
        headers.insert("ce-source", "/s".parse().unwrap());
        assert!(matches!(
            from_binary(&headers),
            Some(Err(CloudEventError::MissingHeader("ce-type")))
        ));
        headers.insert("ce-type", "user.created".parse().unwrap());
        let attributes = from_binary(&headers).unwrap().unwrap();
        assert_eq!(attributes.id, "abc");
        assert_eq!(attributes.event_type, "user.created");
    }

    #[test]
    fn subject_tokens_keep_safe_characters_only() {
        assert_eq!(subject_token("order.placed"), "order.placed");
        assert_eq!(
            subject_token("com.example/v1 order*"),
            "com.example_v1_order_"
        );
        assert_eq!(subject_token("a..b"), "a._.b");
        assert_eq!(subject_token(".a."), "_.a._");
        assert_eq!(subject_token(">"), "_");
        assert_eq!(subject_token("ünïcode"), "_n_code");
        assert_eq!(subject_token(""), "event");
        assert!(subject_token(&"x".repeat(1000)).len() <= MAX_TYPE_TOKEN_LEN);
        for long in ["a.".repeat(300), format!("{}.b", "x".repeat(199))] {
            let token = subject_token(&long);
            assert!(token.len() <= MAX_TYPE_TOKEN_LEN, "{token}");
            assert!(crate::config::is_literal_subject(&token), "{token}");
        }
    }
}
