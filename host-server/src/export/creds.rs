//! Per-thread credentials: creating a file as the calling guest user.
//!
//! [`ExportSession::create_as`] translates the caller of a creating request into host ids (in
//! the id modes that create as the caller), and [`ExportSession::as_creator`] runs the one
//! creating system call with them.
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
//! real and saved uids stay 0, which keeps the permitted set, so switching back restores every
//! capability.
//!
//! [`Switched`] restores the server's credentials when it is dropped, on every path out,
//! unwinding included. A thread that cannot get its credentials back would go on serving
//! requests as somebody else, so that failure aborts the process.

use ferry_protocol::{Ctx, Errno};

use super::{ExportSession, sys};
use crate::ids::{GuestGid, GuestUid, HostGid, HostUid};

/// The credentials a switch returns to: the server's own, read once.
struct Server {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

fn server() -> &'static Server {
    static SERVER: std::sync::OnceLock<Server> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        // SAFETY: plain getters that cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let groups = nix::unistd::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        Server { uid, gid, groups }
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
}

impl Switched {
    /// Makes this thread act as `uid:gid` with supplementary `groups`. Nothing changes when
    /// that is the server's own identity (root creating as root).
    pub fn to(uid: HostUid, gid: HostGid, groups: &[HostGid]) -> Result<Switched, Errno> {
        let me = server();
        let mut s = Switched {
            uid_changed: false,
            gid_changed: false,
        };
        // Groups and gid first: once the effective uid is not 0, CAP_SETGID is gone.
        if gid.0 != me.gid || !groups.is_empty() || uid.0 != me.uid {
            let raw: Vec<libc::gid_t> = groups.iter().map(|g| g.0).collect();
            set_groups(&raw)?;
            s.gid_changed = true;
            set_egid(gid.0)?;
        }
        if uid.0 != me.uid {
            s.uid_changed = true;
            set_euid(uid.0)?;
        }
        Ok(s)
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
            result = set_egid(me.gid).and_then(|()| set_groups(&me.groups));
        }
        if let Err(e) = result {
            // Serving another request with a guest user's credentials would be far worse
            // than stopping.
            tracing::error!(error = ?e, "cannot restore the server's credentials; aborting");
            std::process::abort();
        }
    }
}

/// The host ids a creating request runs as, in modes that create as the caller.
#[derive(Debug)]
pub(crate) struct CreateAs {
    uid: HostUid,
    gid: HostGid,
    groups: Vec<HostGid>,
}

impl ExportSession {
    /// The host ids a creating request runs as: `None` in squash mode (the server creates as
    /// itself); EOVERFLOW for a caller without a host id, as an idmapped mount answers.
    pub(crate) fn create_as(&self, ctx: &Ctx) -> Result<Option<CreateAs>, Errno> {
        let mode = &self.export.ids.mode;
        if !mode.creates_as_caller() {
            return Ok(None);
        }
        let uid = mode
            .uid_to_host(GuestUid(ctx.uid))
            .ok_or(Errno::EOVERFLOW)?;
        let gid = mode
            .gid_to_host(GuestGid(ctx.gid))
            .ok_or(Errno::EOVERFLOW)?;
        // A supplementary group without a host id can grant nothing on the host.
        let groups = ctx
            .groups
            .iter()
            .filter_map(|&g| mode.gid_to_host(GuestGid(g)))
            .collect();
        Ok(Some(CreateAs { uid, gid, groups }))
    }

    /// Runs `f` (a creating system call) as the caller in modes that create as the caller.
    pub(crate) fn as_creator<T>(
        &self,
        who: &Option<CreateAs>,
        f: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        match who {
            None => f(),
            Some(c) => {
                let _switched = Switched::to(c.uid, c.gid, &c.groups)?;
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

        // A root caller with the server's gid changes nothing.
        let s = Switched::to(HostUid(0), HostGid(before.1), &[]).unwrap();
        assert!(!s.uid_changed && !s.gid_changed);
    }
}
