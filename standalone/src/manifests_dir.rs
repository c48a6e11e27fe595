//! Reads the `-f` files and directories into [`Manifests`], the way `kubectl apply -f`
//! would see them. Each document is checked against its CRD's schema before use, so
//! a mistake is refused with the file, the document and the field named, instead of
//! surfacing later (or, for a misspelt optional field, never).

use std::path::{Path, PathBuf};

use fanout_api::manifests::{ManifestError, Manifests};
use fanout_api::{ApiTarget, FanOutRoute};
use serde::Deserialize;
use serde_json::Value;

use crate::checks;

/// Why the manifests could not be read. Documents are counted from 1.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: reading")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the directory has no manifest files (*.yaml, *.yml, *.json)")]
    EmptyDirectory { path: PathBuf },
    #[error("{path}: document {document}: not valid YAML")]
    Yaml {
        path: PathBuf,
        document: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{document}: {field}: {problem}")]
    Field {
        document: Box<Document>,
        field: String,
        problem: String,
    },
    #[error("{path}: document {document}: kind {kind:?} is not ApiTarget, FanOutRoute or Secret")]
    UnknownKind {
        path: PathBuf,
        document: usize,
        kind: String,
    },
    #[error("{path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
}

/// Where a document is: its file, number and object.
#[derive(Debug)]
pub struct Document {
    pub path: PathBuf,
    pub number: usize,
    pub kind: String,
    pub name: String,
}

impl std::fmt::Display for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: document {} ({} {})",
            self.path.display(),
            self.number,
            self.kind,
            self.name
        )
    }
}

/// Reads every file and directory in `paths`; objects without a namespace get
/// `namespace`.
pub fn read(paths: &[PathBuf], namespace: &str) -> Result<Manifests, ReadError> {
    let schemas = Schemas::new();
    let mut all = Manifests::default();
    for path in paths {
        for file in manifest_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|source| ReadError::Read {
                path: file.clone(),
                source,
            })?;
            check_documents(&file, &text, &schemas)?;
            let parsed =
                Manifests::parse(&text, namespace).map_err(|source| ReadError::Manifest {
                    path: file.clone(),
                    source,
                })?;
            all.extend(parsed);
        }
    }
    Ok(all)
}

/// A file as it is, or a directory's manifest files in name order (not recursive,
/// like `kubectl apply -f DIR`).
fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let read_error = |source| ReadError::Read {
        path: path.to_path_buf(),
        source,
    };
    if !std::fs::metadata(path).map_err(read_error)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_error)? {
        let file = entry.map_err(read_error)?.path();
        let manifest = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if manifest && file.is_file() {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(ReadError::EmptyDirectory {
            path: path.to_path_buf(),
        });
    }
    files.sort();
    Ok(files)
}

/// The openAPI schemas of the two CRDs, as the apiserver would check them.
struct Schemas {
    api_target: Value,
    route: Value,
}

impl Schemas {
    fn new() -> Schemas {
        let mut schemas = fanout_api::crd::all().into_iter().map(|crd| {
            let kind = crd.spec.names.kind.clone();
            let schema = crd
                .spec
                .versions
                .first()
                .and_then(|v| v.schema.as_ref())
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .map(|s| serde_json::to_value(s).expect("a CRD schema serializes"))
                .unwrap_or(Value::Null);
            (kind, schema)
        });
        let mut find = |kind: &str| {
            schemas
                .find(|(k, _)| k == kind)
                .map(|(_, s)| s)
                .unwrap_or(Value::Null)
        };
        Schemas {
            api_target: find("ApiTarget"),
            route: find("FanOutRoute"),
        }
    }
}

fn check_documents(path: &Path, text: &str, schemas: &Schemas) -> Result<(), ReadError> {
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document_number = index + 1;
        let value =
            serde_yaml_ng::Value::deserialize(document).map_err(|source| ReadError::Yaml {
                path: path.to_path_buf(),
                document: document_number,
                source,
            })?;
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let field = |field: String, problem: String| ReadError::Field {
            document: Box::new(Document {
                path: path.to_path_buf(),
                number: document_number,
                kind: kind.clone(),
                name: name.clone(),
            }),
            field,
            problem,
        };
        let schema = match kind.as_str() {
            "ApiTarget" => {
                typed::<ApiTarget>(&value).map_err(|(f, p)| field(f, p))?;
                &schemas.api_target
            }
            "FanOutRoute" => {
                typed::<FanOutRoute>(&value).map_err(|(f, p)| field(f, p))?;
                &schemas.route
            }
            "Secret" => {
                secret_violation(&value).map_err(|(f, p)| field(f, p))?;
                continue;
            }
            _ => {
                return Err(ReadError::UnknownKind {
                    path: path.to_path_buf(),
                    document: document_number,
                    kind,
                });
            }
        };
        if name.is_empty() {
            return Err(field("metadata.name".into(), "is required".into()));
        }
        let json = serde_json::to_value(&value).map_err(|e| {
            field(
                "(document)".into(),
                format!("not representable as JSON: {e}"),
            )
        })?;
        // apiVersion, kind and metadata are Kubernetes' own; the CRD describes spec.
        let spec_schema = &schema["properties"]["spec"];
        if let Some((at, problem)) = schema_violation(spec_schema, &json["spec"], "spec".into()) {
            return Err(field(at, problem));
        }
    }
    Ok(())
}

