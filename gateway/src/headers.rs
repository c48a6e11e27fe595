//! Which request headers travel with an event into JetStream.
//!
//! Always: `Content-Type` (the event's own), `traceparent` and `tracestate` (W3C trace
//! context), and for single events every `ce-*` header (binary-mode CloudEvent
//! attributes). Besides those, an allow-list from `--forward-headers`, without the
//! names the gateway or JetStream own (`Nats-*`, `Fanout-*`).

use axum::http::{HeaderMap, HeaderName};

use crate::nats::headers::{Headers, LineBreak};

/// Trace context headers, always forwarded (stored under the same names).
const TRACE_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// A name in an allow-list that cannot be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum InvalidHeaderName {
    #[error("{0:?} is not a valid header name")]
    Malformed(String),
    #[error(
        "{0:?} is set by the gateway or acted on by JetStream (Nats-*, Fanout-*), and is never taken from a request"
    )]
    Owned(String),
}

/// A header whose value cannot be stored (not visible ASCII text).
#[derive(Debug, thiserror::Error)]
#[error("the {name} header must be visible ASCII text")]
pub struct InvalidHeaderValue {
    pub name: String,
}

impl From<LineBreak> for InvalidHeaderValue {
    fn from(e: LineBreak) -> Self {
        InvalidHeaderValue { name: e.name }
    }
}

/// The configured allow-list: HTTP names to match, and the names to store under (as
/// written in the flag, so `X-Event-Type` stays `X-Event-Type`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ForwardHeaders {
    names: Vec<(HeaderName, Box<str>)>,
}

impl ForwardHeaders {
    /// The list of `--forward-headers`: a name the gateway or JetStream owns is
    /// refused, since it would never be forwarded.
    pub fn from_flag(names: &[String]) -> Result<ForwardHeaders, InvalidHeaderName> {
        Self::parse(names, true)
    }

    /// A route's list, the headers its targets filter on. A name the gateway or
    /// JetStream owns is left out: a filter on it sees the value the gateway
    /// stored, and the route stays usable.
    pub fn for_route(names: &[String]) -> Result<ForwardHeaders, InvalidHeaderName> {
        Self::parse(names, false)
    }

    fn parse(names: &[String], refuse_owned: bool) -> Result<ForwardHeaders, InvalidHeaderName> {
        let mut parsed = Vec::new();
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let http_name: HeaderName = name
                .parse()
                .map_err(|_| InvalidHeaderName::Malformed(name.to_string()))?;
            if is_owned(&http_name) {
                if refuse_owned {
                    return Err(InvalidHeaderName::Owned(name.to_string()));
                }
                tracing::debug!(
                    header = name,
                    "not forwarded: the gateway or JetStream sets it"
                );
                continue;
            }
            if !parsed.iter().any(|(h, _)| *h == http_name) {
                parsed.push((http_name, name.into()));
            }
        }
        Ok(ForwardHeaders { names: parsed })
    }

    /// Copies the headers that travel from `request` into `event`. `ce-*` headers
    /// describe one event, so a batch leaves them out.
    pub fn copy(
        &self,
        request: &HeaderMap,
        event: &mut Headers,
        include_cloudevent_headers: bool,
    ) -> Result<(), InvalidHeaderValue> {
        for name in &TRACE_HEADERS {
            copy_all(request, name, name.as_str(), event)?;
        }
        self.copy_listed(request, event)?;
        if include_cloudevent_headers {
            for (name, _) in request.iter() {
                let text = name.as_str();
                // Each name once: copy_all takes every value of it.
                if text.starts_with("ce-") && text.len() > 3 && !event.contains(text) {
                    copy_all(request, name, text, event)?;
                }
            }
        }
        Ok(())
    }

    /// Copies only the allow-listed headers; a header `event` already has (from
    /// another list) is not copied twice. Most requests carry few of the listed
    /// headers, so the request is asked first.
    pub fn copy_listed(
        &self,
        request: &HeaderMap,
        event: &mut Headers,
    ) -> Result<(), InvalidHeaderValue> {
        for (http_name, stored_name) in &self.names {
            if request.contains_key(http_name) && !event.contains(stored_name) {
                copy_all(request, http_name, stored_name, event)?;
            }
        }
        Ok(())
    }
}

