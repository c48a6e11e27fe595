//! One stored event as the `event` variable of an expression.
//!
//! | field | CEL type | what |
//! |---|---|---|
//! | `event.id` | string | the event's id (the Idempotency-Key targets get) |
//! | `event.subject` | string | the NATS subject it was stored under |
//! | `event.type`, `event.source` | string | its CloudEvents `type` and `source`; `""` when it is not a CloudEvent |
//! | `event.ce` | map | every CloudEvents attribute it has (`id`, `specversion`, `subject`, `time`, extensions ...) |
//! | `event.headers` | map(string, string) | the headers stored with it, names lower-case, each name's first value |
//! | `event.data` | any | a structured CloudEvent's `data`, else the body parsed as JSON; `null` when it is not JSON |
//! | `event.body` | bytes | the body as stored |
//!
//! Only the fields an expression names are built (see [`Fields`]), so a filter on
//! `event.type` never parses the body; and of a JSON body, only the parts the
//! expressions read ([`Activation::with_projection`]).

use std::collections::HashMap;

use base64::Engine;
use cel::Context;
use cel::common::types::{CelBytes, CelMap, CelMapKey, CelString};
use cel::common::value::{CowVal, Val};

use crate::cost::Sizes;
use crate::expression::env;
use crate::json::{self, Longest, Object};
use crate::projection::Projection;

/// Structured-mode CloudEvents: the body is the whole event.
const STRUCTURED: &str = "application/cloudevents+json";

/// The fields of `event` that an expression reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fields(u16);

impl Fields {
    pub const ID: Fields = Fields(1);
    pub const SUBJECT: Fields = Fields(1 << 1);
    pub const TYPE: Fields = Fields(1 << 2);
    pub const SOURCE: Fields = Fields(1 << 3);
    pub const CE: Fields = Fields(1 << 4);
    pub const HEADERS: Fields = Fields(1 << 5);
    pub const DATA: Fields = Fields(1 << 6);
    pub const BODY: Fields = Fields(1 << 7);
    /// The variable `event` itself, as a map of its fields: read whole (`event`,
    /// `event[k]`) or through what [`crate::rewrite`] leaves as it is (`has(event.f)`,
    /// `event.?f`). The other reads of a field are of its own variable.
    pub const EVENT: Fields = Fields(1 << 8);
    pub const ALL: Fields = Fields(u16::MAX);

    /// Every field's name, as expressions write it, with its flag.
    pub const NAMES: [(&'static str, Fields); 8] = [
        ("id", Fields::ID),
        ("subject", Fields::SUBJECT),
        ("type", Fields::TYPE),
        ("source", Fields::SOURCE),
        ("ce", Fields::CE),
        ("headers", Fields::HEADERS),
        ("data", Fields::DATA),
        ("body", Fields::BODY),
    ];

    pub fn named(name: &str) -> Option<Fields> {
        Fields::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }

    pub fn union(self, other: Fields) -> Fields {
        Fields(self.0 | other.0)
    }

    pub fn contains(self, other: Fields) -> bool {
        self.0 & other.0 == other.0
    }

    fn any(self, other: Fields) -> bool {
        self.0 & other.0 != 0
    }
}

/// What a dispatcher knows of a stored event.
#[derive(Clone, Copy, Debug)]
pub struct EventParts<'a> {
    pub id: &'a str,
    pub subject: &'a str,
    /// Every stored header, name and first value, in stored order.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// One event bound as `event`, ready for any number of expressions.
pub struct Activation<'a> {
    pub(crate) context: Context<'a, 'a>,
    pub(crate) sizes: Sizes,
    /// Why `event.data` is null, when the expressions read it and it could not be
    /// parsed: told with any error, since it is the likely cause.
    pub(crate) data_problem: Option<String>,
}

