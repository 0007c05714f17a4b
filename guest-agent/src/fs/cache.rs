//! The two per-handle caches that save round trips: directory entries fetched ahead for
//! plain readdir, and the first bytes of a file sent inline with a read-only open.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{INodeNo, ReplyData, ReplyDirectory};

use super::FerryFs;
use super::attr::kind_from_dtype;

/// Bytes of a file asked for inline with a read-only open. Most files in a source tree are
/// smaller, so open-read-close costs two round trips (lookup, open) instead of three.
pub const PREFETCH: u32 = 64 * 1024;

/// A file's first bytes as the host read them when the handle was opened. They answer reads
/// within the attribute TTL of the open (the same staleness the kernel's own caches allow), and
/// are dropped as soon as this guest changes the file.
#[derive(Debug)]
pub(super) struct Prefetched {
    ino: u64,
    data: Vec<u8>,
    /// `data` reaches the end of the file.
    eof: bool,
    at: std::time::Instant,
}

impl Prefetched {
    /// The bytes the host sent with the open of node `ino`.
    pub(super) fn new(ino: u64, data: &[u8]) -> Self {
        Self {
            ino,
            data: data.to_vec(),
            eof: data.len() < PREFETCH as usize,
            at: std::time::Instant::now(),
        }
    }

    /// The bytes a read of `size` at `offset` returns, if this buffer holds all of them.
    pub(super) fn slice(&self, offset: u64, size: u32) -> Option<&[u8]> {
        let len = self.data.len() as u64;
        let end = offset.checked_add(u64::from(size))?;
        if end <= len {
            Some(&self.data[offset as usize..end as usize])
        } else if self.eof {
            Some(&self.data[offset.min(len) as usize..])
        } else {
            None
        }
    }
}

/// Bytes' worth of entries (in FUSE's encoding) asked of the server per plain readdir.
pub const DIR_CHUNK: u32 = 64 * 1024;

/// Entries already fetched for one directory handle, starting at cookie `offset`.
#[derive(Debug, Default)]
pub(super) struct DirCache {
    /// The cookie the kernel passes to read the first entry of `entries`.
    offset: u64,
    entries: std::collections::VecDeque<ferry_protocol::DirEntry>,
    /// The server returned no entries after `offset`.
    eof: bool,
}

impl DirCache {
    /// The entries the server returned for a read at cookie `offset`.
    pub(super) fn new(offset: u64, entries: Vec<ferry_protocol::DirEntry>) -> Self {
        Self {
            offset,
            eof: entries.is_empty(),
            entries: entries.into(),
        }
    }

    /// Whether a read at `offset` can be answered from this cache.
    pub(super) fn serves(&self, offset: u64) -> bool {
        self.offset == offset && (self.eof || !self.entries.is_empty())
    }

    /// Moves entries into `reply` until it is full; the cache keeps what did not fit.
    pub(super) fn fill(&mut self, reply: &mut ReplyDirectory) {
        while let Some(e) = self.entries.front() {
            let name = OsStr::from_bytes(&e.name);
            if reply.add(INodeNo(e.ino), e.offset, kind_from_dtype(e.kind), name) {
                break;
            }
            self.offset = e.offset;
            self.entries.pop_front();
        }
    }
}

impl FerryFs {
    /// A callback that drops the bytes prefetched for a node (its data changed on the host).
    pub fn prefetch_dropper(&self) -> Box<dyn Fn(u64) + Send> {
        let prefetched = Arc::clone(&self.prefetched);
        Box::new(move |ino| {
            if !prefetched.is_empty() {
                prefetched.retain(|_, p| p.ino != ino);
            }
        })
    }

    /// Answers a read from the bytes prefetched at open, handing `reply` back when they do not
    /// cover it (or are too old) so that the caller asks the host.
    pub(super) fn read_prefetched(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) -> Option<ReplyData> {
        let Some(p) = self.prefetched.get(&fh) else {
            return Some(reply);
        };
        let bytes = if p.at.elapsed() <= self.ttl {
            p.slice(offset, size)
        } else {
            None
        };
        match bytes {
            Some(bytes) => {
                let consumed = offset + bytes.len() as u64 >= p.data.len() as u64;
                reply.data(bytes);
                crate::stats::agent().hit(crate::stats::Hit::Page);
                drop(p);
                // Reads past the buffer go to the host from now on: free it.
                if consumed {
                    self.prefetched.remove(&fh);
                }
                None
            }
            None => {
                drop(p);
                self.prefetched.remove(&fh);
                Some(reply)
            }
        }
    }

    /// Forgets every prefetched buffer of `ino`: this guest is changing the file.
    pub(super) fn drop_prefetched(&self, ino: u64) {
        if !self.prefetched.is_empty() {
            self.prefetched.retain(|_, p| p.ino != ino);
        }
    }
}
