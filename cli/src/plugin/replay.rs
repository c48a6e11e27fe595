//! `kubectl fanout replay <route> --target T (--since 2h | --from-time T | --from-seq N)
//! [--until ...] [--dry-run] [--id ID]`: the events of a window sent again to one
//! target only ([`fanout_provision::replay`], as the operator runs a FanOutReplay).
//!
//! The replay records its progress under its id; running the same command with that
//! `--id` after an interruption resumes it (and one that is complete sends nothing).

use std::time::SystemTime;

use anyhow::Context as _;
use async_nats::jetstream;
use fanout_api::{ApiTarget, FanOutRoute};
use fanout_operator::replay_scope::{self, ScopeError};
use fanout_provision::replay::{self, From, Planned, Record, Records, Scope, Until, Window};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cluster::explain;
use super::output;
use super::{Session, progress};

#[derive(clap::Args)]
pub struct Args {
    /// The FanOutRoute whose events are sent again.
    route: String,
    /// The route's target that receives them; no other target does.
    #[arg(long)]
    target: String,
    /// Events stored within this long before now, e.g. 2h or 1h30m.
    #[arg(long, conflicts_with_all = ["from_time", "from_seq"])]
    since: Option<fanout_config::Duration>,
    /// Events stored at or after this time (RFC 3339, e.g. 2026-11-27T02:00:00Z).
    #[arg(long, value_parser = time, conflicts_with = "from_seq")]
    from_time: Option<SystemTime>,
    /// Events from this stream sequence on (the SEQ that --dry-run lists).
    #[arg(long)]
    from_seq: Option<u64>,
    /// Events stored at or before this time: RFC 3339, or a duration meaning that long
    /// ago (30m). Default: up to the stream's last event when the replay starts.
    #[arg(long, value_parser = until, conflicts_with = "until_seq")]
    until: Option<SystemTime>,
    /// Events up to this stream sequence, included.
    #[arg(long)]
    until_seq: Option<u64>,
    /// List the events that would be sent, and send nothing.
    #[arg(long)]
    dry_run: bool,
    /// The replay's id. A replay with this id that was interrupted is resumed (its
    /// window is the one it started with; the window flags may then be left out); one
    /// that is complete sends nothing again. Default: a new id, printed at the start.
    #[arg(long)]
    id: Option<String>,
}

fn time(text: &str) -> Result<SystemTime, String> {
    text.parse::<Timestamp>()
        .map(SystemTime::from)
        .map_err(|e| format!("not an RFC 3339 time such as 2026-11-27T02:00:00Z: {e}"))
}

fn until(text: &str) -> Result<SystemTime, String> {
    if let Ok(t) = time(text) {
        return Ok(t);
    }
    text.parse::<fanout_config::Duration>()
        .map(|ago| replay_scope::since(ago.as_std()))
        .map_err(|_| {
            format!(
                "{text:?} is neither an RFC 3339 time (2026-11-27T02:00:00Z) nor a duration meaning that long ago (30m)"
            )
        })
}

impl Args {
    /// The window the flags give, if they give one.
    fn window(&self) -> Option<Window> {
        let from = match (self.since, self.from_time, self.from_seq) {
            (Some(ago), _, _) => From::Time(replay_scope::since(ago.as_std())),
            (None, Some(t), _) => From::Time(t),
            (None, None, Some(n)) => From::Sequence(n),
            (None, None, None) => return None,
        };
        let until = match (self.until, self.until_seq) {
            (Some(t), _) => Until::Time(t),
            (None, Some(n)) => Until::Sequence(n),
            (None, None) => Until::Latest,
        };
        Some(Window { from, until })
    }
}

pub async fn run(session: &Session, args: Args) -> anyhow::Result<()> {
    if let Some(id) = &args.id {
        replay::check_id(id).context("--id")?;
    }
    let window = args.window();
    if window.is_none() && (args.dry_run || args.id.is_none()) {
        anyhow::bail!("give the window: one of --since, --from-time or --from-seq");
    }
    let scope = scope(session, &args).await?;
    let js = jetstream::new(session.nats().await?);
    if args.dry_run {
        let window = window.expect("checked above");
        return dry_run(session, &js, &scope, &window).await;
    }

    let id = args.id.clone().unwrap_or_else(|| new_id(&scope));
    let before = Records::open(&js)
        .await?
        .load(&id)
        .await?
        .map(|(record, _)| record);
    let command = resume_command(&id);
    match &before {
        Some(r) if r.complete => {}
        Some(r) => eprintln!(
            "resuming replay {id} after sequence {} ({} of {} events sent; its window is sequences {}..{}, fixed when it started)",
            r.position, r.sent, r.total, r.first_sequence, r.last_sequence
        ),
        None => eprintln!(
            "replay {id}: events of route {} to target {} only, {}. If it is interrupted, resume it with:\n  {command}",
            scope.route,
            scope.target,
            pace(&scope)
        ),
    }

    let (progress, seen) = watch::channel(Record::default());
    let stop = CancellationToken::new();
    // Ctrl-C or SIGTERM: the replay records where it is and ends.
    let signals = fanout_process::signal::shutdown().context("installing signal handlers")?;
    tokio::spawn({
        let stop = stop.clone();
        async move {
            signals.await;
            stop.cancel();
        }
    });
    let done = CancellationToken::new();
    let replayed = async {
        let result = replay::run(&js, &scope, window.as_ref(), &id, &progress, &stop).await;
        done.cancel();
        result
    };
    let (result, ()) = tokio::join!(replayed, progress::follow(seen, done.clone()));
    let record = result.with_context(|| {
        format!("replay {id} stopped; once the cause is fixed, resume it with:\n  {command}")
    })?;

    if !record.complete {
        anyhow::bail!(
            "replay {id} interrupted at sequence {}: {} of {} events sent. Resume it with:\n  {command}",
            record.position,
            record.sent,
            record.total
        );
    }
    if output::structured(session.output, &record)? {
        return Ok(());
    }
    if before.as_ref().is_some_and(|r| r.complete) {
        return output::print(&format!(
            "replay {id} is complete already ({} events of sequences {}..{} sent to target {}); nothing sent\n",
            record.sent, record.first_sequence, record.last_sequence, record.target
        ));
    }
    let mut text = format!(
        "replayed {} events of route {} (sequences {}..{}) to target {}",
        record.sent, record.route, record.first_sequence, record.last_sequence, record.target
    );
    if record.duplicates > 0 {
        text.push_str(&format!(
            "; {} of them had been sent before the interruption and were stored once",
            record.duplicates
        ));
    }
    if record.missing() > 0 {
        text.push_str(&format!(
            "; {} were removed by the stream's retention before they could be sent",
            record.missing()
        ));
    }
    text.push('\n');
    output::print(&text)
}

