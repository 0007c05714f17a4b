//! [`FerryFs`]: the `fuser::Filesystem` that forwards every FUSE request to the host server.
//!
//! Each method converts fuser's arguments into a protocol request body and hands it to
//! [`Client::call`] together with a closure that owns fuser's reply object; the closure answers
//! the kernel from the client's reader thread once the server replies. A FUSE thread never
//! waits for the server.
//!
//! Caching: entry and attribute TTLs come from [`crate::MountOptions::ttl`] (1 s by default)
//! until the host sends change events. The kernel page cache stays on, with
//! `FUSE_AUTO_INVAL_DATA` so that cached pages are dropped when a refreshed mtime or size
//! differs; `FUSE_WRITEBACK_CACHE` stays off so writes reach the host at once.
//!
//! Forgets: fuser 0.18 does not export the `ForgetOne` type of `batch_forget`, so that method
//! cannot be overridden; its default calls [`FerryFs::forget`] per node and each becomes one
//! `Forget` frame.
//!
//! Locks: with the server's `POSIX_LOCKS` and `FLOCK` features the kernel is given
//! `FUSE_POSIX_LOCKS` and `FUSE_FLOCK_LOCKS`, and sends every `fcntl` lock as GETLK/SETLK(W)
//! with the process as lock owner and every `flock(2)` as SETLK(W) with `FUSE_LK_FLOCK` (the
//! patched fuser in third_party/ routes those to [`FerryFs::flock`]). Both go to the host,
//! which holds them as host locks. A blocking request is answered when the host grants it; no
//! FUSE thread waits. POSIX locks end with any `close(2)` by their owner, so FLUSH goes to the
//! host for files this mount has locked, and is answered here for the others.

use dashmap::DashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_protocol as proto;
use ferry_protocol::{Attr, Ctx, Errno, MAX_DATA, Reply, Request as Req, SetTime, Timespec};
use fuser::{
    AccessFlags, CopyFileRangeFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, error};

use crate::client::Client;
use crate::replay::{Answer, REPLAY_FH_BASE, ReplayState};

/// Bytes' worth of entries asked from the server per readdir. fuser 0.18 does not expose the
/// kernel's buffer size; the kernel asks again when a reply leaves room, and entries that do
/// not fit are dropped (readdir) or forgotten again (readdirplus).
pub const DIR_BUF_SIZE: u32 = 4096;

/// The FUSE adapter for one export.
#[derive(Debug)]
pub struct FerryFs {
    client: Arc<Client>,
    export: u32,
    ttl: Duration,
    /// Creating requests carry the caller's supplementary groups (the server asked for them).
    caller_groups: bool,
    /// Lookups the server took for readdirplus entries the kernel never saw; given back with
    /// the next `Forget` sent from a FUSE thread (never from the reader thread).
    deferred_forgets: Arc<Mutex<Vec<(u64, u64)>>>,
    /// Entries fetched ahead for plain readdir, per directory handle: the kernel asks for one
    /// page at a time, the server is asked for [`DIR_CHUNK`] bytes' worth at a time.
    dir_caches: Arc<DashMap<u64, DirCache>>,
    /// The first bytes of files, read by the host at open time, per handle (see [`PREFETCH`]).
    prefetched: Arc<DashMap<u64, Prefetched>>,
    /// Host-change replay: recognises the replay thread's requests (see `replay.rs`).
    replay: Arc<ReplayState>,
    /// Keep the page cache across opens (host changes invalidate it: `cached` mode).
    keep_cache: bool,
    /// The server holds guest locks (features POSIX_LOCKS and FLOCK).
    host_locks: bool,
    /// Nodes a POSIX lock was ever asked for: a FLUSH of those must reach the host.
    locked: DashMap<u64, ()>,
    /// Granted locks go through here: the node's cached pages and attributes are dropped
    /// before the kernel learns of the lock (see [`Revalidator`]).
    revalidate: Revalidator,
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

/// Bytes of a file asked for inline with a read-only open. Most files in a source tree are
/// smaller, so open-read-close costs two round trips (lookup, open) instead of three.
pub const PREFETCH: u32 = 64 * 1024;

/// A file's first bytes as the host read them when the handle was opened. They answer reads
/// within the attribute TTL of the open (the same staleness the kernel's own caches allow), and
/// are dropped as soon as this guest changes the file.
#[derive(Debug)]
struct Prefetched {
    ino: u64,
    data: Vec<u8>,
    /// `data` reaches the end of the file.
    eof: bool,
    at: std::time::Instant,
}

impl Prefetched {
    /// The bytes a read of `size` at `offset` returns, if this buffer holds all of them.
    fn slice(&self, offset: u64, size: u32) -> Option<&[u8]> {
        let len = self.data.len() as u64;
        let end = offset.checked_add(u64::from(size))?;
        if end <= len {
            Some(&self.data[offset as usize..end as usize])
        } else if self.eof {
            Some(&self.data[offset.min(len) as usize..])
        } else {
            None
        }
    }
}

/// Bytes' worth of entries (in FUSE's encoding) asked of the server per plain readdir.
pub const DIR_CHUNK: u32 = 64 * 1024;

/// Entries already fetched for one directory handle, starting at cookie `offset`.
#[derive(Debug, Default)]
struct DirCache {
    /// The cookie the kernel passes to read the first entry of `entries`.
    offset: u64,
    entries: std::collections::VecDeque<ferry_protocol::DirEntry>,
    /// The server returned no entries after `offset`.
    eof: bool,
}

impl DirCache {
    /// Whether a read at `offset` can be answered from this cache.
    fn serves(&self, offset: u64) -> bool {
        self.offset == offset && (self.eof || !self.entries.is_empty())
    }

