//! What the agent must remember to resume on a new connection: the nodes the guest kernel
//! knows (parent, name, file type and lookup counts), the open handles with their flags and
//! opener, the locks taken, and, once a connection has been replaced, the translation between
//! the ids the guest kernel uses and the new server's.
//!
//! Before the first resume the guest's ids are the server's (the map is the identity and
//! nothing is translated). A resume looks every node up again by name and reopens every
//! handle; the new server's ids then differ, so from then on every request is translated
//! guest → server and every reply server → guest, and ids the new server hands out that the
//! guest has never seen get fresh guest ids above every id used so far.
//!
//! Lookup counts: each node keeps the count the guest kernel holds (`guest`) and the count the
//! current server holds (`server`). Both grow with every entry handed out; a resume leaves the
//! server one lookup. A `Forget` gives the server back what it holds beyond one until the guest
//! forgets the node entirely, then everything, so the server never drops a node the kernel
//! still uses.

use std::collections::HashMap;

use ferry_protocol::{Change, ChangeKind, Ctx, Errno, Lock, ROOT_ID, Reply, Request, Setlk};

/// A node the guest kernel knows.
#[derive(Clone, Debug)]
pub(super) struct Node {
    /// The directory it was last found in (guest id) and its name there; an empty name when
    /// the name was removed (then it cannot be found again).
    pub parent: u64,
    pub name: Vec<u8>,
    /// `S_IFMT` bits of its mode.
    pub kind: u32,
    pub guest: u64,
    pub server: u64,
}

/// An open handle, reopened on resume with its flags (without O_TRUNC, O_CREAT, O_EXCL).
#[derive(Clone, Debug)]
pub(super) struct Handle {
    pub ino: u64,
    pub flags: i32,
    pub dir: bool,
    pub ctx: Ctx,
}

/// A lock taken through a handle, taken again (without waiting) on resume.
#[derive(Clone, Debug)]
pub(super) enum Held {
    Record { ino: u64, owner: u64, lock: Lock },
    Flock { ino: u64, owner: u64, op: i32 },
}

/// What a request needs remembered until its reply, to keep the book.
#[derive(Debug, Default)]
pub(crate) enum Note {
    #[default]
    None,
    /// An entry is expected for `name` in `parent`.
    Named {
        parent: u64,
        name: Vec<u8>,
    },
    /// Readdirplus entries of directory `dir`.
    Listing {
        dir: u64,
    },
    Renamed {
        parent: u64,
        name: Vec<u8>,
        to_parent: u64,
        to: Vec<u8>,
    },
    Removed {
        parent: u64,
        name: Vec<u8>,
    },
    /// A handle is expected for `ino`.
    Opened {
        ino: u64,
        flags: i32,
        dir: bool,
        ctx: Ctx,
    },
    /// A create: both.
    Created {
        parent: u64,
        name: Vec<u8>,
        flags: i32,
        ctx: Ctx,
    },
    Locked {
        fh: u64,
        held: Held,
    },
}

type Key = (u32, u64);

/// Ids of one kind (nodes or handles) in both directions, active after the first resume.
#[derive(Debug, Default)]
pub(super) struct IdMap {
    pub to_server: HashMap<Key, u64>,
    pub to_guest: HashMap<Key, u64>,
    /// The highest guest id handed out so far; fresh ones come after it.
    pub max_guest: u64,
}

impl IdMap {
    fn guest_of(&mut self, export: u32, server: u64, active: bool) -> u64 {
        if !active || server == 0 {
            self.max_guest = self.max_guest.max(server);
            return server;
        }
        if let Some(&g) = self.to_guest.get(&(export, server)) {
            return g;
        }
        self.max_guest += 1;
        let g = self.max_guest;
        self.bind(export, g, server);
        g
    }

    pub fn bind(&mut self, export: u32, guest: u64, server: u64) {
        self.to_server.insert((export, guest), server);
        self.to_guest.insert((export, server), guest);
    }

    fn unbind(&mut self, export: u32, guest: u64) {
        if let Some(s) = self.to_server.remove(&(export, guest)) {
            self.to_guest.remove(&(export, s));
        }
    }
}

/// The book of one client (all exports).
#[derive(Debug, Default)]
pub(crate) struct Book {
    pub nodes: HashMap<Key, Node>,
    /// (export, parent, name) → node, for renames and removals.
    names: HashMap<(u32, u64, Vec<u8>), u64>,
    pub handles: HashMap<Key, Handle>,
    pub locks: HashMap<Key, Vec<Held>>,
    /// Whether ids are translated (after the first resume).
    pub active: bool,
    pub node_ids: IdMap,
    pub fh_ids: IdMap,
}

