//! The `FanOutReplay` controller: starts a replay for each FanOutReplay that is not
//! complete (the same [`fanout_provision::replay::run`] as `kubectl fanout replay`),
//! keeps its status current (sent/total, the last sequence done, `Complete`), and
//! stops it when the object is deleted. It runs on the leader only, with the other
//! controllers; a new leader resumes a replay from its progress record in NATS.
//!
//! A replay that cannot start (its route or target missing) says so in `Complete`
//! with an Event and is looked at again every status interval; one that fails while
//! running (NATS away, the stream full) is started again with backoff.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fanout_api::replay::FanOutReplayStatus;
use fanout_api::{FanOutReplay, FanOutRoute};
use fanout_config::error_chain;
use fanout_provision::replay::{self, Record, Scope, Window};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::conditions::{Draft, stamp};
use crate::context::Context;
use crate::error::Error;
use crate::replay_scope::{self, ScopeError};

/// The controller's name in metrics.
pub const CONTROLLER: &str = "fanoutreplay";
/// True once every event of the window is sent.
pub const COMPLETE: &str = "Complete";
/// How often a running replay's status is brought up to date.
const STATUS_EVERY: Duration = Duration::from_secs(1);

pub async fn reconcile(replay: Arc<FanOutReplay>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = start(&replay, &ctx).await;
    if result.is_ok() {
        ctx.succeeded(&ObjectRef::from_obj(replay.as_ref()));
    }
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciled(CONTROLLER, outcome, started.elapsed());
    result
}

/// Called by the controller when `reconcile` failed (see [`crate::retry`]).
pub fn error_policy(replay: Arc<FanOutReplay>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::retry::on_error(CONTROLLER, replay, error, ctx)
}

async fn start(replay: &Arc<FanOutReplay>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let uid = replay.metadata.uid.clone().unwrap_or_default();
    let previous = replay.status.clone().unwrap_or_default();
    let complete = previous
        .conditions
        .iter()
        .any(|c| c.type_ == COMPLETE && c.status == "True");
    if complete || replay.metadata.deletion_timestamp.is_some() || ctx.replays.is_running(&uid) {
        return Ok(Action::await_change());
    }
    if let Some(wait) = ctx.replays.backoff_left(&uid) {
        return Ok(Action::requeue(wait));
    }
    for ready in [&ctx.routes_ready, &ctx.targets_ready] {
        ready.wait().await.map_err(|_| Error::CacheGone)?;
    }

    let namespace = replay.namespace().unwrap_or_default();
    let route = ctx
        .routes
        .get(&ObjectRef::<FanOutRoute>::new(&replay.spec.route).within(&namespace));
    let scope = match route {
        None => Err(ScopeError::RouteNotFound {
            namespace: namespace.clone(),
            route: replay.spec.route.clone(),
        }),
        Some(route) => {
            let targets = ctx.targets.state();
            replay_scope::scope(
                &route,
                |name| {
                    targets
                        .iter()
                        .find(|t| {
                            t.metadata.namespace.as_deref() == Some(namespace.as_str())
                                && t.metadata.name.as_deref() == Some(name)
                        })
                        .map(Arc::as_ref)
                },
                &replay.spec.target,
            )
        }
    };
    let scope = match scope {
        Ok(scope) => scope,
        Err(problem) => {
            let draft = Draft::new(COMPLETE, false, problem.reason(), error_chain(&problem));
            announce(ctx, replay, &previous, &draft, EventType::Warning).await;
            let next = status(replay, &previous, None, &draft, None);
            if replay.status.as_ref() != Some(&next) {
                write_status(ctx, replay, &next).await?;
            }
            return Ok(Action::requeue(
                ctx.status_interval.max(Duration::from_secs(1)),
            ));
        }
    };
    let created = replay
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| SystemTime::from(t.0))
        .unwrap_or_else(SystemTime::now);
    let window = replay_scope::window(&replay.spec.window, created);
    let Some(stop) = ctx.replays.begin(&uid) else {
        return Ok(Action::await_change());
    };
    tokio::spawn(drive(ctx.clone(), replay.clone(), scope, window, stop));
    Ok(Action::await_change())
}

