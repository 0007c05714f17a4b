//! The connection to the host server.
//!
//! A [`Client`] performs the handshake, then multiplexes requests over one byte stream: any
//! thread may [`Client::call`] at any time, each request gets a fresh id, and a single reader
//! thread decodes replies (in whatever order the server sends them) and runs the callback
//! registered for each id. Nothing here touches FUSE, so the client can be driven by tests over
//! a `UnixStream::pair()`.
//!
//! Writes: each frame (header + meta, then the raw payload) goes out in one vectored write
//! under the writer mutex, so frames of concurrent callers never interleave.
//!
//! Reads: the reader thread reuses one buffer; a `Read` reply's data is handed to the callback
//! as a slice of that buffer, without a copy.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use ferry_common::{ReadError, Stream, read_frame, write_frame};
use ferry_protocol::{
    Change, Ctx, DecodeError, EncodeError, Errno, Frame, FrameKind, Hello, Notice, Opcode, Refused,
    Reply, ReplyFrame, ReplyKind, Request, RequestFrame, VERSION, Version, Welcome, features,
};
use tracing::{debug, error, info, warn};

/// Receive buffer of the reader thread.
const READ_BUF: usize = 256 * 1024;

/// How long the handshake may take on a socket before the connection attempt is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Handshake parameters.
#[derive(Clone, Debug, Default)]
pub struct ClientConfig {
    /// Shared secret sent in `Hello` (required by TCP listeners).
    pub token: Option<Vec<u8>>,
    /// Free-form description of this client for the server's logs.
    pub client_name: String,
}

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered `Refused`; `reason` is the server's text, verbatim.
    #[error("server refused the connection: {reason}")]
    Refused {
        /// The server's errno (EACCES for a bad token, EPROTO for a version mismatch).
        errno: Errno,
        /// The server's reason.
        reason: String,
    },
    /// The server speaks an incompatible protocol version.
    #[error(
        "protocol version mismatch: server speaks {}.{}, this agent speaks {}.{}",
        .server.major, .server.minor, .client.major, .client.minor
    )]
    Version {
        /// The server's version.
        server: Version,
        /// Ours.
        client: Version,
    },
    /// Reading from or writing to the stream failed.
    #[error("connection I/O error")]
    Io(#[from] io::Error),
    /// The server's answer to `Hello` could not be read whole (the stream failed, ended inside
    /// the frame, or the frame header is malformed).
    #[error("cannot read the server's handshake answer")]
    Read(#[from] ReadError),
    /// The server sent something that does not decode.
    #[error("malformed handshake from server")]
    Decode(#[from] DecodeError),
    /// The `Hello` could not be encoded (e.g. an oversized token).
    #[error("cannot encode hello")]
    Encode(#[from] EncodeError),
}

/// Callback run with the outcome of one request. The reply borrows the receive buffer.
pub type Done = Box<dyn FnOnce(Result<Reply<'_>, Errno>) + Send>;

/// An owned copy of a [`Reply`], returned by [`Client::call_blocking`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedReply {
    /// No body.
    Empty,
    /// A node.
    Entry(ferry_protocol::Entry),
    /// Attributes.
    Attr(ferry_protocol::Attr),
    /// Raw bytes.
    Data(Vec<u8>),
    /// An open handle.
    Opened(ferry_protocol::Opened),
    /// An open handle with the file's first bytes.
    OpenedData(ferry_protocol::Opened, Vec<u8>),
    /// A created and opened node.
    Created(ferry_protocol::Created),
    /// Bytes written or copied.
    Written(u32),
    /// Directory entries.
    Dir(Vec<ferry_protocol::DirEntry>),
    /// Directory entries with nodes.
    DirPlus(Vec<ferry_protocol::DirEntryPlus>),
    /// Filesystem statistics.
    Statfs(ferry_protocol::Statfs),
    /// Size of an xattr value or name list.
    XattrSize(u32),
    /// An offset.
    Offset(i64),
    /// A lock.
    Lock(ferry_protocol::Lock),
}

impl From<Reply<'_>> for OwnedReply {
    fn from(r: Reply<'_>) -> Self {
        match r {
            Reply::Empty => Self::Empty,
            Reply::Entry(v) => Self::Entry(v),
            Reply::Attr(v) => Self::Attr(v),
            Reply::Data(d) => Self::Data(d.to_vec()),
            Reply::Opened(v) => Self::Opened(v),
            Reply::OpenedData(v, d) => Self::OpenedData(v, d.to_vec()),
            Reply::Created(v) => Self::Created(v),
            Reply::Written(v) => Self::Written(v),
            Reply::Dir(v) => Self::Dir(v),
            Reply::DirPlus(v) => Self::DirPlus(v),
            Reply::Statfs(v) => Self::Statfs(v),
            Reply::XattrSize(v) => Self::XattrSize(v),
            Reply::Offset(v) => Self::Offset(v),
            Reply::Lock(v) => Self::Lock(v),
        }
    }
}

impl OwnedReply {
    /// Borrows this reply as a protocol [`Reply`] (e.g. to encode it in a test server).
    pub fn as_reply(&self) -> Reply<'_> {
        match self {
            Self::Empty => Reply::Empty,
            Self::Entry(v) => Reply::Entry(*v),
            Self::Attr(v) => Reply::Attr(*v),
            Self::Data(d) => Reply::Data(d),
            Self::Opened(v) => Reply::Opened(*v),
            Self::OpenedData(v, d) => Reply::OpenedData(*v, d),
            Self::Created(v) => Reply::Created(*v),
            Self::Written(v) => Reply::Written(*v),
            Self::Dir(v) => Reply::Dir(v.clone()),
            Self::DirPlus(v) => Reply::DirPlus(v.clone()),
            Self::Statfs(v) => Reply::Statfs(*v),
            Self::XattrSize(v) => Reply::XattrSize(*v),
            Self::Offset(v) => Reply::Offset(*v),
            Self::Lock(v) => Reply::Lock(*v),
        }
    }
}

struct Pending {
    op: Opcode,
    /// In a mutex only to make `Pending` (and so `Client`) `Sync`; it is never contended.
    done: Mutex<Done>,
}

impl Pending {
    fn new(op: Opcode, done: Done) -> Self {
        Self {
            op,
            done: Mutex::new(done),
        }
    }

    fn finish(self, result: Result<Reply<'_>, Errno>) {
        run_done(
            self.done.into_inner().unwrap_or_else(|e| e.into_inner()),
            result,
        );
    }
}

struct WriterState {
    out: Box<dyn Write + Send>,
    scratch: Vec<u8>,
}

type Closer = Box<dyn FnOnce() + Send>;

/// A connection to the host server. Share it as `Arc<Client>`.
pub struct Client {
    welcome: Welcome,
    writer: Mutex<WriterState>,
    pending: DashMap<u64, Pending>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// Set (under the lock) once every pending callback has been failed.
    closed_done: Mutex<bool>,
    closed_cv: Condvar,
    /// Unblocks the reader thread on `shutdown()` (shuts the socket down), when known.
    closer: Mutex<Option<Closer>>,
    /// Where host changes of each watched export go (see [`Client::watch`]).
    changes: DashMap<u32, Sender<Vec<Change>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.welcome.server)
            .field("pending", &self.pending.len())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

enum SendError {
    Encode(EncodeError),
    Io(io::Error),
}

impl Client {
    /// Performs the handshake (send `Hello` with [`VERSION`] and [`features::ALL`], read
    /// `Welcome` or `Refused`) over any stream split into a reader and a writer, then starts
    /// the reader thread.
    ///
    /// With a generic stream, [`Client::shutdown`] fails pending calls at once but cannot
    /// unblock the reader thread: it ends when the stream does. Prefer
    /// [`Client::connect_unix`] / [`Client::connect_tcp`] for sockets.
    pub fn connect(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        config: &ClientConfig,
    ) -> Result<Arc<Client>, ClientError> {
        Self::connect_with(reader, writer, config, None, None)
    }

    /// Connects over a Unix socket: handshake with a [`HANDSHAKE_TIMEOUT`], and
    /// [`Client::shutdown`] shuts the socket down.
    pub fn connect_unix(
        stream: UnixStream,
        config: &ClientConfig,
    ) -> Result<Arc<Client>, ClientError> {
        Self::connect_socket(stream, config)
    }

    /// Connects over TCP (sets `TCP_NODELAY`), as [`Client::connect_unix`].
    pub fn connect_tcp(
        stream: TcpStream,
        config: &ClientConfig,
    ) -> Result<Arc<Client>, ClientError> {
        stream.set_nodelay(true)?;
        Self::connect_socket(stream, config)
    }

    /// Connects over AF_VSOCK, as [`Client::connect_unix`].
    pub fn connect_vsock(
        stream: vsock::VsockStream,
        config: &ClientConfig,
    ) -> Result<Arc<Client>, ClientError> {
        Self::connect_socket(stream, config)
    }

    fn connect_socket<S: Stream>(
        stream: S,
        config: &ClientConfig,
    ) -> Result<Arc<Client>, ClientError> {
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let reader = stream.try_clone()?;
        let writer = stream.try_clone()?;
        let reset = stream.try_clone()?;
        Self::connect_with(
            Box::new(reader),
            Box::new(writer),
            config,
            Some(Box::new(move || stream.shutdown())),
            Some(Box::new(move || reset.set_read_timeout(None))),
        )
    }

    fn connect_with(
        mut reader: Box<dyn Read + Send>,
        mut writer: Box<dyn Write + Send>,
        config: &ClientConfig,
        closer: Option<Closer>,
        after_handshake: Option<Box<dyn FnOnce() -> io::Result<()>>>,
    ) -> Result<Arc<Client>, ClientError> {
        let hello = Hello {
            version: VERSION,
            features: features::ALL,
            token: config.token.as_deref(),
            client: &config.client_name,
        };
        let mut out = Vec::new();
        hello.encode(&mut out)?;
        writer.write_all(&out)?;
        writer.flush()?;

        let mut buf = Vec::new();
        let len = match read_frame(&mut reader, &mut buf)? {
            Some(len) => len,
            None => {
                return Err(ClientError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection during the handshake",
                )));
            }
        };
        let frame = Frame::parse(&buf[..len])?;
        let welcome = match frame.header.kind {
            FrameKind::Welcome => Welcome::decode(&frame)?,
            FrameKind::Refused => {
                let r = Refused::decode(&frame)?;
                return Err(ClientError::Refused {
                    errno: Errno(r.errno),
                    reason: r.reason,
                });
            }
            other => return Err(DecodeError::UnexpectedKind(other).into()),
        };
        if welcome.version.major != VERSION.major {
            return Err(ClientError::Version {
                server: welcome.version,
                client: VERSION,
            });
        }
        if let Some(f) = after_handshake {
            f()?;
        }
        info!(
            server = %welcome.server,
            version = format_args!("{}.{}", welcome.version.major, welcome.version.minor),
            features = format_args!("{:#x}", welcome.features),
            exports = welcome.exports.len(),
            "connected to host server"
        );

        let client = Arc::new(Client {
            welcome,
            writer: Mutex::new(WriterState {
                out: writer,
                scratch: Vec::with_capacity(256),
            }),
            pending: DashMap::new(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            closed_done: Mutex::new(false),
            closed_cv: Condvar::new(),
            closer: Mutex::new(closer),
            changes: DashMap::new(),
        });
        let c = client.clone();
        std::thread::Builder::new()
            .name("ferry-reader".into())
            .spawn(move || {
                // Replies are small and arrive in bursts: one read syscall picks up several.
                c.reader_loop(
                    Box::new(io::BufReader::with_capacity(READ_BUF, reader)),
                    buf,
                )
            })?;
        Ok(client)
    }

    /// The server's handshake answer: negotiated features and the exports.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends one request without waiting. `done` runs on the reader thread with the decoded
    /// reply, or with `Err(errno)`: the server's error, ENOTCONN when the connection is gone
    /// (then it may run on the calling thread or on the thread closing the connection), E2BIG
    /// or EIO when the request cannot be encoded. `done` runs exactly once and must not block.
    /// Many requests can be in flight; replies come in any order.
    pub fn call(&self, export: u32, ctx: Ctx, body: &Request<'_>, payload: &[u8], done: Done) {
        let op = body.opcode();
        if op.reply_kind() == ReplyKind::None {
            // One-way request: there is no reply to wait for.
            self.send_oneway(export, ctx, body);
            run_done(done, Ok(Reply::Empty));
            return;
        }
        if self.is_closed() {
            run_done(done, Err(Errno::ENOTCONN));
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pending.insert(id, Pending::new(op, done));
        // close() sets `closed` before draining: either the drain saw our entry, or we see
        // the flag here and fail it ourselves.
        if self.is_closed() {
            self.fail(id, Errno::ENOTCONN);
            return;
        }
        match self.send_frame(id, export, ctx, body, payload) {
            Ok(()) => {}
            Err(SendError::Encode(e)) => {
                error!(?op, "cannot encode request: {e}");
                let errno = match e {
                    EncodeError::TooLarge(_) => Errno::E2BIG,
                    _ => Errno::EIO,
                };
                self.fail(id, errno);
            }
            Err(SendError::Io(e)) => {
                self.close_with(&format!("write to server failed: {e}"), true);
            }
        }
    }

    /// One-way send (`Forget`). Errors are logged; a closed connection drops it silently.
    pub fn send_oneway(&self, export: u32, ctx: Ctx, body: &Request<'_>) {
        if self.is_closed() {
            return;
        }
        match self.send_frame(0, export, ctx, body, &[]) {
            Ok(()) => {}
            Err(SendError::Encode(e)) => error!(op = ?body.opcode(), "cannot encode request: {e}"),
            Err(SendError::Io(e)) => {
                self.close_with(&format!("write to server failed: {e}"), true);
            }
        }
    }

    /// Blocking convenience for tests and setup: [`Client::call`] and wait for the outcome.
    pub fn call_blocking(
        &self,
        export: u32,
        ctx: Ctx,
        body: &Request<'_>,
        payload: &[u8],
    ) -> Result<OwnedReply, Errno> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.call(
            export,
            ctx,
            body,
            payload,
            Box::new(move |r| {
                let _ = tx.send(r.map(OwnedReply::from));
            }),
        );
        rx.recv().unwrap_or(Err(Errno::ENOTCONN))
    }

    /// Asks the server for host changes of `export` and returns where they arrive, oldest
    /// first. Fails when the server does not send change events.
    pub fn watch(&self, export: u32) -> Result<Receiver<Vec<Change>>, Errno> {
        if self.welcome.features & ferry_protocol::features::CHANGE_EVENTS == 0 {
            return Err(Errno::ENOSYS);
        }
        let (tx, rx) = channel();
        self.changes.insert(export, tx);
        let r = self.call_blocking(
            export,
            Ctx::default(),
            &Request::Watch(ferry_protocol::Watch { on: true }),
            &[],
        );
        match r {
            Ok(_) => Ok(rx),
            Err(e) => {
                self.changes.remove(&export);
                Err(e)
            }
        }
    }

    /// Closes the connection; pending callbacks get ENOTCONN.
    pub fn shutdown(&self) {
        self.close_with("shutdown requested", false);
    }

    /// Whether the connection is closed (or closing).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Blocks until the connection is closed (server went away or [`Client::shutdown`]).
    pub fn wait_closed(&self) {
        let mut done = self.closed_done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            done = self.closed_cv.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// As [`Client::wait_closed`] with a time limit; returns whether the connection is closed.
    pub fn wait_closed_timeout(&self, timeout: Duration) -> bool {
        let done = self.closed_done.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = self
            .closed_cv
            .wait_timeout_while(done, timeout, |d| !*d)
            .unwrap_or_else(|e| e.into_inner());
        *done
    }

    /// Number of requests waiting for a reply.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn fail(&self, id: u64, errno: Errno) {
        if let Some((_, p)) = self.pending.remove(&id) {
            p.finish(Err(errno));
        }
    }

    fn send_frame(
        &self,
        id: u64,
        export: u32,
        ctx: Ctx,
        body: &Request<'_>,
        payload: &[u8],
    ) -> Result<(), SendError> {
        let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        RequestFrame {
            id,
            export,
            ctx,
            body: body.clone(),
            payload,
        }
        .encode(&mut st.scratch)
        .map_err(SendError::Encode)?;
        write_frame(&mut st.out, &st.scratch, payload).map_err(SendError::Io)?;
        st.out.flush().map_err(SendError::Io)
    }

    /// Marks the connection closed, shuts the stream down when possible, fails every pending
    /// call with ENOTCONN and wakes `wait_closed`. Idempotent.
    fn close_with(&self, reason: &str, is_error: bool) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if is_error {
            error!("closing the connection to the server: {reason}");
        } else {
            info!("closing the connection to the server: {reason}");
        }
        let closer = self.closer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = closer {
            c();
        }
        let ids: Vec<u64> = self.pending.iter().map(|e| *e.key()).collect();
        if !ids.is_empty() {
            debug!(count = ids.len(), "failing pending requests with ENOTCONN");
        }
        for id in ids {
            self.fail(id, Errno::ENOTCONN);
        }
        // Ends the change streams, and with them the replay threads.
        self.changes.clear();
        let mut done = self.closed_done.lock().unwrap_or_else(|e| e.into_inner());
        *done = true;
        self.closed_cv.notify_all();
    }

    fn reader_loop(self: Arc<Self>, mut reader: Box<dyn Read + Send>, mut buf: Vec<u8>) {
        let (reason, is_error) = loop {
            let len = match read_frame(&mut reader, &mut buf) {
                Ok(Some(len)) => len,
                Ok(None) => break ("the server closed the connection".to_string(), false),
                Err(e) => break (format!("read from server failed: {e}"), true),
            };
            if self.is_closed() {
                break (String::new(), false);
            }
            if let Err(reason) = self.dispatch(&buf[..len]) {
                break (reason, true);
            }
        };
        if self.is_closed() {
            debug!("reader thread exits after shutdown");
        } else if is_error {
            self.close_with(&reason, true);
        } else {
            warn!("{reason}");
            self.close_with(&reason, false);
        }
    }

    /// Handles one frame; `Err` means the connection must be closed.
    fn dispatch(&self, bytes: &[u8]) -> Result<(), String> {
        let frame = Frame::parse(bytes).map_err(|e| format!("malformed frame: {e}"))?;
        match frame.header.kind {
            FrameKind::Reply => {
                let id = frame.header.id;
                let reply = match ReplyFrame::decode(&frame) {
                    Ok(r) => r,
                    Err(e) => {
                        self.fail(id, Errno::EIO);
                        return Err(format!("malformed reply to request {id}: {e}"));
                    }
                };
                let Some((_, pending)) = self.pending.remove(&id) else {
                    return Err(format!(
                        "reply ({:?}) for unknown request id {id}",
                        reply.op
                    ));
                };
                if pending.op != reply.op {
                    let expected = pending.op;
                    pending.finish(Err(Errno::EIO));
                    return Err(format!(
                        "reply to request {id} is for {:?}, the request was {expected:?}",
                        reply.op
                    ));
                }
                pending.finish(reply.result);
                Ok(())
            }
            FrameKind::Notify => match Notice::decode(&frame) {
                Ok(Some(Notice::Shutdown { reason })) => {
                    warn!("the server is shutting down: {reason}");
                    Ok(())
                }
                Ok(Some(Notice::Changes { export, changes })) => {
                    match self.changes.get(&export) {
                        Some(tx) => {
                            let _ = tx.send(changes);
                        }
                        None => debug!(export, "changes for an export nobody watches"),
                    }
                    Ok(())
                }
                Ok(None) => {
                    debug!(code = frame.header.op, "ignoring unknown notice");
                    Ok(())
                }
                Err(e) => Err(format!("malformed notice: {e}")),
            },
            other => Err(format!("unexpected {other:?} frame from the server")),
        }
    }
}

