//! Owners and modes as the guest sees them: id translation, the persisted-owner xattr, and
//! the set-id rules (a guest gives set-id bits only on an export with `setid=on`; writes by an
//! unprivileged guest process clear them, `kill_suidgid`). Creating as the caller is
//! `creds.rs`'s.
//!
//! # The persisted owner
//!
//! With persisted owners on (the default in squash mode), a `chown`/`chgrp` from the guest
//! that the host cannot or must not perform, and a `chmod` the host refuses, succeed and are
//! recorded in the `user.ferry.owner` xattr of the host file, as osxfs did with
//! `com.docker.owner`. The value is text, `UID:GID:MODE:HOSTMODE`: the guest uid and gid to
//! show, the mode to show (octal, file type bits included), and the host's own mode when the
//! record was written. When the host mode has changed since (someone ran `chmod` on the host),
//! the host's mode wins over the stale recorded one; the recorded owner still shows.
//!
//! In squash mode, a file or directory created by a guest user other than the squash target
//! records its creator (and the group a local filesystem would give it), so that `initdb`
//! running as uid 999 sees its own files as its own. Set-user-id and set-group-id bits on
//! files are never set on the host in squash mode (a set-uid file owned by the server's user
//! would be a door out of the VM): they are recorded and shown instead.
//!
//! Linux allows `user.*` xattrs only on regular files and directories, so symlinks, FIFOs and
//! sockets cannot carry a record: a `chown` of one that needs a record succeeds without being
//! kept (their owner matters to nothing but `protected_symlinks`).
//!
//! The whole `user.ferry.` namespace is the server's: the guest never sees it in `listxattr`,
//! reads it as absent (ENODATA), and cannot set or remove it (EPERM).

use std::ffi::CStr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_protocol::{Attr, Ctx, Errno};

use super::attr::{self, Presented};
use super::inode::Node;
use super::{ExportSession, sys};
use crate::ids::{GuestGid, GuestUid, HostGid, HostUid, IdMode};

/// The xattr holding a persisted owner.
pub const OWNER_XATTR: &CStr = c"user.ferry.owner";

/// Xattr names starting with this belong to the server and are hidden from the guest.
pub const RESERVED_XATTR_PREFIX: &[u8] = b"user.ferry.";

/// Set-id bits that squash mode keeps off the host.
const SETID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;

/// What `user.ferry.owner` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub uid: GuestUid,
    pub gid: GuestGid,
    /// The mode to show, file type bits included.
    pub mode: u32,
    /// The host's `st_mode` when the record was written.
    pub host_mode: u32,
}

impl Record {
    /// The xattr value.
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{:o}:{:o}",
            self.uid.0, self.gid.0, self.mode, self.host_mode
        )
    }

    /// Parses an xattr value; `None` for anything malformed (the host's view then wins).
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut it = s.trim_end_matches('\0').split(':');
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let mode = u32::from_str_radix(it.next()?, 8).ok()?;
        let host_mode = u32::from_str_radix(it.next()?, 8).ok()?;
        if it.next().is_some() || uid == u32::MAX || gid == u32::MAX {
            return None;
        }
        Some(Record {
            uid: GuestUid(uid),
            gid: GuestGid(gid),
            mode,
            host_mode,
        })
    }
}

/// The set-id bits a guest may not give an object of type `kind` (`S_IFMT` bits) on an export
/// without `setid=on`: both on files, set-user-ID on directories (a set-group-ID directory only
/// passes its group on, which is no privilege).
fn setid_bits(kind: u32) -> u32 {
    if kind == libc::S_IFDIR {
        libc::S_ISUID
    } else {
        libc::S_ISUID | libc::S_ISGID
    }
}

/// Whether the host lets objects of this type (`st_mode`) carry `user.*` xattrs.
fn can_record(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

/// Whether an xattr name is the server's (hidden from the guest).
pub(crate) fn is_reserved_xattr(name: &[u8]) -> bool {
    name.starts_with(RESERVED_XATTR_PREFIX)
}

/// Logs once that the host filesystem refuses user xattrs.
fn warn_no_xattrs(e: Errno) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            error = ?e,
            "the host filesystem refuses user xattrs: owners set from the guest cannot be kept \
             (chown answers EPERM)"
        );
    });
}

impl ExportSession {
    fn mode(&self) -> &IdMode {
        &self.export.ids.mode
    }

    fn persist(&self) -> bool {
        self.export.ids.persist_owners
    }

