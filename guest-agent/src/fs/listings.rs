//! Complete listings of directories, to answer a lookup of a name a directory lacks without
//! asking the host (module resolvers, `PATH` searches and build tools probe many names that do
//! not exist, each once, so the kernel's negative entries do not help them).
//!
//! A listing is recorded when one directory handle reads its directory from the first entry
//! to the end, and only if nothing that could change a listing happened in the meantime
//! (`epoch`). It is dropped by whatever changes the directory's names: a request of this guest
//! that adds, removes or renames a name there (when sent and again when answered), and every
//! cache notification the replay thread sends the kernel for the directory or a name in it
//! ([`crate::kernel::KernelNotifier`]), or for the whole mount. Used only in `cached` mode with
//! host change events, where the kernel keeps negative entries for the same reason.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ferry_protocol::{Errno, Reply};

use super::FerryFs;
use super::xattrs::XattrMarks;

/// Names kept over all listings; past it, every listing is dropped (they are rebuilt by the
/// next full read of each directory).
const MAX_NAMES: usize = 1 << 20;
/// Directories kept at most.
const MAX_DIRS: usize = 16 * 1024;
/// Missing names in an unchanged directory after which the agent reads its listing.
const FETCH_AFTER_MISSES: u32 = 2;

/// The complete listings this mount holds.
#[derive(Debug, Default)]
pub struct Listings {
    inner: Mutex<Inner>,
    /// Nodes without guest-visible xattrs (`xattrs.rs`), dropped with the rest: a
    /// notification about a node drops its mark too.
    pub(super) xattrs: XattrMarks,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every drop: a listing read while it moved may miss a change.
    epoch: u64,
    dirs: HashMap<u64, HashSet<Vec<u8>>>,
    names: usize,
    /// Listings being read, per directory handle.
    building: HashMap<u64, Building>,
    /// Missing names per directory since it last changed.
    misses: HashMap<u64, u32>,
}

#[derive(Debug)]
struct Building {
    dir: u64,
    epoch: u64,
    names: HashSet<Vec<u8>>,
    /// Offsets a read may continue at without skipping an entry: where the last chunk was
    /// read from, and the cookie of each of its entries (a seek elsewhere ends the listing).
    resume: HashSet<u64>,
}

impl Listings {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch to pass to [`Listings::begin`] for a read from the first entry, taken before
    /// the request is sent.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// A read of directory `dir` through handle `fh` from its first entry, sent at `epoch`.
    pub fn begin(&self, fh: u64, dir: u64, epoch: u64) {
        let mut g = self.lock();
        if g.building.len() >= MAX_DIRS {
            g.building.clear();
        }
        g.building.insert(
            fh,
            Building {
                dir,
                epoch,
                names: HashSet::new(),
                resume: HashSet::from([0]),
            },
        );
    }

    /// The entries (name, cookie) a read through handle `fh` at `offset` returned; none means
    /// the end of the directory, where the listing is kept if it was read without a gap and
    /// nothing changed since its read began.
    pub fn add(&self, fh: u64, offset: u64, entries: &[(&[u8], u64)]) {
        let mut g = self.lock();
        let Some(b) = g.building.get_mut(&fh) else {
            return;
        };
        if !b.resume.contains(&offset) {
            g.building.remove(&fh);
            return;
        }
        if !entries.is_empty() {
            b.resume.clear();
            b.resume.insert(offset);
            for (name, cookie) in entries {
                b.names.insert(name.to_vec());
                b.resume.insert(*cookie);
            }
            return;
        }
        let Some(b) = g.building.remove(&fh) else {
            return;
        };
        if b.epoch != g.epoch {
            return;
        }
        if g.names + b.names.len() > MAX_NAMES || g.dirs.len() >= MAX_DIRS {
            g.dirs.clear();
            g.names = 0;
        }
        g.names += b.names.len();
        if let Some(old) = g.dirs.insert(b.dir, b.names) {
            g.names -= old.len();
        }
    }

    /// The handle `fh` is closed (a listing it had not read to the end is not kept).
    pub fn end(&self, fh: u64) {
        self.lock().building.remove(&fh);
    }

    /// The host answered that a name is missing in `dir`. On the second such answer since
    /// the directory last changed, starts a listing of it read by the agent itself
    /// ([`Listings::fetch_key`]) and returns true, unless one is held or being read. (Not on
    /// the first: creating a file looks its name up first, and a directory being filled
    /// would otherwise be listed again for every file.)
    pub fn missed(&self, dir: u64) -> bool {
        let key = Self::fetch_key(dir);
        let mut g = self.lock();
        if g.dirs.contains_key(&dir) || g.building.contains_key(&key) {
            return false;
        }
        if g.misses.len() >= MAX_DIRS {
            g.misses.clear();
        }
        let n = g.misses.entry(dir).or_insert(0);
        *n += 1;
        if *n < FETCH_AFTER_MISSES {
            return false;
        }
        g.misses.remove(&dir);
        let epoch = g.epoch;
        drop(g);
        self.begin(key, dir, epoch);
        true
    }

