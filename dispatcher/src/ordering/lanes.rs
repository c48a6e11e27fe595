//! The keys of an ordered target in hand: per key, the head being delivered and the
//! events waiting behind it in stream order. Pure bookkeeping, no I/O: the loop in
//! `run.rs` feeds it events and outcomes and starts what it hands back.

use std::collections::VecDeque;
use std::time::SystemTime;

use fanout_config::route::AfterDeadLetter;

/// How a key's head ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    Delivered,
    /// Dead-lettered at this time: the key goes on or stays blocked, as configured.
    DeadLettered {
        event_id: String,
        at: SystemTime,
    },
    /// Left unsettled (stopping, or no longer this dispatcher's to deliver): it
    /// comes back from JetStream, so the key's next events must not go meanwhile.
    Abandoned,
}

/// What a head start carries besides the item: whether delivering it lifts a block.
#[derive(Debug)]
pub struct Start<T> {
    pub item: T,
    /// The redriven event a key was blocked on: delivering it unblocks the key.
    pub unblocks: bool,
}

#[derive(Debug)]
struct Entry<T> {
    sequence: u64,
    /// The event's id when it came on the redrive subject: only a redrive can lift
    /// a block, so only a redrive's id is compared.
    redrive_of: Option<String>,
    item: T,
}

#[derive(Debug)]
struct Lane<T> {
    /// The head being delivered: its stream sequence.
    active: Option<u64>,
    waiting: VecDeque<Entry<T>>,
    /// Since when the key's head has been failing, if it is.
    failing_since: Option<SystemTime>,
    /// With `afterDeadLetter: block`: the dead-lettered event it waits for, and since
    /// when.
    dead_letter: Option<(String, SystemTime)>,
    /// The head (when active) is the redrive that lifts the block.
    head_unblocks: bool,
    /// Set when the key's head was abandoned: nothing of it may go until the loop
    /// starts over (a new epoch), when everything is fetched again.
    stalled: bool,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane {
            active: None,
            waiting: VecDeque::new(),
            failing_since: None,
            dead_letter: None,
            head_unblocks: false,
            stalled: false,
        }
    }
}

impl<T> Lane<T> {
    fn blocked_since(&self) -> Option<SystemTime> {
        match (self.failing_since, &self.dead_letter) {
            (Some(a), Some((_, b))) => Some(a.min(*b)),
            (a, b) => a.or(b.as_ref().map(|(_, since)| *since)),
        }
    }

    fn idle(&self) -> bool {
        self.active.is_none() && self.waiting.is_empty() && self.dead_letter.is_none()
    }
}

/// An ordered target's keys in hand. Looked up a few times per event, with keys from
/// the events: foldhash, seeded per process, instead of SipHash.
#[derive(Debug)]
pub struct Lanes<T> {
    lanes: foldhash::HashMap<String, Lane<T>>,
    after_dead_letter: AfterDeadLetter,
    /// Events waiting behind a head, over all keys.
    waiting: usize,
}

impl<T> Lanes<T> {
    pub fn new(after_dead_letter: AfterDeadLetter) -> Lanes<T> {
        Lanes {
            lanes: foldhash::HashMap::default(),
            after_dead_letter,
            waiting: 0,
        }
    }

    /// Takes an event of `key` at stream `sequence`; hands it back when it can go
    /// now (the key has no head out and is not blocked). `redriven`: it came on the
    /// target's redrive subject; the one a blocked key waits for goes first.
    pub fn offer(
        &mut self,
        key: String,
        sequence: u64,
        event_id: &str,
        redriven: bool,
        item: T,
    ) -> Option<Start<T>> {
        let lane = match self.lanes.get_mut(&key) {
            Some(lane) => lane,
            None => self.lanes.entry(key.clone()).or_default(),
        };
        let unblocking = redriven
            && lane
                .dead_letter
                .as_ref()
                .is_some_and(|(id, _)| id == event_id);
        let entry = Entry {
            sequence,
            redrive_of: redriven.then(|| event_id.to_string()),
            item,
        };
        if unblocking {
            lane.waiting.push_front(entry);
        } else {
            // In stream order; events arrive in it, so this is almost always the end.
            let at = lane
                .waiting
                .iter()
                .rposition(|e| e.sequence < sequence)
                .map_or(0, |i| i + 1);
            lane.waiting.insert(at, entry);
        }
        self.waiting += 1;
        self.next(&key)
    }

