//! RFC 9457 problem details: every error the gateway answers is one of these, as
//! `application/problem+json` with `type`, `title`, `status` and `detail`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Media type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Base of the `type` URIs; the kind's slug is appended.
pub const TYPE_BASE: &str = "https://fanout.dev/problems/";

/// The fixed set of problems: each has one status, title and `type` URI. The slug is
/// also the `outcome` label of the request metrics, so it must stay a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    InvalidEvent,
    InvalidBatch,
    Unauthorized,
    Forbidden,
    RouteNotFound,
    RouteNotReady,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    Internal,
    StorageRejected,
    Busy,
    Unavailable,
    StreamFull,
}

impl ProblemKind {
    pub const ALL: [ProblemKind; 16] = [
        ProblemKind::InvalidEvent,
        ProblemKind::InvalidBatch,
        ProblemKind::Unauthorized,
        ProblemKind::Forbidden,
        ProblemKind::RouteNotFound,
        ProblemKind::RouteNotReady,
        ProblemKind::NotFound,
        ProblemKind::MethodNotAllowed,
        ProblemKind::PayloadTooLarge,
        ProblemKind::RequestTimeout,
        ProblemKind::UnsupportedMediaType,
        ProblemKind::Internal,
        ProblemKind::StorageRejected,
        ProblemKind::Busy,
        ProblemKind::Unavailable,
        ProblemKind::StreamFull,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            ProblemKind::InvalidEvent | ProblemKind::InvalidBatch => StatusCode::BAD_REQUEST,
            ProblemKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ProblemKind::Forbidden => StatusCode::FORBIDDEN,
            ProblemKind::RouteNotFound | ProblemKind::NotFound => StatusCode::NOT_FOUND,
            ProblemKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProblemKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProblemKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ProblemKind::StorageRejected => StatusCode::BAD_GATEWAY,
            ProblemKind::RouteNotReady | ProblemKind::Busy | ProblemKind::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProblemKind::StreamFull => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// Short stable name: the last part of the `type` URI and the metrics outcome.
    pub fn slug(self) -> &'static str {
        match self {
            ProblemKind::InvalidEvent => "invalid-event",
            ProblemKind::InvalidBatch => "invalid-batch",
            ProblemKind::Unauthorized => "unauthorized",
            ProblemKind::Forbidden => "forbidden",
            ProblemKind::RouteNotFound => "route-not-found",
            ProblemKind::RouteNotReady => "route-not-ready",
            ProblemKind::NotFound => "not-found",
            ProblemKind::MethodNotAllowed => "method-not-allowed",
            ProblemKind::PayloadTooLarge => "payload-too-large",
            ProblemKind::RequestTimeout => "request-timeout",
            ProblemKind::UnsupportedMediaType => "unsupported-media-type",
            ProblemKind::Internal => "internal",
            ProblemKind::StorageRejected => "storage-rejected",
            ProblemKind::Busy => "busy",
            ProblemKind::Unavailable => "unavailable",
            ProblemKind::StreamFull => "stream-full",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::InvalidEvent => "Invalid event",
            ProblemKind::InvalidBatch => "Invalid batch",
            ProblemKind::Unauthorized => "Authentication required",
            ProblemKind::Forbidden => "Not allowed",
            ProblemKind::RouteNotFound => "Unknown route",
            ProblemKind::RouteNotReady => "Route not ready",
            ProblemKind::NotFound => "Not found",
            ProblemKind::MethodNotAllowed => "Method not allowed",
            ProblemKind::PayloadTooLarge => "Payload too large",
            ProblemKind::RequestTimeout => "Request body too slow",
            ProblemKind::UnsupportedMediaType => "Unsupported media type",
            ProblemKind::Internal => "Internal error",
            ProblemKind::StorageRejected => "Event refused by storage",
            ProblemKind::Busy => "Gateway busy",
            ProblemKind::Unavailable => "Storage unavailable",
            ProblemKind::StreamFull => "Stream full",
        }
    }

    /// Whether the gateway tried to store the event and could not (a warning in its
    /// log), rather than refused the request first (debug): every 5xx but a route
    /// whose tokens are on their way, which a warning per producer request would
    /// flood the log with while its status already says why.
    pub fn is_storage_failure(self) -> bool {
        self.status().is_server_error() && self != ProblemKind::RouteNotReady
    }

    pub fn type_uri(self) -> String {
        format!("{TYPE_BASE}{}", self.slug())
    }
}

/// One problem, ready to be answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub detail: String,
    /// Position of the batch item the problem is about.
    pub index: Option<usize>,
    /// Seconds a client should wait before retrying (503).
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Problem {
            kind,
            detail: detail.into(),
            index: None,
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn at_index(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    /// The JSON body (also embedded per item in batch results).
    pub fn body(&self) -> ProblemBody {
        ProblemBody {
            type_uri: self.kind.type_uri(),
            title: self.kind.title(),
            status: self.kind.status().as_u16(),
            detail: self.detail.clone(),
            index: self.index,
        }
    }
}

/// The serialised shape of a problem.
#[derive(Clone, Debug, Serialize)]
pub struct ProblemBody {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = (self.kind.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.kind == ProblemKind::RequestTimeout {
            // The rest of the body may still be on its way: the connection cannot
            // carry another request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.kind == ProblemKind::Unauthorized {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fanout\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_to_store_are_warned_about() {
        let failures: Vec<ProblemKind> = ProblemKind::ALL
            .into_iter()
            .filter(|k| k.is_storage_failure())
            .collect();
        assert_eq!(
            failures,
            [
                ProblemKind::Internal,
                ProblemKind::StorageRejected,
                ProblemKind::Busy,
                ProblemKind::Unavailable,
                ProblemKind::StreamFull,
            ]
        );
    }

    #[test]
    fn problem_body_has_the_rfc_9457_members() {
        let p = Problem::new(ProblemKind::StreamFull, "stream x is full").at_index(3);
        let json = serde_json::to_value(p.body()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "https://fanout.dev/problems/stream-full",
                "title": "Stream full",
                "status": 507,
                "detail": "stream x is full",
                "index": 3,
            })
        );
    }

    #[test]
    fn unavailable_answers_carry_retry_after() {
        let response = Problem::new(ProblemKind::Unavailable, "down")
            .retry_after(2)
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn slugs_are_unique() {
        let mut slugs: Vec<_> = ProblemKind::ALL.iter().map(|k| k.slug()).collect();
        slugs.sort();
        slugs.dedup();
        assert_eq!(slugs.len(), ProblemKind::ALL.len());
    }
}
