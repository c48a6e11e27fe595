//! A real nats-server with JetStream, on free loopback ports with a temporary store.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;

use crate::{free_port, tools, wait};

/// A nats-server child process; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    host: IpAddr,
    port: u16,
    monitor_port: u16,
    /// Clients must present this token, when set.
    token: Option<String>,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream enabled and waits until JetStream is ready.
    pub fn start() -> anyhow::Result<NatsServer> {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Like [`start`](Self::start), listening for clients on `host` (e.g. the e2e
    /// node's bridge address, so pods reach it). Monitoring listens there too.
    pub fn start_on(host: IpAddr) -> anyhow::Result<NatsServer> {
        Self::start_with(host, None)
    }

    /// Like [`start_on`](Self::start_on), refusing clients that do not present
    /// `token`, as a production NATS refuses anonymous clients.
    pub fn start_with_token(host: IpAddr, token: &str) -> anyhow::Result<NatsServer> {
        Self::start_with(host, Some(token.to_string()))
    }

    fn start_with(host: IpAddr, token: Option<String>) -> anyhow::Result<NatsServer> {
        let dir = tempfile::Builder::new().prefix("fanout-nats-").tempdir()?;
        if let Some(token) = &token {
            // In a file, not on the command line (where `ps` would show it).
            std::fs::write(
                dir.path().join("auth.conf"),
                format!(
                    "authorization {{ token: {} }}\n",
                    serde_json::to_string(token)?
                ),
            )?;
        }
        let mut server = NatsServer {
            child: None,
            host,
            port: free_port(),
            monitor_port: free_port(),
            token,
            dir,
        };
        // A port found free can be taken by a parallel test before nats-server binds
        // it; then the server exits at once and we try again on other ports.
        let mut attempts = 0;
        loop {
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) if attempts < 4 => {
                    attempts += 1;
                    eprintln!("nats-server did not start ({e:#}); retrying on other ports");
                    server.port = free_port();
                    server.monitor_port = free_port();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `nats://<host>:<port>` (`127.0.0.1` unless started with [`start_on`](Self::start_on)).
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` of the monitoring endpoint (`/jsz`, `/healthz`, ...).
    pub fn monitor_addr(&self) -> String {
        format!("{}:{}", self.host, self.monitor_port)
    }

    /// The JetStream store directory (kept across [`restart`](Self::restart)).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The server's log file, for failure messages.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// Stops the server abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's process id while it runs (benchmarks read its CPU time in /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The token clients must present, if the server requires one.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let binary = tools::path("nats-server")?;
        let mut command = Command::new(&binary);
        if self.token.is_some() {
            command.arg("-c").arg(self.dir.path().join("auth.conf"));
        }
        let child = command
            .args(["-a", &self.host.to_string(), "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-js")
            .arg("-sd")
            .arg(self.store_dir())
            .arg("-l")
            .arg(self.log_file())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.child = Some(child);
        let (host, monitor) = (self.host, self.monitor_port);
        let ready = wait::until_blocking(
            "nats-server JetStream health",
            Duration::from_secs(20),
            || healthz(host, monitor),
        );
        if let Err(e) = ready {
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            self.kill();
            return Err(e.context(format!("nats-server did not become ready; its log:\n{log}")));
        }
        Ok(())
    }
}

/// `GET /healthz?js-enabled-only=true` answers 200 once JetStream can take requests.
pub(crate) fn healthz(host: IpAddr, monitor_port: u16) -> Result<(), String> {
    monitor_get(host, monitor_port, "/healthz?js-enabled-only=true").map(|_| ())
}

/// The body of a 200 answer to `GET path` on a monitoring port (blocking, for setup).
pub(crate) fn monitor_get(host: IpAddr, monitor_port: u16, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect((host, monitor_port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    if response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200") {
        Ok(response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default())
    } else {
        Err(response.lines().next().unwrap_or("no response").to_string())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
