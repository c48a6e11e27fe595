//! The HTTP request for one attempt: the event's body and content type, the target's
//! method and static headers, Fanout's own headers, auth and signature. Where it goes
//! (URI, `Host`, connection) is the HTTP client's part (see `http/`).

use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use fanout_config::TargetConfig;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use http_body_util::Full;

use crate::event::is_internal_header;
use crate::expressions::Outgoing;
use crate::signing::SigningKey;

/// Credentials read from their files at start.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// The full `Authorization` value (Bearer or Basic), marked sensitive.
    pub authorization: Option<HeaderValue>,
    /// A header from a Secret (`auth.header`), its value marked sensitive.
    pub header: Option<(HeaderName, HeaderValue)>,
    pub signing: Option<SigningKey>,
    /// Settings of the target's own for its TLS connections (client certificate, CA
    /// bundle); `None`: the settings https targets share.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Where the target's access tokens come from; each request gets its
    /// `Authorization` from there (see [`crate::oauth2`]).
    pub oauth2: Option<crate::oauth2::Grant>,
}

/// What stays the same for every request to one target, built once.
#[derive(Debug)]
pub struct RequestTemplate {
    method: http::Method,
    /// The target's static headers, `User-Agent`, `Fanout-Route`, `Fanout-Target` and
    /// `Authorization`: copied into each request, never rebuilt.
    fixed: HeaderMap,
    signing: Option<SigningKey>,
    /// The names of the events' own headers, as the events spell them, made once: a
    /// name that is not a standard one costs an allocation each time it is made.
    names: Mutex<Vec<(Box<str>, HeaderName)>>,
}

/// How many event header names a template keeps made (what producers send is not
/// bounded; the names a route's events carry are few).
const NAMES_KEPT: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("headers: {0:?} is not a valid header")]
    Header(String),
}

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const FANOUT_ATTEMPT: HeaderName = HeaderName::from_static("fanout-attempt");
const FANOUT_ROUTE: HeaderName = HeaderName::from_static("fanout-route");
const FANOUT_TARGET: HeaderName = HeaderName::from_static("fanout-target");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

impl RequestTemplate {
    pub fn new(route: &str, target: &TargetConfig, auth: Auth) -> Result<Self, TemplateError> {
        let policy = &target.policy;
        let header_value =
            |s: &str| HeaderValue::from_str(s).map_err(|_| TemplateError::Header(s.to_string()));
        let mut fixed = HeaderMap::new();
        fixed.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("fanout/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in &policy.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| TemplateError::Header(name.clone()))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| TemplateError::Header(name.to_string()))?;
            fixed.insert(name, value);
        }
        fixed.insert(FANOUT_ROUTE, header_value(route)?);
        fixed.insert(FANOUT_TARGET, header_value(&target.name)?);
        if let Some((name, value)) = auth.header {
            fixed.insert(name, value);
        }
        if let Some(authorization) = auth.authorization {
            fixed.insert(AUTHORIZATION, authorization);
        }
        Ok(RequestTemplate {
            method: policy
                .method
                .as_str()
                .parse()
                .expect("POST, PUT and PATCH are valid methods"),
            fixed,
            signing: auth.signing,
            names: Mutex::new(Vec::new()),
        })
    }

