//! Replay threads: guest threads that replay this export's host changes on a mount that another
//! front door serves.
//!
//! A virtio-fs mount has no notification path, so the guest agent runs with `--events-only`:
//! it takes the export's changes over the stream protocol and replays each one on the
//! virtio-fs mount with a real syscall (see `guest-agent/src/replay/`), which makes the guest
//! kernel raise the inotify events. The syscall reaches the host as FUSE requests through the
//! virtqueue; they must not touch host files (the change already happened there). So the agent
//! brackets each replayed change with [`Request::Replay`](ferry_protocol::Request::Replay):
//! `ExportSession::replay` records here, per export, which guest thread id replays which
//! change, and a front door that sees a request from that thread (the FUSE header's pid) asks
//! [`ExportSession::replayer`], [`ExportSession::replay_side`] and
//! [`ExportSession::replay_host`] what the request means, and answers it as the rule of
//! [`ferry_protocol::replay`] says instead of performing it.
//!
//! Thread ids are only unique within one guest, so a front door's session must first learn
//! which replaying session is its guest's: the agent registers a random link number with its
//! thread and looks up `.ferry-replay-<link in hex>` through the mount, and that lookup links
//! the front door's session to the agent's ([`ExportSession::link_replayer`]). Only threads of
//! the linked session count. The link also stops echoes: the guest changes the export through
//! that front door too, and those changes must not come back to it as events, so the linked
//! session's typed methods record what they change (see `echo.rs`) under the agent session's
//! echo records ([`ExportSession::echo_sid`]), which the watcher drops for that session.
//!
//! A change is kept as the host identities (device, inode) of the directories holding its
//! names, and of the object it is about, not as node ids: the agent's session and the
//! virtio-fs session number nodes independently, and the identities are what both can
//! compare.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferry_protocol::replay::{Host, Side};
use ferry_protocol::{Change, ChangeKind, Errno};

use super::ops::component;
use super::{ExportSession, sys};

/// A host object's identity: device and inode number.
type Key = (u64, u64);

/// The change one guest thread is replaying, in host identities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaying {
    /// What happened on the host.
    pub kind: ChangeKind,
    /// File type bits of the object (`S_IFMT`), 0 when unknown.
    pub file_type: u32,
    /// The directory holding `path` and the last component (`None`: the root itself, or a
    /// directory no longer found on the host).
    from: Option<(Key, Vec<u8>)>,
    /// For a rename, the directory holding `to` and the last component.
    to: Option<(Key, Vec<u8>)>,
    /// The object the change is about, as the host held it when the change was registered:
    /// at the created name for a creation, at the target for a rename, at the name for
    /// anything else (`None`: nothing there).
    object: Option<Key>,
}

/// What a guest thread is, as far as replays go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayThread {
    /// A registered replay thread between two changes: nothing it asks may change the host.
    Idle,
    /// A replay thread replaying this change.
    Replaying(Arc<Replaying>),
}

impl ReplayThread {
    /// The change being replayed, if any.
    pub fn change(&self) -> Option<&Replaying> {
        match self {
            ReplayThread::Idle => None,
            ReplayThread::Replaying(r) => Some(r),
        }
    }
}

/// The replay threads of one export, and which sessions of other front doors serve their
/// guests.
#[derive(Debug, Default)]
pub(crate) struct Replayers {
    /// (registering session, guest thread id) → state.
    threads: Mutex<HashMap<(u64, u32), ReplayThread>>,
    /// Link number (see [`Request::Replay`](ferry_protocol::Request::Replay)) → registering
    /// session.
    nonces: Mutex<HashMap<u64, u64>>,
    /// Session of another front door → the replaying session of its guest.
    links: Mutex<HashMap<u64, u64>>,
    /// Number of threads, read without a lock on every front door request.
    count: AtomicUsize,
}

/// Replay threads, and link numbers, one session may register: an agent uses a handful of
/// threads and one link; a guest sending more gets ENOSPC instead of growing the tables.
pub(crate) const MAX_REPLAY_THREADS: usize = 256;

