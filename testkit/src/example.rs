//! The scenarios shipped in `examples/`, as a user applies them: every document of
//! the folder unchanged (Secrets and their values included) except the URLs of the
//! ApiTargets, which tests point at their own targets.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_yaml_ng::Value;

/// One folder of `examples/`, its documents in file-name order.
#[derive(Clone, Debug)]
pub struct Example {
    name: String,
    documents: Vec<Value>,
}

impl Example {
    /// Reads `examples/<name>/*.yaml`.
    pub fn load(name: &str) -> anyhow::Result<Example> {
        let dir = crate::repo_root().join("examples").join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.retain(|f| f.extension().is_some_and(|e| e == "yaml"));
        files.sort();
        let mut documents = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            for document in serde_yaml_ng::Deserializer::from_str(&text) {
                let value = <Value as serde::Deserialize>::deserialize(document)
                    .with_context(|| format!("parsing {}", file.display()))?;
                if !value.is_null() {
                    documents.push(value);
                }
            }
        }
        Ok(Example {
            name: name.to_string(),
            documents,
        })
    }

    /// Sends ApiTarget `target`'s events to `url` instead of the example's host.
    pub fn point(mut self, target: &str, url: &str) -> anyhow::Result<Example> {
        let document = self
            .documents
            .iter_mut()
            .find(|d| kind(d) == Some("ApiTarget") && name(d) == Some(target));
        let Some(document) = document else {
            bail!("examples/{} has no ApiTarget {target}", self.name);
        };
        document["spec"]["url"] = Value::String(url.to_string());
        Ok(self)
    }

    /// The name of the example's only FanOutRoute.
    pub fn route(&self) -> anyhow::Result<&str> {
        let mut routes = self
            .documents
            .iter()
            .filter(|d| kind(d) == Some("FanOutRoute"))
            .filter_map(name);
        match (routes.next(), routes.next()) {
            (Some(route), None) => Ok(route),
            _ => bail!("examples/{} has not exactly one FanOutRoute", self.name),
        }
    }

    /// The value of `key` in the example's Secret `secret`, as shipped.
    pub fn secret(&self, secret: &str, key: &str) -> anyhow::Result<String> {
        self.documents
            .iter()
            .find(|d| kind(d) == Some("Secret") && name(d) == Some(secret))
            .and_then(|d| d["stringData"][key].as_str())
            .map(str::to_string)
            .with_context(|| format!("examples/{}: no Secret {secret} with key {key}", self.name))
    }

    /// Every document, as one multi-document YAML stream for `kubectl apply -f -` or a
    /// file for `fanout standalone -f`.
    pub fn yaml(&self) -> String {
        self.documents
            .iter()
            .map(|d| serde_yaml_ng::to_string(d).expect("a parsed document serializes"))
            .collect::<Vec<_>>()
            .join("---\n")
    }
}

fn kind(document: &Value) -> Option<&str> {
    document["kind"].as_str()
}

fn name(document: &Value) -> Option<&str> {
    document["metadata"]["name"].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_example_keeps_its_credentials_and_takes_new_urls() {
        let example = Example::load("order-placed")
            .unwrap()
            .point("inventory", "http://127.0.0.1:1/reserve")
            .unwrap();
        assert_eq!(example.route().unwrap(), "orders");
        assert_eq!(
            example.secret("inventory-token", "token").unwrap(),
            "replace-me-inventory-token"
        );
        let yaml = example.yaml();
        assert!(yaml.contains("url: http://127.0.0.1:1/reserve"), "{yaml}");
        assert!(!yaml.contains("inventory.shop.svc"), "{yaml}");
        assert!(yaml.contains("mailer.shop.svc"), "others keep theirs");
        assert!(example.clone().point("nobody", "http://x/").is_err());
    }
}
