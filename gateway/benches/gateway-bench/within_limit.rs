//! The CPU goal within a CPU limit: the one-shard gateway and the one-thread trivial
//! server, each in a cgroup of its own with the same CFS quota (what
//! `resources.limits.cpu` sets), under load at the same time, half the connections
//! each.
//!
//! Unlimited, the two servers, nats-server and the load generator share two cores,
//! and how often each server sleeps and waits for a core moves its CPU per request
//! with the machine. Within a limit well below the machine each server is kept busy
//! by its quota, as a pod at its limit is, and the rest of the chain has cores to
//! spare. Each server's kernel share and context switches per request are printed
//! beside the ratio, to tell the work from the waiting (docs/benchmarks.md, "The CPU
//! goal within a CPU limit").

use std::path::Path;
use std::time::Duration;

use fanout_testkit::cpu_limit::{CpuLimit, Throttling};
use fanout_testkit::nats::NatsServer;
use fanout_testkit::process::{idle_share_since, machine_idle_and_total};

use crate::load::Target;
use crate::{
    free_addr, loaded_together, requests, start_gateway, start_trivial_server, task_files,
    user_and_system_seconds,
};

/// One run of both servers within their limits.
pub struct LimitedRun {
    pub gateway_rate: f64,
    /// CPU µs per acknowledged event.
    pub gateway_cpu: f64,
    /// Of it, in the kernel (system time).
    pub gateway_system: f64,
    pub trivial_rate: f64,
    /// CPU µs per request.
    pub trivial_cpu: f64,
    pub trivial_system: f64,
    /// The share of each server's active CFS periods that its quota cut short.
    pub gateway_throttled: f64,
    pub trivial_throttled: f64,
    /// The share of the machine's CPU time left idle.
    pub idle: f64,
    /// Times each server's threads were switched out, per request: how often it
    /// slept (or was preempted) and had to be woken.
    pub gateway_switches: f64,
    pub trivial_switches: f64,
}

impl LimitedRun {
    /// The gateway's CPU per acknowledged event over the trivial server's per request.
    pub fn ratio(&self) -> f64 {
        self.gateway_cpu / self.trivial_cpu
    }
}

pub struct WithinLimit {
    pub millicores: u64,
    pub connections_each: usize,
    pub runs: Vec<LimitedRun>,
}

/// What the CPU goal needs besides the bench's own settings.
pub struct Setup<'a> {
    pub fanout: &'a Path,
    pub config: &'a Path,
    pub nats: &'a NatsServer,
    /// The gateway's target, whose address is replaced.
    pub events: &'a Target,
    /// The trivial server's, likewise.
    pub plain: &'a Target,
}

/// `runs` runs within `millicores` each, or why there can be none (no cgroup with a
/// cpu controller, or no permission to make one).
pub async fn measure(
    setup: Setup<'_>,
    millicores: u64,
    connections: usize,
    seconds: Duration,
    runs: u64,
) -> Result<WithinLimit, String> {
    let limit = |name| CpuLimit::new(name, millicores).map_err(|e| format!("{e:#}"));
    // Declared before the processes, so dropped after them: a cgroup is removed only
    // once its processes are gone.
    let gateway_limit = limit("fanout-gateway-bench-gateway")?;
    let trivial_limit = limit("fanout-gateway-bench-trivial")?;
    let gateway_addr = free_addr();
    let (gateway, _) = start_gateway(
        setup.fanout,
        setup.config,
        gateway_addr,
        setup.nats,
        &["--shards", "1"],
        Some(&gateway_limit),
    )
    .await;
    let (trivial, trivial_addr) = start_trivial_server(Some(1), Some(&trivial_limit)).await;
    let gateway_target = Target {
        addr: gateway_addr,
        ..setup.events.clone()
    };
    let trivial_target = Target {
        addr: trivial_addr,
        ..setup.plain.clone()
    };
    let each = (connections / 2).max(1);
    let throttling = |limit: &CpuLimit| limit.throttling().unwrap_or_default();
    let mut measured = Vec::new();
    for run in 1..=runs {
        let before: [Throttling; 2] = [throttling(&gateway_limit), throttling(&trivial_limit)];
        let machine = machine_idle_and_total();
        let switched = [
            context_switches(gateway.0.id()),
            context_switches(trivial.0.id()),
        ];
        let system = [
            system_seconds(gateway.0.id()),
            system_seconds(trivial.0.id()),
        ];
        let ((g, gateway_cpu), (t, trivial_cpu)) = loaded_together(
            (&gateway_target, gateway.0.id()),
            (&trivial_target, trivial.0.id()),
            each,
            seconds,
        )
        .await;
        let this = LimitedRun {
            gateway_rate: g.rate(),
            gateway_cpu,
            trivial_rate: t.rate(),
            trivial_cpu,
            gateway_system: (system_seconds(gateway.0.id()) - system[0]) * 1e6
                / requests(&g, seconds),
            trivial_system: (system_seconds(trivial.0.id()) - system[1]) * 1e6
                / requests(&t, seconds),
            gateway_throttled: throttling(&gateway_limit).share_since(before[0]),
            trivial_throttled: throttling(&trivial_limit).share_since(before[1]),
            idle: idle_share_since(machine),
            gateway_switches: (context_switches(gateway.0.id()) - switched[0]) as f64
                / requests(&g, seconds),
            trivial_switches: (context_switches(trivial.0.id()) - switched[1]) as f64
                / requests(&t, seconds),
        };
        eprintln!(
            "within {millicores}m, run {run}: gateway {:.0} events/s at {gateway_cpu:.1} µs ({:.1} in the kernel), trivial server {:.0} req/s at {trivial_cpu:.1} µs ({:.1}): {:.2}x; throttled {:.0}% / {:.0}% of periods; context switches per request {:.3} / {:.3}; machine idle {:.0}%",
            this.gateway_rate,
            this.gateway_system,
            this.trivial_rate,
            this.trivial_system,
            this.ratio(),
            100.0 * this.gateway_throttled,
            100.0 * this.trivial_throttled,
            this.gateway_switches,
            this.trivial_switches,
            100.0 * this.idle,
        );
        measured.push(this);
    }
    drop((gateway, trivial));
    Ok(WithinLimit {
        millicores,
        connections_each: each,
        runs: measured,
    })
}

/// Voluntary and involuntary context switches of all of a process's threads so far.
fn context_switches(pid: u32) -> u64 {
    task_files(pid, "status")
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn system_seconds(pid: u32) -> f64 {
    user_and_system_seconds(pid).1
}
