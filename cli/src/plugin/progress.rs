//! A replay's progress on stderr: a bar redrawn in place on a terminal, a line of
//! counts every few seconds otherwise (a log, a CI job).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use fanout_provision::replay::Record;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const BAR_WIDTH: usize = 30;

/// Shows `progress` until `done` fires.
pub async fn follow(mut progress: watch::Receiver<Record>, done: CancellationToken) {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(5)
    };
    let mut tick = tokio::time::interval(every);
    let mut drawn = false;
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            _ = tick.tick() => {}
        }
        if !progress.has_changed().unwrap_or(false) {
            continue;
        }
        let record = progress.borrow_and_update().clone();
        if record.id.is_empty() {
            continue;
        }
        let mut err = std::io::stderr().lock();
        let _ = if terminal {
            drawn = true;
            write!(err, "\r{}", bar(&record))
        } else {
            writeln!(err, "{}", counts(&record))
        };
        let _ = err.flush();
    }
    if drawn {
        eprintln!();
    }
}

/// `[#########---------------------]  120/361 events`
pub fn bar(r: &Record) -> String {
    let filled = (r.sent * BAR_WIDTH as u64)
        .checked_div(r.total)
        .unwrap_or(BAR_WIDTH as u64)
        .min(BAR_WIDTH as u64) as usize;
    format!(
        "[{}{}]  {}/{} events  sequence {}",
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH - filled),
        r.sent,
        r.total,
        r.position
    )
}

/// `sent 120 of 361 events (sequence 480 of 17..900)`
pub fn counts(r: &Record) -> String {
    format!(
        "sent {} of {} events (sequence {} of {}..{})",
        r.sent, r.total, r.position, r.first_sequence, r.last_sequence
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_what_was_sent() {
        let mut r = Record {
            id: "r".into(),
            total: 300,
            sent: 120,
            position: 480,
            ..Default::default()
        };
        assert_eq!(
            bar(&r),
            "[############------------------]  120/300 events  sequence 480"
        );
        r.total = 0;
        r.sent = 0;
        assert!(bar(&r).starts_with(&format!("[{}]", "#".repeat(BAR_WIDTH))));
    }
}
