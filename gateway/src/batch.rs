//! `POST /v1/namespaces/{ns}/routes/{route}/events:batch`: many events in one
//! request, as a JSON array or as NDJSON (one JSON document per line).
//!
//! Every item gets its own result. Items that cannot be events are reported by index
//! while the others are stored. Publishes are pipelined: all items are sent, then the
//! acknowledgements are collected.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::body;
use crate::cloudevents::{self, CloudEventError, Probe};
use crate::config::Route;
use crate::event::{self, ItemParts};
use crate::ingest::{authorized_route, respond_problem};
use crate::metrics::{Endpoint, Outcome};
use crate::problem::{Problem, ProblemBody, ProblemKind};
use crate::publish::{Pending, PublishError, Stored};
use crate::server::AppState;
use crate::spans::{self, PublishSpan, RequestSpan};

/// How a batch body is laid out, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/json`: an array of JSON documents; objects with `specversion` are
    /// CloudEvents, anything else is stored as it is.
    JsonArray,
    /// `application/cloudevents-batch+json`: an array of structured CloudEvents.
    CloudEvents,
    /// `application/x-ndjson` (also `application/ndjson`, `application/jsonl`): one
    /// JSON document per line; blank lines are skipped.
    NdJson,
}

/// Media types the batch endpoint takes.
pub const MEDIA_TYPES: [&str; 5] = [
    "application/json",
    cloudevents::BATCH,
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
];

impl Format {
    pub fn from_media_type(media_type: Option<&str>) -> Result<Format, BatchError> {
        match media_type {
            Some("application/json") => Ok(Format::JsonArray),
            Some(cloudevents::BATCH) => Ok(Format::CloudEvents),
            Some("application/x-ndjson" | "application/ndjson" | "application/jsonl") => {
                Ok(Format::NdJson)
            }
            other => Err(BatchError::UnsupportedMediaType {
                found: other.unwrap_or("none").to_string(),
            }),
        }
    }
}

/// Why a batch as a whole is refused.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("a batch must be sent as one of {}; the request's Content-Type is {found}", MEDIA_TYPES.join(", "))]
    UnsupportedMediaType { found: String },
    #[error("the batch is not a JSON array")]
    NotAnArray(#[source] serde_json::Error),
    #[error("the batch has no items")]
    Empty,
    #[error("the batch has {count} items; at most {limit} are accepted per request")]
    TooManyItems { count: usize, limit: usize },
}

impl From<BatchError> for Problem {
    fn from(e: BatchError) -> Self {
        let kind = match e {
            BatchError::UnsupportedMediaType { .. } => ProblemKind::UnsupportedMediaType,
            _ => ProblemKind::InvalidBatch,
        };
        Problem::new(kind, e.to_string())
    }
}

/// Why one item cannot be an event.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("line {line}: {source}")]
    Line {
        line: usize,
        #[source]
        source: CloudEventError,
    },
    #[error(transparent)]
    Item(#[from] CloudEventError),
}

/// Splits a batch body into items, each an event's parts or the reason it is not one.
pub fn parse(
    format: Format,
    body: &Bytes,
    max_items: usize,
) -> Result<Vec<Result<ItemParts, ItemError>>, BatchError> {
    let items = match format {
        Format::JsonArray | Format::CloudEvents => {
            let raw: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(BatchError::NotAnArray)?;
            check_count(raw.len(), max_items)?;
            raw.into_iter()
                .map(|item| {
                    let bytes = body.slice_ref(item.get().as_bytes());
                    parts(format, bytes).map_err(ItemError::from)
                })
                .collect()
        }
        Format::NdJson => {
            let lines: Vec<(usize, &[u8])> = body
                .split(|b| *b == b'\n')
                .enumerate()
                .filter(|(_, line)| !line.trim_ascii().is_empty())
                .collect();
            check_count(lines.len(), max_items)?;
            lines
                .into_iter()
                .map(|(number, line)| {
                    let bytes = body.slice_ref(line.trim_ascii());
                    parts(format, bytes).map_err(|source| ItemError::Line {
                        line: number + 1,
                        source,
                    })
                })
                .collect()
        }
    };
    Ok(items)
}

fn check_count(count: usize, limit: usize) -> Result<(), BatchError> {
    match count {
        0 => Err(BatchError::Empty),
        n if n > limit => Err(BatchError::TooManyItems { count: n, limit }),
        _ => Ok(()),
    }
}