impl Replayers {
    fn set(&self, sid: u64, tid: u32, link: u64, state: ReplayThread) -> Result<(), Errno> {
        let mut map = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        let full = (!map.contains_key(&(sid, tid))
            && map.keys().filter(|(s, _)| *s == sid).count() >= MAX_REPLAY_THREADS)
            || (!nonces.contains_key(&link)
                && nonces.values().filter(|s| **s == sid).count() >= MAX_REPLAY_THREADS);
        if full {
            tracing::warn!(
                sid,
                limit = MAX_REPLAY_THREADS,
                "a guest registers too many replay threads or links; answering ENOSPC"
            );
            return Err(Errno::ENOSPC);
        }
        map.insert((sid, tid), state);
        self.count.store(map.len(), Ordering::Release);
        nonces.insert(link, sid);
        Ok(())
    }

    /// The state of thread `pid` of the guest whose replaying session `sid` is linked to.
    fn get(&self, sid: u64, pid: u32) -> Option<ReplayThread> {
        if pid == 0 || self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let replaying = self.linked(sid)?;
        let map = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(replaying, pid)).cloned()
    }

    /// Links session `sid` to the replaying session that registered `link`.
    fn link(&self, sid: u64, link: u64) -> bool {
        let nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&replaying) = nonces.get(&link) else {
            return false;
        };
        drop(nonces);
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.insert(sid, replaying) != Some(replaying) {
            tracing::debug!(sid, replaying, "session linked to a replaying session");
        }
        true
    }

    /// Whether some session is linked to the replaying session `sid`.
    fn is_linked_to(&self, sid: u64) -> bool {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.values().any(|s| *s == sid)
    }

    fn linked(&self, sid: u64) -> Option<u64> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(&sid).copied()
    }

    /// Whether session `sid` registered a replay thread.
    fn registered(&self, sid: u64) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let map = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().any(|(s, _)| *s == sid)
    }

    /// Forgets session `sid`: its threads and links (its connection ended).
    pub(crate) fn end_session(&self, sid: u64) {
        let mut map = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(s, _), _| *s != sid);
        self.count.store(map.len(), Ordering::Release);
        drop(map);
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        nonces.retain(|_, s| *s != sid);
        drop(nonces);
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|from, to| *from != sid && *to != sid);
    }
}

/// Splits a change path into its parent path and last component.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

impl ExportSession {
    /// Registers guest thread `tid` as a replay thread of this export, replaying `change`
    /// (`None`: between changes) until its next call, with the link number `link` (see
    /// [`ExportSession::link_replayer`]). The registration ends with this session. ENXIO
    /// (after registering) when no session of another front door is linked to this one yet:
    /// the thread's requests would then be performed as anyone's, so it must not replay.
    pub fn replay(&self, tid: i32, link: u64, change: Option<&Change>) -> Result<(), Errno> {
        let tid = u32::try_from(tid).map_err(|_| Errno::EINVAL)?;
        if tid == 0 {
            return Err(Errno::EINVAL);
        }
        let state = match change {
            None => ReplayThread::Idle,
            Some(c) => {
                // The name's directory and last component, and the object under it.
                let name = |path: &[u8], parent: u64| {
                    let (dir, last) = split(path);
                    if last.is_empty() {
                        return (None, None);
                    }
                    match self.locate(parent, dir, last) {
                        Some((key, object)) => (Some((key, last.to_vec())), object),
                        None => (None, None),
                    }
                };
                let (from, mut object) = name(&c.path, c.parent);
                let mut to = None;
                if c.kind == ChangeKind::Renamed {
                    (to, object) = name(&c.to, c.to_parent);
                }
                ReplayThread::Replaying(Arc::new(Replaying {
                    kind: c.kind,
                    file_type: c.file_type,
                    from,
                    to,
                    object,
                }))
            }
        };
        tracing::debug!(tid, ?state, "replay thread");
        self.export.replayers.set(self.sid, tid, link, state)?;
        if self.export.replayers.is_linked_to(self.sid) {
            Ok(())
        } else {
            Err(Errno::ENXIO)
        }
    }

    /// What the guest thread `pid` (a FUSE request header's pid) of the guest this session
    /// serves is doing, if it is a registered replay thread: only the replaying session this
    /// session is linked to counts, so thread ids of other guests never match.
    pub fn replayer(&self, pid: u32) -> Option<ReplayThread> {
        self.export.replayers.get(self.sid, pid)
    }

