//! One guest connection, generic over the byte stream (Unix socket, TCP, vsock, or an
//! in-process socket pair for `ferry share`).
//!
//! Primer on the protocol this loop implements (see `ferry_protocol` for the bytes):
//! 1. The guest sends `Hello` (version, features, token), whole within the handshake deadline
//!    and at most `MAX_HELLO` bytes. The server answers `Welcome` (negotiated features and the
//!    exports this client may use) or `Refused` (reason) and closes.
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
//! latency close to a local FUSE server's (see benches/fsbench.rs). Besides the workers, one
//! thread sends change notices and one retries the connection's waiting locks, so a connection
//! costs the same threads whatever its guest sends.

use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use ferry_common::ReadError;
use ferry_protocol::{
    Change, ChangeKind, EncodeError, Errno, Frame, FrameHeader, FrameKind, HEADER_LEN, Hello,
    MAX_HELLO, Notice, Opcode, Refused, Reply, ReplyFrame, Request, RequestFrame, VERSION, Welcome,
    features,
};
use tracing::{debug, info, warn};

use crate::config::Client;
use crate::export::{Export, ExportSession, Response};
use crate::stats::{ConnStats, ServerStats};

/// Workers per connection: requests one connection can have in service at once.
const WORKERS: usize = 8;

/// Receive buffer: several small frames arrive with one read.
const READ_BUF: usize = 256 * 1024;

pub use crate::limits::Limits;

/// Who is on the other end of a connection, as far as its transport can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// How log lines name it.
    pub name: String,
    /// The guest's CID, on AF_VSOCK.
    pub cid: Option<u32>,
    /// The peer process's uid (`SO_PEERCRED`), on Unix sockets (hybrid vsock: the VMM's).
    pub uid: Option<u32>,
}

