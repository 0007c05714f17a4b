//! Surviving a restart of the server: when the connection drops, the client keeps every
//! request (those in flight and those that arrive meanwhile), reconnects with a backoff, and
//! resumes on the new connection before it lets them go:
//!
//! 1. every node the guest kernel knows is looked up again by name from the export root (its
//!    parent first), an ordinary authenticated lookup; a node whose name is gone or now names
//!    an object of another type is lost (requests on it answer ESTALE);
//! 2. every open handle is opened again with its flags, without O_TRUNC, O_CREAT and O_EXCL;
//! 3. every lock is taken again without waiting; one that cannot be is logged as lost;
//! 4. the change subscription is renewed, and each watched mount gets an overflow (every cached
//!    name dropped) and has every known node's pages and attributes invalidated, so nothing
//!    the host changed during the gap is missed;
//! 5. requests that were in flight when the connection dropped are sent again when repeating
//!    them is harmless, and otherwise decided by the host's state (see [`Client::redo`] and
//!    ARCHITECTURE.md, "Reconnection"); then the held requests go out, in order.
//!
//! Nothing here presents an id to the server that the server did not hand out on the same
//! connection: the guest's ids are translated (see `book`).
//!
//! After `timeout` without a connection, held and new requests fail with EIO (logged once);
//! the client keeps trying, and resumes as above whenever the server is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use ferry_common::write_frame;
use ferry_protocol::{
    Change, ChangeKind, Created, Ctx, EncodeError, Entry, Errno, Flock, Forget, Frame, Lookup,
    Open, Opendir, ROOT_ID, Reply, Request, RequestFrame, Setlk, Watch,
};
use tracing::{debug, error, info, warn};

use super::book::{Book, Held, Node};
use super::reader::{Pending, run_done};
use super::{Client, Done, Link, OwnedReply, WriterState};

/// Opens a new connection to the server, handshake included.
pub type Dialer = Box<dyn Fn() -> anyhow::Result<Link> + Send + Sync>;

/// Longest wait between two reconnection attempts: a failed attempt costs one `connect`, and
/// the pause a guest sees should be the server's downtime plus well under a second.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// How long the resume waits for one of its own replies.
const RESUME_REPLY_WAIT: Duration = Duration::from_secs(30);

/// Whether requests may go out on the current connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LinkState {
    Up,
    /// Connected; the resume is running (only its own requests go out).
    Resuming,
    Down,
}

/// A request as encoded with the guest's ids (header, meta, then the payload).
#[derive(Clone, Debug)]
pub(super) struct Saved {
    bytes: Arc<Vec<u8>>,
    meta_len: usize,
}

/// Called after a resume with the nodes of an export, to drop the kernel's cached pages and
/// attributes of each.
pub type OnResumed = Box<dyn Fn(&[u64]) + Send + Sync>;