const S_IFMT: u32 = libc::S_IFMT;

impl Book {
    /// What `body` needs remembered until its reply; drops released handles at once.
    pub fn note(&mut self, export: u32, ctx: &Ctx, body: &Request<'_>) -> Note {
        let named = |parent: u64, name: &[u8]| Note::Named {
            parent,
            name: name.to_vec(),
        };
        match body {
            Request::Lookup(b) => named(b.parent, b.name),
            Request::Mkdir(b) => named(b.parent, b.name),
            Request::Mknod(b) => named(b.parent, b.name),
            Request::Symlink(b) => named(b.parent, b.name),
            Request::Link(b) => named(b.newparent, b.newname),
            Request::Readdirplus(b) => Note::Listing { dir: b.ino },
            Request::Rename(b) => Note::Renamed {
                parent: b.parent,
                name: b.name.to_vec(),
                to_parent: b.newparent,
                to: b.newname.to_vec(),
            },
            Request::Unlink(b) => Note::Removed {
                parent: b.parent,
                name: b.name.to_vec(),
            },
            Request::Rmdir(b) => Note::Removed {
                parent: b.parent,
                name: b.name.to_vec(),
            },
            Request::Open(b) => Note::Opened {
                ino: b.ino,
                flags: b.flags,
                dir: false,
                ctx: ctx.clone(),
            },
            Request::Opendir(b) => Note::Opened {
                ino: b.ino,
                flags: b.flags,
                dir: true,
                ctx: ctx.clone(),
            },
            Request::Create(b) => Note::Created {
                parent: b.parent,
                name: b.name.to_vec(),
                flags: b.flags,
                ctx: ctx.clone(),
            },
            Request::Setlk(Setlk {
                ino,
                fh,
                owner,
                lock,
                ..
            }) => Note::Locked {
                fh: *fh,
                held: Held::Record {
                    ino: *ino,
                    owner: *owner,
                    lock: *lock,
                },
            },
            Request::Flock(b) => Note::Locked {
                fh: b.fh,
                held: Held::Flock {
                    ino: b.ino,
                    owner: b.owner,
                    op: b.op,
                },
            },
            Request::Release(b) => {
                self.handles.remove(&(export, b.fh));
                self.locks.remove(&(export, b.fh));
                Note::None
            }
            Request::Releasedir(b) => {
                self.handles.remove(&(export, b.fh));
                Note::None
            }
            _ => Note::None,
        }
    }

    fn entry(&mut self, export: u32, ino: u64, parent: u64, name: &[u8], mode: u32) {
        if ino == 0 || ino == ROOT_ID {
            return;
        }
        let dots = name == b"." || name == b"..";
        let node = self.nodes.entry((export, ino)).or_insert_with(|| Node {
            parent,
            name: Vec::new(),
            kind: mode & S_IFMT,
            guest: 0,
            server: 0,
        });
        node.guest += 1;
        node.server += 1;
        node.kind = mode & S_IFMT;
        if dots || name.is_empty() {
            return;
        }
        if (node.parent, node.name.as_slice()) != (parent, name) {
            let old = (export, node.parent, std::mem::take(&mut node.name));
            node.parent = parent;
            node.name = name.to_vec();
            if self.names.get(&old) == Some(&ino) {
                self.names.remove(&old);
            }
        }
        self.names.insert((export, parent, name.to_vec()), ino);
    }

    fn unname(&mut self, export: u32, parent: u64, name: &[u8]) -> Option<u64> {
        let ino = self.names.remove(&(export, parent, name.to_vec()))?;
        if let Some(n) = self.nodes.get_mut(&(export, ino)) {
            n.name.clear();
        }
        Some(ino)
    }

