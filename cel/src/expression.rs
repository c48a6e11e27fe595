//! An expression compiled once and evaluated per event.

use std::sync::{Arc, LazyLock};

use cel::common::value::CowVal;
use cel::{Env, IdedExpr, Value};

use crate::check::{self, position};
use crate::cost::{self, Sizes};
use crate::describe::describe;
use crate::event::{Activation, Fields};
use crate::projection::Projection;
use crate::rewrite;

/// The longest expression accepted, in bytes (the CRD says the same).
pub const MAX_LENGTH: usize = 4096;
/// How deeply an expression may nest brackets and sub-expressions, for the parser.
const MAX_NESTING: u16 = 32;
/// How deep its syntax tree may be once macros are expanded: the checks, the cost
/// estimate and the interpreter recurse along it on the dispatcher's threads. (A
/// chain like `a + b + c ...` nests one level per operand without brackets.)
pub const MAX_DEPTH: usize = 40;
/// The parser recurses through about ten grammar rules per level of nesting, with
/// large frames when built without optimisation: it runs on a thread of its own with
/// this much stack, so that no expression can overflow the caller's.
const PARSER_STACK: usize = 16 << 20;

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// CEL's standard environment, shared by every expression.
pub(crate) fn env() -> Arc<Env> {
    ENV.clone()
}

/// Why an expression cannot be used. The text names the place in the expression;
/// the caller adds the field it came from.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("the expression is empty")]
    Empty,
    #[error("the expression is {length} bytes long; at most {MAX_LENGTH} are allowed")]
    TooLong { length: usize },
    #[error("syntax error: {0}")]
    Syntax(String),
    #[error("the expression nests {depth} levels deep; at most {MAX_DEPTH} are allowed")]
    TooDeep { depth: usize },
    #[error("{position}: {problem}")]
    Check { position: String, problem: String },
    #[error(
        "too costly: on an event of {} bytes whose lists have {} elements its estimated cost is {estimate:.0}, above the limit of {} (docs/dispatcher.md, \"Cost limit\")",
        cost::REFERENCE.bytes, cost::REFERENCE.items, cost::LIMIT
    )]
    TooCostly { estimate: f64 },
}

/// Why an expression could not be evaluated on one event.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{message}")]
    Failed { message: String },
    #[error(
        "not evaluated: its estimated cost on this event ({} bytes, {} elements in its longest list or object) is {estimate:.0}, above the limit of {}",
        sizes.bytes, sizes.items, cost::LIMIT
    )]
    TooCostly { estimate: f64, sizes: Sizes },
    #[error("it yields a {got}, but {wanted}")]
    WrongType { got: String, wanted: &'static str },
}

/// The depth of `expr`'s tree, counted no further than `limit`: the recursion
/// stops there, however deep the tree.
fn depth(expr: &IdedExpr, limit: usize) -> usize {
    use cel::common::ast::{EntryExpr, Expr};
    if limit == 0 {
        return 1;
    }
    let below = |e: &IdedExpr| depth(e, limit - 1);
    let deepest = match &expr.expr {
        Expr::Call(call) => call
            .target
            .iter()
            .map(|t| below(t))
            .chain(call.args.iter().map(below))
            .max(),
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .map(below)
        .max(),
        Expr::List(list) => list.elements.iter().map(below).max(),
        Expr::Map(map) => map
            .entries
            .iter()
            .flat_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(e) => vec![below(&e.key), below(&e.value)],
                EntryExpr::StructField(f) => vec![below(&f.value)],
            })
            .max(),
        Expr::Struct(s) => s
            .entries
            .iter()
            .map(|entry| match &entry.expr {
                EntryExpr::MapEntry(e) => below(&e.key).max(below(&e.value)),
                EntryExpr::StructField(f) => below(&f.value),
            })
            .max(),
        Expr::Select(select) => Some(below(&select.operand)),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => None,
    };
    1 + deepest.unwrap_or(0)
}

/// One checked expression.
#[derive(Debug)]
pub struct Expression {
    source: String,
    /// As written: what the checks and the cost estimate read.
    pub(crate) ast: IdedExpr,
    /// What is evaluated: `ast` with its field selections as index operations
    /// (see [`crate::rewrite`]).
    evaluated: IdedExpr,
    fields: Fields,
    data: Projection,
    headers: Vec<String>,
    /// Events up to these sizes are run without estimating the cost on each.
    always_affordable: Sizes,
}

