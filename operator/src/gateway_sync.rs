//! Keeps the gateway's view of the routes current: one ConfigMap listing every route
//! (stream, ingest subjects, token files) and one Secret holding copies of each
//! route's ingest tokens, both in the operator's namespace where the gateway mounts
//! them. Routes live in many namespaces while the gateway runs in one, so the tokens
//! are copied; the copies are owned by this loop and refreshed when a source Secret
//! changes. The gateway re-reads both files by itself.
//!
//! The loop is driven by events, not a timer: the route watch wakes it on every
//! change to a route (see [`Changes`]), and so does the Secret metadata watch of
//! `--watch-secrets` on every change to a Secret. Each wake-up recomputes what the
//! gateway should have from the caches and writes only when that differs from what
//! was last written; the resourceVersions of the source token Secrets are part of
//! that comparison, so a rotated token is copied as soon as its watch event arrives.
//! A resync (`--gateway-resync`) rewrites everything now and then regardless. A token
//! whose Secret is not there yet (a route applied before its Secret, as `kubectl
//! apply -f` does for files sorted by name) is looked for again soon, backing off to
//! the resync, since without `--watch-secrets` no event tells when it appears.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fanout_api::FanOutRoute;
use fanout_api::render::gateway_route;
use fanout_config::error_chain;
use fanout_config::gateway::GatewayConfig;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::FIELD_MANAGER;
use crate::metrics::Metrics;

/// The key of the rendered configuration in the gateway's ConfigMap.
pub const CONFIG_KEY: &str = "gateway.yaml";
/// How soon a failed write is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How soon a token whose Secret was missing is looked for first; doubled on each
/// look that still misses it, up to the resync.
const MISSING_TOKEN_FIRST_LOOK: Duration = Duration::from_secs(1);
pub const CONTROLLER: &str = "gateway";

/// The wake-up call of the sync loop, shared by the watches that feed it. Notifying
/// while the loop is busy is remembered, and any number of notifications fold into
/// one pass over the caches.
#[derive(Clone, Default)]
pub struct Changes(Arc<Notify>);

impl Changes {
    /// Wakes the loop when `event` changed a cache. Call it after the reflector has
    /// applied the event, so that the loop reads the new state.
    pub fn on_event<K>(&self, event: &Result<watcher::Event<K>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                self.0.notify_one()
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_) => {}
        }
    }

    async fn changed(&self) {
        self.0.notified().await
    }
}

/// The Secret metadata caches of `--watch-secrets`, one per watched scope.
pub type SecretStores = Vec<Store<PartialObjectMeta<Secret>>>;

pub struct GatewaySync {
    pub client: kube::Client,
    pub namespace: String,
    pub config_map: String,
    pub tokens_secret: String,
    pub tokens_dir: PathBuf,
    /// The route caches of every watched namespace, and when each is filled.
    pub routes: Vec<Store<FanOutRoute>>,
    pub routes_ready: Vec<crate::readiness::Readiness>,
    /// With `--watch-secrets`: the Secret metadata caches, whose resourceVersions
    /// tell when a token Secret changed. Without them only the resync sees rotation.
    pub secrets: Option<SecretStores>,
    /// Fed by the route (and Secret) watches.
    pub changes: Changes,
    /// How often everything is rewritten even without a change.
    pub resync: Duration,
    pub metrics: Arc<Metrics>,
}

/// The resourceVersion of each source token Secret as the cache has it (`None`:
/// not there), by namespace and name.
pub type TokenVersions = BTreeMap<(String, String), Option<String>>;

/// The versions, in `stores`, of the Secrets `copies` read.
pub fn token_versions(
    stores: &[Store<PartialObjectMeta<Secret>>],
    copies: &[TokenCopy],
) -> TokenVersions {
    copies
        .iter()
        .map(|c| {
            let oref = ObjectRef::new(&c.secret).within(&c.namespace);
            let version = stores
                .iter()
                .find_map(|s| s.get(&oref))
                .and_then(|s| s.metadata.resource_version.clone());
            ((c.namespace.clone(), c.secret.clone()), version)
        })
        .collect()
}

/// One token to copy: from `namespace`/`secret`[`key`] to the gateway Secret's `file`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokenCopy {
    pub file: String,
    pub namespace: String,
    pub secret: String,
    pub key: String,
}

