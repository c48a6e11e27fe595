//! The ledger that must balance after a fault run: for every target, every event the
//! gateway accepted (answered 202) was delivered at least once, or is a dead letter
//! with a reason. It reads what a user can read: the ids the producer got back, the
//! Idempotency-Keys each target received, and `fanout dlq list`'s table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One dead letter as `fanout dlq list` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterRow {
    pub target: String,
    pub event_id: String,
    pub reason: String,
}

/// Parses `fanout dlq list`'s table (header line first).
pub fn dead_letters(table: &str) -> Vec<DeadLetterRow> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            // SEQ TARGET EVENT-ID ATTEMPTS REASON ...
            Some(DeadLetterRow {
                target: cells.get(1)?.to_string(),
                event_id: cells.get(2)?.to_string(),
                reason: cells.get(4)?.to_string(),
            })
        })
        .collect()
}

/// What happened to the accepted events at one target.
#[derive(Clone, Debug, Default)]
pub struct Account {
    pub target: String,
    pub accepted: usize,
    /// Accepted ids the target received at least once.
    pub delivered: usize,
    /// Requests beyond the first for an accepted id (at-least-once repeats).
    pub duplicates: usize,
    /// Accepted ids not received but dead-lettered for this target, by reason.
    pub dead_lettered: BTreeMap<String, usize>,
    /// Accepted ids neither received nor dead-lettered: must be empty.
    pub lost: Vec<String>,
}

impl Account {
    /// `received`: the Idempotency-Key of every request the target got, in order.
    pub fn new(
        target: &str,
        accepted: &BTreeSet<String>,
        received: &[String],
        dead: &[DeadLetterRow],
    ) -> Account {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for key in received {
            *counts.entry(key.as_str()).or_default() += 1;
        }
        let mut account = Account {
            target: target.to_string(),
            accepted: accepted.len(),
            ..Account::default()
        };
        for id in accepted {
            match counts.get(id.as_str()) {
                Some(n) => {
                    account.delivered += 1;
                    account.duplicates += n - 1;
                }
                None => match dead
                    .iter()
                    .find(|d| d.target == target && d.event_id == *id)
                {
                    Some(d) => *account.dead_lettered.entry(d.reason.clone()).or_default() += 1,
                    None => account.lost.push(id.clone()),
                },
            }
        }
        account
    }

    /// Ok when nothing accepted is lost.
    pub fn balances(&self) -> Result<(), String> {
        if self.lost.is_empty() {
            Ok(())
        } else {
            Err(format!("{self}; lost: {:?}", self.lost))
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} accepted, {} delivered ({} duplicate requests), dead-lettered {:?}, {} lost",
            self.target,
            self.accepted,
            self.delivered,
            self.duplicates,
            self.dead_lettered,
            self.lost.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_accepted_id_is_delivered_dead_lettered_or_lost() {
        let table = "\
SEQ  TARGET  EVENT ID  ATTEMPTS  REASON     STATUS  DEAD-LETTERED         LAST ERROR
1    api     e3        1         permanent  400     2026-12-05T10:00:00Z  HTTP 400: no
2    other   e4        1         permanent  400     2026-12-05T10:00:00Z  HTTP 400: no
";
        let dead = dead_letters(table);
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].reason, "permanent");
        let received: Vec<String> = ["e1", "e2", "e1"].iter().map(|s| s.to_string()).collect();
        let account = Account::new("api", &ids(&["e1", "e2", "e3", "e4"]), &received, &dead);
        assert_eq!(account.delivered, 2);
        assert_eq!(account.duplicates, 1);
        assert_eq!(account.dead_lettered["permanent"], 1);
        assert_eq!(
            account.lost,
            ["e4"],
            "another target's dead letter does not count"
        );
        assert!(account.balances().is_err());
    }
}
