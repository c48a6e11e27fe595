//! Reads the `-f` files and directories into [`Manifests`], the way `kubectl apply -f`
//! would see them. Each document is checked against its CRD's schema before use, so
//! a mistake is refused with the file, the document and the field named, instead of
//! surfacing later (or, for a misspelt optional field, never).

use std::path::{Path, PathBuf};

use fanout_api::manifests::{ManifestError, Manifests};
use fanout_api::{ApiTarget, FanOutRoute};
use serde::Deserialize;

use crate::checks;
use crate::schema::{Refusal, Schemas};

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
    /// What the apiserver would say, in its words (see [`crate::schema`]).
    #[error("{document} is invalid:\n{refusal}")]
    Refused {
        document: Box<Document>,
        refusal: Refusal,
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
        if kind == "Secret" {
            secret_violation(&value).map_err(|(f, p)| field(f, p))?;
            continue;
        }
        if !schemas.knows(&kind) {
            return Err(ReadError::UnknownKind {
                path: path.to_path_buf(),
                document: document_number,
                kind,
            });
        }
        let json = serde_json::to_value(&value).map_err(|e| {
            field(
                "(document)".into(),
                format!("not representable as JSON: {e}"),
            )
        })?;
        if let Some(refusal) = schemas.refusal(&json) {
            return Err(ReadError::Refused {
                document: Box::new(Document {
                    path: path.to_path_buf(),
                    number: document_number,
                    kind,
                    name,
                }),
                refusal,
            });
        }
        // What the schema lets through, the types should take; if not, name the field.
        let typed = match kind.as_str() {
            "ApiTarget" => typed::<ApiTarget>(&value).map(drop),
            "FanOutRoute" => typed::<FanOutRoute>(&value).map(drop),
            _ => Ok(()),
        };
        typed.map_err(|(f, p)| field(f, p))?;
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
            "m.yaml: document 1 (ApiTarget api) is invalid:\nstrict decoding error: unknown field \"spec.retries\""
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
                "m.yaml: document 1 (ApiTarget api) is invalid:\n* spec.retry.maxAttempts: Invalid value: \"string\": spec.retry.maxAttempts in body must be of type integer: \"string\""
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
            err.ends_with("* spec.maxInFlight: Invalid value: 0: spec.maxInFlight in body should be greater than or equal to 1"),
            "{err}"
        );
        let route = "apiVersion: fanout.dev/v1alpha1\nkind: FanOutRoute\nmetadata: {name: r}\nspec: {targets: []}\n";
        assert!(check(route).unwrap_err().contains(
            "* spec.targets: Invalid value: 0: spec.targets in body should have at least 1 items"
        ));
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
        let err = check(
            "apiVersion: fanout.dev/v1alpha1\nkind: FanOutReplay\nmetadata: {name: r}\nspec: {route: orders, target: crm, window: {since: 1h}}\n",
        )
        .unwrap_err();
        assert_eq!(
            err,
            "m.yaml: document 1: kind \"FanOutReplay\" is not ApiTarget, FanOutRoute or Secret",
            "replays are the operator's (or `fanout replay`), not standalone's"
        );
        let err = check("kind: Deployment\n---\n").unwrap_err();
        assert_eq!(
            err,
            "m.yaml: document 1: kind \"Deployment\" is not ApiTarget, FanOutRoute or Secret"
        );
    }
}
