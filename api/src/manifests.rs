//! Reading Fanout manifests from YAML files, the way `kubectl apply -f` would see
//! them: for `fanout standalone` and for tests that render real manifests.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use crate::render::{RenderError, Rendered, render};
use crate::{ApiTarget, FanOutRoute};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {index}: not valid YAML")]
    Yaml {
        index: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("document {index} ({kind} {name}): does not match the {kind} schema")]
    Schema {
        index: usize,
        kind: String,
        name: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("document {index}: kind {kind:?} is not ApiTarget, FanOutRoute or Secret")]
    UnknownKind { index: usize, kind: String },
    #[error("route {namespace}/{name}")]
    Render {
        namespace: String,
        name: String,
        #[source]
        source: Box<RenderError>,
    },
    #[error("writing Secret {name} key {key} to {dir}")]
    WriteSecret {
        name: String,
        key: String,
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// The Fanout objects (and Secrets) of one or more manifest files.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub targets: Vec<ApiTarget>,
    pub routes: Vec<FanOutRoute>,
    pub secrets: Vec<Secret>,
}

impl Manifests {
    /// Parses multi-document YAML; objects without a namespace get `namespace`.
    pub fn parse(text: &str, namespace: &str) -> Result<Manifests, ManifestError> {
        let mut out = Manifests::default();
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml_ng::Value::deserialize(document)
                .map_err(|source| ManifestError::Yaml { index, source })?;
            if value.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let name = value["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let schema = |source| ManifestError::Schema {
                index,
                kind: kind.clone(),
                name: name.clone(),
                source,
            };
            match kind.as_str() {
                "ApiTarget" => {
                    let mut t: ApiTarget = serde_yaml_ng::from_value(value).map_err(schema)?;
                    t.metadata
                        .namespace
                        .get_or_insert_with(|| namespace.to_string());
                    out.targets.push(t);
                }
                "FanOutRoute" => {
                    let mut r: FanOutRoute = serde_yaml_ng::from_value(value).map_err(schema)?;
                    r.metadata
                        .namespace
                        .get_or_insert_with(|| namespace.to_string());
                    out.routes.push(r);
                }
                "Secret" => {
                    let mut s: Secret = serde_yaml_ng::from_value(value).map_err(schema)?;
                    s.metadata
                        .namespace
                        .get_or_insert_with(|| namespace.to_string());
                    out.secrets.push(s);
                }
                _ => return Err(ManifestError::UnknownKind { index, kind }),
            }
        }
        Ok(out)
    }

    pub fn extend(&mut self, other: Manifests) {
        self.targets.extend(other.targets);
        self.routes.extend(other.routes);
        self.secrets.extend(other.secrets);
    }

    /// Renders every route with the ApiTargets of its namespace; Secret keys are
    /// expected as files `<secrets_dir>/<secret>/<key>` (see [`write_secrets`](Self::write_secrets)).
    pub fn render(&self, secrets_dir: &Path) -> Result<Vec<Rendered>, ManifestError> {
        self.routes
            .iter()
            .map(|route| {
                let namespace = route.metadata.namespace.clone().unwrap_or_default();
                let lookup = |name: &str| {
                    self.targets.iter().find(|t| {
                        t.metadata.name.as_deref() == Some(name)
                            && t.metadata.namespace.as_deref() == Some(namespace.as_str())
                    })
                };
                render(route, lookup, secrets_dir).map_err(|source| ManifestError::Render {
                    namespace: namespace.clone(),
                    name: route.metadata.name.clone().unwrap_or_default(),
                    source: Box::new(source),
                })
            })
            .collect()
    }

    /// Writes every Secret key as a file readable only by this user, the layout a
    /// Secret volume has in a pod. Secrets of all namespaces share the directory, so
    /// standalone mode expects Secret names to be unique.
    pub fn write_secrets(&self, secrets_dir: &Path) -> Result<(), ManifestError> {
        for secret in &self.secrets {
            let name = secret.metadata.name.clone().unwrap_or_default();
            let mut values: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for (k, v) in secret.data.iter().flatten() {
                values.insert(k.clone(), v.0.clone());
            }
            for (k, v) in secret.string_data.iter().flatten() {
                values.insert(k.clone(), v.clone().into_bytes());
            }
            let dir = secrets_dir.join(&name);
            for (key, value) in values {
                let error = |source| ManifestError::WriteSecret {
                    name: name.clone(),
                    key: key.clone(),
                    dir: dir.display().to_string(),
                    source,
                };
                std::fs::create_dir_all(&dir).map_err(error)?;
                write_private(&dir.join(&key), &value).map_err(error)?;
            }
        }
        Ok(())
    }
}

fn write_private(path: &Path, value: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = "
apiVersion: v1
kind: Secret
metadata: {name: token}
stringData: {token: abc}
---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {name: api}
spec:
  url: http://127.0.0.1:1/hook
  auth: {bearer: {secretRef: {name: token, key: token}}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {name: orders}
spec:
  targets: [{name: api, apiTargetRef: {name: api}}]
---
";

    #[test]
    fn parses_renders_and_writes_secret_files() {
        let m = Manifests::parse(MANIFESTS, "demo").unwrap();
        assert_eq!(
            (m.targets.len(), m.routes.len(), m.secrets.len()),
            (1, 1, 1)
        );
        let dir = std::env::temp_dir().join(format!("fanout-manifests-{}", std::process::id()));
        m.write_secrets(&dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("token/token")).unwrap(),
            "abc"
        );
        let rendered = m.render(&dir).unwrap();
        assert_eq!(rendered[0].config.stream, "fanout_demo_orders");
        assert_eq!(
            rendered[0].config.targets[0]
                .credentials
                .bearer_token_file
                .as_deref(),
            Some(dir.join("token/token").as_path())
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_document() {
        let err = Manifests::parse("kind: Deployment\nmetadata: {name: x}\n", "demo").unwrap_err();
        assert_eq!(
            err.to_string(),
            "document 0: kind \"Deployment\" is not ApiTarget, FanOutRoute or Secret"
        );
        let err = Manifests::parse(
            "apiVersion: fanout.dev/v1alpha1\nkind: ApiTarget\nmetadata: {name: x}\nspec: {}\n",
            "demo",
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("document 0 (ApiTarget x)"),
            "{err}"
        );
    }

    #[test]
    fn a_route_without_its_target_is_reported_by_name() {
        let only_route = MANIFESTS.split("---").nth(2).unwrap();
        let m = Manifests::parse(only_route, "demo").unwrap();
        let err = m.render(Path::new("/s")).unwrap_err();
        assert_eq!(err.to_string(), "route demo/orders");
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(
            source,
            "targets[api].apiTargetRef: ApiTarget \"api\" does not exist"
        );
    }
}
