//! The gateway against a real nats-server over real loopback HTTP.

mod support;

mod batch;
mod durability;
mod errors;
mod ingest;
mod limits;
mod nats_security;
mod ops;
mod process;
mod schemathesis;
mod shards;
mod tls;