/// The gateway configuration for `routes` and the tokens it needs. Routes being
/// deleted are left out, so the gateway stops accepting their events first.
pub fn desired(
    routes: &[Arc<FanOutRoute>],
    tokens_dir: &std::path::Path,
) -> (GatewayConfig, Vec<TokenCopy>) {
    let mut routes: Vec<&Arc<FanOutRoute>> = routes
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .collect();
    routes.sort_by_key(|r| (r.namespace(), r.name_any()));
    let mut config = GatewayConfig::default();
    let mut copies = Vec::new();
    for route in routes {
        let namespace = route.namespace().unwrap_or_default();
        let name = route.name_any();
        // Namespace and route names are DNS labels, so this is a valid Secret key
        // and cannot collide between routes.
        let file = |i: usize| format!("{namespace}.{name}.{i}");
        let rendered = gateway_route(route, |i, _| tokens_dir.join(file(i)));
        match rendered {
            Ok(r) => config.routes.push(r),
            Err(error) => {
                tracing::warn!(route = %format!("{namespace}/{name}"), error = %error_chain(&error), "route left out of the gateway");
                continue;
            }
        }
        for (i, t) in route
            .spec
            .gateway
            .iter()
            .flat_map(|g| &g.bearer_tokens)
            .enumerate()
        {
            copies.push(TokenCopy {
                file: file(i),
                namespace: namespace.clone(),
                secret: t.name.clone(),
                key: t.key.clone(),
            });
        }
    }
    (config, copies)
}

