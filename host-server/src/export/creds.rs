//! Per-thread credentials: every guest request runs as the host identity its id mode gives.
//!
//! [`ExportSession::as_caller`] (for requests that change or read what permissions guard) and
//! [`ExportSession::as_creator`] (for requests that create) run their system calls with the
//! identity of [`ExportSession::identity`]:
//! - `passthrough`: creating requests run as the caller (their owner is the caller); other
//!   requests run as the server, and the guest kernel checks them (`permissions=guest`).
//!   Guest root is host root here, and only here.
//! - `map`: every request runs as the caller's mapped uid, gid and groups; a caller without a
//!   host id acts as [`NO_ID`], an id that owns nothing (creating is EOVERFLOW, as an idmapped
//!   mount answers). Guest root gets the filesystem capabilities ([`FS_CAPS`]) only over inodes
//!   whose owner and group are both mapped: the kernel's `capable_wrt_inode_uidgid` rule for
//!   root in a user namespace whose ids are the mapped range. So it may chown and chmod among
//!   mapped ids, but not write, chmod or chown a host file owned by an unmapped user.
//! - `squash`: every request runs as the server's user; a server running as root does so
//!   without capabilities, so the guest can reach what the server's uid owns and nothing more.
//!
//! On Linux, credentials belong to each thread; it is glibc that makes `setuid(2)` and friends
//! apply to every thread of the process (it signals them all). The raw system calls change only
//! the calling thread, so one worker can create a file as uid 1000 while another creates one as
//! uid 999, with no lock and no race. This is what virtiofsd does.
//!
//! The effective ids are switched (`setresuid(-1, uid, -1)`), not only the filesystem ids
//! (`setfsuid`): changing the effective uid from 0 clears every capability from the effective
//! set, so the host kernel treats the request exactly as the user's own (CAP_SYS_RESOURCE
//! gone: quotas and the blocks reserved for root apply; CAP_FSETID gone: a set-group-id bit the
//! caller may not set is cleared), and `setresuid` reports failure where `setfsuid` cannot. The
//! real and saved uids stay 0, which keeps the permitted set, so the effective set can be
//! raised again (`capset`, for guest root over mapped inodes) and switching back restores
//! every capability.
//!
//! [`Switched`] restores the server's credentials when it is dropped, on every path out,
//! unwinding included. A thread that cannot get its credentials back would go on serving
//! requests as somebody else, so that failure aborts the process.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use ferry_protocol::{Ctx, Errno};

use super::{ExportSession, sys};
use crate::ids::{GuestGid, GuestUid, HostGid, HostUid, IdMode};

/// The host id a map-mode caller without a mapping acts as: one that owns nothing, so only the
/// "other" permission bits apply to it (an idmapped mount treats an unmapped caller so).
pub const NO_ID: u32 = u32::MAX - 1;

/// The capabilities root in a user namespace has over inodes it maps: CAP_CHOWN,
/// CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID and CAP_MKNOD (device nodes
/// stay behind the export's `devices=on`).
pub const FS_CAPS: u32 = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4 | 1 << 27;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two data words.
const CAP_V3: u32 = 0x2008_0522;

/// This thread's capability sets.
fn capget() -> Result<[CapData; 2], Errno> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: both pointers are valid for the sizes the v3 ABI reads and writes.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut CapHeader, d.as_mut_ptr()) };
    if ret < 0 {
        Err(sys::last_errno())
    } else {
        Ok(d)
    }
}

/// Sets this thread's capability sets (the raw call changes only the calling thread).
fn capset(d: &[CapData; 2]) -> Result<(), Errno> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: both pointers are valid for the sizes the v3 ABI reads.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, d.as_ptr()) };
    if ret < 0 {
        Err(sys::last_errno())
    } else {
        Ok(())
    }
}

/// The credentials a switch returns to: the server's own, read once.
struct Server {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    caps: [CapData; 2],
}

impl Server {
    /// Whether the server holds any effective capability (it runs as root).
    fn privileged(&self) -> bool {
        self.caps.iter().any(|c| c.effective != 0)
    }
}

/// The server's own effective uid.
pub(crate) fn server_uid() -> libc::uid_t {
    server().uid
}

