//! What the replay thread shares with the FUSE handlers: its thread id, the view of the
//! change being replayed, the synthetic nodes handed out, and the counters.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use dashmap::DashMap;
use ferry_protocol::replay::{SYNTHETIC_BASE, Side};
use ferry_protocol::{self as proto, Attr, ChangeKind, Entry};

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
    pub(super) used: bool,
}

impl View {
    pub(super) fn new(kind: ChangeKind, node: Option<u64>, file_type: u32) -> Self {
        Self {
            kind,
            names: Vec::new(),
            node,
            file_type,
            used: false,
        }
    }

    pub(super) fn name(&mut self, parent: u64, name: &[u8], side: Side, before: Before) {
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
    /// Changes whose replay failed (the cache was still invalidated); broken down below.
    pub failed: AtomicU64,
    /// ... because a name on the way, or the name itself, was missing (ENOENT, ENOTDIR).
    pub failed_missing: AtomicU64,
    /// ... because the answer said the change was overtaken or refused (ESTALE, EEXIST,
    /// EPERM, ENOTEMPTY).
    pub failed_stale: AtomicU64,
    /// ... for any other reason (ETXTBSY, EIO, the host refused it).
    pub failed_other: AtomicU64,
    /// Changes not replayed on purpose; broken down below.
    pub skipped: AtomicU64,
    /// ... because the directory holds a guest mount (its entry only expires).
    pub skipped_mount: AtomicU64,
    /// ... because the mount was gone.
    pub skipped_unmounted: AtomicU64,
    /// ... because the mount is read-only (the caches are invalidated, nothing is raised).
    pub skipped_read_only: AtomicU64,
    /// Replayed although the host had moved on since (its names were then expired).
    pub overtaken: AtomicU64,
    /// Overflows: every cached name dropped.
    pub overflows: AtomicU64,
    /// The event lag of each change, host watcher to replay done (`crate::stats`).
    pub lag: crate::stats::Lag,
    /// The last changes skipped or failed, with why (`ferry-agent status`).
    pub recent: crate::stats::Recent,
}

/// State shared between the replay thread and the FUSE handlers.
#[derive(Debug, Default)]
pub struct ReplayState {
    /// Thread id of the replay thread (0 until it runs).
    pub(super) tid: AtomicI32,
    /// The random number that links the host's session of a mount this agent does not serve
    /// to this agent's (see `Replayer::bracket`).
    pub(super) link: AtomicU64,
    view: Mutex<Option<View>>,
    next_synthetic: AtomicU64,
    next_fh: AtomicU64,
    /// Synthetic nodes the kernel holds.
    synthetic: DashMap<u64, Attr>,
    /// Set by a handler when the host's present differs from the outcome of the change being
    /// replayed ([`ferry_protocol::replay::overtaken`]); taken by the replay thread.
    overtaken: AtomicBool,
    /// Set when the mount goes away: no more replays.
    pub(super) stopped: AtomicBool,
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

    /// Notes that the host has moved on from the change being replayed.
    pub(crate) fn note_overtaken(&self) {
        self.overtaken.store(true, Ordering::Relaxed);
    }

    /// Whether the host had moved on from the change just replayed (and forgets it).
    pub(super) fn take_overtaken(&self) -> bool {
        self.overtaken.swap(false, Ordering::Relaxed)
    }

    /// A handle for the replay thread's own open.
    pub(crate) fn replay_fh(&self) -> u64 {
        REPLAY_FH_BASE + self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn install(&self, view: View) {
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = Some(view);
    }

    pub(super) fn take(&self) -> Option<View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::replay::is_synthetic;

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