    /// Builds the request of one attempt; `traceparent` is the attempt's own (see
    /// [`crate::trace::child_traceparent`]).
    pub fn build(&self, outgoing: Outgoing<'_>, traceparent: &str) -> http::Request<Full<Bytes>> {
        let event = outgoing.event;
        let computed = outgoing.transformed.map_or(&[][..], |t| t.headers());
        // A new map with room for the template's headers, the event's and Fanout's:
        // a clone of the template's map, grown to take the rest, allocated twice as
        // often and rehashed it on every request (docs/benchmarks.md).
        let mut headers =
            HeaderMap::with_capacity(self.fixed.len() + event.headers.len() + computed.len() + 7);
        for (name, value) in &self.fixed {
            headers.append(name.clone(), value.clone());
        }
        // The event's own headers (CloudEvents ce-*, X-Event-Type, ...) and those its
        // transform computed fill in what the target's static headers did not set;
        // Fanout's below override both.
        for (name, value) in event.headers.iter_shared() {
            if !is_forwarded(name) || outgoing.transformed.is_some_and(|t| t.computes(name)) {
                continue;
            }
            // The value shares the event's header block; checked as `from_str` would.
            let value = HeaderValue::from_maybe_shared(value);
            // A name's first value is the one sent.
            if let (Some(name), Ok(value)) = (self.header_name(name), value) {
                headers.entry(name).or_insert(value);
            }
        }
        for (name, value) in computed {
            if let Some(value) = value
                && is_forwarded(name.as_str())
            {
                headers.entry(name).or_insert_with(|| value.clone());
            }
        }
        let content_type = outgoing
            .content_type()
            .unwrap_or("application/octet-stream");
        insert(&mut headers, CONTENT_TYPE, content_type);
        insert(&mut headers, IDEMPOTENCY_KEY, &event.id);
        headers.insert(FANOUT_ATTEMPT, attempt_value(event.delivery));
        insert(&mut headers, TRACEPARENT, traceparent);
        let body = outgoing.body();
        if let Some(key) = &self.signing {
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            insert(&mut headers, WEBHOOK_ID, &event.id);
            headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
            let signature = key.sign(&event.id, timestamp, body);
            insert(&mut headers, WEBHOOK_SIGNATURE, &signature);
        }
        let mut request = http::Request::new(Full::new(body.clone()));
        *request.method_mut() = self.method.clone();
        *request.headers_mut() = headers;
        request
    }

    /// The header named `name` (as an event spells it), made once for the first
    /// [`NAMES_KEPT`] names; `None` when it is not a valid header name.
    fn header_name(&self, name: &str) -> Option<HeaderName> {
        // Poisoned only by a panic while a name was pushed: the list is still whole.
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, made)) = names.iter().find(|(spelled, _)| **spelled == *name) {
            return Some(made.clone());
        }
        let made = HeaderName::from_bytes(name.as_bytes()).ok()?;
        if names.len() < NAMES_KEPT {
            names.push((name.into(), made.clone()));
        }
        Some(made)
    }
}

/// `Fanout-Attempt`'s value: the usual counts without an allocation.
fn attempt_value(delivery: u32) -> HeaderValue {
    const FIRST: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match FIRST.get(delivery as usize) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(delivery),
    }
}

/// Whether an event header goes to the target. Not NATS' or Fanout's own, not the ones
/// Fanout sets itself (content type, auth, trace), and not the ones that describe the
/// connection or the framing of the message, which only the HTTP client may set.
pub fn is_forwarded(name: &str) -> bool {
    const SET_BY_FANOUT_OR_THE_CONNECTION: [&str; 12] = [
        "traceparent",
        "content-type",
        "authorization",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ];
    !is_internal_header(name)
        && !SET_BY_FANOUT_OR_THE_CONNECTION
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
}

