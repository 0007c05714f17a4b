//! Replaying host changes so that the guest kernel raises real inotify events.
//!
//! FUSE cache notifications raise no inotify events; only operations through the VFS do. So,
//! as osxfs did, a dedicated replay thread performs, on the mount, the operation matching each
//! host change (`mknod` for a created file, `unlink` for a removed one, `rename` for a rename,
//! `utimensat` or an open-touch-close for a write, `utimensat` for an attribute change), and the
//! FUSE handlers recognise that thread's requests by the thread id in the request header and
//! answer them here, from a small *view* of the change, without a host round trip and without
//! touching host files. The kernel then emits the events every watcher expects.
//!
//! For each change, in order (kernel behaviour measured in shared/notes/inotify-replay.md):
//! 1. invalidate what the kernel caches of it (pages and attributes: [`KernelNotifier`]);
//! 2. install the view: how the replay thread's LOOKUPs are answered (the name as it was
//!    before the change: absent for a creation and a rename target, present for a removal and
//!    a rename source), and which node a replayed creation returns; a replayed SETATTR is
//!    answered with the host's current attributes (a read), since the kernel keeps them;
//! 3. make the syscall, with no lock held;
//! 4. drop the view, and give back the lookup the server took for the change if the kernel
//!    never received it.
//!
//! On a mount this agent does not serve (a virtio-fs mount, `--events-only`), the host answers
//! the replay thread's requests instead: [`Replayer::bracket`] makes the thread tell the host,
//! before each syscall, which change its requests mean ([`Req::Replay`]), and there is no
//! kernel cache to invalidate from here (the host's replies refresh it).
//!
//! Objects that no longer exist on the host (removed before the server looked) are answered
//! with *synthetic* nodes: ids from [`SYNTHETIC_BASE`] up that the agent serves itself and the
//! server never sees. A directory that holds a mount inside the guest is never removed or
//! renamed by a replay (that would detach the mount); its entry is only expired.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use ferry_protocol::replay::{SYNTHETIC_BASE, Side};
use ferry_protocol::{
    self as proto, Attr, Change, ChangeKind, Ctx, Entry, ROOT_ID, Request as Req,
};
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::kernel::KernelNotifier;

/// Pause before replaying the first change inside a directory just created (see `run`).
const NEW_DIR_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// File handles from here up belong to the replay thread's own opens.
pub const REPLAY_FH_BASE: u64 = 1 << 62;

/// How a name the change is about looked before the change: what the replay thread's LOOKUP
/// of it is answered with while the change still holds
/// ([`ferry_protocol::replay::Answer::Before`]).
#[derive(Clone, Debug)]
pub(crate) enum Before {
    /// Absent (ENOENT): a creation's name, a rename's target.
    Absent,
    /// This node (the server took one lookup for it).
    Entry(Entry),
    /// A synthetic node of this file type: the host no longer has the object.
    Synthetic(u32),
}

/// One name the change is about.
#[derive(Debug)]
struct Name {
    /// The directory holding it, or 0 for any.
    parent: u64,
    name: Vec<u8>,
    /// Which of the change's names it is.
    side: Side,
    before: Before,
}

/// The change being replayed, as the replay thread's requests are answered from it.
#[derive(Debug)]
pub(crate) struct View {
    kind: ChangeKind,
    names: Vec<Name>,
    /// The node the change carries (created, removed, renamed or changed), as the server looked
    /// it up; `None` when the host no longer had the object: the change's node is synthetic.
    node: Option<u64>,
    /// The change's file type (`S_IFMT` bits, 0 when unknown).
    file_type: u32,
    /// The server's lookup was handed to the kernel.
    used: bool,
}

impl View {
    fn new(kind: ChangeKind, node: Option<u64>, file_type: u32) -> Self {
        Self {
            kind,
            names: Vec::new(),
            node,
            file_type,
            used: false,
        }
    }

    fn name(&mut self, parent: u64, name: &[u8], side: Side, before: Before) {
        self.names.push(Name {
            parent,
            name: name.to_vec(),
            side,
            before,
        });
    }
}

