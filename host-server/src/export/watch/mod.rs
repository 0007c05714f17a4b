//! Host change events: one inotify watcher per watched export, and the per-session view of
//! each change.
//!
//! The pipeline, for one export:
//!
//! 1. The export's own inotify watcher (`inotify.rs`) watches every directory of the export,
//!    each opened beneath the root's descriptor without following a symlink (`beneath.rs`),
//!    and hands raw events, as `notify::Event`s, to a channel.
//! 2. The export's watcher thread collects a burst (until [`BURST_QUIET`] passes without a new
//!    event, at most [`BURST_MAX`]), pairs rename halves, drops what guests cannot see (opens,
//!    reads), and coalesces repeats of the same change to the same path while keeping the
//!    order of changes to each path (`coalesce.rs`), lists the directories it created
//!    (`scan.rs`, so that entries made before `notify` watched them are known), and collapses
//!    what happened inside directories created within the burst into their creation, as a
//!    native recursive watcher sees it (`coalesce::collapse`).
//! 3. Before looking at the burst it waits until every mutation a session had started when the
//!    burst was read has finished and recorded its echo fingerprint ([`Events::mutation`]).
//! 4. For each watching session it drops the session's own echoes (`echo.rs`), resolves the
//!    paths to that session's node ids, looks up the objects that exist (taking a lookup for
//!    the guest, as a `Lookup` reply would) and hands the [`Change`]s to the session's sink.

mod beneath;
mod coalesce;
mod echo;
mod inotify;
mod scan;

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferry_protocol::{Change, ChangeKind, Entry, Errno};
use tracing::{debug, error, info, warn};

use super::inode::ROOT_ID;
use super::{Export, ExportSession};
use coalesce::{RENAME_WAIT, Raw, coalesce, collapse, event_to_changes, rename_pending_after};
use echo::{Echoes, Key};
use inotify::TreeWatcher;
use scan::Scanned;

/// Raw events queued between `notify`'s thread and the export's watcher thread.
const NOTIFY_QUEUE: usize = 65536;

pub(crate) use echo::{Fingerprint, NameOp};

/// A burst ends when no event arrived for this long.
pub const BURST_QUIET: Duration = Duration::from_millis(2);
/// A burst is cut after this long even if events keep coming.
pub const BURST_MAX: Duration = Duration::from_millis(20);
/// Most raw events in one burst.
const BURST_EVENTS: usize = 4096;

/// Where a session's changes go: called from the export's watcher thread with a batch and
/// when the watcher read the first host event of its burst (the start of the event lag);
/// must not block.
pub type Sink = Arc<dyn Fn(Vec<Change>, Instant) + Send + Sync>;

struct Subscriber {
    sid: u64,
    session: Weak<ExportSession>,
    sink: Sink,
}

/// Change-event state of one export (see the module docs).
#[derive(Default)]
pub(crate) struct Events {
    /// Sessions that asked for changes.
    subs: Mutex<Vec<Subscriber>>,
    /// Set while at least one session watches: only then are fingerprints recorded.
    active: AtomicBool,
    /// What each session changed itself (see `echo.rs`).
    echoes: Echoes,
    /// Mutations in flight, counted in two alternating epochs.
    epoch: AtomicUsize,
    in_flight: [AtomicU64; 2],
    /// The running watcher; dropping it stops the watcher thread.
    watcher: Mutex<Option<TreeWatcher>>,
    /// What `ferry status` shows of this export's watcher.
    counts: EventCounters,
}

/// Running totals of one export's watcher (relaxed atomics, one addition per burst).
#[derive(Default)]
struct EventCounters {
    seen: AtomicU64,
    coalesced: AtomicU64,
    suppressed: AtomicU64,
}

/// An export's watcher totals: [`Export::event_counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Host changes the watcher read (after pairing rename halves).
    pub seen: u64,
    /// Changes folded into another change to the same path within a burst.
    pub coalesced: u64,
    /// Changes not sent to a watching session because that session made them itself (echoes)
    /// or knows nothing of the object; counted once per session.
    pub suppressed: u64,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Marks one mutation in flight until dropped (see [`Events::mutation`]).
pub(crate) struct MutationGuard<'a> {
    events: &'a Events,
    slot: usize,
}