/// Inserts a header whose value came from an event; values that are not valid header
/// text are dropped rather than failing the delivery.
fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::event::Event;
    use crate::event::Headers;
    use crate::expressions::{Selection, TargetExpressions};
    use crate::trace;

    fn target(headers: &[(&str, &str)]) -> TargetConfig {
        let yaml = format!(
            "name: api
consumer: api
deadLetterSubject: fanout.dlq.shop.orders.api
filter: {{}}
policy:
  url: http://127.0.0.1:1/hook
  method: PUT
  headers: {headers}
  timeout: 2s
  retry:
    maxAttempts: 3
    backoff: exponential
    jitter: full
    initialDelay: 100ms
    maxDelay: 1s
    retryAfterMax: 10s
    retryableStatusCodes: [\"5xx\"]
    nonRetryableStatusCodes: []
  maxInFlight: 4
",
            headers = serde_json::to_string(
                &headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>()
            )
            .unwrap()
        );
        serde_yaml_ng::from_str(&yaml).unwrap()
    }

    fn event(headers: &[(&str, &str)]) -> Event {
        Event {
            id: "evt-1".into(),
            subject: "fanout.in.shop.orders.event".into(),
            headers: Headers::from_pairs(headers.iter().copied()),
            body: Bytes::from_static(b"{}"),
            delivery: 2,
            stream_sequence: 9,
            stored_at: std::time::SystemTime::now(),
        }
    }

    fn build(target: &TargetConfig, auth: Auth, event: &Event) -> http::Request<Full<Bytes>> {
        build_outgoing(target, auth, Outgoing::new(event, None))
    }

    fn build_outgoing(
        target: &TargetConfig,
        auth: Auth,
        outgoing: Outgoing<'_>,
    ) -> http::Request<Full<Bytes>> {
        let event = outgoing.event;
        RequestTemplate::new("shop/orders", target, auth)
            .unwrap()
            .build(
                outgoing,
                &trace::child_traceparent(
                    event.header("traceparent"),
                    &mut StdRng::seed_from_u64(1),
                ),
            )
    }

    #[test]
    fn fanout_headers_and_the_method_are_set() {
        let request = build(
            &target(&[]),
            Auth::default(),
            &event(&[("Content-Type", "application/json")]),
        );
        let h = request.headers();
        assert_eq!(request.method(), http::Method::PUT);
        assert_eq!(h["idempotency-key"], "evt-1");
        assert_eq!(h["fanout-attempt"], "2");
        assert_eq!(h["fanout-route"], "shop/orders");
        assert_eq!(h["fanout-target"], "api");
        assert_eq!(h["content-type"], "application/json");
        assert!(h["user-agent"].to_str().unwrap().starts_with("fanout/"));
        assert_eq!(h["traceparent"].len(), 55);
    }

    #[test]
    fn event_headers_are_forwarded_but_static_headers_win() {
        let request = build(
            &target(&[("X-Tenant", "static")]),
            Auth::default(),
            &event(&[("ce-type", "order.placed"), ("X-Tenant", "from-event")]),
        );
        assert_eq!(request.headers()["ce-type"], "order.placed");
        assert_eq!(request.headers()["x-tenant"], "static");
        assert_eq!(request.headers().get_all("x-tenant").iter().count(), 1);
    }

    #[test]
    fn one_template_sends_each_events_own_headers_across_many_events() {
        let template = RequestTemplate::new("shop/orders", &target(&[]), Auth::default()).unwrap();
        // More distinct names than the template keeps made, each spelled two ways, and
        // a name and a value that are not valid in HTTP.
        for round in 0..3 {
            for i in 0..(NAMES_KEPT as u32 + 8) {
                let (upper, lower) = (format!("X-Field-{i}"), format!("x-field-{i}"));
                let value = format!("value {i} of round {round}");
                let mut e = event(&[
                    (upper.as_str(), value.as_str()),
                    (lower.as_str(), "a second value"),
                    ("Bad Name", "kept out"),
                    ("X-Bad-Value", "a\u{7f}b"),
                ]);
                e.delivery = i;
                let request = template.build(Outgoing::new(&e, None), "00-0-0-00");
                let h = request.headers();
                assert_eq!(h.get_all(lower.as_str()).iter().count(), 1, "{h:?}");
                assert_eq!(h[lower.as_str()], value.as_str());
                assert_eq!(h["fanout-attempt"], i.to_string().as_str());
                assert!(!h.contains_key("x-bad-value"), "{h:?}");
                assert_eq!(h.len(), 8, "{h:?}");
            }
        }
        assert_eq!(template.names.lock().unwrap().len(), NAMES_KEPT);
    }

    #[test]
    fn internal_connection_and_fanout_set_headers_of_the_event_are_not_forwarded() {
        let auth = Auth {
            authorization: Some(HeaderValue::from_static("Bearer real")),
            ..Default::default()
        };
        let request = build(
            &target(&[]),
            auth,
            &event(&[
                ("Nats-Msg-Id", "x"),
                ("Fanout-Attempt", "99"),
                ("Authorization", "Bearer forged"),
                ("Host", "elsewhere.example"),
                ("Content-Length", "5"),
                ("Transfer-Encoding", "chunked"),
                ("Connection", "close"),
                ("Idempotency-Key", "forged"),
            ]),
        );
        let h = request.headers();
        assert!(h.get("nats-msg-id").is_none());
        assert_eq!(h["fanout-attempt"], "2");
        assert_eq!(h["authorization"], "Bearer real");
        assert!(h.get("host").is_none(), "the client sets Host");
        assert!(h.get("content-length").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["idempotency-key"], "evt-1");
    }

    #[test]
    fn an_incoming_trace_is_continued_with_a_new_span() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let request = build(
            &target(&[]),
            Auth::default(),
            &event(&[("traceparent", parent)]),
        );
        let child = request.headers()["traceparent"].to_str().unwrap();
        assert!(
            child.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{child}"
        );
        assert_ne!(child, parent);
    }

    #[test]
    fn a_header_from_a_secret_is_sent_and_wins_over_the_events_own() {
        let mut value = HeaderValue::from_static("key-123");
        value.set_sensitive(true);
        let auth = Auth {
            header: Some((HeaderName::from_static("x-api-key"), value)),
            ..Default::default()
        };
        let request = build(
            &target(&[]),
            auth,
            &event(&[("X-Api-Key", "forged-by-the-producer")]),
        );
        assert_eq!(request.headers()["x-api-key"], "key-123");
        assert_eq!(request.headers().get_all("x-api-key").iter().count(), 1);
        assert!(request.headers()["x-api-key"].is_sensitive());
    }

    #[test]
    fn signed_requests_carry_the_standard_webhooks_headers() {
        let auth = Auth {
            signing: Some(SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()),
            ..Default::default()
        };
        let request = build(&target(&[]), auth, &event(&[]));
        let h = request.headers();
        assert_eq!(h["webhook-id"], "evt-1");
        assert!(h["webhook-signature"].to_str().unwrap().starts_with("v1,"));
        assert!(h.get("webhook-timestamp").is_some());
    }

    #[test]
    fn a_transformed_event_sends_its_computed_body_and_headers_in_place_of_its_own() {
        let mut config = target(&[("X-Static", "static")]);
        config.transform = Some(fanout_config::route::Transform {
            body: Some("{'order': event.data.id}".into()),
            headers: [
                ("X-Tenant", "'computed'"),
                ("X-Static", "'computed'"),
                ("X-Dropped", "null"),
                ("Traceparent", "'00-forged'"),
                ("Fanout-Attempt", "'99'"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        });
        let mut original = event(&[
            ("Content-Type", "text/plain"),
            ("X-Tenant", "from-event"),
            ("X-Dropped", "from-event"),
            ("ce-type", "order.placed"),
        ]);
        original.body = Bytes::from_static(br#"{"id": "o-1"}"#);
        let Selection::Send(Some(transformed)) = TargetExpressions::compile(&config)
            .unwrap()
            .select(&original, true)
        else {
            panic!("not transformed")
        };
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let auth = Auth {
            signing: Some(key.clone()),
            ..Default::default()
        };
        let request = build_outgoing(&config, auth, Outgoing::new(&original, Some(&transformed)));
        let h = request.headers();
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h.get_all("content-type").iter().count(), 1);
        assert_eq!(h["x-tenant"], "computed");
        assert_eq!(h.get_all("x-tenant").iter().count(), 1);
        assert_eq!(
            h["x-static"], "static",
            "the target's static headers still win"
        );
        assert!(
            h.get("x-dropped").is_none(),
            "left out, the event's own is not sent"
        );
        assert_eq!(h["ce-type"], "order.placed");
        assert_eq!(h["fanout-attempt"], "2");
        assert_ne!(h["traceparent"], "00-forged");
        let body = request.body().clone();
        let body = futures::executor::block_on(http_body_util::BodyExt::collect(body))
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], br#"{"order":"o-1"}"#);
        // The signature covers what was sent.
        let timestamp: i64 = h["webhook-timestamp"].to_str().unwrap().parse().unwrap();
        assert_eq!(
            h["webhook-signature"],
            key.sign("evt-1", timestamp, &body).as_str()
        );
        // The event itself is untouched, for its dead letter and history.
        assert_eq!(original.header("x-tenant"), Some("from-event"));
    }
}
