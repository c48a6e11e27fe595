//! The local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)
//! that `e2e/cluster.sh` runs, as seen from a test.
//!
//! The control plane is brought up once per test process (`cluster.sh up` is
//! idempotent, so a cluster started by hand or by `.ci/run` is reused) and left
//! running for the next test binary; `e2e/cluster.sh down` stops it. Each test gets
//! its own namespace, deleted when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{repo_root, tools};

/// Path of the kubeconfig of the running control plane, starting it on first use.
pub fn kubeconfig() -> anyhow::Result<PathBuf> {
    static UP: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    UP.get_or_init(|| bring_up().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("local control plane unavailable: {e}"))
}

fn bring_up() -> anyhow::Result<PathBuf> {
    let script = repo_root().join("e2e/cluster.sh");
    let up = Command::new("bash")
        .arg(&script)
        .arg("up")
        .output()
        .with_context(|| format!("running {} up", script.display()))?;
    if !up.status.success() {
        bail!(
            "{} up failed:\n{}\n{}",
            script.display(),
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr)
        );
    }
    let env = Command::new("bash").arg(&script).arg("env").output()?;
    let text = String::from_utf8(env.stdout)?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        .map(|p| PathBuf::from(p.trim().trim_matches('"').trim_matches('\'')))
        .with_context(|| {
            format!(
                "{} env printed no KUBECONFIG line:\n{text}",
                script.display()
            )
        })?;
    install_crds(&path)?;
    Ok(path)
}

/// Applies the checked-in CRDs and waits until the apiserver serves them.
pub(crate) fn install_crds(kubeconfig: &Path) -> anyhow::Result<()> {
    let crds = repo_root().join("crds/fanout.dev.yaml");
    let apply = kubectl_with(
        kubeconfig,
        &["apply", "--server-side", "--force-conflicts", "-f"],
    )?
    .arg(&crds)
    .output()?;
    check(&apply, "applying the CRDs")?;
    let wait = kubectl_with(
        kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/apitargets.fanout.dev",
            "crd/fanoutroutes.fanout.dev",
            "crd/fanoutreplays.fanout.dev",
        ],
    )?
    .output()?;
    check(&wait, "waiting for the CRDs to be Established")
}

/// A client for the control plane, bound to the calling test's runtime.
pub async fn client() -> anyhow::Result<kube::Client> {
    let path = kubeconfig()?;
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

/// The pinned kubectl (the server's minor version; a kubectl on PATH may be too far
/// off to trust its output).
pub(crate) fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Command> {
    let mut cmd = Command::new(tools::path("kubectl")?);
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    Ok(cmd)
}

/// A `kubectl` command (the pinned one, matching the server's version) for the control plane.
pub fn kubectl(args: &[&str]) -> anyhow::Result<Command> {
    kubectl_with(&kubeconfig()?, args)
}

/// Fails with the command's stderr when it did not succeed.
pub fn check(output: &Output, what: &str) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `cmd` (e.g. `kubectl apply -f -`) with `input` on its stdin and returns its
/// output; `check` says whether it worked.
pub fn run_with_stdin(mut cmd: Command, input: &[u8]) -> anyhow::Result<Output> {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting the command")?;
    child
        .stdin
        .take()
        .context("the command's stdin")?
        .write_all(input)
        .context("writing the command's stdin")?;
    Ok(child.wait_with_output()?)
}

/// A namespace of its own for one test; deleted (in the background) when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>`.
    pub async fn create(client: &kube::Client, prefix: &str) -> anyhow::Result<TestNamespace> {
        let name = format!("{prefix}-{:08x}", random_u32());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"fanout.dev/test": "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace { name })
    }

    /// Deletes the namespace now (the controller-manager finishes it in the background).
    pub async fn delete(self, client: &kube::Client) -> anyhow::Result<()> {
        Api::<Namespace>::all(client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await; kubectl with --wait=false returns at once.
        if let Ok(mut cmd) = kubectl(&["delete", "namespace", &self.name, "--wait=false"]) {
            let _ = cmd.output();
        }
    }
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded randomly per process; mixing in a counter and the time
    // keeps names apart within one process too.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}
