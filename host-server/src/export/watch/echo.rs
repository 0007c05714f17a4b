//! The echo table: what each session changed on the host, so that the host events its own
//! changes cause are not sent back to it.
//!
//! Echo suppression fingerprints what the server changed on a guest's behalf: for data and
//! attribute changes, the inode with its size, mtime, ctime, mode, link count and owner after
//! the change (ctime catches a host change that leaves everything else alone, such as a chmod
//! to the same mode; every server operation that moves ctime records the state it left); for
//! creations, removals and renames, the directory, the name and the operation, which stay
//! recognisable when the object changes again or goes away before the event is looked at. A
//! change whose host state still matches a session's fingerprint is that session's own and is
//! not sent back to it; other sessions get it. No time window decides anything: fingerprints
//! are only aged out ([`ECHO_MAX_AGE`]) to bound memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::trace;

/// Echo fingerprints older than this are dropped (memory bound only; see the module docs).
pub const ECHO_MAX_AGE: Duration = Duration::from_secs(30);

/// What an inode looked like after a server-made change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// `st_mode`: a change resolved by path takes the file type from it.
    pub(super) mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
}

impl Fingerprint {
    pub(crate) fn of_stat(st: &libc::stat) -> Self {
        Fingerprint {
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            mode: st.st_mode,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }
}

/// Host identity of an object.
pub(super) type Key = (u64, u64);

/// A directory, a name in it, and what a session did to that name.
type NameKey = (Key, Vec<u8>, NameOp);

/// What a session did to a name (see [`Echoes::note_name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum NameOp {
    /// Created it (or renamed something to it).
    Created,
    /// Removed it.
    Removed,
    /// Renamed it away.
    RenamedFrom,
}

/// The echo records of every session of one export.
#[derive(Debug, Default)]
struct EchoTable {
    /// Inode → (session, state after its change, when).
    inodes: HashMap<Key, Vec<(u64, Fingerprint, Instant)>>,
    /// (directory, name, operation) → (session, when): names a session created, removed or
    /// renamed away; each record explains one event.
    names: HashMap<NameKey, Vec<(u64, Instant)>>,
    last_gc: Option<Instant>,
}

impl EchoTable {
    fn gc(&mut self, now: Instant) {
        if self
            .last_gc
            .is_some_and(|t| now.duration_since(t) < ECHO_MAX_AGE / 4)
        {
            return;
        }
        self.last_gc = Some(now);
        self.inodes.retain(|_, v| {
            v.retain(|(_, _, t)| now.duration_since(*t) < ECHO_MAX_AGE);
            !v.is_empty()
        });
        self.names.retain(|_, v| {
            v.retain(|(_, t)| now.duration_since(*t) < ECHO_MAX_AGE);
            !v.is_empty()
        });
    }
}

/// Every session's echo records of one export, under one lock.
#[derive(Debug, Default)]
pub(super) struct Echoes {
    table: Mutex<EchoTable>,
}

impl Echoes {
    /// Records that session `sid` left inode `key` in state `fp`.
    pub(super) fn note_inode(&self, sid: u64, key: Key, fp: Fingerprint) {
        let now = Instant::now();
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.gc(now);
        let v = t.inodes.entry(key).or_default();
        v.retain(|(s, _, _)| *s != sid);
        v.push((sid, fp, now));
    }

    /// Records that session `sid` did `op` to `name` in directory `dir`. Names, unlike
    /// inode states, stay recognisable when the object changes again or goes away before the
    /// event is looked at.
    pub(super) fn note_name(&self, sid: u64, dir: Key, name: &[u8], op: NameOp) {
        let now = Instant::now();
        trace!(sid, ?dir, name = %String::from_utf8_lossy(name), ?op, "echo name noted");
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.gc(now);
        t.names
            .entry((dir, name.to_vec(), op))
            .or_default()
            .push((sid, now));
    }

    /// Whether the state `fp` of `key` is session `sid`'s own doing.
    pub(super) fn is_inode_echo(&self, sid: u64, key: Key, fp: &Fingerprint) -> bool {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.inodes
            .get(&key)
            .is_some_and(|v| v.iter().any(|(s, f, _)| *s == sid && f == fp))
    }

    /// Whether session `sid` did `op` on `name` in `dir` and the event has not been looked at
    /// yet (the record stays).
    pub(super) fn has_name_echo(&self, sid: u64, dir: Key, name: &[u8], op: NameOp) -> bool {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.names
            .get(&(dir, name.to_vec(), op))
            .is_some_and(|v| v.iter().any(|(s, _)| *s == sid))
    }

    /// Whether `op` on `name` in `dir` was session `sid`'s doing, taking the record if so: one
    /// record explains one event.
    pub(super) fn take_name_echo(&self, sid: u64, dir: Key, name: &[u8], op: NameOp) -> bool {
        trace!(sid, ?dir, name = %String::from_utf8_lossy(name), ?op, "echo name checked");
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let k = (dir, name.to_vec(), op);
        let Some(v) = t.names.get_mut(&k) else {
            return false;
        };
        let Some(i) = v.iter().position(|(s, _)| *s == sid) else {
            return false;
        };
        v.remove(i);
        if v.is_empty() {
            t.names.remove(&k);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_records_match_only_their_session_and_state() {
        let ev = Echoes::default();
        let st: libc::stat = {
            // SAFETY: all-zero bytes are a valid `stat`.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            st.st_size = 10;
            st
        };
        let fp = Fingerprint::of_stat(&st);
        ev.note_inode(1, (5, 6), fp);
        assert!(ev.is_inode_echo(1, (5, 6), &fp));
        assert!(!ev.is_inode_echo(2, (5, 6), &fp));
        let mut other = fp;
        other.size = 11;
        assert!(!ev.is_inode_echo(1, (5, 6), &other));
        ev.note_name(1, (5, 1), b"x", NameOp::Removed);
        assert!(!ev.take_name_echo(2, (5, 1), b"x", NameOp::Removed));
        assert!(
            !ev.take_name_echo(1, (5, 1), b"x", NameOp::Created),
            "another operation"
        );
        assert!(ev.take_name_echo(1, (5, 1), b"x", NameOp::Removed));
        assert!(
            !ev.take_name_echo(1, (5, 1), b"x", NameOp::Removed),
            "used once"
        );
    }
}
