//! The `fanout.dev/v1alpha1` API shared by every Fanout component.
//!
//! - [`target`] and [`route`]: the two custom resources that deliver, as users write
//!   them; [`replay`]: the one that sends a window of a route's events again.
//! - [`policy`]: retry, circuit breaker, rate limit and auth specs used by both.
//! - [`rules`]: messages of the CEL rules that standalone mode restates.
//! - [`settings`]: a spec resolved into the effective, validated delivery policy.
//! - [`render`]: a route and its targets rendered into dispatcher configuration
//!   and JetStream objects (the types are in `fanout-config`).
//! - [`manifests`]: reading manifest files (for standalone mode and tests).
//! - [`crd`]: the CustomResourceDefinitions generated from these types.
//! - [`reference`]: the field reference (docs/reference.md) generated from the CRDs.

pub mod crd;
pub mod expressions;
pub mod manifests;
pub mod policy;
pub mod reference;
pub mod render;
pub mod replay;
pub mod route;
pub mod rules;
pub mod settings;
pub mod status;
pub mod target;

pub use fanout_config::{Duration, names};
pub use replay::{FanOutReplay, FanOutReplaySpec, FanOutReplayStatus};
pub use route::{FanOutRoute, FanOutRouteSpec, FanOutRouteStatus};
pub use target::{ApiTarget, ApiTargetSpec, ApiTargetStatus};

/// API group of every Fanout resource.
pub const GROUP: &str = "fanout.dev";
/// API version of every Fanout resource.
pub const VERSION: &str = "v1alpha1";
