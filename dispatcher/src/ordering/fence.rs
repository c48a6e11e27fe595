//! Whether this dispatcher is still the one delivering an ordered target.
//!
//! JetStream pins one pull client per ordered consumer and stamps each event it
//! hands over with the pin's id (`Nats-Pin-Id`). The pin moves to another client only
//! after the pinned one has not pulled for the consumer's priority timeout (the
//! route's ack wait plus 15s), or when it lets go on stopping. A dispatcher that
//! stopped pulling (cut off from NATS, stalled) may still hold events and be about
//! to send them; the fence keeps it from doing so once it cannot be sure the pin is
//! still its own:
//!
//! - every event that arrives with the pin's id, and every check of the consumer
//!   that names it as pinned, *confirms* the pin;
//! - a request is sent only while the last confirmation is younger than
//!   [`Pin::fresh_for`], a fraction of the time the pin needs to move;
//! - an event with another pin id, or a check naming another client, starts a new
//!   *epoch*: deliveries of the old one give up without settling their events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fanout_nats_client::pull::Ack;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::message::Message;

/// How often a delivery that may not go yet looks again.
const RECHECK: Duration = Duration::from_millis(100);

/// The pin as this dispatcher knows it, shared by the target's loop and its
/// deliveries.
pub struct Pin {
    epoch: AtomicU64,
    /// Milliseconds after `origin` of the last confirmation; 0: none in this epoch.
    confirmed_ms: AtomicU64,
    origin: Instant,
    fresh_for: Duration,
    changed: Notify,
}

/// Whether a delivery may send its request.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    Open,
    Drain,
    /// Its epoch is over: leave the event unsettled.
    Lost,
}

impl Pin {
    pub fn new(fresh_for: Duration) -> Pin {
        Pin {
            epoch: AtomicU64::new(0),
            confirmed_ms: AtomicU64::new(0),
            origin: Instant::now(),
            fresh_for,
            changed: Notify::new(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Starts a new epoch, unconfirmed; returns it.
    pub fn advance(&self) -> u64 {
        self.confirmed_ms.store(0, Ordering::Release);
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.changed.notify_waiters();
        epoch
    }

    /// The pin was just seen to be this dispatcher's.
    pub fn confirm(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.confirmed_ms.store(ms.max(1), Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Whether `epoch` is the current one and confirmed recently enough to send.
    pub fn is_fresh(&self, epoch: u64) -> bool {
        self.is_fresh_at(epoch, Instant::now())
    }

    fn is_fresh_at(&self, epoch: u64, now: Instant) -> bool {
        let confirmed = self.confirmed_ms.load(Ordering::Acquire);
        epoch == self.epoch()
            && confirmed > 0
            && now.saturating_duration_since(self.origin)
                < Duration::from_millis(confirmed) + self.fresh_for
    }

    /// A delivery's view of the pin, taken when it starts.
    pub fn fence(&self, received_at: Instant) -> Fence<'_> {
        Fence {
            pin: self,
            epoch: self.epoch(),
            received_at,
        }
    }
}

/// One delivery's fence: the epoch it belongs to.
pub struct Fence<'a> {
    pin: &'a Pin,
    pub epoch: u64,
    /// When its event arrived (or was last acknowledged in progress).
    pub received_at: Instant,
}

impl Fence<'_> {
    pub fn lost(&self) -> bool {
        self.epoch != self.pin.epoch()
    }

    /// Waits until the request may go. Before it goes, an event held for a while
    /// gets a progress ack, so that JetStream cannot hand it to another dispatcher
    /// before the request's timeout has passed (the ack wait is that timeout plus
    /// 5s, counted from the last ack).
    pub async fn until_mine(&self, message: &Message, drain: &CancellationToken) -> Gate {
        loop {
            if self.lost() {
                return Gate::Lost;
            }
            if self.pin.is_fresh(self.epoch) {
                if self.received_at.elapsed() > Duration::from_secs(4) {
                    message.settle(Ack::Progress);
                }
                return Gate::Open;
            }
            let changed = self.pin.changed.notified();
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(RECHECK) => {}
                _ = drain.cancelled() => return Gate::Drain,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_fresh_only_when_confirmed_in_its_epoch() {
        let pin = Pin::new(Duration::from_secs(5));
        assert!(!pin.is_fresh(0), "nothing confirmed yet");
        pin.confirm();
        assert!(pin.is_fresh(0));
        let next = pin.advance();
        assert!(!pin.is_fresh(0), "an old epoch never is");
        assert!(!pin.is_fresh(next), "a new epoch starts unconfirmed");
        pin.confirm();
        assert!(pin.is_fresh(next));
    }

    #[test]
    fn a_confirmation_goes_stale() {
        let pin = Pin::new(Duration::from_secs(5));
        pin.confirm();
        let now = Instant::now();
        assert!(pin.is_fresh_at(0, now + Duration::from_secs(4)));
        assert!(!pin.is_fresh_at(0, now + Duration::from_secs(6)));
    }
}
