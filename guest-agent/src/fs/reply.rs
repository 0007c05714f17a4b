//! Protocol replies → fuser replies: one adapter for every request that expects one kind of
//! reply ([`Respond`], [`reply_with`]), and readdirplus entries.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use ferry_protocol::{self as proto, Attr, Errno, Reply};
use fuser::{
    FileHandle, FopenFlags, Generation, INodeNo, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr,
};
use tracing::error;

use super::attr::{file_attr, fopen_flags, mode_from_dtype};

pub(super) fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

/// Logs a reply of the wrong kind for `op` and returns EIO for the kernel.
pub(super) fn wrong(op: &str, r: &Reply<'_>) -> fuser::Errno {
    error!(op, reply = ?std::mem::discriminant(r), "server sent a reply of the wrong kind");
    fuser::Errno::EIO
}

/// A fuser reply object that can fail.
pub(super) trait Fail {
    /// Answers the kernel with an error.
    fn fail(self, e: fuser::Errno);
}

/// A fuser reply object answered with the one kind of protocol reply its request expects,
/// together with what the answer needs besides the reply (a TTL, extra open flags, a size).
pub(super) trait Respond: Fail + Send + Sized + 'static {
    /// Answers the kernel with `r`, or hands `self` back when `r` is not of the expected kind.
    fn respond(self, r: &Reply<'_>) -> Result<(), Self>;
}

/// The callback answering `reply` with the outcome of request `op`: the expected reply, EIO
/// (logged) for a reply of another kind, or the server's errno.
pub(super) fn reply_with<R: Respond>(
    op: &'static str,
    reply: R,
) -> impl FnOnce(Result<Reply<'_>, Errno>) + Send + 'static {
    move |r| match r {
        Ok(r) => {
            if let Err(reply) = reply.respond(&r) {
                reply.fail(wrong(op, &r));
            }
        }
        Err(e) => reply.fail(errno(e)),
    }
}

/// Answers an outcome that a request's own callback did not take: EIO (logged) for a reply of
/// the wrong kind, the server's errno for an error.
pub(super) fn refuse<R: Fail>(op: &'static str, reply: R, r: Result<Reply<'_>, Errno>) {
    match r {
        Ok(other) => reply.fail(wrong(op, &other)),
        Err(e) => reply.fail(errno(e)),
    }
}

macro_rules! fail {
    ($($t:ty),* $(,)?) => {$(
        impl Fail for $t {
            fn fail(self, e: fuser::Errno) {
                self.error(e);
            }
        }
    )*};
}
fail!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyLock,
    ReplyLseek,
    ReplyStatfs,
    ReplyOpen,
    ReplyWrite,
    ReplyXattr,
);

impl<R: Fail, T> Fail for (R, T) {
    fn fail(self, e: fuser::Errno) {
        self.0.fail(e);
    }
}

impl<R: Fail, T, U> Fail for (R, T, U) {
    fn fail(self, e: fuser::Errno) {
        self.0.fail(e);
    }
}

/// A node, valid for the TTL.
impl Respond for (ReplyEntry, Duration) {
    fn respond(self, r: &Reply<'_>) -> Result<(), Self> {
        let Reply::Entry(e) = r else { return Err(self) };
        self.0.entry_node(
            &self.1,
            INodeNo(e.ino),
            &file_attr(&e.attr),
            Generation(e.generation),
        );
        Ok(())
    }
}

/// Attributes, valid for the TTL.
impl Respond for (ReplyAttr, Duration) {
    fn respond(self, r: &Reply<'_>) -> Result<(), Self> {
        let Reply::Attr(a) = r else { return Err(self) };
        self.0.attr(&self.1, &file_attr(a));
        Ok(())
    }
}

/// A created and opened node, valid for the TTL, with extra open flags.
impl Respond for (ReplyCreate, Duration, FopenFlags) {
    fn respond(self, r: &Reply<'_>) -> Result<(), Self> {
        let Reply::Created(c) = r else {
            return Err(self);
        };
        let (reply, ttl, extra) = self;
        reply.created_node(
            &ttl,
            INodeNo(c.entry.ino),
            &file_attr(&c.entry.attr),
            Generation(c.entry.generation),
            FileHandle(c.opened.fh),
            fopen_flags(c.opened.open_flags) | extra,
        );
        Ok(())
    }
}

