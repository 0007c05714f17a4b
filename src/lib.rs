//! The `ferry` package's library: what the `ferry` binary and the benchmarks share.
//!
//! - `bench`: the filesystem workloads of `ferry bench` and `benches/fsbench.rs`.

pub mod bench;