    /// The head of `key` ended; hands back the key's next event if it may go now.
    pub fn finished(&mut self, key: &str, finished: Finished) -> Option<Start<T>> {
        let block = self.after_dead_letter == AfterDeadLetter::Block;
        let lane = self.lanes.get_mut(key)?;
        lane.active = None;
        let unblocks = std::mem::take(&mut lane.head_unblocks);
        match finished {
            Finished::Delivered => {
                lane.failing_since = None;
                if unblocks {
                    lane.dead_letter = None;
                }
            }
            Finished::DeadLettered { event_id, at } => {
                lane.failing_since = None;
                if block {
                    // Blocked since the first dead letter, however often its redrive
                    // is dead-lettered again.
                    let since = match &lane.dead_letter {
                        Some((id, since)) if *id == event_id => *since,
                        _ => at,
                    };
                    lane.dead_letter = Some((event_id, since));
                }
            }
            Finished::Abandoned => lane.stalled = true,
        }
        self.next(key)
    }

    /// `key`'s head failed an attempt and will be tried again.
    pub fn head_failed(&mut self, key: &str, now: SystemTime) {
        if let Some(lane) = self.lanes.get_mut(key) {
            lane.failing_since.get_or_insert(now);
        }
    }

    /// `key` is blocked by the dead letter of `event_id` (as recorded by an earlier
    /// dispatcher, in `afterDeadLetter: block` mode): its later events wait until
    /// that event is redriven and delivered.
    pub fn block(&mut self, key: &str, event_id: &str, since: SystemTime) {
        let lane = self.lanes.entry(key.to_string()).or_default();
        lane.dead_letter = Some((event_id.to_string(), since));
    }

    /// Keys blocked now, and since when the longest-blocked one is.
    pub fn blocked(&self) -> (u64, Option<SystemTime>) {
        let mut count = 0;
        let mut oldest: Option<SystemTime> = None;
        for since in self.lanes.values().filter_map(Lane::blocked_since) {
            count += 1;
            oldest = Some(oldest.map_or(since, |o| o.min(since)));
        }
        (count, oldest)
    }

    /// Events waiting behind a head.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Every waiting event.
    pub fn waiting_items(&self) -> impl Iterator<Item = &T> {
        self.lanes
            .values()
            .flat_map(|lane| lane.waiting.iter().map(|e| &e.item))
    }

    /// Empties everything: the waiting events are handed back to the caller.
    pub fn clear(&mut self) -> Vec<T> {
        self.waiting = 0;
        self.lanes
            .drain()
            .flat_map(|(_, lane)| lane.waiting.into_iter().map(|e| e.item))
            .collect()
    }

