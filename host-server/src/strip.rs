//! `strip-owners`: removes every persisted-owner record (`user.ferry.owner`) from a host tree.
//!
//! The walk never follows a symlink (every directory is opened relative to its parent with the
//! export core's `open_beneath`, which refuses symlinks, and a record is removed by a call that
//! does not follow its last component) and never leaves the filesystem it starts on (a
//! directory on another device is skipped, as `find -xdev` does). Only regular files and directories can carry the xattr.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ferry_protocol::Errno;

use crate::export::{OWNER_XATTR, sys};

/// What a walk did.
#[derive(Debug, Default)]
pub struct StripReport {
    /// Files and directories looked at.
    pub scanned: u64,
    /// Owner records removed.
    pub removed: u64,
    /// Directories not entered because they are on another filesystem.
    pub other_filesystems: u64,
    /// Objects that could not be read or changed, with the reason.
    pub errors: Vec<(PathBuf, std::io::Error)>,
}

/// The export core's wrappers answer an [`Errno`]; the walk reports `std::io::Error`s.
fn io_error(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.0)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<libc::stat> {
    sys::fstatat_nofollow(dir, name).map_err(io_error)
}

/// Opens the directory `name` in `dir` for reading, never through a symlink.
fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<OwnedFd> {
    sys::open_beneath(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(io_error)
}

/// Removes the record of `name` in `dir` (a file or directory); whether there was one.
fn remove_record(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<bool> {
    // `/proc/self/fd/N/NAME` with the l-variant: the last component is never followed.
    let mut path = sys::proc_path(dir).into_bytes();
    path.push(b'/');
    path.extend_from_slice(name.to_bytes());
    let path = CString::new(path).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    match sys::lremovexattr(&path, OWNER_XATTR) {
        Ok(()) => Ok(true),
        Err(Errno::ENODATA | Errno::EOPNOTSUPP) => Ok(false),
        Err(e) => Err(io_error(e)),
    }
}

/// Removes every owner record under `root` (itself included). `root` may be reached through
/// symlinks (the operator named it); nothing below it is.
pub fn strip_owners(root: &Path) -> std::io::Result<StripReport> {
    let croot = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    let root_fd = sys::open_path(&croot, libc::O_PATH).map_err(io_error)?;
    let st = sys::fstat(root_fd.as_fd()).map_err(io_error)?;
    let mut report = StripReport::default();
    report.scanned += 1;
    // The root itself, through its own fd.
    if sys::removexattr(&sys::proc_path(root_fd.as_fd()), OWNER_XATTR).is_ok() {
        report.removed += 1;
    }
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let dir = open_dir_at(root_fd.as_fd(), c".")?;
        walk(dir, st.st_dev, root.to_path_buf(), &mut report);
    }
    Ok(report)
}

/// `strip-owners PATH` for the command lines: strips and prints what it did; an error when
/// anything could not be cleaned.
pub fn run_strip_owners(path: &Path) -> anyhow::Result<()> {
    let report = strip_owners(path)
        .map_err(|e| anyhow::anyhow!("cannot strip owners under {}: {e}", path.display()))?;
    println!(
        "removed {} kept owner(s) from {} file(s) and directories under {}",
        report.removed,
        report.scanned,
        path.display()
    );
    if report.other_filesystems > 0 {
        println!(
            "skipped {} director{} on other filesystems",
            report.other_filesystems,
            if report.other_filesystems == 1 {
                "y"
            } else {
                "ies"
            }
        );
    }
    for (p, e) in &report.errors {
        eprintln!("{}: {e}", p.display());
    }
    anyhow::ensure!(
        report.errors.is_empty(),
        "{} object(s) could not be read or cleaned",
        report.errors.len()
    );
    Ok(())
}

fn walk(dir: OwnedFd, dev: u64, path: PathBuf, report: &mut StripReport) {
    // Read all names first, through a duplicate that the stream owns and closes: recursing
    // then keeps one descriptor per level open, not a directory stream.
    let mut names: Vec<CString> = Vec::new();
    let stream = dir
        .try_clone()
        .and_then(|d| nix::dir::Dir::from_fd(d).map_err(std::io::Error::from));
    match stream {
        Ok(mut entries) => {
            for e in entries.iter() {
                match e {
                    Ok(e) => {
                        let n = e.file_name();
                        if n != c"." && n != c".." {
                            names.push(n.to_owned());
                        }
                    }
                    Err(e) => report.errors.push((path.clone(), std::io::Error::from(e))),
                }
            }
        }
        Err(e) => {
            report.errors.push((path, e));
            return;
        }
    }
    for name in names {
        let child = path.join(OsStr::from_bytes(name.to_bytes()));
        let st = match lstat_at(dir.as_fd(), &name) {
            Ok(st) => st,
            Err(e) => {
                report.errors.push((child, e));
                continue;
            }
        };
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFREG && kind != libc::S_IFDIR {
            continue;
        }
        if st.st_dev != dev {
            report.other_filesystems += 1;
            continue;
        }
        report.scanned += 1;
        match remove_record(dir.as_fd(), &name) {
            Ok(true) => report.removed += 1,
            Ok(false) => {}
            Err(e) => report.errors.push((child.clone(), e)),
        }
        if kind == libc::S_IFDIR {
            match open_dir_at(dir.as_fd(), &name) {
                Ok(sub) => walk(sub, dev, child, report),
                Err(e) => report.errors.push((child, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn set(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        sys::setxattr(&c, OWNER_XATTR, b"1:2:100644:100644", 0)
            .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    }

    fn has(path: &Path) -> bool {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // An empty buffer asks for the size.
        sys::getxattr(&c, OWNER_XATTR, &mut []).is_ok()
    }

    #[test]
    fn strips_a_tree_without_following_symlinks() {
        let tree = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let t = tree.path();
        std::fs::create_dir_all(t.join("a/b/c")).unwrap();
        std::fs::write(t.join("a/f"), b"x").unwrap();
        std::fs::write(t.join("a/b/c/g"), b"y").unwrap();
        std::fs::write(outside.path().join("o"), b"z").unwrap();
        symlink(outside.path(), t.join("a/link")).unwrap();
        for p in ["", "a", "a/f", "a/b", "a/b/c/g"] {
            set(&t.join(p));
        }
        set(&outside.path().join("o"));
        let report = strip_owners(t).unwrap();
        assert_eq!(report.removed, 5, "{report:?}");
        assert!(report.errors.is_empty(), "{report:?}");
        assert_eq!(
            report.scanned, 6,
            "root, a, a/f, a/b, a/b/c, a/b/c/g: {report:?}"
        );
        for p in ["", "a", "a/f", "a/b", "a/b/c/g"] {
            assert!(!has(&t.join(p)), "{p}");
        }
        assert!(
            has(&outside.path().join("o")),
            "the symlink was not followed"
        );
        // A second run finds nothing left.
        assert_eq!(strip_owners(t).unwrap().removed, 0);
    }
}
