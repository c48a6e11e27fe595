//! Which request headers travel with an event into JetStream.
//!
//! Always: `Content-Type` (the event's own), `traceparent` and `tracestate` (W3C trace
//! context), and for single events every `ce-*` header (binary-mode CloudEvent
//! attributes). Besides those, an allow-list from `--forward-headers`.

use axum::http::{HeaderMap, HeaderName};

/// Trace context headers, always forwarded (stored under the same names).
const TRACE_HEADERS: [(HeaderName, async_nats::HeaderName); 2] = [
    (
        HeaderName::from_static("traceparent"),
        async_nats::HeaderName::from_static("traceparent"),
    ),
    (
        HeaderName::from_static("tracestate"),
        async_nats::HeaderName::from_static("tracestate"),
    ),
];

/// A header name in the allow-list that is not a valid header name.
#[derive(Debug, thiserror::Error)]
#[error("--forward-headers: {name:?} is not a valid header name")]
pub struct InvalidHeaderName {
    name: String,
}

/// A header whose value cannot be stored (not visible ASCII text).
#[derive(Debug, thiserror::Error)]
#[error("the {name} header must be visible ASCII text")]
pub struct InvalidHeaderValue {
    pub name: String,
}

/// The configured allow-list: HTTP names to match, NATS names to store under (as
/// written in the flag, so `X-Event-Type` stays `X-Event-Type`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ForwardHeaders {
    names: Vec<(HeaderName, async_nats::HeaderName)>,
}

impl ForwardHeaders {
    pub fn new(names: &[String]) -> Result<ForwardHeaders, InvalidHeaderName> {
        let mut parsed = Vec::new();
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let invalid = || InvalidHeaderName {
                name: name.to_string(),
            };
            let http_name: HeaderName = name.parse().map_err(|_| invalid())?;
            let nats_name: async_nats::HeaderName = name.parse().map_err(|_| invalid())?;
            if !parsed.iter().any(|(h, _)| *h == http_name) {
                parsed.push((http_name, nats_name));
            }
        }
        Ok(ForwardHeaders { names: parsed })
    }

    /// Copies the headers that travel from `request` into `event`. `ce-*` headers
    /// describe one event, so a batch leaves them out.
    pub fn copy(
        &self,
        request: &HeaderMap,
        event: &mut async_nats::HeaderMap,
        include_cloudevent_headers: bool,
    ) -> Result<(), InvalidHeaderValue> {
        for (http_name, nats_name) in &TRACE_HEADERS {
            copy_all(request, http_name, nats_name.clone(), event)?;
        }
        self.copy_listed(request, event)?;
        if include_cloudevent_headers {
            for (name, _) in request.iter() {
                let text = name.as_str();
                if text.starts_with("ce-") && text.len() > 3 {
                    // Each name once: copy_all takes every value of it.
                    if event.get(text).is_none() {
                        copy_all(request, name, text, event)?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl ForwardHeaders {
    /// Copies only the allow-listed headers; a header `event` already has (from
    /// another list) is not copied twice. Most requests carry few of the listed
    /// headers, so the request is asked first: looking a name up in `event` costs a
    /// copy of the name (async-nats takes names by value) and a hash.
    pub fn copy_listed(
        &self,
        request: &HeaderMap,
        event: &mut async_nats::HeaderMap,
    ) -> Result<(), InvalidHeaderValue> {
        for (http_name, nats_name) in &self.names {
            if request.contains_key(http_name) && event.get(nats_name.clone()).is_none() {
                copy_all(request, http_name, nats_name.clone(), event)?;
            }
        }
        Ok(())
    }
}

fn copy_all(
    request: &HeaderMap,
    http_name: &HeaderName,
    nats_name: impl async_nats::header::IntoHeaderName + Clone,
    event: &mut async_nats::HeaderMap,
) -> Result<(), InvalidHeaderValue> {
    for value in request.get_all(http_name) {
        let text = value.to_str().map_err(|_| InvalidHeaderValue {
            name: http_name.to_string(),
        })?;
        event.append(nats_name.clone(), text);
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
        let forward = ForwardHeaders::new(&["X-Event-Type".into(), "X-Request-Id".into()]).unwrap();
        let mut event = async_nats::HeaderMap::new();
        forward.copy(&request(), &mut event, true).unwrap();
        assert_eq!(event.get("traceparent").unwrap().as_str(), "00-abc-def-01");
        assert_eq!(event.get("X-Event-Type").unwrap().as_str(), "order.placed");
        let ids: Vec<_> = event.get_all("X-Request-Id").map(|v| v.as_str()).collect();
        assert_eq!(ids, ["r1", "r2"]);
        assert_eq!(event.get("ce-id").unwrap().as_str(), "e1");
    }

    #[test]
    fn credentials_and_unlisted_headers_stay_behind() {
        let forward = ForwardHeaders::new(&["X-Event-Type".into()]).unwrap();
        let mut event = async_nats::HeaderMap::new();
        forward.copy(&request(), &mut event, false).unwrap();
        assert!(event.get("authorization").is_none());
        assert!(event.get("Authorization").is_none());
        assert!(event.get("cookie").is_none());
        assert!(event.get("X-Request-Id").is_none());
        assert!(event.get("ce-id").is_none(), "batches leave ce-* behind");
    }

    #[test]
    fn invalid_allow_list_names_are_refused() {
        assert!(ForwardHeaders::new(&["bad header".into()]).is_err());
        assert!(ForwardHeaders::new(&[" ".into()]).unwrap().names.is_empty());
    }
}