    /// If `name` is a replaying guest's link name (`REPLAY_LINK_PREFIX` and 16 hex digits, a
    /// lookup the guest makes through this session), links this session to that guest's
    /// replaying session and returns true.
    pub fn link_replayer(&self, name: &[u8]) -> bool {
        let Some(hex) = name.strip_prefix(ferry_protocol::REPLAY_LINK_PREFIX.as_bytes()) else {
            return false;
        };
        let Some(link) = std::str::from_utf8(hex)
            .ok()
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        else {
            return false;
        };
        self.export.replayers.link(self.sid, link)
    }

    /// The session whose echo records this session's changes go to: its own, or the replaying
    /// session it is linked to.
    pub(crate) fn echo_sid(&self) -> u64 {
        self.export.replayers.linked(self.sid).unwrap_or(self.sid)
    }

    /// Whether this session replays changes on a mount another front door serves: it then
    /// gets every change of the export by path, whatever nodes it holds (see `watch/`).
    pub(crate) fn replays(&self) -> bool {
        self.export.replayers.registered(self.sid)
    }

    /// The identities of the directory holding a change's name and of the object `last` in
    /// it (`None`: nothing there, or the host could not say). The directory is this
    /// session's node `node` when it holds it, else the one at `dir` (relative to the root,
    /// no symlinks followed).
    fn locate(&self, node: u64, dir: &[u8], last: &[u8]) -> Option<(Key, Option<Key>)> {
        if node != 0 {
            if let Ok(n) = self.inodes.get(node) {
                return Some(((n.dev, n.ino), object_at(n.fd(), last).ok().flatten()));
            }
        }
        let mut fd: OwnedFd = self.export.root.try_clone().ok()?;
        for comp in dir.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if comp == b"." || comp == b".." {
                return None;
            }
            let name = sys::cstring(comp).ok()?;
            fd = sys::open_beneath(fd.as_fd(), &name, libc::O_PATH | libc::O_DIRECTORY, 0).ok()?;
        }
        let st = sys::fstat(fd.as_fd()).ok()?;
        let object = object_at(fd.as_fd(), last).ok().flatten();
        Some(((st.st_dev, st.st_ino), object))
    }

    /// Which name of the change `r` the name `name` in this session's directory `parent` is.
    pub fn replay_side(&self, r: &Replaying, parent: u64, name: &[u8]) -> Side {
        let Ok(node) = self.inodes.get(parent) else {
            return Side::Neither;
        };
        let key = (node.dev, node.ino);
        let is = |side: &Option<(Key, Vec<u8>)>| {
            side.as_ref()
                .is_some_and(|(k, n)| *k == key && n.as_slice() == name)
        };
        if is(&r.from) {
            Side::From
        } else if is(&r.to) {
            Side::To
        } else {
            Side::Neither
        }
    }

    /// What the host holds under `name` in this session's directory `parent` now, compared
    /// with the object of the change `r` (`None`: between changes, when nothing is the
    /// change's). A read: no lookup is taken.
    pub fn replay_host(&self, r: Option<&Replaying>, parent: u64, name: &[u8]) -> Host {
        let Ok(dir) = self.inodes.get(parent) else {
            return Host::Unknown;
        };
        match object_at(dir.fd(), name) {
            Ok(None) => Host::Absent,
            Ok(Some(key)) if r.is_some_and(|r| r.object == Some(key)) => Host::Same,
            Ok(Some(_)) => Host::Other,
            Err(_) => Host::Unknown,
        }
    }
}

