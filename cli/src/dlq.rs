//! `fanout dlq`: look at a route's dead letters and send them again to the one target
//! that could not take them, once the cause is fixed.

use anyhow::Context;
use fanout_config::names::RouteKey;
use fanout_dispatcher::NatsArgs;
use fanout_provision::dead_letters::{self, DeadLetter};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List dead letters of a route, oldest first.
    List {
        #[command(flatten)]
        route: RouteArgs,
        /// Only this target's dead letters.
        #[arg(long)]
        target: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send dead letters of one target again, oldest first, to that target only (the
    /// route's other targets are not delivered twice), and remove each from the
    /// dead-letter stream once the route's stream has it. Safe to run again after an
    /// interruption.
    Redrive {
        #[command(flatten)]
        route: RouteArgs,
        /// The target to deliver to.
        #[arg(long)]
        target: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(clap::Args)]
struct RouteArgs {
    /// Namespace of the route.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// Name of the route.
    #[arg(long)]
    route: String,
    #[command(flatten)]
    nats: NatsArgs,
}

impl RouteArgs {
    async fn connect(&self) -> anyhow::Result<(async_nats::jetstream::Context, RouteKey)> {
        let client = self.nats.connect("fanout-dlq").await?;
        Ok((
            async_nats::jetstream::new(client),
            RouteKey::new(&self.namespace, &self.route),
        ))
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::List {
            route,
            target,
            limit,
        } => {
            let (js, key) = route.connect().await?;
            let letters = dead_letters::list(&js, &key, target.as_deref(), limit)
                .await
                .with_context(|| format!("listing the dead letters of route {key}"))?;
            print!("{}", table(&letters));
            Ok(())
        }
        Command::Redrive {
            route,
            target,
            limit,
        } => {
            let (js, key) = route.connect().await?;
            let done = dead_letters::redrive(&js, &key, &target, limit)
                .await
                .with_context(|| format!("redriving dead letters of {key} to {target}"))?;
            println!(
                "redriven {} dead letter(s) of route {key} to target {target}",
                done.events.len()
            );
            Ok(())
        }
    }
}

/// A table a person reads in a terminal.
pub fn table(letters: &[DeadLetter]) -> String {
    crate::table::columns(&rows(letters, false))
}

/// The table's rows, the header first. `wide` adds the original subject and keeps
/// the last error whole.
pub fn rows(letters: &[DeadLetter], wide: bool) -> Vec<Vec<String>> {
    let mut header = vec![
        "SEQ",
        "TARGET",
        "EVENT ID",
        "ATTEMPTS",
        "REASON",
        "STATUS",
        "DEAD-LETTERED",
    ];
    if wide {
        header.push("ORIGINAL SUBJECT");
    }
    header.push("LAST ERROR");
    let mut rows = vec![header.into_iter().map(String::from).collect()];
    for l in letters {
        let mut error = l.last_error.clone().unwrap_or_default();
        if !wide && error.chars().count() > 60 {
            error = error.chars().take(57).collect::<String>() + "...";
        }
        let mut row = vec![
            l.sequence.to_string(),
            l.target.clone(),
            l.event_id.clone(),
            l.attempts.clone(),
            l.reason.clone(),
            l.last_status.clone().unwrap_or_else(|| "-".into()),
            l.dead_lettered_at.clone(),
        ];
        if wide {
            row.push(l.original_subject.clone());
        }
        row.push(error);
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_columns_and_shortens_long_errors() {
        let letter = DeadLetter {
            sequence: 7,
            target: "crm".into(),
            event_id: "evt-1".into(),
            attempts: "1".into(),
            reason: "permanent".into(),
            last_status: Some("400".into()),
            last_error: Some("x".repeat(100)),
            original_subject: "fanout.in.shop.orders.event".into(),
            dead_lettered_at: "2026-11-27T10:00:00Z".into(),
        };
        let text = table(&[letter]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("SEQ  TARGET  EVENT ID  ATTEMPTS  REASON"));
        assert!(lines[1].starts_with("7    crm     evt-1     1         permanent"));
        assert!(lines[1].ends_with("..."), "{}", lines[1]);
        assert_eq!(lines[0].find("TARGET"), lines[1].find("crm"));
    }
}
