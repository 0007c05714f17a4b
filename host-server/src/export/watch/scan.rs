//! New directories listed: a directory created on the host is watched only once `notify` has
//! seen its creation, so entries made in it before that would be missed; the watcher lists
//! every new directory and reports what it finds, remembering those paths so that a late
//! inotify event for the same object is not reported twice.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_protocol::ChangeKind;
use tracing::warn;

use super::beneath;
use super::coalesce::Raw;

/// Most entries reported from listing one newly created directory tree.
const SCAN_LIMIT: usize = 10_000;

/// Paths reported from listing new directories, so that their own late events are not
/// reported again.
#[derive(Debug, Default)]
pub(super) struct Scanned {
    seen: HashMap<PathBuf, (u64, Instant)>,
}

impl Scanned {
    /// After each created directory, adds what it already holds (recursively); drops creations
    /// that a listing already reported.
    pub(super) fn expand(&mut self, root: BorrowedFd<'_>, changes: Vec<Raw>) -> Vec<Raw> {
        let now = Instant::now();
        self.seen
            .retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(2));
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            match c.kind {
                ChangeKind::Created => {
                    if let Some(&(seen, _)) = self.seen.get(&c.path) {
                        match beneath::stat(root, &c.path) {
                            // The object the listing reported: its own late event.
                            Ok(st) if st.st_ino == seen => continue,
                            // Another object took the name since: a creation of its own.
                            Ok(_) => {}
                            // Gone already, and nothing removed it since the listing (that
                            // would have cleared the path): the listed object's late event.
                            // Reporting it again would make a guest that removed the object
                            // itself (its removal is an echo) replay a creation after it.
                            Err(_) => {
                                self.seen.remove(&c.path);
                                continue;
                            }
                        }
                    }
                }
                // After a removal, a creation of the name is a new object's.
                ChangeKind::Removed | ChangeKind::Renamed => {
                    self.seen.remove(&c.path);
                }
                _ => {}
            }
            let dir = (c.kind == ChangeKind::Created && c.is_dir).then(|| c.path.clone());
            out.push(c);
            if let Some(dir) = dir {
                self.list(root, &dir, &mut out, now);
            }
        }
        out
    }

    fn list(&mut self, root: BorrowedFd<'_>, dir: &Path, out: &mut Vec<Raw>, now: Instant) {
        let mut stack = vec![dir.to_path_buf()];
        let mut n = 0;
        while let Some(d) = stack.pop() {
            // Beneath the root, no symlink followed: a symlink in the new tree is reported as
            // itself and never listed through.
            let Ok(mut entries) = beneath::list(root, &d) else {
                continue;
            };
            // Creation order, as far as the host can tell, rather than directory order.
            entries.sort_by_key(|(_, st)| (st.st_ctime, st.st_ctime_nsec, st.st_ino));
            for (name, st) in entries {
                n += 1;
                if n > SCAN_LIMIT {
                    warn!(
                        "a new directory {} holds over {SCAN_LIMIT} entries; reporting an overflow",
                        d.display()
                    );
                    out.push(Raw::overflow());
                    return;
                }
                let rel = d.join(OsStr::from_bytes(&name));
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                self.seen.insert(rel.clone(), (st.st_ino, now));
                out.push(Raw::new(ChangeKind::Created, rel.clone(), is_dir));
                if is_dir {
                    stack.push(rel);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_entry_s_late_creation_is_reported_once_even_when_gone() {
        use ChangeKind::*;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("new/b")).unwrap();
        let mut scanned = Scanned::default();
        let dir = Raw::new(Created, PathBuf::from("new"), true);
        let kinds = |v: &[Raw]| -> Vec<(ChangeKind, PathBuf)> {
            v.iter().map(|c| (c.kind, c.path.clone())).collect()
        };
        let fd = std::fs::File::open(root.path()).unwrap();
        let fd = std::os::fd::AsFd::as_fd(&fd);
        let out = scanned.expand(fd, vec![dir]);
        assert_eq!(
            kinds(&out),
            [(Created, "new".into()), (Created, "new/b".into())]
        );
        // b was made before the watch on `new` landed, but inotify reports it too, after it
        // was removed again: that late creation is the listed one, not a new object.
        std::fs::remove_dir(root.path().join("new/b")).unwrap();
        let late = vec![
            Raw::new(Created, PathBuf::from("new/b"), true),
            Raw::new(Removed, PathBuf::from("new/b"), true),
        ];
        assert_eq!(
            kinds(&scanned.expand(fd, late)),
            [(Removed, "new/b".into())]
        );
        // After its removal, the name created again is a creation of its own.
        std::fs::write(root.path().join("new/b"), b"").unwrap();
        let again = vec![Raw::new(Created, PathBuf::from("new/b"), false)];
        assert_eq!(
            kinds(&scanned.expand(fd, again)),
            [(Created, "new/b".into())]
        );
    }
}
