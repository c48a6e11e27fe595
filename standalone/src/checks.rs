//! Checks across objects, which no CRD schema can state: names defined twice, Secret
//! names and keys (Kubernetes' own rules; standalone makes them directory and file
//! names), routes whose streams would share subjects (JetStream's refusal), and Secret
//! keys a target or route needs but the manifests lack (the operator's report). Made
//! before anything starts, so that a bad set of manifests fails at once. Each object
//! on its own is checked against its CRD first ([`crate::schema`]).

use std::collections::{BTreeMap, BTreeSet};

use fanout_api::manifests::Manifests;
use fanout_api::names::subject_patterns_collide;
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

/// A DNS label: lowercase letters, digits and '-', not at either end.
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

    fn problems(text: &str) -> Vec<String> {
        check(&manifests(text))
            .iter()
            .map(ToString::to_string)
            .collect()
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