/// The id of a FanOutReplay's progress record: its namespace, name and uid, so that
/// one deleted and created again under the same name starts afresh.
pub fn replay_id(replay: &FanOutReplay) -> String {
    format!(
        "{}.{}.{}",
        replay.namespace().unwrap_or_default(),
        replay.name_any(),
        replay.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// Runs one replay to its end, writing its status as it goes.
async fn drive(
    ctx: Arc<Context>,
    replay: Arc<FanOutReplay>,
    scope: Scope,
    window: Window,
    stop: CancellationToken,
) {
    let oref = ObjectRef::from_obj(replay.as_ref());
    let uid = replay.metadata.uid.clone().unwrap_or_default();
    let id = replay_id(&replay);
    let (progress, mut seen) = watch::channel(Record::default());
    let finished = CancellationToken::new();
    let started = Time(k8s_openapi::jiff::Timestamp::now());
    let run = async {
        let result = replay::run(&ctx.js, &scope, Some(&window), &id, &progress, &stop).await;
        finished.cancel();
        result
    };
    let report = async {
        let mut previous = replay.status.clone().unwrap_or_default();
        let start_time = previous.start_time.clone().unwrap_or(started.clone());
        let mut announced = false;
        let mut tick = tokio::time::interval(STATUS_EVERY);
        loop {
            tokio::select! {
                _ = finished.cancelled() => return previous,
                _ = tick.tick() => {}
            }
            if ctx.replays.deleted(&oref, &uid) {
                tracing::info!(replay = %oref, "FanOutReplay deleted; stopping its replay");
                stop.cancel();
                continue;
            }
            if !seen.has_changed().unwrap_or(false) {
                continue;
            }
            let record = seen.borrow_and_update().clone();
            if record.id.is_empty() {
                continue;
            }
            let draft = running(&record, &scope);
            if !announced {
                announced = true;
                let event = (
                    EventType::Normal,
                    "ReplayStarted",
                    started_note(&record, &scope),
                );
                publish(&ctx, &replay, event).await;
            }
            let mut next = status(&replay, &previous, Some(&record), &draft, None);
            next.start_time = Some(start_time.clone());
            match write_status(&ctx, &replay, &next).await {
                Ok(()) => previous = next,
                Err(e) => {
                    tracing::debug!(replay = %oref, error = %error_chain(&e), "status not written")
                }
            }
        }
    };
    let (result, previous) = tokio::join!(run, report);

    if ctx.replays.deleted(&oref, &uid) {
        ctx.replays.end(&uid, false);
        tracing::info!(replay = %oref, "replay stopped: its FanOutReplay was deleted");
        return;
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let (draft, event, failed) = match &result {
        Ok(record) if record.complete => {
            let note = done_note(record, &scope);
            tracing::info!(replay = %oref, %note, "replay complete");
            (
                Draft::new(COMPLETE, true, "Complete", note.clone()),
                Some((EventType::Normal, "ReplayComplete", note)),
                false,
            )
        }
        // Stopped because this replica stops leading: the next leader resumes it.
        Ok(_) => {
            ctx.replays.end(&uid, false);
            tracing::info!(replay = %oref, "replay stopped with the controllers; it resumes on the next leader");
            return;
        }
        Err(e) => {
            let message = error_chain(e);
            tracing::warn!(replay = %oref, error = %message, "replay failed; it resumes from its last recorded position after a backoff");
            (
                Draft::new(COMPLETE, false, "ReplayFailed", message.clone()),
                Some((EventType::Warning, "ReplayFailed", message)),
                true,
            )
        }
    };
    ctx.replays.end(&uid, failed);
    let record = progress.borrow().clone();
    let record = (!record.id.is_empty()).then_some(record);
    let completed = draft.is_true().then_some(now);
    let mut next = status(&replay, &previous, record.as_ref(), &draft, completed);
    next.start_time = previous.start_time.clone().or(Some(started));
    if let Some(event) = event {
        publish(&ctx, &replay, event).await;
    }
    if let Err(e) = write_status(&ctx, &replay, &next).await {
        tracing::warn!(replay = %oref, error = %error_chain(&e), "writing the replay's final status failed");
    }
}

fn running(record: &Record, scope: &Scope) -> Draft {
    Draft::new(
        COMPLETE,
        false,
        "Running",
        format!(
            "sent {} of {} events to target {} (sequences {}..{}, at sequence {})",
            record.sent,
            record.total,
            scope.target,
            record.first_sequence,
            record.last_sequence,
            record.position
        ),
    )
}

fn started_note(record: &Record, scope: &Scope) -> String {
    if record.sent > 0 || record.position >= record.first_sequence {
        format!(
            "resuming the replay to target {} after sequence {}: {} of {} events sent",
            scope.target, record.position, record.sent, record.total
        )
    } else {
        format!(
            "replaying {} events of route {} (sequences {}..{}) to target {} only",
            record.total, scope.route, record.first_sequence, record.last_sequence, scope.target
        )
    }
}

fn done_note(record: &Record, scope: &Scope) -> String {
    let mut note = format!(
        "sent {} events of sequences {}..{} again to target {}",
        record.sent, record.first_sequence, record.last_sequence, scope.target
    );
    if record.missing() > 0 {
        note.push_str(&format!(
            "; {} were removed by the stream's retention before they could be sent",
            record.missing()
        ));
    }
    note
}

/// The status for `record` (or the last one known) and the `Complete` condition.
fn status(
    replay: &FanOutReplay,
    previous: &FanOutReplayStatus,
    record: Option<&Record>,
    complete: &Draft,
    completed: Option<Time>,
) -> FanOutReplayStatus {
    let generation = replay.metadata.generation.unwrap_or(0);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut status = previous.clone();
    status.observed_generation = Some(generation);
    status.conditions = stamp(
        &previous.conditions,
        std::slice::from_ref(complete),
        generation,
        &now,
    );
    if let Some(r) = record {
        status.replay_id = Some(r.id.clone());
        status.first_sequence = Some(r.first_sequence);
        status.last_sequence = Some(r.last_sequence);
        status.total = Some(r.total);
        status.sent = Some(r.sent);
        status.progress = Some(format!("{}/{}", r.sent, r.total));
        status.position = Some(r.position);
        status.missing = r.complete.then(|| r.missing());
    }
    if completed.is_some() {
        status.completion_time = completed;
    }
    status
}

async fn write_status(
    ctx: &Context,
    replay: &FanOutReplay,
    status: &FanOutReplayStatus,
) -> Result<(), Error> {
    let namespace = replay.namespace().unwrap_or_default();
    let name = replay.name_any();
    ctx.apply_status::<FanOutReplay>(&namespace, &name, status)
        .await
}

/// An Event when the `Complete` condition's reason changes (not on every retry).
async fn announce(
    ctx: &Context,
    replay: &FanOutReplay,
    previous: &FanOutReplayStatus,
    draft: &Draft,
    type_: EventType,
) {
    let same = previous
        .conditions
        .iter()
        .any(|c| c.type_ == COMPLETE && c.reason == draft.reason);
    if !same {
        publish(ctx, replay, (type_, &draft.reason, draft.message.clone())).await;
    }
}

async fn publish(
    ctx: &Context,
    replay: &FanOutReplay,
    (type_, reason, note): (EventType, &str, String),
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Replay".into(),
        secondary: None,
    };
    ctx.publish(&event, &replay.object_ref(&()), false).await;
}
