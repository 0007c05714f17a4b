//! The node table of one session: server-chosen node ids mapped to host objects, with a
//! bounded cache of `O_PATH` descriptors.
//!
//! Node ids are allocated from a counter and never reused within a session, so a stale id held
//! by the guest can never name a different file. Hard links share one node: a second table maps
//! the host's `(st_dev, st_ino)` to the node id.
//!
//! # Descriptors
//!
//! A node does not hold a descriptor of its own. It keeps the object's kernel file handle
//! (`name_to_handle_at`, taken from its cached `O_PATH` descriptor when that is first
//! evicted: most nodes are forgotten before, and never need one), and a clock cache
//! holds `O_PATH` descriptors for the most recently used nodes: at most `cap` of them, plus
//! the nodes the guest has open (which are never evicted). On a miss the node is reopened with
//! `open_by_handle_at` on a descriptor of the same filesystem, and the result is checked to be
//! the same `(dev, ino)` and file type. A request gets a [`Node`], which holds the descriptor it
//! was given, so an eviction meanwhile never closes a descriptor in use. Open nodes stay in the
//! clock and the hand passes over them, so a guest with more files open than the cap makes
//! each miss scan them (two turns at most) and the cache holds one descriptor per open node.
//!
//! A kernel file handle names the inode itself, as a held descriptor does: a reopened node is
//! the object the guest looked up, wherever it is now, never whatever took its name. The one
//! difference: an object removed on the host that nothing keeps alive (no cached descriptor,
//! no open guest handle) cannot be reopened, and the node answers ESTALE, where a descriptor
//! held for the node's life would keep the deleted inode reachable.
//!
//! Where handles cannot be opened (the filesystem cannot encode them, EOPNOTSUPP; the process
//! may not open them, EPERM: `open_by_handle_at` needs CAP_DAC_READ_SEARCH, so every
//! unprivileged server is here; FUSE filesystems, whose handles may not survive the kernel
//! forgetting the inode) the node is reached *by name* instead: it records its parent node and
//! the name it was last found under, and a miss reopens it with `openat2(parent, name,
//! RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` on the parent's descriptor (itself reopened the same
//! way if need be), one component at a time beneath the export, never following a symlink. The
//! result must be the same `(dev, ino)` and file type, and, where the filesystem can encode a
//! handle (`name_to_handle_at` needs no privilege), the same handle; anything else is ESTALE.
//! A rename through the session, and any lookup that finds the object under another name,
//! moves the record. Each device is probed once, with its first node.
//!
//! Without a held descriptor an inode number can be reused by a new object while the node
//! lives. The handle tells them apart (it carries the inode's generation): a lookup that finds
//! a node for the same `(dev, ino)` whose descriptor is not cached compares handles, and
//! mints a new node when they differ.
//!
//! Locking: the lookup count of a node is only changed while holding the `by_key` entry of its
//! `(dev, ino)`, and a node is only removed under that same entry, so a lookup racing with the
//! forget that drops the count to zero either revives the node before removal or finds it gone
//! and creates a fresh one. The lock order is `by_key`, then the clock, then a node's slot, and
//! no `by_id` guard is ever held while `by_key` is touched.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use ferry_protocol::Errno;

use super::sys;

/// The node id of the export root (FUSE's, which the protocol shares).
pub use ferry_protocol::ROOT_ID;

/// How many `O_PATH` descriptors of nodes a session keeps open when none is given.
pub const DEFAULT_NODE_FDS: usize = 4096;

/// `f_type` of FUSE filesystems: their handles are refused (see the module comment).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Handle bytes kept inside the node; longer handles go to the heap. Most local filesystems'
/// handles fit (ext4 and xfs 8 bytes, tmpfs 12, btrfs 20).
const INLINE_HANDLE: usize = 22;

/// A node's kernel file handle (from `name_to_handle_at`), stored compactly: the system calls
/// take the full-size [`sys::KernelHandle`]. Not a guest's open handle (`handle.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct CompactKernelHandle {
    /// The filesystem's handle type.
    htype: i32,
    bytes: HandleBytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HandleBytes {
    Inline { len: u8, data: [u8; INLINE_HANDLE] },
    Heap(Box<[u8]>),
}

