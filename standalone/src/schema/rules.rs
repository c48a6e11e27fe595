//! The CRDs' CEL rules (`x-kubernetes-validations`), evaluated where the apiserver
//! evaluates them: on each present value of a field that has rules, with `self` that
//! value typed by the schema (an `integer` field is a CEL int, a `number` a double).
//! Rules that read `oldSelf` judge updates only and are skipped, as on create.

use std::collections::HashMap;
use std::sync::Arc;

use cel::{Context, Env, ExecutionError, Program};
use serde_json::Value;

use super::field_error::{FieldError, FieldPath, Problem, Shown};
use super::library;
use super::structural::field_schema;

/// The compiled rules of one or more schemas, by their text.
pub struct Rules {
    env: Arc<Env>,
    programs: HashMap<String, Result<Program, String>>,
}

impl Rules {
    pub fn of<'a>(schemas: impl IntoIterator<Item = &'a Value>) -> Rules {
        let mut env = Env::stdlib();
        env.add_extension(cel::extensions::strings)
            .expect("the strings extension declares nothing twice");
        let mut rules = Rules {
            env: Arc::new(env),
            programs: HashMap::new(),
        };
        for schema in schemas {
            rules.collect(schema);
        }
        rules
    }

    fn collect(&mut self, schema: &Value) {
        match schema {
            Value::Object(fields) => {
                for rule in rule_list(schema) {
                    let text = rule.text.to_string();
                    if !self.programs.contains_key(&text) {
                        let program = self.env.compile(&text).map_err(|e| e.to_string());
                        self.programs.insert(text, program);
                    }
                }
                fields.values().for_each(|v| self.collect(v));
            }
            Value::Array(items) => items.iter().for_each(|v| self.collect(v)),
            _ => {}
        }
    }

    /// Rules that do not compile here: each is a function or syntax of Kubernetes'
    /// CEL that this module lacks (tested for the shipped CRDs).
    pub fn not_compiled(&self) -> Vec<(String, String)> {
        let mut broken: Vec<_> = self
            .programs
            .iter()
            .filter_map(|(text, p)| p.as_ref().err().map(|e| (text.clone(), e.clone())))
            .collect();
        broken.sort();
        broken
    }

    /// Every rule broken by `value` (of `schema`) or by anything below it.
    pub fn check(&self, schema: &Value, value: &Value, at: &FieldPath, out: &mut Vec<FieldError>) {
        if value.is_null() {
            return;
        }
        for rule in rule_list(schema) {
            if let Some(error) = self.evaluate(&rule, schema, value, at) {
                out.push(error);
            }
        }
        match value {
            Value::Object(fields) => {
                let declared = schema.get("properties");
                for (name, field) in fields {
                    let Some(field_schema) = field_schema(schema, name) else {
                        continue;
                    };
                    // A map's entries are keys, not fields, in the rules' paths.
                    let below = if declared.and_then(|p| p.get(name)).is_some() {
                        at.child(name)
                    } else {
                        at.key(name)
                    };
                    self.check(field_schema, field, &below, out);
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item_schema, item, &at.index(i), out);
                    }
                }
            }
            _ => {}
        }
    }

    fn evaluate(
        &self,
        rule: &Rule,
        schema: &Value,
        value: &Value,
        at: &FieldPath,
    ) -> Option<FieldError> {
        let explained = match rule.message {
            Some(message) => message.trim().to_string(),
            None => rule.text.trim().to_string(),
        };
        let fail = |detail: String| {
            Some(FieldError {
                field: at.join(rule.field_path.unwrap_or_default()),
                problem: Problem::Invalid {
                    shown: Shown::Text(
                        schema
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("object")
                            .to_string(),
                    ),
                    detail,
                },
            })
        };
        let program = match self.programs.get(rule.text)? {
            Ok(program) => program,
            Err(problem) => return fail(format!("compilation failed: {problem}")),
        };
        if program.references().has_variable("oldSelf") {
            return None;
        }
        let mut context = Context::with_env(self.env.clone());
        library::register(&mut context).expect("the library's names are free");
        context.add_variable_from_value("self", typed(schema, value));
        match program.execute(&context) {
            Ok(cel::Value::Bool(true)) => None,
            Ok(cel::Value::Bool(false)) => match rule.message {
                Some(_) => fail(explained),
                None => fail(format!("failed rule: {explained}")),
            },
            Ok(other) => fail(format!(
                "rule did not evaluate to a bool but to {other:?}: {explained}"
            )),
            Err(error) => fail(format!("{} evaluating rule: {explained}", cause(&error))),
        }
    }
}

/// What a rule's evaluation error says, without the interpreter's wrapping.
fn cause(error: &ExecutionError) -> String {
    match error {
        ExecutionError::FunctionError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

struct Rule<'s> {
    text: &'s str,
    message: Option<&'s str>,
    field_path: Option<&'s str>,
}

fn rule_list(schema: &Value) -> impl Iterator<Item = Rule<'_>> {
    schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some(Rule {
                text: r.get("rule")?.as_str()?,
                message: r.get("message").and_then(Value::as_str),
                field_path: r.get("fieldPath").and_then(Value::as_str),
            })
        })
}

/// `value` as the CEL value the apiserver binds to `self`: numbers by the schema's
/// type, objects as maps of their present fields.
fn typed(schema: &Value, value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match schema.get("type").and_then(Value::as_str) {
            Some("number") => cel::Value::Float(n.as_f64().unwrap_or_default()),
            _ => match n.as_i64() {
                Some(i) => cel::Value::Int(i),
                None => cel::Value::Float(n.as_f64().unwrap_or_default()),
            },
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => {
            let item_schema = schema.get("items").unwrap_or(&Value::Null);
            cel::Value::List(Arc::new(
                items.iter().map(|i| typed(item_schema, i)).collect(),
            ))
        }
        Value::Object(fields) => {
            let map: HashMap<String, cel::Value> = fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    let s = field_schema(schema, k).unwrap_or(&Value::Null);
                    (k.clone(), typed(s, v))
                })
                .collect();
            cel::Value::from(map)
        }
    }
}
