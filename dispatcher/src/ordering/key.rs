//! An event's ordering key: from a header, from the CloudEvents `partitionkey`
//! extension, or from a CEL expression over the event
//! ([`crate::expressions::KeyExpression`]).

use std::sync::Arc;

use fanout_config::route::OrderingKey;
use serde::Deserialize;

use crate::event::Event;
use crate::expressions::{ExpressionStartError, KeyExpression, Unusable};

/// The binary-mode header of the CloudEvents partitioning extension.
pub const PARTITION_KEY_HEADER: &str = "ce-partitionkey";
/// Content type of a structured-mode CloudEvent.
const STRUCTURED: &str = "application/cloudevents+json";

#[derive(Clone, Debug)]
pub enum KeySource {
    Header(String),
    PartitionKey,
    Expression(Arc<KeyExpression>),
}

#[derive(Deserialize)]
struct Structured {
    partitionkey: Option<serde_json::Value>,
}

impl KeySource {
    /// The key source of a rendered target; an expression is compiled here.
    pub fn new(key: &OrderingKey) -> Result<KeySource, ExpressionStartError> {
        Ok(match key {
            OrderingKey::Header(name) => KeySource::Header(name.clone()),
            OrderingKey::PartitionKey => KeySource::PartitionKey,
            OrderingKey::Cel(source) => {
                KeySource::Expression(Arc::new(KeyExpression::compile(source)?))
            }
        })
    }

    /// The key of `event`; `None` when it has none (an empty value counts as none):
    /// it is delivered without waiting for other events. An error when the key
    /// expression cannot be evaluated on it.
    pub fn key_of(&self, event: &Event) -> Result<Option<String>, Unusable> {
        let key = match self {
            KeySource::Header(name) => event.header(name).map(str::to_string),
            KeySource::PartitionKey => partition_key(event),
            KeySource::Expression(expression) => expression.key(event)?,
        };
        Ok(key.filter(|k| !k.is_empty()))
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

    use crate::event::Headers;

    use super::*;

    fn event(headers: &[(&str, &str)], body: &str) -> Event {
        Event {
            id: "e".into(),
            subject: "s".into(),
            headers: Headers::from_pairs(headers.iter().copied()),
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
            source.key_of(&event(&[("x-customer", "c-7")], "")).unwrap(),
            Some("c-7".into())
        );
        assert_eq!(
            source.key_of(&event(&[("X-Customer", "")], "")).unwrap(),
            None
        );
        assert_eq!(source.key_of(&event(&[], "")).unwrap(), None);
    }

    #[test]
    fn the_partition_key_comes_from_binary_or_structured_mode() {
        let source = KeySource::PartitionKey;
        let binary = event(&[("ce-partitionkey", "order-1")], "{}");
        assert_eq!(source.key_of(&binary).unwrap(), Some("order-1".into()));
        let structured = event(
            &[(
                "Content-Type",
                "application/cloudevents+json; charset=utf-8",
            )],
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","partitionkey":"order-2"}"#,
        );
        assert_eq!(source.key_of(&structured).unwrap(), Some("order-2".into()));
        // A plain JSON body is data, not an event: its members are not attributes.
        let plain = event(
            &[("Content-Type", "application/json")],
            r#"{"partitionkey":"order-3"}"#,
        );
        assert_eq!(source.key_of(&plain).unwrap(), None);
    }

    #[test]
    fn an_expression_key_is_its_text_and_one_that_fails_is_an_error() {
        let source = KeySource::new(&OrderingKey::Cel(
            r#"event.headers["x-tenant"] + "/" + string(event.data.customer)"#.into(),
        ))
        .unwrap();
        let json = [("Content-Type", "application/json"), ("X-Tenant", "eu")];
        assert_eq!(
            source.key_of(&event(&json, r#"{"customer": 42}"#)).unwrap(),
            Some("eu/42".into())
        );
        let unusable = source
            .key_of(&event(&json, r#"{"client": 42}"#))
            .unwrap_err();
        assert!(
            unusable.error.starts_with("ordering.key.cel: "),
            "{}",
            unusable.error
        );
        let null = KeySource::new(&OrderingKey::Cel("null".into())).unwrap();
        assert_eq!(null.key_of(&event(&[], "")).unwrap(), None);
        let wrong = KeySource::new(&OrderingKey::Cel("event.dta".into())).unwrap_err();
        assert!(wrong.to_string().contains("ordering.key.cel"), "{wrong}");
    }
}
