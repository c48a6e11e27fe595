//! A target's CEL filter and transform, compiled once when the worker starts and
//! applied to each event it fetches (docs/dispatcher.md, "Filters and transforms").
//!
//! The rule for an event an expression cannot be evaluated on (a missing field, a
//! body that is not JSON, a type mismatch, a cost above the limit): the event is
//! dead-lettered for this target, with reason `filter` or `transform` and the error,
//! and counted. A filter that cannot decide must not decide silently (the event may
//! well be one the target needs; an expression skips events on purpose with `has()`
//! or a type check), and a body the transform could not compute cannot be sent in
//! its place, since the target expects the transformed shape. Once the expression
//! is fixed, `fanout dlq redrive` sends those events again (redriven events skip the
//! filter, as they always have, and are transformed).

use bytes::Bytes;
use fanout_cel::output;
use fanout_cel::{Activation, CompileError, EvalError, EventParts, Expression, Fields, Projection};
use fanout_config::TargetConfig;

use crate::delivery::DeadLetterReason;
use crate::event::Event;

/// A target expression that does not compile: the renderer checks them, so only a
/// configuration that skipped it (or came from another Fanout version) gets here.
#[derive(Debug, thiserror::Error)]
pub enum ExpressionStartError {
    #[error("{field}")]
    Compile {
        field: String,
        #[source]
        source: CompileError,
    },
    #[error("{field}: not a valid header name")]
    HeaderName { field: String },
}

/// What a target does with one event.
#[derive(Debug)]
pub enum Selection {
    /// Its filter leaves it out: acknowledged, counted as filtered.
    Skip,
    /// Deliver it: as it is, or with what its transform computed (boxed: the
    /// delivery's future keeps it across awaits, and most targets transform nothing).
    Send(Option<Box<Transformed>>),
    /// An expression could not be evaluated on it: dead-letter it.
    Unusable(Unusable),
}

/// What a transform computed for one event: sent in place of the event's body and
/// of the headers it names. The event itself stays as it is (its dead letter and
/// its history are the original's), and nothing of it is copied.
#[derive(Debug)]
pub struct Transformed {
    body: Option<(Bytes, &'static str)>,
    /// Every header the transform computes, with its value, or `None` when the
    /// expression left it out: either way the event's own of that name is not sent.
    headers: Vec<(http::HeaderName, Option<http::HeaderValue>)>,
}

impl Transformed {
    /// The computed headers (see [`Transformed`]).
    pub fn headers(&self) -> &[(http::HeaderName, Option<http::HeaderValue>)] {
        &self.headers
    }

    /// Whether it computes the header `name`, set or left out.
    pub fn computes(&self, name: &str) -> bool {
        self.computed(name).is_some()
    }

    /// The header `name` as computed (`Some(None)`: left out), or `None` when it
    /// computes no header of that name.
    fn computed(&self, name: &str) -> Option<Option<&http::HeaderValue>> {
        self.headers
            .iter()
            .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_ref())
    }
}

/// What is sent for one event: the event, with what its transform computed.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    pub event: &'a Event,
    pub transformed: Option<&'a Transformed>,
}

impl<'a> Outgoing<'a> {
    pub fn new(event: &'a Event, transformed: Option<&'a Transformed>) -> Outgoing<'a> {
        Outgoing { event, transformed }
    }

    pub fn body(&self) -> &'a Bytes {
        match self.transformed.and_then(|t| t.body.as_ref()) {
            Some((body, _)) => body,
            None => &self.event.body,
        }
    }

    /// A computed `Content-Type` header, else the computed body's type, else (unless
    /// the transform left the header out) the event's own.
    pub fn content_type(&self) -> Option<&'a str> {
        let Some(transformed) = self.transformed else {
            return self.event.header("Content-Type");
        };
        match (transformed.computed("content-type"), &transformed.body) {
            (Some(Some(value)), _) => value.to_str().ok(),
            (_, Some((_, content_type))) => Some(content_type),
            (Some(None), None) => None,
            (None, None) => self.event.header("Content-Type"),
        }
    }

    /// The first value of the header `name` as sent: computed, or the event's own.
    #[cfg(test)]
    fn header(&self, name: &str) -> Option<&'a str> {
        match self.transformed.and_then(|t| t.computed(name)) {
            Some(value) => value.and_then(|v| v.to_str().ok()),
            None => self.event.header(name),
        }
    }
}

