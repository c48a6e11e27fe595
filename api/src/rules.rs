//! Messages of the CRDs' CEL rules that rendering also reports ([`crate::settings`],
//! for the operator's status), in one place so that both say exactly the same. The
//! rules themselves are next to the fields in [`crate::route`], [`crate::target`] and
//! [`crate::policy`]; `fanout standalone` evaluates them from the generated CRDs.

/// On `spec.source`. JetStream refuses a stream that remembers message ids for longer
/// than it keeps the messages ("duplicates window can not be larger then max age").
pub const DUPLICATE_WINDOW_WITHIN_MAX_AGE: &str = "duplicateWindow (default 2m) must not be longer than retention.maxAge (default 72h; 0s means no age limit): JetStream refuses a stream whose duplicate window exceeds its maximum age";

/// On `spec.source.duplicateWindow`.
pub const DUPLICATE_WINDOW_MINIMUM: &str = "duplicateWindow must be at least 100ms, JetStream's minimum (deduplication cannot be turned off)";

/// On `maxAge` of `spec.source.retention` and `spec.deadLetter.retention`.
pub const MAX_AGE_MINIMUM: &str =
    "maxAge must be 0s (no age limit) or at least 100ms, JetStream's minimum";

/// On `timeout` of an ApiTarget and of a route target's overrides.
pub const TIMEOUT_POSITIVE: &str = "timeout must be greater than 0s";

/// On `circuitBreaker.window`.
pub const WINDOW_POSITIVE: &str = "window must be greater than 0s";

/// On `rateLimit.requestsPerSecond`. Below the minimum, a dispatcher's share of the
/// rate (divided among up to 64 replicas) would need a wait between requests longer
/// than its rate limiter can hold.
pub const REQUESTS_PER_SECOND_RANGE: &str =
    "requestsPerSecond must be at least 0.001 and at most 1000000";

/// On `spec.source.subjects` and `spec.targets[].filter.subjects`. JetStream refuses
/// repeated (and overlapping) subjects in a stream and in a consumer's filters; the
/// overlaps cost too much to find in CEL, so rendering reports them.
pub const SUBJECTS_UNIQUE: &str = "each subject may be listed only once";

/// On `spec`, when a route is updated: JetStream cannot change a stream's storage in
/// place.
pub const STORAGE_IMMUTABLE: &str = "source.storage cannot be changed once the route exists (JetStream cannot change a stream's storage in place); create a new route and move producers over";

/// On `spec.auth`: each of these sets the Authorization header.
pub const ONE_AUTHORIZATION: &str = "bearer, basic, oauth2 and a header named Authorization each set the Authorization header: choose at most one";

/// On `spec.targets[].transform`.
pub const TRANSFORM_NOT_EMPTY: &str = "transform needs a body, headers or both";

/// On `spec.targets[].transform.headers`.
pub const TRANSFORM_HEADER_TOKEN: &str =
    "header names must be HTTP tokens of at most 128 characters";

/// On `spec.targets[].transform.headers`: a header computed from the event must not
/// replace a credential, Fanout's own headers or the connection's framing.
pub const TRANSFORM_HEADER_RESERVED: &str = "headers set by Fanout itself or by the connection (Authorization, Idempotency-Key, traceparent, tracestate, Host, Content-Length, Transfer-Encoding, Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade, webhook-*, Fanout-*) cannot be computed";

/// On `spec.auth.header.name`.
pub const AUTH_HEADER_TOKEN: &str = "name must be an HTTP token of at most 128 characters";

/// On `spec.auth.header.name`.
pub const AUTH_HEADER_RESERVED: &str = "headers set by Fanout itself (Idempotency-Key, traceparent, tracestate, Content-Type, Host, Content-Length, webhook-*, Fanout-*) cannot carry a credential";

/// On `spec`, for `auth.header.name`: one header, one source.
pub const AUTH_HEADER_IN_HEADERS: &str =
    "auth.header.name is also set in spec.headers; set the header in one place";

/// On `spec`, for `auth.tls`.
pub const TLS_NEEDS_HTTPS: &str = "auth.tls (client certificate, CA bundle) needs an https:// url";

/// On `spec.auth.tls`.
pub const TLS_NOT_EMPTY: &str = "tls needs a clientCertificate, a caBundle or both";

/// On `spec.auth.oauth2.tokenUrl`: the client secret travels to it.
pub const TOKEN_URL: &str = "tokenUrl must be an absolute https:// URL (http:// only on a loopback address: 127.0.0.0/8, ::1 or localhost), since the client secret is sent to it";

/// On `spec.auth.oauth2.scopes` (RFC 6749 section 3.3).
pub const SCOPE_CHARACTERS: &str =
    "each scope must be printable ASCII without spaces, '\"' or '\\'";

/// On `concurrency.latencyTolerance`.
pub const LATENCY_TOLERANCE_RANGE: &str = "latencyTolerance must be at least 1.1 and at most 100";

/// On an ApiTarget's `spec` and a route target's `overrides`, for
/// `concurrency.minInFlight`.
pub const MIN_IN_FLIGHT_WITHIN_MAX: &str =
    "concurrency.minInFlight must be at most maxInFlight (default 64)";

/// On `spec.targets[].ordering.key`.
pub const ORDERING_KEY_ONE_SOURCE: &str =
    "key needs exactly one source: header, partitionKey: true, or cel";

/// On `spec.targets[].ordering.key.header`.
pub const ORDERING_KEY_HEADER: &str = "header must be an HTTP header name of at most 128 characters, and not one that carries credentials (Authorization, Proxy-Authorization, Cookie): the gateway stores the header with each event";

#[cfg(test)]
mod tests {
    use fanout_config::jetstream::MIN_STREAM_WINDOW;
    use fanout_config::policy::defaults;

    use super::*;

    #[test]
    fn messages_state_the_values_the_code_uses() {
        let default_window = format!("duplicateWindow (default {})", defaults::DUPLICATE_WINDOW);
        assert!(DUPLICATE_WINDOW_WITHIN_MAX_AGE.contains(&default_window));
        let default_age = format!("maxAge (default {};", defaults::STREAM_MAX_AGE);
        assert!(DUPLICATE_WINDOW_WITHIN_MAX_AGE.contains(&default_age));
        let minimum = format!("at least {MIN_STREAM_WINDOW}");
        assert!(DUPLICATE_WINDOW_MINIMUM.contains(&minimum));
        assert!(MAX_AGE_MINIMUM.contains(&minimum));
    }

    #[test]
    fn rules_use_the_values_the_code_uses() {
        let crds = serde_json::to_string(&crate::crd::all()).unwrap();
        for value in [
            defaults::DUPLICATE_WINDOW,
            defaults::STREAM_MAX_AGE,
            MIN_STREAM_WINDOW,
        ] {
            assert!(
                crds.contains(&format!("duration('{value}')")),
                "no rule compares with {value}"
            );
        }
    }
}