    /// Translates a reply from server to guest ids and records what it tells.
    pub fn on_reply(&mut self, export: u32, note: Note, result: &mut Result<Reply<'_>, Errno>) {
        let active = self.active;
        if let Ok(r) = result {
            match r {
                Reply::Entry(e) => {
                    e.ino = self.node_ids.guest_of(export, e.ino, active);
                    e.attr.ino = e.ino;
                }
                Reply::Attr(a) => a.ino = self.node_ids.guest_of(export, a.ino, active),
                Reply::Created(c) => {
                    c.entry.ino = self.node_ids.guest_of(export, c.entry.ino, active);
                    c.entry.attr.ino = c.entry.ino;
                    c.opened.fh = self.fh_ids.guest_of(export, c.opened.fh, active);
                }
                Reply::Opened(o) | Reply::OpenedData(o, _) => {
                    o.fh = self.fh_ids.guest_of(export, o.fh, active);
                }
                Reply::DirPlus(list) => {
                    for e in list.iter_mut() {
                        if e.entry.ino != 0 {
                            e.entry.ino = self.node_ids.guest_of(export, e.entry.ino, active);
                            e.entry.attr.ino = e.entry.ino;
                        }
                    }
                }
                _ => {}
            }
        }
        let Ok(r) = result else { return };
        match (note, r) {
            (Note::Named { parent, name }, Reply::Entry(e)) => {
                self.entry(export, e.ino, parent, &name, e.attr.mode);
            }
            (Note::Listing { dir }, Reply::DirPlus(list)) => {
                for e in list.iter() {
                    if e.entry.ino != 0 {
                        self.entry(export, e.entry.ino, dir, &e.name, e.entry.attr.mode);
                    }
                }
            }
            (
                Note::Renamed {
                    parent,
                    name,
                    to_parent,
                    to,
                },
                _,
            ) => {
                self.unname(export, to_parent, &to);
                if let Some(ino) = self.unname(export, parent, &name)
                    && let Some(n) = self.nodes.get_mut(&(export, ino))
                {
                    n.parent = to_parent;
                    n.name = to.clone();
                    self.names.insert((export, to_parent, to), ino);
                }
            }
            (Note::Removed { parent, name }, _) => {
                self.unname(export, parent, &name);
            }
            (
                Note::Opened {
                    ino,
                    flags,
                    dir,
                    ctx,
                },
                Reply::Opened(o) | Reply::OpenedData(o, _),
            ) => {
                self.handles.insert(
                    (export, o.fh),
                    Handle {
                        ino,
                        flags,
                        dir,
                        ctx,
                    },
                );
            }
            (
                Note::Created {
                    parent,
                    name,
                    flags,
                    ctx,
                },
                Reply::Created(c),
            ) => {
                self.entry(export, c.entry.ino, parent, &name, c.entry.attr.mode);
                self.handles.insert(
                    (export, c.opened.fh),
                    Handle {
                        ino: c.entry.ino,
                        flags,
                        dir: false,
                        ctx,
                    },
                );
            }
            (Note::Locked { fh, held }, _) => {
                let log = self.locks.entry((export, fh)).or_default();
                // An unlock of the whole range by an owner ends what that owner held.
                let whole_unlock = match &held {
                    Held::Record { owner, lock, .. } => (lock.typ == libc::F_UNLCK
                        && lock.start == 0
                        && lock.end >= i64::MAX as u64)
                        .then_some((*owner, false)),
                    Held::Flock { owner, op, .. } => {
                        (op & libc::LOCK_UN != 0).then_some((*owner, true))
                    }
                };
                match whole_unlock {
                    Some((o, flock)) => log.retain(|h| match h {
                        Held::Record { owner, .. } => flock || *owner != o,
                        Held::Flock { owner, .. } => !flock || *owner != o,
                    }),
                    None => log.push(held),
                }
                if log.is_empty() {
                    self.locks.remove(&(export, fh));
                }
            }
            _ => {}
        }
    }

    /// Translates a batch of host changes to guest ids and records the entries they hand out.
    pub fn on_changes(&mut self, export: u32, changes: &mut [Change]) {
        let active = self.active;
        for c in changes.iter_mut() {
            if c.parent != 0 {
                c.parent = self.node_ids.guest_of(export, c.parent, active);
            }
            if c.to_parent != 0 {
                c.to_parent = self.node_ids.guest_of(export, c.to_parent, active);
            }
            let (parent, path) = match c.kind {
                ChangeKind::Renamed => (c.to_parent, &c.to),
                _ => (c.parent, &c.path),
            };
            let name = path.rsplit(|&b| b == b'/').next().unwrap_or(&[]).to_vec();
            if c.kind == ChangeKind::Removed && c.parent != 0 {
                self.unname(export, c.parent, &name);
            }
            if let Some(e) = c.entry.as_mut() {
                e.ino = self.node_ids.guest_of(export, e.ino, active);
                e.attr.ino = e.ino;
                // Without the parent's id the name cannot be looked up again: counted only.
                let name: &[u8] = if parent == 0 { &[] } else { &name };
                self.entry(export, e.ino, parent, name, e.attr.mode);
            }
        }
    }

