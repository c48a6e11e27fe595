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
use crate::http::outbound::{self, Outbound};
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

    /// The request of one attempt; `traceparent` is the attempt's own (see
    /// [`crate::trace::child_traceparent`]). Signed now, when the target signs.
    pub fn attempt<'a>(&'a self, outgoing: Outgoing<'a>, traceparent: &'a str) -> Attempt<'a> {
        let event = outgoing.event;
        let body = outgoing.body();
        let signature = self.signing.as_ref().map(|key| {
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            Signature {
                timestamp,
                value: key.sign(&event.id, timestamp, body),
            }
        });
        Attempt {
            template: self,
            outgoing,
            content_type: outgoing
                .content_type()
                .unwrap_or("application/octet-stream"),
            traceparent,
            signature,
            authorization: None,
        }
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

/// One attempt's request: the target's template, the event (or what its transform
/// made of it) and Fanout's own headers. Over HTTP/1.1 its headers are written
/// straight onto the connection, with no header map in between (building and
/// dropping one cost a delivery 9% of its CPU: docs/benchmarks.md); over HTTP/2 it
/// becomes an `http::Request`. Both carry the same headers:
/// - the template's (static headers, `User-Agent`, `Fanout-Route`, `Fanout-Target`,
///   the target's credentials);
/// - then each of the event's own forwarded headers and those its transform computed,
///   the first value of a name the template does not set;
/// - and Fanout's, which replace any of the same name: `Content-Type`,
///   `Idempotency-Key`, `Fanout-Attempt`, `traceparent`, the signature's, and an
///   access token's `Authorization`.
pub struct Attempt<'a> {
    template: &'a RequestTemplate,
    outgoing: Outgoing<'a>,
    content_type: &'a str,
    traceparent: &'a str,
    signature: Option<Signature>,
    authorization: Option<HeaderValue>,
}

/// A Standard Webhooks signature, made once for the attempt.
struct Signature {
    timestamp: i64,
    value: String,
}

/// Past this many headers of its own, an event's request is written from a header
/// map: telling repeated names apart then costs a lookup each, not a scan.
const HEADERS_SCANNED: usize = 16;

impl<'a> Attempt<'a> {
    /// With an access token's `Authorization` in place of any the template has.
    pub fn authorized(mut self, authorization: HeaderValue) -> Attempt<'a> {
        self.authorization = Some(authorization);
        self
    }

    /// Fanout's own headers that are sent, each with its value (a value that is not
    /// a valid header value is left out, and the header of that name is then
    /// whatever else sets it).
    fn own(&self, mut each: impl FnMut(HeaderName, OwnValue<'_>)) {
        let event = self.outgoing.event;
        each(CONTENT_TYPE, OwnValue::Text(self.content_type));
        each(IDEMPOTENCY_KEY, OwnValue::Text(&event.id));
        each(
            FANOUT_ATTEMPT,
            OwnValue::Header(attempt_value(event.delivery)),
        );
        each(TRACEPARENT, OwnValue::Text(self.traceparent));
        if let Some(signature) = &self.signature {
            each(WEBHOOK_ID, OwnValue::Text(&event.id));
            each(
                WEBHOOK_TIMESTAMP,
                OwnValue::Header(HeaderValue::from(signature.timestamp)),
            );
            each(WEBHOOK_SIGNATURE, OwnValue::Text(&signature.value));
        }
        if let Some(authorization) = &self.authorization {
            each(AUTHORIZATION, OwnValue::Header(authorization.clone()));
        }
    }

    /// Whether Fanout sends a header of this name itself (what [`Attempt::own`]
    /// gives, without making the values).
    fn sets_own(&self, name: &HeaderName) -> bool {
        let valid = |text: &str| is_header_value(text.as_bytes());
        let id = &self.outgoing.event.id;
        if name == CONTENT_TYPE {
            valid(self.content_type)
        } else if name == IDEMPOTENCY_KEY {
            valid(id)
        } else if name == FANOUT_ATTEMPT {
            true
        } else if name == TRACEPARENT {
            valid(self.traceparent)
        } else if name == AUTHORIZATION {
            self.authorization.is_some()
        } else if let Some(signature) = &self.signature {
            (name == WEBHOOK_ID && valid(id))
                || name == WEBHOOK_TIMESTAMP
                || (name == WEBHOOK_SIGNATURE && valid(&signature.value))
        } else {
            false
        }
    }

    /// The headers as a map, in the order described above.
    fn header_map(&self) -> HeaderMap {
        let template = self.template;
        let event = self.outgoing.event;
        let computed = self.computed();
        let mut headers = HeaderMap::with_capacity(
            template.fixed.len() + event.headers.len() + computed.len() + 7,
        );
        for (name, value) in &template.fixed {
            headers.append(name.clone(), value.clone());
        }
        self.event_headers(|name, value| {
            headers.entry(name).or_insert(value);
        });
        for (name, value) in computed {
            if let Some(value) = value
                && is_forwarded(name.as_str())
            {
                headers.entry(name).or_insert_with(|| value.clone());
            }
        }
        self.own(|name, value| {
            if let Some(value) = value.into_header() {
                headers.insert(name, value);
            }
        });
        headers
    }

    /// The event's own forwarded headers that are valid in HTTP, in their order (a
    /// name may come more than once).
    fn event_headers(&self, mut each: impl FnMut(HeaderName, HeaderValue)) {
        let transformed = self.outgoing.transformed;
        for (name, value) in self.outgoing.event.headers.iter_shared() {
            if !is_forwarded(name) || transformed.is_some_and(|t| t.computes(name)) {
                continue;
            }
            // The value shares the event's header block; checked as `from_str` would.
            let value = HeaderValue::from_maybe_shared(value);
            if let (Some(name), Ok(value)) = (self.template.header_name(name), value) {
                each(name, value);
            }
        }
    }

    fn computed(&self) -> &'a [(HeaderName, Option<HeaderValue>)] {
        self.outgoing.transformed.map_or(&[][..], |t| t.headers())
    }
}