impl GatewaySync {
    /// Runs until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        for ready in &self.routes_ready {
            if ready.wait().await.is_err() {
                return;
            }
        }
        for secrets in self.secrets.iter().flatten() {
            if secrets.wait_until_ready().await.is_err() {
                return;
            }
        }
        let mut last: Option<(GatewayConfig, Vec<TokenCopy>, TokenVersions)> = None;
        // When the next pass is due without an event: the resync after a write, a
        // retry after a failure, another look for a missing token.
        let mut due = Instant::now();
        let mut missing_look = MISSING_TOKEN_FIRST_LOOK;
        loop {
            let all: Vec<Arc<FanOutRoute>> = self.routes.iter().flat_map(|r| r.state()).collect();
            let (config, copies) = desired(&all, &self.tokens_dir);
            let versions = self
                .secrets
                .as_deref()
                .map(|s| token_versions(s, &copies))
                .unwrap_or_default();
            let want = (config, copies, versions);
            if last.as_ref() != Some(&want) || Instant::now() >= due {
                let started = Instant::now();
                match self.write(&want.0, &want.1).await {
                    Ok(missing) => {
                        if last.as_ref().map(|l| &l.0) != Some(&want.0) {
                            tracing::info!(routes = want.0.routes.len(), "gateway routes updated");
                        }
                        last = Some(want);
                        let wait = if missing == 0 {
                            missing_look = MISSING_TOKEN_FIRST_LOOK;
                            self.resync
                        } else {
                            let look = missing_look.min(self.resync);
                            missing_look = look * 2;
                            look
                        };
                        due = Instant::now() + wait;
                        self.metrics.reconciled(CONTROLLER, "ok", started.elapsed());
                    }
                    Err(error) => {
                        // Forget what was written, so that the retry writes whatever
                        // the caches hold by then.
                        last = None;
                        due = Instant::now() + RETRY_AFTER;
                        self.metrics
                            .reconciled(CONTROLLER, "error", started.elapsed());
                        self.metrics.error(CONTROLLER, "kubernetes");
                        tracing::warn!(error = %error_chain(error.as_ref()), "updating the gateway's routes failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = self.changes.changed() => {}
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Writes the tokens there are and the configuration naming them; returns how
    /// many tokens were missing (their Secret or key not there).
    async fn write(
        &self,
        config: &GatewayConfig,
        copies: &[TokenCopy],
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let mut missing = 0;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut data = BTreeMap::new();
        for copy in copies {
            let source: Api<Secret> = Api::namespaced(self.client.clone(), &copy.namespace);
            let value = source
                .get_opt(&copy.secret)
                .await?
                .and_then(|s| s.data)
                .and_then(|mut d| d.remove(&copy.key));
            match value {
                Some(v) => {
                    data.insert(copy.file.clone(), v);
                }
                // The route then accepts its other tokens only; its own status names
                // the missing Secret.
                None => {
                    missing += 1;
                    tracing::warn!(
                        secret = %format!("{}/{}", copy.namespace, copy.secret),
                        key = %copy.key,
                        "ingest token not found; the gateway will not accept it yet"
                    );
                }
            }
        }
        let mut config = config.clone();
        // Only reference token files that exist: a missing file would make the
        // gateway refuse the whole configuration. A route left without some of its
        // tokens says so, and the gateway asks their producers to retry (503).
        for route in &mut config.routes {
            let named = route.token_files.len();
            route.token_files.retain(|f| {
                f.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| data.contains_key(n))
            });
            route.tokens_pending = route.token_files.len() < named;
        }
        // Tokens first, so that the configuration never names a file not yet there.
        let secret = Secret {
            metadata: self.meta(&self.tokens_secret),
            data: Some(data),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .patch(&self.tokens_secret, &params, &Patch::Apply(&secret))
            .await?;
        let yaml = serde_yaml_ng::to_string(&config)?;
        let config_map = ConfigMap {
            metadata: self.meta(&self.config_map),
            data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), yaml)])),
            ..ConfigMap::default()
        };
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace)
            .patch(&self.config_map, &params, &Patch::Apply(&config_map))
            .await?;
        Ok(missing)
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".into(), "fanout".into()),
                ("app.kubernetes.io/component".into(), "gateway".into()),
                (
                    "app.kubernetes.io/managed-by".into(),
                    "fanout-operator".into(),
                ),
            ])),
            ..ObjectMeta::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;

    fn secret(namespace: &str, name: &str, version: &str) -> PartialObjectMeta<Secret> {
        let mut s = PartialObjectMeta::<Secret>::default();
        s.metadata.namespace = Some(namespace.into());
        s.metadata.name = Some(name.into());
        s.metadata.resource_version = Some(version.into());
        s
    }

    fn copy(namespace: &str, secret: &str) -> TokenCopy {
        TokenCopy {
            file: format!("{namespace}.r.0"),
            namespace: namespace.into(),
            secret: secret.into(),
            key: "token".into(),
        }
    }

    #[test]
    fn token_versions_come_from_whichever_scope_holds_the_secret() {
        let (a, mut wa) = reflector::store();
        let (b, mut wb) = reflector::store();
        wa.apply_watcher_event(&watcher::Event::Apply(secret("a", "ingest", "1")));
        wb.apply_watcher_event(&watcher::Event::Apply(secret("b", "ingest", "7")));
        let copies = [copy("a", "ingest"), copy("b", "ingest"), copy("b", "gone")];
        let versions = token_versions(&[a, b.clone()], &copies);
        let get = |ns: &str, n: &str| versions[&(ns.to_string(), n.to_string())].clone();
        assert_eq!(get("a", "ingest").as_deref(), Some("1"));
        assert_eq!(get("b", "ingest").as_deref(), Some("7"));
        assert_eq!(get("b", "gone"), None);

        // A rotation is a new resourceVersion: the comparison sees it.
        wb.apply_watcher_event(&watcher::Event::Apply(secret("b", "ingest", "8")));
        assert_ne!(token_versions(&[b], &copies[1..2]), {
            let mut old = TokenVersions::new();
            old.insert(("b".into(), "ingest".into()), Some("7".into()));
            old
        });
    }

    #[tokio::test]
    async fn changes_fold_into_one_wake_up_and_ignore_the_initial_listing() {
        let changes = Changes::default();
        let wakes = |changes: Changes| async move {
            tokio::time::timeout(Duration::from_millis(50), changes.changed())
                .await
                .is_ok()
        };
        changes.on_event::<Secret>(&Ok(watcher::Event::Init));
        changes.on_event::<Secret>(&Ok(watcher::Event::InitApply(Secret::default())));
        assert!(!wakes(changes.clone()).await, "a listing in progress");
        changes.on_event::<Secret>(&Ok(watcher::Event::Apply(Secret::default())));
        changes.on_event::<Secret>(&Ok(watcher::Event::Delete(Secret::default())));
        changes.on_event::<Secret>(&Ok(watcher::Event::InitDone));
        assert!(
            wakes(changes.clone()).await,
            "remembered while nobody waited"
        );
        assert!(!wakes(changes.clone()).await, "folded into one");
    }
}
