//! `fanout attempts` and `fanout events`: what happened to an event, and to a route's
//! recent events, at each target, read from the route's delivery history.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use fanout_config::history::{Outcome, Record};
use fanout_config::names::RouteKey;
use fanout_dispatcher::NatsArgs;
use fanout_provision::history::{self, Query};
use serde::Serialize;

/// How results are printed, as kubectl's `-o`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table.
    #[default]
    Table,
    /// A table with more columns.
    Wide,
    Json,
    Yaml,
}

#[derive(clap::Args)]
pub struct RouteArgs {
    /// The route, when it is not given as the first argument.
    #[arg(long = "route")]
    route: Option<String>,
    /// Namespace of the route.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// Output format: table (default), wide, json or yaml.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    nats: NatsArgs,
}

/// `fanout attempts <route> <event-id>` (or `--route <route> <event-id>`).
#[derive(clap::Args)]
pub struct AttemptsArgs {
    #[command(flatten)]
    route: RouteArgs,
    /// The route, then the event's id (its Idempotency-Key at the targets); the id
    /// alone with --route.
    #[arg(value_names = ["ROUTE", "EVENT_ID"], num_args = 1..=2, required = true)]
    names: Vec<String>,
    /// Only this target's attempts.
    #[arg(long)]
    target: Option<String>,
    /// Only attempts of the last this long (e.g. 2h). Default: all the history keeps.
    #[arg(long)]
    since: Option<fanout_config::Duration>,
}

/// `fanout events <route>` (or `--route <route>`).
#[derive(clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    route: RouteArgs,
    /// The route (or --route).
    #[arg(value_name = "ROUTE")]
    name: Option<String>,
    /// Only this target.
    #[arg(long)]
    target: Option<String>,
    /// Only events whose delivery is not (yet) a success at a target: retrying, failed,
    /// dead-lettered or discarded there.
    #[arg(long)]
    failed: bool,
    /// Events attempted in the last this long.
    #[arg(long, default_value = "1h")]
    since: fanout_config::Duration,
    /// At most this many rows (event and target), most recent first.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

impl RouteArgs {
    /// The route, named once: as the first argument or with --route.
    fn key(&self, positional: Option<&str>) -> anyhow::Result<RouteKey> {
        let route = match (positional, self.route.as_deref()) {
            (Some(_), Some(_)) => {
                anyhow::bail!("the route is given twice (as an argument and with --route)")
            }
            (Some(route), None) | (None, Some(route)) => route,
            (None, None) => anyhow::bail!("no route given: name it first, or with --route"),
        };
        Ok(RouteKey::new(&self.namespace, route))
    }

    async fn read(&self, key: RouteKey, query: &Query) -> anyhow::Result<Vec<Record<'static>>> {
        let client = self.nats.connect("fanout-history").await?;
        read(&async_nats::jetstream::new(client), &key, query).await
    }
}

/// The records of `key`'s history that `query` selects.
async fn read(
    js: &async_nats::jetstream::Context,
    key: &RouteKey,
    query: &Query,
) -> anyhow::Result<Vec<Record<'static>>> {
    let read = history::read(js, key, query)
        .await
        .with_context(|| format!("reading the delivery history of route {key}"))?;
    if read.skipped > 0 {
        eprintln!(
            "note: {} history line(s) were not understood (written by a newer dispatcher?)",
            read.skipped
        );
    }
    Ok(read.records)
}

pub(crate) fn since(ago: Option<fanout_config::Duration>) -> Option<SystemTime> {
    ago.map(|d| SystemTime::now() - d.as_std())
}

