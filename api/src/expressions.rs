//! A route target's CEL filter, transform and ordering key, checked when the route is rendered:
//! each expression compiles (fanout-cel's checks), and each computed header has a
//! name the dispatcher may set. The apiserver cannot compile CEL written by users, so
//! this is where a wrong expression is refused, naming its field; the CRD only
//! bounds lengths and header names.

use fanout_cel::{CompileError, Expression};
use fanout_config::route::Transform;

use crate::route::RouteTargetSpec;
use crate::rules;

/// Why a target's expressions cannot be used; `field` is below `targets[<name>]`.
#[derive(Debug, thiserror::Error)]
pub enum ExpressionError {
    #[error("{field}: {source}")]
    Compile {
        field: String,
        #[source]
        source: CompileError,
    },
    #[error("{field}: {problem}")]
    Header {
        field: String,
        problem: &'static str,
    },
}

impl ExpressionError {
    /// The field at fault, below `targets[<name>]`.
    pub fn field(&self) -> &str {
        match self {
            ExpressionError::Compile { field, .. } | ExpressionError::Header { field, .. } => field,
        }
    }
}

/// A target's checked expressions, as the dispatcher gets them.
#[derive(Debug, Default)]
pub struct Checked {
    pub filter: Option<String>,
    pub transform: Option<Transform>,
    /// Header names the expressions spell out, lower-case: the gateway stores them.
    pub headers: Vec<String>,
}

/// Compiles `target`'s `filter.cel` and `transform`. `auth_header` is the header the
/// ApiTarget's credential goes in, which no computed header may replace.
pub fn check(
    target: &RouteTargetSpec,
    auth_header: Option<&str>,
) -> Result<Checked, ExpressionError> {
    let mut checked = Checked::default();
    let mut compile = |field: String, source: &str| -> Result<(), ExpressionError> {
        let expression =
            Expression::compile(source).map_err(|source| ExpressionError::Compile {
                field: field.clone(),
                source,
            })?;
        // Naming a header makes the gateway store it with every event of the route:
        // never the producer's credentials.
        if expression
            .headers()
            .iter()
            .any(|h| CREDENTIAL_HEADERS.contains(&h.as_str()))
        {
            return Err(ExpressionError::Header {
                field,
                problem: CREDENTIAL_HEADER_NAMED,
            });
        }
        for name in expression.headers() {
            if !checked.headers.contains(name) {
                checked.headers.push(name.clone());
            }
        }
        Ok(())
    };
    if let Some(source) = target.filter.as_ref().and_then(|f| f.cel.as_ref()) {
        compile("filter.cel".into(), source)?;
    }
    if let Some(source) = target.ordering.as_ref().and_then(|o| o.key.cel.as_ref()) {
        compile("ordering.key.cel".into(), source)?;
    }
    if let Some(transform) = &target.transform {
        if transform.body.is_none() && transform.headers.is_empty() {
            return Err(ExpressionError::Header {
                field: "transform".into(),
                problem: rules::TRANSFORM_NOT_EMPTY,
            });
        }
        if let Some(source) = &transform.body {
            compile("transform.body".into(), source)?;
        }
        for (name, source) in &transform.headers {
            let field = format!("transform.headers[{name}]");
            if let Some(problem) = header_problem(name, auth_header) {
                return Err(ExpressionError::Header { field, problem });
            }
            compile(field, source)?;
        }
    }
    checked.filter = target.filter.as_ref().and_then(|f| f.cel.clone());
    checked.transform = target.transform.as_ref().map(|t| Transform {
        body: t.body.clone(),
        headers: t.headers.clone(),
    });
    Ok(checked)
}

/// Headers a transform may not compute (the CRD's rule, for manifests that did not
/// pass an apiserver), and the ApiTarget's credential header.
const RESERVED: &[&str] = &[
    "authorization",
    "idempotency-key",
    "traceparent",
    "tracestate",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

fn header_problem(name: &str, auth_header: Option<&str>) -> Option<&'static str> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&*+-.^_|~".contains(c);
    if name.is_empty() || name.len() > 128 || !name.chars().all(token) {
        return Some(rules::TRANSFORM_HEADER_TOKEN);
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str())
        || lower.starts_with("webhook-")
        || lower.starts_with("fanout-")
    {
        return Some(rules::TRANSFORM_HEADER_RESERVED);
    }
    if auth_header.is_some_and(|a| a.eq_ignore_ascii_case(name)) {
        return Some(TRANSFORM_HEADER_CREDENTIAL);
    }
    None
}

