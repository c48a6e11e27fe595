//! Processes a test starts (`fanout operator`, `fanout dispatch`, ...): stderr goes to
//! a log file, the process is killed when the test lets go of it, and its log is
//! printed when the test is failing at that moment, since that is usually where the
//! reason is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::wait;

/// A running child process; killed (SIGKILL) when dropped.
pub struct Spawned {
    child: Child,
    log: PathBuf,
}

impl Spawned {
    /// Starts `command` with its stderr in `log` (stdin and stdout closed).
    pub fn start(mut command: Command, log: &Path) -> anyhow::Result<Spawned> {
        let stderr = std::fs::File::create(log)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", log.display()))?;
        let program = command.get_program().to_owned();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = crate::tied::spawn(command)
            .map_err(|e| anyhow::anyhow!("starting {program:?}: {e}"))?;
        Ok(Spawned {
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process has written to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (a name such as `TERM` or `STOP`) to the process.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until the process exits by itself; an error if it still runs after
    /// `timeout` (it is killed when dropped).
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = self.child.id();
        wait::until_blocking(&format!("process {pid} to exit"), timeout, || {
            self.child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_string())
        })
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits for the exit: how Kubernetes stops a pod.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal("TERM");
        self.wait(timeout)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
    }
}

/// Sends `signal` to process `pid` with kill(1): tests need SIGTERM and SIGSTOP, which
/// `std::process::Child` cannot send, and the testkit keeps unsafe code to `tied.rs`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// (CPU seconds used so far, peak RSS in MiB) of process `pid`, from /proc: what the
/// benchmarks report for each process they measure.
pub fn cpu_and_peak_rss(pid: u32) -> (f64, f64) {
    let (user, system) = user_and_system_cpu(pid);
    (user + system, peak_rss_mib(pid))
}

/// CPU seconds process `pid` has used so far in user space and in the kernel (on
/// loopback mostly the TCP stack, which any HTTP client pays alike).
pub fn user_and_system_cpu(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks = |i: usize| fields[i].parse::<f64>().unwrap() / 100.0;
    (ticks(11), ticks(12))
}

/// Peak RSS (VmHWM) of process `pid` in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        .unwrap();
    hwm_kib / 1024.0
}

/// (idle, total) CPU time of the whole machine so far, in ticks, from /proc/stat.
pub fn machine_idle_and_total() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .expect("/proc/stat starts with the cpu line")
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let idle = ticks[3] + ticks[4];
    (idle, ticks.iter().take(8).sum())
}

/// The share of the machine's CPU time that was idle since `before`
/// ([`machine_idle_and_total`]): well above zero, the processes measured had cores
/// to spare and were held back by something else (a CPU limit, their own design).
pub fn idle_share_since(before: (u64, u64)) -> f64 {
    let (idle, total) = machine_idle_and_total();
    let total = total.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    idle.saturating_sub(before.0) as f64 / total as f64
}
