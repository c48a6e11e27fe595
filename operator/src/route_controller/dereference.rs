//! Step 1, dereference: what the route refers to. Its ApiTargets come from the watch
//! cache; the Secrets its dispatcher pods would mount, and those of its ingest
//! tokens, are read from the API server (for a route that renders) and their keys
//! checked. Secret values are never kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use fanout_api::{ApiTarget, FanOutRoute};
use kube::runtime::reflector::ObjectRef;

use super::Names;
use crate::context::Context;
use crate::dispatcher_objects::{DispatcherSettings, NATS_CA_KEY, OTLP_HEADERS_KEY};
use crate::error::Error;
use crate::route_status::Ingest;
use crate::secrets::{self, Found, Missing, SecretKeys};

/// The ApiTargets a route names that exist, by name. A missing one is left out:
/// rendering reports it.
pub(super) type ApiTargets = BTreeMap<String, Arc<ApiTarget>>;

/// The ApiTarget cache is gone: the operator is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("a watch cache stopped (the operator is shutting down)")]
pub(super) struct CacheGone;

impl From<CacheGone> for Error {
    fn from(_: CacheGone) -> Error {
        Error::CacheGone
    }
}

/// The ApiTargets `route` names, from the cache.
pub(super) async fn api_targets(
    ctx: &Context,
    route: &FanOutRoute,
    names: &Names,
) -> Result<ApiTargets, CacheGone> {
    // Until the ApiTarget cache has synced, every target would look missing.
    ctx.targets_ready.wait().await.map_err(|_| CacheGone)?;
    Ok(route
        .spec
        .targets
        .iter()
        .filter_map(|t| {
            let name = &t.api_target_ref.name;
            ctx.targets
                .get(&ObjectRef::new(name).within(&names.namespace))
                .map(|a| (name.clone(), a))
        })
        .collect())
}

/// The Secret keys the route's dispatcher pods mount: the targets' auth and signing
/// secrets, and the platform's NATS credentials, NATS CA and trace-export headers.
pub(super) fn secret_keys(targets: &ApiTargets, settings: &DispatcherSettings) -> SecretKeys {
    let mut wanted = secrets::dispatcher_secrets(targets.values().map(Arc::as_ref));
    let mut want = |secret: &str, key: &str| {
        wanted
            .entry(secret.to_string())
            .or_default()
            .insert(key.to_string());
    };
    if let Some(auth) = &settings.nats_auth {
        let (secret, key) = auth.secret_key();
        want(secret, key);
    }
    if let Some(secret) = &settings.nats_ca_secret {
        want(secret, NATS_CA_KEY);
    }
    let otlp_headers = settings.otlp.as_ref();
    if let Some(secret) = otlp_headers.and_then(|o| o.headers_secret.as_ref()) {
        want(secret, OTLP_HEADERS_KEY);
    }
    wanted
}

/// How the gateway takes `route`'s producers, or the first ingest token Secret key
/// that is missing (the gateway then lists the route with `tokensPending`; see
/// `gateway_sync`). The error is the API server failing.
pub(super) async fn ingest(
    ctx: &Context,
    route: &FanOutRoute,
    names: &Names,
) -> Result<Result<Ingest, Missing>, Error> {
    let gateway = route.spec.gateway.as_ref();
    let tokens = gateway.map_or(0, |g| g.bearer_tokens.len());
    if tokens == 0 {
        let anonymous = gateway.and_then(|g| g.allow_unauthenticated) == Some(true);
        return Ok(Ok(if anonymous {
            Ingest::Unauthenticated
        } else {
            Ingest::NatsOnly
        }));
    }
    let wanted = secrets::gateway_token_secrets(route);
    Ok(secrets::check(&ctx.client, &names.namespace, &wanted)
        .await?
        .map(|_| Ingest::Tokens(tokens)))
}

/// Reads the Secrets of `wanted` and checks their keys. The outer error is the API
/// server failing (retried); the inner one a Secret or key the user has yet to create.
pub(super) async fn secrets(
    ctx: &Context,
    names: &Names,
    wanted: &SecretKeys,
) -> Result<Result<Found, Missing>, Error> {
    secrets::check(&ctx.client, &names.namespace, wanted).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::dispatcher_objects::{NatsAuth, OtlpSettings};

    use super::*;

    fn target(name: &str, secret: &str) -> Arc<ApiTarget> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "fanout.dev/v1alpha1", "kind": "ApiTarget",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"url": "https://crm.example/hook",
                         "auth": {"bearer": {"secretRef": {"name": secret, "key": "token"}}}}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_pods_mount_the_targets_secrets_and_the_platforms() {
        let targets = ApiTargets::from([
            ("crm".to_string(), target("crm", "crm-auth")),
            ("erp".to_string(), target("erp", "shared")),
        ]);
        let settings = DispatcherSettings {
            image: "fanout:1".into(),
            image_pull_policy: "IfNotPresent".into(),
            nats_url: "nats://nats:4222".into(),
            nats_auth: Some(NatsAuth::Token {
                secret: "shared".into(),
            }),
            nats_ca_secret: Some("nats-ca".into()),
            egress_deny: Vec::new(),
            egress_allow: Vec::new(),
            log: "info".into(),
            log_format: "text".into(),
            otlp: Some(OtlpSettings {
                endpoint: "http://collector:4318".into(),
                sampling_ratio: 1.0,
                headers_secret: Some("otlp".into()),
            }),
        };
        let keys = |k: &[&str]| k.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            secret_keys(&targets, &settings),
            SecretKeys::from([
                ("crm-auth".to_string(), keys(&["token"])),
                ("nats-ca".to_string(), keys(&[NATS_CA_KEY])),
                ("otlp".to_string(), keys(&[OTLP_HEADERS_KEY])),
                // One Secret may serve a target and the platform: both keys mounted.
                ("shared".to_string(), keys(&["token", NatsAuth::TOKEN_KEY])),
            ])
        );
    }
}
