//! The CPU limit the peer benchmark puts on each contender holds a busy process to
//! its quota, as a Kubernetes CPU limit would.

use std::process::Command;
use std::time::{Duration, Instant};

use fanout_testkit::cpu_limit::CpuLimit;
use fanout_testkit::process::user_and_system_cpu;

/// CPU seconds a busy loop uses in `window` of wall time, with and without the limit.
fn busy_cpu_seconds(limit: Option<&CpuLimit>, window: Duration) -> f64 {
    let mut busy = Command::new("sh");
    busy.args(["-c", "while :; do :; done"]);
    let command = match limit {
        Some(limit) => limit.wrap(&busy),
        None => busy,
    };
    // Tied: a busy loop left running by a killed test would skew everything after it.
    let mut child = fanout_testkit::tied::spawn(command).expect("starting sh");
    let start = Instant::now();
    // The measurement window itself: CPU used over a fixed stretch of wall time.
    std::thread::sleep(window);
    let (user, system) = user_and_system_cpu(child.id());
    let elapsed = start.elapsed().as_secs_f64();
    child.kill().unwrap();
    child.wait().unwrap();
    (user + system) / elapsed * window.as_secs_f64()
}

#[test]
fn a_busy_process_gets_its_quota_and_no_more() {
    let window = Duration::from_millis(1500);
    let limit = CpuLimit::new("fanout-testkit-cpu-limit", 200).expect("a cgroup with a quota");
    let before = limit.throttling().unwrap();
    let limited = busy_cpu_seconds(Some(&limit), window);
    let throttled = limit.throttling().unwrap().share_since(before);
    let free = busy_cpu_seconds(None, window);

    // 200m over 1.5 s is 0.3 CPU seconds; the loop alone takes nearly a core.
    assert!(
        limited <= 0.3 * 1.25,
        "the limited loop used {limited:.2} CPU s in {window:?}, above its 200m quota"
    );
    assert!(
        limited >= 0.3 * 0.5,
        "the limited loop used only {limited:.2} CPU s: was it running?"
    );
    assert!(
        free > 2.0 * limited,
        "without the limit the loop used {free:.2} CPU s, with it {limited:.2}: the limit did not bind"
    );
    assert!(
        throttled > 0.5,
        "the quota cut short only {:.0}% of the busy periods",
        100.0 * throttled
    );
}

#[test]
fn a_cgroup_left_by_a_process_that_is_gone_is_removed_by_the_next_limit() {
    // A pid above the kernel's largest (pid_max is at most 2^22) never runs.
    let name = "fanout-testkit-orphan";
    let v1 = std::path::Path::new("/sys/fs/cgroup/cpu");
    let root = if v1.join("cpu.cfs_quota_us").exists() {
        v1
    } else {
        v1.parent().unwrap()
    };
    let orphan = root.join(format!("{name}-4999999"));
    std::fs::create_dir(&orphan).expect("creating a cgroup as a killed bench leaves it");
    let limit = CpuLimit::new(name, 100).expect("a cgroup with a quota");
    let left = orphan.exists();
    if left {
        let _ = std::fs::remove_dir(&orphan);
    }
    assert!(!left, "{} was left in place", orphan.display());
    drop(limit);
}
