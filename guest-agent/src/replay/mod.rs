//! Replaying host changes so that the guest kernel raises real inotify events.
//!
//! FUSE cache notifications raise no inotify events; only operations through the VFS do. So,
//! as osxfs did, a dedicated replay thread performs, on the mount, the operation matching each
//! host change (`mknod` for a created file, `unlink` for a removed one, `rename` for a rename,
//! `utimensat` or an open-touch-close for a write, `utimensat` for an attribute change). The
//! FUSE handlers recognise that thread's requests by the thread id in the request header and
//! answer them (`crate::fs`'s replay answers, by the rule of [`ferry_protocol::replay`]) from
//! a small *view* of the change and reads of the host, never touching host files. The kernel
//! then emits the events every watcher expects. What this relies on about the kernel is in
//! `guest-agent/REPLAY.md`.
//!
//! Coherence first: a `ferry-coherence` thread invalidates what the kernel caches of every
//! change of a batch (pages, attributes, names: [`KernelNotifier`]) as soon as the batch
//! arrives, then hands it to the replay thread, so no replay backlog delays an invalidation.
//!
//! The replay thread, for each change, in stream order:
//! 1. (the coherence thread has invalidated it);
//! 2. install the view: which of the change's names a request names, and how each looked
//!    before the change (absent for a creation and a rename target, the object or a synthetic
//!    stand-in for a removal and a rename source);
//! 3. make the syscall (`syscalls`), with no lock held;
//! 4. drop the view, and give back the lookup the server took for the change if the kernel
//!    never received it.
//!
//! On a mount this agent does not serve (a virtio-fs mount, `--events-only`), the host answers
//! the replay thread's requests instead: [`Replayer::bracket`] makes the thread tell the host,
//! before each syscall, which change its requests mean ([`Req::Replay`]), and there is no
//! kernel cache to invalidate from here (the host's replies refresh it).
//!
//! Objects that no longer exist on the host (removed before the server looked) are answered
//! with *synthetic* nodes: ids from [`ferry_protocol::replay::SYNTHETIC_BASE`] up that the
//! agent serves itself and the server never sees. A directory that holds a mount inside the
//! guest is never removed or renamed by a replay (that would detach the mount); its entry is
//! only expired.
//!
//! - `state`: what the replay thread shares with the FUSE handlers.
//! - `syscalls`: the system calls it makes on the mount.

mod state;
mod syscalls;
mod watches;

use state::View;
pub(crate) use state::{Before, Target};
pub use state::{REPLAY_FH_BASE, ReplayState, ReplayStats};

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use ferry_protocol::replay::Side;
use ferry_protocol::{self as proto, Change, ChangeKind, Ctx, ROOT_ID, Request as Req};
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::kernel::KernelNotifier;
use crate::mount::mountinfo::holds_mount;
use syscalls::{create, relative, remove, rename, touch};
use watches::Watches;

/// Longest wait for a watcher to watch a directory just created before replaying what is
/// inside it (see [`Replayer::let_watchers_see`]); reached only when somebody watches its
/// parent without watching new directories.
const NEW_DIR_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// Most new directories remembered for that wait (the oldest are dropped first).
const MAX_NEW_DIRS: usize = 64;

/// What the replay thread needs.
pub struct Replayer {
    /// Replay changes as syscalls (false on a read-only mount, where they would fail: the
    /// caches are then only invalidated).
    pub raise_events: bool,
    /// Shared with the FUSE handlers.
    pub state: Arc<ReplayState>,
    /// Notifications to the kernel (`None` on a mount this agent does not serve).
    pub kernel: Option<KernelNotifier>,
    /// The host answers the replay thread's requests (a virtio-fs mount): each replayed change
    /// is announced with [`Req::Replay`] first, and one that the host did not take is not
    /// replayed.
    pub bracket: bool,
    /// The mount's root path in the guest (for logs and the submount check).
    pub mountpoint: PathBuf,
    /// Device number of the mount (its root's `st_dev`; 0 until the thread has read it). Each
    /// batch opens the mount root and replays only if it is still this filesystem, so no
    /// replay can ever reach the directory underneath once the mount is gone; no fd is held
    /// between batches, so `umount` works.
    pub root_dev: u64,
    /// For giving back lookups the kernel never received.
    pub client: Arc<Client>,
    /// The export id.
    pub export: u32,
    /// Called with a node id whose data changed on the host (drops prefetched bytes).
    pub on_data_change: Box<dyn Fn(u64) + Send>,
}

