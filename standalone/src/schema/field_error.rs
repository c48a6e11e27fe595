//! A refusal worded the way the apiserver words it (`k8s.io/apimachinery`'s
//! `field.Error`), so that standalone and `kubectl apply` print the same line for the
//! same mistake.

use std::fmt;

use serde_json::Value;

/// Where in an object a problem is: `spec.targets[0].name`. Empty is the object itself
/// (the apiserver prints `<nil>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root() -> FieldPath {
        FieldPath::default()
    }

    pub fn child(&self, name: &str) -> FieldPath {
        if self.0.is_empty() {
            FieldPath(name.to_string())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    pub fn index(&self, i: usize) -> FieldPath {
        FieldPath(format!("{}[{i}]", self.0))
    }

    /// A map entry, as CEL rules name it (`spec.headers[x-key]`).
    pub fn key(&self, key: &str) -> FieldPath {
        FieldPath(format!("{}[{key}]", self.0))
    }

    /// A rule's `fieldPath` (`.auth.tls`) below this one.
    pub fn join(&self, relative: &str) -> FieldPath {
        let relative = relative.trim_start_matches('.');
        if relative.is_empty() {
            self.clone()
        } else {
            self.child(relative)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("<nil>")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// What kind of problem; some stop the CEL rules from running, as in the apiserver.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    Required {
        detail: String,
    },
    /// A value that breaks a constraint; `shown` is how the apiserver prints it.
    Invalid {
        shown: Shown,
        detail: String,
    },
    /// The wrong JSON type for the schema: blocks the rules.
    WrongType {
        actual: &'static str,
        detail: String,
    },
    NotSupported {
        value: String,
        allowed: Vec<String>,
    },
    TooLong {
        most: String,
    },
    TooMany {
        count: usize,
        most: String,
    },
    Duplicate {
        value: Value,
    },
}

impl Problem {
    /// Problems after which the apiserver does not evaluate the CEL rules (they could
    /// not be judged on a value of the wrong shape).
    pub fn blocks_rules(&self) -> bool {
        matches!(
            self,
            Problem::Required { .. }
                | Problem::WrongType { .. }
                | Problem::NotSupported { .. }
                | Problem::TooLong { .. }
                | Problem::TooMany { .. }
        )
    }
}

/// A value as `field.Invalid` prints it: strings quoted, numbers and bools as Go
/// prints them.
#[derive(Clone, Debug, PartialEq)]
pub enum Shown {
    Null,
    Text(String),
    Plain(String),
}

impl Shown {
    pub fn of(value: &Value) -> Shown {
        match value {
            Value::Null => Shown::Null,
            Value::String(s) => Shown::Text(s.clone()),
            Value::Number(n) => Shown::Plain(go_number(n)),
            Value::Bool(b) => Shown::Plain(b.to_string()),
            other => Shown::Plain(other.to_string()),
        }
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shown::Null => f.write_str("null"),
            Shown::Text(s) => write!(f, "{s:?}"),
            Shown::Plain(n) => f.write_str(n),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub field: FieldPath,
    pub problem: Problem,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.field)?;
        match &self.problem {
            Problem::Required { detail } if detail.is_empty() => f.write_str("Required value"),
            Problem::Required { detail } => write!(f, "Required value: {detail}"),
            Problem::Invalid { shown, detail } => write!(f, "Invalid value: {shown}: {detail}"),
            Problem::WrongType { actual, detail } => {
                write!(f, "Invalid value: {actual:?}: {detail}")
            }
            Problem::NotSupported { value, allowed } => {
                let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                write!(
                    f,
                    "Unsupported value: {value:?}: supported values: {}",
                    allowed.join(", ")
                )
            }
            Problem::TooLong { most } => write!(f, "Too long: may not be more than {most} bytes"),
            Problem::TooMany { count, most } => {
                write!(f, "Too many: {count}: must have at most {most} items")
            }
            Problem::Duplicate { value } => write!(f, "Duplicate value: {value}"),
        }
    }
}

/// A JSON number as Go's `%v` prints the `int64` or `float64` it decodes to.
pub fn go_number(n: &serde_json::Number) -> String {
    match n.as_i64() {
        Some(i) => i.to_string(),
        None => go_float(n.as_f64().unwrap_or_default()),
    }
}

/// `strconv.FormatFloat(f, 'g', -1, 64)`: the shortest digits, in exponent form when
/// the exponent is below -4 or at least 6 (Go's `%v` for a float64).
pub fn go_float(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    // Rust's `{:e}` gives the shortest round-tripping digits: "1.5e6", "-2e-7".
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or_default();
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    let plain = format!("{f}");
    plain.strip_suffix(".0").unwrap_or(&plain).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_go_prints_them() {
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(0.5), "0.5");
        assert_eq!(go_float(1_000_000.0), "1e+06");
        assert_eq!(go_float(123_456.0), "123456");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(1.1), "1.1");
    }

    #[test]
    fn errors_read_like_the_apiservers() {
        let at = FieldPath::root().child("spec").child("timeout");
        let e = FieldError {
            field: at.clone(),
            problem: Problem::Invalid {
                shown: Shown::Text("string".into()),
                detail: "timeout must be greater than 0s".into(),
            },
        };
        assert_eq!(
            e.to_string(),
            "spec.timeout: Invalid value: \"string\": timeout must be greater than 0s"
        );
        let e = FieldError {
            field: FieldPath::root(),
            problem: Problem::Invalid {
                shown: Shown::Null,
                detail: "x".into(),
            },
        };
        assert_eq!(e.to_string(), "<nil>: Invalid value: null: x");
        assert_eq!(at.index(2).to_string(), "spec.timeout[2]");
    }
}
