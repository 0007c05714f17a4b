//! Echo bookkeeping: what a session's own mutations leave on the host, so that the host events
//! they cause are not sent back to it (see `watch/`).
//!
//! Every typed method that can change the host tree takes a [`Mutation`] at its start
//! ([`ExportSession::mutation`]) and, once the change is made, records what it did through
//! the guard's methods, which consume it. The guard holds the export's mutation epoch: the
//! watcher looks at host events only after every mutation in flight when they were read has
//! ended, so a record made through the guard is in place by then. The records are methods of
//! the guard only, so none can be made outside a mutation, and every front door gets them by
//! calling the typed methods.

use super::watch::{Fingerprint, MutationGuard, NameOp};
use super::{ExportSession, sys};

/// One mutation of the host tree in flight (see the module docs). Dropping it without a
/// record (a failed mutation) records nothing.
#[must_use = "a mutation records its echo through the guard"]
pub(super) struct Mutation<'a> {
    session: &'a ExportSession,
    _in_flight: MutationGuard<'a>,
}

impl ExportSession {
    /// Marks a mutation of the host tree in flight until the returned guard is dropped.
    pub(super) fn mutation(&self) -> Mutation<'_> {
        Mutation {
            session: self,
            _in_flight: self.export.events.mutation(),
        }
    }
}

impl Mutation<'_> {
    /// `name` in directory `parent` was created as (or hard-linked to) node `ino`.
    pub(super) fn created(self, parent: u64, name: &[u8], ino: u64) {
        self.name(parent, name, NameOp::Created);
        self.inode(ino);
    }

    /// `name` was removed from directory `parent`.
    pub(super) fn removed(self, parent: u64, name: &[u8]) {
        self.name(parent, name, NameOp::Removed);
    }

    /// `name` in `parent` was renamed to `newname` in `newparent` (`flags`: `RENAME_*`).
    pub(super) fn renamed(
        self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) {
        self.name(parent, name, NameOp::RenamedFrom);
        // Seen as a creation when the other half of the rename is not.
        self.name(newparent, newname, NameOp::Created);
        self.child(newparent, newname);
        // An exchange moves the target away as well.
        if flags & libc::RENAME_EXCHANGE != 0 {
            self.name(newparent, newname, NameOp::RenamedFrom);
            self.name(parent, name, NameOp::Created);
            self.child(parent, name);
        }
    }

    /// The data or attributes of node `ino` changed.
    pub(super) fn changed(self, ino: u64) {
        self.inode(ino);
    }

    /// Whether anyone watches the export: only then is anything recorded, so a mutation
    /// need not find out what to record otherwise.
    pub(super) fn watched(&self) -> bool {
        self.session.export.events.active()
    }

    /// Records the state of node `ino` after the change.
    fn inode(&self, ino: u64) {
        if !self.watched() {
            return;
        }
        let s = self.session;
        if let Ok(node) = s.inodes.get(ino) {
            if let Ok(st) = sys::fstat(node.fd()) {
                let fp = Fingerprint::of_stat(&st);
                s.export
                    .events
                    .note_inode(s.echo_sid(), (node.dev, node.ino), fp);
            }
        }
    }

    /// Records that the change did `op` to `name` in directory `parent`.
    fn name(&self, parent: u64, name: &[u8], op: NameOp) {
        if !self.watched() {
            return;
        }
        let s = self.session;
        if let Ok(node) = s.inodes.peek(parent) {
            s.export
                .events
                .note_name(s.echo_sid(), (node.dev, node.ino), name, op);
        }
    }

    /// Records the state of `name` in `parent` after the change.
    fn child(&self, parent: u64, name: &[u8]) {
        if !self.watched() {
            return;
        }
        let s = self.session;
        let Ok(dir) = s.inodes.get(parent) else {
            return;
        };
        let Ok(cname) = sys::cstring(name) else {
            return;
        };
        if let Ok(st) = sys::fstatat_nofollow(dir.fd(), &cname) {
            let fp = Fingerprint::of_stat(&st);
            s.export
                .events
                .note_inode(s.echo_sid(), (st.st_dev, st.st_ino), fp);
        }
    }
}
