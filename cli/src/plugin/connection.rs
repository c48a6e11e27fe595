//! How the plugin reaches the NATS that Fanout uses, without NATS settings on the
//! user's machine: the chart writes a ConfigMap (`<release>-connection`, labelled
//! `app.kubernetes.io/component=connection`) with the URL the operator uses and the
//! names of the Secrets holding its credentials; the plugin reads it and those Secrets
//! with the user's own rights. Flags override each part (`--nats-url` for a
//! port-forward, the `--nats-*-file` flags for credentials of one's own).
//!
//! A URL only resolvable inside the cluster (`*.svc`) is not tried from outside a pod:
//! the plugin says which port-forward to run and what to pass instead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::ListParams;

use super::cluster::{Cluster, concise};

/// The labels of the chart's connection ConfigMap.
pub const LABELS: &str = "app.kubernetes.io/part-of=fanout,app.kubernetes.io/component=connection";
/// Its keys.
pub const URL_KEY: &str = "natsUrl";
/// How long connecting may take before the plugin says NATS cannot be reached.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args, Clone, Default)]
#[command(
    next_help_heading = "NATS options (default: what Fanout's chart publishes in the cluster)"
)]
pub struct NatsFlags {
    /// NATS URL(s), comma-separated, instead of the one Fanout's chart publishes in the
    /// cluster (e.g. the local end of a `kubectl port-forward`). The credentials still
    /// come from the cluster unless given below.
    #[arg(long = "nats-url", env = "FANOUT_NATS_URL", global = true)]
    pub url: Option<String>,
    /// NATS credentials file (JWT and NKey seed), instead of the Secret the chart names.
    #[arg(
        long = "nats-credentials-file",
        env = "FANOUT_NATS_CREDENTIALS_FILE",
        global = true
    )]
    pub credentials_file: Option<PathBuf>,
    /// File holding a NATS token, instead of the Secret the chart names.
    #[arg(
        long = "nats-token-file",
        env = "FANOUT_NATS_TOKEN_FILE",
        global = true
    )]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA of the NATS server's certificate, instead of the Secret the
    /// chart names.
    #[arg(long = "nats-ca-file", env = "FANOUT_NATS_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(
        "no Fanout installation found: no ConfigMap labelled {LABELS} {where_}. Pass --operator-namespace <namespace of the Fanout chart>, or --nats-url"
    )]
    NotInstalled { where_: String },
    #[error(
        "several Fanout installations found ({found}); pass --operator-namespace to choose one"
    )]
    Several { found: String },
    #[error(
        "looking for Fanout's NATS settings (ConfigMaps labelled {LABELS}) {where_}; pass --operator-namespace <namespace of the Fanout chart>, or --nats-url"
    )]
    Lookup {
        where_: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("ConfigMap {config_map} has no {URL_KEY}")]
    NoUrl { config_map: String },
    #[error(
        "reading {what} from Secret {namespace}/{secret} (key {key}), as ConfigMap {config_map} says; your user needs `get` on that Secret, or pass {flag}"
    )]
    Secret {
        what: &'static str,
        namespace: String,
        secret: String,
        key: String,
        config_map: String,
        flag: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reading {flag} {}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unreachable(String),
    #[error("the NATS connection settings")]
    Options(#[source] async_nats::Error),
}

/// Where the settings came from and what they are.
struct Settings {
    url: String,
    /// `namespace/name` of the ConfigMap, when the cluster gave the settings.
    source: Option<String>,
    namespace: String,
    secrets: BTreeMap<String, String>,
}

/// Connects to the NATS Fanout uses, as the flags and the cluster say.
pub async fn connect(
    cluster: &Cluster,
    flags: &NatsFlags,
) -> Result<async_nats::Client, ConnectionError> {
    let (settings, not_found) = match (find(cluster).await, &flags.url) {
        (Ok(settings), _) => (settings, None),
        // The URL is given, and the cluster publishes no settings (or may not be
        // asked): connect with the flags alone.
        (Err(e), Some(url)) => (
            Settings {
                url: url.clone(),
                source: None,
                namespace: String::new(),
                secrets: BTreeMap::new(),
            },
            Some(e),
        ),
        (Err(e), None) => return Err(e),
    };
    let secret = |kind: &'static str| settings.secret(cluster, kind);
    let mut options = if let Some(path) = &flags.credentials_file {
        async_nats::ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|source| ConnectionError::File {
                flag: "--nats-credentials-file",
                path: path.clone(),
                source,
            })?
    } else if let Some(creds) = secret("credentials").await? {
        async_nats::ConnectOptions::with_credentials(&creds)
            .map_err(|e| ConnectionError::Options(Box::new(e)))?
    } else {
        async_nats::ConnectOptions::new()
    }
    .name("kubectl-fanout")
    .connection_timeout(CONNECT_TIMEOUT)
    .ping_interval(Duration::from_secs(10));
    if let Some(path) = &flags.token_file {
        let token = std::fs::read_to_string(path).map_err(|source| ConnectionError::File {
            flag: "--nats-token-file",
            path: path.clone(),
            source,
        })?;
        options = options.token(token.trim().to_string());
    } else if flags.credentials_file.is_none()
        && let Some(token) = secret("token").await?
    {
        options = options.token(token.trim().to_string());
    }
    // The CA is not secret, but the client reads it from a file: a private temporary
    // one, removed when the plugin exits.
    let _ca_dir;
    if let Some(path) = &flags.ca_file {
        options = options
            .add_root_certificates(path.clone())
            .require_tls(true);
    } else if let Some(ca) = secret("ca").await? {
        let dir = tempfile::tempdir().map_err(|source| ConnectionError::File {
            flag: "(a temporary CA file)",
            path: std::env::temp_dir(),
            source,
        })?;
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, ca).map_err(|source| ConnectionError::File {
            flag: "(a temporary CA file)",
            path: path.clone(),
            source,
        })?;
        options = options.add_root_certificates(path).require_tls(true);
        _ca_dir = dir;
    }

    let url = flags.url.clone().unwrap_or_else(|| settings.url.clone());
    let from_cluster = flags.url.is_none();
    if from_cluster
        && std::env::var_os("KUBERNETES_SERVICE_HOST").is_none()
        && let Some(forward) = cluster_internal(&url, &settings.namespace)
    {
        return Err(ConnectionError::Unreachable(format!(
            "NATS at {url} (from ConfigMap {}) is an address inside the cluster, which this machine cannot resolve.\n{}",
            settings.source.as_deref().unwrap_or("?"),
            forward.advice(cluster)
        )));
    }
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    options.connect(servers).await.map_err(|e| {
        let advice = cluster_internal(&url, &settings.namespace)
            .or_else(|| from_cluster.then(Forward::unknown))
            .map(|f| format!("\n{}", f.advice(cluster)))
            .unwrap_or_default();
        let note = not_found
            .as_ref()
            .map(|n| {
                format!(
                    " (no credentials from the cluster: {})",
                    fanout_config::error_chain(n)
                )
            })
            .unwrap_or_default();
        ConnectionError::Unreachable(format!(
            "cannot connect to NATS at {url}{note}: {}{advice}",
            fanout_config::error_chain(&e)
        ))
    })
}

