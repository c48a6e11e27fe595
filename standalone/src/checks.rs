//! Checks that Kubernetes would make (unique names; the schema's CEL rules that
//! rendering does not repeat, restated here because no apiserver evaluates them in
//! standalone mode) or that the operator would report (a missing Secret key), made
//! before anything starts so that a bad set of manifests fails at once.

use std::collections::{BTreeMap, BTreeSet};

use fanout_api::Duration;
use fanout_api::manifests::Manifests;
use fanout_api::names::{RESERVED_SUBJECT_PREFIX, subject_patterns_collide};
use fanout_api::policy::{CircuitBreakerSpec, ConcurrencySpec, RateLimitSpec};
use fanout_api::render::secret_keys;
use fanout_api::route::{RetentionSpec, SourceSpec};
use fanout_api::rules;
use fanout_api::settings::auth_rules_broken;
use fanout_config::jetstream::MIN_STREAM_WINDOW;
use fanout_config::policy::defaults;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CheckError {
    #[error("no FanOutRoute in the manifests: nothing to run")]
    NoRoutes,
    #[error("{kind} {namespace}/{name} is defined more than once")]
    Duplicate {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error(
        "FanOutRoute {namespace}/{name}: metadata.name must be a DNS label (lowercase letters, digits and '-', at most 63 characters, no dots): it becomes part of NATS stream and subject names"
    )]
    RouteName { namespace: String, name: String },
    #[error(
        "FanOutRoute {route}: spec.targets[{target}].name must be lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    TargetName { route: String, target: String },
    #[error("FanOutRoute {route}: spec.targets: {target:?} is listed more than once")]
    DuplicateTarget { route: String, target: String },
    #[error(
        "Secret {name} is defined in namespaces {first} and {second}; standalone mode keeps Secrets in one directory, so their names must be unique"
    )]
    SecretNameClash {
        name: String,
        first: String,
        second: String,
    },
    #[error(
        "FanOutRoute {route}: spec.source.subjects: {subject:?} overlaps {other_subject:?} of FanOutRoute {other_route}; JetStream refuses a stream whose subjects overlap another stream's"
    )]
    SubjectsOfTwoRoutes {
        route: String,
        subject: String,
        other_route: String,
        other_subject: String,
    },
    #[error("{owner}: {field}: {rule}")]
    Rule {
        owner: String,
        field: String,
        rule: &'static str,
    },
    #[error("Secret {namespace}/{name}: metadata.name: {problem}")]
    SecretName {
        namespace: String,
        name: String,
        problem: &'static str,
    },
    #[error("Secret {namespace}/{name}: {field}: key {key:?} {problem}")]
    SecretKey {
        namespace: String,
        name: String,
        field: &'static str,
        key: String,
        problem: &'static str,
    },
    #[error("{owner}: {field}: Secret {namespace}/{secret} has no key {key:?} in the manifests")]
    MissingSecretKey {
        owner: String,
        field: &'static str,
        namespace: String,
        secret: String,
        key: String,
    },
}

