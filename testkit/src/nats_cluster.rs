//! Three nats-servers clustered with JetStream on loopback, as production runs NATS
//! for Fanout: routes between every pair, JetStream on each, R3 streams. A test can
//! kill a node (SIGKILL), freeze it (SIGSTOP) and thaw it, and restart it on the same
//! ports with the same store, and ask which node leads a stream. In a
//! [`Lab`](crate::netns::Lab) each node has a host of its own, so that a test can
//! cut one off from the others.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::nats::healthz;
use crate::netns::{Host, Lab};
use crate::process::send_signal;
use crate::{free_port, http, tied, tools, wait};

/// Name of the NATS cluster (its routes refuse servers of another cluster).
const CLUSTER: &str = "fanout-test";

struct Node {
    name: String,
    /// Where it listens: loopback, or its host's address in a lab.
    host: IpAddr,
    /// The lab host (network namespace) it runs in, if any.
    netns: Option<Host>,
    client_port: u16,
    cluster_port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

/// A running three-node cluster; every node is killed when it is dropped.
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: TempDir,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream has a meta leader, so streams
    /// with three replicas can be created.
    pub fn start() -> anyhow::Result<NatsCluster> {
        Self::start_on(vec![(IpAddr::V4(Ipv4Addr::LOCALHOST), None); 3])
    }

    /// Like [`start`](Self::start), each node in a host of `lab` of its own (named
    /// `n1`..`n3`), so that a test can cut one off from the others.
    pub fn start_in(lab: &mut Lab) -> anyhow::Result<NatsCluster> {
        let mut places = Vec::new();
        for i in 1..=3 {
            let host = lab.add_host(&format!("n{i}"))?;
            places.push((IpAddr::V4(host.addr), Some(host)));
        }
        Self::start_on(places)
    }

    fn start_on(places: Vec<(IpAddr, Option<Host>)>) -> anyhow::Result<NatsCluster> {
        let dir = tied::temp_dir("fanout-nats-cluster-")?;
        let nodes = places
            .into_iter()
            .enumerate()
            .map(|(i, (host, netns))| Node {
                name: format!("n{}", i + 1),
                host,
                netns,
                client_port: free_port(),
                cluster_port: free_port(),
                monitor_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { nodes, dir };
        for i in 0..3 {
            cluster.spawn(i)?;
        }
        cluster.wait_for_meta_leader()?;
        Ok(cluster)
    }

    /// The lab host node `i` runs in, if it runs in one.
    pub fn host(&self, i: usize) -> Option<&Host> {
        self.nodes[i].netns.as_ref()
    }

    /// Every node's client URL, comma-separated: what Fanout's `--nats-url` takes.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!(
            "nats://{}:{}",
            self.nodes[i].host, self.nodes[i].client_port
        )
    }

    /// Node `i`'s monitoring address (`host:port`).
    pub fn monitor_addr(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].host, self.nodes[i].monitor_port)
    }

    /// Node `i`'s server name (`n1`, `n2`, `n3`), as JetStream reports leaders.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Stops node `i` abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes node `i` (SIGSTOP): its sockets stay open but it answers nothing, as
    /// a node stuck in a long pause or on a hung disk.
    pub fn freeze(&self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            send_signal(child.id(), "STOP");
        }
    }

    /// Lets a frozen node run again (SIGCONT).
    pub fn thaw(&self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            send_signal(child.id(), "CONT");
        }
    }

    /// Starts node `i` again on its ports with its store (killing it first if it
    /// runs), and waits until its streams have caught up with the others (`/healthz`
    /// checks that), as a rolling restart must before it takes down the next node.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        let (host, monitor) = (self.nodes[i].host, self.nodes[i].monitor_port);
        wait::until_blocking(
            &format!("nats-server {} current", self.nodes[i].name),
            Duration::from_secs(60),
            || crate::nats::monitor_get(host, monitor, "/healthz").map(|_| ()),
        )?;
        Ok(())
    }

    /// Whether node `i` runs (frozen counts as running).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// The server name of the node that leads stream `stream`, asked of node `ask`.
    pub async fn stream_leader(&self, ask: usize, stream: &str) -> Result<String, String> {
        let r = http::get(&self.monitor_addr(ask), "/jsz?streams=true").await?;
        let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
        v["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|s| s["name"] == stream)
            .and_then(|s| s["cluster"]["leader"].as_str())
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("no leader of {stream} known to {}", self.name(ask)))
    }

    /// The log file of node `i`, for failure messages.
    pub fn log_file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.nodes[i].name))
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let binary = tools::path("nats-server")?;
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://{}:{}", n.host, n.cluster_port))
            .collect();
        let node = &self.nodes[i];
        let store = self.dir.path().join(&node.name);
        let mut command = match &node.netns {
            Some(host) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &host.netns]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        command
            .args(["--server_name", &node.name, "--cluster_name", CLUSTER])
            .args(["-a", &node.host.to_string()])
            .args(["-p", &node.client_port.to_string()])
            .args(["-m", &node.monitor_port.to_string()])
            .arg("--cluster")
            .arg(format!("nats://{}:{}", node.host, node.cluster_port))
            .arg("--routes")
            .arg(routes.join(","))
            .arg("-js")
            .arg("-sd")
            .arg(&store)
            .arg("-l")
            .arg(self.log_file(i))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child =
            tied::spawn(command).with_context(|| format!("starting {}", binary.display()))?;
        self.nodes[i].child = Some(child);
        let (host, monitor) = (self.nodes[i].host, self.nodes[i].monitor_port);
        let ready = wait::until_blocking(
            &format!("nats-server {} healthy", self.nodes[i].name),
            Duration::from_secs(30),
            || healthz(host, monitor),
        );
        if let Err(e) = ready {
            let log = std::fs::read_to_string(self.log_file(i)).unwrap_or_default();
            self.kill(i);
            bail!("{e:#}\nits log:\n{log}");
        }
        Ok(())
    }

    /// Waits until the meta leader (the node whose `/jsz` lists the group's other
    /// peers) counts every other node as current: before that, an R3 stream finds
    /// "no suitable peers for placement".
    fn wait_for_meta_leader(&self) -> anyhow::Result<()> {
        let others = self.nodes.len() - 1;
        wait::until_blocking(
            "a JetStream meta leader with every node current",
            Duration::from_secs(30),
            || {
                let mut seen = Vec::new();
                for node in &self.nodes {
                    let body = crate::nats::monitor_get(node.host, node.monitor_port, "/jsz")?;
                    let v: serde_json::Value =
                        serde_json::from_str(&body).map_err(|e| e.to_string())?;
                    if let Some(peers) = v["meta_cluster"]["replicas"].as_array() {
                        let current = peers.iter().filter(|p| p["current"] == true).count();
                        if peers.len() == others && current == others {
                            return Ok(());
                        }
                    }
                    seen.push(v["meta_cluster"].to_string());
                }
                Err(seen.join("; "))
            },
        )?;
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // A frozen process takes SIGKILL too, but say CONT first so nothing is
            // left stopped if the kill is refused.
            self.thaw(i);
            self.kill(i);
        }
    }
}
