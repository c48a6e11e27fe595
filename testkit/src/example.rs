//! The scenarios shipped in `examples/`, as a user applies them: every document of
//! the folder unchanged (Secrets and their values included) except the URLs of the
//! ApiTargets, which tests point at their own targets.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_yaml_ng::Value;

use crate::target::TargetServer;

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

/// `Authorization` for HTTP Basic auth.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// The three APIs of `examples/order-placed` as scripted targets on `host`, each
/// refusing requests without the credentials the example's Secrets hold (as real
/// APIs would), and the example pointed at them.
pub struct OrderApis {
    pub example: Example,
    pub inventory: TargetServer,
    pub mailer: TargetServer,
    pub analytics: TargetServer,
}

impl OrderApis {
    pub async fn start_on(host: IpAddr) -> anyhow::Result<OrderApis> {
        let inventory = TargetServer::start_on(host).await?;
        let mailer = TargetServer::start_on(host).await?;
        let analytics = TargetServer::start_on(host).await?;
        let example = Example::load("order-placed")?
            .point("inventory", &inventory.url("/reservations"))?
            .point("mailer", &mailer.url("/v1/messages"))?
            .point("analytics", &analytics.url("/ingest"))?;
        let token = example.secret("inventory-token", "token")?;
        inventory.require_header("authorization", &[&format!("Bearer {token}")]);
        let basic = basic_auth(
            &example.secret("mailer-credentials", "username")?,
            &example.secret("mailer-credentials", "password")?,
        );
        mailer.require_header("authorization", &[&basic]);
        Ok(OrderApis {
            example,
            inventory,
            mailer,
            analytics,
        })
    }

    /// The Standard Webhooks secret the analytics API verifies signatures with.
    pub fn signing_secret(&self) -> String {
        self.example
            .secret("analytics-signing", "secret")
            .expect("the example holds it")
    }

    /// `Authorization` a producer sends to the gateway, with the example's token.
    pub fn ingest_authorization(&self) -> String {
        let token = self
            .example
            .secret("orders-ingest", "token")
            .expect("the example holds it");
        format!("Bearer {token}")
    }
}

/// The two APIs of `examples/user-registered`, likewise.
pub struct UserApis {
    pub example: Example,
    pub crm: TargetServer,
    pub welcome: TargetServer,
}

impl UserApis {
    pub async fn start_on(host: IpAddr) -> anyhow::Result<UserApis> {
        let crm = TargetServer::start_on(host).await?;
        let welcome = TargetServer::start_on(host).await?;
        let example = Example::load("user-registered")?
            .point("crm", &crm.url("/api/v2/contacts"))?
            .point("welcome-mailer", &welcome.url("/v1/welcome"))?;
        let token = example.secret("crm-token", "token")?;
        crm.require_header("authorization", &[&format!("Bearer {token}")]);
        let basic = basic_auth(
            &example.secret("welcome-mailer-credentials", "username")?,
            &example.secret("welcome-mailer-credentials", "password")?,
        );
        welcome.require_header("authorization", &[&basic]);
        Ok(UserApis {
            example,
            crm,
            welcome,
        })
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