/// Every problem found, in a stable order; empty when the manifests can run.
pub fn check(m: &Manifests) -> Vec<CheckError> {
    let mut problems = Vec::new();
    if m.routes.is_empty() {
        problems.push(CheckError::NoRoutes);
    }
    // (namespace, name) of an object's metadata.
    macro_rules! ns {
        ($meta:expr) => {
            (
                $meta.namespace.clone().unwrap_or_default(),
                $meta.name.clone().unwrap_or_default(),
            )
        };
    }
    for (kind, names) in [
        (
            "ApiTarget",
            m.targets
                .iter()
                .map(|t| ns!(t.metadata))
                .collect::<Vec<_>>(),
        ),
        (
            "FanOutRoute",
            m.routes.iter().map(|r| ns!(r.metadata)).collect(),
        ),
        (
            "Secret",
            m.secrets.iter().map(|s| ns!(s.metadata)).collect(),
        ),
    ] {
        let mut seen = BTreeSet::new();
        for (namespace, name) in names {
            if !seen.insert((namespace.clone(), name.clone())) {
                problems.push(CheckError::Duplicate {
                    kind,
                    namespace,
                    name,
                });
            }
        }
    }

    for secret in &m.secrets {
        let (namespace, name) = ns!(secret.metadata);
        if let Some(problem) = secret_name_problem(&name) {
            problems.push(CheckError::SecretName {
                namespace: namespace.clone(),
                name: name.clone(),
                problem,
            });
        }
        let data = secret.data.iter().flatten().map(|(k, _)| ("data", k));
        let string_data = secret
            .string_data
            .iter()
            .flatten()
            .map(|(k, _)| ("stringData", k));
        for (field, key) in data.chain(string_data) {
            if let Some(problem) = secret_key_problem(key) {
                problems.push(CheckError::SecretKey {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    field,
                    key: key.clone(),
                    problem,
                });
            }
        }
    }

    let mut secret_namespaces: BTreeMap<String, String> = BTreeMap::new();
    for secret in &m.secrets {
        let (namespace, name) = ns!(secret.metadata);
        match secret_namespaces.get(&name) {
            Some(first) if *first != namespace => problems.push(CheckError::SecretNameClash {
                name,
                first: first.clone(),
                second: namespace,
            }),
            _ => {
                secret_namespaces.insert(name, namespace);
            }
        }
    }

    let has_key = |namespace: &str, secret: &str, key: &str| {
        m.secrets.iter().any(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata.name.as_deref() == Some(secret)
                && (s.data.as_ref().is_some_and(|d| d.contains_key(key))
                    || s.string_data.as_ref().is_some_and(|d| d.contains_key(key)))
        })
    };
    for target in &m.targets {
        let (namespace, name) = ns!(target.metadata);
        if let Some(auth) = &target.spec.auth {
            for (field, rule) in auth_rules_broken(&target.spec, auth) {
                problems.push(CheckError::Rule {
                    owner: format!("ApiTarget {namespace}/{name}"),
                    field: format!("spec.{field}"),
                    rule,
                });
            }
        }
        let spec = &target.spec;
        let max_in_flight = spec.max_in_flight.or(Some(defaults::MAX_IN_FLIGHT));
        for (field, rule) in policy_rules(
            spec.timeout,
            spec.circuit_breaker.as_ref(),
            spec.rate_limit.as_ref(),
            (spec.concurrency.as_ref(), max_in_flight),
        ) {
            problems.push(CheckError::Rule {
                owner: format!("ApiTarget {namespace}/{name}"),
                field: format!("spec.{field}"),
                rule,
            });
        }
        for (secret, key) in secret_keys(target.spec.auth.as_ref()) {
            if !has_key(&namespace, &secret, &key) {
                problems.push(CheckError::MissingSecretKey {
                    owner: format!("ApiTarget {namespace}/{name}"),
                    field: "spec.auth",
                    namespace: namespace.clone(),
                    secret,
                    key,
                });
            }
        }
    }

    for route in &m.routes {
        let (namespace, name) = ns!(route.metadata);
        let label = format!("{namespace}/{name}");
        if !(name.len() <= 63 && is_dns_label(&name)) {
            problems.push(CheckError::RouteName {
                namespace: namespace.clone(),
                name: name.clone(),
            });
        }
        let rule = |field: &str, rule| CheckError::Rule {
            owner: format!("FanOutRoute {label}"),
            field: field.to_string(),
            rule,
        };
        if let Some(source) = &route.spec.source {
            for (field, broken) in source_rules(source) {
                problems.push(rule(&format!("spec.source{field}"), broken));
            }
            if source.replicas.is_some_and(|r| r != 1 && r != 3) {
                problems.push(rule("spec.source.replicas", "replicas must be 1 or 3"));
            }
            if source
                .subjects
                .iter()
                .any(|s| s == "fanout" || s.starts_with(RESERVED_SUBJECT_PREFIX))
            {
                problems.push(rule(
                    "spec.source.subjects",
                    "subjects under 'fanout.' are reserved for Fanout's own ingest, redrive and dead-letter subjects",
                ));
            }
        }
        let dead_letter_age = route
            .spec
            .dead_letter
            .as_ref()
            .and_then(|d| d.retention.as_ref())
            .and_then(|r| r.max_age);
        if dead_letter_age.is_some_and(|age| !max_age_allowed(age)) {
            problems.push(rule(
                "spec.deadLetter.retention.maxAge",
                rules::MAX_AGE_MINIMUM,
            ));
        }
        for (index, t) in route.spec.targets.iter().enumerate() {
            let at = format!("spec.targets[{index}]");
            if t.filter.as_ref().is_some_and(|f| has_repeats(&f.subjects)) {
                problems.push(rule(
                    &format!("{at}.filter.subjects"),
                    rules::SUBJECTS_UNIQUE,
                ));
            }
            if let Some(o) = &t.overrides {
                for (field, broken) in policy_rules(
                    o.timeout,
                    o.circuit_breaker.as_ref(),
                    o.rate_limit.as_ref(),
                    // Without maxInFlight here, the ApiTarget's applies: rendering
                    // checks the combination.
                    (o.concurrency.as_ref(), o.max_in_flight),
                ) {
                    problems.push(rule(&format!("{at}.overrides.{field}"), broken));
                }
            }
            if let Some(ordering) = &t.ordering {
                let key = &ordering.key;
                let sources = usize::from(key.header.is_some())
                    + usize::from(key.partition_key == Some(true))
                    + usize::from(key.cel.is_some());
                if sources != 1 {
                    problems.push(rule(
                        &format!("{at}.ordering.key"),
                        rules::ORDERING_KEY_ONE_SOURCE,
                    ));
                }
                if key
                    .header
                    .as_deref()
                    .is_some_and(|h| !ordering_key_header_allowed(h))
                {
                    problems.push(rule(
                        &format!("{at}.ordering.key.header"),
                        rules::ORDERING_KEY_HEADER,
                    ));
                }
            }
        }
        if let Some(dispatcher) = &route.spec.dispatcher {
            if dispatcher.replicas.is_some() && dispatcher.autoscaling.is_some() {
                problems.push(rule(
                    "spec.dispatcher",
                    "set replicas or autoscaling, not both",
                ));
            }
            if let Some(a) = &dispatcher.autoscaling
                && a.min_replicas.is_some_and(|min| min > a.max_replicas)
            {
                problems.push(rule(
                    "spec.dispatcher.autoscaling",
                    "minReplicas must be at most maxReplicas",
                ));
            }
        }
        if let Some(gateway) = &route.spec.gateway
            && gateway.allow_unauthenticated == Some(true)
            && !gateway.bearer_tokens.is_empty()
        {
            problems.push(rule(
                "spec.gateway",
                "allowUnauthenticated cannot be combined with bearerTokens",
            ));
        }
        let mut targets = BTreeSet::new();
        for t in &route.spec.targets {
            if !is_dns_label(&t.name) {
                problems.push(CheckError::TargetName {
                    route: label.clone(),
                    target: t.name.clone(),
                });
            }
            if !targets.insert(t.name.as_str()) {
                problems.push(CheckError::DuplicateTarget {
                    route: label.clone(),
                    target: t.name.clone(),
                });
            }
        }
        for token in route.spec.gateway.iter().flat_map(|g| &g.bearer_tokens) {
            if !has_key(&namespace, &token.name, &token.key) {
                problems.push(CheckError::MissingSecretKey {
                    owner: format!("FanOutRoute {label}"),
                    field: "spec.gateway.bearerTokens",
                    namespace: namespace.clone(),
                    secret: token.name.clone(),
                    key: token.key.clone(),
                });
            }
        }
    }
    problems.extend(subjects_of_two_routes(m));
    problems
}

