//! What an expression may name, checked on its syntax tree when it is compiled, so
//! that a typo is refused when the route is applied rather than failing on every
//! event: the one variable `event` (and the variables its macros introduce), the
//! fields of `event`, and the functions below. It also records which fields of
//! `event` the expression reads and which headers it names.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, SourceInfo, operators};

use crate::event::Fields;

/// The functions and operators an expression may call: CEL's standard library
/// without timestamps and durations. Macros (`has`, `all`, `exists`, `exists_one`,
/// `map`, `filter`) are expanded before this check.
pub(crate) const FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "string",
    "int",
    "uint",
    "double",
    "bool",
    "bytes",
    "type",
    "dyn",
    "hasValue",
    "orValue",
    "value",
    "or",
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
];

const OPERATORS: &[&str] = &[
    operators::CONDITIONAL,
    operators::LOGICAL_AND,
    operators::LOGICAL_OR,
    operators::LOGICAL_NOT,
    operators::SUBSTRACT,
    operators::ADD,
    operators::MULTIPLY,
    operators::DIVIDE,
    operators::MODULO,
    operators::EQUALS,
    operators::NOT_EQUALS,
    operators::GREATER_EQUALS,
    operators::LESS_EQUALS,
    operators::GREATER,
    operators::LESS,
    operators::NEGATE,
    operators::INDEX,
    operators::OPT_INDEX,
    operators::OPT_SELECT,
    operators::NOT_STRICTLY_FALSE,
    operators::IN,
];