/// Headers the gateway sets itself (`Fanout-Event-Id`) or that JetStream acts on
/// (`Nats-Msg-Id`, `Nats-Expected-*`, `Nats-Rollup`, `Nats-TTL`...): taken from a
/// request, they would let a producer forge an event's id or steer the stream.
fn is_owned(name: &HeaderName) -> bool {
    // HTTP header names are lower case once parsed.
    let name = name.as_str();
    name.starts_with("nats-") || name.starts_with("fanout-")
}

fn copy_all(
    request: &HeaderMap,
    http_name: &HeaderName,
    stored_name: &str,
    event: &mut Headers,
) -> Result<(), InvalidHeaderValue> {
    for value in request.get_all(http_name) {
        let text = value.to_str().map_err(|_| InvalidHeaderValue {
            name: http_name.to_string(),
        })?;
        event.append(stored_name, text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("traceparent", "00-abc-def-01".parse().unwrap());
        h.insert("x-event-type", "order.placed".parse().unwrap());
        h.append("x-request-id", "r1".parse().unwrap());
        h.append("x-request-id", "r2".parse().unwrap());
        h.insert("ce-id", "e1".parse().unwrap());
        h.insert("authorization", "Bearer secret".parse().unwrap());
        h.insert("cookie", "a=b".parse().unwrap());
        h
    }

    #[test]
    fn allow_listed_trace_and_cloudevent_headers_travel() {
        let forward =
            ForwardHeaders::from_flag(&["X-Event-Type".into(), "X-Request-Id".into()]).unwrap();
        let mut event = Headers::new();
        forward.copy(&request(), &mut event, true).unwrap();
        assert_eq!(event.get("traceparent"), Some("00-abc-def-01"));
        assert_eq!(event.get("X-Event-Type"), Some("order.placed"));
        let ids: Vec<_> = event.get_all("X-Request-Id").collect();
        assert_eq!(ids, ["r1", "r2"]);
        assert_eq!(event.get("ce-id"), Some("e1"));
        // Stored under the names as configured.
        let names: Vec<_> = event.lines().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "traceparent",
                "X-Event-Type",
                "X-Request-Id",
                "X-Request-Id",
                "ce-id"
            ]
        );
    }

    #[test]
    fn credentials_and_unlisted_headers_stay_behind() {
        let forward = ForwardHeaders::from_flag(&["X-Event-Type".into()]).unwrap();
        let mut event = Headers::new();
        forward.copy(&request(), &mut event, false).unwrap();
        for name in ["authorization", "cookie", "X-Request-Id"] {
            assert!(!event.contains(name), "{name}");
        }
        assert!(!event.contains("ce-id"), "batches leave ce-* behind");
    }

    #[test]
    fn names_the_gateway_or_jetstream_own_are_never_forwarded() {
        let listed = [
            "Nats-Rollup",
            "nats-msg-id",
            "Fanout-Event-Id",
            "X-Event-Type",
        ];
        let forward = ForwardHeaders::for_route(&listed.map(String::from)).unwrap();
        let names: Vec<&str> = forward.names.iter().map(|(_, n)| &**n).collect();
        assert_eq!(names, ["X-Event-Type"]);
        // Set on the command line, such a name is a mistake to report.
        for name in ["Nats-Rollup", "fanout-event-id"] {
            let error = ForwardHeaders::from_flag(&[name.into(), "X-Event-Type".into()]);
            assert!(
                matches!(&error, Err(InvalidHeaderName::Owned(n)) if n == name),
                "{error:?}"
            );
        }
    }

    #[test]
    fn invalid_allow_list_names_are_refused() {
        assert!(ForwardHeaders::from_flag(&["bad header".into()]).is_err());
        assert!(
            ForwardHeaders::from_flag(&[" ".into()])
                .unwrap()
                .names
                .is_empty()
        );
    }
}
