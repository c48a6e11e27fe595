//! Which provisioning failures are JetStream not being ready yet, so that the same
//! request may succeed in a moment: a cluster without a meta leader, or whose servers
//! are not yet current enough to place a replicated stream on, and requests that got
//! no answer in time. Anything else (a refused configuration, a name taken, storage
//! exhausted) says the request itself is wrong, and waiting does not help.

use std::error::Error;

use async_nats::jetstream::context::{
    CreateKeyValueError, CreateKeyValueErrorKind, CreateStreamError, CreateStreamErrorKind,
    GetStreamError, GetStreamErrorKind, RequestError, RequestErrorKind,
};
use async_nats::jetstream::stream::{
    ConsumerCreateStrictError, ConsumerCreateStrictErrorKind, ConsumerError, ConsumerErrorKind,
    ConsumerUpdateError, ConsumerUpdateErrorKind,
};
use async_nats::jetstream::{self, ErrorCode};

/// JetStream's codes for "not now": temporarily unavailable, no meta leader (10008);
/// no current peers to place the replicas on (10005); a listing with answers missing
/// (10004); the request reached a server not yet assigned its part (10007) or a
/// cluster that cannot handle it at the moment (10009).
const NOT_READY: [ErrorCode; 5] = [
    ErrorCode::CLUSTER_NOT_AVAILABLE,
    ErrorCode::CLUSTER_NO_PEERS,
    ErrorCode::CLUSTER_INCOMPLETE,
    ErrorCode::CLUSTER_NOT_ASSIGNED,
    ErrorCode::CLUSTER_NOT_LEADER,
];

/// Whether `error`, or any error it was caused by, is JetStream not being ready.
pub fn is_transient(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if is_not_ready(error) {
            return true;
        }
        next = error.source();
    }
    false
}

/// One error of the chain, by its type: async-nats keeps JetStream's answer in the
/// error's kind, not in its source.
fn is_not_ready(error: &(dyn Error + 'static)) -> bool {
    if let Some(e) = error.downcast_ref::<jetstream::Error>() {
        return not_ready(e);
    }
    if let Some(e) = error.downcast_ref::<RequestError>() {
        return matches!(
            e.kind(),
            RequestErrorKind::TimedOut | RequestErrorKind::NoResponders
        );
    }
    if let Some(e) = error.downcast_ref::<GetStreamError>() {
        return matches!(e.kind(), GetStreamErrorKind::JetStream(j) if not_ready(&j));
    }
    if let Some(e) = error.downcast_ref::<CreateStreamError>() {
        return match e.kind() {
            CreateStreamErrorKind::JetStream(j) => not_ready(&j),
            CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => true,
            _ => false,
        };
    }
    if let Some(e) = error.downcast_ref::<ConsumerUpdateError>() {
        return match e.kind() {
            ConsumerUpdateErrorKind::JetStream(j) => not_ready(&j),
            ConsumerUpdateErrorKind::TimedOut => true,
            _ => false,
        };
    }
    if let Some(e) = error.downcast_ref::<ConsumerCreateStrictError>() {
        return match e.kind() {
            ConsumerCreateStrictErrorKind::JetStream(j) => not_ready(&j),
            ConsumerCreateStrictErrorKind::TimedOut => true,
            _ => false,
        };
    }
    if let Some(e) = error.downcast_ref::<ConsumerError>() {
        return match e.kind() {
            ConsumerErrorKind::JetStream(j) => not_ready(&j),
            ConsumerErrorKind::TimedOut => true,
            _ => false,
        };
    }
    if let Some(e) = error.downcast_ref::<CreateKeyValueError>() {
        // Its JetStream answer, if any, is its source: the chain gets to it.
        return e.kind() == CreateKeyValueErrorKind::TimedOut;
    }
    false
}

fn not_ready(e: &jetstream::Error) -> bool {
    NOT_READY.contains(&e.error_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u64) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 503,
            "err_code": code,
            "description": "from the server",
        }))
        .unwrap()
    }

    #[test]
    fn a_cluster_not_ready_or_no_answer_is_transient_and_a_refusal_is_not() {
        let no_peers = CreateStreamError::new(CreateStreamErrorKind::JetStream(api_error(10005)));
        let no_leader =
            ConsumerUpdateError::new(ConsumerUpdateErrorKind::JetStream(api_error(10008)));
        let timed_out = ConsumerCreateStrictError::new(ConsumerCreateStrictErrorKind::TimedOut);
        let no_responders = GetStreamError::with_source(
            GetStreamErrorKind::Request,
            RequestError::new(RequestErrorKind::NoResponders),
        );
        let transient: [&(dyn Error + 'static); 4] =
            [&no_peers, &no_leader, &timed_out, &no_responders];
        for error in transient {
            assert!(is_transient(error), "{error}");
        }
        // Subjects overlapping another stream's (10065), storage exhausted (10047), a
        // replicated stream on a server that is not in a cluster (10006).
        let overlap = CreateStreamError::new(CreateStreamErrorKind::JetStream(api_error(10065)));
        let storage = ConsumerError::new(ConsumerErrorKind::JetStream(api_error(10047)));
        let not_clustered =
            CreateStreamError::new(CreateStreamErrorKind::JetStream(api_error(10006)));
        let invalid = CreateStreamError::new(CreateStreamErrorKind::InvalidStreamName);
        let refused: [&(dyn Error + 'static); 4] = [&overlap, &storage, &not_clustered, &invalid];
        for error in refused {
            assert!(!is_transient(error), "{error}");
        }
    }
}