pub async fn attempts(args: AttemptsArgs) -> anyhow::Result<()> {
    let (route, event) = match args.names.as_slice() {
        [route, event] => (Some(route.as_str()), event.clone()),
        [event] => (None, event.clone()),
        _ => anyhow::bail!("expected the route and the event id"),
    };
    let key = args.route.key(route)?;
    let query = Query {
        event: Some(event),
        target: args.target,
        since: since(args.since),
    };
    let records = args.route.read(key.clone(), &query).await?;
    print!(
        "{}",
        attempts_report(&key, &query, args.since, records, args.route.output)?
    );
    Ok(())
}

/// `fanout attempts` and `kubectl fanout attempts`: one event's attempts at each
/// target, read from `js`.
pub async fn attempts_from(
    js: &async_nats::jetstream::Context,
    key: &RouteKey,
    query: &Query,
    ago: Option<fanout_config::Duration>,
    output: Output,
) -> anyhow::Result<String> {
    let records = read(js, key, query).await?;
    attempts_report(key, query, ago, records, output)
}

fn attempts_report(
    key: &RouteKey,
    query: &Query,
    ago: Option<fanout_config::Duration>,
    mut records: Vec<Record<'static>>,
    output: Output,
) -> anyhow::Result<String> {
    let event = query.event.as_deref().unwrap_or_default();
    records.sort_by(|a, b| (&a.target, a.at_ms, a.attempt).cmp(&(&b.target, b.at_ms, b.attempt)));
    if records.is_empty() && matches!(output, Output::Table | Output::Wide) {
        anyhow::bail!(
            "no attempts of event {event:?} in the delivery history of route {key}{}",
            ago.map(|s| format!(" in the last {s}")).unwrap_or_default()
        );
    }
    attempts_text(key, event, &records, output)
}

/// What `fanout attempts` prints.
fn attempts_text(
    key: &RouteKey,
    event: &str,
    records: &[Record<'static>],
    output: Output,
) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Document<'a> {
        route: String,
        event: &'a str,
        attempts: &'a [Record<'static>],
    }
    let document = || Document {
        route: key.to_string(),
        event,
        attempts: records,
    };
    let wide = output == Output::Wide;
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&document())? + "\n",
        Output::Yaml => serde_yaml_ng::to_string(&document())?,
        Output::Table | Output::Wide => {
            let mut header = vec![
                "TARGET", "ATTEMPT", "TIME", "OUTCOME", "STATUS", "LATENCY", "ERROR",
            ];
            if wide {
                header.extend(["SEQ", "TRACE-ID"]);
            }
            let rows = records.iter().map(|r| {
                let mut row = vec![
                    r.target.to_string(),
                    if r.attempt == 0 {
                        "-".into()
                    } else {
                        r.attempt.to_string()
                    },
                    time(r.at_ms),
                    outcome(r),
                    r.status.map_or("-".into(), |s| s.to_string()),
                    r.latency_ms.map_or("-".into(), latency),
                    error(r.error.as_deref(), wide),
                ];
                if wide {
                    row.push(r.seq.to_string());
                    row.push(r.trace_id.as_deref().unwrap_or("-").to_string());
                }
                row
            });
            table(&header, rows)
        }
    })
}

pub async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let key = args.route.key(args.name.as_deref())?;
    let filter = EventsFilter {
        target: args.target,
        failed: args.failed,
        since: args.since,
        limit: args.limit,
    };
    let records = args.route.read(key.clone(), &filter.query()).await?;
    print!(
        "{}",
        events_report(&key, &filter, &records, args.route.output)?
    );
    Ok(())
}

/// Which of a route's recent events `events` lists.
pub struct EventsFilter {
    pub target: Option<String>,
    pub failed: bool,
    pub since: fanout_config::Duration,
    pub limit: usize,
}

impl EventsFilter {
    fn query(&self) -> Query {
        Query {
            event: None,
            target: self.target.clone(),
            since: since(Some(self.since)),
        }
    }
}

/// `fanout events` and `kubectl fanout events`: where a route's recent events stand
/// at each target, read from `js`.
pub async fn events_from(
    js: &async_nats::jetstream::Context,
    key: &RouteKey,
    filter: &EventsFilter,
    output: Output,
) -> anyhow::Result<String> {
    let records = read(js, key, &filter.query()).await?;
    events_report(key, filter, &records, output)
}

