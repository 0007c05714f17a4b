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
//!
//! - `connect`: the handshake and the socket constructors.
//! - `reader`: the reader thread, the pending-request table and reply dispatch.
//! - `resume`: reconnecting to a restarted server and resuming on the new connection
//!   ([`Client::enable_reconnect`]), with `book`: what the agent remembers to do so.

mod book;
mod connect;
mod reader;
mod resume;
#[cfg(test)]
pub(crate) mod tests;

pub use connect::{HANDSHAKE_TIMEOUT, Link};
pub use resume::Dialer;

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use ferry_common::{ReadError, write_frame};
use ferry_protocol::{
    Change, Ctx, DecodeError, EncodeError, Errno, Reply, ReplyKind, Request, RequestFrame, Version,
    Welcome,
};
use tracing::error;

use reader::{Pending, run_done};

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

struct WriterState {
    out: Box<dyn Write + Send>,
    scratch: Vec<u8>,
    /// Which connection `out` is (bumped by each reconnection).
    generation: u64,
    /// Whether requests may be sent (always `Up` without reconnection).
    state: resume::LinkState,
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
    /// Exports the server has answered ESHUTDOWN for (logged once each).
    gone: dashmap::DashSet<u32>,
    /// Set by [`Client::enable_reconnect`]: how to reconnect, and the book to resume with.
    resume: std::sync::OnceLock<resume::Resume>,
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
        if let Some(r) = self.resume.get() {
            self.call_resumable(r, export, ctx, body, payload, done);
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pending.insert(id, Pending::new(op, export, done));
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
        if let Some(r) = self.resume.get() {
            self.oneway_resumable(r, export, ctx, body);
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
}
