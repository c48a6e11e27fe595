//! The OpenAPI 3.0 description of the events port, served there at `GET
//! /openapi.json`, written by hand so it says exactly what the handlers do (a
//! schemathesis test holds it to that). The ops port's probes and metrics are for
//! Kubernetes and Prometheus, not producers, and are not in it.

use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::batch;
use crate::cloudevents;
use crate::event::MAX_ID_LEN;
use crate::problem::{PROBLEM_JSON, ProblemKind};
use crate::server::{BATCH_PATH, EVENTS_PATH};

/// The document, rendered once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| build().to_string())
}

fn problem(kind: ProblemKind, description: &str) -> Value {
    let mut response = json!({
        "description": format!("{description} (`type`: {})", kind.type_uri()),
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    });
    let headers = match kind.status().as_u16() {
        503 => Some(json!({"Retry-After": {"$ref": "#/components/headers/RetryAfter"}})),
        401 => Some(json!({"WWW-Authenticate": {
            "description": "`Bearer realm=\"fanout\"`",
            "required": true,
            "schema": {"type": "string"},
        }})),
        _ => None,
    };
    if let Some(headers) = headers {
        response["headers"] = headers;
    }
    response
}

fn route_parameters() -> Value {
    json!([
        {"name": "ns", "in": "path", "required": true, "description": "The route's namespace.",
         "schema": {"type": "string", "minLength": 1}},
        {"name": "route", "in": "path", "required": true, "description": "The route's name.",
         "schema": {"type": "string", "minLength": 1}},
        {"$ref": "#/components/parameters/IdempotencyKey"},
    ])
}

