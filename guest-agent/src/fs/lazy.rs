//! Read-only opens the agent answers itself, opening the host file only when a request needs
//! it. In `cached` mode the pages of a file the guest has read stay in its page cache across
//! opens, so opening it again to read it costs no round trip at all.
//!
//! Used only where nothing is lost by answering the open here: `cached` mode with change
//! events (the kept pages are coherent), permissions checked by the guest kernel (it already
//! refused an open the caller may not make; with host-checked permissions the host's answer
//! to the open is the check, so those opens still go to the host), and read-only opens
//! without `O_TRUNC` (nothing to do on the host at open time). The host open is made, with
//! the opener's credentials, by the first request that needs a host handle: a read the page
//! cache misses, a lock, a FLUSH of a locked file, fsync, lseek, copy_file_range. A read at
//! offset 0 that fits [`PREFETCH`] is answered with the open itself (the bytes come inline),
//! so a cold open-read-close costs what it did before: one open, now made by the read.
//!
//! Handles made here are numbered from [`LAZY`]; the host numbers its own from 1. Requests
//! that wait for a host open are continued on the `ferry-lazy-open` thread, never on the
//! client's reader thread (which must keep reading replies while a continuation sends).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use ferry_protocol::{self as proto, Ctx, Errno, Reply, Request as Req};
use fuser::{FileHandle, ReplyData, Request};

use super::cache::Prefetched;
use super::caller::ctx;
use super::reply::reply_with;
use super::{FerryFs, PREFETCH};
use crate::client::Client;
use crate::replay::REPLAY_FH_BASE;

/// The first handle number the agent makes: above any the host hands out (it counts from
/// 1), below the replay thread's own ([`REPLAY_FH_BASE`]).
pub(super) const LAZY: u64 = 1 << 61;

/// Whether `fh` is a handle the agent made (see [`LAZY`]).
pub(super) fn is_lazy(fh: u64) -> bool {
    (LAZY..REPLAY_FH_BASE).contains(&fh)
}

/// What waits for the host handle.
pub(super) type Then = Box<dyn FnOnce(Result<u64, Errno>) + Send>;
/// What the first read does with the bytes the open brought inline.
pub(super) type First = Box<dyn for<'a> FnOnce(Result<&'a [u8], Errno>) + Send>;
pub(super) type Job = Box<dyn FnOnce() + Send>;

enum State {
    Closed,
    Opening(Vec<Then>),
    Open(u64),
    Failed(Errno),
}

struct Handle {
    ino: u64,
    flags: i32,
    ctx: Ctx,
    state: State,
    /// The kernel released the handle while its host open was on the way.
    released: bool,
}

/// The handles of read-only opens answered by the agent.
#[derive(Default)]
pub(super) struct LazyOpens {
    next: AtomicU64,
    handles: Mutex<HashMap<u64, Handle>>,
    jobs: OnceLock<Mutex<mpsc::Sender<Job>>>,
}

impl std::fmt::Debug for LazyOpens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyOpens").finish_non_exhaustive()
    }
}

/// Where a host open's request goes.
pub(super) struct Host<'a> {
    pub client: &'a Arc<Client>,
    pub export: u32,
}

