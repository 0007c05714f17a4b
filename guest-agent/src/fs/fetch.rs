//! Listings the agent reads by itself: after the host said twice that a name is missing in
//! a directory that did not change meanwhile ([`Listings::missed`]), the directory's listing
//! is read in the background, so that the next names probed there for the first time are
//! answered from it.

use std::sync::Arc;

use ferry_protocol::{self as proto, Reply, Request as Req};
use fuser::Request;

use super::caller::ctx;
use super::lazy::LazyOpens;
use super::{DIR_CHUNK, FerryFs, Listings};
use crate::client::Client;

impl FerryFs {
    /// What reads directory `dir`'s listing in the background after a name was missing in it
    /// (on the `ferry-lazy-open` thread: the reader thread, where it is called, must not send):
    /// tools that probe one missing name probe more in the same directory. At most
    /// [`FETCH_CHUNKS`] chunks; a bigger directory is left to lookups.
    pub(super) fn listing_fetcher(
        &self,
        req: &Request,
        dir: u64,
    ) -> impl FnOnce() + Send + 'static + use<> {
        let lazy = Arc::clone(&self.lazy);
        let listings = Arc::clone(&self.listings);
        let client = Arc::clone(&self.client);
        let (export, ctx) = (self.export, ctx(req));
        move || {
            if !listings.missed(dir) {
                return;
            }
            let step = FetchStep {
                client,
                listings,
                lazy: Arc::clone(&lazy),
                export,
                ctx,
                dir,
            };
            lazy.run(Box::new(move || step.open()));
        }
    }
}

/// Chunks of [`DIR_CHUNK`] bytes a background listing reads at most (about 25,000 names).
pub const FETCH_CHUNKS: usize = 16;

/// One step of a background listing read: Opendir, Readdir until the end, Releasedir, each
/// sent from the `ferry-lazy-open` thread.
pub(super) struct FetchStep {
    client: Arc<Client>,
    listings: Arc<Listings>,
    lazy: Arc<LazyOpens>,
    export: u32,
    ctx: proto::Ctx,
    dir: u64,
}

impl FetchStep {
    fn open(self) {
        let body = Req::Opendir(proto::Opendir {
            ino: self.dir,
            flags: libc::O_RDONLY | libc::O_DIRECTORY,
        });
        let (client, export, ctx) = (Arc::clone(&self.client), self.export, self.ctx.clone());
        client.call(
            export,
            ctx,
            &body,
            &[],
            Box::new(move |r| match r {
                Ok(Reply::Opened(o)) => {
                    let lazy = Arc::clone(&self.lazy);
                    lazy.run(Box::new(move || self.read(o.fh, 0, 0)));
                }
                _ => self.listings.end(Listings::fetch_key(self.dir)),
            }),
        );
    }

    fn read(self, fh: u64, offset: u64, chunks: usize) {
        let body = Req::Readdir(proto::Readdir {
            ino: self.dir,
            fh,
            offset,
            size: DIR_CHUNK,
        });
        let (client, export, ctx) = (Arc::clone(&self.client), self.export, self.ctx.clone());
        client.call(
            export,
            ctx,
            &body,
            &[],
            Box::new(move |r| {
                let key = Listings::fetch_key(self.dir);
                let next = match r {
                    Ok(Reply::Dir(entries)) => {
                        let names: Vec<(&[u8], u64)> =
                            entries.iter().map(|e| (&e.name[..], e.offset)).collect();
                        self.listings.add(key, offset, &names);
                        entries.last().map(|e| e.offset)
                    }
                    _ => None,
                };
                let next = next.filter(|_| chunks + 1 < FETCH_CHUNKS);
                if next.is_none() {
                    // Done, failed or too big: whatever was not read to the end is not kept.
                    self.listings.end(key);
                }
                let lazy = Arc::clone(&self.lazy);
                lazy.run(Box::new(move || match next {
                    Some(at) => self.read(fh, at, chunks + 1),
                    None => self.release(fh),
                }));
            }),
        );
    }

    fn release(self, fh: u64) {
        let body = Req::Releasedir(proto::Releasedir {
            ino: self.dir,
            fh,
            flags: 0,
        });
        self.client
            .call(self.export, self.ctx, &body, &[], Box::new(|_| {}));
    }
}
