//! A replay thread's requests, answered without changing the host (see `export/replay.rs`
//! and the rule in [`ferry_protocol::replay`]), and the synthetic nodes they may hand out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_protocol::replay::{self, Answer, SYNTHETIC_BASE, Side, is_synthetic};
use ferry_protocol::{Attr, ChangeKind, Entry, Errno, Timespec};
use zerocopy::IntoBytes;

use super::{FuseServer, Out, ctx, ok};
use crate::export::ReplayThread;
use crate::virtiofs::abi::{self, Args, InHeader, opcode};
use crate::virtiofs::wire::{self, rename_args};

/// The synthetic nodes the guest kernel holds: stand-ins for objects a replay removes or
/// renames that the host no longer has, answered here and unknown to the export session
/// (ids from [`SYNTHETIC_BASE`]).
#[derive(Debug)]
pub(super) struct Synthetic {
    nodes: Mutex<HashMap<u64, Attr>>,
    next: AtomicU64,
}

impl Default for Synthetic {
    fn default() -> Self {
        Synthetic {
            nodes: Mutex::default(),
            next: AtomicU64::new(SYNTHETIC_BASE),
        }
    }
}

impl Synthetic {
    /// A new node of file type `ft` (a regular file when unknown); its attributes.
    fn add(&self, ft: u32) -> Attr {
        let ino = self.next.fetch_add(1, Ordering::Relaxed);
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
        self.lock().insert(ino, attr);
        attr
    }

    fn attr(&self, ino: u64) -> Option<Attr> {
        self.lock().get(&ino).copied()
    }

