//! One guest connection, generic over the byte stream (Unix socket, TCP, vsock, or an
//! in-process socket pair for `ferry share`).
//!
//! Primer on the protocol this loop implements (see `ferry_protocol` for the bytes):
//! 1. The guest sends `Hello` (version, features, optional token). The server answers `Welcome`
//!    (negotiated features and the export list) or `Refused` (reason) and closes.
//! 2. The guest sends `Request` frames, each with an id of its choosing and the export id in the
//!    header. The server answers each with a `Reply` frame carrying the same id, in completion
//!    order, so a slow request (a 1 MiB read, an fsync, a blocking lock) never holds up the
//!    others. `Forget` has no reply.
//! 3. Any frame that does not decode ends the connection with a logged reason; other
//!    connections are unaffected. Dropping the connection drops its export sessions, which closes
//!    every descriptor it held and so releases its locks.
//!
//! Threads: a small pool of workers serves each connection, leader/follower style. The worker
//! holding the read lock reads exactly one frame, lets go of the lock, serves the request itself
//! and writes the reply under the write lock. A request therefore costs one wake-up on the host,
//! not a hand-off from a reader to a worker and on to a writer; this is what keeps per-operation
//! latency close to a local FUSE server's (see benches/fsbench.rs).

use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferry_common::ReadError;
use ferry_protocol::{
    Change, ChangeKind, EncodeError, Errno, Frame, FrameKind, Hello, Notice, Opcode, Refused,
    Reply, ReplyFrame, Request, RequestFrame, VERSION, Welcome, features,
};
use tracing::{debug, info, warn};

use crate::export::{Export, ExportSession, Response};
use crate::stats::{ConnStats, ServerStats};

/// How long a client has to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Workers per connection: requests one connection can have in service at once.
const WORKERS: usize = 8;

/// Receive buffer: several small frames arrive with one read.
const READ_BUF: usize = 256 * 1024;

/// Change batches queued for a guest that is not reading; beyond this the guest is told it
/// lost events (an overflow) instead of the server buffering without bound.
const MAX_QUEUED_CHANGES: usize = 1024;

/// What every connection of one server shares.
pub struct ServerState {
    /// The exports, indexed by export id.
    pub exports: Vec<Arc<Export>>,
    /// The shared secret; `None` accepts any client (Unix sockets and vsock only).
    pub token: Option<Vec<u8>>,
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that do not decode.
    #[error("malformed frame: {0}")]
    Decode(#[from] ferry_protocol::DecodeError),
    /// The peer sent a well-formed frame that is not allowed at this point.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The handshake was refused (already reported to the peer).
    #[error("refused: {0}")]
    Refused(String),
}

pub use ferry_common::Stream;

/// Serves one connection until the peer closes it or misbehaves. Blocks the calling thread.
pub fn serve_connection<S: Stream>(
    stream: S,
    state: &ServerState,
    peer: &str,
) -> Result<(), ConnError> {
    serve_counted(stream, state, peer, None)
}

/// As [`serve_connection`], counting requests, bytes and events in `stats` (what
/// `ferry status` shows) while the connection lasts.
pub fn serve_counted<S: Stream>(
    stream: S,
    state: &ServerState,
    peer: &str,
    stats: Option<&ServerStats>,
) -> Result<(), ConnError> {
    // Every line this connection's threads log carries its peer (`conn{peer=...}`).
    let span = tracing::info_span!("conn", %peer);
    let result = span.in_scope(|| serve(stream, state, peer, stats));
    let _entered = span.enter();
    match &result {
        Ok(()) => info!(%peer, "client disconnected"),
        Err(e) => ferry_common::warn_limited!(%peer, "closing connection: {e}"),
    }
    result
}

fn serve<S: Stream>(
    stream: S,
    state: &ServerState,
    peer: &str,
    stats: Option<&ServerStats>,
) -> Result<(), ConnError> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(READ_BUF, stream.try_clone()?);

    stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
    let mut buf = Vec::new();
    let len = read_frame(&mut reader, &mut buf).map_err(|e| match e {
        ConnError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => {
            ConnError::Protocol("no Hello within 30 s".into())
        }
        e => e,
    })?;
    stream.set_read_timeout(None)?;
    let frame = Frame::parse(&buf[..len])?;
    let hello = Hello::decode(&frame)?;
    let mut out = Vec::new();
    if let Err(reason) = check_hello(&hello, state) {
        ferry_common::warn_limited!(%peer, client = hello.client, "refusing connection: {reason}");
        let errno = if hello.version.major != VERSION.major {
            Errno::EPROTO
        } else {
            Errno::EACCES
        };
        Refused {
            errno: errno.0,
            reason: reason.clone(),
        }
        .encode(&mut out)
        .map_err(|e| ConnError::Protocol(e.to_string()))?;
        writer.write_all(&out)?;
        return Err(ConnError::Refused(reason));
    }
    info!(%peer, client = hello.client, "client connected");
    welcome(state, hello.features)
        .encode(&mut out)
        .map_err(|e| ConnError::Protocol(e.to_string()))?;
    writer.write_all(&out)?;

    let sessions: Vec<Arc<ExportSession>> = state
        .exports
        .iter()
        .map(|e| Arc::new(ExportSession::new(e.clone())))
        .collect();
    let (notices, queued) = channel();
    let queued_changes = Arc::new(AtomicUsize::new(0));
    let stats = stats.map(|s| s.connection(peer, &sessions, queued_changes.clone()));
    let shared = Shared {
        reader: Mutex::new(reader),
        writer: Arc::new(Mutex::new(writer)),
        stream,
        sessions,
        closed: AtomicBool::new(false),
        error: Mutex::new(None),
        notices: Mutex::new(notices),
        queued_changes,
        stats,
    };
    let span = tracing::Span::current();
    std::thread::scope(|s| {
        let shared_ref = &shared;
        let notify_span = span.clone();
        std::thread::Builder::new()
            .name("ferry-conn-notify".into())
            .spawn_scoped(s, move || {
                notify_span.in_scope(|| shared_ref.send_changes(queued))
            })
            .expect("can spawn the change sender");
        for i in 0..WORKERS {
            let shared = &shared;
            let span = span.clone();
            std::thread::Builder::new()
                .name(format!("ferry-conn-{i}"))
                .spawn_scoped(s, move || span.in_scope(|| shared.work()))
                .expect("can spawn a connection worker");
        }
    });
    match shared.error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn welcome(state: &ServerState, client_features: u64) -> Welcome {
    Welcome {
        version: VERSION,
        features: client_features & features::ALL,
        exports: state
            .exports
            .iter()
            .enumerate()
            .map(|(i, e)| ferry_protocol::ExportInfo {
                id: i as u32,
                name: e.name().to_string(),
                read_only: e.read_only(),
                permissions: e.ids().permissions,
                // Only modes that create as the caller let the host check supplementary
                // groups; in squash mode the agent need not read them.
                wants_groups: e.ids().mode.creates_as_caller(),
            })
            .collect(),
        server: format!("ferry-host {}", env!("CARGO_PKG_VERSION")),
    }
}

fn check_hello(hello: &Hello<'_>, state: &ServerState) -> Result<(), String> {
    if hello.version.major != VERSION.major {
        return Err(format!(
            "protocol version {}.{} is not supported (server speaks {}.{})",
            hello.version.major, hello.version.minor, VERSION.major, VERSION.minor
        ));
    }
    if let Some(expected) = &state.token {
        match hello.token {
            Some(t) if constant_time_eq(t, expected) => {}
            Some(_) => return Err("wrong token".into()),
            None => {
                return Err("this server requires a token (--token-file or FERRY_TOKEN)".into());
            }
        }
    }
    Ok(())
}

/// Compares secrets without leaking the position of the first difference through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads one whole frame (header included) into the front of `buf` and returns its length.
/// A clean end of stream before a new frame is `UnexpectedEof`.
fn read_frame<R: Read>(rd: &mut R, buf: &mut Vec<u8>) -> Result<usize, ConnError> {
    match ferry_common::read_frame(rd, buf) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
        Err(ReadError::Io(e)) => Err(e.into()),
        Err(ReadError::Header(e)) => Err(e.into()),
        Err(e) => Err(ConnError::Protocol(e.to_string())),
    }
}