    /// Whether a record on a host object owned by `st`'s uid could have been written by this
    /// server: the object must be owned by the identity the server writes and creates as for
    /// this export (its own uid; in map mode also any mapped uid, as which it creates for the
    /// guest's users). Anything else was written by another host user, who must not choose
    /// what guests see (say, a set-user-ID file owned by root).
    fn trusts_record_on(&self, st: &libc::stat) -> bool {
        if st.st_uid == super::creds::server_uid() {
            return true;
        }
        match self.mode() {
            IdMode::Map(m) => m.uid_to_guest(HostUid(st.st_uid)).is_some(),
            _ => false,
        }
    }

    /// Reads the persisted owner of a node (`path` is its `/proc/self/fd` path). A record on
    /// an object the server could not have written it on is ignored.
    fn read_record(&self, path: &CStr, st: &libc::stat) -> Option<Record> {
        if !self.persist() || !can_record(st.st_mode) {
            return None;
        }
        if !self.trusts_record_on(st) {
            // Said once, when such a record is first met (until then each untrusted file costs
            // the one getxattr that reading its record cost before).
            static LOGGED: AtomicBool = AtomicBool::new(false);
            if !LOGGED.load(Ordering::Relaxed)
                && sys::getxattr(path, OWNER_XATTR, &mut []).is_ok()
                && !LOGGED.swap(true, Ordering::Relaxed)
            {
                tracing::debug!(
                    owner = st.st_uid,
                    "ignored a kept owner on a file owned by another host user (logged once)"
                );
            }
            return None;
        }
        let mut buf = [0u8; 64];
        match sys::getxattr(path, OWNER_XATTR, &mut buf) {
            Ok(n) => {
                let r = Record::decode(&buf[..n]);
                if r.is_none() {
                    tracing::debug!(value = ?String::from_utf8_lossy(&buf[..n]), "ignored a malformed owner record");
                }
                r
            }
            Err(_) => None,
        }
    }

    /// How the host object behind `fd`, whose stat is `st`, looks to the guest.
    pub(crate) fn present(&self, fd: BorrowedFd<'_>, st: &libc::stat) -> Presented {
        let record = if self.persist() && can_record(st.st_mode) {
            self.read_record(&sys::proc_path(fd), st)
        } else {
            None
        };
        self.present_with(st, record)
    }

    fn present_with(&self, st: &libc::stat, record: Option<Record>) -> Presented {
        match record {
            Some(r) => Presented {
                uid: r.uid,
                gid: r.gid,
                // A host chmod since the record was written wins.
                mode: if st.st_mode == r.host_mode {
                    r.mode
                } else {
                    st.st_mode
                },
            },
            None => Presented {
                uid: self.mode().uid_to_guest(HostUid(st.st_uid)),
                gid: self.mode().gid_to_guest(HostGid(st.st_gid)),
                mode: st.st_mode,
            },
        }
    }

    /// Attributes of the node open as `fd` as the guest sees them.
    pub(crate) fn attr(&self, fd: BorrowedFd<'_>, st: &libc::stat) -> Attr {
        attr::from_stat(st, self.present(fd, st))
    }

    /// Writes (or, when it says nothing the host does not, removes) the owner record of a node.
    fn write_record(&self, node: &Node, st: &libc::stat, record: Record) -> Result<(), Errno> {
        let path = sys::proc_path(node.fd());
        let plain = self.present_with(st, None);
        let needed =
            record.uid != plain.uid || record.gid != plain.gid || record.mode != st.st_mode;
        let result = if needed {
            if !self.trusts_record_on(st) {
                // It would be ignored when read back (see `trusts_record_on`).
                return Err(Errno::EPERM);
            }
            sys::setxattr(&path, OWNER_XATTR, record.encode().as_bytes(), 0)
        } else {
            match sys::removexattr(&path, OWNER_XATTR) {
                Err(Errno::ENODATA) => Ok(()),
                r => r,
            }
        };
        match result {
            Err(e @ Errno::EOPNOTSUPP) => {
                warn_no_xattrs(e);
                Err(Errno::EPERM)
            }
            r => r,
        }
    }

    /// The permission bits the host gets for a new object of type `kind` asked with `perm`:
    /// squash mode keeps set-id bits on files off the host (they are recorded instead).
    pub(crate) fn host_perm(&self, kind: u32, perm: u32) -> u32 {
        match self.mode() {
            IdMode::Squash { .. } if kind != libc::S_IFDIR => perm & !SETID_BITS,
            IdMode::Squash { .. } => perm & !libc::S_ISUID,
            _ => perm,
        }
    }

