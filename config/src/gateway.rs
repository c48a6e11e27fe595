//! What the gateway serves: one entry per route, rendered by the operator into the
//! gateway's ConfigMap. Token values are files (mounted Secrets), never inline.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// All routes the gateway accepts events for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfig {
    pub routes: Vec<GatewayRoute>,
}

/// One route as the gateway sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRoute {
    pub namespace: String,
    pub name: String,
    /// The route's stream (the gateway checks PubAcks come from it).
    pub stream: String,
    /// Events are published to `<ingestPrefix>.<event type or "event">`.
    pub ingest_prefix: String,
    /// Files each holding one accepted bearer token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_files: Vec<PathBuf>,
    /// Accept requests without a token.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Some of the route's tokens are not there yet (their Secret is missing, so
    /// the operator lists only the others): a request that no listed token accepts
    /// may carry one of those, and is answered 503 with Retry-After, not 403.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tokens_pending: bool,
    /// Request headers stored with this route's events besides the gateway's own
    /// allow-list: every header a target filter of the route matches on, or the
    /// filter would never see it on events that came over HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_headers: Vec<String>,
}
