//! A CPU limit for a benchmark's contender, enforced the way a Kubernetes CPU limit
//! is: a cgroup of its own with a CFS bandwidth quota (`resources.limits.cpu: 500m`
//! is 50 ms of CPU per 100 ms period). On a machine whose cores the contender shares
//! with its targets and nats-server, a limit well below the machine makes the
//! contender, not the rest of the chain, what sets the rate.
//!
//! Needs root and the cpu controller: cgroup v1 (`/sys/fs/cgroup/cpu`, as on the
//! machines this project runs on) or cgroup v2 (`cpu.max`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// The CFS period the kubelet uses; the quota is the limit's share of it.
const PERIOD_US: u64 = 100_000;

/// A cgroup with a CPU quota; removed when dropped (its processes must be gone).
pub struct CpuLimit {
    dir: PathBuf,
    millicores: u64,
}

/// How often the quota held the cgroup back, from its `cpu.stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Throttling {
    /// CFS periods in which the cgroup's processes wanted to run.
    pub periods: u64,
    /// Of them, the periods that ended with the quota used up.
    pub throttled: u64,
}

impl Throttling {
    /// The share of the active periods that the quota cut short, since `before`.
    pub fn share_since(self, before: Throttling) -> f64 {
        let periods = self.periods.saturating_sub(before.periods);
        if periods == 0 {
            return 0.0;
        }
        self.throttled.saturating_sub(before.throttled) as f64 / periods as f64
    }
}

impl CpuLimit {
    /// A new cgroup named `name` (unique per process: the pid is appended) whose
    /// processes together get at most `millicores` thousandths of a CPU. Cgroups of
    /// the same name left by a process that is gone (a bench killed before it could
    /// remove its own) are removed first.
    pub fn new(name: &str, millicores: u64) -> anyhow::Result<CpuLimit> {
        anyhow::ensure!(millicores > 0, "a CPU limit of 0 millicores");
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/cpu"] {
            remove_orphans(Path::new(root), name);
        }
        let name = format!("{name}-{}", std::process::id());
        let quota = millicores * PERIOD_US / 1000;
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let limit = if std::fs::read_to_string(v2).is_ok_and(|c| has_word(&c, "cpu")) {
            let root = Path::new("/sys/fs/cgroup");
            // Children get the cpu controller only when the parent hands it down.
            write(&root.join("cgroup.subtree_control"), "+cpu")?;
            let limit = CpuLimit::create(root.join(name), millicores)?;
            write(&limit.dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
            limit
        } else {
            let root = Path::new("/sys/fs/cgroup/cpu");
            anyhow::ensure!(
                root.join("cpu.cfs_quota_us").exists(),
                "no cpu controller: neither cgroup v2 with cpu in {} nor cgroup v1 at {}",
                v2.display(),
                root.display()
            );
            let limit = CpuLimit::create(root.join(name), millicores)?;
            write(&limit.dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
            write(&limit.dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            limit
        };
        Ok(limit)
    }

    fn create(dir: PathBuf, millicores: u64) -> anyhow::Result<CpuLimit> {
        std::fs::create_dir(&dir)
            .with_context(|| format!("creating the cgroup {} (needs root)", dir.display()))?;
        Ok(CpuLimit { dir, millicores })
    }

    pub fn millicores(&self) -> u64 {
        self.millicores
    }

    /// `command`, started inside this cgroup: a shell joins it and then becomes the
    /// program (exec), so the process has the limit from its first instruction and
    /// its pid is the program's. Standard streams are not carried over (a `Command`
    /// does not expose them): set them on the result.
    pub fn wrap(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("sh");
        wrapped
            .arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.dir.join("cgroup.procs"))
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }

    /// The cgroup's throttling counters so far.
    pub fn throttling(&self) -> anyhow::Result<Throttling> {
        let path = self.dir.join("cpu.stat");
        let stat = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            stat.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .with_context(|| format!("{} has no {name}", path.display()))?
                .trim()
                .parse()
                .with_context(|| format!("{name} in {}", path.display()))
        };
        Ok(Throttling {
            periods: field("nr_periods")?,
            throttled: field("nr_throttled")?,
        })
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // rmdir of a cgroup fails while a process is still in it; the contender is
        // killed and reaped before its limit is dropped.
        if let Err(error) = std::fs::remove_dir(&self.dir) {
            eprintln!("leaving the cgroup {}: {error}", self.dir.display());
        }
    }
}

/// Removes the cgroups `<name>-<pid>` under `root` whose pid is no longer running.
/// An orphan still holding a process (a contender that outlived its bench) stays:
/// rmdir refuses it.
pub fn remove_orphans(root: &Path, name: &str) {
    for dir in crate::tied::orphans(root, &format!("{name}-")) {
        let _ = std::fs::remove_dir(dir);
    }
}

fn has_word(text: &str, word: &str) -> bool {
    text.split_whitespace().any(|w| w == word)
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))
}