pub(super) struct Resume {
    dial: Dialer,
    timeout: Duration,
    book: Mutex<Book>,
    reconnecting: AtomicBool,
    expired: AtomicBool,
    generation: AtomicU64,
    client: Weak<Client>,
    on_resumed: Mutex<HashMap<u32, OnResumed>>,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Resume {
    pub(super) fn lock_book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What became of sending a request.
enum Sent {
    Ok,
    Held,
    Fail(Errno),
    Done,
    Lost(u64, String),
}

/// What to do with a request that was in flight when the connection dropped.
enum Redo {
    Resend,
    Answer,
    Fail,
    Check,
}

impl Client {
    /// Makes this client survive a restart of the server: on a lost connection it reconnects
    /// through `dial` and resumes (see the module documentation), holding requests for up to
    /// `timeout`. Call it before the first request.
    pub fn enable_reconnect(self: &Arc<Self>, dial: Dialer, timeout: Duration) {
        let _ = self.resume.set(Resume {
            dial,
            timeout,
            book: Mutex::default(),
            reconnecting: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            client: Arc::downgrade(self),
            on_resumed: Mutex::default(),
        });
    }

    /// Registers what to run for `export`'s nodes after each resume.
    pub fn on_resumed(&self, export: u32, f: OnResumed) {
        if let Some(r) = self.resume.get() {
            r.on_resumed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(export, f);
        }
    }

    /// The current connection's number, while reconnection is on.
    pub(super) fn is_stale_reader(&self, generation: u64) -> bool {
        self.resume
            .get()
            .is_some_and(|r| r.generation.load(Ordering::SeqCst) != generation)
    }

    pub(super) fn call_resumable(
        &self,
        r: &Resume,
        export: u32,
        ctx: Ctx,
        body: &Request<'_>,
        payload: &[u8],
        done: Done,
    ) {
        let op = body.opcode();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Vec::with_capacity(128 + payload.len());
        let encoded = RequestFrame {
            id,
            export,
            ctx: ctx.clone(),
            body: body.clone(),
            payload,
        }
        .encode(&mut bytes);
        if let Err(e) = encoded {
            error!(?op, "cannot encode request: {e}");
            let errno = match e {
                EncodeError::TooLarge(_) => Errno::E2BIG,
                _ => Errno::EIO,
            };
            run_done(done, Err(errno));
            return;
        }
        let meta_len = bytes.len();
        bytes.extend_from_slice(payload);
        let note = r.lock_book().note(export, &ctx, body);
        let mut p = Pending::new(op, export, done);
        p.note = Mutex::new(note);
        p.saved = Some(Saved {
            bytes: Arc::new(bytes),
            meta_len,
        });
        self.pending.insert(id, p);
        if self.is_closed() {
            self.fail(id, Errno::ENOTCONN);
            return;
        }
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let sent = match w.state {
            LinkState::Up => self.send_saved(r, &mut w, id),
            LinkState::Down if r.expired.load(Ordering::SeqCst) => Sent::Fail(Errno::EIO),
            LinkState::Down | LinkState::Resuming => Sent::Held,
        };
        drop(w);
        self.after_send(id, sent);
    }

    pub(super) fn oneway_resumable(&self, r: &Resume, export: u32, ctx: Ctx, body: &Request<'_>) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let up = w.state == LinkState::Up;
        let body = match body {
            Request::Forget(f) => {
                let nodes = r.lock_book().forget(export, &f.nodes, up);
                if nodes.is_empty() {
                    return;
                }
                Request::Forget(Forget { nodes })
            }
            other => {
                let mut b = other.clone();
                if r.lock_book().to_server(export, &mut b).is_err() {
                    return;
                }
                b
            }
        };
        if !up {
            return;
        }
        let generation = w.generation;
        if let Err(e) = write_request(&mut w, 0, export, ctx, body) {
            drop(w);
            self.link_lost(generation, &format!("write to server failed: {e}"));
        }
    }

    /// Sends pending request `id` on the current connection, with the ids translated.
    fn send_saved(&self, r: &Resume, w: &mut WriterState, id: u64) -> Sent {
        let Some(saved) = self.pending.get(&id).and_then(|p| {
            p.sent_on.store(w.generation, Ordering::SeqCst);
            p.saved.clone()
        }) else {
            return Sent::Ok;
        };
        let book = r.lock_book();
        let written = if book.active {
            let Some(mut rf) = decode_saved(&saved) else {
                return Sent::Fail(Errno::EIO);
            };
            if let Err(e) = book.to_server(rf.export, &mut rf.body) {
                return match rf.body {
                    // The handle died with the old server: nothing left to release.
                    Request::Release(_) | Request::Releasedir(_) => Sent::Done,
                    _ => Sent::Fail(e),
                };
            }
            drop(book);
            match rf.encode(&mut w.scratch) {
                Ok(()) => write_frame(&mut w.out, &w.scratch, rf.payload),
                Err(_) => return Sent::Fail(Errno::EIO),
            }
        } else {
            drop(book);
            let (head, payload) = saved.bytes.split_at(saved.meta_len);
            write_frame(&mut w.out, head, payload)
        };
        match written.and_then(|()| w.out.flush()) {
            Ok(()) => Sent::Ok,
            Err(e) => Sent::Lost(w.generation, format!("write to server failed: {e}")),
        }
    }

    fn after_send(&self, id: u64, sent: Sent) {
        match sent {
            Sent::Ok | Sent::Held => {}
            Sent::Fail(e) => self.fail(id, e),
            Sent::Done => self.answer(id, Ok(Reply::Empty)),
            Sent::Lost(generation, why) => self.link_lost(generation, &why),
        }
    }

    /// Answers pending request `id` with `result` (server ids), keeping the book.
    fn answer(&self, id: u64, result: Result<Reply<'_>, Errno>) {
        if let Some((_, p)) = self.pending.remove(&id) {
            let mut result = result;
            self.booked(&p, &mut result);
            p.finish(result);
        }
    }

    /// Translates a reply to the guest's ids and records what it tells in the book.
    pub(super) fn booked(&self, p: &Pending, result: &mut Result<Reply<'_>, Errno>) {
        let Some(r) = self.resume.get() else { return };
        if p.raw {
            return;
        }
        let note = std::mem::take(&mut *p.note.lock().unwrap_or_else(|e| e.into_inner()));
        r.lock_book().on_reply(p.export, note, result);
    }

    /// The connection `generation` is gone: hold requests and reconnect.
    pub(super) fn link_lost(&self, generation: u64, reason: &str) {
        let Some(r) = self.resume.get() else { return };
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.generation != generation || w.state == LinkState::Down || self.is_closed() {
            return;
        }
        let was_up = w.state == LinkState::Up;
        w.state = LinkState::Down;
        drop(w);
        if let Some(c) = self.closer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            c();
        }
        // The resume's own requests on that connection will get no answer.
        let raw: Vec<u64> = self
            .pending
            .iter()
            .filter(|p| p.raw)
            .map(|p| *p.key())
            .collect();
        for id in raw {
            self.fail(id, Errno::ENOTCONN);
        }
        if was_up {
            warn!(
                "lost the connection to ferry-host ({reason}); holding requests for up to {} s \
                 while reconnecting",
                r.timeout.as_secs()
            );
        }
        if !r.reconnecting.swap(true, Ordering::SeqCst)
            && let Some(me) = r.client.upgrade()
        {
            let spawned = std::thread::Builder::new()
                .name("ferry-reconnect".into())
                .spawn(move || me.reconnect_loop());
            if let Err(e) = spawned {
                error!("cannot start the reconnection thread: {e}");
                self.close_with("cannot reconnect", true);
            }
        }
    }

    fn reconnect_loop(self: Arc<Self>) {
        let r = self.resume.get().expect("reconnection is on");
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0u32;
        loop {
            if self.is_closed() {
                r.reconnecting.store(false, Ordering::SeqCst);
                return;
            }
            attempts += 1;
            match (r.dial)() {
                Ok(link) => match self.resume_on(r, link) {
                    Ok(()) => {
                        info!(
                            "reconnected to ferry-host after {attempts} attempts in {:.1} s",
                            start.elapsed().as_secs_f64()
                        );
                        return;
                    }
                    Err(e) => warn!("resuming on the new connection failed: {e}; trying again"),
                },
                Err(e) if attempts == 1 || delay == MAX_DELAY => {
                    info!("ferry-host is not back yet: {e:#}");
                }
                Err(e) => debug!("ferry-host is not back yet: {e:#}"),
            }
            let elapsed = start.elapsed();
            if !r.expired.load(Ordering::SeqCst) && elapsed >= r.timeout {
                self.expire(r);
            }
            let wait = if r.expired.load(Ordering::SeqCst) {
                delay
            } else {
                delay.min(r.timeout.saturating_sub(elapsed)) + Duration::from_millis(10)
            };
            std::thread::sleep(wait);
            delay = (delay * 2).min(MAX_DELAY);
        }
    }

    /// The server stayed away longer than the reconnect timeout: every held request fails.
    fn expire(&self, r: &Resume) {
        r.expired.store(true, Ordering::SeqCst);
        error!(
            "ferry-host has not come back within {} s: requests on the mounts fail with EIO until \
             it does (still trying to reconnect)",
            r.timeout.as_secs()
        );
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|p| !p.raw)
            .map(|p| *p.key())
            .collect();
        for id in ids {
            self.fail(id, Errno::EIO);
        }
    }

