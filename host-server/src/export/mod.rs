//! The export core: performing guest requests on an exported host directory.
//!
//! This module is transport-neutral. It knows nothing of sockets, FUSE sessions, vsock or
//! vhost-user: a front door decodes a request, calls [`ExportSession::dispatch`] (or one of the
//! typed methods directly) and sends back the [`Response`].
//!
//! - [`Export`]: one exported directory, shared by every connection. It holds an
//!   `O_PATH | O_DIRECTORY` fd of the root and an fd of `/proc/self/fd`.
//! - [`ExportSession`]: one guest's view of one export, with its own node ids, lookup counts and
//!   open handles. Dropping it closes every fd it holds and so releases that guest's locks.
//!
//! # Safety promises
//!
//! - Every name in a request must be a single path component: empty names, `.`, `..`, and
//!   names containing `/` or NUL are refused with EINVAL (FUSE never sends `.` or `..` for
//!   normal paths, so a request carrying one is malformed or hostile).
//! - Names are resolved only relative to the parent node's `O_PATH` fd, with `openat2` and
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` (plain `openat` with
//!   `O_NOFOLLOW` on kernels without `openat2`).
//! - The host never follows a symlink inside the export: a symlink is a node of its own, and the
//!   guest kernel resolves its target inside the mount. Opening a symlink node fails with ELOOP.
//! - File data is reached by re-opening a node's `O_PATH` fd through `/proc/self/fd/N`, which
//!   lands on that exact inode whatever happened to the path since the lookup. A node whose fd
//!   was evicted from the session's cache gets it back from its kernel file handle, which names
//!   the same inode (checked: `(dev, ino)` and type); no path is resolved (see `inode.rs`).
//! - Unknown node ids answer ESTALE and unknown handles EBADF; nothing a guest sends can panic
//!   the server.
//! - A read-only export refuses every mutating request with EROFS before touching anything.
//!
//! # Owners
//!
//! Each export has an [`IdPolicy`]: how guest and host ids translate (passthrough, ranges,
//! squash), whether owners set from the guest are persisted in an xattr, and who checks
//! permissions. Attributes sent to the guest show translated owners; every request runs with the
//! host identity its id mode gives (in `map` mode the caller's mapped ids, guest root with root's
//! powers only over mapped inodes; see `creds.rs`). See `owners.rs` for the persisted-owner
//! record.
//!
//! # Known limits
//!
//! - A directory moved out of the export by a host process while the guest holds its node
//!   stays reachable through that node (as with virtiofsd).
//! - An object removed on the host while the guest holds its node, but no open handle, answers
//!   ESTALE once its fd has been evicted (a held fd kept the deleted inode reachable).
//! - Guest POSIX locks are OFD locks on a host open file per lock owner, and guest flock locks
//!   are flock locks on the handle's fd (see `locks.rs`).

mod acl;
mod attr;
mod creds;
mod dispatch;
mod echo;
mod handle;
mod inode;
mod listing;
mod locks;
mod ops;
mod owners;
mod replay;
pub(crate) mod sys;
mod watch;
pub use watch::EventCounts;
mod xattr;

#[cfg(test)]
mod ids_tests;
#[cfg(test)]
mod tests;

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ferry_protocol::{Errno, Opened, Reply};

use handle::HandleTable;
use inode::{FdPolicy, InodeTable};
use locks::LockTable;

use crate::ids::IdPolicy;

pub use inode::{DEFAULT_NODE_FDS, ROOT_ID};

/// Open files and directories one session may hold by default (`--max-handles`): more than
/// a guest's processes hold at once in ordinary use, well under the server's descriptor
/// limit.
pub const DEFAULT_HANDLES: usize = 65536;

/// (File, lock owner) pairs with POSIX locks one session may have by default
/// (`--max-lock-owners`); each holds a host descriptor.
pub const DEFAULT_LOCK_OWNERS: usize = 16384;
pub use locks::{FIRST_PAUSE as LOCK_FIRST_PAUSE, LONGEST_PAUSE as LOCK_LONGEST_PAUSE, LockWait};
pub use ops::SetAttrs;
pub use replay::{ReplayThread, Replaying};
pub use watch::Sink;
pub use xattr::XattrReply;

pub use owners::{OWNER_XATTR, RESERVED_XATTR_PREFIX};
use watch::Events;

/// How an export is configured (`--export NAME=PATH[:ro][:ids=MODE]...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportConfig {
    /// The name guests see in the handshake.
    pub name: String,
    /// The host directory to export.
    pub path: PathBuf,
    /// Refuse every mutation with EROFS.
    pub read_only: bool,
    /// Owners: id translation, persisted owners, permission checks.
    pub ids: IdPolicy,
    /// Let guests create character and block device nodes on the host (`:devices=on`).
    /// Off by default: a device node in the host directory opens a host device for any host
    /// process that can reach it.
    pub devices: bool,
    /// Guests see and set POSIX ACLs (`:acl=on`, the default; never in squash mode). Off, the
    /// export behaves as a filesystem mounted `noacl` (see `acl.rs`).
    pub acl: bool,
    /// Let guests set set-user-ID and set-group-ID bits and write `security.capability`
    /// (`:setid=on`). Off by default: a set-id or capable file the guest made would give its
    /// powers to whoever runs it on the host (see `xattr.rs` and `ops.rs`).
    pub setid: bool,
}

