//! Checks that Kubernetes would make (unique names; the schema's CEL rules that
//! rendering does not repeat, restated here because no apiserver evaluates them in
//! standalone mode) or that the operator would report (a missing Secret key), made
//! before anything starts so that a bad set of manifests fails at once.

use std::collections::{BTreeMap, BTreeSet};

use fanout_api::manifests::Manifests;
use fanout_api::names::RESERVED_SUBJECT_PREFIX;
use fanout_api::render::secret_keys;

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
    #[error("{owner}: {field}: {rule}")]
    Rule {
        owner: String,
        field: &'static str,
        rule: &'static str,
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
        if let Some(auth) = &target.spec.auth
            && auth.bearer.is_some()
            && auth.basic.is_some()
        {
            problems.push(CheckError::Rule {
                owner: format!("ApiTarget {namespace}/{name}"),
                field: "spec.auth",
                rule: "choose one of bearer and basic, not both",
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
        let rule = |field, rule| CheckError::Rule {
            owner: format!("FanOutRoute {label}"),
            field,
            rule,
        };
        if let Some(source) = &route.spec.source {
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
    problems
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
