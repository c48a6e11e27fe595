//! What the `fanout` process tests share: starting the binary, and a route provisioned
//! on a fresh nats-server from manifests, the way the operator would.
//!
//! Each file in `tests/` is its own crate and uses part of this.
#![allow(dead_code)]

pub mod operator;
pub mod plugin;
pub mod standalone;

use std::path::{Path, PathBuf};
use std::process::Command;

use async_nats::jetstream;
use fanout_api::manifests::Manifests;
use fanout_config::RouteConfig;
use fanout_provision::Provisioner;
use fanout_testkit::nats::NatsServer;
use fanout_testkit::process::Spawned;

/// Starts `fanout <args>`, its stderr in `<dir>/<name>.log`.
pub fn spawn(dir: &Path, name: &str, args: &[&str]) -> Spawned {
    spawn_with_env(dir, name, args, &[])
}

/// Like [`spawn`], with these environment variables (as a pod's container gets).
pub fn spawn_with_env(dir: &Path, name: &str, args: &[&str], env: &[(String, String)]) -> Spawned {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fanout"));
    command.args(args).env("FANOUT_LOG", "info");
    command.envs(env.iter().map(|(k, v)| (k, v)));
    Spawned::start(command, &dir.join(format!("{name}.log"))).unwrap()
}

/// Runs `fanout <args>` to the end; its stdout, or a failed test with its stderr.
pub fn run(args: &[&str]) -> String {
    try_run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `fanout <args>` to the end; its stdout, or what it said on failure.
pub fn try_run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        String::from_utf8(out.stdout).map_err(|e| e.to_string())
    } else {
        Err(format!(
            "fanout {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// One route (namespace `test`) rendered from manifests and provisioned on its own
/// nats-server, its dispatcher configuration written to `route.yaml` in `dir`.
pub struct ProvisionedRoute {
    pub nats: NatsServer,
    pub js: jetstream::Context,
    pub config: RouteConfig,
    pub dir: tempfile::TempDir,
}

impl ProvisionedRoute {
    /// `manifests` must hold exactly one FanOutRoute.
    pub async fn new(manifests: &str) -> ProvisionedRoute {
        let dir = tempfile::tempdir().unwrap();
        let mut rendered = Manifests::parse(manifests, "test")
            .unwrap()
            .render(dir.path())
            .unwrap();
        assert_eq!(rendered.len(), 1, "one route expected");
        let rendered = rendered.remove(0);
        let nats = NatsServer::start().unwrap();
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        Provisioner::new(js.clone())
            .apply(&rendered.streams)
            .await
            .unwrap();
        let route = ProvisionedRoute {
            nats,
            js,
            config: rendered.config,
            dir,
        };
        std::fs::write(
            route.config_file(),
            serde_yaml_ng::to_string(&route.config).unwrap(),
        )
        .unwrap();
        route
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("route.yaml")
    }

    /// Starts `fanout dispatch` for the route, serving probes on `listen_port`, with
    /// loopback allowed (the targets are there).
    pub fn dispatcher(&self, listen_port: u16) -> Spawned {
        self.dispatcher_with(listen_port, &["--egress-allow", "127.0.0.1"])
    }

    /// Starts `fanout dispatch` for the route with `extra` flags.
    pub fn dispatcher_with(&self, listen_port: u16, extra: &[&str]) -> Spawned {
        self.dispatcher_via(&self.nats.url(), listen_port, extra)
    }

    /// Starts `fanout dispatch` for the route connecting to NATS at `nats` (a proxy
    /// in front of the route's server), with `extra` flags.
    pub fn dispatcher_via(&self, nats: &str, listen_port: u16, extra: &[&str]) -> Spawned {
        let config = self.config_file();
        let listen = format!("127.0.0.1:{listen_port}");
        let mut args = vec![
            "dispatch",
            "--config",
            config.to_str().unwrap(),
            "--nats-url",
            nats,
            "--listen",
            &listen,
            "--pod-name",
            "test-pod",
            "--shutdown-grace",
            "10s",
        ];
        args.extend_from_slice(extra);
        spawn(self.dir.path(), &format!("dispatcher-{listen_port}"), &args)
    }

    /// Publishes one event per id to the route's subject and waits for the acks.
    pub async fn publish(&self, ids: impl IntoIterator<Item = String>) {
        self.publish_with(ids.into_iter().map(|id| (id, Vec::new())))
            .await;
    }

    /// Publishes one event per (id, headers) to the route's subject, as a producer
    /// on NATS does, and waits for the acks.
    pub async fn publish_with(
        &self,
        events: impl IntoIterator<Item = (String, Vec<(&'static str, String)>)>,
    ) {
        let subject = format!("{}.event", self.config.key().ingest_prefix());
        let mut acks = Vec::new();
        for (id, extra) in events {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(fanout_config::EVENT_ID_HEADER, id.as_str());
            for (name, value) in extra {
                headers.insert(name, value.as_str());
            }
            acks.push(
                self.js
                    .publish_with_headers(subject.clone(), headers, "{}".into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

/// A kubeconfig for the control plane that authenticates as `token`.
pub fn token_kubeconfig(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    let admin = std::fs::read_to_string(fanout_testkit::cluster::kubeconfig().unwrap()).unwrap();
    let field = |name: &str| {
        admin
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {{server: \"{}\", certificate-authority-data: \"{}\"}}
users:
- name: operator
  user: {{token: \"{token}\"}}
contexts:
- name: operator
  context: {{cluster: local, user: operator}}
current-context: operator
",
            field("server:"),
            field("certificate-authority-data:")
        ),
    )
    .unwrap();
    path
}
