//! Reading a request body up to the configured limit and within the body read
//! timeout.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::problem::{Problem, ProblemKind};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the request body did not arrive within {0:?}")]
    TooSlow(Duration),
    #[error("reading the request body failed")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<BodyError> for Problem {
    fn from(e: BodyError) -> Self {
        let kind = match e {
            BodyError::TooLarge { .. } => ProblemKind::PayloadTooLarge,
            BodyError::TooSlow(_) => ProblemKind::RequestTimeout,
            BodyError::Read(_) => ProblemKind::InvalidEvent,
        };
        Problem::new(kind, e.to_string())
    }
}

/// The whole body, refusing it early when `Content-Length` already exceeds `limit`,
/// and when it has not all arrived within `timeout` (a client trickling it would
/// otherwise hold the request, its connection and its memory for ever).
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    // A body that came with its headers is complete at the first poll: it costs no
    // timer (making one reads the clock and the runtime's handle, on every event).
    let mut collect = pin!(Limited::new(body, limit).collect());
    let collected = match poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await {
        Poll::Ready(collected) => collected,
        Poll::Pending => tokio::time::timeout(timeout, collect)
            .await
            .map_err(|_| BodyError::TooSlow(timeout))?,
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(BodyError::Read(e)),
    }
}
