//! One guest connection, generic over the byte stream (Unix socket, TCP, vsock, or an in-process
//! socket pair for `ferry share`).
//!
//! Primer on the protocol this loop implements (see `ferry_protocol` for the bytes):
//! 1. The guest sends `Hello` (version, features, optional token). The server answers `Welcome`
//!    (negotiated features and the export list) or `Refused` (reason) and closes.
//! 2. The guest sends `Request` frames, each with an id of its choosing and the export id in the
//!    header. The server runs each on the blocking pool as soon as it arrives, so a slow request
//!    (a 1 MiB read, an fsync, a blocking lock) never holds up the others, and answers with a
//!    `Reply` frame carrying the same id, in completion order. `Forget` has no reply.
//! 3. Any frame that does not decode ends the connection with a logged reason; other
//!    connections are unaffected. Dropping the connection drops its export sessions, which closes
//!    every descriptor it held and so releases its locks.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{
    Errno, Frame, FrameHeader, FrameKind, HEADER_LEN, Hello, Opcode, Refused, Reply, ReplyFrame,
    RequestFrame, VERSION, Welcome, features,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

use crate::export::{Export, ExportSession, Response};

/// Requests one connection may have in flight before the server stops reading from it.
const MAX_IN_FLIGHT: usize = 256;

/// How long a client has to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A frame ready to send: header and meta, then the raw payload.
struct Outgoing {
    head: Vec<u8>,
    payload: Vec<u8>,
}

/// Serves one connection until the peer closes it or misbehaves.
pub async fn serve_connection<S>(
    stream: S,
    state: Arc<ServerState>,
    peer: String,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let mut wr = BufWriter::with_capacity(256 * 1024, wr);

    let hello_buf = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut rd))
        .await
        .map_err(|_| ConnError::Protocol("no Hello within 30 s".into()))??;
    let frame = Frame::parse(&hello_buf)?;
    let hello = Hello::decode(&frame)?;
    if let Err(reason) = check_hello(&hello, &state) {
        warn!(%peer, client = hello.client, "refusing connection: {reason}");
        let errno = if hello.version.major != VERSION.major {
            Errno::EPROTO
        } else {
            Errno::EACCES
        };
        let mut out = Vec::new();
        Refused {
            errno: errno.0,
            reason: reason.clone(),
        }
        .encode(&mut out)
        .map_err(|e| ConnError::Protocol(e.to_string()))?;
        wr.write_all(&out).await?;
        wr.flush().await?;
        return Err(ConnError::Refused(reason));
    }
    let welcome = Welcome {
        version: VERSION,
        features: hello.features & features::ALL & !features::CHANGE_EVENTS,
        exports: state
            .exports
            .iter()
            .enumerate()
            .map(|(i, e)| ferry_protocol::ExportInfo {
                id: i as u32,
                name: e.name().to_string(),
                read_only: e.read_only(),
            })
            .collect(),
        server: format!("ferry-host {}", env!("CARGO_PKG_VERSION")),
    };
    info!(%peer, client = hello.client, "client connected");
    let mut out = Vec::new();
    welcome
        .encode(&mut out)
        .map_err(|e| ConnError::Protocol(e.to_string()))?;
    wr.write_all(&out).await?;
    wr.flush().await?;
    drop(hello_buf);

    let sessions: Arc<Vec<Arc<ExportSession>>> = Arc::new(
        state
            .exports
            .iter()
            .map(|e| Arc::new(ExportSession::new(e.clone())))
            .collect(),
    );

    let (tx, rx) = mpsc::channel::<Outgoing>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_loop(wr, rx));
    let result = read_loop(&mut rd, &sessions, tx).await;
    // The writer ends once every in-flight request has dropped its sender.
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, "writer ended: {e}"),
        Err(e) => warn!(%peer, "writer task failed: {e}"),
    }
    match &result {
        Ok(()) => info!(%peer, "client disconnected"),
        Err(e) => warn!(%peer, "closing connection: {e}"),
    }
    result
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
                return Err("this listener requires a token (--token-file or FERRY_TOKEN)".into());
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

