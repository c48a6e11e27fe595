//! Real parts for Fanout's tests, each started on free loopback ports and cleaned up.
//!
//! - [`nats::NatsServer`]: a nats-server with JetStream and a temporary store, open or
//!   requiring a token, TLS or JWTs (operator mode) minted at test time;
//!   [`nats_cluster::NatsCluster`]: three of them clustered, for R3 streams and faults.
//! - [`cluster`]: the local kube-apiserver + controller-manager (started once per test
//!   run by `e2e/cluster.sh`), a client for it, and a fresh namespace per test.
//! - [`target::TargetServer`]: a scripted HTTP(S) target that records what it receives.
//! - [`pki`]: a CA, server and client certificates made at test time.
//! - [`oauth2::TokenServer`]: an OAuth 2.0 token endpoint (client credentials).
//! - [`otel::Collector`]: an OpenTelemetry Collector that records the spans it receives.
//! - [`node`]: the same with one real node (`e2e/node.sh`), pods and images.
//! - [`process::Spawned`]: a `fanout` process started by a test, logged and killed;
//!   [`tied::spawn`]: every child the testkit starts ends with the test process, and
//!   [`tied::temp_dir`]: its files go once it is gone.
//! - [`prometheus`]: alerting rules checked against the metrics processes export.
//! - [`proxy::FreezingProxy`]: a loopback TCP proxy that can stop forwarding;
//!   [`nats_proxy::NatsProxy`]: one in front of nats-server that cuts off one client.
//! - [`tools`]: paths of the pinned binaries built by `e2e/tools.sh`.
//! - [`cpu_limit::CpuLimit`]: a benchmark contender's CPU limit, as a Kubernetes limit sets it.
//! - [`example`]: the scenarios of `examples/` as shipped, their URLs repointed.
//! - [`netns::Lab`]: hosts in network namespaces of the test's own, to cut off and heal.
//! - [`webhooks`]: Standard Webhooks signatures checked by the official library.
//! - [`producer::Producer`]: steady load through the gateway, retrying 503s;
//!   [`ledger`]: whether every accepted event reached every target or a dead letter.

pub mod cluster;
pub mod cpu_limit;
pub mod example;
pub mod http;
pub mod ledger;
pub mod nats;
pub mod nats_cluster;
pub mod nats_proxy;
pub mod netns;
pub mod node;
pub mod oauth2;
pub mod otel;
pub mod pki;
pub mod process;
pub mod producer;
pub mod prometheus;
pub mod proxy;
pub mod python;
pub mod target;
pub mod tied;
pub mod tools;
pub mod wait;
pub mod webhooks;

use std::path::{Path, PathBuf};

/// The repository root (testkit lives one level below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit has a parent directory")
        .to_path_buf()
}

/// A free TCP port on 127.0.0.1 for a server a test starts.
///
/// Taken from below the kernel's ephemeral range: a port from that range can be handed
/// to some outgoing connection between this check and the server binding it, which
/// made a CI run fail with "Address already in use". Each port is handed out once per
/// test process, from a start that differs by process id, and checked free by binding.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = ports_below_ephemeral_range();
    let span = u32::from(high - low);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {low}..{high}");
}

/// `low..high`: up to 12,000 ports just below the range Linux picks source ports of
/// outgoing connections from (`net.ipv4.ip_local_port_range`, 32768 by default).
fn ports_below_ephemeral_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.max(11024);
    (high.saturating_sub(12000).max(10000), high)
}

/// The release `fanout` binary (the product, with its allocator and runtime defaults),
/// built first. For benchmarks, which measure what users run; run from a bench binary
/// (`target/release/deps/...`), whose target directory holds it.
pub fn fanout_release_binary() -> PathBuf {
    release_binary("fanout", "fanout")
}

/// Binary `bin` of workspace package `package`, built first in release (as
/// [`fanout_release_binary`]): for benchmarks, which run their baselines
/// (`fanout-baselines`) as separate executables built like the product.
pub fn release_binary(package: &str, bin: &str) -> PathBuf {
    let release = std::env::current_exe()
        .expect("the running executable's path")
        .parent()
        .and_then(Path::parent)
        .expect("a bench binary lives in target/release/deps")
        .join(bin);
    // `cargo bench` sets CARGO; running the bench binary directly with CARGO=/bin/true
    // skips the build and uses the binary already there.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build.args(["build", "--release", "--quiet", "-p", package, "--bin", bin]);
    // What `cargo bench` sets for the bench (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...)
    // differs from a shell's; build scripts that watch such variables would run
    // again, and everything above them be rebuilt, on every bench run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let keep = matches!(name.as_ref(), "CARGO_HOME" | "CARGO_TARGET_DIR");
        if !keep && (name.starts_with("CARGO_") || name == "OUT_DIR") {
            build.env_remove(name.as_ref());
        }
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "building {package}'s {bin} binary failed");
    assert!(release.is_file(), "{} is missing", release.display());
    release
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_outside_the_range_of_outgoing_source_ports() {
        let (_, ephemeral_low) = ports_below_ephemeral_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|p| *p < ephemeral_low), "{ports:?}");
    }
}