fn server() -> &'static Server {
    static SERVER: std::sync::OnceLock<Server> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        // SAFETY: plain getters that cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let groups = nix::unistd::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        let caps = capget().unwrap_or_default();
        Server {
            uid,
            gid,
            groups,
            caps,
        }
    })
}

/// `setresuid(-1, euid, -1)` for this thread only.
fn set_euid(uid: libc::uid_t) -> Result<(), Errno> {
    // SAFETY: a raw system call with integer arguments; it changes only this thread.
    let ret = unsafe { libc::syscall(libc::SYS_setresuid, -1i32, uid, -1i32) };
    if ret < 0 {
        Err(sys::last_errno())
    } else {
        Ok(())
    }
}

/// `setresgid(-1, egid, -1)` for this thread only.
fn set_egid(gid: libc::gid_t) -> Result<(), Errno> {
    // SAFETY: a raw system call with integer arguments; it changes only this thread.
    let ret = unsafe { libc::syscall(libc::SYS_setresgid, -1i32, gid, -1i32) };
    if ret < 0 {
        Err(sys::last_errno())
    } else {
        Ok(())
    }
}

/// `setgroups(2)` for this thread only.
fn set_groups(groups: &[libc::gid_t]) -> Result<(), Errno> {
    // SAFETY: the kernel reads `groups.len()` gids from the pointer, which is valid for that
    // many (a dangling but non-null pointer with length 0 is never read).
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if ret < 0 {
        Err(sys::last_errno())
    } else {
        Ok(())
    }
}

/// This thread runs as another user until the value is dropped.
#[must_use = "the credentials are restored when this is dropped"]
#[derive(Debug)]
pub(crate) struct Switched {
    uid_changed: bool,
    gid_changed: bool,
    groups_changed: bool,
    caps_changed: bool,
}

impl Switched {
    /// Makes this thread act as `uid:gid` with supplementary `groups`. Nothing changes when
    /// that is the server's own identity (root creating as root).
    #[cfg(test)]
    pub fn to(uid: HostUid, gid: HostGid, groups: &[HostGid]) -> Result<Switched, Errno> {
        Switched::with_caps(uid, gid, groups, None)
    }

    /// [`Self::to`], then, when `caps` is given, sets the effective capabilities to `caps`
    /// (the low word; bits the server does not hold are left out).
    pub fn with_caps(
        uid: HostUid,
        gid: HostGid,
        groups: &[HostGid],
        caps: Option<u32>,
    ) -> Result<Switched, Errno> {
        let me = server();
        let mut s = Switched {
            uid_changed: false,
            gid_changed: false,
            groups_changed: false,
            caps_changed: false,
        };
        // Groups and gid first: once the effective uid is not 0, CAP_SETGID is gone. Each
        // change costs a credential commit (about 3 us), so only what differs is changed.
        let raw: Vec<libc::gid_t> = groups.iter().map(|g| g.0).collect();
        if raw != me.groups {
            s.groups_changed = true;
            set_groups(&raw)?;
        }
        if gid.0 != me.gid {
            s.gid_changed = true;
            set_egid(gid.0)?;
        }
        if uid.0 != me.uid {
            s.uid_changed = true;
            set_euid(uid.0)?;
        }
        if let Some(caps) = caps {
            // Leaving uid 0 already emptied the effective set.
            if caps != 0 || !s.uid_changed || me.uid != 0 {
                s.set_caps(caps)?;
            }
        }
        Ok(s)
    }

    /// The server's uid and gids with no effective capability.
    fn unprivileged() -> Result<Switched, Errno> {
        let mut s = Switched {
            uid_changed: false,
            gid_changed: false,
            groups_changed: false,
            caps_changed: false,
        };
        s.set_caps(0)?;
        Ok(s)
    }

    fn set_caps(&mut self, caps: u32) -> Result<(), Errno> {
        let me = server();
        let mut d = me.caps;
        d[0].effective = caps & d[0].permitted;
        d[1].effective = 0;
        self.caps_changed = true;
        capset(&d)
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        let me = server();
        let mut result = Ok(());
        if self.uid_changed {
            result = set_euid(me.uid);
        }
        if self.gid_changed && result.is_ok() {
            result = set_egid(me.gid);
        }
        if self.groups_changed && result.is_ok() {
            result = set_groups(&me.groups);
        }
        // Going back to uid 0 makes the effective set the permitted one again, which is the
        // server's own unless it started with a smaller effective set.
        let by_uid =
            self.uid_changed && me.uid == 0 && me.caps.iter().all(|c| c.effective == c.permitted);
        if self.caps_changed && !by_uid && result.is_ok() {
            result = capset(&me.caps);
        }
        if let Err(e) = result {
            // Serving another request with a guest user's credentials would be far worse
            // than stopping.
            tracing::error!(error = ?e, "cannot restore the server's credentials; aborting");
            std::process::abort();
        }
    }
}

