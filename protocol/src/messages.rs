//! Message bodies: the handshake, every request with its reply, and server notices.
//!
//! The opcode lives in the frame header, so a body is the postcard encoding of the variant's
//! struct alone. Names and other byte strings are borrowed from the receive buffer when decoded.

use serde::{Deserialize, Serialize};

use crate::frame::{Frame, FrameKind, encode_frame};
use crate::{DecodeError, EncodeError, Errno};

/// Protocol version. A different `major` is refused; `minor` only adds features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Incompatible changes.
    pub major: u16,
    /// Compatible additions.
    pub minor: u16,
}

/// The version this crate speaks. Major 2: `Ctx` carries supplementary groups and
/// `ExportInfo` the export's permission model.
/// Minor 1: [`Request::Replay`] ([`features::REPLAY`]).
/// Minor 2: [`Attr::NO_XATTRS`] ([`features::XATTR_HINTS`]).
pub const VERSION: Version = Version { major: 2, minor: 2 };

/// The name a replaying guest looks up through the other front door's mount (see
/// [`Request::Replay`]): this prefix, then `link` as 16 lowercase hex digits.
pub const REPLAY_LINK_PREFIX: &str = ".ferry-replay-";

/// Feature bits, negotiated as the intersection of what both sides announce.
pub mod features {
    /// The server answers `Readdirplus`.
    pub const READDIRPLUS: u64 = 1 << 0;
    /// The server forwards POSIX byte-range locks.
    pub const POSIX_LOCKS: u64 = 1 << 1;
    /// The server forwards flock locks.
    pub const FLOCK: u64 = 1 << 2;
    /// The server sends change events as `Notify` frames.
    pub const CHANGE_EVENTS: u64 = 1 << 3;
    /// The server takes [`Request::Replay`](super::Request::Replay): a guest replaying host
    /// changes on a mount served by another front door (virtio-fs) says which thread replays
    /// which change.
    pub const REPLAY: u64 = 1 << 4;
    /// The server marks attributes of objects without guest-visible xattrs
    /// ([`Attr::NO_XATTRS`](super::Attr::NO_XATTRS)) and keeps to
    /// [`host_only_xattr`](super::host_only_xattr): the guest may answer those xattr probes
    /// itself.
    pub const XATTR_HINTS: u64 = 1 << 5;
    /// Everything this version knows.
    pub const ALL: u64 = READDIRPLUS | POSIX_LOCKS | FLOCK | CHANGE_EVENTS | REPLAY | XATTR_HINTS;
}

/// First frame from the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello<'a> {
    /// The guest's protocol version.
    pub version: Version,
    /// Features the guest can use.
    pub features: u64,
    /// Shared secret; every listener requires one unless its operator turned that off.
    #[serde(borrow, with = "serde_bytes")]
    pub token: Option<&'a [u8]>,
    /// Free-form client description for the server's logs.
    pub client: &'a str,
}

/// One export as announced in the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportInfo {
    /// Id used in the `aux` field of requests.
    pub id: u32,
    /// The export's name (`--export NAME=PATH`).
    pub name: String,
    /// Mutations are refused with EROFS.
    pub read_only: bool,
    /// Who checks permissions on this export, as the server's operator chose it.
    pub permissions: Permissions,
    /// Requests should carry the caller's supplementary groups in [`Ctx::groups`] (all but
    /// those on an already open handle, which the host checks no further): the server creates
    /// as the caller, and in `map` mode runs every request as the caller, and the host kernel
    /// checks modes and ACL group entries against them.
    pub wants_groups: bool,
    /// Every `Flush` must reach the server: the export's host filesystem can fail a close
    /// (NFS, SMB, FUSE, ...), and the server answers a flush with the error of closing a
    /// duplicate of the handle's descriptor. Otherwise the agent may answer FLUSH itself.
    pub flush_to_host: bool,
}

/// Where permission checks happen for one export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Permissions {
    /// The guest kernel checks every access against the owners and modes the server presents
    /// (the FUSE mount option `default_permissions`), as on a local filesystem.
    #[default]
    Guest,
    /// The guest kernel checks nothing; the host allows whatever the server's own user may do.
    Host,
}

/// The server's acceptance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The server's protocol version.
    pub version: Version,
    /// Negotiated features (intersection).
    pub features: u64,
    /// What the server exports.
    pub exports: Vec<ExportInfo>,
    /// Free-form server description.
    pub server: String,
}

