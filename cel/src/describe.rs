//! An evaluation error in words that name types, fields and functions but never
//! quote a value: the text goes into dead letters, logs and status, and event data
//! must not travel there through an error message.

use cel::ExecutionError;
use cel::Value;

pub(crate) fn describe(error: &ExecutionError) -> String {
    use ExecutionError as E;
    match error {
        E::NoSuchKey(key) => format!(
            "no such key: {key} (use has(...) or the optional syntax .?{key} for fields that may be missing)"
        ),
        E::UndeclaredReference(name) => format!("{name} is not defined"),
        // `event.data.total.x` on a number, or `event.data.items.sku` on a list: read
        // the same whether the expression selected a field or indexed with a string
        // (`rewrite` evaluates the one as the other).
        E::NoSuchOverload(overload)
            if matches!(overload.function(), "_._" | "_[_]")
                && overload
                    .argument_types()
                    .get(1)
                    .is_some_and(|t| t == "string") =>
        {
            format!(
                "a {} has no fields: selecting a field or a string key needs a map",
                overload.argument_types()[0]
            )
        }
        E::NoSuchOverload(overload) => overload.to_string(),
        E::UnexpectedType { got, want } => format!("expected a {want}, got a {got}"),
        E::InvalidArgumentCount { expected, actual } => {
            format!("expected {expected} arguments, got {actual}")
        }
        E::UnsupportedBinaryOperator(op, left, right) => format!(
            "operator {op} is not defined for {} and {} (numbers must be of one type: write 2.0, not 2, next to a double, or convert with double(...) or int(...))",
            type_name(left),
            type_name(right)
        ),
        E::ValuesNotComparable(left, right) => format!(
            "a {} cannot be compared with a {}",
            type_name(left),
            type_name(right)
        ),
        E::UnsupportedKeyType(key) => format!("a {} cannot be a map key", type_name(key)),
        E::UnsupportedIndex(index, target) => format!(
            "a {} cannot be indexed with a {}",
            type_name(target),
            type_name(index)
        ),
        E::UnsupportedTargetType { target } => {
            format!("unsupported argument of type {}", type_name(target))
        }
        E::NotSupportedAsMethod { method, target } => {
            format!("{method} cannot be called on a {}", type_name(target))
        }
        E::DivisionByZero(_) => "division by zero".into(),
        E::RemainderByZero(_) => "remainder by zero".into(),
        E::Overflow(op, _, _) => format!("{op} overflowed"),
        E::IndexOutOfBounds(_) => "list index out of bounds".into(),
        E::DuplicateKey(_) => "a map literal repeats a key".into(),
        // The function's own message: regex and conversion errors. Conversions quote
        // the value they could not convert, so only the function is named for them.
        E::FunctionError { function, message } if function == "matches" => {
            format!("matches: {}", message.lines().last().unwrap_or_default())
        }
        E::FunctionError { function, .. } => format!("{function} failed on its argument"),
        E::MissingArgumentOrTarget => "missing argument or target".into(),
        other => {
            // Variants added to the crate later: their names only.
            let debug = format!("{other:?}");
            debug
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or("evaluation error")
                .to_string()
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::List(_) => "list",
        Value::Map(_) => "map",
        Value::Function(..) => "function",
        Value::Int(_) => "int",
        Value::UInt(_) => "uint",
        Value::Float(_) => "double",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::Bool(_) => "bool",
        Value::Null => "null",
        _ => "value",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn no_value_is_quoted() {
        let secret = || Value::String(Arc::new("secret-card-number".into()));
        for error in [
            ExecutionError::UnsupportedBinaryOperator("add", secret(), Value::Int(1)),
            ExecutionError::ValuesNotComparable(secret(), Value::Int(1)),
            ExecutionError::IndexOutOfBounds(secret()),
            ExecutionError::function_error("int", "cannot parse secret-card-number"),
        ] {
            let text = describe(&error);
            assert!(!text.contains("secret"), "{text}");
        }
        assert_eq!(
            describe(&ExecutionError::UnsupportedBinaryOperator(
                "add",
                Value::Float(1.5),
                Value::Int(1)
            ))
            .split(" (")
            .next()
            .unwrap(),
            "operator add is not defined for double and int"
        );
    }
}