fn parts(format: Format, payload: Bytes) -> Result<ItemParts, CloudEventError> {
    let cloudevent = match (cloudevents::probe(&payload)?, format) {
        (Probe::CloudEvent(attributes), _) => Some(attributes),
        (Probe::Plain, Format::CloudEvents) => {
            return Err(CloudEventError::MissingAttribute("specversion"));
        }
        (Probe::NotAnObject, Format::CloudEvents) => return Err(CloudEventError::NotAnObject),
        (Probe::Plain | Probe::NotAnObject, _) => None,
    };
    let content_type = if cloudevent.is_some() {
        cloudevents::STRUCTURED
    } else {
        "application/json"
    };
    Ok(ItemParts {
        payload,
        content_type,
        cloudevent,
    })
}

/// The outcome of one item.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ItemResult {
    Stored {
        index: usize,
        status: u16,
        #[serde(flatten)]
        stored: Stored,
    },
    Failed {
        index: usize,
        status: u16,
        error: ProblemBody,
    },
}

/// The body of a batch answer.
#[derive(Debug, Serialize)]
pub struct BatchResponse {
    /// Items stored (new or duplicate).
    pub accepted: usize,
    /// Items not stored.
    pub failed: usize,
    /// One entry per item, in request order.
    pub results: Vec<ItemResult>,
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    // Headers read where they are: axum's `HeaderMap` extractor would copy them.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let route = match authorized_route(&state, path, headers) {
        Ok(route) => route,
        Err(refused) => return refused.respond(&state, Endpoint::Batch),
    };
    let items = match read_items(&state, headers, body).await {
        Ok(items) => items,
        Err(problem) => return respond_problem(&state, &route.label, Endpoint::Batch, problem),
    };
    let span = state
        .tracer
        .as_ref()
        .map(|t| spans::request(t, headers, Endpoint::Batch, route.label.as_str()));
    let results = store_all(&state, &route, headers, items, span.as_ref()).await;
    let failed = results
        .iter()
        .filter(|r| matches!(r, ItemResult::Failed { .. }))
        .count();
    let (status, outcome) = if failed == 0 {
        (StatusCode::ACCEPTED, Outcome::Accepted)
    } else {
        (StatusCode::MULTI_STATUS, Outcome::Partial)
    };
    state
        .metrics
        .request(&route.label, Endpoint::Batch, outcome);
    let response = BatchResponse {
        accepted: results.len() - failed,
        failed,
        results,
    };
    if let Some(span) = span {
        span.end(status);
    }
    (status, Json(response)).into_response()
}

async fn read_items(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<Result<ItemParts, ItemError>>, Problem> {
    let format = Format::from_media_type(event::media_type(headers).as_deref())?;
    let body = body::read(headers, body, state.body_limit, state.body_read_timeout).await?;
    let items = parse(format, &body, state.max_batch_items)?;
    state
        .publisher
        .check_connected()
        .map_err(|e| Problem::from(&e))?;
    Ok(items)
}

/// Sends every valid item, then collects the acknowledgements. When no in-flight
/// permit is free, the batch first waits for its own outstanding acknowledgements, so
/// a batch larger than the in-flight limit cannot block itself.
async fn store_all(
    state: &AppState,
    route: &Route,
    headers: &HeaderMap,
    items: Vec<Result<ItemParts, ItemError>>,
    span: Option<&RequestSpan>,
) -> Vec<ItemResult> {
    let publisher = &state.publisher;
    let mut results: Vec<Option<ItemResult>> = Vec::with_capacity(items.len());
    results.resize_with(items.len(), || None);
    let mut pending: Vec<Sent<'_>> = Vec::new();
    // Once the gateway is found busy or disconnected, later items fail at once
    // instead of each waiting again.
    let mut gave_up: Option<Problem> = None;

    for (index, item) in items.into_iter().enumerate() {
        let event = item
            .map_err(|e| Problem::new(ProblemKind::InvalidEvent, format!("item {index}: {e}")))
            .and_then(|parts| {
                event::batch_item(route, &state.forward, headers, index, parts).map_err(|e| {
                    Problem::new(ProblemKind::InvalidEvent, format!("item {index}: {e}"))
                })
            });
        let mut event = match event {
            Ok(event) => event,
            Err(problem) => {
                results[index] = Some(failed(state, route, index, problem));
                continue;
            }
        };
        if let Some(problem) = &gave_up {
            results[index] = Some(failed(state, route, index, problem.clone()));
            continue;
        }
        let permit = match publisher.try_reserve() {
            Some(permit) => Ok(permit),
            None => {
                collect(state, route, &mut pending, &mut results).await;
                publisher.reserve().await
            }
        };
        let publish = span.map(|s| s.publish(&mut event, &route.stream));
        // Not connected, `send` says so at once.
        let sent = permit.and_then(|permit| publisher.send(permit, event, &route.stream));
        match sent {
            Ok(p) => pending.push((index, p, publish)),
            Err(e) => {
                if let Some(publish) = publish {
                    publish.end(Err(&e));
                }
                let problem = Problem::from(&e);
                if matches!(e, PublishError::Busy { .. } | PublishError::NotConnected) {
                    gave_up = Some(problem.clone());
                }
                results[index] = Some(failed(state, route, index, problem));
            }
        }
    }
    collect(state, route, &mut pending, &mut results).await;
    results
        .into_iter()
        .map(|r| r.expect("every item has a result"))
        .collect()
}

/// An item sent and waiting for its acknowledgement: its index, the wait, its span.
type Sent<'a> = (usize, Pending<'a>, Option<PublishSpan>);