/// Why an export could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The path does not exist.
    #[error("export {name:?}: {} does not exist", path.display())]
    NotFound {
        /// The export's name.
        name: String,
        /// The configured path.
        path: PathBuf,
    },
    /// The path exists but is not a directory.
    #[error("export {name:?}: {} is not a directory", path.display())]
    NotADirectory {
        /// The export's name.
        name: String,
        /// The configured path.
        path: PathBuf,
    },
    /// The path contains a NUL byte.
    #[error("export {name:?}: the path {} contains a NUL byte", path.display())]
    BadPath {
        /// The export's name.
        name: String,
        /// The configured path.
        path: PathBuf,
    },
    /// Any other failure to open the path.
    #[error("export {name:?}: cannot open {}", path.display())]
    Open {
        /// The export's name.
        name: String,
        /// The configured path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `/proc/self/fd` is needed to reopen nodes and is missing.
    #[error("cannot open /proc/self/fd (is /proc mounted?): {0}")]
    Proc(std::io::Error),
    /// A session could not get what it needs (a descriptor of the root: EMFILE when the
    /// process is out of them).
    #[error("export {name:?}: cannot start a session: {source}")]
    Session {
        /// The export's name.
        name: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The id mode creates files as the caller, which needs root.
    #[error(
        "export {name:?}: ids={mode} creates files as the calling guest user, which needs \
         ferry-host to run as root (it runs as uid {euid}); run it as root or use \
         --ids squash:UID:GID"
    )]
    NeedsRoot {
        /// The export's name.
        name: String,
        /// The id mode.
        mode: String,
        /// The server's effective uid.
        euid: u32,
    },
}

/// One exported directory, shared by all connections.
#[derive(Debug)]
pub struct Export {
    name: String,
    path: PathBuf,
    read_only: bool,
    ids: IdPolicy,
    devices: bool,
    acl: bool,
    setid: bool,
    /// `O_PATH | O_DIRECTORY` fd of the export root.
    root: OwnedFd,
    /// `O_PATH | O_DIRECTORY` fd of `/proc/self/fd`, the base for every reopen.
    proc_fd: OwnedFd,
    /// Host change events: watcher, subscribers, echo fingerprints.
    events: Events,
    /// Most cached node descriptors per session (see `inode.rs`).
    max_node_fds: AtomicUsize,
    /// Most open handles per session (see `handle.rs`).
    max_handles: AtomicUsize,
    /// Most POSIX lock owner files per session (see `locks.rs`).
    max_lock_owners: AtomicUsize,
    /// Guest threads replaying host changes on a mount of this export (see `replay.rs`).
    replayers: replay::Replayers,
    /// Set once the server stops serving this export (a reload removed or replaced it).
    retired: AtomicBool,
    /// Whether a close on the export's filesystem can fail (see `close_reports_errors`).
    close_errors: bool,
}

