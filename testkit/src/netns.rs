//! A small network of a test's own: hosts in network namespaces created here, each
//! joined to one bridge by a veth pair, with this process's namespace on the bridge
//! too. A test cuts a host off (its link goes down: packets vanish, connections hang
//! rather than close, as in a real partition) and heals it, or drops a share of the
//! packets a host receives. Every address is inside `10.250.<lab>.0/24`, on links
//! made here; nothing leaves the machine. Needs root and `ip`; the packet loss uses
//! the pinned `iptables` of `e2e/tools.sh` (this machine's own may be missing).

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};

/// One host of the lab.
#[derive(Clone, Debug)]
pub struct Host {
    /// Its network namespace.
    pub netns: String,
    pub addr: Ipv4Addr,
    /// Its veth's end on the bridge (in the hub namespace): down means cut off.
    port: String,
}

/// The lab; every namespace and link is deleted when it is dropped.
pub struct Lab {
    index: u8,
    hub: String,
    hosts: Vec<Host>,
}

impl Lab {
    /// Creates the hub namespace with its bridge and joins this process's namespace to
    /// it at `10.250.<lab>.254`.
    pub fn new() -> anyhow::Result<Lab> {
        // Parallel tests each take a free lab number: `ip netns add` fails for one
        // in use. Within a process, each lab starts its search further on, so a
        // number just given back (the kernel deletes its links a moment later) is
        // not taken again at once.
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let made = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let start = ((std::process::id() + made * 37) % 200) as u8;
        for offset in 0..200u8 {
            let index = 1 + (start.wrapping_add(offset) % 200);
            let hub = format!("fanout-lab{index}-hub");
            if ip(&["netns", "add", &hub]).is_err() {
                continue;
            }
            let lab = Lab {
                index,
                hub,
                hosts: Vec::new(),
            };
            match lab.wire() {
                Ok(()) => return Ok(lab),
                // Links of a lab of that number still being deleted: try another
                // (dropping `lab` removes its hub).
                Err(e) => note_skipped(&e),
            }
        }
        bail!("no free lab number for a network namespace")
    }

    fn wire(&self) -> anyhow::Result<()> {
        let bridge = self.link("br");
        ip(&["-n", &self.hub, "link", "add", &bridge, "type", "bridge"])?;
        ip(&["-n", &self.hub, "link", "set", &bridge, "up"])?;
        // This process's namespace, on the bridge like any host.
        let (here, there) = (self.link("r"), self.link("R"));
        ip(&["link", "add", &here, "type", "veth", "peer", "name", &there])?;
        ip(&["link", "set", &there, "netns", &self.hub])?;
        ip(&[
            "-n", &self.hub, "link", "set", &there, "master", &bridge, "up",
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.addr(254)),
            "dev",
            &here,
        ])?;
        ip(&["link", "set", &here, "up"])?;
        Ok(())
    }

    /// This process's address on the lab's network.
    pub fn local_addr(&self) -> Ipv4Addr {
        self.addr(254)
    }

    /// Adds a host `10.250.<lab>.<n>` in a namespace of its own.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<Host> {
        let n = u8::try_from(self.hosts.len() + 1).context("too many hosts")?;
        let netns = format!("fanout-lab{}-{name}", self.index);
        ip(&["netns", "add", &netns])?;
        let (inside, port) = (self.link(&format!("h{n}")), self.link(&format!("p{n}")));
        ip(&[
            "link", "add", &inside, "type", "veth", "peer", "name", &port,
        ])?;
        ip(&["link", "set", &inside, "netns", &netns])?;
        ip(&["link", "set", &port, "netns", &self.hub])?;
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &port,
            "master",
            &self.link("br"),
            "up",
        ])?;
        let addr = self.addr(n);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inside,
        ])?;
        ip(&["-n", &netns, "link", "set", &inside, "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        let host = Host { netns, addr, port };
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Cuts `host` off from everyone: its link to the bridge goes down.
    pub fn cut(&self, host: &Host) -> anyhow::Result<()> {
        ip(&["-n", &self.hub, "link", "set", &host.port, "down"])
    }

    /// Joins `host` again.
    pub fn heal(&self, host: &Host) -> anyhow::Result<()> {
        ip(&["-n", &self.hub, "link", "set", &host.port, "up"])
    }

    /// Drops `percent` of the packets `host` receives, at random (0 stops it).
    pub fn drop_incoming(&self, host: &Host, percent: u32) -> anyhow::Result<()> {
        let binary = crate::tools::path("iptables")?;
        let iptables = |args: &[&str]| {
            run(Command::new("ip")
                .args(["netns", "exec", &host.netns])
                .arg(&binary)
                .args(args))
        };
        iptables(&["-F", "INPUT"])?;
        if percent > 0 {
            let probability = format!("{:.4}", f64::from(percent) / 100.0);
            iptables(&[
                "-A",
                "INPUT",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &probability,
                "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }

    /// `program` to be run inside `host`'s namespace (`ip netns exec`, which execs
    /// it: the child is the program itself, so signals reach it).
    pub fn command(&self, host: &Host, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &host.netns]).arg(program);
        command
    }

    fn addr(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.index, n)
    }

    /// Interface names are at most 15 bytes: `fl<lab><what>`.
    fn link(&self, what: &str) -> String {
        format!("fl{}{what}", self.index)
    }
}

/// Why a lab number was skipped, for the test's output.
fn note_skipped(e: &anyhow::Error) {
    eprintln!("lab number skipped: {e:#}");
}

impl Drop for Lab {
    fn drop(&mut self) {
        // This namespace's end first: the kernel removes the links of a deleted
        // namespace in the background, and a new lab must not find them.
        let _ = ip(&["link", "delete", &self.link("r")]);
        // Deleting a namespace deletes the links in it, and with a veth its peer.
        for host in &self.hosts {
            let _ = ip(&["netns", "delete", &host.netns]);
        }
        let _ = ip(&["netns", "delete", &self.hub]);
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
