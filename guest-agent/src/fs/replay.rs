//! Answers to the replay thread's requests (header pid = its thread id), and to requests on
//! the synthetic nodes it hands out (see `crate::replay` and `guest-agent/REPLAY.md`).
//!
//! What to answer is decided by the rule both answerers share, [`ferry_protocol::replay`];
//! this module only supplies its inputs and carries out its answers. For each name of a
//! replayed LOOKUP, MKNOD/MKDIR/SYMLINK/CREATE, UNLINK/RMDIR or RENAME, the view of the change
//! says which of the change's names it is ([`Side`]), and a lookup on the host says what the
//! name holds now, classified as a [`Host`]: `Absent` (ENOENT), `Same` (the change's own
//! object: the node the change carries, or any object when the change's node is synthetic),
//! `Other`, or `Unknown` (any other error). Each such host read is done while the kernel
//! holds the directory locked for the replayed syscall, so no guest operation on the name
//! comes in between; a late replay therefore never hides or shows anything the host does not.
//!
//! The rule's [`Answer`]s become replies as follows:
//! - `AsUsual` and `HostObject`: the host's answer (its lookup goes to the kernel);
//! - `Before`: the view's node of how the name looked before the change, or ENOENT;
//! - `Synthetic`: a new synthetic node of the change's file type;
//! - `Done`: success, without asking the host to do anything;
//! - `Fail(errno)`: that errno.
//!
//! Any host lookup not handed to the kernel is given back.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::replay::{self as rule, Answer, Host, Side, is_synthetic};
use ferry_protocol::{self as proto, Created, Entry, Errno, Opened, Reply, Request as Req};
use fuser::{
    FileHandle, FopenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyEmpty, ReplyEntry, ReplyOpen,
    Request,
};

use super::attr::file_attr;
use super::reply::{errno, reply_with, wrong};
use super::{FerryFs, bytes};
use crate::replay::{Before, REPLAY_FH_BASE, ReplayState, Target};

impl FerryFs {
    /// The state the replay thread shares with this adapter.
    pub fn replay_state(&self) -> Arc<ReplayState> {
        Arc::clone(&self.replay)
    }

    /// Whether `req` comes from the replay thread.
    pub(super) fn replaying(&self, req: &Request) -> bool {
        self.replay.is_replay(req.pid())
    }

    /// A guest process removes or renames these names itself: the replay stream's names
    /// there (see `crate::replay`'s name model) are no longer what the guest holds.
    pub(super) fn guest_changes_names(&self, req: &Request, names: &[(u64, &OsStr)]) {
        let mut forget = Vec::new();
        for (parent, name) in names {
            self.replay.model_removed(*parent, bytes(name), &mut forget);
        }
        if !forget.is_empty() {
            self.forget_nodes(req, forget.into_iter().map(|ino| (ino, 1)).collect());
        }
    }

    /// The errno refusing a request that would change the host in a way no replay does
    /// (WRITE, LINK, SETXATTR, REMOVEXATTR, FALLOCATE, COPY_FILE_RANGE) when the replay thread
    /// sends it or it names a synthetic node ([`rule::other_change`]); `None` for anyone else.
    pub(super) fn refused_change(&self, req: &Request, ino: u64) -> Option<fuser::Errno> {
        let synthetic = is_synthetic(ino);
        if !synthetic && !self.replaying(req) {
            return None;
        }
        match rule::other_change(synthetic) {
            Answer::Fail(e) => Some(errno(e)),
            _ => None,
        }
    }