/// Type names an expression may use, as in `type(x) == string`.
const TYPE_NAMES: &[&str] = &[
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

/// What the check learned.
#[derive(Debug, Default)]
pub(crate) struct Uses {
    pub fields: Fields,
    /// Header names the expression spells out, lower-case, each once.
    pub headers: Vec<String>,
    /// The top-level keys of `event.data` it names (`event.data.total`,
    /// `has(event.data.coupon)`, `event.data["id"]`), each once; `None` when it reads
    /// `event.data` as a whole (`size(event.data)`, `event.data[k]`, `event`).
    pub data_keys: Option<Vec<String>>,
}

/// A rule broken, and where.
#[derive(Debug)]
pub(crate) struct Problem {
    /// The node at fault (its start is where the problem is shown).
    pub expr_id: u64,
    /// How to quote it, when its own text would not say much (a field selection's
    /// node is its dot).
    pub text: Option<String>,
    pub message: String,
}

pub(crate) fn check(expr: &IdedExpr) -> Result<Uses, Problem> {
    let mut checker = Checker {
        scope: Vec::new(),
        uses: Uses {
            data_keys: Some(Vec::new()),
            ..Uses::default()
        },
    };
    checker.walk(expr)?;
    Ok(checker.uses)
}

/// `line L, column C (text)` of a node, for messages; `quote` replaces its text.
pub(crate) fn position(info: &SourceInfo, id: u64, quote: Option<&str>) -> String {
    let Some((start, stop)) = info.offset_for(id) else {
        return "the expression".into();
    };
    let source = &info.source;
    let start = (start as usize).min(source.len());
    let before = &source[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let text = quote
        .or_else(|| source.get(start..(stop as usize + 1).min(source.len())))
        .filter(|t| !t.is_empty() && t.len() <= 60 && !t.contains('\n'));
    let at = if line == 1 {
        format!("column {column}")
    } else {
        format!("line {line}, column {column}")
    };
    match text {
        Some(text) => format!("{at} ({text})"),
        None => at,
    }
}

struct Checker<'e> {
    scope: Vec<&'e str>,
    uses: Uses,
}

impl<'e> Checker<'e> {
    fn fail<T>(&self, expr: &IdedExpr, message: impl Into<String>) -> Result<T, Problem> {
        Err(Problem {
            expr_id: expr.id,
            text: None,
            message: message.into(),
        })
    }

    /// Whether `expr` is the variable `event` (not a macro variable of that name).
    fn is_event(&self, expr: &IdedExpr) -> bool {
        matches!(&expr.expr, Expr::Ident(name) if name == "event" && !self.scope.contains(&"event"))
    }

    /// Whether `expr` is `event.headers`.
    fn is_headers(&self, expr: &IdedExpr) -> bool {
        matches!(&expr.expr, Expr::Select(s) if !s.test && s.field == "headers" && self.is_event(&s.operand))
    }

    /// Whether `expr` is `event.data`.
    fn is_data(&self, expr: &IdedExpr) -> bool {
        matches!(&expr.expr, Expr::Select(s) if !s.test && s.field == "data" && self.is_event(&s.operand))
    }

    /// The key `key` of `event.data`, named.
    fn data_key(&mut self, key: &str) {
        self.uses.fields = self.uses.fields.union(Fields::DATA);
        if let Some(keys) = &mut self.uses.data_keys
            && !keys.iter().any(|k| k == key)
        {
            keys.push(key.to_string());
        }
    }

    /// `event.<name>`, read as a whole; `event` is the node of the variable.
    fn field(&mut self, event: &IdedExpr, name: &str) -> Result<(), Problem> {
        match Fields::named(name) {
            Some(field) => {
                self.uses.fields = self.uses.fields.union(field);
                if field == Fields::DATA {
                    self.uses.data_keys = None;
                }
                Ok(())
            }
            None => {
                let names: Vec<&str> = Fields::NAMES.iter().map(|(n, _)| *n).collect();
                Err(Problem {
                    expr_id: event.id,
                    text: Some(format!("event.{name}")),
                    message: format!(
                        "event has no field {name:?}; its fields are {}",
                        names.join(", ")
                    ),
                })
            }
        }
    }

    fn header(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        if !self.uses.headers.contains(&name) {
            self.uses.headers.push(name);
        }
    }

    fn walk(&mut self, expr: &'e IdedExpr) -> Result<(), Problem> {
        match &expr.expr {
            Expr::Literal(_) => Ok(()),
            Expr::Ident(name) => {
                if self.scope.contains(&name.as_str()) || TYPE_NAMES.contains(&name.as_str()) {
                    Ok(())
                } else if name == "event" {
                    // The whole event, not one field of it.
                    self.uses.fields = Fields::ALL;
                    self.uses.data_keys = None;
                    Ok(())
                } else {
                    self.fail(
                        expr,
                        format!(
                            "{name:?} is not defined; the event is the variable `event` (e.g. event.data.{name})"
                        ),
                    )
                }
            }
            Expr::Select(select) => {
                if self.is_event(&select.operand) {
                    return self.field(&select.operand, &select.field);
                }
                if self.is_headers(&select.operand) {
                    self.uses.fields = self.uses.fields.union(Fields::HEADERS);
                    self.header(&select.field);
                    return Ok(());
                }
                if self.is_data(&select.operand) {
                    self.data_key(&select.field);
                    return Ok(());
                }
                self.walk(&select.operand)
            }
            Expr::Call(call) => {
                let literal = |e: &IdedExpr| match &e.expr {
                    Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_string()),
                    _ => None,
                };
                let name = match &call.target {
                    Some(t) if matches!(&t.expr, Expr::Ident(n) if n == "optional" && !self.scope.contains(&"optional")) => {
                        format!("optional.{}", call.func_name)
                    }
                    _ => call.func_name.clone(),
                };
                if !FUNCTIONS.contains(&name.as_str()) && !OPERATORS.contains(&name.as_str()) {
                    let hint = match name.as_str() {
                        "all" | "exists" | "exists_one" | "map" | "filter" => {
                            format!(
                                "{name} takes a variable name and an expression, as in list.{name}(x, x > 0)"
                            )
                        }
                        "has" => "has takes one field selection, as in has(event.data.total)".into(),
                        _ => format!(
                            "function {name} is not available; expressions may call {} and CEL's operators and macros (has, all, exists, exists_one, map, filter)",
                            FUNCTIONS.join(", ")
                        ),
                    };
                    return self.fail(expr, hint);
                }
                // `event["data"]` and `event.headers["x-tenant"]`, `"x" in event.headers`.
                let index = matches!(
                    name.as_str(),
                    operators::INDEX | operators::OPT_INDEX | operators::OPT_SELECT
                );
                if index && call.args.len() == 2 {
                    if self.is_event(&call.args[0]) {
                        return match literal(&call.args[1]) {
                            Some(field) => self.field(&call.args[0], &field),
                            None => {
                                self.uses.fields = Fields::ALL;
                                self.walk(&call.args[1])
                            }
                        };
                    }
                    if self.is_headers(&call.args[0])
                        && let Some(header) = literal(&call.args[1])
                    {
                        self.uses.fields = self.uses.fields.union(Fields::HEADERS);
                        self.header(&header);
                        return Ok(());
                    }
                    if self.is_data(&call.args[0])
                        && let Some(key) = literal(&call.args[1])
                    {
                        self.data_key(&key);
                        return Ok(());
                    }
                }
                if name == operators::IN
                    && call.args.len() == 2
                    && self.is_headers(&call.args[1])
                    && let Some(header) = literal(&call.args[0])
                {
                    self.uses.fields = self.uses.fields.union(Fields::HEADERS);
                    self.header(&header);
                    return Ok(());
                }
                if name == "matches" {
                    let pattern = call.args.last();
                    match pattern.and_then(literal) {
                        Some(pattern) => {
                            if let Err(e) = regex::Regex::new(&pattern) {
                                let last = e.to_string();
                                let last = last.lines().last().unwrap_or_default().to_string();
                                return self.fail(
                                    pattern_expr(call.args.last(), expr),
                                    format!("matches: the pattern is not a valid regular expression: {last}"),
                                );
                            }
                        }
                        None => {
                            return self.fail(
                                expr,
                                "matches needs its pattern as a string literal, so that it is checked when the route is applied",
                            );
                        }
                    }
                }
                if name.starts_with("optional.") {
                    // `optional` is a namespace here, not a variable.
                    return call.args.iter().try_for_each(|a| self.walk(a));
                }
                if let Some(target) = &call.target {
                    self.walk(target)?;
                }
                call.args.iter().try_for_each(|a| self.walk(a))
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range)?;
                self.walk(&c.accu_init)?;
                let added = 2 + usize::from(c.iter_var2.is_some());
                self.scope.push(&c.iter_var);
                if let Some(second) = &c.iter_var2 {
                    self.scope.push(second);
                }
                self.scope.push(&c.accu_var);
                let body = [&c.loop_cond, &c.loop_step, &c.result]
                    .into_iter()
                    .try_for_each(|e| self.walk(e));
                self.scope.truncate(self.scope.len() - added);
                body
            }
            Expr::List(list) => list.elements.iter().try_for_each(|e| self.walk(e)),
            Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
                EntryExpr::MapEntry(e) => {
                    self.walk(&e.key)?;
                    self.walk(&e.value)
                }
                EntryExpr::StructField(_) => self.fail(expr, "struct fields are not supported"),
            }),
            Expr::Struct(s) => self.fail(
                expr,
                format!(
                    "message literals ({} {{...}}) are not supported; build a map instead: {{'key': value}}",
                    s.type_name
                ),
            ),
            Expr::Unspecified => self.fail(expr, "incomplete expression"),
        }
    }
}

fn pattern_expr<'a>(pattern: Option<&'a IdedExpr>, call: &'a IdedExpr) -> &'a IdedExpr {
    pattern.unwrap_or(call)
}