/// The server's refusal; the connection closes after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Why, as an errno (EACCES for a bad token, EPROTO for a version mismatch).
    pub errno: i32,
    /// Human-readable reason, shown to the user on the guest side.
    pub reason: String,
}

/// Seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timespec {
    /// Seconds.
    pub sec: i64,
    /// Nanoseconds, below 1e9.
    pub nsec: u32,
}

/// File attributes, as `stat` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    /// The host's inode number, which the guest shows as `st_ino` (not the node id: that is
    /// the `Entry`'s and the requests' own, and changes when the guest forgets a node).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Last access.
    pub atime: Timespec,
    /// Last modification.
    pub mtime: Timespec,
    /// Last status change.
    pub ctime: Timespec,
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for device nodes.
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

impl Attr {
    /// A bit of [`Attr::mode`] above `st_mode`'s 16 bits, set only with
    /// [`features::XATTR_HINTS`]: the object had no extended attribute the guest may see when
    /// these attributes were read (every `getxattr` answers ENODATA, `listxattr` an empty
    /// list) and keeps none until a change event about it says otherwise.
    pub const NO_XATTRS: u32 = 1 << 31;

    /// Whether [`Attr::NO_XATTRS`] is set.
    pub fn no_xattrs(&self) -> bool {
        self.mode & Self::NO_XATTRS != 0
    }

    /// `mode` without the hint bits: the `st_mode` alone.
    pub fn st_mode(&self) -> u32 {
        self.mode & 0xffff
    }
}

/// Whether xattr `name` is one a server never shows a guest, whatever the object (it reads
/// as absent, ENODATA): everything but `user.*`, the two POSIX ACL names and
/// `security.capability` (which an export may show). With [`features::XATTR_HINTS`] the guest
/// answers such probes (`security.selinux`, `trusted.*`, ...) itself.
pub fn host_only_xattr(name: &[u8]) -> bool {
    !(name.starts_with(b"user.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
        || name == b"security.capability")
}

/// A looked-up or created node. Each `Entry` the server sends adds one to the node's lookup
/// count, which the guest gives back with `Forget`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Node id; 1 is the export root.
    pub ino: u64,
    /// Generation; (ino, generation) is unique over the export's lifetime.
    pub generation: u64,
    /// Attributes.
    pub attr: Attr,
}

/// Caller credentials, carried by every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ctx {
    /// Caller uid in the guest.
    pub uid: u32,
    /// Caller gid in the guest.
    pub gid: u32,
    /// Caller pid (thread id) in the guest.
    pub pid: u32,
    /// The caller's supplementary groups in the guest. FUSE does not pass them, so the agent
    /// reads them from `/proc/PID/status`, and only on exports that ask for them
    /// ([`ExportInfo::wants_groups`]), for requests not on an open handle; empty otherwise, and
    /// for root callers.
    pub groups: Vec<u32>,
}

/// A time to set: `None` in [`SetAttr`] leaves it unchanged (UTIME_OMIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    /// The server's current time (UTIME_NOW).
    Now,
    /// An explicit time.
    At(Timespec),
}

/// Lock description for POSIX locks (`fcntl` F_GETLK/F_SETLK).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive); `u64::MAX` for "to the end".
    pub end: u64,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: i32,
    /// Pid of the holder (replies) or requester.
    pub pid: u32,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Node id when known, else the host inode number (readdir does not take a lookup).
    pub ino: u64,
    /// Cookie to continue reading after this entry.
    pub offset: u64,
    /// `DT_*` type.
    pub kind: u8,
    /// Entry name.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
}

/// One directory entry with its node (readdirplus); each adds a lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntryPlus {
    /// The node; `ino == 0` means the server did not look the entry up (no lookup taken).
    pub entry: Entry,
    /// Cookie to continue reading after this entry.
    pub offset: u64,
    /// `DT_*` type.
    pub kind: u8,
    /// Entry name.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
}

/// `statfs` result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statfs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Maximum name length.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// Result of `Open`/`Opendir`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    /// Handle for later requests.
    pub fh: u64,
    /// `FOPEN_*` flags for the guest kernel (e.g. FOPEN_KEEP_CACHE).
    pub open_flags: u32,
}

/// Result of `Create`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// The new node.
    pub entry: Entry,
    /// The open handle.
    pub opened: Opened,
}