/// Awaits the acknowledgements of the items sent so far.
async fn collect(
    state: &AppState,
    route: &Route,
    pending: &mut Vec<Sent<'_>>,
    results: &mut [Option<ItemResult>],
) {
    for (index, p, publish) in pending.drain(..) {
        let stored = p.stored().await;
        if let Some(publish) = publish {
            publish.end(stored.as_ref());
        }
        results[index] = Some(match stored {
            Ok(stored) => {
                let outcome = if stored.duplicate {
                    Outcome::Duplicate
                } else {
                    Outcome::Accepted
                };
                state.metrics.event(&route.label, outcome);
                ItemResult::Stored {
                    index,
                    status: StatusCode::ACCEPTED.as_u16(),
                    stored,
                }
            }
            Err(e) => failed(state, route, index, Problem::from(&e)),
        });
    }
}

fn failed(state: &AppState, route: &Route, index: usize, problem: Problem) -> ItemResult {
    state
        .metrics
        .event(&route.label, Outcome::Failed(problem.kind));
    let problem = problem.at_index(index);
    ItemResult::Failed {
        index,
        status: problem.kind.status().as_u16(),
        error: problem.body(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(items: &[Result<ItemParts, ItemError>]) -> Vec<Option<String>> {
        items
            .iter()
            .map(|i| {
                i.as_ref()
                    .ok()
                    .and_then(|p| p.cloudevent.as_ref().map(|c| c.id.clone()))
            })
            .collect()
    }

    #[test]
    fn json_arrays_keep_each_items_exact_bytes() {
        let body = Bytes::from_static(
            br#"[ {"a": 1}, {"specversion":"1.0","id":"x","source":"/s","type":"t"}, "text" ]"#,
        );
        let items = parse(Format::JsonArray, &body, 10).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(&items[0].as_ref().unwrap().payload[..], br#"{"a": 1}"#);
        assert_eq!(items[0].as_ref().unwrap().content_type, "application/json");
        assert_eq!(
            items[1].as_ref().unwrap().content_type,
            cloudevents::STRUCTURED
        );
        assert_eq!(ids(&items), [None, Some("x".to_string()), None]);
        assert_eq!(&items[2].as_ref().unwrap().payload[..], br#""text""#);
    }

    #[test]
    fn ndjson_reports_bad_lines_by_index_and_skips_blank_ones() {
        let body = Bytes::from_static(b"{\"n\":1}\n\n{not json}\r\n{\"n\":3}\n");
        let items = parse(Format::NdJson, &body, 10).unwrap();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok());
        let err = items[1].as_ref().unwrap_err().to_string();
        assert!(err.starts_with("line 3:"), "{err}");
        assert_eq!(&items[2].as_ref().unwrap().payload[..], b"{\"n\":3}");
    }

    #[test]
    fn cloudevent_batches_need_cloudevents() {
        let body = Bytes::from_static(
            br#"[{"specversion":"1.0","id":"x","source":"/s","type":"t"},{"n":1},[1]]"#,
        );
        let items = parse(Format::CloudEvents, &body, 10).unwrap();
        assert!(items[0].is_ok());
        assert!(items[1].is_err());
        assert!(items[2].is_err());
    }

    #[test]
    fn whole_batch_errors() {
        let parse_json =
            |s: &'static str| parse(Format::JsonArray, &Bytes::from_static(s.as_bytes()), 2);
        assert!(matches!(parse_json("{}"), Err(BatchError::NotAnArray(_))));
        assert!(matches!(parse_json("[1,"), Err(BatchError::NotAnArray(_))));
        assert!(matches!(parse_json("[]"), Err(BatchError::Empty)));
        assert!(matches!(
            parse_json("[1,2,3]"),
            Err(BatchError::TooManyItems { count: 3, limit: 2 })
        ));
        assert!(matches!(
            Format::from_media_type(Some("text/plain")),
            Err(BatchError::UnsupportedMediaType { .. })
        ));
        assert!(Format::from_media_type(None).is_err());
    }
}
