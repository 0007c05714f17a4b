//! From `notify` events to raw changes: rename halves paired into one rename (or, unpaired, a
//! creation or a removal), events guests cannot see (opens, reads) dropped, and repeats of the
//! same change to one path within a burst merged, keeping the order of each path's changes.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_protocol::ChangeKind;
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RemoveKind};
use notify::event::{Flag, RenameMode};
use tracing::error;

/// How long the first half of a rename waits for its second half before it counts as a move
/// out of the export.
pub(super) const RENAME_WAIT: Duration = Duration::from_millis(20);

/// A change before it is resolved for a session; paths are relative to the export root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Raw {
    pub(crate) kind: ChangeKind,
    pub(crate) path: PathBuf,
    pub(crate) to: Option<PathBuf>,
    pub(crate) is_dir: bool,
}

impl Raw {
    pub(crate) fn new(kind: ChangeKind, path: PathBuf, is_dir: bool) -> Self {
        Raw {
            kind,
            path,
            to: None,
            is_dir,
        }
    }

    pub(super) fn overflow() -> Self {
        Raw::new(ChangeKind::Overflow, PathBuf::new(), false)
    }
}

/// Whether a rename's first half is still waiting for its second after `ev`, given whether
/// one was before it.
pub(super) fn rename_pending_after(pending: bool, ev: &notify::Result<notify::Event>) -> bool {
    match ev {
        Ok(ev) => match ev.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                pending || ev.attrs.tracker().is_some()
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => false,
            _ => pending,
        },
        Err(_) => pending,
    }
}

/// Turns one `notify` event into the change it makes, if any, pushed onto `out`, pairing
/// rename halves through `held`. `root` is the export's path (the events' prefix), `root_fd`
/// its descriptor, beneath which every path is looked at.
pub(super) fn event_to_changes(
    root: &Path,
    root_fd: BorrowedFd<'_>,
    ev: notify::Event,
    held: &mut Option<(usize, PathBuf)>,
    out: &mut Vec<Raw>,
) {
    if ev.flag() == Some(Flag::Rescan) {
        out.push(Raw::overflow());
        return;
    }
    let rel = |p: &Path| -> Option<PathBuf> { p.strip_prefix(root).ok().map(Path::to_path_buf) };
    let Some(path) = ev.paths.first().and_then(|p| rel(p)) else {
        return;
    };
    let push = |out: &mut Vec<Raw>, kind, is_dir| out.push(Raw::new(kind, path.clone(), is_dir));
    match ev.kind {
        EventKind::Create(k) => push(out, ChangeKind::Created, k == CreateKind::Folder),
        EventKind::Remove(k) => {
            if path.as_os_str().is_empty() {
                error!(
                    "the exported directory {} itself was removed",
                    root.display()
                );
                return;
            }
            // A directory's own watch repeats the removal its parent reported.
            let dup = out
                .last()
                .is_some_and(|l| l.kind == ChangeKind::Removed && l.path == path && l.is_dir);
            if !dup {
                push(out, ChangeKind::Removed, k == RemoveKind::Folder);
            }
        }
        EventKind::Modify(ModifyKind::Data(_)) => push(out, ChangeKind::Data, false),
        EventKind::Modify(ModifyKind::Metadata(_)) => push(out, ChangeKind::Attrib, false),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            push(out, ChangeKind::Closed, false)
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
            // Without a cookie this is the directory's own MOVE_SELF: its parent reports it.
            if let Some(t) = ev.attrs.tracker() {
                if let Some((_, old)) = held.replace((t, path)) {
                    out.push(Raw::new(ChangeKind::Removed, old, false));
                }
            }
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            let paired = matches!((&*held, ev.attrs.tracker()), (Some((t, _)), Some(u)) if *t == u);
            if !paired {
                // Moved in from outside the export.
                push(out, ChangeKind::Created, false);
            }
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let Some(to) = ev.paths.get(1).and_then(|p| rel(p)) else {
                return;
            };
            *held = None;
            let is_dir = super::beneath::stat(root_fd, &to)
                .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
            out.push(Raw {
                kind: ChangeKind::Renamed,
                path,
                to: Some(to),
                is_dir,
            });
        }
        _ => {}
    }
}