    /// The key a listing the agent reads by itself is built under, in place of a kernel
    /// directory handle (the host numbers those from 1; these are near `u64::MAX`).
    pub fn fetch_key(dir: u64) -> u64 {
        !dir
    }

    /// Whether directory `dir` is known, completely, not to hold `name`.
    pub fn lacks(&self, dir: u64, name: &[u8]) -> bool {
        self.lock()
            .dirs
            .get(&dir)
            .is_some_and(|n| !n.contains(name))
    }

    /// Drops what is known of directory `dir`'s names.
    pub fn drop_dir(&self, dir: u64) {
        self.xattrs.drop_node(dir);
        let mut g = self.lock();
        g.epoch += 1;
        g.misses.remove(&dir);
        if let Some(old) = g.dirs.remove(&dir) {
            g.names -= old.len();
        }
    }

    /// The kernel forgot directory `dir`: its listing goes (no name changed, so reads in
    /// progress elsewhere stay valid).
    pub fn forget_dir(&self, dir: u64) {
        self.xattrs.forget(dir);
        let mut g = self.lock();
        if let Some(old) = g.dirs.remove(&dir) {
            g.names -= old.len();
        }
    }

    /// Drops every listing.
    pub fn drop_all(&self) {
        self.xattrs.drop_all();
        let mut g = self.lock();
        g.epoch += 1;
        g.dirs.clear();
        g.misses.clear();
        g.names = 0;
    }
}

impl FerryFs {
    /// The complete listings this adapter answers missing names from; whatever drops the
    /// kernel's cached names (the replay thread's [`crate::kernel::KernelNotifier`]) must drop
    /// them too.
    pub fn listings(&self) -> Arc<Listings> {
        Arc::clone(&self.listings)
    }

    /// Drops the listings of `dirs` now and again when the request answers, for a request
    /// that adds, removes or renames names in them.
    pub(super) fn changing<F>(
        &self,
        dirs: [u64; 2],
        done: F,
    ) -> impl FnOnce(Result<Reply<'_>, Errno>) + Send + 'static + use<F>
    where
        F: FnOnce(Result<Reply<'_>, Errno>) + Send + 'static,
    {
        for d in dirs {
            self.listings.drop_dir(d);
        }
        let listings = Arc::clone(&self.listings);
        move |r| {
            for d in dirs {
                listings.drop_dir(d);
            }
            done(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries named `v`, with cookies `first`, `first + 1`, ...
    fn chunk(v: &[&'static str], first: u64) -> Vec<(&'static [u8], u64)> {
        (first..).zip(v).map(|(c, s)| (s.as_bytes(), c)).collect()
    }

    #[test]
    fn a_listing_read_to_the_end_answers_missing_names() {
        let l = Listings::default();
        l.begin(7, 1, l.epoch());
        l.add(7, 0, &chunk(&["a", "b", "x"], 1));
        assert!(!l.lacks(1, b"zz"), "not complete yet");
        // Continued after "b" (the kernel had no room for "x"): read again.
        l.add(7, 2, &chunk(&["x", "c"], 3));
        l.add(7, 4, &[]);
        assert!(l.lacks(1, b"zz"));
        assert!(!l.lacks(1, b"c"));
        assert!(!l.lacks(2, b"zz"), "another directory");
        l.drop_dir(1);
        assert!(!l.lacks(1, b"zz"));
    }

    #[test]
    fn a_change_during_the_read_discards_it() {
        let l = Listings::default();
        l.begin(7, 1, l.epoch());
        l.add(7, 0, &chunk(&["a"], 1));
        l.drop_dir(9);
        l.add(7, 1, &[]);
        assert!(!l.lacks(1, b"zz"));
        // Sent before the drop, answered after it.
        let e = l.epoch();
        l.drop_all();
        l.begin(8, 1, e);
        l.add(8, 0, &[]);
        assert!(!l.lacks(1, b"zz"));
    }

    #[test]
    fn a_closed_handle_keeps_nothing() {
        let l = Listings::default();
        l.begin(7, 1, l.epoch());
        l.add(7, 0, &chunk(&["a"], 1));
        l.end(7);
        l.add(7, 1, &[]);
        assert!(!l.lacks(1, b"zz"));
    }

    #[test]
    fn the_second_miss_in_an_unchanged_directory_starts_a_listing() {
        let l = Listings::default();
        assert!(!l.missed(1));
        l.drop_dir(1);
        assert!(!l.missed(1), "a change forgets the first miss");
        assert!(l.missed(1));
        assert!(!l.missed(1), "already being read");
        let key = Listings::fetch_key(1);
        l.add(key, 0, &chunk(&["a"], 1));
        l.add(key, 1, &[]);
        assert!(l.lacks(1, b"zz"));
        assert!(!l.missed(1), "already held");
    }

    #[test]
    fn a_seek_past_entries_keeps_nothing() {
        let l = Listings::default();
        l.begin(7, 1, l.epoch());
        l.add(7, 0, &chunk(&["a", "b"], 1));
        l.add(7, 40, &chunk(&["y"], 41));
        l.add(7, 41, &[]);
        assert!(!l.lacks(1, b"zz"));
    }
}