/// What the workers of one connection share.
struct Shared<S: Stream> {
    reader: Mutex<BufReader<S>>,
    /// Shared with the threads that wait for blocking locks and answer them.
    writer: Arc<Mutex<S>>,
    stream: S,
    sessions: Vec<Arc<ExportSession>>,
    closed: AtomicBool,
    error: Mutex<Option<ConnError>>,
    /// Change batches on their way to [`Shared::send_changes`], with the export id.
    notices: Mutex<Sender<(u32, Vec<Change>)>>,
    /// Batches queued and not yet written.
    queued_changes: Arc<AtomicUsize>,
    /// What `ferry status` shows of this connection, when the server counts.
    stats: Option<Arc<ConnStats>>,
}

impl<S: Stream> Shared<S> {
    fn work(&self) {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut head = Vec::with_capacity(256);
        while !self.closed.load(Ordering::Acquire) {
            let read = {
                let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
                if self.closed.load(Ordering::Acquire) {
                    return;
                }
                read_frame(&mut *reader, &mut buf)
            };
            let outcome = read.and_then(|len| self.handle(&buf[..len], &mut head));
            if let Err(e) = outcome {
                self.close(e);
                return;
            }
        }
    }

    /// Serves one request frame. `Err` means the connection must close.
    fn handle(&self, buf: &[u8], head: &mut Vec<u8>) -> Result<(), ConnError> {
        let frame = Frame::parse(buf)?;
        if frame.header.kind != FrameKind::Request {
            return Err(ConnError::Protocol(format!(
                "unexpected {:?} frame after the handshake",
                frame.header.kind
            )));
        }
        // Only a counted connection reads the clock.
        let started = self.stats.as_ref().map(|_| Instant::now());
        let req = RequestFrame::decode(&frame)?;
        let op = req.body.opcode();
        // One span per request: with RUST_LOG=ferry_host=debug each line says which request
        // of which guest it belongs to, and `served` closes it with the answer and the time.
        let (node, name) = target(&req.body);
        let span = tracing::debug_span!(
            "req",
            id = req.id,
            op = ?op,
            export = req.export,
            node,
            name = name.map(|n| tracing::field::display(String::from_utf8_lossy(n)))
        );
        let _entered = span.enter();
        let Some(session) = self.sessions.get(req.export as usize) else {
            if op != Opcode::Forget {
                self.send(head, req.id, op, Err(Errno::ENODEV), &[]);
            }
            return Ok(());
        };
        if session.export().is_retired() {
            // A reload removed or replaced this export: every request gets the same clear
            // answer (the agent logs it once), and no host change reaches it any more.
            if op != Opcode::Forget {
                self.send(head, req.id, op, Err(Errno::ESHUTDOWN), &[]);
            }
            return Ok(());
        }
        if let Request::Watch(w) = &req.body {
            let result = if w.on {
                session.watch(self.change_sink(req.export, session))
            } else {
                session.unwatch();
                Ok(())
            };
            self.send(head, req.id, op, result.map(|()| Reply::Empty), &[]);
            return Ok(());
        }
        let counted = self
            .stats
            .as_ref()
            .and_then(|c| c.session(req.export as usize));
        let written = if op == Opcode::Write {
            req.payload.len()
        } else {
            0
        };
        let mut read = 0;
        match session.dispatch(&req.ctx, &req.body, req.payload) {
            Response::None => {}
            Response::Reply(r) => self.send(head, req.id, op, Ok(r), &[]),
            Response::Error(e) => self.send(head, req.id, op, Err(e), &[]),
            Response::Data(data) => {
                read = data.len();
                self.send(head, req.id, op, Ok(Reply::Data(&data)), &data)
            }
            Response::OpenedData(o, data) => {
                read = data.len();
                self.send(head, req.id, op, Ok(Reply::OpenedData(o, &data)), &data)
            }
            Response::Pending(wait) => {
                let stats = self.stats.clone();
                let export = req.export as usize;
                if let Some(s) = counted {
                    s.lock_waiting(true);
                }
                // A blocking lock that conflicts: wait on a thread of its own so the workers
                // keep serving (the lock holder's unlock may be the very next request). The
                // session ending makes the wait give up, so the thread never outlives it long.
                let writer = Arc::clone(&self.writer);
                let id = req.id;
                let spawned = std::thread::Builder::new()
                    .name("ferry-lock-wait".into())
                    .spawn(move || {
                        let result = match wait.wait() {
                            Response::Error(e) => Err(e),
                            _ => Ok(Reply::Empty),
                        };
                        if let Some(s) = stats.as_ref().and_then(|c| c.session(export)) {
                            s.lock_waiting(false);
                        }
                        send(&writer, &mut Vec::new(), id, op, result, &[]);
                    });
                if let Err(e) = spawned {
                    warn!("cannot start a lock wait thread: {e}");
                    if let Some(s) = counted {
                        s.lock_waiting(false);
                    }
                    self.send(head, req.id, op, Err(Errno::ENOLCK), &[]);
                }
            }
        }
        if let (Some(s), Some(t)) = (counted, started) {
            s.request(op, t.elapsed(), read, written);
        }
        debug!(read, written, "served");
        Ok(())
    }

