//! The replay's system calls on the mount, relative to the mount root's descriptor.

use std::ffi::{CStr, CString};

use ferry_protocol::ChangeKind;

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

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `mknod`/`mkdir`/`symlink` by type: one IN_CREATE, no fd.
pub(super) fn create(root: libc::c_int, p: &CStr, ft: u32) -> std::io::Result<()> {
    let r = match ft {
        // SAFETY: `root` is an open fd and `p` a valid NUL-terminated string.
        libc::S_IFDIR => unsafe { libc::mkdirat(root, p.as_ptr(), 0o755) },
        // SAFETY: as above; the target is a literal C string.
        libc::S_IFLNK => unsafe { libc::symlinkat(c"ferry-replay".as_ptr(), root, p.as_ptr()) },
        libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK => {
            // SAFETY: as above.
            unsafe { libc::mknodat(root, p.as_ptr(), ft | 0o644, 0) }
        }
        // SAFETY: as above.
        _ => unsafe { libc::mknodat(root, p.as_ptr(), libc::S_IFREG | 0o644, 0) },
    };
    check(r)
}

/// `unlink` or `rmdir`: IN_DELETE.
pub(super) fn remove(root: libc::c_int, p: &CStr, ft: u32) -> std::io::Result<()> {
    let unlink = |flags| {
        // SAFETY: `root` is an open fd and `p` a valid NUL-terminated string.
        check(unsafe { libc::unlinkat(root, p.as_ptr(), flags) })
    };
    let first = if ft == libc::S_IFDIR {
        libc::AT_REMOVEDIR
    } else {
        0
    };
    match unlink(first) {
        // The guest knew it as the other kind.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR | libc::ENOTDIR)) => {
            unlink(first ^ libc::AT_REMOVEDIR)
        }
        r => r,
    }
}

/// `rename`: IN_MOVED_FROM and IN_MOVED_TO with one cookie.
pub(super) fn rename(root: libc::c_int, from: &CStr, to: &CStr) -> std::io::Result<()> {
    // SAFETY: `root` is an open fd; both paths are valid NUL-terminated strings.
    check(unsafe { libc::renameat(root, from.as_ptr(), root, to.as_ptr()) })
}

const OMIT: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_OMIT,
};
const NOW: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_NOW,
};

/// A data or attribute change:
/// - `Data`: `utimensat(mtime = now)` → IN_MODIFY;
/// - `DataClosed`: open for writing, `futimens(mtime = now)`, close → IN_MODIFY, IN_CLOSE_WRITE
///   (IN_MODIFY alone when the file cannot be opened for writing, e.g. a running program);
/// - `Closed`: open for writing and close → IN_CLOSE_WRITE;
/// - `Attrib`: `utimensat(now, now)` → IN_ATTRIB.
pub(super) fn touch(root: libc::c_int, p: &CStr, kind: ChangeKind, ft: u32) -> std::io::Result<()> {
    let utimes = |times: [libc::timespec; 2]| {
        // SAFETY: `root` is open, `p` a valid string, `times` a live array of two timespecs.
        check(unsafe {
            libc::utimensat(root, p.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
        })
    };
    let open_write = || -> std::io::Result<libc::c_int> {
        // SAFETY: `root` is open and `p` a valid string.
        let fd = unsafe {
            libc::openat(
                root,
                p.as_ptr(),
                libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(fd)
        }
    };
    match kind {
        ChangeKind::Attrib => utimes([NOW, NOW]),
        ChangeKind::Data => utimes([OMIT, NOW]),
        // A data change without a known type (the file moved on since) is a file's.
        ChangeKind::DataClosed | ChangeKind::Closed if ft == libc::S_IFREG || ft == 0 => {
            let fd = match open_write() {
                Ok(fd) => fd,
                Err(_) if kind == ChangeKind::DataClosed => return utimes([OMIT, NOW]),
                Err(e) => return Err(e),
            };
            let mut r = Ok(());
            if kind == ChangeKind::DataClosed {
                let times = [OMIT, NOW];
                // SAFETY: `fd` is open; `times` is a live array of two timespecs.
                r = check(unsafe { libc::futimens(fd, times.as_ptr()) });
            }
            // SAFETY: `fd` is open and owned here.
            unsafe { libc::close(fd) };
            r
        }
        ChangeKind::DataClosed => utimes([OMIT, NOW]),
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
}
