//! An event's JetStream message as a worker holds it: what came over the target's
//! own connection (`fanout_nats_client::pull`), and that connection, which settles
//! it. Settling is queued, never awaited: the acknowledgement goes with the
//! connection's next write, or on the next connection if this one is down.

use fanout_nats_client::pull::{self, Ack, Delivery, Pull};

#[derive(Clone)]
pub struct Message {
    taken: pull::Message,
    consumer: Pull,
}

impl Message {
    pub fn new(taken: pull::Message, consumer: Pull) -> Message {
        Message { taken, consumer }
    }

    /// Acks, naks or terms it.
    pub fn settle(&self, how: Ack) {
        self.consumer.ack(&self.taken.reply, how);
    }

    /// Its delivery count and sequences, `None` for a message that did not come from
    /// a consumer.
    pub fn info(&self) -> Option<Delivery<'_>> {
        self.taken.info()
    }

    /// A header's first value (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.taken.header(name)
    }

    /// The message as it came.
    pub fn taken(&self) -> &pull::Message {
        &self.taken
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("subject", &self.taken.subject)
            .field("reply", &self.taken.reply)
            .finish_non_exhaustive()
    }
}
