//! The export's recursive inotify watcher. It replaces `notify`'s recommended watcher, which
//! adds watches by absolute path and walks new directories with `walkdir` (following a
//! symlink at the top of every walk, and by default every symlink below it): a guest that made
//! a directory holding a symlink to `/` and renamed it made the server watch the whole host.
//!
//! Here every directory is opened beneath the export root's descriptor one component at a time
//! without following a symlink (`beneath::open_dir`), and the watch is added on that very
//! object through its `/proc/self/fd` entry (`IN_ONLYDIR`), so no watch can land outside the
//! export whatever the tree holds or how it changes meanwhile. Events still come out as
//! `notify::Event`s, in the order and shape `notify`'s inotify backend gives them (a rename as
//! `From`, `To`, then `Both` with one tracker), so `coalesce.rs` reads them unchanged.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use ferry_protocol::Errno;
use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use notify::event::{
    AccessKind, AccessMode, CreateKind, DataChange, EventKind, Flag, MetadataKind, ModifyKind,
    RemoveKind, RenameMode,
};
use tracing::{debug, warn};

use super::beneath;
use crate::export::sys;

/// An errno from the export core's `sys` as a `notify` error.
fn errno(e: Errno) -> notify::Error {
    notify::Error::io(std::io::Error::from_raw_os_error(e.0))
}

/// What the watcher hands on.
pub(super) type Message = notify::Result<notify::Event>;

/// How often the watcher thread looks whether it should stop, and how long the first half of a
/// rename waits for its second before it counts as a move out of the export.
const TICK_MS: libc::c_int = 50;

/// A running watcher; dropping it stops its thread (within [`TICK_MS`]), which then drops the
/// channel's sender.
pub(crate) struct TreeWatcher {
    stop: Arc<AtomicBool>,
}

impl Drop for TreeWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The bounded queue to the export's watcher thread. When it is full, an event is dropped and
/// `lost` is set, so the next burst carries an overflow (every guest drops its caches) instead
/// of the queue growing without end.
pub(crate) struct Queue {
    pub(crate) tx: SyncSender<Message>,
    pub(crate) lost: Arc<AtomicBool>,
}

impl Queue {
    /// Queues `m`; `Err` only once the watcher thread is gone.
    fn send(&self, m: Message) -> Result<(), ()> {
        match self.tx.try_send(m) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.lost.store(true, std::sync::atomic::Ordering::Release);
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => Err(()),
        }
    }
}

impl TreeWatcher {
    /// Watches every directory beneath `root` (the export root's descriptor; `prefix` is the
    /// export's path, put before every reported path) and sends events to `tx`.
    pub(crate) fn start(
        name: &str,
        root: BorrowedFd<'_>,
        prefix: &Path,
        tx: Queue,
    ) -> Result<TreeWatcher, notify::Error> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| notify::Error::io(e.into()))?;
        let root = root.try_clone_to_owned().map_err(notify::Error::io)?;
        let mut tree = Tree {
            inotify,
            root,
            prefix: prefix.to_path_buf(),
            by_wd: HashMap::new(),
            by_path: HashMap::new(),
            tx,
            moved_from: None,
            limit_reported: false,
        };
        tree.add_tree(Path::new(""))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        std::thread::Builder::new()
            .name(format!("ferry-inotify-{name}"))
            .spawn(move || tree.run(&s))
            .map_err(notify::Error::io)?;
        Ok(TreeWatcher { stop })
    }
}

/// Which directories are watched, by descriptor and by path relative to the export root.
struct Tree {
    inotify: Inotify,
    root: OwnedFd,
    prefix: PathBuf,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
    tx: Queue,
    /// A rename's first half (cookie, relative path, is a directory) waiting for its second.
    moved_from: Option<(u32, PathBuf, bool, Instant)>,
    /// Whether the watch limit was reported since the watcher started.
    limit_reported: bool,
}

impl Tree {
    fn mask() -> F {
        F::IN_ATTRIB
            | F::IN_CREATE
            | F::IN_DELETE
            | F::IN_CLOSE_WRITE
            | F::IN_MODIFY
            | F::IN_MOVED_FROM
            | F::IN_MOVED_TO
            | F::IN_DELETE_SELF
            | F::IN_ONLYDIR
    }

