//! The connections to one target that are kept open between requests.
//!
//! HTTP/1.1 connections carry one request at a time: an idle one is taken for a
//! request and put back once its response has been read to the end. The most recently
//! used is taken first, so under light load the rest age out instead of all being
//! kept warm. An HTTP/2 connection carries every request at once and is shared.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the pool needs to know about a connection.
pub trait Connection {
    /// The peer or an error closed it; it cannot carry another request.
    fn is_closed(&self) -> bool;
}

impl Connection for super::h1::Http1 {
    fn is_closed(&self) -> bool {
        super::h1::Http1::is_closed(self)
    }
}

impl<B> Connection for hyper::client::conn::http2::SendRequest<B> {
    fn is_closed(&self) -> bool {
        hyper::client::conn::http2::SendRequest::is_closed(self)
    }
}

struct Idle<C> {
    connection: C,
    since: Instant,
}

/// Idle one-at-a-time connections and the shared multiplexed one.
pub struct Pool<C, M> {
    /// Oldest at the front, most recently used at the back.
    idle: Mutex<VecDeque<Idle<C>>>,
    shared: Mutex<Option<M>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl<C: Connection, M: Connection + Clone> Pool<C, M> {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            shared: Mutex::new(None),
            max_idle,
            idle_timeout,
        }
    }

    /// The most recently used idle connection that is still open and not too old.
    pub fn take_idle(&self, now: Instant) -> Option<C> {
        let mut idle = lock(&self.idle);
        while let Some(entry) = idle.pop_back() {
            if now.saturating_duration_since(entry.since) >= self.idle_timeout {
                // Everything in front of it is older still.
                idle.clear();
                return None;
            }
            if !entry.connection.is_closed() {
                return Some(entry.connection);
            }
        }
        None
    }

    /// Keeps a connection whose last response was read to the end.
    pub fn put_idle(&self, connection: C, now: Instant) {
        if connection.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = lock(&self.idle);
        Self::evict(&mut idle, now, self.idle_timeout);
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle {
            connection,
            since: now,
        });
    }

    /// Closes connections idle for longer than the idle timeout.
    pub fn evict_expired(&self, now: Instant) {
        Self::evict(&mut lock(&self.idle), now, self.idle_timeout);
    }

    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }

    fn evict(idle: &mut VecDeque<Idle<C>>, now: Instant, timeout: Duration) {
        while idle.front().is_some_and(|e| {
            now.saturating_duration_since(e.since) >= timeout || e.connection.is_closed()
        }) {
            idle.pop_front();
        }
    }

    /// The shared connection, if there is one that is still open.
    pub fn shared(&self) -> Option<M> {
        let mut shared = lock(&self.shared);
        if shared.as_ref().is_some_and(Connection::is_closed) {
            *shared = None;
        }
        shared.clone()
    }

    pub fn set_shared(&self, connection: M) {
        *lock(&self.shared) = Some(connection);
    }
}

/// The pool's lists stay consistent even if a holder panicked: each change is a
/// single push or pop.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[derive(Clone, Debug)]
    struct Fake {
        id: u32,
        closed: Arc<AtomicBool>,
    }

    impl Fake {
        fn new(id: u32) -> Fake {
            Fake {
                id,
                closed: Arc::new(AtomicBool::new(false)),
            }
        }
        fn close(&self) {
            self.closed.store(true, Ordering::Relaxed);
        }
    }

    impl Connection for Fake {
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::Relaxed)
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(90);

    fn pool(max_idle: usize) -> Pool<Fake, Fake> {
        Pool::new(max_idle, TIMEOUT)
    }

    #[test]
    fn the_most_recently_used_connection_is_taken_first() {
        let p = pool(8);
        let t0 = Instant::now();
        p.put_idle(Fake::new(1), t0);
        p.put_idle(Fake::new(2), t0 + Duration::from_secs(1));
        assert_eq!(p.take_idle(t0 + Duration::from_secs(2)).unwrap().id, 2);
        assert_eq!(p.take_idle(t0 + Duration::from_secs(2)).unwrap().id, 1);
        assert!(p.take_idle(t0).is_none());
    }

    #[test]
    fn closed_connections_are_skipped_and_never_kept() {
        let p = pool(8);
        let t0 = Instant::now();
        let closed = Fake::new(1);
        p.put_idle(Fake::new(0), t0);
        p.put_idle(closed.clone(), t0);
        closed.close();
        assert_eq!(p.take_idle(t0).unwrap().id, 0);
        let already_closed = Fake::new(2);
        already_closed.close();
        p.put_idle(already_closed, t0);
        assert_eq!(p.idle_count(), 0);
    }

    #[test]
    fn connections_idle_longer_than_the_timeout_are_dropped() {
        let p = pool(8);
        let t0 = Instant::now();
        p.put_idle(Fake::new(1), t0);
        p.put_idle(Fake::new(2), t0 + Duration::from_secs(60));
        p.evict_expired(t0 + TIMEOUT);
        assert_eq!(p.idle_count(), 1);
        assert!(
            p.take_idle(t0 + Duration::from_secs(60) + TIMEOUT)
                .is_none()
        );
        assert_eq!(p.idle_count(), 0);
    }

    #[test]
    fn the_idle_list_is_bounded_and_keeps_the_newest() {
        let p = pool(2);
        let t0 = Instant::now();
        for id in 0..5 {
            p.put_idle(Fake::new(id), t0);
        }
        assert_eq!(p.idle_count(), 2);
        assert_eq!(p.take_idle(t0).unwrap().id, 4);
        assert_eq!(p.take_idle(t0).unwrap().id, 3);
    }

    #[test]
    fn a_closed_shared_connection_is_forgotten() {
        let p = pool(2);
        assert!(p.shared().is_none());
        let shared = Fake::new(7);
        p.set_shared(shared.clone());
        assert_eq!(p.shared().unwrap().id, 7);
        shared.close();
        assert!(p.shared().is_none());
    }
}
