//! A child started with `tied::spawn` ends when the process that started it is
//! killed, and not before, even when the thread that asked for it has ended; so do
//! the testkit's nats-servers and `Spawned` processes. A killed process's temporary
//! directories go when the next one is made.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use fanout_testkit::nats::NatsServer;
use fanout_testkit::process::Spawned;
use fanout_testkit::{tied, wait};

/// Set for the copy of this test binary that plays the killed test process.
const HELPER: &str = "FANOUT_TESTKIT_TIED_HELPER";

/// The killed test process: starts a tied `sleep` from a thread that then ends, a
/// nats-server and a `Spawned` `sleep`, prints their pids, and waits on stdin until
/// it is killed.
#[test]
#[ignore = "run by a_tied_child_ends_with_the_process_that_started_it"]
fn helper_that_gets_killed() {
    if std::env::var_os(HELPER).is_none() {
        return;
    }
    let mut child = std::thread::spawn(|| {
        let mut sleep = Command::new("sleep");
        sleep.arg("600").stdin(Stdio::null());
        tied::spawn(sleep).expect("starting sleep")
    })
    .join()
    .unwrap();
    let nats = NatsServer::start().expect("starting nats-server");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut sleep = Command::new("sleep");
    sleep.arg("600");
    let spawned = Spawned::start(sleep, log.path()).expect("starting sleep");
    println!(
        "children {} {} {}",
        child.id(),
        nats.pid().unwrap(),
        spawned.pid()
    );
    // Killed while reading: the test never writes to this stdin. Should the test end
    // first, its end of the pipe closes, and the helper cleans up.
    let _ = std::io::stdin().read_line(&mut String::new());
    let _ = child.kill();
    let _ = child.wait();
}

/// The state letter of process `pid` (`Z` once it has ended and is not yet reaped),
/// or `None` once it is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[test]
fn a_tied_child_ends_with_the_process_that_started_it() {
    // The helper is killed before it can remove its temporary files (nats-server's
    // store, a log): they go in a directory this test removes.
    let tmp = tempfile::tempdir().unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_that_gets_killed",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER, "1")
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the helper");
    let stdout = BufReader::new(helper.stdout.take().unwrap());
    let pids: Vec<u32> = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            let pids = line.strip_prefix("children ")?;
            Some(pids.split(' ').map(|p| p.parse().unwrap()).collect())
        })
        .expect("the helper printed its children's pids");

    // The thread that started the first has ended; the child has not.
    for &pid in &pids {
        let alive = state(pid);
        assert!(
            alive.is_some_and(|s| s != 'Z'),
            "child {pid} ended before its parent (state {alive:?})"
        );
    }

    helper.kill().unwrap();
    helper.wait().unwrap();
    let ended = wait::until_blocking(
        "the tied children to end after their parent was killed",
        Duration::from_secs(10),
        || {
            let running = pids
                .iter()
                .find(|&&pid| state(pid).is_some_and(|s| s != 'Z'));
            match running {
                Some(pid) => Err(format!("process {pid} still runs")),
                None => Ok(()),
            }
        },
    );
    if ended.is_err() {
        for &pid in &pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
    ended.unwrap();

    // The killed helper's nats-server store is still there, until the next directory
    // with its prefix is made.
    let helper_dirs = || {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&format!("fanout-nats-{}-", helper.id())))
            .count()
    };
    assert_eq!(helper_dirs(), 1, "the helper's nats-server made its store");
    let ours = tied::temp_dir_in(tmp.path(), "fanout-nats-").unwrap();
    assert_eq!(helper_dirs(), 0, "the killed helper's store is left behind");
    assert!(ours.path().exists());
}
