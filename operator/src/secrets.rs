//! The Secrets a route or target depends on, and the check that each referenced key
//! exists. The operator reads Secrets only to check keys and to copy the gateway's
//! ingest tokens; their values never reach a ConfigMap or a log line.

use std::collections::{BTreeMap, BTreeSet};

use fanout_api::render::secret_keys;
use fanout_api::{ApiTarget, FanOutRoute};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::error::{Error, kube_error};

/// Secret name -> keys, for one namespace.
pub type SecretKeys = BTreeMap<String, BTreeSet<String>>;

/// The Secret keys the dispatchers of `route` mount: every referenced ApiTarget's
/// auth and signing secrets.
pub fn dispatcher_secrets<'a>(targets: impl IntoIterator<Item = &'a ApiTarget>) -> SecretKeys {
    let mut out = SecretKeys::new();
    for t in targets {
        for (secret, key) in secret_keys(t.spec.auth.as_ref()) {
            out.entry(secret).or_default().insert(key);
        }
    }
    out
}

/// The Secret keys holding the bearer tokens the gateway accepts for `route`.
pub fn gateway_token_secrets(route: &FanOutRoute) -> SecretKeys {
    let mut out = SecretKeys::new();
    for t in route.spec.gateway.iter().flat_map(|g| &g.bearer_tokens) {
        out.entry(t.name.clone()).or_default().insert(t.key.clone());
    }
    out
}

/// A referenced Secret or key that is not there: the user fixes it, the route says
/// so in its status.
#[derive(Debug, thiserror::Error)]
pub enum Missing {
    #[error("Secret {namespace}/{name} does not exist")]
    Secret { namespace: String, name: String },
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    Key {
        namespace: String,
        name: String,
        key: String,
    },
}

/// The Secrets as read: their resource versions (a change rolls dispatcher pods).
/// Values are not kept: nothing here needs them.
#[derive(Debug, Default)]
pub struct Found {
    pub versions: BTreeMap<String, String>,
}

/// Reads each Secret in `wanted` from `namespace` and checks its keys. The outer
/// error is the API server failing (retried); the inner one is a Secret or key the
/// user has not created yet.
pub async fn check(
    client: &kube::Client,
    namespace: &str,
    wanted: &SecretKeys,
) -> Result<Result<Found, Missing>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut found = Found::default();
    for (name, keys) in wanted {
        let Some(secret) = api
            .get_opt(name)
            .await
            .map_err(kube_error(format!("reading Secret {namespace}/{name}")))?
        else {
            return Ok(Err(Missing::Secret {
                namespace: namespace.into(),
                name: name.clone(),
            }));
        };
        for key in keys {
            let present = secret.data.as_ref().is_some_and(|d| d.contains_key(key))
                || secret
                    .string_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(key));
            if !present {
                return Ok(Err(Missing::Key {
                    namespace: namespace.into(),
                    name: name.clone(),
                    key: key.clone(),
                }));
            }
        }
        found.versions.insert(
            name.clone(),
            secret.metadata.resource_version.clone().unwrap_or_default(),
        );
    }
    Ok(Ok(found))
}

/// Whether any of `keys` refers to the Secret `name`.
pub fn mentions(keys: &SecretKeys, name: &str) -> bool {
    keys.contains_key(name)
}
