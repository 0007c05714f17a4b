//! The replay's system calls on the mount, relative to the mount root's descriptor (each the
//! one syscall, or open and close, whose FUSE requests and inotify events REPLAY.md lists).

use std::ffi::{CStr, CString};
use std::os::fd::BorrowedFd;

use ferry_protocol::ChangeKind;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
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

/// `mknod`/`mkdir`/`symlink` by type: one IN_CREATE, no fd.
pub(super) fn create(root: BorrowedFd<'_>, p: &CStr, ft: u32) -> nix::Result<()> {
    let perm = Mode::from_bits_truncate(0o644);
    match ft {
        libc::S_IFDIR => mkdirat(root, p, Mode::from_bits_truncate(0o755)),
        libc::S_IFLNK => symlinkat(c"ferry-replay", root, p),
        libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK => {
            mknodat(root, p, SFlag::from_bits_truncate(ft), perm, 0)
        }
        _ => mknodat(root, p, SFlag::S_IFREG, perm, 0),
    }
}

/// `unlink` or `rmdir`: IN_DELETE.
pub(super) fn remove(root: BorrowedFd<'_>, p: &CStr, ft: u32) -> nix::Result<()> {
    let (first, other) = if ft == libc::S_IFDIR {
        (UnlinkatFlags::RemoveDir, UnlinkatFlags::NoRemoveDir)
    } else {
        (UnlinkatFlags::NoRemoveDir, UnlinkatFlags::RemoveDir)
    };
    match unlinkat(root, p, first) {
        // The guest knew it as the other kind.
        Err(Errno::EISDIR | Errno::ENOTDIR) => unlinkat(root, p, other),
        r => r,
    }
}

/// `rename`: IN_MOVED_FROM and IN_MOVED_TO with one cookie.
pub(super) fn rename(root: BorrowedFd<'_>, from: &CStr, to: &CStr) -> nix::Result<()> {
    renameat(root, from, root, to)
}

/// A data or attribute change:
/// - `Data`: `utimensat(mtime = now)` → IN_MODIFY;
/// - `DataClosed`: open for writing, `futimens(mtime = now)`, close → IN_MODIFY, IN_CLOSE_WRITE
///   (IN_MODIFY alone when the file cannot be opened for writing, e.g. a running program);
/// - `Closed`: open for writing and close → IN_CLOSE_WRITE;
/// - `Attrib`: `utimensat(now, now)` → IN_ATTRIB.
pub(super) fn touch(root: BorrowedFd<'_>, p: &CStr, kind: ChangeKind, ft: u32) -> nix::Result<()> {
    const OMIT: TimeSpec = TimeSpec::UTIME_OMIT;
    const NOW: TimeSpec = TimeSpec::UTIME_NOW;
    let utimes = |atime, mtime| utimensat(root, p, atime, mtime, UtimensatFlags::NoFollowSymlink);
    match kind {
        ChangeKind::Attrib => utimes(&NOW, &NOW),
        ChangeKind::Data => utimes(&OMIT, &NOW),
        // A data change without a known type (the file moved on since) is a file's.
        ChangeKind::DataClosed | ChangeKind::Closed if ft == libc::S_IFREG || ft == 0 => {
            let flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
            let fd = match openat(root, p, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(_) if kind == ChangeKind::DataClosed => return utimes(&OMIT, &NOW),
                Err(e) => return Err(e),
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
    }
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
        assert_eq!(create(root, &c("f"), libc::S_IFREG), Err(Errno::EEXIST));

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
        assert_eq!(remove(root, &c("p"), 0), Err(Errno::ENOENT));
    }
}
