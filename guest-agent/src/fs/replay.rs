//! Answers to the replay thread's requests (header pid = its thread id), and to requests on
//! the synthetic nodes it hands out (see `crate::replay`).

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};

use ferry_protocol::{self as proto, Errno, Reply, Request as Req};
use fuser::{
    FileHandle, FopenFlags, Generation, ReplyAttr, ReplyCreate, ReplyEmpty, ReplyEntry, ReplyOpen,
    Request,
};

use super::attr::{entry_attr, file_attr};
use super::reply::{reply_with, wrong};
use super::{FerryFs, bytes};
use crate::replay::{Answer, REPLAY_FH_BASE, ReplayState};

impl FerryFs {
    /// The state the replay thread shares with this adapter.
    pub fn replay_state(&self) -> Arc<ReplayState> {
        Arc::clone(&self.replay)
    }

    /// Whether `req` comes from the replay thread.
    pub(super) fn replaying(&self, req: &Request) -> bool {
        self.replay.is_replay(req.pid())
    }

    /// Answers a LOOKUP of the replay thread that the change being replayed is about, or one
    /// in a synthetic directory; hands `reply` back for any other.
    pub(super) fn replay_lookup(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        reply: ReplyEntry,
    ) -> Option<ReplyEntry> {
        if self.replaying(req) {
            if let Some((answer, node)) = self.replay.intent(parent, bytes(name)) {
                self.answer_lookup(req, parent, name, answer, node, reply);
                return None;
            }
        }
        if ReplayState::is_synthetic(parent) {
            reply.error(fuser::Errno::ENOENT);
            return None;
        }
        Some(reply)
    }

    /// Gives the kernel's lookups of a synthetic node back; false for any other node.
    pub(super) fn forget_synthetic(&self, ino: u64) -> bool {
        if !ReplayState::is_synthetic(ino) {
            return false;
        }
        self.replay.forget_synthetic(ino);
        true
    }

    /// Answers a GETATTR of a synthetic node; hands `reply` back for any other.
    pub(super) fn synthetic_getattr(&self, ino: u64, reply: ReplyAttr) -> Option<ReplyAttr> {
        if !ReplayState::is_synthetic(ino) {
            return Some(reply);
        }
        match self.replay.synthetic_attr(ino) {
            Some(a) => reply.attr(&self.ttl, &file_attr(&a)),
            None => reply.error(fuser::Errno::ESTALE),
        }
        None
    }

    /// Answers a SETATTR of the replay thread or on a synthetic node; hands `reply` back for
    /// any other.
    pub(super) fn replay_setattr(
        &self,
        req: &Request,
        ino: u64,
        reply: ReplyAttr,
    ) -> Option<ReplyAttr> {
        if !self.replaying(req) && !ReplayState::is_synthetic(ino) {
            return Some(reply);
        }
        // A replayed change: the kernel keeps the attributes of this reply, so they must be
        // the host's as they are now, asked for here (a read; the host file is never
        // changed). A snapshot taken when the change was seen could carry an older size
        // than writes this guest has made since, and shrink the file under them.
        let reply = self.synthetic_getattr(ino, reply)?;
        let body = Req::Getattr(proto::Getattr { ino, fh: None });
        self.call(req, body, &[], reply_with("getattr", (reply, self.ttl)));
        None
    }

    /// Answers the replay thread's OPEN with a handle of its own (the host never sees it);
    /// hands `reply` back for anyone else's.
    pub(super) fn replay_open(&self, req: &Request, reply: ReplyOpen) -> Option<ReplyOpen> {
        if !self.replaying(req) {
            return Some(reply);
        }
        reply.opened(FileHandle(self.replay.replay_fh()), FopenFlags::empty());
        None
    }

    /// Answers the replay thread's CREATE; hands `reply` back for anyone else's.
    pub(super) fn replay_create(&self, req: &Request, reply: ReplyCreate) -> Option<ReplyCreate> {
        if !self.replaying(req) {
            return Some(reply);
        }
        match self.replay.created() {
            Some(e) => reply.created(
                &self.ttl,
                &entry_attr(&e),
                Generation(e.generation),
                FileHandle(self.replay.replay_fh()),
                FopenFlags::empty(),
            ),
            None => reply.error(fuser::Errno::EIO),
        }
        None
    }

    /// Answers the RELEASE of a replay thread's handle (RELEASE carries pid 0, so the handle
    /// tells); hands `reply` back for any other.
    pub(super) fn replay_release(&self, fh: u64, reply: ReplyEmpty) -> Option<ReplyEmpty> {
        if fh < REPLAY_FH_BASE {
            return Some(reply);
        }
        // The replay thread's own open: the host never saw it.
        reply.ok();
        None
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
    pub(super) fn replay_created(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        reply: ReplyEntry,
    ) {
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
    fn answer_lookup(
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
    pub(super) fn replay_removed(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        reply: ReplyEmpty,
    ) {
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
    pub(super) fn replay_renamed(
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
}