impl Export {
    /// Opens the export root. The configured path itself may contain symlinks (the operator
    /// chose it); everything below it is resolved without following any.
    pub fn open(config: ExportConfig) -> Result<Arc<Export>, ExportError> {
        let ExportConfig {
            name,
            path,
            read_only,
            ids,
            devices,
            acl,
            setid,
        } = config;
        // SAFETY: geteuid cannot fail and touches no memory.
        let euid = unsafe { libc::geteuid() };
        if ids.mode.creates_as_caller() && euid != 0 {
            return Err(ExportError::NeedsRoot {
                name,
                mode: ids.mode.to_string(),
                euid,
            });
        }
        let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
            return Err(ExportError::BadPath { name, path });
        };
        let root = match sys::open_path(&cpath, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(ExportError::NotFound { name, path }),
            Err(Errno::ENOTDIR) => return Err(ExportError::NotADirectory { name, path }),
            Err(e) => {
                return Err(ExportError::Open {
                    name,
                    path,
                    source: std::io::Error::from_raw_os_error(e.0),
                });
            }
        };
        let proc_fd = sys::open_path(c"/proc/self/fd", libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| ExportError::Proc(std::io::Error::from_raw_os_error(e.0)))?;
        let close_errors = Export::judge_close_errors(root.as_fd());
        tracing::debug!(name, path = %path.display(), read_only, %ids, close_errors, "export opened");
        Ok(Arc::new(Export {
            name,
            path,
            read_only,
            ids,
            devices,
            acl,
            setid,
            root,
            proc_fd,
            events: Events::default(),
            max_node_fds: AtomicUsize::new(DEFAULT_NODE_FDS),
            retired: AtomicBool::new(false),
            max_handles: AtomicUsize::new(DEFAULT_HANDLES),
            max_lock_owners: AtomicUsize::new(DEFAULT_LOCK_OWNERS),
            replayers: replay::Replayers::default(),
            close_errors,
        }))
    }

    /// Whether guests may create device nodes.
    pub fn devices(&self) -> bool {
        self.devices
    }

    /// Whether POSIX ACLs are on (`:acl=`); squash mode turns them off regardless (see
    /// [`ExportSession::acls`]).
    pub fn acl(&self) -> bool {
        self.acl
    }

    /// Whether guests may set set-id bits and file capabilities.
    pub fn setid(&self) -> bool {
        self.setid
    }

    /// The export's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exported host path, as configured.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Whether mutations are refused.
    /// Marks the export as no longer served: front doors answer every request of its
    /// existing sessions with ESHUTDOWN from now on. Sessions stay (their descriptors close
    /// when their guest disconnects); nothing of the host directory changes.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Whether [`Export::retire`] was called.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// How owners are translated, kept and checked.
    pub fn ids(&self) -> &IdPolicy {
        &self.ids
    }

    /// Sets how many `O_PATH` descriptors of nodes each new session keeps open (at least 1;
    /// nodes the guest has open and nodes without kernel file handles come on top). Sessions
    /// already running keep their figure.
    pub fn set_max_node_fds(&self, n: usize) {
        self.max_node_fds.store(n.max(1), Ordering::Relaxed);
    }

    /// Sets how many open files and directories (handles) each new session may hold; one
    /// more open answers EMFILE.
    pub fn set_max_handles(&self, n: usize) {
        self.max_handles.store(n.max(1), Ordering::Relaxed);
    }

    /// How many handles each new session may hold.
    pub fn max_handles(&self) -> usize {
        self.max_handles.load(Ordering::Relaxed)
    }

    /// Sets how many (file, lock owner) pairs with POSIX locks each new session may have, each
    /// a host descriptor; one more lock answers ENOLCK.
    pub fn set_max_lock_owners(&self, n: usize) {
        self.max_lock_owners.store(n.max(1), Ordering::Relaxed);
    }

    /// How many lock owners each new session may have.
    pub fn max_lock_owners(&self) -> usize {
        self.max_lock_owners.load(Ordering::Relaxed)
    }

    /// How many node descriptors each new session keeps open.
    pub fn max_node_fds(&self) -> usize {
        self.max_node_fds.load(Ordering::Relaxed)
    }

    /// The `/proc/self/fd` directory fd.
    fn proc_fd(&self) -> BorrowedFd<'_> {
        self.proc_fd.as_fd()
    }
}