    /// Answers a LOOKUP of the replay thread that the change being replayed is about, or one
    /// in a synthetic directory; hands `reply` back for any other. (The rule answers a name
    /// the change is not about as usual, whatever the host holds: the ordinary LOOKUP does.)
    pub(super) fn replay_lookup(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        reply: ReplyEntry,
    ) -> Option<ReplyEntry> {
        let target = if self.replaying(req) {
            self.replay.target(parent, bytes(name))
        } else {
            None
        };
        if let Some(t) = &target {
            // A name the stream made and has not removed or renamed away: the node it was
            // handed out as, whatever the host holds now. Valid for no time, so a guest process
            // walking the name next asks the host.
            // The change's own names are answered from the change when it carries a real node
            // for them, or when they were absent before it.
            let from_change = matches!(t.before, Some(Before::Absent | Before::Entry(_)));
            if !from_change {
                if let Some(e) = self.replay.model_hand_out(parent, bytes(name)) {
                    reply_with("lookup", (reply, Duration::ZERO))(Ok(Reply::Entry(e)));
                    return None;
                }
            }
        }
        match target {
            Some(t) if t.side != Side::Neither => {
                let ttl = self.ttl;
                let state = Arc::clone(&self.replay);
                self.host_lookup(req, parent, name, move |now, forget_later| {
                    let answer = rule::lookup(t.kind, t.side, classify(&now, t.node));
                    tracing::debug!(?answer, kind = ?t.kind, side = ?t.side, "replayed lookup");
                    if let (Answer::AsUsual, Side::From, Ok(e)) = (answer, t.side, &now) {
                        state.note_source(*e, true);
                    }
                    let entry = entry_for(answer, now, &t, &state, forget_later);
                    reply_with("lookup", (reply, ttl))(entry.map(Reply::Entry));
                });
                None
            }
            _ if is_synthetic(parent) => {
                reply.error(fuser::Errno::ENOENT);
                None
            }
            None if self.replay.stream_names(parent, bytes(name)) => {
                // Another process: the host's answer, but a missing name is not cached (see
                // `ReplayState::stream_names`).
                let ttl = self.ttl;
                let body = Req::Lookup(proto::Lookup {
                    parent,
                    name: bytes(name),
                });
                self.call(req, body, &[], move |r| match r {
                    Err(Errno::ENOENT) => reply.error(fuser::Errno::ENOENT),
                    r => reply_with("lookup", (reply, ttl))(r),
                });
                None
            }
            _ => Some(reply),
        }
    }

    /// Answers the replay thread's MKNOD, MKDIR or SYMLINK (`op`) of `name` in `parent`.
    pub(super) fn replay_made(
        &self,
        req: &Request,
        op: &'static str,
        (parent, name): (u64, &OsStr),
        reply: ReplyEntry,
    ) {
        let ttl = self.ttl;
        self.replay_created(req, parent, name, move |entry| {
            reply_with(op, (reply, ttl))(entry.map(Reply::Entry));
        });
    }

    /// Answers the replay thread's CREATE of `name` in `parent`, with a handle of its own (the
    /// host never sees it); hands `reply` back for anyone else's.
    pub(super) fn replay_create(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        reply: ReplyCreate,
    ) -> Option<ReplyCreate> {
        if !self.replaying(req) {
            return Some(reply);
        }
        let ttl = self.ttl;
        let state = Arc::clone(&self.replay);
        self.replay_created(req, parent, name, move |entry| {
            let created = entry.map(|entry| {
                Reply::Created(Created {
                    entry,
                    opened: Opened {
                        fh: state.replay_fh(),
                        open_flags: 0,
                    },
                })
            });
            reply_with("create", (reply, ttl, FopenFlags::empty()))(created);
        });
        None
    }

    /// A replayed creation: `done` gets the node to answer with, or the errno.
    fn replay_created<F>(&self, req: &Request, parent: u64, name: &OsStr, done: F)
    where
        F: FnOnce(Result<Entry, Errno>) + Send + 'static,
    {
        let Some(t) = self.replay.target(parent, bytes(name)) else {
            // No change is being replayed: nothing to decide from (the view is installed
            // before each replayed syscall, so this does not happen).
            return done(Err(Errno::EIO));
        };
        let state = Arc::clone(&self.replay);
        let made = bytes(name).to_vec();
        self.host_lookup(req, parent, name, move |now, forget_later| {
            let host = classify(&now, t.node);
            if rule::overtaken(t.kind, &[host]) {
                state.note_overtaken();
            }
            let answer = rule::create(t.kind, t.side, host, t.entry.is_some());
            let entry = entry_for(answer, now, &t, &state, forget_later);
            tracing::debug!(?answer, ino = ?entry.as_ref().map(|e| e.ino), "replayed creation");
            if let Ok(e) = entry {
                // Later changes of the stream meet this node under this name.
                let mut forget = Vec::new();
                state.model_made(parent, &made, e, &mut forget);
                forget.into_iter().for_each(forget_later);
            }
            done(entry);
        });
    }

    /// Answers the replay thread's UNLINK or RMDIR of `name` in `parent`.
    pub(super) fn replay_removed(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        reply: ReplyEmpty,
    ) {
        let Some(t) = self.replay.target(parent, bytes(name)) else {
            return reply.error(fuser::Errno::EIO);
        };
        let state = Arc::clone(&self.replay);
        let removed = bytes(name).to_vec();
        self.host_lookup(req, parent, name, move |now, forget_later| {
            let host = classify(&now, t.node);
            if rule::overtaken(t.kind, &[host]) {
                state.note_overtaken();
            }
            let answer = rule::remove(t.kind, t.side, host);
            if let Ok(e) = now {
                forget_later(e.ino);
            }
            if answer == Answer::Done {
                let mut forget = Vec::new();
                state.model_removed(parent, &removed, &mut forget);
                forget.into_iter().for_each(forget_later);
            }
            finish(answer, reply);
        });
    }

