//! What every long-running Kubernetes-free process (gateway, dispatcher, standalone)
//! waits for before it drains: SIGTERM (Kubernetes) or SIGINT (Ctrl-C).

use std::future::Future;

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed before this
/// returns, so a signal that arrives while the process starts is not missed (without
/// a handler, it would kill the process before it could drain).
pub fn shutdown() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