/// Reads one whole frame (header included) into a fresh buffer, validating the header first so
/// that a hostile length never causes a large allocation.
async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> Result<Vec<u8>, ConnError> {
    let mut head = [0u8; HEADER_LEN];
    rd.read_exact(&mut head).await?;
    let header = FrameHeader::parse(&head)?;
    let mut buf = vec![0u8; header.len as usize];
    buf[..HEADER_LEN].copy_from_slice(&head);
    rd.read_exact(&mut buf[HEADER_LEN..]).await?;
    Ok(buf)
}

async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut R,
    sessions: &Arc<Vec<Arc<ExportSession>>>,
    tx: mpsc::Sender<Outgoing>,
) -> Result<(), ConnError> {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let buf = match read_frame(rd).await {
            Ok(b) => b,
            Err(ConnError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        // Validate before handing off, so that a malformed frame closes the connection here.
        let (id, export, op) = {
            let frame = Frame::parse(&buf)?;
            if frame.header.kind != FrameKind::Request {
                return Err(ConnError::Protocol(format!(
                    "unexpected {:?} frame after the handshake",
                    frame.header.kind
                )));
            }
            let req = RequestFrame::decode(&frame)?;
            (req.id, req.export, req.body.opcode())
        };
        let Some(session) = sessions.get(export as usize).cloned() else {
            if op != Opcode::Forget {
                send_reply(&tx, id, op, Err(Errno::ENODEV)).await;
            }
            continue;
        };
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let out = handle(&session, &buf);
            if let Some(out) = out {
                // A closed channel means the connection is going away; nothing to do.
                let _ = tx.blocking_send(out);
            }
        });
    }
}

/// Runs one request on the calling (blocking) thread and encodes its reply.
fn handle(session: &ExportSession, buf: &[u8]) -> Option<Outgoing> {
    // The reader already decoded this frame once; decoding again here keeps the buffer owned by
    // this task instead of sharing a borrow across threads.
    let frame = Frame::parse(buf).ok()?;
    let req = RequestFrame::decode(&frame).ok()?;
    let op = req.body.opcode();
    match session.dispatch(&req.ctx, &req.body, req.payload) {
        Response::None => None,
        Response::Reply(r) => encode_reply(req.id, op, Ok(r)),
        Response::Error(e) => encode_reply(req.id, op, Err(e)),
        Response::Data(payload) => {
            let mut head = Vec::with_capacity(HEADER_LEN + 8);
            let frame = ReplyFrame {
                id: req.id,
                op,
                result: Ok(Reply::Data(&payload)),
            };
            match frame.encode(&mut head) {
                Ok(()) => Some(Outgoing { head, payload }),
                Err(e) => {
                    warn!(?op, "cannot encode reply: {e}");
                    encode_reply(req.id, op, Err(Errno::EIO))
                }
            }
        }
    }
}

/// Encodes a reply that carries no payload.
fn encode_reply(id: u64, op: Opcode, result: Result<Reply<'_>, Errno>) -> Option<Outgoing> {
    let mut head = Vec::with_capacity(128);
    if let Err(e) = (ReplyFrame { id, op, result }).encode(&mut head) {
        warn!(?op, "cannot encode reply: {e}");
        (ReplyFrame {
            id,
            op,
            result: Err(Errno::EIO),
        })
        .encode(&mut head)
        .ok()?;
    }
    Some(Outgoing {
        head,
        payload: Vec::new(),
    })
}

async fn send_reply(tx: &mpsc::Sender<Outgoing>, id: u64, op: Opcode, r: Result<Reply<'_>, Errno>) {
    if let Some(out) = encode_reply(id, op, r) {
        // A closed channel means the connection is going away; nothing to do.
        let _ = tx.send(out).await;
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: BufWriter<W>,
    mut rx: mpsc::Receiver<Outgoing>,
) -> std::io::Result<()> {
    while let Some(out) = rx.recv().await {
        wr.write_all(&out.head).await?;
        wr.write_all(&out.payload).await?;
        // Batch whatever else is already queued before paying for a flush.
        while let Ok(out) = rx.try_recv() {
            wr.write_all(&out.head).await?;
            wr.write_all(&out.payload).await?;
        }
        wr.flush().await?;
    }
    wr.flush().await?;
    wr.shutdown().await.ok();
    Ok(())
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
