//! A real nats-server with JetStream, on free loopback ports with a temporary store;
//! optionally requiring a token, TLS, or NATS JWT authentication (operator mode).

mod jwt;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;

use crate::pki::TestCa;
use crate::{free_port, tied, tools, wait};

/// A nats-server child process; killed when dropped, and when the test process ends.
pub struct NatsServer {
    child: Option<Child>,
    host: IpAddr,
    port: u16,
    monitor_port: u16,
    /// Clients must present this token, when set.
    token: Option<String>,
    /// Clients must speak TLS, trusting [`ca_file`](Self::ca_file).
    tls: bool,
    /// Clients must present a user JWT of the operator, as [`creds_file`](Self::creds_file).
    jwt: bool,
    /// The configuration file, when there is anything to configure beyond the
    /// command line.
    config: Option<PathBuf>,
    dir: TempDir,
}

/// Files in the server's temporary directory.
const CONFIG_FILE: &str = "nats-server.conf";
const CA_FILE: &str = "ca.pem";
const CERT_FILE: &str = "server-cert.pem";
const KEY_FILE: &str = "server-key.pem";
const CREDS_FILE: &str = "user.creds";

impl NatsServer {
    /// Starts a server with JetStream enabled and waits until JetStream is ready.
    pub fn start() -> anyhow::Result<NatsServer> {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Like [`start`](Self::start), listening for clients on `host` (e.g. the e2e
    /// node's bridge address, so pods reach it). Monitoring listens there too.
    pub fn start_on(host: IpAddr) -> anyhow::Result<NatsServer> {
        Self::start_with(host, None, None, false)
    }

    /// Like [`start_on`](Self::start_on), refusing clients that do not present
    /// `token`, as a production NATS refuses anonymous clients.
    pub fn start_with_token(host: IpAddr, token: &str) -> anyhow::Result<NatsServer> {
        Self::start_with(host, Some(token.to_string()), None, false)
    }

    /// Like [`start_on`](Self::start_on), secured as a production NATS may be:
    ///
    /// - with `tls`, clients must speak TLS; the server's certificate, issued by
    ///   `tls` for `host` and `localhost`, is verified with [`ca_file`](Self::ca_file).
    /// - with `jwt`, the server runs in operator mode (decentralized JWT
    ///   authentication): it trusts an operator minted here, with a system account and
    ///   one account with unlimited JetStream, and admits only users of that
    ///   account; [`creds_file`](Self::creds_file) holds one.
    ///
    /// Monitoring stays plain HTTP on [`monitor_addr`](Self::monitor_addr).
    pub fn start_secured(
        host: IpAddr,
        tls: Option<&TestCa>,
        jwt: bool,
    ) -> anyhow::Result<NatsServer> {
        Self::start_with(host, None, tls, jwt)
    }

    fn start_with(
        host: IpAddr,
        token: Option<String>,
        tls: Option<&TestCa>,
        jwt: bool,
    ) -> anyhow::Result<NatsServer> {
        let dir = tied::temp_dir("fanout-nats-")?;
        // Secrets go in a file, not on the command line (where `ps` would show them).
        let mut config = String::new();
        if let Some(token) = &token {
            config += &format!("authorization {{ token: {} }}\n", quoted(token)?);
        }
        if let Some(ca) = tls {
            config += &tls_config(dir.path(), host, ca)?;
        }
        if jwt {
            config += &jwt_config(dir.path())?;
        }
        let config = if config.is_empty() {
            None
        } else {
            let path = dir.path().join(CONFIG_FILE);
            std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
            Some(path)
        };
        let mut server = NatsServer {
            child: None,
            host,
            port: free_port(),
            monitor_port: free_port(),
            token,
            tls: tls.is_some(),
            jwt,
            config,
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
    /// Also with TLS: the server says it requires TLS in its first message (INFO)
    /// and the client upgrades the connection then.
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

    /// The CA certificate (PEM) that clients trust the server's with, when started
    /// with TLS ([`start_secured`](Self::start_secured)).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join(CA_FILE))
    }

    /// A `.creds` file (user JWT and nkey seed) of a user of the JetStream account,
    /// when started with JWT authentication ([`start_secured`](Self::start_secured)).
    pub fn creds_file(&self) -> Option<PathBuf> {
        self.jwt.then(|| self.dir.path().join(CREDS_FILE))
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let binary = tools::path("nats-server")?;
        let mut command = Command::new(&binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        command
            .args(["-a", &self.host.to_string(), "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-js")
            .arg("-sd")
            .arg(self.store_dir())
            .arg("-l")
            .arg(self.log_file())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child =
            tied::spawn(command).with_context(|| format!("starting {}", binary.display()))?;
        let (host, monitor) = (self.host, self.monitor_port);
        let child = self.child.insert(child);
        // A server that exits (a port taken, a configuration it refuses) is not waited
        // for until the deadline.
        let ready = wait::until_blocking(
            "nats-server JetStream health",
            Duration::from_secs(20),
            || match child.try_wait() {
                Ok(Some(status)) => Ok(Err(format!("nats-server exited ({status})"))),
                _ => healthz(host, monitor).map(Ok),
            },
        )
        .and_then(|outcome| outcome.map_err(anyhow::Error::msg));
        if let Err(e) = ready {
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            self.kill();
            return Err(e.context(format!("nats-server did not become ready; its log:\n{log}")));
        }
        Ok(())
    }
}

/// The `tls` block: a server certificate of `ca` for `host` and `localhost`, written
/// to `dir` with the CA certificate for clients.
fn tls_config(dir: &Path, host: IpAddr, ca: &TestCa) -> anyhow::Result<String> {
    let issued = ca
        .server(&[host], &["localhost"])
        .context("issuing nats-server's certificate")?;
    for (file, pem) in [
        (CA_FILE, ca.pem()),
        (CERT_FILE, issued.certificate_pem.as_str()),
        (KEY_FILE, issued.private_key_pem.as_str()),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n}}\n",
        quoted(&dir.join(CERT_FILE).to_string_lossy())?,
        quoted(&dir.join(KEY_FILE).to_string_lossy())?,
    ))
}

/// Operator mode: the operator's JWT (which names the system account) and the
/// accounts' JWTs preloaded into a memory resolver (no account server to fetch them
/// from). Writes the user's `.creds` to `dir`.
fn jwt_config(dir: &Path) -> anyhow::Result<String> {
    let trust = jwt::Trust::mint()?;
    let creds = dir.join(CREDS_FILE);
    std::fs::write(&creds, &trust.user_creds)
        .with_context(|| format!("writing {}", creds.display()))?;
    let mut config = format!(
        "operator: {}\nresolver: MEMORY\nresolver_preload: {{\n",
        quoted(&trust.operator_jwt)?,
    );
    for (account, jwt) in &trust.accounts {
        config += &format!("  {}: {}\n", quoted(account)?, quoted(jwt)?);
    }
    config += "}\n";
    Ok(config)
}

/// `value` as a quoted string of the configuration format (JSON's quoting is one).
fn quoted(value: &str) -> anyhow::Result<String> {
    Ok(serde_json::to_string(value)?)
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
