//! One FUSE request in, one reply out: decodes a request with [`abi`](super::abi), calls the
//! matching typed method of [`ExportSession`] and encodes the answer.
//!
//! This is the only file of the virtio-fs front door that calls into the export core; every
//! call site is in [`FuseServer::serve`] and the helpers right below it, so a change of the
//! export core's signatures is adapted here and nowhere else.
//!
//! Requests from a guest thread that replays host changes (`ferry-agent --events-only`; see
//! `export/replay.rs`) are answered by [`FuseServer::serve_replay`] without changing anything
//! on the host.
//!
//! Not served (answered ENOSYS, so the guest kernel stops asking or falls back): POSIX and
//! flock locks (the guest kernel then keeps locks local to the guest, as with the FUSE agent),
//! copy_file_range (the kernel copies through read and write), ioctl, poll and DAX mappings.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_protocol::replay::{self, Answer, SYNTHETIC_BASE, Side, is_synthetic};
use ferry_protocol::{Attr, ChangeKind, Ctx, Entry, Errno, MAX_DATA, SetTime, Timespec};
use zerocopy::IntoBytes;

use super::abi::{self, Args, DecodeError, InHeader, fattr, init_flags, opcode};
use crate::export::{ExportSession, ReplayThread, SetAttrs, XattrReply};

/// The capabilities offered to the guest kernel in `FUSE_INIT`; the reply carries the
/// intersection with what the kernel offers. Not `ATOMIC_O_TRUNC`: with it the kernel sends
/// O_TRUNC in OPEN and the host truncates before the kernel's own checks, so an open of a file
/// being executed would answer ETXTBSY and leave the file empty; without it the kernel
/// truncates with SETATTR once those checks have passed.
///
/// `HANDLE_KILLPRIV_V2`: the server clears set-id bits when a WRITE, a truncating SETATTR or
/// chown, or a CREATE that opens an existing file with O_TRUNC says the caller lacks
/// CAP_FSETID. Without it the guest kernel asks for `security.capability` (GETXATTR) before
/// every write to see whether there is something to clear: one round trip per write.
/// (An OPEN's kill flag is not acted on: without ATOMIC_O_TRUNC the truncation comes as a
/// SETATTR carrying the flag.)
const OFFERED: u32 = init_flags::ASYNC_READ
    | init_flags::BIG_WRITES
    | init_flags::AUTO_INVAL_DATA
    | init_flags::DO_READDIRPLUS
    | init_flags::READDIRPLUS_AUTO
    | init_flags::PARALLEL_DIROPS
    | init_flags::MAX_PAGES
    | init_flags::SUBMOUNTS
    | init_flags::HANDLE_KILLPRIV_V2;

/// Serves FUSE requests of one guest (one vhost-user connection) from one export session.
#[derive(Debug)]
pub struct FuseServer {
    session: ExportSession,
    /// Entry and attribute validity handed to the guest kernel.
    ttl: Duration,
    /// Requests and host time per opcode, logged when the session ends.
    stats: [(AtomicU64, AtomicU64); 64],
    /// Synthetic nodes the guest kernel holds (ids from [`SYNTHETIC_BASE`]).
    synthetic: Mutex<HashMap<u64, Attr>>,
    next_synthetic: AtomicU64,
    /// FLUSH is served (not answered ENOSYS) because the host's close can fail.
    flush_needed: bool,
}

impl Drop for FuseServer {
    fn drop(&mut self) {
        let mut parts = Vec::new();
        let mut total = 0;
        for (op, (n, ns)) in self.stats.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                total += n;
                let us = ns.load(Ordering::Relaxed) / 1000;
                parts.push(format!("{op}:{n}/{us}us"));
            }
        }
        tracing::info!(
            "virtio-fs session ended: {total} requests (opcode:count/host time) {}",
            parts.join(" ")
        );
    }
}

/// What a request produced.
enum Out {
    /// No reply at all (FORGET, BATCH_FORGET, INTERRUPT).
    None,
    /// A success reply with these body parts.
    Ok(Vec<u8>),
    /// An error reply.
    Err(Errno),
}

impl From<Errno> for Out {
    fn from(e: Errno) -> Self {
        Out::Err(e)
    }
}

impl From<DecodeError> for Out {
    fn from(e: DecodeError) -> Self {
        tracing::warn!("virtio-fs: malformed request: {e}");
        Out::Err(Errno::EINVAL)
    }
}

/// The caller's credentials as the export core takes them.
fn ctx(h: &InHeader) -> Ctx {
    Ctx {
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
        // The FUSE header carries no supplementary groups (FUSE_CREATE_SUPP_GROUP is not
        // negotiated): files created as the caller get its primary group only.
        groups: Vec::new(),
    }
}

fn ok(body: &[u8]) -> Out {
    Out::Ok(body.to_vec())
}

/// `?` for [`Out`]: returns early with the error.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Out::from(e),
        }
    };
}

impl FuseServer {
    /// A server over `session`, giving the guest kernel `ttl` for entries and attributes.
    pub fn new(session: ExportSession, ttl: Duration) -> Self {
        FuseServer {
            flush_needed: session.close_reports_errors(),
            session,
            ttl,
            stats: std::array::from_fn(|_| Default::default()),
            synthetic: Mutex::default(),
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
        }
    }

    /// The export session (for diagnostics and tests).
    pub fn session(&self) -> &ExportSession {
        &self.session
    }