impl CompactKernelHandle {
    fn from_kernel(h: &sys::KernelHandle) -> CompactKernelHandle {
        let b = h.bytes();
        let bytes = if b.len() <= INLINE_HANDLE {
            let mut data = [0; INLINE_HANDLE];
            data[..b.len()].copy_from_slice(b);
            HandleBytes::Inline {
                len: b.len() as u8,
                data,
            }
        } else {
            HandleBytes::Heap(b.into())
        };
        CompactKernelHandle {
            htype: h.handle_type,
            bytes,
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.bytes {
            HandleBytes::Inline { len, data } => &data[..usize::from(*len)],
            HandleBytes::Heap(b) => b,
        }
    }

    fn to_kernel(&self) -> Option<sys::KernelHandle> {
        sys::KernelHandle::new(self.htype, self.bytes())
    }
}

/// How a node reaches its host object: its cached descriptor, if any, and how it is reached
/// without one. Guarded by one mutex per node.
#[derive(Debug)]
struct Slot {
    fd: Option<Arc<OwnedFd>>,
    reach: Reach,
}

/// How a node is reached when its descriptor is not cached.
#[derive(Debug)]
enum Reach {
    /// It never is: the descriptor is held for the node's whole life (the root, and nodes
    /// whose parent is not known).
    Pinned,
    /// By kernel file handle, not taken yet: it is taken from the cached descriptor when that
    /// is first evicted. Most nodes are forgotten before and never need one.
    Untaken,
    /// By this kernel file handle.
    Handle(CompactKernelHandle),
    /// By a connectable handle (a non-directory under the sandbox: `sys::connectable_handles`),
    /// with the plain one that identity checks compare: `[plain, connectable]`.
    HandleWithParent(Box<[CompactKernelHandle; 2]>),
    /// By name beneath its parent (the device gives no handle that can be opened).
    Named(Box<Named>),
}

/// Where a node reached by name was last found, and how to know it is still itself.
#[derive(Debug)]
struct Named {
    parent: Arc<InodeData>,
    name: Box<[u8]>,
    /// Its kernel file handle, compared after a reopen; taken at the first eviction where the
    /// filesystem can encode one.
    handle: Option<CompactKernelHandle>,
    handle_tried: bool,
}

/// How a new node will be reached without its descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Handle,
    Name,
}

/// One node: a host object inside the export, as the guest knows it.
#[derive(Debug)]
pub(crate) struct InodeData {
    /// The node id the guest knows.
    pub id: u64,
    /// Host device number.
    pub dev: u64,
    /// Host inode number.
    pub ino: u64,
    /// Lookups handed to the guest and not yet forgotten.
    nlookup: AtomicU64,
    /// File type bits (`st_mode & S_IFMT`, which fit in 16 bits); fixed for the life of an
    /// inode. Narrow so that the node packs into one allocation size class smaller.
    kind: u16,
    /// Open guest handles on this node; while there are any, its descriptor is not evicted.
    opens: AtomicU32,
    /// The clock's reference bit: used since the hand last passed.
    used: AtomicBool,
    slot: Mutex<Slot>,
}

impl InodeData {
    /// File type bits (`st_mode & S_IFMT`).
    pub fn kind(&self) -> u32 {
        u32::from(self.kind)
    }

    /// True for directories.
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }

    /// True for symlinks.
    pub fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }

    /// True for regular files.
    pub fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG
    }

    /// The current lookup count (for tests and diagnostics).
    pub fn lookups(&self) -> u64 {
        self.nlookup.load(Ordering::Relaxed)
    }

    /// The cached descriptor, if any (marks the node used).
    fn cached(&self) -> Option<Arc<OwnedFd>> {
        let fd = lock(&self.slot).fd.clone();
        if fd.is_some() {
            self.used.store(true, Ordering::Relaxed);
        }
        fd
    }

    /// True when the node holds its descriptor for life.
    #[cfg(test)]
    fn is_pinned(&self) -> bool {
        matches!(lock(&self.slot).reach, Reach::Pinned)
    }
}

/// A node with a descriptor of it, valid for as long as this value lives even if the cache
/// evicts the node meanwhile. Derefs to the node's data.
#[derive(Debug)]
pub(crate) struct Node {
    data: Arc<InodeData>,
    fd: Arc<OwnedFd>,
}

impl Node {
    /// The `O_PATH` descriptor: never used for I/O, only as an anchor for `*at` calls and
    /// `/proc` reopens.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The node's shared data (to name it as a parent).
    pub fn data(&self) -> &Arc<InodeData> {
        &self.data
    }

