//! A target whose address the egress policy refuses is held, like an open circuit:
//! its events wait in hand (with progress acks, using up no attempt) and in the
//! stream, and one of them checks the address again every [`RECHECK`], since a
//! name's DNS answer can change. Nothing is dead-lettered for it: the refusal is a
//! configuration conflict between the target's URL and the platform's policy, and
//! fixing either restarts the dispatchers, which then deliver the backlog. Events
//! that would outlive the stream's retention are dead-lettered as expired, as always.
//!
//! The circuit breaker is not told: nothing reached the target, so its health is
//! unknown. The target's circuit is reported open while it is held.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::breaker::Admission;
use crate::classify::Failure;

/// How often a held target's address is checked again (a DNS lookup; nothing is
/// sent unless it is allowed).
pub const RECHECK: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct EgressHold {
    held: Mutex<Option<Held>>,
}

#[derive(Debug)]
struct Held {
    /// When the next check may be made.
    next_check: Instant,
    /// The last refusal, for the events that wait without trying.
    reason: Failure,
}

impl EgressHold {
    /// Held from the start (the URL's address is refused): the first event checks
    /// again at once.
    pub fn held(now: Instant, reason: Failure) -> EgressHold {
        EgressHold {
            held: Mutex::new(Some(Held {
                next_check: now,
                reason,
            })),
        }
    }

    /// Whether an event may try now: always when not held; when held, one event per
    /// [`RECHECK`] (the first to ask once it is due).
    pub fn admit(&self, now: Instant) -> Admission {
        match &mut *self.lock() {
            None => Admission::Allowed,
            Some(held) if now >= held.next_check => {
                held.next_check = now + RECHECK;
                Admission::Allowed
            }
            Some(held) => Admission::Denied {
                until: held.next_check,
            },
        }
    }

    /// The policy refused the connection, for `reason`. True when this starts a hold.
    pub fn refused(&self, now: Instant, reason: Failure) -> bool {
        self.lock()
            .replace(Held {
                next_check: now + RECHECK,
                reason,
            })
            .is_none()
    }

    /// Why the target is held, if it is.
    pub fn reason(&self) -> Option<Failure> {
        self.lock().as_ref().map(|held| held.reason.clone())
    }

    /// A connection was allowed (or none was needed). True when this ends a hold.
    pub fn allowed(&self) -> bool {
        self.lock().take().is_some()
    }

    pub fn is_held(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal() -> Failure {
        Failure::Refused("connection refused by egress policy: 127.0.0.1 is loopback".into())
    }

    #[test]
    fn a_target_not_held_is_always_admitted() {
        let hold = EgressHold::default();
        let now = Instant::now();
        assert_eq!(hold.admit(now), Admission::Allowed);
        assert_eq!(hold.admit(now), Admission::Allowed);
        assert!(!hold.is_held());
        assert!(!hold.allowed(), "nothing to end");
    }

    #[test]
    fn a_held_target_lets_one_event_check_per_interval() {
        let t0 = Instant::now();
        let hold = EgressHold::default();
        assert!(hold.refused(t0, refusal()), "the hold starts");
        assert!(!hold.refused(t0, refusal()), "already held");
        assert_eq!(hold.reason(), Some(refusal()));
        assert_eq!(
            hold.admit(t0),
            Admission::Denied {
                until: t0 + RECHECK
            }
        );
        let due = t0 + RECHECK;
        assert_eq!(hold.admit(due), Admission::Allowed, "the check");
        assert_eq!(
            hold.admit(due),
            Admission::Denied {
                until: due + RECHECK
            },
            "one check at a time"
        );
        assert!(hold.is_held());
        assert!(hold.allowed(), "the hold ends");
        assert_eq!(hold.admit(due), Admission::Allowed);
        assert_eq!(hold.reason(), None);
    }

    #[test]
    fn a_target_held_from_the_start_checks_at_its_first_event() {
        let t0 = Instant::now();
        let hold = EgressHold::held(t0, refusal());
        assert!(hold.is_held());
        assert_eq!(hold.admit(t0), Admission::Allowed);
        assert_eq!(
            hold.admit(t0),
            Admission::Denied {
                until: t0 + RECHECK
            }
        );
    }
}
