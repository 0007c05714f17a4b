//! Host change events: one inotify watcher (through the `notify` crate) per watched export, and
//! the per-session view of each change.
//!
//! The pipeline, for one export:
//!
//! 1. `notify` watches the export recursively and hands raw events to a channel.
//! 2. The export's watcher thread collects a burst (until [`BURST_QUIET`] passes without a new
//!    event, at most [`BURST_MAX`]), pairs rename halves, drops what guests cannot see (opens,
//!    reads), and coalesces repeats of the same change to the same path while keeping the
//!    order of changes to each path: [`coalesce`].
//! 3. Before looking at the burst it waits until every mutation a session had started when the
//!    burst was read has finished and recorded its echo fingerprint ([`Events::mutation`]).
//! 4. For each watching session it drops the session's own echoes, resolves the paths to that
//!    session's node ids, looks up the objects that exist (taking a lookup for the guest, as a
//!    `Lookup` reply would) and hands the [`Change`]s to the session's sink.
//!
//! Echo suppression fingerprints what the server changed on a guest's behalf: for data and
//! attribute changes, the inode with its size, mtime, ctime, mode, link count and owner after
//! the change (ctime catches a host change that leaves everything else alone, such as a chmod
//! to the same mode; every server operation that moves ctime records the state it left); for
//! creations, removals and renames, the directory, the name and the operation, which stay
//! recognisable when the object changes again or goes away before the event is looked at. A change whose host state still matches a session's fingerprint is that
//! session's own and is not sent back to it; other sessions get it. No time window decides
//! anything: fingerprints are only aged out ([`ECHO_MAX_AGE`]) to bound memory.
//!
//! A directory created on the host is watched only once `notify` has seen its creation, so
//! entries made in it before that would be missed; the watcher lists every new directory and
//! reports what it finds, remembering those paths so that a late inotify event for the same
//! object is not reported twice.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferry_protocol::{Change, ChangeKind, Entry, Errno};
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RemoveKind};
use notify::event::{Flag, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{debug, error, info, trace, warn};

use super::inode::ROOT_ID;
use super::{Export, ExportSession};

/// A burst ends when no event arrived for this long.
pub const BURST_QUIET: Duration = Duration::from_millis(2);
/// A burst is cut after this long even if events keep coming.
pub const BURST_MAX: Duration = Duration::from_millis(20);
/// Most raw events in one burst.
const BURST_EVENTS: usize = 4096;
/// How long the first half of a rename waits for its second half before it counts as a move
/// out of the export.
const RENAME_WAIT: Duration = Duration::from_millis(20);
/// Echo fingerprints older than this are dropped (memory bound only; see the module docs).
pub const ECHO_MAX_AGE: Duration = Duration::from_secs(30);
/// Most entries reported from listing one newly created directory tree.
const SCAN_LIMIT: usize = 10_000;

/// Where a session's changes go: called from the export's watcher thread; must not block.
pub type Sink = Arc<dyn Fn(Vec<Change>) + Send + Sync>;

/// What an inode looked like after a server-made change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
}

impl Fingerprint {
    pub(crate) fn of_stat(st: &libc::stat) -> Self {
        Fingerprint {
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            mode: st.st_mode,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }

    fn of_meta(m: &std::fs::Metadata) -> Self {
        Fingerprint {
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            mode: m.mode(),
            nlink: m.nlink(),
            uid: m.uid(),
            gid: m.gid(),
        }
    }
}

/// Host identity of an object.
type Key = (u64, u64);

/// A directory, a name in it, and what a session did to that name.
type NameKey = (Key, Vec<u8>, NameOp);

/// What a session did to a name (see [`Events::note_name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum NameOp {
    /// Created it (or renamed something to it).
    Created,
    /// Removed it.
    Removed,
    /// Renamed it away.
    RenamedFrom,
}

#[derive(Debug, Default)]
struct EchoTable {
    /// Inode → (session, state after its change, when).
    inodes: HashMap<Key, Vec<(u64, Fingerprint, Instant)>>,
    /// (directory, name) removed or renamed away by a session.
    names: HashMap<NameKey, Vec<(u64, Instant)>>,
    last_gc: Option<Instant>,
}