impl Settings {
    /// The value of the Secret key the ConfigMap names for `kind` (credentials, token,
    /// ca), if it names one.
    async fn secret(
        &self,
        cluster: &Cluster,
        kind: &'static str,
    ) -> Result<Option<String>, ConnectionError> {
        let (Some(secret), Some(key)) = (
            self.secrets.get(&format!("{kind}Secret")),
            self.secrets.get(&format!("{kind}Key")),
        ) else {
            return Ok(None);
        };
        let (what, flag) = match kind {
            "credentials" => ("the NATS credentials", "--nats-credentials-file"),
            "token" => ("the NATS token", "--nats-token-file"),
            _ => ("the NATS CA certificate", "--nats-ca-file"),
        };
        let error = |source: Box<dyn std::error::Error + Send + Sync>| ConnectionError::Secret {
            what,
            namespace: self.namespace.clone(),
            secret: secret.clone(),
            key: key.clone(),
            config_map: self.source.clone().unwrap_or_default(),
            flag,
            source,
        };
        let found = Api::<Secret>::namespaced(cluster.client.clone(), &self.namespace)
            .get(secret)
            .await
            .map_err(|e| error(concise(e)))?;
        let value = found
            .data
            .unwrap_or_default()
            .remove(key)
            .ok_or_else(|| error(format!("the Secret has no key {key}").into()))?;
        String::from_utf8(value.0)
            .map(Some)
            .map_err(|e| error(Box::new(e)))
    }
}

