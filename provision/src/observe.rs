//! Reads how a route is doing from JetStream: stream sizes, each target's consumer
//! (pending, in flight) and the health snapshots every dispatcher pod writes to the
//! `fanout_health` KV bucket. The operator turns the result into status; `fanout
//! standalone` prints it as a table. Read-only: nothing here changes JetStream.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{RawMessageError, RawMessageErrorKind};
use async_nats::jetstream::{self, consumer, kv};
use fanout_config::health::{Circuit, HealthSnapshot};
use fanout_config::names::{HEALTH_BUCKET, RouteKey};
use futures::TryStreamExt;

/// Size of one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamCounts {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
}

/// One target of a route, combined over every dispatcher pod that reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetObservation {
    pub name: String,
    /// The worst circuit state any pod reports (Open > HalfOpen > Closed).
    pub circuit: Circuit,
    /// Events in the stream this target's consumer has not fetched yet.
    pub pending: u64,
    /// Events fetched and not yet acknowledged (JetStream's view, all pods).
    pub in_flight: u64,
    /// When the oldest event not yet settled for this target (delivered,
    /// dead-lettered or filtered out) was stored; `None` when there is none.
    pub oldest_unsettled: Option<SystemTime>,
    /// Totals since each reporting pod started, summed over pods.
    pub delivered: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    /// RFC 3339; the latest success any pod saw.
    pub last_success_time: Option<String>,
    /// The last error of the pod that reported most recently with one.
    pub last_error: Option<String>,
    /// How many dispatcher pods have a live snapshot of this target.
    pub reporting_pods: usize,
    /// Requests let go to the target at once, summed over the pods delivering to it;
    /// `None` when none reported one.
    pub concurrency_limit: Option<u32>,
    /// Ordered targets: keys blocked, summed over pods (one delivers at a time).
    pub blocked_keys: u64,
    /// RFC 3339; since when the longest-blocked key is blocked.
    pub oldest_blocked_since: Option<String>,
    /// False when the target's consumer does not exist (not provisioned yet).
    pub consumer_found: bool,
}

/// Everything observed about one route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteObservation {
    pub stream: StreamCounts,
    pub dead_letter: Option<StreamCounts>,
    pub targets: Vec<TargetObservation>,
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("stream {stream}: reading its state failed")]
    Stream {
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("KV bucket {HEALTH_BUCKET}: reading health snapshots failed")]
    Health {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn stream_error<E: std::error::Error + Send + Sync + 'static>(
    name: &str,
) -> impl FnOnce(E) -> ObserveError {
    let stream = name.to_string();
    move |e| ObserveError::Stream {
        stream,
        source: boxed(e),
    }
}