impl EchoTable {
    fn gc(&mut self, now: Instant) {
        if self
            .last_gc
            .is_some_and(|t| now.duration_since(t) < ECHO_MAX_AGE / 4)
        {
            return;
        }
        self.last_gc = Some(now);
        self.inodes.retain(|_, v| {
            v.retain(|(_, _, t)| now.duration_since(*t) < ECHO_MAX_AGE);
            !v.is_empty()
        });
        self.names.retain(|_, v| {
            v.retain(|(_, t)| now.duration_since(*t) < ECHO_MAX_AGE);
            !v.is_empty()
        });
    }
}

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
    echo: Mutex<EchoTable>,
    /// Mutations in flight, counted in two alternating epochs.
    epoch: AtomicUsize,
    in_flight: [AtomicU64; 2],
    /// The running watcher; dropping it stops the watcher thread.
    watcher: Mutex<Option<RecommendedWatcher>>,
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
        let now = Instant::now();
        let mut t = self.echo.lock().unwrap_or_else(|e| e.into_inner());
        t.gc(now);
        let v = t.inodes.entry(key).or_default();
        v.retain(|(s, _, _)| *s != sid);
        v.push((sid, fp, now));
    }

    /// Records that session `sid` did `op` to `name` in directory `dir`. Names, unlike
    /// inode states, stay recognisable when the object changes again or goes away before the
    /// event is looked at.
    pub(crate) fn note_name(&self, sid: u64, dir: Key, name: &[u8], op: NameOp) {
        let now = Instant::now();
        trace!(sid, ?dir, name = %String::from_utf8_lossy(name), ?op, "echo name noted");
        let mut t = self.echo.lock().unwrap_or_else(|e| e.into_inner());
        t.gc(now);
        t.names
            .entry((dir, name.to_vec(), op))
            .or_default()
            .push((sid, now));
    }

    /// Whether the state `fp` of `key` is session `sid`'s own doing.
    fn echo_of_inode(&self, sid: u64, key: Key, fp: &Fingerprint) -> bool {
        let t = self.echo.lock().unwrap_or_else(|e| e.into_inner());
        t.inodes
            .get(&key)
            .is_some_and(|v| v.iter().any(|(s, f, _)| *s == sid && f == fp))
    }

    /// Whether `op` on `name` in `dir` was session `sid`'s doing; consumes the record.
    fn echo_of_name(&self, sid: u64, dir: Key, name: &[u8], op: NameOp) -> bool {
        trace!(sid, ?dir, name = %String::from_utf8_lossy(name), ?op, "echo name checked");
        let mut t = self.echo.lock().unwrap_or_else(|e| e.into_inner());
        let k = (dir, name.to_vec(), op);
        let Some(v) = t.names.get_mut(&k) else {
            return false;
        };
        let Some(i) = v.iter().position(|(s, _)| *s == sid) else {
            return false;
        };
        v.remove(i);
        if v.is_empty() {
            t.names.remove(&k);
        }
        true
    }
}

impl Export {
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

