//! A thread with a single-threaded runtime of its own: how a dispatcher runs each
//! target and the gateway each shard. Everything the work touches (its NATS
//! connection, its sockets, their tasks, its timers) stays on that thread, so a
//! process uses more than one core without the cross-thread wake-ups of a
//! multi-threaded runtime, which cost more CPU per event than they gain.

use std::future::Future;

use tokio::sync::oneshot;

/// Runs the future `work` makes on a new thread named `name`, with a runtime of its
/// own. The receiver gets what the future returned, or an error if it panicked. The
/// runtime, and with it every task the work left behind (idle connections), is gone
/// before the receiver hears.
pub fn on_own_thread<T, F>(
    name: String,
    work: impl FnOnce() -> F + Send + 'static,
) -> std::io::Result<oneshot::Receiver<T>>
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, ended) = oneshot::channel();
    std::thread::Builder::new().name(name).spawn(move || {
        let result = runtime.block_on(work());
        drop(runtime);
        let _ = done.send(result);
    })?;
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::on_own_thread;

    #[tokio::test]
    async fn a_thread_that_panics_is_told_apart_from_one_that_returned() {
        let returned = on_own_thread("calm".into(), || async { 7 }).unwrap();
        assert_eq!(returned.await.ok(), Some(7));
        let panicked =
            on_own_thread("buggy".into(), || async { panic!("a bug in the work") }).unwrap();
        let outcome: Result<(), _> = panicked.await;
        assert!(outcome.is_err());
    }
}