impl Outbound for Attempt<'_> {
    fn method(&self) -> &http::Method {
        &self.template.method
    }

    fn body(&self) -> Bytes {
        self.outgoing.body().clone()
    }

    fn write_headers(&self, out: &mut Vec<u8>) {
        let computed = self.computed();
        if self.outgoing.event.headers.len() + computed.len() > HEADERS_SCANNED {
            outbound::write_map(out, &self.header_map());
            return;
        }
        let fixed = &self.template.fixed;
        for (name, value) in fixed {
            if !self.sets_own(name) {
                outbound::write_header(out, name, value);
            }
        }
        // Names already written from the event or its transform: its first value wins.
        let mut written: Vec<HeaderName> = Vec::new();
        let mut fill_in = |out: &mut Vec<u8>, name: HeaderName, value: &HeaderValue| {
            if fixed.contains_key(&name) || written.contains(&name) || self.sets_own(&name) {
                return;
            }
            outbound::write_header(out, &name, value);
            written.push(name);
        };
        self.event_headers(|name, value| fill_in(out, name, &value));
        for (name, value) in computed {
            if let Some(value) = value
                && is_forwarded(name.as_str())
            {
                fill_in(out, name.clone(), value);
            }
        }
        self.own(|name, value| match value {
            OwnValue::Text(text) if is_header_value(text.as_bytes()) => {
                outbound::write_line(out, &name, text.as_bytes());
            }
            OwnValue::Text(_) => {}
            OwnValue::Header(value) => outbound::write_header(out, &name, &value),
        });
    }

    fn to_request(&self) -> http::Request<Full<Bytes>> {
        let mut request = http::Request::new(Full::new(self.body()));
        *request.method_mut() = self.template.method.clone();
        *request.headers_mut() = self.header_map();
        request
    }
}

/// The value of one of Fanout's own headers: text to check, or a header value.
enum OwnValue<'a> {
    Text(&'a str),
    Header(HeaderValue),
}

impl OwnValue<'_> {
    fn into_header(self) -> Option<HeaderValue> {
        match self {
            OwnValue::Text(text) => HeaderValue::from_str(text).ok(),
            OwnValue::Header(value) => Some(value),
        }
    }
}

