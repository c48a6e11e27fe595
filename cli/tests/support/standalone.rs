//! `fanout standalone` as a user runs it: manifests in a directory, the process
//! started with its gateway and status addresses, events posted over HTTP, status
//! read from `/status`, stopped with SIGTERM.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fanout_testkit::nats::NatsServer;
use fanout_testkit::process::Spawned;
use fanout_testkit::{free_port, http, wait};

const T: Duration = Duration::from_secs(30);

pub struct Standalone {
    pub process: Spawned,
    /// `host:port` of the gateway.
    pub gateway: String,
    /// `host:port` of `/status`, `/metrics` and the probes.
    pub status: String,
    pub namespace: String,
    pub nats_url: String,
    pub dir: tempfile::TempDir,
}

impl Standalone {
    /// Starts `fanout standalone -f <dir> --namespace <namespace>` with `manifests`
    /// as the directory's one file, and waits until it says it is ready.
    pub async fn start(nats: &NatsServer, namespace: &str, manifests: &str) -> Standalone {
        Self::start_with(&nats.url(), namespace, manifests, &[]).await
    }

    /// Like [`start`](Self::start), on the NATS at `nats_url` (several URLs,
    /// comma-separated, for a cluster), with `extra` flags.
    pub async fn start_with(
        nats_url: &str,
        namespace: &str,
        manifests: &str,
        extra: &[&str],
    ) -> Standalone {
        let s = Self::spawn_with(nats_url, namespace, manifests, extra);
        s.wait_ready().await;
        s
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(nats: &NatsServer, namespace: &str, manifests: &str) -> Standalone {
        Self::spawn_with(&nats.url(), namespace, manifests, &[])
    }

    /// Like [`start_with`](Self::start_with), without waiting for anything.
    pub fn spawn_with(
        nats_url: &str,
        namespace: &str,
        manifests: &str,
        extra: &[&str],
    ) -> Standalone {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("manifests");
        std::fs::create_dir(&files).unwrap();
        std::fs::write(files.join("manifests.yaml"), manifests).unwrap();
        let gateway = format!("127.0.0.1:{}", free_port());
        let status = format!("127.0.0.1:{}", free_port());
        let mut command = command(&files, namespace, nats_url);
        command
            .args(["--listen-gateway", &gateway, "--listen-metrics", &status])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra);
        let process = Spawned::start(command, &dir.path().join("standalone.log")).unwrap();
        Standalone {
            process,
            gateway,
            status,
            namespace: namespace.to_string(),
            nats_url: nats_url.to_string(),
            dir,
        }
    }

    /// Waits until `/readyz` on the status address answers 200: what a user (or a
    /// script) waits for before sending events.
    pub async fn wait_ready(&self) {
        wait::until("standalone to be ready", T, || async {
            match http::get(&self.status, "/readyz").await {
                Ok(r) if r.status == 200 => Ok(()),
                other => Err(format!("{other:?}\n{}", self.process.log())),
            }
        })
        .await
        .unwrap();
    }

    /// POSTs one event to `route` through the gateway.
    pub async fn post(&self, route: &str, headers: &[(&str, &str)], body: &str) -> http::Response {
        let path = format!("/v1/namespaces/{}/routes/{route}/events", self.namespace);
        http::post(&self.gateway, &path, headers, body.as_bytes())
            .await
            .unwrap()
    }

    /// POSTs and expects 202 Accepted.
    pub async fn accept(&self, route: &str, headers: &[(&str, &str)], body: &str) {
        let r = self.post(route, headers, body).await;
        assert_eq!(r.status, 202, "{}", r.body);
    }

    pub async fn get(&self, path: &str) -> String {
        let r = http::get(&self.status, path).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    pub async fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/status").await).unwrap()
    }

    /// Target `target` of route `route` in `/status`.
    pub async fn target(&self, route: &str, target: &str) -> serde_json::Value {
        let status = self.status().await;
        find_target(&status, route, target).clone()
    }

    /// `fanout <args> -n <namespace> --nats-url <url>`: the CLI against this
    /// instance's NATS; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`cli`](Self::cli), failing with what the CLI said.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-n", &self.namespace, "--nats-url", &self.nats_url]);
        super::try_run(&all)
    }

    pub fn sigterm_exits_zero(mut self) {
        let exit = self.process.terminate(T).unwrap();
        assert!(exit.success(), "exit status {exit}\n{}", self.process.log());
    }
}

/// `fanout standalone -f <dir>` with short health and drain intervals.
pub fn command(dir: &Path, namespace: &str, nats_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fanout"));
    command
        .arg("standalone")
        .arg("-f")
        .arg(dir)
        .args(["--namespace", namespace, "--nats-url", nats_url])
        .args(["--health-interval", "200ms", "--shutdown-grace", "5s"])
        .env("FANOUT_LOG", "info")
        .env("NO_COLOR", "1");
    command
}

/// Target `target` of route `route` (its name) in a `/status` answer.
pub fn find_target<'a>(
    status: &'a serde_json::Value,
    route: &str,
    target: &str,
) -> &'a serde_json::Value {
    status["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"] == route)
        .flat_map(|r| r["targets"].as_array().into_iter().flatten())
        .find(|t| t["name"] == target)
        .unwrap_or_else(|| panic!("no target {route}/{target} in {status}"))
}
