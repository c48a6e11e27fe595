//! Fanout's rendered configuration: the contract between whoever renders it (the
//! operator, or `fanout standalone`) and the processes that run it (dispatchers and
//! the gateway). It depends on no Kubernetes crate.
//!
//! - [`duration`]: durations as manifests write them (`500ms`, `72h`).
//! - [`names`]: how streams, subjects, consumers and KV keys are named.
//! - [`policy`]: the effective delivery policy of one target.
//! - [`route`]: what one route's dispatchers run with.
//! - [`jetstream`]: the JetStream objects a route needs.
//! - [`gateway`]: the routes the gateway accepts events for.
//! - [`health`]: the per-target snapshots dispatchers report.
//! - [`dead_letter`]: the headers of a dead letter.

pub mod dead_letter;
pub mod duration;
pub mod gateway;
pub mod health;
pub mod jetstream;
pub mod names;
pub mod policy;
pub mod route;

pub use duration::Duration;
pub use names::RouteKey;
pub use policy::DeliveryPolicy;
pub use route::{RouteConfig, TargetConfig};