/// What the change being replayed says about one name of a request: what the rule of
/// [`ferry_protocol::replay`] decides from, besides what the host holds there now.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The change's kind.
    pub kind: ChangeKind,
    /// Which of the change's names this is ([`Side::Neither`]: none).
    pub side: Side,
    /// How the name looked before the change (`None` for a name the change is not about).
    pub before: Option<Before>,
    /// The node the change carries; `None`: synthetic (the host no longer had it).
    pub node: Option<u64>,
    /// The change's file type (`S_IFMT` bits, 0 when unknown).
    pub file_type: u32,
}

/// Counters for the log: did the event reach the VM, and what became of it.
#[derive(Debug, Default)]
pub struct ReplayStats {
    /// Changes received from the host.
    pub received: AtomicU64,
    /// Changes replayed on the mount.
    pub replayed: AtomicU64,
    /// Changes whose replay failed (the cache was still invalidated).
    pub failed: AtomicU64,
    /// Changes not replayed on purpose (a guest mount below, nothing to replay).
    pub skipped: AtomicU64,
    /// Overflows: every cached name dropped.
    pub overflows: AtomicU64,
}

/// State shared between the replay thread and the FUSE handlers.
#[derive(Debug, Default)]
pub struct ReplayState {
    /// Thread id of the replay thread (0 until it runs).
    tid: AtomicI32,
    /// The random number that links the host's session of a mount this agent does not serve
    /// to this agent's (see `Replayer::bracket`).
    link: AtomicU64,
    view: Mutex<Option<View>>,
    next_synthetic: AtomicU64,
    next_fh: AtomicU64,
    /// Synthetic nodes the kernel holds.
    synthetic: DashMap<u64, Attr>,
    /// Set when the mount goes away: no more replays.
    stopped: std::sync::atomic::AtomicBool,
    /// Counters.
    pub stats: ReplayStats,
}

impl ReplayState {
    /// Whether a request with header pid `pid` comes from the replay thread.
    pub(crate) fn is_replay(&self, pid: u32) -> bool {
        let tid = self.tid.load(Ordering::Relaxed);
        tid != 0 && pid as i32 == tid
    }

    /// Stops replaying (the mount is going away).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Attributes of a synthetic node.
    pub(crate) fn synthetic_attr(&self, ino: u64) -> Option<Attr> {
        self.synthetic.get(&ino).map(|a| *a)
    }

    /// The kernel dropped a synthetic node.
    pub(crate) fn forget_synthetic(&self, ino: u64) {
        self.synthetic.remove(&ino);
    }

    /// A new synthetic node of type `file_type` (a regular file when 0).
    pub(crate) fn synthetic(&self, file_type: u32) -> Entry {
        let ino = SYNTHETIC_BASE + self.next_synthetic.fetch_add(1, Ordering::Relaxed);
        let now = proto::Timespec {
            sec: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            nsec: 0,
        };
        let ft = if file_type == 0 {
            libc::S_IFREG
        } else {
            file_type
        };
        let attr = Attr {
            ino,
            mode: ft | if ft == libc::S_IFDIR { 0o755 } else { 0o644 },
            nlink: if ft == libc::S_IFDIR { 2 } else { 1 },
            atime: now,
            mtime: now,
            ctime: now,
            blksize: 4096,
            ..Attr::default()
        };
        self.synthetic.insert(ino, attr);
        Entry {
            ino,
            generation: 0,
            attr,
        }
    }

    /// What the change being replayed says about `name` in `parent`; `None` when no change is
    /// being replayed. Nothing is handed out yet: see [`ReplayState::hand_out`].
    pub(crate) fn target(&self, parent: u64, name: &[u8]) -> Option<Target> {
        let guard = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let view = guard.as_ref()?;
        let found = view
            .names
            .iter()
            .find(|n| (n.parent == 0 || n.parent == parent) && n.name == name);
        Some(Target {
            kind: view.kind,
            side: found.map_or(Side::Neither, |n| n.side),
            before: found.map(|n| n.before.clone()),
            node: view.node,
            file_type: view.file_type,
        })
    }

