//! Locks: every POSIX and flock lock goes to the host; a granted one drops the node's cached
//! pages and attributes before the kernel hears of it; FLUSH reaches the host only for nodes
//! this mount has locked, or always when the host's filesystem can fail a close.

use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use ferry_protocol::{self as proto, Reply, Request as Req};
use fuser::{INodeNo, ReplyEmpty, Request};
use tracing::{debug, error};

use super::FerryFs;
use super::reply::{refuse, reply_with};

/// What the mount knows of locks.
#[derive(Debug)]
pub(super) struct Locks {
    /// The server holds guest locks (features POSIX_LOCKS and FLOCK).
    host: bool,
    /// Every FLUSH goes to the host: its filesystem can fail a close.
    flush_to_host: bool,
    /// Nodes a POSIX lock was ever asked for: a FLUSH of those must reach the host.
    locked: DashMap<u64, ()>,
    /// Granted locks go through here: the node's cached pages and attributes are dropped
    /// before the kernel learns of the lock (see [`Revalidator`]).
    revalidate: Revalidator,
}

impl Locks {
    /// Locks for a server with the given features.
    pub(super) fn new(features: u64) -> Self {
        let both = proto::features::POSIX_LOCKS | proto::features::FLOCK;
        Self {
            host: features & both == both,
            flush_to_host: false,
            locked: DashMap::new(),
            revalidate: Revalidator::new(),
        }
    }

    /// Sends every FLUSH to the host (see [`FerryFs::with_host_flush`]).
    pub(super) fn flush_to_host(&mut self, on: bool) {
        self.flush_to_host = on;
    }

    /// A POSIX lock was asked for on `ino`: from now on its FLUSHes go to the host.
    pub(super) fn asked(&self, ino: u64) {
        self.locked.insert(ino, ());
    }

    /// Answers a FLUSH of `ino` (`close(2)` waits for it) that need not reach the host; hands
    /// `reply` back for one that must. Data needs nothing: every WRITE was a synchronous
    /// pwrite the host acknowledged. Locks do: a close drops the closing process's POSIX locks
    /// on the file, so a FLUSH of a file this mount ever locked goes to the host.
    pub(super) fn flush_here(&self, ino: u64, reply: ReplyEmpty) -> Option<ReplyEmpty> {
        if self.flush_to_host {
            // The host's close can fail (NFS, SMB, FUSE): the application must hear of it.
            return Some(reply);
        }
        if !self.host {
            // Locks are the guest kernel's own: ENOSYS makes it stop sending FLUSH at all.
            reply.error(fuser::Errno::ENOSYS);
            return None;
        }
        if !self.locked.contains_key(&ino) {
            reply.ok();
            return None;
        }
        Some(reply)
    }
}

/// Drops a node's cached pages and attributes, then answers the lock request that was just
/// granted, on a thread of its own.
///
/// A lock is how programs that share a file (SQLite, anything using flock) say "from now on I
/// may read what others wrote": once it is granted, reads must see the host's bytes, not pages
/// the guest cached before another host process or guest changed them (NFS revalidates on lock
/// for the same reason). The invalidation has to finish before the reply, and it cannot run on
/// the client's reader thread: dropping a page waits for a read of it in flight, whose reply
/// that very thread delivers.
#[derive(Debug)]
struct Revalidator {
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    queue: Mutex<std::sync::mpsc::Sender<(u64, ReplyEmpty)>>,
}

impl Revalidator {
    fn new() -> Self {
        let notifier: Arc<std::sync::OnceLock<fuser::Notifier>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<(u64, ReplyEmpty)>();
        let n = Arc::clone(&notifier);
        let spawned = std::thread::Builder::new()
            .name("ferry-lock-inval".into())
            .spawn(move || {
                for (ino, reply) in rx {
                    if let Some(n) = n.get() {
                        // ENOENT: the kernel has no such inode cached, nothing to drop.
                        if let Err(e) = n.inval_inode(INodeNo(ino), 0, -1) {
                            debug!(ino, "inval_inode after a lock: {e}");
                        }
                    }
                    reply.ok();
                }
            });
        if let Err(e) = spawned {
            error!("cannot start the lock revalidation thread: {e}");
        }
        Revalidator {
            notifier,
            queue: Mutex::new(tx),
        }
    }
}

impl FerryFs {
    /// Where the mount puts the session's notifier once the session exists.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        Arc::clone(&self.locks.revalidate.notifier)
    }

    /// Sends a lock request; a granted lock (not an unlock) is answered after the node's
    /// cached data is dropped.
    pub(super) fn call_lock(
        &self,
        req: &Request,
        ino: u64,
        unlock: bool,
        body: Req<'_>,
        reply: ReplyEmpty,
    ) {
        if unlock {
            self.call(req, body, &[], reply_with("lock", reply));
            return;
        }
        self.drop_prefetched(ino);
        let queue = self
            .locks
            .revalidate
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.call(req, body, &[], move |r| match r {
            Ok(Reply::Empty) => {
                if let Err(std::sync::mpsc::SendError((_, reply))) = queue.send((ino, reply)) {
                    reply.ok();
                }
            }
            r => refuse("lock", reply, r),
        });
    }
}

/// The `flock(2)` operation for a FUSE lock type (`F_RDLCK`, `F_WRLCK`, `F_UNLCK`), with
/// `LOCK_NB` unless the caller waits; `None` for any other type.
pub(super) fn flock_op(typ: i32, sleep: bool) -> Option<i32> {
    let op = match typ {
        libc::F_RDLCK => libc::LOCK_SH,
        libc::F_WRLCK => libc::LOCK_EX,
        libc::F_UNLCK => libc::LOCK_UN,
        _ => return None,
    };
    Some(if sleep { op } else { op | libc::LOCK_NB })
}