impl<'a> Activation<'a> {
    /// Builds the `fields` of `event` that expressions read.
    pub fn new(event: &EventParts<'a>, fields: Fields) -> Activation<'a> {
        Activation::with_projection(event, fields, &Projection::whole())
    }

    /// [`Activation::new`], with only the parts of a JSON body that every expression
    /// that will see it reads ([`crate::Expression::data`], joined); the rest is read
    /// past, not built. A structured CloudEvent's `data` is built whole.
    pub fn with_projection(
        event: &EventParts<'a>,
        fields: Fields,
        read: &Projection,
    ) -> Activation<'a> {
        let mut longest = Longest::default();
        let mut data_problem = None;
        let mut context = Context::with_env(env());
        // The map `event`, when an expression reads it (see [`Fields::EVENT`]).
        let mut whole: Option<Object<'a>> = fields.contains(Fields::EVENT).then(HashMap::new);
        // Each field built, as the variable its reads are rewritten to.
        let mut put = |variable: &'static str, value: Box<dyn Val + 'a>| {
            if let Some(whole) = &mut whole {
                whole.insert(CelMapKey::from(field_name(variable)), value.clone());
            }
            context.add_variable_as_val(variable, value);
        };

        let headers = event.headers;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        let structured = header("content-type").is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case(STRUCTURED))
        });

        // CloudEvents attributes, and for a structured event its data.
        let mut attributes: Object<'a> = HashMap::new();
        let mut data: Option<Box<dyn Val + 'a>> = None;
        // A binary-mode event's `type` and `source` are its headers: the map of every
        // attribute is built only when `event.ce` is read.
        let binary_attributes_only = !structured && !fields.contains(Fields::CE);
        if fields.contains(Fields::CE)
            || (structured && fields.any(Fields::TYPE | Fields::SOURCE | Fields::DATA))
        {
            if structured {
                match json::parse_object(event.body, &mut longest) {
                    Ok(Some(mut envelope)) => {
                        data = take_data(&mut envelope, &mut data_problem);
                        attributes = envelope;
                    }
                    Ok(None) => data_problem = Some("the CloudEvent is not a JSON object".into()),
                    Err(e) => data_problem = Some(format!("the CloudEvent is not valid JSON: {e}")),
                }
            } else {
                for (name, value) in headers {
                    if let Some(attribute) = strip_prefix_ignore_case(name, "ce-") {
                        let key = CelMapKey::String(lower_case(attribute));
                        attributes
                            .entry(key)
                            .or_insert_with(|| Box::new(CelString::from(*value)));
                    }
                }
            }
        }
        let attribute = |name: &str| -> Box<dyn Val + 'a> {
            if binary_attributes_only {
                let header = headers.iter().find(|(n, _)| {
                    strip_prefix_ignore_case(n, "ce-").is_some_and(|a| a.eq_ignore_ascii_case(name))
                });
                return Box::new(CelString::from(header.map_or("", |(_, v)| *v)));
            }
            match attributes.get(&CelMapKey::from(name)) {
                Some(value) if value.downcast_ref::<CelString>().is_some() => value.clone(),
                _ => Box::new(CelString::from("")),
            }
        };
        if fields.contains(Fields::TYPE) {
            put("event.type", attribute("type"));
        }
        if fields.contains(Fields::SOURCE) {
            put("event.source", attribute("source"));
        }
        let attribute_count = attributes.len();
        if fields.contains(Fields::CE) {
            put("event.ce", Box::new(CelMap::from(attributes)));
        }

        if fields.contains(Fields::DATA) {
            if !structured {
                data = match json::parse(event.body, read, &mut longest) {
                    Ok(value) => Some(value),
                    Err(e) if event.body.is_empty() => {
                        data_problem = Some(format!("the body is empty ({e})"));
                        None
                    }
                    Err(e) => {
                        data_problem = Some(format!("the body is not JSON: {e}"));
                        None
                    }
                };
            }
            put(
                "event.data",
                data.unwrap_or_else(|| Box::new(cel::common::types::CelNull)),
            );
        }
        if fields.contains(Fields::ID) {
            put("event.id", Box::new(CelString::from(event.id)));
        }
        if fields.contains(Fields::SUBJECT) {
            put("event.subject", Box::new(CelString::from(event.subject)));
        }
        if fields.contains(Fields::BODY) {
            put("event.body", Box::new(CelBytes::from(event.body)));
        }
        let mut header_count = 0;
        if fields.contains(Fields::HEADERS) {
            let mut map: Object<'a> = HashMap::with_capacity(headers.len());
            for (name, value) in headers {
                if is_internal(name) {
                    continue;
                }
                map.entry(CelMapKey::String(lower_case(name)))
                    .or_insert_with(|| Box::new(CelString::from(*value)));
            }
            header_count = map.len();
            put("event.headers", Box::new(CelMap::from(map)));
        }

        let header_bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        let sizes = Sizes {
            bytes: (event.body.len() + header_bytes) as u64,
            items: longest.0.max(header_count).max(attribute_count) as u64,
        };
        if let Some(whole) = whole {
            context.add_variable_as_val("event", Box::new(CelMap::from(whole)));
        }
        Activation {
            context,
            sizes,
            data_problem,
        }
    }

    /// `event.<name>`, when it was built.
    pub(crate) fn field(&self, name: &str) -> Option<CowVal<'_, 'a>> {
        self.context.get_variable(format!("event.{name}"))
    }

    /// The sizes the cost of expressions on this event is estimated with.
    pub fn sizes(&self) -> Sizes {
        self.sizes
    }
}

impl std::ops::BitOr for Fields {
    type Output = Fields;

    fn bitor(self, rhs: Fields) -> Fields {
        self.union(rhs)
    }
}

/// `name` of the variable `event.name`.
fn field_name(variable: &'static str) -> &'static str {
    variable.strip_prefix("event.").unwrap_or(variable)
}

/// A structured CloudEvent's data: `data` as it is, `data_base64` decoded to bytes.
fn take_data<'a>(
    envelope: &mut Object<'a>,
    problem: &mut Option<String>,
) -> Option<Box<dyn Val + 'a>> {
    if let Some(data) = envelope.remove(&CelMapKey::from("data")) {
        return Some(data);
    }
    let encoded = envelope.remove(&CelMapKey::from("data_base64"))?;
    let text = encoded.downcast_ref::<CelString>()?.inner();
    match base64::engine::general_purpose::STANDARD.decode(text) {
        Ok(bytes) => Some(Box::new(CelBytes::from(bytes))),
        Err(e) => {
            *problem = Some(format!("the CloudEvent's data_base64 is not base64: {e}"));
            None
        }
    }
}

/// Headers that describe the message inside NATS and Fanout: not the producer's.
fn is_internal(name: &str) -> bool {
    strip_prefix_ignore_case(name, "nats-").is_some()
        || strip_prefix_ignore_case(name, "fanout-").is_some()
}

fn strip_prefix_ignore_case<'s>(name: &'s str, prefix: &str) -> Option<&'s str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
        .filter(|rest| !rest.is_empty())
}

/// `name` in lower case, borrowed when it already is.
fn lower_case(name: &str) -> CelString<'_> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        CelString::from(name.to_ascii_lowercase())
    } else {
        CelString::from(name)
    }
}