/// Why an event could not go through a target's expressions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unusable {
    pub reason: DeadLetterReason,
    /// `<field>: <error>`, e.g. `filter.cel: no such key: total (...)`.
    pub error: String,
}

/// The compiled expressions of one target.
#[derive(Debug, Default)]
pub struct TargetExpressions {
    filter: Option<Expression>,
    body: Option<Expression>,
    /// Each computed header: its name, its field (`transform.headers[X-Name]`, as
    /// written) and its expression.
    headers: Vec<(http::HeaderName, String, Expression)>,
    /// What the event variable must hold for all of them.
    fields: Fields,
    /// The parts of `event.data` they read, together.
    data: Projection,
}

impl TargetExpressions {
    pub fn compile(config: &TargetConfig) -> Result<TargetExpressions, ExpressionStartError> {
        let compile = |field: &str, source: &str| {
            Expression::compile(source).map_err(|source| ExpressionStartError::Compile {
                field: field.to_string(),
                source,
            })
        };
        let mut compiled = TargetExpressions {
            filter: config
                .filter
                .cel
                .as_deref()
                .map(|s| compile("filter.cel", s))
                .transpose()?,
            ..Default::default()
        };
        if let Some(transform) = &config.transform {
            compiled.body = transform
                .body
                .as_deref()
                .map(|s| compile("transform.body", s))
                .transpose()?;
            for (name, source) in &transform.headers {
                let field = format!("transform.headers[{name}]");
                let header = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    ExpressionStartError::HeaderName {
                        field: field.clone(),
                    }
                })?;
                let expression = compile(&field, source)?;
                compiled.headers.push((header, field, expression));
            }
        }
        let all = compiled.filter.iter().chain(&compiled.body);
        let all = all.chain(compiled.headers.iter().map(|(_, _, e)| e));
        let (mut fields, mut data) = (Fields::default(), Projection::default());
        for expression in all {
            fields = fields | expression.fields();
            data.union(expression.data());
        }
        compiled.fields = fields;
        compiled.data = data;
        Ok(compiled)
    }

    pub fn is_empty(&self) -> bool {
        self.filter.is_none() && self.body.is_none() && self.headers.is_empty()
    }

    /// Applies the filter (unless `filtered` is false: a redriven event was sent to
    /// this target on purpose) and the transform to `event`.
    pub fn select(&self, event: &Event, filtered: bool) -> Selection {
        let applies = (filtered && self.filter.is_some()) || self.transforms();
        if !applies {
            return Selection::Send(None);
        }
        let headers = header_pairs(event);
        let parts = parts(event, &headers);
        let activation = Activation::with_projection(&parts, self.fields, &self.data);
        if filtered && let Some(filter) = &self.filter {
            match filter
                .evaluate(&activation)
                .and_then(|v| output::boolean(v.as_ref()))
            {
                Ok(true) => {}
                Ok(false) => return Selection::Skip,
                Err(e) => return unusable(DeadLetterReason::Filter, "filter.cel", &e),
            }
        }
        if !self.transforms() {
            return Selection::Send(None);
        }
        match self.transform(&activation) {
            Ok(transformed) => Selection::Send(Some(Box::new(transformed))),
            Err(unusable) => Selection::Unusable(unusable),
        }
    }

    /// Whether the filter takes `event`, for the expiry sweep: an event it cannot be
    /// evaluated on counts as taken (it is dead-lettered either way).
    pub fn filter_takes(&self, event: &Event) -> bool {
        let Some(filter) = &self.filter else {
            return true;
        };
        let headers = header_pairs(event);
        let parts = parts(event, &headers);
        let activation = Activation::with_projection(&parts, filter.fields(), filter.data());
        filter
            .evaluate(&activation)
            .and_then(|v| output::boolean(v.as_ref()))
            .unwrap_or(true)
    }

    fn transforms(&self) -> bool {
        self.body.is_some() || !self.headers.is_empty()
    }

    /// The body and headers computed for the event `activation` holds.
    fn transform(&self, activation: &Activation) -> Result<Transformed, Unusable> {
        let body = match &self.body {
            None => None,
            Some(expression) => {
                let body = expression
                    .evaluate(activation)
                    .and_then(|v| output::body(v.as_ref()))
                    .map_err(|e| evaluation(DeadLetterReason::Transform, "transform.body", &e))?;
                Some((Bytes::from(body.bytes), body.content_type))
            }
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, field, expression) in &self.headers {
            let value = expression
                .evaluate(activation)
                .and_then(|v| output::header_value(v.as_ref()))
                .map_err(|e| evaluation(DeadLetterReason::Transform, field, &e))?;
            let value = match value {
                None => None,
                Some(value) if is_header_text(&value) => {
                    Some(http::HeaderValue::try_from(value).expect("visible ASCII is header text"))
                }
                Some(_) => {
                    return Err(Unusable {
                        reason: DeadLetterReason::Transform,
                        error: format!(
                            "{field}: the value is not valid header text (visible ASCII, no line breaks)"
                        ),
                    });
                }
            };
            headers.push((name.clone(), value));
        }
        Ok(Transformed { body, headers })
    }
}