    /// Watches the directory at `rel` and every directory below it, depth first, holding one
    /// descriptor per level: `rel` is opened beneath the root one component at a time, each
    /// directory below it beneath its parent's descriptor, never following a symlink. Only a
    /// failure to watch the root itself is an error; a directory that vanished or turned into
    /// something else meanwhile is skipped, and the watch limit is reported once.
    fn add_tree(&mut self, rel: &Path) -> Result<(), notify::Error> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let top = beneath::open_dir(self.root.as_fd(), rel, flags)
            .map_err(errno)
            .and_then(|fd| Ok((self.watch_dir(rel, &fd)?, fd)));
        let (names, fd) = match top {
            Ok(v) => v,
            Err(e) if rel.as_os_str().is_empty() => return Err(e),
            Err(e) => {
                self.not_watched(rel, e);
                return Ok(());
            }
        };
        let mut stack: Vec<(PathBuf, OwnedFd, Vec<Vec<u8>>)> = vec![(rel.to_path_buf(), fd, names)];
        while let Some((dir, fd, names)) = stack.last_mut() {
            let Some(name) = names.pop() else {
                stack.pop();
                continue;
            };
            let child = dir.join(OsStr::from_bytes(&name));
            let opened = sys::cstring(&name)
                .and_then(|c| sys::open_beneath(fd.as_fd(), &c, flags, 0))
                .map_err(errno)
                .and_then(|cfd| Ok((self.watch_dir(&child, &cfd)?, cfd)));
            match opened {
                Ok((names, cfd)) => stack.push((child, cfd, names)),
                Err(e) => {
                    let full = matches!(e.kind, notify::ErrorKind::MaxFilesWatch);
                    self.not_watched(&child, e);
                    if full {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn not_watched(&mut self, rel: &Path, e: notify::Error) {
        if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
            if !self.limit_reported {
                self.limit_reported = true;
                let _ = self.tx.send(Err(e));
            }
        } else {
            debug!(path = %rel.display(), "not watched: {e}");
        }
    }

    /// Watches the directory `fd` (at `rel`); returns the names of its subdirectories, from
    /// the entries' types (a stat without following only where the filesystem gives none).
    fn watch_dir(&mut self, rel: &Path, fd: &OwnedFd) -> Result<Vec<Vec<u8>>, notify::Error> {
        let wd = self
            .inotify
            .add_watch(sys::proc_path(fd.as_fd()).as_c_str(), Self::mask())
            .map_err(|e| match e {
                nix::errno::Errno::ENOSPC => notify::Error::new(notify::ErrorKind::MaxFilesWatch),
                e => notify::Error::io(e.into()),
            })?;
        // The same directory under another path (a rename not seen yet) keeps one entry.
        if let Some(old) = self.by_wd.insert(wd, rel.to_path_buf()) {
            self.by_path.remove(&old);
        }
        self.by_path.insert(rel.to_path_buf(), wd);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n @ 1..) = sys::getdents64(fd.as_fd(), &mut buf) {
            let mut rest = &buf[..n];
            while let Some((reclen, d)) = sys::parse_dirent(rest) {
                rest = &rest[reclen..];
                if d.name == b"." || d.name == b".." {
                    continue;
                }
                let is_dir = match d.kind {
                    libc::DT_DIR => true,
                    libc::DT_UNKNOWN => sys::cstring(d.name)
                        .and_then(|c| sys::fstatat_nofollow(fd.as_fd(), &c))
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR),
                    _ => false,
                };
                if is_dir {
                    out.push(d.name.to_vec());
                }
            }
        }
        Ok(out)
    }

    /// Forgets (and stops watching) `rel` and every directory below it.
    fn forget_tree(&mut self, rel: &Path) {
        let gone: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(rel))
            .cloned()
            .collect();
        for p in gone {
            if let Some(wd) = self.by_path.remove(&p) {
                self.by_wd.remove(&wd);
                let _ = self.inotify.rm_watch(wd);
            }
        }
    }

