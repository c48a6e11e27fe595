//! The cap on open connections of the events port, counted across all shards. A
//! connection takes a slot when it is accepted and gives it back when it closes; one
//! accepted while every slot is taken is closed at once, so clients that open
//! connections and keep them (idle or slow) cannot exhaust memory or file descriptors.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of the events port's connections.
#[derive(Clone, Debug)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
}

/// One open connection's slot; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for a new connection, or `None` when `max` are open.
    pub fn try_take(&self) -> Option<Slot> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|permit| Slot { _permit: permit })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back_when_connections_close() {
        let limit = ConnectionLimit::new(2);
        let a = limit.try_take().unwrap();
        let b = limit.try_take().unwrap();
        assert_eq!(limit.open(), 2);
        assert!(limit.try_take().is_none());
        drop(a);
        assert_eq!(limit.open(), 1);
        let _c = limit.try_take().unwrap();
        drop(b);
        assert_eq!(limit.open(), 1);
    }
}