    /// The node for `before` (`None` for ENOENT), counting a real one as handed to the kernel.
    pub(crate) fn hand_out(&self, before: &Before) -> Option<Entry> {
        match before {
            Before::Absent => None,
            Before::Entry(e) => {
                if let Some(view) = self.view.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    view.used = true;
                }
                Some(*e)
            }
            Before::Synthetic(ft) => Some(self.synthetic(*ft)),
        }
    }

    /// A handle for the replay thread's own open.
    pub(crate) fn replay_fh(&self) -> u64 {
        REPLAY_FH_BASE + self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn install(&self, view: View) {
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = Some(view);
    }

    fn take(&self) -> Option<View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

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
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.state.tid.store(tid, Ordering::Relaxed);
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
        for batch in rx {
            let root = self.open_root();
            let mut new_dir: Option<Vec<u8>> = None;
            for c in batch {
                self.state.stats.received.fetch_add(1, Ordering::Relaxed);
                if self.state.stopped.load(Ordering::Relaxed) {
                    continue;
                }
                let Some(root) = &root else {
                    // Not mounted (any more): only drop the lookups the server took.
                    if let Some(e) = c.entry {
                        self.forget(e.ino);
                    }
                    continue;
                };
                // A recursive watcher (inotifywait -r, chokidar) watches a new directory only
                // after it has seen it created; on a local disk the programs filling it give it
                // that moment. Give it the same moment before replaying what is inside.
                if let Some(dir) = new_dir.take() {
                    if c.path.starts_with(&dir) && c.path.get(dir.len()) == Some(&b'/') {
                        std::thread::sleep(NEW_DIR_PAUSE);
                    }
                }
                self.apply(&c, root.as_raw_fd());
                if c.kind == ChangeKind::Created && c.file_type == libc::S_IFDIR {
                    new_dir = Some(c.path.clone());
                }
            }
            if self.bracket && root.is_some() {
                let _ = self.announce(None);
            }
        }
        let s = &self.state.stats;
        info!(
            received = s.received.load(Ordering::Relaxed),
            replayed = s.replayed.load(Ordering::Relaxed),
            skipped = s.skipped.load(Ordering::Relaxed),
            failed = s.failed.load(Ordering::Relaxed),
            overflows = s.overflows.load(Ordering::Relaxed),
            mountpoint = %self.mountpoint.display(),
            "host change events ended"
        );
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

    fn inval_inode(&self, ino: u64, offset: i64, len: i64) {
        if let Some(k) = &self.kernel {
            if let Err(err) = k.inval_inode(ino, offset, len) {
                debug!(ino, "inval_inode: {err}");
            }
        }
    }

    fn expire_entry(&self, parent: u64, name: &[u8]) {
        if let Some(k) = &self.kernel {
            if let Err(e) = k.expire_entry(parent, name) {
                debug!("expire_entry: {e}");
            }
        }
    }

    /// Drops every name and attribute the kernel caches for the mount.
    fn drop_all_cached(&self) {
        let Some(k) = &self.kernel else {
            warn!(mountpoint = %self.mountpoint.display(),
                  "the mount's caches cannot be dropped from here; they expire after their timeout");
            return;
        };
        if let Err(e) = k.inc_epoch() {
            debug!("epoch increment unsupported ({e}); invalidating the root only");
            let _ = k.inval_inode(ROOT_ID, 0, 0);
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

    fn apply(&self, c: &Change, root: libc::c_int) {
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
            return self.invalidate_only(c, &name);
        }
        if self.bracket && c.kind != ChangeKind::Overflow {
            if let Err(e) = self.announce_linked(Some(c)) {
                self.state.stats.failed.fetch_add(1, Ordering::Relaxed);
                debug!(kind = ?c.kind, path = %path.display(), "the host refused the replay: {e:?}");
                if let Some(e) = c.entry {
                    self.forget(e.ino);
                }
                return;
            }
        }
        let mut view = View::new(c.kind, c.entry.map(|e| e.ino), ft);
        let result = match c.kind {
            ChangeKind::Overflow => {
                self.state.stats.overflows.fetch_add(1, Ordering::Relaxed);
                warn!(
                    mountpoint = %self.mountpoint.display(),
                    "the host lost change events; dropping every cached name and attribute"
                );
                self.drop_all_cached();
                return;
            }
            ChangeKind::Created => {
                view.name(c.parent, &name, Side::From, Before::Absent);
                self.state.install(view);
                create(root, &rel, ft)
            }
            ChangeKind::Removed => {
                if ft == libc::S_IFDIR && self.holds_mount(&path) {
                    return self.expire(c.parent, &name);
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
                if ft == libc::S_IFDIR && self.holds_mount(&path) {
                    self.expire(c.to_parent, to_name);
                    return self.expire(c.parent, &name);
                }
                view.name(c.parent, &name, Side::From, entry_before());
                view.name(c.to_parent, to_name, Side::To, Before::Absent);
                self.state.install(view);
                rename(root, &rel, &to)
            }
            ChangeKind::Data | ChangeKind::DataClosed | ChangeKind::Closed | ChangeKind::Attrib => {
                let data = c.kind != ChangeKind::Attrib;
                if let Some(e) = c.entry {
                    if data {
                        (self.on_data_change)(e.ino);
                    }
                    // Invalidate before the event is raised, so a watcher reacting to it at
                    // once cannot read cached old bytes.
                    let (off, len) = if data { (0, 0) } else { (-1, 0) };
                    self.inval_inode(e.ino, off, len);
                    if !c.path.is_empty() {
                        view.name(c.parent, &name, Side::From, Before::Entry(e));
                    } else {
                        // The root: the kernel always holds it; no lookup to give back.
                        view.used = true;
                    }
                }
                // Without an entry the object has moved on on the host since (a rename or
                // removal follows); the replay works on what the guest holds.
                self.state.install(view);
                touch(root, &rel, c.kind, ft)
            }
        };
        let view = self.state.take();
        match result {
            Ok(()) => {
                self.state.stats.replayed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.state.stats.failed.fetch_add(1, Ordering::Relaxed);
                debug!(kind = ?c.kind, path = %path.display(), "replay failed: {e}");
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

    /// Drops what the kernel caches about a change without replaying it.
    fn invalidate_only(&self, c: &Change, name: &[u8]) {
        match c.kind {
            ChangeKind::Overflow => self.drop_all_cached(),
            ChangeKind::Created | ChangeKind::Removed => self.expire(c.parent, name),
            ChangeKind::Renamed => {
                let to_name = c.to.rsplit(|&b| b == b'/').next().unwrap_or_default();
                self.expire(c.parent, name);
                self.expire(c.to_parent, to_name);
            }
            _ => {
                if let Some(e) = c.entry {
                    (self.on_data_change)(e.ino);
                    self.inval_inode(e.ino, 0, 0);
                }
            }
        }
        if let Some(e) = c.entry {
            if e.ino != ROOT_ID {
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

    fn expire(&self, parent: u64, name: &[u8]) {
        self.state.stats.skipped.fetch_add(1, Ordering::Relaxed);
        self.expire_entry(parent, name);
    }

    /// Whether something is mounted on `path` or below it in this guest.
    fn holds_mount(&self, path: &Path) -> bool {
        let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
            return true; // When in doubt, do not tear down.
        };
        let want = path.as_os_str().as_bytes();
        info.split(|&b| b == b'\n').any(|line| {
            let Some(mp) = line.split(|&b| b == b' ').nth(4) else {
                return false;
            };
            let mp = unescape_mountinfo(mp);
            mp == want || (mp.starts_with(want) && mp.get(want.len()) == Some(&b'/'))
        })
    }
}

/// The filesystem type of the mount on `path` (the topmost one), from `/proc/self/mountinfo`.
pub(crate) fn mount_type(path: &Path) -> Option<String> {
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    mount_type_in(&info, path.as_os_str().as_bytes())
}

fn mount_type_in(info: &[u8], path: &[u8]) -> Option<String> {
    // The last line for a path is the topmost mount on it.
    info.split(|&b| b == b'\n').rev().find_map(|line| {
        let mut fields = line.split(|&b| b == b' ');
        let mp = unescape_mountinfo(fields.nth(4)?);
        // Optional fields end with a lone "-"; the type comes next.
        let fstype = fields.skip_while(|f| *f != b"-").nth(1)?;
        (mp == path).then(|| String::from_utf8_lossy(fstype).into_owned())
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// A change's path as a C string relative to the mount root (`.` for the root).
fn relative(path: &[u8]) -> std::io::Result<CString> {
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
fn create(root: libc::c_int, p: &CStr, ft: u32) -> std::io::Result<()> {
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
fn remove(root: libc::c_int, p: &CStr, ft: u32) -> std::io::Result<()> {
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
fn rename(root: libc::c_int, from: &CStr, to: &CStr) -> std::io::Result<()> {
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
fn touch(root: libc::c_int, p: &CStr, kind: ChangeKind, ft: u32) -> std::io::Result<()> {
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
    use ferry_protocol::replay::is_synthetic;

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
    fn mount_types() {
        let info = b"22 1 0:21 / / rw - rootfs rootfs rw\n\
            30 22 0:40 / /mnt/ex rw,relatime shared:5 - virtiofs ex rw\n\
            31 22 0:41 / /mnt/a\\040b rw - tmpfs tmpfs rw\n\
            32 30 0:42 / /mnt/ex rw - fuse.ferry ex rw\n";
        assert_eq!(mount_type_in(info, b"/").as_deref(), Some("rootfs"));
        assert_eq!(
            mount_type_in(info, b"/mnt/ex").as_deref(),
            Some("fuse.ferry"),
            "topmost"
        );
        assert_eq!(mount_type_in(info, b"/mnt/a b").as_deref(), Some("tmpfs"));
        assert_eq!(mount_type_in(info, b"/mnt"), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(br"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape_mountinfo(br"/x\134y"), b"/x\\y");
        assert_eq!(unescape_mountinfo(b"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(br"/end\04"), br"/end\04");
    }

    #[test]
    fn view_answers_only_the_replay_names() {
        let s = ReplayState::default();
        s.tid.store(77, Ordering::Relaxed);
        assert!(s.is_replay(77));
        assert!(!s.is_replay(78));
        assert!(s.target(1, b"x").is_none(), "no change being replayed");
        let e = Entry {
            ino: 9,
            ..Entry::default()
        };
        let mut view = View::new(ChangeKind::Renamed, Some(9), libc::S_IFREG);
        view.name(2, b"src", Side::From, Before::Entry(e));
        view.name(1, b"new", Side::To, Before::Absent);
        view.name(0, b"any", Side::From, Before::Synthetic(libc::S_IFDIR));
        s.install(view);
        let t = s.target(1, b"new").unwrap();
        assert_eq!(
            (t.kind, t.side, t.node),
            (ChangeKind::Renamed, Side::To, Some(9))
        );
        assert!(s.hand_out(t.before.as_ref().unwrap()).is_none());
        let t = s.target(1, b"other").unwrap();
        assert_eq!(t.side, Side::Neither);
        assert!(t.before.is_none());
        let t = s.target(3, b"src").unwrap();
        assert_eq!(t.side, Side::Neither, "another directory's name");
        let t = s.target(2, b"src").unwrap();
        assert_eq!(t.side, Side::From);
        assert!(!s.view.lock().unwrap().as_ref().unwrap().used);
        assert_eq!(s.hand_out(t.before.as_ref().unwrap()).unwrap().ino, 9);
        let t = s.target(42, b"any").unwrap();
        assert_eq!(t.side, Side::From, "parent 0 matches any directory");
        let synth = s.hand_out(t.before.as_ref().unwrap()).unwrap();
        assert!(is_synthetic(synth.ino));
        assert_eq!(
            s.synthetic_attr(synth.ino).unwrap().mode & libc::S_IFMT,
            libc::S_IFDIR
        );
        let v = s.take().unwrap();
        assert!(v.used, "the server's lookup went to the kernel");
        s.forget_synthetic(synth.ino);
        assert!(s.synthetic_attr(synth.ino).is_none());
        assert_eq!(
            s.synthetic(0).attr.mode & libc::S_IFMT,
            libc::S_IFREG,
            "unknown type: a file"
        );
    }
}