/// Source subjects that two routes share: JetStream would refuse the second stream.
/// (An apiserver cannot see it; the operator reports JetStream's refusal.)
fn subjects_of_two_routes(m: &Manifests) -> Vec<CheckError> {
    let label = |r: &fanout_api::FanOutRoute| {
        format!(
            "{}/{}",
            r.metadata.namespace.as_deref().unwrap_or_default(),
            r.metadata.name.as_deref().unwrap_or_default()
        )
    };
    let subjects = |r: &fanout_api::FanOutRoute| {
        r.spec
            .source
            .as_ref()
            .map(|s| s.subjects.clone())
            .unwrap_or_default()
    };
    let mut problems = Vec::new();
    for (i, route) in m.routes.iter().enumerate() {
        for other in &m.routes[i + 1..] {
            for subject in subjects(route) {
                if let Some(other_subject) = subjects(other)
                    .into_iter()
                    .find(|o| subject_patterns_collide(&subject, o))
                {
                    problems.push(CheckError::SubjectsOfTwoRoutes {
                        route: label(other),
                        subject: other_subject,
                        other_route: label(route),
                        other_subject: subject,
                    });
                }
            }
        }
    }
    problems
}

/// The CRD's rule on `ordering.key.header`: an HTTP token that carries no
/// credentials.
fn ordering_key_header_allowed(name: &str) -> bool {
    let token = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&*+.^_|~-".contains(c));
    token
        && !["authorization", "proxy-authorization", "cookie"]
            .contains(&name.to_ascii_lowercase().as_str())
}

