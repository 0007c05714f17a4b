//! The typed operations of [`ExportSession`], one per request kind.
//!
//! Each method validates its input, checks read-only exports before touching anything, then
//! performs the operation with `*at` calls relative to node fds (or through `/proc/self/fd`).
//! A method that can change the host tree takes a mutation guard first and records through it
//! what it changed, for the export's watcher (see `echo.rs`).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use ferry_protocol::{
    Attr, CopyFileRange, Created, Ctx, Entry, Errno, Lock, MAX_DATA, Opened, SetTime, Statfs,
};

use super::ExportSession;
use super::attr::{decode_rdev, utime};
use super::creds::{Identity, Over};
use super::handle::{Handle, HandleKind};
use super::inode::{InodeData, Node};
use super::locks::{self, LockWait, from_flock, to_flock};
use super::sys;
use crate::ids::{GuestGid, GuestUid};

/// Attribute changes of a `setattr`; `None` leaves an attribute alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttrs {
    /// New permission bits (the file type bits are ignored).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<GuestUid>,
    /// New group.
    pub gid: Option<GuestGid>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// Clear set-user-ID (and set-group-ID on group-executable files) unless `mode` is
    /// given: a truncate or chown by a caller without CAP_FSETID whose kernel left it to
    /// the server (see [`ExportSession::kill_suidgid`]).
    pub kill_suidgid: bool,
}

/// Most bytes one `copy_file_range` request copies; the reply counts in a u32 and a shorter
/// copy is a valid answer the guest continues from.
const MAX_COPY: u64 = 1 << 30;

/// Open flags passed through to the host. Everything else is dropped: O_CREAT/O_EXCL (the
/// node exists), O_NOCTTY, O_NOFOLLOW (the reopen must follow the `/proc` magic link),
/// O_DIRECT (guest buffers need not meet the host's alignment), O_PATH and O_TMPFILE.
const OPEN_FLAGS_KEPT: libc::c_int = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_TRUNC
    | libc::O_NONBLOCK
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_NOATIME
    | libc::O_LARGEFILE;

/// True when opening with `flags` may modify the file.
fn opens_for_writing(flags: libc::c_int) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_APPEND) != 0
}

/// Checks that `name` is one path component and returns it as a C string.
///
/// `.` and `..` are refused with EINVAL rather than ENOENT: the guest kernel resolves them
/// itself and never sends them, so such a request is malformed or an attempt to climb out.
pub(super) fn component(name: &[u8]) -> Result<CString, Errno> {
    if name.is_empty() {
        return Err(Errno::EINVAL);
    }
    if name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        ferry_common::warn_limited!(name = %String::from_utf8_lossy(name), "refused a name that is not a single path component");
        return Err(Errno::EINVAL);
    }
    sys::cstring(name)
}

