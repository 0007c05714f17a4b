//! Open handles of one session: file and directory fds the guest refers to by a `fh` number.
//!
//! Handle numbers come from a counter and are never reused within a session. A handle is an
//! `Arc` so that a request in flight keeps its fd open even if a concurrent `release` removes
//! the handle; the fd closes when the last user lets go. Closing the fd is what releases the
//! OFD and flock locks taken through it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use ferry_protocol::Errno;

use super::inode::OpenPin;

/// What a handle was opened for.
#[derive(Debug)]
pub(crate) enum HandleKind {
    /// A file opened with `open`/`create`.
    File,
    /// A directory opened with `opendir`. The mutex serialises the `lseek` + `getdents64`
    /// pair, because both move the one file position of the shared fd, and guards the
    /// entries read ahead.
    Dir(Mutex<DirCursor>),
}

/// What a directory handle keeps between two reads: the last `getdents64` records, of which
/// `buf[pos..len]` were not handed out yet. A read that continues where the last one stopped
/// (its cookie is `resume`) starts there without seeking: a seek makes ext4 rebuild its hash
/// tree cursor, and the records read ahead would be read again.
#[derive(Debug, Default)]
pub(crate) struct DirCursor {
    pub buf: Vec<u8>,
    pub pos: usize,
    pub len: usize,
    /// The cookie of the last entry handed out, when the descriptor's position is just past
    /// `buf[..len]`; None when the next read must seek.
    pub resume: Option<u64>,
}

/// One open handle.
#[derive(Debug)]
pub(crate) struct Handle {
    /// The open fd (never `O_PATH`).
    pub fd: OwnedFd,
    /// File or directory.
    pub kind: HandleKind,
    /// Set by `release`: a lock waiting on this handle gives up.
    released: AtomicBool,
    /// Keeps the node's `O_PATH` descriptor cached while the guest has it open.
    _pin: Option<OpenPin>,
}

impl Handle {
    /// A handle on `fd`.
    pub fn new(fd: OwnedFd, kind: HandleKind) -> Self {
        Handle {
            fd,
            kind,
            released: AtomicBool::new(false),
            _pin: None,
        }
    }

    /// This handle, keeping its node's descriptor cached for as long as it is open.
    pub fn pinning(self, pin: OpenPin) -> Self {
        Handle {
            _pin: Some(pin),
            ..self
        }
    }

    /// True once the guest has released the handle.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// The open fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The fd of a file handle; EBADF for a directory handle.
    pub fn file_fd(&self) -> Result<BorrowedFd<'_>, Errno> {
        match self.kind {
            HandleKind::File => Ok(self.fd.as_fd()),
            HandleKind::Dir(_) => Err(Errno::EBADF),
        }
    }

    /// The fd of a directory handle with its position lock held; EBADF for a file handle.
    pub fn lock_dir(&self) -> Result<(BorrowedFd<'_>, MutexGuard<'_, DirCursor>), Errno> {
        match &self.kind {
            // A poisoned lock only means another reader panicked; the fd is still usable
            // because a reader that does not find the cursor where it expects seeks first.
            HandleKind::Dir(m) => {
                Ok((self.fd.as_fd(), m.lock().unwrap_or_else(|p| p.into_inner())))
            }
            HandleKind::File => Err(Errno::EBADF),
        }
    }
}

/// Handle number → handle.
#[derive(Debug)]
pub(crate) struct HandleTable {
    map: DashMap<u64, Arc<Handle>>,
    next: AtomicU64,
    /// Most handles the session may hold open.
    cap: usize,
}

impl HandleTable {
    /// An empty table that holds at most `cap` handles.
    pub fn new(cap: usize) -> Self {
        HandleTable {
            map: DashMap::new(),
            next: AtomicU64::new(1),
            cap,
        }
    }

    /// EMFILE (with a log line) when the session holds as many handles as it may: checked
    /// before a handle's file is opened or created. Requests in flight together may pass it
    /// at once, so the table can exceed the cap by the number of workers, never more.
    pub fn room(&self) -> Result<(), Errno> {
        if self.map.len() >= self.cap {
            tracing::warn!(
                limit = self.cap,
                "a guest holds as many open files as a session may (--max-handles); answering \
                 EMFILE"
            );
            return Err(Errno::EMFILE);
        }
        Ok(())
    }

    /// Stores a handle and returns its number.
    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.insert(fh, Arc::new(handle));
        fh
    }

    /// The handle numbered `fh`; EBADF when the guest names a handle it does not hold.
    pub fn get(&self, fh: u64) -> Result<Arc<Handle>, Errno> {
        self.map
            .get(&fh)
            .map(|h| Arc::clone(h.value()))
            .ok_or(Errno::EBADF)
    }

    /// Removes the handle numbered `fh`; EBADF if there is none.
    pub fn remove(&self, fh: u64) -> Result<Arc<Handle>, Errno> {
        let h = self.map.remove(&fh).map(|(_, h)| h).ok_or(Errno::EBADF)?;
        h.released.store(true, Ordering::Release);
        Ok(h)
    }

    /// Number of open handles.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}
