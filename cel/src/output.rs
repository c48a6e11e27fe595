//! What a filter and a transform make of an expression's result.
//!
//! - A filter yields a bool.
//! - A transform's body: a string is sent as it is (`text/plain; charset=utf-8`),
//!   bytes as they are (`application/octet-stream`), anything else as JSON
//!   (`application/json`): maps become objects with their keys sorted, bytes inside
//!   JSON become base64 strings, `optional` values their value or null.
//! - A transform's header: a string as it is, a number or a bool as its text; null
//!   leaves the header out.

use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelOptional, CelString,
    CelUInt, Kind,
};
use cel::common::value::Val;
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::EvalError;

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";
pub const BYTES: &str = "application/octet-stream";

/// A filter's verdict.
pub fn boolean(value: &dyn Val) -> Result<bool, EvalError> {
    value
        .downcast_ref::<CelBool>()
        .map(|b| *b.inner())
        .ok_or_else(|| wrong_type(value, "a filter must yield a bool"))
}

/// A transformed body and its content type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
}

pub fn body(value: &dyn Val) -> Result<Body, EvalError> {
    if let Some(text) = value.downcast_ref::<CelString>() {
        return Ok(Body {
            bytes: text.inner().as_bytes().to_vec(),
            content_type: TEXT,
        });
    }
    if let Some(bytes) = value.downcast_ref::<CelBytes>() {
        return Ok(Body {
            bytes: bytes.inner().to_vec(),
            content_type: BYTES,
        });
    }
    let bytes = serde_json::to_vec(&AsJson(value)).map_err(|e| EvalError::Failed {
        message: format!("the body cannot be written as JSON: {e}"),
    })?;
    Ok(Body {
        bytes,
        content_type: JSON,
    })
}

/// A header's value; `None` leaves the header out.
pub fn header_value(value: &dyn Val) -> Result<Option<String>, EvalError> {
    let text = match value.get_type().kind() {
        Kind::NullType => return Ok(None),
        Kind::String => value
            .downcast_ref::<CelString>()
            .map(|s| s.inner().to_string()),
        Kind::Int => value
            .downcast_ref::<CelInt>()
            .map(|i| i.inner().to_string()),
        Kind::UInt => value
            .downcast_ref::<CelUInt>()
            .map(|u| u.inner().to_string()),
        Kind::Double => value
            .downcast_ref::<CelDouble>()
            .map(|d| d.inner().to_string()),
        Kind::Boolean => value
            .downcast_ref::<CelBool>()
            .map(|b| b.inner().to_string()),
        _ => None,
    };
    text.map(Some).ok_or_else(|| {
        wrong_type(
            value,
            "a header must be a string, a number, a bool, or null to leave it out",
        )
    })
}

fn wrong_type(value: &dyn Val, wanted: &'static str) -> EvalError {
    EvalError::WrongType {
        got: value.get_type().name().to_string(),
        wanted,
    }
}

/// A CEL value written as JSON.
struct AsJson<'a, 'v>(&'a (dyn Val + 'v));

impl Serialize for AsJson<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        let missing = || S::Error::custom(format!("a {} value", v.get_type().name()));
        match v.get_type().kind() {
            Kind::NullType => s.serialize_unit(),
            Kind::Boolean => {
                s.serialize_bool(*v.downcast_ref::<CelBool>().ok_or_else(missing)?.inner())
            }
            Kind::Int => s.serialize_i64(*v.downcast_ref::<CelInt>().ok_or_else(missing)?.inner()),
            Kind::UInt => {
                s.serialize_u64(*v.downcast_ref::<CelUInt>().ok_or_else(missing)?.inner())
            }
            Kind::Double => {
                let d = *v.downcast_ref::<CelDouble>().ok_or_else(missing)?.inner();
                if d.is_finite() {
                    s.serialize_f64(d)
                } else {
                    Err(S::Error::custom(
                        "NaN and infinite doubles have no JSON form",
                    ))
                }
            }
            Kind::String => {
                s.serialize_str(v.downcast_ref::<CelString>().ok_or_else(missing)?.inner())
            }
            Kind::Bytes => {
                use base64::Engine;
                let bytes = v.downcast_ref::<CelBytes>().ok_or_else(missing)?.inner();
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            Kind::List => {
                let items = v.downcast_ref::<CelList>().ok_or_else(missing)?.inner();
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&AsJson(item.as_ref()))?;
                }
                seq.end()
            }
            Kind::Map => {
                let map = v.downcast_ref::<CelMap>().ok_or_else(missing)?.inner();
                // Sorted: the same result gives the same bytes on every attempt.
                let mut entries: Vec<(String, &(dyn Val + '_))> =
                    map.iter().map(|(k, v)| (key_text(k), v.as_ref())).collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                let mut out = s.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    out.serialize_entry(&key, &AsJson(value))?;
                }
                out.end()
            }
            Kind::Opaque => match v.downcast_ref::<CelOptional>() {
                Some(optional) => match optional.inner() {
                    Some(inner) => AsJson(inner).serialize(s),
                    None => s.serialize_unit(),
                },
                None => Err(missing()),
            },
            _ => Err(S::Error::custom(format!(
                "a {} value has no JSON form",
                v.get_type().name()
            ))),
        }
    }
}

fn key_text(key: &CelMapKey) -> String {
    match key {
        CelMapKey::String(s) => s.inner().to_string(),
        CelMapKey::Int(i) => i.inner().to_string(),
        CelMapKey::UInt(u) => u.inner().to_string(),
        CelMapKey::Bool(b) => b.inner().to_string(),
    }
}
