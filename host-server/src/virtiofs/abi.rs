//! The FUSE wire format as the Linux virtio-fs driver speaks it, as plain `#[repr(C)]` structs.
//!
//! Every request starts with a 40-byte [`InHeader`] (total length, opcode, unique id, node id,
//! caller uid/gid/pid), followed by an opcode-specific argument struct and, for some opcodes,
//! NUL-terminated names or raw data. Every reply starts with a 16-byte [`OutHeader`] (total
//! length, negative errno or 0, the request's unique id) followed by the reply struct.
//! The layouts are those of `include/uapi/linux/fuse.h` (protocol 7.31 and later); the
//! golden-byte tests at the bottom pin them.
//!
//! Decoding goes through [`Args`], a cursor that returns a typed [`DecodeError`] on short or
//! malformed input and never panics.

use ferry_protocol::sizes::{self, dirent_size};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// FUSE kernel protocol major version.
pub const KERNEL_VERSION: u32 = 7;
/// The minor version this server speaks (7.32: submount announcements; 7.33: the server
/// clears set-id bits, FUSE_HANDLE_KILLPRIV_V2).
pub const KERNEL_MINOR_VERSION: u32 = 33;
/// The oldest minor version accepted (7.31 is the first with virtio-fs).
pub const MIN_KERNEL_MINOR_VERSION: u32 = 31;

/// `fuse_attr.flags`: this directory is a mount point on the host; a kernel that negotiated
/// [`init_flags::SUBMOUNTS`] makes it an automounted submount with its own `st_dev`.
pub const ATTR_SUBMOUNT: u32 = 1 << 0;

/// Opcodes (`enum fuse_opcode`).
#[allow(missing_docs)]
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const SYNCFS: u32 = 50;
}

/// `FUSE_INIT` capability flags this server uses.
#[allow(missing_docs)]
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const DONT_MASK: u32 = 1 << 6;
    pub const AUTO_INVAL_DATA: u32 = 1 << 12;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const POSIX_ACL: u32 = 1 << 20;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const SUBMOUNTS: u32 = 1 << 27;
    pub const HANDLE_KILLPRIV_V2: u32 = 1 << 28;
}

/// `fuse_open_out.open_flags`: keep the cached data (for a directory, its cached listing)
/// across opens.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `fuse_open_out.open_flags`: the kernel may cache this directory's listing.
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;

/// `fuse_write_in.write_flags`: the writer lacks CAP_FSETID; clear the set-id bits.
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `fuse_open_in.open_flags` / `fuse_create_in.open_flags`: an O_TRUNC open by a caller
/// without CAP_FSETID; clear the set-id bits.
pub const OPEN_KILL_SUIDGID: u32 = 1 << 0;

/// `fuse_setattr_in.valid` bits.
#[allow(missing_docs)]
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    /// Truncate by a caller without CAP_FSETID, or chown of a non-directory: clear the
    /// set-id bits.
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `fuse_getattr_in.getattr_flags`: the `fh` field is valid.
pub const GETATTR_FH: u32 = 1;