fn run_done(done: Done, result: Result<Reply<'_>, Errno>) {
    if std::panic::catch_unwind(AssertUnwindSafe(move || done(result))).is_err() {
        error!("a reply callback panicked");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ferry_protocol::{ExportInfo, Getattr, Read as ReadReq, Readlink};
    use std::sync::mpsc;

    pub(crate) fn welcome(features: u64) -> Welcome {
        Welcome {
            version: VERSION,
            features,
            exports: vec![
                ExportInfo {
                    id: 7,
                    name: "data".into(),
                    read_only: false,
                    permissions: ferry_protocol::Permissions::Guest,
                    wants_groups: false,
                },
                ExportInfo {
                    id: 9,
                    name: "ro".into(),
                    read_only: true,
                    permissions: ferry_protocol::Permissions::Guest,
                    wants_groups: false,
                },
            ],
            server: "fake".into(),
        }
    }

    /// Reads one whole frame from a test stream.
    pub(crate) fn read_one(s: &mut UnixStream) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let len = read_frame(s, &mut buf).ok()??;
        buf.truncate(len);
        Some(buf)
    }

    /// Server side of the handshake: reads Hello, answers Welcome.
    pub(crate) fn accept(s: &mut UnixStream, w: &Welcome) {
        let hello = read_one(s).expect("hello");
        let f = Frame::parse(&hello).unwrap();
        let h = Hello::decode(&f).unwrap();
        assert_eq!(h.version, VERSION);
        assert_eq!(h.features, features::ALL);
        let mut out = Vec::new();
        w.encode(&mut out).unwrap();
        s.write_all(&out).unwrap();
    }

    pub(crate) fn send_reply(s: &mut UnixStream, id: u64, op: Opcode, r: Result<Reply<'_>, Errno>) {
        let rf = ReplyFrame { id, op, result: r };
        let mut out = Vec::new();
        rf.encode(&mut out).unwrap();
        s.write_all(&out).unwrap();
        s.write_all(rf.payload()).unwrap();
    }

    fn cfg() -> ClientConfig {
        ClientConfig {
            token: Some(b"secret".to_vec()),
            client_name: "test".into(),
        }
    }

    fn getattr(ino: u64) -> Request<'static> {
        Request::Getattr(Getattr { ino, fh: None })
    }

    #[test]
    fn out_of_order_replies_reach_their_callbacks() {
        let (client_end, mut server) = UnixStream::pair().unwrap();
        let srv = std::thread::spawn(move || {
            accept(&mut server, &welcome(0));
            let mut reqs = Vec::new();
            for _ in 0..3 {
                let bytes = read_one(&mut server).unwrap();
                let f = Frame::parse(&bytes).unwrap();
                let r = RequestFrame::decode(&f).unwrap();
                assert_eq!(r.export, 7);
                assert_eq!(r.ctx.uid, 1000);
                let Request::Getattr(g) = r.body else {
                    panic!("unexpected {:?}", r.body)
                };
                reqs.push((r.id, g.ino));
            }
            for (id, ino) in reqs.into_iter().rev() {
                let attr = ferry_protocol::Attr {
                    ino,
                    size: ino * 10,
                    ..Default::default()
                };
                send_reply(&mut server, id, Opcode::Getattr, Ok(Reply::Attr(attr)));
            }
            server
        });
        let client = Client::connect_unix(client_end, &cfg()).unwrap();
        assert_eq!(client.welcome().exports.len(), 2);
        let (tx, rx) = mpsc::channel();
        let ctx = Ctx {
            uid: 1000,
            gid: 1000,
            pid: 42,
            groups: vec![],
        };
        for ino in [1u64, 2, 3] {
            let tx = tx.clone();
            client.call(
                7,
                ctx.clone(),
                &getattr(ino),
                &[],
                Box::new(move |r| {
                    let Ok(Reply::Attr(a)) = r else {
                        panic!("unexpected {r:?}")
                    };
                    tx.send((ino, a.ino, a.size)).unwrap();
                }),
            );
        }
        let mut got: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        // Replies came in reverse order.
        assert_eq!(got[0].0, 3);
        got.sort();
        assert_eq!(got, vec![(1, 1, 10), (2, 2, 20), (3, 3, 30)]);
        let _server = srv.join().unwrap();
        client.shutdown();
        client.wait_closed();
        assert_eq!(
            client.call_blocking(7, ctx, &getattr(1), &[]),
            Err(Errno::ENOTCONN)
        );
    }

    #[test]
    fn refused_handshake_is_typed() {
        let (client_end, mut server) = UnixStream::pair().unwrap();
        let srv = std::thread::spawn(move || {
            read_one(&mut server).unwrap();
            let mut out = Vec::new();
            Refused {
                errno: Errno::EACCES.0,
                reason: "bad token, go away".into(),
            }
            .encode(&mut out)
            .unwrap();
            server.write_all(&out).unwrap();
            server
        });
        let err = Client::connect_unix(client_end, &cfg()).unwrap_err();
        match &err {
            ClientError::Refused { errno, reason } => {
                assert_eq!(*errno, Errno::EACCES);
                assert_eq!(reason, "bad token, go away");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("bad token, go away"));
        srv.join().unwrap();
    }

    #[test]
    fn version_mismatch_is_typed() {
        let (client_end, mut server) = UnixStream::pair().unwrap();
        let srv = std::thread::spawn(move || {
            let mut w = welcome(0);
            w.version.major += 1;
            accept(&mut server, &w);
            server
        });
        let err = Client::connect_unix(client_end, &cfg()).unwrap_err();
        assert!(matches!(err, ClientError::Version { .. }), "{err:?}");
        srv.join().unwrap();
    }

    #[test]
    fn garbage_closes_and_fails_pending() {
        let (client_end, mut server) = UnixStream::pair().unwrap();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let srv = std::thread::spawn(move || {
            accept(&mut server, &welcome(0));
            // Wait until both requests are in flight, then send garbage.
            read_one(&mut server).unwrap();
            read_one(&mut server).unwrap();
            go_rx.recv().unwrap();
            server.write_all(&[0xffu8; 24]).unwrap();
            server
        });
        let client = Client::connect_unix(client_end, &cfg()).unwrap();
        let (tx, rx) = mpsc::channel();
        for ino in [1u64, 2] {
            let tx = tx.clone();
            client.call(
                7,
                Ctx::default(),
                &getattr(ino),
                &[],
                Box::new(move |r| tx.send(r.map(OwnedReply::from)).unwrap()),
            );
        }
        go_tx.send(()).unwrap();
        for _ in 0..2 {
            assert_eq!(
                rx.recv_timeout(Duration::from_secs(5)).unwrap(),
                Err(Errno::ENOTCONN)
            );
        }
        assert!(client.wait_closed_timeout(Duration::from_secs(5)));
        assert!(client.is_closed());
        let _ = srv.join().unwrap();
    }

    #[test]
    fn unknown_id_closes_connection() {
        let (client_end, mut server) = UnixStream::pair().unwrap();
        let srv = std::thread::spawn(move || {
            accept(&mut server, &welcome(0));
            send_reply(&mut server, 999, Opcode::Getattr, Err(Errno::ENOENT));
            server
        });
        let client = Client::connect_unix(client_end, &cfg()).unwrap();
        assert!(client.wait_closed_timeout(Duration::from_secs(5)));
        let _ = srv.join().unwrap();
    }

    #[test]
    fn read_payload_arrives_intact_and_errors_pass_through() {
        let (client_end, mut server) = UnixStream::pair().unwrap();
        let data: Vec<u8> = (0..ferry_protocol::MAX_DATA)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let expect = data.clone();
        let srv = std::thread::spawn(move || {
            accept(&mut server, &welcome(0));
            // A notice first: it must be logged and ignored.
            let mut out = Vec::new();
            Notice::Shutdown {
                reason: "soon".into(),
            }
            .encode(&mut out)
            .unwrap();
            server.write_all(&out).unwrap();
            for _ in 0..3 {
                let bytes = read_one(&mut server).unwrap();
                let f = Frame::parse(&bytes).unwrap();
                let r = RequestFrame::decode(&f).unwrap();
                match r.body {
                    Request::Read(rd) => {
                        assert_eq!(rd.size as usize, data.len());
                        send_reply(&mut server, r.id, Opcode::Read, Ok(Reply::Data(&data)));
                    }
                    Request::Write(_) => {
                        let n = r.payload.len() as u32;
                        assert!(r.payload.iter().all(|&b| b == 0xab));
                        send_reply(&mut server, r.id, Opcode::Write, Ok(Reply::Written(n)));
                    }
                    Request::Readlink(_) => {
                        send_reply(&mut server, r.id, Opcode::Readlink, Err(Errno::EINVAL));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            server
        });
        let client = Client::connect_unix(client_end, &cfg()).unwrap();
        let ctx = Ctx::default();
        let r = client.call_blocking(
            7,
            ctx.clone(),
            &Request::Read(ReadReq {
                ino: 2,
                fh: 1,
                offset: 0,
                size: expect.len() as u32,
            }),
            &[],
        );
        assert_eq!(r, Ok(OwnedReply::Data(expect)));
        let payload = vec![0xabu8; 300_000];
        let r = client.call_blocking(
            7,
            ctx.clone(),
            &Request::Write(ferry_protocol::Write {
                ino: 2,
                fh: 1,
                offset: 0,
                write_flags: 0,
                flags: 0,
            }),
            &payload,
        );
        assert_eq!(r, Ok(OwnedReply::Written(300_000)));
        let r = client.call_blocking(7, ctx, &Request::Readlink(Readlink { ino: 3 }), &[]);
        assert_eq!(r, Err(Errno::EINVAL));
        let _server = srv.join().unwrap();
        assert!(!client.is_closed());
        client.shutdown();
        client.wait_closed();
    }

    #[test]
    fn server_eof_closes_client() {
        let (client_end, mut server) = UnixStream::pair().unwrap();
        let srv = std::thread::spawn(move || {
            accept(&mut server, &welcome(0));
            read_one(&mut server).unwrap();
            drop(server);
        });
        let client = Client::connect_unix(client_end, &cfg()).unwrap();
        let r = client.call_blocking(7, Ctx::default(), &getattr(1), &[]);
        assert_eq!(r, Err(Errno::ENOTCONN));
        client.wait_closed();
        srv.join().unwrap();
    }
}