    /// Keeps the node's descriptor cached until the returned value is dropped (an open guest
    /// handle holds one).
    pub fn pin(&self) -> OpenPin {
        self.data.opens.fetch_add(1, Ordering::Relaxed);
        OpenPin(Arc::clone(&self.data))
    }
}

impl std::ops::Deref for Node {
    type Target = InodeData;

    fn deref(&self) -> &InodeData {
        &self.data
    }
}

/// Keeps a node's descriptor from being evicted while it lives; see [`Node::pin`].
#[derive(Debug)]
pub(crate) struct OpenPin(Arc<InodeData>);

impl Drop for OpenPin {
    fn drop(&mut self) {
        self.0.opens.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a device's objects are reached by handle, and through which descriptor.
#[derive(Clone, Debug)]
enum DevHandles {
    /// Handles work; `open_by_handle_at` takes this descriptor of the same filesystem.
    Yes(Arc<OwnedFd>),
    /// No handles: nodes on this device hold their descriptors.
    No,
}

/// The clock: nodes whose descriptor is cached, and the hand.
#[derive(Debug, Default)]
struct Clock {
    ring: Vec<Weak<InodeData>>,
    hand: usize,
}

/// The descriptor policy of a table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FdPolicy {
    /// Most cached descriptors of unopened nodes (at least 1).
    pub cap: usize,
    /// Use kernel file handles where the filesystem allows; false reaches every node by name,
    /// as a server without CAP_DAC_READ_SEARCH does (tests).
    pub handles: bool,
}

impl Default for FdPolicy {
    fn default() -> Self {
        FdPolicy {
            cap: DEFAULT_NODE_FDS,
            handles: true,
        }
    }
}

/// Node id → node, and host identity → node id.
#[derive(Debug)]
pub(crate) struct InodeTable {
    by_id: DashMap<u64, Arc<InodeData>>,
    by_key: DashMap<(u64, u64), u64>,
    next_id: AtomicU64,
    policy: FdPolicy,
    devs: RwLock<HashMap<u64, DevHandles>>,
    clock: Mutex<Clock>,
    /// The export root's descriptor: the handle base of its device.
    root_fd: Arc<OwnedFd>,
    root_dev: u64,
    /// Descriptors reopened by handle after an eviction (diagnostics).
    reopened: AtomicU64,
    /// Set once a node reached by name exists.
    by_name: AtomicBool,
}

/// The file type bits of a stat.
fn file_type(st: &libc::stat) -> u16 {
    // S_IFMT is 0o170000: the type bits fit in 16.
    (st.st_mode & libc::S_IFMT) as u16
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves consistent state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl InodeTable {
    /// A table holding only the root, whose fd is `root_fd` and whose stat is `st`.
    pub fn new(root_fd: OwnedFd, st: &libc::stat, policy: FdPolicy) -> Self {
        let root_fd = Arc::new(root_fd);
        let root = Arc::new(InodeData {
            id: ROOT_ID,
            dev: st.st_dev,
            ino: st.st_ino,
            kind: file_type(st),
            // The root is implicitly looked up once by the mount and is never removed.
            nlookup: AtomicU64::new(1),
            opens: AtomicU32::new(0),
            used: AtomicBool::new(false),
            slot: Mutex::new(Slot {
                fd: Some(Arc::clone(&root_fd)),
                reach: Reach::Pinned,
            }),
        });
        let table = InodeTable {
            by_id: DashMap::new(),
            by_key: DashMap::new(),
            next_id: AtomicU64::new(ROOT_ID + 1),
            policy: FdPolicy {
                cap: policy.cap.max(1),
                ..policy
            },
            devs: RwLock::new(HashMap::new()),
            clock: Mutex::new(Clock::default()),
            root_fd,
            root_dev: st.st_dev,
            reopened: AtomicU64::new(0),
            by_name: AtomicBool::new(false),
        };
        table.by_key.insert((root.dev, root.ino), ROOT_ID);
        table.by_id.insert(ROOT_ID, root);
        table
    }

    /// The node with id `id` and a descriptor of it; ESTALE when the guest names a node it
    /// does not hold, or one whose object is gone and can no longer be reopened.
    pub fn get(&self, id: u64) -> Result<Node, Errno> {
        let data = self.peek(id)?;
        let fd = self.fd_of(&data)?;
        Ok(Node { data, fd })
    }

    /// A descriptor of `data`'s object: the cached one, or one reopened by handle or by name.
    fn fd_of(&self, data: &Arc<InodeData>) -> Result<Arc<OwnedFd>, Errno> {
        if let Some(fd) = data.cached() {
            return Ok(fd);
        }
        // Copied out so that no slot lock is held while reopening and filling (which takes
        // the clock first). A pinned node always has its descriptor.
        enum Via {
            Handle(CompactKernelHandle, Option<CompactKernelHandle>),
            Name(Arc<InodeData>, Box<[u8]>, Option<CompactKernelHandle>),
        }
        let via = match &lock(&data.slot).reach {
            Reach::Handle(h) => Via::Handle(h.clone(), None),
            Reach::HandleWithParent(b) => Via::Handle(b[0].clone(), Some(b[1].clone())),
            Reach::Named(n) => Via::Name(Arc::clone(&n.parent), n.name.clone(), n.handle.clone()),
            Reach::Pinned | Reach::Untaken => return Err(Errno::ESTALE),
        };
        let fd = match via {
            Via::Handle(h, connectable) => match connectable {
                // A file moved to another directory is not found through its old parent; its
                // plain handle still opens it (disconnected, if the dentry was dropped).
                Some(c) => self.reopen(data, &c).or_else(|_| self.reopen(data, &h))?,
                None => self.reopen(data, &h)?,
            },
            Via::Name(parent, name, handle) => {
                let dir = self.fd_of(&parent)?;
                self.reopen_named(data, dir.as_fd(), &name, handle.as_ref())?
            }
        };
        self.reopened.fetch_add(1, Ordering::Relaxed);
        Ok(self.fill(data, fd))
    }

    /// The node with id `id` without a descriptor (for its id, identity and kind).
    pub fn peek(&self, id: u64) -> Result<Arc<InodeData>, Errno> {
        match self.by_id.get(&id) {
            Some(node) => Ok(Arc::clone(node.value())),
            None => Err(Errno::ESTALE),
        }
    }

    /// The node id of host object `(dev, ino)`, if this table holds it (no lookup taken).
    pub fn id_of(&self, key: (u64, u64)) -> Option<u64> {
        self.by_key.get(&key).map(|id| *id)
    }

    /// Records one more lookup of the object behind `fd` (whose stat is `st`), found as
    /// `name` in the directory node `parent`: the existing node for its `(dev, ino)` when there
    /// is one, else a new node.
    pub fn insert_or_ref(
        &self,
        fd: OwnedFd,
        st: &libc::stat,
        parent: &Arc<InodeData>,
        name: &[u8],
    ) -> Node {
        let key = (st.st_dev, st.st_ino);
        // Taken before the map entry is locked: the device probe, once per device.
        let way = self.way_for(fd.as_fd(), st);
        match self.by_key.entry(key) {
            MapEntry::Occupied(mut e) => {
                if let Some(node) = self.by_id.get(e.get()).map(|n| Arc::clone(n.value())) {
                    match node.cached() {
                        // A cached descriptor pins the inode: the same (dev, ino) is the
                        // same object, and `fd` is not needed.
                        Some(cached) => {
                            node.nlookup.fetch_add(1, Ordering::Relaxed);
                            return Node {
                                data: node,
                                fd: cached,
                            };
                        }
                        None => {
                            // An evicted node kept its handle: compare it with the new
                            // descriptor's (which carries the generation). A node reached
                            // by name without one can only compare identity and type.
                            let (known, named) = match &lock(&node.slot).reach {
                                Reach::Handle(h) => (Some(h.clone()), false),
                                Reach::HandleWithParent(b) => (Some(b[0].clone()), false),
                                Reach::Named(n) => (n.handle.clone(), true),
                                Reach::Pinned | Reach::Untaken => (None, false),
                            };
                            let same = match known {
                                Some(known) => {
                                    sys::name_to_handle(fd.as_fd())
                                        .ok()
                                        .map(|h| CompactKernelHandle::from_kernel(&h))
                                        == Some(known)
                                }
                                None => named && node.kind == file_type(st),
                            };
                            if same && named {
                                self.found_at(&node, parent, name);
                            }
                            if same {
                                node.nlookup.fetch_add(1, Ordering::Relaxed);
                                let fd = self.fill(&node, fd);
                                return Node { data: node, fd };
                            }
                            // The inode number was reused by a new object while the old
                            // node lives on: the old node keeps its id (the guest forgets
                            // it) and the key now names the new one.
                            tracing::debug!(id = node.id, "inode number reused; new node");
                        }
                    }
                }
                let node = self.new_node(fd, st, self.reach_for(way, parent, name));
                e.insert(node.id);
                node
            }
            MapEntry::Vacant(e) => {
                let node = self.new_node(fd, st, self.reach_for(way, parent, name));
                e.insert(node.id);
                node
            }
        }
    }

    /// One more lookup of the node for `key`, if there is one and its descriptor is cached
    /// (which keeps the inode, and so the key, its own); None otherwise, and nothing changes.
    pub fn ref_cached(&self, key: (u64, u64)) -> Option<Node> {
        // The key's entry is held while the count changes (see the module comment).
        let entry = self.by_key.get_mut(&key)?;
        let node = self
            .by_id
            .get(entry.value())
            .map(|n| Arc::clone(n.value()))?;
        let fd = node.cached()?;
        node.nlookup.fetch_add(1, Ordering::Relaxed);
        drop(entry);
        Some(Node { data: node, fd })
    }

    /// How a new node found as `name` in `parent` is reached, given its device's way.
    fn reach_for(&self, way: Way, parent: &Arc<InodeData>, name: &[u8]) -> Reach {
        match way {
            Way::Handle => Reach::Untaken,
            Way::Name => Reach::Named(Box::new(Named {
                parent: Arc::clone(parent),
                name: name.into(),
                handle: None,
                handle_tried: false,
            })),
        }
    }

    /// Records that the node reached by name was just found as `name` in `parent` (a lookup
    /// under another name, or a rename through the session). Nodes reached otherwise are left
    /// alone.
    pub fn found_at(&self, node: &InodeData, parent: &Arc<InodeData>, name: &[u8]) {
        if !self.reaches_by_name() {
            return;
        }
        let mut slot = lock(&node.slot);
        if let Reach::Named(n) = &mut slot.reach {
            if n.parent.id != parent.id || *n.name != *name {
                n.parent = Arc::clone(parent);
                n.name = name.into();
            }
        }
    }

    /// Whether some node of this table is reached by name (so renames must be recorded).
    pub fn reaches_by_name(&self) -> bool {
        self.by_name.load(Ordering::Relaxed)
    }

    /// Allocates an id and stores a node with one lookup. Called with the key entry held.
    fn new_node(&self, fd: OwnedFd, st: &libc::stat, reach: Reach) -> Node {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let fd = Arc::new(fd);
        let evictable = !matches!(reach, Reach::Pinned);
        if matches!(reach, Reach::Named(_)) {
            self.by_name.store(true, Ordering::Relaxed);
        }
        let slot = Mutex::new(Slot {
            fd: Some(Arc::clone(&fd)),
            reach,
        });
        let data = Arc::new(InodeData {
            id,
            dev: st.st_dev,
            ino: st.st_ino,
            kind: file_type(st),
            nlookup: AtomicU64::new(1),
            opens: AtomicU32::new(0),
            used: AtomicBool::new(false),
            slot,
        });
        if evictable {
            self.place(&mut lock(&self.clock), Arc::downgrade(&data));
        }
        self.by_id.insert(id, Arc::clone(&data));
        Node { data, fd }
    }

    /// Caches `fd` as the descriptor of the handle node `node` and returns the cached
    /// descriptor (another thread's, when it filled the slot first).
    fn fill(&self, node: &Arc<InodeData>, fd: OwnedFd) -> Arc<OwnedFd> {
        let mut clock = lock(&self.clock);
        if let Some(fd) = lock(&node.slot).fd.as_ref() {
            return Arc::clone(fd);
        }
        // The node is not in the ring (its slot is empty), so it cannot be its own victim.
        let fd = Arc::new(fd);
        lock(&node.slot).fd = Some(Arc::clone(&fd));
        self.place(&mut clock, Arc::downgrade(node));
        fd
    }

    /// Puts a node whose descriptor was just cached into the ring: CLOCK. Below the cap it is
    /// appended; at the cap it takes the slot of the first node the hand finds unreferenced
    /// (whose descriptor is evicted) or forgotten, and the hand moves past it, so the newcomer
    /// is the last node the hand reaches again. Nodes the guest has open are never victims;
    /// when only they are left the ring grows past the cap, and shrinks back to it at later
    /// insertions once they are closed.
    fn place(&self, clock: &mut Clock, node: Weak<InodeData>) {
        let cap = self.policy.cap;
        while clock.ring.len() > cap {
            let Some(i) = Self::victim(clock) else { break };
            // The last entry moves to `i`; only while shrinking, so a newcomer is not what
            // the hand meets next in the steady state.
            clock.ring.swap_remove(i);
            clock.hand = i;
        }
        if clock.ring.len() < cap {
            clock.ring.push(node);
            return;
        }
        match Self::victim(clock) {
            Some(i) => {
                clock.ring[i] = node;
                clock.hand = i + 1;
            }
            None => clock.ring.push(node),
        }
    }

    /// Moves the hand to the next victim, evicts its descriptor and returns its slot; None
    /// when every node in the ring is open. A node used since the hand last passed is spared
    /// once (its reference bit is cleared), so two turns find a victim if there is one.
    fn victim(clock: &mut Clock) -> Option<usize> {
        let len = clock.ring.len();
        if len == 0 {
            return None;
        }
        for _ in 0..=2 * len {
            let i = clock.hand % len;
            clock.hand = i + 1;
            let Some(n) = clock.ring[i].upgrade() else {
                // Forgotten meanwhile: its descriptor closed with it.
                return Some(i);
            };
            if n.opens.load(Ordering::Relaxed) > 0 || n.used.swap(false, Ordering::Relaxed) {
                continue;
            }
            let mut guard = lock(&n.slot);
            let slot = &mut *guard;
            let taken = match &mut slot.reach {
                Reach::Handle(_) | Reach::HandleWithParent(_) => None,
                // Reached by name; its handle, where there is one, checks the reopen.
                Reach::Named(named) => {
                    if !named.handle_tried {
                        named.handle_tried = true;
                        named.handle = slot
                            .fd
                            .as_deref()
                            .and_then(|fd| sys::name_to_handle(fd.as_fd()).ok())
                            .map(|h| CompactKernelHandle::from_kernel(&h));
                    }
                    None
                }
                // Never in the ring; nothing to evict.
                Reach::Pinned => continue,
                // The first eviction: the handle is taken now, from the descriptor.
                Reach::Untaken => {
                    match slot.fd.as_deref().map(|fd| sys::name_to_handle(fd.as_fd())) {
                        Some(Ok(h)) => Some(CompactKernelHandle::from_kernel(&h)),
                        other => {
                            // Cannot be reached again without it: it keeps its descriptor.
                            let error = other.and_then(Result::err);
                            tracing::debug!(id = n.id, ?error, "no file handle; not evicted");
                            continue;
                        }
                    }
                }
            };
            if let Some(h) = taken {
                // Under the sandbox a non-directory also keeps a connectable handle: reopened
                // by its plain one after the host dropped its dentry, it would come back
                // disconnected, with no path for Landlock to allow.
                let connectable = (sys::connectable_handles()
                    && u32::from(n.kind) != libc::S_IFDIR)
                    .then_some(slot.fd.as_deref())
                    .flatten()
                    .and_then(|fd| sys::name_to_connectable_handle(fd.as_fd()).ok())
                    .map(|c| CompactKernelHandle::from_kernel(&c));
                slot.reach = match connectable {
                    Some(c) => Reach::HandleWithParent(Box::new([h, c])),
                    None => Reach::Handle(h),
                };
            }
            slot.fd = None;
            return Some(i);
        }
        None
    }

    /// How the node of the object behind `fd` is reached once its descriptor is evicted: by
    /// file handle where its device allows, else by name.
    fn way_for(&self, fd: BorrowedFd<'_>, st: &libc::stat) -> Way {
        if !self.policy.handles {
            return Way::Name;
        }
        let known = self
            .devs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&st.st_dev)
            .cloned();
        let state = match known {
            Some(s) => s,
            None => self.probe(fd, st),
        };
        match state {
            DevHandles::Yes(_) => Way::Handle,
            DevHandles::No => Way::Name,
        }
    }

    /// Finds out whether objects on `fd`'s device can be reached by handle: encodes `fd`'s
    /// handle, opens it again and checks it is the same object. Records and returns the answer.
    fn probe(&self, fd: BorrowedFd<'_>, st: &libc::stat) -> DevHandles {
        let dev = st.st_dev;
        let mut devs = self.devs.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = devs.get(&dev) {
            return s.clone();
        }
        // open_by_handle_at ignores O_PATH descriptors, so the base is a directory opened for
        // reading: the export root, or the first directory seen on another device (usually
        // the root of a filesystem mounted inside the export). A non-directory met first on a
        // device keeps its descriptor and the question stays open.
        let dir = if dev == self.root_dev {
            self.root_fd.as_fd()
        } else if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            fd
        } else {
            return DevHandles::No;
        };
        let base = sys::open_path(&sys::proc_path(dir), libc::O_RDONLY | libc::O_DIRECTORY);
        let tried = base.and_then(|base| {
            if sys::fs_type(fd)? == FUSE_SUPER_MAGIC {
                return Err(Errno::EOPNOTSUPP);
            }
            let h = sys::name_to_handle(fd)?;
            let back = sys::open_by_handle(base.as_fd(), &h, libc::O_PATH | libc::O_NOFOLLOW)?;
            let bst = sys::fstat(back.as_fd())?;
            if (bst.st_dev, bst.st_ino) != (st.st_dev, st.st_ino) {
                return Err(Errno::ESTALE);
            }
            Ok(Arc::new(base))
        });
        let state = match tried {
            Ok(base) => {
                tracing::debug!(dev, "nodes on this device are reopened by file handle");
                DevHandles::Yes(base)
            }
            Err(e) => {
                let why = if e == Errno::EPERM {
                    " (open_by_handle_at needs CAP_DAC_READ_SEARCH)"
                } else {
                    ""
                };
                tracing::info!(
                    dev,
                    %e,
                    "no kernel file handles on this device{why}; its nodes are reopened by name"
                );
                DevHandles::No
            }
        };
        devs.insert(dev, state.clone());
        state
    }