    /// Serves one request; `None` when the request takes no reply or is too broken to answer
    /// (no readable header).
    pub fn handle(&self, request: &[u8]) -> Option<Vec<u8>> {
        let (h, args) = match abi::parse_request(request) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("virtio-fs: dropped a request: {e}");
                return None;
            }
        };
        let started = std::time::Instant::now();
        let out = self.serve(&h, args);
        if let Some((n, ns)) = self.stats.get(h.opcode as usize) {
            n.fetch_add(1, Ordering::Relaxed);
            ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        match out {
            Out::None => None,
            Out::Ok(body) => Some(abi::reply(h.unique, 0, &[&body])),
            Out::Err(e) => Some(abi::error_reply(h.unique, e.0)),
        }
    }

    fn entry_out(&self, e: &ferry_protocol::Entry) -> abi::EntryOut {
        abi::EntryOut {
            nodeid: e.ino,
            generation: e.generation,
            entry_valid: self.ttl.as_secs(),
            attr_valid: self.ttl.as_secs(),
            entry_valid_nsec: self.ttl.subsec_nanos(),
            attr_valid_nsec: self.ttl.subsec_nanos(),
            attr: attr_out(&e.attr),
        }
    }

    /// As [`Self::entry_out`] for an entry found in directory `parent`, announcing it as a
    /// submount when it is a mount point on the host (virtiofsd's `--announce-submounts`), so
    /// the guest gives it its own `st_dev` and `find -xdev`, `du -x` and git stop there.
    fn entry_out_in(&self, parent: u64, e: &ferry_protocol::Entry) -> abi::EntryOut {
        let mut out = self.entry_out(e);
        if self.session.is_submount(parent, e.ino) {
            out.attr.flags |= abi::ATTR_SUBMOUNT;
        }
        out
    }

    fn attr_reply(&self, a: &ferry_protocol::Attr) -> Out {
        let out = abi::AttrOut {
            attr_valid: self.ttl.as_secs(),
            attr_valid_nsec: self.ttl.subsec_nanos(),
            dummy: 0,
            attr: attr_out(a),
        };
        ok(out.as_bytes())
    }

    fn entry_reply(&self, e: &ferry_protocol::Entry) -> Out {
        ok(self.entry_out(e).as_bytes())
    }

    /// Every call into the export core.
    fn serve(&self, h: &InHeader, args: Args<'_>) -> Out {
        let s = &self.session;
        // A replaying guest's link name: links this session to its replaying session, and is
        // answered ENOENT without a host lookup.
        if h.opcode == opcode::LOOKUP && args.clone().name().is_ok_and(|name| s.link_replayer(name))
        {
            return Out::Err(Errno::ENOENT);
        }
        if let Some(thread) = s.replayer(h.pid) {
            let out = self.serve_replay(h, args, &thread);
            if let Out::Err(e) = &out {
                tracing::debug!(pid = h.pid, opcode = h.opcode, node = h.nodeid, error = ?e,
                                "replay request refused");
            }
            return out;
        }
        if is_synthetic(h.nodeid) {
            return self.serve_synthetic(h, args);
        }
        self.perform(h, args)
    }

    /// Performs a request on the host. (The typed methods record what they change for the
    /// export's watcher themselves, so that its host events do not come back to this guest.)
    fn perform(&self, h: &InHeader, mut args: Args<'_>) -> Out {
        let s = &self.session;
        let ino = h.nodeid;
        let cx = ctx(h);
        match h.opcode {
            opcode::INIT => self.init(&mut args),
            opcode::DESTROY | opcode::SYNCFS => ok(&[]),
            opcode::INTERRUPT => Out::None,
            opcode::LOOKUP => {
                let name = tri!(args.name());
                let e = tri!(s.lookup(&cx, ino, name));
                ok(self.entry_out_in(ino, &e).as_bytes())
            }
            opcode::FORGET => {
                let f: abi::ForgetIn = tri!(args.obj());
                s.forget(ino, f.nlookup);
                Out::None
            }
            opcode::BATCH_FORGET => {
                let b: abi::BatchForgetIn = match args.obj() {
                    Ok(b) => b,
                    Err(_) => return Out::None,
                };
                for _ in 0..b.count {
                    let Ok(one) = args.obj::<abi::ForgetOne>() else {
                        break;
                    };
                    if is_synthetic(one.nodeid) {
                        self.forget_synthetic(one.nodeid);
                    } else {
                        s.forget(one.nodeid, one.nlookup);
                    }
                }
                Out::None
            }
            opcode::GETATTR => {
                let g: abi::GetattrIn = tri!(args.obj());
                let fh = (g.getattr_flags & abi::GETATTR_FH != 0).then_some(g.fh);
                let a = tri!(s.getattr(ino, fh));
                self.attr_reply(&a)
            }
            opcode::SETATTR => {
                let a: abi::SetattrIn = tri!(args.obj());
                let fh = (a.valid & fattr::FH != 0).then_some(a.fh);
                let attrs = set_attrs(&a);
                let r = tri!(s.setattr(&cx, ino, fh, &attrs));
                self.attr_reply(&r)
            }
            opcode::READLINK => Out::Ok(tri!(s.readlink(ino))),
            opcode::SYMLINK => {
                let name = tri!(args.name());
                let target = tri!(args.name());
                let e = tri!(s.symlink(&cx, ino, name, target));
                self.entry_reply(&e)
            }
            opcode::MKNOD => {
                let m: abi::MknodIn = tri!(args.obj());
                let name = tri!(args.name());
                let e = tri!(s.mknod(&cx, ino, name, m.mode, m.rdev, m.umask));
                self.entry_reply(&e)
            }
            opcode::MKDIR => {
                let m: abi::MkdirIn = tri!(args.obj());
                let name = tri!(args.name());
                let e = tri!(s.mkdir(&cx, ino, name, m.mode, m.umask));
                self.entry_reply(&e)
            }
            opcode::UNLINK | opcode::RMDIR => {
                let name = tri!(args.name());
                ok_unit(if h.opcode == opcode::UNLINK {
                    s.unlink(&cx, ino, name)
                } else {
                    s.rmdir(&cx, ino, name)
                })
            }
            opcode::RENAME | opcode::RENAME2 => {
                let RenameArgs {
                    newdir,
                    flags,
                    old,
                    new,
                } = tri!(rename_args(h.opcode, &mut args));
                ok_unit(s.rename(&cx, ino, old, newdir, new, flags))
            }
            opcode::LINK => {
                let l: abi::LinkIn = tri!(args.obj());
                let name = tri!(args.name());
                let e = tri!(s.link(&cx, l.oldnodeid, ino, name));
                self.entry_reply(&e)
            }
            opcode::OPEN | opcode::OPENDIR => {
                let o: abi::OpenIn = tri!(args.obj());
                let opened = if h.opcode == opcode::OPEN {
                    tri!(s.open(&cx, ino, o.flags as i32))
                } else {
                    // The guest kernel may keep the listing: with AUTO_INVAL_DATA it
                    // compares the directory's mtime when a read starts over (its attributes
                    // expire with the 1 s TTL, as names do), and its own changes, replayed
                    // host changes included, drop the listing at once.
                    let mut opened = tri!(s.opendir(&cx, ino, o.flags as i32));
                    opened.open_flags |= abi::FOPEN_CACHE_DIR | abi::FOPEN_KEEP_CACHE;
                    opened
                };
                ok(open_out(&opened).as_bytes())
            }
            opcode::CREATE => {
                let c: abi::CreateIn = tri!(args.obj());
                let name = tri!(args.name());
                let kill = c.open_flags & abi::OPEN_KILL_SUIDGID != 0;
                let r =
                    tri!(s.create_killing(&cx, ino, name, c.mode, c.umask, c.flags as i32, kill));
                let mut body = self.entry_out(&r.entry).as_bytes().to_vec();
                body.extend_from_slice(open_out(&r.opened).as_bytes());
                Out::Ok(body)
            }
            opcode::READ => {
                let r: abi::ReadIn = tri!(args.obj());
                Out::Ok(tri!(s.read(ino, r.fh, r.offset, r.size)))
            }
            opcode::WRITE => {
                let w: abi::WriteIn = tri!(args.obj());
                let data = tri!(args.bytes(w.size as usize));
                if w.write_flags & abi::WRITE_KILL_SUIDGID != 0 {
                    tri!(s.kill_suidgid(ino));
                }
                let n = tri!(s.write(ino, w.fh, w.offset, data));
                ok(abi::WriteOut {
                    size: n,
                    padding: 0,
                }
                .as_bytes())
            }
            // Locks on virtio-fs are the guest kernel's own (the lock opcodes answer ENOSYS),
            // so a FLUSH (sent at every close) only has something to say when the host's
            // close can fail. Elsewhere ENOSYS tells the kernel to stop sending it: one round
            // trip less per close. The kernel still writes dirty pages back at close.
            opcode::FLUSH if !self.flush_needed => Out::Err(Errno::ENOSYS),
            opcode::FLUSH => {
                let f: abi::FlushIn = tri!(args.obj());
                ok_unit(s.flush(ino, f.fh, f.lock_owner))
            }
            opcode::RELEASE | opcode::RELEASEDIR => {
                let r: abi::ReleaseIn = tri!(args.obj());
                if h.opcode == opcode::RELEASE {
                    ok_unit(s.release(ino, r.fh))
                } else {
                    ok_unit(s.releasedir(ino, r.fh))
                }
            }
            opcode::FSYNC | opcode::FSYNCDIR => {
                let f: abi::FsyncIn = tri!(args.obj());
                let datasync = f.fsync_flags & 1 != 0;
                if h.opcode == opcode::FSYNC {
                    ok_unit(s.fsync(ino, f.fh, datasync))
                } else {
                    ok_unit(s.fsyncdir(ino, f.fh, datasync))
                }
            }
            opcode::READDIR => {
                let r: abi::ReadIn = tri!(args.obj());
                let entries = tri!(s.readdir(ino, r.fh, r.offset, r.size));
                let mut out = Vec::with_capacity((r.size as usize).min(MAX_DATA));
                for d in &entries {
                    abi::push_dirent(&mut out, d.ino, d.offset, u32::from(d.kind), &d.name);
                }
                Out::Ok(out)
            }
            opcode::READDIRPLUS => {
                let r: abi::ReadIn = tri!(args.obj());
                let entries = tri!(s.readdirplus(&cx, ino, r.fh, r.offset, r.size));
                let mut out = Vec::with_capacity((r.size as usize).min(MAX_DATA));
                for d in &entries {
                    // `ino == 0` (for `.` and `..`): no node, which the kernel skips.
                    let entry = if d.entry.ino == 0 {
                        abi::EntryOut::default()
                    } else {
                        self.entry_out_in(ino, &d.entry)
                    };
                    out.extend_from_slice(entry.as_bytes());
                    let dino = if d.entry.ino == 0 { 1 } else { d.entry.ino };
                    abi::push_dirent(&mut out, dino, d.offset, u32::from(d.kind), &d.name);
                }
                Out::Ok(out)
            }
            opcode::STATFS => {
                let st = tri!(s.statfs(ino));
                ok(abi::StatfsOut {
                    blocks: st.blocks,
                    bfree: st.bfree,
                    bavail: st.bavail,
                    files: st.files,
                    ffree: st.ffree,
                    bsize: st.bsize,
                    namelen: st.namelen,
                    frsize: st.frsize,
                    ..abi::StatfsOut::default()
                }
                .as_bytes())
            }
            opcode::ACCESS => {
                let a: abi::AccessIn = tri!(args.obj());
                ok_unit(s.access(&cx, ino, a.mask as i32))
            }
            opcode::GETXATTR => {
                let g: abi::GetxattrIn = tri!(args.obj());
                let name = tri!(args.name());
                xattr_reply(tri!(s.getxattr(ino, name, g.size)))
            }
            opcode::LISTXATTR => {
                let g: abi::GetxattrIn = tri!(args.obj());
                xattr_reply(tri!(s.listxattr(ino, g.size)))
            }
            opcode::SETXATTR => {
                let x: abi::SetxattrIn = tri!(args.obj());
                let name = tri!(args.name());
                let value = tri!(args.bytes(x.size as usize));
                ok_unit(s.setxattr(&cx, ino, name, value, x.flags as i32))
            }
            opcode::REMOVEXATTR => ok_unit(s.removexattr(&cx, ino, tri!(args.name()))),
            opcode::FALLOCATE => {
                let f: abi::FallocateIn = tri!(args.obj());
                ok_unit(s.fallocate(ino, f.fh, f.offset, f.length, f.mode as i32))
            }
            opcode::LSEEK => {
                let l: abi::LseekIn = tri!(args.obj());
                let off = tri!(s.lseek(ino, l.fh, l.offset as i64, l.whence as i32));
                ok(abi::LseekOut { offset: off as u64 }.as_bytes())
            }
            other => {
                tracing::debug!(opcode = other, "virtio-fs: unsupported opcode");
                Out::Err(Errno::ENOSYS)
            }
        }
    }

    /// A request from a replay thread: the change it replays already happened on the host, so
    /// nothing here writes to the host. What to answer is the rule of
    /// [`ferry_protocol::replay`], which the agent follows on its own mounts too: this
    /// function only finds which of the change's names a request names and what the host
    /// holds there, and turns the rule's answer into a reply. Beside the rule: a replayed
    /// open is a read-only open without `FOPEN_KEEP_CACHE`, so the guest drops the file's
    /// cached pages, and a replayed time or size change answers the host's attributes.
    /// Requests that only read are performed as usual.
    fn serve_replay(&self, h: &InHeader, mut args: Args<'_>, thread: &ReplayThread) -> Out {
        let s = &self.session;
        let ino = h.nodeid;
        let change = thread.change();
        // Between two changes no name is the change's: every side is `Neither`, for which
        // the rule does not look at the kind.
        let kind = change.map_or(ChangeKind::Overflow, |c| c.kind);
        let side = |parent: u64, name: &[u8]| {
            change.map_or(Side::Neither, |c| s.replay_side(c, parent, name))
        };
        let host = |parent: u64, name: &[u8]| s.replay_host(change, parent, name);
        if is_synthetic(ino) {
            return match h.opcode {
                // The kernel keeps the attributes of the reply, not the ones it asked for.
                opcode::SETATTR => self.synthetic_attr(ino),
                _ => self.serve_synthetic(h, args),
            };
        }
        match h.opcode {
            opcode::LOOKUP => {
                let name = tri!(args.clone().name());
                let side = side(ino, name);
                match replay::lookup(kind, side, host(ino, name)) {
                    Answer::AsUsual => self.perform(h, args),
                    // Absent before a creation and before a rename's target.
                    Answer::Before if kind == ChangeKind::Created || side == Side::To => {
                        Out::Err(Errno::ENOENT)
                    }
                    // What was removed, renamed or changed, which the host no longer has.
                    Answer::Before => self.synthetic_reply(change.map_or(0, |c| c.file_type)),
                    other => refused(h, other),
                }
            }
            opcode::MKNOD | opcode::MKDIR | opcode::SYMLINK | opcode::CREATE => {
                let (ft, name) = match h.opcode {
                    opcode::MKNOD => {
                        let m: abi::MknodIn = tri!(args.obj());
                        (m.mode & libc::S_IFMT, tri!(args.name()))
                    }
                    opcode::MKDIR => {
                        let _: abi::MkdirIn = tri!(args.obj());
                        (libc::S_IFDIR, tri!(args.name()))
                    }
                    opcode::SYMLINK => (libc::S_IFLNK, tri!(args.name())),
                    _ => {
                        let c: abi::CreateIn = tri!(args.obj());
                        (c.mode & libc::S_IFMT, tri!(args.name()))
                    }
                };
                let create = h.opcode == opcode::CREATE;
                match replay::create(kind, side(ino, name), host(ino, name)) {
                    Answer::HostObject => self.replayed_creation(h, name, ft, create),
                    // Gone again (a removal or rename follows): the creation is still seen,
                    // and the change after it has a name to replay on.
                    Answer::Synthetic if create => {
                        let mut body = self.synthetic_entry(ft).as_bytes().to_vec();
                        body.extend_from_slice(abi::OpenOut::default().as_bytes());
                        Out::Ok(body)
                    }
                    Answer::Synthetic => self.synthetic_reply(ft),
                    other => refused(h, other),
                }
            }
            opcode::UNLINK | opcode::RMDIR => {
                let name = tri!(args.name());
                match replay::remove(kind, side(ino, name), host(ino, name)) {
                    Answer::Done => ok(&[]),
                    other => refused(h, other),
                }
            }
            opcode::RENAME | opcode::RENAME2 => {
                let RenameArgs {
                    newdir,
                    flags,
                    old,
                    new,
                } = tri!(rename_args(h.opcode, &mut args));
                let (from, to) = (side(ino, old), side(newdir, new));
                match replay::rename(kind, from, to, flags, host(ino, old), host(newdir, new)) {
                    Answer::Done => ok(&[]),
                    other => refused(h, other),
                }
            }
            opcode::OPEN => {
                let o: abi::OpenIn = tri!(args.obj());
                // Read-only whatever was asked (never truncating), and without KEEP_CACHE: the
                // guest kernel drops the file's cached pages, so the next read sees the host's
                // new data.
                let flags = o.flags as i32 & libc::O_DIRECTORY;
                let opened = tri!(s.open(&ctx(h), ino, libc::O_RDONLY | flags));
                ok(abi::OpenOut {
                    fh: opened.fh,
                    open_flags: 0,
                    backing_id: 0,
                }
                .as_bytes())
            }
            // The kernel keeps the attributes of the reply, not the ones it asked for: the
            // host's current ones (a new size drops the cached pages past it).
            opcode::SETATTR => {
                let a = tri!(s.getattr(ino, None));
                self.attr_reply(&a)
            }
            opcode::WRITE
            | opcode::LINK
            | opcode::SETXATTR
            | opcode::REMOVEXATTR
            | opcode::FALLOCATE => refused(h, replay::other_change(false)),
            _ => self.perform(h, args),
        }
    }

    /// A replayed creation of `name` (file type `ft`) in directory `h.nodeid`: the object
    /// the host created, never a new one, opened read-only for a CREATE.
    fn replayed_creation(&self, h: &InHeader, name: &[u8], ft: u32, create: bool) -> Out {
        let s = &self.session;
        let e = tri!(s.lookup(&ctx(h), h.nodeid, name));
        if e.attr.mode & libc::S_IFMT != ft {
            // Not of the type asked for: the kernel would refuse it.
            s.forget(e.ino, 1);
            return Out::Err(Errno::EEXIST);
        }
        if !create {
            return self.entry_reply(&e);
        }
        let opened = match s.open(&ctx(h), e.ino, libc::O_RDONLY) {
            Ok(o) => o,
            Err(err) => {
                s.forget(e.ino, 1);
                return Out::Err(err);
            }
        };
        let mut body = self.entry_out(&e).as_bytes().to_vec();
        body.extend_from_slice(open_out(&opened).as_bytes());
        Out::Ok(body)
    }

    /// A request on a synthetic node from any other thread: only its attributes and its
    /// FORGET make sense.
    fn serve_synthetic(&self, h: &InHeader, mut args: Args<'_>) -> Out {
        match h.opcode {
            opcode::FORGET => {
                let _: abi::ForgetIn = tri!(args.obj());
                self.forget_synthetic(h.nodeid);
                Out::None
            }
            opcode::GETATTR => self.synthetic_attr(h.nodeid),
            _ => Out::Err(Errno::ESTALE),
        }
    }

    /// A new synthetic node of file type `ft` (a regular file when unknown), valid for no
    /// time at all: the next path walk through it asks again and gets the host's answer.
    fn synthetic_reply(&self, ft: u32) -> Out {
        ok(self.synthetic_entry(ft).as_bytes())
    }

    /// The entry of a new synthetic node (see [`Self::synthetic_reply`]).
    fn synthetic_entry(&self, ft: u32) -> abi::EntryOut {
        let ino = self.next_synthetic.fetch_add(1, Ordering::Relaxed);
        let ft = if ft == 0 { libc::S_IFREG } else { ft };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let now = Timespec {
            sec: now.as_secs() as i64,
            nsec: now.subsec_nanos(),
        };
        let dir = ft == libc::S_IFDIR;
        let attr = Attr {
            ino,
            mode: ft | if dir { 0o755 } else { 0o644 },
            nlink: if dir { 2 } else { 1 },
            atime: now,
            mtime: now,
            ctime: now,
            blksize: 4096,
            ..Attr::default()
        };
        self.synthetic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ino, attr);
        let e = Entry {
            ino,
            generation: 0,
            attr,
        };
        abi::EntryOut {
            entry_valid: 0,
            attr_valid: 0,
            entry_valid_nsec: 0,
            attr_valid_nsec: 0,
            ..self.entry_out(&e)
        }
    }

    fn synthetic_attr(&self, ino: u64) -> Out {
        let map = self.synthetic.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&ino) {
            Some(a) => ok(abi::AttrOut {
                attr_valid: 0,
                attr_valid_nsec: 0,
                dummy: 0,
                attr: attr_out(a),
            }
            .as_bytes()),
            None => Out::Err(Errno::ESTALE),
        }
    }

    fn forget_synthetic(&self, ino: u64) {
        self.synthetic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
    }

    /// Number of synthetic nodes the guest kernel holds (for tests).
    pub fn synthetic_count(&self) -> usize {
        self.synthetic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn init(&self, args: &mut Args<'_>) -> Out {
        let i: abi::InitIn = tri!(args.obj());
        if i.major < abi::KERNEL_VERSION
            || (i.major == 7 && i.minor < abi::MIN_KERNEL_MINOR_VERSION)
        {
            tracing::warn!(
                major = i.major,
                minor = i.minor,
                "virtio-fs: guest kernel FUSE protocol too old"
            );
            return Out::Err(Errno::EPROTO);
        }
        let page = 4096;
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor: abi::KERNEL_MINOR_VERSION,
            max_readahead: i.max_readahead,
            flags: i.flags & OFFERED,
            max_background: 64,
            congestion_threshold: 48,
            max_write: MAX_DATA as u32,
            time_gran: 1,
            max_pages: (MAX_DATA / page) as u16,
            ..abi::InitOut::default()
        };
        tracing::info!(
            minor = i.minor,
            flags = format_args!("{:#x}", out.flags),
            "virtio-fs: guest kernel initialised the session"
        );
        ok(out.as_bytes())
    }
}