impl Drop for MutationGuard<'_> {
    fn drop(&mut self) {
        self.events.in_flight[self.slot].fetch_sub(1, Ordering::SeqCst);
    }
}

impl Events {
    /// Whether any session watches this export.
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Marks a mutation in flight. The watcher processes a burst only after every mutation
    /// that had started when the burst was read has ended, so a fingerprint recorded before
    /// the guard drops is always in place when the event it explains is looked at.
    pub(crate) fn mutation(&self) -> MutationGuard<'_> {
        loop {
            let e = self.epoch.load(Ordering::SeqCst);
            let slot = e & 1;
            self.in_flight[slot].fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == e {
                return MutationGuard { events: self, slot };
            }
            self.in_flight[slot].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits until every mutation that started before this call has ended.
    fn wait_for_mutations(&self) {
        let old = self.epoch.fetch_add(1, Ordering::SeqCst) & 1;
        let start = Instant::now();
        while self.in_flight[old].load(Ordering::SeqCst) != 0 {
            if start.elapsed() > Duration::from_secs(5) {
                warn!("a mutation has been running for 5 s; processing host events anyway");
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Records that session `sid` left inode `key` in state `fp`.
    pub(crate) fn note_inode(&self, sid: u64, key: Key, fp: Fingerprint) {
        self.echoes.note_inode(sid, key, fp);
    }

    /// Records that session `sid` did `op` to `name` in directory `dir`.
    pub(crate) fn note_name(&self, sid: u64, dir: Key, name: &[u8], op: NameOp) {
        self.echoes.note_name(sid, dir, name, op);
    }
}

impl Export {
    /// This export's watcher totals since the server started.
    pub fn event_counts(&self) -> EventCounts {
        let c = &self.events.counts;
        EventCounts {
            seen: c.seen.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            suppressed: c.suppressed.load(Ordering::Relaxed),
        }
    }

    /// Starts sending `session`'s changes to `sink` (replacing an earlier sink of the same
    /// session). Starts the export's watcher if it is the first.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        session: &Arc<ExportSession>,
        sink: Sink,
    ) -> Result<(), Errno> {
        let mut subs = self.events.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| s.sid != session.sid && s.session.strong_count() > 0);
        let mut watcher = self
            .events
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if watcher.is_none() {
            *watcher = Some(self.start_watcher()?);
        }
        subs.push(Subscriber {
            sid: session.sid,
            session: Arc::downgrade(session),
            sink,
        });
        self.events.active.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Stops sending changes to session `sid`; the last one out stops the watcher.
    pub(crate) fn unsubscribe(&self, sid: u64) {
        let mut subs = self.events.subs.lock().unwrap_or_else(|e| e.into_inner());
        let before = subs.len();
        subs.retain(|s| s.sid != sid && s.session.strong_count() > 0);
        if subs.len() == before && before > 0 {
            return;
        }
        if subs.is_empty() {
            self.events.active.store(false, Ordering::Relaxed);
            let w = self
                .events
                .watcher
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if w.is_some() {
                info!(
                    export = self.name,
                    "no guest watches any more; watcher stopped"
                );
            }
        }
    }

    fn start_watcher(self: &Arc<Self>) -> Result<TreeWatcher, Errno> {
        // Bounded: when the watcher thread falls this far behind, further raw events are
        // dropped and the next burst carries an overflow (every guest drops its caches)
        // instead of the queue growing without end.
        let (tx, rx) = sync_channel(NOTIFY_QUEUE);
        let lost = Arc::new(AtomicBool::new(false));
        let tx = inotify::Queue {
            tx,
            lost: Arc::clone(&lost),
        };
        let started = Instant::now();
        let w = match TreeWatcher::start(&self.name, self.root.as_fd(), &self.path, tx) {
            Ok(w) => w,
            Err(e) => {
                error!(
                    export = self.name,
                    "cannot watch {}: {e}",
                    self.path.display()
                );
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    error!("{WATCH_LIMIT_ADVICE}");
                }
                return Err(Errno::EIO);
            }
        };
        info!(
            export = self.name,
            ms = started.elapsed().as_millis() as u64,
            "watching the export for host changes"
        );
        let export = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("ferry-watch-{}", self.name))
            .spawn(move || export.watch_loop(rx, &lost))
            .map_err(|_| Errno::EAGAIN)?;
        Ok(w)
    }

    fn watch_loop(&self, rx: Receiver<notify::Result<notify::Event>>, lost: &AtomicBool) {
        let mut held_from: Option<(usize, PathBuf)> = None;
        let mut scanned = Scanned::default();
        let mut dirs = DirKeys::default();
        let mut moved = Moved::default();
        loop {
            let Ok(first) = rx.recv() else {
                debug!(export = self.name, "watcher thread ends");
                return;
            };
            let mut rename_pending = rename_pending_after(held_from.is_some(), &first);
            let mut raw = vec![first];
            let start = Instant::now();
            loop {
                let quiet = if rename_pending {
                    RENAME_WAIT
                } else {
                    BURST_QUIET
                };
                if raw.len() >= BURST_EVENTS || start.elapsed() >= BURST_MAX.max(quiet) {
                    break;
                }
                match rx.recv_timeout(quiet) {
                    Ok(ev) => {
                        rename_pending = rename_pending_after(rename_pending, &ev);
                        raw.push(ev);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            self.events.wait_for_mutations();
            let mut changes = Vec::new();
            for ev in raw {
                match ev {
                    Ok(ev) => event_to_changes(
                        &self.path,
                        self.root.as_fd(),
                        ev,
                        &mut held_from,
                        &mut changes,
                    ),
                    Err(e) => {
                        error!(export = self.name, "host watcher error: {e}");
                        if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                            error!("{WATCH_LIMIT_ADVICE}");
                        }
                        changes.push(Raw::overflow());
                    }
                }
            }
            if lost.swap(false, Ordering::AcqRel) {
                warn!(
                    export = self.name,
                    limit = NOTIFY_QUEUE,
                    "the host watcher's queue was full; events dropped"
                );
                changes.push(Raw::overflow());
            }
            if let Some((_, from)) = held_from.take() {
                // The rename's second half never came: moved out of the export.
                changes.push(Raw::new(ChangeKind::Removed, from, false));
            }
            let read = changes.len();
            let changes = coalesce(moved.follow(self.root.as_fd(), changes));
            let counts = &self.events.counts;
            counts.seen.fetch_add(read as u64, Ordering::Relaxed);
            counts
                .coalesced
                .fetch_add(read.saturating_sub(changes.len()) as u64, Ordering::Relaxed);
            let changes = collapse(scanned.expand(self.root.as_fd(), changes));
            if changes.iter().any(|c| c.kind == ChangeKind::Overflow) {
                warn!(
                    export = self.name,
                    "host events were lost; every guest will drop its caches of this export"
                );
            }
            self.deliver(&changes, &mut dirs, start);
            for c in &changes {
                if matches!(c.kind, ChangeKind::Removed | ChangeKind::Renamed) {
                    dirs.forget_tree(&c.path);
                }
            }
        }
    }

    /// Resolves `changes` for every watching session and hands them over.
    fn deliver(&self, changes: &[Raw], dirs: &mut DirKeys, seen: Instant) {
        let facts: Vec<Facts> = changes
            .iter()
            .enumerate()
            .map(|(i, c)| Facts::of(self.root.as_fd(), c, &changes[i + 1..], dirs))
            .collect();
        if changes.iter().zip(&facts).any(|(c, f)| gone(c, f)) {
            // An object gone since its event may have been removed or renamed by a session
            // whose mutation has not recorded it yet: wait for it (see `resolve`).
            self.events.wait_for_mutations();
        }
        let subs: Vec<(u64, Arc<ExportSession>, Sink)> = {
            let subs = self.events.subs.lock().unwrap_or_else(|e| e.into_inner());
            subs.iter()
                .filter_map(|s| Some((s.sid, s.session.upgrade()?, Arc::clone(&s.sink))))
                .collect()
        };
        for (c, f) in changes.iter().zip(&facts) {
            debug!(kind = ?c.kind, path = %c.path.display(), ?f.parent, subs = subs.len(), "host change");
        }
        for (sid, session, sink) in subs {
            let out: Vec<Change> = changes
                .iter()
                .zip(&facts)
                .filter_map(|(c, f)| self.resolve(sid, &session, c, f))
                .collect();
            for c in &out {
                debug!(sid, kind = ?c.kind, path = %String::from_utf8_lossy(&c.path),
                    to = %String::from_utf8_lossy(&c.to), entry = c.entry.map(|e| e.ino), "change sent");
            }
            self.events.counts.suppressed.fetch_add(
                changes.len().saturating_sub(out.len()) as u64,
                Ordering::Relaxed,
            );
            if !out.is_empty() {
                sink(out, seen);
            }
        }
    }

    /// One change as session `sid` should see it, or `None` when it is the session's own echo
    /// or concerns nothing the session knows.
    fn resolve(&self, sid: u64, session: &ExportSession, c: &Raw, f: &Facts) -> Option<Change> {
        let change = |kind, parent, to_parent, file_type, entry: Option<Entry>| Change {
            kind,
            path: c.path.as_os_str().as_bytes().to_vec(),
            to: c
                .to
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .unwrap_or_default(),
            parent,
            to_parent,
            file_type,
            entry,
        };
        let node_of = |key: Option<Key>| key.and_then(|k| session.inodes.id_of(k)).unwrap_or(0);
        // A session that replays on a mount another front door serves (`replay.rs`) gets every
        // change by path, and no lookups it could not hand to a kernel: what the guest kernel
        // holds is that front door's business.
        let by_path = session.replays();
        let lookup = |parent: u64, path: &Path| -> Option<Entry> {
            if by_path {
                return None;
            }
            let name = path.file_name()?.as_bytes();
            session.lookup_for_change(parent, name).ok()
        };
        let file_type = |entry: &Option<Entry>| match (entry, f.obj) {
            (Some(e), _) => e.attr.mode & libc::S_IFMT,
            (None, Some((_, fp))) if by_path => fp.mode & libc::S_IFMT,
            _ if c.is_dir => libc::S_IFDIR,
            _ => 0,
        };
        match c.kind {
            ChangeKind::Overflow => Some(change(ChangeKind::Overflow, 0, 0, 0, None)),
            ChangeKind::Created => {
                let name = c.path.file_name()?.as_bytes();
                if self
                    .events
                    .echoes
                    .take_name_echo(sid, f.parent?, name, NameOp::Created)
                {
                    return None;
                }
                let parent = node_of(f.parent);
                if parent == 0 && !by_path {
                    return None;
                }
                let entry = lookup(parent, &c.path);
                Some(change(c.kind, parent, 0, file_type(&entry), entry))
            }
            ChangeKind::Removed => {
                let parent_key = f.parent?;
                let name = c.path.file_name()?.as_bytes();
                // A rename whose other half was not seen shows as a removal.
                if self
                    .events
                    .echoes
                    .take_name_echo(sid, parent_key, name, NameOp::Removed)
                    || self
                        .events
                        .echoes
                        .take_name_echo(sid, parent_key, name, NameOp::RenamedFrom)
                {
                    return None;
                }
                let parent = node_of(Some(parent_key));
                (parent != 0 || by_path).then(|| change(c.kind, parent, 0, file_type(&None), None))
            }
            ChangeKind::Data | ChangeKind::DataClosed | ChangeKind::Closed | ChangeKind::Attrib => {
                if let Some((key, fp)) = f.obj {
                    if self.events.echoes.is_inode_echo(sid, key, &fp) {
                        return None;
                    }
                }
                // Gone from its name since, by this session's own removal or rename (still to
                // be reported): its state can no longer be compared, and the guest no longer
                // has the object there, so a replay would raise the event after the guest's
                // own removal, on a stand-in. Whoever changed it, the guest is not told.
                if gone(c, f) {
                    let name = c.path.file_name()?.as_bytes();
                    let parent = f.parent?;
                    let echoes = &self.events.echoes;
                    if echoes.has_name_echo(sid, parent, name, NameOp::Removed)
                        || echoes.has_name_echo(sid, parent, name, NameOp::RenamedFrom)
                    {
                        return None;
                    }
                }
                if c.path.as_os_str().is_empty() {
                    let attr = session.getattr(ROOT_ID, None).ok()?;
                    let entry = Entry {
                        ino: ROOT_ID,
                        generation: 0,
                        attr,
                    };
                    return Some(change(c.kind, 0, 0, libc::S_IFDIR, Some(entry)));
                }
                let parent = node_of(f.parent);
                if parent == 0 && !by_path {
                    return None;
                }
                // Gone since (renamed or removed, reported next): the guest replays against
                // what it holds.
                let entry = lookup(parent, &c.path);
                Some(change(c.kind, parent, 0, file_type(&entry), entry))
            }
            ChangeKind::Renamed => {
                let from_key = f.parent?;
                let from_name = c.path.file_name()?.as_bytes();
                if self
                    .events
                    .echoes
                    .take_name_echo(sid, from_key, from_name, NameOp::RenamedFrom)
                {
                    if let (Some(k), Some(n)) =
                        (f.to_parent, c.to.as_ref().and_then(|t| t.file_name()))
                    {
                        self.events
                            .echoes
                            .take_name_echo(sid, k, n.as_bytes(), NameOp::Created);
                    }
                    return None;
                }
                let from_parent = node_of(Some(from_key));
                let to_parent = node_of(f.to_parent);
                let to = c.to.as_ref()?;
                if by_path {
                    let entry = lookup(to_parent, to);
                    let ft = file_type(&entry);
                    return Some(change(c.kind, from_parent, to_parent, ft, entry));
                }
                match (from_parent, to_parent) {
                    (0, 0) => None,
                    (p, 0) => Some(Change {
                        to: Vec::new(),
                        ..change(ChangeKind::Removed, p, 0, file_type(&None), None)
                    }),
                    (0, q) => {
                        let entry = lookup(q, to);
                        Some(Change {
                            path: to.as_os_str().as_bytes().to_vec(),
                            to: Vec::new(),
                            ..change(ChangeKind::Created, q, 0, file_type(&entry), entry)
                        })
                    }
                    (p, q) => {
                        let entry = lookup(q, to);
                        Some(change(c.kind, p, q, file_type(&entry), entry))
                    }
                }
            }
        }
    }
}

/// Whether `c` is a content or attribute change of an object no longer at its path.
fn gone(c: &Raw, f: &Facts) -> bool {
    f.obj.is_none()
        && !c.path.as_os_str().is_empty()
        && matches!(
            c.kind,
            ChangeKind::Data | ChangeKind::DataClosed | ChangeKind::Closed | ChangeKind::Attrib
        )
}

/// What `notify` tells how to fix when the watch limit is reached.
const WATCH_LIMIT_ADVICE: &str = "the inotify watch limit is reached, so host changes in part of \
     the export are not seen; raise it with `sysctl fs.inotify.max_user_watches=1048576` (and \
     fs.inotify.max_queued_events for bursts)";

/// Host facts about one change, gathered once for all sessions.
#[derive(Debug, Default)]
struct Facts {
    /// Identity of the directory holding `path`.
    parent: Option<Key>,
    /// Identity of the directory holding `to`.
    to_parent: Option<Key>,
    /// Identity and state of the object now at `to` (renames) or `path` (the rest).
    obj: Option<(Key, Fingerprint)>,
}

/// Identities of directories seen, by path: a directory removed together with its entries
/// (`rm -r`) is gone when their removals are looked at, but they still need its identity.
#[derive(Debug, Default)]
struct DirKeys(HashMap<PathBuf, Key>);

impl DirKeys {
    const MAX: usize = 200_000;

    fn key(&mut self, root: BorrowedFd<'_>, dir: &Path) -> Option<Key> {
        match beneath::stat(root, dir) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                let k = (st.st_dev, st.st_ino);
                if self.0.len() >= Self::MAX {
                    self.0.clear();
                }
                self.0.insert(dir.to_path_buf(), k);
                Some(k)
            }
            _ => self.0.get(dir).copied(),
        }
    }

    /// Forgets `path` and everything below it once its removal or rename is delivered.
    fn forget_tree(&mut self, path: &Path) {
        self.0.retain(|p, _| !p.starts_with(path));
    }
}

/// Directories renamed on the host, old path to new. `notify` keeps reporting events inside a
/// renamed directory at its old path; those are moved to the new one here, so that the stream
/// stays one a watcher could have seen (a guest replaying it in order would otherwise look for
/// names its own tree has already moved).
#[derive(Debug, Default)]
struct Moved(Vec<(PathBuf, PathBuf)>);

impl Moved {
    const MAX: usize = 1024;