/// Merges repeats within a burst while keeping, for each path, the order of its changes:
/// a write followed by its close becomes one `DataClosed`, repeated writes or attribute
/// changes of one path with nothing structural on that path (or above it) in between become
/// one. A structural change elsewhere does not separate them: replaying two writes of one file
/// as one, before another file's creation, shows a watcher nothing a local disk would not.
pub(crate) fn coalesce(changes: Vec<Raw>) -> Vec<Raw> {
    let mut out: Vec<Raw> = Vec::with_capacity(changes.len());
    // Path → index in `out` of its latest content change since the last structural change to
    // it or to a directory above it.
    let mut last: HashMap<PathBuf, usize> = HashMap::new();
    let forget = |last: &mut HashMap<PathBuf, usize>, p: &Path| {
        last.retain(|q, _| !q.starts_with(p));
    };
    for c in changes {
        match c.kind {
            ChangeKind::Data | ChangeKind::Closed | ChangeKind::Attrib | ChangeKind::DataClosed => {
                if let Some(&i) = last.get(&c.path) {
                    let merged = match (out[i].kind, c.kind) {
                        (ChangeKind::Data, ChangeKind::Data) => Some(ChangeKind::Data),
                        (ChangeKind::Data, ChangeKind::Closed) => Some(ChangeKind::DataClosed),
                        (ChangeKind::Attrib, ChangeKind::Attrib) => Some(ChangeKind::Attrib),
                        (ChangeKind::DataClosed, ChangeKind::Closed) => {
                            Some(ChangeKind::DataClosed)
                        }
                        (ChangeKind::Closed, ChangeKind::Closed) => Some(ChangeKind::Closed),
                        _ => None,
                    };
                    // `last` holds the path's latest change, so it may absorb the new one.
                    if let Some(kind) = merged {
                        out[i].kind = kind;
                        continue;
                    }
                }
                last.insert(c.path.clone(), out.len());
                out.push(c);
            }
            ChangeKind::Created | ChangeKind::Removed | ChangeKind::Renamed => {
                forget(&mut last, &c.path);
                if let Some(to) = &c.to {
                    forget(&mut last, to);
                }
                out.push(c);
            }
            ChangeKind::Overflow => {
                last.clear();
                out.push(c);
            }
        }
    }
    out
}