/// The arguments of a RENAME (which has no flags) or RENAME2.
struct RenameArgs<'a> {
    newdir: u64,
    flags: u32,
    old: &'a [u8],
    new: &'a [u8],
}

fn rename_args<'a>(op: u32, args: &mut Args<'a>) -> Result<RenameArgs<'a>, DecodeError> {
    let (newdir, flags) = if op == opcode::RENAME {
        (args.obj::<abi::RenameIn>()?.newdir, 0)
    } else {
        let r: abi::Rename2In = args.obj()?;
        (r.newdir, r.flags)
    };
    Ok(RenameArgs {
        newdir,
        flags,
        old: args.name()?,
        new: args.name()?,
    })
}

/// The rule's refusal of a replay thread's request as a reply. An answer the rule does not
/// give for the request is a bug: EIO.
fn refused(h: &InHeader, answer: Answer) -> Out {
    match answer {
        Answer::Fail(e) => Out::Err(e),
        other => {
            tracing::warn!(opcode = h.opcode, answer = ?other, "virtio-fs: no reply for a replay answer");
            Out::Err(Errno::EIO)
        }
    }
}

fn ok_unit(r: Result<(), Errno>) -> Out {
    match r {
        Ok(()) => Out::Ok(Vec::new()),
        Err(e) => Out::Err(e),
    }
}

