//! Guest locks as host locks, so that they exclude host processes and other guests.
//!
//! - BSD locks (`flock(2)`) belong to an open file: the guest's open file is one handle, so they
//!   are host `flock` locks on the handle's fd, and closing the handle releases them.
//! - POSIX record locks (`fcntl` F_SETLK) belong to a guest process, named by the lock owner the
//!   guest kernel sends. Each `(node, owner)` gets a host open file description of its own
//!   (`OwnerFile`) and its locks are OFD locks on it: the locks of one guest process merge and
//!   split as POSIX locks do, those of different processes (and of other guests) conflict, and
//!   OFD locks conflict with the classic POSIX locks of host processes. The guest's `close(2)`
//!   of any descriptor of the file (a FLUSH with the owner) drops all of that owner's locks on
//!   it, as POSIX says. Guest OFD locks arrive with the open file as owner and map the same way.
//!
//! Waiting: nothing here blocks in the kernel. A lock that conflicts is retried with
//! non-blocking calls at a growing interval (1 ms up to 50 ms) by [`LockWait::poll`]: the
//! stream front door retries all of one connection's waiting locks from one thread, so a
//! waiting guest ties up no worker and a thousand waiting locks cost no more threads than one. A wait
//! ends when the lock is granted, when the owner's locks are dropped meanwhile (FLUSH or
//! RELEASE: EINTR), or when the session ends (disconnect: EINTR), and a lock granted just as
//! it was cancelled is released again by closing its descriptor.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::{Errno, Lock};

use super::handle::Handle;
use super::sys;

/// First and longest pause between two attempts of a waiting lock.
pub const FIRST_PAUSE: Duration = Duration::from_millis(1);
pub const LONGEST_PAUSE: Duration = Duration::from_millis(50);

/// The host open file description that carries one guest lock owner's POSIX locks on a node.
#[derive(Debug)]
pub(crate) struct OwnerFile {
    fd: OwnedFd,
    /// The handle it was opened through; released with it.
    fh: u64,
    /// Set when the owner's locks were dropped (FLUSH, RELEASE): a waiter gives up.
    dropped: AtomicBool,
}

/// The POSIX lock owners of one session.
#[derive(Debug)]
pub(crate) struct LockTable {
    owners: Mutex<HashMap<(u64, u64), Arc<OwnerFile>>>,
    /// Most owner files (each a host descriptor) the session may hold.
    cap: usize,
}

impl LockTable {
    /// An empty table of at most `cap` owners.
    pub fn new(cap: usize) -> Self {
        LockTable {
            owners: Mutex::default(),
            cap,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), Arc<OwnerFile>>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The owner file of `(node, owner)`, if that owner holds or waits for locks there.
    pub fn get(&self, node: u64, owner: u64) -> Option<Arc<OwnerFile>> {
        self.map().get(&(node, owner)).cloned()
    }

    /// The owner file of `(node, owner)`, opened with `open` the first time.
    pub fn get_or_open(
        &self,
        node: u64,
        owner: u64,
        fh: u64,
        open: impl FnOnce() -> Result<OwnedFd, Errno>,
    ) -> Result<Arc<OwnerFile>, Errno> {
        let mut map = self.map();
        if let Some(o) = map.get(&(node, owner)) {
            return Ok(Arc::clone(o));
        }
        if map.len() >= self.cap {
            tracing::warn!(
                limit = self.cap,
                "a guest holds POSIX locks for as many (file, process) pairs as a session may \
                 (--max-lock-owners); answering ENOLCK"
            );
            return Err(Errno::ENOLCK);
        }
        let o = Arc::new(OwnerFile {
            fd: open()?,
            fh,
            dropped: AtomicBool::new(false),
        });
        map.insert((node, owner), Arc::clone(&o));
        Ok(o)
    }

    /// Drops every POSIX lock `owner` holds on `node` (a guest `close(2)`).
    pub fn drop_owner(&self, node: u64, owner: u64) {
        let gone = self.map().remove(&(node, owner));
        if let Some(o) = gone {
            o.dropped.store(true, Ordering::Release);
        }
    }

    /// Drops the owners that were opened through handle `fh` (its last close).
    pub fn drop_handle(&self, fh: u64) {
        let mut map = self.map();
        map.retain(|_, o| {
            if o.fh == fh {
                o.dropped.store(true, Ordering::Release);
                false
            } else {
                true
            }
        });
    }

    /// Number of owners with an open file (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.map().len()
    }
}

/// One lock request that conflicted and may be retried away from the session.
#[derive(Debug)]
pub struct LockWait {
    what: Attempt,
    /// The session has ended (the guest is gone).
    closed: Arc<AtomicBool>,
}

#[derive(Debug)]
enum Attempt {
    /// An OFD lock on an owner's file.
    Posix {
        owner: Arc<OwnerFile>,
        fl: libc::flock,
    },
    /// A `flock` on a handle's fd (`op` includes LOCK_NB).
    Flock { handle: Arc<Handle>, op: i32 },
}

impl Attempt {
    /// One non-blocking try.
    fn try_once(&self) -> Result<(), Errno> {
        match self {
            Attempt::Posix { owner, fl } => {
                let mut fl = *fl;
                sys::fcntl_lock(owner.fd.as_fd(), libc::F_OFD_SETLK, &mut fl)
            }
            Attempt::Flock { handle, op } => sys::flock(handle.fd(), *op),
        }
    }

    /// The guest no longer holds what this lock would belong to.
    fn abandoned(&self) -> bool {
        match self {
            Attempt::Posix { owner, .. } => owner.dropped.load(Ordering::Acquire),
            Attempt::Flock { handle, .. } => handle.is_released(),
        }
    }
}