    /// Opens the object of handle node `node` again and checks it is the same object.
    fn reopen(&self, node: &InodeData, handle: &CompactKernelHandle) -> Result<OwnedFd, Errno> {
        let base = match self
            .devs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node.dev)
        {
            Some(DevHandles::Yes(base)) => Arc::clone(base),
            _ => return Err(Errno::ESTALE),
        };
        let h = handle.to_kernel().ok_or(Errno::ESTALE)?;
        let fd = sys::open_by_handle(base.as_fd(), &h, libc::O_PATH | libc::O_NOFOLLOW)?;
        let st = sys::fstat(fd.as_fd())?;
        if (st.st_dev, st.st_ino) != (node.dev, node.ino) || file_type(&st) != node.kind {
            ferry_common::warn_limited!(
                id = node.id,
                "a file handle opened another object; refused"
            );
            return Err(Errno::ESTALE);
        }
        Ok(fd)
    }

    /// Opens `name` beneath `dir` again for the node `node` reached by name and checks it is
    /// the same object: `(dev, ino)`, type, and the handle when one was taken.
    fn reopen_named(
        &self,
        node: &InodeData,
        dir: BorrowedFd<'_>,
        name: &[u8],
        handle: Option<&CompactKernelHandle>,
    ) -> Result<OwnedFd, Errno> {
        let cname = sys::cstring(name)?;
        let fd = match sys::open_beneath(dir, &cname, libc::O_PATH, 0) {
            Ok(fd) => fd,
            // Gone from where it was last seen: the node is stale.
            Err(Errno::ENOENT | Errno::ELOOP | Errno::EXDEV) => return Err(Errno::ESTALE),
            Err(e) => return Err(e),
        };
        let st = sys::fstat(fd.as_fd())?;
        let same_handle = || match handle {
            Some(h) => {
                sys::name_to_handle(fd.as_fd())
                    .ok()
                    .map(|k| CompactKernelHandle::from_kernel(&k))
                    .as_ref()
                    == Some(h)
            }
            None => true,
        };
        if (st.st_dev, st.st_ino) != (node.dev, node.ino)
            || file_type(&st) != node.kind
            || !same_handle()
        {
            tracing::debug!(id = node.id, "another object holds the node's name; stale");
            return Err(Errno::ESTALE);
        }
        Ok(fd)
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

    /// Number of descriptors the cache holds (pinned nodes not counted).
    pub fn cached_fds(&self) -> usize {
        let clock = lock(&self.clock);
        clock.ring.iter().filter(|w| w.strong_count() > 0).count()
    }

    /// Number of node descriptors reopened by handle so far.
    pub fn reopened(&self) -> u64 {
        self.reopened.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
