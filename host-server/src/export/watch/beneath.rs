//! Every path the watcher touches, resolved beneath the export root's descriptor one component
//! at a time without following a symlink (`sys::open_beneath` on each component, `fstatat` with
//! `AT_SYMLINK_NOFOLLOW` on the parent's descriptor for the last one). A path that a host or
//! guest swapped for a symlink, to `/` or anywhere else, fails to resolve (ELOOP or ENOTDIR)
//! instead of leading the watcher outside the export.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use ferry_protocol::Errno;

use crate::export::sys;

/// The components of `rel` as C strings; anything but plain names (`..`, `/`) is refused.
fn components(rel: &Path) -> Result<Vec<CString>, Errno> {
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => sys::cstring(n.as_bytes()),
            Component::CurDir => Ok(c".".to_owned()),
            _ => Err(Errno::EINVAL),
        })
        .collect()
}

/// Opens the directory at `rel` (empty: the root itself) beneath `root` with `flags` (which
/// should hold `O_DIRECTORY`): every component a directory, none a symlink.
pub(crate) fn open_dir(
    root: BorrowedFd<'_>,
    rel: &Path,
    flags: libc::c_int,
) -> Result<OwnedFd, Errno> {
    let comps = components(rel)?;
    let Some((last, dirs)) = comps.split_last() else {
        return sys::open_beneath(root, c".", flags, 0);
    };
    let mut dir: Option<OwnedFd> = None;
    for c in dirs {
        let base = dir.as_ref().map_or(root, |d| d.as_fd());
        dir = Some(sys::open_beneath(
            base,
            c,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?);
    }
    let base = dir.as_ref().map_or(root, |d| d.as_fd());
    sys::open_beneath(base, last, flags, 0)
}

/// `stat` of the object at `rel` beneath `root`, never following a symlink in any component
/// (a final symlink is described as itself).
pub(crate) fn stat(root: BorrowedFd<'_>, rel: &Path) -> Result<libc::stat, Errno> {
    let Some(name) = rel.file_name() else {
        if rel.as_os_str().is_empty() {
            return sys::fstat(root);
        }
        return Err(Errno::EINVAL);
    };
    let parent = open_dir(
        root,
        rel.parent().unwrap_or(Path::new("")),
        libc::O_PATH | libc::O_DIRECTORY,
    )?;
    sys::fstatat_nofollow(parent.as_fd(), &sys::cstring(name.as_bytes())?)
}

/// The entries of the directory at `rel` beneath `root` (not `.` and `..`), each with its
/// `stat` taken on the directory's own descriptor without following a symlink. Entries that
/// vanish while being listed are left out.
pub(crate) fn list(root: BorrowedFd<'_>, rel: &Path) -> Result<Vec<(Vec<u8>, libc::stat)>, Errno> {
    let dir = open_dir(root, rel, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = sys::getdents64(dir.as_fd(), &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        let mut rest = &buf[..n];
        while let Some((reclen, d)) = sys::parse_dirent(rest) {
            rest = &rest[reclen..];
            if d.name == b"." || d.name == b".." {
                continue;
            }
            let Ok(name) = sys::cstring(d.name) else {
                continue;
            };
            if let Ok(st) = sys::fstatat_nofollow(dir.as_fd(), &name) {
                out.push((d.name.to_vec(), st));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_in_any_component_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("a/out")).unwrap();
        std::os::unix::fs::symlink("/", t.path().join("root")).unwrap();
        let root = sys::open_path(
            &sys::cstring(t.path().as_os_str().as_bytes()).unwrap(),
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .unwrap();
        let root = root.as_fd();
        assert!(stat(root, Path::new("a/b")).is_ok());
        assert!(stat(root, Path::new("")).is_ok());
        // The final symlink is described as itself; one in the middle is not crossed.
        let st = stat(root, Path::new("a/out")).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
        assert!(stat(root, Path::new("a/out/secret")).is_err());
        assert!(stat(root, Path::new("root/etc")).is_err());
        assert!(stat(root, Path::new("a/../../x")).is_err());
        assert!(open_dir(root, Path::new("root"), libc::O_RDONLY | libc::O_DIRECTORY).is_err());
        assert!(list(root, Path::new("a/out")).is_err());
        let mut names: Vec<_> = list(root, Path::new("a"))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        names.sort();
        assert_eq!(names, [b"b".to_vec(), b"out".to_vec()]);
    }
}
