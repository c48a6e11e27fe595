//! The apiserver's openAPI checks of a custom resource: types, required fields,
//! bounds, lengths, patterns, enums, list keys and sizes, each reported in its words.
//! Unknown fields are found separately: `kubectl apply` asks for strict decoding, which
//! refuses a document with an unknown field before any other check.

use std::collections::HashMap;

use regex::Regex;
use serde_json::Value;

use super::field_error::{FieldError, FieldPath, Problem, Shown, go_float};

/// The JSON type of `value` as the apiserver names it.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Compiled `pattern`s, by their text, and those the regex crate refused.
#[derive(Default)]
pub struct Patterns(HashMap<String, Regex>, Vec<String>);

impl Patterns {
    /// Adds every pattern in `schema`. A pattern the regex crate cannot compile would
    /// go unchecked; the tests check that the shipped CRDs have none.
    pub fn extend(&mut self, schema: &Value) {
        match schema {
            Value::Object(fields) => {
                if let Some(Value::String(p)) = fields.get("pattern") {
                    match Regex::new(p) {
                        Ok(re) => _ = self.0.insert(p.clone(), re),
                        Err(_) => self.1.push(p.clone()),
                    }
                }
                fields.values().for_each(|v| self.extend(v));
            }
            Value::Array(items) => items.iter().for_each(|v| self.extend(v)),
            _ => {}
        }
    }
}

impl Patterns {
    pub fn not_compiled(&self) -> &[String] {
        &self.1
    }
}

/// Every openAPI problem of `value` at `at`.
pub fn check(
    schema: &Value,
    value: &Value,
    at: &FieldPath,
    patterns: &Patterns,
    out: &mut Vec<FieldError>,
) {
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    let mut push = |problem| {
        out.push(FieldError {
            field: at.clone(),
            problem,
        })
    };
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let actual = type_name(value);
    if let Some(wanted) = schema.get("type").and_then(Value::as_str) {
        let fits = actual == wanted
            || (wanted == "number" && actual == "integer")
            || (int_or_string && matches!(actual, "integer" | "string"));
        if !fits {
            push(Problem::WrongType {
                actual,
                detail: format!(
                    "{} in body must be of type {wanted}: {actual:?}",
                    at.as_str()
                ),
            });
            return;
        }
    }
    let in_body = at.as_str();
    match value {
        Value::Object(fields) => {
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if fields.get(name).is_none_or(Value::is_null) {
                    out.push(FieldError {
                        field: at.child(name),
                        problem: Problem::Required {
                            detail: String::new(),
                        },
                    });
                }
            }
            if let Some(most) = number("maxProperties")
                && fields.len() as f64 > most
            {
                out.push(FieldError {
                    field: at.clone(),
                    problem: Problem::TooMany {
                        count: fields.len(),
                        most: go_float(most),
                    },
                });
            }
            for (name, field) in fields {
                if field.is_null() {
                    continue;
                }
                if let Some(field_schema) = field_schema(schema, name) {
                    check(field_schema, field, &at.child(name), patterns, out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(least) = number("minItems")
                && (items.len() as f64) < least
            {
                push(Problem::Invalid {
                    shown: Shown::Plain(items.len().to_string()),
                    detail: format!(
                        "{in_body} in body should have at least {} items",
                        go_float(least)
                    ),
                });
            }
            if let Some(most) = number("maxItems")
                && items.len() as f64 > most
            {
                push(Problem::TooMany {
                    count: items.len(),
                    most: go_float(most),
                });
            }
            duplicates(schema, items, at, out);
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &at.index(i), patterns, out);
                }
            }
        }
        Value::String(text) => {
            let length = text.chars().count() as f64;
            if let Some(most) = number("maxLength")
                && length > most
            {
                push(Problem::TooLong {
                    most: go_float(most),
                });
            }
            if let Some(least) = number("minLength")
                && length < least
            {
                push(Problem::Invalid {
                    shown: Shown::of(value),
                    detail: format!(
                        "{in_body} in body should be at least {} chars long",
                        go_float(least)
                    ),
                });
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && let Some(re) = patterns.0.get(pattern)
                && !re.is_match(text)
            {
                push(Problem::Invalid {
                    shown: Shown::of(value),
                    detail: format!("{in_body} in body should match '{pattern}'"),
                });
            }
            if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
                && !allowed.contains(value)
            {
                push(Problem::NotSupported {
                    value: text.clone(),
                    allowed: allowed
                        .iter()
                        .map(|a| a.as_str().map_or_else(|| a.to_string(), str::to_string))
                        .collect(),
                });
            }
        }
        Value::Number(n) => {
            let n = n.as_f64().unwrap_or_default();
            if let Some(least) = number("minimum")
                && n < least
            {
                push(Problem::Invalid {
                    shown: Shown::of(value),
                    detail: format!(
                        "{in_body} in body should be greater than or equal to {}",
                        go_float(least)
                    ),
                });
            }
            if let Some(most) = number("maximum")
                && n > most
            {
                push(Problem::Invalid {
                    shown: Shown::of(value),
                    detail: format!(
                        "{in_body} in body should be less than or equal to {}",
                        go_float(most)
                    ),
                });
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// The schema of an object's field `name`: a declared property or the schema of every
/// other key (`additionalProperties`); `None` for a field the schema does not know.
pub fn field_schema<'s>(schema: &'s Value, name: &str) -> Option<&'s Value> {
    schema
        .get("properties")
        .and_then(|p| p.get(name))
        .or_else(|| schema.get("additionalProperties").filter(|s| s.is_object()))
}

/// `x-kubernetes-list-type: map` (items unique by their keys) and `set` (unique items).
fn duplicates(schema: &Value, items: &[Value], at: &FieldPath, out: &mut Vec<FieldError>) {
    let identity = |item: &Value| -> Option<Value> {
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => {
                let keys = schema.get("x-kubernetes-list-map-keys")?.as_array()?;
                let mut id = serde_json::Map::new();
                for key in keys.iter().filter_map(Value::as_str) {
                    if let Some(v) = item.get(key) {
                        id.insert(key.to_string(), v.clone());
                    }
                }
                Some(Value::Object(id))
            }
            Some("set") => Some(item.clone()),
            _ => None,
        }
    };
    let mut seen = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(id) = identity(item) else { return };
        if seen.contains(&id) {
            out.push(FieldError {
                field: at.index(i),
                problem: Problem::Duplicate { value: id },
            });
        } else {
            seen.push(id);
        }
    }
}

/// Paths of the fields the schema does not declare, sorted, as strict decoding lists
/// them (`spec.retry.retryOn`).
pub fn unknown_fields(schema: &Value, value: &Value, at: &FieldPath, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(fields) => {
            let typed_object =
                schema.get("properties").is_some() || schema.get("additionalProperties").is_some();
            for (name, field) in fields {
                match field_schema(schema, name) {
                    Some(s) => unknown_fields(s, field, &at.child(name), out),
                    None if typed_object || schema.get("type").is_some() => {
                        out.push(at.child(name).as_str().to_string())
                    }
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item_schema, item, &at.index(i), out);
                }
            }
        }
        _ => {}
    }
}