/// The CRD's rules on the policy fields of an ApiTarget or a route's overrides
/// broken by these values: (field below the policy, message). `concurrency` comes
/// with the maxInFlight it is checked against, when the same object sets one.
fn policy_rules(
    timeout: Option<Duration>,
    breaker: Option<&CircuitBreakerSpec>,
    rate_limit: Option<&RateLimitSpec>,
    (concurrency, max_in_flight): (Option<&ConcurrencySpec>, Option<u32>),
) -> Vec<(&'static str, &'static str)> {
    let mut broken = Vec::new();
    if timeout.is_some_and(|t| t == Duration::ZERO) {
        broken.push(("timeout", rules::TIMEOUT_POSITIVE));
    }
    if breaker.and_then(|b| b.window) == Some(Duration::ZERO) {
        broken.push(("circuitBreaker.window", rules::WINDOW_POSITIVE));
    }
    if let Some(limit) = rate_limit
        && !(0.001..=1_000_000.0).contains(&limit.requests_per_second)
    {
        broken.push((
            "rateLimit.requestsPerSecond",
            rules::REQUESTS_PER_SECOND_RANGE,
        ));
    }
    if let Some(c) = concurrency {
        if c.latency_tolerance
            .is_some_and(|t| !(1.1..=100.0).contains(&t))
        {
            broken.push((
                "concurrency.latencyTolerance",
                rules::LATENCY_TOLERANCE_RANGE,
            ));
        }
        if let (Some(min), Some(max)) = (c.min_in_flight, max_in_flight)
            && min > max
        {
            broken.push(("concurrency.minInFlight", rules::MIN_IN_FLIGHT_WITHIN_MAX));
        }
    }
    broken
}

/// The CRD's rules on `spec.source` broken by `source`: (field below it, message).
fn source_rules(source: &SourceSpec) -> Vec<(&'static str, &'static str)> {
    let mut broken = Vec::new();
    if has_repeats(&source.subjects) {
        broken.push((".subjects", rules::SUBJECTS_UNIQUE));
    }
    let max_age = source
        .retention
        .as_ref()
        .and_then(|r: &RetentionSpec| r.max_age);
    if max_age.is_some_and(|age| !max_age_allowed(age)) {
        broken.push((".retention.maxAge", rules::MAX_AGE_MINIMUM));
    }
    if source
        .duplicate_window
        .is_some_and(|w| w < MIN_STREAM_WINDOW)
    {
        broken.push((".duplicateWindow", rules::DUPLICATE_WINDOW_MINIMUM));
    }
    let max_age = max_age.unwrap_or(defaults::STREAM_MAX_AGE);
    let window = source
        .duplicate_window
        .unwrap_or(defaults::DUPLICATE_WINDOW);
    if max_age != Duration::ZERO && window > max_age {
        broken.push(("", rules::DUPLICATE_WINDOW_WITHIN_MAX_AGE));
    }
    broken
}

/// 0s (no age limit) or at least JetStream's minimum.
fn max_age_allowed(age: Duration) -> bool {
    age == Duration::ZERO || age >= MIN_STREAM_WINDOW
}

fn has_repeats(items: &[String]) -> bool {
    let mut seen = BTreeSet::new();
    !items.iter().all(|item| seen.insert(item))
}