impl LockWait {
    /// Tries once; `Ok(None)` when taken, `Ok(Some(wait))` when it conflicts.
    fn start(what: Attempt, closed: &Arc<AtomicBool>) -> Result<Option<LockWait>, Errno> {
        match what.try_once() {
            Ok(()) => Ok(None),
            Err(Errno::EAGAIN) => Ok(Some(LockWait {
                what,
                closed: Arc::clone(closed),
            })),
            Err(e) => Err(e),
        }
    }

    /// One more try without blocking: `None` while the lock still conflicts, else the
    /// answer: `Ok` when taken, EINTR when the guest gave it up or went away, or the error.
    /// This is what lets one thread wait for many locks (see `conn.rs`).
    pub fn poll(&self) -> Option<Result<(), Errno>> {
        if self.closed.load(Ordering::Acquire) || self.what.abandoned() {
            return Some(Err(Errno::EINTR));
        }
        match self.what.try_once() {
            // Granted just as the owner's locks were dropped: dropping `self` closes the last
            // reference to the owner's file or handle, which releases it.
            Ok(()) if self.what.abandoned() => Some(Err(Errno::EINTR)),
            Ok(()) => Some(Ok(())),
            Err(Errno::EAGAIN) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Retries until the lock is taken (`Ok`), it fails otherwise, or the guest gives it up
    /// or goes away (EINTR). Blocks the calling thread; never holds a session lock.
    pub fn wait(self) -> Result<(), Errno> {
        let mut pause = FIRST_PAUSE;
        loop {
            if let Some(done) = self.poll() {
                return done;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }
}

/// Starts a POSIX lock request on `owner`'s file.
pub(crate) fn start_posix(
    owner: Arc<OwnerFile>,
    fl: libc::flock,
    closed: &Arc<AtomicBool>,
) -> Result<Option<LockWait>, Errno> {
    LockWait::start(Attempt::Posix { owner, fl }, closed)
}

/// Starts a `flock` request (`op` without LOCK_NB) on a handle.
pub(crate) fn start_flock(
    handle: Arc<Handle>,
    op: i32,
    closed: &Arc<AtomicBool>,
) -> Result<Option<LockWait>, Errno> {
    LockWait::start(
        Attempt::Flock {
            handle,
            op: op | libc::LOCK_NB,
        },
        closed,
    )
}

/// The OFD lock of `owner` on its file for a test (F_OFD_GETLK): conflicts with the owner's
/// own locks are not reported, as for POSIX F_GETLK.
pub(crate) fn test_posix(owner: &OwnerFile, fl: &mut libc::flock) -> Result<(), Errno> {
    sys::fcntl_lock(owner.fd.as_fd(), libc::F_OFD_GETLK, fl)
}

/// `struct flock` for an OFD lock request.
pub(super) fn to_flock(lock: &Lock) -> Result<libc::flock, Errno> {
    let typ = match lock.typ {
        t if t == libc::F_RDLCK => libc::F_RDLCK,
        t if t == libc::F_WRLCK => libc::F_WRLCK,
        t if t == libc::F_UNLCK => libc::F_UNLCK,
        _ => return Err(Errno::EINVAL),
    };
    if lock.end < lock.start {
        return Err(Errno::EINVAL);
    }
    let start = i64::try_from(lock.start).map_err(|_| Errno::EINVAL)?;
    // A range reaching the largest offset means "to the end of file" (l_len == 0).
    let len = if lock.end >= i64::MAX as u64 {
        0
    } else {
        (lock.end - lock.start + 1) as i64
    };
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // OFD lock requests must carry l_pid == 0.
    fl.l_pid = 0;
    Ok(fl)
}

/// A lock reply from a `struct flock` filled by F_OFD_GETLK. "To the end of file" is
/// `i64::MAX` (the kernel's OFFSET_MAX: a FUSE kernel refuses a larger end with EIO). The pid
/// is 0: the holder is an OFD (no pid) or a host process, whose pid means nothing in a guest.
pub(super) fn from_flock(fl: &libc::flock) -> Lock {
    const OFFSET_MAX: u64 = i64::MAX as u64;
    let start = fl.l_start.max(0) as u64;
    let end = if fl.l_len <= 0 {
        OFFSET_MAX
    } else {
        start.saturating_add(fl.l_len as u64 - 1).min(OFFSET_MAX)
    };
    Lock {
        start,
        end,
        typ: i32::from(fl.l_type),
        pid: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ranges_convert_both_ways() {
        let l = Lock {
            start: 10,
            end: 19,
            typ: libc::F_WRLCK,
            pid: 0,
        };
        let fl = to_flock(&l).unwrap();
        assert_eq!((fl.l_start, fl.l_len), (10, 10));
        assert_eq!(from_flock(&fl).end, 19);
        let whole = Lock {
            start: 0,
            end: u64::MAX,
            typ: libc::F_RDLCK,
            pid: 0,
        };
        let fl = to_flock(&whole).unwrap();
        assert_eq!(fl.l_len, 0);
        assert_eq!(from_flock(&fl).end, i64::MAX as u64);
        let bad = Lock {
            start: 5,
            end: 1,
            ..whole
        };
        assert_eq!(to_flock(&bad).unwrap_err(), Errno::EINVAL);
        let bad_type = Lock { typ: 99, ..whole };
        assert_eq!(to_flock(&bad_type).unwrap_err(), Errno::EINVAL);
    }
}