impl ExportSession {
    pub(crate) fn proc_fd(&self) -> BorrowedFd<'_> {
        self.export.proc_fd()
    }

    /// The node `id`, which must be a directory (ENOTDIR otherwise).
    pub(super) fn dir_node(&self, id: u64) -> Result<Node, Errno> {
        let node = self.inodes.get(id)?;
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(node)
    }

    /// The entry of `node`, whose stat is `st`, as the guest sees it.
    fn entry(&self, node: &Node, st: &libc::stat) -> Entry {
        Entry {
            ino: node.id,
            generation: 0,
            attr: self.hinted_attr(node.fd(), st),
        }
    }

    /// Looks `name` up below the directory node `dir` and takes one lookup of the result.
    fn lookup_at(&self, dir: &Node, name: &CStr) -> Result<Entry, Errno> {
        self.lookup_hinted(dir.fd(), dir.data(), name, None)
    }

    /// [`Self::lookup_at`], where `hint` is the `(dev, ino)` a directory listing gave for the
    /// name (a mount point's is that of the directory under it, so it is only a hint).
    /// `dir` is a descriptor of the directory node `parent`.
    pub(super) fn lookup_hinted(
        &self,
        dir: BorrowedFd<'_>,
        parent: &Arc<InodeData>,
        name: &CStr,
        hint: Option<(u64, u64)>,
    ) -> Result<Entry, Errno> {
        // A node whose descriptor is cached is found by a stat of the name alone: the
        // descriptor keeps the inode alive, so its (dev, ino) cannot name another object.
        // Saves an open, a file handle and a close per repeated lookup (and per entry of a
        // directory listed again with readdirplus). `name` is one component and the stat does
        // not follow a final symlink, as the open below does not. A listing's hint that the
        // table holds no such node skips the stat: a directory read for the first time.
        if hint.is_none_or(|key| self.inodes.id_of(key).is_some()) {
            let st = sys::fstatat_nofollow(dir, name)?;
            if let Some(node) = self.inodes.ref_cached((st.st_dev, st.st_ino)) {
                self.inodes.found_at(&node, parent, name.to_bytes());
                return Ok(self.entry(&node, &st));
            }
        }
        let fd = sys::open_beneath(dir, name, libc::O_PATH, 0)?;
        let st = sys::fstat(fd.as_fd())?;
        let node = self.inodes.insert_or_ref(fd, &st, parent, name.to_bytes());
        Ok(self.entry(&node, &st))
    }

    /// Looks up an object `ctx` just created as `name` in `dir`. When the server's own umask
    /// took away permission bits the guest asked for (`want`, the guest's umask already
    /// applied), they are put back before the node is handed out. In squash mode the creator
    /// is recorded (see [`ExportSession::record_creator`]).
    fn lookup_created(
        &self,
        ctx: &Ctx,
        dir: &Node,
        name: &CStr,
        want: Option<u32>,
    ) -> Result<Entry, Errno> {
        let fd = sys::open_beneath(dir.fd(), name, libc::O_PATH, 0)?;
        let mut st = sys::fstat(fd.as_fd())?;
        if let Some(want) = want {
            let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
            if !is_link && st.st_mode & 0o777 != want & 0o777 {
                sys::chmod(
                    self.proc_fd(),
                    fd.as_fd(),
                    (st.st_mode & 0o7000) | (want & 0o777),
                )?;
                st = sys::fstat(fd.as_fd())?;
            }
        }
        let node = self
            .inodes
            .insert_or_ref(fd, &st, dir.data(), name.to_bytes());
        let st = self.record_creator(ctx, dir, &node, &st, want.unwrap_or(0));
        Ok(self.entry(&node, &st))
    }

    /// The handle `fh` as a file handle.
    fn file_handle(&self, fh: u64) -> Result<Arc<Handle>, Errno> {
        let h = self.handles.get(fh)?;
        h.file_fd()?;
        Ok(h)
    }

    /// Looks `name` up in directory `parent` (one more lookup of the result).
    pub fn lookup(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<Entry, Errno> {
        let name = component(name)?;
        let dir = self.dir_node(parent)?;
        let id = self.identity(ctx, false)?;
        if !matches!(id, Identity::Server) {
            // The caller must be able to search the directory; the node itself is then made
            // as the server (reading its owner record needs no permission of the caller's).
            self.run_as(&id, &[Over::Node(dir.fd())], || {
                sys::fstatat_nofollow(dir.fd(), &name)
            })?;
        }
        self.lookup_at(&dir, &name)
    }

    /// Gives back `nlookup` lookups of `ino`; at zero the node is dropped. Never fails.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        self.inodes.forget(ino, nlookup);
    }

    /// Attributes of `ino`, through handle `fh` when given.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr, Errno> {
        let node = self.inodes.get(ino)?;
        let st = match fh {
            Some(fh) => sys::fstat(self.handles.get(fh)?.fd())?,
            None => sys::fstat(node.fd())?,
        };
        Ok(self.hinted_attr(node.fd(), &st))
    }

    /// Changes attributes of `ino` (in the order owner, mode, size, times, so that an explicit
    /// mode survives the set-id clearing of chown) and returns the new attributes.
    pub fn setattr(
        &self,
        ctx: &Ctx,
        ino: u64,
        fh: Option<u64>,
        attrs: &SetAttrs,
    ) -> Result<Attr, Errno> {
        let m = self.mutation();
        self.check_writable()?;
        let node = self.inodes.get(ino)?;
        let handle = fh.map(|fh| self.handles.get(fh)).transpose()?;
        if let Some(mode) = attrs.mode {
            self.check_setid(&node, mode & 0o7777)?;
        }
        // As the caller, so the host checks ownership and permissions against its ids.
        self.as_caller(ctx, &[Over::Node(node.fd())], || {
            self.set_attrs(&node, handle.as_deref(), attrs)
        })?;
        let st = sys::fstat(node.fd())?;
        let attr = self.hinted_attr(node.fd(), &st);
        m.changed(ino);
        Ok(attr)
    }

    /// The changes of [`Self::setattr`], in its order.
    fn set_attrs(
        &self,
        node: &Node,
        handle: Option<&Handle>,
        attrs: &SetAttrs,
    ) -> Result<(), Errno> {
        if attrs.uid.is_some() || attrs.gid.is_some() {
            self.change_owner(node, attrs.uid, attrs.gid)?;
        }
        if let Some(mode) = attrs.mode {
            if node.is_symlink() {
                // Linux has no permission bits on symlinks (lchmod is EOPNOTSUPP).
                return Err(Errno::EOPNOTSUPP);
            }
            self.change_mode(node, mode & 0o7777)?;
        }
        if let Some(size) = attrs.size {
            match handle {
                Some(h) => sys::ftruncate(h.file_fd()?, size)?,
                None => {
                    if node.is_dir() {
                        return Err(Errno::EISDIR);
                    }
                    // Opening a FIFO or device to truncate it could block or reach a host
                    // device; truncate only means something for regular files.
                    if !node.is_file() {
                        return Err(Errno::EINVAL);
                    }
                    let fd = sys::reopen(self.proc_fd(), node.fd(), libc::O_WRONLY)?;
                    sys::ftruncate(fd.as_fd(), size)?;
                }
            }
        }
        if attrs.kill_suidgid && attrs.mode.is_none() {
            self.kill_privs(node)?;
        }
        if attrs.atime.is_some() || attrs.mtime.is_some() {
            let times = [utime(attrs.atime), utime(attrs.mtime)];
            sys::utimens(self.proc_fd(), node.fd(), &times)?;
        }
        Ok(())
    }

    /// Target of the symlink `ino`; EINVAL for other nodes.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let node = self.inodes.get(ino)?;
        if !node.is_symlink() {
            return Err(Errno::EINVAL);
        }
        sys::readlink(node.fd())
    }

    /// Creates the symlink `name` → `target` in `parent`. The target is stored verbatim; the
    /// host never follows it.
    pub fn symlink(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<Entry, Errno> {
        let m = self.mutation();
        self.check_writable()?;
        let name = component(name)?;
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        let target = sys::cstring(target)?;
        let dir = self.dir_node(parent)?;
        self.as_creator(ctx, &[Over::Node(dir.fd())], || {
            sys::symlinkat(&target, dir.fd(), &name)
        })?;
        let e = self.lookup_created(ctx, &dir, &name, None)?;
        m.created(parent, name.to_bytes(), e.ino);
        Ok(e)
    }

    /// Creates a regular file, FIFO, socket or (on an export with `devices=on`) a device
    /// node. Device nodes are otherwise refused with EPERM: a device node created on the host
    /// would be a door to the host's devices for every host process that can reach it.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> Result<Entry, Errno> {
        let m = self.mutation();
        self.check_writable()?;
        let name = component(name)?;
        let (kind, host_rdev) = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => (libc::S_IFREG, 0),
            libc::S_IFIFO => (libc::S_IFIFO, 0),
            libc::S_IFSOCK => (libc::S_IFSOCK, 0),
            kind @ (libc::S_IFCHR | libc::S_IFBLK) => {
                if !self.export.devices() {
                    tracing::info!(
                        export = self.export.name(),
                        "refused to create a device node (allow with the export option \
                         :devices=on)"
                    );
                    return Err(Errno::EPERM);
                }
                (kind, decode_rdev(rdev))
            }
            _ => return Err(Errno::EINVAL),
        };
        let dir = self.dir_node(parent)?;
        let (perm, inherits) = self.creation_perm(&dir, mode, umask);
        let perm = self.creatable(kind, perm);
        let host_perm = self.host_perm(kind, perm);
        self.as_creator(ctx, &[Over::Node(dir.fd())], || {
            sys::mknodat(dir.fd(), &name, kind | host_perm, host_rdev)
        })?;
        let e = self.lookup_created(ctx, &dir, &name, (!inherits).then_some(perm))?;
        m.created(parent, name.to_bytes(), e.ino);
        Ok(e)
    }

    /// Creates a directory with `mode & !umask` (or under the parent's default ACL: see
    /// [`ExportSession::creation_perm`]).
    pub fn mkdir(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> Result<Entry, Errno> {
        let m = self.mutation();
        self.check_writable()?;
        let name = component(name)?;
        let dir = self.dir_node(parent)?;
        let (perm, inherits) = self.creation_perm(&dir, mode, umask);
        let perm = self.creatable(libc::S_IFDIR, perm);
        let host_perm = self.host_perm(libc::S_IFDIR, perm);
        self.as_creator(ctx, &[Over::Node(dir.fd())], || {
            sys::mkdirat(dir.fd(), &name, host_perm)
        })?;
        let e = self.lookup_created(ctx, &dir, &name, (!inherits).then_some(perm))?;
        m.created(parent, name.to_bytes(), e.ino);
        Ok(e)
    }

    /// Removes the non-directory `name` from `parent`. Nodes of the removed object live on
    /// until the guest forgets them.
    pub fn unlink(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<(), Errno> {
        self.remove(ctx, parent, name, 0)
    }

    /// Removes the empty directory `name` from `parent`.
    pub fn rmdir(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<(), Errno> {
        self.remove(ctx, parent, name, libc::AT_REMOVEDIR)
    }

    /// `unlinkat(2)` of `name` in `parent` with `flags`.
    fn remove(&self, ctx: &Ctx, parent: u64, name: &[u8], flags: libc::c_int) -> Result<(), Errno> {
        let m = self.mutation();
        self.check_writable()?;
        let cname = component(name)?;
        let dir = self.dir_node(parent)?;
        let over = [Over::Node(dir.fd()), Over::StickyChild(dir.fd(), &cname)];
        self.as_caller(ctx, &over, || sys::unlinkat(dir.fd(), &cname, flags))?;
        m.removed(parent, name);
        Ok(())
    }

    /// Renames `parent/name` to `newparent/newname`; `flags` may hold RENAME_NOREPLACE (1) and
    /// RENAME_EXCHANGE (2), anything else is EINVAL.
    pub fn rename(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        let m = self.mutation();
        self.check_writable()?;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(Errno::EINVAL);
        }
        let cname = component(name)?;
        let cnewname = component(newname)?;
        let dir = self.dir_node(parent)?;
        let newdir = self.dir_node(newparent)?;
        let over = [
            Over::Node(dir.fd()),
            Over::Node(newdir.fd()),
            Over::StickyChild(dir.fd(), &cname),
            Over::StickyChild(newdir.fd(), &cnewname),
        ];
        self.as_caller(ctx, &over, || {
            sys::renameat2(dir.fd(), &cname, newdir.fd(), &cnewname, flags)
        })?;
        if self.inodes.reaches_by_name() {
            // Nodes reached by name follow the rename (see `inode.rs`).
            self.moved_to(&newdir, &cnewname);
            if flags & libc::RENAME_EXCHANGE != 0 {
                self.moved_to(&dir, &cname);
            }
        }
        m.renamed(parent, name, newparent, newname, flags);
        Ok(())
    }

    /// Records, for a node reached by name, that its object is now `name` in `dir`.
    fn moved_to(&self, dir: &Node, name: &CStr) {
        if let Ok(st) = sys::fstatat_nofollow(dir.fd(), name) {
            if let Some(node) = self
                .inodes
                .id_of((st.st_dev, st.st_ino))
                .and_then(|id| self.inodes.peek(id).ok())
            {
                self.inodes.found_at(&node, dir.data(), name.to_bytes());
            }
        }
    }

    /// Hard-links `ino` as `newparent/newname`; the new entry has the same node id.
    pub fn link(
        &self,
        ctx: &Ctx,
        ino: u64,
        newparent: u64,
        newname: &[u8],
    ) -> Result<Entry, Errno> {
        let m = self.mutation();
        self.check_writable()?;
        let newname = component(newname)?;
        let node = self.inodes.get(ino)?;
        if node.is_dir() {
            return Err(Errno::EPERM);
        }
        let newdir = self.dir_node(newparent)?;
        self.as_caller(
            ctx,
            &[Over::Node(newdir.fd()), Over::Node(node.fd())],
            || sys::link_fd(self.proc_fd(), node.fd(), newdir.fd(), &newname),
        )?;
        let e = self.lookup_at(&newdir, &newname)?;
        m.created(newparent, newname.to_bytes(), e.ino);
        Ok(e)
    }

    /// Opens the file `ino` by re-opening its node fd through `/proc/self/fd`.
    pub fn open(&self, ctx: &Ctx, ino: u64, flags: i32) -> Result<Opened, Errno> {
        // Only a truncating open changes the file.
        let m = (flags & libc::O_TRUNC != 0).then(|| self.mutation());
        if self.export.read_only && opens_for_writing(flags) {
            return Err(Errno::EROFS);
        }
        self.handles.room()?;
        let node = self.inodes.get(ino)?;
        let mut host_flags = flags & OPEN_FLAGS_KEPT;
        if node.is_symlink() {
            return Err(Errno::ELOOP);
        }
        if node.is_dir() {
            if flags & libc::O_DIRECTORY == 0 {
                return Err(Errno::EISDIR);
            }
            host_flags |= libc::O_DIRECTORY;
        } else if flags & libc::O_DIRECTORY != 0 {
            return Err(Errno::ENOTDIR);
        } else if !node.is_file() {
            // The guest kernel opens FIFOs, sockets and device nodes itself and never asks
            // the server; opening them on the host could block or reach a host device.
            ferry_common::warn_limited!(ino, "refused to open a special file on the host");
            return Err(Errno::EPERM);
        }
        let fd = self.as_caller(ctx, &[Over::Node(node.fd())], || {
            sys::reopen(self.proc_fd(), node.fd(), host_flags)
        })?;
        let fh = self
            .handles
            .insert(Handle::new(fd, HandleKind::File).pinning(node.pin()));
        if let Some(m) = m {
            m.changed(ino);
        }
        Ok(Opened { fh, open_flags: 0 })
    }

    /// As [`Self::open`], and for a read-only open of a regular file also reads up to
    /// `prefetch` bytes from offset 0, which the guest can serve its first reads from. Small
    /// files are mostly opened to be read whole, so this saves a round trip per file.
    pub fn open_prefetch(
        &self,
        ctx: &Ctx,
        ino: u64,
        flags: i32,
        prefetch: u32,
    ) -> Result<(Opened, Vec<u8>), Errno> {
        let opened = self.open(ctx, ino, flags)?;
        let read_only = flags & libc::O_ACCMODE == libc::O_RDONLY && flags & libc::O_TRUNC == 0;
        if prefetch == 0 || !read_only || flags & libc::O_DIRECTORY != 0 {
            return Ok((opened, Vec::new()));
        }
        // A failed prefetch is not a failed open: the guest just reads as usual.
        let data = self
            .read(ino, opened.fh, 0, prefetch.min(MAX_DATA as u32))
            .unwrap_or_default();
        Ok((opened, data))
    }

    /// Creates (or, without O_EXCL, opens an existing) regular file `name` in `parent` and
    /// opens it.
    pub fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<Created, Errno> {
        self.create_killing(ctx, parent, name, mode, umask, flags, false)
    }

    /// [`Self::create`]; with `kill_suidgid`, an existing file it opens (and truncates, with
    /// O_TRUNC) loses its set-id bits as with [`Self::kill_suidgid`]. A file it creates keeps
    /// the mode asked for.
    #[allow(clippy::too_many_arguments)]
    pub fn create_killing(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
        kill_suidgid: bool,
    ) -> Result<Created, Errno> {
        let m = self.mutation();
        self.check_writable()?;
        self.handles.room()?;
        let name = component(name)?;
        let dir = self.dir_node(parent)?;
        let (perm, inherits) = self.creation_perm(&dir, mode, umask);
        let perm = self.creatable(libc::S_IFREG, perm);
        let host_flags = flags & OPEN_FLAGS_KEPT;
        let exclusive = flags & libc::O_EXCL != 0;
        let host_perm = self.host_perm(libc::S_IFREG, perm);
        // As the caller (in modes that create as the caller), so the host also checks the
        // parent directory, and an existing file's open, against the caller's own ids.
        // Guest root's powers in map mode must also hold over a file that is already there.
        let over = [Over::Node(dir.fd()), Over::Child(dir.fd(), &name)];
        let (path, data, created) = self.as_creator(ctx, &over, || {
            self.create_or_open(&dir, &name, host_flags, host_perm, exclusive)
        })?;
        let mut st = sys::fstat(path.as_fd())?;
        if created && !inherits && st.st_mode & 0o777 != perm & 0o777 {
            sys::fchmod(data.as_fd(), (st.st_mode & 0o7000) | (perm & 0o777))?;
            st = sys::fstat(path.as_fd())?;
        }
        let node = self
            .inodes
            .insert_or_ref(path, &st, dir.data(), name.to_bytes());
        if created {
            st = self.record_creator(ctx, &dir, &node, &st, perm);
        } else if kill_suidgid && self.kill_privs(&node)? {
            st = sys::fstat(node.fd())?;
        }
        let fh = self
            .handles
            .insert(Handle::new(data, HandleKind::File).pinning(node.pin()));
        m.created(parent, name.to_bytes(), node.id);
        Ok(Created {
            entry: self.entry(&node, &st),
            opened: Opened { fh, open_flags: 0 },
        })
    }

    /// Creates `name` in `dir` exclusively, or (unless `exclusive`) opens the regular file
    /// already there; returns its `O_PATH` fd, its open fd, and whether it is new. Creating
    /// exclusively first tells whether the file is new (only a new file gets its mode
    /// corrected). An existing name is opened through an `O_PATH` lookup and a checked reopen,
    /// so a FIFO or device that is already there is never opened.
    fn create_or_open(
        &self,
        dir: &Node,
        name: &CStr,
        host_flags: i32,
        perm: u32,
        exclusive: bool,
    ) -> Result<(OwnedFd, OwnedFd, bool), Errno> {
        for _ in 0..8 {
            match sys::open_beneath(
                dir.fd(),
                name,
                host_flags | libc::O_CREAT | libc::O_EXCL,
                perm,
            ) {
                Ok(data) => {
                    let path = sys::reopen(self.proc_fd(), data.as_fd(), libc::O_PATH)?;
                    return Ok((path, data, true));
                }
                Err(Errno::EEXIST) if !exclusive => {}
                Err(e) => return Err(e),
            }
            let path = match sys::open_beneath(dir.fd(), name, libc::O_PATH, 0) {
                Ok(fd) => fd,
                // Removed between the two attempts: try creating again.
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            let st = sys::fstat(path.as_fd())?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => {}
                libc::S_IFDIR => return Err(Errno::EISDIR),
                libc::S_IFLNK => return Err(Errno::ELOOP),
                _ => return Err(Errno::EEXIST),
            }
            let data = sys::reopen(self.proc_fd(), path.as_fd(), host_flags)?;
            return Ok((path, data, false));
        }
        Err(Errno::ENOENT)
    }

    /// Reads up to `size` bytes at `offset`; fewer only at end of file.
    pub fn read(&self, _ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let size = size as usize;
        if size > MAX_DATA {
            return Err(Errno::EINVAL);
        }
        let h = self.file_handle(fh)?;
        let mut buf = vec![0u8; size];
        let n = sys::pread_full(h.file_fd()?, &mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Writes all of `data` at `offset` (appends on a handle opened with O_APPEND).
    pub fn write(&self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let m = self.mutation();
        self.check_writable()?;
        if data.len() > MAX_DATA {
            return Err(Errno::EINVAL);
        }
        let h = self.file_handle(fh)?;
        let n = sys::pwrite_all(h.file_fd()?, data, offset)?;
        m.changed(ino);
        Ok(n as u32)
    }

    /// A `close(2)` in the guest by lock owner `lock_owner`: POSIX says every lock that owner
    /// holds on the file goes. The handle itself stays open until `release`. On a filesystem
    /// whose close can fail ([`ExportSession::close_reports_errors`]: NFS, SMB, FUSE, ...) a
    /// duplicate of the handle's descriptor is closed and its error answered, as virtiofsd
    /// does, so the guest's `close` learns of a write-back that failed.
    pub fn flush(&self, ino: u64, fh: u64, lock_owner: u64) -> Result<(), Errno> {
        let h = self.file_handle(fh)?;
        self.locks.drop_owner(ino, lock_owner);
        if self.close_reports_errors() {
            sys::close_dup(h.file_fd()?)?;
        }
        Ok(())
    }

    /// Last close of a file handle: forgets it and closes its fd, which releases its flock
    /// locks, and drops the lock owners opened through it.
    pub fn release(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        let m = self.mutation();
        // Closing a handle that could write raises the host's IN_CLOSE_WRITE; closing a
        // read-only one changes nothing, and recording the file's state then would take a
        // host write made while the guest was reading for the guest's own.
        let h = self.file_handle(fh)?;
        let could_write =
            m.watched() && sys::access_mode(h.fd()).is_ok_and(|a| a != libc::O_RDONLY);
        drop(h);
        self.locks.drop_handle(fh);
        self.handles.remove(fh)?;
        if could_write {
            m.changed(ino);
        }
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file handle.
    pub fn fsync(&self, _ino: u64, fh: u64, datasync: bool) -> Result<(), Errno> {
        let h = self.file_handle(fh)?;
        sys::fsync(h.file_fd()?, datasync)
    }

    /// Statistics of the filesystem holding `ino`.
    pub fn statfs(&self, ino: u64) -> Result<Statfs, Errno> {
        let node = self.inodes.get(ino)?;
        let st = sys::fstatvfs(node.fd())?;
        Ok(Statfs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: u32::try_from(st.f_bsize).unwrap_or(u32::MAX),
            namelen: u32::try_from(st.f_namemax).unwrap_or(u32::MAX),
            frsize: u32::try_from(st.f_frsize).unwrap_or(u32::MAX),
        })
    }

    /// `access(2)` check of `ino` with `mask`; write access to a read-only export is EROFS.
    pub fn access(&self, ctx: &Ctx, ino: u64, mask: i32) -> Result<(), Errno> {
        let node = self.inodes.get(ino)?;
        if mask & libc::W_OK != 0 && self.export.read_only {
            return Err(Errno::EROFS);
        }
        self.as_caller(ctx, &[Over::Node(node.fd())], || {
            sys::access(self.proc_fd(), node.fd(), mask)
        })
    }

    /// `fallocate(2)` on a file handle.
    pub fn fallocate(
        &self,
        ctx: &Ctx,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let m = self.mutation();
        self.check_writable()?;
        let h = self.file_handle(fh)?;
        let fd = h.file_fd()?;
        self.as_caller(ctx, &[Over::Node(fd)], || {
            sys::fallocate(fd, mode, offset, length)
        })?;
        m.changed(ino);
        Ok(())
    }

    /// `lseek(2)` on a file handle (SEEK_SET, SEEK_CUR, SEEK_END, SEEK_DATA, SEEK_HOLE).
    pub fn lseek(&self, _ino: u64, fh: u64, offset: i64, whence: i32) -> Result<i64, Errno> {
        if !matches!(
            whence,
            libc::SEEK_SET | libc::SEEK_CUR | libc::SEEK_END | libc::SEEK_DATA | libc::SEEK_HOLE
        ) {
            return Err(Errno::EINVAL);
        }
        let h = self.file_handle(fh)?;
        sys::lseek(h.file_fd()?, offset, whence)
    }

    /// Server-side copy between two file handles at explicit offsets; may copy less than
    /// asked (at most 1 GiB per request).
    pub fn copy_file_range(&self, ctx: &Ctx, req: &CopyFileRange) -> Result<u32, Errno> {
        let m = self.mutation();
        self.check_writable()?;
        let h_in = self.file_handle(req.fh_in)?;
        let h_out = self.file_handle(req.fh_out)?;
        let len = req.len.min(MAX_COPY) as usize;
        let (fd_in, fd_out) = (h_in.file_fd()?, h_out.file_fd()?);
        let n = self.as_caller(ctx, &[Over::Node(fd_out)], || {
            sys::copy_file_range(fd_in, req.offset_in, fd_out, req.offset_out, len, req.flags)
        })?;
        m.changed(req.ino_out);
        Ok(n as u32)
    }

    /// Tests for a lock conflicting with `lock` for lock owner `owner`; returns the conflicting
    /// lock, or `lock` with type F_UNLCK when there is none. The owner's own locks never
    /// conflict. The holder's pid is reported as 0: a host pid means nothing in the guest.
    pub fn getlk(&self, ino: u64, fh: u64, owner: u64, lock: &Lock) -> Result<Lock, Errno> {
        let h = self.file_handle(fh)?;
        let mut fl = to_flock(lock)?;
        match self.locks.get(ino, owner) {
            Some(o) => locks::test_posix(&o, &mut fl)?,
            // The handle's own description carries no record locks, so every lock is seen.
            None => sys::fcntl_lock(h.file_fd()?, libc::F_OFD_GETLK, &mut fl)?,
        }
        Ok(from_flock(&fl))
    }

    /// Takes, changes or releases a POSIX lock of guest lock owner `owner` (see [`locks`]);
    /// with `sleep`, waits for a conflicting lock to go away (retrying in the calling thread),
    /// otherwise a conflict is EAGAIN. A read-only export refuses write locks with EROFS:
    /// they would keep host writers out.
    pub fn setlk(
        &self,
        ino: u64,
        fh: u64,
        owner: u64,
        lock: &Lock,
        sleep: bool,
    ) -> Result<(), Errno> {
        match self.setlk_start(ino, fh, owner, lock)? {
            Some(wait) if sleep => wait.wait(),
            Some(_) => Err(Errno::EAGAIN),
            None => Ok(()),
        }
    }

    /// Tries a POSIX lock once: `Ok(None)` when done, `Ok(Some(wait))` when it conflicts
    /// (the caller may wait for it off its thread with [`LockWait::wait`]).
    pub fn setlk_start(
        &self,
        ino: u64,
        fh: u64,
        owner: u64,
        lock: &Lock,
    ) -> Result<Option<LockWait>, Errno> {
        let h = self.file_handle(fh)?;
        let fl = to_flock(lock)?;
        if lock.typ == libc::F_WRLCK && self.export.read_only {
            return Err(Errno::EROFS);
        }
        if lock.typ == libc::F_UNLCK {
            // An owner without a file holds no locks here.
            if let Some(o) = self.locks.get(ino, owner) {
                locks::start_posix(o, fl, &self.closed)?;
            }
            return Ok(None);
        }
        let read_only = self.export.read_only;
        let o = self.locks.get_or_open(ino, owner, fh, || {
            // A description of its own, readable and writable where the host allows, so that
            // the owner can take read and write locks through any of its guest descriptors.
            let fd = h.file_fd()?;
            let wanted = if read_only {
                libc::O_RDONLY
            } else {
                libc::O_RDWR
            };
            sys::reopen(self.proc_fd(), fd, wanted | libc::O_NOCTTY).or_else(|_| {
                let mode = sys::access_mode(fd)?;
                sys::reopen(self.proc_fd(), fd, mode | libc::O_NOCTTY)
            })
        })?;
        locks::start_posix(o, fl, &self.closed)
    }

    /// `flock(2)` on the handle's fd: LOCK_SH, LOCK_EX or LOCK_UN, optionally with LOCK_NB.
    /// Without LOCK_NB a conflict is waited for in the calling thread. A read-only export
    /// refuses LOCK_EX with EROFS.
    pub fn flock(&self, ino: u64, fh: u64, owner: u64, op: i32) -> Result<(), Errno> {
        match self.flock_start(ino, fh, owner, op)? {
            Some(wait) if op & libc::LOCK_NB == 0 => wait.wait(),
            Some(_) => Err(Errno::EAGAIN),
            None => Ok(()),
        }
    }

    /// Tries an `flock` once: `Ok(None)` when done, `Ok(Some(wait))` when it conflicts.
    pub fn flock_start(
        &self,
        _ino: u64,
        fh: u64,
        _owner: u64,
        op: i32,
    ) -> Result<Option<LockWait>, Errno> {
        let kind = op & !libc::LOCK_NB;
        if !matches!(kind, libc::LOCK_SH | libc::LOCK_EX | libc::LOCK_UN) {
            return Err(Errno::EINVAL);
        }
        if kind == libc::LOCK_EX && self.export.read_only {
            return Err(Errno::EROFS);
        }
        let h = self.file_handle(fh)?;
        locks::start_flock(h, kind, &self.closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_single_components() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b"] {
            assert_eq!(component(bad).unwrap_err(), Errno::EINVAL, "{bad:?}");
        }
        assert!(component(b"...").is_ok());
        assert!(component(b".hidden").is_ok());
    }
}
