//! Step 3, provision: the route's JetStream streams and consumers, before any pod
//! that would read them. Settings change in place; what cannot (storage) is
//! reported rather than forced.

use fanout_config::error_chain;
use fanout_config::jetstream::RouteStreams;
use fanout_provision::{Applied, ProvisionError};

use crate::context::Context;
use crate::route_status::Problem;

/// JetStream did not take the route's plan; [`NotProvisioned::problem`] is its
/// `StreamReady` condition.
#[derive(Debug, thiserror::Error)]
#[error("provisioning the route's JetStream objects")]
pub(super) struct NotProvisioned {
    #[source]
    source: ProvisionError,
    /// Whether NATS was connected right after the failure: if not, that is the cause.
    nats_connected: bool,
}

impl NotProvisioned {
    pub(super) fn problem(&self) -> Problem {
        let reason = match &self.source {
            ProvisionError::ImmutableChange { .. } => "ImmutableStreamSetting",
            _ if !self.nats_connected => "NatsUnavailable",
            _ => "ProvisioningFailed",
        };
        Problem::new(reason, error_chain(&self.source))
    }
}

/// Creates or updates `streams`; what was created (for [`crate::route_status::recreated`]).
pub(super) async fn jetstream(
    ctx: &Context,
    streams: &RouteStreams,
) -> Result<Applied, NotProvisioned> {
    ctx.provisioner
        .apply(streams)
        .await
        .map_err(|source| NotProvisioned {
            source,
            nats_connected: ctx.nats.connection_state() == async_nats::connection::State::Connected,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(source: ProvisionError, nats_connected: bool) -> Problem {
        NotProvisioned {
            source,
            nats_connected,
        }
        .problem()
    }

    #[test]
    fn the_reason_says_whether_the_spec_nats_or_jetstream_is_at_fault() {
        let immutable = || ProvisionError::ImmutableChange {
            stream: "fanout_shop_orders".into(),
            field: "storage",
            current: "file".into(),
            wanted: "memory".into(),
        };
        let stream = || ProvisionError::Stream {
            stream: "fanout_shop_orders".into(),
            source: "timed out".into(),
        };
        assert_eq!(failed(immutable(), false).reason, "ImmutableStreamSetting");
        assert_eq!(failed(stream(), false).reason, "NatsUnavailable");
        let problem = failed(stream(), true);
        assert_eq!(problem.reason, "ProvisioningFailed");
        assert_eq!(
            problem.message,
            "stream fanout_shop_orders: creating or updating failed: timed out"
        );
    }
}