    /// After a creation in squash mode: records the creator when it is not the squash target,
    /// and set-id bits the host did not get. `perm` is what the guest asked for (after its
    /// umask); `parent` is the directory it was created in. A failure to record is logged, not
    /// returned: the object exists and the guest must learn of it.
    pub(crate) fn record_creator(
        &self,
        ctx: &Ctx,
        parent: &Node,
        node: &Node,
        st: &libc::stat,
        perm: u32,
    ) -> libc::stat {
        if !matches!(self.mode(), IdMode::Squash { .. })
            || !self.persist()
            || !can_record(st.st_mode)
        {
            return *st;
        }
        let parent_view = match sys::fstat(parent.fd()) {
            Ok(pst) => self.present(parent.fd(), &pst),
            Err(_) => return *st,
        };
        // As a local filesystem would: a set-group-id directory gives its group.
        let gid = if parent_view.mode & libc::S_ISGID != 0 {
            parent_view.gid
        } else {
            GuestGid(ctx.gid)
        };
        // What the host did, plus the set-id bits squash mode kept off the host file (mkdir
        // ignores set-id bits in its mode; the host applied directory inheritance itself).
        let mut mode = st.st_mode;
        if mode & libc::S_IFMT != libc::S_IFDIR {
            mode |= perm & SETID_BITS;
            if mode & libc::S_ISGID != 0 && gid.0 != ctx.gid && !ctx.groups.contains(&gid.0) {
                // A caller outside the file's group cannot make it set-group-id.
                mode &= !libc::S_ISGID;
            }
        }
        let record = Record {
            uid: GuestUid(ctx.uid),
            gid,
            mode,
            host_mode: st.st_mode,
        };
        if let Err(e) = self.write_record(node, st, record) {
            tracing::debug!(error = ?e, "could not record the creator of a new file");
        }
        *st
    }

    /// The permission bits a new object of type `kind` gets for `perm`: without `setid=on`, the
    /// set-id bits a guest may not give are dropped (the object is made without them).
    pub(super) fn creatable(&self, kind: u32, perm: u32) -> u32 {
        if self.export.setid() {
            perm
        } else {
            perm & !setid_bits(kind)
        }
    }