    /// Takes `link` as the connection and resumes on it.
    fn resume_on(&self, r: &Resume, link: Link) -> Result<(), String> {
        for e in &self.welcome.exports {
            match link.welcome.exports.iter().find(|n| n.name == e.name) {
                Some(n) if n.id != e.id => {
                    return Err(format!(
                        "export {:?} has another id on the new server ({} was {})",
                        e.name, n.id, e.id
                    ));
                }
                Some(_) => {}
                None => warn!(export = %e.name, "the restarted server does not serve this export"),
            }
        }
        let Link {
            reader,
            writer,
            closer,
            buf,
            ..
        } = link;
        let generation = {
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            w.out = writer;
            w.generation += 1;
            w.state = LinkState::Resuming;
            r.generation.store(w.generation, Ordering::SeqCst);
            w.generation
        };
        *self.closer.lock().unwrap_or_else(|e| e.into_inner()) = closer;
        if let Some(me) = r.client.upgrade() {
            me.start_reader(reader, buf, generation)
                .map_err(|e| format!("cannot start the reader thread: {e}"))?;
        }
        let (nodes, handles, locks) = {
            let mut b = r.lock_book();
            b.reset_server();
            (b.nodes.clone(), b.handles.clone(), b.locks.clone())
        };

        // 1. Nodes, parents first.
        let mut memo = HashMap::new();
        for &key in nodes.keys() {
            self.resolve(r, generation, &nodes, key, &mut memo, 0);
        }
        let lost_nodes = memo.values().filter(|v| v.is_none()).count();
        if lost_nodes > 0 {
            warn!(
                "{lost_nodes} of {} nodes the guest knows are not found again (renamed or \
                 removed while ferry-host was away); they answer ESTALE",
                nodes.len()
            );
        }
        self.check_link(generation)?;

        // 2. Open handles.
        let mut lost_handles = 0;
        for (&(export, fh), h) in &handles {
            let ino = r
                .lock_book()
                .node_ids
                .to_server
                .get(&(export, h.ino))
                .copied();
            let flags = h.flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL);
            let reopened = match ino {
                None => Err(Errno::ESTALE),
                Some(ino) if h.dir => {
                    let req = Request::Opendir(Opendir { ino, flags });
                    self.raw_call(generation, export, h.ctx.clone(), &req)
                }
                Some(ino) => {
                    let req = Request::Open(Open {
                        ino,
                        flags,
                        prefetch: 0,
                    });
                    self.raw_call(generation, export, h.ctx.clone(), &req)
                }
            };
            match reopened {
                Ok(OwnedReply::Opened(o) | OwnedReply::OpenedData(o, _)) => {
                    r.lock_book().fh_ids.bind(export, fh, o.fh);
                }
                other => {
                    lost_handles += 1;
                    warn!(export, fh, "an open file cannot be opened again: {other:?}");
                }
            }
        }
        self.check_link(generation)?;

