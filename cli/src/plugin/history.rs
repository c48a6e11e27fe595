//! `kubectl fanout attempts <route> <event-id>` and `kubectl fanout events <route>`:
//! `fanout attempts` and `fanout events` with the route checked and NATS found in the
//! cluster.

use async_nats::jetstream;
use fanout_provision::history::Query;

use super::Session;
use super::dlq::checked;
use super::output::Format;
use crate::history::{self, EventsFilter, Output};

/// `kubectl fanout attempts`.
#[derive(clap::Args)]
pub struct AttemptsArgs {
    /// The FanOutRoute.
    route: String,
    /// The event's id (its Idempotency-Key at the targets).
    event: String,
    /// Only this target's attempts.
    #[arg(long)]
    target: Option<String>,
    /// Only attempts of the last this long (e.g. 2h). Default: all the history keeps.
    #[arg(long)]
    since: Option<fanout_config::Duration>,
}

/// `kubectl fanout events`.
#[derive(clap::Args)]
pub struct EventsArgs {
    /// The FanOutRoute.
    route: String,
    /// Only this target.
    #[arg(long)]
    target: Option<String>,
    /// Only events whose delivery is not (yet) a success at a target: retrying,
    /// failed, dead-lettered or discarded there.
    #[arg(long)]
    failed: bool,
    /// Events attempted in the last this long.
    #[arg(long, default_value = "1h")]
    since: fanout_config::Duration,
    /// At most this many rows (event and target), most recent first.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

pub async fn attempts(session: &Session, args: AttemptsArgs) -> anyhow::Result<()> {
    let key = checked(session, &args.route, args.target.as_deref()).await?;
    let js = jetstream::new(session.nats().await?);
    let query = Query {
        event: Some(args.event),
        target: args.target,
        since: history::since(args.since),
    };
    let text =
        history::attempts_from(&js, &key, &query, args.since, output(session.output)).await?;
    super::output::print(&text)
}

pub async fn events(session: &Session, args: EventsArgs) -> anyhow::Result<()> {
    let key = checked(session, &args.route, args.target.as_deref()).await?;
    let js = jetstream::new(session.nats().await?);
    let filter = EventsFilter {
        target: args.target,
        failed: args.failed,
        since: args.since,
        limit: args.limit,
    };
    let text = history::events_from(&js, &key, &filter, output(session.output)).await?;
    super::output::print(&text)
}

fn output(format: Option<Format>) -> Output {
    match format {
        None => Output::Table,
        Some(Format::Wide) => Output::Wide,
        Some(Format::Json) => Output::Json,
        Some(Format::Yaml) => Output::Yaml,
    }
}