    /// Refuses (EPERM) a chmod of `node` to `mode` that adds set-id bits, without `setid=on`.
    pub(super) fn check_setid(&self, node: &Node, mode: u32) -> Result<(), Errno> {
        if self.export.setid() {
            return Ok(());
        }
        let st = sys::fstat(node.fd())?;
        let now = self.attr(node.fd(), &st).mode;
        if mode & !now & setid_bits(st.st_mode & libc::S_IFMT) != 0 {
            tracing::info!(
                export = self.export.name(),
                "refused a chmod adding set-id bits (allow with the export option :setid=on)"
            );
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// Clears the set-user-ID bit of regular file `ino`, and its set-group-ID bit when it is
    /// group-executable, as Linux does when a caller without CAP_FSETID writes to, truncates
    /// or chowns a file. A guest kernel that negotiated FUSE_HANDLE_KILLPRIV_V2 leaves this to
    /// the server and says when (the server itself writes with CAP_FSETID, so the host
    /// kernel would keep the bits; it does drop `security.capability` on every write).
    pub fn kill_suidgid(&self, ino: u64) -> Result<(), Errno> {
        let m = self.mutation();
        self.check_writable()?;
        self.kill_privs(&self.inodes.get(ino)?)?;
        m.changed(ino);
        Ok(())
    }

    /// [`Self::kill_suidgid`] of `node`; true when a bit was cleared.
    pub(super) fn kill_privs(&self, node: &Node) -> Result<bool, Errno> {
        if !node.is_file() {
            return Ok(false);
        }
        let st = sys::fstat(node.fd())?;
        let mode = self.attr(node.fd(), &st).mode & 0o7777;
        let mut kill = libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 {
            kill |= libc::S_ISGID;
        }
        if mode & kill == 0 {
            return Ok(false);
        }
        self.change_mode(node, mode & !kill)?;
        Ok(true)
    }

    /// `chown`/`chgrp` from the guest.
    pub(crate) fn change_owner(
        &self,
        node: &Node,
        uid: Option<GuestUid>,
        gid: Option<GuestGid>,
    ) -> Result<(), Errno> {
        let st = sys::fstat(node.fd())?;
        let mode = self.mode();
        if mode.creates_as_caller() {
            let host_uid = uid.map(|u| mode.uid_to_host(u));
            let host_gid = gid.map(|g| mode.gid_to_host(g));
            let mapped = !matches!(host_uid, Some(None)) && !matches!(host_gid, Some(None));
            if mapped {
                let r = sys::chown(
                    node.fd(),
                    host_uid.flatten().map_or(u32::MAX, |u| u.0),
                    host_gid.flatten().map_or(u32::MAX, |g| g.0),
                );
                match r {
                    Ok(()) => {
                        // The host tells the truth again: a stale record would hide it.
                        if self.persist() && can_record(st.st_mode) {
                            let path = sys::proc_path(node.fd());
                            let _ = sys::removexattr(&path, OWNER_XATTR);
                        }
                        return Ok(());
                    }
                    Err(Errno::EPERM) if self.persist() => {}
                    Err(e) => return Err(e),
                }
            } else if !self.persist() {
                // Outside every range: no host id to give, nowhere to keep it.
                return Err(Errno::EINVAL);
            }
        } else if !self.persist() {
            let now = self.present_with(&st, None);
            if uid.is_none_or(|u| u == now.uid) && gid.is_none_or(|g| g == now.gid) {
                return Ok(());
            }
            return Err(Errno::EPERM);
        }
        // Keep it in the record.
        if !can_record(st.st_mode) {
            tracing::debug!(
                node = node.id,
                "owner of a symlink or special file not kept (it cannot carry an xattr)"
            );
            return Ok(());
        }
        let now = self.present(node.fd(), &st);
        let record = Record {
            uid: uid.unwrap_or(now.uid),
            gid: gid.unwrap_or(now.gid),
            mode: now.mode,
            host_mode: st.st_mode,
        };
        self.write_record(node, &st, record)
    }

    /// `chmod` from the guest (`mode` holds permission bits only).
    pub(crate) fn change_mode(&self, node: &Node, mode: u32) -> Result<(), Errno> {
        let st = sys::fstat(node.fd())?;
        let host_bits = self.host_perm(st.st_mode & libc::S_IFMT, mode);
        if host_bits != mode && !self.persist() {
            // Squash mode without a record to keep them in: set-id bits are refused.
            return Err(Errno::EPERM);
        }
        let wanted = (st.st_mode & libc::S_IFMT) | mode;
        let record = if self.persist() && can_record(st.st_mode) {
            self.read_record(&sys::proc_path(node.fd()), &st)
        } else {
            None
        };
        match sys::chmod(self.proc_fd(), node.fd(), host_bits) {
            Ok(()) => {
                if record.is_none() && host_bits == mode {
                    return Ok(());
                }
                let after = sys::fstat(node.fd())?;
                let now = self.present_with(&st, record);
                self.write_record(
                    node,
                    &after,
                    Record {
                        uid: now.uid,
                        gid: now.gid,
                        mode: wanted,
                        host_mode: after.st_mode,
                    },
                )
            }
            Err(Errno::EPERM) if self.persist() && can_record(st.st_mode) => {
                // The host refuses (the server's user does not own the file): keep it.
                let now = self.present_with(&st, record);
                self.write_record(
                    node,
                    &st,
                    Record {
                        uid: now.uid,
                        gid: now.gid,
                        mode: wanted,
                        host_mode: st.st_mode,
                    },
                )
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let r = Record {
            uid: GuestUid(999),
            gid: GuestGid(999),
            mode: libc::S_IFDIR | 0o700,
            host_mode: libc::S_IFDIR | 0o755,
        };
        assert_eq!(r.encode(), "999:999:40700:40755");
        assert_eq!(Record::decode(r.encode().as_bytes()), Some(r));
        assert_eq!(Record::decode(b"999:999:40700:40755\0"), Some(r));
        for bad in [
            &b""[..],
            b"999",
            b"999:999",
            b"999:999:40700",
            b"999:999:40700:40755:1",
            b"x:999:40700:40755",
            b"999:999:9:40755",
            b"4294967295:0:100644:100644",
            b"\xff\xfe",
        ] {
            assert_eq!(Record::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reserved_names_are_the_servers() {
        assert!(is_reserved_xattr(b"user.ferry.owner"));
        assert!(is_reserved_xattr(b"user.ferry.anything"));
        assert!(!is_reserved_xattr(b"user.ferryman"));
        assert!(!is_reserved_xattr(b"user.owner"));
    }
}