/// Collapses what happens inside directories created within the burst into their creation,
/// as a native recursive watcher sees a burst: it hears of the new directory and lists it
/// itself (inotifywait -r, chokidar, watchman and fsnotify users all do), so the entries made
/// in it, their writes and attribute changes, and entries made and removed again in it are
/// not reported one by one. A rename out of a new directory becomes a creation at its target
/// (the guest never knew the source); a rename into one from outside stays a rename, so the
/// guest hears the old name go. A new directory renamed within the burst stays new under its
/// new name; one removed stops being new.
///
/// Nothing cached in the guest goes stale: a directory new on the host has nothing cached
/// under it, and a guest entry cached for its name before the creation reached the guest is
/// revalidated by the replayed creation, which drops what hangs below it.
pub(crate) fn collapse(changes: Vec<Raw>) -> Vec<Raw> {
    let mut new_dirs: Vec<PathBuf> = Vec::new();
    let inside = |dirs: &[PathBuf], p: &Path| dirs.iter().any(|d| p != d && p.starts_with(d));
    let mut out = Vec::with_capacity(changes.len());
    for mut c in changes {
        let from_new = inside(&new_dirs, &c.path);
        match c.kind {
            ChangeKind::Overflow => {
                new_dirs.clear();
                out.push(c);
            }
            ChangeKind::Created => {
                if from_new {
                    continue;
                }
                if c.is_dir {
                    new_dirs.push(c.path.clone());
                }
                out.push(c);
            }
            ChangeKind::Data | ChangeKind::Closed | ChangeKind::DataClosed | ChangeKind::Attrib => {
                if !from_new {
                    out.push(c);
                }
            }
            ChangeKind::Removed => {
                new_dirs.retain(|d| !d.starts_with(&c.path));
                if !from_new {
                    out.push(c);
                }
            }
            ChangeKind::Renamed => {
                let Some(to) = c.to.clone() else {
                    out.push(c);
                    continue;
                };
                let to_new = inside(&new_dirs, &to);
                // New directories moved along with it (or it itself) stay new at the target.
                for d in new_dirs.iter_mut() {
                    if let Ok(rest) = d.strip_prefix(&c.path) {
                        *d = to.join(rest);
                    }
                }
                match (from_new, to_new) {
                    (true, true) => {}
                    (true, false) => {
                        if c.is_dir {
                            new_dirs.retain(|d| !d.starts_with(&to));
                            new_dirs.push(to.clone());
                        }
                        c.kind = ChangeKind::Created;
                        c.path = to;
                        c.to = None;
                        out.push(c);
                    }
                    (false, _) => out.push(c),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: ChangeKind, p: &str) -> Raw {
        Raw::new(kind, PathBuf::from(p), false)
    }

    #[test]
    fn coalesces_writes_and_keeps_order() {
        use ChangeKind::*;
        let got = coalesce(vec![
            r(Data, "a"),
            r(Data, "a"),
            r(Data, "b"),
            r(Closed, "a"),
            r(Attrib, "b"),
            r(Attrib, "b"),
        ]);
        let kinds: Vec<_> = got.iter().map(|c| (c.kind, c.path.clone())).collect();
        assert_eq!(
            kinds,
            vec![
                (DataClosed, "a".into()),
                (Data, "b".into()),
                (Attrib, "b".into()),
            ]
        );
    }

    fn d(kind: ChangeKind, p: &str) -> Raw {
        Raw::new(kind, PathBuf::from(p), true)
    }

    fn mv(p: &str, to: &str, is_dir: bool) -> Raw {
        Raw {
            to: Some(PathBuf::from(to)),
            ..Raw::new(ChangeKind::Renamed, PathBuf::from(p), is_dir)
        }
    }

    fn kinds(v: &[Raw]) -> Vec<(ChangeKind, String, Option<String>)> {
        v.iter()
            .map(|c| {
                let s = |p: &Path| p.to_string_lossy().into_owned();
                (c.kind, s(&c.path), c.to.as_deref().map(s))
            })
            .collect()
    }

    #[test]
    fn a_directory_made_and_filled_in_a_burst_is_one_creation() {
        use ChangeKind::*;
        let got = collapse(vec![
            d(Created, "pkg"),
            r(Created, "pkg/a"),
            r(Data, "pkg/a"),
            d(Created, "pkg/sub"),
            r(Created, "pkg/sub/b"),
            r(Attrib, "pkg/sub/b"),
            r(Created, "pkg/tmp"),
            r(Removed, "pkg/tmp"),
            r(Data, "old"),
            // Out of the new directory: the guest never knew the source.
            mv("pkg/a", "moved", false),
            // Into it from outside: the guest must hear the old name go.
            mv("kept", "pkg/kept", false),
            // The new directory renamed stays new; what is made in it next is collapsed.
            mv("pkg", "pkg2", true),
            r(Created, "pkg2/c"),
            r(Created, "pkgx"),
        ]);
        let s = |p: &str| p.to_string();
        assert_eq!(
            kinds(&got),
            vec![
                (Created, s("pkg"), None),
                (Data, s("old"), None),
                (Created, s("moved"), None),
                (Renamed, s("kept"), Some(s("pkg/kept"))),
                (Renamed, s("pkg"), Some(s("pkg2"))),
                (Created, s("pkgx"), None),
            ]
        );
        // Removed, it is not new any more: a directory of that name made later is its own.
        let got = collapse(vec![
            d(Created, "n"),
            r(Created, "n/x"),
            d(Removed, "n"),
            d(Created, "n"),
            r(Created, "n/y"),
        ]);
        assert_eq!(got.len(), 3);
        // A directory made before the burst is not collapsed.
        let got = collapse(vec![r(Created, "dir/a"), r(Data, "dir/a")]);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn writes_merge_across_other_paths_structural_changes() {
        use ChangeKind::*;
        let got = coalesce(vec![r(Data, "a"), r(Created, "b"), r(Data, "a")]);
        assert_eq!(got.len(), 2);
        // A rename of a directory above separates them.
        let got = coalesce(vec![r(Data, "d/a"), mv("d", "e", true), r(Data, "d/a")]);
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn structural_changes_are_barriers() {
        use ChangeKind::*;
        let got = coalesce(vec![
            r(Data, "a"),
            r(Removed, "a"),
            r(Created, "a"),
            r(Data, "a"),
        ]);
        assert_eq!(got.len(), 4);
        // A write, another path's write, then the first path again: the first is the path's
        // latest change, so they merge.
        let got = coalesce(vec![r(Data, "a"), r(Data, "b"), r(Data, "a")]);
        assert_eq!(got.len(), 2);
        // An attribute change between two writes of one path keeps all three.
        let got = coalesce(vec![r(Data, "a"), r(Attrib, "a"), r(Data, "a")]);
        assert_eq!(got.len(), 3);
    }
}
