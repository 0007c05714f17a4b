//! The replay's system calls on the mount. Each change's path is resolved beneath the mount
//! root's descriptor first ([`parent_beneath`]: one `openat2` that follows no symlink and
//! crosses no mount), and the call is then the single-component `*at` call on that parent
//! (each the one syscall, or open and close, whose FUSE requests and inotify events REPLAY.md
//! lists). A host user who swaps a directory the guest knows for a symlink (to `/`, or to any
//! directory of the guest) therefore makes the replay fail, never act outside the mount.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use ferry_protocol::ChangeKind;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, futimens, mkdirat, mknodat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};

/// A change's path as a C string relative to the mount root (`.` for the root).
pub(super) fn relative(path: &[u8]) -> std::io::Result<CString> {
    if path.is_empty() {
        return Ok(c".".to_owned());
    }
    if path.starts_with(b"/")
        || path
            .split(|&b| b == b'/')
            .any(|c| c == b".." || c.is_empty())
    {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    CString::new(path).map_err(|_| std::io::ErrorKind::InvalidInput.into())
}

/// Why a replay's call was not made or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The path's directory does not resolve beneath the mount root without following a
    /// symlink or crossing a mount (or is gone): the replay is skipped, nothing followed.
    Unresolved(Errno),
    /// The call itself failed.
    Call(Errno),
}

impl Failure {
    /// The error, whichever step failed.
    pub(super) fn errno(self) -> Errno {
        match self {
            Failure::Unresolved(e) | Failure::Call(e) => e,
        }
    }

    /// Whether the path met a symlink, a mount or a non-directory where the guest knew a
    /// directory (rather than a directory that is simply gone): worth a warning.
    pub(super) fn crossed(self) -> bool {
        matches!(
            self,
            Failure::Unresolved(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV | Errno::EINVAL)
        )
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unresolved(e) => write!(f, "does not resolve beneath the mount: {e}"),
            Failure::Call(e) => write!(f, "{e}"),
        }
    }
}

impl From<Errno> for Failure {
    fn from(e: Errno) -> Self {
        Failure::Call(e)
    }
}

/// Opens the directory holding `path` (a [`relative`] path) beneath `root` and returns it with
/// the last component. The directory is resolved by the kernel one component at a time with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS`: a symlink
/// anywhere on the way, a `..`, or another filesystem mounted on the way fails with
/// [`Failure::Unresolved`]. `.` (the root) is its own parent's `.`.
pub(super) fn parent_beneath<'p>(
    root: BorrowedFd<'_>,
    path: &'p CStr,
) -> Result<(OwnedFd, &'p CStr), Failure> {
    let bytes = path.to_bytes_with_nul();
    let (dir, name) = match bytes.iter().rposition(|&b| b == b'/') {
        Some(i) => (
            CString::new(&bytes[..i]).map_err(|_| Failure::Unresolved(Errno::EINVAL))?,
            &bytes[i + 1..],
        ),
        None => (c".".to_owned(), bytes),
    };
    let name = CStr::from_bytes_with_nul(name).map_err(|_| Failure::Unresolved(Errno::EINVAL))?;
    if name.is_empty() || name.to_bytes() == b".." {
        return Err(Failure::Unresolved(Errno::EINVAL));
    }
    open_dir_beneath(root, &dir)
        .map(|fd| (fd, name))
        .map_err(Failure::Unresolved)
}

/// `openat2(root, dir, O_PATH | O_DIRECTORY)` confined as [`parent_beneath`] says; on kernels
/// without openat2 (before 5.6), the same rules one component at a time by hand.
fn open_dir_beneath(root: BorrowedFd<'_>, dir: &CStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let how = OpenHow::new().flags(flags).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_XDEV
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    // openat2 answers EAGAIN when a concurrent rename might have let the confinement be
    // bypassed; the kernel asks callers to retry.
    for _ in 0..16 {
        match openat2(root, dir, how) {
            Err(Errno::EAGAIN) => continue,
            Err(Errno::ENOSYS) => return open_dir_by_components(root, dir, flags),
            r => return r,
        }
    }
    Err(Errno::EAGAIN)
}

/// The openat2 rules by hand: each component a plain name, opened with `O_NOFOLLOW` on its
/// parent's descriptor and checked to be on the root's filesystem.
fn open_dir_by_components(root: BorrowedFd<'_>, dir: &CStr, flags: OFlag) -> nix::Result<OwnedFd> {
    let dev = nix::sys::stat::fstat(root)?.st_dev;
    let mut cur = openat(root, c".", flags, Mode::empty())?;
    for comp in dir.to_bytes().split(|&b| b == b'/') {
        if comp.is_empty() || comp == b"." {
            continue;
        }
        if comp == b".." {
            return Err(Errno::EXDEV);
        }
        let name = CString::new(comp).map_err(|_| Errno::EINVAL)?;
        let next = openat(cur.as_fd(), name.as_c_str(), flags, Mode::empty())?;
        if nix::sys::stat::fstat(&next)?.st_dev != dev {
            return Err(Errno::EXDEV);
        }
        cur = next;
    }
    Ok(cur)
}