/// Request headers that carry the producer's credentials.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

const CREDENTIAL_HEADER_NAMED: &str = "an expression cannot read the Authorization, Proxy-Authorization or Cookie header: they carry the producer's credentials, which the gateway does not store with events";

/// Only rendering can see this: the ApiTarget is another object.
const TRANSFORM_HEADER_CREDENTIAL: &str = "the ApiTarget's auth.header carries a credential in this header; a transform cannot compute it";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{ApiTargetRef, FilterSpec, TransformSpec};

    fn target(
        filter: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> RouteTargetSpec {
        RouteTargetSpec {
            name: "crm".into(),
            api_target_ref: ApiTargetRef { name: "crm".into() },
            filter: filter.map(|f| FilterSpec {
                cel: Some(f.into()),
                ..Default::default()
            }),
            transform: (body.is_some() || !headers.is_empty()).then(|| TransformSpec {
                body: body.map(str::to_string),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            overrides: None,
            ordering: None,
        }
    }

    #[test]
    fn a_wrong_ordering_key_is_named_by_its_field_and_its_headers_are_stored() {
        use crate::route::{OrderingKeySpec, OrderingSpec};
        let mut ordered = target(None, None, &[]);
        let key = |cel: &str| OrderingSpec {
            key: OrderingKeySpec {
                cel: Some(cel.into()),
                ..Default::default()
            },
            after_dead_letter: None,
            max_waiting: None,
        };
        ordered.ordering = Some(key("event.dta"));
        let err = check(&ordered, None).unwrap_err();
        assert_eq!(err.field(), "ordering.key.cel", "{err}");
        ordered.ordering = Some(key(r#"event.headers["x-tenant"]"#));
        assert_eq!(check(&ordered, None).unwrap().headers, ["x-tenant"]);
    }

    #[test]
    fn each_wrong_expression_is_named_by_its_field() {
        let err = check(&target(Some("event.data.total >"), None, &[]), None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("filter.cel: syntax error: column"),
            "{err}"
        );
        let err = check(&target(None, Some("{'a': evnt.id}"), &[]), None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("transform.body: column 7 (evnt)"),
            "{err}"
        );
        let err = check(&target(None, None, &[("X-Order", "event.dta")]), None).unwrap_err();
        assert_eq!(err.field(), "transform.headers[X-Order]");
    }

    #[test]
    fn computed_headers_cannot_replace_credentials_or_fanouts_own() {
        for name in [
            "Authorization",
            "fanout-attempt",
            "Webhook-Signature",
            "Host",
            "bad name",
        ] {
            let err = check(&target(None, None, &[(name, "'x'")]), None).unwrap_err();
            assert_eq!(err.field(), format!("transform.headers[{name}]"));
        }
        let err = check(
            &target(None, None, &[("X-Api-Key", "'x'")]),
            Some("x-api-key"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("auth.header carries a credential"),
            "{err}"
        );
        // Nor read the producer's credentials (the gateway would store them).
        let err = check(
            &target(Some("event.headers['Authorization'] != ''"), None, &[]),
            None,
        )
        .unwrap_err();
        assert_eq!(err.field(), "filter.cel");
        assert!(err.to_string().contains("producer's credentials"), "{err}");
        // Content-Type may be computed: it describes the computed body.
        check(
            &target(
                None,
                Some("'<a/>'"),
                &[("Content-Type", "'application/xml'")],
            ),
            None,
        )
        .unwrap();
    }

    #[test]
    fn headers_the_expressions_name_are_collected_once() {
        let checked = check(
            &target(
                Some("event.headers['X-Tenant'] == 'a'"),
                Some("{'t': event.headers['x-tenant'], 'r': event.headers['x-region']}"),
                &[],
            ),
            None,
        )
        .unwrap();
        assert_eq!(checked.headers, ["x-tenant", "x-region"]);
    }
}
