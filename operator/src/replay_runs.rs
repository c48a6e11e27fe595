//! The replays this operator runs: one task per FanOutReplay, stopped when the object
//! is deleted or when this replica stops leading, and how long a failed one waits
//! before it is started again (from where it stopped: its progress is in NATS).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fanout_api::FanOutReplay;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio_util::sync::CancellationToken;

pub struct ReplayRuns {
    /// Cancelled when the controllers stop (shutdown, or the Lease lost): no replay
    /// runs on a replica that does not lead.
    stop: CancellationToken,
    /// Every FanOutReplay in the watched scope, to notice one deleted.
    store: Store<FanOutReplay>,
    /// The running ones by uid, each with its own stop.
    running: Mutex<HashMap<String, CancellationToken>>,
    /// Consecutive failures by uid, and when the last one happened.
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl ReplayRuns {
    pub fn new(store: Store<FanOutReplay>) -> ReplayRuns {
        ReplayRuns {
            stop: CancellationToken::new(),
            store,
            running: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Stops every replay once dropped: held by the future that runs the controllers.
    pub fn guard(&self) -> tokio_util::sync::DropGuard {
        self.stop.clone().drop_guard()
    }

    /// Registers a run of `uid`; its stop, or `None` if one is running already.
    pub fn begin(&self, uid: &str) -> Option<CancellationToken> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains_key(uid) {
            return None;
        }
        let token = self.stop.child_token();
        running.insert(uid.to_string(), token.clone());
        Some(token)
    }

    /// Unregisters the run of `uid`; `failed` starts (or lengthens) its wait before
    /// the next start, success forgets it.
    pub fn end(&self, uid: &str, failed: bool) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failed {
            let entry = failures
                .entry(uid.to_string())
                .or_insert((0, Instant::now()));
            *entry = (entry.0.saturating_add(1), Instant::now());
        } else {
            failures.remove(uid);
        }
    }

    pub fn is_running(&self, uid: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(uid)
    }

    /// How long `uid` should still wait after failing: 1 s doubling up to a minute.
    pub fn backoff_left(&self, uid: &str) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (n, at) = failures.get(uid)?;
        let wait = Duration::from_secs(1u64 << (n.saturating_sub(1)).min(6));
        wait.checked_sub(at.elapsed()).filter(|d| !d.is_zero())
    }

    /// Whether the FanOutReplay `replay` (with `uid`) is gone, or replaced by another of
    /// the same name.
    pub fn deleted(&self, replay: &ObjectRef<FanOutReplay>, uid: &str) -> bool {
        self.store
            .get(replay)
            .is_none_or(|r| r.metadata.uid.as_deref() != Some(uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_per_replay_and_failures_back_off() {
        let (store, _writer) = kube::runtime::reflector::store();
        let runs = ReplayRuns::new(store);
        let token = runs.begin("u1").unwrap();
        assert!(runs.begin("u1").is_none(), "already running");
        assert!(runs.is_running("u1"));
        runs.end("u1", true);
        assert!(!runs.is_running("u1"));
        assert!(runs.backoff_left("u1").is_some());
        runs.end("u1", false);
        assert!(runs.backoff_left("u1").is_none());
        // Losing the lead stops what runs.
        let other = runs.begin("u2").unwrap();
        drop(runs.guard());
        assert!(other.is_cancelled());
        assert!(token.is_cancelled());
    }
}