impl Replayer {
    /// Replays changes until the connection closes. Runs on its own thread.
    pub fn run(mut self, rx: Receiver<Vec<Change>>) {
        // Read here, not while mounting: the stat needs the FUSE session to be serving.
        match nix::sys::stat::stat(&self.mountpoint) {
            Ok(st) => self.root_dev = st.st_dev,
            Err(e) => {
                warn!(mountpoint = %self.mountpoint.display(), "no replay of host changes: {e}");
                return;
            }
        }
        let tid = nix::unistd::gettid().as_raw();
        self.state.tid.store(tid, Ordering::Relaxed);
        let welcome = self.client.welcome();
        let export = welcome.exports.iter().find(|e| e.id == self.export);
        let name = export.map_or_else(|| self.export.to_string(), |e| e.name.clone());
        crate::stats::agent().mount(&name, &self.mountpoint, &self.state);
        if self.bracket {
            // Random per process run: std's hasher keys are.
            let link = std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                (tid, std::process::id()),
            );
            self.state.link.store(link, Ordering::Relaxed);
            if let Err(e) = self.announce_linked(None) {
                warn!(mountpoint = %self.mountpoint.display(), export = self.export,
                      "the host refused this replay thread ({e:?}), or the mount is not a \
                       virtio-fs mount of this export served by the same ferry-host; no host \
                       change events");
                return;
            }
        }
        debug!(tid, mountpoint = %self.mountpoint.display(), "replay thread started");
        // Coherence first: a thread of its own drops what the kernel caches of each batch as
        // soon as it arrives, whatever the replay backlog, and only then hands the batch on.
        let on_data_change = std::mem::replace(&mut self.on_data_change, Box::new(|_| {}));
        let (tx, batches) = std::sync::mpsc::channel::<Vec<Change>>();
        let coherence = Coherence {
            state: &self.state,
            kernel: self.kernel.as_ref(),
            raise_events: self.raise_events,
            mountpoint: &self.mountpoint,
            on_data_change,
        };
        std::thread::scope(|s| {
            let coherence = std::thread::Builder::new()
                .name("ferry-coherence".into())
                .spawn_scoped(s, move || {
                    for batch in rx {
                        for c in &batch {
                            coherence.state.pend(&names_of(c));
                            coherence.invalidate(c);
                        }
                        if tx.send(batch).is_err() {
                            return;
                        }
                    }
                });
            match coherence {
                Ok(_) => self.replay_batches(batches),
                Err(e) => warn!(mountpoint = %self.mountpoint.display(),
                                "cannot start the coherence thread: {e}; no host change events"),
            }
        });
        let s = &self.state.stats;
        info!(
            received = s.received.load(Ordering::Relaxed),
            replayed = s.replayed.load(Ordering::Relaxed),
            skipped = s.skipped.load(Ordering::Relaxed),
            failed = s.failed.load(Ordering::Relaxed),
            failed_missing = s.failed_missing.load(Ordering::Relaxed),
            failed_stale = s.failed_stale.load(Ordering::Relaxed),
            failed_other = s.failed_other.load(Ordering::Relaxed),
            overtaken = s.overtaken.load(Ordering::Relaxed),
            skipped_mount = s.skipped_mount.load(Ordering::Relaxed),
            skipped_unmounted = s.skipped_unmounted.load(Ordering::Relaxed),
            skipped_read_only = s.skipped_read_only.load(Ordering::Relaxed),
            overflows = s.overflows.load(Ordering::Relaxed),
            mountpoint = %self.mountpoint.display(),
            "host change events ended"
        );
    }

    /// Replays the batches the coherence thread hands on (see `run`).
    fn replay_batches(&self, batches: Receiver<Vec<Change>>) {
        // Directories created by a replay whose watchers have not been waited for yet (see
        // `let_watchers_see`); kept across batches, since a burst is cut into batches anywhere.
        let mut new_dirs: Vec<Vec<u8>> = Vec::new();
        let mut watches = Watches::default();
        watches.refresh();
        for batch in batches {
            let root = self.open_root();
            // Where this batch's event lag counts from: the host's watcher reading it.
            let origin = crate::stats::agent().batch_started(self.export);
            for c in batch {
                self.state.stats.received.fetch_add(1, Ordering::Relaxed);
                let _pending = Pending(&self.state, &c);
                if self.state.stopped.load(Ordering::Relaxed) {
                    continue;
                }
                let Some(root) = &root else {
                    // Not mounted (any more): only drop the lookups the server took.
                    self.state
                        .stats
                        .skipped_unmounted
                        .fetch_add(1, Ordering::Relaxed);
                    self.not_replayed("skipped", &c, "the mount is gone".into());
                    if let Some(e) = c.entry {
                        self.forget(e.ino);
                    }
                    continue;
                };
                // A recursive watcher (inotifywait -r, chokidar) watches a new directory only
                // after it has seen it created; on a local disk the programs filling it give it
                // that moment. Give it the same moment before replaying what is inside.
                let inside =
                    |dir: &Vec<u8>| c.path.starts_with(dir) && c.path.get(dir.len()) == Some(&b'/');
                if let Some(i) = new_dirs.iter().position(inside) {
                    let dir = new_dirs.swap_remove(i);
                    self.let_watchers_see(root.as_fd(), &dir, &mut watches);
                }
                self.apply(&c, root.as_fd());
                self.state.stats.lag.record(origin);
                if c.kind == ChangeKind::Created && c.file_type == libc::S_IFDIR {
                    // A watcher of the mount that started since the last walk of `/proc` is
                    // then known by the time the directory's contents are replayed.
                    watches.refresh();
                    if new_dirs.len() >= MAX_NEW_DIRS {
                        new_dirs.remove(0);
                    }
                    new_dirs.push(c.path.clone());
                }
            }
            if self.bracket && root.is_some() {
                let _ = self.announce(None);
            }
        }
    }

    /// Waits until the directory `dir` (just created by a replay) is watched, when somebody
    /// watches its parent: a recursive watcher adds its watch on seeing the creation, and the
    /// changes inside `dir` must not be replayed before that (see `watches.rs`). No wait when
    /// nobody watches the parent; at most [`NEW_DIR_WAIT`] for a watcher that does not
    /// recurse. The stats run on a thread of their own: the replay thread's own lookups
    /// would be answered as part of the change just replayed.
    fn let_watchers_see(&self, root: BorrowedFd<'_>, dir: &[u8], watches: &mut Watches) {
        let parent = match dir.iter().rposition(|&b| b == b'/') {
            Some(i) => &dir[..i],
            None => &[][..],
        };
        let stat = |path: &[u8]| -> Option<nix::sys::stat::FileStat> {
            let rel = relative(path).ok()?;
            nix::sys::stat::fstatat(
                root,
                rel.as_c_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .ok()
        };
        let began = std::time::Instant::now();
        let found = std::thread::scope(|s| {
            s.spawn(|| Some((stat(parent)?, stat(dir)?)))
                .join()
                .ok()
                .flatten()
        });
        let Some((parent, child)) = found else {
            return;
        };
        let kdev = watches::kernel_dev(child.st_dev);
        let watchers = watches.watching(kdev, parent.st_ino);
        if watchers.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let seen = Watches::wait_watched(&watchers, kdev, child.st_ino, NEW_DIR_WAIT);
        debug!(dir = %String::from_utf8_lossy(dir), seen,
               checked_us = started.duration_since(began).as_micros() as u64,
               waited_us = started.elapsed().as_micros() as u64,
               "waited for watchers of a new directory");
    }

    /// Tells the host which change this thread's requests mean from now on (`None`: none),
    /// and waits for its answer.
    fn announce(&self, change: Option<&Change>) -> Result<(), proto::Errno> {
        let tid = self.state.tid.load(Ordering::Relaxed);
        self.client
            .call_blocking(
                self.export,
                Ctx::default(),
                &Req::Replay(proto::Replay {
                    tid,
                    link: self.state.link.load(Ordering::Relaxed),
                    change: change.cloned(),
                }),
                &[],
            )
            .map(drop)
    }

    /// As [`Replayer::announce`], and when the host says that no session of the mount is
    /// linked to this connection (ENXIO: the thread's requests would be performed as anyone's),
    /// links it and asks again. A lookup of the link name through the mount tells the host
    /// which of its sessions serves this guest: only this guest's thread ids count there, and
    /// the guest's own changes through the mount are not replayed back to it. The name need
    /// not exist. A VMM that reconnects gets a new, unlinked session, hence the retry here.
    fn announce_linked(&self, change: Option<&Change>) -> Result<(), proto::Errno> {
        match self.announce(change) {
            Err(proto::Errno::ENXIO) => {
                let link = self.state.link.load(Ordering::Relaxed);
                let name = format!("{}{link:016x}", proto::REPLAY_LINK_PREFIX);
                let _ = nix::sys::stat::lstat(&self.mountpoint.join(name));
                self.announce(change)
            }
            r => r,
        }
    }

    fn expire_entry(&self, parent: u64, name: &[u8]) {
        if let Some(k) = &self.kernel {
            if let Err(e) = k.expire_entry(parent, name) {
                debug!("expire_entry: {e}");
            }
        }
    }

    /// The mount root, if `mountpoint` is still this mount.
    fn open_root(&self) -> Option<OwnedFd> {
        let fd = nix::fcntl::open(
            &self.mountpoint,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        let st = nix::sys::stat::fstat(&fd).ok()?;
        if st.st_dev != self.root_dev {
            debug!(mountpoint = %self.mountpoint.display(), "not mounted any more; no replay");
            return None;
        }
        Some(fd)
    }

    fn apply(&self, c: &Change, root: BorrowedFd<'_>) {
        let path = self
            .mountpoint
            .join(Path::new(std::ffi::OsStr::from_bytes(&c.path)));
        let Ok(rel) = relative(&c.path) else {
            return;
        };
        let name = c
            .path
            .rsplit(|&b| b == b'/')
            .next()
            .unwrap_or_default()
            .to_vec();
        let entry_before = || match c.entry {
            Some(e) => Before::Entry(e),
            None => Before::Synthetic(c.file_type),
        };
        let ft = c
            .entry
            .map(|e| e.attr.mode & libc::S_IFMT)
            .unwrap_or(c.file_type);
        if !self.raise_events {
            // Nothing to replay: the coherence thread has invalidated it.
            self.state
                .stats
                .skipped_read_only
                .fetch_add(1, Ordering::Relaxed);
            self.not_replayed("skipped", c, "read-only mount: caches dropped only".into());
            if let Some(e) = c.entry {
                if e.ino != ROOT_ID {
                    self.forget(e.ino);
                }
            }
            return;
        }
        if self.bracket && c.kind != ChangeKind::Overflow {
            if let Err(e) = self.announce_linked(Some(c)) {
                self.state.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.state
                    .stats
                    .failed_other
                    .fetch_add(1, Ordering::Relaxed);
                debug!(kind = ?c.kind, path = %path.display(), "the host refused the replay: {e:?}");
                self.not_replayed("failed", c, format!("the host refused the replay: {e:?}"));
                if let Some(e) = c.entry {
                    self.forget(e.ino);
                }
                return;
            }
        }
        let mut view = View::new(c.kind, c.entry, ft);
        let result = match c.kind {
            ChangeKind::Overflow => {
                // The coherence thread has dropped every cached name and attribute; the
                // stream's own names are unknown from here on too.
                self.state.stats.overflows.fetch_add(1, Ordering::Relaxed);
                for ino in self.state.model_clear() {
                    self.forget(ino);
                }
                warn!(
                    mountpoint = %self.mountpoint.display(),
                    "the host lost change events; every cached name and attribute was dropped"
                );
                return;
            }
            ChangeKind::Created => {
                view.name(c.parent, &name, Side::From, Before::Absent);
                self.state.install(view);
                create(root, &rel, ft)
            }
            ChangeKind::Removed => {
                if ft == libc::S_IFDIR && holds_mount(&path) {
                    return self.expire(c, c.parent, &name);
                }
                view.name(c.parent, &name, Side::From, Before::Synthetic(ft));
                self.state.install(view);
                remove(root, &rel, ft)
            }
            ChangeKind::Renamed => {
                let Ok(to) = relative(&c.to) else {
                    return;
                };
                let to_name = c.to.rsplit(|&b| b == b'/').next().unwrap_or_default();
                if ft == libc::S_IFDIR && holds_mount(&path) {
                    self.expire_entry(c.to_parent, to_name);
                    return self.expire(c, c.parent, &name);
                }
                view.name(c.parent, &name, Side::From, entry_before());
                view.name(c.to_parent, to_name, Side::To, Before::Absent);
                self.state.install(view);
                rename(root, &rel, &to)
            }
            ChangeKind::Data | ChangeKind::DataClosed | ChangeKind::Closed | ChangeKind::Attrib => {
                // The coherence thread has invalidated the object's pages and attributes.
                if let Some(e) = c.entry {
                    if !c.path.is_empty() {
                        view.name(c.parent, &name, Side::From, Before::Entry(e));
                    } else {
                        // The root: the kernel always holds it; no lookup to give back.
                        view.used = true;
                    }
                } else if !c.path.is_empty() {
                    // Gone on the host since (a rename or removal follows): a lookup of the
                    // name gets a stand-in, so the event is raised at the name the guest knows.
                    view.name(c.parent, &name, Side::From, Before::Synthetic(ft));
                }
                // Without an entry the object has moved on on the host since (a rename or
                // removal follows); the replay works on what the guest holds.
                self.state.install(view);
                touch(root, &rel, c.kind, ft)
            }
        };
        let view = self.state.take();
        let overtaken = self.state.take_overtaken();
        match result {
            Ok(()) => {
                self.state.stats.replayed.fetch_add(1, Ordering::Relaxed);
                if overtaken {
                    // Raised in stream order, but the host has moved on: have the next lookup
                    // of these names ask the host (the change that overtook it follows).
                    self.state.stats.overtaken.fetch_add(1, Ordering::Relaxed);
                    self.expire_entry(c.parent, &name);
                    if c.kind == ChangeKind::Renamed {
                        let to_name = c.to.rsplit(|&b| b == b'/').next().unwrap_or_default();
                        self.expire_entry(c.to_parent, to_name);
                    }
                }
            }
            Err(e) => {
                let stats = &self.state.stats;
                if e.crossed() {
                    // Never followed: a symlink or a mount where the guest knew a directory.
                    stats.skipped.fetch_add(1, Ordering::Relaxed);
                    warn!(kind = ?c.kind, path = %path.display(), "replay skipped: {e}");
                    self.not_replayed("skipped", c, e.to_string());
                } else {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    match e.errno() {
                        nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => {
                            &stats.failed_missing
                        }
                        nix::errno::Errno::ESTALE
                        | nix::errno::Errno::EEXIST
                        | nix::errno::Errno::EPERM
                        | nix::errno::Errno::ENOTEMPTY => &stats.failed_stale,
                        _ => &stats.failed_other,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    debug!(kind = ?c.kind, path = %path.display(), "replay failed: {e}");
                    self.not_replayed("failed", c, e.to_string());
                }
                // A stale or failed replay: make the names be looked up again.
                match c.kind {
                    ChangeKind::Created | ChangeKind::Removed => {
                        self.expire_entry(c.parent, &name);
                    }
                    ChangeKind::Renamed => {
                        let to_name = c.to.rsplit(|&b| b == b'/').next().unwrap_or_default();
                        self.expire_entry(c.parent, &name);
                        self.expire_entry(c.to_parent, to_name);
                    }
                    _ => {}
                }
            }
        }
        if let (Some(e), Some(v)) = (c.entry, view) {
            if !v.used && e.ino != ROOT_ID {
                self.forget(e.ino);
            }
        }
    }

    fn forget(&self, ino: u64) {
        self.client.send_oneway(
            self.export,
            Ctx::default(),
            &Req::Forget(proto::Forget {
                nodes: vec![(ino, 1)],
            }),
        );
    }

    /// Remembers why change `c` was not replayed (`ferry-agent status`).
    fn not_replayed(&self, outcome: &'static str, c: &Change, reason: String) {
        self.state
            .stats
            .recent
            .record(outcome, &c.kind, &c.path, reason);
    }

    /// Expires a name instead of replaying change `c` (a directory holding a guest mount).
    fn expire(&self, c: &Change, parent: u64, name: &[u8]) {
        self.not_replayed("skipped", c, "a guest mount is on this directory".into());
        self.state.stats.skipped.fetch_add(1, Ordering::Relaxed);
        self.state
            .stats
            .skipped_mount
            .fetch_add(1, Ordering::Relaxed);
        self.expire_entry(parent, name);
    }
}

/// The names a change is about, by the directory node the host gave (for the pending set).
fn names_of(c: &Change) -> Vec<(u64, &[u8])> {
    fn last(p: &[u8]) -> &[u8] {
        p.rsplit(|&b| b == b'/').next().unwrap_or_default()
    }
    let mut v = Vec::with_capacity(2);
    if !c.path.is_empty() {
        v.push((c.parent, last(&c.path)));
    }
    if c.kind == ChangeKind::Renamed && !c.to.is_empty() {
        v.push((c.to_parent, last(&c.to)));
    }
    v
}

/// Takes a change's names out of the pending set once the replay thread is done with it,
/// however it returns.
struct Pending<'a>(&'a ReplayState, &'a Change);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.unpend(&names_of(self.1));
    }
}