    /// Moves the watches of `from` and everything below it to `to`.
    fn rekey(&mut self, from: &Path, to: &Path) {
        self.forget_below_only(to);
        let moved: Vec<(PathBuf, WatchDescriptor)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, wd)| (p.clone(), *wd))
            .collect();
        for (p, wd) in moved {
            self.by_path.remove(&p);
            let tail = p.strip_prefix(from).unwrap_or(Path::new(""));
            let np = if tail.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(tail)
            };
            self.by_wd.insert(wd, np.clone());
            self.by_path.insert(np, wd);
        }
    }

    /// Drops the path entries at and below `rel` (a rename replaced them) without removing
    /// watches another path may still name.
    fn forget_below_only(&mut self, rel: &Path) {
        let gone: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(rel))
            .cloned()
            .collect();
        for p in gone {
            if let Some(wd) = self.by_path.remove(&p) {
                if self.by_wd.get(&wd) == Some(&p) {
                    self.by_wd.remove(&wd);
                    let _ = self.inotify.rm_watch(wd);
                }
            }
        }
    }

    fn send(&self, kind: EventKind, rel: &Path) -> bool {
        self.tx
            .send(Ok(notify::Event::new(kind).add_path(self.prefix.join(rel))))
            .is_ok()
    }

    /// A rename's first half that no second half followed: moved out of the export.
    fn flush_moved_from(&mut self) {
        if let Some((_, from, is_dir, _)) = self.moved_from.take() {
            if is_dir {
                self.forget_tree(&from);
            }
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: self.inotify.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd on a descriptor this thread owns.
            let ready = unsafe { libc::poll(&mut pfd, 1, TICK_MS) };
            if ready <= 0 {
                self.flush_moved_from();
                continue;
            }
            loop {
                match self.inotify.read_events() {
                    Ok(events) => {
                        for ev in events {
                            if !self.handle(ev) {
                                return;
                            }
                        }
                    }
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        warn!("reading inotify events failed: {e}");
                        return;
                    }
                }
            }
        }
        debug!("inotify watcher stopped");
    }

    /// Translates one inotify event; false once nobody listens.
    fn handle(&mut self, ev: InotifyEvent) -> bool {
        let m = ev.mask;
        if m.contains(F::IN_Q_OVERFLOW) {
            let ev = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
            return self.tx.send(Ok(ev)).is_ok();
        }
        if m.contains(F::IN_IGNORED) {
            if let Some(p) = self.by_wd.remove(&ev.wd) {
                if self.by_path.get(&p) == Some(&ev.wd) {
                    self.by_path.remove(&p);
                }
            }
            return true;
        }
        let Some(dir) = self.by_wd.get(&ev.wd).cloned() else {
            return true;
        };
        let rel = match &ev.name {
            Some(n) => dir.join(n),
            None => dir.clone(),
        };
        let is_dir = m.contains(F::IN_ISDIR);
        // Another event may come between a rename's halves (from another directory); a first
        // half left alone for a tick, or followed by another rename's, was a move out.
        let stale = self.moved_from.as_ref().is_some_and(|p| {
            p.3.elapsed() >= Duration::from_millis(TICK_MS as u64)
                && !(m.contains(F::IN_MOVED_TO) && p.0 == ev.cookie)
        });
        if stale || m.contains(F::IN_MOVED_FROM) {
            self.flush_moved_from();
        }
        let mut ok = true;
        if m.contains(F::IN_MOVED_FROM) {
            let from = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::From)))
                .add_path(self.prefix.join(&rel))
                .set_tracker(ev.cookie as usize);
            ok &= self.tx.send(Ok(from)).is_ok();
            self.moved_from = Some((ev.cookie, rel.clone(), is_dir, Instant::now()));
        } else if m.contains(F::IN_MOVED_TO) {
            let to = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::To)))
                .set_tracker(ev.cookie as usize)
                .add_path(self.prefix.join(&rel));
            ok &= self.tx.send(Ok(to)).is_ok();
            match self.moved_from.take() {
                Some((cookie, from, from_dir, _)) if cookie == ev.cookie => {
                    let both =
                        notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
                            .set_tracker(ev.cookie as usize)
                            .add_path(self.prefix.join(&from))
                            .add_path(self.prefix.join(&rel));
                    ok &= self.tx.send(Ok(both)).is_ok();
                    if from_dir {
                        self.rekey(&from, &rel);
                        // Renamed before its creation was seen (so never watched): watch it
                        // under its new name.
                        if !self.by_path.contains_key(&rel) {
                            let _ = self.add_tree(&rel);
                        }
                    }
                }
                other => {
                    self.moved_from = other;
                    self.flush_moved_from();
                    if is_dir {
                        // Moved in from outside the export.
                        let _ = self.add_tree(&rel);
                    }
                }
            }
        }
        if m.contains(F::IN_CREATE) {
            let kind = if is_dir {
                CreateKind::Folder
            } else {
                CreateKind::File
            };
            ok &= self.send(EventKind::Create(kind), &rel);
            if is_dir {
                let _ = self.add_tree(&rel);
            }
        }
        if m.contains(F::IN_DELETE) {
            let kind = if is_dir {
                RemoveKind::Folder
            } else {
                RemoveKind::File
            };
            ok &= self.send(EventKind::Remove(kind), &rel);
        }
        // A directory's own removal is reported by its parent's watch; only the export root,
        // which has none, reports its own (as `notify` did, watching "self" only at the top).
        if m.contains(F::IN_DELETE_SELF) && dir.as_os_str().is_empty() {
            ok &= self.send(EventKind::Remove(RemoveKind::Folder), &rel);
        }
        if m.contains(F::IN_MODIFY) {
            ok &= self.send(EventKind::Modify(ModifyKind::Data(DataChange::Any)), &rel);
        }
        if m.contains(F::IN_CLOSE_WRITE) {
            ok &= self.send(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &rel,
            );
        }
        if m.contains(F::IN_ATTRIB) {
            ok &= self.send(
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                &rel,
            );
        }
        ok
    }
}
