//! How much running an expression on an event may cost, estimated before it runs.
//!
//! The CEL interpreter has no cost limit of its own, and an expression over a large
//! event can do a lot of work: a macro (`all`, `exists`, `exists_one`, `map`,
//! `filter`) runs its body once per element, macros nest, and `+` copies strings and
//! lists. So the cost is estimated from the expression and the event's sizes (its
//! bytes, and its longest list or object), and an expression above [`LIMIT`] is not
//! run on that event.
//!
//! Units: every step of the expression costs 1, and every 64 bytes it may copy or
//! scan cost 1 more. A macro costs its range plus, per element it iterates over, its
//! body. A path into the event spelled out in the expression (`event.data.items`,
//! `event.headers['x-tenant']`) is measured in the event itself; other values are
//! bounded by what they come from: an element of a list at the list's average
//! element size (so a body that scans each element costs the whole list once, not
//! once per element), anything else at the whole event's sizes. `matches` pays for
//! compiling its pattern on each call.
//!
//! The same estimate with [`REFERENCE`] sizes (and no event to measure paths in) is
//! checked when an expression is compiled, so one that is too costly for an ordinary
//! event is refused when applied.

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use cel::common::types::{CelBytes, CelList, CelMap, CelMapKey, CelString, Kind};
use cel::common::value::Val;

use crate::event::Activation;

/// The most an expression may cost on one event: at most about 15 ms of one core of
/// the machine the benchmarks run on (docs/dispatcher.md, "Cost limit").
pub const LIMIT: f64 = 50_000.0;

/// An ordinary event, for the check when compiling: 4 KiB, lists of up to 32.
pub const REFERENCE: Sizes = Sizes {
    bytes: 4096,
    items: 32,
};

/// Bytes per cost unit when copying or scanning.
const BYTES_PER_UNIT: f64 = 64.0;
/// What compiling a `matches` pattern costs, on top of its length.
const REGEX_COMPILE: f64 = 100.0;

/// The sizes of one event that bound what an expression can meet in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// The body's and headers' bytes.
    pub bytes: u64,
    /// Elements of its longest list or object (data, headers or CloudEvents
    /// attributes).
    pub items: u64,
}

/// The estimated cost of `expr` on an event of `sizes`; `event`, when given, is the
/// event, to measure the paths the expression spells out.
pub fn estimate(expr: &IdedExpr, sizes: Sizes, event: Option<&Activation>) -> f64 {
    let whole = Est {
        cost: 1.0,
        bytes: sizes.bytes as f64,
        items: sizes.items as f64,
    };
    Estimator {
        scope: Vec::new(),
        whole,
        event,
        appends: false,
    }
    .walk(expr)
    .cost
}

/// The largest event on which `expr` stays within [`LIMIT`] whatever the event holds:
/// an event no larger (in bytes and in elements of its longest list or object) needs
/// no estimate of its own before it runs, which saves the walk on every event.
///
/// The estimate without an event bounds every path at the whole event's sizes, and
/// grows with them. Measured in an event, a path can count more bytes than the event
/// has (each scalar counts 8, however short its text): so the bound is checked at 8
/// times the bytes, and a list or object has at most as many elements as bytes.
pub fn within_limit_up_to(expr: &IdedExpr) -> Sizes {
    const RUNGS: [u64; 12] = [
        1 << 20,
        1 << 18,
        1 << 16,
        1 << 14,
        1 << 12,
        1 << 11,
        1 << 10,
        1 << 9,
        1 << 8,
        1 << 7,
        1 << 6,
        1 << 5,
    ];
    RUNGS
        .into_iter()
        .find(|&bytes| {
            let worst = Sizes {
                bytes: 8 * bytes,
                items: bytes,
            };
            estimate(expr, worst, None) <= LIMIT
        })
        .map_or(Sizes { bytes: 0, items: 0 }, |bytes| Sizes {
            bytes,
            items: bytes,
        })
}

