//! Accepting connections: one task accepts on the listening socket and hands each
//! connection to the next shard in turn, which serves it until it closes.
//!
//! Producers keep their connections open, so handing them out once spreads the load
//! evenly. The alternatives do not: shards accepting on the same socket race, and the
//! first to wake takes a whole burst (every producer reconnecting after a restart);
//! a socket per shard (`SO_REUSEPORT`) lets another process bind the port too and
//! take a share of the connections unnoticed.
//!
//! Accepting in one place is also where the cap on open connections is kept
//! ([`crate::limit`]): a connection beyond it is closed before any shard sees it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::limit::{ConnectionLimit, Slot};
use crate::metrics::Metrics;
use crate::server::{Accept, Accepted};
use crate::shard::Phase;

/// A connection on its way to a shard, with its slot. A Tokio stream belongs to the
/// runtime it was registered with, so it travels as a standard one.
type Handoff = (std::net::TcpStream, SocketAddr, Slot);

/// One shard's side: the connections handed to it, as a listener for its server.
pub struct Handed {
    connections: mpsc::UnboundedReceiver<Handoff>,
}

/// Accepts connections until the gateway stops serving, handing them to `shards` in
/// turn while fewer than `limit` are open, and closing them at once otherwise.
/// Returning drops the listening socket: new connections are then refused.
pub async fn hand_out(
    mut listener: TcpListener,
    shards: Vec<mpsc::UnboundedSender<Handoff>>,
    limit: ConnectionLimit,
    metrics: Arc<Metrics>,
    mut phase: watch::Receiver<Phase>,
) {
    // Whether the last connection found the cap reached: say so once per episode,
    // not once per connection.
    let mut full = false;
    let mut shards = shards.iter().cycle();
    loop {
        let (stream, peer) = tokio::select! {
            // axum's accept logs and waits out errors such as running out of file
            // descriptors, and skips connections reset before they were accepted.
            accepted = Listener::accept(&mut listener) => accepted,
            // Also when the gateway is gone without a shutdown.
            _ = phase.wait_for(|phase| *phase != Phase::Serve) => return,
        };
        let Some(slot) = limit.try_take() else {
            metrics.connection_refused();
            if !full {
                tracing::warn!(max = limit.max(), %peer, "the most connections are open (--max-connections); closing new ones until some close");
                full = true;
            }
            drop(stream);
            continue;
        };
        full = false;
        let Some(shard) = shards.next() else {
            return;
        };
        match stream.into_std() {
            // Fails only when the shard has stopped, which it does when draining.
            Ok(stream) => {
                let _ = shard.send((stream, peer, slot));
            }
            Err(e) => {
                tracing::debug!(error = %fanout_config::error_chain(&e), %peer, "handing a connection to a shard failed")
            }
        }
    }
}

/// The channel that carries connections to one shard.
pub fn channel() -> (mpsc::UnboundedSender<Handoff>, Handed) {
    let (sender, connections) = mpsc::unbounded_channel();
    (sender, Handed { connections })
}

impl Accept for Handed {
    async fn accept(&mut self) -> Accepted {
        loop {
            let Some((stream, peer, slot)) = self.connections.recv().await else {
                // No more connections will come; the server stops when told to drain.
                return std::future::pending().await;
            };
            // Registers the connection with this shard's runtime.
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    return Accepted {
                        stream,
                        peer,
                        slot: Some(slot),
                    };
                }
                Err(e) => {
                    tracing::debug!(error = %fanout_config::error_chain(&e), %peer, "taking over a connection failed")
                }
            }
        }
    }
}