fn xattr_reply(r: XattrReply) -> Out {
    match r {
        XattrReply::Size(size) => ok(abi::GetxattrOut { size, padding: 0 }.as_bytes()),
        XattrReply::Data(d) => Out::Ok(d),
    }
}

fn attr_out(a: &ferry_protocol::Attr) -> abi::Attr {
    abi::Attr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.sec as u64,
        mtime: a.mtime.sec as u64,
        ctime: a.ctime.sec as u64,
        atimensec: a.atime.nsec,
        mtimensec: a.mtime.nsec,
        ctimensec: a.ctime.nsec,
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn open_out(o: &ferry_protocol::Opened) -> abi::OpenOut {
    abi::OpenOut {
        fh: o.fh,
        open_flags: o.open_flags,
        backing_id: 0,
    }
}

fn set_attrs(a: &abi::SetattrIn) -> SetAttrs {
    let v = a.valid;
    let time = |set: u32, now: u32, sec: u64, nsec: u32| {
        if v & now != 0 {
            Some(SetTime::Now)
        } else if v & set != 0 {
            Some(SetTime::At(Timespec {
                sec: sec as i64,
                nsec,
            }))
        } else {
            None
        }
    };
    SetAttrs {
        mode: (v & fattr::MODE != 0).then_some(a.mode),
        uid: (v & fattr::UID != 0).then_some(crate::ids::GuestUid(a.uid)),
        gid: (v & fattr::GID != 0).then_some(crate::ids::GuestGid(a.gid)),
        size: (v & fattr::SIZE != 0).then_some(a.size),
        atime: time(fattr::ATIME, fattr::ATIME_NOW, a.atime, a.atimensec),
        mtime: time(fattr::MTIME, fattr::MTIME_NOW, a.mtime, a.mtimensec),
        kill_suidgid: v & fattr::KILL_SUIDGID != 0,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::export::{Export, ExportConfig};
    use abi::{InHeader, OutHeader};
    use std::sync::Arc;
    use zerocopy::FromBytes;

    /// A request's bytes: header for `opcode` on `nodeid`, then `parts`.
    pub(crate) fn request(opcode: u32, unique: u64, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
        request_as(77, opcode, unique, nodeid, parts)
    }

    /// As [`request`], from the guest thread `pid`.
    fn request_as(pid: u32, opcode: u32, unique: u64, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
        let len = 40 + parts.iter().map(|p| p.len()).sum::<usize>();
        let h = InHeader {
            len: len as u32,
            opcode,
            unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid,
            ..InHeader::default()
        };
        let mut v = h.as_bytes().to_vec();
        for p in parts {
            v.extend_from_slice(p);
        }
        v
    }

    pub(crate) fn server(dir: &std::path::Path, read_only: bool) -> FuseServer {
        let export = Export::open(ExportConfig {
            name: "t".into(),
            path: dir.to_path_buf(),
            read_only,
            ids: crate::ids::IdPolicy::passthrough(),
            devices: false,
        })
        .unwrap();
        FuseServer::new(ExportSession::new(export), Duration::from_secs(1))
    }

    /// Sends a request; returns (errno, body).
    fn call(s: &FuseServer, opcode: u32, nodeid: u64, parts: &[&[u8]]) -> (i32, Vec<u8>) {
        call_as(s, 77, opcode, nodeid, parts)
    }

    /// As [`call`], from the guest thread `pid`.
    fn call_as(
        s: &FuseServer,
        pid: u32,
        opcode: u32,
        nodeid: u64,
        parts: &[&[u8]],
    ) -> (i32, Vec<u8>) {
        let reply = s
            .handle(&request_as(pid, opcode, 9, nodeid, parts))
            .unwrap();
        let (h, body) = OutHeader::read_from_prefix(&reply).unwrap();
        assert_eq!(h.len as usize, reply.len());
        assert_eq!(h.unique, 9);
        (-h.error, body.to_vec())
    }

    fn entry(body: &[u8]) -> abi::EntryOut {
        abi::EntryOut::read_from_prefix(body).unwrap().0
    }

    /// Opens directory `dir` and reads its first 4 KiB with `op` (READDIR or READDIRPLUS);
    /// returns the reply body.
    fn list(s: &FuseServer, op: u32, dir: u64) -> Vec<u8> {
        let (err, body) = call(
            s,
            opcode::OPENDIR,
            dir,
            &[abi::OpenIn::default().as_bytes()],
        );
        assert_eq!(err, 0);
        let fh = abi::OpenOut::read_from_bytes(&body).unwrap().fh;
        let r = abi::ReadIn {
            fh,
            size: 4096,
            ..abi::ReadIn::default()
        };
        let (err, body) = call(s, op, dir, &[r.as_bytes()]);
        assert_eq!(err, 0);
        body
    }

    #[test]
    fn init_negotiates_the_offered_flags() {
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), false);
        let init = abi::InitIn {
            major: 7,
            minor: 38,
            max_readahead: 131072,
            flags: u32::MAX,
        };
        let (err, body) = call(&s, opcode::INIT, 0, &[init.as_bytes(), &[0u8; 48]]);
        assert_eq!(err, 0);
        let out = abi::InitOut::read_from_bytes(&body).unwrap();
        assert_eq!((out.major, out.minor, out.flags), (7, 33, OFFERED));
        assert_ne!(out.flags & init_flags::HANDLE_KILLPRIV_V2, 0);
        // The kernel must truncate after its own checks (ETXTBSY), not the host in OPEN.
        assert_eq!(out.flags & init_flags::ATOMIC_O_TRUNC, 0);
        assert_eq!(out.max_write, MAX_DATA as u32);
        let old = abi::InitIn {
            major: 7,
            minor: 20,
            ..init
        };
        assert_eq!(call(&s, opcode::INIT, 0, &[old.as_bytes()]).0, libc::EPROTO);
    }

    #[test]
    fn directory_listings_may_be_cached_by_the_guest() {
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), false);
        let (err, body) = call(&s, opcode::OPENDIR, 1, &[abi::OpenIn::default().as_bytes()]);
        assert_eq!(err, 0);
        let flags = abi::OpenOut::read_from_bytes(&body).unwrap().open_flags;
        assert_eq!(flags, abi::FOPEN_CACHE_DIR | abi::FOPEN_KEEP_CACHE);
    }

    #[test]
    fn flush_is_declined_on_a_local_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), false);
        // /tmp here is a local filesystem (ext4 or tmpfs): a close cannot fail after the writes
        // answered, so the kernel is told to stop sending FLUSH.
        assert!(!s.session().close_reports_errors());
        let f = abi::FlushIn::default();
        assert_eq!(call(&s, opcode::FLUSH, 1, &[f.as_bytes()]).0, libc::ENOSYS);
    }

    #[test]
    fn set_id_bits_are_cleared_when_the_guest_kernel_says_so() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), false);
        let mode_of = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        let file = |name: &str, mode: u32| {
            std::fs::write(dir.path().join(name), b"data").unwrap();
            std::fs::set_permissions(dir.path().join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
            let (err, body) = call(&s, opcode::LOOKUP, 1, &[format!("{name}\0").as_bytes()]);
            assert_eq!(err, 0);
            entry(&body).nodeid
        };
        let open = |ino: u64| {
            let o = abi::OpenIn {
                flags: libc::O_WRONLY as u32,
                open_flags: 0,
            };
            let (err, body) = call(&s, opcode::OPEN, ino, &[o.as_bytes()]);
            assert_eq!(err, 0);
            abi::OpenOut::read_from_bytes(&body).unwrap().fh
        };
        let write = |ino: u64, write_flags: u32| {
            let w = abi::WriteIn {
                fh: open(ino),
                size: 1,
                write_flags,
                ..abi::WriteIn::default()
            };
            assert_eq!(call(&s, opcode::WRITE, ino, &[w.as_bytes(), b"x"]).0, 0);
        };

        // A writer with CAP_FSETID (no flag) keeps the bits, as on Linux.
        let a = file("a", 0o6755);
        write(a, 0);
        assert_eq!(mode_of("a"), 0o6755);
        // Without it: set-user-ID goes, and set-group-ID on a group-executable file.
        write(a, abi::WRITE_KILL_SUIDGID);
        assert_eq!(mode_of("a"), 0o755);
        // Set-group-ID without group execute marks mandatory locking, not privilege: kept.
        let b = file("b", 0o6745);
        write(b, abi::WRITE_KILL_SUIDGID);
        assert_eq!(mode_of("b"), 0o2745);

        // A truncate (or chown) with the flag clears them and the reply says so; an explicit
        // mode in the same request wins.
        let setattr = |ino: u64, a: abi::SetattrIn| {
            let (err, body) = call(&s, opcode::SETATTR, ino, &[a.as_bytes()]);
            assert_eq!(err, 0);
            abi::AttrOut::read_from_bytes(&body).unwrap().attr.mode & 0o7777
        };
        let c = file("c", 0o4711);
        let truncate = abi::SetattrIn {
            valid: fattr::SIZE | fattr::KILL_SUIDGID,
            ..abi::SetattrIn::default()
        };
        assert_eq!(setattr(c, truncate), 0o711);
        assert_eq!(mode_of("c"), 0o711);
        assert_eq!(std::fs::metadata(dir.path().join("c")).unwrap().len(), 0);
        let d = file("d", 0o4755);
        let chmod_too = abi::SetattrIn {
            valid: fattr::MODE | fattr::UID | fattr::KILL_SUIDGID,
            mode: 0o104750,
            ..abi::SetattrIn::default()
        };
        assert_eq!(setattr(d, chmod_too), 0o4750);

        // CREATE with O_TRUNC of an existing file clears them; a new file keeps the mode asked.
        let create = |name: &str, mode: u32| {
            let c = abi::CreateIn {
                flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32,
                mode: libc::S_IFREG | mode,
                umask: 0,
                open_flags: abi::OPEN_KILL_SUIDGID,
            };
            let (err, _) = call(
                &s,
                opcode::CREATE,
                1,
                &[c.as_bytes(), format!("{name}\0").as_bytes()],
            );
            assert_eq!(err, 0);
        };
        file("e", 0o4755);
        create("e", 0o644);
        assert_eq!(mode_of("e"), 0o755);
        create("new", 0o4755);
        assert_eq!(mode_of("new"), 0o4755);
    }

    #[test]
    fn create_write_read_lookup_readdir() {
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), false);
        let c = abi::CreateIn {
            flags: libc::O_RDWR as u32,
            mode: 0o100644,
            umask: 0o022,
            open_flags: 0,
        };
        let (err, body) = call(&s, opcode::CREATE, 1, &[c.as_bytes(), b"f\0"]);
        assert_eq!(err, 0);
        let e = entry(&body);
        let o = abi::OpenOut::read_from_bytes(&body[128..]).unwrap();
        assert_eq!(e.attr.mode, 0o100644);
        let w = abi::WriteIn {
            fh: o.fh,
            offset: 0,
            size: 5,
            ..abi::WriteIn::default()
        };
        let (err, body) = call(&s, opcode::WRITE, e.nodeid, &[w.as_bytes(), b"hello"]);
        assert_eq!((err, &body[..4]), (0, &5u32.to_le_bytes()[..]));
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello");
        let r = abi::ReadIn {
            fh: o.fh,
            offset: 1,
            size: 100,
            ..abi::ReadIn::default()
        };
        assert_eq!(
            call(&s, opcode::READ, e.nodeid, &[r.as_bytes()]),
            (0, b"ello".to_vec())
        );
        let rel = abi::ReleaseIn {
            fh: o.fh,
            ..abi::ReleaseIn::default()
        };
        assert_eq!(call(&s, opcode::RELEASE, e.nodeid, &[rel.as_bytes()]).0, 0);
        assert_eq!(s.session().handle_count(), 0);

        let (err, body) = call(&s, opcode::LOOKUP, 1, &[b"f\0"]);
        assert_eq!(
            (err, entry(&body).nodeid, entry(&body).attr.size),
            (0, e.nodeid, 5)
        );
        assert_eq!(call(&s, opcode::LOOKUP, 1, &[b"nope\0"]).0, libc::ENOENT);

        let body = list(&s, opcode::READDIR, 1);
        let mut names = Vec::new();
        let mut rest = &body[..];
        while !rest.is_empty() {
            let (d, tail) = abi::Dirent::read_from_prefix(rest).unwrap();
            names.push(tail[..d.namelen as usize].to_vec());
            rest = &tail[(24 + d.namelen as usize).next_multiple_of(8) - 24..];
        }
        names.sort();
        assert_eq!(names, [b".".to_vec(), b"..".to_vec(), b"f".to_vec()]);
    }

    #[test]
    fn forget_takes_no_reply_and_drops_the_node() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"").unwrap();
        let s = server(dir.path(), false);
        let (_, body) = call(&s, opcode::LOOKUP, 1, &[b"a\0"]);
        let ino = entry(&body).nodeid;
        assert_eq!(s.session().lookup_count(ino), Some(1));
        let f = abi::ForgetIn { nlookup: 1 };
        assert!(
            s.handle(&request(opcode::FORGET, 1, ino, &[f.as_bytes()]))
                .is_none()
        );
        assert_eq!(s.session().lookup_count(ino), None);
    }

    #[test]
    fn read_only_export_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let s = server(dir.path(), true);
        let m = abi::MkdirIn {
            mode: 0o755,
            umask: 0,
        };
        assert_eq!(
            call(&s, opcode::MKDIR, 1, &[m.as_bytes(), b"d\0"]).0,
            libc::EROFS
        );
        let (_, body) = call(&s, opcode::LOOKUP, 1, &[b"a\0"]);
        let o = abi::OpenIn {
            flags: libc::O_WRONLY as u32,
            open_flags: 0,
        };
        assert_eq!(
            call(&s, opcode::OPEN, entry(&body).nodeid, &[o.as_bytes()]).0,
            libc::EROFS
        );
    }

    #[test]
    fn hostile_requests_get_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), false);
        // Truncated argument structs and names.
        assert_eq!(call(&s, opcode::WRITE, 1, &[&[0; 7]]).0, libc::EINVAL);
        assert_eq!(call(&s, opcode::LOOKUP, 1, &[b"abc"]).0, libc::EINVAL);
        // Path tricks.
        assert_eq!(call(&s, opcode::LOOKUP, 1, &[b"..\0"]).0, libc::EINVAL);
        assert_eq!(call(&s, opcode::LOOKUP, 1, &[b"a/b\0"]).0, libc::EINVAL);
        // Unknown node, unknown opcode, short header.
        assert_eq!(call(&s, opcode::LOOKUP, 999, &[b"a\0"]).0, libc::ESTALE);
        assert_eq!(call(&s, 4000, 1, &[]).0, libc::ENOSYS);
        assert!(s.handle(&[1, 2, 3]).is_none());
    }

    #[test]
    fn symlink_out_of_the_export_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("l")).unwrap();
        let s = server(dir.path(), false);
        let (err, body) = call(&s, opcode::LOOKUP, 1, &[b"l\0"]);
        assert_eq!(err, 0);
        let e = entry(&body);
        assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        let o = abi::OpenIn::default();
        assert_eq!(
            call(&s, opcode::OPEN, e.nodeid, &[o.as_bytes()]).0,
            libc::ELOOP
        );
    }

    /// Unmounts (lazily) when dropped, so a failed assertion leaves no mount behind.
    struct Mounted(std::path::PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn mount_points_inside_the_export_are_announced_as_submounts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("\n*** SKIPPED: mounting a tmpfs needs root (CI runs as root) ***\n");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plain")).unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &dir.path().join("mnt"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount a tmpfs as root");
        let _mounted = Mounted(dir.path().join("mnt"));
        std::fs::create_dir(dir.path().join("mnt/inner")).unwrap();
        let s = server(dir.path(), false);
        let flags_of = |parent: u64, name: &[u8]| {
            let (err, body) = call(&s, opcode::LOOKUP, parent, &[name]);
            assert_eq!(err, 0);
            let e = entry(&body);
            (e.nodeid, e.attr.flags)
        };
        let (mnt, flags) = flags_of(1, b"mnt\0");
        assert_eq!(flags, abi::ATTR_SUBMOUNT, "the tmpfs mount point");
        assert_eq!(flags_of(1, b"plain\0").1, 0, "a plain directory");
        assert_eq!(
            flags_of(mnt, b"inner\0").1,
            0,
            "a directory inside the submount"
        );

        // READDIRPLUS announces it the same way.
        let body = list(&s, opcode::READDIRPLUS, 1);
        let mut announced = Vec::new();
        let mut rest = &body[..];
        while !rest.is_empty() {
            let (e, after) = abi::EntryOut::read_from_prefix(rest).unwrap();
            let (d, after) = abi::Dirent::read_from_prefix(after).unwrap();
            let name = &after[..d.namelen as usize];
            if e.attr.flags & abi::ATTR_SUBMOUNT != 0 {
                announced.push(name.to_vec());
            }
            let padded = (d.namelen as usize).div_ceil(8) * 8;
            rest = &after[padded..];
        }
        assert_eq!(announced, vec![b"mnt".to_vec()]);
    }

    /// Every name below `dir` with its type, size, mtime and (for files) contents.
    fn snapshot(dir: &std::path::Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let data = if m.is_file() {
                    std::fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                if m.is_dir() {
                    todo.push(p.clone());
                }
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    format!(
                        "{:?} {} {:?} {:?}",
                        m.file_type(),
                        m.len(),
                        m.modified().unwrap(),
                        data
                    ),
                ));
            }
        }
        out.sort();
        out
    }

    /// The replay thread of the tests below.
    const TID: u32 = 4242;
    /// Its link number.
    const LINK: u64 = 0xfeed;

    /// Links the server's session to the replaying session that registered [`LINK`], the way
    /// the agent does: a lookup of the link name through the mount, answered ENOENT.
    fn link(s: &FuseServer) {
        let name = format!("{}{LINK:016x}\0", ferry_protocol::REPLAY_LINK_PREFIX);
        assert_eq!(
            call(s, opcode::LOOKUP, 1, &[name.as_bytes()]).0,
            libc::ENOENT
        );
    }

    fn change(kind: ChangeKind, path: &str, to: &str, file_type: u32) -> ferry_protocol::Change {
        ferry_protocol::Change {
            kind,
            path: path.into(),
            to: to.into(),
            parent: 0,
            to_parent: 0,
            file_type,
            entry: None,
        }
    }

    /// What the replay thread's syscalls send, in the order the guest kernel sends it (see
    /// shared/notes/inotify-replay.md), answered without changing the host.
    #[test]
    fn replayed_changes_touch_nothing_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("d")).unwrap();
        std::fs::write(p.join("d/new"), b"created on the host").unwrap();
        std::fs::write(p.join("moved"), b"renamed on the host").unwrap();
        std::fs::write(p.join("back"), b"removed, then made again").unwrap();
        let s = server(p, false);
        let agent = ExportSession::new(s.session().export().clone());
        let before = snapshot(p);
        let replay =
            |c: Option<ferry_protocol::Change>| agent.replay(TID as i32, LINK, c.as_ref()).unwrap();
        let call = |op, node, parts: &[&[u8]]| call_as(&s, TID, op, node, parts);
        let (_, body) = call(opcode::LOOKUP, 1, &[b"d\0"]);
        let d = entry(&body).nodeid;

        // Created: the name was absent before; the creation hands out the host's object.
        let created = change(ChangeKind::Created, "d/new", "", libc::S_IFREG);
        assert_eq!(
            agent.replay(TID as i32, LINK, Some(&created)),
            Err(Errno::ENXIO),
            "the agent hears that nothing is linked to it yet"
        );
        let (err, body) = call(opcode::LOOKUP, d, &[b"new\0"]);
        assert_eq!(err, 0, "not linked yet: served as usual");
        let forget = abi::ForgetIn { nlookup: 1 };
        let f = request(opcode::FORGET, 1, entry(&body).nodeid, &[forget.as_bytes()]);
        assert!(s.handle(&f).is_none());
        link(&s);
        replay(Some(created));
        assert_eq!(call(opcode::LOOKUP, d, &[b"new\0"]).0, libc::ENOENT);
        let mknod = abi::MknodIn {
            mode: libc::S_IFREG | 0o644,
            ..abi::MknodIn::default()
        };
        let (err, body) = call(opcode::MKNOD, d, &[mknod.as_bytes(), b"new\0"]);
        assert_eq!(err, 0);
        let new = entry(&body);
        assert_eq!(new.attr.size, 19);
        assert_eq!(s.session().lookup_count(new.nodeid), Some(1));
        let mkdir = abi::MkdirIn {
            mode: 0o755,
            umask: 0,
        };
        assert_eq!(
            call(opcode::MKDIR, d, &[mkdir.as_bytes(), b"new\0"]).0,
            libc::EEXIST,
            "not a directory"
        );
        assert_eq!(s.session().lookup_count(new.nodeid), Some(1));
        assert_eq!(
            call(opcode::MKNOD, d, &[mknod.as_bytes(), b"other\0"]).0,
            libc::EPERM
        );
        assert_eq!(
            call(opcode::MKNOD, 1, &[mknod.as_bytes(), b"new\0"]).0,
            libc::EPERM,
            "other dir"
        );
        // Created and gone again before the replay: a synthetic node.
        replay(Some(change(
            ChangeKind::Created,
            "d/brief",
            "",
            libc::S_IFDIR,
        )));
        let (err, body) = call(opcode::MKDIR, d, &[mkdir.as_bytes(), b"brief\0"]);
        assert_eq!(err, 0);
        let brief = entry(&body);
        assert!(brief.nodeid >= SYNTHETIC_BASE);
        assert_eq!(brief.attr.mode & libc::S_IFMT, libc::S_IFDIR);
        let forget = abi::ForgetIn { nlookup: 1 };
        assert!(
            s.handle(&request(
                opcode::FORGET,
                1,
                brief.nodeid,
                &[forget.as_bytes()]
            ))
            .is_none()
        );

        // Removed, and gone on the host: a synthetic node, and the removal succeeds.
        replay(Some(change(ChangeKind::Removed, "gone", "", libc::S_IFREG)));
        let (err, body) = call(opcode::LOOKUP, 1, &[b"gone\0"]);
        assert_eq!(err, 0);
        let gone = entry(&body);
        assert!(gone.nodeid >= SYNTHETIC_BASE);
        assert_eq!(
            (gone.entry_valid, gone.attr.mode),
            (0, libc::S_IFREG | 0o644)
        );
        assert_eq!(call(opcode::UNLINK, 1, &[b"gone\0"]).0, 0);
        assert_eq!(
            call(opcode::RMDIR, 1, &[b"d\0"]).0,
            libc::EPERM,
            "not the change's name"
        );
        assert_eq!(s.synthetic_count(), 1);
        let (err, _) = call_as(
            &s,
            1,
            opcode::GETATTR,
            gone.nodeid,
            &[abi::GetattrIn::default().as_bytes()],
        );
        assert_eq!(err, 0);
        assert!(
            s.handle(&request(
                opcode::FORGET,
                1,
                gone.nodeid,
                &[abi::ForgetIn { nlookup: 1 }.as_bytes()]
            ))
            .is_none()
        );
        assert_eq!(s.synthetic_count(), 0);
        assert_eq!(
            call(
                opcode::GETATTR,
                gone.nodeid,
                &[abi::GetattrIn::default().as_bytes()]
            )
            .0,
            libc::ESTALE
        );

        // Removed, but the name is back on the host: the newer file is never removed.
        replay(Some(change(ChangeKind::Removed, "back", "", libc::S_IFREG)));
        let (err, body) = call(opcode::LOOKUP, 1, &[b"back\0"]);
        assert!(err == 0 && entry(&body).nodeid < SYNTHETIC_BASE);
        assert_eq!(call(opcode::UNLINK, 1, &[b"back\0"]).0, libc::ESTALE);

        // Renamed old -> moved: the source as a synthetic node, the target absent, and the
        // rename succeeds because the host already shows it.
        replay(Some(change(
            ChangeKind::Renamed,
            "old",
            "moved",
            libc::S_IFREG,
        )));
        let (err, body) = call(opcode::LOOKUP, 1, &[b"old\0"]);
        assert!(err == 0 && entry(&body).nodeid >= SYNTHETIC_BASE);
        assert_eq!(call(opcode::LOOKUP, 1, &[b"moved\0"]).0, libc::ENOENT);
        let exchange = abi::Rename2In {
            newdir: 1,
            flags: 2,
            ..abi::Rename2In::default()
        };
        assert_eq!(
            call(
                opcode::RENAME2,
                1,
                &[exchange.as_bytes(), b"old\0", b"moved\0"]
            )
            .0,
            libc::EPERM
        );
        let rename = abi::RenameIn { newdir: 1 };
        assert_eq!(
            call(
                opcode::RENAME,
                1,
                &[rename.as_bytes(), b"moved\0", b"old\0"]
            )
            .0,
            libc::EPERM,
            "backwards"
        );
        assert_eq!(
            call(
                opcode::RENAME,
                1,
                &[rename.as_bytes(), b"old\0", b"moved\0"]
            )
            .0,
            0
        );

        // A data change: an open for writing with O_TRUNC opens read-only without keeping
        // the cache; writes, size and time changes touch nothing.
        replay(Some(change(
            ChangeKind::DataClosed,
            "moved",
            "",
            libc::S_IFREG,
        )));
        let (_, body) = call(opcode::LOOKUP, 1, &[b"moved\0"]);
        let moved = entry(&body);
        let o = abi::OpenIn {
            flags: (libc::O_WRONLY | libc::O_TRUNC) as u32,
            open_flags: 0,
        };
        let (err, body) = call(opcode::OPEN, moved.nodeid, &[o.as_bytes()]);
        assert_eq!(err, 0);
        let opened = abi::OpenOut::read_from_bytes(&body).unwrap();
        assert_eq!(opened.open_flags, 0, "no FOPEN_KEEP_CACHE");
        let w = abi::WriteIn {
            fh: opened.fh,
            size: 1,
            ..abi::WriteIn::default()
        };
        assert_eq!(
            call(opcode::WRITE, moved.nodeid, &[w.as_bytes(), b"x"]).0,
            libc::EPERM
        );
        let set = abi::SetattrIn {
            valid: fattr::SIZE | fattr::MTIME_NOW | fattr::FH,
            fh: opened.fh,
            ..abi::SetattrIn::default()
        };
        let (err, body) = call(opcode::SETATTR, moved.nodeid, &[set.as_bytes()]);
        assert_eq!(err, 0);
        assert_eq!(abi::AttrOut::read_from_bytes(&body).unwrap().attr.size, 19);
        let f = abi::FallocateIn {
            fh: opened.fh,
            length: 1 << 20,
            ..abi::FallocateIn::default()
        };
        assert_eq!(
            call(opcode::FALLOCATE, moved.nodeid, &[f.as_bytes()]).0,
            libc::EPERM
        );
        let fl = abi::FlushIn {
            fh: opened.fh,
            ..abi::FlushIn::default()
        };
        // Declined as for every thread on a local filesystem.
        assert_eq!(
            call(opcode::FLUSH, moved.nodeid, &[fl.as_bytes()]).0,
            libc::ENOSYS
        );
        let rel = abi::ReleaseIn {
            fh: opened.fh,
            ..abi::ReleaseIn::default()
        };
        assert_eq!(
            call_as(&s, 0, opcode::RELEASE, moved.nodeid, &[rel.as_bytes()]).0,
            0
        );
        let x = abi::SetxattrIn {
            size: 1,
            ..abi::SetxattrIn::default()
        };
        assert_eq!(
            call(
                opcode::SETXATTR,
                moved.nodeid,
                &[x.as_bytes(), b"user.x\0", b"1"]
            )
            .0,
            libc::EPERM
        );
        let l = abi::LinkIn {
            oldnodeid: moved.nodeid,
        };
        assert_eq!(
            call(opcode::LINK, 1, &[l.as_bytes(), b"hard\0"]).0,
            libc::EPERM
        );

        // Between changes nothing changes the host either.
        replay(None);
        assert_eq!(
            call(opcode::MKNOD, d, &[mknod.as_bytes(), b"new\0"]).0,
            libc::EPERM
        );
        assert_eq!(call(opcode::UNLINK, 1, &[b"moved\0"]).0, libc::EPERM);
        assert_eq!(
            call(opcode::LOOKUP, 1, &[b"moved\0"]).0,
            0,
            "reads are served"
        );

        assert_eq!(snapshot(p), before, "the replay changed the host");
        assert_eq!(s.session().handle_count(), 0);

        // Any other thread is served as usual, and so is the replay thread once its
        // connection is gone.
        assert_eq!(call_as(&s, TID + 1, opcode::UNLINK, 1, &[b"moved\0"]).0, 0);
        drop(agent);
        assert_eq!(call(opcode::UNLINK, 1, &[b"back\0"]).0, 0);
        assert!(!p.join("moved").exists() && !p.join("back").exists());
    }

    /// Once the replay thread has sent a request through the virtio-fs session, what the
    /// guest changes through it is not sent to the replaying session as host changes; what
    /// the host changes is.
    #[test]
    fn the_guest_s_own_changes_are_not_replayed_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("file"), b"x").unwrap();
        let s = server(p, false);
        let agent = Arc::new(ExportSession::new(s.session().export().clone()));
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        agent
            .watch(Arc::new(move |c| {
                let _ = tx.lock().unwrap().send(c);
            }))
            .unwrap();
        assert_eq!(agent.replay(TID as i32, LINK, None), Err(Errno::ENXIO));
        link(&s);
        std::thread::sleep(Duration::from_millis(100));
        // The guest (pid 77): a file, a directory, a write, a rename and a removal.
        let m = abi::MknodIn {
            mode: libc::S_IFREG | 0o644,
            ..abi::MknodIn::default()
        };
        assert_eq!(call(&s, opcode::MKNOD, 1, &[m.as_bytes(), b"mine\0"]).0, 0);
        let d = abi::MkdirIn {
            mode: 0o755,
            umask: 0,
        };
        assert_eq!(call(&s, opcode::MKDIR, 1, &[d.as_bytes(), b"dir\0"]).0, 0);
        let (_, body) = call(&s, opcode::LOOKUP, 1, &[b"file\0"]);
        let file = entry(&body).nodeid;
        let o = abi::OpenIn {
            flags: libc::O_WRONLY as u32,
            open_flags: 0,
        };
        let (_, body) = call(&s, opcode::OPEN, file, &[o.as_bytes()]);
        let fh = abi::OpenOut::read_from_bytes(&body).unwrap().fh;
        let w = abi::WriteIn {
            fh,
            size: 2,
            ..abi::WriteIn::default()
        };
        assert_eq!(call(&s, opcode::WRITE, file, &[w.as_bytes(), b"yz"]).0, 0);
        let rel = abi::ReleaseIn {
            fh,
            ..abi::ReleaseIn::default()
        };
        assert_eq!(call(&s, opcode::RELEASE, file, &[rel.as_bytes()]).0, 0);
        let r = abi::RenameIn { newdir: 1 };
        assert_eq!(
            call(
                &s,
                opcode::RENAME,
                1,
                &[r.as_bytes(), b"mine\0", b"moved\0"]
            )
            .0,
            0
        );
        assert_eq!(call(&s, opcode::UNLINK, 1, &[b"moved\0"]).0, 0);
        // Then the host.
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(p.join("theirs"), b"h").unwrap();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !got
            .iter()
            .any(|c: &ferry_protocol::Change| c.path == b"theirs")
            && std::time::Instant::now() < deadline
        {
            if let Ok(batch) = rx.recv_timeout(Duration::from_millis(100)) {
                got.extend(batch);
            }
        }
        let paths: Vec<String> = got
            .iter()
            .map(|c| String::from_utf8_lossy(&c.path).into_owned())
            .collect();
        assert!(
            paths.iter().all(|p| p == "theirs"),
            "the guest's own changes came back: {got:?}"
        );
        assert!(!paths.is_empty(), "the host's change did not arrive");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any opcode with any argument bytes gets an answer or none, never a panic; a reply
        /// always carries the request's id and its own length.
        #[test]
        fn arbitrary_requests_never_panic(
            op in 0u32..60,
            nodeid in proptest::prop_oneof![proptest::strategy::Just(1u64), 0u64..8, proptest::prelude::any::<u64>()],
            args in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("a"), b"x").unwrap();
            let s = server(dir.path(), false);
            if let Some(reply) = s.handle(&request(op, 5, nodeid, &[&args])) {
                let (h, _) = OutHeader::read_from_prefix(&reply).unwrap();
                proptest::prop_assert_eq!(h.unique, 5);
                proptest::prop_assert_eq!(h.len as usize, reply.len());
            }
        }
    }
}
