//! Extended attributes: GETXATTR, LISTXATTR, SETXATTR, REMOVEXATTR. The server's own
//! `user.ferry.*` names (see `owners.rs`) are hidden from the guest and cannot be set by it.
//! POSIX ACL values are translated on their way through (see `acl.rs`).

use std::ffi::CString;

use ferry_protocol::{Ctx, Errno};

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
        if owners::is_reserved_xattr(name) {
            return Err(Errno::EPERM);
        }
        Ok((node, xattr_name(name)?))
    }

    /// Value of xattr `name`; `size == 0` asks for its size, a too-small `size` is ERANGE.
    /// The server's own `user.ferry.*` names read as absent, and so do ACLs where they are
    /// off; an ACL's ids are translated to the guest's (`acl.rs`).
    pub fn getxattr(&self, ino: u64, name: &[u8], size: u32) -> Result<XattrReply, Errno> {
        let node = self.inodes.get(ino)?;
        if owners::is_reserved_xattr(name) || (acl::is_acl_name(name) && !self.acls()) {
            return Err(Errno::ENODATA);
        }
        let acl_name = name;
        let name = xattr_name(name)?;
        let path = self.xattr_path(&node);
        // A host filesystem without ACLs has none to show: the guest kernel, which asks for
        // them before access checks, must hear "no ACL" (ENODATA), not an error that would
        // fail the check.
        let absent = |e: Errno| match e {
            Errno::EOPNOTSUPP if acl::is_acl_name(acl_name) => Errno::ENODATA,
            e => e,
        };
        if size == 0 {
            let n = sys::getxattr(&path, &name, &mut []).map_err(absent)?;
            return Ok(XattrReply::Size(n as u32));
        }
        let mut buf = vec![0u8; (size as usize).min(XATTR_MAX)];
        let n = sys::getxattr(&path, &name, &mut buf).map_err(absent)?;
        buf.truncate(n);
        Ok(XattrReply::Data(self.acl_value_to_guest(acl_name, buf)?))
    }

    /// NUL-separated xattr names; `size == 0` asks for the list's size. The server's own
    /// `user.ferry.*` names are left out.
    pub fn listxattr(&self, ino: u64, size: u32) -> Result<XattrReply, Errno> {
        let node = self.inodes.get(ino)?;
        let path = self.xattr_path(&node);
        // The whole list is read even for a size query, so that the size excludes the hidden
        // names; a list the guest's buffer cannot hold is ERANGE, as from the kernel.
        let want = sys::listxattr(&path, &mut [])?;
        let mut buf = vec![0u8; (want + 256).min(XATTR_MAX)];
        let n = match sys::listxattr(&path, &mut buf) {
            // Grown since the size query.
            Err(Errno::ERANGE) => {
                buf.resize(XATTR_MAX, 0);
                sys::listxattr(&path, &mut buf)?
            }
            r => r?,
        };
        let mut list = owners::filter_xattr_list(&buf[..n]);
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
        _ctx: &Ctx,
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
        sys::setxattr(&self.xattr_path(&node), &cname, &value, flags)?;
        m.changed(ino);
        Ok(())
    }

    /// Removes xattr `name`. The server's own `user.ferry.*` names cannot be removed (EPERM).
    pub fn removexattr(&self, _ctx: &Ctx, ino: u64, name: &[u8]) -> Result<(), Errno> {
        let m = self.mutation();
        if acl::is_acl_name(name) && !self.acls() {
            return Err(Errno::EOPNOTSUPP);
        }
        let (node, name) = self.xattr_to_change(ino, name)?;
        sys::removexattr(&self.xattr_path(&node), &name)?;
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
