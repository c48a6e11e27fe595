//! Per-key ordering of a route target: events of one key reach the target in the
//! order the stream stored them; events of different keys go in parallel.
//!
//! JetStream hands a consumer's events to whichever client pulls, and redelivers a
//! retried event after later ones, so order has to be kept here:
//!
//! - **One deliverer.** An ordered target's consumer pins one pull client
//!   (priority policy `pinned_client`): one dispatcher replica delivers the target,
//!   the others stand by, and the pin moves when that replica stops pulling for the
//!   consumer's priority timeout (its ack wait plus 15s) or lets go on stopping.
//!   Its events arrive in stream order.
//! - **Lanes** ([`lanes`]). In that one dispatcher, each key has at most one event
//!   out (its head); later events of the key wait in hand, with progress acks, up to
//!   `maxWaiting` in all. A failing head is retried in hand (never negatively
//!   acknowledged: JetStream would hand it back after its key's later events), so
//!   only its own key waits. Dead-lettered, the key goes on or, with
//!   `afterDeadLetter: block`, waits for the redrive ([`blocked`]).
//! - **Takeover** ([`run`]). A dispatcher that gets the pin may find events the last
//!   one held still unacknowledged, on their way back to it in any order. It holds
//!   everything it receives until every event JetStream counts as pending up to the
//!   consumer's delivered sequence is in its hand, then puts them in stream order.
//! - **Fence** ([`fence`]). A dispatcher that may have lost the pin (no event or
//!   check has confirmed it for a while, or an event came with another pin) sends
//!   nothing more of what it holds: what it held comes back to the new deliverer.
//!
//! The key comes from a header, the CloudEvents `partitionkey` or a CEL expression
//! over the event ([`key`]).

pub mod blocked;
pub mod fence;
pub mod key;
pub mod lanes;
pub(crate) mod run;

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use fanout_config::route::{AfterDeadLetter, Ordering};

pub use blocked::BlockedKeys;
pub use fence::{Fence, Gate, Pin};
pub use key::KeySource;

/// An ordered target's settings and state, part of its worker.
pub struct Ordered {
    pub key: KeySource,
    pub after_dead_letter: AfterDeadLetter,
    pub max_waiting: usize,
    /// How long the pin of a dispatcher that stopped pulling lasts.
    pub takeover_after: Duration,
    /// Where blocked keys are recorded (`afterDeadLetter: block` only).
    pub blocked_store: Option<BlockedKeys>,
    pub pin: Pin,
    lanes: Mutex<lanes::Lanes<run::Held>>,
    /// Whether this dispatcher is delivering the target now (pinned, taken over).
    active: std::sync::atomic::AtomicBool,
}

impl Ordered {
    pub fn new(config: &Ordering, key: KeySource, blocked_store: Option<BlockedKeys>) -> Ordered {
        let takeover_after = config.takeover_after.as_std();
        Ordered {
            key,
            after_dead_letter: config.after_dead_letter,
            max_waiting: config.max_waiting as usize,
            takeover_after,
            blocked_store,
            // Well within the time the pin needs to move after the last pull, which
            // can be up to 10s before the last confirmation (pulls expire after 5s).
            pin: Pin::new((takeover_after / 4).min(Duration::from_secs(5))),
            lanes: Mutex::new(lanes::Lanes::new(config.after_dead_letter)),
            active: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, lanes::Lanes<run::Held>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys blocked now, and since when the longest-blocked one is.
    pub fn blocked(&self) -> (u64, Option<SystemTime>) {
        self.lanes().blocked()
    }

    /// Whether this dispatcher delivers the target now; the others stand by.
    pub fn is_active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_active(&self, active: bool) {
        self.active
            .store(active, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How often a progress ack keeps waiting events in hand: a third of the ack wait.
fn progress_every(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(Duration::from_millis(100))
}