impl LazyOpens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new handle for a read-only open of `ino` with `flags` by `ctx`; no host request.
    pub(super) fn open(&self, ino: u64, flags: i32, ctx: Ctx) -> u64 {
        let fh = LAZY + self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            fh,
            Handle {
                ino,
                flags,
                ctx,
                state: State::Closed,
                released: false,
            },
        );
        fh
    }

    /// Opens the host file of `fh` with `prefetch` bytes inline if nothing has opened it yet,
    /// handing the bytes to `first`; false (and `first` untouched, not called) otherwise.
    pub(super) fn open_for_read(
        self: &Arc<Self>,
        host: Host<'_>,
        fh: u64,
        prefetch: u32,
        first: &mut Option<First>,
    ) -> bool {
        let mut m = self.lock();
        let Some(h) = m.get_mut(&fh) else {
            return false;
        };
        if !matches!(h.state, State::Closed) {
            return false;
        }
        h.state = State::Opening(Vec::new());
        let (ino, flags, ctx) = (h.ino, h.flags, h.ctx.clone());
        drop(m);
        self.send_open(host, fh, ino, flags, ctx, prefetch, first.take());
        true
    }

    /// Runs `then` with the host handle of `fh`, opening the host file first if need be
    /// (then `then` runs on the `ferry-lazy-open` thread).
    pub(super) fn with_host(self: &Arc<Self>, host: Host<'_>, fh: u64, then: Then) {
        let mut m = self.lock();
        let Some(h) = m.get_mut(&fh) else {
            drop(m);
            return then(Err(Errno::EBADF));
        };
        match &mut h.state {
            State::Open(x) => {
                let x = *x;
                drop(m);
                then(Ok(x))
            }
            State::Failed(e) => {
                let e = *e;
                drop(m);
                then(Err(e))
            }
            State::Opening(waiting) => waiting.push(then),
            State::Closed => {
                h.state = State::Opening(vec![then]);
                let (ino, flags, ctx) = (h.ino, h.flags, h.ctx.clone());
                drop(m);
                self.send_open(host, fh, ino, flags, ctx, 0, None);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_open(
        self: &Arc<Self>,
        host: Host<'_>,
        fh: u64,
        ino: u64,
        flags: i32,
        ctx: Ctx,
        prefetch: u32,
        first: Option<First>,
    ) {
        let me = Arc::clone(self);
        let client = Arc::clone(host.client);
        let export = host.export;
        let body = Req::Open(proto::Open {
            ino,
            flags,
            prefetch,
        });
        let release_ctx = ctx.clone();
        host.client.call(
            export,
            ctx,
            &body,
            &[],
            Box::new(move |r| {
                let (result, data): (Result<u64, Errno>, &[u8]) = match r {
                    Ok(Reply::OpenedData(o, d)) => (Ok(o.fh), d),
                    Ok(Reply::Opened(o)) => (Ok(o.fh), &[]),
                    Ok(_) => (Err(Errno::EIO), &[]),
                    Err(e) => (Err(e), &[]),
                };
                if let Some(first) = first {
                    first(result.map(|_| data));
                }
                me.opened(fh, result, move |x| {
                    let body = Req::Release(proto::Release {
                        ino,
                        fh: x,
                        flags,
                        lock_owner: None,
                        flush: false,
                    });
                    client.call(export, release_ctx, &body, &[], Box::new(|_| {}));
                });
            }),
        );
    }

    /// The host answered the open of `fh`: wake what waits for it, or release the host
    /// handle at once if the kernel already released `fh`.
    fn opened(
        &self,
        fh: u64,
        result: Result<u64, Errno>,
        release: impl FnOnce(u64) + Send + 'static,
    ) {
        let mut m = self.lock();
        let Some(h) = m.get_mut(&fh) else {
            return;
        };
        let next = match result {
            Ok(x) => State::Open(x),
            Err(e) => State::Failed(e),
        };
        let waiting = match std::mem::replace(&mut h.state, next) {
            State::Opening(w) => w,
            _ => Vec::new(),
        };
        let released = h.released;
        if released {
            m.remove(&fh);
        }
        drop(m);
        if let (true, Ok(x)) = (released, result) {
            self.run(Box::new(move || release(x)));
        }
        for then in waiting {
            self.run(Box::new(move || then(result)));
        }
    }

    /// The kernel released `fh`: the host handle to release, if one is open.
    pub(super) fn release(&self, fh: u64) -> Option<u64> {
        let mut m = self.lock();
        let h = m.get_mut(&fh)?;
        match h.state {
            State::Opening(_) => {
                h.released = true;
                None
            }
            State::Open(x) => {
                m.remove(&fh);
                Some(x)
            }
            State::Closed | State::Failed(_) => {
                m.remove(&fh);
                None
            }
        }
    }

    /// Runs `job` on the `ferry-lazy-open` thread (started on first use): continuations of
    /// requests that must not send from the client's reader thread.
    pub(super) fn run(&self, job: Job) {
        let tx = self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let spawned = std::thread::Builder::new()
                .name("ferry-lazy-open".into())
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start the lazy open thread: {e}");
            }
            Mutex::new(tx)
        });
        let sent = tx.lock().unwrap_or_else(|e| e.into_inner()).send(job);
        if let Err(mpsc::SendError(job)) = sent {
            job();
        }
    }
}

