//! [`FerryFs`]: the `fuser::Filesystem` that forwards every FUSE request to the host server.
//!
//! Each method converts fuser's arguments into a protocol request body and hands it to
//! [`Client::call`] together with a closure that owns fuser's reply object; the closure answers
//! the kernel from the client's reader thread once the server replies. A FUSE thread never
//! waits for the server.
//!
//! Caching: the entry and attribute TTL is chosen by [`crate::mount()`]: in `cached` mode
//! [`crate::MountOptions::ttl`] (60 s by default), at most 1 s when the server sends no change
//! events; in `consistent` mode zero. Host change events keep cached names, attributes and
//! pages coherent (see [`crate::replay`]); the TTL only bounds staleness should events be lost.
//! The kernel page cache stays on, kept across opens (`FOPEN_KEEP_CACHE`) only in `cached` mode
//! with change events, and with `FUSE_AUTO_INVAL_DATA` so that cached pages are dropped when a
//! refreshed mtime or size differs; `FUSE_WRITEBACK_CACHE` stays off so writes reach the host
//! at once. In the same mode directory listings are kept across opens (`FOPEN_CACHE_DIR`),
//! complete listings answer lookups of missing names ([`Listings`]), and, with guest-checked
//! permissions, read-only opens are answered here (`lazy`).
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
//!
//! - `attr`: attribute, file type, time and open-flag conversions.
//! - `reply`: protocol replies → fuser replies (one adapter for all request kinds).
//! - `core`: construction, and sending requests for the handlers.
//! - `fetch`: listings the agent reads by itself after missing names.
//! - `cache`: the per-handle caches (readdir entries fetched ahead, prefetched file bytes).
//! - `dirplus`: READDIRPLUS in large chunks, fetched ahead, whatever the kernel's buffer.
//! - `xattrs`: xattr probes answered here (names no export shows; nodes marked without any).
//! - `listings`: complete directory listings that answer lookups of missing names.
//! - `lazy`: read-only opens answered here, the host file opened when a request needs it.
//! - `locks`: host locks, revalidation on a granted lock, FLUSH for locked files.
//! - `replay`: answers to the replay thread's requests.
//! - `caller`: the caller's `Ctx` and supplementary groups.

mod attr;
mod cache;
mod caller;
mod core;
mod dirplus;
mod fetch;
mod lazy;
mod listings;
mod locks;
mod replay;
mod reply;
mod xattrs;

pub use attr::{file_attr, kind_from_dtype, kind_from_mode, system_time, timespec};
pub use cache::{DIR_CHUNK, PREFETCH};
pub use caller::caller_groups;
pub use dirplus::{DIRPLUS_CHUNK, DIRPLUS_FIRST};
pub use fetch::FETCH_CHUNKS;
pub use listings::Listings;

use dashmap::DashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_protocol as proto;
use ferry_protocol::{Errno, MAX_DATA, Reply, Request as Req};
use fuser::{
    AccessFlags, CopyFileRangeFlags, FileAttr, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, error, warn};

use crate::client::Client;
use crate::replay::ReplayState;
use attr::{fopen_flags, set_time};
use cache::{DirCache, Prefetched};
use lazy::{LazyOpens, is_lazy};
use locks::{Locks, flock_op};
use reply::{refuse, reply_with};

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
    /// Readdirplus chunks per directory handle (see `dirplus`).
    plus: Arc<dirplus::PlusCaches>,
    /// The first bytes of files, read by the host at open time, per handle (see [`PREFETCH`]).
    prefetched: Arc<DashMap<u64, Prefetched>>,
    /// Host-change replay: recognises the replay thread's requests (see [`crate::replay`]).
    replay: Arc<ReplayState>,
    /// Keep the page cache across opens (host changes invalidate it: `cached` mode).
    keep_cache: bool,
    /// Host locks, and the nodes whose FLUSHes must reach the host.
    locks: Locks,
    /// Complete listings answering lookups of missing names (`cached` mode with events).
    listings: Arc<Listings>,
    /// Read-only opens answered here (see [`lazy`]), when `lazy_open` allows them.
    lazy: Arc<LazyOpens>,
    lazy_open: bool,
    /// Ask the kernel for `FUSE_POSIX_ACL` and `FUSE_DONT_MASK` (see [`Self::with_posix_acl`]).
    posix_acl: bool,
}

