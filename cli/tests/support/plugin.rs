//! `kubectl fanout` as a user runs it: the pinned kubectl, with a `kubectl-fanout` on
//! its PATH (a link to the `fanout` binary, as scripts/install-kubectl-fanout.sh puts
//! one in ~/.local/bin), the control plane's kubeconfig in KUBECONFIG, and the NATS
//! settings the chart publishes (its connection ConfigMap, rendered by `helm template`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fanout_testkit::cluster;
use fanout_testkit::process::Spawned;
use fanout_testkit::{repo_root, tools};

pub struct Plugin {
    /// Holds the `kubectl-fanout` link.
    bin: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Plugin {
    pub fn new() -> Plugin {
        Plugin::with_kubeconfig(&cluster::kubeconfig().unwrap())
    }

    /// As the user whose kubeconfig is `kubeconfig`.
    pub fn with_kubeconfig(kubeconfig: &Path) -> Plugin {
        let bin = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_fanout"),
            bin.path().join("kubectl-fanout"),
        )
        .unwrap();
        Plugin {
            bin,
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// `kubectl fanout <args>`, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(tools::path("kubectl").unwrap());
        let path = format!(
            "{}:{}",
            self.bin.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        command
            .arg("fanout")
            .args(args)
            .env("PATH", path)
            .env("KUBECONFIG", &self.kubeconfig)
            // As on a laptop: not in a pod, no NATS settings of its own.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("FANOUT_NATS_URL")
            .env_remove("FANOUT_OPERATOR_NAMESPACE");
        command
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs `kubectl fanout <args>`; its stdout, or what it said on failure.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let out = self.output(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl fanout {}: {}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn run(&self, args: &[&str]) -> String {
        self.try_run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `kubectl fanout <args>`, its stderr in `<dir>/<name>.log`.
    pub fn spawn(&self, dir: &Path, name: &str, args: &[&str]) -> Spawned {
        Spawned::start(self.command(args), &dir.join(format!("{name}.log"))).unwrap()
    }
}

/// The chart's connection ConfigMap (what a `helm install` into `namespace` with
/// `values` creates), applied there.
pub fn install_connection(namespace: &str, values: &[&str]) {
    let home = tempfile::tempdir().unwrap();
    let mut helm = Command::new(tools::path("helm").unwrap());
    helm.env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .args(["template", "fanout"])
        .arg(repo_root().join("charts/fanout"))
        .args(["--namespace", namespace])
        .args(["--show-only", "templates/connection-configmap.yaml"]);
    for value in values {
        helm.args(["--set", value]);
    }
    let out = helm.output().unwrap();
    cluster::check(&out, "helm template").unwrap();
    let apply = cluster::kubectl(&["apply", "--server-side", "-n", namespace, "-f", "-"]).unwrap();
    let applied = cluster::run_with_stdin(apply, &out.stdout).unwrap();
    cluster::check(&applied, "kubectl apply").unwrap();
}
