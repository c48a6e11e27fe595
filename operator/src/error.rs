//! Why a reconcile failed. Problems a user can fix (a missing ApiTarget or Secret,
//! NATS away) are not errors: they become conditions. These are the rest, retried
//! with backoff and counted by category.

use fanout_provision::ProvisionError;
use kube::runtime::finalizer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting the route's JetStream streams")]
    Cleanup(#[source] ProvisionError),
    #[error("building the dispatcher objects")]
    Build(#[source] crate::dispatcher_objects::BuildError),
    #[error("a watch cache stopped (the operator is shutting down)")]
    CacheGone,
    #[error("finalizer")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

/// Every value [`Error::category`] returns. The errors metric starts each at zero,
/// so an alert on its increase fires on the first error, not the second.
pub const CATEGORIES: [&str; 4] = ["kubernetes", "nats", "build", "shutdown"];

impl Error {
    /// A fixed label for the errors metric, one of [`CATEGORIES`].
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kubernetes",
            Error::Cleanup(_) => "nats",
            Error::Build(_) => "build",
            Error::CacheGone => "shutdown",
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.category()
                }
                _ => "kubernetes",
            },
        }
    }
}

pub fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}