    /// Moves entries into `reply` until it is full; the cache keeps what did not fit.
    fn fill(&mut self, reply: &mut ReplyDirectory) {
        while let Some(e) = self.entries.front() {
            let name = OsStr::from_bytes(&e.name);
            if reply.add(INodeNo(e.ino), e.offset, kind_from_dtype(e.kind), name) {
                break;
            }
            self.offset = e.offset;
            self.entries.pop_front();
        }
    }
}

impl FerryFs {
    /// An adapter forwarding to export `export` of `client`, with the given entry/attr TTL.
    pub fn new(client: Arc<Client>, export: u32, ttl: Duration) -> Self {
        let both = proto::features::POSIX_LOCKS | proto::features::FLOCK;
        Self {
            host_locks: client.welcome().features & both == both,
            locked: DashMap::new(),
            revalidate: Revalidator::new(),
            client,
            export,
            ttl,
            caller_groups: false,
            deferred_forgets: Arc::default(),
            dir_caches: Arc::default(),
            prefetched: Arc::default(),
            replay: Arc::default(),
            keep_cache: false,
        }
    }

    /// Keeps file pages cached across opens; only safe when host changes invalidate them.
    pub fn with_keep_cache(mut self, keep: bool) -> Self {
        self.keep_cache = keep;
        self
    }

    /// The state the replay thread shares with this adapter.
    pub fn replay_state(&self) -> Arc<ReplayState> {
        Arc::clone(&self.replay)
    }

    /// A callback that drops the bytes prefetched for a node (its data changed on the host).
    pub fn prefetch_dropper(&self) -> Box<dyn Fn(u64) + Send> {
        let prefetched = Arc::clone(&self.prefetched);
        Box::new(move |ino| {
            if !prefetched.is_empty() {
                prefetched.retain(|_, p| p.ino != ino);
            }
        })
    }

    /// Whether `req` comes from the replay thread.
    fn replaying(&self, req: &Request) -> bool {
        self.replay.is_replay(req.pid())
    }

    /// FOPEN flags for an open reply: the server's, plus KEEP_CACHE in `cached` mode.
    fn open_flags(&self, bits: u32) -> FopenFlags {
        let mut f = fopen_flags(bits);
        if self.keep_cache && !f.contains(FopenFlags::FOPEN_DIRECT_IO) {
            f |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        f
    }

    /// Asks the host for `name` in `parent` while the kernel waits on a replayed request (a
    /// read, never a change). `done` gets the entry, for which the host took one lookup, or
    /// the error, and a way to give a lookup back later: the callback runs on the client's
    /// reader thread, which must not send, so the Forget goes out from a FUSE thread.
    fn host_lookup<F>(&self, req: &Request, parent: u64, name: &OsStr, done: F)
    where
        F: FnOnce(Result<proto::Entry, Errno>, &dyn Fn(u64)) + Send + 'static,
    {
        let deferred = Arc::clone(&self.deferred_forgets);
        let body = Req::Lookup(proto::Lookup {
            parent,
            name: bytes(name),
        });
        self.call(req, body, &[], move |r| {
            let forget_later = |ino: u64| {
                deferred
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((ino, 1));
            };
            let r = match r {
                Ok(Reply::Entry(e)) => Ok(e),
                Ok(other) => {
                    wrong("lookup", &other);
                    Err(Errno::EIO)
                }
                Err(e) => Err(e),
            };
            done(r, &forget_later);
        });
    }

    /// Answers a replayed creation with the node the host change carries.
    fn replay_created(&self, req: &Request, parent: u64, name: &OsStr, reply: ReplyEntry) {
        // The kernel holds the directory locked while it waits for this answer, so no other
        // guest operation on the name can come in between: check the host still has what the
        // change says (a read), so a late replay never hides a newer file under the name.
        let Some(c) = self.replay.created() else {
            return reply.error(fuser::Errno::EIO);
        };
        let ttl = self.ttl;
        let state = Arc::clone(&self.replay);
        self.host_lookup(req, parent, name, move |r, forget_later| {
            let real = !ReplayState::is_synthetic(c.ino);
            // The change's own lookup never reaches the kernel in this answer.
            if real {
                forget_later(c.ino);
            }
            match r {
                Ok(now) if now.ino == c.ino || !real => {
                    // The name holds the created object (or one whose creation is about to be
                    // replayed too): hand the kernel this fresh lookup.
                    reply.entry(&ttl, &entry_attr(&now), Generation(now.generation));
                }
                Ok(now) => {
                    // Something newer holds the name: this creation is stale.
                    forget_later(now.ino);
                    reply.error(fuser::Errno::EEXIST);
                }
                Err(Errno::ENOENT) => {
                    // Already gone again: a transient node until its removal is replayed.
                    let e = if real { state.synthetic_like(&c) } else { c };
                    reply.entry(&ttl, &entry_attr(&e), Generation(0));
                }
                Err(_) => reply.error(fuser::Errno::EIO),
            }
        });
    }

    /// Answers the replay thread's LOOKUP of a name the change is about. The view says how the
    /// name looked before the change; the host says how it looks now. While the change still
    /// holds (the name is the change's object, or gone), the view answers, so the replayed
    /// operation raises its event; when something newer holds the name, the host answers, so
    /// the kernel never caches a stale node under a name a program is using. The kernel holds
    /// the directory locked meanwhile, so no guest operation on the name comes in between.
    fn replay_lookup(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        answer: Answer,
        node: Option<u64>,
        reply: ReplyEntry,
    ) {
        let ttl = self.ttl;
        let state = Arc::clone(&self.replay);
        self.host_lookup(req, parent, name, move |r, forget_later| {
            // A name the change creates expects the change's own object; a name it removes or
            // renames away expects nothing.
            let current = match &r {
                Ok(now) => matches!(answer, Answer::Absent) && node == Some(now.ino),
                Err(_) => true,
            };
            match r {
                Ok(now) if !current => {
                    reply.entry(&ttl, &entry_attr(&now), Generation(now.generation));
                }
                r => {
                    if let Ok(now) = r {
                        forget_later(now.ino);
                    }
                    match state.hand_out(&answer) {
                        Some(e) => reply.entry(&ttl, &entry_attr(&e), Generation(e.generation)),
                        None => reply.error(fuser::Errno::ENOENT),
                    }
                }
            }
        });
    }

    /// Answers a replayed removal once the host is checked to no longer have the name (see
    /// [`FerryFs::replay_created`]).
    fn replay_removed(&self, req: &Request, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.host_lookup(req, parent, name, move |r, forget_later| match r {
            Err(Errno::ENOENT) => reply.ok(),
            Ok(now) => {
                // Created again since: the removal is stale.
                forget_later(now.ino);
                reply.error(fuser::Errno::EBUSY);
            }
            Err(_) => reply.error(fuser::Errno::EIO),
        });
    }

    /// Answers a replayed rename once the host is checked to have the source gone and the
    /// target present (see [`FerryFs::replay_created`]). Both lookups go out at once; the
    /// later answer decides.
    fn replay_renamed(
        &self,
        req: &Request,
        from: (u64, &OsStr),
        to: (u64, &OsStr),
        reply: ReplyEmpty,
    ) {
        type Seen = (Option<bool>, Option<bool>, Option<ReplyEmpty>);
        let seen: Arc<Mutex<Seen>> = Arc::new(Mutex::new((None, None, Some(reply))));
        for (i, (parent, name)) in [from, to].into_iter().enumerate() {
            let seen = Arc::clone(&seen);
            self.host_lookup(req, parent, name, move |r, forget_later| {
                // An unknown answer counts as stale: the source as still there, the target as
                // missing.
                let present = match r {
                    Ok(e) => {
                        forget_later(e.ino);
                        true
                    }
                    Err(Errno::ENOENT) => false,
                    Err(_) => i == 0,
                };
                let mut g = seen.lock().unwrap_or_else(|e| e.into_inner());
                if i == 0 {
                    g.0 = Some(present);
                } else {
                    g.1 = Some(present);
                }
                if let (Some(src), Some(dst)) = (g.0, g.1) {
                    if let Some(reply) = g.2.take() {
                        if !src && dst {
                            reply.ok();
                        } else {
                            reply.error(fuser::Errno::EBUSY);
                        }
                    }
                }
            });
        }
    }

    /// Makes creating requests carry the caller's supplementary groups, read from
    /// `/proc/PID/status` (FUSE passes only the uid, gid and pid). The server asks for them
    /// when it creates files as the caller ([`proto::ExportInfo::wants_groups`]).
    pub fn with_caller_groups(mut self, on: bool) -> Self {
        self.caller_groups = on;
        self
    }

    /// Where the mount puts the session's notifier once the session exists.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        Arc::clone(&self.revalidate.notifier)
    }