/// The identity of the object `name` (one component) in directory `dir`; `None` when there
/// is none.
fn object_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<Key>, Errno> {
    match sys::fstatat_nofollow(dir, &component(name)?) {
        Ok(st) => Ok(Some((st.st_dev, st.st_ino))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{Export, ExportConfig, ROOT_ID};
    use ferry_protocol::Ctx;

    fn export(dir: &std::path::Path) -> Arc<Export> {
        Export::open(ExportConfig {
            name: "t".into(),
            path: dir.to_path_buf(),
            read_only: false,
            ids: crate::ids::IdPolicy::passthrough(),
            devices: false,
            acl: true,
            setid: false,
        })
        .unwrap()
    }

    const LINK: u64 = 0x0123_4567_89ab_cdef;

    fn link_name(link: u64) -> String {
        format!("{}{link:016x}", ferry_protocol::REPLAY_LINK_PREFIX)
    }

    fn change(kind: ChangeKind, path: &str, to: &str) -> Change {
        Change {
            kind,
            path: path.as_bytes().to_vec(),
            to: to.as_bytes().to_vec(),
            parent: 0,
            to_parent: 0,
            file_type: libc::S_IFREG,
            entry: None,
        }
    }

    #[test]
    fn replay_threads_and_links_are_capped_per_session() {
        let dir = tempfile::tempdir().unwrap();
        let ex = export(dir.path());
        let agent = ExportSession::new(ex.clone()).unwrap();
        for tid in 1..=MAX_REPLAY_THREADS as i32 {
            assert_eq!(agent.replay(tid, LINK, None), Err(Errno::ENXIO), "{tid}");
        }
        let over = MAX_REPLAY_THREADS as i32 + 1;
        assert_eq!(agent.replay(over, LINK, None), Err(Errno::ENOSPC));
        // A thread already registered may go on; new link numbers are capped too.
        assert_eq!(agent.replay(1, LINK, None), Err(Errno::ENXIO));
        for link in 0..MAX_REPLAY_THREADS as u64 {
            let _ = agent.replay(1, LINK + 1 + link, None);
        }
        assert_eq!(agent.replay(1, LINK + 10_000, None), Err(Errno::ENOSPC));
        // Another session has its own allowance.
        let other = ExportSession::new(ex.clone()).unwrap();
        assert_eq!(other.replay(over, 99, None), Err(Errno::ENXIO));
    }

    #[test]
    fn a_registered_thread_names_its_change_in_another_session() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("d/e")).unwrap();
        std::fs::write(dir.path().join("d/e/new"), b"").unwrap();
        let ex = export(dir.path());
        let agent = ExportSession::new(ex.clone()).unwrap();
        let vfs = ExportSession::new(ex.clone()).unwrap();
        assert_eq!(vfs.replayer(42), None, "nobody registered");

        let renamed = change(ChangeKind::Renamed, "d/e/old", "new");
        assert_eq!(
            agent.replay(42, LINK, Some(&renamed)),
            Err(Errno::ENXIO),
            "registered, but nobody is linked yet"
        );
        assert_eq!(vfs.replayer(42), None, "not linked yet");
        assert!(
            !vfs.link_replayer(link_name(LINK + 1).as_bytes()),
            "unknown"
        );
        assert!(!vfs.link_replayer(b".ferry-replay-0123"));
        assert!(!vfs.link_replayer(b"0123456789abcdef"));
        assert!(vfs.link_replayer(link_name(LINK).as_bytes()));
        assert_eq!(agent.replay(42, LINK, Some(&renamed)), Ok(()), "linked now");
        let Some(ReplayThread::Replaying(r)) = vfs.replayer(42) else {
            panic!("42 is replaying");
        };
        assert_eq!(vfs.replayer(43), None, "another thread");
        assert_eq!(vfs.replayer(0), None, "pid 0: the kernel's own requests");
        // Another guest: its own thread 42, its own session; neither sees the other's.
        let other_agent = ExportSession::new(ex.clone()).unwrap();
        let other_vfs = ExportSession::new(ex.clone()).unwrap();
        assert_eq!(other_vfs.replayer(42), None, "another guest's thread 42");
        assert_eq!(other_agent.replay(42, 7, None), Err(Errno::ENXIO));
        assert!(other_vfs.link_replayer(link_name(7).as_bytes()));
        assert_eq!(other_vfs.replayer(42), Some(ReplayThread::Idle));
        assert!(matches!(vfs.replayer(42), Some(ReplayThread::Replaying(_))));
        // The other session's node ids.
        let d = vfs.lookup(&Ctx::default(), ROOT_ID, b"d").unwrap().ino;
        let e = vfs.lookup(&Ctx::default(), d, b"e").unwrap().ino;
        assert_eq!(vfs.replay_side(&r, e, b"old"), Side::From);
        assert_eq!(vfs.replay_side(&r, ROOT_ID, b"new"), Side::To);
        assert_eq!(
            vfs.replay_side(&r, d, b"old"),
            Side::Neither,
            "same name, other dir"
        );
        assert_eq!(vfs.replay_side(&r, e, b"new"), Side::Neither);
        assert_eq!(vfs.replay_side(&r, ROOT_ID, b"old"), Side::Neither);
        // What the host holds there: the rename's target is not on the host (`new` is in
        // d/e, not at the root), so the change has no object.
        assert_eq!(vfs.replay_host(Some(&r), e, b"new"), Host::Other);
        assert_eq!(vfs.replay_host(Some(&r), e, b"old"), Host::Absent);
        assert_eq!(vfs.replay_host(Some(&r), ROOT_ID, b"new"), Host::Absent);
        assert_eq!(vfs.replay_host(Some(&r), 999, b"new"), Host::Unknown);

        agent.replay(42, LINK, None).unwrap();
        assert_eq!(vfs.replayer(42), Some(ReplayThread::Idle));
        assert_eq!(agent.replay(0, LINK, None), Err(Errno::EINVAL));
        assert_eq!(agent.replay(-5, LINK, None), Err(Errno::EINVAL));
        drop(agent);
        assert_eq!(vfs.replayer(42), None, "registrations end with the session");
        assert!(
            !vfs.link_replayer(link_name(LINK).as_bytes()),
            "and so do links"
        );
        assert_eq!(other_vfs.replayer(42), Some(ReplayThread::Idle));
    }

    /// A replaying session holds no nodes below the root, yet hears of changes anywhere in
    /// the export, by path; a session that does not replay hears only of what it holds.
    #[test]
    fn a_replaying_session_gets_every_change_by_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let ex = export(dir.path());
        let watch = |replays: bool| {
            let s = Arc::new(ExportSession::new(ex.clone()).unwrap());
            if replays {
                // Nobody links to it here: ENXIO, but it is registered.
                assert_eq!(s.replay(99, LINK, None), Err(Errno::ENXIO));
            }
            let (tx, rx) = std::sync::mpsc::channel();
            let tx = Mutex::new(tx);
            s.watch(Arc::new(move |c, _| {
                let _ = tx.lock().unwrap().send(c);
            }))
            .unwrap();
            (s, rx)
        };
        let (replayer, changes) = watch(true);
        let (_plain, plain_changes) = watch(false);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let p = dir.path();
        std::fs::write(p.join("a/b/f"), b"x").unwrap();
        std::fs::rename(p.join("a/b/f"), p.join("a/g")).unwrap();
        std::fs::remove_file(p.join("a/g")).unwrap();
        std::os::unix::fs::symlink("t", p.join("a/b/l")).unwrap();
        // File types as found when the burst is looked at: the file may be gone by then (0,
        // unknown), the symlink is there.
        let f = libc::S_IFREG;
        let want: Vec<(ChangeKind, &str, &str, u32)> = vec![
            (ChangeKind::Created, "a/b/f", "", f),
            (ChangeKind::Renamed, "a/b/f", "a/g", f),
            (ChangeKind::Removed, "a/g", "", 0),
            (ChangeKind::Created, "a/b/l", "", libc::S_IFLNK),
        ];
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < want.len() && std::time::Instant::now() < deadline {
            if let Ok(batch) = changes.recv_timeout(std::time::Duration::from_millis(100)) {
                got.extend(batch);
            }
        }
        // Data changes of a new file may be merged into its creation or follow it.
        got.retain(|c| !matches!(c.kind, ChangeKind::Data | ChangeKind::DataClosed));
        let got: Vec<_> = got
            .iter()
            .map(|c| {
                (
                    c.kind,
                    String::from_utf8_lossy(&c.path).into_owned(),
                    String::from_utf8_lossy(&c.to).into_owned(),
                    if c.file_type == 0 && c.path.ends_with(b"f") {
                        libc::S_IFREG
                    } else {
                        c.file_type
                    },
                )
            })
            .collect();
        let want: Vec<_> = want
            .into_iter()
            .map(|(k, p, t, f)| (k, p.to_string(), t.to_string(), f))
            .collect();
        assert_eq!(got, want);
        assert_eq!(replayer.node_count(), 1, "no lookups taken: only the root");
        let plain: Vec<Change> = plain_changes.try_iter().flatten().collect();
        assert!(plain.is_empty(), "{plain:?}");
    }

    #[test]
    fn names_resolve_through_the_session_nodes_or_the_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        let ex = export(dir.path());
        let agent = ExportSession::new(ex.clone()).unwrap();
        let a = agent.lookup(&Ctx::default(), ROOT_ID, b"a").unwrap().ino;
        // The directory moved on the host: the node still names it.
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        let mut c = change(ChangeKind::Removed, "a/f", "");
        c.parent = a;
        assert_eq!(agent.replay(7, LINK, Some(&c)), Err(Errno::ENXIO));
        let vfs = ExportSession::new(ex.clone()).unwrap();
        assert!(vfs.link_replayer(link_name(LINK).as_bytes()));
        let r = vfs.replayer(7).unwrap();
        let b = vfs.lookup(&Ctx::default(), ROOT_ID, b"b").unwrap().ino;
        assert_eq!(vfs.replay_side(r.change().unwrap(), b, b"f"), Side::From);
        // Without a node, by path; a path that is not there (or leaves the export) names
        // nothing.
        for (path, found) in [("b/f", true), ("gone/f", false), ("../f", false)] {
            agent
                .replay(7, LINK, Some(&change(ChangeKind::Created, path, "")))
                .unwrap();
            let r = vfs.replayer(7).unwrap();
            assert_eq!(
                vfs.replay_side(r.change().unwrap(), b, b"f") != Side::Neither,
                found,
                "{path}"
            );
        }
        // The root itself has no name.
        agent
            .replay(7, LINK, Some(&change(ChangeKind::Attrib, "", "")))
            .unwrap();
        let r = vfs.replayer(7).unwrap();
        assert_eq!(
            vfs.replay_side(r.change().unwrap(), ROOT_ID, b""),
            Side::Neither
        );
    }

    /// The change's object is the one found at its name when the change is registered (for a
    /// rename: at the target), and is told apart from whatever takes the name later.
    #[test]
    fn the_change_s_object_is_told_from_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("new"), b"").unwrap();
        std::fs::write(p.join("moved"), b"").unwrap();
        let ex = export(p);
        let agent = ExportSession::new(ex.clone()).unwrap();
        let vfs = ExportSession::new(ex.clone()).unwrap();
        assert_eq!(agent.replay(5, LINK, None), Err(Errno::ENXIO));
        assert!(vfs.link_replayer(link_name(LINK).as_bytes()));
        let host = |c: &Change, name: &[u8]| {
            agent.replay(5, LINK, Some(c)).unwrap();
            let t = vfs.replayer(5).unwrap();
            vfs.replay_host(t.change(), ROOT_ID, name)
        };
        let created = change(ChangeKind::Created, "new", "");
        assert_eq!(host(&created, b"new"), Host::Same);
        assert_eq!(host(&created, b"moved"), Host::Other);
        let renamed = change(ChangeKind::Renamed, "old", "moved");
        assert_eq!(host(&renamed, b"moved"), Host::Same);
        assert_eq!(host(&renamed, b"old"), Host::Absent);
        assert_eq!(
            host(&change(ChangeKind::Removed, "gone", ""), b"gone"),
            Host::Absent
        );
        // Replaced on the host after the registration: another object.
        agent.replay(5, LINK, Some(&created)).unwrap();
        let t = vfs.replayer(5).unwrap();
        std::fs::write(p.join("newer"), b"").unwrap();
        std::fs::rename(p.join("newer"), p.join("new")).unwrap();
        assert_eq!(vfs.replay_host(t.change(), ROOT_ID, b"new"), Host::Other);
        // Between changes nothing is the change's.
        assert_eq!(vfs.replay_host(None, ROOT_ID, b"moved"), Host::Other);
    }
}