macro_rules! wire {
    ($( $(#[$m:meta])* $name:ident { $( $f:ident : $t:ty ),* $(,)? } )*) => {
        $(
            $(#[$m])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
            #[allow(missing_docs)]
            pub struct $name { $( pub $f: $t, )* }
        )*
    };
}

wire! {
    /// `fuse_in_header` (40 bytes).
    InHeader { len: u32, opcode: u32, unique: u64, nodeid: u64, uid: u32, gid: u32, pid: u32, total_extlen: u16, padding: u16 }
    /// `fuse_out_header` (16 bytes).
    OutHeader { len: u32, error: i32, unique: u64 }
    /// The first 16 bytes of `fuse_init_in`; 7.36+ kernels append `flags2` and padding.
    InitIn { major: u32, minor: u32, max_readahead: u32, flags: u32 }
    /// `fuse_init_out` (64 bytes).
    InitOut {
        major: u32, minor: u32, max_readahead: u32, flags: u32, max_background: u16,
        congestion_threshold: u16, max_write: u32, time_gran: u32, max_pages: u16,
        map_alignment: u16, flags2: u32, max_stack_depth: u32, unused: [u32; 6],
    }
    /// `fuse_attr` (88 bytes).
    Attr {
        ino: u64, size: u64, blocks: u64, atime: u64, mtime: u64, ctime: u64, atimensec: u32,
        mtimensec: u32, ctimensec: u32, mode: u32, nlink: u32, uid: u32, gid: u32, rdev: u32,
        blksize: u32, flags: u32,
    }
    /// `fuse_entry_out` (128 bytes).
    EntryOut { nodeid: u64, generation: u64, entry_valid: u64, attr_valid: u64, entry_valid_nsec: u32, attr_valid_nsec: u32, attr: Attr }
    /// `fuse_attr_out` (104 bytes).
    AttrOut { attr_valid: u64, attr_valid_nsec: u32, dummy: u32, attr: Attr }
    /// `fuse_getattr_in`.
    GetattrIn { getattr_flags: u32, dummy: u32, fh: u64 }
    /// `fuse_setattr_in` (88 bytes).
    SetattrIn {
        valid: u32, padding: u32, fh: u64, size: u64, lock_owner: u64, atime: u64, mtime: u64,
        ctime: u64, atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32, unused4: u32,
        uid: u32, gid: u32, unused5: u32,
    }
    /// `fuse_mknod_in`, followed by the name.
    MknodIn { mode: u32, rdev: u32, umask: u32, padding: u32 }
    /// `fuse_mkdir_in`, followed by the name.
    MkdirIn { mode: u32, umask: u32 }
    /// `fuse_rename_in`, followed by the old and new names.
    RenameIn { newdir: u64 }
    /// `fuse_rename2_in`, followed by the old and new names.
    Rename2In { newdir: u64, flags: u32, padding: u32 }
    /// `fuse_link_in`, followed by the new name.
    LinkIn { oldnodeid: u64 }
    /// `fuse_open_in` (OPEN and OPENDIR).
    OpenIn { flags: u32, open_flags: u32 }
    /// `fuse_open_out`.
    OpenOut { fh: u64, open_flags: u32, backing_id: i32 }
    /// `fuse_create_in`, followed by the name.
    CreateIn { flags: u32, mode: u32, umask: u32, open_flags: u32 }
    /// `fuse_read_in` (READ, READDIR, READDIRPLUS).
    ReadIn { fh: u64, offset: u64, size: u32, read_flags: u32, lock_owner: u64, flags: u32, padding: u32 }
    /// `fuse_write_in`, followed by the data.
    WriteIn { fh: u64, offset: u64, size: u32, write_flags: u32, lock_owner: u64, flags: u32, padding: u32 }
    /// `fuse_write_out`.
    WriteOut { size: u32, padding: u32 }
    /// `fuse_release_in` (RELEASE and RELEASEDIR).
    ReleaseIn { fh: u64, flags: u32, release_flags: u32, lock_owner: u64 }
    /// `fuse_flush_in`.
    FlushIn { fh: u64, unused: u32, padding: u32, lock_owner: u64 }
    /// `fuse_fsync_in` (FSYNC and FSYNCDIR).
    FsyncIn { fh: u64, fsync_flags: u32, padding: u32 }
    /// `fuse_forget_in`.
    ForgetIn { nlookup: u64 }
    /// `fuse_batch_forget_in`, followed by `count` [`ForgetOne`].
    BatchForgetIn { count: u32, dummy: u32 }
    /// `fuse_forget_one`.
    ForgetOne { nodeid: u64, nlookup: u64 }
    /// `fuse_statfs_out` (`fuse_kstatfs`, 80 bytes).
    StatfsOut {
        blocks: u64, bfree: u64, bavail: u64, files: u64, ffree: u64, bsize: u32, namelen: u32,
        frsize: u32, padding: u32, spare: [u32; 6],
    }
    /// `fuse_access_in`.
    AccessIn { mask: u32, padding: u32 }
    /// `fuse_getxattr_in` (GETXATTR, followed by the name, and LISTXATTR).
    GetxattrIn { size: u32, padding: u32 }
    /// `fuse_getxattr_out`: the size a value or list needs.
    GetxattrOut { size: u32, padding: u32 }
    /// `fuse_setxattr_in` without FUSE_SETXATTR_EXT, followed by the name and the value.
    SetxattrIn { size: u32, flags: u32 }
    /// `fuse_fallocate_in`.
    FallocateIn { fh: u64, offset: u64, length: u64, mode: u32, padding: u32 }
    /// `fuse_lseek_in`.
    LseekIn { fh: u64, offset: u64, whence: u32, padding: u32 }
    /// `fuse_lseek_out`.
    LseekOut { offset: u64 }
    /// The fixed part of `fuse_dirent` (24 bytes); the name follows, padded to 8 bytes.
    Dirent { ino: u64, off: u64, namelen: u32, typ: u32 }
}

/// Why a request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header or an argument struct needs.
    #[error("request truncated: {what} needs {need} bytes, {have} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// A name without its terminating NUL.
    #[error("name without a terminating NUL")]
    Unterminated,
    /// The header's length disagrees with the bytes received.
    #[error("header says {header} bytes, {have} received")]
    BadLength {
        /// Length in the header.
        header: u32,
        /// Bytes received.
        have: usize,
    },
}

/// A cursor over the bytes of one request's arguments.
#[derive(Clone, Debug)]
pub struct Args<'a> {
    rest: &'a [u8],
}

impl<'a> Args<'a> {
    /// A cursor over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Args { rest: bytes }
    }

    /// Reads one fixed-size struct.
    pub fn obj<T: FromBytes + KnownLayout + Immutable>(&mut self) -> Result<T, DecodeError> {
        match T::read_from_prefix(self.rest) {
            Ok((v, rest)) => {
                self.rest = rest;
                Ok(v)
            }
            Err(_) => Err(DecodeError::Truncated {
                what: std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("struct"),
                need: size_of::<T>(),
                have: self.rest.len(),
            }),
        }
    }

    /// Reads a NUL-terminated name (without the NUL).
    pub fn name(&mut self) -> Result<&'a [u8], DecodeError> {
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Unterminated)?;
        let (name, rest) = self.rest.split_at(end);
        self.rest = &rest[1..];
        Ok(name)
    }

    /// Takes `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated {
                what: "data",
                need: n,
                have: self.rest.len(),
            });
        }
        let (b, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(b)
    }

    /// Everything not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

