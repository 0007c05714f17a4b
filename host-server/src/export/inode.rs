//! The node table of one session: server-chosen node ids mapped to `O_PATH` fds.
//!
//! Node ids are allocated from a counter and never reused within a session, so a stale id held
//! by the guest can never name a different file. Hard links share one node: a second table maps
//! the host's `(st_dev, st_ino)` to the node id. The `O_PATH` fd pins the host inode, so its
//! number cannot be recycled while the node exists.
//!
//! Locking: the lookup count of a node is only changed while holding the `by_key` entry of its
//! `(dev, ino)`, and a node is only removed under that same entry, so a lookup racing with the
//! forget that drops the count to zero either revives the node before removal or finds it gone
//! and creates a fresh one. The lock order is always `by_key` then `by_id`, and no `by_id`
//! guard is ever held while `by_key` is touched.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use ferry_protocol::Errno;

/// The node id of the export root.
pub const ROOT_ID: u64 = 1;

/// One node: an `O_PATH | O_NOFOLLOW` fd of a host object inside the export.
#[derive(Debug)]
pub(crate) struct InodeData {
    /// The node id the guest knows.
    pub id: u64,
    /// `O_PATH` fd; never used for I/O, only as an anchor for `*at` calls and `/proc` reopens.
    pub fd: OwnedFd,
    /// Host device number.
    pub dev: u64,
    /// Host inode number.
    pub ino: u64,
    /// File type bits (`st_mode & S_IFMT`); fixed for the life of an inode.
    pub kind: u32,
    /// Lookups handed to the guest and not yet forgotten.
    nlookup: AtomicU64,
}

impl InodeData {
    /// The `O_PATH` fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// True for directories.
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// True for symlinks.
    pub fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }

    /// True for regular files.
    pub fn is_file(&self) -> bool {
        self.kind == libc::S_IFREG
    }

    /// The current lookup count (for tests and diagnostics).
    pub fn lookups(&self) -> u64 {
        self.nlookup.load(Ordering::Relaxed)
    }
}

/// Node id → node, and host identity → node id.
#[derive(Debug)]
pub(crate) struct InodeTable {
    by_id: DashMap<u64, Arc<InodeData>>,
    by_key: DashMap<(u64, u64), u64>,
    next_id: AtomicU64,
}

impl InodeTable {
    /// A table holding only the root, whose fd is `root_fd` and whose stat is `st`.
    pub fn new(root_fd: OwnedFd, st: &libc::stat) -> Self {
        let root = Arc::new(InodeData {
            id: ROOT_ID,
            fd: root_fd,
            dev: st.st_dev,
            ino: st.st_ino,
            kind: st.st_mode & libc::S_IFMT,
            // The root is implicitly looked up once by the mount and is never removed.
            nlookup: AtomicU64::new(1),
        });
        let table = InodeTable {
            by_id: DashMap::new(),
            by_key: DashMap::new(),
            next_id: AtomicU64::new(ROOT_ID + 1),
        };
        table.by_key.insert((root.dev, root.ino), ROOT_ID);
        table.by_id.insert(ROOT_ID, root);
        table
    }

    /// The node with id `id`; ESTALE when the guest names a node it does not hold.
    pub fn get(&self, id: u64) -> Result<Arc<InodeData>, Errno> {
        match self.by_id.get(&id) {
            Some(node) => Ok(Arc::clone(node.value())),
            None => Err(Errno::ESTALE),
        }
    }

    /// The node id of host object `(dev, ino)`, if this table holds it (no lookup taken).
    pub fn id_of(&self, key: (u64, u64)) -> Option<u64> {
        self.by_key.get(&key).map(|id| *id)
    }

    /// Records one more lookup of the object behind `fd` (whose stat is `st`): the existing
    /// node for its `(dev, ino)` when there is one (and `fd` is closed), else a new node.
    pub fn insert_or_ref(&self, fd: OwnedFd, st: &libc::stat) -> Arc<InodeData> {
        let key = (st.st_dev, st.st_ino);
        match self.by_key.entry(key) {
            MapEntry::Occupied(mut e) => {
                if let Some(node) = self.by_id.get(e.get()) {
                    node.nlookup.fetch_add(1, Ordering::Relaxed);
                    return Arc::clone(node.value());
                }
                // Unreachable with the locking above; recover by minting a fresh node.
                let node = self.new_node(fd, st);
                e.insert(node.id);
                node
            }
            MapEntry::Vacant(e) => {
                let node = self.new_node(fd, st);
                e.insert(node.id);
                node
            }
        }
    }

    /// Allocates an id and stores a node with one lookup. Called with the key entry held.
    fn new_node(&self, fd: OwnedFd, st: &libc::stat) -> Arc<InodeData> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(InodeData {
            id,
            fd,
            dev: st.st_dev,
            ino: st.st_ino,
            kind: st.st_mode & libc::S_IFMT,
            nlookup: AtomicU64::new(1),
        });
        self.by_id.insert(id, Arc::clone(&node));
        node
    }

    /// Gives back `n` lookups of `id`; at zero the node is removed and its fd closed (once no
    /// request in flight still holds it). Unknown ids are ignored; the root is never removed.
    pub fn forget(&self, id: u64, n: u64) {
        let Some(node) = self.by_id.get(&id).map(|n| Arc::clone(n.value())) else {
            tracing::debug!(id, "forget of an unknown node ignored");
            return;
        };
        let entry = self.by_key.entry((node.dev, node.ino));
        let left = node.nlookup.load(Ordering::Relaxed).saturating_sub(n);
        node.nlookup.store(left, Ordering::Relaxed);
        if left > 0 || id == ROOT_ID {
            return;
        }
        if let MapEntry::Occupied(e) = entry {
            if *e.get() == id {
                e.remove();
            }
        }
        self.by_id.remove(&id);
    }

    /// Number of live nodes, the root included.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}
