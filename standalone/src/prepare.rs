//! Renders every route with the operator's rendering code and writes what the
//! components read: the gateway's configuration file and, for people who want to see
//! what a route became, each route's dispatcher configuration.

use std::path::PathBuf;

use fanout_api::manifests::{ManifestError, Manifests};
use fanout_api::render::Rendered;
use fanout_config::gateway::GatewayConfig;

use crate::secrets::StateDir;

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("rendering")]
    Render(#[source] ManifestError),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The rendered routes and where the gateway's configuration was written.
pub struct Prepared {
    pub routes: Vec<Rendered>,
    pub gateway_config: PathBuf,
}

/// Renders `manifests` with Secrets read from the state directory's `secrets/`.
pub fn prepare(manifests: &Manifests, state: &StateDir) -> Result<Prepared, PrepareError> {
    let mut routes = manifests
        .render(&state.secrets_dir())
        .map_err(PrepareError::Render)?;
    for route in &mut routes {
        // One engine per route delivers here; rate limits are divided among replicas,
        // so counting the route's pod replicas would slow every target down.
        route.config.replicas = 1;
    }

    let gateway = GatewayConfig {
        routes: routes.iter().map(|r| r.gateway.clone()).collect(),
    };
    let gateway_config = state.path().join("gateway.yaml");
    write(&gateway_config, &yaml(&gateway))?;
    let dir = state.path().join("routes");
    std::fs::create_dir_all(&dir).map_err(|source| PrepareError::Write {
        path: dir.clone(),
        source,
    })?;
    for route in &routes {
        let file = dir.join(format!(
            "{}.{}.yaml",
            route.config.namespace, route.config.name
        ));
        write(&file, &yaml(&route.config))?;
    }
    Ok(Prepared {
        routes,
        gateway_config,
    })
}

fn yaml(value: &impl serde::Serialize) -> String {
    serde_yaml_ng::to_string(value).expect("rendered configuration serializes")
}

fn write(path: &std::path::Path, text: &str) -> Result<(), PrepareError> {
    std::fs::write(path, text).map_err(|source| PrepareError::Write {
        path: path.to_path_buf(),
        source,
    })
}
