//! Status types shared by both resources.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Re-exported so that users of this crate write conditions with the standard type.
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// State of a target's circuit breaker as reported by the dispatchers.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum CircuitState {
    /// Requests flow normally.
    #[default]
    Closed,
    /// A few probe requests decide whether the target has recovered.
    HalfOpen,
    /// The target is failing; its events wait in the stream.
    Open,
}

impl CircuitState {
    /// The worse of two states (Open > HalfOpen > Closed), for summaries over routes
    /// and replicas.
    pub fn worst(self, other: CircuitState) -> CircuitState {
        self.max(other)
    }
}

impl std::fmt::Display for CircuitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CircuitState::Closed => "Closed",
            CircuitState::HalfOpen => "HalfOpen",
            CircuitState::Open => "Open",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::CircuitState::*;

    #[test]
    fn worst_prefers_open_then_half_open() {
        assert_eq!(Closed.worst(Open), Open);
        assert_eq!(HalfOpen.worst(Closed), HalfOpen);
        assert_eq!(Open.worst(HalfOpen), Open);
        assert_eq!(Closed.worst(Closed), Closed);
    }
}
