//! From a decoded protocol request to the typed method, and from its result to a [`Response`].
//!
//! This is deliberately a thin match: all behaviour lives in the typed methods, which a
//! virtio-fs front door can call directly. That includes echo bookkeeping: each method that
//! can change the host tree records what it did for the watcher itself (see `echo.rs`).

use ferry_protocol::{Ctx, Errno, Reply, Request};

use super::ops::SetAttrs;
use super::xattr::XattrReply;
use super::{ExportSession, Pending, Response};
use crate::ids::{GuestGid, GuestUid};

/// Wraps a typed result as a reply.
fn reply<T>(r: Result<T, Errno>, f: impl FnOnce(T) -> Reply<'static>) -> Response {
    match r {
        Ok(v) => Response::Reply(f(v)),
        Err(e) => Response::Error(e),
    }
}

/// Wraps a typed result that carries raw bytes.
fn data(r: Result<Vec<u8>, Errno>) -> Response {
    match r {
        Ok(v) => Response::Data(v),
        Err(e) => Response::Error(e),
    }
}

/// Wraps a result without a body.
fn empty(r: Result<(), Errno>) -> Response {
    reply(r, |()| Reply::Empty)
}

/// Wraps an xattr result: a size travels as a reply body, a value as data.
fn xattr(r: Result<XattrReply, Errno>) -> Response {
    match r {
        Ok(XattrReply::Size(n)) => Response::Reply(Reply::XattrSize(n)),
        Ok(XattrReply::Data(v)) => Response::Data(v),
        Err(e) => Response::Error(e),
    }
}

impl ExportSession {
    /// Performs a decoded protocol request. `payload` is the frame's raw data (only `Write`
    /// carries any).
    pub fn dispatch(&self, ctx: &Ctx, req: &Request<'_>, payload: &[u8]) -> Response {
        let response = self.perform(ctx, req, payload);
        if let Response::Error(e) = &response {
            tracing::debug!(op = ?req.opcode(), error = ?e, "request failed");
        } else {
            tracing::debug!(op = ?req.opcode(), "request done");
        }
        response
    }

    fn perform(&self, ctx: &Ctx, req: &Request<'_>, payload: &[u8]) -> Response {
        match req {
            Request::Lookup(r) => reply(self.lookup(ctx, r.parent, r.name), Reply::Entry),
            Request::Forget(r) => {
                for &(ino, n) in &r.nodes {
                    self.forget(ino, n);
                }
                Response::None
            }
            Request::Getattr(r) => reply(self.getattr(r.ino, r.fh), Reply::Attr),
            Request::Setattr(r) => {
                let attrs = SetAttrs {
                    mode: r.mode,
                    uid: r.uid.map(GuestUid),
                    gid: r.gid.map(GuestGid),
                    size: r.size,
                    atime: r.atime,
                    mtime: r.mtime,
                    kill_suidgid: false,
                };
                reply(self.setattr(ctx, r.ino, r.fh, &attrs), Reply::Attr)
            }
            Request::Readlink(r) => data(self.readlink(r.ino)),
            Request::Symlink(r) => {
                reply(self.symlink(ctx, r.parent, r.name, r.target), Reply::Entry)
            }
            Request::Mknod(r) => reply(
                self.mknod(ctx, r.parent, r.name, r.mode, r.rdev, r.umask),
                Reply::Entry,
            ),
            Request::Mkdir(r) => reply(
                self.mkdir(ctx, r.parent, r.name, r.mode, r.umask),
                Reply::Entry,
            ),
            Request::Unlink(r) => empty(self.unlink(ctx, r.parent, r.name)),
            Request::Rmdir(r) => empty(self.rmdir(ctx, r.parent, r.name)),
            Request::Rename(r) => {
                empty(self.rename(ctx, r.parent, r.name, r.newparent, r.newname, r.flags))
            }
            Request::Link(r) => reply(self.link(ctx, r.ino, r.newparent, r.newname), Reply::Entry),
            Request::Open(r) => match self.open_prefetch(ctx, r.ino, r.flags, r.prefetch) {
                Ok((o, data)) if data.is_empty() => Response::Reply(Reply::Opened(o)),
                Ok((o, data)) => Response::OpenedData(o, data),
                Err(e) => Response::Error(e),
            },
            Request::Create(r) => reply(
                self.create(ctx, r.parent, r.name, r.mode, r.umask, r.flags),
                Reply::Created,
            ),
            Request::Read(r) => data(self.read(r.ino, r.fh, r.offset, r.size)),
            Request::Write(r) => reply(self.write(r.ino, r.fh, r.offset, payload), Reply::Written),
            Request::Flush(r) => empty(self.flush(r.ino, r.fh, r.lock_owner)),
            Request::Release(r) => empty(self.release(r.ino, r.fh)),
            Request::Fsync(r) => empty(self.fsync(r.ino, r.fh, r.datasync)),
            Request::Opendir(r) => reply(self.opendir(ctx, r.ino, r.flags), Reply::Opened),
            Request::Readdir(r) => reply(self.readdir(r.ino, r.fh, r.offset, r.size), Reply::Dir),
            Request::Readdirplus(r) => reply(
                self.readdirplus(ctx, r.ino, r.fh, r.offset, r.size),
                Reply::DirPlus,
            ),
            Request::Releasedir(r) => empty(self.releasedir(r.ino, r.fh)),
            Request::Fsyncdir(r) => empty(self.fsyncdir(r.ino, r.fh, r.datasync)),
            Request::StatfsReq(r) => reply(self.statfs(r.ino), Reply::Statfs),
            Request::Access(r) => empty(self.access(ctx, r.ino, r.mask)),
            Request::Getxattr(r) => xattr(self.getxattr(ctx, r.ino, r.name, r.size)),
            Request::Listxattr(r) => xattr(self.listxattr(ctx, r.ino, r.size)),
            Request::Setxattr(r) => empty(self.setxattr(ctx, r.ino, r.name, r.value, r.flags)),
            Request::Removexattr(r) => empty(self.removexattr(ctx, r.ino, r.name)),
            Request::Fallocate(r) => {
                empty(self.fallocate(ctx, r.ino, r.fh, r.offset, r.length, r.mode))
            }
            Request::Lseek(r) => reply(self.lseek(r.ino, r.fh, r.offset, r.whence), Reply::Offset),
            Request::CopyFileRange(r) => reply(self.copy_file_range(ctx, r), Reply::Written),
            Request::Getlk(r) => reply(self.getlk(r.ino, r.fh, r.owner, &r.lock), Reply::Lock),
            Request::Setlk(r) => match self.setlk_start(r.ino, r.fh, r.owner, &r.lock) {
                Ok(None) => Response::Reply(Reply::Empty),
                Ok(Some(wait)) if r.sleep => Response::Pending(Pending(wait)),
                Ok(Some(_)) => Response::Error(Errno::EAGAIN),
                Err(e) => Response::Error(e),
            },
            Request::Flock(r) => match self.flock_start(r.ino, r.fh, r.owner, r.op) {
                Ok(None) => Response::Reply(Reply::Empty),
                Ok(Some(wait)) if r.op & libc::LOCK_NB == 0 => Response::Pending(Pending(wait)),
                Ok(Some(_)) => Response::Error(Errno::EAGAIN),
                Err(e) => Response::Error(e),
            },
            // Subscribing needs a sink, which only the transport has (see `watch`).
            Request::Watch(_) => Response::Error(Errno::EINVAL),
            Request::Replay(r) => empty(self.replay(r.tid, r.link, r.change.as_ref())),
        }
    }
}