/// What to send back for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// Nothing at all (`Forget`).
    None,
    /// A reply body; never [`Reply::Data`], which travels as [`Response::Data`].
    Reply(Reply<'static>),
    /// Raw bytes: file data, a symlink target, an xattr value or name list.
    Data(Vec<u8>),
    /// An open handle with the file's first bytes (never empty).
    OpenedData(Opened, Vec<u8>),
    /// The request failed.
    Error(Errno),
    /// The request waits (a blocking lock that conflicts): the front door retries it with
    /// [`Pending::poll`] away from the threads that serve requests (or blocks in
    /// [`Pending::wait`]) and sends what it returns.
    Pending(Pending),
}

/// A request whose answer must be waited for; see [`Response::Pending`].
#[derive(Debug)]
pub struct Pending(LockWait);

impl Pending {
    /// One more try without blocking: `None` while the lock still conflicts, else the
    /// response to send.
    pub fn poll(&self) -> Option<Response> {
        self.0.poll().map(|r| match r {
            Ok(()) => Response::Reply(Reply::Empty),
            Err(e) => Response::Error(e),
        })
    }

    /// Waits (blocking the calling thread) and returns the response to send.
    pub fn wait(self) -> Response {
        match self.0.wait() {
            Ok(()) => Response::Reply(Reply::Empty),
            Err(e) => Response::Error(e),
        }
    }
}

/// Two waits are never the same request.
impl PartialEq for Pending {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}

impl Eq for Pending {}

/// One guest's view of one export: its own node ids, lookup counts and open handles.
///
/// All methods take `&self` and may be called concurrently from many threads. Dropping the
/// session closes every fd it holds and so releases that guest's locks.
#[derive(Debug)]
pub struct ExportSession {
    export: Arc<Export>,
    /// Unique among all sessions of the process (echo suppression tells sessions apart).
    sid: u64,
    inodes: InodeTable,
    handles: HandleTable,
    /// POSIX lock owners and their host open files.
    locks: LockTable,
    /// Set when the session ends; lock waits give up.
    closed: Arc<AtomicBool>,
    /// Mark attributes of objects without guest-visible xattrs (`Attr::NO_XATTRS`; the
    /// guest negotiated `features::XATTR_HINTS`).
    xattr_hints: AtomicBool,
}

impl Drop for ExportSession {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.export.unsubscribe(self.sid);
        self.export.replayers.end_session(self.sid);
    }
}

impl ExportSession {
    /// A fresh session on `export`, knowing only the root (node id [`ROOT_ID`]).
    ///
    /// # Panics
    ///
    /// Panics only if the process runs out of file descriptors while duplicating the root fd
    /// or the root can no longer be stat'ed, which leaves no usable session to return.
    /// Fails, without panicking, when the process is out of descriptors: the front door
    /// refuses that one connection and keeps serving.
    pub fn new(export: Arc<Export>) -> Result<ExportSession, ExportError> {
        let failed = |source: std::io::Error| ExportError::Session {
            name: export.name.clone(),
            source,
        };
        let root_fd = export.root.try_clone().map_err(failed)?;
        let st = sys::fstat(root_fd.as_fd())
            .map_err(|e| failed(std::io::Error::from_raw_os_error(e.0)))?;
        static NEXT_SID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(ExportSession {
            sid: NEXT_SID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            inodes: InodeTable::new(
                root_fd,
                &st,
                FdPolicy {
                    cap: export.max_node_fds(),
                    handles: true,
                },
            ),
            handles: HandleTable::new(export.max_handles()),
            locks: LockTable::new(export.max_lock_owners()),
            closed: Arc::new(AtomicBool::new(false)),
            xattr_hints: AtomicBool::new(false),
            export,
        })
    }

    /// The export this session works on.
    pub fn export(&self) -> &Arc<Export> {
        &self.export
    }

