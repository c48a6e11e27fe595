//! The route's JetStream streams: the one its events are stored in, the
//! dead-letter stream and the delivery-attempt history.

use fanout_config::jetstream::{ConsumerPlan, RouteStreams, Storage, StreamPlan};
use fanout_config::names::RouteKey;

use crate::route::{FanOutRouteSpec, RetentionSpec, SourceSpec, StorageKind};
use crate::settings::{HistoryLimits, StreamWindows};

/// The streams of the route `key`, with `consumers` on its stream. `route_subjects`
/// are what the stream takes besides redrives; `windows` the resolved (stream,
/// dead-letter stream) windows; `history` the resolved history limits, `None` when
/// the history is off.
pub(super) fn plan(
    key: &RouteKey,
    spec: &FanOutRouteSpec,
    source: &SourceSpec,
    route_subjects: Vec<String>,
    (stream_windows, dead_letter_windows): (StreamWindows, StreamWindows),
    history: Option<HistoryLimits>,
    consumers: Vec<ConsumerPlan>,
) -> RouteStreams {
    let dead_letter = spec.dead_letter.clone().unwrap_or_default();
    let storage = match source.storage.unwrap_or_default() {
        StorageKind::File => Storage::File,
        StorageKind::Memory => Storage::Memory,
    };
    let replicas = source.replicas.unwrap_or(1);
    let stream = stream_plan(
        key.stream(),
        route_subjects
            .into_iter()
            .chain([key.redrive_subjects()])
            .collect(),
        source.retention.as_ref(),
        stream_windows,
        (storage, replicas),
    );
    let dead_letter_stream = dead_letter.enabled.unwrap_or(true).then(|| {
        stream_plan(
            key.dead_letter_stream(),
            vec![key.dead_letter_subjects()],
            dead_letter.retention.as_ref(),
            dead_letter_windows,
            // Dead letters are the last copy of an event: always on disk.
            (Storage::File, replicas),
        )
    });
    let history = history.map(|limits| StreamPlan {
        name: key.attempts_stream(),
        subjects: vec![key.attempts_subjects()],
        max_age: limits.windows.max_age,
        max_bytes: Some(limits.max_bytes),
        max_messages: None,
        // The route's choice: a memory route's history need not outlive NATS either.
        storage,
        replicas,
        duplicate_window: limits.windows.duplicate_window,
        // A bounded log: when full, the oldest records make room.
        discard_old: true,
    });
    RouteStreams {
        stream,
        dead_letter: dead_letter_stream,
        consumers,
        history,
    }
}

fn stream_plan(
    name: String,
    subjects: Vec<String>,
    retention: Option<&RetentionSpec>,
    windows: StreamWindows,
    (storage, replicas): (Storage, u8),
) -> StreamPlan {
    StreamPlan {
        name,
        subjects,
        max_age: windows.max_age,
        max_bytes: retention.and_then(|r| r.max_bytes),
        max_messages: retention.and_then(|r| r.max_messages),
        storage,
        replicas,
        duplicate_window: windows.duplicate_window,
        discard_old: false,
    }
}
