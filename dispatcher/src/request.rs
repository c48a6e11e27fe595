//! The HTTP request for one attempt: the event's body and content type, the target's
//! method, URL and static headers, Fanout's own headers, auth and signature.

use std::time::SystemTime;

use fanout_config::TargetConfig;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::event::{Event, is_internal_header};
use crate::signing::SigningKey;
use crate::trace;

/// Credentials read from their files at start.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// The full `Authorization` value (Bearer or Basic), marked sensitive.
    pub authorization: Option<HeaderValue>,
    pub signing: Option<SigningKey>,
}

/// What stays the same for every request to one target, built once.
#[derive(Debug)]
pub struct RequestTemplate {
    method: reqwest::Method,
    url: reqwest::Url,
    static_headers: HeaderMap,
    auth: Auth,
    route: HeaderValue,
    target: HeaderValue,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("url {0:?} is not a valid URL")]
    Url(String, #[source] url::ParseError),
    #[error("headers: {0:?} is not a valid header")]
    Header(String),
}

impl RequestTemplate {
    pub fn new(route: &str, target: &TargetConfig, auth: Auth) -> Result<Self, TemplateError> {
        let policy = &target.policy;
        let url = reqwest::Url::parse(&policy.url)
            .map_err(|e| TemplateError::Url(policy.url.clone(), e))?;
        let mut static_headers = HeaderMap::new();
        for (name, value) in &policy.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| TemplateError::Header(name.clone()))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| TemplateError::Header(name.to_string()))?;
            static_headers.insert(name, value);
        }
        let header_value =
            |s: &str| HeaderValue::from_str(s).map_err(|_| TemplateError::Header(s.to_string()));
        Ok(RequestTemplate {
            method: policy
                .method
                .as_str()
                .parse()
                .expect("POST, PUT and PATCH are valid methods"),
            url,
            static_headers,
            auth,
            route: header_value(route)?,
            target: header_value(&target.name)?,
        })
    }

    /// Builds the request of one attempt.
    pub fn build(
        &self,
        client: &reqwest::Client,
        event: &Event,
        rng: &mut impl rand::Rng,
    ) -> reqwest::RequestBuilder {
        let mut headers =
            HeaderMap::with_capacity(self.static_headers.len() + event.headers.len() + 8);
        // The event's own headers first (CloudEvents ce-*, X-Event-Type, ...), so that
        // the target's static headers and Fanout's headers take precedence.
        for (name, values) in event.headers.iter() {
            let name: &str = name.as_ref();
            if is_internal_header(name)
                || name.eq_ignore_ascii_case("traceparent")
                || name.eq_ignore_ascii_case("content-type")
                || name.eq_ignore_ascii_case("authorization")
            {
                continue;
            }
            let name = HeaderName::from_bytes(name.as_bytes());
            let value = values.first().map(|v| HeaderValue::from_str(v.as_str()));
            if let (Ok(name), Some(Ok(value))) = (name, value) {
                headers.insert(name, value);
            }
        }
        for (name, value) in &self.static_headers {
            headers.insert(name.clone(), value.clone());
        }
        let content_type = event
            .header("Content-Type")
            .unwrap_or("application/octet-stream");
        insert(&mut headers, CONTENT_TYPE, content_type);
        insert(
            &mut headers,
            HeaderName::from_static("idempotency-key"),
            &event.id,
        );
        headers.insert(
            HeaderName::from_static("fanout-attempt"),
            HeaderValue::from(event.delivery),
        );
        headers.insert(HeaderName::from_static("fanout-route"), self.route.clone());
        headers.insert(
            HeaderName::from_static("fanout-target"),
            self.target.clone(),
        );
        let traceparent = trace::child_traceparent(event.header("traceparent"), rng);
        insert(
            &mut headers,
            HeaderName::from_static("traceparent"),
            &traceparent,
        );
        if let Some(authorization) = &self.auth.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        if let Some(key) = &self.auth.signing {
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            insert(
                &mut headers,
                HeaderName::from_static("webhook-id"),
                &event.id,
            );
            headers.insert(
                HeaderName::from_static("webhook-timestamp"),
                HeaderValue::from(timestamp),
            );
            let signature = key.sign(&event.id, timestamp, &event.body);
            insert(
                &mut headers,
                HeaderName::from_static("webhook-signature"),
                &signature,
            );
        }
        client
            .request(self.method.clone(), self.url.clone())
            .headers(headers)
            .body(event.body.clone())
    }
}

/// Inserts a header whose value came from an event; values that are not valid header
/// text are dropped rather than failing the delivery.
fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
