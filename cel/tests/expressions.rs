//! Compiling and evaluating expressions the way a route target uses them: the
//! checks made when a route is applied, and what an expression sees of an event.

use fanout_cel::output::{self, Body};
use fanout_cel::{Activation, CompileError, EvalError, EventParts, Expression, Fields};

fn compile(source: &str) -> Expression {
    Expression::compile(source).unwrap_or_else(|e| panic!("{source}: {e}"))
}

fn refusal(source: &str) -> String {
    match Expression::compile(source) {
        Ok(_) => panic!("{source} compiled"),
        Err(e) => e.to_string(),
    }
}

/// An event with these headers and body, as stored by the gateway.
struct Stored {
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
}

impl Stored {
    fn new(headers: &[(&'static str, &'static str)], body: &str) -> Stored {
        Stored {
            headers: headers.to_vec(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn parts(&self) -> EventParts<'_> {
        EventParts {
            id: "evt-1",
            subject: "fanout.in.shop.orders.order.placed",
            headers: &self.headers,
            body: &self.body,
        }
    }

    fn eval<T>(
        &self,
        source: &str,
        then: impl FnOnce(&dyn cel::common::value::Val) -> T,
    ) -> Result<T, EvalError> {
        let expression = compile(source);
        let parts = self.parts();
        let activation = Activation::new(&parts, expression.fields());
        expression.evaluate(&activation).map(|v| then(v.as_ref()))
    }

    fn filter(&self, source: &str) -> Result<bool, EvalError> {
        self.eval(source, output::boolean)?
    }

    fn body(&self, source: &str) -> Result<Body, EvalError> {
        self.eval(source, output::body)?
    }
}

fn order(total: &str) -> Stored {
    Stored::new(
        &[
            ("Content-Type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "ce-1"),
            ("ce-source", "/shop"),
            ("ce-type", "order.placed"),
            ("ce-partitionkey", "customer-7"),
            ("X-Tenant", "acme"),
            ("Fanout-Event-Id", "evt-1"),
            ("Nats-Msg-Id", "evt-1"),
        ],
        &format!(
            r#"{{"id": "o-1", "total": {total}, "items": [{{"sku": "a", "qty": 2}}, {{"sku": "b", "qty": 1}}], "customer": {{"email": "c@example.com"}}}}"#
        ),
    )
}

// ---------------------------------------------------------------------------------
// Compiling

#[test]
fn syntax_errors_name_the_column() {
    let message = refusal("event.data.total >");
    assert!(
        message.starts_with("syntax error: column 19: "),
        "{message}"
    );
}

#[test]
fn unknown_variables_fields_and_functions_are_refused_with_their_place() {
    assert_eq!(
        refusal("evnt.data.total > 1"),
        "column 1 (evnt): \"evnt\" is not defined; the event is the variable `event` (e.g. event.data.evnt)"
    );
    let message = refusal("event.type == 'a' && event.dta.total > 1");
    assert!(
        message.contains("event has no field \"dta\"; its fields are id, subject, type, source, ce, headers, data, body"),
        "{message}"
    );
    assert!(message.starts_with("column 22 (event.dta): "), "{message}");
    let message = refusal("event.type.lowerAscii() == 'a'");
    assert!(
        message
            .contains("function lowerAscii is not available; expressions may call size, contains"),
        "{message}"
    );
    let message = refusal("event.data.items.map(i)");
    assert!(
        message.contains("map takes a variable name and an expression"),
        "{message}"
    );
    assert!(refusal("google.Type{}").contains("message literals"));
}

#[test]
fn a_matches_pattern_must_be_a_valid_literal() {
    compile("event.subject.matches('^fanout[.]in[.]')");
    let message = refusal("event.type.matches('order.(placed')");
    assert!(
        message.contains("matches: the pattern is not a valid regular expression"),
        "{message}"
    );
    let message = refusal("event.type.matches(event.data.pattern)");
    assert!(message.contains("pattern as a string literal"), "{message}");
}

#[test]
fn empty_long_and_costly_expressions_are_refused() {
    assert!(matches!(
        Expression::compile("  "),
        Err(CompileError::Empty)
    ));
    let long = format!("event.type == '{}'", "x".repeat(fanout_cel::MAX_LENGTH));
    assert!(matches!(
        Expression::compile(&long),
        Err(CompileError::TooLong { .. })
    ));
    // Five nested macros over the event: fine for one element, hopeless for an
    // ordinary event.
    let nested = "event.data.a.all(a, event.data.a.all(b, event.data.a.all(c, event.data.a.all(d, a + b + c + d > 0))))";
    let message = refusal(nested);
    assert!(
        message.starts_with("too costly: on an event of 4096 bytes whose lists have 32 elements"),
        "{message}"
    );
}

/// Whatever its shape, an expression of the allowed length is refused or compiled,
/// never overflowing the stack of the thread that compiles it, and what compiles
/// runs on an ordinary 2 MiB thread.
#[test]
fn deeply_nested_expressions_are_refused_without_overflowing_a_stack() {
    let n = 1000;
    let shapes = [
        format!("{}1{}", "(".repeat(n), ")".repeat(n)),
        format!("{}1{}", "[".repeat(n), "]".repeat(n)),
        format!("{}1{}", "{'a': ".repeat(n), "}".repeat(n)),
        format!("{}1{}", "size(".repeat(n), ")".repeat(n)),
        format!("{}true", "!".repeat(4 * n)),
        format!("{}1", "-".repeat(4 * n)),
        format!("event{}", ".a".repeat(2 * n)),
        format!("1{}", " + 1".repeat(n)),
        format!("{}1", "true ? 1 : ".repeat(n / 3)),
        format!("event.data.a{}", ".map(x, x)".repeat(n / 3)),
    ];
    for source in shapes {
        let source = &source[..source.len().min(fanout_cel::MAX_LENGTH)];
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn({
                let source = source.to_string();
                move || match Expression::compile(&source) {
                    Ok(expression) => {
                        let stored = Stored::new(&[], r#"{"a": [1]}"#);
                        let parts = stored.parts();
                        let activation = Activation::new(&parts, expression.fields());
                        let _ = expression.evaluate(&activation).map(|_| ());
                        "compiled".to_string()
                    }
                    Err(e) => e.to_string(),
                }
            })
            .unwrap()
            .join()
            .unwrap();
        eprintln!("{}...: {outcome}", &source[..20]);
    }
    let chain = format!("1{}", " + 1".repeat(fanout_cel::MAX_DEPTH + 5));
    assert!(matches!(
        Expression::compile(&chain),
        Err(CompileError::TooDeep { .. })
    ));
}

#[test]
fn the_fields_read_and_the_headers_named_are_known() {
    let e = compile("event.type == 'order.placed'");
    assert_eq!(e.fields(), Fields::TYPE);
    assert!(e.headers().is_empty());
    let e = compile(
        "event.headers['X-Tenant'] == 'acme' && 'x-region' in event.headers && has(event.headers.x_plan) && event.data.total > 1",
    );
    assert_eq!(e.fields(), Fields::HEADERS | Fields::DATA);
    assert_eq!(e.headers(), ["x-tenant", "x-region", "x_plan"]);
    // The whole event: everything is built.
    assert_eq!(compile("size(event) > 0").fields(), Fields::ALL);
}

#[test]
fn the_parts_of_data_read_are_known_unless_data_is_read_whole() {
    let read = |source: &str| compile(source).data().to_string();
    assert_eq!(
        read(
            "event.data.total > 1 && has(event.data.coupon) && event.data['id'] != '' && event.data.total < 9"
        ),
        "total, coupon?, id"
    );
    assert_eq!(
        read("event.data.items.map(i, i.sku) == [] || event.data.?note.orValue('') == ''"),
        "items[].sku, note"
    );
    assert_eq!(
        read(
            "event.data.customer.tier == 'gold' && has(event.data.customer.vip) && event.data.lines[0].qty > 1"
        ),
        "customer.tier, customer.vip?, lines[].qty"
    );
    // Nested macros, and a macro variable that shadows another.
    assert_eq!(
        read(
            "event.data.orders.all(o, o.lines.exists(l, l.sku == 'a') && o.lines.all(o, o.qty > 0))"
        ),
        "orders[].lines[].sku, orders[].lines[].qty"
    );
    // What a macro keeps of an element, or an element used as a value, is read whole.
    assert_eq!(read("event.data.items.filter(i, i.qty > 1)"), "items[]");
    assert_eq!(read("event.data.items.map(i, i)"), "items[]");
    assert_eq!(
        read("event.data.items.exists(i, i == {'sku': 'a'})"),
        "items[]"
    );
    assert_eq!(
        read("event.data.tags.exists(t, t.startsWith('a'))"),
        "tags[]"
    );
    // Iterated, but only its elements' presence: if it is an object, its keys are the
    // elements, and it is built whole.
    assert_eq!(read("event.data.exists(k, k == 'total')"), "[]");
    assert_eq!(read("event.data.items[event.data.n].sku"), "items, n");
    assert_eq!(read("event['data'].total > 1 || event.?data.x"), "total, x");
    assert_eq!(read("has(event.data)"), "?");
    assert_eq!(read("event.type == 'a'"), "?");
    for whole in [
        "size(event.data) > 0",
        "'total' in event.data",
        "event.data[event.subject] == 1",
        "event.data == {}",
        "size(event) > 0",
        "[event.data].size() == 1",
    ] {
        assert_eq!(read(whole), "*", "{whole}");
    }
}

/// Building only the parts of `event.data` that expressions read changes nothing they
/// can see: every expression gives the same value or the same error as on the whole.
#[test]
fn an_event_built_with_only_the_parts_read_evaluates_as_the_whole() {
    let bodies = [
        r#"{"total": 150, "id": "o-1", "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 3}], "note": "x", "pad": [1, 2, 3, 4, 5, 6, 7, 8, 9]}"#,
        r#"{"sum": 1, "total": "150"}"#,
        r#"{"items": [{"sku": "a", "qty": 5, "tags": ["x"]}, 3, [{"sku": "b"}], {"qty": 1}], "customer": {"tier": "gold", "vip": false, "name": "n"}, "id": 7}"#,
        r#"{"items": {"sku": "a", "qty": 1}, "customer": [1], "orders": [{"lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 0}]}, {"lines": "x"}]}"#,
        r#"{"total": {"x": 1}, "total": 2}"#,
        r#"[1, 2]"#,
        r#""text""#,
        "not json",
        "",
    ];
    let expressions = [
        "event.data.total > 100",
        "event.data.total.x == 1",
        "has(event.data.total) && has(event.data.coupon)",
        "event.data.?coupon.orValue('none')",
        "event.data['id']",
        "event.data.items.map(i, i.sku)",
        "event.data.items.exists(i, i.qty > 2)",
        "{'order': event.data.id, 'skus': event.data.items.map(i, i.sku), 'n': size(event.data.items)}",
        "string(event.data.total)",
        "event.data.note + event.type",
        "size(event.data)",
        "event.data.items.map(i, i.sku)",
        "event.data.items.filter(i, has(i.qty) && i.qty > 1)",
        "event.data.items.map(i, i.tags[0])",
        "event.data.items[0].sku + event.data.customer.tier",
        "has(event.data.customer.vip) && !event.data.customer.vip",
        "event.data.customer.?name.orValue('none')",
        "event.data.orders.all(o, o.lines.exists(l, l.sku == 'b'))",
        "event.data.orders.map(o, o.lines.map(o, o.qty))",
        "event.data.items.exists(i, i == {'sku': 'a', 'qty': 5, 'tags': ['x']})",
        "event.data.items.map(i, size(i))",
        "event.data.customer.exists(k, k == 'name')",
        "has(event.data) && has(event.type)",
        "event.?type.orValue('') != '' && event['data'] != null",
    ];
    let stored = |body: &str| Stored::new(&[("ce-type", "order.placed")], body);
    for body in bodies {
        let stored = stored(body);
        for source in expressions {
            let expression = compile(source);
            let parts = stored.parts();
            let outcome = |activation: &Activation| match expression.evaluate(activation) {
                Ok(value) => format!("{:?}", output::body(value.as_ref())),
                Err(error) => format!("error: {error}"),
            };
            let whole = Activation::new(&parts, Fields::ALL);
            let kept = Activation::with_projection(&parts, expression.fields(), expression.data());
            assert_eq!(outcome(&kept), outcome(&whole), "{source} on {body}");
        }
    }
}

#[test]
fn every_listed_function_exists_in_the_interpreter() {
    let stored = order("150");
    for source in [
        "size(event.data.items) == 2",
        "event.data.items.size() == 2",
        "event.type.contains('placed')",
        "event.type.startsWith('order.')",
        "event.type.endsWith('.placed')",
        "event.type.matches('^order[.]')",
        "string(event.data.total) == '150'",
        "int('3') == 3",
        "uint(3) == 3u",
        "double(event.data.total) == 150.0",
        "bool('true')",
        "bytes('a') == b'a'",
        "type(event.data.total) == int",
        "dyn(1) == 1",
        "optional.of(1).hasValue()",
        "optional.none().orValue(2) == 2",
        "optional.of(3).value() == 3",
        "optional.none().or(optional.of(4)).value() == 4",
        "!optional.ofNonZeroValue(0).hasValue()",
        "event.data.?missing.orValue(5) == 5",
        "event.data.items.all(i, i.qty > 0) && event.data.items.exists(i, i.sku == 'b')",
        "event.data.items.exists_one(i, i.sku == 'a')",
        "event.data.items.filter(i, i.qty > 1).map(i, i.sku) == ['a']",
        "has(event.data.customer.email) && !has(event.data.coupon)",
        "event.data.total % 7 == 3 && -event.data.total < 0 && event.data.total / 2 == 75",
        "event.data.total - 50 >= 100 && event.data.total * 2 <= 300",
        "1 in [1, 2] && event.data.total != 0",
        "(event.data.total > 100 ? 'big' : 'small') == 'big'",
        "event.data.items[0].sku == 'a'",
    ] {
        assert_eq!(
            stored.filter(source).map_err(|e| e.to_string()),
            Ok(true),
            "{source}"
        );
    }
}

// ---------------------------------------------------------------------------------
// What an expression sees

#[test]
fn a_filter_on_the_body_and_the_cloudevents_type() {
    let filter = "event.data.total > 100 && event.type == 'order.placed'";
    assert!(order("150").filter(filter).unwrap());
    assert!(!order("99.5").filter(filter).unwrap());
    // Ints and doubles compare freely.
    assert!(order("100.5").filter(filter).unwrap());
}

#[test]
fn binary_cloudevents_attributes_headers_and_identity() {
    let stored = order("1");
    for source in [
        "event.source == '/shop' && event.ce.id == 'ce-1' && event.ce.specversion == '1.0'",
        "event.ce.partitionkey == 'customer-7'",
        "event.headers['x-tenant'] == 'acme' && event.headers['content-type'] == 'application/json'",
        "!('fanout-event-id' in event.headers) && !('nats-msg-id' in event.headers)",
        "event.id == 'evt-1' && event.subject == 'fanout.in.shop.orders.order.placed'",
        "size(event.body) > 10",
    ] {
        assert_eq!(
            stored.filter(source).map_err(|e| e.to_string()),
            Ok(true),
            "{source}"
        );
    }
}

#[test]
fn a_structured_cloudevent_gives_its_data_and_attributes() {
    let stored = Stored::new(
        &[(
            "Content-Type",
            "application/cloudevents+json; charset=utf-8",
        )],
        r#"{"specversion": "1.0", "id": "e-9", "source": "/crm", "type": "user.created", "subject": "u-1", "data": {"plan": "pro"}}"#,
    );
    assert_eq!(
        stored
            .filter("event.type == 'user.created' && event.data.plan == 'pro' && event.ce.subject == 'u-1' && !has(event.ce.data)")
            .map_err(|e| e.to_string()),
        Ok(true)
    );
    let encoded = Stored::new(
        &[("Content-Type", "application/cloudevents+json")],
        r#"{"specversion": "1.0", "id": "e-9", "source": "/crm", "type": "t", "data_base64": "aGk="}"#,
    );
    assert!(encoded.filter("event.data == b'hi'").unwrap());
}

#[test]
fn a_plain_event_has_empty_cloudevents_fields() {
    let stored = Stored::new(&[("Content-Type", "application/json")], r#"{"n": 1}"#);
    assert!(
        stored
            .filter(
                "event.type == '' && event.source == '' && size(event.ce) == 0 && event.data.n == 1"
            )
            .unwrap()
    );
}

/// `event.type` and `event.source` of a binary-mode event come from its `ce-*`
/// headers, the names in any case, the first of a name winning: whether or not the
/// expression also reads `event.ce` (which builds the map of every attribute).
#[test]
fn binary_mode_type_and_source_read_the_ce_headers_in_any_case() {
    let stored = Stored::new(
        &[
            ("CE-Type", "order.placed"),
            ("ce-type", "order.shadowed"),
            ("Ce-Source", "/shop"),
            ("ce-typeextra", "x"),
        ],
        "{}",
    );
    let alone = "event.type == 'order.placed' && event.source == '/shop'";
    assert!(stored.filter(alone).unwrap());
    assert!(
        stored
            .filter(&format!("{alone} && event.ce.typeextra == 'x'"))
            .unwrap()
    );
    let none = Stored::new(&[("ce-id", "1")], "{}");
    assert!(
        none.filter("event.type == '' && event.source == ''")
            .unwrap()
    );
}

#[test]
fn a_body_that_is_not_json_leaves_data_null_and_says_why() {
    let stored = Stored::new(
        &[("Content-Type", "text/plain"), ("ce-type", "note")],
        "hello",
    );
    assert!(stored.filter("event.data == null").unwrap());
    let error = stored
        .filter("event.data.total > 1")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("event.data is null: the body is not JSON"),
        "{error}"
    );
    // An expression that does not read the data never parses it.
    assert!(stored.filter("event.type == 'note'").unwrap());
}

#[test]
fn missing_fields_and_type_mismatches_are_errors_that_quote_no_data() {
    let stored = order("150.5");
    let error = stored
        .filter("event.data.discount > 1")
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "no such key: discount (use has(...) or the optional syntax .?discount for fields that may be missing)"
    );
    let error = stored
        .filter("event.data.total + 1 > 2")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("operator add is not defined for double and int"),
        "{error}"
    );
    assert!(!error.contains("150"), "{error}");
    let error = stored
        .filter("event.data.customer.email > 1")
        .unwrap_err()
        .to_string();
    assert!(!error.contains("example.com"), "{error}");
    let error = stored.filter("event.data.total").unwrap_err().to_string();
    assert_eq!(error, "it yields a double, but a filter must yield a bool");
}

#[test]
fn transforms_yield_json_text_or_bytes() {
    let stored = order("150");
    let body = stored
        .body("{'order': event.data.id, 'amount': event.data.total, 'skus': event.data.items.map(i, i.sku), 'tenant': event.headers['x-tenant']}")
        .unwrap();
    assert_eq!(body.content_type, "application/json");
    assert_eq!(
        String::from_utf8(body.bytes).unwrap(),
        r#"{"amount":150,"order":"o-1","skus":["a","b"],"tenant":"acme"}"#
    );
    let body = stored.body("'order ' + event.data.id").unwrap();
    assert_eq!(
        (body.bytes.as_slice(), body.content_type),
        (&b"order o-1"[..], "text/plain; charset=utf-8")
    );
    let body = stored.body("event.body").unwrap();
    assert_eq!(body.content_type, "application/octet-stream");
    assert_eq!(body.bytes, stored.body);
    let body = stored.body("event.data.items").unwrap();
    assert_eq!(
        String::from_utf8(body.bytes).unwrap(),
        r#"[{"qty":2,"sku":"a"},{"qty":1,"sku":"b"}]"#
    );
}

#[test]
fn header_values_are_text_and_null_leaves_them_out() {
    let stored = order("150");
    let header = |source: &str| stored.eval(source, output::header_value).unwrap();
    assert_eq!(header("event.data.id").unwrap(), Some("o-1".to_string()));
    assert_eq!(header("event.data.total").unwrap(), Some("150".to_string()));
    assert_eq!(
        header("event.data.total > 1").unwrap(),
        Some("true".to_string())
    );
    assert_eq!(
        header("has(event.data.coupon) ? event.data.coupon : null").unwrap(),
        None
    );
    let error = header("event.data.items").unwrap_err().to_string();
    assert!(error.contains("a header must be a string"), "{error}");
}

#[test]
fn an_event_too_large_for_the_expression_is_not_evaluated() {
    let source = "event.data.a.all(x, event.data.a.all(y, x <= y || x > y))";
    let small = Stored::new(&[], r#"{"a": [1, 2, 3]}"#);
    assert!(small.filter(source).unwrap());
    let items: Vec<String> = (0..3000).map(|i| i.to_string()).collect();
    let large = Stored::new(&[], &format!(r#"{{"a": [{}]}}"#, items.join(",")));
    let error = large.filter(source).unwrap_err();
    assert!(matches!(error, EvalError::TooCostly { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.starts_with("not evaluated: its estimated cost on this event (")
            && text.contains("3000 elements in its longest list or object"),
        "{text}"
    );
}

/// The cost limit in time: the costliest expression the limit lets through, on the
/// largest event it lets it through on, timed. Printed for docs/dispatcher.md.
#[test]
fn the_limit_bounds_the_time_of_an_evaluation() {
    let source = "event.data.items.map(i, {'sku': i.sku, 'qty': i.qty * 2, 'big': i.qty > 100, 'label': i.sku + '-' + string(i.qty)}).filter(x, x.big).size() > 0";
    let expression = compile(source);
    let mut n = 4000;
    loop {
        let items: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"sku": "s{i}", "qty": {i}}}"#))
            .collect();
        let stored = Stored::new(&[], &format!(r#"{{"items": [{}]}}"#, items.join(",")));
        let parts = stored.parts();
        let activation = Activation::new(&parts, expression.fields());
        let estimate = expression.estimated_cost(&activation);
        if estimate > fanout_cel::cost::LIMIT {
            n = n * 9 / 10;
            continue;
        }
        let started = std::time::Instant::now();
        let result = expression.evaluate(&activation).unwrap();
        assert!(output::boolean(result.as_ref()).unwrap());
        eprintln!(
            "{n} items: estimated cost {estimate:.0} of {}, evaluated in {:?}",
            fanout_cel::cost::LIMIT,
            started.elapsed()
        );
        return;
    }
}
