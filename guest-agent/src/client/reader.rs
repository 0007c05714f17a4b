//! The reader thread: it reads every frame the server sends, matches replies to the pending
//! requests by id and runs their callbacks, hands host changes to their watchers, and on any
//! failure closes the connection, failing every pending request with ENOTCONN.

use std::io::{self, Read};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ferry_common::read_frame;
use ferry_protocol::{Errno, Frame, FrameKind, Notice, Opcode, Reply, ReplyFrame};
use tracing::{debug, error, info, warn};

use super::book::Note;
use super::{Client, Done};

/// Receive buffer of the reader thread.
const READ_BUF: usize = 256 * 1024;

/// A request waiting for its reply.
pub(super) struct Pending {
    op: Opcode,
    /// The export the request is for (named in the log when the server has stopped serving it).
    pub(super) export: u32,
    /// In a mutex only to make `Pending` (and so `Client`) `Sync`; it is never contended.
    done: Mutex<Done>,
    /// When it was sent (its latency in `crate::stats`).
    sent: std::time::Instant,
    /// With reconnection (see `resume`): what the book needs from the reply, the request as
    /// encoded with the guest's ids (to send again), the connection it went out on (0: not
    /// sent yet), and whether it is the resume's own (its ids are the server's).
    pub(super) note: Mutex<Note>,
    pub(super) saved: Option<super::resume::Saved>,
    pub(super) sent_on: std::sync::atomic::AtomicU64,
    pub(super) raw: bool,
}

impl Pending {
    pub(super) fn new(op: Opcode, export: u32, done: Done) -> Self {
        Self {
            op,
            export,
            done: Mutex::new(done),
            sent: std::time::Instant::now(),
            note: Mutex::default(),
            saved: None,
            sent_on: 0.into(),
            raw: false,
        }
    }

    pub(super) fn finish(self, result: Result<Reply<'_>, Errno>) {
        run_done(
            self.done.into_inner().unwrap_or_else(|e| e.into_inner()),
            result,
        );
    }
}

impl Client {
    /// Starts the reader thread on `reader`, with `buf` (the handshake's) as its buffer.
    pub(super) fn start_reader(
        self: &Arc<Self>,
        reader: Box<dyn Read + Send>,
        buf: Vec<u8>,
        generation: u64,
    ) -> io::Result<()> {
        let c = Arc::clone(self);
        std::thread::Builder::new()
            .name("ferry-reader".into())
            .spawn(move || {
                // Replies are small and arrive in bursts: one read syscall picks up several.
                c.reader_loop(
                    Box::new(io::BufReader::with_capacity(READ_BUF, reader)),
                    buf,
                    generation,
                )
            })?;
        Ok(())
    }

    pub(super) fn fail(&self, id: u64, errno: Errno) {
        if let Some((_, p)) = self.pending.remove(&id) {
            p.finish(Err(errno));
        }
    }

    /// Marks the connection closed, shuts the stream down when possible, fails every pending
    /// call with ENOTCONN and wakes `wait_closed`. Idempotent.
    pub(super) fn close_with(&self, reason: &str, is_error: bool) {
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

    fn reader_loop(
        self: Arc<Self>,
        mut reader: Box<dyn Read + Send>,
        mut buf: Vec<u8>,
        generation: u64,
    ) {
        let (reason, is_error) = loop {
            let len = match read_frame(&mut reader, &mut buf) {
                Ok(Some(len)) => len,
                Ok(None) => break ("the server closed the connection".to_string(), false),
                Err(e) => break (format!("read from server failed: {e}"), true),
            };
            if self.is_closed() || self.is_stale_reader(generation) {
                break (String::new(), false);
            }
            if let Err(reason) = self.dispatch(&buf[..len]) {
                break (reason, true);
            }
        };
        if self.is_closed() || self.is_stale_reader(generation) {
            debug!("reader thread exits after shutdown");
        } else if self.resume.get().is_some() {
            self.link_lost(generation, &reason);
        } else if is_error {
            self.close_with(&reason, true);
        } else {
            warn!("{reason}");
            self.close_with(&reason, false);
        }
    }

    /// The server answered ESHUTDOWN for `export`: a reload removed or replaced it. Said once
    /// per export, since every later request on its mount gets the same answer.
    fn export_gone(&self, export: u32) {
        if self.gone.insert(export) {
            let name = self
                .welcome
                .exports
                .iter()
                .find(|e| e.id == export)
                .map_or("?", |e| e.name.as_str());
            error!(
                export = name,
                "the server no longer serves this export (removed or changed by a reload); \
                 every request on its mount fails with ESHUTDOWN until it is mounted again"
            );
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
                if reply.result == Err(Errno::ESHUTDOWN) {
                    self.export_gone(pending.export);
                }
                crate::stats::agent().request(
                    pending.op,
                    pending.sent.elapsed(),
                    reply.result.is_ok(),
                );
                let mut result = reply.result;
                self.booked(&pending, &mut result);
                pending.finish(result);
                Ok(())
            }
            FrameKind::Notify => match Notice::decode(&frame) {
                Ok(Some(Notice::Shutdown { reason })) => {
                    warn!("the server is shutting down: {reason}");
                    Ok(())
                }
                Ok(Some(Notice::Changes {
                    export,
                    mut changes,
                    age_us,
                })) => {
                    if let Some(r) = self.resume.get() {
                        r.lock_book().on_changes(export, &mut changes);
                    }
                    match self.changes.get(&export) {
                        Some(tx) => {
                            let stats = crate::stats::agent();
                            stats.batch_arrived(export, changes.len(), age_us);
                            if tx.send(changes).is_err() {
                                stats.batch_dropped(export);
                            }
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

/// Runs a callback; a panic in it is logged, not spread to the reader thread.
pub(super) fn run_done(done: Done, result: Result<Reply<'_>, Errno>) {
    if std::panic::catch_unwind(AssertUnwindSafe(move || done(result))).is_err() {
        error!("a reply callback panicked");
    }
}
