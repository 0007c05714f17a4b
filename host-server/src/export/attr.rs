//! Attributes between the host and the protocol: a host `stat` turned into an [`Attr`], with
//! the owner and mode the guest is shown; a protocol time as `utimensat` takes it; and the
//! kernel's 32-bit device number encoding both ways.
//!
//! A leaf: it knows nothing of sessions or owner records. `owners.rs` decides what the guest
//! is shown ([`Presented`]); this module only writes it into the reply's shape.

use ferry_protocol::{Attr, SetTime, Timespec};

use crate::ids::{GuestGid, GuestUid};

/// How a node looks to the guest: the owner and mode it is shown, which need not be the host's
/// (id translation, persisted owners: see `owners.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Presented {
    pub uid: GuestUid,
    pub gid: GuestGid,
    /// `st_mode` to show, file type bits included.
    pub mode: u32,
}

/// Converts a timespec from `stat`.
fn timespec(sec: i64, nsec: i64) -> Timespec {
    Timespec {
        sec,
        nsec: u32::try_from(nsec).unwrap_or(0),
    }
}

/// A protocol time as the `timespec` utimensat takes.
pub(crate) fn utime(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(t)) => libc::timespec {
            tv_sec: t.sec,
            // Out-of-range nanoseconds are passed on so the kernel answers EINVAL.
            tv_nsec: libc::c_long::from(t.nsec.min(i32::MAX as u32) as i32),
        },
    }
}

/// Encodes a host `dev_t` the way the Linux kernel's `new_encode_dev` does, which is what a
/// FUSE attribute's 32-bit `rdev` carries.
fn encode_rdev(rdev: u64) -> u32 {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)) as u32
}

/// Decodes a FUSE request's 32-bit `rdev` (the kernel's `new_encode_dev` form) into a host
/// `dev_t`.
pub(crate) fn decode_rdev(rdev: u32) -> libc::dev_t {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// Attributes from a host stat and how the node looks to the guest (`shown`). `ino` is the
/// host's inode number, not the node id: a node id is handed out afresh when the guest kernel
/// forgets a node and looks it up again, and `st_ino` must stay the same for as long as the
/// object lives (GNU tar, git and rsync compare it).
pub(crate) fn from_stat(st: &libc::stat, shown: Presented) -> Attr {
    Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: timespec(st.st_atime, st.st_atime_nsec),
        mtime: timespec(st.st_mtime, st.st_mtime_nsec),
        ctime: timespec(st.st_ctime, st.st_ctime_nsec),
        mode: shown.mode,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: shown.uid.0,
        gid: shown.gid.0,
        rdev: encode_rdev(st.st_rdev),
        blksize: u32::try_from(st.st_blksize).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdev_encoding_matches_the_kernel() {
        // makedev(8, 1) in glibc's layout is 0x801; the kernel's new encoding is the same for
        // small numbers.
        assert_eq!(encode_rdev(libc::makedev(8, 1)), 0x801);
        // A large minor moves into the high bits: new_encode_dev(1, 0x12345).
        let dev = libc::makedev(1, 0x12345);
        assert_eq!(encode_rdev(dev), 0x45 | (1 << 8) | (0x123 << 20));
        for (major, minor) in [(1, 3), (8, 1), (0xfff, 0xfffff), (259, 0x12345)] {
            let dev = libc::makedev(major, minor);
            assert_eq!(decode_rdev(encode_rdev(dev)), dev, "{major}:{minor}");
        }
    }
}
