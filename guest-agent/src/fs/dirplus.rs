//! READDIRPLUS in chunks sized to the directory, not to the kernel's buffer.
//!
//! The kernel reads a directory handle with buffers of a page or a few; each entry with its
//! attributes takes some 160 bytes, so a 100,000-entry directory would cost hundreds or
//! thousands of round trips. The agent asks the host for [`DIRPLUS_CHUNK`] bytes' worth at a
//! time instead (the first request of a listing for [`DIRPLUS_FIRST`], so a small directory
//! answers as fast as before), answers the kernel's reads from what is left of the chunk, and
//! in `cached` mode fetches the next chunk as soon as the kernel has taken half of one, so the
//! host reads ahead while the kernel consumes.
//!
//! Every entry the host sends holds a lookup; one the kernel has not taken when the handle is
//! released, read elsewhere, or the chunk is discarded is given back with the next `Forget`.
//! A chunk is discarded, not handed to the kernel, once any cache notification or change of
//! this guest happened after it was asked for ([`super::xattrs::XattrMarks::epoch`]): the
//! kernel must not be given attributes older than an invalidation it has already seen.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use ferry_protocol::{self as proto, DirEntryPlus, Reply, Request as Req};
use fuser::{FileHandle, INodeNo, ReplyDirectoryPlus, Request};

use super::FerryFs;
use super::reply::{add_dirplus, errno, wrong};

/// Bytes' worth of entries (in FUSE's encoding) asked of the server per READDIRPLUS.
pub const DIRPLUS_CHUNK: u32 = 256 * 1024;
/// The first request of a listing: small directories answer at once.
pub const DIRPLUS_FIRST: u32 = 32 * 1024;

/// The chunks of one directory handle.
#[derive(Debug)]
pub(super) struct PlusCache {
    /// Tells a fetch's answer whether the cache it was sent for still stands.
    generation: u64,
    /// The cookie the kernel passes to read the first entry of `entries`.
    offset: u64,
    entries: VecDeque<DirEntryPlus>,
    /// The cookie to fetch the entries after `entries` from.
    tail: u64,
    /// The server returned no entries after `tail`.
    eof: bool,
    /// A fetch from `tail` is in flight.
    fetching: bool,
    /// The marks epoch when the entries held were asked for.
    epoch: u64,
    /// A kernel read waiting for the fetch in flight.
    waiting: Option<ReplyDirectoryPlus>,
}

impl PlusCache {
    /// Moves entries into `reply` until it is full; returns the node ids of the entries sent
    /// whose lookups the kernel does not take (`.` and `..`), to be forgotten.
    fn fill(
        &mut self,
        dir: u64,
        ttl: std::time::Duration,
        reply: &mut ReplyDirectoryPlus,
    ) -> Vec<u64> {
        let mut forgets = Vec::new();
        while let Some(e) = self.entries.front() {
            let Some(forget) = add_dirplus(reply, dir, ttl, e) else {
                break;
            };
            if forget {
                forgets.push(e.entry.ino);
            }
            self.offset = e.offset;
            self.entries.pop_front();
        }
        forgets
    }
}

/// Shared by the handlers and the fetches' callbacks.
#[derive(Debug, Default)]
pub(super) struct PlusCaches {
    map: DashMap<u64, PlusCache>,
    next: AtomicU64,
}

impl FerryFs {
    /// The kernel's READDIRPLUS of directory `ino` through handle `fh` at cookie `offset`.
    pub(super) fn readdirplus_chunked(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.flush_deferred(req);
        let (dir, fh) = (ino.0, fh.0);
        let epoch = self.listings.xattrs.epoch();
        let mut stale = Vec::new();
        let send_from = {
            let mut entry = self.plus.map.entry(fh);
            match entry {
                dashmap::mapref::entry::Entry::Occupied(ref mut o)
                    if o.get().offset == offset && o.get().epoch == epoch =>
                {
                    let c = o.get_mut();
                    if !c.entries.is_empty() || c.eof {
                        self.fill_from(c, dir, &mut reply);
                        reply.ok();
                        self.ahead(c)
                    } else if c.fetching {
                        c.waiting = Some(reply);
                        return;
                    } else {
                        c.waiting = Some(reply);
                        c.fetching = true;
                        Some((c.tail, c.generation, DIRPLUS_CHUNK))
                    }
                }
                e => {
                    // A first read, a seek, or a chunk older than an invalidation.
                    if let dashmap::mapref::entry::Entry::Occupied(o) = &e {
                        stale.extend(o.get().entries.iter().map(|e| e.entry.ino));
                    }
                    if offset == 0 && self.keep_cache {
                        self.listings.begin(fh, dir, self.listings.epoch());
                    }
                    let generation = self.plus.next.fetch_add(1, Ordering::Relaxed);
                    let first = if offset == 0 {
                        DIRPLUS_FIRST
                    } else {
                        DIRPLUS_CHUNK
                    };
                    e.insert(PlusCache {
                        generation,
                        offset,
                        entries: VecDeque::new(),
                        tail: offset,
                        eof: false,
                        fetching: true,
                        epoch,
                        waiting: Some(reply),
                    });
                    Some((offset, generation, first))
                }
            }
        };
        self.defer_forgets(stale);
        if let Some((from, generation, size)) = send_from {
            self.fetch_plus(req, dir, fh, from, generation, epoch, size);
        }
    }

