//! The tree an expression is evaluated with: its field selections on a variable
//! (`event.data.total`, `i.sku` in a macro) turned into index operations
//! (`event["data"]["total"]`).
//!
//! Why: the cel crate reads `a.b.c` as a qualified name first, since it could name a
//! variable `a.b.c` or a type. For each selection it joins the segments into a new
//! string and looks up every prefix in every scope, as a variable and as a type,
//! before it selects the fields: about a fifth of the time of the dispatch bench's
//! expressions. Here a name can only be a field: [`crate::check`] admits no variable
//! but `event`, the macros' own and the type names, so `event.data.total` is always
//! the field `total` of the field `data` of `event`. An index on a map is that same
//! lookup, and a missing key is the same `no such key` error.
//!
//! A field of `event` itself (`event.data`, `event["type"]`) becomes the variable of
//! that field, `event.data`, a name no expression can spell as one identifier: a
//! variable is found by name among the few of its scope, where a map's key is
//! hashed (with SipHash) on each lookup. The map `event` is built only for the reads
//! left as they are (see [`crate::event::Fields::EVENT`]).
//!
//! Presence tests (`has(event.data.total)`) keep their selection; their operand is
//! rewritten like any other expression.

use cel::IdedExpr;
use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedEntryExpr, LiteralValue, operators};
use cel::common::types::CelString;

/// `expr` with every field selection on `event` or a macro's variable as an index.
pub(crate) fn index_fields(mut expr: IdedExpr) -> IdedExpr {
    walk(&mut expr, &mut Vec::new());
    expr
}

/// Whether `expr` is `event` or a bound variable, or fields selected on one.
fn on_variable(expr: &IdedExpr, bound: &[String]) -> bool {
    match &expr.expr {
        Expr::Ident(name) => name == "event" || bound.iter().any(|b| b == name),
        Expr::Select(select) => !select.test && on_variable(&select.operand, bound),
        _ => false,
    }
}

/// Whether `expr` is the variable `event`, not a macro variable of that name.
fn is_event(expr: &IdedExpr, bound: &[String]) -> bool {
    matches!(&expr.expr, Expr::Ident(name) if name == "event" && !bound.iter().any(|b| b == "event"))
}

/// `event.<field>` as the variable of that field (see [`crate::event::Activation`]).
fn field_variable(field: &str) -> Expr {
    Expr::Ident(format!("event.{field}"))
}

fn walk(expr: &mut IdedExpr, bound: &mut Vec<String>) {
    match &mut expr.expr {
        Expr::Select(select) if !select.test && is_event(&select.operand, bound) => {
            expr.expr = field_variable(&select.field);
        }
        Expr::Call(call)
            if call.func_name == operators::INDEX
                && call.target.is_none()
                && call.args.len() == 2
                && is_event(&call.args[0], bound)
                && matches!(call.args[1].expr, Expr::Literal(LiteralValue::String(_))) =>
        {
            let Expr::Literal(LiteralValue::String(field)) = &call.args[1].expr else {
                unreachable!("matched above")
            };
            expr.expr = field_variable(field.inner());
        }
        Expr::Select(select) => {
            let rewrite = !select.test && on_variable(&select.operand, bound);
            walk(&mut select.operand, bound);
            if rewrite {
                let operand = std::mem::take(&mut *select.operand);
                let field = std::mem::take(&mut select.field);
                let key = IdedExpr {
                    id: expr.id,
                    expr: Expr::Literal(LiteralValue::String(CelString::from(field))),
                };
                expr.expr = Expr::Call(CallExpr {
                    func_name: operators::INDEX.to_string(),
                    target: None,
                    args: vec![operand, key],
                });
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &mut call.target {
                walk(target, bound);
            }
            for arg in &mut call.args {
                walk(arg, bound);
            }
        }
        Expr::Comprehension(c) => {
            walk(&mut c.iter_range, bound);
            walk(&mut c.accu_init, bound);
            let outer = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            walk(&mut c.loop_cond, bound);
            walk(&mut c.loop_step, bound);
            walk(&mut c.result, bound);
            bound.truncate(outer);
        }
        Expr::List(list) => {
            for element in &mut list.elements {
                walk(element, bound);
            }
        }
        Expr::Map(map) => entries(&mut map.entries, bound),
        Expr::Struct(s) => entries(&mut s.entries, bound),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// The keys and values of a map or struct literal.
fn entries(entries: &mut [IdedEntryExpr], bound: &mut Vec<String>) {
    for entry in entries {
        match &mut entry.expr {
            EntryExpr::MapEntry(e) => {
                walk(&mut e.key, bound);
                walk(&mut e.value, bound);
            }
            EntryExpr::StructField(f) => walk(&mut f.value, bound),
        }
    }
}

#[cfg(test)]
mod tests {
    use cel::Value;

    use super::*;
    use crate::describe::describe;
    use crate::event::{Activation, EventParts, Fields};

    /// What evaluating `tree` on `activation` gives, as text: a value as a body
    /// (maps with their keys sorted) or the error's description.
    fn outcome(tree: &IdedExpr, activation: &Activation) -> String {
        match Value::resolve_val(tree, &activation.context) {
            Ok(value) => format!("{:?}", crate::output::body(value.as_ref())),
            Err(error) => format!("error: {}", describe(&error)),
        }
    }

    #[test]
    fn the_rewritten_tree_gives_the_same_values_and_errors() {
        let bodies = [
            r#"{"total": 150, "id": "o-1", "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 3}], "nested": {"deep": {"x": true}}}"#,
            r#"{"sum": 1}"#,
            r#"{"total": {"x": 1}}"#,
            r#"[1, 2]"#,
            "not json",
        ];
        let expressions = [
            "event.data.total",
            "event.data.total.x",
            "event.data.nested.deep.x",
            "event.data.items.sku",
            "event.data.items[1].sku",
            "has(event.data.total)",
            "has(event.data.total.x)",
            "has(event.data.nested.deep)",
            "event.data.?total.orValue(0)",
            "event.data.?nested.?deep.x.orValue(false)",
            "event.data.items.map(i, i.sku)",
            "event.data.items.exists(i, i.qty > 2)",
            "event.data.items.filter(i, has(i.qty)).map(i, i.qty * 2)",
            "event.data.items.map(event, event.sku)",
            "event['data'].total + event.data['total']",
            "has(event.data) && has(event.type)",
            "event.?type.orValue('') + event.?data.?id.orValue('')",
            "size(event) > 0 && event.id + event.subject != ''",
            "[{'a': 1}].map(m, m.a)",
            "event.headers.x_tenant",
            "event.headers['x-tenant']",
            "event.type == 'order.placed' && event.data.total > 100",
            "{'order': event.data.id, 'skus': event.data.items.map(i, i.sku)}",
        ];
        let headers = [("ce-type", "order.placed"), ("x-tenant", "acme")];
        for body in bodies {
            let parts = EventParts {
                id: "evt-1",
                subject: "fanout.in.shop.orders",
                headers: &headers,
                body: body.as_bytes(),
            };
            let activation = Activation::new(&parts, Fields::ALL);
            for source in expressions {
                let ast = crate::Expression::compile(source)
                    .unwrap_or_else(|e| panic!("{source}: {e}"))
                    .ast
                    .clone();
                let rewritten = index_fields(ast.clone());
                assert_eq!(
                    outcome(&rewritten, &activation),
                    outcome(&ast, &activation),
                    "{source} on {body}"
                );
            }
        }
    }
}
