//! An event's ordering key: from a header, from the CloudEvents `partitionkey`
//! extension, or (once the CEL module provides one) from an expression over the
//! event, through [`KeyExpression`].

use std::sync::Arc;

use fanout_config::route::OrderingKey;
use serde::Deserialize;

use crate::event::Event;

/// The binary-mode header of the CloudEvents partitioning extension.
pub const PARTITION_KEY_HEADER: &str = "ce-partitionkey";
/// Content type of a structured-mode CloudEvent.
const STRUCTURED: &str = "application/cloudevents+json";

/// Why an expression gave no key for an event.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// A key computed from the whole event, such as a CEL expression (compiled when the
/// route is applied). The CEL module implements this; [`KeySource::Expression`]
/// holds one. `Ok(None)`: the event has no key and is delivered without ordering;
/// an error is handled the same way, and logged.
pub trait KeyExpression: Send + Sync {
    fn key(&self, event: &Event) -> Result<Option<String>, KeyError>;
}

#[derive(Clone)]
pub enum KeySource {
    Header(String),
    PartitionKey,
    Expression(Arc<dyn KeyExpression>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Header(name) => write!(f, "header {name}"),
            KeySource::PartitionKey => f.write_str("CloudEvents partitionkey"),
            KeySource::Expression(_) => f.write_str("expression"),
        }
    }
}

impl From<&OrderingKey> for KeySource {
    fn from(key: &OrderingKey) -> Self {
        match key {
            OrderingKey::Header(name) => KeySource::Header(name.clone()),
            OrderingKey::PartitionKey => KeySource::PartitionKey,
        }
    }
}

#[derive(Deserialize)]
struct Structured {
    partitionkey: Option<serde_json::Value>,
}

impl KeySource {
    /// The key of `event`; `None` when it has none (an empty value counts as none).
    pub fn key_of(&self, event: &Event) -> Option<String> {
        let key = match self {
            KeySource::Header(name) => event.header(name).map(str::to_string),
            KeySource::PartitionKey => partition_key(event),
            KeySource::Expression(expression) => match expression.key(event) {
                Ok(key) => key,
                Err(error) => {
                    tracing::debug!(event_id = %event.id, %error, "no ordering key: delivered without ordering");
                    None
                }
            },
        };
        key.filter(|k| !k.is_empty())
    }
}

/// `ce-partitionkey` (binary mode, or stored so by a producer), else the
/// `partitionkey` member of a structured-mode event's JSON.
fn partition_key(event: &Event) -> Option<String> {
    if let Some(key) = event.header(PARTITION_KEY_HEADER) {
        return Some(key.to_string());
    }
    let structured = event
        .header("content-type")
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with(STRUCTURED));
    if !structured {
        return None;
    }
    // The spec makes it a String; a number or boolean is taken as its text.
    match serde_json::from_slice::<Structured>(&event.body)
        .ok()?
        .partitionkey?
    {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use async_nats::HeaderMap;

    use super::*;

    fn event(headers: &[(&str, &str)], body: &str) -> Event {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        Event {
            id: "e".into(),
            subject: "s".into(),
            headers: map,
            body: body.to_string().into(),
            delivery: 1,
            stream_sequence: 1,
            stored_at: SystemTime::now(),
        }
    }

    #[test]
    fn a_header_key_is_read_case_insensitively_and_empty_means_none() {
        let source = KeySource::Header("X-Customer".into());
        assert_eq!(
            source.key_of(&event(&[("x-customer", "c-7")], "")),
            Some("c-7".into())
        );
        assert_eq!(source.key_of(&event(&[("X-Customer", "")], "")), None);
        assert_eq!(source.key_of(&event(&[], "")), None);
    }

    #[test]
    fn the_partition_key_comes_from_binary_or_structured_mode() {
        let source = KeySource::PartitionKey;
        let binary = event(&[("ce-partitionkey", "order-1")], "{}");
        assert_eq!(source.key_of(&binary), Some("order-1".into()));
        let structured = event(
            &[(
                "Content-Type",
                "application/cloudevents+json; charset=utf-8",
            )],
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","partitionkey":"order-2"}"#,
        );
        assert_eq!(source.key_of(&structured), Some("order-2".into()));
        // A plain JSON body is data, not an event: its members are not attributes.
        let plain = event(
            &[("Content-Type", "application/json")],
            r#"{"partitionkey":"order-3"}"#,
        );
        assert_eq!(source.key_of(&plain), None);
    }

    struct Fixed;
    impl KeyExpression for Fixed {
        fn key(&self, event: &Event) -> Result<Option<String>, KeyError> {
            match event.header("x-fail") {
                Some(_) => Err(KeyError("no such field".into())),
                None => Ok(Some("k".into())),
            }
        }
    }

    #[test]
    fn an_expression_that_fails_gives_no_key() {
        let source = KeySource::Expression(Arc::new(Fixed));
        assert_eq!(source.key_of(&event(&[], "")), Some("k".into()));
        assert_eq!(source.key_of(&event(&[("x-fail", "1")], "")), None);
    }
}
