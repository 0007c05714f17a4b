//! Directory handles and listings: OPENDIR, READDIR, READDIRPLUS, RELEASEDIR, FSYNCDIR.
//!
//! A listing is budgeted in the bytes its entries take in the kernel's reply
//! ([`ferry_protocol::sizes`]), whichever front door carries it; a directory handle keeps the
//! records its last `getdents64` read ahead (see `handle.rs`).

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use ferry_protocol::sizes::{dirent_size, direntplus_size};
use ferry_protocol::{Attr, Ctx, DirEntry, DirEntryPlus, Entry, Errno, MAX_DATA, Opened};

use super::creds::Over;
use super::handle::{Handle, HandleKind};
use super::{ExportSession, sys};

impl ExportSession {
    /// Opens the directory `ino` for reading.
    pub fn opendir(&self, ctx: &Ctx, ino: u64, _flags: i32) -> Result<Opened, Errno> {
        self.handles.room()?;
        let node = self.dir_node(ino)?;
        // As the caller: a directory it may not read is EACCES.
        let fd = self.as_caller(ctx, &[Over::Node(node.fd())], || {
            sys::reopen(
                self.proc_fd(),
                node.fd(),
                libc::O_RDONLY | libc::O_DIRECTORY,
            )
        })?;
        let fh = self.handles.insert(
            Handle::new(fd, HandleKind::Dir(std::sync::Mutex::default())).pinning(node.pin()),
        );
        Ok(Opened { fh, open_flags: 0 })
    }

    /// Walks the directory handle `fh` from cookie `offset`, calling `emit` for each entry
    /// until it returns `false` (the reply is full) or the directory ends.
    fn walk_dir(
        &self,
        fh: u64,
        offset: u64,
        buf_size: usize,
        mut emit: impl FnMut(BorrowedFd<'_>, sys::RawDirent<'_>) -> Result<bool, Errno>,
    ) -> Result<(), Errno> {
        let h = self.handles.get(fh)?;
        let (fd, mut cursor) = h.lock_dir()?;
        let cur = &mut *cursor;
        // Until this read knows where it stops, the next one must seek.
        let continuing = cur.resume.take() == Some(offset);
        if !continuing {
            let at = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
            sys::lseek(fd, at, libc::SEEK_SET)?;
            (cur.pos, cur.len) = (0, 0);
        }
        if cur.buf.len() < buf_size {
            cur.buf.resize(buf_size, 0);
        }
        // The cookie of the last entry handed out: where the guest's next read starts.
        let mut last = offset;
        loop {
            if cur.pos >= cur.len {
                let n = sys::getdents64(fd, &mut cur.buf)?;
                (cur.pos, cur.len) = (0, n);
                if n == 0 {
                    cur.resume = Some(last);
                    return Ok(());
                }
            }
            let Some((reclen, d)) = sys::parse_dirent(&cur.buf[cur.pos..cur.len]) else {
                // A malformed record: stop here (and seek next time).
                return Ok(());
            };
            let off = d.off;
            if !emit(fd, d)? {
                cur.resume = Some(last);
                return Ok(());
            }
            last = off;
            cur.pos += reclen;
        }
    }

    /// Entries after cookie `offset`, at most `size` bytes' worth in FUSE's encoding. The
    /// inode numbers are the host's (readdir takes no lookups).
    pub fn readdir(
        &self,
        _ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<DirEntry>, Errno> {
        self.gather_dir(fh, offset, size, dirent_size, |_, d| {
            Ok(Some(DirEntry {
                ino: d.ino,
                offset: d.off,
                kind: d.kind,
                name: d.name.to_vec(),
            }))
        })
    }

    /// As [`Self::readdir`], with a lookup of each entry (which the guest must forget).
    /// `.` and `..` are not looked up: their entries carry node id 0.
    pub fn readdirplus(
        &self,
        _ctx: &Ctx,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<DirEntryPlus>, Errno> {
        // The directory's device and each entry's inode number from getdents tell which
        // entries the table may already hold (see `lookup_hinted`).
        let parent = self.inodes.peek(ino)?;
        let dev = Some(parent.dev);
        self.gather_dir(fh, offset, size, direntplus_size, |dirfd, d| {
            let entry = if d.name == b"." || d.name == b".." {
                // No node; the host's inode number for the dirent, as readdir gives it.
                let attr = Attr {
                    ino: d.ino,
                    ..Attr::default()
                };
                Entry {
                    attr,
                    ..Entry::default()
                }
            } else {
                let name = sys::cstring(d.name)?;
                match self.lookup_hinted(dirfd, &parent, &name, dev.map(|dev| (dev, d.ino))) {
                    Ok(entry) => entry,
                    // Removed since getdents saw it: leave it out.
                    Err(Errno::ENOENT) => return Ok(None),
                    Err(e) => return Err(e),
                }
            };
            Ok(Some(DirEntryPlus {
                entry,
                offset: d.off,
                kind: d.kind,
                name: d.name.to_vec(),
            }))
        })
    }

    /// Walks the directory from `offset`, turning entries into `T` with `make` (`None` skips
    /// one) until the next would exceed `size` bytes at `cost(name_len)` each.
    fn gather_dir<T>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        cost: fn(usize) -> usize,
        mut make: impl FnMut(BorrowedFd<'_>, &sys::RawDirent<'_>) -> Result<Option<T>, Errno>,
    ) -> Result<Vec<T>, Errno> {
        let budget = (size as usize).min(MAX_DATA);
        // Read about as many host entries as the reply can hold, not a fixed 32 KiB: every
        // call seeks and reads afresh, and entries read past the budget are read again by the
        // next call (a readdirplus reply of 4 KiB holds some 25 entries, 32 KiB of host
        // entries some 1,000). A host entry takes about 32 bytes for an 8-byte name; a short
        // read just loops.
        let buf_size = (budget * 32 / cost(8)).clamp(1024, 32 * 1024);
        let mut used = 0;
        let mut out = Vec::new();
        let res = self.walk_dir(fh, offset, buf_size, |dirfd, d| {
            let c = cost(d.name.len());
            if used + c > budget {
                return Ok(false);
            }
            if let Some(item) = make(dirfd, &d)? {
                used += c;
                out.push(item);
            }
            Ok(true)
        });
        match res {
            // Entries already gathered are returned (for readdirplus their lookups were taken,
            // so they must reach the guest); the error recurs on the next call.
            Err(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// The handle `fh` as a directory handle.
    fn dir_handle(&self, fh: u64) -> Result<Arc<Handle>, Errno> {
        let h = self.handles.get(fh)?;
        match h.kind {
            HandleKind::Dir(_) => Ok(h),
            HandleKind::File => Err(Errno::EBADF),
        }
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, _ino: u64, fh: u64) -> Result<(), Errno> {
        self.dir_handle(fh)?;
        self.handles.remove(fh).map(drop)
    }

    /// `fsync`/`fdatasync` of a directory handle.
    pub fn fsyncdir(&self, _ino: u64, fh: u64, datasync: bool) -> Result<(), Errno> {
        let h = self.dir_handle(fh)?;
        sys::fsync(h.fd(), datasync)
    }
}