macro_rules! bodies {
    ($( $(#[$m:meta])* $name:ident $(<$lt:lifetime>)? { $( $(#[$fm:meta])* $f:ident : $t:ty ),* $(,)? } )*) => {
        $(
            $(#[$m])*
            #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
            pub struct $name $(<$lt>)? {
                $( $(#[$fm])* #[allow(missing_docs)] pub $f: $t, )*
            }
        )*
    };
}

// Request bodies. `parent`/`ino` are node ids; `fh` are handles from Open/Opendir/Create.
bodies! {
    /// Look `name` up in `parent`.
    Lookup<'a> { parent: u64, #[serde(borrow, with = "serde_bytes")] name: &'a [u8] }
    /// Drop lookups: `(node, count)` pairs. One-way: the server sends no reply.
    Forget { nodes: Vec<(u64, u64)> }
    /// Attributes of `ino`, through `fh` when given.
    Getattr { ino: u64, fh: Option<u64> }
    /// Change attributes; `None` fields are left alone.
    Setattr { ino: u64, fh: Option<u64>, mode: Option<u32>, uid: Option<u32>, gid: Option<u32>,
              size: Option<u64>, atime: Option<SetTime>, mtime: Option<SetTime> }
    /// Target of a symlink (reply payload).
    Readlink { ino: u64 }
    /// Create symlink `name` → `target` in `parent`.
    Symlink<'a> { parent: u64, #[serde(borrow, with = "serde_bytes")] name: &'a [u8],
              #[serde(borrow, with = "serde_bytes")] target: &'a [u8] }
    /// Create a regular file, FIFO, socket or device node.
    Mknod<'a> { parent: u64, #[serde(borrow, with = "serde_bytes")] name: &'a [u8], mode: u32, rdev: u32, umask: u32 }
    /// Create a directory.
    Mkdir<'a> { parent: u64, #[serde(borrow, with = "serde_bytes")] name: &'a [u8], mode: u32, umask: u32 }
    /// Remove a non-directory.
    Unlink<'a> { parent: u64, #[serde(borrow, with = "serde_bytes")] name: &'a [u8] }
    /// Remove an empty directory.
    Rmdir<'a> { parent: u64, #[serde(borrow, with = "serde_bytes")] name: &'a [u8] }
    /// Rename; `flags` are RENAME_NOREPLACE (1) and RENAME_EXCHANGE (2).
    Rename<'a> { parent: u64, #[serde(borrow, with = "serde_bytes")] name: &'a [u8], newparent: u64,
             #[serde(borrow, with = "serde_bytes")] newname: &'a [u8], flags: u32 }
    /// Hard link `ino` as `newname` in `newparent`.
    Link<'a> { ino: u64, newparent: u64, #[serde(borrow, with = "serde_bytes")] newname: &'a [u8] }
    /// Open a file; `flags` are the guest's `open(2)` flags. For a read-only open of a regular
    /// file the server sends up to `prefetch` bytes from offset 0 inline with the reply
    /// ([`Reply::OpenedData`]); fewer than `prefetch` bytes means they reach end of file.
    Open { ino: u64, flags: i32, prefetch: u32 }
    /// Create and open a file.
    Create<'a> { parent: u64, #[serde(borrow, with = "serde_bytes")] name: &'a [u8], mode: u32, umask: u32, flags: i32 }
    /// Read `size` bytes at `offset` (reply payload).
    Read { ino: u64, fh: u64, offset: u64, size: u32 }
    /// Write the frame payload at `offset`.
    Write { ino: u64, fh: u64, offset: u64, write_flags: u32, flags: i32 }
    /// `close(2)` of one file descriptor.
    Flush { ino: u64, fh: u64, lock_owner: u64 }
    /// Last close of a handle.
    Release { ino: u64, fh: u64, flags: i32, lock_owner: Option<u64>, flush: bool }
    /// Flush to stable storage.
    Fsync { ino: u64, fh: u64, datasync: bool }
    /// Open a directory.
    Opendir { ino: u64, flags: i32 }
    /// Entries after cookie `offset`, at most `size` bytes' worth in FUSE's encoding.
    Readdir { ino: u64, fh: u64, offset: u64, size: u32 }
    /// As `Readdir`, with a lookup of each entry.
    Readdirplus { ino: u64, fh: u64, offset: u64, size: u32 }
    /// Close a directory handle.
    Releasedir { ino: u64, fh: u64, flags: i32 }
    /// Flush a directory to stable storage.
    Fsyncdir { ino: u64, fh: u64, datasync: bool }
    /// Filesystem statistics.
    StatfsReq { ino: u64 }
    /// Permission check (`access(2)` mask).
    Access { ino: u64, mask: i32 }
    /// Extended attribute value; `size == 0` asks for the size only.
    Getxattr<'a> { ino: u64, #[serde(borrow, with = "serde_bytes")] name: &'a [u8], size: u32 }
    /// Extended attribute names; `size == 0` asks for the size only.
    Listxattr { ino: u64, size: u32 }
    /// Set an extended attribute (`XATTR_CREATE`/`XATTR_REPLACE` in `flags`).
    Setxattr<'a> { ino: u64, #[serde(borrow, with = "serde_bytes")] name: &'a [u8],
               #[serde(borrow, with = "serde_bytes")] value: &'a [u8], flags: i32 }
    /// Remove an extended attribute.
    Removexattr<'a> { ino: u64, #[serde(borrow, with = "serde_bytes")] name: &'a [u8] }
    /// `fallocate(2)`.
    Fallocate { ino: u64, fh: u64, offset: u64, length: u64, mode: i32 }
    /// `lseek(2)` for SEEK_DATA / SEEK_HOLE.
    Lseek { ino: u64, fh: u64, offset: i64, whence: i32 }
    /// Server-side copy.
    CopyFileRange { ino_in: u64, fh_in: u64, offset_in: u64, ino_out: u64, fh_out: u64,
                    offset_out: u64, len: u64, flags: u32 }
    /// Test for a conflicting POSIX lock.
    Getlk { ino: u64, fh: u64, owner: u64, lock: Lock }
    /// Take or release a POSIX lock; `sleep` waits for it.
    Setlk { ino: u64, fh: u64, owner: u64, lock: Lock, sleep: bool }
    /// `flock(2)`: LOCK_SH, LOCK_EX or LOCK_UN, with LOCK_NB.
    Flock { ino: u64, fh: u64, owner: u64, op: i32 }
    /// Start (`on`) or stop sending this connection [`Notice::Changes`] for the export.
    Watch { on: bool }
    /// The guest thread `tid` (as the guest kernel reports it in FUSE request headers) replays
    /// host changes of this export on a mount another front door serves: from now until the
    /// next `Replay` of the same thread, its requests mean `change` (`None`: nothing, and
    /// then every request of that thread that would change the host is refused). `link` is a
    /// random number the guest also names in a lookup through that mount
    /// (`.ferry-replay-` and 16 lowercase hex digits): it tells the other front door which of
    /// its sessions is this guest's, so thread ids of other guests never match. Answered
    /// ENXIO (the registration is made all the same) while no such session is linked: the
    /// thread's requests are then performed like anyone's, so it must not replay. The
    /// registration ends with the connection. Needs [`features::REPLAY`].
    Replay { tid: i32, link: u64, change: Option<Change> }
}

