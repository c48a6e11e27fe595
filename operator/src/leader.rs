//! Leader election with a coordination.k8s.io Lease, so that two operator replicas
//! can run with one reconciling. The holder renews the Lease every few seconds; a
//! candidate takes it over once it has seen no renewal for a whole lease duration,
//! measured on its own clock (so clock skew between nodes does not matter).
//! Updates carry the resourceVersion they read, so two candidates cannot both win.
//!
//! The holder stops leading once it has gone `RENEW_DEADLINE` without a renewal,
//! counted from when its last successful attempt *started* (the write landed after
//! that, and a candidate counts from when it saw the write, later still). Every
//! attempt is cut off at that deadline, so an apiserver that stops answering cannot
//! keep the holder waiting past it: it steps down `LEASE_DURATION - RENEW_DEADLINE`
//! (5 s) before any candidate could take the Lease.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews, and a candidate retries.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// A holder that could not renew for this long stops leading, before any candidate
/// can take over (which needs `LEASE_DURATION`).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// The longest one attempt (read, then create or update) may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

const _: () = assert!(RENEW_DEADLINE.as_secs() + 3 <= LEASE_DURATION.as_secs());

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("the Kubernetes API")]
    Kube(#[source] kube::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// The holder and renew time last read, and when this replica first saw them.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
    /// When the last attempt that left this replica holding the Lease started.
    renewed: Option<Instant>,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaderElector {
            api,
            name: name.into(),
            identity: identity.into(),
            observed: None,
            renewed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&mut self) {
        let mut logged_holder = None;
        loop {
            match self.attempt(ATTEMPT_TIMEOUT).await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired the Lease; leading");
                    return;
                }
                Ok(false) => {
                    let holder = self.observed.as_ref().and_then(|o| o.0.clone());
                    if holder != logged_holder {
                        tracing::info!(lease = %self.name, holder = ?holder, "another replica leads; standing by");
                        logged_holder = holder;
                    }
                }
                Err(error) => {
                    tracing::warn!(lease = %self.name, error = %fanout_config::error_chain(&error), "leader election attempt failed")
                }
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    }

    /// Renews the Lease until another replica holds it or no renewal succeeded for
    /// `RENEW_DEADLINE`, then returns: leadership is lost and the caller must stop
    /// reconciling at once.
    pub async fn hold(&mut self) {
        let mut renewed = self.renewed.unwrap_or_else(Instant::now);
        loop {
            let deadline = renewed + RENEW_DEADLINE;
            tokio::time::sleep_until((Instant::now() + RETRY_PERIOD).min(deadline).into()).await;
            let left = deadline.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                match self.attempt(left.min(ATTEMPT_TIMEOUT)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(lease = %self.name, "another replica took the Lease; stepping down");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(lease = %self.name, error = %fanout_config::error_chain(&error), "renewing the Lease failed")
                    }
                }
                renewed = self.renewed.unwrap_or(renewed);
            }
            if renewed.elapsed() >= RENEW_DEADLINE {
                tracing::error!(
                    lease = %self.name,
                    since_renewal = ?renewed.elapsed(),
                    "could not renew the Lease within the renew deadline; stepping down before it can pass to another replica"
                );
                return;
            }
        }
    }

    /// One bounded attempt; on success, remembers when it started.
    async fn attempt(&mut self, limit: Duration) -> Result<bool, AttemptError> {
        let started = Instant::now();
        let held = tokio::time::timeout(limit, self.try_acquire_or_renew())
            .await
            .map_err(|_| AttemptError::TimedOut(limit))?
            .map_err(AttemptError::Kube)?;
        if held {
            self.renewed = Some(started);
        }
        Ok(held)
    }

    /// Gives the Lease up (on shutdown) so that a standby takes over at once instead
    /// of waiting for it to expire.
    pub async fn release(&mut self) {
        let read = tokio::time::timeout(ATTEMPT_TIMEOUT, self.api.get_opt(&self.name)).await;
        let Ok(Ok(Some(mut lease))) = read else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(now()));
        let write = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            self.api.replace(&self.name, &PostParams::default(), &lease),
        )
        .await;
        match write {
            Ok(Ok(_)) => tracing::info!(lease = %self.name, "released the Lease"),
            Ok(Err(error)) => {
                tracing::warn!(lease = %self.name, error = %fanout_config::error_chain(&error), "releasing the Lease failed; it expires by itself")
            }
            Err(_) => {
                tracing::warn!(lease = %self.name, "releasing the Lease timed out; it expires by itself")
            }
        }
    }

    /// One round: create, renew or take over the Lease. `Ok(true)` means this replica
    /// holds it now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now_time = MicroTime(now());
        let duration_secs = i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(15);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now_time.clone()),
                    renew_time: Some(now_time),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renewed = spec.renew_time.clone();
        // Restart the expiry clock whenever the record changes.
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(h, r, _)| *h != holder || *r != renewed);
        if changed {
            self.observed = Some((holder.clone(), renewed, Instant::now()));
        }
        let held_by_me = holder.as_deref() == Some(self.identity.as_str());
        let valid_for = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
            .unwrap_or(LEASE_DURATION);
        let expired = holder.is_none()
            || self
                .observed
                .as_ref()
                .is_some_and(|(_, _, seen)| seen.elapsed() >= valid_for);
        if !held_by_me && !expired {
            return Ok(false);
        }
        if !held_by_me {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now_time.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(now_time);
        // `replace` sends the resourceVersion read above: a concurrent writer makes
        // this fail with a conflict instead of both replicas believing they lead.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                let spec = written.spec.unwrap_or_default();
                self.observed = Some((spec.holder_identity, spec.renew_time, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}
