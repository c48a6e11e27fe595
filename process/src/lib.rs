//! The lifecycle every Fanout process shares: how it reaches NATS ([`nats`]: one set
//! of flags and one way to connect), what it waits for before draining ([`signal`]),
//! how it spreads work over cores ([`thread`]: a runtime per thread), and the
//! operator's and dispatcher's `/metrics`, `/healthz` and `/readyz` ([`probes`]).
//!
//! Kept apart from `fanout-provision`, which creates JetStream objects and reads
//! them back: a process needs these whether or not it provisions anything.

pub mod nats;
pub mod probes;
pub mod signal;
pub mod thread;
