//! Which cluster and namespace, the way kubectl decides: `--kubeconfig` or the files
//! in KUBECONFIG (or ~/.kube/config), `--context` or the current context, `-n` or the
//! context's namespace (or `default`).

use std::path::PathBuf;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(clap::Args)]
#[command(next_help_heading = "Cluster options (as kubectl's)")]
pub struct ClusterArgs {
    /// Path to the kubeconfig file. Default: the files in KUBECONFIG, or
    /// ~/.kube/config.
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use. Default: its current context.
    #[arg(long, global = true)]
    context: Option<String>,

    /// The namespace of the route. Default: the context's namespace, or default.
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,

    /// The namespace Fanout (its chart) is installed in, where its NATS settings are.
    /// Default: found by the labels of the ConfigMap the chart writes there.
    #[arg(long, env = "FANOUT_OPERATOR_NAMESPACE", global = true)]
    operator_namespace: Option<String>,
}

/// A client for the chosen cluster, and what was chosen.
pub struct Cluster {
    pub client: kube::Client,
    /// The namespace commands work in.
    pub namespace: String,
    pub operator_namespace: Option<String>,
    /// The flags that chose the cluster, for commands printed for the user to run.
    pub kubectl_flags: Vec<String>,
}

impl ClusterArgs {
    pub async fn connect(self) -> anyhow::Result<Cluster> {
        let kubeconfig = match &self.kubeconfig {
            Some(path) => Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig: reading {}", path.display()))?,
            None => Kubeconfig::read().context(
                "reading the kubeconfig (KUBECONFIG, or ~/.kube/config); pass --kubeconfig",
            )?,
        };
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .with_context(|| match &self.context {
                Some(context) => format!("--context {context}: loading it from the kubeconfig"),
                None => "loading the kubeconfig's current context".into(),
            })?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config).context("creating the Kubernetes client")?;
        let mut kubectl_flags = Vec::new();
        if let Some(path) = &self.kubeconfig {
            kubectl_flags.extend(["--kubeconfig".to_string(), path.display().to_string()]);
        }
        if let Some(context) = &self.context {
            kubectl_flags.extend(["--context".to_string(), context.clone()]);
        }
        Ok(Cluster {
            client,
            namespace,
            operator_namespace: self.operator_namespace,
            kubectl_flags,
        })
    }
}

impl Cluster {
    pub fn api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        kube::Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// A Kubernetes error that says what was asked, and for a refusal or a missing
/// object, plainly so.
pub fn explain(e: kube::Error, what: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(status) if status.code == 404 => anyhow::anyhow!("{what} does not exist"),
        _ => anyhow::anyhow!(concise(e)).context(what.to_string()),
    }
}

/// A Kubernetes error as people read it: the apiserver's message (`secrets "x" is
/// forbidden: User ... cannot get ...`), not the whole response.
pub fn concise(e: kube::Error) -> Box<dyn std::error::Error + Send + Sync> {
    match e {
        kube::Error::Api(status) => status.message.clone().into(),
        e => Box::new(e),
    }
}