impl Expression {
    /// Parses and checks `source` (see [`crate::check`] and [`crate::cost`]).
    pub fn compile(source: &str) -> Result<Expression, CompileError> {
        if source.trim().is_empty() {
            return Err(CompileError::Empty);
        }
        if source.len() > MAX_LENGTH {
            return Err(CompileError::TooLong {
                length: source.len(),
            });
        }
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("cel-compile".into())
                .stack_size(PARSER_STACK)
                .spawn_scoped(scope, || Expression::compile_here(source))
                .map_err(|e| CompileError::Syntax(format!("cannot start the parser: {e}")))?
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// [`Expression::compile`] on the current thread. A refused syntax tree is also
    /// dropped here: dropping recurses along it too.
    fn compile_here(source: &str) -> Result<Expression, CompileError> {
        let (ast, info) = ENV
            .parser()
            .max_recursion_depth(MAX_NESTING)
            .parse_with_source_info(source)
            .map_err(|errors| {
                if errors.errors.iter().any(|e| e.msg.contains("Recursion limit")) {
                    return CompileError::Syntax(format!(
                        "the expression nests brackets or sub-expressions more than {MAX_NESTING} levels deep"
                    ));
                }
                // The first few: later ones mostly follow from the first.
                let each: Vec<String> = errors
                    .errors
                    .iter()
                    .take(3)
                    .map(|e| {
                        let at = if e.pos.0 <= 1 {
                            format!("column {}", e.pos.1)
                        } else {
                            format!("line {}, column {}", e.pos.0, e.pos.1)
                        };
                        format!("{at}: {}", e.msg)
                    })
                    .collect();
                CompileError::Syntax(each.join("; "))
            })?;
        let depth = depth(&ast, MAX_DEPTH + 1);
        if depth > MAX_DEPTH {
            return Err(CompileError::TooDeep { depth });
        }
        let uses = check::check(&ast).map_err(|problem| CompileError::Check {
            position: position(&info, problem.expr_id, problem.text.as_deref()),
            problem: problem.message,
        })?;
        let estimate = cost::estimate(&ast, cost::REFERENCE, None);
        if estimate > cost::LIMIT {
            return Err(CompileError::TooCostly { estimate });
        }
        Ok(Expression {
            source: source.to_string(),
            always_affordable: cost::within_limit_up_to(&ast),
            evaluated: rewrite::index_fields(ast.clone()),
            ast,
            fields: uses.fields,
            data: uses.data,
            headers: uses.headers,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The fields of `event` it reads: what an [`Activation`] must hold for it.
    pub fn fields(&self) -> Fields {
        self.fields
    }

    /// The parts of `event.data` it reads: an [`Activation`] built with
    /// [`Activation::with_projection`] may leave the rest of a JSON body out.
    pub fn data(&self) -> &Projection {
        &self.data
    }

    /// Header names it spells out (`event.headers["x-tenant"]`), lower-case: the
    /// gateway stores these with each event of the route.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// Its estimated cost on an event of these sizes (see [`crate::cost`]).
    pub fn estimated_cost(&self, event: &Activation) -> f64 {
        cost::estimate(&self.ast, event.sizes, Some(event))
    }

    /// Runs on `event`, unless its estimated cost there is above the limit.
    pub fn evaluate<'e, 'v>(
        &'e self,
        event: &'e Activation<'v>,
    ) -> Result<CowVal<'e, 'v>, EvalError> {
        if !event.sizes.within(self.always_affordable) {
            let estimate = self.estimated_cost(event);
            if estimate > cost::LIMIT {
                return Err(EvalError::TooCostly {
                    estimate,
                    sizes: event.sizes,
                });
            }
        }
        Value::resolve_val(&self.evaluated, &event.context).map_err(|error| {
            let mut message = describe(&error);
            if let Some(problem) = &event.data_problem
                && self.fields.contains(Fields::DATA)
            {
                message.push_str(&format!("; event.data is null: {problem}"));
            }
            EvalError::Failed { message }
        })
    }
}