    /// The guest kernel forgot node `ino`.
    pub(super) fn forget(&self, ino: u64) {
        self.lock().remove(&ino);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Attr>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FuseServer {
    /// A request from a replay thread: the change it replays already happened on the host, so
    /// nothing here writes to the host. What to answer is the rule of
    /// [`ferry_protocol::replay`], which the agent follows on its own mounts too: this
    /// function only finds which of the change's names a request names and what the host
    /// holds there, and turns the rule's answer into a reply. Beside the rule: a replayed
    /// open is a read-only open without `FOPEN_KEEP_CACHE`, so the guest drops the file's
    /// cached pages, and a replayed time or size change answers the host's attributes.
    /// Requests that only read are performed as usual.
    pub(super) fn serve_replay(
        &self,
        h: &InHeader,
        mut args: Args<'_>,
        thread: &ReplayThread,
    ) -> Out {
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
                let name = args.clone().name()?;
                let side = side(ino, name);
                match replay::lookup(kind, side, host(ino, name)) {
                    Answer::AsUsual => self.perform(h, args),
                    // Absent before a creation and before a rename's target.
                    Answer::Before if kind == ChangeKind::Created || side == Side::To => {
                        Err(Errno::ENOENT)
                    }
                    // What was removed, renamed or changed, which the host no longer has.
                    Answer::Before => self.synthetic_reply(change.map_or(0, |c| c.file_type)),
                    other => refused(h, other),
                }
            }
            opcode::MKNOD | opcode::MKDIR | opcode::SYMLINK | opcode::CREATE => {
                let (ft, name) = match h.opcode {
                    opcode::MKNOD => {
                        let m: abi::MknodIn = args.obj()?;
                        (m.mode & libc::S_IFMT, args.name()?)
                    }
                    opcode::MKDIR => {
                        let _: abi::MkdirIn = args.obj()?;
                        (libc::S_IFDIR, args.name()?)
                    }
                    opcode::SYMLINK => (libc::S_IFLNK, args.name()?),
                    _ => {
                        let c: abi::CreateIn = args.obj()?;
                        (c.mode & libc::S_IFMT, args.name()?)
                    }
                };
                let create = h.opcode == opcode::CREATE;
                // A session replaying by path holds no node of the change's.
                match replay::create(kind, side(ino, name), host(ino, name), false) {
                    Answer::HostObject => self.replayed_creation(h, name, ft, create),
                    // Gone again (a removal or rename follows): the creation is still seen,
                    // and the change after it has a name to replay on.
                    Answer::Synthetic if create => {
                        let mut body = self.synthetic_entry(ft).as_bytes().to_vec();
                        body.extend_from_slice(abi::OpenOut::default().as_bytes());
                        Ok(Some(body))
                    }
                    Answer::Synthetic => self.synthetic_reply(ft),
                    other => refused(h, other),
                }
            }
            opcode::UNLINK | opcode::RMDIR => {
                let name = args.name()?;
                match replay::remove(kind, side(ino, name), host(ino, name)) {
                    Answer::Done => ok(&[]),
                    other => refused(h, other),
                }
            }
            opcode::RENAME | opcode::RENAME2 => {
                let r = rename_args(h.opcode, &mut args)?;
                let (from, to) = (side(ino, r.old), side(r.newdir, r.new));
                let (src, dst) = (host(ino, r.old), host(r.newdir, r.new));
                match replay::rename(kind, from, to, r.flags, src, dst) {
                    Answer::Done => ok(&[]),
                    other => refused(h, other),
                }
            }
            opcode::OPEN => {
                let o: abi::OpenIn = args.obj()?;
                // Read-only whatever was asked (never truncating), and without KEEP_CACHE: the
                // guest kernel drops the file's cached pages, so the next read sees the host's
                // new data.
                let flags = o.flags as i32 & libc::O_DIRECTORY;
                let opened = s.open(&ctx(h), ino, libc::O_RDONLY | flags)?;
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
                let a = s.getattr(ino, None)?;
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
        let e = s.lookup(&ctx(h), h.nodeid, name)?;
        if e.attr.mode & libc::S_IFMT != ft {
            // Not of the type asked for: the kernel would refuse it.
            s.forget(e.ino, 1);
            return Err(Errno::EEXIST);
        }
        if !create {
            return self.entry_reply(&e);
        }
        let opened = match s.open(&ctx(h), e.ino, libc::O_RDONLY) {
            Ok(o) => o,
            Err(err) => {
                s.forget(e.ino, 1);
                return Err(err);
            }
        };
        let mut body = self.entry_out(&e).as_bytes().to_vec();
        body.extend_from_slice(wire::open_out(&opened).as_bytes());
        Ok(Some(body))
    }

    /// A request on a synthetic node from any other thread: only its attributes and its
    /// FORGET make sense.
    pub(super) fn serve_synthetic(&self, h: &InHeader, mut args: Args<'_>) -> Out {
        match h.opcode {
            opcode::FORGET => {
                let _: abi::ForgetIn = args.obj()?;
                self.synthetic.forget(h.nodeid);
                Ok(None)
            }
            opcode::GETATTR => self.synthetic_attr(h.nodeid),
            _ => Err(Errno::ESTALE),
        }
    }

    /// A new synthetic node of file type `ft` (a regular file when unknown), valid for no
    /// time at all: the next path walk through it asks again and gets the host's answer.
    fn synthetic_reply(&self, ft: u32) -> Out {
        ok(self.synthetic_entry(ft).as_bytes())
    }

    /// The entry of a new synthetic node (see [`Self::synthetic_reply`]).
    fn synthetic_entry(&self, ft: u32) -> abi::EntryOut {
        let attr = self.synthetic.add(ft);
        let e = Entry {
            ino: attr.ino,
            generation: 0,
            attr,
        };
        wire::entry_out(&e, Duration::ZERO)
    }

    fn synthetic_attr(&self, ino: u64) -> Out {
        match self.synthetic.attr(ino) {
            Some(a) => ok(wire::attr_reply(&a, Duration::ZERO).as_bytes()),
            None => Err(Errno::ESTALE),
        }
    }

    /// Number of synthetic nodes the guest kernel holds (for tests).
    pub fn synthetic_count(&self) -> usize {
        self.synthetic.len()
    }
}

/// The rule's refusal of a replay thread's request as a reply. An answer the rule does not
/// give for the request is a bug: EIO.
fn refused(h: &InHeader, answer: Answer) -> Out {
    match answer {
        Answer::Fail(e) => Err(e),
        other => {
            tracing::warn!(opcode = h.opcode, answer = ?other, "virtio-fs: no reply for a replay answer");
            Err(Errno::EIO)
        }
    }
}
