//! One FUSE request in, one reply out: decodes a request with [`abi`](super::abi), calls the
//! matching typed method of [`ExportSession`] and encodes the answer.
//!
//! This module is the only part of the virtio-fs front door that calls into the export core;
//! every call site is in [`FuseServer::serve`] and the helpers right below it, and in
//! `replay.rs`, so a change of the export core's signatures is adapted here and nowhere else.
//! The conversions to and from the wire structs are in [`wire`](super::wire).
//!
//! Requests from a guest thread that replays host changes (`ferry-agent --events-only`; see
//! `export/replay.rs`) are answered by `replay.rs` without changing anything on the host.
//!
//! Not served (answered ENOSYS, so the guest kernel stops asking or falls back): POSIX and
//! flock locks (the guest kernel then keeps locks local to the guest, as with the FUSE agent),
//! copy_file_range (the kernel copies through read and write), ioctl, poll and DAX mappings.

mod replay;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_protocol::replay::is_synthetic;
use ferry_protocol::{Attr, Ctx, Entry, Errno, MAX_DATA};
use zerocopy::IntoBytes;

use super::abi::{self, Args, DecodeError, InHeader, fattr, init_flags, opcode};
use super::wire::{self, open_out, rename_args, set_attrs, xattr_reply};
use crate::export::ExportSession;

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

/// Offered on top of [`OFFERED`] when the export's permissions are checked by the guest and
/// its ACLs are on ([`ExportSession::acls`]), as virtiofsd's `--posix-acl` does. With
/// `POSIX_ACL` the guest kernel checks every access (it implies `default_permissions`, which a
/// virtio-fs mount cannot otherwise ask for) against the owners, modes and ACLs it reads
/// through GETXATTR; with `DONT_MASK` it sends creating requests the mode without the umask,
/// so the export core can apply a parent's default ACL instead of the umask, as a local
/// filesystem does.
const OFFERED_ACL: u32 = init_flags::POSIX_ACL | init_flags::DONT_MASK;