    /// Answers the replay thread's RENAME of `from` to `to`. Both host lookups go out at
    /// once; the later answer decides.
    pub(super) fn replay_renamed(
        &self,
        req: &Request,
        from: (u64, &OsStr),
        to: (u64, &OsStr),
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (Some(src), Some(dst)) = (
            self.replay.target(from.0, bytes(from.1)),
            self.replay.target(to.0, bytes(to.1)),
        ) else {
            return reply.error(fuser::Errno::EIO);
        };
        // Both names come from the one change being replayed: same kind, same node.
        let (kind, sides, node, flags) = (src.kind, (src.side, dst.side), src.node, flags.bits());
        type Seen = (Option<Host>, Option<Host>, Option<ReplyEmpty>);
        let seen: Arc<Mutex<Seen>> = Arc::new(Mutex::new((None, None, Some(reply))));
        let names = Arc::new((
            (from.0, bytes(from.1).to_vec()),
            (to.0, bytes(to.1).to_vec()),
        ));
        for (i, (parent, name)) in [from, to].into_iter().enumerate() {
            let names = Arc::clone(&names);
            let seen = Arc::clone(&seen);
            let state = Arc::clone(&self.replay);
            self.host_lookup(req, parent, name, move |now, forget_later| {
                let host = classify(&now, node);
                if let Ok(e) = now {
                    forget_later(e.ino);
                }
                let mut g = seen.lock().unwrap_or_else(|e| e.into_inner());
                if i == 0 {
                    g.0 = Some(host);
                } else {
                    g.1 = Some(host);
                }
                if let (Some(src), Some(dst)) = (g.0, g.1) {
                    if let Some(reply) = g.2.take() {
                        if rule::overtaken(kind, &[src, dst]) {
                            state.note_overtaken();
                        }
                        let answer = rule::rename(kind, sides.0, sides.1, flags, src, dst);
                        if answer == Answer::Done {
                            let ((fp, fname), (tp, tname)) = &*names;
                            let mut forget = Vec::new();
                            state.model_renamed((*fp, fname), (*tp, tname), &mut forget);
                            forget.into_iter().for_each(forget_later);
                        }
                        finish(answer, reply);
                    }
                }
            });
        }
    }

    /// Gives the kernel's lookups of a synthetic node back; false for any other node.
    pub(super) fn forget_synthetic(&self, ino: u64) -> bool {
        if !is_synthetic(ino) {
            return false;
        }
        self.replay.forget_synthetic(ino);
        true
    }