        // 3. Locks.
        for (&(export, fh), log) in &locks {
            for held in log {
                self.relock(r, generation, export, fh, held);
            }
        }

        // 4. Change events: renewed, with a resync.
        let watched: Vec<u32> = self.changes.iter().map(|e| *e.key()).collect();
        for &export in &watched {
            let req = Request::Watch(Watch { on: true });
            if let Err(e) = self.raw_call(generation, export, Ctx::default(), &req) {
                warn!(export, "the restarted server sends no change events: {e:?}");
            }
            if let Some(tx) = self.changes.get(&export) {
                let _ = tx.send(vec![overflow()]);
            }
        }
        self.check_link(generation)?;

        // 5. Requests in flight when the connection dropped.
        let mut inflight: Vec<u64> = self
            .pending
            .iter()
            .filter(|p| {
                let on = p.sent_on.load(Ordering::SeqCst);
                !p.raw && on != 0 && on < generation
            })
            .map(|p| *p.key())
            .collect();
        inflight.sort_unstable();
        let redone = inflight.len();
        for id in inflight {
            self.redo(r, generation, id);
        }

        // Then the held requests, in order; later ones go out by themselves.
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.generation != generation || w.state != LinkState::Resuming {
            return Err("the new connection dropped during the resume".into());
        }
        w.state = LinkState::Up;
        r.expired.store(false, Ordering::SeqCst);
        r.reconnecting.store(false, Ordering::SeqCst);
        let mut held: Vec<u64> = self
            .pending
            .iter()
            .filter(|p| !p.raw && p.sent_on.load(Ordering::SeqCst) == 0)
            .map(|p| *p.key())
            .collect();
        held.sort_unstable();
        let count = held.len();
        let outcomes: Vec<(u64, Sent)> = held
            .into_iter()
            .map(|id| (id, self.send_saved(r, &mut w, id)))
            .collect();
        drop(w);
        for (id, sent) in outcomes {
            self.after_send(id, sent);
        }
        info!(
            nodes = nodes.len(),
            lost_nodes,
            handles = handles.len(),
            lost_handles,
            in_flight = redone,
            held = count,
            "resumed on the new connection"
        );
        // Pages and attributes the kernel cached may be stale after the gap.
        let by_export = {
            let b = r.lock_book();
            let mut m: HashMap<u32, Vec<u64>> = HashMap::new();
            for &(export, ino) in b.nodes.keys() {
                m.entry(export).or_default().push(ino);
            }
            m
        };
        let hooks = r.on_resumed.lock().unwrap_or_else(|e| e.into_inner());
        for (export, hook) in hooks.iter() {
            let mut list = by_export.get(export).cloned().unwrap_or_default();
            list.push(ROOT_ID);
            hook(&list);
        }
        Ok(())
    }

    fn check_link(&self, generation: u64) -> Result<(), String> {
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.generation != generation || w.state != LinkState::Resuming || self.is_closed() {
            return Err("the new connection dropped during the resume".into());
        }
        Ok(())
    }

    /// Finds node `key` on the new connection (its parent first); binds and returns its id.
    fn resolve(
        &self,
        r: &Resume,
        generation: u64,
        nodes: &HashMap<(u32, u64), Node>,
        key: (u32, u64),
        memo: &mut HashMap<(u32, u64), Option<u64>>,
        depth: usize,
    ) -> Option<u64> {
        if key.1 == ROOT_ID {
            return Some(ROOT_ID);
        }
        if let Some(v) = memo.get(&key) {
            return *v;
        }
        // Also guards against a cycle of stale parents.
        memo.insert(key, None);
        let node = nodes.get(&key)?;
        if node.name.is_empty() || depth > 4096 {
            return None;
        }
        let parent = self.resolve(r, generation, nodes, (key.0, node.parent), memo, depth + 1)?;
        let req = Request::Lookup(Lookup {
            parent,
            name: &node.name,
        });
        let found = match self.raw_call(generation, key.0, Ctx::default(), &req) {
            Ok(OwnedReply::Entry(e)) if e.ino != 0 => Some(e),
            _ => None,
        };
        let out = found.and_then(|e| {
            let mut b = r.lock_book();
            let same = e.attr.mode & libc::S_IFMT == node.kind
                && !b.node_ids.to_guest.contains_key(&(key.0, e.ino));
            let still_known = b.nodes.contains_key(&key);
            if same && still_known {
                b.node_ids.bind(key.0, key.1, e.ino);
                if let Some(n) = b.nodes.get_mut(&key) {
                    n.server = 1;
                }
                Some(e.ino)
            } else {
                drop(b);
                self.raw_forget(generation, key.0, e.ino);
                None
            }
        });
        memo.insert(key, out);
        out
    }

    fn relock(&self, r: &Resume, generation: u64, export: u32, fh: u64, held: &Held) {
        let (ino, sfh) = {
            let b = r.lock_book();
            let ino = match held {
                Held::Record { ino, .. } | Held::Flock { ino, .. } => *ino,
            };
            (
                b.node_ids.to_server.get(&(export, ino)).copied(),
                b.fh_ids.to_server.get(&(export, fh)).copied(),
            )
        };
        let result = match (ino, sfh) {
            (Some(ino), Some(fh)) => {
                let req = match *held {
                    Held::Record { owner, lock, .. } => Request::Setlk(Setlk {
                        ino,
                        fh,
                        owner,
                        lock,
                        sleep: false,
                    }),
                    Held::Flock { owner, op, .. } => Request::Flock(Flock {
                        ino,
                        fh,
                        owner,
                        op: op | libc::LOCK_NB,
                    }),
                };
                self.raw_call(generation, export, Ctx::default(), &req)
                    .map(|_| ())
            }
            _ => Err(Errno::EBADF),
        };
        if let Err(e) = result {
            error!(
                export,
                ?held,
                "LOCK LOST: a lock held before ferry-host restarted cannot be taken again \
                 ({e:?}; another process may hold it now); the guest process still believes \
                 it holds it"
            );
        }
    }

    /// A request that was in flight when the connection dropped: sent again when repeating it
    /// is harmless, otherwise decided by what the host shows now.
    fn redo(&self, r: &Resume, generation: u64, id: u64) {
        let Some(saved) = self.pending.get(&id).and_then(|p| p.saved.clone()) else {
            return;
        };
        let Some(rf) = decode_saved(&saved) else {
            self.fail(id, Errno::EIO);
            return;
        };
        let how = match &rf.body {
            Request::Release(_) | Request::Releasedir(_) => Redo::Answer,
            Request::Write(w) if w.flags & libc::O_APPEND != 0 => Redo::Fail,
            Request::Create(_)
            | Request::Mkdir(_)
            | Request::Mknod(_)
            | Request::Symlink(_)
            | Request::Link(_)
            | Request::Unlink(_)
            | Request::Rmdir(_)
            | Request::Rename(_) => Redo::Check,
            _ => Redo::Resend,
        };
        match how {
            Redo::Answer => self.answer(id, Ok(Reply::Empty)),
            Redo::Fail => {
                warn!(
                    op = ?rf.body.opcode(),
                    "an append was in flight when ferry-host went away; whether it landed is \
                     unknown, so it fails with EIO rather than risk writing it twice"
                );
                self.fail(id, Errno::EIO);
            }
            Redo::Resend => self.resend(r, id),
            Redo::Check => {
                let mut body = rf.body.clone();
                if let Err(e) = r.lock_book().to_server(rf.export, &mut body) {
                    self.fail(id, e);
                    return;
                }
                self.check(r, generation, id, rf.export, &rf.ctx, &body);
            }
        }
    }

    fn resend(&self, r: &Resume, id: u64) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let sent = self.send_saved(r, &mut w, id);
        drop(w);
        self.after_send(id, sent);
    }

    /// The rule for a changing request that may or may not have been applied (`body` with the
    /// new server's ids): a creation whose name now exists with the expected type is done (a
    /// create is then opened with its flags, less O_CREAT, O_EXCL and O_TRUNC); a removal whose
    /// name is gone is done; a rename whose old name is gone and whose new name exists is
    /// done; anything still to do is sent again, and what cannot be told fails with EIO.
    fn check(&self, r: &Resume, generation: u64, id: u64, export: u32, ctx: &Ctx, body: &Request) {
        let lookup = |parent: u64, name: &[u8]| -> Result<Entry, Errno> {
            let req = Request::Lookup(Lookup { parent, name });
            match self.raw_call(generation, export, Ctx::default(), &req) {
                Ok(OwnedReply::Entry(e)) if e.ino != 0 => Ok(e),
                Ok(_) => Err(Errno::ENOENT),
                Err(e) => Err(e),
            }
        };
        let made = |parent: u64, name: &[u8], kind: Option<u32>| match lookup(parent, name) {
            Ok(e) if kind.is_none_or(|k| e.attr.mode & libc::S_IFMT == k) => Some(Ok(e)),
            Ok(e) => {
                self.raw_forget(generation, export, e.ino);
                Some(Err(Errno::EIO))
            }
            Err(Errno::ENOENT) => None,
            Err(_) => Some(Err(Errno::EIO)),
        };
        let gone = |parent: u64, name: &[u8]| match lookup(parent, name) {
            Ok(e) => {
                self.raw_forget(generation, export, e.ino);
                Some(false)
            }
            Err(Errno::ENOENT) => Some(true),
            Err(_) => None,
        };
        let entry = |found: Option<Result<Entry, Errno>>| match found {
            None => self.resend(r, id),
            Some(Ok(e)) => self.answer(id, Ok(Reply::Entry(e))),
            Some(Err(e)) => self.fail(id, e),
        };
        match body {
            Request::Mkdir(b) => entry(made(b.parent, b.name, Some(libc::S_IFDIR))),
            Request::Mknod(b) => entry(made(b.parent, b.name, Some(b.mode & libc::S_IFMT))),
            Request::Symlink(b) => entry(made(b.parent, b.name, Some(libc::S_IFLNK))),
            Request::Link(b) => {
                // Done when the new name is the linked node.
                match made(b.newparent, b.newname, None) {
                    Some(Ok(e)) if e.ino == b.ino => self.answer(id, Ok(Reply::Entry(e))),
                    Some(Ok(e)) => {
                        self.raw_forget(generation, export, e.ino);
                        self.fail(id, Errno::EIO);
                    }
                    other => entry(other),
                }
            }
            Request::Create(b) => match made(b.parent, b.name, Some(libc::S_IFREG)) {
                None => self.resend(r, id),
                Some(Err(e)) => self.fail(id, e),
                Some(Ok(e)) => {
                    let flags = b.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
                    let req = Request::Open(Open {
                        ino: e.ino,
                        flags,
                        prefetch: 0,
                    });
                    match self.raw_call(generation, export, ctx.clone(), &req) {
                        Ok(OwnedReply::Opened(o) | OwnedReply::OpenedData(o, _)) => self.answer(
                            id,
                            Ok(Reply::Created(Created {
                                entry: e,
                                opened: o,
                            })),
                        ),
                        _ => {
                            self.raw_forget(generation, export, e.ino);
                            self.fail(id, Errno::EIO);
                        }
                    }
                }
            },
            Request::Unlink(b) => match gone(b.parent, b.name) {
                Some(true) => self.answer(id, Ok(Reply::Empty)),
                Some(false) => self.resend(r, id),
                None => self.fail(id, Errno::EIO),
            },
            Request::Rmdir(b) => match gone(b.parent, b.name) {
                Some(true) => self.answer(id, Ok(Reply::Empty)),
                Some(false) => self.resend(r, id),
                None => self.fail(id, Errno::EIO),
            },
            Request::Rename(b) => {
                const RENAME_EXCHANGE: u32 = 2;
                if b.flags & RENAME_EXCHANGE != 0 {
                    self.fail(id, Errno::EIO);
                    return;
                }
                match gone(b.parent, b.name) {
                    Some(false) => self.resend(r, id),
                    Some(true) => match made(b.newparent, b.newname, None) {
                        Some(Ok(e)) => {
                            self.raw_forget(generation, export, e.ino);
                            self.answer(id, Ok(Reply::Empty));
                        }
                        _ => self.fail(id, Errno::EIO),
                    },
                    None => self.fail(id, Errno::EIO),
                }
            }
            _ => self.resend(r, id),
        }
    }

    /// One request of the resume itself, with the new server's ids, on connection
    /// `generation` only; waits for the answer.
    fn raw_call(
        &self,
        generation: u64,
        export: u32,
        ctx: Ctx,
        body: &Request<'_>,
    ) -> Result<OwnedReply, Errno> {
        let (tx, rx) = sync_channel(1);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut p = Pending::new(
            body.opcode(),
            export,
            Box::new(move |r| {
                let _ = tx.send(r.map(OwnedReply::from));
            }),
        );
        p.raw = true;
        self.pending.insert(id, p);
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.generation != generation || w.state == LinkState::Down {
            drop(w);
            self.fail(id, Errno::ENOTCONN);
        } else if let Err(e) = write_request(&mut w, id, export, ctx, body.clone()) {
            drop(w);
            self.fail(id, Errno::ENOTCONN);
            self.link_lost(generation, &format!("write to server failed: {e}"));
        } else {
            drop(w);
        }
        match rx.recv_timeout(RESUME_REPLY_WAIT) {
            Ok(r) => r,
            Err(_) => {
                self.fail(id, Errno::ETIMEDOUT);
                Err(Errno::ETIMEDOUT)
            }
        }
    }

    fn raw_forget(&self, generation: u64, export: u32, ino: u64) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.generation == generation && w.state != LinkState::Down {
            let body = Request::Forget(Forget {
                nodes: vec![(ino, 1)],
            });
            let _ = write_request(&mut w, 0, export, Ctx::default(), body);
        }
    }
}

fn write_request(
    w: &mut WriterState,
    id: u64,
    export: u32,
    ctx: Ctx,
    body: Request<'_>,
) -> std::io::Result<()> {
    RequestFrame {
        id,
        export,
        ctx,
        body,
        payload: &[],
    }
    .encode(&mut w.scratch)
    .map_err(std::io::Error::other)?;
    write_frame(&mut w.out, &w.scratch, &[])?;
    w.out.flush()
}

fn decode_saved(saved: &Saved) -> Option<RequestFrame<'_>> {
    let frame = Frame::parse(&saved.bytes).ok()?;
    RequestFrame::decode(&frame).ok()
}

fn overflow() -> Change {
    Change {
        kind: ChangeKind::Overflow,
        path: Vec::new(),
        to: Vec::new(),
        parent: 0,
        to_parent: 0,
        file_type: 0,
        entry: None,
    }
}
