//! The baselines of Fanout's benchmarks, as executables of their own:
//!
//! - `naive-fanout`: the straightforward fan-out `cargo bench -p fanout-dispatcher
//!   --bench dispatch` measures `fanout dispatch` against;
//! - `trivial-server`: the HTTP server that answers 202 and does nothing else, the
//!   ceiling of `cargo bench -p fanout-gateway --bench gateway-bench`.
//!
//! Both are built the way the `fanout` binary is: mimalloc as the allocator, and the
//! runtime shape of the component they stand beside (a thread with a single-threaded
//! runtime per target, or per core). A ratio against them then measures the engine's
//! and the gateway's design, not their build settings (docs/benchmarks.md).
