//! Conversions between the export core's types and the FUSE wire structs of
//! [`abi`](super::abi): attributes, entries, open handles, attribute changes, xattr replies
//! and the RENAME/RENAME2 arguments. No I/O and no calls into the export core.

use std::time::Duration;

use ferry_protocol::{Attr, Entry, Opened, SetTime, Timespec};
use zerocopy::IntoBytes;

use super::abi::{self, Args, DecodeError, fattr, opcode};
use crate::export::{SetAttrs, XattrReply};
use crate::ids::{GuestGid, GuestUid};

/// A `fuse_entry_out` valid for `ttl` (names and attributes alike).
pub(super) fn entry_out(e: &Entry, ttl: Duration) -> abi::EntryOut {
    abi::EntryOut {
        nodeid: e.ino,
        generation: e.generation,
        entry_valid: ttl.as_secs(),
        attr_valid: ttl.as_secs(),
        entry_valid_nsec: ttl.subsec_nanos(),
        attr_valid_nsec: ttl.subsec_nanos(),
        attr: attr_out(&e.attr),
    }
}

/// A `fuse_attr_out` valid for `ttl`.
pub(super) fn attr_reply(a: &Attr, ttl: Duration) -> abi::AttrOut {
    abi::AttrOut {
        attr_valid: ttl.as_secs(),
        attr_valid_nsec: ttl.subsec_nanos(),
        dummy: 0,
        attr: attr_out(a),
    }
}

/// The body of a GETXATTR or LISTXATTR reply: a `fuse_getxattr_out` with the size asked
/// for, or the value (name list) itself.
pub(super) fn xattr_reply(r: XattrReply) -> Vec<u8> {
    match r {
        XattrReply::Size(size) => abi::GetxattrOut { size, padding: 0 }.as_bytes().to_vec(),
        XattrReply::Data(d) => d,
    }
}

/// A `fuse_attr`.
pub(super) fn attr_out(a: &Attr) -> abi::Attr {
    abi::Attr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.sec as u64,
        mtime: a.mtime.sec as u64,
        ctime: a.ctime.sec as u64,
        atimensec: a.atime.nsec,
        mtimensec: a.mtime.nsec,
        ctimensec: a.ctime.nsec,
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// A `fuse_open_out`.
pub(super) fn open_out(o: &Opened) -> abi::OpenOut {
    abi::OpenOut {
        fh: o.fh,
        open_flags: o.open_flags,
        backing_id: 0,
    }
}

/// The attribute changes a `fuse_setattr_in` asks for.
pub(super) fn set_attrs(a: &abi::SetattrIn) -> SetAttrs {
    let v = a.valid;
    let time = |set: u32, now: u32, sec: u64, nsec: u32| {
        if v & now != 0 {
            Some(SetTime::Now)
        } else if v & set != 0 {
            Some(SetTime::At(Timespec {
                sec: sec as i64,
                nsec,
            }))
        } else {
            None
        }
    };
    SetAttrs {
        mode: (v & fattr::MODE != 0).then_some(a.mode),
        uid: (v & fattr::UID != 0).then_some(GuestUid(a.uid)),
        gid: (v & fattr::GID != 0).then_some(GuestGid(a.gid)),
        size: (v & fattr::SIZE != 0).then_some(a.size),
        atime: time(fattr::ATIME, fattr::ATIME_NOW, a.atime, a.atimensec),
        mtime: time(fattr::MTIME, fattr::MTIME_NOW, a.mtime, a.mtimensec),
        kill_suidgid: v & fattr::KILL_SUIDGID != 0,
    }
}

/// The arguments of a RENAME (which has no flags) or RENAME2.
pub(super) struct RenameArgs<'a> {
    /// The target directory.
    pub newdir: u64,
    /// `RENAME_*` flags (0 for RENAME).
    pub flags: u32,
    /// The source name.
    pub old: &'a [u8],
    /// The target name.
    pub new: &'a [u8],
}

/// Decodes the arguments of a RENAME (`op`) or RENAME2.
pub(super) fn rename_args<'a>(op: u32, args: &mut Args<'a>) -> Result<RenameArgs<'a>, DecodeError> {
    let (newdir, flags) = if op == opcode::RENAME {
        (args.obj::<abi::RenameIn>()?.newdir, 0)
    } else {
        let r: abi::Rename2In = args.obj()?;
        (r.newdir, r.flags)
    };
    Ok(RenameArgs {
        newdir,
        flags,
        old: args.name()?,
        new: args.name()?,
    })
}
