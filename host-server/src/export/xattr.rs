//! Extended attributes: GETXATTR, LISTXATTR, SETXATTR, REMOVEXATTR.
//!
//! A guest may use the `user.*` namespace and POSIX ACLs (`system.posix_acl_access`,
//! `system.posix_acl_default`), and `security.capability` only on an export with `setid=on`.
//! Every other name (`trusted.*`, `security.*`, other `system.*` names) is the host's: it reads
//! as absent (ENODATA), `listxattr` leaves it out, and setting or removing it answers EPERM, in
//! every id mode. (EPERM, not EOPNOTSUPP: a FUSE kernel that hears EOPNOTSUPP stops sending
//! any xattr request of that kind.) The server's own `user.ferry.*` names (see `owners.rs`)
//! are hidden the same way. POSIX ACL values are translated on their way through, and where
//! ACLs are off they are absent as on a filesystem mounted `noacl` (see `acl.rs`).
//!
//! Hints: for a guest that negotiated `features::XATTR_HINTS`, the attributes of an object
//! that has no name the guest may see carry `Attr::NO_XATTRS` (`hinted_attr`, one
//! `listxattr` per reply), so the guest answers `ls -l`'s probes itself until a change event
//! about the object (a host `setfattr` or `setfacl` is an IN_ATTRIB) drops the hint.

use std::ffi::{CStr, CString};
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;

use ferry_protocol::{Attr, Ctx, Errno};

use super::creds::Over;
use super::inode::Node;
use super::{ExportSession, acl, owners, sys};

/// Result of `getxattr`/`listxattr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XattrReply {
    /// The size the value or list needs (the request asked with `size == 0`).
    Size(u32),
    /// The value, or the NUL-separated name list.
    Data(Vec<u8>),
}

/// Largest xattr value and name list Linux supports (XATTR_SIZE_MAX, XATTR_LIST_MAX).
const XATTR_MAX: usize = 65536;

impl ExportSession {
    /// The `/proc/self/fd/N` path of a node. Xattr calls on it reach the node's own inode,
    /// and for a symlink node the symlink itself: following the magic link never continues
    /// into the symlink's target.
    fn xattr_path(&self, node: &Node) -> CString {
        sys::proc_path(node.fd())
    }

    /// The node and the name of an xattr a guest sets or removes: EROFS on a read-only
    /// export, EPERM for the server's own `user.ferry.*` names (a guest must not forge an
    /// owner record).
    fn xattr_to_change(&self, ino: u64, name: &[u8]) -> Result<(Node, CString), Errno> {
        self.check_writable()?;
        let node = self.inodes.get(ino)?;
        let cname = xattr_name(name)?;
        if !self.guest_xattr(name) {
            tracing::debug!(name = %String::from_utf8_lossy(name), "refused a guest xattr change outside user.* and POSIX ACLs");
            return Err(Errno::EPERM);
        }
        Ok((node, cname))
    }

    /// Whether the guest may see and change xattr `name` (see the module's documentation;
    /// the names no export shows are `ferry_protocol::host_only_xattr`'s, which a guest with
    /// `XATTR_HINTS` answers itself).
    fn guest_xattr(&self, name: &[u8]) -> bool {
        if owners::is_reserved_xattr(name) || ferry_protocol::host_only_xattr(name) {
            return false;
        }
        name != b"security.capability" || self.export.setid()
    }

    /// Has the attributes this session answers with carry `Attr::NO_XATTRS` where it holds
    /// (the guest negotiated `features::XATTR_HINTS`).
    pub fn set_xattr_hints(&self, on: bool) {
        self.xattr_hints.store(on, Ordering::Relaxed);
    }

    /// [`Self::attr`], with `Attr::NO_XATTRS` when hints are on and the object has no xattr
    /// the guest may see.
    pub(super) fn hinted_attr(&self, fd: BorrowedFd<'_>, st: &libc::stat) -> Attr {
        let mut attr = self.attr(fd, st);
        if self.xattr_hints.load(Ordering::Relaxed) && self.no_guest_xattrs(fd) {
            attr.mode |= Attr::NO_XATTRS;
        }
        attr
    }

    /// Whether the object behind `fd` has no xattr a guest would see in [`Self::listxattr`]
    /// or read with [`Self::getxattr`]. A list too long for a small buffer, or an error, says
    /// no (the guest then asks).
    fn no_guest_xattrs(&self, fd: BorrowedFd<'_>) -> bool {
        let mut buf = [0u8; 1024];
        match sys::listxattr(&sys::proc_path(fd), &mut buf) {
            Ok(n) => !buf[..n].split(|&b| b == 0).any(|name| {
                !name.is_empty()
                    && self.guest_xattr(name)
                    && (self.acls() || !acl::is_acl_name(name))
            }),
            // A host filesystem without xattrs.
            Err(Errno::EOPNOTSUPP) => true,
            Err(_) => false,
        }
    }