/// `mknod`/`mkdir`/`symlink` by type: one IN_CREATE, no fd.
pub(super) fn create(root: BorrowedFd<'_>, p: &CStr, ft: u32) -> Result<(), Failure> {
    let (dir, name) = parent_beneath(root, p)?;
    let dir = dir.as_fd();
    let perm = Mode::from_bits_truncate(0o644);
    Ok(match ft {
        libc::S_IFDIR => mkdirat(dir, name, Mode::from_bits_truncate(0o755)),
        libc::S_IFLNK => symlinkat(c"ferry-replay", dir, name),
        libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK => {
            mknodat(dir, name, SFlag::from_bits_truncate(ft), perm, 0)
        }
        _ => mknodat(dir, name, SFlag::S_IFREG, perm, 0),
    }?)
}

/// `unlink` or `rmdir`: IN_DELETE.
pub(super) fn remove(root: BorrowedFd<'_>, p: &CStr, ft: u32) -> Result<(), Failure> {
    let (dir, name) = parent_beneath(root, p)?;
    let dir = dir.as_fd();
    let (first, other) = if ft == libc::S_IFDIR {
        (UnlinkatFlags::RemoveDir, UnlinkatFlags::NoRemoveDir)
    } else {
        (UnlinkatFlags::NoRemoveDir, UnlinkatFlags::RemoveDir)
    };
    Ok(match unlinkat(dir, name, first) {
        // The guest knew it as the other kind.
        Err(Errno::EISDIR | Errno::ENOTDIR) => unlinkat(dir, name, other),
        r => r,
    }?)
}

/// `rename`: IN_MOVED_FROM and IN_MOVED_TO with one cookie.
pub(super) fn rename(root: BorrowedFd<'_>, from: &CStr, to: &CStr) -> Result<(), Failure> {
    let (from_dir, from_name) = parent_beneath(root, from)?;
    let (to_dir, to_name) = parent_beneath(root, to)?;
    Ok(renameat(
        from_dir.as_fd(),
        from_name,
        to_dir.as_fd(),
        to_name,
    )?)
}

