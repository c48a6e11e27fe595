//! The operator's connections to the Kubernetes API, each with timeouts, so that an
//! apiserver that stops answering fails a call instead of holding it for ever. A
//! call that hangs would keep a reconcile (or a Lease renewal) waiting with no end,
//! and a leader that cannot tell it lost contact cannot step down in time.
//!
//! Three clients, because their calls wait for different lengths of time:
//! - `watch`: list and watch streams. The server ends a watch after 290 s and sends
//!   bookmarks meanwhile, so a read timeout just above that only fires on a dead
//!   connection (kube's watcher also has its own idle timeout).
//! - `calls`: every other request of a reconcile (get, apply, status, Events).
//! - `lease`: leader election, with short timeouts; [`crate::leader`] also bounds
//!   each whole attempt by the time left before its renew deadline.

use std::time::Duration;

/// How long connecting to the apiserver may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reconcile's request may wait for its answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than the server-side watch timeout (290 s).
pub const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one Lease request may wait; an attempt is get + update.
pub const LEASE_CALL_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Clone)]
pub struct Clients {
    pub watch: kube::Client,
    pub calls: kube::Client,
    pub lease: kube::Client,
    /// The host the clients connect to (an apiserver address dispatchers refuse).
    pub host: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("finding the Kubernetes API (in-cluster config or KUBECONFIG)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building a Kubernetes client")]
    Build(#[source] kube::Error),
}

impl Clients {
    /// From the in-cluster configuration or KUBECONFIG.
    pub async fn infer() -> Result<Clients, ClientError> {
        let config = kube::Config::infer().await.map_err(ClientError::Infer)?;
        Clients::from_config(config)
    }

    pub fn from_config(config: kube::Config) -> Result<Clients, ClientError> {
        let with = |read: Duration| -> Result<kube::Client, ClientError> {
            let mut c = config.clone();
            c.connect_timeout = Some(CONNECT_TIMEOUT);
            c.read_timeout = Some(read);
            c.write_timeout = Some(read);
            // Count the read timeout from the request, not from when its pooled
            // connection went idle.
            c.reset_reader_on_write = true;
            kube::Client::try_from(c).map_err(ClientError::Build)
        };
        Ok(Clients {
            host: config.cluster_url.host().map(str::to_string),
            watch: with(WATCH_READ_TIMEOUT)?,
            calls: with(CALL_TIMEOUT)?,
            lease: with(LEASE_CALL_TIMEOUT)?,
        })
    }
}
