//! The routes the gateway serves: the rendered [`GatewayConfig`] read from a file,
//! validated, with each route's bearer tokens read from their files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fanout_config::gateway::{GatewayConfig, GatewayRoute};

use crate::auth::Tokens;
use crate::headers::ForwardHeaders;
use crate::metrics::RouteLabel;

/// Why the configuration could not be loaded. Token values never appear here.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the gateway configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the gateway configuration {path} (YAML or JSON)")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("route {route} is listed more than once")]
    DuplicateRoute { route: String },
    #[error("route {route}: {field} must not be empty")]
    EmptyField { route: String, field: &'static str },
    #[error(
        "route {route}: ingestPrefix {prefix:?} is not a literal NATS subject (no spaces, wildcards or empty tokens)"
    )]
    InvalidIngestPrefix { route: String, prefix: String },
    #[error("route {route}: forwardHeaders")]
    ForwardHeader {
        route: String,
        #[source]
        source: crate::headers::InvalidHeaderName,
    },
    #[error("route {route}: reading token file {path}")]
    TokenFile {
        route: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("route {route}: token file {path} is empty")]
    EmptyToken { route: String, path: PathBuf },
}

impl ConfigError {
    /// Whether the configuration file itself does not exist (yet): in Kubernetes the
    /// operator creates the ConfigMap after the gateway may already have started.
    pub fn is_missing_file(&self) -> bool {
        matches!(self, ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// One route, validated, with its tokens loaded.
#[derive(Debug, PartialEq)]
pub struct Route {
    pub namespace: String,
    pub name: String,
    pub stream: String,
    pub ingest_prefix: String,
    pub tokens: Tokens,
    pub allow_unauthenticated: bool,
    /// Some tokens are not loaded yet (`tokensPending`, or a token file not there
    /// yet on a reload): see `auth::authorize`.
    pub tokens_pending: bool,
    /// Token files named but not there yet (on a reload; see [`MissingTokenFile`]).
    pub absent_token_files: Vec<PathBuf>,
    /// Headers stored with this route's events besides the global allow-list (the
    /// ones its target filters match on).
    pub forward: ForwardHeaders,
    /// `<namespace>/<name>`: the route's metrics label (bounded by the configuration).
    pub label: RouteLabel,
}

/// All routes, looked up by namespace and name.
#[derive(Debug, Default, PartialEq)]
pub struct RouteTable {
    by_namespace: HashMap<String, HashMap<String, Arc<Route>>>,
}

impl RouteTable {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<Route>> {
        self.by_namespace.get(namespace)?.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_namespace.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_namespace.values().flat_map(HashMap::values)
    }

    /// Validates a configuration and reads its token files.
    pub fn from_config(
        config: &GatewayConfig,
        missing: MissingTokenFile,
    ) -> Result<RouteTable, ConfigError> {
        let mut table = RouteTable::default();
        for route in &config.routes {
            let loaded = load_route(route, missing)?;
            let names = table
                .by_namespace
                .entry(loaded.namespace.clone())
                .or_default();
            if names.contains_key(&loaded.name) {
                return Err(ConfigError::DuplicateRoute {
                    route: loaded.label.to_string(),
                });
            }
            names.insert(loaded.name.clone(), Arc::new(loaded));
        }
        Ok(table)
    }
}

/// What a token file that does not exist means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingTokenFile {
    /// An error naming the route and the file: at start, a wrong path should stop it.
    Refuse,
    /// The route waits for it: its other tokens work, and a request none of them
    /// accepts is answered 503 `route-not-ready`. On a reload in Kubernetes the
    /// mounted ConfigMap and Secret are refreshed separately, so a configuration
    /// may name a token file a moment before it appears; refusing the whole
    /// configuration would hold back every other route's change, and count a
    /// failed reload, for a state that settles by itself.
    Wait,
}

/// Reads and validates the configuration file (YAML or JSON) and its token files.
pub fn load(path: &Path, missing: MissingTokenFile) -> Result<RouteTable, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config: GatewayConfig =
        serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    RouteTable::from_config(&config, missing)
}

fn load_route(route: &GatewayRoute, missing: MissingTokenFile) -> Result<Route, ConfigError> {
    let label = format!("{}/{}", route.namespace, route.name);
    for (field, value) in [
        ("namespace", &route.namespace),
        ("name", &route.name),
        ("stream", &route.stream),
        ("ingestPrefix", &route.ingest_prefix),
    ] {
        if value.is_empty() {
            return Err(ConfigError::EmptyField {
                route: label,
                field,
            });
        }
    }
    if !is_literal_subject(&route.ingest_prefix) {
        return Err(ConfigError::InvalidIngestPrefix {
            route: label,
            prefix: route.ingest_prefix.clone(),
        });
    }
    let mut tokens = Vec::with_capacity(route.token_files.len());
    let mut absent_token_files = Vec::new();
    for path in &route.token_files {
        match read_token(&label, path) {
            Ok(token) => tokens.push(token),
            Err(ConfigError::TokenFile { source, .. })
                if missing == MissingTokenFile::Wait
                    && source.kind() == std::io::ErrorKind::NotFound =>
            {
                absent_token_files.push(path.clone());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Route {
        namespace: route.namespace.clone(),
        name: route.name.clone(),
        stream: route.stream.clone(),
        ingest_prefix: route.ingest_prefix.clone(),
        tokens: Tokens::new(tokens),
        allow_unauthenticated: route.allow_unauthenticated,
        tokens_pending: route.tokens_pending || !absent_token_files.is_empty(),
        absent_token_files,
        forward: ForwardHeaders::for_route(&route.forward_headers).map_err(|source| {
            ConfigError::ForwardHeader {
                route: label.clone(),
                source,
            }
        })?,
        label: RouteLabel::new(&route.namespace, &route.name),
    })
}

/// A token file holds one token; a trailing newline (as `echo` or an editor leaves)
/// is not part of it.
fn read_token(route: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = std::fs::read(path).map_err(|source| ConfigError::TokenFile {
        route: route.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(ConfigError::EmptyToken {
            route: route.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Whether `subject` is a NATS subject without wildcards: non-empty dot-separated
/// tokens, no whitespace.
pub fn is_literal_subject(subject: &str) -> bool {
    subject.split('.').all(|token| {
        !token.is_empty()
            && token != "*"
            && token != ">"
            && !token.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn route_yaml(token_file: &Path) -> String {
        format!(
            "routes:\n- namespace: shop\n  name: orders\n  stream: fanout_shop_orders\n  ingestPrefix: fanout.in.shop.orders\n  tokenFiles: [{}]\n",
            token_file.display()
        )
    }

    #[test]
    fn loads_yaml_and_trims_the_tokens_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let token = write(dir.path(), "token", "s3cret\n");
        let config = write(dir.path(), "gateway.yaml", &route_yaml(&token));
        let table = load(&config, MissingTokenFile::Refuse).unwrap();
        let route = table.get("shop", "orders").unwrap();
        assert_eq!(route.stream, "fanout_shop_orders");
        assert!(route.tokens.accepts(b"s3cret"));
        assert!(!route.tokens.accepts(b"s3cret\n"));
        assert!(table.get("shop", "other").is_none());
    }

    #[test]
    fn loads_json_too() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "gateway.json",
            r#"{"routes":[{"namespace":"a","name":"b","stream":"fanout_a_b","ingestPrefix":"fanout.in.a.b","allowUnauthenticated":true}]}"#,
        );
        let table = load(&config, MissingTokenFile::Refuse).unwrap();
        assert!(table.get("a", "b").unwrap().allow_unauthenticated);
    }

    #[test]
    fn a_missing_token_file_names_the_route_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let config = write(dir.path(), "gateway.yaml", &route_yaml(&missing));
        let err = load(&config, MissingTokenFile::Refuse).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("shop/orders"), "{message}");
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn on_a_reload_a_token_file_not_there_yet_leaves_its_route_waiting_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let present = write(dir.path(), "present", "s3cret\n");
        let absent = dir.path().join("absent");
        let yaml = format!(
            "routes:\n- namespace: shop\n  name: orders\n  stream: s\n  ingestPrefix: a.b\n  tokenFiles: [{}, {}]\n",
            present.display(),
            absent.display()
        );
        let config = write(dir.path(), "gateway.yaml", &yaml);
        let table = load(&config, MissingTokenFile::Wait).unwrap();
        let route = table.get("shop", "orders").unwrap();
        assert!(route.tokens.accepts(b"s3cret"));
        assert!(route.tokens_pending);
        assert_eq!(route.absent_token_files, std::slice::from_ref(&absent));
        // Only a file that does not exist is waited for.
        std::fs::write(&absent, "\n").unwrap();
        assert!(matches!(
            load(&config, MissingTokenFile::Wait),
            Err(ConfigError::EmptyToken { .. })
        ));
        std::fs::write(&absent, "other\n").unwrap();
        let route = load(&config, MissingTokenFile::Wait).unwrap();
        let route = route.get("shop", "orders").unwrap();
        assert!(route.tokens.accepts(b"other"));
        assert!(!route.tokens_pending);
        assert!(route.absent_token_files.is_empty());
    }

    #[test]
    fn a_missing_configuration_file_is_told_apart_from_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load(&dir.path().join("gateway.yaml"), MissingTokenFile::Refuse).unwrap_err();
        assert!(missing.is_missing_file(), "{missing:?}");
        let broken = write(dir.path(), "broken.yaml", "routes: [ {");
        assert!(
            !load(&broken, MissingTokenFile::Refuse)
                .unwrap_err()
                .is_missing_file()
        );
        let token = dir.path().join("no-token");
        let config = write(dir.path(), "gateway.yaml", &route_yaml(&token));
        assert!(
            !load(&config, MissingTokenFile::Refuse)
                .unwrap_err()
                .is_missing_file()
        );
    }

    #[test]
    fn an_empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let token = write(dir.path(), "token", "\n");
        let config = write(dir.path(), "gateway.yaml", &route_yaml(&token));
        assert!(matches!(
            load(&config, MissingTokenFile::Refuse),
            Err(ConfigError::EmptyToken { .. })
        ));
    }

    #[test]
    fn duplicate_routes_and_wildcard_prefixes_are_refused() {
        let route = |prefix: &str| GatewayRoute {
            namespace: "shop".into(),
            name: "orders".into(),
            stream: "s".into(),
            ingest_prefix: prefix.into(),
            token_files: vec![],
            allow_unauthenticated: true,
            tokens_pending: false,
            forward_headers: Vec::new(),
        };
        let twice = GatewayConfig {
            routes: vec![route("a.b"), route("a.b")],
        };
        assert!(matches!(
            RouteTable::from_config(&twice, MissingTokenFile::Refuse),
            Err(ConfigError::DuplicateRoute { .. })
        ));
        for bad in ["a.>", "a.*.b", "a..b", "a b", ""] {
            let config = GatewayConfig {
                routes: vec![route(bad)],
            };
            assert!(
                RouteTable::from_config(&config, MissingTokenFile::Refuse).is_err(),
                "{bad:?}"
            );
        }
    }
}
