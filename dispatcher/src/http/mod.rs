//! The HTTP client of the delivery path: HTTP/1.1 of its own, HTTP/2 on hyper. One client per target: its
//! URL is parsed once into the request target and `Host` every request reuses, its
//! connections are pooled (keep-alive), HTTP/2 is used when the target offers it over
//! TLS (ALPN), TLS is rustls, redirects are answers (never followed), the target's
//! timeout covers the whole attempt, and response bodies are read up to a limit.
//!
//! - [`origin`]: the target's URL taken apart once.
//! - [`connect`]: opening a connection (TCP, TLS, HTTP handshake).
//! - [`outbound`]: what the client sends, written by the request itself.
//! - [`h1`]: one HTTP/1.1 exchange at a time on a connection.
//! - [`pool`]: connections kept between requests.
//! - [`tls`]: trust store, CA bundles and client certificates.
//! - [`body`]: reading a response body up to a limit.
//! - [`client`]: one request over all of the above.

pub mod body;
pub mod client;
pub mod connect;
pub mod h1;
pub mod origin;
pub mod outbound;
pub mod pool;
pub mod tls;

pub use client::{ClientError, ClientSettings, HttpClient, Response, SendError};
pub use outbound::Outbound;