/// Splits a request into its header and argument cursor, checking the header's length.
pub fn parse_request(bytes: &[u8]) -> Result<(InHeader, Args<'_>), DecodeError> {
    let mut args = Args::new(bytes);
    let header: InHeader = args.obj()?;
    if header.len as usize != bytes.len() {
        return Err(DecodeError::BadLength {
            header: header.len,
            have: bytes.len(),
        });
    }
    Ok((header, args))
}

/// A whole reply: header and body parts, with the length filled in.
pub fn reply(unique: u64, error: i32, body: &[&[u8]]) -> Vec<u8> {
    let len = size_of::<OutHeader>() + body.iter().map(|b| b.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    let header = OutHeader {
        len: len as u32,
        error,
        unique,
    };
    out.extend_from_slice(header.as_bytes());
    for b in body {
        out.extend_from_slice(b);
    }
    out
}

/// An error reply (`errno` positive, as in [`ferry_protocol::Errno`]).
pub fn error_reply(unique: u64, errno: i32) -> Vec<u8> {
    reply(unique, -errno, &[])
}

/// Appends one `fuse_dirent` (header, name, zero padding to 8 bytes) to `out`.
pub fn push_dirent(out: &mut Vec<u8>, ino: u64, off: u64, typ: u32, name: &[u8]) {
    let d = Dirent {
        ino,
        off,
        namelen: name.len() as u32,
        typ,
    };
    out.extend_from_slice(d.as_bytes());
    out.extend_from_slice(name);
    out.resize(
        out.len() + dirent_size(name.len()) - size_of::<Dirent>() - name.len(),
        0,
    );
}

// The sizes the export core budgets listings with are these structs'.
const _: () = assert!(size_of::<Dirent>() == sizes::DIRENT_HEADER);
const _: () = assert!(size_of::<EntryOut>() == sizes::ENTRY_OUT);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<InitOut>(), 64);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<SetattrIn>(), 88);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<WriteIn>(), 40);
        assert_eq!(size_of::<ReleaseIn>(), 24);
        assert_eq!(size_of::<FlushIn>(), 24);
        assert_eq!(size_of::<StatfsOut>(), 80);
        assert_eq!(size_of::<OpenOut>(), 16);
        assert_eq!(size_of::<CreateIn>(), 16);
        assert_eq!(size_of::<Dirent>(), 24);
    }

    #[test]
    fn lookup_request_golden_bytes() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x2c, 0, 0, 0,  1, 0, 0, 0,             // len 44, opcode LOOKUP
            0x2a, 0, 0, 0, 0, 0, 0, 0,              // unique 42
            1, 0, 0, 0, 0, 0, 0, 0,                 // nodeid 1 (root)
            0xe8, 3, 0, 0,  0xe9, 3, 0, 0,          // uid 1000, gid 1001
            0x39, 0x30, 0, 0,  0, 0,  0, 0,         // pid 12345, total_extlen, padding
            b'a', b'b', b'c', 0,                    // name "abc"
        ];
        let (h, mut args) = parse_request(bytes).unwrap();
        assert_eq!(
            h,
            InHeader {
                len: 44,
                opcode: opcode::LOOKUP,
                unique: 42,
                nodeid: 1,
                uid: 1000,
                gid: 1001,
                pid: 12345,
                total_extlen: 0,
                padding: 0
            }
        );
        assert_eq!(args.name().unwrap(), b"abc");
        assert!(args.rest().is_empty());
        assert_eq!(h.as_bytes(), &bytes[..40]);
    }

    #[test]
    fn write_request_golden_bytes() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x53, 0, 0, 0,  16, 0, 0, 0,            // len 83, opcode WRITE
            7, 0, 0, 0, 0, 0, 0, 0,                 // unique 7
            5, 0, 0, 0, 0, 0, 0, 0,                 // nodeid 5
            0, 0, 0, 0,  0, 0, 0, 0,                // uid 0, gid 0
            1, 0, 0, 0,  0, 0,  0, 0,               // pid 1
            9, 0, 0, 0, 0, 0, 0, 0,                 // fh 9
            0, 0x10, 0, 0, 0, 0, 0, 0,              // offset 4096
            3, 0, 0, 0,  0, 0, 0, 0,                // size 3, write_flags
            0, 0, 0, 0, 0, 0, 0, 0,                 // lock_owner
            2, 0, 0, 0,  0, 0, 0, 0,                // flags O_RDWR, padding
            b'x', b'y', b'z',                       // data
        ];
        let (h, mut args) = parse_request(bytes).unwrap();
        assert_eq!((h.opcode, h.unique, h.nodeid), (opcode::WRITE, 7, 5));
        let w: WriteIn = args.obj().unwrap();
        assert_eq!((w.fh, w.offset, w.size, w.flags), (9, 4096, 3, 2));
        assert_eq!(args.bytes(w.size as usize).unwrap(), b"xyz");
    }

    #[test]
    fn error_and_entry_replies_golden_bytes() {
        #[rustfmt::skip]
        let enoent: &[u8] = &[
            16, 0, 0, 0,  0xfe, 0xff, 0xff, 0xff,   // len 16, error -2
            0x2a, 0, 0, 0, 0, 0, 0, 0,              // unique 42
        ];
        assert_eq!(error_reply(42, libc::ENOENT), enoent);

        let entry = EntryOut {
            nodeid: 2,
            generation: 0,
            entry_valid: 1,
            attr_valid: 1,
            attr: Attr {
                ino: 2,
                size: 5,
                mode: 0o100644,
                nlink: 1,
                ..Attr::default()
            },
            ..EntryOut::default()
        };
        let r = reply(3, 0, &[entry.as_bytes()]);
        assert_eq!(r.len(), 144);
        #[rustfmt::skip]
        assert_eq!(&r[..48], &[
            0x90, 0, 0, 0,  0, 0, 0, 0,             // len 144, error 0
            3, 0, 0, 0, 0, 0, 0, 0,                 // unique 3
            2, 0, 0, 0, 0, 0, 0, 0,                 // nodeid 2
            0, 0, 0, 0, 0, 0, 0, 0,                 // generation
            1, 0, 0, 0, 0, 0, 0, 0,                 // entry_valid 1 s
            1, 0, 0, 0, 0, 0, 0, 0,                 // attr_valid 1 s
        ][..]);
        // attr.mode sits at 40 + 16 + 60 in the reply.
        assert_eq!(&r[16 + 40 + 60..16 + 40 + 64], &0o100644u32.to_le_bytes());
    }

    #[test]
    fn dirents_are_padded_to_eight_bytes() {
        let mut out = Vec::new();
        push_dirent(&mut out, 7, 1, 8, b"a");
        push_dirent(&mut out, 8, 2, 4, b"12345678");
        #[rustfmt::skip]
        assert_eq!(out, [
            7, 0, 0, 0, 0, 0, 0, 0,   1, 0, 0, 0, 0, 0, 0, 0,   1, 0, 0, 0,  8, 0, 0, 0,
            b'a', 0, 0, 0, 0, 0, 0, 0,
            8, 0, 0, 0, 0, 0, 0, 0,   2, 0, 0, 0, 0, 0, 0, 0,   8, 0, 0, 0,  4, 0, 0, 0,
            b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'8',
        ]);
    }

    #[test]
    fn hostile_input_is_a_typed_error() {
        assert!(matches!(
            parse_request(&[1, 2, 3]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut h = InHeader {
            len: 99,
            ..InHeader::default()
        }
        .as_bytes()
        .to_vec();
        assert!(matches!(
            parse_request(&h),
            Err(DecodeError::BadLength { header: 99, .. })
        ));
        h.extend_from_slice(b"no-nul");
        let mut args = Args::new(&h[40..]);
        assert_eq!(args.name(), Err(DecodeError::Unterminated));
        assert!(args.obj::<WriteIn>().is_err());
        assert!(args.bytes(100).is_err());
    }
}
