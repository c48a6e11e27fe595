//! The gateway's NATS link: publishes written straight into a shard's buffer and
//! their replies matched by number, on Fanout's own client (`fanout-nats-client`),
//! with the same authentication and TLS settings as every Fanout process
//! (`--nats-*`).
//!
//! - [`link`]: a shard's connection, and the replies matched to publishes.

pub mod link;

pub use fanout_nats_client::{
    Headers, Server, SettingsError, handshake, headers, protocol, settings,
};
pub use link::{Link, NoReply, Pending, Reply, SendError};