/// Finds the chart's ConfigMap: in `--operator-namespace`, or in any namespace.
async fn find(cluster: &Cluster) -> Result<Settings, ConnectionError> {
    let (api, where_) = match &cluster.operator_namespace {
        Some(ns) => (
            Api::<ConfigMap>::namespaced(cluster.client.clone(), ns),
            format!("in namespace {ns}"),
        ),
        None => (
            Api::<ConfigMap>::all(cluster.client.clone()),
            "in any namespace".to_string(),
        ),
    };
    let list = api
        .list(&ListParams::default().labels(LABELS))
        .await
        .map_err(|e| ConnectionError::Lookup {
            where_: where_.clone(),
            source: concise(e),
        })?;
    let mut items = list.items;
    let config_map = match items.len() {
        0 => return Err(ConnectionError::NotInstalled { where_ }),
        1 => items.remove(0),
        _ => {
            return Err(ConnectionError::Several {
                found: items
                    .iter()
                    .map(|c| {
                        format!(
                            "{}/{}",
                            c.metadata.namespace.as_deref().unwrap_or_default(),
                            c.metadata.name.as_deref().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    };
    let namespace = config_map.metadata.namespace.clone().unwrap_or_default();
    let source = format!(
        "{namespace}/{}",
        config_map.metadata.name.as_deref().unwrap_or_default()
    );
    let mut data = config_map.data.unwrap_or_default();
    let url = data
        .remove(URL_KEY)
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| ConnectionError::NoUrl {
            config_map: source.clone(),
        })?;
    Ok(Settings {
        url,
        source: Some(source),
        namespace,
        secrets: data,
    })
}

/// A port-forward that reaches NATS from this machine.
#[derive(Debug, PartialEq, Eq)]
struct Forward {
    /// `-n <namespace> svc/<name>` or `pod/<name>`; `None` when the URL does not say.
    resource: Option<(String, String)>,
    port: u16,
}

impl Forward {
    fn unknown() -> Forward {
        Forward {
            resource: None,
            port: 4222,
        }
    }

    /// What to run, and what to pass to this command then.
    fn advice(&self, cluster: &Cluster) -> String {
        let mut forward = vec!["kubectl".to_string(), "port-forward".into()];
        forward.extend(cluster.kubectl_flags.iter().cloned());
        match &self.resource {
            Some((namespace, resource)) => {
                forward.extend(["-n".into(), namespace.clone(), resource.clone()])
            }
            None => forward.extend([
                "-n".into(),
                "<namespace of NATS>".into(),
                "svc/<NATS Service>".into(),
            ]),
        }
        forward.push(format!("{}:{}", self.port, self.port));
        let mut again: Vec<String> = vec!["kubectl".into(), "fanout".into()];
        again.extend(std::env::args().skip(1).map(|a| super::shell_quote(&a)));
        again.extend([
            "--nats-url".into(),
            format!("nats://127.0.0.1:{}", self.port),
        ]);
        format!(
            "Forward a local port to it (it keeps running; use another terminal):\n  {}\nthen run:\n  {}\n(With TLS, the server's certificate must also be valid for 127.0.0.1; otherwise run the command where NATS resolves, e.g. in a pod.)",
            forward.join(" "),
            again.join(" ")
        )
    }
}

/// The port-forward for a URL whose host only cluster DNS resolves: `<svc>.<ns>.svc`,
/// `<pod>.<svc>.<ns>.svc` (a StatefulSet's pod), with or without `.cluster.local`,
/// or a bare Service name (in `default_namespace`, the chart's).
fn cluster_internal(url: &str, default_namespace: &str) -> Option<Forward> {
    let first = url.split(',').map(str::trim).find(|s| !s.is_empty())?;
    let rest = first.split_once("://").map_or(first, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (host_port, 4222),
    };
    let host = host.trim_end_matches('.');
    let labels: Vec<&str> = host
        .strip_suffix(".cluster.local")
        .unwrap_or(host)
        .split('.')
        .collect();
    let resource = match labels.as_slice() {
        [svc, ns, "svc"] => (ns.to_string(), format!("svc/{svc}")),
        [pod, _svc, ns, "svc"] => (ns.to_string(), format!("pod/{pod}")),
        [svc]
            if !svc.is_empty()
                && svc.parse::<std::net::Ipv4Addr>().is_err()
                && *svc != "localhost" =>
        {
            (default_namespace.to_string(), format!("svc/{svc}"))
        }
        _ => return None,
    };
    Some(Forward {
        resource: Some(resource),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(ns: &str, resource: &str, port: u16) -> Option<Forward> {
        Some(Forward {
            resource: Some((ns.into(), resource.into())),
            port,
        })
    }

    #[test]
    fn cluster_dns_names_become_port_forwards() {
        assert_eq!(
            cluster_internal("nats://nats.nats.svc:4222", "fanout"),
            forward("nats", "svc/nats", 4222)
        );
        assert_eq!(
            cluster_internal("tls://user@nats.messaging.svc.cluster.local:7422", "fanout"),
            forward("messaging", "svc/nats", 7422)
        );
        assert_eq!(
            cluster_internal(
                "nats://nats-0.nats-headless.nats.svc:4222,nats://nats-1.nats-headless.nats.svc:4222",
                "fanout"
            ),
            forward("nats", "pod/nats-0", 4222)
        );
        assert_eq!(
            cluster_internal("nats://nats", "fanout-system"),
            forward("fanout-system", "svc/nats", 4222)
        );
        for reachable in [
            "nats://127.0.0.1:4222",
            "nats://localhost:4222",
            "nats://nats.example.com:4222",
            "tls://10.0.0.7:4222",
        ] {
            assert_eq!(cluster_internal(reachable, "fanout"), None, "{reachable}");
        }
    }
}