/// The scope of the replay: the route and its ApiTargets read from the cluster.
async fn scope(session: &Session, args: &Args) -> anyhow::Result<Scope> {
    let kube = &session.kube;
    let key = format!("{}/{}", kube.namespace, args.route);
    let route = kube
        .api::<FanOutRoute>()
        .get(&args.route)
        .await
        .map_err(|e| explain(e, &format!("FanOutRoute {key}")))?;
    let mut targets: Vec<ApiTarget> = Vec::new();
    for t in &route.spec.targets {
        let name = &t.api_target_ref.name;
        if let Some(found) = kube
            .api::<ApiTarget>()
            .get_opt(name)
            .await
            .map_err(|e| explain(e, &format!("ApiTarget {}/{name}", kube.namespace)))?
        {
            targets.push(found);
        }
    }
    replay_scope::scope(
        &route,
        |name| {
            targets
                .iter()
                .find(|t| t.metadata.name.as_deref() == Some(name))
        },
        &args.target,
    )
    .map_err(|e| match e {
        ScopeError::TargetNotFound(_) => anyhow::Error::new(e).context("--target"),
        e => anyhow::Error::new(e),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Plan {
    route: String,
    target: String,
    total: u64,
    first_sequence: u64,
    last_sequence: u64,
    events: Vec<PlannedEvent>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlannedEvent {
    sequence: u64,
    stored: String,
    event_id: Option<String>,
    subject: String,
}

async fn dry_run(
    session: &Session,
    js: &jetstream::Context,
    scope: &Scope,
    window: &Window,
) -> anyhow::Result<()> {
    let mut events = Vec::new();
    let resolved = replay::plan(js, scope, window, |p: &Planned| {
        events.push(PlannedEvent {
            sequence: p.sequence,
            stored: humantime::format_rfc3339_millis(p.stored).to_string(),
            event_id: p.event_id.clone(),
            subject: p.subject.clone(),
        })
    })
    .await?;
    let plan = Plan {
        route: scope.route.to_string(),
        target: scope.target.clone(),
        total: resolved.total,
        first_sequence: resolved.first_sequence,
        last_sequence: resolved.last_sequence,
        events,
    };
    if output::structured(session.output, &plan)? {
        return Ok(());
    }
    let mut rows = vec![
        ["SEQ", "STORED", "EVENT ID", "SUBJECT"]
            .map(String::from)
            .to_vec(),
    ];
    for e in &plan.events {
        rows.push(vec![
            e.sequence.to_string(),
            e.stored.clone(),
            e.event_id.clone().unwrap_or_else(|| "-".into()),
            e.subject.clone(),
        ]);
    }
    let mut text = crate::table::columns(&rows);
    text.push_str(&format!(
        "\nwould send {} events of route {} (sequences {}..{}) to target {} only, {}; nothing was sent (--dry-run)\n",
        plan.total,
        plan.route,
        plan.first_sequence,
        plan.last_sequence,
        plan.target,
        pace(scope)
    ));
    output::print(&text)
}

/// How fast the replay goes, for people.
fn pace(scope: &Scope) -> String {
    match &scope.rate_limit {
        Some(limit) => format!(
            "at most {}/s (the target's rate limit)",
            limit.requests_per_second
        ),
        None => "as fast as JetStream takes them (the target has no rate limit)".into(),
    }
}

/// A new replay id: the route, the target and the time, e.g.
/// `orders-crm-20261127T020000Z`.
fn new_id(scope: &Scope) -> String {
    let now: String = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("{}-{}-{now}", scope.route.name, scope.target)
}

/// This command again, with `--id` (once).
fn resume_command(id: &str) -> String {
    let mut words = vec!["kubectl".to_string(), "fanout".into()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--id" {
            args.next();
            continue;
        }
        if arg.starts_with("--id=") {
            continue;
        }
        words.push(super::shell_quote(&arg));
    }
    words.extend(["--id".into(), id.to_string()]);
    words.join(" ")
}