/// Whether `bytes` make a valid header value, as `HeaderValue::from_bytes` decides
/// (visible ASCII, spaces, tabs and bytes past ASCII; no other control bytes).
fn is_header_value(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
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
        let template = RequestTemplate::new("shop/orders", target, auth).unwrap();
        let traceparent =
            trace::child_traceparent(event.header("traceparent"), &mut StdRng::seed_from_u64(1));
        let attempt = template.attempt(outgoing, &traceparent);
        let request = attempt.to_request();
        assert_written_as_built(&attempt, request.headers());
        request
    }

    /// What the attempt writes onto an HTTP/1.1 connection carries exactly the
    /// headers of the request it builds for HTTP/2.
    fn assert_written_as_built(attempt: &Attempt<'_>, built: &HeaderMap) {
        let mut lines = Vec::new();
        attempt.write_headers(&mut lines);
        let text = String::from_utf8(lines).unwrap();
        let mut written: Vec<(String, String)> = text
            .split_terminator("\r\n")
            .map(|line| {
                let (name, value) = line.split_once(": ").unwrap();
                (name.to_string(), value.to_string())
            })
            .collect();
        let mut expected: Vec<(String, String)> = built
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8(value.as_bytes().to_vec()).unwrap();
                (name.as_str().to_string(), value)
            })
            .collect();
        written.sort();
        expected.sort();
        assert_eq!(written, expected);
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
                let attempt = template.attempt(Outgoing::new(&e, None), "00-0-0-00");
                let request = attempt.to_request();
                assert_written_as_built(&attempt, request.headers());
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
    fn written_and_built_requests_carry_the_same_headers_whatever_the_event_sends() {
        // Names that collide with the template's, with Fanout's own, with each other
        // in other spellings, and that are not forwarded; values that are not valid.
        const NAMES: [&str; 12] = [
            "X-Tenant",
            "x-tenant",
            "ce-type",
            "Idempotency-Key",
            "Fanout-Attempt",
            "traceparent",
            "Content-Type",
            "Webhook-Id",
            "Authorization",
            "Host",
            "Nats-Msg-Id",
            "X-Other",
        ];
        const VALUES: [&str; 4] = ["a", "b c", "", "bad\u{1}value"];
        let config = target(&[("X-Tenant", "static"), ("Idempotency-Key", "static")]);
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let mut rng = StdRng::seed_from_u64(21);
        for case in 0..400 {
            let signing = case % 2 == 0;
            let auth = Auth {
                authorization: Some(HeaderValue::from_static("Bearer static")),
                signing: signing.then(|| key.clone()),
                ..Default::default()
            };
            let template = RequestTemplate::new("shop/orders", &config, auth).unwrap();
            // Up to 20 headers: past 16 the written request comes from a map.
            let count = rand::Rng::random_range(&mut rng, 0..=20);
            let pairs: Vec<(&str, &str)> = (0..count)
                .map(|_| {
                    let name = NAMES[rand::Rng::random_range(&mut rng, 0..NAMES.len())];
                    let value = VALUES[rand::Rng::random_range(&mut rng, 0..VALUES.len())];
                    (name, value)
                })
                .collect();
            let mut e = event(&pairs);
            if case % 5 == 0 {
                e.id = "id\u{1}with a control byte".into();
            }
            e.delivery = case;
            let traceparent = if case % 7 == 0 {
                "bad\u{7f}"
            } else {
                "00-1-2-01"
            };
            let attempt = template.attempt(Outgoing::new(&e, None), traceparent);
            let attempt = if case % 3 == 0 {
                attempt.authorized(HeaderValue::from_static("Bearer token"))
            } else {
                attempt
            };
            let request = attempt.to_request();
            assert_written_as_built(&attempt, request.headers());
            assert_eq!(
                request.headers()["fanout-attempt"],
                case.to_string().as_str()
            );
        }
    }

    #[test]
    fn a_header_value_is_valid_as_http_decides() {
        for b in 0..=u8::MAX {
            let bytes = [b'a', b, b'z'];
            assert_eq!(
                is_header_value(&bytes),
                HeaderValue::from_bytes(&bytes).is_ok(),
                "byte {b:#04x}"
            );
        }
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
