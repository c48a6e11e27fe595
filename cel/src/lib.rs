//! CEL expressions over Fanout events: a route target's `filter.cel` and its
//! `transform` (docs/dispatcher.md, "Filters and transforms").
//!
//! - [`Expression::compile`] parses an expression and checks it once, when a route is
//!   rendered (so a wrong one is refused when applied, naming the field) and again
//!   when a dispatcher starts: the variables and functions it names, a `matches`
//!   pattern, and its estimated cost on a small event.
//! - [`Activation`] is one event as the `event` variable, built once per event and
//!   shared by every expression of a target (its body parsed as JSON at most once).
//! - [`Expression::evaluate`] first estimates the expression's cost on that event
//!   ([`cost`]) and refuses to run it above [`cost::LIMIT`]; then runs it, with its
//!   field selections read as index operations (`rewrite`).
//! - [`output`] turns a result into what a filter or a transform needs.
//!
//! Errors never quote event data: they name types, fields and functions only, since
//! they end up in dead letters, logs and status.

mod check;
pub mod cost;
mod describe;
mod event;
mod expression;
mod json;
pub mod output;
mod projection;
mod rewrite;

pub use event::{Activation, EventParts, Fields};
pub use expression::{CompileError, EvalError, Expression, MAX_DEPTH, MAX_LENGTH};
pub use projection::Projection;