impl Peer {
    /// A peer known by name only.
    pub fn named(name: impl Into<String>) -> Peer {
        Peer {
            name: name.into(),
            ..Default::default()
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// How clients authenticate: the tokens the server accepts, and whether one is required.
#[derive(Clone, Default)]
pub struct Auth {
    /// Accepted tokens, each with the name allow-lists know it by (`default` for the one of
    /// `--token-file`).
    pub tokens: Vec<(String, Vec<u8>)>,
    /// A client without a matching token is refused.
    pub required: bool,
}

impl Auth {
    /// No authentication: what `ferry share` uses, where both ends are one process.
    pub fn none() -> Auth {
        Auth::default()
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Auth")
            .field("tokens", &names)
            .field("required", &self.required)
            .finish()
    }
}

/// What every connection of one server shares.
pub struct ServerState {
    /// The exports, indexed by export id.
    pub exports: Vec<Arc<Export>>,
    /// How clients authenticate.
    pub auth: Auth,
    /// Per export (by id), the clients that may see and use it; a missing entry or `None`
    /// lets every authenticated client.
    pub allow: Vec<Option<Vec<Client>>>,
    /// The bounds clients are held to.
    pub limits: Limits,
    /// Connections admitted and not yet ended (shared with the states a reload replaces).
    open: Arc<AtomicUsize>,
    /// Of those, the ones that have not finished their handshake.
    unauthenticated: Arc<AtomicUsize>,
}

impl ServerState {
    /// The state of a server of these exports.
    pub fn new(exports: Vec<Arc<Export>>, auth: Auth, limits: Limits) -> Self {
        ServerState {
            exports,
            auth,
            allow: Vec::new(),
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            unauthenticated: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// This state, counting its connections together with `old`'s (the state a reload
    /// replaces), so that the caps of [`Limits`] hold across reloads.
    pub fn counting_with(mut self, old: &ServerState) -> Self {
        self.open = Arc::clone(&old.open);
        self.unauthenticated = Arc::clone(&old.unauthenticated);
        self
    }

    /// Counts a new connection in, or refuses it (with a log line) when a cap is reached.
    /// Listeners call this before they spend a thread on the connection.
    pub fn admit(self: &Arc<Self>, peer: &Peer) -> Option<Admission> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        let pending = self.unauthenticated.fetch_add(1, Ordering::AcqRel);
        let admission = Admission {
            state: Arc::clone(self),
            authenticated: false,
        };
        if open >= self.limits.max_connections {
            warn!(
                %peer,
                limit = self.limits.max_connections,
                "refusing a connection: too many connections (--max-connections)"
            );
            return None;
        }
        if pending >= self.limits.max_unauthenticated {
            warn!(
                %peer,
                limit = self.limits.max_unauthenticated,
                "refusing a connection: too many connections in their handshake \
                 (--max-unauthenticated)"
            );
            return None;
        }
        Some(admission)
    }

    /// Whether `peer`, having presented the token named `token` (if any), may use export `id`.
    pub fn allowed(&self, id: usize, peer: &Peer, token: Option<&str>) -> bool {
        let Some(list) = self.allow.get(id).and_then(Option::as_ref) else {
            return true;
        };
        list.iter().any(|c| match c {
            Client::Cid(cid) => peer.cid == Some(*cid),
            Client::Uid(uid) => peer.uid == Some(*uid),
            Client::Token(name) => token == Some(name.as_str()),
        })
    }

    /// Connections admitted and not yet ended.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One admitted connection's place in the counts of [`ServerState::admit`]; dropping it gives
/// the place back.
pub struct Admission {
    state: Arc<ServerState>,
    authenticated: bool,
}

impl Admission {
    /// The handshake succeeded: the connection no longer counts as unauthenticated.
    fn authenticated(&mut self) {
        if !std::mem::replace(&mut self.authenticated, true) {
            self.state.unauthenticated.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.authenticated();
        self.state.open.fetch_sub(1, Ordering::AcqRel);
    }
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
/// The connection counts against the caps of [`Limits`] (see [`ServerState::admit`]).
pub fn serve_connection<S: Stream>(
    stream: S,
    state: &Arc<ServerState>,
    peer: &Peer,
) -> Result<(), ConnError> {
    let Some(admission) = state.admit(peer) else {
        return Err(ConnError::Refused("too many connections".into()));
    };
    serve_admitted(stream, admission, peer, None)
}

/// As [`serve_connection`], for a connection the listener has already admitted, counting
/// requests, bytes and events in `stats` (what `ferry status` shows) while it lasts.
pub fn serve_admitted<S: Stream>(
    stream: S,
    admission: Admission,
    peer: &Peer,
    stats: Option<&ServerStats>,
) -> Result<(), ConnError> {
    // Every line this connection's threads log carries its peer (`conn{peer=...}`).
    let span = tracing::info_span!("conn", %peer);
    let result = span.in_scope(|| serve(stream, admission, peer, stats));
    let _entered = span.enter();
    match &result {
        Ok(()) => info!(%peer, "client disconnected"),
        Err(e) => ferry_common::warn_limited!(%peer, "closing connection: {e}"),
    }
    result
}

fn serve<S: Stream>(
    mut stream: S,
    mut admission: Admission,
    peer: &Peer,
    stats: Option<&ServerStats>,
) -> Result<(), ConnError> {
    let state = Arc::clone(&admission.state);
    let state = &*state;
    let mut writer = stream.try_clone()?;
    // The Hello is read straight from the stream, so that nothing is buffered (or allocated)
    // for a client that has not authenticated.
    let deadline = Instant::now() + state.limits.handshake_timeout;
    let buf = read_hello(&mut stream, deadline)?;
    stream.set_read_timeout(None)?;
    let frame = Frame::parse(&buf)?;
    let hello = Hello::decode(&frame)?;
    let mut out = Vec::new();
    let checked = check_hello(&hello, state);
    if let Err(reason) = &checked {
        let reason = reason.clone();
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
    let token = checked.ok().flatten();
    admission.authenticated();
    // A client sees, and can use, only the exports its allow-lists grant it.
    let allowed: Vec<bool> = (0..state.exports.len())
        .map(|i| state.allowed(i, peer, token))
        .collect();
    info!(
        %peer,
        client = hello.client,
        token = token.unwrap_or("none"),
        exports = allowed.iter().filter(|a| **a).count(),
        "client connected"
    );
    // Sessions start before the Welcome, so that a server out of descriptors refuses this
    // one client (and says why) instead of failing later or taking anything else down.
    let sessions: Result<Vec<Option<Arc<ExportSession>>>, _> = state
        .exports
        .iter()
        .zip(&allowed)
        .map(|(e, &ok)| {
            ok.then(|| ExportSession::new(e.clone()).map(Arc::new))
                .transpose()
        })
        .collect();
    let sessions = match sessions {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("the server cannot serve this client now: {e}");
            warn!(%peer, "refusing connection: {reason}");
            Refused {
                errno: Errno::EMFILE.0,
                reason: reason.clone(),
            }
            .encode(&mut out)
            .map_err(|e| ConnError::Protocol(e.to_string()))?;
            writer.write_all(&out)?;
            return Err(ConnError::Refused(reason));
        }
    };
    let welcomed = welcome(state, hello.features, &allowed);
    let hints = welcomed.features & features::XATTR_HINTS != 0;
    for s in sessions.iter().flatten() {
        s.set_xattr_hints(hints);
    }
    welcomed
        .encode(&mut out)
        .map_err(|e| ConnError::Protocol(e.to_string()))?;
    writer.write_all(&out)?;

    let (notices, queued) = channel();
    let reader = BufReader::with_capacity(READ_BUF, stream.try_clone()?);
    let queued_changes = Arc::new(AtomicUsize::new(0));
    let stats = stats.map(|s| s.connection(&peer.name, &sessions, queued_changes.clone()));
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
        waiting: Mutex::new(Vec::new()),
        waiting_wake: Condvar::new(),
        max_lock_waiters: state.limits.max_lock_waiters,
        max_queued_change_bytes: state.limits.max_queued_change_bytes,
    };
    let span = tracing::Span::current();
    std::thread::scope(|s| {
        let shared = &shared;
        let (notify_span, lock_span) = (span.clone(), span.clone());
        let mut spawned = std::thread::Builder::new()
            .name("ferry-conn-notify".into())
            .spawn_scoped(s, move || {
                notify_span.in_scope(|| shared.send_changes(queued))
            })
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("ferry-lock-wait".into())
                    .spawn_scoped(s, move || lock_span.in_scope(|| shared.retry_locks()))
            })
            .map(drop);
        for i in 0..WORKERS {
            let span = span.clone();
            spawned = spawned.and_then(|()| {
                std::thread::Builder::new()
                    .name(format!("ferry-conn-{i}"))
                    .spawn_scoped(s, move || span.in_scope(|| shared.work()))
                    .map(drop)
            });
        }
        // Out of threads: the ones started see the connection closed and end.
        if let Err(e) = spawned {
            shared.close(ConnError::Io(e));
        }
    });
    match shared.error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn welcome(state: &ServerState, client_features: u64, allowed: &[bool]) -> Welcome {
    Welcome {
        version: VERSION,
        features: client_features & features::ALL,
        exports: state
            .exports
            .iter()
            .enumerate()
            .filter(|(i, _)| allowed[*i])
            .map(|(i, e)| ferry_protocol::ExportInfo {
                id: i as u32,
                name: e.name().to_string(),
                read_only: e.read_only(),
                permissions: e.ids().permissions,
                // Only modes that create as the caller let the host check supplementary
                // groups; in squash mode the agent need not read them.
                wants_groups: e.ids().mode.creates_as_caller(),
                flush_to_host: e.close_reports_errors(),
            })
            .collect(),
        server: format!("ferry-host {}", env!("CARGO_PKG_VERSION")),
    }
}

/// Checks a Hello; `Ok` carries the name of the token the client presented, if any.
fn check_hello<'s>(hello: &Hello<'_>, state: &'s ServerState) -> Result<Option<&'s str>, String> {
    if hello.version.major != VERSION.major {
        return Err(format!(
            "protocol version {}.{} is not supported (server speaks {}.{})",
            hello.version.major, hello.version.minor, VERSION.major, VERSION.minor
        ));
    }
    let tokens = &state.auth.tokens;
    match hello.token {
        Some(t) => {
            // Every token is compared, so the time taken says nothing about which matched.
            let mut matched = None;
            for (name, secret) in tokens {
                if constant_time_eq(t, secret) && matched.is_none() {
                    matched = Some(name.as_str());
                }
            }
            match matched {
                Some(name) => Ok(Some(name)),
                None if tokens.is_empty() && !state.auth.required => Ok(None),
                None => Err("wrong token".into()),
            }
        }
        None if state.auth.required => Err(
            "this server requires a token: give the agent --token-file PATH (or FERRY_TOKEN) \
             with the server's token"
                .into(),
        ),
        None => Ok(None),
    }
}

/// Compares secrets without leaking the position of the first difference through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the `Hello` frame whole by `deadline`, refusing from its header alone one larger than
/// [`MAX_HELLO`], before anything is allocated for it.
fn read_hello<S: Stream>(stream: &mut S, deadline: Instant) -> Result<Vec<u8>, ConnError> {
    let mut head = [0u8; HEADER_LEN];
    read_by(stream, &mut head, deadline)?;
    let header = FrameHeader::parse(&head)?;
    if header.len > MAX_HELLO {
        return Err(ConnError::Protocol(format!(
            "a {}-byte frame before the handshake (a Hello is at most {MAX_HELLO} bytes)",
            header.len
        )));
    }
    let mut buf = vec![0u8; header.len as usize];
    buf[..HEADER_LEN].copy_from_slice(&head);
    read_by(stream, &mut buf[HEADER_LEN..], deadline)?;
    Ok(buf)
}

/// Fills `buf` from `stream` by `deadline`, however the bytes trickle in.
fn read_by<S: Stream>(
    stream: &mut S,
    mut buf: &mut [u8],
    deadline: Instant,
) -> Result<(), ConnError> {
    while !buf.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnError::Protocol(
                "no complete Hello within the handshake deadline (--handshake-timeout)".into(),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(buf) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
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
    /// By export id; `None` for the exports this client may not use.
    sessions: Vec<Option<Arc<ExportSession>>>,
    closed: AtomicBool,
    error: Mutex<Option<ConnError>>,
    /// Change batches on their way to [`Shared::send_changes`], with the export id and when
    /// the watcher saw the first event of their burst.
    notices: Mutex<Sender<(u32, Vec<Change>, Instant)>>,
    /// Bytes of change batches queued and not yet written.
    queued_changes: Arc<AtomicUsize>,
    /// What `ferry status` shows of this connection, when the server counts.
    stats: Option<Arc<ConnStats>>,
    /// Blocking locks waiting, retried by [`Shared::retry_locks`].
    waiting: Mutex<Vec<Waiting>>,
    /// Wakes [`Shared::retry_locks`]: a lock to wait for, or the connection closing.
    waiting_wake: Condvar,
    /// Cap on `waiting`.
    max_lock_waiters: usize,
    /// Cap on `queued_changes`.
    max_queued_change_bytes: usize,
}

/// One blocking lock request waiting for its lock.
struct Waiting {
    id: u64,
    op: Opcode,
    /// The session's export id (for its `lock_waiters` count).
    export: usize,
    wait: crate::export::Pending,
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
        let Some(session) = self
            .sessions
            .get(req.export as usize)
            .and_then(Option::as_ref)
        else {
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
                // A blocking lock that conflicts: [`Shared::retry_locks`] retries it with the
                // connection's other waiting locks, so the workers keep serving (the lock
                // holder's unlock may be the very next request) and waiting costs no thread.
                let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                if waiting.len() >= self.max_lock_waiters {
                    drop(waiting);
                    warn!(
                        limit = self.max_lock_waiters,
                        "a guest has too many blocking locks waiting (--max-lock-waiters); \
                         answering ENOLCK"
                    );
                    self.send(head, req.id, op, Err(Errno::ENOLCK), &[]);
                } else {
                    if let Some(s) = counted {
                        s.lock_waiting(true);
                    }
                    waiting.push(Waiting {
                        id: req.id,
                        op,
                        export: req.export as usize,
                        wait,
                    });
                    self.waiting_wake.notify_one();
                }
            }
        }
        if let (Some(s), Some(t)) = (counted, started) {
            s.request(op, t.elapsed(), read, written);
        }
        debug!(read, written, "served");
        Ok(())
    }

    /// Retries every waiting lock of this connection, on one thread, until the connection
    /// closes: each round tries each once without blocking, answers those that are done, and
    /// pauses (1 ms, growing to 50 ms while nothing changes; a new waiter starts over).
    fn retry_locks(&self) {
        let mut head = Vec::new();
        let mut pause = crate::export::LOCK_FIRST_PAUSE;
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.closed.load(Ordering::Acquire) {
                // Dropping the waits gives up their locks' files and handles.
                for w in waiting.drain(..) {
                    self.lock_done(w.export);
                }
                return;
            }
            let mut done = Vec::new();
            waiting.retain(|w| match w.wait.poll() {
                Some(response) => {
                    self.lock_done(w.export);
                    done.push((w.id, w.op, response));
                    false
                }
                None => true,
            });
            let idle = waiting.is_empty();
            if !done.is_empty() {
                drop(waiting);
                for (id, op, response) in done {
                    let result = match response {
                        Response::Error(e) => Err(e),
                        _ => Ok(Reply::Empty),
                    };
                    self.send(&mut head, id, op, result, &[]);
                }
                waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let before = waiting.len();
            let timeout = if idle {
                Duration::from_millis(200)
            } else {
                pause
            };
            waiting = self
                .waiting_wake
                .wait_timeout(waiting, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            pause = if idle || waiting.len() > before {
                crate::export::LOCK_FIRST_PAUSE
            } else {
                (pause * 2).min(crate::export::LOCK_LONGEST_PAUSE)
            };
        }
    }

    /// A waiting lock of export `export` stopped waiting (granted, refused or given up).
    fn lock_done(&self, export: usize) {
        if let Some(s) = self.stats.as_ref().and_then(|c| c.session(export)) {
            s.lock_waiting(false);
        }
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
        let max = self.max_queued_change_bytes;
        let session: Weak<ExportSession> = Arc::downgrade(session);
        let overflowed = AtomicBool::new(false);
        let stats = self.stats.clone();
        let lag = self.stats.clone();
        let counted = move |sent: usize, dropped: usize| {
            if let Some(s) = stats.as_ref().and_then(|c| c.session(export as usize)) {
                s.events_sent(sent);
                s.events_overflowed(dropped);
            }
        };
        Arc::new(move |changes: Vec<Change>, seen: Instant| {
            if let Some(s) = session.upgrade().filter(|s| s.export().is_retired()) {
                // Removed by a reload: the guest hears nothing more of this export.
                for c in &changes {
                    if let Some(e) = &c.entry {
                        s.forget(e.ino, 1);
                    }
                }
                return;
            }
            let size = batch_bytes(&changes);
            let n = queued.fetch_add(size, Ordering::AcqRel);
            // One batch larger than the cap still goes when nothing else waits.
            let batch = if n == 0 || n + size <= max {
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
                queued.fetch_sub(size, Ordering::AcqRel);
                if overflowed.swap(true, Ordering::Relaxed) {
                    return;
                }
                warn!(
                    export,
                    limit = max,
                    "a guest is not reading change events (--max-queued-change-bytes); telling \
                     it they overflowed"
                );
                let overflow = vec![Change {
                    kind: ChangeKind::Overflow,
                    path: Vec::new(),
                    to: Vec::new(),
                    parent: 0,
                    to_parent: 0,
                    file_type: 0,
                    entry: None,
                }];
                // The one overflow notice is let past the cap: it is what tells the guest.
                queued.fetch_add(batch_bytes(&overflow), Ordering::AcqRel);
                overflow
            };
            let size = batch_bytes(&batch);
            if let Some(s) = &lag {
                s.batch_queued(seen);
            }
            if tx.send((export, batch, seen)).is_err() {
                queued.fetch_sub(size, Ordering::AcqRel);
                if let Some(s) = &lag {
                    s.batch_written(seen);
                }
            }
        })
    }

    /// Writes queued change batches as `Changes` notices until the connection closes.
    fn send_changes(&self, rx: Receiver<(u32, Vec<Change>, Instant)>) {
        let mut out = Vec::new();
        while !self.closed.load(Ordering::Acquire) {
            let (export, changes, seen) = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(b) => b,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.queued_changes
                .fetch_sub(batch_bytes(&changes), Ordering::AcqRel);
            if let Some(s) = &self.stats {
                s.batch_written(seen);
            }
            // The host's share of the event lag, told to the guest (see `Notice::Changes`).
            let age_us = seen.elapsed().as_micros().min(u64::MAX as u128) as u64;
            self.write_changes(&mut out, export, changes, age_us);
        }
    }

    /// Writes one batch, split into as many notices as the frame size limit needs.
    fn write_changes(&self, out: &mut Vec<u8>, export: u32, changes: Vec<Change>, age_us: u64) {
        let notice = Notice::Changes {
            export,
            changes,
            age_us,
        };
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
                self.write_changes(out, export, changes, age_us);
                self.write_changes(out, export, rest, age_us);
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
        self.waiting_wake.notify_all();
    }
}

/// What a batch of changes costs while queued: its paths and a fixed share for the rest.
fn batch_bytes(changes: &[Change]) -> usize {
    changes
        .iter()
        .map(|c| c.path.len() + c.to.len() + std::mem::size_of::<Change>())
        .sum()
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