    fn next(&mut self, key: &str) -> Option<Start<T>> {
        let lane = self.lanes.get_mut(key)?;
        if lane.active.is_some() || lane.stalled {
            return None;
        }
        let front_unblocks = lane.dead_letter.as_ref().is_some_and(|(id, _)| {
            lane.waiting
                .front()
                .is_some_and(|e| e.redrive_of.as_ref() == Some(id))
        });
        if lane.dead_letter.is_some() && !front_unblocks {
            return None;
        }
        let Some(entry) = lane.waiting.pop_front() else {
            if lane.idle() {
                self.lanes.remove(key);
            }
            return None;
        };
        self.waiting -= 1;
        lane.active = Some(entry.sequence);
        lane.head_unblocks = front_unblocks;
        Some(Start {
            item: entry.item,
            unblocks: front_unblocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(start: Option<Start<u64>>) -> Option<u64> {
        start.map(|s| s.item)
    }

    #[test]
    fn one_head_per_key_and_the_next_in_stream_order() {
        let mut lanes = Lanes::new(AfterDeadLetter::Continue);
        assert_eq!(started(lanes.offer("a".into(), 1, "e1", false, 1)), Some(1));
        assert_eq!(started(lanes.offer("b".into(), 2, "e2", false, 2)), Some(2));
        assert_eq!(started(lanes.offer("a".into(), 4, "e4", false, 4)), None);
        // Out of order within hand (as after a takeover): still stream order.
        assert_eq!(started(lanes.offer("a".into(), 3, "e3", false, 3)), None);
        assert_eq!(lanes.waiting(), 2);
        assert_eq!(started(lanes.finished("a", Finished::Delivered)), Some(3));
        assert_eq!(started(lanes.finished("a", Finished::Delivered)), Some(4));
        assert_eq!(started(lanes.finished("a", Finished::Delivered)), None);
        assert_eq!(lanes.waiting(), 0);
        assert_eq!(lanes.lanes.len(), 1, "a's lane is gone, b's head is out");
    }

    #[test]
    fn a_failing_head_blocks_its_key_only_and_is_reported() {
        let mut lanes = Lanes::new(AfterDeadLetter::Continue);
        let t = SystemTime::UNIX_EPOCH;
        lanes.offer("a".into(), 1, "e1", false, 1);
        lanes.offer("a".into(), 2, "e2", false, 2);
        lanes.head_failed("a", t);
        assert_eq!(started(lanes.offer("b".into(), 3, "e3", false, 3)), Some(3));
        assert_eq!(lanes.blocked(), (1, Some(t)));
        // Dead-lettered with `continue`: the key goes on.
        let dead = Finished::DeadLettered {
            event_id: "e1".into(),
            at: t,
        };
        assert_eq!(started(lanes.finished("a", dead)), Some(2));
        assert_eq!(lanes.blocked(), (0, None));
    }

    #[test]
    fn with_block_a_dead_lettered_key_waits_for_its_redrive() {
        let mut lanes = Lanes::new(AfterDeadLetter::Block);
        let t = SystemTime::UNIX_EPOCH;
        lanes.offer("a".into(), 1, "e1", false, 1);
        lanes.offer("a".into(), 2, "e2", false, 2);
        let dead = Finished::DeadLettered {
            event_id: "e1".into(),
            at: t,
        };
        assert_eq!(started(lanes.finished("a", dead)), None);
        assert_eq!(lanes.blocked(), (1, Some(t)));
        assert_eq!(started(lanes.offer("a".into(), 5, "e5", false, 5)), None);
        // Another event's redrive is just an event of the key.
        assert_eq!(started(lanes.offer("a".into(), 6, "e0", true, 6)), None);
        let redrive = lanes.offer("a".into(), 7, "e1", true, 7).unwrap();
        assert!(redrive.unblocks);
        assert_eq!(redrive.item, 7);
        assert_eq!(started(lanes.finished("a", Finished::Delivered)), Some(2));
        assert_eq!(lanes.blocked(), (0, None));
    }

    #[test]
    fn a_redrive_dead_lettered_again_keeps_the_key_blocked() {
        let mut lanes = Lanes::new(AfterDeadLetter::Block);
        let t = SystemTime::UNIX_EPOCH;
        lanes.block("a", "e1", t);
        lanes.offer("a".into(), 2, "e2", false, 2);
        assert!(lanes.offer("a".into(), 3, "e1", true, 3).is_some());
        let again = Finished::DeadLettered {
            event_id: "e1".into(),
            at: t + std::time::Duration::from_secs(60),
        };
        assert_eq!(started(lanes.finished("a", again)), None);
        assert_eq!(
            lanes.blocked(),
            (1, Some(t)),
            "blocked since the first time"
        );
    }

    #[test]
    fn an_abandoned_head_stalls_its_key_and_clear_hands_everything_back() {
        let mut lanes = Lanes::new(AfterDeadLetter::Continue);
        lanes.offer("a".into(), 1, "e1", false, 1);
        lanes.offer("a".into(), 2, "e2", false, 2);
        assert_eq!(started(lanes.finished("a", Finished::Abandoned)), None);
        assert_eq!(started(lanes.offer("a".into(), 3, "e3", false, 3)), None);
        let mut back = lanes.clear();
        back.sort();
        assert_eq!(back, [2, 3]);
        assert_eq!(lanes.waiting(), 0);
    }
}