/// What the server answers to each request kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// No reply at all (`Forget`).
    None,
    /// Empty body.
    Empty,
    /// [`Entry`].
    Entry,
    /// [`Attr`].
    Attr,
    /// Raw payload.
    Data,
    /// [`Opened`].
    Opened,
    /// [`Created`].
    Created,
    /// Bytes written (u32).
    Written,
    /// `Vec<DirEntry>`.
    Dir,
    /// `Vec<DirEntryPlus>`.
    DirPlus,
    /// [`Statfs`].
    Statfs,
    /// Size (u32) when the request's size was 0, else raw payload.
    Xattr,
    /// New offset (i64).
    Offset,
    /// [`Lock`].
    Lock,
}

macro_rules! requests {
    ($( $code:literal $name:ident($ty:ty) => $reply:ident, )*) => {
        /// Request opcodes (the frame header's `op`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Opcode { $( #[allow(missing_docs)] $name = $code, )* }

        impl Opcode {
            /// Every opcode.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name,)*];

            /// The opcode's position in [`Opcode::ALL`]: a dense index for per-opcode tables.
            pub fn index(self) -> usize {
                const MAX: usize = {
                    let mut max = 0;
                    let mut i = 0;
                    while i < Opcode::ALL.len() {
                        if Opcode::ALL[i] as usize > max {
                            max = Opcode::ALL[i] as usize;
                        }
                        i += 1;
                    }
                    max
                };
                const INDEX: [u8; MAX + 1] = {
                    let mut t = [0u8; MAX + 1];
                    let mut i = 0;
                    while i < Opcode::ALL.len() {
                        t[Opcode::ALL[i] as usize] = i as u8;
                        i += 1;
                    }
                    t
                };
                INDEX[self as usize] as usize
            }

            /// Parses an opcode.
            pub fn from_u16(v: u16) -> Option<Self> {
                match v { $( $code => Some(Opcode::$name), )* _ => None }
            }

            /// The reply this opcode expects.
            pub fn reply_kind(self) -> ReplyKind {
                match self { $( Opcode::$name => ReplyKind::$reply, )* }
            }
        }

        /// A decoded request body.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Request<'a> { $( #[allow(missing_docs)] $name($ty), )* }

        impl<'a> Request<'a> {
            /// The opcode of this request.
            pub fn opcode(&self) -> Opcode {
                match self { $( Request::$name(_) => Opcode::$name, )* }
            }

            fn encode_meta(&self, out: &mut Vec<u8>, id: u64, export: u32, ctx: &Ctx, payload_len: usize) -> Result<(), EncodeError> {
                match self {
                    $( Request::$name(b) => encode_frame(out, FrameKind::Request, $code, id, export, &(ctx, b), payload_len), )*
                }
            }

            fn decode_meta(op: Opcode, meta: &'a [u8]) -> Result<(Ctx, Self), DecodeError> {
                Ok(match op {
                    $( Opcode::$name => { let (c, b): (Ctx, $ty) = decode_exact(meta)?; (c, Request::$name(b)) } )*
                })
            }
        }
    };
}

