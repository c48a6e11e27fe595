//! The token request of the client credentials grant (RFC 6749 section 4.4) and
//! what its answer means (section 5).

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use url::form_urlencoded;

use super::Grant;
use super::cache::Token;
use crate::http::{ClientError, ClientSettings, HttpClient, SendError};

/// Bytes of a token response read; real ones are far smaller.
const BODY_LIMIT: usize = 64 * 1024;
/// Characters of an error answer kept for the message.
const ERROR_TEXT_LIMIT: usize = 300;

/// Why no token came back. Its text goes to the target's lastError: it names the
/// token endpoint and never holds a credential.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token endpoint {url}")]
    Send {
        url: String,
        #[source]
        source: SendError,
    },
    #[error("token endpoint {url} answered HTTP {status}{detail}")]
    Refused {
        url: String,
        status: u16,
        /// `: <error>: <error_description>` or the start of the body.
        detail: String,
    },
    #[error("token endpoint {url}: the answer is not a token response")]
    Malformed {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("token endpoint {url}: token_type {token_type:?} is not supported (only Bearer)")]
    TokenType { url: String, token_type: String },
    #[error("token endpoint {url}: the access token cannot be sent in an HTTP header")]
    TokenValue { url: String },
}

/// Where tokens come from, with the request every fetch sends.
pub struct TokenEndpoint {
    url: String,
    client: HttpClient,
    /// The form body: grant type, scope, audience (and the client's credentials when
    /// they go in the body).
    form: Bytes,
    /// HTTP Basic with the client's credentials, when they go in the header.
    authorization: Option<HeaderValue>,
}

impl TokenEndpoint {
    /// Must be called within the Tokio runtime (see [`HttpClient::new`]).
    pub fn new(
        grant: &Grant,
        target: &ClientSettings,
        shared_tls: &mut Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<TokenEndpoint, ClientError> {
        let settings = ClientSettings {
            timeout: target.timeout,
            max_idle: 1,
            egress: target.egress.clone(),
        };
        let client = match &grant.tls {
            Some(own) => HttpClient::new(&grant.token_url, &settings, &mut Some(own.clone()))?,
            None => HttpClient::new(&grant.token_url, &settings, shared_tls)?,
        };
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if !grant.scopes.is_empty() {
            form.append_pair("scope", &grant.scopes.join(" "));
        }
        if let Some(audience) = &grant.audience {
            form.append_pair("audience", audience);
        }
        let authorization = match grant.client_authentication {
            fanout_config::route::ClientAuthentication::Basic => {
                // Section 2.3.1: each part form-encoded, then joined and base64-encoded.
                let encode =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!(
                    "{}:{}",
                    encode(&grant.client_id),
                    encode(grant.client_secret.expose())
                );
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
                    .expect("base64 is valid header text");
                value.set_sensitive(true);
                Some(value)
            }
            fanout_config::route::ClientAuthentication::Post => {
                form.append_pair("client_id", &grant.client_id);
                form.append_pair("client_secret", grant.client_secret.expose());
                None
            }
        };
        Ok(TokenEndpoint {
            url: grant.token_url.clone(),
            client,
            form: Bytes::from(form.finish()),
            authorization,
        })
    }

    /// Asks for a new token.
    pub async fn fetch(&self) -> Result<Token, TokenError> {
        let mut request = Request::new(Full::new(self.form.clone()));
        *request.method_mut() = http::Method::POST;
        let headers = request.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("fanout/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(authorization) = &self.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        let response = self
            .client
            .send(request, |_| BODY_LIMIT)
            .await
            .map_err(|source| TokenError::Send {
                url: self.url.clone(),
                source,
            })?;
        let body = response.body.map_err(|source| TokenError::Send {
            url: self.url.clone(),
            source,
        })?;
        parse(&self.url, response.status, &body)
    }
}

#[derive(Deserialize)]
struct Issued {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<Seconds>,
}

/// `expires_in` is a number, but some servers send it as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Seconds {
    Number(f64),
    Text(String),
}

impl Seconds {
    fn duration(&self) -> Option<Duration> {
        let seconds = match self {
            Seconds::Number(n) => *n,
            Seconds::Text(t) => t.trim().parse().ok()?,
        };
        Duration::try_from_secs_f64(seconds).ok()
    }
}

#[derive(Deserialize)]
struct Refusal {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// What the token endpoint's answer means.
fn parse(url: &str, status: StatusCode, body: &[u8]) -> Result<Token, TokenError> {
    if !status.is_success() {
        let detail = match serde_json::from_slice::<Refusal>(body) {
            Ok(r) => match r.error_description {
                Some(description) => format!(": {}: {description}", r.error),
                None => format!(": {}", r.error),
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                }
            }
        };
        return Err(TokenError::Refused {
            url: url.to_string(),
            status: status.as_u16(),
            detail: detail.chars().take(ERROR_TEXT_LIMIT).collect(),
        });
    }
    let issued: Issued = serde_json::from_slice(body).map_err(|source| TokenError::Malformed {
        url: url.to_string(),
        source,
    })?;
    // Section 5.1 makes token_type required; a server that leaves it out issues
    // bearer tokens in practice.
    if let Some(kind) = &issued.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(TokenError::TokenType {
            url: url.to_string(),
            token_type: kind.clone(),
        });
    }
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", issued.access_token))
        .map_err(|_| TokenError::TokenValue {
            url: url.to_string(),
        })?;
    authorization.set_sensitive(true);
    Ok(Token {
        authorization,
        lifetime: issued.expires_in.as_ref().and_then(Seconds::duration),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://idp.example.com/token";

    #[test]
    fn a_token_response_gives_the_authorization_and_lifetime() {
        let token = parse(
            URL,
            StatusCode::OK,
            br#"{"access_token":"abc","token_type":"Bearer","expires_in":3600}"#,
        )
        .unwrap();
        assert_eq!(token.authorization, "Bearer abc");
        assert!(token.authorization.is_sensitive());
        assert_eq!(token.lifetime, Some(Duration::from_secs(3600)));
        let token = parse(
            URL,
            StatusCode::OK,
            br#"{"access_token":"abc","token_type":"bearer","expires_in":"60"}"#,
        )
        .unwrap();
        assert_eq!(token.lifetime, Some(Duration::from_secs(60)));
        let token = parse(URL, StatusCode::OK, br#"{"access_token":"abc"}"#).unwrap();
        assert_eq!(token.lifetime, None);
    }

    #[test]
    fn refusals_name_the_endpoint_and_the_oauth_error() {
        let err = parse(
            URL,
            StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid_client","error_description":"unknown client"}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "token endpoint https://idp.example.com/token answered HTTP 401: invalid_client: unknown client"
        );
        let err = parse(URL, StatusCode::SERVICE_UNAVAILABLE, b"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "token endpoint https://idp.example.com/token answered HTTP 503"
        );
    }

    #[test]
    fn other_token_types_and_unusable_tokens_are_refused() {
        let err = parse(
            URL,
            StatusCode::OK,
            br#"{"access_token":"abc","token_type":"mac"}"#,
        )
        .unwrap_err();
        assert!(matches!(err, TokenError::TokenType { .. }), "{err}");
        let err = parse(URL, StatusCode::OK, b"{\"access_token\":\"a\\nb\"}").unwrap_err();
        assert!(matches!(err, TokenError::TokenValue { .. }), "{err}");
        let err = parse(URL, StatusCode::OK, b"<html>").unwrap_err();
        assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
    }
}