/// Longest Secret name and key the apiserver accepts.
const MAX_SECRET_NAME: usize = 253;

/// Why the apiserver would refuse `name` as a Secret's name (a DNS-1123 subdomain:
/// dot-separated DNS labels, at most 253 characters). Standalone makes the name a
/// directory under the state directory, so this also keeps `/` and `..` out of it.
pub fn secret_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is required");
    }
    if name.len() > MAX_SECRET_NAME {
        return Some("must be at most 253 characters");
    }
    if !name.split('.').all(is_dns_label) {
        return Some(
            "must be a DNS subdomain: lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit",
        );
    }
    None
}

/// Why the apiserver would refuse `key` in a Secret's data (letters, digits, '-',
/// '_' and '.'; not '.' or '..' or starting with '..'; at most 253 characters).
/// Standalone makes the key a file name, so this also keeps `/` and `..` out of it.
pub fn secret_key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("must not be empty");
    }
    if key.len() > MAX_SECRET_NAME {
        return Some("must be at most 253 characters");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Some("must consist of letters, digits, '-', '_' or '.'");
    }
    if key == "." || key.starts_with("..") {
        return Some("must not be '.' or '..', nor start with '..'");
    }
    None
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, the rule the CRD states in CEL.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifests(text: &str) -> Manifests {
        Manifests::parse(text, "demo").unwrap()
    }

    const ROUTE: &str = "apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {name: orders}
spec:
  targets: [{name: api, apiTargetRef: {name: api}}]
  gateway: {bearerTokens: [{name: ingest, key: token}]}
