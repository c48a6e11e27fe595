//! What an expression may name, checked on its syntax tree when it is compiled, so
//! that a typo is refused when the route is applied rather than failing on every
//! event: the one variable `event` (and the variables its macros introduce), the
//! fields of `event`, and the functions below. It also records which fields of
//! `event` the expression reads, which headers it names and which parts of
//! `event.data` ([`Projection`]).

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, SourceInfo, operators};

use crate::event::Fields;
use crate::projection::{Projection, Step};

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
    /// The parts of `event.data` it reads (`event.data.total`,
    /// `has(event.data.coupon)`, `event.data.items.map(i, i.sku)`); whole when it
    /// reads `event.data` as a whole (`size(event.data)`, `event.data[k]`, `event`).
    pub data: Projection,
}

/// Where in `event.data` a value comes from: its steps from `event.data`.
type Path = Vec<Step>;

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
        uses: Uses::default(),
    };
    checker.value(expr)?;
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
    /// The macro variables in scope, innermost last, each with the part of
    /// `event.data` it holds (an element of a list there), if any.
    scope: Vec<(&'e str, Option<Path>)>,
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

    /// The macro variable `name`, innermost first: what of `event.data` it holds.
    fn bound(&self, name: &str) -> Option<&Option<Path>> {
        self.scope
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p)
    }

    /// Whether `expr` is the variable `event` (not a macro variable of that name).
    fn is_event(&self, expr: &IdedExpr) -> bool {
        matches!(&expr.expr, Expr::Ident(name) if name == "event" && self.bound("event").is_none())
    }

    /// Whether `expr` is `event.headers`.
    fn is_headers(&self, expr: &IdedExpr) -> bool {
        matches!(&expr.expr, Expr::Select(s) if !s.test && s.field == "headers" && self.is_event(&s.operand))
    }

    /// `event.<name>`; `event` is the node of the variable. For `event.data`, the
    /// path to it, for the caller to read.
    fn field(&mut self, event: &IdedExpr, name: &str) -> Result<Option<Path>, Problem> {
        match Fields::named(name) {
            Some(field) => {
                self.uses.fields = self.uses.fields.union(field);
                Ok((field == Fields::DATA).then(Path::new))
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

    /// Walks `expr` as a value that may be observed whole: a part of `event.data`
    /// it is, is read whole.
    fn value(&mut self, expr: &'e IdedExpr) -> Result<(), Problem> {
        if let Some(path) = self.walk(expr)? {
            self.uses.data.read(&path, true);
        }
        Ok(())
    }

    /// Checks `expr`; when it is a part of `event.data` (`event.data.items`, a macro
    /// variable over its elements), returns the path to it without reading it: the
    /// caller may select within it.
    fn walk(&mut self, expr: &'e IdedExpr) -> Result<Option<Path>, Problem> {
        match &expr.expr {
            Expr::Literal(_) => Ok(None),
            Expr::Ident(name) => {
                if let Some(path) = self.bound(name) {
                    Ok(path.clone())
                } else if TYPE_NAMES.contains(&name.as_str()) {
                    Ok(None)
                } else if name == "event" {
                    // The whole event, not one field of it.
                    self.uses.fields = Fields::ALL;
                    self.uses.data.read(&[], true);
                    Ok(None)
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
                    let path = self.field(&select.operand, &select.field)?;
                    if select.test {
                        // `has(event.data)` asks the map `event` whether the field
                        // is there (see `rewrite`), not for its value.
                        self.uses.fields = self.uses.fields.union(Fields::EVENT);
                        return Ok(None);
                    }
                    return Ok(path);
                }
                if self.is_headers(&select.operand) {
                    self.uses.fields = self.uses.fields.union(Fields::HEADERS);
                    self.header(&select.field);
                    return Ok(None);
                }
                let Some(mut path) = self.walk(&select.operand)? else {
                    return Ok(None);
                };
                path.push(Step::Key(select.field.clone()));
                if select.test {
                    self.uses.data.read(&path, false);
                    return Ok(None);
                }
                Ok(Some(path))
            }
            Expr::Call(call) => {
                let literal = |e: &IdedExpr| match &e.expr {
                    Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_string()),
                    _ => None,
                };
                let name = match &call.target {
                    Some(t) if matches!(&t.expr, Expr::Ident(n) if n == "optional" && self.bound("optional").is_none()) => {
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
                // `event["data"]`, `event.headers["x-tenant"]`, `"x" in event.headers`,
                // `event.data.items[0]`, `event.data.?coupon`.
                let index = matches!(
                    name.as_str(),
                    operators::INDEX | operators::OPT_INDEX | operators::OPT_SELECT
                );
                if index && call.args.len() == 2 {
                    if self.is_event(&call.args[0]) {
                        if name != operators::INDEX {
                            // `event.?data`: an optional selection on the map `event`.
                            self.uses.fields = self.uses.fields.union(Fields::EVENT);
                        }
                        return match literal(&call.args[1]) {
                            Some(field) => self.field(&call.args[0], &field),
                            None => {
                                self.uses.fields = Fields::ALL;
                                self.uses.data.read(&[], true);
                                self.value(&call.args[1])?;
                                Ok(None)
                            }
                        };
                    }
                    if self.is_headers(&call.args[0])
                        && let Some(header) = literal(&call.args[1])
                    {
                        self.uses.fields = self.uses.fields.union(Fields::HEADERS);
                        self.header(&header);
                        return Ok(None);
                    }
                    if let Some(mut path) = self.walk(&call.args[0])? {
                        let step = match &call.args[1].expr {
                            Expr::Literal(LiteralValue::String(key)) => {
                                Some(Step::Key(key.inner().to_string()))
                            }
                            Expr::Literal(LiteralValue::Int(_) | LiteralValue::UInt(_)) => {
                                Some(Step::Element)
                            }
                            _ => None,
                        };
                        let Some(step) = step else {
                            // A computed index may name any key or element.
                            self.uses.data.read(&path, true);
                            self.value(&call.args[1])?;
                            return Ok(None);
                        };
                        path.push(step);
                        return Ok(Some(path));
                    }
                    self.value(&call.args[1])?;
                    return Ok(None);
                }
                if name == operators::IN
                    && call.args.len() == 2
                    && self.is_headers(&call.args[1])
                    && let Some(header) = literal(&call.args[0])
                {
                    self.uses.fields = self.uses.fields.union(Fields::HEADERS);
                    self.header(&header);
                    return Ok(None);
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
                if !name.starts_with("optional.")
                    && let Some(target) = &call.target
                {
                    // (`optional` is a namespace there, not a variable.)
                    self.value(target)?;
                }
                call.args.iter().try_for_each(|a| self.value(a))?;
                Ok(None)
            }
            Expr::Comprehension(c) => {
                // Over a list in `event.data`, the variable holds one of its elements;
                // with two variables (index or key, and value), all of it is read.
                let element = match self.walk(&c.iter_range)? {
                    Some(path) if c.iter_var2.is_none() => {
                        self.uses.data.read(&path, false);
                        let mut element = path;
                        element.push(Step::Element);
                        Some(element)
                    }
                    Some(path) => {
                        self.uses.data.read(&path, true);
                        None
                    }
                    None => None,
                };
                self.value(&c.accu_init)?;
                let added = 2 + usize::from(c.iter_var2.is_some());
                self.scope.push((&c.iter_var, element));
                if let Some(second) = &c.iter_var2 {
                    self.scope.push((second, None));
                }
                self.scope.push((&c.accu_var, None));
                let body = [&c.loop_cond, &c.loop_step, &c.result]
                    .into_iter()
                    .try_for_each(|e| self.value(e));
                self.scope.truncate(self.scope.len() - added);
                body.map(|()| None)
            }
            Expr::List(list) => {
                list.elements.iter().try_for_each(|e| self.value(e))?;
                Ok(None)
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(e) => {
                            self.value(&e.key)?;
                            self.value(&e.value)?;
                        }
                        EntryExpr::StructField(_) => {
                            return self.fail(expr, "struct fields are not supported");
                        }
                    }
                }
                Ok(None)
            }
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