/// A data or attribute change:
/// - `Data`: `utimensat(mtime = now)` → IN_MODIFY;
/// - `DataClosed`: open for writing, `futimens(mtime = now)`, close → IN_MODIFY, IN_CLOSE_WRITE
///   (IN_MODIFY alone when the file cannot be opened for writing, e.g. a running program);
/// - `Closed`: open for writing and close → IN_CLOSE_WRITE;
/// - `Attrib`: `utimensat(now, now)` → IN_ATTRIB.
pub(super) fn touch(
    root: BorrowedFd<'_>,
    p: &CStr,
    kind: ChangeKind,
    ft: u32,
) -> Result<(), Failure> {
    let (dir, name) = parent_beneath(root, p)?;
    let dir = dir.as_fd();
    const OMIT: TimeSpec = TimeSpec::UTIME_OMIT;
    const NOW: TimeSpec = TimeSpec::UTIME_NOW;
    let utimes = |atime, mtime| utimensat(dir, name, atime, mtime, UtimensatFlags::NoFollowSymlink);
    Ok(match kind {
        ChangeKind::Attrib => utimes(&NOW, &NOW),
        ChangeKind::Data => utimes(&OMIT, &NOW),
        // A data change without a known type (the file moved on since) is a file's.
        ChangeKind::DataClosed | ChangeKind::Closed if ft == libc::S_IFREG || ft == 0 => {
            let flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
            let fd = match openat(dir, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(_) if kind == ChangeKind::DataClosed => return Ok(utimes(&OMIT, &NOW)?),
                Err(e) => return Err(e.into()),
            };
            let r = if kind == ChangeKind::DataClosed {
                futimens(&fd, &OMIT, &NOW)
            } else {
                Ok(())
            };
            // The close raises IN_CLOSE_WRITE.
            drop(fd);
            r
        }
        ChangeKind::DataClosed => utimes(&OMIT, &NOW),
        _ => Ok(()),
    }?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_paths_stay_below_the_mount() {
        assert_eq!(relative(b"").unwrap().as_bytes(), b".");
        assert_eq!(relative(b"a/b").unwrap().as_bytes(), b"a/b");
        let bad: [&[u8]; 6] = [
            b"/etc",
            b"a/../../x",
            b"..",
            b"a//b",
            b"a/",
            &[b'a', 0, b'b'],
        ];
        for p in bad {
            assert!(relative(p).is_err(), "{:?}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn syscalls_act_below_the_root_descriptor() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        use std::path::Path;
        use std::time::{Duration, SystemTime};

        let dir = tempfile::tempdir().unwrap();
        let root = nix::fcntl::open(
            dir.path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let root = root.as_fd();
        let path = |p: &str| dir.path().join(p);
        let c = |p: &str| relative(p.as_bytes()).unwrap();
        let kind = |p: &str| std::fs::symlink_metadata(path(p)).unwrap().file_type();

        create(root, &c("f"), libc::S_IFREG).unwrap();
        create(root, &c("unknown"), 0).unwrap();
        create(root, &c("d"), libc::S_IFDIR).unwrap();
        create(root, &c("l"), libc::S_IFLNK).unwrap();
        create(root, &c("p"), libc::S_IFIFO).unwrap();
        assert!(kind("f").is_file() && kind("unknown").is_file());
        assert!(kind("d").is_dir() && kind("p").is_fifo());
        assert_eq!(
            std::fs::read_link(path("l")).unwrap(),
            Path::new("ferry-replay")
        );
        assert_eq!(
            create(root, &c("f"), libc::S_IFREG),
            Err(Failure::Call(Errno::EEXIST))
        );

        // Data and attribute changes touch the times, never the bytes.
        std::fs::write(path("f"), b"host bytes").unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for change in [ChangeKind::Data, ChangeKind::DataClosed, ChangeKind::Attrib] {
            std::fs::File::options()
                .write(true)
                .open(path("f"))
                .unwrap()
                .set_modified(old)
                .unwrap();
            touch(root, &c("f"), change, libc::S_IFREG).unwrap();
            let md = std::fs::metadata(path("f")).unwrap();
            assert!(md.modified().unwrap() > old, "{change:?}");
        }
        touch(root, &c("f"), ChangeKind::Closed, 0).unwrap();
        assert_eq!(std::fs::read(path("f")).unwrap(), b"host bytes");
        // utimensat does not follow a symlink.
        let target_mtime = std::fs::metadata(path("d")).unwrap().mtime();
        touch(root, &c("l"), ChangeKind::Attrib, libc::S_IFLNK).unwrap();
        assert_eq!(std::fs::metadata(path("d")).unwrap().mtime(), target_mtime);

        rename(root, &c("f"), &c("d/g")).unwrap();
        assert!(kind("d/g").is_file());
        // Removed by the type the change says, or else by the other one.
        remove(root, &c("d/g"), libc::S_IFDIR).unwrap();
        remove(root, &c("d"), libc::S_IFREG).unwrap();
        remove(root, &c("p"), libc::S_IFIFO).unwrap();
        assert!(!path("d").exists() && !path("p").exists());
        assert_eq!(remove(root, &c("p"), 0), Err(Failure::Call(Errno::ENOENT)));
    }

    #[test]
    fn a_symlinked_directory_is_never_followed() {
        use std::os::unix::fs::symlink;

        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), b"keep").unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/victim"), b"mine").unwrap();
        symlink(outside.path(), dir.path().join("swapped")).unwrap();
        symlink(outside.path(), dir.path().join("real/deeper")).unwrap();
        let root = nix::fcntl::open(
            dir.path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let root = root.as_fd();
        let c = |p: &str| relative(p.as_bytes()).unwrap();
        // ELOOP or ENOTDIR, by where the symlink is: never followed either way.
        let unresolved =
            |r: Result<(), Failure>| r.is_err_and(|f| matches!(f, Failure::Unresolved(_)));
        for p in ["swapped/victim", "real/deeper/victim"] {
            assert!(unresolved(remove(root, &c(p), libc::S_IFREG)), "{p}");
            assert!(unresolved(create(root, &c(&format!("{p}2")), 0)), "{p}");
            assert!(unresolved(touch(root, &c(p), ChangeKind::Data, 0)), "{p}");
            assert!(unresolved(rename(root, &c("real/victim"), &c(p))), "{p}");
            assert!(unresolved(rename(root, &c(p), &c("real/moved"))), "{p}");
        }
        assert_eq!(
            std::fs::read(outside.path().join("victim")).unwrap(),
            b"keep"
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
        assert_eq!(
            std::fs::read(dir.path().join("real/victim")).unwrap(),
            b"mine"
        );
        // The parent itself resolves; the last component is acted on as itself.
        let deeper = c("real/deeper");
        let (_, name) = parent_beneath(root, &deeper).unwrap();
        assert_eq!(name.to_bytes(), b"deeper");
        remove(root, &c("real/deeper"), libc::S_IFDIR).unwrap();
        assert!(outside.path().join("victim").exists());
    }
}