requests! {
    1 Lookup(Lookup<'a>) => Entry,
    2 Forget(Forget) => None,
    3 Getattr(Getattr) => Attr,
    4 Setattr(Setattr) => Attr,
    5 Readlink(Readlink) => Data,
    6 Symlink(Symlink<'a>) => Entry,
    7 Mknod(Mknod<'a>) => Entry,
    8 Mkdir(Mkdir<'a>) => Entry,
    9 Unlink(Unlink<'a>) => Empty,
    10 Rmdir(Rmdir<'a>) => Empty,
    11 Rename(Rename<'a>) => Empty,
    12 Link(Link<'a>) => Entry,
    13 Open(Open) => Opened,
    14 Create(Create<'a>) => Created,
    15 Read(Read) => Data,
    16 Write(Write) => Written,
    17 Flush(Flush) => Empty,
    18 Release(Release) => Empty,
    19 Fsync(Fsync) => Empty,
    20 Opendir(Opendir) => Opened,
    21 Readdir(Readdir) => Dir,
    22 Readdirplus(Readdirplus) => DirPlus,
    23 Releasedir(Releasedir) => Empty,
    24 Fsyncdir(Fsyncdir) => Empty,
    25 StatfsReq(StatfsReq) => Statfs,
    26 Access(Access) => Empty,
    27 Getxattr(Getxattr<'a>) => Xattr,
    28 Listxattr(Listxattr) => Xattr,
    29 Setxattr(Setxattr<'a>) => Empty,
    30 Removexattr(Removexattr<'a>) => Empty,
    31 Fallocate(Fallocate) => Empty,
    32 Lseek(Lseek) => Offset,
    33 CopyFileRange(CopyFileRange) => Written,
    34 Getlk(Getlk) => Lock,
    35 Setlk(Setlk) => Empty,
    36 Flock(Flock) => Empty,
    37 Watch(Watch) => Empty,
    38 Replay(Replay) => Empty,
}

/// Decodes a postcard value that must use all of `bytes`.
pub(crate) fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(DecodeError::Meta)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(v)
}

/// A request as it travels: id, target export, caller and body, plus the write payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFrame<'a> {
    /// Request id, echoed by the reply.
    pub id: u64,
    /// Export id from the handshake.
    pub export: u32,
    /// Caller credentials.
    pub ctx: Ctx,
    /// The operation.
    pub body: Request<'a>,
    /// Raw data (only `Write` carries any).
    pub payload: &'a [u8],
}

impl<'a> RequestFrame<'a> {
    /// Encodes header and meta into `out`; send `out` then `self.payload`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if !self.payload.is_empty() && self.body.opcode() != Opcode::Write {
            return Err(EncodeError::UnexpectedPayload);
        }
        self.body
            .encode_meta(out, self.id, self.export, &self.ctx, self.payload.len())
    }

    /// Decodes a request frame.
    pub fn decode(frame: &Frame<'a>) -> Result<Self, DecodeError> {
        let h = &frame.header;
        if h.kind != FrameKind::Request {
            return Err(DecodeError::UnexpectedKind(h.kind));
        }
        let op = Opcode::from_u16(h.op).ok_or(DecodeError::UnknownOpcode(h.op))?;
        let (ctx, body) = Request::decode_meta(op, frame.meta)?;
        if op != Opcode::Write && !frame.payload.is_empty() {
            return Err(DecodeError::UnexpectedPayload(frame.payload.len()));
        }
        Ok(RequestFrame {
            id: h.id,
            export: h.aux,
            ctx,
            body,
            payload: frame.payload,
        })
    }
}

/// A successful reply body. Bulk data (`Data`, xattr values) travels as the frame payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// No body.
    Empty,
    /// A node.
    Entry(Entry),
    /// Attributes.
    Attr(Attr),
    /// Raw bytes: file data, a symlink target, an xattr value or name list.
    Data(&'a [u8]),
    /// An open handle.
    Opened(Opened),
    /// An open handle with the file's first bytes (never empty; see [`Open::prefetch`]).
    OpenedData(Opened, &'a [u8]),
    /// A created and opened node.
    Created(Created),
    /// Bytes written or copied.
    Written(u32),
    /// Directory entries.
    Dir(Vec<DirEntry>),
    /// Directory entries with nodes.
    DirPlus(Vec<DirEntryPlus>),
    /// Filesystem statistics.
    Statfs(Statfs),
    /// Size of an xattr value or name list.
    XattrSize(u32),
    /// An offset.
    Offset(i64),
    /// A lock.
    Lock(Lock),
}

/// A reply as it travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyFrame<'a> {
    /// Id of the request answered.
    pub id: u64,
    /// Opcode of the request answered.
    pub op: Opcode,
    /// The result.
    pub result: Result<Reply<'a>, Errno>,
}

impl<'a> ReplyFrame<'a> {
    /// Encodes header and meta into `out`; then send `out` followed by [`Self::payload`].
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let op = self.op as u16;
        let id = self.id;
        let k = FrameKind::Reply;
        if self.op.reply_kind() == ReplyKind::None {
            // Not even an error: the guest expects nothing for these ids.
            return Err(EncodeError::ReplyMismatch(self.op));
        }
        let reply = match &self.result {
            Err(e) => {
                if e.0 <= 0 {
                    return Err(EncodeError::BadErrno(e.0));
                }
                return encode_frame(out, k, op, id, e.0 as u32, &(), 0);
            }
            Ok(r) => r,
        };
        if !reply_fits(self.op.reply_kind(), reply) {
            return Err(EncodeError::ReplyMismatch(self.op));
        }
        match reply {
            Reply::Empty => encode_frame(out, k, op, id, 0, &(), 0),
            Reply::Entry(v) => encode_frame(out, k, op, id, 0, v, 0),
            Reply::Attr(v) => encode_frame(out, k, op, id, 0, v, 0),
            Reply::Data(d) => encode_frame(out, k, op, id, 0, &(), d.len()),
            Reply::Opened(v) => encode_frame(out, k, op, id, 0, v, 0),
            Reply::OpenedData(_, []) => Err(EncodeError::EmptyInlineData),
            Reply::OpenedData(v, d) => encode_frame(out, k, op, id, 0, v, d.len()),
            Reply::Created(v) => encode_frame(out, k, op, id, 0, v, 0),
            Reply::Written(v) => encode_frame(out, k, op, id, 0, v, 0),
            Reply::Dir(v) => encode_frame(out, k, op, id, 0, v, 0),
            Reply::DirPlus(v) => encode_frame(out, k, op, id, 0, v, 0),
            Reply::Statfs(v) => encode_frame(out, k, op, id, 0, v, 0),
            Reply::XattrSize(v) => encode_frame(out, k, op, id, 0, v, 0),
            Reply::Offset(v) => encode_frame(out, k, op, id, 0, v, 0),
            Reply::Lock(v) => encode_frame(out, k, op, id, 0, v, 0),
        }
    }

    /// The raw payload to send after the encoded header and meta.
    pub fn payload(&self) -> &'a [u8] {
        match self.result {
            Ok(Reply::Data(d) | Reply::OpenedData(_, d)) => d,
            _ => &[],
        }
    }

    /// Decodes a reply frame.
    pub fn decode(frame: &Frame<'a>) -> Result<Self, DecodeError> {
        let h = &frame.header;
        if h.kind != FrameKind::Reply {
            return Err(DecodeError::UnexpectedKind(h.kind));
        }
        let op = Opcode::from_u16(h.op).ok_or(DecodeError::UnknownOpcode(h.op))?;
        let kind = op.reply_kind();
        if kind == ReplyKind::None {
            return Err(DecodeError::UnexpectedReply(op));
        }
        let data_ok = matches!(kind, ReplyKind::Data | ReplyKind::Xattr | ReplyKind::Opened);
        if !frame.payload.is_empty() && !data_ok {
            return Err(DecodeError::UnexpectedPayload(frame.payload.len()));
        }
        if h.aux != 0 {
            let errno = i32::try_from(h.aux).map_err(|_| DecodeError::BadErrno(h.aux))?;
            decode_exact::<()>(frame.meta)?;
            if !frame.payload.is_empty() {
                return Err(DecodeError::UnexpectedPayload(frame.payload.len()));
            }
            return Ok(ReplyFrame {
                id: h.id,
                op,
                result: Err(Errno(errno)),
            });
        }
        let m = frame.meta;
        let reply = match kind {
            ReplyKind::None => return Err(DecodeError::UnexpectedReply(op)),
            ReplyKind::Empty => {
                decode_exact::<()>(m)?;
                Reply::Empty
            }
            ReplyKind::Entry => Reply::Entry(decode_exact(m)?),
            ReplyKind::Attr => Reply::Attr(decode_exact(m)?),
            ReplyKind::Data => {
                decode_exact::<()>(m)?;
                Reply::Data(frame.payload)
            }
            ReplyKind::Opened if frame.payload.is_empty() => Reply::Opened(decode_exact(m)?),
            ReplyKind::Opened => Reply::OpenedData(decode_exact(m)?, frame.payload),
            ReplyKind::Created => Reply::Created(decode_exact(m)?),
            ReplyKind::Written => Reply::Written(decode_exact(m)?),
            ReplyKind::Dir => Reply::Dir(decode_exact(m)?),
            ReplyKind::DirPlus => Reply::DirPlus(decode_exact(m)?),
            ReplyKind::Statfs => Reply::Statfs(decode_exact(m)?),
            // An xattr reply is either a size (meta) or the data (payload with empty meta).
            ReplyKind::Xattr if m.is_empty() => Reply::Data(frame.payload),
            ReplyKind::Xattr if !frame.payload.is_empty() => {
                return Err(DecodeError::UnexpectedPayload(frame.payload.len()));
            }
            ReplyKind::Xattr => Reply::XattrSize(decode_exact(m)?),
            ReplyKind::Offset => Reply::Offset(decode_exact(m)?),
            ReplyKind::Lock => Reply::Lock(decode_exact(m)?),
        };
        Ok(ReplyFrame {
            id: h.id,
            op,
            result: Ok(reply),
        })
    }
}

fn reply_fits(kind: ReplyKind, reply: &Reply<'_>) -> bool {
    matches!(
        (kind, reply),
        (ReplyKind::Empty, Reply::Empty)
            | (ReplyKind::Entry, Reply::Entry(_))
            | (ReplyKind::Attr, Reply::Attr(_))
            | (ReplyKind::Data, Reply::Data(_))
            | (ReplyKind::Opened, Reply::Opened(_) | Reply::OpenedData(..))
            | (ReplyKind::Created, Reply::Created(_))
            | (ReplyKind::Written, Reply::Written(_))
            | (ReplyKind::Dir, Reply::Dir(_))
            | (ReplyKind::DirPlus, Reply::DirPlus(_))
            | (ReplyKind::Statfs, Reply::Statfs(_))
            | (ReplyKind::Xattr, Reply::XattrSize(_) | Reply::Data(_))
            | (ReplyKind::Offset, Reply::Offset(_))
            | (ReplyKind::Lock, Reply::Lock(_))
    )
}

/// What happened to a host object, as a [`Change`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// `path` was created (or moved in from outside the export).
    Created,
    /// `path` was removed (or moved out of the export).
    Removed,
    /// `path` was written and is still open for writing on the host.
    Data,
    /// `path` was written and then closed.
    DataClosed,
    /// `path` was opened for writing and closed without a write seen in the same burst.
    Closed,
    /// Attributes of `path` changed (mode, owner, times, xattrs, link count).
    Attrib,
    /// `path` was renamed to `to`.
    Renamed,
    /// The host lost events (queue overflow, watch limit): the guest must drop every cached
    /// name and attribute of the export. `path` is empty.
    Overflow,
}

/// One host-side change of an export, as seen by one connection.
///
/// Node ids are this connection's. `parent` (and `to_parent` for renames) is the node id of the
/// directory holding `path` (`to`) when the connection holds that directory, else 0. When
/// `entry` is set the server took one lookup of `entry.ino` for the guest, which the guest
/// hands to its kernel or gives back with `Forget`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// What happened.
    pub kind: ChangeKind,
    /// Path relative to the export root, `/`-separated, empty for the root itself.
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    /// The new path of a rename, else empty.
    #[serde(with = "serde_bytes")]
    pub to: Vec<u8>,
    /// Node id of the directory holding `path`, or 0.
    pub parent: u64,
    /// Node id of the directory holding `to`, or 0.
    pub to_parent: u64,
    /// File type bits (`S_IFMT`) of the object, 0 when unknown.
    pub file_type: u32,
    /// The object as it is now (after the change), when it still exists.
    pub entry: Option<Entry>,
}

/// Unsolicited server → guest messages (the frame header's `op` says which).
///
/// A guest ignores notice codes it does not know, so new notices need no version bump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The server is shutting down; in-flight requests will not be answered.
    Shutdown {
        /// Why.
        reason: String,
    },
    /// Host-side changes of one export, in the order they happened (sent only after
    /// [`Request::Watch`]). The export id travels in the header's `aux` field.
    Changes {
        /// Export id from the handshake.
        export: u32,
        /// The changes, oldest first.
        changes: Vec<Change>,
        /// How long ago, in microseconds, the host's watcher saw the oldest of them, measured
        /// when the notice was written: the host's share of the event lag, a duration, so the
        /// two machines' clocks never meet. It travels in the header's `id` field, which
        /// notices otherwise leave 0: a server that does not measure it sends 0, and a guest
        /// that does not read it ignores it.
        age_us: u64,
    },
}

/// Notice codes.
pub mod notice {
    /// [`super::Notice::Shutdown`].
    pub const SHUTDOWN: u16 = 1;
    /// [`super::Notice::Changes`].
    pub const CHANGES: u16 = 2;
}

impl Notice {
    /// Encodes the notice into `out` (no payload).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Notice::Shutdown { reason } => {
                encode_frame(out, FrameKind::Notify, notice::SHUTDOWN, 0, 0, reason, 0)
            }
            Notice::Changes {
                export,
                changes,
                age_us,
            } => encode_frame(
                out,
                FrameKind::Notify,
                notice::CHANGES,
                *age_us,
                *export,
                changes,
                0,
            ),
        }
    }

    /// Decodes a notice; `Ok(None)` for a code this version does not know.
    pub fn decode(frame: &Frame<'_>) -> Result<Option<Self>, DecodeError> {
        if frame.header.kind != FrameKind::Notify {
            return Err(DecodeError::UnexpectedKind(frame.header.kind));
        }
        let known = matches!(frame.header.op, notice::SHUTDOWN | notice::CHANGES);
        if known && !frame.payload.is_empty() {
            return Err(DecodeError::UnexpectedPayload(frame.payload.len()));
        }
        Ok(match frame.header.op {
            notice::SHUTDOWN => Some(Notice::Shutdown {
                reason: decode_exact(frame.meta)?,
            }),
            notice::CHANGES => Some(Notice::Changes {
                export: frame.header.aux,
                changes: decode_exact(frame.meta)?,
                age_us: frame.header.id,
            }),
            _ => None,
        })
    }
}