/// What the coherence thread needs (see [`Replayer::run`]).
struct Coherence<'a> {
    state: &'a ReplayState,
    kernel: Option<&'a KernelNotifier>,
    raise_events: bool,
    mountpoint: &'a Path,
    on_data_change: Box<dyn Fn(u64) + Send>,
}

impl Coherence<'_> {
    /// Drops what the kernel caches about `c`, at once (the coherence thread; see `run`):
    /// pages and attributes of a changed object, the names a creation, removal or rename is
    /// about. The names of directories removed or renamed are left to the replay, which moves
    /// or removes them: earlier changes below them, still waiting in the backlog, are replayed
    /// through those names (the path walk would otherwise ask the host, which no longer has
    /// them). Their contents are still coherent: each of their own changes is invalidated here.
    fn invalidate(&self, c: &Change) {
        let name = c.path.rsplit(|&b| b == b'/').next().unwrap_or_default();
        let to_name = c.to.rsplit(|&b| b == b'/').next().unwrap_or_default();
        let dir = c.file_type == libc::S_IFDIR
            || c.entry
                .is_some_and(|e| e.attr.mode & libc::S_IFMT == libc::S_IFDIR);
        match c.kind {
            ChangeKind::Overflow => self.drop_all_cached(),
            ChangeKind::Created => self.expire_entry(c.parent, name),
            ChangeKind::Removed if !dir || !self.raise_events => self.expire_entry(c.parent, name),
            ChangeKind::Renamed => {
                if !dir || !self.raise_events {
                    self.expire_entry(c.parent, name);
                }
                self.expire_entry(c.to_parent, to_name);
            }
            ChangeKind::Removed => {}
            ChangeKind::Data | ChangeKind::DataClosed | ChangeKind::Closed | ChangeKind::Attrib => {
                if let Some(e) = c.entry {
                    let data = c.kind != ChangeKind::Attrib;
                    if data {
                        (self.on_data_change)(e.ino);
                    }
                    // Invalidate before the event is raised, so a watcher reacting to it at
                    // once cannot read cached old bytes.
                    let (off, len) = if data { (0, 0) } else { (-1, 0) };
                    self.inval_inode(e.ino, off, len);
                }
            }
        }
    }

    fn inval_inode(&self, ino: u64, offset: i64, len: i64) {
        if let Some(k) = self.kernel {
            if let Err(err) = k.inval_inode(ino, offset, len) {
                debug!(ino, "inval_inode: {err}");
            }
        }
    }

    fn expire_entry(&self, parent: u64, name: &[u8]) {
        if let Some(k) = self.kernel {
            if let Err(e) = k.expire_entry(parent, name) {
                debug!("expire_entry: {e}");
            }
        }
    }

    /// Drops every name and attribute the kernel caches for the mount.
    fn drop_all_cached(&self) {
        let Some(k) = self.kernel else {
            warn!(mountpoint = %self.mountpoint.display(),
                  "the mount's caches cannot be dropped from here; they expire after their timeout");
            return;
        };
        if let Err(e) = k.inc_epoch() {
            debug!("epoch increment unsupported ({e}); invalidating the root only");
            let _ = k.inval_inode(ROOT_ID, 0, 0);
        }
    }
}