    fn start_watcher(self: &Arc<Self>) -> Result<RecommendedWatcher, Errno> {
        let (tx, rx) = channel();
        let mut w = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })
        .map_err(|e| {
            error!(export = self.name, "cannot start the host watcher: {e}");
            Errno::EIO
        })?;
        let started = Instant::now();
        if let Err(e) = w.watch(&self.path, RecursiveMode::Recursive) {
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
        info!(
            export = self.name,
            ms = started.elapsed().as_millis() as u64,
            "watching the export for host changes"
        );
        let export = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("ferry-watch-{}", self.name))
            .spawn(move || export.watch_loop(rx))
            .map_err(|_| Errno::EAGAIN)?;
        Ok(w)
    }

    fn watch_loop(&self, rx: Receiver<notify::Result<notify::Event>>) {
        let mut held_from: Option<(usize, PathBuf)> = None;
        let mut scanned = Scanned::default();
        let mut dirs = DirKeys::default();
        loop {
            let Ok(first) = rx.recv() else {
                debug!(export = self.name, "watcher thread ends");
                return;
            };
            let mut open_rename = opens_rename(held_from.is_some(), &first);
            let mut raw = vec![first];
            let start = Instant::now();
            loop {
                let quiet = if open_rename {
                    RENAME_WAIT
                } else {
                    BURST_QUIET
                };
                if raw.len() >= BURST_EVENTS || start.elapsed() >= BURST_MAX.max(quiet) {
                    break;
                }
                match rx.recv_timeout(quiet) {
                    Ok(ev) => {
                        open_rename = opens_rename(open_rename, &ev);
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
                    Ok(ev) => raw_change(&self.path, ev, &mut held_from, &mut changes),
                    Err(e) => {
                        error!(export = self.name, "host watcher error: {e}");
                        if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                            error!("{WATCH_LIMIT_ADVICE}");
                        }
                        changes.push(Raw::overflow());
                    }
                }
            }
            if let Some((_, from)) = held_from.take() {
                // The rename's second half never came: moved out of the export.
                changes.push(Raw::new(ChangeKind::Removed, from, false));
            }
            let changes = coalesce(changes);
            let changes = scanned.expand(&self.path, changes);
            if changes.iter().any(|c| c.kind == ChangeKind::Overflow) {
                warn!(
                    export = self.name,
                    "host events were lost; every guest will drop its caches of this export"
                );
            }
            self.deliver(&changes, &mut dirs);
            for c in &changes {
                if matches!(c.kind, ChangeKind::Removed | ChangeKind::Renamed) {
                    dirs.forget_tree(&c.path);
                }
            }
        }
    }

    /// Resolves `changes` for every watching session and hands them over.
    fn deliver(&self, changes: &[Raw], dirs: &mut DirKeys) {
        let facts: Vec<Facts> = changes
            .iter()
            .map(|c| Facts::of(&self.path, c, dirs))
            .collect();
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
            if !out.is_empty() {
                sink(out);
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
                    .echo_of_name(sid, f.parent?, name, NameOp::Created)
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
                    .echo_of_name(sid, parent_key, name, NameOp::Removed)
                    || self
                        .events
                        .echo_of_name(sid, parent_key, name, NameOp::RenamedFrom)
                {
                    return None;
                }
                let parent = node_of(Some(parent_key));
                (parent != 0 || by_path).then(|| change(c.kind, parent, 0, file_type(&None), None))
            }
            ChangeKind::Data | ChangeKind::DataClosed | ChangeKind::Closed | ChangeKind::Attrib => {
                if let Some((key, fp)) = f.obj {
                    if self.events.echo_of_inode(sid, key, &fp) {
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
                    .echo_of_name(sid, from_key, from_name, NameOp::RenamedFrom)
                {
                    if let (Some(k), Some(n)) =
                        (f.to_parent, c.to.as_ref().and_then(|t| t.file_name()))
                    {
                        self.events
                            .echo_of_name(sid, k, n.as_bytes(), NameOp::Created);
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

/// What `notify` tells how to fix when the watch limit is reached.
const WATCH_LIMIT_ADVICE: &str = "the inotify watch limit is reached, so host changes in part of \
     the export are not seen; raise it with `sysctl fs.inotify.max_user_watches=1048576` (and \
     fs.inotify.max_queued_events for bursts)";

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

    fn overflow() -> Self {
        Raw::new(ChangeKind::Overflow, PathBuf::new(), false)
    }
}

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

    fn key(&mut self, root: &Path, dir: &Path) -> Option<Key> {
        match std::fs::symlink_metadata(root.join(dir)) {
            Ok(m) if m.is_dir() => {
                let k = (m.dev(), m.ino());
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

impl Facts {
    fn of(root: &Path, c: &Raw, dirs: &mut DirKeys) -> Facts {
        // `symlink_metadata` never follows a final symlink; these identities are only
        // compared with nodes a session holds, never opened.
        let key = |p: &Path| -> Option<(Key, Fingerprint)> {
            let m = std::fs::symlink_metadata(root.join(p)).ok()?;
            Some(((m.dev(), m.ino()), Fingerprint::of_meta(&m)))
        };
        if c.kind == ChangeKind::Overflow {
            return Facts::default();
        }
        let mut parent = |p: &Path| -> Option<Key> { dirs.key(root, p.parent()?) };
        Facts {
            parent: parent(&c.path),
            to_parent: c.to.as_deref().and_then(&mut parent),
            obj: key(c.to.as_deref().unwrap_or(&c.path)),
        }
    }
}

/// Whether a rename's first half is still waiting for its second after `ev`, given whether
/// one was before it.
fn opens_rename(open: bool, ev: &notify::Result<notify::Event>) -> bool {
    match ev {
        Ok(ev) => match ev.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                open || ev.attrs.tracker().is_some()
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => false,
            _ => open,
        },
        Err(_) => open,
    }
}

/// Turns one `notify` event into changes, pairing rename halves through `held`.
fn raw_change(
    root: &Path,
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
            let is_dir = std::fs::symlink_metadata(root.join(&to)).is_ok_and(|m| m.is_dir());
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
/// changes of one path with nothing structural in between become one.
pub(crate) fn coalesce(changes: Vec<Raw>) -> Vec<Raw> {
    let mut out: Vec<Raw> = Vec::with_capacity(changes.len());
    // Path → index in `out` of its latest content change since the last structural change.
    let mut last: HashMap<PathBuf, usize> = HashMap::new();
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
                    // Only the path's latest change may absorb the new one.
                    if let Some(kind) = merged {
                        if out.iter().skip(i + 1).all(|o| o.path != c.path) {
                            out[i].kind = kind;
                            continue;
                        }
                    }
                }
                last.insert(c.path.clone(), out.len());
                out.push(c);
            }
            ChangeKind::Created
            | ChangeKind::Removed
            | ChangeKind::Renamed
            | ChangeKind::Overflow => {
                last.clear();
                out.push(c);
            }
        }
    }
    out
}

/// Paths reported from listing new directories, so that their own late events are not
/// reported again.
#[derive(Debug, Default)]
struct Scanned {
    seen: HashMap<PathBuf, (u64, Instant)>,
}

impl Scanned {
    /// After each created directory, adds what it already holds (recursively); drops creations
    /// that a listing already reported.
    fn expand(&mut self, root: &Path, changes: Vec<Raw>) -> Vec<Raw> {
        let now = Instant::now();
        self.seen
            .retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(2));
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            match c.kind {
                ChangeKind::Created => {
                    if let Some(&(seen, _)) = self.seen.get(&c.path) {
                        match std::fs::symlink_metadata(root.join(&c.path)) {
                            // The object the listing reported: its own late event.
                            Ok(m) if m.ino() == seen => continue,
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

    fn list(&mut self, root: &Path, dir: &Path, out: &mut Vec<Raw>, now: Instant) {
        let mut stack = vec![dir.to_path_buf()];
        let mut n = 0;
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(root.join(&d)) else {
                continue;
            };
            // Creation order, as far as the host can tell, rather than directory order.
            let mut entries: Vec<_> = rd
                .flatten()
                .filter_map(|e| e.metadata().ok().map(|m| (e, m)))
                .collect();
            entries.sort_by_key(|(_, m)| (m.ctime(), m.ctime_nsec(), m.ino()));
            for (e, m) in entries {
                n += 1;
                if n > SCAN_LIMIT {
                    warn!(
                        "a new directory {} holds over {SCAN_LIMIT} entries; reporting an overflow",
                        d.display()
                    );
                    out.push(Raw::overflow());
                    return;
                }
                let rel = d.join(e.file_name());
                self.seen.insert(rel.clone(), (m.ino(), now));
                out.push(Raw::new(ChangeKind::Created, rel.clone(), m.is_dir()));
                if m.is_dir() {
                    stack.push(rel);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: ChangeKind, p: &str) -> Raw {
        Raw::new(kind, PathBuf::from(p), false)
    }

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
        let out = scanned.expand(root.path(), vec![dir]);
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
            kinds(&scanned.expand(root.path(), late)),
            [(Removed, "new/b".into())]
        );
        // After its removal, the name created again is a creation of its own.
        std::fs::write(root.path().join("new/b"), b"").unwrap();
        let again = vec![Raw::new(Created, PathBuf::from("new/b"), false)];
        assert_eq!(
            kinds(&scanned.expand(root.path(), again)),
            [(Created, "new/b".into())]
        );
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

    #[test]
    fn echo_records_match_only_their_session_and_state() {
        let ev = Events::default();
        let st: libc::stat = {
            // SAFETY: all-zero bytes are a valid `stat`.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            st.st_size = 10;
            st
        };
        let fp = Fingerprint::of_stat(&st);
        ev.note_inode(1, (5, 6), fp);
        assert!(ev.echo_of_inode(1, (5, 6), &fp));
        assert!(!ev.echo_of_inode(2, (5, 6), &fp));
        let mut other = fp;
        other.size = 11;
        assert!(!ev.echo_of_inode(1, (5, 6), &other));
        ev.note_name(1, (5, 1), b"x", NameOp::Removed);
        assert!(!ev.echo_of_name(2, (5, 1), b"x", NameOp::Removed));
        assert!(
            !ev.echo_of_name(1, (5, 1), b"x", NameOp::Created),
            "another operation"
        );
        assert!(ev.echo_of_name(1, (5, 1), b"x", NameOp::Removed));
        assert!(
            !ev.echo_of_name(1, (5, 1), b"x", NameOp::Removed),
            "used once"
        );
    }
}