/// Serves FUSE requests of one guest (one vhost-user connection) from one export session.
#[derive(Debug)]
pub struct FuseServer {
    session: ExportSession,
    /// Entry and attribute validity handed to the guest kernel.
    ttl: Duration,
    /// Requests and host time per opcode, logged when the session ends.
    stats: [(AtomicU64, AtomicU64); 64],
    /// Synthetic nodes the guest kernel holds.
    synthetic: replay::Synthetic,
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

/// What a request produced: a success reply with this body, no reply at all (`None`: FORGET,
/// BATCH_FORGET, INTERRUPT), or an error reply.
type Out = Result<Option<Vec<u8>>, Errno>;

/// A malformed request is answered EINVAL (so `?` works on decoding too).
impl From<DecodeError> for Errno {
    fn from(e: DecodeError) -> Self {
        ferry_common::warn_limited!("virtio-fs: malformed request: {e}");
        Errno::EINVAL
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

/// A success reply with `body`.
fn ok(body: &[u8]) -> Out {
    Ok(Some(body.to_vec()))
}

impl FuseServer {
    /// A server over `session`, giving the guest kernel `ttl` for entries and attributes.
    pub fn new(session: ExportSession, ttl: Duration) -> Self {
        FuseServer {
            flush_needed: session.close_reports_errors(),
            session,
            ttl,
            stats: std::array::from_fn(|_| Default::default()),
            synthetic: replay::Synthetic::default(),
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
                ferry_common::warn_limited!("virtio-fs: dropped a request: {e}");
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
            Ok(None) => None,
            Ok(Some(body)) => Some(abi::reply(h.unique, 0, &[&body])),
            Err(e) => Some(abi::error_reply(h.unique, e.0)),
        }
    }

    fn entry_out(&self, e: &Entry) -> abi::EntryOut {
        wire::entry_out(e, self.ttl)
    }

    /// As [`Self::entry_out`] for an entry found in directory `parent`, announcing it as a
    /// submount when it is a mount point on the host (virtiofsd's `--announce-submounts`), so
    /// the guest gives it its own `st_dev` and `find -xdev`, `du -x` and git stop there.
    fn entry_out_in(&self, parent: u64, e: &Entry) -> abi::EntryOut {
        let mut out = self.entry_out(e);
        if self.session.is_submount(parent, e.ino) {
            out.attr.flags |= abi::ATTR_SUBMOUNT;
        }
        out
    }

    fn attr_reply(&self, a: &Attr) -> Out {
        ok(wire::attr_reply(a, self.ttl).as_bytes())
    }

    fn entry_reply(&self, e: &Entry) -> Out {
        ok(self.entry_out(e).as_bytes())
    }

    /// Every call into the export core.
    fn serve(&self, h: &InHeader, args: Args<'_>) -> Out {
        let s = &self.session;
        // Removed or changed by a reload: the guest hears that this export is gone (the
        // kernel still gives back its nodes).
        if s.export().is_retired()
            && !matches!(
                h.opcode,
                opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT | opcode::DESTROY
            )
        {
            return Err(Errno::ESHUTDOWN);
        }
        // A replaying guest's link name: links this session to its replaying session, and is
        // answered ENOENT without a host lookup.
        if h.opcode == opcode::LOOKUP && args.clone().name().is_ok_and(|name| s.link_replayer(name))
        {
            return Err(Errno::ENOENT);
        }
        if let Some(thread) = s.replayer(h.pid) {
            let out = self.serve_replay(h, args, &thread);
            if let Err(e) = &out {
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
            opcode::INTERRUPT => Ok(None),
            opcode::LOOKUP => {
                let name = args.name()?;
                let e = s.lookup(&cx, ino, name)?;
                ok(self.entry_out_in(ino, &e).as_bytes())
            }
            opcode::FORGET => {
                let f: abi::ForgetIn = args.obj()?;
                s.forget(ino, f.nlookup);
                Ok(None)
            }
            opcode::BATCH_FORGET => {
                let b: abi::BatchForgetIn = match args.obj() {
                    Ok(b) => b,
                    Err(_) => return Ok(None),
                };
                for _ in 0..b.count {
                    let Ok(one) = args.obj::<abi::ForgetOne>() else {
                        break;
                    };
                    if is_synthetic(one.nodeid) {
                        self.synthetic.forget(one.nodeid);
                    } else {
                        s.forget(one.nodeid, one.nlookup);
                    }
                }
                Ok(None)
            }
            opcode::GETATTR => {
                let g: abi::GetattrIn = args.obj()?;
                let fh = (g.getattr_flags & abi::GETATTR_FH != 0).then_some(g.fh);
                let a = s.getattr(ino, fh)?;
                self.attr_reply(&a)
            }
            opcode::SETATTR => {
                let a: abi::SetattrIn = args.obj()?;
                let fh = (a.valid & fattr::FH != 0).then_some(a.fh);
                let attrs = set_attrs(&a);
                let r = s.setattr(&cx, ino, fh, &attrs)?;
                self.attr_reply(&r)
            }
            opcode::READLINK => Ok(Some(s.readlink(ino)?)),
            opcode::SYMLINK => {
                let name = args.name()?;
                let target = args.name()?;
                let e = s.symlink(&cx, ino, name, target)?;
                self.entry_reply(&e)
            }
            opcode::MKNOD => {
                let m: abi::MknodIn = args.obj()?;
                let name = args.name()?;
                let e = s.mknod(&cx, ino, name, m.mode, m.rdev, m.umask)?;
                self.entry_reply(&e)
            }
            opcode::MKDIR => {
                let m: abi::MkdirIn = args.obj()?;
                let name = args.name()?;
                let e = s.mkdir(&cx, ino, name, m.mode, m.umask)?;
                self.entry_reply(&e)
            }
            opcode::UNLINK | opcode::RMDIR => {
                let name = args.name()?;
                done(if h.opcode == opcode::UNLINK {
                    s.unlink(&cx, ino, name)
                } else {
                    s.rmdir(&cx, ino, name)
                })
            }
            opcode::RENAME | opcode::RENAME2 => {
                let r = rename_args(h.opcode, &mut args)?;
                done(s.rename(&cx, ino, r.old, r.newdir, r.new, r.flags))
            }
            opcode::LINK => {
                let l: abi::LinkIn = args.obj()?;
                let name = args.name()?;
                let e = s.link(&cx, l.oldnodeid, ino, name)?;
                self.entry_reply(&e)
            }
            opcode::OPEN | opcode::OPENDIR => {
                let o: abi::OpenIn = args.obj()?;
                let opened = if h.opcode == opcode::OPEN {
                    s.open(&cx, ino, o.flags as i32)?
                } else {
                    // The guest kernel may keep the listing: with AUTO_INVAL_DATA it
                    // compares the directory's mtime when a read starts over (its attributes
                    // expire with the 1 s TTL, as names do), and its own changes, replayed
                    // host changes included, drop the listing at once.
                    let mut opened = s.opendir(&cx, ino, o.flags as i32)?;
                    opened.open_flags |= abi::FOPEN_CACHE_DIR | abi::FOPEN_KEEP_CACHE;
                    opened
                };
                ok(open_out(&opened).as_bytes())
            }
            opcode::CREATE => {
                let c: abi::CreateIn = args.obj()?;
                let name = args.name()?;
                let kill = c.open_flags & abi::OPEN_KILL_SUIDGID != 0;
                let r = s.create_killing(&cx, ino, name, c.mode, c.umask, c.flags as i32, kill)?;
                let mut body = self.entry_out(&r.entry).as_bytes().to_vec();
                body.extend_from_slice(open_out(&r.opened).as_bytes());
                Ok(Some(body))
            }
            opcode::READ => {
                let r: abi::ReadIn = args.obj()?;
                Ok(Some(s.read(ino, r.fh, r.offset, r.size)?))
            }
            opcode::WRITE => {
                let w: abi::WriteIn = args.obj()?;
                let data = args.bytes(w.size as usize)?;
                if w.write_flags & abi::WRITE_KILL_SUIDGID != 0 {
                    s.kill_suidgid(ino)?;
                }
                let n = s.write(ino, w.fh, w.offset, data)?;
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
            opcode::FLUSH if !self.flush_needed => Err(Errno::ENOSYS),
            opcode::FLUSH => {
                let f: abi::FlushIn = args.obj()?;
                done(s.flush(ino, f.fh, f.lock_owner))
            }
            opcode::RELEASE | opcode::RELEASEDIR => {
                let r: abi::ReleaseIn = args.obj()?;
                if h.opcode == opcode::RELEASE {
                    done(s.release(ino, r.fh))
                } else {
                    done(s.releasedir(ino, r.fh))
                }
            }
            opcode::FSYNC | opcode::FSYNCDIR => {
                let f: abi::FsyncIn = args.obj()?;
                let datasync = f.fsync_flags & 1 != 0;
                if h.opcode == opcode::FSYNC {
                    done(s.fsync(ino, f.fh, datasync))
                } else {
                    done(s.fsyncdir(ino, f.fh, datasync))
                }
            }
            opcode::READDIR => {
                let r: abi::ReadIn = args.obj()?;
                let entries = s.readdir(ino, r.fh, r.offset, r.size)?;
                let mut out = Vec::with_capacity((r.size as usize).min(MAX_DATA));
                for d in &entries {
                    abi::push_dirent(&mut out, d.ino, d.offset, u32::from(d.kind), &d.name);
                }
                Ok(Some(out))
            }
            opcode::READDIRPLUS => {
                let r: abi::ReadIn = args.obj()?;
                let entries = s.readdirplus(&cx, ino, r.fh, r.offset, r.size)?;
                let mut out = Vec::with_capacity((r.size as usize).min(MAX_DATA));
                for d in &entries {
                    // `ino == 0` (for `.` and `..`): no node, which the kernel skips.
                    let entry = if d.entry.ino == 0 {
                        abi::EntryOut::default()
                    } else {
                        self.entry_out_in(ino, &d.entry)
                    };
                    out.extend_from_slice(entry.as_bytes());
                    // The dirent's inode number is the host's, as `stat` shows it.
                    let dino = match (d.entry.attr.ino, d.entry.ino) {
                        (0, 0) => 1,
                        (0, node) => node,
                        (host, _) => host,
                    };
                    abi::push_dirent(&mut out, dino, d.offset, u32::from(d.kind), &d.name);
                }
                Ok(Some(out))
            }
            opcode::STATFS => {
                let st = s.statfs(ino)?;
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
                let a: abi::AccessIn = args.obj()?;
                done(s.access(&cx, ino, a.mask as i32))
            }
            opcode::GETXATTR => {
                let g: abi::GetxattrIn = args.obj()?;
                let name = args.name()?;
                Ok(Some(xattr_reply(s.getxattr(&cx, ino, name, g.size)?)))
            }
            opcode::LISTXATTR => {
                let g: abi::GetxattrIn = args.obj()?;
                Ok(Some(xattr_reply(s.listxattr(&cx, ino, g.size)?)))
            }
            opcode::SETXATTR => {
                let x: abi::SetxattrIn = args.obj()?;
                let name = args.name()?;
                let value = args.bytes(x.size as usize)?;
                done(s.setxattr(&cx, ino, name, value, x.flags as i32))
            }
            opcode::REMOVEXATTR => done(s.removexattr(&cx, ino, args.name()?)),
            opcode::FALLOCATE => {
                let f: abi::FallocateIn = args.obj()?;
                done(s.fallocate(&cx, ino, f.fh, f.offset, f.length, f.mode as i32))
            }
            opcode::LSEEK => {
                let l: abi::LseekIn = args.obj()?;
                let off = s.lseek(ino, l.fh, l.offset as i64, l.whence as i32)?;
                ok(abi::LseekOut { offset: off as u64 }.as_bytes())
            }
            other => {
                tracing::debug!(opcode = other, "virtio-fs: unsupported opcode");
                Err(Errno::ENOSYS)
            }
        }
    }

    /// The INIT capabilities this export offers.
    fn offered(&self) -> u32 {
        let guest_checks =
            self.session.export().ids().permissions == ferry_protocol::Permissions::Guest;
        if guest_checks && self.session.acls() {
            OFFERED | OFFERED_ACL
        } else {
            OFFERED
        }
    }

    fn init(&self, args: &mut Args<'_>) -> Out {
        let i: abi::InitIn = args.obj()?;
        if i.major < abi::KERNEL_VERSION
            || (i.major == 7 && i.minor < abi::MIN_KERNEL_MINOR_VERSION)
        {
            ferry_common::warn_limited!(
                major = i.major,
                minor = i.minor,
                "virtio-fs: guest kernel FUSE protocol too old"
            );
            return Err(Errno::EPROTO);
        }
        let page = 4096;
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor: abi::KERNEL_MINOR_VERSION,
            max_readahead: i.max_readahead,
            flags: i.flags & self.offered(),
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

/// An empty success reply, or the error.
fn done(r: Result<(), Errno>) -> Out {
    r.map(|()| Some(Vec::new()))
}
