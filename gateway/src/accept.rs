//! Accepting connections: one task accepts on the listening socket and hands each
//! connection to the next shard in turn, which serves it until it closes.
//!
//! Producers keep their connections open, so handing them out once spreads the load
//! evenly. The alternatives do not: shards accepting on the same socket race, and the
//! first to wake takes a whole burst (every producer reconnecting after a restart);
//! a socket per shard (`SO_REUSEPORT`) lets another process bind the port too and
//! take a share of the connections unnoticed.

use std::io;
use std::net::SocketAddr;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::shard::Phase;

/// A connection on its way to a shard. A Tokio stream belongs to the runtime it was
/// registered with, so it travels as a standard one.
type Handoff = (std::net::TcpStream, SocketAddr);

/// One shard's side: the connections handed to it, as a listener for its server.
pub struct Handed {
    connections: mpsc::UnboundedReceiver<Handoff>,
    local_addr: SocketAddr,
}

/// Accepts connections until the gateway stops serving, handing them to `shards` in
/// turn. Returning drops the listening socket: new connections are then refused.
pub async fn hand_out(
    mut listener: TcpListener,
    shards: Vec<mpsc::UnboundedSender<Handoff>>,
    mut phase: watch::Receiver<Phase>,
) {
    for shard in shards.iter().cycle() {
        let (stream, peer) = tokio::select! {
            // axum's accept logs and waits out errors such as running out of file
            // descriptors, and skips connections reset before they were accepted.
            accepted = Listener::accept(&mut listener) => accepted,
            // Also when the gateway is gone without a shutdown.
            _ = phase.wait_for(|phase| *phase != Phase::Serve) => return,
        };
        match stream.into_std() {
            // Fails only when the shard has stopped, which it does when draining.
            Ok(stream) => {
                let _ = shard.send((stream, peer));
            }
            Err(e) => {
                tracing::debug!(error = %fanout_config::error_chain(&e), %peer, "handing a connection to a shard failed")
            }
        }
    }
}

/// The channel that carries connections to one shard.
pub fn channel(local_addr: SocketAddr) -> (mpsc::UnboundedSender<Handoff>, Handed) {
    let (sender, connections) = mpsc::unbounded_channel();
    (
        sender,
        Handed {
            connections,
            local_addr,
        },
    )
}

impl Listener for Handed {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Some((stream, peer)) = self.connections.recv().await else {
                // No more connections will come; the server stops when told to drain.
                return std::future::pending().await;
            };
            // Registers the connection with this shard's runtime.
            match TcpStream::from_std(stream) {
                Ok(stream) => return (stream, peer),
                Err(e) => {
                    tracing::debug!(error = %fanout_config::error_chain(&e), %peer, "taking over a connection failed")
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}