fn boxed(
    e: impl std::error::Error + Send + Sync + 'static,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// Observes the route `key` with streams `stream` and `dead_letter` and the targets
/// (consumer names) `targets`, in that order. A missing stream is an error (the route
/// is not provisioned); a missing consumer or health bucket is reported as such.
pub async fn observe(
    js: &jetstream::Context,
    key: &RouteKey,
    stream: &str,
    dead_letter: Option<&str>,
    targets: &[String],
) -> Result<RouteObservation, ObserveError> {
    let mut main = js.get_stream(stream).await.map_err(stream_error(stream))?;
    let counts = stream_counts(&mut main)
        .await
        .map_err(stream_error(stream))?;
    let dead_letter = match dead_letter {
        Some(name) => {
            let mut s = js.get_stream(name).await.map_err(stream_error(name))?;
            Some(stream_counts(&mut s).await.map_err(stream_error(name))?)
        }
        None => None,
    };

    let snapshots = read_snapshots(js, key).await?;
    let mut observed = Vec::with_capacity(targets.len());
    for target in targets {
        let consumer = match main.consumer_info(key.consumer(target)).await {
            Ok(info) => Some(info),
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::ConsumerInfoErrorKind::NotFound
                ) || matches!(e.kind(), jetstream::context::ConsumerInfoErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) =>
            {
                None
            }
            Err(e) => return Err(stream_error(stream)(e)),
        };
        let mut t = combine(
            target,
            snapshots
                .get(target.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        );
        if let Some(info) = consumer {
            t.consumer_found = true;
            t.pending = info.num_pending;
            t.in_flight = u64::try_from(info.num_ack_pending).unwrap_or(0);
            t.oldest_unsettled = oldest_unsettled(&main, &info)
                .await
                .map_err(stream_error(stream))?;
        }
        observed.push(t);
    }
    Ok(RouteObservation {
        stream: counts,
        dead_letter,
        targets: observed,
    })
}

/// When the oldest event that `consumer` has not settled was stored. Everything up
/// to the consumer's ack floor is settled, so it is the first event after the floor
/// that the consumer takes.
pub async fn oldest_unsettled(
    stream: &jetstream::stream::Stream,
    consumer: &consumer::Info,
) -> Result<Option<SystemTime>, RawMessageError> {
    if consumer.num_pending == 0 && consumer.num_ack_pending == 0 {
        return Ok(None);
    }
    let first = first_for_consumer(
        stream,
        &consumer.config,
        consumer.ack_floor.stream_sequence + 1,
    )
    .await?;
    Ok(first.map(|m| SystemTime::from(m.time)))
}

/// The first event at or after stream sequence `from` that a consumer with `config`
/// takes (one of its filter subjects matches), if the stream still has one.
pub async fn first_for_consumer(
    stream: &jetstream::stream::Stream,
    config: &consumer::Config,
    from: u64,
) -> Result<Option<StreamMessage>, RawMessageError> {
    let filters: Vec<&str> = if !config.filter_subjects.is_empty() {
        config.filter_subjects.iter().map(String::as_str).collect()
    } else if !config.filter_subject.is_empty() {
        vec![config.filter_subject.as_str()]
    } else {
        vec![">"]
    };
    // One request per filter subject (a route has few), the earliest answer wins:
    // JetStream looks up "next by subject" one subject at a time.
    let mut first: Option<StreamMessage> = None;
    for filter in filters {
        let found = stream
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(filter)
            .send()
            .await;
        match found {
            Ok(m) if first.as_ref().is_none_or(|f| m.sequence < f.sequence) => first = Some(m),
            Ok(_) => {}
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(first)
}

async fn stream_counts(
    stream: &mut jetstream::stream::Stream,
) -> Result<StreamCounts, jetstream::context::RequestError> {
    let info = stream.info().await?;
    Ok(StreamCounts {
        name: info.config.name.clone(),
        messages: info.state.messages,
        bytes: info.state.bytes,
    })
}

/// The route's live snapshots, grouped by target. No bucket yet (no dispatcher has
/// started) reads as no snapshots.
async fn read_snapshots(
    js: &jetstream::Context,
    key: &RouteKey,
) -> Result<BTreeMap<String, Vec<HealthSnapshot>>, ObserveError> {
    let health = |e| ObserveError::Health { source: boxed(e) };
    let store: kv::Store = match js.get_key_value(HEALTH_BUCKET).await {
        Ok(store) => store,
        Err(e) if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {
            return Ok(BTreeMap::new());
        }
        Err(e) => return Err(health(e)),
    };
    snapshots_in(&store, key).await
}

/// The dispatcher pods running route `key` now: those whose health snapshots were
/// written within `fresh` (a stopped pod's last snapshot stays until its TTL, but
/// stops being rewritten).
pub async fn live_pods(
    store: &kv::Store,
    key: &RouteKey,
    fresh: std::time::Duration,
) -> Result<BTreeSet<String>, ObserveError> {
    let since = SystemTime::now() - fresh;
    Ok(snapshots_in(store, key)
        .await?
        .into_values()
        .flatten()
        .filter(|s| {
            humantime::parse_rfc3339(&s.reported_at).is_ok_and(|reported| reported >= since)
        })
        .map(|s| s.pod)
        .collect())
}

/// The route's snapshots in the bucket, grouped by target.
async fn snapshots_in(
    store: &kv::Store,
    key: &RouteKey,
) -> Result<BTreeMap<String, Vec<HealthSnapshot>>, ObserveError> {
    // Keys are `<ns>.<route>.<target>.<pod>`. Asking the bucket's stream which of
    // its subjects match this route costs one request however many routes share
    // the bucket; listing every key would grow with all of them.
    let filter = format!("$KV.{HEALTH_BUCKET}.{}.>", key.health_route_prefix());
    let subjects: Vec<(String, usize)> = store
        .stream
        .info_with_subjects(&filter)
        .await
        .map_err(|e| ObserveError::Health { source: boxed(e) })?
        .try_collect()
        .await
        .map_err(|e| ObserveError::Health { source: boxed(e) })?;
    let prefix = format!("$KV.{HEALTH_BUCKET}.");
    let keys = subjects
        .into_iter()
        .filter_map(|(subject, _)| subject.strip_prefix(&prefix).map(str::to_string));
    let mut grouped: BTreeMap<String, Vec<HealthSnapshot>> = BTreeMap::new();
    for k in keys {
        let Some(value) = store
            .get(&k)
            .await
            .map_err(|e| ObserveError::Health { source: boxed(e) })?
        else {
            continue; // expired between listing and reading
        };
        match serde_json::from_slice::<HealthSnapshot>(&value) {
            Ok(s) if s.namespace == key.namespace && s.route == key.name => {
                grouped.entry(s.target.clone()).or_default().push(s);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(key = %k, error = %fanout_config::error_chain(&error), "ignoring a health snapshot that does not parse")
            }
        }
    }
    Ok(grouped)
}

/// Combines the snapshots of one target from every pod: counters add up, the circuit
/// is the worst any pod sees (one pod with an open circuit means the target is
/// failing), the last success is the latest, and the last error comes from the most
/// recent report that has one.
pub fn combine(target: &str, snapshots: &[HealthSnapshot]) -> TargetObservation {
    let mut out = TargetObservation {
        name: target.to_string(),
        reporting_pods: snapshots.len(),
        ..TargetObservation::default()
    };
    let mut error_reported_at: Option<&str> = None;
    for s in snapshots {
        out.circuit = out.circuit.max(s.circuit);
        if let Some(limit) = s.concurrency_limit {
            out.concurrency_limit = Some(out.concurrency_limit.unwrap_or(0).saturating_add(limit));
        }
        out.blocked_keys += s.blocked_keys;
        if let Some(since) = &s.oldest_blocked_since
            && out.oldest_blocked_since.as_ref().is_none_or(|o| since < o)
        {
            out.oldest_blocked_since = Some(since.clone());
        }
        out.delivered += s.delivered;
        out.failed += s.failed;
        out.dead_lettered += s.dead_lettered;
        // Timestamps are RFC 3339 in UTC with a fixed precision, as the dispatcher
        // writes them, so they order as strings.
        if s.last_success_time > out.last_success_time {
            out.last_success_time = s.last_success_time.clone();
        }
        if s.last_error.is_some() && error_reported_at.is_none_or(|at| s.reported_at.as_str() > at)
        {
            out.last_error = s.last_error.clone();
            error_reported_at = Some(&s.reported_at);
        }
    }
    out
}

/// True when the target delivers: its circuit is closed and its consumer exists.
pub fn is_healthy(t: &TargetObservation) -> bool {
    t.consumer_found && t.circuit == Circuit::Closed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(pod: &str, circuit: Circuit, delivered: u64) -> HealthSnapshot {
        HealthSnapshot {
            namespace: "shop".into(),
            route: "orders".into(),
            target: "email".into(),
            pod: pod.into(),
            circuit,
            delivered,
            failed: 1,
            dead_lettered: 2,
            in_flight: 3,
            last_success_time: None,
            last_error: None,
            reported_at: "2026-11-27T10:00:00.000Z".into(),
            concurrency_limit: Some(8),
            blocked_keys: 0,
            oldest_blocked_since: None,
        }
    }

    #[test]
    fn counters_add_up_and_the_worst_circuit_wins() {
        let t = combine(
            "email",
            &[
                snapshot("a", Circuit::Closed, 10),
                snapshot("b", Circuit::Open, 5),
                snapshot("c", Circuit::HalfOpen, 1),
            ],
        );
        assert_eq!(t.circuit, Circuit::Open);
        assert_eq!((t.delivered, t.failed, t.dead_lettered), (16, 3, 6));
        assert_eq!(t.reporting_pods, 3);
        assert_eq!(t.concurrency_limit, Some(24), "each pod's limit adds up");
    }

    #[test]
    fn blocked_keys_add_up_and_the_oldest_block_is_kept() {
        let mut a = snapshot("a", Circuit::Closed, 1);
        a.blocked_keys = 2;
        a.oldest_blocked_since = Some("2026-11-27T10:00:05.000Z".into());
        let mut b = snapshot("b", Circuit::Closed, 1);
        b.blocked_keys = 1;
        b.oldest_blocked_since = Some("2026-11-27T09:59:00.000Z".into());
        // A standby for an ordered target reports no limit.
        b.concurrency_limit = None;
        let t = combine("email", &[a, b]);
        assert_eq!(t.blocked_keys, 3);
        assert_eq!(
            t.oldest_blocked_since.as_deref(),
            Some("2026-11-27T09:59:00.000Z")
        );
        assert_eq!(t.concurrency_limit, Some(8));
    }

    #[test]
    fn latest_success_and_most_recent_error_are_kept() {
        let mut a = snapshot("a", Circuit::Closed, 1);
        a.last_success_time = Some("2026-11-27T10:00:05.000Z".into());
        a.last_error = Some("HTTP 503".into());
        a.reported_at = "2026-11-27T10:00:10.000Z".into();
        let mut b = snapshot("b", Circuit::Closed, 1);
        b.last_success_time = Some("2026-11-27T10:00:07.000Z".into());
        b.last_error = Some("timeout".into());
        b.reported_at = "2026-11-27T10:00:09.000Z".into();
        let c = snapshot("c", Circuit::Closed, 1);
        let t = combine("email", &[a, b, c]);
        assert_eq!(
            t.last_success_time.as_deref(),
            Some("2026-11-27T10:00:07.000Z")
        );
        assert_eq!(t.last_error.as_deref(), Some("HTTP 503"));
    }

    #[test]
    fn no_snapshots_reads_as_closed_and_idle() {
        let t = combine("email", &[]);
        assert_eq!(t.circuit, Circuit::Closed);
        assert_eq!(t.reporting_pods, 0);
        assert_eq!(t.delivered, 0);
        assert!(!is_healthy(&t), "no consumer found yet");
    }
}
