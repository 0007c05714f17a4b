//! Cache notifications written straight to `/dev/fuse`.
//!
//! fuser 0.18's `Notifier` always sends `flags = 0` with an entry invalidation, and an entry
//! invalidation without `FUSE_EXPIRE_ONLY` detaches anything mounted on or below the entry in
//! the guest (a container's bind mount, say). These raw writes can expire instead, and can bump
//! the connection epoch (kernel 6.16+) to drop every cached name at once after an overflow.
//!
//! Rules (see `guest-agent/REPLAY.md`, "Notifications to the kernel"): write only from a
//! thread that is not serving FUSE requests, never while a FUSE handler waits for that thread,
//! and treat ENOENT (nothing cached) as success.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::fs::Listings;

const FUSE_NOTIFY_INVAL_INODE: i32 = 2;
const FUSE_NOTIFY_INVAL_ENTRY: i32 = 3;
const FUSE_NOTIFY_INC_EPOCH: i32 = 8;
/// `fuse_notify_inval_entry_out.flags`: only expire the dentry, do not unhash it.
const FUSE_EXPIRE_ONLY: u32 = 1;

/// A `dup` of the session's `/dev/fuse` fd, for notifications.
#[derive(Debug)]
pub struct KernelNotifier {
    fd: OwnedFd,
    /// The adapter's complete listings: dropped with the kernel's names they stand beside.
    listings: Option<Arc<Listings>>,
}

impl KernelNotifier {
    /// Wraps a duplicate of the FUSE session fd.
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd, listings: None }
    }

    /// Also drops the adapter's complete listings ([`crate::fs::FerryFs::listings`]) whenever
    /// a notification drops the kernel's cached names or attributes of a directory.
    pub fn with_listings(mut self, listings: Arc<Listings>) -> Self {
        self.listings = Some(listings);
        self
    }

    /// Drops the cached attributes of node `ino` and, when `offset >= 0`, its cached pages
    /// from `offset` on (`len == 0`: to the end).
    pub fn inval_inode(&self, ino: u64, offset: i64, len: i64) -> io::Result<()> {
        if let Some(l) = &self.listings {
            l.drop_dir(ino);
        }
        let mut body = Vec::with_capacity(24);
        body.extend(ino.to_ne_bytes());
        body.extend(offset.to_ne_bytes());
        body.extend(len.to_ne_bytes());
        self.send(FUSE_NOTIFY_INVAL_INODE, &body)
    }

    /// Expires the cached entry `name` in directory `parent`: the next path walk asks the
    /// server again, and a mount on it survives if the answer is the same node.
    pub fn expire_entry(&self, parent: u64, name: &[u8]) -> io::Result<()> {
        if let Some(l) = &self.listings {
            l.drop_dir(parent);
        }
        let mut body = Vec::with_capacity(16 + name.len() + 1);
        body.extend(parent.to_ne_bytes());
        body.extend((name.len() as u32).to_ne_bytes());
        body.extend(FUSE_EXPIRE_ONLY.to_ne_bytes());
        body.extend(name);
        body.push(0);
        self.send(FUSE_NOTIFY_INVAL_ENTRY, &body)
    }

    /// Makes every cached name of the mount stale at once (FUSE_NOTIFY_INC_EPOCH, Linux 6.16
    /// and later): each is looked up again on next use, and mounts survive a same answer.
    pub fn inc_epoch(&self) -> io::Result<()> {
        if let Some(l) = &self.listings {
            l.drop_all();
        }
        self.send(FUSE_NOTIFY_INC_EPOCH, &[])
    }

    fn send(&self, code: i32, body: &[u8]) -> io::Result<()> {
        crate::stats::agent().invalidation();
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend((len as u32).to_ne_bytes()); // fuse_out_header.len
        msg.extend(code.to_ne_bytes()); // .error carries the notification code
        msg.extend(0u64.to_ne_bytes()); // .unique = 0: a notification
        msg.extend(body);
        match nix::unistd::write(&self.fd, &msg) {
            Ok(_) => Ok(()),
            // Nothing cached for it: nothing to invalidate.
            Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