fn events_report(
    key: &RouteKey,
    filter: &EventsFilter,
    records: &[Record<'static>],
    output: Output,
) -> anyhow::Result<String> {
    let mut states = summarize(records);
    if filter.failed {
        states.retain(|s| s.state.is_failure());
    }
    states.sort_by_key(|s| std::cmp::Reverse(s.last_at_ms));
    states.truncate(filter.limit);
    if states.is_empty() && matches!(output, Output::Table | Output::Wide) {
        let which = if filter.failed {
            "failed events"
        } else {
            "events"
        };
        return Ok(format!(
            "no {which} of route {key} in the last {}\n",
            filter.since
        ));
    }
    events_text(key, &states, output)
}

/// Where one event stands at one target, from its records.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventState {
    pub event: String,
    pub target: String,
    /// What its latest record says.
    pub state: Outcome,
    /// Attempts made (requests sent).
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// For a dead letter or a discard: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub first_at_ms: u64,
    pub last_at_ms: u64,
    /// Its sequence in the route's stream (the latest, after a redrive).
    pub seq: u64,
}

/// One state per event and target; records come in the order they were stored, and
/// the latest (by time, then by that order) decides.
pub fn summarize(records: &[Record<'static>]) -> Vec<EventState> {
    let mut states: BTreeMap<(&str, &str), EventState> = BTreeMap::new();
    for r in records {
        let state = states
            .entry((&r.event, &r.target))
            .or_insert_with(|| EventState {
                event: r.event.to_string(),
                target: r.target.to_string(),
                state: r.outcome,
                attempts: 0,
                last_status: None,
                last_error: None,
                reason: None,
                first_at_ms: r.at_ms,
                last_at_ms: r.at_ms,
                seq: r.seq,
            });
        let sent = matches!(
            r.outcome,
            Outcome::Delivered | Outcome::Retrying | Outcome::Failed
        );
        if sent {
            state.attempts += 1;
        }
        state.first_at_ms = state.first_at_ms.min(r.at_ms);
        if r.at_ms >= state.last_at_ms {
            state.last_at_ms = r.at_ms;
            state.state = r.outcome;
            state.seq = r.seq;
            if r.status.is_some() {
                state.last_status = r.status;
            }
            if let Some(error) = &r.error {
                state.last_error = Some(error.to_string());
            }
            state.reason = r.reason.as_deref().map(str::to_string);
        }
    }
    states.into_values().collect()
}

/// What `fanout events` prints.
fn events_text(key: &RouteKey, states: &[EventState], output: Output) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Document<'a> {
        route: String,
        events: &'a [EventState],
    }
    let document = || Document {
        route: key.to_string(),
        events: states,
    };
    let wide = output == Output::Wide;
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&document())? + "\n",
        Output::Yaml => serde_yaml_ng::to_string(&document())?,
        Output::Table | Output::Wide => {
            let mut header = vec![
                "EVENT", "TARGET", "STATE", "ATTEMPTS", "STATUS", "LAST", "ERROR",
            ];
            if wide {
                header.extend(["FIRST", "SEQ"]);
            }
            let rows = states.iter().map(|s| {
                let state = match &s.reason {
                    Some(reason) => format!("{} ({reason})", s.state.as_str()),
                    None => s.state.as_str().to_string(),
                };
                let mut row = vec![
                    s.event.clone(),
                    s.target.clone(),
                    state,
                    s.attempts.to_string(),
                    s.last_status.map_or("-".into(), |c| c.to_string()),
                    time(s.last_at_ms),
                    error(s.last_error.as_deref(), wide),
                ];
                if wide {
                    row.push(time(s.first_at_ms));
                    row.push(s.seq.to_string());
                }
                row
            });
            table(&header, rows)
        }
    })
}