    /// Number of live nodes, the root included (for diagnostics and tests).
    pub fn node_count(&self) -> usize {
        self.inodes.len()
    }

    /// Number of node descriptors the cache holds, nodes that keep theirs for life not counted
    /// (for diagnostics and tests).
    pub fn cached_node_fds(&self) -> usize {
        self.inodes.cached_fds()
    }

    /// Number of node descriptors reopened by kernel file handle after an eviction (for
    /// diagnostics and tests).
    pub fn reopened_node_fds(&self) -> u64 {
        self.inodes.reopened()
    }

    /// Number of open handles (for diagnostics and tests).
    pub fn handle_count(&self) -> usize {
        self.handles.len()
    }

    /// Number of lock owners with a host open file (for diagnostics and tests).
    pub fn lock_owner_count(&self) -> usize {
        self.locks.len()
    }

    /// Whether node `ino`, found in directory `parent`, is a directory on another host
    /// filesystem than its parent (a mount point inside the export). Unknown nodes are not.
    pub fn is_submount(&self, parent: u64, ino: u64) -> bool {
        // Identity only: no descriptor is needed (or reopened) to compare devices.
        match (self.inodes.peek(parent), self.inodes.peek(ino)) {
            (Ok(parent), Ok(node)) => node.is_dir() && node.dev != parent.dev,
            _ => false,
        }
    }

    /// Whether a close on this export's host filesystem can report an error (see
    /// [`Export::close_reports_errors`]); FLUSH then closes a duplicate of the handle's
    /// descriptor and answers its error.
    pub fn close_reports_errors(&self) -> bool {
        self.export.close_errors
    }
}

impl Export {
    /// Whether the last close of a file on this export's host filesystem can report an error
    /// that its writes did not: network and FUSE filesystems (NFS, SMB, Ceph, 9p, ...)
    /// write back at close and say so there. On local filesystems a close reports nothing
    /// (the server's writes are `pwrite`s that already answered), so a front door may skip
    /// asking the host at every close. Judged by the export root's filesystem when it is
    /// opened; unknown answers true.
    pub fn close_reports_errors(&self) -> bool {
        self.close_errors
    }

    /// [`Self::close_reports_errors`] of the filesystem holding `root`.
    fn judge_close_errors(root: BorrowedFd<'_>) -> bool {
        const NETWORK: [i64; 13] = [
            0x6969,      // NFS
            0xFE53_4D42, // SMB2
            0xFF53_4D42, // CIFS
            0x517B,      // SMB
            0x6573_5546, // FUSE
            0x00C3_6400, // Ceph
            0x5346_414F, // AFS
            0x6B41_4653, // kAFS
            0x7375_7245, // Coda
            0x0102_1997, // 9p
            0x7461_636F, // OCFS2
            0x0116_1970, // GFS2
            0x0BD0_0BD0, // Lustre
        ];
        match sys::fs_type(root) {
            Ok(t) => NETWORK.contains(&t),
            Err(_) => true,
        }
    }
}

impl ExportSession {
    /// Current lookup count of a node, if the session holds it (for diagnostics and tests).
    pub fn lookup_count(&self, ino: u64) -> Option<u64> {
        self.inodes.peek(ino).ok().map(|n| n.lookups())
    }

    /// Starts sending this session's view of host changes to `sink`, oldest first (see
    /// `watch/`). The first watching session of an export starts its watcher.
    pub fn watch(self: &Arc<Self>, sink: Sink) -> Result<(), Errno> {
        self.export.subscribe(self, sink)
    }

    /// Stops sending changes to this session.
    pub fn unwatch(&self) {
        self.export.unsubscribe(self.sid);
    }

    /// A lookup taken for the guest on behalf of a change event.
    fn lookup_for_change(&self, parent: u64, name: &[u8]) -> Result<ferry_protocol::Entry, Errno> {
        self.lookup(&ferry_protocol::Ctx::default(), parent, name)
    }

    /// Fails with EROFS on a read-only export.
    fn check_writable(&self) -> Result<(), Errno> {
        if self.export.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }
}