    /// A `Forget` of guest counts: updates the book and returns what to send the server
    /// (server ids and counts).
    pub fn forget(&mut self, export: u32, nodes: &[(u64, u64)], up: bool) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(nodes.len());
        for &(ino, n) in nodes {
            let Some(node) = self.nodes.get_mut(&(export, ino)) else {
                if up && !self.active {
                    out.push((ino, n));
                }
                continue;
            };
            node.guest = node.guest.saturating_sub(n);
            let give = if node.guest == 0 {
                node.server
            } else {
                n.min(node.server.saturating_sub(1))
            };
            node.server -= give;
            if node.guest == 0 {
                let node = self.nodes.remove(&(export, ino)).expect("present");
                let key = (export, node.parent, node.name);
                if self.names.get(&key) == Some(&ino) {
                    self.names.remove(&key);
                }
            }
            let server = if self.active {
                self.node_ids.to_server.get(&(export, ino)).copied()
            } else {
                Some(ino)
            };
            if node_gone(&self.nodes, export, ino) {
                self.node_ids.unbind(export, ino);
            }
            if let Some(s) = server
                && give > 0
                && up
            {
                out.push((s, give));
            }
        }
        out
    }

    /// Forgets every server-side id (a new connection starts with none): nodes keep their
    /// guest counts, with no server lookups yet; handles and ids are rebound by the resume.
    pub fn reset_server(&mut self) {
        self.active = true;
        for n in self.nodes.values_mut() {
            n.server = 0;
        }
        self.node_ids.to_server.clear();
        self.node_ids.to_guest.clear();
        self.fh_ids.to_server.clear();
        self.fh_ids.to_guest.clear();
        // Fresh guest ids must clear every id the guest may still hold.
        let max_node = self.nodes.keys().map(|k| k.1).max().unwrap_or(0);
        let max_fh = self.handles.keys().map(|k| k.1).max().unwrap_or(0);
        self.node_ids.max_guest = self.node_ids.max_guest.max(max_node);
        self.fh_ids.max_guest = self.fh_ids.max_guest.max(max_fh);
    }

    /// Translates a request's ids from guest to server; ESTALE for a node, EBADF for a handle
    /// the new connection does not have.
    pub fn to_server(&self, export: u32, body: &mut Request<'_>) -> Result<(), Errno> {
        if !self.active {
            return Ok(());
        }
        let node = |g: &mut u64| -> Result<(), Errno> {
            if *g == ROOT_ID || *g == 0 {
                return Ok(());
            }
            *g = *self
                .node_ids
                .to_server
                .get(&(export, *g))
                .ok_or(Errno::ESTALE)?;
            Ok(())
        };
        let fh = |g: &mut u64| -> Result<(), Errno> {
            *g = *self
                .fh_ids
                .to_server
                .get(&(export, *g))
                .ok_or(Errno::EBADF)?;
            Ok(())
        };
        map_ids(body, node, fh)
    }
}

fn node_gone(nodes: &HashMap<Key, Node>, export: u32, ino: u64) -> bool {
    !nodes.contains_key(&(export, ino))
}