impl Sizes {
    /// Whether an event of these sizes is no larger than `bound` in either.
    pub fn within(self, bound: Sizes) -> bool {
        self.bytes <= bound.bytes && self.items <= bound.items
    }
}

/// One step of a path into the event.
enum Step<'e> {
    Field(&'e str),
    Index(i64),
}

/// The value at `path` in `event`, if it is there, measured.
fn measure_at(event: &Activation, path: &[Step]) -> Option<Est> {
    let (Step::Field(field), path) = path.split_first()? else {
        return None;
    };
    let root = event.field(field)?;
    lookup(root.as_ref(), path).map(measure)
}

/// The value at `path` in `root`, if it is there.
fn lookup<'b, 'v>(root: &'b (dyn Val + 'v), path: &[Step]) -> Option<&'b (dyn Val + 'v)> {
    let mut value = root;
    for step in path {
        value = match step {
            Step::Field(name) => value
                .downcast_ref::<CelMap>()?
                .inner()
                .get(&CelMapKey::from(name.to_string()))?
                .as_ref(),
            Step::Index(i) => value
                .downcast_ref::<CelList>()?
                .inner()
                .get(usize::try_from(*i).ok()?)?
                .as_ref(),
        };
    }
    Some(value)
}

/// A value's size as the estimate counts it: bytes of its text, elements of its
/// longest list or map.
fn measure(value: &dyn Val) -> Est {
    let mut est = Est {
        cost: 1.0,
        bytes: 0.0,
        items: 0.0,
    };
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value.get_type().kind() {
            Kind::String => {
                est.bytes += value
                    .downcast_ref::<CelString>()
                    .map_or(0, |s| s.inner().len()) as f64
            }
            Kind::Bytes => {
                est.bytes += value
                    .downcast_ref::<CelBytes>()
                    .map_or(0, |b| b.inner().len()) as f64
            }
            Kind::List => {
                if let Some(list) = value.downcast_ref::<CelList>() {
                    est.items = est.items.max(list.inner().len() as f64);
                    est.bytes += list.inner().len() as f64;
                    pending.extend(list.inner().iter().map(|v| v.as_ref()));
                }
            }
            Kind::Map => {
                if let Some(map) = value.downcast_ref::<CelMap>() {
                    est.items = est.items.max(map.inner().len() as f64);
                    for (key, v) in map.inner() {
                        est.bytes += match key {
                            CelMapKey::String(s) => s.inner().len() as f64,
                            _ => 8.0,
                        };
                        pending.push(v.as_ref());
                    }
                }
            }
            _ => est.bytes += 8.0,
        }
    }
    est
}

/// What is known of one value: what computing it costs, and at most how large it
/// is (bytes) and how many elements it has.
#[derive(Clone, Copy, Debug, Default)]
struct Est {
    cost: f64,
    bytes: f64,
    items: f64,
}

impl Est {
    fn scalar(cost: f64) -> Est {
        Est {
            cost,
            bytes: 8.0,
            items: 0.0,
        }
    }
}

struct Estimator<'e, 'v, 'a> {
    /// Macro variables in scope, innermost last; the accumulator is marked.
    scope: Vec<(&'e str, Est, bool)>,
    /// The whole event's sizes: what any value taken from it is bounded by.
    whole: Est,
    /// The event itself, when estimating for one.
    event: Option<&'v Activation<'a>>,
    /// Set when a step appends to its accumulator (`map`, `filter`).
    appends: bool,
}

