//! `Limits`: the bounds on what clients may make the server hold (README: Limits).

use std::time::Duration;

/// The bounds on what clients may make the server hold, before and after they authenticate.
/// The defaults are far above what ordinary use reaches; each has a `ferry-host` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long a client has, from its connection, to send its whole `Hello`.
    pub handshake_timeout: Duration,
    /// Connections served at once, authenticated or not; beyond it a new one is closed.
    pub max_connections: usize,
    /// Connections that have not finished their handshake; beyond it a new one is closed.
    pub max_unauthenticated: usize,
    /// Open files and directories one session may hold; one more open answers EMFILE.
    pub max_handles: usize,
    /// (File, lock owner) pairs with POSIX locks one session may have; one more answers
    /// ENOLCK.
    pub max_lock_owners: usize,
    /// Blocking lock requests one connection may have waiting; beyond it one answers ENOLCK.
    pub max_lock_waiters: usize,
    /// Bytes of change events queued for a connection that is not reading them; beyond it
    /// the guest is told they overflowed.
    pub max_queued_change_bytes: usize,
}

impl Limits {
    /// `--handshake-timeout`: ten seconds is ages for a Hello on a local socket.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// `--max-connections`: each connection costs about ten threads.
    pub const MAX_CONNECTIONS: usize = 256;
    /// `--max-unauthenticated`.
    pub const MAX_UNAUTHENTICATED: usize = 64;
    /// `--max-lock-waiters`: far more processes than a guest runs waiting on locks at once.
    pub const MAX_LOCK_WAITERS: usize = 4096;
    /// `--max-queued-change-bytes`: 16 MiB of paths.
    pub const MAX_QUEUED_CHANGE_BYTES: usize = 16 << 20;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Self::HANDSHAKE_TIMEOUT,
            max_connections: Self::MAX_CONNECTIONS,
            max_unauthenticated: Self::MAX_UNAUTHENTICATED,
            max_handles: crate::export::DEFAULT_HANDLES,
            max_lock_owners: crate::export::DEFAULT_LOCK_OWNERS,
            max_lock_waiters: Self::MAX_LOCK_WAITERS,
            max_queued_change_bytes: Self::MAX_QUEUED_CHANGE_BYTES,
        }
    }
}