/// Which capabilities a [`Identity::User`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caps {
    /// Whatever the uid switch leaves (root keeps all, anyone else none): passthrough.
    Uid,
    /// None at all.
    None,
    /// [`FS_CAPS`] when every inode the request works on has a mapped owner and group, none
    /// otherwise: guest root in map mode.
    OverMapped,
}

/// The host identity one request runs as.
#[derive(Debug)]
pub(crate) enum Identity {
    /// The server's own credentials.
    Server,
    /// The server's uid and gids without capabilities (squash mode, server running as root).
    ServerUnprivileged,
    /// A host user.
    User {
        uid: HostUid,
        gid: HostGid,
        groups: Vec<HostGid>,
        caps: Caps,
    },
}

/// An inode a request works on, for guest root's capabilities in map mode.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Over<'a> {
    /// The object itself.
    Node(BorrowedFd<'a>),
    /// `name` in directory `dir`, when it exists (an existing file a creating open opens).
    Child(BorrowedFd<'a>, &'a CStr),
    /// `name` in directory `dir`, when it exists and `dir` is sticky (removing or replacing
    /// it then needs power over it, not only over the directory).
    StickyChild(BorrowedFd<'a>, &'a CStr),
}

impl ExportSession {
    /// The host identity a request of `ctx` runs as (see the module's documentation).
    /// `creating` requests of a map-mode caller without a host id are EOVERFLOW.
    pub(crate) fn identity(&self, ctx: &Ctx, creating: bool) -> Result<Identity, Errno> {
        let mode = &self.export.ids.mode;
        let squashed = || {
            if server().privileged() {
                Identity::ServerUnprivileged
            } else {
                Identity::Server
            }
        };
        let (uid, gid, caps) = match mode {
            IdMode::Squash { .. } => return Ok(squashed()),
            IdMode::Passthrough if !creating => return Ok(Identity::Server),
            IdMode::Passthrough => (
                mode.uid_to_host(GuestUid(ctx.uid)),
                mode.gid_to_host(GuestGid(ctx.gid)),
                Caps::Uid,
            ),
            IdMode::Map(_) => {
                let uid = mode.uid_to_host(GuestUid(ctx.uid));
                let caps = if ctx.uid == 0 && uid.is_some() {
                    Caps::OverMapped
                } else {
                    Caps::None
                };
                (uid, mode.gid_to_host(GuestGid(ctx.gid)), caps)
            }
        };
        let (uid, gid) = match (uid, gid) {
            (Some(u), Some(g)) => (u, g),
            // An idmapped mount refuses to create as an unmapped caller.
            _ if creating => return Err(Errno::EOVERFLOW),
            (u, g) => (u.unwrap_or(HostUid(NO_ID)), g.unwrap_or(HostGid(NO_ID))),
        };
        // A supplementary group without a host id can grant nothing on the host.
        let groups = ctx
            .groups
            .iter()
            .filter_map(|&g| mode.gid_to_host(GuestGid(g)))
            .collect();
        Ok(Identity::User {
            uid,
            gid,
            groups,
            caps,
        })
    }

    /// Whether the host object of `st` has an owner and a group the export's ranges map.
    fn maps(&self, st: &libc::stat) -> bool {
        match &self.export.ids.mode {
            IdMode::Map(m) => {
                m.uid_to_guest(HostUid(st.st_uid)).is_some()
                    && m.gid_to_guest(HostGid(st.st_gid)).is_some()
            }
            _ => false,
        }
    }