impl<'e> Estimator<'e, '_, '_> {
    /// The path `expr` spells into the event (`event.data.items[0]`), if it is one.
    fn path(&self, expr: &'e IdedExpr) -> Option<Vec<Step<'e>>> {
        let mut steps = Vec::new();
        let mut expr = expr;
        loop {
            match &expr.expr {
                Expr::Ident(name) if name == "event" && self.lookup(name).is_none() => {
                    steps.reverse();
                    return Some(steps);
                }
                Expr::Select(select) if !select.test => {
                    steps.push(Step::Field(&select.field));
                    expr = &select.operand;
                }
                Expr::Call(call)
                    if call.func_name == operators::INDEX
                        && call.target.is_none()
                        && call.args.len() == 2 =>
                {
                    match &call.args[1].expr {
                        Expr::Literal(LiteralValue::String(s)) => {
                            steps.push(Step::Field(s.inner()))
                        }
                        Expr::Literal(LiteralValue::Int(i)) => steps.push(Step::Index(*i.inner())),
                        _ => return None,
                    }
                    expr = &call.args[0];
                }
                _ => return None,
            }
        }
    }

    /// A path into the event measured in the event; `None` without an event.
    fn measured(&self, expr: &'e IdedExpr) -> Option<Est> {
        let event = self.event?;
        let path = self.path(expr)?;
        let cost = 1.0 + path.len() as f64;
        // A path that is not there fails at once when evaluated.
        Some(measure_at(event, &path).map_or(Est::scalar(cost), |est| Est { cost, ..est }))
    }

    fn lookup(&self, name: &str) -> Option<(Est, bool)> {
        self.scope
            .iter()
            .rev()
            .find(|(n, _, _)| *n == name)
            .map(|(_, est, accu)| (*est, *accu))
    }

    fn is_accumulator(&self, expr: &IdedExpr) -> bool {
        matches!(&expr.expr, Expr::Ident(name) if self.lookup(name).is_some_and(|(_, accu)| accu))
    }

    fn walk(&mut self, expr: &'e IdedExpr) -> Est {
        if let Some(measured) = self.measured(expr) {
            return measured;
        }
        match &expr.expr {
            Expr::Literal(literal) => {
                let bytes = match literal {
                    LiteralValue::String(s) => s.inner().len() as f64,
                    LiteralValue::Bytes(b) => b.inner().len() as f64,
                    _ => 8.0,
                };
                Est {
                    cost: 1.0,
                    bytes,
                    items: 0.0,
                }
            }
            Expr::Ident(name) => match self.lookup(name) {
                Some((est, _)) => Est { cost: 1.0, ..est },
                None if name == "event" => self.whole,
                None => Est::scalar(1.0),
            },
            Expr::Select(select) => {
                let operand = self.walk(&select.operand);
                if select.test {
                    Est::scalar(operand.cost + 1.0)
                } else {
                    // A part is no larger than the whole.
                    Est {
                        cost: operand.cost + 1.0,
                        ..operand
                    }
                }
            }
            Expr::List(list) => {
                let mut out = Est {
                    cost: 1.0,
                    bytes: list.elements.len() as f64,
                    items: list.elements.len() as f64,
                };
                for element in &list.elements {
                    let e = self.walk(element);
                    out.cost += e.cost;
                    out.bytes += e.bytes;
                }
                out
            }
            Expr::Map(map) => {
                let mut out = Est {
                    cost: 1.0,
                    bytes: 0.0,
                    items: map.entries.len() as f64,
                };
                for entry in &map.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(e) = &entry.expr {
                        for part in [&e.key, &e.value] {
                            let p = self.walk(part);
                            out.cost += p.cost;
                            out.bytes += p.bytes;
                        }
                    }
                }
                out
            }
            Expr::Struct(_) | Expr::Unspecified => Est::scalar(1.0),
            Expr::Call(call) => {
                let accumulating = call.func_name == operators::ADD
                    && call.target.is_none()
                    && call.args.iter().any(|a| self.is_accumulator(a));
                let mut args: Vec<Est> = Vec::with_capacity(call.args.len() + 1);
                for part in call.target.iter().map(|t| &**t).chain(&call.args) {
                    args.push(self.walk(part));
                }
                let cost: f64 = 1.0 + args.iter().map(|a| a.cost).sum::<f64>();
                let bytes: f64 = args.iter().map(|a| a.bytes).sum();
                let first = args.first().copied().unwrap_or_default();
                match call.func_name.as_str() {
                    operators::CONDITIONAL if args.len() == 3 => Est {
                        cost: 1.0 + args[0].cost + args[1].cost.max(args[2].cost),
                        bytes: args[1].bytes.max(args[2].bytes),
                        items: args[1].items.max(args[2].items),
                    },
                    operators::LOGICAL_AND | operators::LOGICAL_OR => Est::scalar(cost),
                    // `map` and `filter` append to their accumulator in place: each
                    // step costs what it appends, not the accumulator.
                    operators::ADD if accumulating => {
                        self.appends = true;
                        let added = call
                            .args
                            .iter()
                            .zip(&args)
                            .find(|(a, _)| !self.is_accumulator(a))
                            .map(|(_, e)| *e)
                            .unwrap_or_default();
                        Est {
                            cost: 1.0 + added.cost + added.bytes / BYTES_PER_UNIT,
                            bytes,
                            items: args.iter().map(|a| a.items).sum(),
                        }
                    }
                    operators::ADD => Est {
                        cost: cost + bytes / BYTES_PER_UNIT,
                        bytes,
                        items: args.iter().map(|a| a.items).sum(),
                    },
                    operators::INDEX | operators::OPT_INDEX | operators::OPT_SELECT => {
                        Est { cost, ..first }
                    }
                    operators::SUBSTRACT
                    | operators::MULTIPLY
                    | operators::DIVIDE
                    | operators::MODULO
                    | operators::NEGATE => Est::scalar(cost),
                    "matches" => {
                        let pattern = args.last().map_or(0.0, |a| a.bytes);
                        Est::scalar(cost + REGEX_COMPILE + pattern + bytes / BYTES_PER_UNIT)
                    }
                    // A comparison stops at the end of the smaller side.
                    operators::EQUALS
                    | operators::NOT_EQUALS
                    | operators::LESS
                    | operators::LESS_EQUALS
                    | operators::GREATER
                    | operators::GREATER_EQUALS => {
                        let smaller = args.iter().map(|a| a.bytes).fold(f64::INFINITY, f64::min);
                        Est::scalar(cost + smaller / BYTES_PER_UNIT)
                    }
                    "startsWith" | "endsWith" => {
                        let prefix = args.last().map_or(0.0, |a| a.bytes);
                        Est::scalar(cost + prefix / BYTES_PER_UNIT)
                    }
                    operators::LOGICAL_NOT | operators::NOT_STRICTLY_FALSE | "hasValue" => {
                        Est::scalar(cost)
                    }
                    // `in`, size, contains: scan what they look in.
                    operators::IN | "size" | "contains" => {
                        Est::scalar(cost + bytes / BYTES_PER_UNIT)
                    }
                    // Conversions and optionals: about as large as what they take
                    // (a number's text is at most 32 bytes).
                    _ => Est {
                        cost: cost + bytes / BYTES_PER_UNIT,
                        bytes: bytes.max(32.0),
                        items: args.iter().map(|a| a.items).fold(0.0, f64::max),
                    },
                }
            }
            Expr::Comprehension(c) => {
                let range = self.walk(&c.iter_range);
                let init = self.walk(&c.accu_init);
                let n = range.items;
                // Elements at their average size: summed over the loop, that is
                // the range's size, which is what scanning each of them costs.
                let each_bytes = range.bytes / n.max(1.0);
                let element = Est {
                    cost: 1.0,
                    bytes: each_bytes,
                    items: range.items.min(each_bytes),
                };
                let vars = 1 + usize::from(c.iter_var2.is_some());
                self.scope.push((&c.iter_var, element, false));
                if let Some(second) = &c.iter_var2 {
                    self.scope.push((second, element, false));
                }
                // What one step makes of the accumulator: appended to it (`map`,
                // `filter`) it grows by that with each element, otherwise (`all`,
                // `exists`) it is replaced. Then the step's cost with the
                // accumulator at its largest.
                let outer_appends = std::mem::replace(&mut self.appends, false);
                self.scope.push((&c.accu_var, Est::default(), true));
                let growth = self.walk(&c.loop_step);
                self.scope.pop();
                let accumulator = if self.appends {
                    Est {
                        cost: 1.0,
                        bytes: init.bytes + n * growth.bytes,
                        items: init.items + n * growth.items.max(1.0),
                    }
                } else {
                    Est {
                        cost: 1.0,
                        bytes: init.bytes.max(growth.bytes),
                        items: init.items.max(growth.items),
                    }
                };
                self.appends = outer_appends;
                self.scope.push((&c.accu_var, accumulator, true));
                let step = self.walk(&c.loop_step);
                let condition = self.walk(&c.loop_cond);
                let result = self.walk(&c.result);
                self.scope.truncate(self.scope.len() - vars - 1);
                Est {
                    cost: range.cost + init.cost + n * (step.cost + condition.cost) + result.cost,
                    bytes: result.bytes,
                    items: result.items,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventParts;

    fn parse(source: &str) -> IdedExpr {
        crate::expression::env()
            .parser()
            .parse_with_source_info(source)
            .unwrap()
            .0
    }

    fn cost(source: &str, sizes: Sizes) -> f64 {
        estimate(&parse(source), sizes, None)
    }

    const SMALL: Sizes = Sizes {
        bytes: 1_000,
        items: 10,
    };
    const MEDIUM: Sizes = Sizes {
        bytes: 100_000,
        items: 1_000,
    };
    const LARGE: Sizes = Sizes {
        bytes: 1_000_000,
        items: 10_000,
    };

    #[test]
    fn a_plain_condition_costs_a_few_steps_whatever_the_event() {
        let source = "event.data.total > 100 && event.type == 'order.placed'";
        assert!(cost(source, SMALL) < 50.0, "{}", cost(source, SMALL));
        assert!(cost(source, LARGE) < 50.0, "{}", cost(source, LARGE));
    }

    #[test]
    fn one_macro_over_the_event_grows_linearly_with_its_list() {
        let source = "event.data.items.exists(i, i.sku == 'x')";
        let medium = cost(source, MEDIUM);
        let large = cost(source, LARGE);
        assert!(medium < LIMIT, "{medium}");
        assert!((9.0..11.0).contains(&(large / medium)), "{medium} {large}");
    }

    #[test]
    fn map_appends_in_place_and_costs_what_it_appends() {
        // Linear, not quadratic in the accumulator.
        let source = "event.data.items.map(i, i.price * 2)";
        let medium = cost(source, MEDIUM);
        let large = cost(source, LARGE);
        assert!(medium < LIMIT, "{medium}");
        assert!((9.0..11.0).contains(&(large / medium)), "{medium} {large}");
    }

    #[test]
    fn nested_macros_over_a_medium_event_exceed_the_limit_but_not_over_a_small_one() {
        let source = "event.data.a.all(x, event.data.a.all(y, x != y || x == y))";
        assert!(cost(source, SMALL) < LIMIT, "{}", cost(source, SMALL));
        assert!(cost(source, MEDIUM) > LIMIT, "{}", cost(source, MEDIUM));
    }

    #[test]
    fn copying_the_body_once_per_element_is_too_costly() {
        // Each step builds a string the size of the whole body.
        let source = "event.data.items.map(i, string(event.body) + 'x')";
        assert!(cost(source, MEDIUM) > LIMIT, "{}", cost(source, MEDIUM));
        // Literal ranges count too, event or not.
        let ten = "[1,2,3,4,5,6,7,8,9,10]";
        let source = format!(
            "{ten}.all(a, {ten}.all(b, {ten}.all(c, {ten}.all(d, {ten}.all(e, a + b + c + d + e > 0)))))"
        );
        assert!(cost(&source, SMALL) > LIMIT, "{}", cost(&source, SMALL));
    }

    #[test]
    fn paths_into_the_event_are_measured_in_it() {
        // A large event with a short name: concatenating the name is cheap, though
        // without the event it could be as long as the whole body.
        let items: Vec<String> = (0..5000).map(|i| format!("{{\"n\": {i}}}")).collect();
        let body = format!("{{\"name\": \"ada\", \"items\": [{}]}}", items.join(","));
        let parts = EventParts {
            id: "e",
            subject: "s",
            headers: &[],
            body: body.as_bytes(),
        };
        let event = Activation::new(&parts, crate::Fields::DATA);
        let source = parse("event.data.name + event.data['name'] + event.data.name");
        let sizes = event.sizes();
        assert!(sizes.bytes > 50_000 && sizes.items == 5000, "{sizes:?}");
        let measured = estimate(&source, sizes, Some(&event));
        let unmeasured = estimate(&source, sizes, None);
        assert!(measured < 20.0, "{measured}");
        assert!(unmeasured > 1000.0, "{unmeasured}");
        // The list's own length, not the event's longest.
        let source = parse("event.data.items.exists(i, i.n == 7)");
        assert!(estimate(&source, sizes, Some(&event)) < LIMIT);
    }

    #[test]
    fn an_expression_whose_cost_stays_small_needs_no_estimate_up_to_a_mebibyte() {
        let plain = parse("event.data.total > 100 && event.type == 'order.placed'");
        assert_eq!(within_limit_up_to(&plain).bytes, 1 << 20);
        let nested = parse("event.data.a.all(x, event.data.a.all(y, x != y || x == y))");
        let bound = within_limit_up_to(&nested);
        assert!(bound.bytes < 1 << 12, "{bound:?}");
    }

    /// Events of the shapes that count most per byte (one-digit numbers, each
    /// counting 8 bytes when measured), as large as each bound allows: every one is
    /// within the limit, so skipping their estimate skips no refusal.
    #[test]
    fn an_event_within_the_bound_is_within_the_limit() {
        let sources = [
            "event.data.a.all(x, event.data.a.all(y, x != y || x == y))",
            "event.data.a.map(x, event.data.a.filter(y, y == x).size())",
            "event.data.a.map(x, string(x) + event.data.s)",
            "event.data.a.exists(x, x == 7) && event.data.s.matches('^a+$')",
            "event.data.a.map(x, event.data.a.map(y, x + y))",
        ];
        for source in sources {
            let expr = parse(source);
            let bound = within_limit_up_to(&expr);
            let mut checked = 0;
            for fill in [0.5, 0.9, 1.0] {
                let budget = (bound.bytes as f64 * fill) as usize;
                // {"a":[1,1,...],"s":"aaa..."}, split between the two.
                let ones = budget.saturating_sub(20) / 4;
                let text = "a".repeat(budget.saturating_sub(20) / 2);
                let list = vec!["1"; ones].join(",");
                let body = format!("{{\"a\":[{list}],\"s\":\"{text}\"}}");
                let parts = EventParts {
                    id: "e",
                    subject: "s",
                    headers: &[],
                    body: body.as_bytes(),
                };
                let event = Activation::new(&parts, crate::Fields::DATA);
                let sizes = event.sizes();
                if !sizes.within(bound) {
                    continue;
                }
                let estimate = estimate(&expr, sizes, Some(&event));
                assert!(
                    estimate <= LIMIT,
                    "{source} on {sizes:?} (bound {bound:?}): {estimate}"
                );
                checked += 1;
            }
            assert!(checked >= 2, "{source}: bound {bound:?}");
        }
    }
}