    /// Sends a lock request; a granted lock (not an unlock) is answered after the node's
    /// cached data is dropped.
    fn call_lock(&self, req: &Request, ino: u64, unlock: bool, body: Req<'_>, reply: ReplyEmpty) {
        if unlock {
            self.call(req, body, &[], empty_done("lock", reply));
            return;
        }
        self.drop_prefetched(ino);
        let queue = self
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
            Ok(other) => reply.error(wrong("lock", &other)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn call<F>(&self, req: &Request, body: Req<'_>, payload: &[u8], done: F)
    where
        F: FnOnce(Result<Reply<'_>, Errno>) + Send + 'static,
    {
        self.client
            .call(self.export, ctx(req), &body, payload, Box::new(done));
    }

    /// As [`Self::call`] for a request that creates a node: the caller's supplementary groups
    /// go with it when the server wants them.
    fn call_creating<F>(&self, req: &Request, body: Req<'_>, done: F)
    where
        F: FnOnce(Result<Reply<'_>, Errno>) + Send + 'static,
    {
        let mut ctx = ctx(req);
        // Root bypasses the permission checks the groups would serve.
        if self.caller_groups && ctx.uid != 0 && ctx.pid != 0 {
            ctx.groups = caller_groups(ctx.pid);
        }
        self.client
            .call(self.export, ctx, &body, &[], Box::new(done));
    }

    fn forget_nodes(&self, req: &Request, mut nodes: Vec<(u64, u64)>) {
        nodes.append(&mut self.take_deferred());
        if nodes.is_empty() {
            return;
        }
        self.client
            .send_oneway(self.export, ctx(req), &Req::Forget(proto::Forget { nodes }));
    }

    fn take_deferred(&self) -> Vec<(u64, u64)> {
        std::mem::take(
            &mut *self
                .deferred_forgets
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Answers a read from the bytes prefetched at open, handing `reply` back when they do not
    /// cover it (or are too old) so that the caller asks the host.
    fn read_prefetched(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) -> Option<ReplyData> {
        let Some(p) = self.prefetched.get(&fh) else {
            return Some(reply);
        };
        let bytes = if p.at.elapsed() <= self.ttl {
            p.slice(offset, size)
        } else {
            None
        };
        match bytes {
            Some(bytes) => {
                let consumed = offset + bytes.len() as u64 >= p.data.len() as u64;
                reply.data(bytes);
                drop(p);
                // Reads past the buffer go to the host from now on: free it.
                if consumed {
                    self.prefetched.remove(&fh);
                }
                None
            }
            None => {
                drop(p);
                self.prefetched.remove(&fh);
                Some(reply)
            }
        }
    }

    /// Forgets every prefetched buffer of `ino`: this guest is changing the file.
    fn drop_prefetched(&self, ino: u64) {
        if !self.prefetched.is_empty() {
            self.prefetched.retain(|_, p| p.ino != ino);
        }
    }

    fn flush_deferred(&self, req: &Request) {
        let nodes = self.take_deferred();
        if !nodes.is_empty() {
            self.forget_nodes(req, nodes);
        }
    }
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        groups: Vec::new(),
    }
}

/// The supplementary groups of thread `tid` (the pid FUSE reports is the calling thread's),
/// from the `Groups:` line of `/proc/TID/status`; empty when the thread is gone.
pub fn caller_groups(tid: u32) -> Vec<u32> {
    match std::fs::read(format!("/proc/{tid}/status")) {
        Ok(status) => parse_groups(&status),
        Err(e) => {
            debug!(tid, "cannot read the caller's groups: {e}");
            Vec::new()
        }
    }
}

/// The ids on the `Groups:` line of a `/proc/PID/status` text.
fn parse_groups(status: &[u8]) -> Vec<u32> {
    status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"Groups:"))
        .map(|l| {
            String::from_utf8_lossy(l)
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

fn bytes(s: &OsStr) -> &[u8] {
    s.as_bytes()
}

/// Logs a reply of the wrong kind for `op` and returns EIO for the kernel.
fn wrong(op: &str, r: &Reply<'_>) -> fuser::Errno {
    error!(op, reply = ?std::mem::discriminant(r), "server sent a reply of the wrong kind");
    fuser::Errno::EIO
}

/// Protocol time → `SystemTime` (saturating at the epoch on overflow).
pub fn system_time(t: Timespec) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
    let base = if t.sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.sec.unsigned_abs()))
    };
    base.and_then(|b| b.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

/// `SystemTime` → protocol time (before the epoch: negative seconds, positive nanoseconds).
pub fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            sec: d.as_secs().min(i64::MAX as u64) as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut sec = -(d.as_secs().min(i64::MAX as u64) as i64);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timespec { sec, nsec }
        }
    }
}

/// File type from `st_mode`; unknown types are reported as regular files.
pub fn kind_from_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// File type from a `DT_*` value; `DT_UNKNOWN` and others are reported as regular files
/// (fuser has no "unknown" type).
pub fn kind_from_dtype(dt: u8) -> FileType {
    match dt {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn mode_from_dtype(dt: u8) -> u32 {
    match kind_from_dtype(dt) {
        FileType::Directory => libc::S_IFDIR,
        FileType::Symlink => libc::S_IFLNK,
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Socket => libc::S_IFSOCK,
        FileType::RegularFile => libc::S_IFREG,
    }
}

/// Protocol [`Attr`] → `fuser::FileAttr`.
pub fn file_attr(a: &Attr) -> FileAttr {
    let mtime = system_time(a.mtime);
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime,
        ctime: system_time(a.ctime),
        crtime: mtime,
        kind: kind_from_mode(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// The attributes of an [`proto::Entry`], with the node id taken from the entry.
fn entry_attr(e: &proto::Entry) -> FileAttr {
    let mut attr = file_attr(&e.attr);
    attr.ino = INodeNo(e.ino);
    attr
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(timespec(t)),
    }
}

fn fopen_flags(bits: u32) -> FopenFlags {
    let mut f = FopenFlags::from_bits_truncate(bits);
    // Passthrough needs a backing fd in this process; fuser asserts it is absent here.
    f.remove(FopenFlags::FOPEN_PASSTHROUGH);
    f
}

fn entry_done(
    op: &'static str,
    ttl: Duration,
    reply: ReplyEntry,
) -> impl FnOnce(Result<Reply<'_>, Errno>) + Send + 'static {
    move |r| match r {
        Ok(Reply::Entry(e)) => reply.entry(&ttl, &entry_attr(&e), Generation(e.generation)),
        Ok(other) => reply.error(wrong(op, &other)),
        Err(e) => reply.error(errno(e)),
    }
}

fn attr_done(
    op: &'static str,
    ttl: Duration,
    reply: ReplyAttr,
) -> impl FnOnce(Result<Reply<'_>, Errno>) + Send + 'static {
    move |r| match r {
        Ok(Reply::Attr(a)) => reply.attr(&ttl, &file_attr(&a)),
        Ok(other) => reply.error(wrong(op, &other)),
        Err(e) => reply.error(errno(e)),
    }
}

fn empty_done(
    op: &'static str,
    reply: ReplyEmpty,
) -> impl FnOnce(Result<Reply<'_>, Errno>) + Send + 'static {
    move |r| match r {
        Ok(Reply::Empty) => reply.ok(),
        Ok(other) => reply.error(wrong(op, &other)),
        Err(e) => reply.error(errno(e)),
    }
}

fn data_done(
    op: &'static str,
    reply: ReplyData,
) -> impl FnOnce(Result<Reply<'_>, Errno>) + Send + 'static {
    move |r| match r {
        Ok(Reply::Data(d)) => reply.data(d),
        Ok(other) => reply.error(wrong(op, &other)),
        Err(e) => reply.error(errno(e)),
    }
}

fn open_done(
    op: &'static str,
    reply: ReplyOpen,
) -> impl FnOnce(Result<Reply<'_>, Errno>) + Send + 'static {
    move |r| match r {
        Ok(Reply::Opened(o)) => reply.opened(FileHandle(o.fh), fopen_flags(o.open_flags)),
        Ok(other) => reply.error(wrong(op, &other)),
        Err(e) => reply.error(errno(e)),
    }
}

fn written_done(
    op: &'static str,
    reply: ReplyWrite,
) -> impl FnOnce(Result<Reply<'_>, Errno>) + Send + 'static {
    move |r| match r {
        Ok(Reply::Written(n)) => reply.written(n),
        Ok(other) => reply.error(wrong(op, &other)),
        Err(e) => reply.error(errno(e)),
    }
}

fn xattr_done(
    op: &'static str,
    size: u32,
    reply: ReplyXattr,
) -> impl FnOnce(Result<Reply<'_>, Errno>) + Send + 'static {
    move |r| match r {
        Ok(Reply::XattrSize(n)) if size == 0 => reply.size(n),
        Ok(Reply::Data(d)) if size == 0 => reply.size(d.len() as u32),
        Ok(Reply::Data(d)) if d.len() <= size as usize => reply.data(d),
        Ok(Reply::Data(_) | Reply::XattrSize(_)) => reply.error(fuser::Errno::ERANGE),
        Ok(other) => reply.error(wrong(op, &other)),
        Err(e) => reply.error(errno(e)),
    }
}

impl Filesystem for FerryFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_DATA as u32) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_DATA as u32) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let mut wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_PARALLEL_DIROPS
            // No FUSE_ATOMIC_O_TRUNC: with it the kernel forwards O_TRUNC in OPEN, so the host
            // truncates before the kernel's own checks (a file being executed answers
            // ETXTBSY, yet would be left empty). Without it the kernel truncates with SETATTR
            // once those checks have passed, as on a local disk.
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        let features = self.client.welcome().features;
        if features & proto::features::POSIX_LOCKS != 0 {
            wanted |= InitFlags::FUSE_POSIX_LOCKS;
        }
        if features & proto::features::FLOCK != 0 {
            wanted |= InitFlags::FUSE_FLOCK_LOCKS;
        }
        if self.client.welcome().features & proto::features::READDIRPLUS != 0 {
            wanted |= InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        }
        for flag in wanted.iter() {
            if let Err(missing) = config.add_capabilities(flag) {
                debug!(?missing, "kernel lacks FUSE capability");
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if self.replaying(req) {
            if let Some((answer, node)) = self.replay.intent(parent.0, bytes(name)) {
                return self.replay_lookup(req, parent.0, name, answer, node, reply);
            }
        }
        if ReplayState::is_synthetic(parent.0) {
            return reply.error(fuser::Errno::ENOENT);
        }
        let body = Req::Lookup(proto::Lookup {
            parent: parent.0,
            name: bytes(name),
        });
        let ttl = self.ttl;
        self.call(req, body, &[], move |r| match r {
            // A name that is not there is cached as a negative entry (node id 0) for the same
            // TTL as a positive one: tools that probe many missing paths (module resolution,
            // `git status`, PATH lookups) then pay one round trip per name, not one per probe.
            // A file the host creates meanwhile shows up within the TTL, as attributes do.
            Err(Errno::ENOENT) if !ttl.is_zero() => {
                let negative = FileAttr {
                    ino: INodeNo(0),
                    ..file_attr(&ferry_protocol::Attr::default())
                };
                reply.entry(&ttl, &negative, Generation(0));
            }
            r => entry_done("lookup", ttl, reply)(r),
        });
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        if ReplayState::is_synthetic(ino.0) {
            return self.replay.forget_synthetic(ino.0);
        }
        self.forget_nodes(req, vec![(ino.0, nlookup)]);
    }

    // `batch_forget` is not overridden: fuser 0.18 does not export `ForgetOne`, so its
    // default implementation calls `forget` for each node (one Forget frame each).

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if ReplayState::is_synthetic(ino.0) {
            return match self.replay.synthetic_attr(ino.0) {
                Some(a) => reply.attr(&self.ttl, &file_attr(&a)),
                None => reply.error(fuser::Errno::ESTALE),
            };
        }
        let body = Req::Getattr(proto::Getattr {
            ino: ino.0,
            fh: fh.map(|f| f.0),
        });
        self.call(req, body, &[], attr_done("getattr", self.ttl, reply));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if self.replaying(req) || ReplayState::is_synthetic(ino.0) {
            // A replayed change: the kernel keeps the attributes of this reply, so they must be
            // the host's as they are now, asked for here (a read; the host file is never
            // changed). A snapshot taken when the change was seen could carry an older size
            // than writes this guest has made since, and shrink the file under them.
            if ReplayState::is_synthetic(ino.0) {
                return match self.replay.synthetic_attr(ino.0) {
                    Some(a) => reply.attr(&self.ttl, &file_attr(&a)),
                    None => reply.error(fuser::Errno::ESTALE),
                };
            }
            let body = Req::Getattr(proto::Getattr {
                ino: ino.0,
                fh: None,
            });
            return self.call(req, body, &[], attr_done("getattr", self.ttl, reply));
        }
        if size.is_some() {
            self.drop_prefetched(ino.0);
        }
        let body = Req::Setattr(proto::Setattr {
            ino: ino.0,
            fh: fh.map(|f| f.0),
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        });
        self.call(req, body, &[], attr_done("setattr", self.ttl, reply));
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let body = Req::Readlink(proto::Readlink { ino: ino.0 });
        self.call(req, body, &[], data_done("readlink", reply));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        if self.replaying(req) {
            return self.replay_created(req, parent.0, name, reply);
        }
        let body = Req::Mknod(proto::Mknod {
            parent: parent.0,
            name: bytes(name),
            mode,
            rdev,
            umask,
        });
        self.call_creating(req, body, entry_done("mknod", self.ttl, reply));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        if self.replaying(req) {
            return self.replay_created(req, parent.0, name, reply);
        }
        let body = Req::Mkdir(proto::Mkdir {
            parent: parent.0,
            name: bytes(name),
            mode,
            umask,
        });
        self.call_creating(req, body, entry_done("mkdir", self.ttl, reply));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.replaying(req) {
            return self.replay_removed(req, parent.0, name, reply);
        }
        let body = Req::Unlink(proto::Unlink {
            parent: parent.0,
            name: bytes(name),
        });
        self.call(req, body, &[], empty_done("unlink", reply));
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.replaying(req) {
            return self.replay_removed(req, parent.0, name, reply);
        }
        let body = Req::Rmdir(proto::Rmdir {
            parent: parent.0,
            name: bytes(name),
        });
        self.call(req, body, &[], empty_done("rmdir", reply));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        if self.replaying(req) {
            return self.replay_created(req, parent.0, link_name, reply);
        }
        let body = Req::Symlink(proto::Symlink {
            parent: parent.0,
            name: bytes(link_name),
            target: target.as_os_str().as_bytes(),
        });
        self.call_creating(req, body, entry_done("symlink", self.ttl, reply));
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if self.replaying(req) {
            return self.replay_renamed(req, (parent.0, name), (newparent.0, newname), reply);
        }
        let body = Req::Rename(proto::Rename {
            parent: parent.0,
            name: bytes(name),
            newparent: newparent.0,
            newname: bytes(newname),
            flags: flags.bits(),
        });
        self.call(req, body, &[], empty_done("rename", reply));
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let body = Req::Link(proto::Link {
            ino: ino.0,
            newparent: newparent.0,
            newname: bytes(newname),
        });
        self.call(req, body, &[], entry_done("link", self.ttl, reply));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.replaying(req) {
            return reply.opened(FileHandle(self.replay.replay_fh()), FopenFlags::empty());
        }
        let read_only = flags.0 & libc::O_ACCMODE == libc::O_RDONLY && flags.0 & libc::O_TRUNC == 0;
        let prefetch = if read_only && !self.ttl.is_zero() {
            PREFETCH
        } else {
            0
        };
        let body = Req::Open(proto::Open {
            ino: ino.0,
            flags: flags.0,
            prefetch,
        });
        let prefetched = self.prefetched.clone();
        let keep = self.open_flags(0);
        self.call(req, body, &[], move |r| match r {
            Ok(Reply::Opened(o)) => {
                reply.opened(FileHandle(o.fh), fopen_flags(o.open_flags) | keep)
            }
            Ok(Reply::OpenedData(o, data)) => {
                // Stored before the kernel learns the handle, so its first READ finds it.
                prefetched.insert(
                    o.fh,
                    Prefetched {
                        ino: ino.0,
                        data: data.to_vec(),
                        eof: data.len() < PREFETCH as usize,
                        at: std::time::Instant::now(),
                    },
                );
                reply.opened(FileHandle(o.fh), fopen_flags(o.open_flags) | keep);
            }
            other => open_done("open", reply)(other),
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if self.replaying(req) {
            return match self.replay.created() {
                Some(e) => reply.created(
                    &self.ttl,
                    &entry_attr(&e),
                    Generation(e.generation),
                    FileHandle(self.replay.replay_fh()),
                    FopenFlags::empty(),
                ),
                None => reply.error(fuser::Errno::EIO),
            };
        }
        let keep = self.open_flags(0);
        let body = Req::Create(proto::Create {
            parent: parent.0,
            name: bytes(name),
            mode,
            umask,
            flags,
        });
        let ttl = self.ttl;
        self.call_creating(req, body, move |r| match r {
            Ok(Reply::Created(c)) => reply.created(
                &ttl,
                &entry_attr(&c.entry),
                Generation(c.entry.generation),
                FileHandle(c.opened.fh),
                fopen_flags(c.opened.open_flags) | keep,
            ),
            Ok(other) => reply.error(wrong("create", &other)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if size as usize > MAX_DATA {
            // Cannot happen with max_pages derived from max_write = MAX_DATA; a short read
            // would be zero-filled by the kernel, so refuse instead.
            error!(size, "read larger than the protocol allows");
            reply.error(fuser::Errno::EINVAL);
            return;
        }
        if let Some(reply) = self.read_prefetched(fh.0, offset, size, reply) {
            let body = Req::Read(proto::Read {
                ino: ino.0,
                fh: fh.0,
                offset,
                size,
            });
            self.call(req, body, &[], data_done("read", reply));
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.drop_prefetched(ino.0);
        let body = Req::Write(proto::Write {
            ino: ino.0,
            fh: fh.0,
            offset,
            write_flags: write_flags.bits(),
            flags: flags.0,
        });
        self.call(req, body, data, written_done("write", reply));
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // `close(2)` sends FLUSH and waits for it. Data needs nothing: every WRITE was a
        // synchronous pwrite the host acknowledged. Locks do: a close drops the closing
        // process's POSIX locks on the file, so a file this mount ever locked goes to the host.
        if !self.host_locks {
            // Locks are the guest kernel's own: ENOSYS makes it stop sending FLUSH at all.
            reply.error(fuser::Errno::ENOSYS);
            return;
        }
        if !self.locked.contains_key(&ino.0) {
            reply.ok();
            return;
        }
        let body = Req::Flush(proto::Flush {
            ino: ino.0,
            fh: fh.0,
            lock_owner: lock_owner.0,
        });
        self.call(req, body, &[], empty_done("flush", reply));
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        flush: bool,
        reply: ReplyEmpty,
    ) {
        if fh.0 >= REPLAY_FH_BASE {
            // The replay thread's own open: the host never saw it.
            return reply.ok();
        }
        self.prefetched.remove(&fh.0);
        let body = Req::Release(proto::Release {
            ino: ino.0,
            fh: fh.0,
            flags: flags.0,
            lock_owner: lock_owner.map(|o| o.0),
            flush,
        });
        self.call(req, body, &[], empty_done("release", reply));
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let body = Req::Fsync(proto::Fsync {
            ino: ino.0,
            fh: fh.0,
            datasync,
        });
        self.call(req, body, &[], empty_done("fsync", reply));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let body = Req::Opendir(proto::Opendir {
            ino: ino.0,
            flags: flags.0,
        });
        self.call(req, body, &[], open_done("opendir", reply));
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // The kernel reads a directory handle one page at a time, in order, and never two at
        // once; whatever the last chunk left over answers the next page without a round trip.
        if let Some(mut cache) = self.dir_caches.get_mut(&fh.0) {
            if cache.serves(offset) {
                cache.fill(&mut reply);
                reply.ok();
                return;
            }
        }
        let body = Req::Readdir(proto::Readdir {
            ino: ino.0,
            fh: fh.0,
            offset,
            size: DIR_CHUNK,
        });
        let caches = self.dir_caches.clone();
        self.call(req, body, &[], move |r| match r {
            Ok(Reply::Dir(entries)) => {
                let mut cache = DirCache {
                    offset,
                    eof: entries.is_empty(),
                    entries: entries.into(),
                };
                cache.fill(&mut reply);
                reply.ok();
                caches.insert(fh.0, cache);
            }
            Ok(other) => reply.error(wrong("readdir", &other)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.flush_deferred(req);
        let body = Req::Readdirplus(proto::Readdirplus {
            ino: ino.0,
            fh: fh.0,
            offset,
            size: DIR_BUF_SIZE,
        });
        let ttl = self.ttl;
        let deferred = self.deferred_forgets.clone();
        let dir = ino.0;
        self.call(req, body, &[], move |r| match r {
            Ok(Reply::DirPlus(entries)) => {
                let forgets = fill_dirplus(&mut reply, dir, ttl, &entries);
                reply.ok();
                if !forgets.is_empty() {
                    deferred
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(forgets);
                }
            }
            Ok(other) => reply.error(wrong("readdirplus", &other)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.flush_deferred(req);
        self.dir_caches.remove(&fh.0);
        let body = Req::Releasedir(proto::Releasedir {
            ino: ino.0,
            fh: fh.0,
            flags: flags.0,
        });
        self.call(req, body, &[], empty_done("releasedir", reply));
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let body = Req::Fsyncdir(proto::Fsyncdir {
            ino: ino.0,
            fh: fh.0,
            datasync,
        });
        self.call(req, body, &[], empty_done("fsyncdir", reply));
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let body = Req::StatfsReq(proto::StatfsReq { ino: ino.0 });
        self.call(req, body, &[], move |r| match r {
            Ok(Reply::Statfs(s)) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Ok(other) => reply.error(wrong("statfs", &other)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if position != 0 {
            // macOS resource forks only.
            reply.error(fuser::Errno::EINVAL);
            return;
        }
        let body = Req::Setxattr(proto::Setxattr {
            ino: ino.0,
            name: bytes(name),
            value,
            flags,
        });
        self.call(req, body, &[], empty_done("setxattr", reply));
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let body = Req::Getxattr(proto::Getxattr {
            ino: ino.0,
            name: bytes(name),
            size,
        });
        self.call(req, body, &[], xattr_done("getxattr", size, reply));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let body = Req::Listxattr(proto::Listxattr { ino: ino.0, size });
        self.call(req, body, &[], xattr_done("listxattr", size, reply));
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let body = Req::Removexattr(proto::Removexattr {
            ino: ino.0,
            name: bytes(name),
        });
        self.call(req, body, &[], empty_done("removexattr", reply));
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let body = Req::Access(proto::Access {
            ino: ino.0,
            mask: mask.bits(),
        });
        self.call(req, body, &[], empty_done("access", reply));
    }

    fn getlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let body = Req::Getlk(proto::Getlk {
            ino: ino.0,
            fh: fh.0,
            owner: lock_owner.0,
            lock: proto::Lock {
                start,
                end,
                typ,
                pid,
            },
        });
        self.call(req, body, &[], move |r| match r {
            Ok(Reply::Lock(l)) => reply.locked(l.start, l.end, l.typ, l.pid),
            Ok(other) => reply.error(wrong("getlk", &other)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        self.locked.insert(ino.0, ());
        let body = Req::Setlk(proto::Setlk {
            ino: ino.0,
            fh: fh.0,
            owner: lock_owner.0,
            lock: proto::Lock {
                start,
                end,
                typ,
                pid,
            },
            sleep,
        });
        self.call_lock(req, ino.0, typ == libc::F_UNLCK, body, reply);
    }

    fn flock(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        typ: i32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let op = match typ {
            libc::F_RDLCK => libc::LOCK_SH,
            libc::F_WRLCK => libc::LOCK_EX,
            libc::F_UNLCK => libc::LOCK_UN,
            _ => {
                reply.error(fuser::Errno::EINVAL);
                return;
            }
        };
        let body = Req::Flock(proto::Flock {
            ino: ino.0,
            fh: fh.0,
            owner: lock_owner.0,
            op: if sleep { op } else { op | libc::LOCK_NB },
        });
        self.call_lock(req, ino.0, op == libc::LOCK_UN, body, reply);
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.drop_prefetched(ino.0);
        let body = Req::Fallocate(proto::Fallocate {
            ino: ino.0,
            fh: fh.0,
            offset,
            length,
            mode,
        });
        self.call(req, body, &[], empty_done("fallocate", reply));
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let body = Req::Lseek(proto::Lseek {
            ino: ino.0,
            fh: fh.0,
            offset,
            whence,
        });
        self.call(req, body, &[], move |r| match r {
            Ok(Reply::Offset(o)) => reply.offset(o),
            Ok(other) => reply.error(wrong("lseek", &other)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.drop_prefetched(ino_out.0);
        let body = Req::CopyFileRange(proto::CopyFileRange {
            ino_in: ino_in.0,
            fh_in: fh_in.0,
            offset_in,
            ino_out: ino_out.0,
            fh_out: fh_out.0,
            offset_out,
            len,
            flags: flags.bits() as u32,
        });
        self.call(req, body, &[], written_done("copy_file_range", reply));
    }
}

/// Fills a readdirplus reply; returns the `(node, 1)` lookups the kernel will never forget:
/// entries that did not fit, and `.`/`..` (the kernel does not link those).
fn fill_dirplus(
    reply: &mut ReplyDirectoryPlus,
    dir: u64,
    ttl: Duration,
    entries: &[proto::DirEntryPlus],
) -> Vec<(u64, u64)> {
    let mut forgets = Vec::new();
    let mut full = false;
    for e in entries {
        let is_dot = e.name == b"." || e.name == b"..";
        if full {
            if e.entry.ino != 0 {
                forgets.push((e.entry.ino, 1));
            }
            continue;
        }
        let (attr, generation) = if e.entry.ino != 0 {
            (entry_attr(&e.entry), e.entry.generation)
        } else {
            // Not looked up: node id 0 tells the kernel not to link it. The kernel ignores the
            // node id of `.` and `..`, so give those a usable inode number for the dirent.
            let ino = match (is_dot, e.entry.attr.ino) {
                (true, 0) => dir,
                (true, ino) => ino,
                (false, _) => 0,
            };
            let mut attr = file_attr(&Attr {
                mode: mode_from_dtype(e.kind),
                ..e.entry.attr
            });
            attr.ino = INodeNo(ino);
            (attr, 0)
        };
        let name = OsStr::from_bytes(&e.name);
        if reply.add(
            attr.ino,
            e.offset,
            name,
            &ttl,
            &attr,
            Generation(generation),
        ) {
            full = true;
            if e.entry.ino != 0 {
                forgets.push((e.entry.ino, 1));
            }
        } else if is_dot && e.entry.ino != 0 {
            forgets.push((e.entry.ino, 1));
        }
    }
    forgets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_conversion() {
        let a = Attr {
            ino: 42,
            size: 12345,
            blocks: 24,
            atime: Timespec {
                sec: 1_700_000_000,
                nsec: 5,
            },
            mtime: Timespec {
                sec: 1_700_000_100,
                nsec: 999_999_999,
            },
            ctime: Timespec { sec: -2, nsec: 500 },
            mode: libc::S_IFREG | 0o4755,
            nlink: 2,
            uid: 1000,
            gid: 100,
            rdev: 0,
            blksize: 4096,
        };
        let f = file_attr(&a);
        assert_eq!(f.ino, INodeNo(42));
        assert_eq!(f.size, 12345);
        assert_eq!(f.blocks, 24);
        assert_eq!(f.kind, FileType::RegularFile);
        assert_eq!(f.perm, 0o4755);
        assert_eq!(f.nlink, 2);
        assert_eq!(
            (f.uid, f.gid, f.rdev, f.blksize, f.flags),
            (1000, 100, 0, 4096, 0)
        );
        assert_eq!(f.atime, UNIX_EPOCH + Duration::new(1_700_000_000, 5));
        assert_eq!(
            f.mtime,
            UNIX_EPOCH + Duration::new(1_700_000_100, 999_999_999)
        );
        assert_eq!(f.crtime, f.mtime);
        assert_eq!(
            f.ctime,
            UNIX_EPOCH - Duration::from_secs(2) + Duration::from_nanos(500)
        );
        // Round trip through timespec, including before the epoch.
        for t in [a.atime, a.mtime, a.ctime, Timespec { sec: -1, nsec: 0 }] {
            assert_eq!(timespec(system_time(t)), t);
        }
    }

    #[test]
    fn kinds() {
        let cases = [
            (libc::S_IFDIR | 0o755, FileType::Directory),
            (libc::S_IFLNK | 0o777, FileType::Symlink),
            (libc::S_IFIFO, FileType::NamedPipe),
            (libc::S_IFCHR, FileType::CharDevice),
            (libc::S_IFBLK, FileType::BlockDevice),
            (libc::S_IFSOCK, FileType::Socket),
            (libc::S_IFREG | 0o644, FileType::RegularFile),
        ];
        for (mode, kind) in cases {
            assert_eq!(kind_from_mode(mode), kind);
            let attr = file_attr(&Attr {
                mode,
                ..Default::default()
            });
            assert_eq!(attr.kind, kind);
            assert_eq!(u32::from(attr.perm), mode & 0o7777);
        }
        assert_eq!(kind_from_dtype(libc::DT_DIR), FileType::Directory);
        assert_eq!(kind_from_dtype(libc::DT_LNK), FileType::Symlink);
        assert_eq!(kind_from_dtype(libc::DT_UNKNOWN), FileType::RegularFile);
        assert_eq!(
            kind_from_mode(mode_from_dtype(libc::DT_SOCK)),
            FileType::Socket
        );
    }

    #[test]
    fn groups_come_from_proc_status() {
        let status = b"Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t27 100 2000 \nNSpid:\t5\n";
        assert_eq!(parse_groups(status), vec![27, 100, 2000]);
        assert_eq!(parse_groups(b"Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups(b"Name:\tx\n"), Vec::<u32>::new());
        // This thread's own groups, as the kernel reports them.
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::gettid() } as u32;
        let mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        assert_eq!(caller_groups(tid), mine);
        assert_eq!(caller_groups(u32::MAX), Vec::<u32>::new());
    }

    #[test]
    fn extreme_times_do_not_panic() {
        for t in [
            Timespec {
                sec: i64::MAX,
                nsec: u32::MAX,
            },
            Timespec {
                sec: i64::MIN,
                nsec: 0,
            },
        ] {
            let _ = system_time(t);
        }
        let _ = timespec(UNIX_EPOCH - Duration::from_secs(1 << 40));
    }
}