/// A Secret's name or data key the apiserver would refuse. Standalone writes each key
/// to `<state>/secrets/<name>/<key>`, so this is also what keeps a `../` in either
/// from writing outside the state directory.
fn secret_violation(value: &serde_yaml_ng::Value) -> Result<(), (String, String)> {
    let name = value["metadata"]["name"].as_str().unwrap_or_default();
    if let Some(problem) = checks::secret_name_problem(name) {
        return Err(("metadata.name".into(), problem.into()));
    }
    for field in ["data", "stringData"] {
        let Some(keys) = value[field].as_mapping() else {
            continue;
        };
        for key in keys.keys() {
            let key = key.as_str().unwrap_or_default();
            if let Some(problem) = checks::secret_key_problem(key) {
                return Err((field.into(), format!("key {key:?} {problem}")));
            }
        }
    }
    Ok(())
}

/// Deserializes into the API type and, on failure, names the field at fault.
fn typed<T: serde::de::DeserializeOwned>(
    value: &serde_yaml_ng::Value,
) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." {
            "(document)".into()
        } else {
            field
        };
        (field, e.inner().to_string())
    })
}

/// The first place where `value` breaks a structural rule of `schema` that the types
/// alone do not enforce: unknown fields, sizes, ranges and enums. (CEL rules are the
/// apiserver's; the checks that matter for running are repeated by rendering.)
fn schema_violation(schema: &Value, value: &Value, at: String) -> Option<(String, String)> {
    let here = || {
        if at.is_empty() {
            "(document)".to_string()
        } else {
            at.clone()
        }
    };
    let join = |key: &str| {
        if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        }
    };
    let number = |k: &str| schema.get(k).and_then(Value::as_f64);
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let open = schema
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            for (key, field) in fields {
                let field_schema = match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(s), _) => s,
                    (None, Some(s @ Value::Object(_))) => s,
                    (None, Some(Value::Bool(true))) => continue,
                    (None, _) if open || properties.is_none() => continue,
                    (None, _) => {
                        return Some((join(key), "unknown field (is it misspelt?)".into()));
                    }
                };
                if let Some(found) = schema_violation(field_schema, field, join(key)) {
                    return Some(found);
                }
            }
            if let Some(most) = number("maxProperties")
                && fields.len() as f64 > most
            {
                return Some((here(), format!("at most {most} entries")));
            }
            None
        }
        Value::Array(items) => {
            if let Some(least) = number("minItems")
                && (items.len() as f64) < least
            {
                return Some((here(), format!("needs at least {least} items")));
            }
            if let Some(most) = number("maxItems")
                && items.len() as f64 > most
            {
                return Some((here(), format!("at most {most} items")));
            }
            let item_schema = schema.get("items")?;
            items.iter().enumerate().find_map(|(i, item)| {
                schema_violation(item_schema, item, format!("{}[{i}]", here()))
            })
        }
        Value::String(text) => {
            let length = text.chars().count() as f64;
            if let Some(least) = number("minLength")
                && length < least
            {
                return Some((here(), format!("must have at least {least} characters")));
            }
            if let Some(most) = number("maxLength")
                && length > most
            {
                return Some((here(), format!("must have at most {most} characters")));
            }
            if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
                && !allowed.iter().any(|a| a.as_str() == Some(text))
            {
                return Some((here(), format!("{text:?} is not one of {allowed:?}")));
            }
            None
        }
        Value::Number(n) => {
            let n = n.as_f64()?;
            if let Some(least) = number("minimum")
                && n < least
            {
                return Some((here(), format!("must be at least {least}")));
            }
            if let Some(most) = number("maximum")
                && n > most
            {
                return Some((here(), format!("must be at most {most}")));
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), String> {
        check_documents(Path::new("m.yaml"), text, &Schemas::new()).map_err(|e| e.to_string())
    }

    const TARGET: &str =
        "apiVersion: fanout.dev/v1alpha1\nkind: ApiTarget\nmetadata: {name: api}\n";

    #[test]
    fn a_valid_target_passes() {
        check(&format!(
            "{TARGET}spec: {{url: 'http://x/', headers: {{X-A: b}}}}\n"
        ))
        .unwrap();
    }

    #[test]
    fn a_misspelt_field_is_named() {
        let err = check(&format!(
            "{TARGET}spec: {{url: 'http://x/', retries: {{maxAttempts: 3}}}}\n"
        ))
        .unwrap_err();
        assert_eq!(
            err,
            "m.yaml: document 1 (ApiTarget api): spec.retries: unknown field (is it misspelt?)"
        );
    }

    #[test]
    fn a_wrong_type_is_named_with_its_path() {
        let err = check(&format!(
            "---\n{TARGET}spec: {{url: 'http://x/', retry: {{maxAttempts: many}}}}\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with(
                "m.yaml: document 1 (ApiTarget api): spec.retry.maxAttempts: invalid type"
            ),
            "{err}"
        );
    }

    #[test]
    fn ranges_sizes_and_kinds_are_checked() {
        let err = check(&format!(
            "{TARGET}spec: {{url: 'http://x/', maxInFlight: 0}}\n"
        ))
        .unwrap_err();
        assert!(
            err.ends_with("spec.maxInFlight: must be at least 1"),
            "{err}"
        );
        let route = "apiVersion: fanout.dev/v1alpha1\nkind: FanOutRoute\nmetadata: {name: r}\nspec: {targets: []}\n";
        assert!(
            check(route)
                .unwrap_err()
                .ends_with("spec.targets: needs at least 1 items")
        );
        let err = check("apiVersion: v1\nkind: Secret\nmetadata: {name: ../x}\n").unwrap_err();
        assert!(
            err.starts_with("m.yaml: document 1 (Secret ../x): metadata.name: must be a DNS"),
            "{err}"
        );
        let err = check(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {a: b, ../k: c}\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("m.yaml: document 1 (Secret s): stringData: key \"../k\" must"),
            "{err}"
        );
        let err = check("kind: Deployment\n---\n").unwrap_err();
        assert_eq!(
            err,
            "m.yaml: document 1: kind \"Deployment\" is not ApiTarget, FanOutRoute or Secret"
        );
    }
}