    /// Moves entries into `reply` until it is full.
    fn fill_from(&self, c: &mut PlusCache, dir: u64, reply: &mut ReplyDirectoryPlus) {
        let forgets = c.fill(dir, self.ttl, reply);
        self.defer_forgets(forgets);
    }

    /// The next chunk to fetch ahead after a read served from `c`, if it is time to.
    fn ahead(&self, c: &mut PlusCache) -> Option<(u64, u64, u32)> {
        if !self.keep_cache || c.eof || c.fetching || c.entries.len() >= AHEAD_BELOW {
            return None;
        }
        c.fetching = true;
        Some((c.tail, c.generation, DIRPLUS_CHUNK))
    }

    /// Asks the host for the entries after cookie `from`, for the cache of handle `fh` made as
    /// `generation`.
    #[allow(clippy::too_many_arguments)]
    fn fetch_plus(
        &self,
        req: &Request,
        dir: u64,
        fh: u64,
        from: u64,
        generation: u64,
        epoch: u64,
        size: u32,
    ) {
        let body = Req::Readdirplus(proto::Readdirplus {
            ino: dir,
            fh,
            offset: from,
            size,
        });
        let plus = Arc::clone(&self.plus);
        let listings = Arc::clone(&self.listings);
        let deferred = Arc::clone(&self.deferred_forgets);
        let marks = self.xattr_marks().is_some();
        let ttl = self.ttl;
        self.call(req, body, &[], move |r| {
            let mut orphans: Vec<u64> = Vec::new();
            let mut cache = plus.map.get_mut(&fh).filter(|c| c.generation == generation);
            match r {
                Ok(Reply::DirPlus(entries)) => {
                    if marks {
                        for e in entries.iter().filter(|e| e.entry.ino != 0) {
                            listings.xattrs.note(epoch, e.entry.ino, &e.entry.attr);
                        }
                    }
                    let Some(c) = cache.as_deref_mut() else {
                        orphans.extend(entries.iter().map(|e| e.entry.ino));
                        drop(cache);
                        give_back(&deferred, orphans);
                        return;
                    };
                    let names: Vec<(&[u8], u64)> =
                        entries.iter().map(|e| (&e.name[..], e.offset)).collect();
                    listings.add(fh, from, &names);
                    c.fetching = false;
                    c.eof = entries.is_empty();
                    if let Some(last) = entries.last() {
                        c.tail = last.offset;
                    }
                    c.entries.extend(entries);
                    if let Some(mut reply) = c.waiting.take() {
                        let forgets = c.fill(dir, ttl, &mut reply);
                        reply.ok();
                        drop(cache);
                        give_back(&deferred, forgets);
                    }
                }
                r => {
                    listings.end(fh);
                    let waiting = cache.as_deref_mut().and_then(|c| {
                        c.fetching = false;
                        c.waiting.take()
                    });
                    drop(cache);
                    if waiting.is_some() {
                        // Start over at the next read.
                        plus.map.remove_if(&fh, |_, c| c.generation == generation);
                    }
                    if let Some(reply) = waiting {
                        match r {
                            Ok(other) => reply.error(wrong("readdirplus", &other)),
                            Err(e) => reply.error(errno(e)),
                        }
                    }
                }
            }
        });
    }

    /// Gives back the lookups of node ids `ids` (0: none taken) with the next `Forget`.
    fn defer_forgets(&self, ids: Vec<u64>) {
        give_back(&self.deferred_forgets, ids);
    }

    /// The handle `fh` is released: entries the kernel never took are given back.
    pub(super) fn release_plus(&self, fh: u64) {
        if let Some((_, c)) = self.plus.map.remove(&fh) {
            self.defer_forgets(c.entries.iter().map(|e| e.entry.ino).collect());
        }
    }
}

/// Entries left in a chunk below which the next one is fetched ahead.
const AHEAD_BELOW: usize = 1024;

fn give_back(deferred: &std::sync::Mutex<Vec<(u64, u64)>>, ids: Vec<u64>) {
    let ids: Vec<(u64, u64)> = ids
        .into_iter()
        .filter(|&i| i != 0)
        .map(|i| (i, 1))
        .collect();
    if !ids.is_empty() {
        deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ids);
    }
}