fn bytes(s: &OsStr) -> &[u8] {
    s.as_bytes()
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
        // Both or neither: with POSIX_ACL alone the kernel would apply the umask itself and
        // the server could no longer tell what a default ACL should be masked with.
        if self.posix_acl {
            let acl = InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK;
            if let Err(missing) = config.add_capabilities(acl) {
                warn!(
                    ?missing,
                    "the kernel cannot enforce POSIX ACLs on this mount"
                );
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(reply) = self.replay_lookup(req, parent.0, name, reply) else {
            return;
        };
        if self.keep_cache && self.listings.lacks(parent.0, bytes(name)) {
            // Answered from a complete listing of the directory: the same negative entry the
            // host's ENOENT gives below, without the round trip.
            let negative = FileAttr {
                ino: INodeNo(0),
                ..file_attr(&ferry_protocol::Attr::default())
            };
            reply.entry(&self.ttl, &negative, Generation(0));
            crate::stats::agent().hit(crate::stats::Hit::MissingName);
            return;
        }
        let body = Req::Lookup(proto::Lookup {
            parent: parent.0,
            name: bytes(name),
        });
        let ttl = self.ttl;
        let fetch = self.keep_cache.then(|| self.listing_fetcher(req, parent.0));
        let done = move |r: Result<Reply<'_>, Errno>| match r {
            // A name that is not there is cached as a negative entry (node id 0) for the same
            // TTL as a positive one: tools that probe many missing paths (module resolution,
            // `git status`, PATH lookups) then pay one round trip per name, not one per probe.
            // A file the host creates meanwhile shows up within the TTL, as attributes do.
            Err(Errno::ENOENT) if !ttl.is_zero() => {
                // The next names probed in this directory are answered from its listing.
                if let Some(fetch) = fetch {
                    fetch();
                }
                let negative = FileAttr {
                    ino: INodeNo(0),
                    ..file_attr(&ferry_protocol::Attr::default())
                };
                reply.entry(&ttl, &negative, Generation(0));
            }
            r => reply_with("lookup", (reply, ttl))(r),
        };
        self.call(req, body, &[], self.noting(done));
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        if self.forget_synthetic(ino.0) {
            return;
        }
        self.listings.forget_dir(ino.0);
        // Lookups the replay handed out without the host counting them stay here.
        let nlookup = self.replay.kernel_forgets(ino.0, nlookup);
        if nlookup > 0 {
            self.forget_nodes(req, vec![(ino.0, nlookup)]);
        }
    }

    // `batch_forget` is not overridden: fuser 0.18 does not export `ForgetOne`, so its
    // default implementation calls `forget` for each node (one Forget frame each).

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let Some(reply) = self.synthetic_getattr(ino.0, reply) else {
            return;
        };
        let body = Req::Getattr(proto::Getattr {
            ino: ino.0,
            fh: Self::host_fh(fh),
        });
        let done = self.noting(reply_with("getattr", (reply, self.ttl)));
        self.call(req, body, &[], done);
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
        let Some(reply) = self.replay_setattr(req, ino.0, reply) else {
            return;
        };
        if size.is_some() {
            self.drop_prefetched(ino.0);
        }
        let body = Req::Setattr(proto::Setattr {
            ino: ino.0,
            fh: Self::host_fh(fh),
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        });
        let done = self.noting(reply_with("setattr", (reply, self.ttl)));
        self.call(req, body, &[], done);
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let body = Req::Readlink(proto::Readlink { ino: ino.0 });
        self.call(req, body, &[], reply_with("readlink", reply));
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
        self.listings.drop_dir(parent.0);
        if self.replaying(req) {
            return self.replay_made(req, "mknod", (parent.0, name), reply);
        }
        let body = Req::Mknod(proto::Mknod {
            parent: parent.0,
            name: bytes(name),
            mode,
            rdev,
            umask,
        });
        let done = self.changing([parent.0; 2], reply_with("mknod", (reply, self.ttl)));
        self.call_creating(req, body, done);
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
        self.listings.drop_dir(parent.0);
        if self.replaying(req) {
            return self.replay_made(req, "mkdir", (parent.0, name), reply);
        }
        let body = Req::Mkdir(proto::Mkdir {
            parent: parent.0,
            name: bytes(name),
            mode,
            umask,
        });
        let done = self.changing([parent.0; 2], reply_with("mkdir", (reply, self.ttl)));
        self.call_creating(req, body, done);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.listings.drop_dir(parent.0);
        if self.replaying(req) {
            return self.replay_removed(req, parent.0, name, reply);
        }
        self.guest_changes_names(req, &[(parent.0, name)]);
        let body = Req::Unlink(proto::Unlink {
            parent: parent.0,
            name: bytes(name),
        });
        let done = self.changing([parent.0; 2], reply_with("unlink", reply));
        self.call(req, body, &[], done);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.listings.drop_dir(parent.0);
        if self.replaying(req) {
            return self.replay_removed(req, parent.0, name, reply);
        }
        self.guest_changes_names(req, &[(parent.0, name)]);
        let body = Req::Rmdir(proto::Rmdir {
            parent: parent.0,
            name: bytes(name),
        });
        let done = self.changing([parent.0; 2], reply_with("rmdir", reply));
        self.call(req, body, &[], done);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.listings.drop_dir(parent.0);
        if self.replaying(req) {
            return self.replay_made(req, "symlink", (parent.0, link_name), reply);
        }
        let body = Req::Symlink(proto::Symlink {
            parent: parent.0,
            name: bytes(link_name),
            target: target.as_os_str().as_bytes(),
        });
        let done = self.changing([parent.0; 2], reply_with("symlink", (reply, self.ttl)));
        self.call_creating(req, body, done);
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
        self.listings.drop_dir(parent.0);
        self.listings.drop_dir(newparent.0);
        if self.replaying(req) {
            let (from, to) = ((parent.0, name), (newparent.0, newname));
            return self.replay_renamed(req, from, to, flags, reply);
        }
        self.guest_changes_names(req, &[(parent.0, name), (newparent.0, newname)]);
        let body = Req::Rename(proto::Rename {
            parent: parent.0,
            name: bytes(name),
            newparent: newparent.0,
            newname: bytes(newname),
            flags: flags.bits(),
        });
        let done = self.changing([parent.0, newparent.0], reply_with("rename", reply));
        self.call(req, body, &[], done);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.listings.drop_dir(newparent.0);
        if let Some(e) = self.refused_change(req, ino.0) {
            return reply.error(e);
        }
        let body = Req::Link(proto::Link {
            ino: ino.0,
            newparent: newparent.0,
            newname: bytes(newname),
        });
        let done = self.changing([newparent.0; 2], reply_with("link", (reply, self.ttl)));
        self.call(req, body, &[], done);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(reply) = self.replay_open(req, reply) else {
            return;
        };
        let read_only = flags.0 & libc::O_ACCMODE == libc::O_RDONLY && flags.0 & libc::O_TRUNC == 0;
        if read_only && self.lazy_open {
            let fh = self.lazy.open(ino.0, flags.0, self.ctx_with_groups(req));
            reply.opened(FileHandle(fh), self.open_flags(0));
            crate::stats::agent().hit(crate::stats::Hit::Open);
            return;
        }
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
            Ok(Reply::OpenedData(o, data)) => {
                // Stored before the kernel learns the handle, so its first READ finds it.
                prefetched.insert(o.fh, Prefetched::new(ino.0, data));
                reply.opened(FileHandle(o.fh), fopen_flags(o.open_flags) | keep);
            }
            r => reply_with("open", (reply, keep))(r),
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
        self.listings.drop_dir(parent.0);
        let Some(reply) = self.replay_create(req, parent.0, name, reply) else {
            return;
        };
        let keep = self.open_flags(0);
        let body = Req::Create(proto::Create {
            parent: parent.0,
            name: bytes(name),
            mode,
            umask,
            flags,
        });
        let ttl = self.ttl;
        let done = self.changing([parent.0; 2], reply_with("create", (reply, ttl, keep)));
        self.call_creating(req, body, done);
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
        let Some(reply) = self.read_prefetched(fh.0, offset, size, reply) else {
            return;
        };
        let Some(reply) = self.read_first(req, ino.0, fh.0, offset, size, reply) else {
            return;
        };
        let ino = ino.0;
        let make = move |h| {
            Req::Read(proto::Read {
                ino,
                fh: h,
                offset,
                size,
            })
        };
        self.call_fh(req, fh.0, make, reply_with("read", reply));
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
        if let Some(e) = self.refused_change(req, ino.0) {
            return reply.error(e);
        }
        self.drop_prefetched(ino.0);
        let body = Req::Write(proto::Write {
            ino: ino.0,
            fh: fh.0,
            offset,
            write_flags: write_flags.bits(),
            flags: flags.0,
        });
        self.call(req, body, data, reply_with("write", reply));
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let Some(reply) = self.locks.flush_here(ino.0, reply) else {
            return;
        };
        let ino = ino.0;
        let make = move |h| {
            Req::Flush(proto::Flush {
                ino,
                fh: h,
                lock_owner: lock_owner.0,
            })
        };
        self.call_fh(req, fh.0, make, reply_with("flush", reply));
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
        let Some(reply) = self.replay_release(fh.0, reply) else {
            return;
        };
        self.prefetched.remove(&fh.0);
        let fh = if is_lazy(fh.0) {
            match self.lazy.release(fh.0) {
                Some(host) => FileHandle(host),
                // No host file was opened (or it is released once its open answers).
                None => return reply.ok(),
            }
        } else {
            fh
        };
        let body = Req::Release(proto::Release {
            ino: ino.0,
            fh: fh.0,
            flags: flags.0,
            lock_owner: lock_owner.map(|o| o.0),
            flush,
        });
        self.call(req, body, &[], reply_with("release", reply));
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let ino = ino.0;
        let make = move |h| {
            Req::Fsync(proto::Fsync {
                ino,
                fh: h,
                datasync,
            })
        };
        self.call_fh(req, fh.0, make, reply_with("fsync", reply));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let body = Req::Opendir(proto::Opendir {
            ino: ino.0,
            flags: flags.0,
        });
        // In `cached` mode the kernel keeps the listing (`FOPEN_CACHE_DIR`, in the directory's
        // page cache) across opens (`FOPEN_KEEP_CACHE`), so a warm `ls` or `readdir` costs one
        // OPENDIR and no READDIR. It stays coherent because every change drops it: one made
        // through this mount (the kernel bumps the directory's version), a host change (its
        // replay, and `inval_inode` of the directory, drop its pages) and, with
        // `FUSE_AUTO_INVAL_DATA`, a changed directory mtime when a listing starts over.
        let flags = if self.keep_cache {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        self.call(req, body, &[], reply_with("opendir", (reply, flags)));
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
                crate::stats::agent().hit(crate::stats::Hit::Listing);
                return;
            }
        }
        if offset == 0 && self.keep_cache {
            self.listings.begin(fh.0, ino.0, self.listings.epoch());
        }
        let body = Req::Readdir(proto::Readdir {
            ino: ino.0,
            fh: fh.0,
            offset,
            size: DIR_CHUNK,
        });
        let caches = self.dir_caches.clone();
        let listings = self.listings.clone();
        self.call(req, body, &[], move |r| match r {
            Ok(Reply::Dir(entries)) => {
                let names: Vec<(&[u8], u64)> =
                    entries.iter().map(|e| (&e.name[..], e.offset)).collect();
                listings.add(fh.0, offset, &names);
                let mut cache = DirCache::new(offset, entries);
                cache.fill(&mut reply);
                reply.ok();
                caches.insert(fh.0, cache);
            }
            r => {
                listings.end(fh.0);
                refuse("readdir", reply, r)
            }
        });
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.readdirplus_chunked(req, ino, fh, offset, reply);
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.release_plus(fh.0);
        self.flush_deferred(req);
        self.dir_caches.remove(&fh.0);
        self.listings.end(fh.0);
        let body = Req::Releasedir(proto::Releasedir {
            ino: ino.0,
            fh: fh.0,
            flags: flags.0,
        });
        self.call(req, body, &[], reply_with("releasedir", reply));
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
        self.call(req, body, &[], reply_with("fsyncdir", reply));
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let body = Req::StatfsReq(proto::StatfsReq { ino: ino.0 });
        self.call(req, body, &[], reply_with("statfs", reply));
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
        if let Some(e) = self.refused_change(req, ino.0) {
            return reply.error(e);
        }
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
        let done = self.changing_xattrs(ino.0, reply_with("setxattr", reply));
        self.call(req, body, &[], done);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(reply) = self.getxattr_here(ino.0, name, reply) else {
            return;
        };
        let body = Req::Getxattr(proto::Getxattr {
            ino: ino.0,
            name: bytes(name),
            size,
        });
        self.call(req, body, &[], reply_with("getxattr", (reply, size)));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(reply) = self.listxattr_here(ino.0, size, reply) else {
            return;
        };
        let body = Req::Listxattr(proto::Listxattr { ino: ino.0, size });
        self.call(req, body, &[], reply_with("listxattr", (reply, size)));
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Some(e) = self.refused_change(req, ino.0) {
            return reply.error(e);
        }
        let body = Req::Removexattr(proto::Removexattr {
            ino: ino.0,
            name: bytes(name),
        });
        let done = self.changing_xattrs(ino.0, reply_with("removexattr", reply));
        self.call(req, body, &[], done);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let body = Req::Access(proto::Access {
            ino: ino.0,
            mask: mask.bits(),
        });
        self.call(req, body, &[], reply_with("access", reply));
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
        let ino = ino.0;
        let make = move |h| {
            Req::Getlk(proto::Getlk {
                ino,
                fh: h,
                owner: lock_owner.0,
                lock: proto::Lock {
                    start,
                    end,
                    typ,
                    pid,
                },
            })
        };
        self.call_fh(req, fh.0, make, reply_with("getlk", reply));
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
        self.locks.asked(ino.0);
        let i = ino.0;
        let make = move |h| {
            Req::Setlk(proto::Setlk {
                ino: i,
                fh: h,
                owner: lock_owner.0,
                lock: proto::Lock {
                    start,
                    end,
                    typ,
                    pid,
                },
                sleep,
            })
        };
        self.call_lock(req, ino.0, fh.0, typ == libc::F_UNLCK, make, reply);
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
        let Some(op) = flock_op(typ, sleep) else {
            return reply.error(fuser::Errno::EINVAL);
        };
        let i = ino.0;
        let make = move |h| {
            Req::Flock(proto::Flock {
                ino: i,
                fh: h,
                owner: lock_owner.0,
                op,
            })
        };
        self.call_lock(req, ino.0, fh.0, typ == libc::F_UNLCK, make, reply);
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
        if let Some(e) = self.refused_change(req, ino.0) {
            return reply.error(e);
        }
        self.drop_prefetched(ino.0);
        let ino = ino.0;
        let make = move |h| {
            Req::Fallocate(proto::Fallocate {
                ino,
                fh: h,
                offset,
                length,
                mode,
            })
        };
        self.call_fh(req, fh.0, make, reply_with("fallocate", reply));
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
        let ino = ino.0;
        let make = move |h| {
            Req::Lseek(proto::Lseek {
                ino,
                fh: h,
                offset,
                whence,
            })
        };
        self.call_fh(req, fh.0, make, reply_with("lseek", reply));
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
        if let Some(e) = self.refused_change(req, ino_out.0) {
            return reply.error(e);
        }
        self.drop_prefetched(ino_out.0);
        let (ino_in, ino_out, fh_out) = (ino_in.0, ino_out.0, fh_out.0);
        let flags = flags.bits() as u32;
        // Only the source can be a handle answered here (the destination is open to write).
        let make = move |h| {
            Req::CopyFileRange(proto::CopyFileRange {
                ino_in,
                fh_in: h,
                offset_in,
                ino_out,
                fh_out,
                offset_out,
                len,
                flags,
            })
        };
        self.call_fh(req, fh_in.0, make, reply_with("copy_file_range", reply));
    }
}