    /// Answers a GETATTR of a synthetic node; hands `reply` back for any other.
    pub(super) fn synthetic_getattr(&self, ino: u64, reply: ReplyAttr) -> Option<ReplyAttr> {
        if !is_synthetic(ino) {
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
        if !self.replaying(req) && !is_synthetic(ino) {
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
        F: FnOnce(Result<Entry, Errno>, &dyn Fn(u64)) + Send + 'static,
    {
        if is_synthetic(parent) {
            // A stand-in directory: the host has nothing under it.
            return done(Err(Errno::ENOENT), &|_| {});
        }
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
}

/// What the host holds under a name, as the rule sees it: `node` is the node the change
/// carries (`None`: synthetic, and then any object is the change's own).
fn classify(now: &Result<Entry, Errno>, node: Option<u64>) -> Host {
    match now {
        Ok(e) if node.is_none_or(|n| n == e.ino) => Host::Same,
        Ok(_) => Host::Other,
        Err(Errno::ENOENT) => Host::Absent,
        Err(_) => Host::Unknown,
    }
}

/// The node a LOOKUP or a creation answers with, given the rule's answer and the host's
/// (`now`); a host lookup that is not handed to the kernel is given back with `forget_later`.
fn entry_for(
    answer: Answer,
    now: Result<Entry, Errno>,
    t: &Target,
    state: &ReplayState,
    forget_later: &dyn Fn(u64),
) -> Result<Entry, Errno> {
    let ours = match answer {
        Answer::AsUsual | Answer::HostObject => return now,
        Answer::Before => t
            .before
            .as_ref()
            .and_then(|b| state.hand_out(b))
            .ok_or(Errno::ENOENT),
        Answer::Synthetic => Ok(state.synthetic(t.file_type)),
        Answer::Change => t.entry.map(|e| state.hand_out_change(e)).ok_or(Errno::EIO),
        Answer::Fail(e) => Err(e),
        // Not an answer to a request that returns a node.
        Answer::Done => Err(Errno::EIO),
    };
    if let Ok(e) = now {
        forget_later(e.ino);
    }
    ours
}

/// Answers a replayed removal or rename with the rule's answer.
fn finish(answer: Answer, reply: ReplyEmpty) {
    match outcome(answer) {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

/// The outcome of a replayed removal or rename for the rule's answer.
fn outcome(answer: Answer) -> Result<(), Errno> {
    match answer {
        Answer::Done => Ok(()),
        Answer::Fail(e) => Err(e),
        // Not an answer to a removal or a rename.
        Answer::AsUsual
        | Answer::Before
        | Answer::HostObject
        | Answer::Synthetic
        | Answer::Change => Err(Errno::EIO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::ChangeKind;
    use std::cell::RefCell;

    fn entry(ino: u64) -> Entry {
        Entry {
            ino,
            ..Entry::default()
        }
    }

    #[test]
    fn host_answers_are_classified() {
        assert_eq!(classify(&Ok(entry(5)), Some(5)), Host::Same);
        assert_eq!(classify(&Ok(entry(6)), Some(5)), Host::Other);
        assert_eq!(
            classify(&Ok(entry(6)), None),
            Host::Same,
            "a synthetic change node: any object is the change's own"
        );
        assert_eq!(classify(&Err(Errno::ENOENT), Some(5)), Host::Absent);
        assert_eq!(classify(&Err(Errno::EACCES), None), Host::Unknown);
    }

    #[test]
    fn answers_become_nodes_and_unused_host_lookups_are_given_back() {
        let state = ReplayState::default();
        let t = |before| Target {
            kind: ChangeKind::Renamed,
            side: Side::From,
            before: Some(before),
            node: Some(5),
            file_type: libc::S_IFDIR,
            entry: Some(entry(5)),
        };
        let given_back = RefCell::new(Vec::new());
        let forget = |ino| given_back.borrow_mut().push(ino);
        let run = |answer, now, before| {
            entry_for(answer, now, &t(before), &state, &forget).map(|e| e.ino)
        };
        // The host's answer, with its lookup, goes to the kernel.
        assert_eq!(run(Answer::AsUsual, Ok(entry(7)), Before::Absent), Ok(7));
        assert_eq!(run(Answer::HostObject, Ok(entry(5)), Before::Absent), Ok(5));
        assert_eq!(
            run(Answer::AsUsual, Err(Errno::EACCES), Before::Absent),
            Err(Errno::EACCES)
        );
        assert!(given_back.borrow().is_empty());
        // The view answers; the host's lookup is given back.
        assert_eq!(
            run(Answer::Before, Ok(entry(5)), Before::Absent),
            Err(Errno::ENOENT)
        );
        assert_eq!(
            run(Answer::Before, Err(Errno::ENOENT), Before::Entry(entry(5))),
            Ok(5)
        );
        let synth = run(Answer::Synthetic, Ok(entry(8)), Before::Absent).unwrap();
        assert!(is_synthetic(synth));
        assert_eq!(
            state.synthetic_attr(synth).unwrap().mode & libc::S_IFMT,
            libc::S_IFDIR,
            "of the change's file type"
        );
        assert_eq!(
            run(Answer::Fail(Errno::EEXIST), Ok(entry(9)), Before::Absent),
            Err(Errno::EEXIST)
        );
        assert_eq!(*given_back.borrow(), [5, 8, 9]);
    }

    #[test]
    fn removals_and_renames_succeed_only_when_done() {
        assert_eq!(outcome(Answer::Done), Ok(()));
        assert_eq!(outcome(Answer::Fail(Errno::ESTALE)), Err(Errno::ESTALE));
        assert_eq!(outcome(Answer::Before), Err(Errno::EIO));
        // A removal the host has overtaken (something holds the name again) still succeeds:
        // the change that overtook it follows in the stream, and the names are expired after.
        let overtaken = rule::remove(ChangeKind::Removed, Side::From, Host::Same);
        assert_eq!(outcome(overtaken), Ok(()));
        assert!(rule::overtaken(ChangeKind::Removed, &[Host::Same]));
    }
}