";

    #[test]
    fn a_missing_secret_key_names_the_owner_and_field() {
        let problems = check(&manifests(ROUTE));
        assert_eq!(
            problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "FanOutRoute demo/orders: spec.gateway.bearerTokens: Secret demo/ingest has no key \"token\" in the manifests"
            ]
        );
        let with_secret = format!(
            "{ROUTE}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: ingest}}\nstringData: {{token: t}}\n"
        );
        assert_eq!(check(&manifests(&with_secret)), []);
    }

    #[test]
    fn names_that_would_break_nats_names_are_refused() {
        let text = ROUTE
            .replace("name: orders", "name: orders.v2")
            .replace("{name: api, apiTargetRef", "{name: Api, apiTargetRef");
        let problems: Vec<String> = check(&manifests(&text))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            problems[0].contains("orders.v2: metadata.name must be a DNS label"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("spec.targets[Api].name"),
            "{problems:?}"
        );
    }

    fn problems(text: &str) -> Vec<String> {
        check(&manifests(text))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn stream_windows_jetstream_refuses_are_named_like_the_crd_does() {
        let route = |source: &str| {
            format!(
                "apiVersion: fanout.dev/v1alpha1\nkind: FanOutRoute\nmetadata: {{name: orders}}\nspec:\n  targets: [{{name: api, apiTargetRef: {{name: api}}}}]\n  {source}\n"
            )
        };
        assert_eq!(
            problems(&route("source: {retention: {maxAge: 1m}}")),
            [format!(
                "FanOutRoute demo/orders: spec.source: {}",
                rules::DUPLICATE_WINDOW_WITHIN_MAX_AGE
            )]
        );
        assert_eq!(
            problems(&route("source: {duplicateWindow: 73h}")),
            [format!(
                "FanOutRoute demo/orders: spec.source: {}",
                rules::DUPLICATE_WINDOW_WITHIN_MAX_AGE
            )]
        );
        assert_eq!(
            problems(&route(
                "source: {duplicateWindow: 1h, retention: {maxAge: 1h}}"
            )),
            Vec::<String>::new(),
            "equal is allowed"
        );
        assert_eq!(
            problems(&route(
                "source: {duplicateWindow: 100h, retention: {maxAge: 0s}}"
            )),
            Vec::<String>::new(),
            "0s: no age limit"
        );
        assert_eq!(
            problems(&route("source: {duplicateWindow: 50ms}")),
            [format!(
                "FanOutRoute demo/orders: spec.source.duplicateWindow: {}",
                rules::DUPLICATE_WINDOW_MINIMUM
            )]
        );
        assert_eq!(
            problems(&route("deadLetter: {retention: {maxAge: 10ms}}")),
            [format!(
                "FanOutRoute demo/orders: spec.deadLetter.retention.maxAge: {}",
                rules::MAX_AGE_MINIMUM
            )]
        );
    }

    #[test]
    fn policy_values_that_cannot_work_are_named_in_targets_and_overrides() {
        let text = "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {name: api}
spec:
  url: http://127.0.0.1:1/
  timeout: 0s
  circuitBreaker: {window: 0s}
  rateLimit: {requestsPerSecond: 0.00000000001}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {name: orders}
spec:
  targets:
    - name: api
      apiTargetRef: {name: api}
      filter: {subjects: [a.b, a.b]}
      overrides: {timeout: 0s}
";
        assert_eq!(
            problems(text),
            [
                format!(
                    "ApiTarget demo/api: spec.timeout: {}",
                    rules::TIMEOUT_POSITIVE
                ),
                format!(
                    "ApiTarget demo/api: spec.circuitBreaker.window: {}",
                    rules::WINDOW_POSITIVE
                ),
                format!(
                    "ApiTarget demo/api: spec.rateLimit.requestsPerSecond: {}",
                    rules::REQUESTS_PER_SECOND_RANGE
                ),
                format!(
                    "FanOutRoute demo/orders: spec.targets[0].filter.subjects: {}",
                    rules::SUBJECTS_UNIQUE
                ),
                format!(
                    "FanOutRoute demo/orders: spec.targets[0].overrides.timeout: {}",
                    rules::TIMEOUT_POSITIVE
                ),
            ]
        );
    }

    #[test]
    fn routes_whose_streams_would_share_subjects_are_refused() {
        let route = |name: &str, subjects: &str| {
            format!(
                "---\napiVersion: fanout.dev/v1alpha1\nkind: FanOutRoute\nmetadata: {{name: {name}}}\nspec:\n  source: {{subjects: {subjects}}}\n  targets: [{{name: api, apiTargetRef: {{name: api}}}}]\n"
            )
        };
        let text = route("orders", "[shop.orders.>]") + &route("all", "[shop.*.placed]");
        assert_eq!(
            problems(&text),
            [
                "FanOutRoute demo/all: spec.source.subjects: \"shop.*.placed\" overlaps \"shop.orders.>\" of FanOutRoute demo/orders; JetStream refuses a stream whose subjects overlap another stream's"
            ]
        );
        let text = route("orders", "[shop.orders.>]") + &route("billing", "[shop.billing.>]");
        assert_eq!(problems(&text), Vec::<String>::new());
    }

    #[test]
    fn secret_names_and_keys_are_checked_like_the_apiserver_does() {
        for good in ["ingest", "a.b-c", "0"] {
            assert_eq!(secret_name_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            "A",
            "-a",
            "a..b",
            "a.",
            &"a".repeat(254),
        ] {
            assert!(secret_name_problem(bad).is_some(), "{bad}");
        }
        for good in ["token", "ca.crt", ".hidden", "a_b-C.9", "x..y"] {
            assert_eq!(secret_key_problem(good), None, "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "..x",
            "a/b",
            "a b",
            "é",
            &"k".repeat(254),
        ] {
            assert!(secret_key_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn a_secret_whose_name_or_key_would_leave_its_directory_is_named() {
        let text = format!(
            "{ROUTE}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: ingest}}\nstringData: {{token: t, ../../escape: x}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: ../up}}\ndata: {{k: eA==}}\n"
        );
        assert_eq!(
            problems(&text),
            [
                "Secret demo/ingest: stringData: key \"../../escape\" must consist of letters, digits, '-', '_' or '.'",
                "Secret demo/../up: metadata.name: must be a DNS subdomain: lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit",
            ]
        );
    }

    #[test]
    fn duplicates_and_an_empty_set_are_refused() {
        let twice = format!("{ROUTE}---\n{ROUTE}");
        assert!(check(&manifests(&twice)).contains(&CheckError::Duplicate {
            kind: "FanOutRoute",
            namespace: "demo".into(),
            name: "orders".into()
        }));
        assert_eq!(check(&Manifests::default()), [CheckError::NoRoutes]);
    }
}