    /// Whether every inode of `over` has a mapped owner and group.
    fn maps_all(&self, over: &[Over<'_>]) -> bool {
        over.iter().all(|o| match *o {
            Over::Node(fd) => sys::fstat(fd).is_ok_and(|st| self.maps(&st)),
            Over::Child(dir, name) => match sys::fstatat_nofollow(dir, name) {
                Ok(st) => self.maps(&st),
                Err(_) => true,
            },
            Over::StickyChild(dir, name) => {
                match sys::fstat(dir) {
                    Ok(d) if d.st_mode & libc::S_ISVTX == 0 => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
                match sys::fstatat_nofollow(dir, name) {
                    Ok(st) => self.maps(&st),
                    Err(_) => true,
                }
            }
        })
    }

    /// Runs `f` as the host identity of a request of `ctx` that works on the inodes `over`.
    pub(crate) fn as_caller<T>(
        &self,
        ctx: &Ctx,
        over: &[Over<'_>],
        f: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let id = self.identity(ctx, false)?;
        self.run_as(&id, over, f)
    }

    /// [`Self::as_caller`] for a creating request: in map mode a caller without a host id is
    /// EOVERFLOW.
    pub(crate) fn as_creator<T>(
        &self,
        ctx: &Ctx,
        over: &[Over<'_>],
        f: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let id = self.identity(ctx, true)?;
        self.run_as(&id, over, f)
    }

    /// Runs `f` as `id`, restoring the server's credentials afterwards.
    pub(crate) fn run_as<T>(
        &self,
        id: &Identity,
        over: &[Over<'_>],
        f: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        match id {
            Identity::Server => f(),
            Identity::ServerUnprivileged => {
                let _switched = Switched::unprivileged()?;
                f()
            }
            Identity::User {
                uid,
                gid,
                groups,
                caps,
            } => {
                let caps = match caps {
                    Caps::Uid => None,
                    Caps::None => Some(0),
                    Caps::OverMapped if self.maps_all(over) => Some(FS_CAPS),
                    Caps::OverMapped => Some(0),
                };
                let _switched = Switched::with_caps(*uid, *gid, groups, caps)?;
                f()
            }
        }
    }
}

/// The effective uid, gid and groups of the calling thread (for tests and diagnostics).
#[cfg(test)]
pub(crate) fn current() -> (u32, u32, Vec<u32>) {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("")
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    (field("Uid:")[1], field("Gid:")[1], field("Groups:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_one_thread_and_restores_it() {
        if server().uid != 0 {
            eprintln!("SKIPPED switches_one_thread_and_restores_it: needs root");
            return;
        }
        let before = current();
        let other = std::thread::spawn(|| {
            let _s = Switched::to(HostUid(1234), HostGid(2345), &[HostGid(7), HostGid(8)]).unwrap();
            let inside = current();
            std::thread::sleep(std::time::Duration::from_millis(50));
            inside
        });
        // While the other thread runs as 1234, this one is still root.
        std::thread::sleep(std::time::Duration::from_millis(10));
        assert_eq!(current(), before);
        assert_eq!(other.join().unwrap(), (1234, 2345, vec![7, 8]));

        // Dropping restores, also when the switched code panics.
        let r = std::thread::spawn(move || {
            let caught = std::panic::catch_unwind(|| {
                let _s = Switched::to(HostUid(1000), HostGid(1000), &[]).unwrap();
                panic!("inside");
            });
            assert!(caught.is_err());
            current()
        });
        assert_eq!(r.join().unwrap(), before);

        // Capabilities raised over a switched uid, and dropped while keeping uid 0, come back.
        let cap_eff = || {
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .unwrap();
            u64::from_str_radix(v.trim(), 16).unwrap()
        };
        let full = cap_eff();
        {
            let _s = Switched::with_caps(HostUid(1234), HostGid(1234), &[], Some(FS_CAPS)).unwrap();
            assert_eq!(cap_eff(), u64::from(FS_CAPS) & full);
        }
        assert_eq!((cap_eff(), current()), (full, before.clone()));
        {
            let _s = Switched::unprivileged().unwrap();
            assert_eq!(cap_eff(), 0);
        }
        assert_eq!((cap_eff(), current()), (full, before.clone()));

        // A root caller with the server's gid changes nothing.
        let s = Switched::to(HostUid(0), HostGid(before.1), &[]).unwrap();
        assert!(!s.uid_changed && !s.gid_changed && !s.caps_changed);
        assert_eq!(s.groups_changed, !server().groups.is_empty());
    }
}
