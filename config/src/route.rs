//! What the dispatchers of one route run with, rendered into a ConfigMap by the
//! operator. Secret values are never part of it: credentials are files (mounted
//! Secrets) that the dispatcher reads at start.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::expiry::Expiry;
use crate::names::{RouteKey, subject_matches};
use crate::policy::DeliveryPolicy;

/// One route as its dispatchers see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteConfig {
    pub namespace: String,
    pub name: String,
    /// The route's JetStream stream.
    pub stream: String,
    /// The dead-letter stream, or `None` when dead-lettering is disabled.
    pub dead_letter_stream: Option<String>,
    /// The most dispatcher replicas that may run the route. A replica takes this share
    /// of a target's rate limit until it has counted the replicas running (from
    /// their health snapshots), then an equal share among those.
    pub replicas: u32,
    /// When the stream removes events (its maxAge), and so when undelivered ones are
    /// dead-lettered as expired; `None` when it keeps them for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<Expiry>,
    /// Where attempts are recorded; `None` when the route keeps no delivery history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<crate::history::HistoryConfig>,
    pub targets: Vec<TargetConfig>,
}

impl RouteConfig {
    pub fn key(&self) -> RouteKey {
        RouteKey::new(&self.namespace, &self.name)
    }
}

/// One target of a route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetConfig {
    /// The target's name within the route.
    pub name: String,
    /// Its durable consumer on the route's stream.
    pub consumer: String,
    /// Subject its undeliverable events are published to.
    pub dead_letter_subject: String,
    pub filter: Filter,
    /// What the target receives instead of the event's own body and headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Transform>,
    pub policy: DeliveryPolicy,
    #[serde(default)]
    pub credentials: Credentials,
    /// Per-key ordering; `None`: events go in parallel, in any order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<Ordering>,
}

/// Events of one key reach the target in the order they were stored; different keys
/// go in parallel. How: see the dispatcher's `ordering` module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ordering {
    pub key: OrderingKey,
    pub after_dead_letter: AfterDeadLetter,
    /// Events held in hand at most besides the requests in flight: those waiting
    /// behind the head of their key. JetStream's max_ack_pending is the target's
    /// maxInFlight plus this.
    pub max_waiting: u32,
    /// How long the dispatcher delivering the target keeps it without pulling before
    /// another takes over: longer than the consumer's ack wait plus a pull's expiry,
    /// so that every event the last one held is due for redelivery by then.
    pub takeover_after: crate::Duration,
}

/// Where an event's ordering key comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OrderingKey {
    /// This header's value (case-insensitive name).
    Header(String),
    /// The CloudEvents `partitionkey` extension: the `ce-partitionkey` header
    /// (binary mode), or the attribute of a structured-mode event's JSON.
    PartitionKey,
    /// What this CEL expression over the event yields (checked when rendered).
    Cel(String),
}

/// What happens to a key after its head event was dead-lettered: continue (its
/// next event goes on) or block (its later events wait until that dead letter is
/// redriven with `fanout dlq redrive` and delivered; they count against maxWaiting
/// meanwhile). Default: continue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AfterDeadLetter {
    /// The key's next event goes on.
    #[default]
    Continue,
    /// The key's later events wait until the dead letter is redriven and delivered.
    Block,
}

/// CEL expressions (checked when rendered) that compute what a target receives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transform {
    /// Yields the request body; absent: the event's body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Header name to the expression that yields its value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Which events a target receives: all given conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// Subject patterns; empty means every subject. Redriven events bypass this
    /// (they were addressed to this target explicitly).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Header name (case-insensitive) to required value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A CEL expression over the event (checked when rendered) that must yield true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cel: Option<String>,
}

impl Filter {
    /// Whether an event with this subject and headers is for the target, as far as
    /// the subjects and headers go (the CEL expression is the dispatcher's part).
    pub fn matches<'a>(&self, subject: &str, header: impl Fn(&str) -> Option<&'a str>) -> bool {
        let subject_ok =
            self.subjects.is_empty() || self.subjects.iter().any(|p| subject_matches(p, subject));
        subject_ok
            && self
                .headers
                .iter()
                .all(|(name, want)| header(name) == Some(want.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty() && self.headers.is_empty() && self.cel.is_none()
    }
}

/// Where the target's credentials are read from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// File holding a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// Files holding the basic auth username and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicCredentials>,
    /// A bearer token obtained with the OAuth 2.0 client credentials grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Credentials>,
    /// A header whose value is read from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderCredential>,
    /// Client certificate and CA bundle of the connection to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// File holding the Standard Webhooks signing secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BasicCredentials {
    pub username_file: PathBuf,
    pub password_file: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderCredential {
    /// The header's name, checked when rendered.
    pub name: String,
    pub value_file: PathBuf,
}

/// PEM files for the TLS connection to a target (or a token endpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsFiles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateFiles>,
    /// CAs that replace the platform's trust store for this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateFiles {
    pub certificate_file: PathBuf,
    pub private_key_file: PathBuf,
}

/// The client credentials grant (RFC 6749 section 4.4) against `token_url`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Credentials {
    pub token_url: String,
    pub client_id_file: PathBuf,
    pub client_secret_file: PathBuf,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default)]
    pub client_authentication: ClientAuthentication,
    /// CAs that replace the platform's trust store for the token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_file: Option<PathBuf>,
}

/// How the client authenticates to the token endpoint (RFC 6749 section 2.3.1):
/// basic (HTTP Basic, which every authorization server supports) or post (client_id
/// and client_secret in the form body). Default: basic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ClientAuthentication {
    /// HTTP Basic with the client id and secret (client_secret_basic), which every
    /// authorization server supports.
    #[default]
    Basic,
    /// client_id and client_secret in the form body (client_secret_post).
    Post,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        }
    }

    #[test]
    fn an_empty_filter_matches_everything() {
        assert!(Filter::default().matches("a.b", headers(&[])));
    }

    #[test]
    fn subject_patterns_must_match_one_of_them() {
        let f = Filter {
            subjects: vec!["shop.orders.*".into(), "legacy.>".into()],
            ..Default::default()
        };
        assert!(f.matches("shop.orders.placed", headers(&[])));
        assert!(f.matches("legacy.x.y", headers(&[])));
        assert!(!f.matches("shop.users.created", headers(&[])));
    }

    #[test]
    fn header_conditions_must_all_hold() {
        let f = Filter {
            headers: [("X-Event-Type".to_string(), "order.placed".to_string())].into(),
            ..Default::default()
        };
        assert!(f.matches("s", headers(&[("x-event-type", "order.placed")])));
        assert!(!f.matches("s", headers(&[("X-Event-Type", "order.cancelled")])));
        assert!(!f.matches("s", headers(&[])));
    }
}