fn build() -> Value {
    let common_errors = |extra: &[(ProblemKind, &str)]| {
        let mut responses = serde_json::Map::new();
        let mut add = |kind: ProblemKind, description: &str| {
            // Several kinds share a status (404, 503): describe them together.
            let status = kind.status().as_u16().to_string();
            let described = match responses.remove(&status) {
                Some(existing) => {
                    let previous = existing["description"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let mut merged = problem(kind, description);
                    merged["description"] = json!(format!(
                        "{previous}; or {}",
                        merged["description"].as_str().unwrap_or_default()
                    ));
                    merged
                }
                None => problem(kind, description),
            };
            responses.insert(status, described);
        };
        add(
            ProblemKind::Unauthorized,
            "Missing or malformed `Authorization: Bearer` header",
        );
        add(
            ProblemKind::Forbidden,
            "The token is not one of the route's, or the route accepts no requests (no tokens configured and anonymous requests not allowed)",
        );
        add(
            ProblemKind::RouteNotFound,
            "No such route is configured on this gateway",
        );
        add(
            ProblemKind::RouteNotReady,
            "The token is not one of the route's loaded tokens while some of its tokens are not loaded yet (their Secret is missing or still being copied); `Retry-After` set",
        );
        add(
            ProblemKind::PayloadTooLarge,
            "The body is larger than the gateway's limit (`--body-limit`) or than NATS accepts",
        );
        add(
            ProblemKind::Unavailable,
            "NATS is not connected, the stream does not exist, or no acknowledgement arrived in time; nothing was acknowledged, retry with the same Idempotency-Key",
        );
        add(
            ProblemKind::Busy,
            "Too many publishes in flight (`--max-in-flight`)",
        );
        add(
            ProblemKind::RequestTimeout,
            "The body did not arrive within `--body-read-timeout`; the connection is closed. Nothing was stored",
        );
        for (kind, description) in extra {
            add(*kind, description);
        }
        responses
    };

    let mut single_responses = common_errors(&[
        (
            ProblemKind::InvalidEvent,
            "Not a valid event: a structured or binary CloudEvent without its required attributes, or an unusable id (Idempotency-Key or CloudEvent id must be 1-256 printable ASCII characters)",
        ),
        (
            ProblemKind::StreamFull,
            "The route's stream reached its limits (maximum messages or bytes) and refuses new events",
        ),
        (
            ProblemKind::StorageRejected,
            "JetStream refused the event for another reason",
        ),
    ]);
    single_responses.insert(
        "202".into(),
        json!({
            "description": "Stored: JetStream has acknowledged the event.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
        }),
    );

    let mut batch_responses = common_errors(&[
        (
            ProblemKind::InvalidBatch,
            "Not a batch: not a JSON array, no items, or more items than `--max-batch-items`",
        ),
        (
            ProblemKind::UnsupportedMediaType,
            "The Content-Type is not one the batch endpoint reads",
        ),
    ]);
    batch_responses.insert(
        "202".into(),
        json!({
            "description": "Every item was stored.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchResponse"}}},
        }),
    );
    batch_responses.insert(
        "207".into(),
        json!({
            "description": "At least one item was not stored; each result says which and why (per-item `status`: 400 invalid item, 413, 502, 503, 507 as for single events).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchResponse"}}},
        }),
    );

    let batch_media: serde_json::Map<String, Value> = batch::MEDIA_TYPES
        .iter()
        .map(|media| {
            let schema = match *media {
                "application/json" => json!({"type": "array", "minItems": 1, "items": {}}),
                cloudevents::BATCH => json!({"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/CloudEvent"}}),
                _ => json!({"type": "string", "description": "One JSON document per line; blank lines are skipped."}),
            };
            (media.to_string(), json!({"schema": schema}))
        })
        .collect();

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Fanout gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Accepts events over HTTP and answers 202 only once JetStream has stored them. Errors are RFC 9457 problem details (`application/problem+json`).",
        },
        "paths": {
            EVENTS_PATH: {
                "post": {
                    "operationId": "ingestEvent",
                    "summary": "Store one event",
                    "description": "Any content type is accepted and stored unchanged. `application/cloudevents+json` is read as a structured-mode CloudEvent, `ce-*` headers as a binary-mode one. The event id is the Idempotency-Key, else the CloudEvent id, else a new UUIDv7.",
                    "security": [{"bearer": []}, {}],
                    "parameters": route_parameters(),
                    "requestBody": {
                        "required": false,
                        "content": {
                            "application/json": {"schema": {}},
                            cloudevents::STRUCTURED: {"schema": {"$ref": "#/components/schemas/CloudEvent"}},
                            "text/plain": {"schema": {"type": "string"}},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "responses": single_responses,
                },
            },
            BATCH_PATH: {
                "post": {
                    "operationId": "ingestBatch",
                    "summary": "Store many events",
                    "description": "A JSON array (objects with `specversion` are CloudEvents), an array of CloudEvents, or NDJSON. Each item's id is its CloudEvent id, else `<Idempotency-Key>-<index>`, else a new UUIDv7. Items are published pipelined; each gets its own result.",
                    "security": [{"bearer": []}, {}],
                    "parameters": route_parameters(),
                    "requestBody": {"required": true, "content": batch_media},
                    "responses": batch_responses,
                },
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.0 document", "content": {"application/json": {"schema": {"type": "object"}}}}},
                },
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "One of the route's tokens. Routes that allow unauthenticated requests need none."},
            },
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key", "in": "header", "required": false,
                    "description": "The event id: a retry with the same key within the stream's duplicate window is stored once (the answer says `duplicate: true`).",
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN, "pattern": "^[\\x20-\\x7E]+$"},
                },
            },
            "headers": {
                "RetryAfter": {"description": "Seconds to wait before retrying", "required": true, "schema": {"type": "integer", "minimum": 0}},
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "description": "RFC 9457 problem details",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string", "format": "uri"},
                        "title": {"type": "string"},
                        "status": {"type": "integer", "minimum": 400, "maximum": 599},
                        "detail": {"type": "string"},
                        "index": {"type": "integer", "minimum": 0, "description": "The batch item the problem is about"},
                    },
                },
                "Accepted": {
                    "type": "object",
                    "required": ["id", "stream", "sequence", "duplicate"],
                    "additionalProperties": false,
                    "properties": {
                        "id": {"type": "string", "description": "The event id: Fanout-Event-Id of the stored message, and its Nats-Msg-Id when it came from the Idempotency-Key or the CloudEvent id"},
                        "stream": {"type": "string", "description": "The JetStream stream that stored it"},
                        "sequence": {"type": "integer", "format": "int64", "minimum": 1, "description": "Its sequence in the stream (the original one for a duplicate)"},
                        "duplicate": {"type": "boolean", "description": "The id was already stored within the duplicate window; nothing new was stored"},
                    },
                },
                "ItemStored": {
                    "type": "object",
                    "required": ["index", "status", "id", "stream", "sequence", "duplicate"],
                    "additionalProperties": false,
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "status": {"type": "integer", "enum": [202]},
                        "id": {"type": "string"},
                        "stream": {"type": "string"},
                        "sequence": {"type": "integer", "format": "int64", "minimum": 1},
                        "duplicate": {"type": "boolean"},
                    },
                },
                "ItemFailed": {
                    "type": "object",
                    "required": ["index", "status", "error"],
                    "additionalProperties": false,
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "status": {"type": "integer", "minimum": 400, "maximum": 599},
                        "error": {"$ref": "#/components/schemas/Problem"},
                    },
                },
                "BatchResponse": {
                    "type": "object",
                    "required": ["accepted", "failed", "results"],
                    "additionalProperties": false,
                    "properties": {
                        "accepted": {"type": "integer", "minimum": 0},
                        "failed": {"type": "integer", "minimum": 0},
                        "results": {"type": "array", "items": {"oneOf": [
                            {"$ref": "#/components/schemas/ItemStored"},
                            {"$ref": "#/components/schemas/ItemFailed"},
                        ]}},
                    },
                },
                "CloudEvent": {
                    "type": "object",
                    "description": "A structured-mode CloudEvent 1.0; other attributes and `data` are stored unchanged.",
                    "required": ["specversion", "id", "source", "type"],
                    "properties": {
                        "specversion": {"type": "string", "minLength": 1},
                        "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN, "pattern": "^[\\x20-\\x7E]+$"},
                        "source": {"type": "string", "minLength": 1},
                        "type": {"type": "string", "minLength": 1},
                    },
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::from_str(document()).unwrap()
    }

    #[test]
    fn every_ingest_error_status_is_described() {
        let doc = doc();
        let single = &doc["paths"][EVENTS_PATH]["post"]["responses"];
        for status in [
            "202", "400", "401", "403", "404", "408", "413", "502", "503", "507",
        ] {
            assert!(single.get(status).is_some(), "single {status}");
        }
        let batch = &doc["paths"][BATCH_PATH]["post"]["responses"];
        for status in [
            "202", "207", "400", "401", "403", "404", "408", "413", "415", "503",
        ] {
            assert!(batch.get(status).is_some(), "batch {status}");
        }
        assert!(single["503"]["headers"].get("Retry-After").is_some());
    }

    #[test]
    fn every_reference_resolves() {
        let doc = doc();
        let text = document();
        for part in text.split("\"$ref\":\"#/").skip(1) {
            let pointer = &part[..part.find('"').unwrap()];
            assert!(
                doc.pointer(&format!("/{pointer}")).is_some(),
                "dangling $ref {pointer}"
            );
        }
    }
}
