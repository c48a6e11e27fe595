//! Children that end with the process that started them. A test or benchmark that is
//! killed (a CI timeout, `kill`, a wrapper such as `timeout`) runs no destructors, so
//! its nats-servers and `fanout` processes used to go on running: idle servers that
//! hold ports and memory, and busy contenders that skew the next benchmark. A child
//! started by [`spawn`] is sent SIGKILL by the kernel when this process ends, however
//! it ends (Linux's `PR_SET_PDEATHSIG`).
//!
//! The kernel sends that signal when the *thread* that forked the child ends, not the
//! process. Tests start servers from threads that end before the process does (a
//! test's own thread, Tokio's blocking pool), so every child is forked by one thread
//! of this module's that lives as long as the process.
//!
//! Their files are tied the same way, less promptly: a directory made by
//! [`temp_dir`] carries this process's id in its name, and is removed the next time
//! one with the same prefix is made, once that process is gone (a killed bench left
//! nats-server stores of tens of megabytes behind).

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;

type Job = (Command, mpsc::SyncSender<io::Result<Child>>);

/// Starts `command` as a child that is killed when this process ends.
pub fn spawn(command: Command) -> io::Result<Child> {
    let (reply, answer) = mpsc::sync_channel(1);
    spawner()
        .send((command, reply))
        .map_err(|_| io::Error::other("the spawning thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the spawning thread is gone"))?
}

/// The thread that forks every tied child; it never ends (its channel's sender is
/// static).
fn spawner() -> &'static mpsc::Sender<Job> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (jobs, receiver) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (command, reply) in receiver {
                    let _ = reply.send(spawn_here(command));
                }
            })
            .expect("starting the thread that spawns tied children");
        jobs
    })
}

#[allow(unsafe_code)]
fn spawn_here(mut command: Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec, and makes only
    // async-signal-safe calls (prctl, getppid) and no allocation.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have ended before the signal was asked for: then none
            // would come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command.spawn()
}

/// A temporary directory named `<prefix><pid>-<random>` in the system's temporary
/// directory, removed when dropped, or else by a later call once this process is gone.
pub fn temp_dir(prefix: &str) -> io::Result<tempfile::TempDir> {
    temp_dir_in(&std::env::temp_dir(), prefix)
}

/// [`temp_dir`] in `root`.
pub fn temp_dir_in(root: &Path, prefix: &str) -> io::Result<tempfile::TempDir> {
    remove_orphans(root, prefix);
    tempfile::Builder::new()
        .prefix(&format!("{prefix}{}-", std::process::id()))
        .tempdir_in(root)
}

/// Removes the directories `temp_dir_in(root, prefix)` made for processes that are
/// gone.
fn remove_orphans(root: &Path, prefix: &str) {
    for dir in orphans(root, prefix) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The entries of `root` named `<prefix><pid>`, or `<prefix><pid>-<anything>`, whose
/// process `pid` is gone: what a killed process left under its id.
pub fn orphans(root: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let pid_of = |name: &str| {
        let rest = name.strip_prefix(prefix)?;
        let (pid, _) = rest.split_once('-').unwrap_or((rest, ""));
        pid.parse::<u32>().ok()
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(pid_of)
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(|entry| entry.path())
        .collect()
}
