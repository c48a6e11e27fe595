//! What happens to an event that has not reached a target when the route's stream
//! is about to remove it (its `retention.maxAge`): instead of disappearing, it is
//! dead-lettered with reason `expired` a margin before the stream would drop it, and
//! its age is reported long before that. One definition of the instants involved,
//! used by the dispatcher (which dead-letters), the operator and `fanout standalone`
//! (which report). docs/operations.md explains it for users.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The margin is a tenth of maxAge, at least this...
const MIN_MARGIN: Duration = Duration::from_secs(1);
/// ...and at most this: with a 72h maxAge an event is dead-lettered at 71h.
const MAX_MARGIN: Duration = Duration::from_secs(3600);
/// How often dispatchers look for events nearing expiry: a quarter of the margin,
/// within these bounds.
const MIN_SWEEP: Duration = Duration::from_millis(250);
const MAX_SWEEP: Duration = Duration::from_secs(30);

/// The expiry rules of one route's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expiry {
    /// The stream's maxAge: JetStream removes an event this long after storing it.
    pub max_age: crate::Duration,
}

impl Expiry {
    pub fn new(max_age: crate::Duration) -> Option<Expiry> {
        // A maxAge of zero means the stream keeps events for ever.
        (!max_age.as_std().is_zero()).then_some(Expiry { max_age })
    }

    fn max_age(self) -> Duration {
        self.max_age.as_std()
    }

    /// How long before the stream would remove an undelivered event it is
    /// dead-lettered: room for a sweep to find it and for the dead letter's publish.
    pub fn margin(self) -> Duration {
        (self.max_age() / 10)
            .clamp(MIN_MARGIN, MAX_MARGIN)
            .min(self.max_age() / 2)
    }

    /// Age at which an event not yet delivered to a target is dead-lettered for it.
    pub fn dead_letter_after(self) -> Duration {
        self.max_age() - self.margin()
    }

    /// The instant an event stored at `stored` is dead-lettered if still undelivered.
    pub fn dead_letter_at(self, stored: SystemTime) -> SystemTime {
        stored + self.dead_letter_after()
    }

    /// Age of the oldest undelivered event from which the route reports a warning
    /// (status condition, Event, alert): half of maxAge, so that people have as
    /// long again to act before anything is dead-lettered.
    pub fn warn_after(self) -> Duration {
        self.max_age() / 2
    }

    /// How often a dispatcher looks for events nearing expiry that it has not
    /// fetched (a backlog behind an open circuit or a slow target).
    pub fn sweep_every(self) -> Duration {
        (self.margin() / 4).clamp(MIN_SWEEP, MAX_SWEEP)
    }

    /// How long a dead letter's message id must be remembered so that two
    /// dispatchers dead-lettering the same expiring event store it once: from the
    /// first sweep that finds it until the stream removes the original.
    pub fn dedup_window(self) -> Duration {
        self.margin() + self.sweep_every()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiry(max_age: &str) -> Expiry {
        Expiry::new(max_age.parse().unwrap()).unwrap()
    }

    #[test]
    fn a_tenth_of_max_age_within_bounds_is_the_margin() {
        assert_eq!(expiry("72h").margin(), Duration::from_secs(3600));
        assert_eq!(
            expiry("72h").dead_letter_after(),
            Duration::from_secs(71 * 3600)
        );
        assert_eq!(expiry("1h").margin(), Duration::from_secs(360));
        assert_eq!(expiry("20s").margin(), Duration::from_secs(2));
        assert_eq!(expiry("5s").margin(), Duration::from_secs(1));
        // Never more than half of a very short maxAge.
        assert_eq!(expiry("1s").margin(), Duration::from_millis(500));
        assert_eq!(expiry("1s").dead_letter_after(), Duration::from_millis(500));
    }

    #[test]
    fn warnings_start_at_half_of_max_age_long_before_dead_lettering() {
        for max_age in ["1s", "20s", "1h", "72h", "8760h"] {
            let e = expiry(max_age);
            assert!(e.warn_after() <= e.dead_letter_after(), "{max_age}");
            assert!(e.sweep_every() <= e.margin().max(MIN_SWEEP), "{max_age}");
            assert!(e.dedup_window() > e.margin(), "{max_age}");
        }
        assert_eq!(expiry("72h").sweep_every(), MAX_SWEEP);
        assert_eq!(expiry("20s").sweep_every(), Duration::from_millis(500));
    }

    #[test]
    fn no_max_age_means_nothing_expires() {
        assert_eq!(Expiry::new(crate::Duration::ZERO), None);
    }

    #[test]
    fn the_deadline_is_counted_from_when_the_event_was_stored() {
        let stored = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            expiry("20s").dead_letter_at(stored),
            stored + Duration::from_secs(18)
        );
    }
}
