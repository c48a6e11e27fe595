//! Keeps the gateway's view of the routes current: one ConfigMap listing every route
//! (stream, ingest subjects, token files) and one Secret holding copies of each
//! route's ingest tokens, both in the operator's namespace where the gateway mounts
//! them. Routes live in many namespaces while the gateway runs in one, so the tokens
//! are copied; the copies are owned by this loop and refreshed when a source Secret
//! changes. The gateway re-reads both files by itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_api::FanOutRoute;
use fanout_api::render::gateway_route;
use fanout_config::error_chain;
use fanout_config::gateway::GatewayConfig;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::context::FIELD_MANAGER;
use crate::metrics::Metrics;

/// The key of the rendered configuration in the gateway's ConfigMap.
pub const CONFIG_KEY: &str = "gateway.yaml";
/// How often the route cache is compared with what the gateway was given.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often token copies are refreshed even when no route changed (rotation).
const REFRESH_TOKENS_EVERY: Duration = Duration::from_secs(30);
pub const CONTROLLER: &str = "gateway";

pub struct GatewaySync {
    pub client: kube::Client,
    pub namespace: String,
    pub config_map: String,
    pub tokens_secret: String,
    pub tokens_dir: PathBuf,
    /// The route caches of every watched namespace.
    pub routes: Vec<Store<FanOutRoute>>,
    pub metrics: Arc<Metrics>,
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
        let mut last: Option<(GatewayConfig, Vec<TokenCopy>)> = None;
        let mut last_written = Instant::now();
        loop {
            for routes in &self.routes {
                if routes.wait_until_ready().await.is_err() {
                    return;
                }
            }
            let all: Vec<Arc<FanOutRoute>> = self.routes.iter().flat_map(|r| r.state()).collect();
            let want = desired(&all, &self.tokens_dir);
            if last.as_ref() != Some(&want) || last_written.elapsed() >= REFRESH_TOKENS_EVERY {
                let started = Instant::now();
                match self.write(&want).await {
                    Ok(()) => {
                        if last.as_ref().map(|l| &l.0) != Some(&want.0) {
                            tracing::info!(routes = want.0.routes.len(), "gateway routes updated");
                        }
                        last = Some(want);
                        last_written = Instant::now();
                        self.metrics.reconciled(CONTROLLER, "ok", started.elapsed());
                    }
                    Err(error) => {
                        self.metrics
                            .reconciled(CONTROLLER, "error", started.elapsed());
                        self.metrics.error(CONTROLLER, "kubernetes");
                        tracing::warn!(error = %error_chain(error.as_ref()), "updating the gateway's routes failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn write(
        &self,
        (config, copies): &(GatewayConfig, Vec<TokenCopy>),
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
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
                None => tracing::warn!(
                    secret = %format!("{}/{}", copy.namespace, copy.secret),
                    key = %copy.key,
                    "ingest token not found; the gateway will not accept it"
                ),
            }
        }
        let mut config = config.clone();
        // Only reference token files that exist: a missing file would make the
        // gateway refuse the whole configuration.
        for route in &mut config.routes {
            route.token_files.retain(|f| {
                f.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| data.contains_key(n))
            });
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
        Ok(())
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
