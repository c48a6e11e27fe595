//! The apiserver's checks of a custom resource on create, made from the CRDs
//! themselves: their openAPI schema ([`structural`]) and their CEL rules ([`rules`],
//! with the part of Kubernetes' CEL [`library`] they call). The CRD is the one
//! definition of a valid manifest; standalone refuses exactly what `kubectl apply`
//! refuses, in the same words ([`field_error`]). `cli/tests/validation_parity.rs`
//! holds both to the same corpus of invalid manifests.

pub mod field_error;
mod library;
pub mod rules;
pub mod structural;

use serde_json::Value;

use field_error::{FieldError, FieldPath, Problem, Shown};
use rules::Rules;
use structural::Patterns;

/// Why the apiserver would refuse a document.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// Strict decoding (what `kubectl apply` asks for) refuses fields the schema does
    /// not declare before any other check.
    UnknownFields(Vec<String>),
    /// Every problem the checks found, in the order the apiserver lists them: the
    /// openAPI checks, then the rules.
    Invalid(Vec<FieldError>),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownFields(fields) => {
                let each: Vec<String> = fields
                    .iter()
                    .map(|f| format!("unknown field {f:?}"))
                    .collect();
                write!(f, "strict decoding error: {}", each.join(", "))
            }
            Refusal::Invalid(errors) => {
                let each: Vec<String> = errors.iter().map(|e| format!("* {e}")).collect();
                f.write_str(&each.join("\n"))
            }
        }
    }
}

/// The openAPI schemas of the Fanout CRDs, with their patterns and rules compiled.
pub struct Schemas {
    kinds: Vec<(String, Value)>,
    patterns: Patterns,
    rules: Rules,
}

/// What the apiserver says of a missing or badly formed `metadata.name`.
const NAME_REQUIRED: &str = "name or generateName is required";
const SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const SUBDOMAIN_LENGTH: &str = "must be no more than 253 characters";

/// The kinds standalone runs; FanOutReplay is the operator's (and `fanout replay`'s).
const KINDS: [&str; 2] = ["ApiTarget", "FanOutRoute"];

impl Schemas {
    pub fn new() -> Schemas {
        let kinds: Vec<(String, Value)> = fanout_api::crd::all()
            .into_iter()
            .filter(|crd| KINDS.contains(&crd.spec.names.kind.as_str()))
            .filter_map(|crd| {
                let schema = crd.spec.versions.first()?.schema.as_ref()?;
                let schema = serde_json::to_value(schema.open_api_v3_schema.as_ref()?).ok()?;
                Some((crd.spec.names.kind.clone(), schema))
            })
            .collect();
        let mut patterns = Patterns::default();
        for (_, schema) in &kinds {
            patterns.extend(schema);
        }
        let rules = Rules::of(kinds.iter().map(|(_, s)| s));
        Schemas {
            kinds,
            patterns,
            rules,
        }
    }

    /// Whether `kind` is one standalone runs (and so checks).
    pub fn knows(&self, kind: &str) -> bool {
        self.kinds.iter().any(|(k, _)| k == kind)
    }

    /// How the apiserver would refuse `object` (of a kind [`knows`](Self::knows)
    /// returns true for) on create; `None` when it would accept it.
    pub fn refusal(&self, object: &Value) -> Option<Refusal> {
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let schema = &self.kinds.iter().find(|(k, _)| k == kind)?.1;
        let root = FieldPath::root();

        let mut unknown = Vec::new();
        for (name, field) in object.as_object()? {
            if matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                continue; // Kubernetes' own, not the CRD's
            }
            match structural::field_schema(schema, name) {
                Some(s) => structural::unknown_fields(s, field, &root.child(name), &mut unknown),
                None => unknown.push(name.clone()),
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            return Some(Refusal::UnknownFields(unknown));
        }

        let mut errors = metadata_name(object);
        // The status is the controller's: on create the apiserver drops it unchecked.
        let mut checked = object.clone();
        if let Some(fields) = checked.as_object_mut() {
            fields.remove("status");
        }
        structural::check(schema, &checked, &root, &self.patterns, &mut errors);
        if errors.iter().any(|e| e.problem.blocks_rules()) {
            errors.push(FieldError {
                field: FieldPath::root(),
                problem: Problem::Invalid {
                    shown: Shown::Null,
                    detail: "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".into(),
                },
            });
        } else {
            // The rules see only the name of the metadata.
            if let Some(meta) = checked.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.retain(|k, _| k == "name" || k == "generateName");
            }
            self.rules.check(schema, &checked, &root, &mut errors);
        }
        (!errors.is_empty()).then_some(Refusal::Invalid(errors))
    }
}

impl Default for Schemas {
    fn default() -> Self {
        Schemas::new()
    }
}

/// The apiserver's own check of a custom resource's name: a DNS subdomain.
fn metadata_name(object: &Value) -> Vec<FieldError> {
    let at = FieldPath::root().child("metadata").child("name");
    let name = object
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let invalid = |detail: &str| FieldError {
        field: at.clone(),
        problem: Problem::Invalid {
            shown: Shown::Text(name.to_string()),
            detail: detail.to_string(),
        },
    };
    if name.is_empty() {
        return vec![FieldError {
            field: at.clone(),
            problem: Problem::Required {
                detail: NAME_REQUIRED.into(),
            },
        }];
    }
    let mut errors = Vec::new();
    if name.len() > 253 {
        errors.push(invalid(SUBDOMAIN_LENGTH));
    }
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.split('.').all(label) {
        errors.push(invalid(SUBDOMAIN));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_and_pattern_of_the_crds_compiles_here() {
        let schemas = Schemas::new();
        assert!(schemas.knows("ApiTarget") && schemas.knows("FanOutRoute"));
        assert!(!schemas.knows("FanOutReplay"));
        assert_eq!(schemas.rules.not_compiled(), Vec::new());
        assert!(schemas.patterns.not_compiled().is_empty());
    }

    fn refusal(yaml: &str) -> Option<String> {
        let value: Value = serde_yaml_ng::from_str(yaml).unwrap();
        Schemas::new().refusal(&value).map(|r| r.to_string())
    }

    #[test]
    fn a_rule_that_reads_old_self_is_left_to_updates_and_the_rest_run() {
        let route = "apiVersion: fanout.dev/v1alpha1\nkind: FanOutRoute\nmetadata: {name: orders}\nspec: {targets: [{name: api, apiTargetRef: {name: api}}], source: {storage: memory}}";
        assert_eq!(refusal(route), None);
        assert_eq!(
            refusal(&route.replace("storage: memory", "replicas: 2")).as_deref(),
            Some("* spec.source.replicas: Invalid value: \"integer\": replicas must be 1 or 3")
        );
    }

    #[test]
    fn a_wrong_type_stops_the_rules_as_in_the_apiserver() {
        let target = "apiVersion: fanout.dev/v1alpha1\nkind: ApiTarget\nmetadata: {name: api}\nspec: {url: 'ftp://x/', maxInFlight: many}";
        let said = refusal(target).unwrap();
        assert!(said.contains("must be of type integer"), "{said}");
        assert!(
            said.contains("some validation rules were not checked"),
            "{said}"
        );
        assert!(!said.contains("url must be"), "{said}");
    }
}
