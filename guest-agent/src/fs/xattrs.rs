//! Extended-attribute probes answered in the guest (`features::XATTR_HINTS`).
//!
//! `ls -l`, file managers and backup tools ask every file for `security.selinux` and
//! `system.posix_acl_access`; almost no file has either. Two answers need no round trip:
//!
//! - a name no export ever shows a guest ([`ferry_protocol::host_only_xattr`]: `security.*`
//!   but `security.capability`, `trusted.*`, other `system.*` names) is absent, in every cache
//!   mode, as the host would answer;
//! - in `cached` mode, a node whose last attributes from the host carried
//!   [`ferry_protocol::Attr::NO_XATTRS`] has no xattr the guest may see (GETXATTR: ENODATA,
//!   LISTXATTR: empty) until something says otherwise: a host change event about it (the
//!   replay thread's `inval_inode`, which also drops [`super::Listings`]; a host `setfattr` or
//!   `setfacl` is an IN_ATTRIB), attributes without the mark, an xattr change through this
//!   mount (dropped when sent and again when answered), or the kernel forgetting the node.
//!
//! A mark is only recorded from a reply whose request was sent after the last drop
//! ([`XattrMarks::epoch`]): a reply read on the host before a change must not outlive the
//! change's event. With POSIX ACLs negotiated the guest kernel caches each inode's ACLs
//! itself, so an unchanged inode's ACL is asked for once at most.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex};

use ferry_protocol::{self as proto, Errno, Reply};
use fuser::ReplyXattr;

use super::{FerryFs, Listings};

/// Nodes marked at most; past it every mark is dropped (they come back with the next
/// attributes the host sends).
const MAX_MARKS: usize = 1 << 21;

/// Nodes known to have no guest-visible xattr.
#[derive(Debug, Default)]
pub struct XattrMarks {
    inner: Mutex<Marks>,
}

#[derive(Debug, Default)]
struct Marks {
    /// Bumped by every drop.
    epoch: u64,
    none: HashSet<u64>,
}

impl XattrMarks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch to pass to [`XattrMarks::note`], taken before the request is sent.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Attributes of node `ino` arrived for a request sent at `epoch`.
    pub fn note(&self, epoch: u64, ino: u64, attr: &proto::Attr) {
        let mut g = self.lock();
        if !attr.no_xattrs() {
            g.none.remove(&ino);
        } else if g.epoch == epoch && ino != 0 {
            if g.none.len() >= MAX_MARKS {
                g.none.clear();
            }
            g.none.insert(ino);
        }
    }

    /// Whether node `ino` is known to have no guest-visible xattr.
    pub fn none(&self, ino: u64) -> bool {
        self.lock().none.contains(&ino)
    }

    /// Something may have changed node `ino`'s xattrs.
    pub fn drop_node(&self, ino: u64) {
        let mut g = self.lock();
        g.epoch += 1;
        g.none.remove(&ino);
    }

    /// The kernel forgot node `ino`.
    pub fn forget(&self, ino: u64) {
        self.lock().none.remove(&ino);
    }

    /// Drops every mark.
    pub fn drop_all(&self) {
        let mut g = self.lock();
        g.epoch += 1;
        g.none.clear();
    }
}

impl FerryFs {
    /// The server keeps to the hint rules (see the module's documentation).
    fn xattr_hints(&self) -> bool {
        self.client.welcome().features & proto::features::XATTR_HINTS != 0
    }

    /// Marks are kept and used: `cached` mode with change events, and a server that sends them.
    pub(super) fn xattr_marks(&self) -> Option<Arc<Listings>> {
        (self.keep_cache && self.xattr_hints()).then(|| Arc::clone(&self.listings))
    }

    /// Wraps a reply callback so that the attributes its reply carries update the marks.
    pub(super) fn noting<F>(
        &self,
        done: F,
    ) -> impl FnOnce(Result<Reply<'_>, Errno>) + Send + 'static + use<F>
    where
        F: FnOnce(Result<Reply<'_>, Errno>) + Send + 'static,
    {
        let marks = self.xattr_marks().map(|l| (l.xattrs.epoch(), l));
        move |r| {
            if let (Some((epoch, l)), Ok(reply)) = (&marks, &r) {
                let m = &l.xattrs;
                match reply {
                    Reply::Entry(e) => m.note(*epoch, e.ino, &e.attr),
                    Reply::Attr(a) => m.note(*epoch, a.ino, a),
                    Reply::Created(c) => m.note(*epoch, c.entry.ino, &c.entry.attr),
                    Reply::DirPlus(v) => {
                        for e in v.iter().filter(|e| e.entry.ino != 0) {
                            m.note(*epoch, e.entry.ino, &e.entry.attr);
                        }
                    }
                    _ => {}
                }
            }
            done(r)
        }
    }

    /// Drops node `ino`'s mark now and again when the request answers, for a request that
    /// changes its xattrs.
    pub(super) fn changing_xattrs<F>(
        &self,
        ino: u64,
        done: F,
    ) -> impl FnOnce(Result<Reply<'_>, Errno>) + Send + 'static + use<F>
    where
        F: FnOnce(Result<Reply<'_>, Errno>) + Send + 'static,
    {
        self.listings.xattrs.drop_node(ino);
        let listings = Arc::clone(&self.listings);
        move |r| {
            listings.xattrs.drop_node(ino);
            done(r)
        }
    }

    /// Answers a GETXATTR here when the host's answer is known (ENODATA), handing `reply` back
    /// otherwise.
    pub(super) fn getxattr_here(
        &self,
        ino: u64,
        name: &OsStr,
        reply: ReplyXattr,
    ) -> Option<ReplyXattr> {
        use std::os::unix::ffi::OsStrExt;
        if !self.xattr_hints() {
            return Some(reply);
        }
        let absent = proto::host_only_xattr(name.as_bytes())
            || self.xattr_marks().is_some_and(|l| l.xattrs.none(ino));
        if absent {
            reply.error(fuser::Errno::ENODATA);
            return None;
        }
        Some(reply)
    }

    /// Answers a LISTXATTR here for a node known to have none, handing `reply` back otherwise.
    pub(super) fn listxattr_here(
        &self,
        ino: u64,
        size: u32,
        reply: ReplyXattr,
    ) -> Option<ReplyXattr> {
        if !self.xattr_marks().is_some_and(|l| l.xattrs.none(ino)) {
            return Some(reply);
        }
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(none: bool) -> proto::Attr {
        proto::Attr {
            mode: libc::S_IFREG | 0o644 | if none { proto::Attr::NO_XATTRS } else { 0 },
            ..Default::default()
        }
    }

    #[test]
    fn a_mark_lasts_until_a_drop() {
        let m = XattrMarks::default();
        let e = m.epoch();
        m.note(e, 5, &attr(true));
        assert!(m.none(5));
        assert!(!m.none(6));
        m.note(m.epoch(), 5, &attr(false));
        assert!(!m.none(5), "attributes without the mark remove it");
        m.note(m.epoch(), 5, &attr(true));
        m.drop_node(5);
        assert!(!m.none(5));
        m.note(m.epoch(), 7, &attr(true));
        m.drop_all();
        assert!(!m.none(7));
        m.note(m.epoch(), 8, &attr(true));
        m.forget(8);
        assert!(!m.none(8));
    }

    #[test]
    fn a_reply_sent_before_a_drop_marks_nothing() {
        let m = XattrMarks::default();
        let e = m.epoch();
        m.drop_node(99);
        m.note(e, 5, &attr(true));
        assert!(!m.none(5));
    }
}