/// Handshake frames.
impl<'a> Hello<'a> {
    /// Encodes the hello frame.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_frame(out, FrameKind::Hello, 0, 0, 0, self, 0)
    }

    /// Decodes a hello frame.
    pub fn decode(frame: &Frame<'a>) -> Result<Self, DecodeError> {
        expect_plain(frame, FrameKind::Hello)?;
        decode_exact(frame.meta)
    }
}

impl Welcome {
    /// Encodes the welcome frame.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_frame(out, FrameKind::Welcome, 0, 0, 0, self, 0)
    }

    /// Decodes a welcome frame.
    pub fn decode(frame: &Frame<'_>) -> Result<Self, DecodeError> {
        expect_plain(frame, FrameKind::Welcome)?;
        decode_exact(frame.meta)
    }
}

impl Refused {
    /// Encodes the refusal frame.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_frame(out, FrameKind::Refused, 0, 0, 0, self, 0)
    }

    /// Decodes a refusal frame.
    pub fn decode(frame: &Frame<'_>) -> Result<Self, DecodeError> {
        expect_plain(frame, FrameKind::Refused)?;
        decode_exact(frame.meta)
    }
}

fn expect_plain(frame: &Frame<'_>, kind: FrameKind) -> Result<(), DecodeError> {
    if frame.header.kind != kind {
        return Err(DecodeError::UnexpectedKind(frame.header.kind));
    }
    if !frame.payload.is_empty() {
        return Err(DecodeError::UnexpectedPayload(frame.payload.len()));
    }
    Ok(())
}