fn outcome(r: &Record<'_>) -> String {
    match (r.outcome, &r.reason, r.retry_in_ms) {
        (Outcome::Retrying, _, Some(ms)) => format!(
            "retrying in {}",
            fanout_config::Duration::from(Duration::from_millis(ms))
        ),
        (_, Some(reason), _) => format!("{} ({reason})", r.outcome.as_str()),
        _ => r.outcome.as_str().to_string(),
    }
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn latency(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

/// An error in one cell: whole in the wide output, shortened in the table.
fn error(text: Option<&str>, whole: bool) -> String {
    let Some(text) = text else {
        return "-".into();
    };
    let text = text.replace(['\n', '\r'], " ");
    if whole || text.chars().count() <= 60 {
        text
    } else {
        text.chars().take(57).collect::<String>() + "..."
    }
}

fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut all: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    all.extend(rows);
    crate::table::columns(&all)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn record(
        event: &str,
        target: &str,
        attempt: u32,
        at_ms: u64,
        outcome: Outcome,
    ) -> Record<'static> {
        Record {
            event: Cow::Owned(event.into()),
            target: Cow::Owned(target.into()),
            attempt,
            at_ms,
            outcome,
            status: match outcome {
                Outcome::Delivered => Some(200),
                Outcome::Retrying | Outcome::Failed => Some(503),
                _ => None,
            },
            error: (outcome == Outcome::Retrying).then_some(Cow::Borrowed("HTTP 503")),
            latency_ms: Some(1.25),
            retry_in_ms: (outcome == Outcome::Retrying).then_some(1000),
            reason: None,
            seq: 7,
            redrive: false,
            trace_id: None,
        }
    }

    #[test]
    fn the_latest_record_decides_and_requests_are_counted() {
        let records = [
            record("e1", "crm", 1, 10, Outcome::Retrying),
            record("e1", "mail", 0, 11, Outcome::Filtered),
            record("e1", "crm", 2, 20, Outcome::Retrying),
            record("e1", "crm", 3, 30, Outcome::Delivered),
            record("e2", "crm", 1, 40, Outcome::Retrying),
        ];
        let states = summarize(&records);
        let of = |e: &str, t: &str| {
            states
                .iter()
                .find(|s| s.event == e && s.target == t)
                .unwrap()
        };
        assert_eq!(of("e1", "crm").state, Outcome::Delivered);
        assert_eq!(of("e1", "crm").attempts, 3);
        assert_eq!(of("e1", "crm").last_error.as_deref(), Some("HTTP 503"));
        assert_eq!(
            (of("e1", "crm").first_at_ms, of("e1", "crm").last_at_ms),
            (10, 30)
        );
        assert_eq!(of("e1", "mail").state, Outcome::Filtered);
        assert_eq!(of("e1", "mail").attempts, 0);
        assert!(of("e2", "crm").state.is_failure());
    }

    #[test]
    fn the_attempts_table_reads_like_a_story() {
        let key = RouteKey::new("shop", "orders");
        let records = [
            record("e1", "crm", 1, 0, Outcome::Retrying),
            record("e1", "crm", 2, 1000, Outcome::Delivered),
        ];
        let text = attempts_text(&key, "e1", &records, Output::Table).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TARGET  ATTEMPT  TIME"), "{text}");
        assert!(
            lines[1].contains("1970-01-01T00:00:00.000Z  retrying in 1s  503"),
            "{text}"
        );
        assert!(lines[2].contains("delivered"), "{text}");
        assert!(lines[1].contains("1.2ms"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&attempts_text(&key, "e1", &records, Output::Json).unwrap())
                .unwrap();
        assert_eq!(json["route"], "shop/orders");
        assert_eq!(json["attempts"][0]["outcome"], "retrying");
        assert_eq!(json["attempts"][1]["status"], 200);
    }
}
