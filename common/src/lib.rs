//! Plumbing that `ferry-host` and `ferry-agent` share, so that each rule has one copy: the
//! stream trait every transport implements, reading and writing whole frames over a stream,
//! the shared token's file format, logging set-up, the `--version` line, the latency
//! histograms both sides report (`latency`) and the control sockets' client (`control`).
//!
//! `ferry-protocol` stays free of I/O; this crate is where bytes meet sockets and files.
//! `ferry-host` and `ferry-agent` both depend on it and never on each other.

pub mod control;
pub mod frame_io;
pub mod latency;
pub mod logging;
pub mod ratelimit;
pub mod stream;
pub mod token;
pub mod version;

pub use frame_io::{ReadError, read_frame, write_frame};
pub use stream::Stream;
pub use version::version;
