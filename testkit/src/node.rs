//! A control plane with one real node (`e2e/node.sh`): pods run in containerd, and
//! reach this host at the pod bridge's address, where tests start NATS and targets.
//!
//! It is a cluster of its own (state in `$FANOUT_CACHE/cluster-node`, or
//! `FANOUT_NODE_CLUSTER_DIR`), apart from the node-less one of [`crate::cluster`]: the
//! apiserver listens on the bridge address, and tests that expect pods to stay
//! Pending keep their cluster. It is brought up on first use in a test process and
//! left running; `scripts/test.sh` (or `e2e/node.sh down`) stops it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{cluster, repo_root, tools};

/// The running node and its control plane.
#[derive(Clone, Debug)]
pub struct Node {
    /// Admin kubeconfig of the node's control plane.
    pub kubeconfig: PathBuf,
    /// This host's address on the pod bridge: pods reach the apiserver, NATS and
    /// test targets here.
    pub host_ip: IpAddr,
    /// The apiserver's port (on `host_ip`), for pods that talk to it without
    /// kube-proxy (see docs/node.md).
    pub api_port: u16,
    state_dir: PathBuf,
}

/// The node, started on first use (`e2e/node.sh up` is idempotent).
pub fn node() -> anyhow::Result<Node> {
    static UP: OnceLock<Result<Node, String>> = OnceLock::new();
    UP.get_or_init(|| bring_up().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("local node unavailable: {e}"))
}

fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FANOUT_NODE_CLUSTER_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("FANOUT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/fanout")
        });
    cache.join("cluster-node")
}

fn script(state_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let path = repo_root().join("e2e/node.sh");
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .env("FANOUT_CLUSTER_DIR", state_dir)
        .output()
        .with_context(|| format!("running {} {}", path.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} {} failed:\n{}\n{}",
            path.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn bring_up() -> anyhow::Result<Node> {
    let state_dir = state_dir();
    let env = script(&state_dir, &["up"])?;
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(|v| v.trim().trim_matches('"').to_string())
            .with_context(|| format!("e2e/node.sh up printed no {name}:\n{env}"))
    };
    let kubeconfig = PathBuf::from(var("KUBECONFIG")?);
    let host_ip: IpAddr = var("FANOUT_NODE_HOST_IP")?.parse()?;
    let state = std::fs::read_to_string(state_dir.join("run/state.env"))?;
    let api_port = state
        .lines()
        .find_map(|l| l.strip_prefix("API_PORT="))
        .context("no API_PORT in the control plane's state")?
        .parse()?;
    cluster::install_crds(&kubeconfig)?;
    Ok(Node {
        kubeconfig,
        host_ip,
        api_port,
        state_dir,
    })
}

impl Node {
    /// A client for the node's control plane, bound to the calling test's runtime.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&self.kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The pinned kubectl, pointed at the node's control plane.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<Command> {
        cluster::kubectl_with(&self.kubeconfig, args)
    }

    /// The pinned helm, pointed at the node's control plane.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = Command::new(tools::path("helm")?);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            // helm keeps caches and repository config in $HOME otherwise.
            .env("HELM_CACHE_HOME", self.state_dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.state_dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.state_dir.join("helm/data"))
            .args(args);
        Ok(cmd)
    }

    /// Builds the `fanout` image (`e2e/image.sh fanout`) and imports it into the
    /// node's containerd; returns the image name (`docker.io/library/fanout:e2e-<hash>`).
    /// The dev profile unless `FANOUT_E2E_IMAGE_PROFILE=release`: the release profile's
    /// LTO build takes minutes, and the test needs the behaviour, not the speed.
    pub fn load_fanout_image(&self) -> anyhow::Result<String> {
        static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
        IMAGE
            .get_or_init(|| self.build_and_load().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow::anyhow!("fanout image unavailable: {e}"))
    }

    fn build_and_load(&self) -> anyhow::Result<String> {
        self.image(&["fanout"], true)
    }

    /// The `fanout` image again under another tag (`e2e-<hash>-<suffix>`), imported
    /// into the node: a new version to upgrade a release to.
    pub fn load_fanout_image_tagged(&self, suffix: &str) -> anyhow::Result<String> {
        self.image(&["fanout", "--tag-suffix", suffix], true)
    }

    /// The pinned nats-server as an image (`e2e/image.sh nats`), imported into the
    /// node.
    pub fn load_nats_image(&self) -> anyhow::Result<String> {
        self.image(&["nats"], false)
    }

    /// Runs `e2e/image.sh <args>` (with the dev profile for fanout, see
    /// [`Node::load_fanout_image`]) and imports the archive it wrote.
    fn image(&self, args: &[&str], profile: bool) -> anyhow::Result<String> {
        let image_script = repo_root().join("e2e/image.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&image_script).args(args);
        if profile && std::env::var("FANOUT_E2E_IMAGE_PROFILE").as_deref() != Ok("release") {
            cmd.arg("--debug");
        }
        let out = cmd
            .output()
            .with_context(|| format!("running e2e/image.sh {}", args.join(" ")))?;
        cluster::check(&out, &format!("e2e/image.sh {}", args.join(" ")))?;
        let stdout = String::from_utf8(out.stdout)?;
        let (name, archive) = stdout
            .trim()
            .split_once(' ')
            .with_context(|| format!("e2e/image.sh printed {stdout:?}"))?;
        script(&self.state_dir, &["load", archive])?;
        Ok(name.to_string())
    }
}