    /// Encodes and writes one reply.
    fn send(
        &self,
        head: &mut Vec<u8>,
        id: u64,
        op: Opcode,
        result: Result<Reply<'_>, Errno>,
        payload: &[u8],
    ) {
        send(&self.writer, head, id, op, result, payload);
    }

    /// Where the export's watcher hands this connection's changes: a queue drained by
    /// [`Shared::send_changes`], so that the watcher never waits for this guest.
    fn change_sink(&self, export: u32, session: &Arc<ExportSession>) -> crate::export::Sink {
        let tx = self
            .notices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let queued = Arc::clone(&self.queued_changes);
        let session: Weak<ExportSession> = Arc::downgrade(session);
        let overflowed = AtomicBool::new(false);
        let stats = self.stats.clone();
        let counted = move |sent: usize, dropped: usize| {
            if let Some(s) = stats.as_ref().and_then(|c| c.session(export as usize)) {
                s.events_sent(sent);
                s.events_overflowed(dropped);
            }
        };
        Arc::new(move |changes: Vec<Change>| {
            if let Some(s) = session.upgrade().filter(|s| s.export().is_retired()) {
                // Removed by a reload: the guest hears nothing more of this export.
                for c in &changes {
                    if let Some(e) = &c.entry {
                        s.forget(e.ino, 1);
                    }
                }
                return;
            }
            let n = queued.fetch_add(1, Ordering::AcqRel);
            let batch = if n < MAX_QUEUED_CHANGES {
                overflowed.store(false, Ordering::Relaxed);
                counted(changes.len(), 0);
                changes
            } else {
                counted(0, changes.len());
                // The guest is not reading: give back the lookups these changes carry and tell
                // it (once) that it lost events.
                if let Some(s) = session.upgrade() {
                    for c in &changes {
                        if let Some(e) = &c.entry {
                            s.forget(e.ino, 1);
                        }
                    }
                }
                if overflowed.swap(true, Ordering::Relaxed) {
                    queued.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                warn!(
                    export,
                    "a guest is not reading change events; telling it they overflowed"
                );
                vec![Change {
                    kind: ChangeKind::Overflow,
                    path: Vec::new(),
                    to: Vec::new(),
                    parent: 0,
                    to_parent: 0,
                    file_type: 0,
                    entry: None,
                }]
            };
            if tx.send((export, batch)).is_err() {
                queued.fetch_sub(1, Ordering::AcqRel);
            }
        })
    }

    /// Writes queued change batches as `Changes` notices until the connection closes.
    fn send_changes(&self, rx: Receiver<(u32, Vec<Change>)>) {
        let mut out = Vec::new();
        while !self.closed.load(Ordering::Acquire) {
            let (export, changes) = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(b) => b,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.queued_changes.fetch_sub(1, Ordering::AcqRel);
            self.write_changes(&mut out, export, changes);
        }
    }

    /// Writes one batch, split into as many notices as the frame size limit needs.
    fn write_changes(&self, out: &mut Vec<u8>, export: u32, changes: Vec<Change>) {
        let notice = Notice::Changes { export, changes };
        match notice.encode(out) {
            Ok(()) => {
                let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = w.write_all(out) {
                    debug!("changes not delivered: {e}");
                }
            }
            Err(EncodeError::TooLarge(_)) => {
                let Notice::Changes { mut changes, .. } = notice else {
                    return;
                };
                if changes.len() < 2 {
                    warn!(export, "a change is too large to send; dropped");
                    return;
                }
                let rest = changes.split_off(changes.len() / 2);
                self.write_changes(out, export, changes);
                self.write_changes(out, export, rest);
            }
            Err(e) => warn!(export, "cannot encode changes: {e}"),
        }
    }

    /// Ends the connection: records why, wakes every worker.
    fn close(&self, e: ConnError) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let clean = matches!(&e, ConnError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof);
        if !clean {
            *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
        self.stream.shutdown();
    }
}

/// Encodes and writes one reply under the write lock. A failed write means the peer is gone;
/// the reader notices.
fn send<S: Stream>(
    writer: &Mutex<S>,
    head: &mut Vec<u8>,
    id: u64,
    op: Opcode,
    result: Result<Reply<'_>, Errno>,
    payload: &[u8],
) {
    let mut payload = payload;
    if let Err(e) = (ReplyFrame { id, op, result }).encode(head) {
        warn!(?op, "cannot encode reply: {e}");
        let fallback = ReplyFrame {
            id,
            op,
            result: Err(Errno::EIO),
        };
        if fallback.encode(head).is_err() {
            return;
        }
        payload = &[];
    }
    let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = ferry_common::write_frame(&mut *w, head, payload) {
        debug!("reply not delivered: {e}");
    }
}

/// The node a request is about and the name it names, for its span.
fn target<'a>(body: &Request<'a>) -> (u64, Option<&'a [u8]>) {
    match body {
        Request::Lookup(b) => (b.parent, Some(b.name)),
        Request::Symlink(b) => (b.parent, Some(b.name)),
        Request::Mknod(b) => (b.parent, Some(b.name)),
        Request::Mkdir(b) => (b.parent, Some(b.name)),
        Request::Unlink(b) => (b.parent, Some(b.name)),
        Request::Rmdir(b) => (b.parent, Some(b.name)),
        Request::Rename(b) => (b.parent, Some(b.name)),
        Request::Create(b) => (b.parent, Some(b.name)),
        Request::Link(b) => (b.ino, Some(b.newname)),
        Request::Getattr(b) => (b.ino, None),
        Request::Setattr(b) => (b.ino, None),
        Request::Readlink(b) => (b.ino, None),
        Request::Open(b) => (b.ino, None),
        Request::Read(b) => (b.ino, None),
        Request::Write(b) => (b.ino, None),
        Request::Flush(b) => (b.ino, None),
        Request::Release(b) => (b.ino, None),
        Request::Fsync(b) => (b.ino, None),
        Request::Opendir(b) => (b.ino, None),
        Request::Readdir(b) => (b.ino, None),
        Request::Readdirplus(b) => (b.ino, None),
        Request::Releasedir(b) => (b.ino, None),
        _ => (0, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
