//! What the replay thread shares with the FUSE handlers: its thread id, the view of the
//! change being replayed, the stream's name model, the synthetic nodes handed out, and the
//! counters.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use dashmap::DashMap;
use ferry_protocol::replay::{SYNTHETIC_BASE, Side, is_synthetic};
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
    /// The change's entry, with the lookup the server took for it.
    entry: Option<Entry>,
    /// The server's lookup was handed to the kernel (or to the name model).
    pub(super) used: bool,
    /// The node the replay thread's lookup of the change's source was answered with during
    /// this call, and whether that answer came from the host (a lookup the kernel holds).
    source: Option<(Entry, bool)>,
}

impl View {
    pub(super) fn new(kind: ChangeKind, entry: Option<Entry>, file_type: u32) -> Self {
        Self {
            kind,
            names: Vec::new(),
            node: entry.map(|e| e.ino),
            file_type,
            entry,
            used: false,
            source: None,
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
    /// The change's own node, with the server's lookup, when the change carries one.
    pub entry: Option<Entry>,
}

/// The names the replay stream has made (created, or renamed to) and not yet removed or
/// renamed away, by the guest kernel's directory node and name, with the node each was handed
/// out as. The replay thread's lookups of these names are answered from here, whatever the
/// host holds now, so every replayed call finds what the stream says exists at its point
/// (the host may have removed or renamed the name since, or its directory). A name leaves it
/// when the stream removes or renames it away, or a guest process does; the whole model on an
/// overflow of the host's stream, and when it grows past [`MODEL_MAX`].
///
/// Each real node here holds one lookup on the host (`pins`), so the node stays valid there
/// however the host has moved on. The kernel's lookups of nodes answered from here that the
/// host never counted are `owed`: the kernel's forgets give those back here first.
#[derive(Debug, Default)]
struct Model {
    names: HashMap<(u64, Vec<u8>), Entry>,
    /// Host lookups the model holds, per node.
    pins: HashMap<u64, u64>,
    /// Kernel lookups the host did not count, per node.
    owed: HashMap<u64, u64>,
}

/// Most names the model keeps; beyond, it is emptied (later replays then walk what the host
/// holds, as without a model).
const MODEL_MAX: usize = 65_536;

impl Model {
    /// Drops the model's hold on `ino`: converted into a lookup the kernel holds where the
    /// kernel was handed the node without the host counting it (so a node the kernel still
    /// uses stays valid on the host), otherwise given back to the host (`forget`).
    fn unpin(&mut self, ino: u64, forget: &mut Vec<u64>) {
        if is_synthetic(ino) {
            return;
        }
        match self.pins.get_mut(&ino) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.pins.remove(&ino);
            }
            None => return,
        }
        match self.owed.get_mut(&ino) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.owed.remove(&ino);
            }
            None => forget.push(ino),
        }
    }

    fn remove(&mut self, key: &(u64, Vec<u8>), forget: &mut Vec<u64>) -> Option<Entry> {
        let e = self.names.remove(key)?;
        self.unpin(e.ino, forget);
        Some(e)
    }

    /// Records `key` as `e`; `kernel_holds`: the kernel was just handed `e` in a reply the
    /// host counted, whose lookup the model takes over (the kernel's forget of it is then
    /// owed); otherwise the model takes a lookup of its own that the caller hands it.
    fn insert(&mut self, key: (u64, Vec<u8>), e: Entry, kernel_holds: bool, forget: &mut Vec<u64>) {
        self.remove(&key, forget);
        if self.names.len() >= MODEL_MAX {
            self.clear(forget);
        }
        if !is_synthetic(e.ino) {
            *self.pins.entry(e.ino).or_default() += 1;
            if kernel_holds {
                *self.owed.entry(e.ino).or_default() += 1;
            }
        }
        self.names.insert(key, e);
    }

    fn clear(&mut self, forget: &mut Vec<u64>) {
        let names = std::mem::take(&mut self.names);
        for e in names.into_values() {
            self.unpin(e.ino, forget);
        }
    }
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
    /// The stream's names (see [`Model`]).
    model: Mutex<Model>,
    /// Names of changes received but not replayed yet, counted (see [`ReplayState::pend`]).
    pending: Mutex<HashMap<(u64, Vec<u8>), u32>>,
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

    /// The kernel dropped a synthetic node (kept while the name model still names it).
    pub(crate) fn forget_synthetic(&self, ino: u64) {
        let model = self.model();
        if !model.names.values().any(|e| e.ino == ino) {
            self.synthetic.remove(&ino);
        }
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kernel forgets `n` lookups of `ino`: how many of them to give back to the host (the
    /// rest were handed out from the name model without the host counting them).
    pub(crate) fn kernel_forgets(&self, ino: u64, n: u64) -> u64 {
        let mut model = self.model();
        let Some(owed) = model.owed.get_mut(&ino) else {
            return n;
        };
        let absorbed = n.min(*owed);
        *owed -= absorbed;
        if *owed == 0 {
            model.owed.remove(&ino);
        }
        n - absorbed
    }

    /// The node the stream says `name` in `parent` is, handed to the kernel (counted as owed:
    /// the host does not count it); `None` when the stream made no such name.
    pub(crate) fn model_hand_out(&self, parent: u64, name: &[u8]) -> Option<Entry> {
        let mut model = self.model();
        let e = *model.names.get(&(parent, name.to_vec()))?;
        if !is_synthetic(e.ino) {
            *model.owed.entry(e.ino).or_default() += 1;
        }
        Some(e)
    }

    /// A replayed creation made `name` in `parent` as `e`, just handed to the kernel in a reply
    /// the host counted (or a synthetic node). Nodes to give back to the host go to `forget`.
    pub(crate) fn model_made(&self, parent: u64, name: &[u8], e: Entry, forget: &mut Vec<u64>) {
        self.model()
            .insert((parent, name.to_vec()), e, true, forget);
    }

    /// A replayed removal of `name` in `parent`.
    pub(crate) fn model_removed(&self, parent: u64, name: &[u8], forget: &mut Vec<u64>) {
        self.model().remove(&(parent, name.to_vec()), forget);
    }

    /// A replayed rename of `from` to `to`: the stream's node for the source (from the model,
    /// or as the replay thread's lookup of it was answered, or the change's own) now has the
    /// target's name.
    pub(crate) fn model_renamed(
        &self,
        from: (u64, &[u8]),
        to: (u64, &[u8]),
        forget: &mut Vec<u64>,
    ) {
        // Lock order: the view, then the model (as `hand_out_change`).
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let mut model = self.model();
        let to = (to.0, to.1.to_vec());
        // The name leaves; its pin is released below unless it moves with the name.
        let old = model.names.remove(&(from.0, from.1.to_vec()));
        model.remove(&to, forget);
        let source = view.as_ref().and_then(|v| v.source);
        match (source, old) {
            // The kernel was just handed a real node for the source in a reply the host
            // counted: that node is what the kernel now holds at the target, and the model
            // takes its lookup over.
            (Some((e, true)), old) if !is_synthetic(e.ino) => {
                if let Some(o) = old {
                    model.unpin(o.ino, forget);
                }
                model.insert(to, e, true, forget);
            }
            // The stream's node for the source moves, with its pin.
            (_, Some(o)) => {
                model.names.insert(to, o);
            }
            (source, None) => match view.as_mut() {
                // The change's own node, with the server's lookup, unless that went to the
                // kernel.
                Some(v) if !v.used && v.entry.is_some() => {
                    v.used = true;
                    let e = v.entry.unwrap_or_default();
                    model.insert(to, e, false, forget);
                }
                _ => {
                    if let Some((e, _)) = source.filter(|(e, _)| is_synthetic(e.ino)) {
                        model.insert(to, e, false, forget);
                    }
                }
            },
        }
    }

    /// Empties the model (the stream lost changes); nodes to give back to the host are
    /// returned.
    pub(super) fn model_clear(&self) -> Vec<u64> {
        let mut forget = Vec::new();
        self.model().clear(&mut forget);
        forget
    }

    /// Notes the names of a change handed to the replay thread (the coherence thread, as the
    /// batch arrives); [`ReplayState::unpend`] once it is replayed.
    pub(super) fn pend(&self, names: &[(u64, &[u8])]) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (parent, name) in names {
            *p.entry((*parent, name.to_vec())).or_default() += 1;
        }
    }

    /// The change with these names has been replayed (or skipped).
    pub(super) fn unpend(&self, names: &[(u64, &[u8])]) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (parent, name) in names {
            let key = (*parent, name.to_vec());
            if let Some(n) = p.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    p.remove(&key);
                }
            }
        }
    }

    /// Whether the replay stream has its own idea of `name` in `parent`: a name it made and
    /// still holds, or a name of a change not replayed yet. A guest process's lookup of such a
    /// name is answered from the host but, when missing there, not cached as missing: the
    /// replay thread's walk must reach this adapter to meet the stream's state, and a cached
    /// negative entry would fail it without asking (a watcher that stats a name it just heard
    /// of, while the rename of that name waits to be replayed).
    pub(crate) fn stream_names(&self, parent: u64, name: &[u8]) -> bool {
        let key = (parent, name.to_vec());
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
            || self.model().names.contains_key(&key)
    }

    /// Notes how the replay thread's lookup of the change's source was answered (`counted`:
    /// by the host, which took a lookup the kernel now holds).
    pub(crate) fn note_source(&self, e: Entry, counted: bool) {
        if let Some(view) = self.view.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            view.source = Some((e, counted));
        }
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
            .find(|n| (n.parent == 0 || n.parent == parent) && n.name == name)
            .or_else(|| {
                // The kernel holds a stand-in for the directory where the host, when it sent
                // the change, had the real one: the name alone tells, when only one of the
                // change's names has it.
                let mut same = view.names.iter().filter(|n| n.name == name);
                match (is_synthetic(parent), same.next(), same.next()) {
                    (true, Some(n), None) => Some(n),
                    _ => None,
                }
            });
        Some(Target {
            kind: view.kind,
            side: found.map_or(Side::Neither, |n| n.side),
            before: found.map(|n| n.before.clone()),
            node: view.node,
            file_type: view.file_type,
            entry: view.entry,
        })
    }

    /// The node for `before` (`None` for ENOENT), counting a real one as handed to the kernel.
    pub(crate) fn hand_out(&self, before: &Before) -> Option<Entry> {
        match before {
            Before::Absent => None,
            Before::Entry(e) => Some(self.hand_out_change(*e)),
            Before::Synthetic(ft) => {
                let e = self.synthetic(*ft);
                self.note_source(e, false);
                Some(e)
            }
        }
    }

    /// Hands the change's own node `e` to the kernel: the server's one lookup the first time;
    /// any further time (the kernel may look a name up twice in one call) the host has not
    /// counted it, so the kernel's forget of it is owed.
    pub(crate) fn hand_out_change(&self, e: Entry) -> Entry {
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        match view.as_mut() {
            Some(v) if !v.used => {
                v.used = true;
                v.source = Some((e, true));
            }
            _ => *self.model().owed.entry(e.ino).or_default() += 1,
        }
        e
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
        let mut view = View::new(ChangeKind::Renamed, Some(e), libc::S_IFREG);
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

    /// The name model's lookup accounting: every lookup the host counted is given back exactly
    /// once, by the kernel's forgets or by the model, and never while the kernel may still use
    /// the node.
    #[test]
    fn the_name_model_balances_host_lookups() {
        let s = ReplayState::default();
        let e = |ino| Entry {
            ino,
            ..Entry::default()
        };
        let mut forget = Vec::new();
        // A replayed creation handed out node 18 (one host lookup): the model takes it over.
        s.model_made(1, b"y", e(18), &mut forget);
        assert!(forget.is_empty());
        // The kernel looks the name up again, twice: answered from the model, uncounted.
        assert_eq!(s.model_hand_out(1, b"y").map(|e| e.ino), Some(18));
        assert_eq!(s.model_hand_out(1, b"y").map(|e| e.ino), Some(18));
        assert!(s.model_hand_out(1, b"z").is_none());
        assert!(s.model_hand_out(2, b"y").is_none(), "another directory");
        // The kernel forgets all three lookups: none reaches the host, which counted one.
        assert_eq!(s.kernel_forgets(18, 3), 0);
        // The stream renames it, then removes it: the model gives its lookup back.
        s.model_renamed((1, b"y"), (2, b"x"), &mut forget);
        assert!(s.model_hand_out(1, b"y").is_none());
        assert_eq!(s.model_hand_out(2, b"x").map(|e| e.ino), Some(18));
        assert_eq!(s.kernel_forgets(18, 1), 0, "the hand-out of d/x is owed");
        s.model_removed(2, b"x", &mut forget);
        assert_eq!(forget, [18]);
        assert_eq!(s.kernel_forgets(18, 1), 1, "nothing is owed any more");

        // Removed while the kernel still holds it: the model's lookup becomes the kernel's,
        // so the node stays valid on the host until the kernel forgets it.
        forget.clear();
        s.model_made(1, b"a", e(30), &mut forget);
        s.model_removed(1, b"a", &mut forget);
        assert!(forget.is_empty());
        assert_eq!(s.kernel_forgets(30, 1), 1);

        // The change's node handed out twice in one call: the second time is owed.
        s.install(View::new(ChangeKind::Data, Some(e(40)), libc::S_IFREG));
        s.hand_out_change(e(40));
        s.hand_out_change(e(40));
        assert!(s.take().unwrap().used);
        assert_eq!(s.kernel_forgets(40, 2), 1);

        // A rename whose source the kernel did not look up: the change's unused lookup is
        // the model's.
        let mut v = View::new(ChangeKind::Renamed, Some(e(50)), libc::S_IFDIR);
        v.name(1, b"d", Side::From, Before::Entry(e(50)));
        s.install(v);
        s.model_renamed((1, b"d"), (1, b"e"), &mut forget);
        assert!(
            s.take().unwrap().used,
            "not given back by the replay thread"
        );
        assert_eq!(s.model_hand_out(1, b"e").map(|e| e.ino), Some(50));
        assert_eq!(s.kernel_forgets(50, 1), 0);
        // An overflow empties the model.
        assert_eq!(s.model_clear(), [50]);
        assert!(s.model_hand_out(1, b"e").is_none());

        // Synthetic nodes stay answerable while the model names them.
        let synth = s.synthetic(libc::S_IFREG);
        s.model_made(1, b"gone", synth, &mut forget);
        s.forget_synthetic(synth.ino);
        assert!(s.synthetic_attr(synth.ino).is_some());
        s.model_removed(1, b"gone", &mut forget);
        s.forget_synthetic(synth.ino);
        assert!(s.synthetic_attr(synth.ino).is_none());
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A replayed creation of name `n` handed out node `i` (counted by the host).
        Made(u8, u8),
        /// The replay thread looks name `n` up.
        HandOut(u8),
        /// A replayed rename of name `n` to name `m` (no lookup of the source in the call).
        Renamed(u8, u8),
        /// A replayed or guest removal of name `n`.
        Removed(u8),
        /// The kernel forgets up to `k` lookups of node `i`.
        Forget(u8, u8),
        /// The host's stream overflowed.
        Clear,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..4u8, 0..4u8).prop_map(|(n, i)| Op::Made(n, i)),
            (0..4u8).prop_map(Op::HandOut),
            (0..4u8, 0..4u8).prop_map(|(n, m)| Op::Renamed(n, m)),
            (0..4u8).prop_map(Op::Removed),
            (0..4u8, 1..4u8).prop_map(|(i, k)| Op::Forget(i, k)),
            Just(Op::Clear),
        ]
    }

    proptest::proptest! {
        /// Whatever the stream and the kernel do, the host is never asked to forget more
        /// lookups than it counted, a node the kernel holds stays valid on the host, and once
        /// the kernel has forgotten everything and the model is emptied, every lookup is given
        /// back: exact accounting, checked against a plain count per node.
        #[test]
        fn name_model_lookups_balance(ops in proptest::collection::vec(op(), 0..60)) {
            let s = ReplayState::default();
            let ino = |i: u8| u64::from(i) + 10;
            let name = |n: u8| vec![b'a' + n];
            let mut host = [0i64; 4];
            let mut kernel = [0i64; 4];
            let give_back = |host: &mut [i64; 4], forget: Vec<u64>| {
                for f in forget {
                    host[(f - 10) as usize] -= 1;
                }
            };
            for op in ops {
                let mut forget = Vec::new();
                match op {
                    Op::Made(n, i) => {
                        host[i as usize] += 1;
                        kernel[i as usize] += 1;
                        let e = Entry { ino: ino(i), ..Entry::default() };
                        s.model_made(1, &name(n), e, &mut forget);
                    }
                    Op::HandOut(n) => {
                        if let Some(e) = s.model_hand_out(1, &name(n)) {
                            kernel[(e.ino - 10) as usize] += 1;
                        }
                    }
                    Op::Renamed(n, m) => s.model_renamed((1, &name(n)), (1, &name(m)), &mut forget),
                    Op::Removed(n) => s.model_removed(1, &name(n), &mut forget),
                    Op::Forget(i, k) => {
                        let k = i64::from(k).min(kernel[i as usize]);
                        kernel[i as usize] -= k;
                        let sent = s.kernel_forgets(ino(i), k as u64);
                        host[i as usize] -= sent as i64;
                    }
                    Op::Clear => forget = s.model_clear(),
                }
                give_back(&mut host, forget);
                for i in 0..4 {
                    proptest::prop_assert!(host[i] >= 0, "over-forgotten: {host:?}");
                    proptest::prop_assert!(
                        kernel[i] == 0 || host[i] > 0,
                        "node {i} held by the kernel but gone on the host: {host:?} {kernel:?}"
                    );
                }
            }
            give_back(&mut host, s.model_clear());
            for i in 0..4u8 {
                let k = kernel[i as usize];
                host[i as usize] -= s.kernel_forgets(ino(i), k as u64) as i64;
            }
            proptest::prop_assert_eq!(host, [0; 4]);
        }
    }
}