/// Applies `node` to every node id and `fh` to every handle of a request.
pub(super) fn map_ids(
    body: &mut Request<'_>,
    node: impl Fn(&mut u64) -> Result<(), Errno>,
    fh: impl Fn(&mut u64) -> Result<(), Errno>,
) -> Result<(), Errno> {
    use Request as R;
    match body {
        R::Lookup(b) => node(&mut b.parent),
        R::Forget(_) | R::Watch(_) | R::Replay(_) => Ok(()),
        R::Getattr(b) => {
            node(&mut b.ino)?;
            b.fh.as_mut().map_or(Ok(()), fh)
        }
        R::Setattr(b) => {
            node(&mut b.ino)?;
            b.fh.as_mut().map_or(Ok(()), fh)
        }
        R::Readlink(b) => node(&mut b.ino),
        R::Symlink(b) => node(&mut b.parent),
        R::Mknod(b) => node(&mut b.parent),
        R::Mkdir(b) => node(&mut b.parent),
        R::Unlink(b) => node(&mut b.parent),
        R::Rmdir(b) => node(&mut b.parent),
        R::Rename(b) => {
            node(&mut b.parent)?;
            node(&mut b.newparent)
        }
        R::Link(b) => {
            node(&mut b.ino)?;
            node(&mut b.newparent)
        }
        R::Open(b) => node(&mut b.ino),
        R::Create(b) => node(&mut b.parent),
        R::Read(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::Write(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::Flush(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::Release(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::Fsync(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::Opendir(b) => node(&mut b.ino),
        R::Readdir(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::Readdirplus(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::Releasedir(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::Fsyncdir(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::StatfsReq(b) => node(&mut b.ino),
        R::Access(b) => node(&mut b.ino),
        R::Getxattr(b) => node(&mut b.ino),
        R::Listxattr(b) => node(&mut b.ino),
        R::Setxattr(b) => node(&mut b.ino),
        R::Removexattr(b) => node(&mut b.ino),
        R::Fallocate(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::Lseek(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::CopyFileRange(b) => {
            node(&mut b.ino_in)?;
            fh(&mut b.fh_in)?;
            node(&mut b.ino_out)?;
            fh(&mut b.fh_out)
        }
        R::Getlk(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::Setlk(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
        R::Flock(b) => node(&mut b.ino).and_then(|()| fh(&mut b.fh)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::{Attr, Entry, Getattr, Lookup, Read, Rename};

    fn entry(ino: u64, mode: u32) -> Result<Reply<'static>, Errno> {
        Ok(Reply::Entry(Entry {
            ino,
            generation: 0,
            attr: Attr {
                ino,
                mode,
                ..Attr::default()
            },
        }))
    }

    fn look(b: &mut Book, parent: u64, name: &[u8], reply: Result<Reply<'static>, Errno>) -> u64 {
        let note = b.note(
            0,
            &Ctx::default(),
            &Request::Lookup(Lookup { parent, name }),
        );
        let mut r = reply;
        b.on_reply(0, note, &mut r);
        match r {
            Ok(Reply::Entry(e)) => e.ino,
            _ => 0,
        }
    }

    #[test]
    fn names_follow_renames_and_removals() {
        let mut b = Book::default();
        assert_eq!(look(&mut b, ROOT_ID, b"d", entry(2, libc::S_IFDIR)), 2);
        look(&mut b, 2, b"f", entry(3, libc::S_IFREG));
        let rename = Request::Rename(Rename {
            parent: 2,
            name: b"f",
            newparent: ROOT_ID,
            newname: b"g",
            flags: 0,
        });
        let note = b.note(0, &Ctx::default(), &rename);
        b.on_reply(0, note, &mut Ok(Reply::Empty));
        let n = &b.nodes[&(0, 3)];
        assert_eq!((n.parent, n.name.as_slice()), (ROOT_ID, &b"g"[..]));
        let unlink = Request::Unlink(ferry_protocol::Unlink {
            parent: ROOT_ID,
            name: b"g",
        });
        let note = b.note(0, &Ctx::default(), &unlink);
        b.on_reply(0, note, &mut Ok(Reply::Empty));
        assert!(
            b.nodes[&(0, 3)].name.is_empty(),
            "a removed name is not looked up again"
        );
    }

    #[test]
    fn after_a_resume_ids_are_translated_and_lookups_kept_until_the_last_forget() {
        let mut b = Book::default();
        look(&mut b, ROOT_ID, b"f", entry(7, libc::S_IFREG));
        look(&mut b, ROOT_ID, b"f", entry(7, libc::S_IFREG));
        assert_eq!(
            b.forget(0, &[(7, 1)], true),
            [(7, 1)],
            "identity before a resume"
        );
        look(&mut b, ROOT_ID, b"f", entry(7, libc::S_IFREG));
        // The resume finds node 7 as the new server's 2; the server holds one lookup.
        b.reset_server();
        b.node_ids.bind(0, 7, 2);
        b.nodes.get_mut(&(0, 7)).unwrap().server = 1;
        let mut read = Request::Read(Read {
            ino: 7,
            fh: 1,
            offset: 0,
            size: 1,
        });
        assert_eq!(
            b.to_server(0, &mut read),
            Err(Errno::EBADF),
            "handle not reopened"
        );
        let mut get = Request::Getattr(Getattr { ino: 7, fh: None });
        b.to_server(0, &mut get).unwrap();
        assert!(matches!(get, Request::Getattr(Getattr { ino: 2, .. })));
        let mut gone = Request::Getattr(Getattr { ino: 5, fh: None });
        assert_eq!(b.to_server(0, &mut gone), Err(Errno::ESTALE));
        // A node the new server numbers 5 is new to the guest: it gets a fresh id, not 5.
        let fresh = look(&mut b, ROOT_ID, b"h", entry(5, libc::S_IFREG));
        assert!(fresh > 7, "{fresh}");
        // The kernel holds two lookups of 7, the server one: the first forget sends nothing,
        // the last gives the server its one back.
        assert!(b.forget(0, &[(7, 1)], true).is_empty());
        assert_eq!(b.forget(0, &[(7, 1)], true), [(2, 1)]);
        assert!(!b.nodes.contains_key(&(0, 7)));
    }
}