    /// Value of xattr `name`; `size == 0` asks for its size, a too-small `size` is ERANGE.
    /// The server's own `user.ferry.*` names read as absent, and so do ACLs where they are
    /// off; an ACL's ids are translated to the guest's (`acl.rs`).
    pub fn getxattr(
        &self,
        ctx: &Ctx,
        ino: u64,
        name: &[u8],
        size: u32,
    ) -> Result<XattrReply, Errno> {
        let node = self.inodes.get(ino)?;
        let cname = xattr_name(name)?;
        if !self.guest_xattr(name) || (acl::is_acl_name(name) && !self.acls()) {
            return Err(Errno::ENODATA);
        }
        let acl_name = name;
        let name = cname;
        let path = self.xattr_path(&node);
        // A host filesystem without ACLs has none to show: the guest kernel, which asks for
        // them before access checks, must hear "no ACL" (ENODATA), not an error that would
        // fail the check.
        let absent = |e: Errno| match e {
            Errno::EOPNOTSUPP if acl::is_acl_name(acl_name) => Errno::ENODATA,
            e => e,
        };
        let buf = self.as_caller(ctx, &[Over::Node(node.fd())], || {
            if size == 0 {
                let n = sys::getxattr(&path, &name, &mut [])?;
                return Ok(XattrReply::Size(n as u32));
            }
            let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
            let n = sys::getxattr(&path, &name, &mut buf)?;
            buf.truncate(n);
            Ok(XattrReply::Data(buf))
        });
        match buf.map_err(absent)? {
            XattrReply::Data(buf) => Ok(XattrReply::Data(self.acl_value_to_guest(acl_name, buf)?)),
            size => Ok(size),
        }
    }

    /// NUL-separated xattr names; `size == 0` asks for the list's size. The server's own
    /// `user.ferry.*` names are left out.
    pub fn listxattr(&self, ctx: &Ctx, ino: u64, size: u32) -> Result<XattrReply, Errno> {
        let node = self.inodes.get(ino)?;
        let path = self.xattr_path(&node);
        self.as_caller(ctx, &[Over::Node(node.fd())], || {
            self.list_names(&path, size)
        })
    }

    /// [`Self::listxattr`] of the node at `path`.
    fn list_names(&self, path: &CStr, size: u32) -> Result<XattrReply, Errno> {
        // The whole list is read even for a size query, so that the size excludes the hidden
        // names; a list the guest's buffer cannot hold is ERANGE, as from the kernel.
        let want = sys::listxattr(path, &mut [])?;
        let mut buf = vec![0u8; (want + 256).min(XATTR_MAX)];
        let n = match sys::listxattr(path, &mut buf) {
            // Grown since the size query.
            Err(Errno::ERANGE) => {
                buf.resize(XATTR_MAX, 0);
                sys::listxattr(path, &mut buf)?
            }
            r => r?,
        };
        let mut list: Vec<u8> = buf[..n]
            .split_inclusive(|&b| b == 0)
            .filter(|name| self.guest_xattr(name.strip_suffix(b"\0").unwrap_or(name)))
            .flatten()
            .copied()
            .collect();
        if !self.acls() {
            list = acl::hide_names(&list);
        }
        if size == 0 {
            return Ok(XattrReply::Size(list.len() as u32));
        }
        if list.len() > size as usize {
            return Err(Errno::ERANGE);
        }
        Ok(XattrReply::Data(list))
    }

    /// Sets xattr `name` (`flags`: XATTR_CREATE, XATTR_REPLACE). The server's own
    /// `user.ferry.*` names cannot be set (EPERM): a guest must not forge an owner record.
    /// An ACL's ids are translated to the host's (`acl.rs`).
    pub fn setxattr(
        &self,
        ctx: &Ctx,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        let m = self.mutation();
        let (node, cname) = self.xattr_to_change(ino, name)?;
        let value = self.acl_value_to_host(name, value)?;
        if value.len() > XATTR_MAX {
            return Err(Errno::E2BIG);
        }
        if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            return Err(Errno::EINVAL);
        }
        self.as_caller(ctx, &[Over::Node(node.fd())], || {
            sys::setxattr(&self.xattr_path(&node), &cname, &value, flags)
        })?;
        m.changed(ino);
        Ok(())
    }

    /// Removes xattr `name`. The server's own `user.ferry.*` names cannot be removed (EPERM).
    pub fn removexattr(&self, ctx: &Ctx, ino: u64, name: &[u8]) -> Result<(), Errno> {
        let m = self.mutation();
        if acl::is_acl_name(name) && !self.acls() {
            return Err(Errno::EOPNOTSUPP);
        }
        let (node, name) = self.xattr_to_change(ino, name)?;
        self.as_caller(ctx, &[Over::Node(node.fd())], || {
            sys::removexattr(&self.xattr_path(&node), &name)
        })?;
        m.changed(ino);
        Ok(())
    }
}

/// Checks an xattr name: non-empty, no NUL, at most 255 bytes (XATTR_NAME_MAX).
fn xattr_name(name: &[u8]) -> Result<CString, Errno> {
    if name.is_empty() {
        return Err(Errno::EINVAL);
    }
    if name.len() > 255 {
        return Err(Errno::ERANGE);
    }
    sys::cstring(name)
}