impl FerryFs {
    /// Answers read-only opens here, opening the host file only when a request needs it
    /// (the `lazy` module). Only with kept pages and permissions checked by the guest kernel.
    pub fn with_lazy_open(mut self, on: bool) -> Self {
        self.lazy_open = on;
        self
    }

    pub(super) fn host(&self) -> Host<'_> {
        Host {
            client: &self.client,
            export: self.export,
        }
    }

    /// As [`Self::call`] for a request on open handle `fh`: `make` builds it for the host's
    /// handle, which for a handle answered here ([`lazy`]) is opened first.
    pub(super) fn call_fh<F>(
        &self,
        req: &Request,
        fh: u64,
        make: impl FnOnce(u64) -> Req<'static> + Send + 'static,
        done: F,
    ) where
        F: FnOnce(Result<Reply<'_>, Errno>) + Send + 'static,
    {
        if !is_lazy(fh) {
            return self.call(req, make(fh), &[], done);
        }
        let (client, export, ctx) = (Arc::clone(&self.client), self.export, ctx(req));
        let then = move |h: Result<u64, Errno>| match h {
            Ok(h) => client.call(export, ctx, &make(h), &[], Box::new(done)),
            Err(e) => done(Err(e)),
        };
        self.lazy.with_host(self.host(), fh, Box::new(then));
    }

    /// The host handle to name in a request that may also go by node alone.
    pub(super) fn host_fh(fh: Option<FileHandle>) -> Option<u64> {
        fh.map(|f| f.0).filter(|f| !is_lazy(*f))
    }

    /// The first read of a handle answered here ([`is_lazy`]), at offset 0 and within
    /// [`PREFETCH`]: the host open brings the bytes. Hands `reply` back for any other read.
    pub(super) fn read_first(
        &self,
        req: &Request,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) -> Option<ReplyData> {
        if !(is_lazy(fh) && offset == 0 && size <= PREFETCH) {
            return Some(reply);
        }
        {
            // The first read of a handle answered here: the host open brings the bytes.
            let prefetched = Arc::clone(&self.prefetched);
            let mut first: Option<First> = Some(Box::new(move |r| match r {
                Ok(data) => {
                    let p = Prefetched::new(ino, data);
                    reply.data(p.slice(0, size).unwrap_or(data));
                    if data.len() > size as usize {
                        prefetched.insert(fh, p);
                    }
                }
                Err(e) => reply_with("read", reply)(Err(e)),
            }));
            if self
                .lazy
                .open_for_read(self.host(), fh, PREFETCH, &mut first)
            {
                return None;
            }
            // Another request opened it meanwhile: read as usual. `first` was not called, so
            // it still owns the reply.
            let first = first?;
            let (client, export, ctx) = (Arc::clone(&self.client), self.export, ctx(req));
            self.lazy.with_host(
                self.host(),
                fh,
                Box::new(move |h| match h {
                    Ok(h) => {
                        let body = Req::Read(proto::Read {
                            ino,
                            fh: h,
                            offset,
                            size,
                        });
                        client.call(
                            export,
                            ctx,
                            &body,
                            &[],
                            Box::new(move |r| match r {
                                Ok(Reply::Data(d)) => first(Ok(d)),
                                Ok(_) => first(Err(Errno::EIO)),
                                Err(e) => first(Err(e)),
                            }),
                        );
                    }
                    Err(e) => first(Err(e)),
                }),
            );
            None
        }
    }
}