/// An open handle, with extra open flags.
impl Respond for (ReplyOpen, FopenFlags) {
    fn respond(self, r: &Reply<'_>) -> Result<(), Self> {
        let Reply::Opened(o) = r else {
            return Err(self);
        };
        self.0
            .opened(FileHandle(o.fh), fopen_flags(o.open_flags) | self.1);
        Ok(())
    }
}

/// An xattr value or name list for a buffer of the given size (0: only the size is asked).
impl Respond for (ReplyXattr, u32) {
    fn respond(self, r: &Reply<'_>) -> Result<(), Self> {
        let (reply, size) = self;
        match r {
            Reply::XattrSize(n) if size == 0 => reply.size(*n),
            Reply::Data(d) if size == 0 => reply.size(d.len() as u32),
            Reply::Data(d) if d.len() <= size as usize => reply.data(d),
            Reply::Data(_) | Reply::XattrSize(_) => reply.error(fuser::Errno::ERANGE),
            _ => return Err((reply, size)),
        }
        Ok(())
    }
}

impl Respond for ReplyEmpty {
    fn respond(self, r: &Reply<'_>) -> Result<(), Self> {
        let Reply::Empty = r else { return Err(self) };
        self.ok();
        Ok(())
    }
}

impl Respond for ReplyData {
    fn respond(self, r: &Reply<'_>) -> Result<(), Self> {
        let Reply::Data(d) = r else { return Err(self) };
        self.data(d);
        Ok(())
    }
}

impl Respond for ReplyWrite {
    fn respond(self, r: &Reply<'_>) -> Result<(), Self> {
        let Reply::Written(n) = r else {
            return Err(self);
        };
        self.written(*n);
        Ok(())
    }
}

impl Respond for ReplyStatfs {
    fn respond(self, r: &Reply<'_>) -> Result<(), Self> {
        let Reply::Statfs(s) = r else {
            return Err(self);
        };
        self.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
        );
        Ok(())
    }
}

impl Respond for ReplyLock {
    fn respond(self, r: &Reply<'_>) -> Result<(), Self> {
        let Reply::Lock(l) = r else { return Err(self) };
        self.locked(l.start, l.end, l.typ, l.pid);
        Ok(())
    }
}

impl Respond for ReplyLseek {
    fn respond(self, r: &Reply<'_>) -> Result<(), Self> {
        let Reply::Offset(o) = r else {
            return Err(self);
        };
        self.offset(*o);
        Ok(())
    }
}

/// Adds readdirplus entry `e` of directory `dir` to `reply`. `None`: the reply is full and
/// the entry was not added (it keeps its lookup); otherwise whether the entry's lookup must be
/// given back (`.` and `..`, which the kernel does not link).
pub(super) fn add_dirplus(
    reply: &mut ReplyDirectoryPlus,
    dir: u64,
    ttl: Duration,
    e: &proto::DirEntryPlus,
) -> Option<bool> {
    let is_dot = e.name == b"." || e.name == b"..";
    // The node id is the entry's (0 when not looked up: the kernel then does not link it);
    // the dirent's inode number is the host's, as `stat` shows it.
    let (attr, generation) = if e.entry.ino != 0 {
        (file_attr(&e.entry.attr), e.entry.generation)
    } else {
        let mut attr = file_attr(&Attr {
            mode: mode_from_dtype(e.kind),
            ..e.entry.attr
        });
        // The kernel ignores the node id of `.` and `..`; give them a usable inode number.
        if is_dot && attr.ino.0 == 0 {
            attr.ino = INodeNo(dir);
        }
        (attr, 0)
    };
    let name = OsStr::from_bytes(&e.name);
    if reply.add(
        INodeNo(e.entry.ino),
        e.offset,
        name,
        &ttl,
        &attr,
        Generation(generation),
    ) {
        return None;
    }
    Some(is_dot && e.entry.ino != 0)
}
