//! e2e/processes.sh, which cluster.sh and node.sh start and watch their daemons with.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// `wait_for` takes a component whose pid is not running its binary for one that
/// exited. Right after `start_component` the child may still be a copy of the shell,
/// so `start_component` returns only once it runs the binary. The window shows on a
/// busy machine (in about one start in twenty with six busy loops on two cores here;
/// it failed `node.sh up` in CI), so the script runs with every core kept busy.
/// It also runs with job control on (`set -m`), under which setsid forks and its
/// parent, the recorded pid, exits at once ("exited with status 0" while the
/// component runs on under another pid).
#[test]
fn a_started_component_is_its_own_binary_when_start_component_returns() {
    let dir = tempfile::tempdir().unwrap();
    let processes = Path::new(env!("CARGO_MANIFEST_DIR")).join("processes.sh");
    let script = r#"
        set -euo pipefail
        set -m
        LOG_PREFIX=test OUR_EXECUTABLES=(tail) OUR_DIR=$DIR RUN=$DIR/run LOGS=$DIR/logs
        TIMEOUT=10 STOP_TIMEOUT=10
        mkdir -p "$RUN" "$LOGS"
        touch "$DIR/followed"
        source "$PROCESSES"
        for _ in $(seq 1 100); do
            start_component follower "$(command -v tail)" -f "$DIR/followed" 2>/dev/null
            pid=$(<"$RUN/follower.pid")
            is_ours "$pid" || { echo "pid $pid: $(process_end "$pid")"; exit 1; }
            kill -KILL "$pid"
        done
    "#;

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2 * std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let output = Command::new("bash")
        .args(["-c", script])
        .env("DIR", dir.path())
        .env("PROCESSES", &processes)
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().unwrap();
    }
    assert!(
        output.status.success(),
        "a component started but not yet its binary:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