    /// Rewrites paths below a renamed directory's old path, when nothing is at that old path on
    /// the host any more (else a new directory took the name and its events are its own), and
    /// records the burst's directory renames.
    fn follow(&mut self, root: BorrowedFd<'_>, mut changes: Vec<Raw>) -> Vec<Raw> {
        for c in &mut changes {
            if c.kind == ChangeKind::Overflow {
                self.0.clear();
                continue;
            }
            c.path = self.now(root, &c.path);
            if let Some(to) = &c.to {
                c.to = Some(self.now(root, to));
            }
            let made = match c.kind {
                ChangeKind::Created => Some(&c.path),
                ChangeKind::Renamed => c.to.as_ref(),
                _ => None,
            };
            if let Some(made) = made {
                // A new object at an old path: events there are its own from now on.
                self.0.retain(|(old, _)| old != made);
            }
            if c.kind == ChangeKind::Renamed && c.is_dir {
                if let Some(to) = &c.to {
                    if self.0.len() >= Self::MAX {
                        self.0.remove(0);
                    }
                    self.0.push((c.path.clone(), to.clone()));
                }
            }
        }
        changes
    }

    /// Where `path` is now, following renames of the directories above it (latest first).
    fn now(&self, root: BorrowedFd<'_>, path: &Path) -> PathBuf {
        let mut p = path.to_path_buf();
        for (old, new) in self.0.iter().rev() {
            if let Ok(rest) = p.strip_prefix(old) {
                if !rest.as_os_str().is_empty() && beneath::stat(root, old).is_err() {
                    p = new.join(rest);
                }
            }
        }
        p
    }
}

/// Where `path` is at the end of the burst: moved by the renames that follow its change.
fn after(path: &Path, later: &[Raw]) -> PathBuf {
    let mut p = path.to_path_buf();
    for r in later {
        if let (ChangeKind::Renamed, Some(to)) = (r.kind, &r.to) {
            if let Ok(rest) = p.strip_prefix(&r.path) {
                p = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
            }
        }
    }
    p
}

impl Facts {
    /// `later`: the changes after `c` in its burst, through whose renames a directory that has
    /// moved on since is still found.
    fn of(root: BorrowedFd<'_>, c: &Raw, later: &[Raw], dirs: &mut DirKeys) -> Facts {
        // Resolved beneath the root without following any symlink; these identities are only
        // compared with nodes a session holds, never opened.
        let key = |p: &Path| -> Option<(Key, Fingerprint)> {
            let st = beneath::stat(root, p).ok()?;
            Some(((st.st_dev, st.st_ino), Fingerprint::of_stat(&st)))
        };
        if c.kind == ChangeKind::Overflow {
            return Facts::default();
        }
        let mut parent = |p: &Path| -> Option<Key> {
            let dir = p.parent()?;
            dirs.key(root, dir).or_else(|| {
                let now = after(dir, later);
                (now != dir).then(|| dirs.key(root, &now)).flatten()
            })
        };
        Facts {
            parent: parent(&c.path),
            to_parent: c.to.as_deref().and_then(&mut parent),
            obj: key(c.to.as_deref().unwrap_or(&c.path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_guard_blocks_the_watcher_until_dropped() {
        let ev = Arc::new(Events::default());
        let g = ev.mutation();
        let e2 = Arc::clone(&ev);
        let t = std::thread::spawn(move || {
            let s = Instant::now();
            e2.wait_for_mutations();
            s.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(g);
        let waited = t.join().unwrap();
        assert!(
            waited >= Duration::from_millis(40),
            "waited only {waited:?}"
        );
        // Mutations started after the flip do not hold up the next wait forever.
        let _g2 = ev.mutation();
        let e3 = Arc::clone(&ev);
        let t = std::thread::spawn(move || e3.epoch.load(Ordering::SeqCst));
        t.join().unwrap();
    }
}