/// An ordered target's `ordering.key.cel`, compiled once when the worker starts.
#[derive(Debug)]
pub struct KeyExpression(Expression);

impl KeyExpression {
    pub fn compile(source: &str) -> Result<KeyExpression, ExpressionStartError> {
        Expression::compile(source)
            .map(KeyExpression)
            .map_err(|source| ExpressionStartError::Compile {
                field: KEY_FIELD.into(),
                source,
            })
    }

    /// `event`'s key: a string, or a number or bool as its text; `None` for null.
    /// An error when the expression cannot be evaluated on it: the event is then
    /// dead-lettered with reason `ordering`, since delivering it out of turn would
    /// break the order silently.
    pub fn key(&self, event: &Event) -> Result<Option<String>, Unusable> {
        let headers = header_pairs(event);
        let parts = parts(event, &headers);
        let activation = Activation::with_projection(&parts, self.0.fields(), self.0.data());
        self.0
            .evaluate(&activation)
            .and_then(|v| output::header_value(v.as_ref()))
            .map_err(|e| evaluation(DeadLetterReason::OrderingKey, KEY_FIELD, &e))
    }
}

const KEY_FIELD: &str = "ordering.key.cel";

/// Visible ASCII and tabs: what every HTTP stack reads the same way (the http crate
/// would also pass raw bytes above 0x7f on).
fn is_header_text(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Every header of `event`, name and value (a name comes once for each value; the
/// CEL map keeps the first).
fn header_pairs(event: &Event) -> Vec<(&str, &str)> {
    event.headers.iter().collect()
}

fn parts<'e>(event: &'e Event, headers: &'e [(&'e str, &'e str)]) -> EventParts<'e> {
    EventParts {
        id: &event.id,
        subject: &event.subject,
        headers,
        body: &event.body,
    }
}

fn evaluation(reason: DeadLetterReason, field: &str, error: &EvalError) -> Unusable {
    Unusable {
        reason,
        error: format!("{field}: {error}"),
    }
}

fn unusable(reason: DeadLetterReason, field: &str, error: &EvalError) -> Selection {
    Selection::Unusable(evaluation(reason, field, error))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::event::Headers;

    fn target(filter: Option<&str>, body: Option<&str>, headers: &[(&str, &str)]) -> TargetConfig {
        let mut config: TargetConfig = serde_yaml_ng::from_str(
            "name: crm
consumer: crm
deadLetterSubject: fanout.dlq.shop.orders.crm
filter: {}
policy:
  url: http://127.0.0.1:1/hook
  method: POST
  headers: {}
  timeout: 2s
  retry: {maxAttempts: 3, backoff: exponential, jitter: full, initialDelay: 100ms, maxDelay: 1s, retryAfterMax: 10s, retryableStatusCodes: ['5xx'], nonRetryableStatusCodes: []}
  maxInFlight: 4
",
        )
        .unwrap();
        config.filter.cel = filter.map(str::to_string);
        if body.is_some() || !headers.is_empty() {
            config.transform = Some(fanout_config::route::Transform {
                body: body.map(str::to_string),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            });
        }
        config
    }

    fn event(subject: &str, body: &str) -> Event {
        let headers = Headers::from_pairs([
            ("Content-Type", "application/json"),
            ("ce-type", "order.placed"),
            ("X-Tenant", "acme"),
        ]);
        Event {
            id: "evt-1".into(),
            subject: subject.into(),
            headers,
            body: Bytes::from(body.to_string()),
            delivery: 1,
            stream_sequence: 1,
            stored_at: SystemTime::now(),
        }
    }

    fn compile(config: &TargetConfig) -> TargetExpressions {
        TargetExpressions::compile(config).unwrap()
    }

    const SUBJECT: &str = "fanout.in.shop.orders.order.placed";

    #[test]
    fn without_expressions_the_event_goes_as_it_is() {
        let e = compile(&target(None, None, &[]));
        assert!(e.is_empty());
        let event = event(SUBJECT, "not json");
        assert!(matches!(e.select(&event, true), Selection::Send(None)));
    }

    #[test]
    fn the_filter_skips_sends_or_dead_letters() {
        let e = compile(&target(Some("event.data.total > 100"), None, &[]));
        assert!(matches!(
            e.select(&event(SUBJECT, r#"{"total": 150}"#), true),
            Selection::Send(None)
        ));
        assert!(matches!(
            e.select(&event(SUBJECT, r#"{"total": 50}"#), true),
            Selection::Skip
        ));
        let Selection::Unusable(unusable) = e.select(&event(SUBJECT, r#"{"sum": 1}"#), true) else {
            panic!("not unusable")
        };
        assert_eq!(unusable.reason, DeadLetterReason::Filter);
        assert!(
            unusable.error.starts_with("filter.cel: no such key: total"),
            "{}",
            unusable.error
        );
        // A redriven event was addressed to the target: no filter.
        assert!(matches!(
            e.select(&event(SUBJECT, r#"{"total": 50}"#), false),
            Selection::Send(_)
        ));
        assert!(e.filter_takes(&event(SUBJECT, r#"{"sum": 1}"#)));
        assert!(!e.filter_takes(&event(SUBJECT, r#"{"total": 1}"#)));
    }

    #[test]
    fn the_transform_replaces_body_content_type_and_named_headers() {
        let e = compile(&target(
            None,
            Some("{'order': event.data.id, 'tenant': event.headers['x-tenant']}"),
            &[
                ("X-Tenant", "event.headers['x-tenant'] + '-eu'"),
                (
                    "X-Coupon",
                    "has(event.data.coupon) ? event.data.coupon : null",
                ),
                ("X-Total", "event.data.total"),
            ],
        ));
        let original = event(SUBJECT, r#"{"id": "o-1", "total": 12.5}"#);
        let Selection::Send(Some(transformed)) = e.select(&original, true) else {
            panic!("not transformed")
        };
        let sent = Outgoing::new(&original, Some(&transformed));
        assert_eq!(&sent.body()[..], br#"{"order":"o-1","tenant":"acme"}"#);
        assert_eq!(sent.content_type(), Some("application/json"));
        assert_eq!(sent.header("x-tenant"), Some("acme-eu"));
        assert_eq!(sent.header("x-total"), Some("12.5"));
        assert_eq!(sent.header("x-coupon"), None);
        assert!(transformed.computes("x-coupon"), "left out, not forgotten");
        assert_eq!(sent.header("ce-type"), Some("order.placed"));
        // The original stays as it was, for its dead letter.
        assert_eq!(original.header("x-tenant"), Some("acme"));
        assert_eq!(original.header("content-type"), Some("application/json"));
    }

    #[test]
    fn a_computed_content_type_wins_and_a_text_body_is_sent_as_is() {
        let e = compile(&target(
            None,
            Some("'<order id=\"' + event.data.id + '\"/>'"),
            &[("Content-Type", "'application/xml'")],
        ));
        let original = event(SUBJECT, r#"{"id": "o-1"}"#);
        let Selection::Send(Some(transformed)) = e.select(&original, true) else {
            panic!("not sent")
        };
        let sent = Outgoing::new(&original, Some(&transformed));
        assert_eq!(&sent.body()[..], br#"<order id="o-1"/>"#);
        assert_eq!(sent.content_type(), Some("application/xml"));
    }

    #[test]
    fn the_parts_every_expression_reads_are_built() {
        let e = compile(&target(
            Some("event.data.total > 100"),
            Some("{'order': event.data.id}"),
            &[("X-Coupon", "event.data.?coupon.orValue('none')")],
        ));
        let original = event(
            SUBJECT,
            r#"{"id": "o-1", "total": 150, "coupon": "c-1", "other": [1, 2]}"#,
        );
        let Selection::Send(Some(transformed)) = e.select(&original, true) else {
            panic!("not sent")
        };
        let sent = Outgoing::new(&original, Some(&transformed));
        assert_eq!(&sent.body()[..], br#"{"order":"o-1"}"#);
        assert_eq!(sent.header("x-coupon"), Some("c-1"));
        // Of the items, one expression reads the quantities and another the SKUs:
        // both are built.
        let e = compile(&target(
            Some("event.data.items.exists(i, i.qty > 2)"),
            Some("event.data.items.map(i, i.sku)"),
            &[],
        ));
        let order = event(
            SUBJECT,
            r#"{"items": [{"sku": "a", "qty": 1, "note": "x"}, {"sku": "b", "qty": 3}]}"#,
        );
        let Selection::Send(Some(transformed)) = e.select(&order, true) else {
            panic!("not sent")
        };
        let sent = Outgoing::new(&order, Some(&transformed));
        assert_eq!(&sent.body()[..], br#"["a","b"]"#);
        // One expression reading `event.data` whole: all of it is built.
        let e = compile(&target(
            Some("event.data.total > 100"),
            Some("event.data"),
            &[],
        ));
        let Selection::Send(Some(transformed)) = e.select(&original, true) else {
            panic!("not sent")
        };
        let sent = Outgoing::new(&original, Some(&transformed));
        assert_eq!(
            &sent.body()[..],
            br#"{"coupon":"c-1","id":"o-1","other":[1,2],"total":150}"#
        );
    }

    #[test]
    fn a_content_type_left_out_falls_back_to_the_body_or_to_none() {
        let original = event(SUBJECT, r#"{"id": "o-1"}"#);
        let content_type = |body: Option<&str>| {
            let e = compile(&target(None, body, &[("Content-Type", "null")]));
            let Selection::Send(Some(transformed)) = e.select(&original, true) else {
                panic!("not sent")
            };
            Outgoing::new(&original, Some(&transformed))
                .content_type()
                .map(str::to_string)
        };
        assert_eq!(
            content_type(Some("event.data.id")).as_deref(),
            Some(output::TEXT)
        );
        assert_eq!(
            content_type(None),
            None,
            "the event's own is not sent either"
        );
        // Without a transform, the event's own.
        assert_eq!(
            Outgoing::new(&original, None).content_type(),
            Some("application/json")
        );
    }

    #[test]
    fn a_transform_that_cannot_be_evaluated_dead_letters_with_its_field() {
        let e = compile(&target(
            None,
            Some("{'n': event.data.n}"),
            &[("X-Line", "'a\\nb'")],
        ));
        let Selection::Unusable(u) = e.select(&event(SUBJECT, "not json"), true) else {
            panic!("not unusable")
        };
        assert_eq!(u.reason, DeadLetterReason::Transform);
        assert!(u.error.starts_with("transform.body: "), "{}", u.error);
        assert!(u.error.contains("the body is not JSON"), "{}", u.error);
        let Selection::Unusable(u) = e.select(&event(SUBJECT, r#"{"n": 1}"#), true) else {
            panic!("not unusable")
        };
        assert!(
            u.error
                .starts_with("transform.headers[X-Line]: the value is not valid header text"),
            "{}",
            u.error
        );
        // Header text is visible ASCII: not raw UTF-8 either.
        let e = compile(&target(None, None, &[("X-Name", "'café'")]));
        let Selection::Unusable(u) = e.select(&event(SUBJECT, "{}"), true) else {
            panic!("not unusable")
        };
        assert!(
            u.error
                .starts_with("transform.headers[X-Name]: the value is not valid header text"),
            "{}",
            u.error
        );
    }

    #[test]
    fn a_configuration_that_skipped_rendering_fails_the_start_not_an_event() {
        let err =
            TargetExpressions::compile(&target(Some("event.data.total >"), None, &[])).unwrap_err();
        assert!(err.to_string().starts_with("filter.cel"), "{err}");
    }
}
