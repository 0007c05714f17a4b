//! Extended attributes: GETXATTR, LISTXATTR, SETXATTR, REMOVEXATTR.
//!
//! A guest may use the `user.*` namespace and POSIX ACLs (`system.posix_acl_access`,
//! `system.posix_acl_default`), and `security.capability` only on an export with `setid=on`.
//! Every other name (`trusted.*`, `security.*`, other `system.*` names) is the host's: it reads
//! as absent (ENODATA), `listxattr` leaves it out, and setting or removing it answers EPERM, in
//! every id mode. (EPERM, not EOPNOTSUPP: a FUSE kernel that hears EOPNOTSUPP stops sending
//! any xattr request of that kind.) The server's own `user.ferry.*` names (see `owners.rs`)
//! are hidden the same way.

use std::ffi::{CStr, CString};

use ferry_protocol::{Ctx, Errno};

use super::creds::Over;
use super::inode::Node;
use super::{ExportSession, owners, sys};

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

    /// Whether the guest may see and change xattr `name` (see the module's documentation).
    fn guest_xattr(&self, name: &[u8]) -> bool {
        if owners::is_reserved_xattr(name) {
            return false;
        }
        name.starts_with(b"user.")
            || name == b"system.posix_acl_access"
            || name == b"system.posix_acl_default"
            || (name == b"security.capability" && self.export.setid())
    }

    /// Value of xattr `name`; `size == 0` asks for its size, a too-small `size` is ERANGE.
    /// The server's own `user.ferry.*` names read as absent.
    pub fn getxattr(
        &self,
        ctx: &Ctx,
        ino: u64,
        name: &[u8],
        size: u32,
    ) -> Result<XattrReply, Errno> {
        let node = self.inodes.get(ino)?;
        let cname = xattr_name(name)?;
        if !self.guest_xattr(name) {
            return Err(Errno::ENODATA);
        }
        let name = cname;
        let path = self.xattr_path(&node);
        self.as_caller(ctx, &[Over::Node(node.fd())], || {
            if size == 0 {
                let n = sys::getxattr(&path, &name, &mut [])?;
                return Ok(XattrReply::Size(n as u32));
            }
            let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
            let n = sys::getxattr(&path, &name, &mut buf)?;
            buf.truncate(n);
            Ok(XattrReply::Data(buf))
        })
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
        let list: Vec<u8> = buf[..n]
            .split_inclusive(|&b| b == 0)
            .filter(|name| self.guest_xattr(name.strip_suffix(b"\0").unwrap_or(name)))
            .flatten()
            .copied()
            .collect();
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
    pub fn setxattr(
        &self,
        ctx: &Ctx,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        let m = self.mutation();
        let (node, name) = self.xattr_to_change(ino, name)?;
        if value.len() > XATTR_MAX {
            return Err(Errno::E2BIG);
        }
        if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            return Err(Errno::EINVAL);
        }
        self.as_caller(ctx, &[Over::Node(node.fd())], || {
            sys::setxattr(&self.xattr_path(&node), &name, value, flags)
        })?;
        m.changed(ino);
        Ok(())
    }

    /// Removes xattr `name`. The server's own `user.ferry.*` names cannot be removed (EPERM).
    pub fn removexattr(&self, ctx: &Ctx, ino: u64, name: &[u8]) -> Result<(), Errno> {
        let m = self.mutation();
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
