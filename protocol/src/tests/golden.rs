//! Golden frames for the handshake, notices, a write with payload and every reply kind.
//!
//! Postcard encodes unsigned integers (other than `u8`) as LEB128 varints: seven bits per byte,
//! least significant group first, the top bit set on every byte but the last. Signed integers
//! are zigzag-mapped first (0→0, -1→1, 1→2, -2→3, n→2n). `u8` and `bool` are one raw byte,
//! `Option` is a 0/1 byte then the value, byte strings and sequences are a varint length then
//! the items, enums a varint variant index then the variant's fields, structs and tuples their
//! fields in order, and `()` nothing at all.

use super::check;
use crate::*;

/// Values shared by the golden frames.
pub(crate) const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
    pid: 42,
    groups: Vec::new(),
};

#[rustfmt::skip]
pub(crate) const HELLO_WITH_TOKEN: &[u8] = &[
    0x33, 0x00, 0x00, 0x00,                         // len = 51
    0x01, 0x00,                                     // kind = Hello, flags = 0
    0x00, 0x00,                                     // op = 0 (unused)
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0 (unused)
    0x1B, 0x00, 0x00, 0x00,                         // meta_len = 27
    0x00, 0x00, 0x00, 0x00,                         // aux = 0 (unused)
    0x02,                                           // version.major = 2
    0x02,                                           // version.minor = 2
    0x3F,                                           // features = ALL = 0b111111
    0x01,                                           // token: Some
    0x06, b's', b'3', b'c', b'r', b'e', b't',       // token: len 6, "s3cret"
    0x0F,                                           // client: len 15
    b'f', b'e', b'r', b'r', b'y', b'-', b'a', b'g', // client: "ferry-ag
    b'e', b'n', b't', b' ', b'0', b'.', b'1',       //          ent 0.1"
];

#[test]
fn hello_with_token() {
    check(
        HELLO_WITH_TOKEN,
        Hello {
            version: VERSION,
            features: features::ALL,
            token: Some(b"s3cret"),
            client: "ferry-agent 0.1",
        },
    );
}

#[rustfmt::skip]
pub(crate) const HELLO_WITHOUT_TOKEN: &[u8] = &[
    0x1E, 0x00, 0x00, 0x00,                         // len = 30
    0x01, 0x00,                                     // kind = Hello, flags = 0
    0x00, 0x00,                                     // op = 0
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0
    0x06, 0x00, 0x00, 0x00,                         // meta_len = 6
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x01,                                           // version.major = 1
    0x03,                                           // version.minor = 3
    0x05,                                           // features = READDIRPLUS | FLOCK = 0b101
    0x00,                                           // token: None
    0x01, b'g',                                     // client: len 1, "g"
];

#[test]
fn hello_without_token() {
    check(
        HELLO_WITHOUT_TOKEN,
        Hello {
            version: Version { major: 1, minor: 3 },
            features: features::READDIRPLUS | features::FLOCK,
            token: None,
            client: "g",
        },
    );
}

#[rustfmt::skip]
pub(crate) const WELCOME: &[u8] = &[
    0x3A, 0x00, 0x00, 0x00,                         // len = 58
    0x02, 0x00,                                     // kind = Welcome, flags = 0
    0x00, 0x00,                                     // op = 0
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0
    0x22, 0x00, 0x00, 0x00,                         // meta_len = 34
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x02,                                           // version.major = 2
    0x02,                                           // version.minor = 2
    0x03,                                           // features = READDIRPLUS | POSIX_LOCKS
    0x02,                                           // exports: 2 entries
    0x00,                                           // exports[0].id = 0
    0x04, b'h', b'o', b'm', b'e',                   // exports[0].name: len 4, "home"
    0x00,                                           // exports[0].read_only = false
    0x00,                                           // exports[0].permissions = Guest (variant 0)
    0x01,                                           // exports[0].wants_groups = true
    0x00,                                           // exports[0].flush_to_host = false
    0xAC, 0x02,                                     // exports[1].id = 300 = 0b10_0101100:
                                                    //   0x2C | 0x80, then 300 >> 7 = 2
    0x02, b'r', b'o',                               // exports[1].name: len 2, "ro"
    0x01,                                           // exports[1].read_only = true
    0x01,                                           // exports[1].permissions = Host (variant 1)
    0x00,                                           // exports[1].wants_groups = false
    0x01,                                           // exports[1].flush_to_host = true
    0x0A,                                           // server: len 10
    b'f', b'e', b'r', b'r', b'y', b'-', b'h', b'o', // server: "ferry-ho
    b's', b't',                                     //          st"
];

#[test]
fn welcome_with_two_exports() {
    check(
        WELCOME,
        Welcome {
            version: Version { major: 2, minor: 2 },
            features: features::READDIRPLUS | features::POSIX_LOCKS,
            exports: vec![
                ExportInfo {
                    id: 0,
                    name: "home".into(),
                    read_only: false,
                    permissions: Permissions::Guest,
                    wants_groups: true,
                    flush_to_host: false,
                },
                ExportInfo {
                    id: 300,
                    name: "ro".into(),
                    read_only: true,
                    permissions: Permissions::Host,
                    wants_groups: false,
                    flush_to_host: true,
                },
            ],
            server: "ferry-host".into(),
        },
    );
}

#[rustfmt::skip]
pub(crate) const REFUSED: &[u8] = &[
    0x22, 0x00, 0x00, 0x00,                         // len = 34
    0x03, 0x00,                                     // kind = Refused, flags = 0
    0x00, 0x00,                                     // op = 0
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0
    0x0A, 0x00, 0x00, 0x00,                         // meta_len = 10
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x8E, 0x01,                                     // errno = EPROTO = 71: zigzag 142 = 0x8E:
                                                    //   0x0E | 0x80, then 142 >> 7 = 1
    0x07,                                           // reason: len 7
    b'm', b'a', b'j', b'o', b'r', b' ', b'2',       // reason: "major 2"
];

#[test]
fn refused() {
    check(
        REFUSED,
        Refused {
            errno: Errno::EPROTO.0,
            reason: "major 2".into(),
        },
    );
}

#[rustfmt::skip]
pub(crate) const SHUTDOWN: &[u8] = &[
    0x1C, 0x00, 0x00, 0x00,                         // len = 28
    0x06, 0x00,                                     // kind = Notify, flags = 0
    0x01, 0x00,                                     // op = notice::SHUTDOWN = 1
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0
    0x04, 0x00, 0x00, 0x00,                         // meta_len = 4
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x03, b'b', b'y', b'e',                         // reason: len 3, "bye"
];

#[test]
fn notice_shutdown() {
    check(
        SHUTDOWN,
        Notice::Shutdown {
            reason: "bye".into(),
        },
    );
}

#[rustfmt::skip]
pub(crate) const CHANGES: &[u8] = &[
    0x2B, 0x00, 0x00, 0x00,                         // len = 24 + 19 = 43
    0x06, 0x00,                                     // kind = Notify, flags = 0
    0x02, 0x00,                                     // op = notice::CHANGES = 2
    0xDC, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = age_us = 1500
    0x13, 0x00, 0x00, 0x00,                         // meta_len = 1 + 11 + 7 = 19
    0x03, 0x00, 0x00, 0x00,                         // aux = export 3
    0x02,                                           // 2 changes
    0x06,                                           //   kind = Renamed (variant 6)
    0x01, b'a',                                     //   path = "a"
    0x03, b'd', b'/', b'b',                         //   to = "d/b"
    0x01,                                           //   parent = 1
    0x07,                                           //   to_parent = 7
    0x00,                                           //   file_type = 0
    0x00,                                           //   entry = None
    0x07,                                           //   kind = Overflow (variant 7)
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00,             //   empty paths, zeros, no entry
];

#[test]
fn notice_changes() {
    check(
        CHANGES,
        Notice::Changes {
            export: 3,
            changes: vec![
                Change {
                    kind: ChangeKind::Renamed,
                    path: b"a".to_vec(),
                    to: b"d/b".to_vec(),
                    parent: 1,
                    to_parent: 7,
                    file_type: 0,
                    entry: None,
                },
                Change {
                    kind: ChangeKind::Overflow,
                    path: vec![],
                    to: vec![],
                    parent: 0,
                    to_parent: 0,
                    file_type: 0,
                    entry: None,
                },
            ],
            age_us: 1500,
        },
    );
}

#[rustfmt::skip]
pub(crate) const WRITE_WITH_PAYLOAD: &[u8] = &[
    0x2C, 0x00, 0x00, 0x00,                         // len = 44
    0x04, 0x00,                                     // kind = Request, flags = 0
    0x10, 0x00,                                     // op = 16 (Write)
    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // id = 0x1122334455667788 (little endian)
    0x0F, 0x00, 0x00, 0x00,                         // meta_len = 15
    0x02, 0x00, 0x00, 0x00,                         // aux = export 2
    0xE8, 0x07,                                     // ctx.uid = 1000 = 0b111_1101000:
                                                    //   0x68 | 0x80, then 1000 >> 7 = 7
    0xE8, 0x07,                                     // ctx.gid = 1000
    0x2A,                                           // ctx.pid = 42
    0x00,                                           // ctx.groups: len 0
    0x05,                                           // ino = 5
    0x03,                                           // fh = 3
    0x80, 0x80, 0x80, 0x80, 0x10,                   // offset = 1 << 32: four empty 7-bit
                                                    //   groups (28 bits), then 1 << 4 = 0x10
    0x00,                                           // write_flags = 0
    0x02,                                           // flags = O_WRONLY = 1: zigzag 2
    b'h', b'e', b'l', b'l', b'o',                   // payload (raw, not in meta_len)
];

#[test]
fn write_with_payload() {
    check(
        WRITE_WITH_PAYLOAD,
        RequestFrame {
            id: 0x1122_3344_5566_7788,
            export: 2,
            ctx: CTX,
            body: Request::Write(Write {
                ino: 5,
                fh: 3,
                offset: 1 << 32,
                write_flags: 0,
                flags: 1,
            }),
            payload: b"hello",
        },
    );
}

/// The attributes in the `Entry` and `Attr` replies.
const ATTR: Attr = Attr {
    ino: 2,
    size: 5,
    blocks: 8,
    atime: Timespec { sec: 1, nsec: 0 },
    mtime: Timespec {
        sec: 2,
        nsec: 500_000_000,
    },
    ctime: Timespec { sec: 0, nsec: 0 },
    mode: 0o100644,
    nlink: 1,
    uid: 1000,
    gid: 1000,
    rdev: 0,
    blksize: 4096,
};

#[rustfmt::skip]
pub(crate) const REPLY_EMPTY: &[u8] = &[
    0x18, 0x00, 0x00, 0x00,                         // len = 24
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x09, 0x00,                                     // op = 9 (Unlink)
    0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 7
    0x00, 0x00, 0x00, 0x00,                         // meta_len = 0: () encodes as nothing
    0x00, 0x00, 0x00, 0x00,                         // aux = errno 0 (success)
];

#[rustfmt::skip]
pub(crate) const REPLY_ENTRY: &[u8] = &[
    0x32, 0x00, 0x00, 0x00,                         // len = 50
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x01, 0x00,                                     // op = 1 (Lookup)
    0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 8
    0x1A, 0x00, 0x00, 0x00,                         // meta_len = 26
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x02,                                           // entry.ino = 2
    0x00,                                           // entry.generation = 0
    0x02,                                           // attr.ino = 2
    0x05,                                           // attr.size = 5
    0x08,                                           // attr.blocks = 8
    0x02, 0x00,                                     // attr.atime: sec 1 (zigzag 2), nsec 0
    0x04,                                           // attr.mtime.sec = 2: zigzag 4
    0x80, 0xCA, 0xB5, 0xEE, 0x01,                   // attr.mtime.nsec = 500_000_000 = 0x1DCD6500:
                                                    //   groups 0x00 0x4A 0x35 0x6E 0x01
    0x00, 0x00,                                     // attr.ctime: sec 0, nsec 0
    0xA4, 0x83, 0x02,                               // attr.mode = 0o100644 = 0x81A4:
                                                    //   groups 0x24 0x03 0x02
    0x01,                                           // attr.nlink = 1
    0xE8, 0x07,                                     // attr.uid = 1000
    0xE8, 0x07,                                     // attr.gid = 1000
    0x00,                                           // attr.rdev = 0
    0x80, 0x20,                                     // attr.blksize = 4096 = 0x1000: 0x00, 0x20
];

#[rustfmt::skip]
pub(crate) const REPLY_ATTR: &[u8] = &[
    0x30, 0x00, 0x00, 0x00,                         // len = 48
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x03, 0x00,                                     // op = 3 (Getattr)
    0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 9
    0x18, 0x00, 0x00, 0x00,                         // meta_len = 24
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x02, 0x05, 0x08,                               // ino 2, size 5, blocks 8
    0x02, 0x00,                                     // atime: sec 1 (zigzag 2), nsec 0
    0x04, 0x80, 0xCA, 0xB5, 0xEE, 0x01,             // mtime: sec 2 (zigzag 4), nsec 500_000_000
    0x00, 0x00,                                     // ctime: 0, 0
    0xA4, 0x83, 0x02,                               // mode = 0o100644
    0x01,                                           // nlink = 1
    0xE8, 0x07, 0xE8, 0x07,                         // uid = 1000, gid = 1000
    0x00,                                           // rdev = 0
    0x80, 0x20,                                     // blksize = 4096
];

/// [`REPLY_ATTR`] with [`Attr::NO_XATTRS`]: the bit above `st_mode` lengthens the mode's varint.
#[rustfmt::skip]
pub(crate) const REPLY_ATTR_NO_XATTRS: &[u8] = &[
    0x32, 0x00, 0x00, 0x00,                         // len = 50
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x03, 0x00,                                     // op = 3 (Getattr)
    0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 9
    0x1A, 0x00, 0x00, 0x00,                         // meta_len = 26
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x02, 0x05, 0x08,                               // ino 2, size 5, blocks 8
    0x02, 0x00,                                     // atime: sec 1 (zigzag 2), nsec 0
    0x04, 0x80, 0xCA, 0xB5, 0xEE, 0x01,             // mtime: sec 2 (zigzag 4), nsec 500_000_000
    0x00, 0x00,                                     // ctime: 0, 0
    0xA4, 0x83, 0x82, 0x80, 0x08,                   // mode = 0o100644 | NO_XATTRS = 0x800081A4
    0x01,                                           // nlink = 1
    0xE8, 0x07, 0xE8, 0x07,                         // uid = 1000, gid = 1000
    0x00,                                           // rdev = 0
    0x80, 0x20,                                     // blksize = 4096
];

#[rustfmt::skip]
pub(crate) const REPLY_DATA: &[u8] = &[
    0x21, 0x00, 0x00, 0x00,                         // len = 33
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x0F, 0x00,                                     // op = 15 (Read)
    0x0A, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 10
    0x00, 0x00, 0x00, 0x00,                         // meta_len = 0
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    b'f', b'i', b'l', b'e', b' ', b'd', b'a', b't', // payload: "file dat
    b'a',                                           //           a"
];

#[rustfmt::skip]
pub(crate) const REPLY_OPENED: &[u8] = &[
    0x1A, 0x00, 0x00, 0x00,                         // len = 26
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x0D, 0x00,                                     // op = 13 (Open)
    0x0B, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 11
    0x02, 0x00, 0x00, 0x00,                         // meta_len = 2
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x03,                                           // fh = 3
    0x01,                                           // open_flags = FOPEN_DIRECT_IO = 1
];

#[rustfmt::skip]
pub(crate) const REPLY_CREATED: &[u8] = &[
    0x2D, 0x00, 0x00, 0x00,                         // len = 45
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x0E, 0x00,                                     // op = 14 (Create)
    0x0C, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 12
    0x15, 0x00, 0x00, 0x00,                         // meta_len = 21
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x09,                                           // entry.ino = 9
    0x01,                                           // entry.generation = 1
    0x09, 0x00, 0x00,                               // attr: ino 9, size 0, blocks 0
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00,             // attr: atime, mtime, ctime all {0, 0}
    0x80, 0x83, 0x02,                               // attr.mode = 0o100600 = 0x8180:
                                                    //   groups 0x00 0x03 0x02
    0x01,                                           // attr.nlink = 1
    0x00, 0x00, 0x00, 0x00,                         // attr: uid, gid, rdev, blksize = 0
    0x04,                                           // opened.fh = 4
    0x00,                                           // opened.open_flags = 0
];

#[rustfmt::skip]
pub(crate) const REPLY_WRITTEN: &[u8] = &[
    0x19, 0x00, 0x00, 0x00,                         // len = 25
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x10, 0x00,                                     // op = 16 (Write)
    0x0D, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 13
    0x01, 0x00, 0x00, 0x00,                         // meta_len = 1
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x05,                                           // written = 5
];

#[rustfmt::skip]
pub(crate) const REPLY_COPIED: &[u8] = &[
    0x1B, 0x00, 0x00, 0x00,                         // len = 27
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x21, 0x00,                                     // op = 33 (CopyFileRange)
    0x0E, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 14
    0x03, 0x00, 0x00, 0x00,                         // meta_len = 3
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0xF0, 0xA2, 0x04,                               // written = 70000 = 0x11170:
                                                    //   groups 0x70 0x22 0x04
];

#[rustfmt::skip]
pub(crate) const REPLY_DIR: &[u8] = &[
    0x27, 0x00, 0x00, 0x00,                         // len = 39
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x15, 0x00,                                     // op = 21 (Readdir)
    0x0F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 15
    0x0F, 0x00, 0x00, 0x00,                         // meta_len = 15
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x02,                                           // 2 entries
    0x01, 0x01,                                     // [0]: ino 1, offset 1
    0x04,                                           // [0]: kind = DT_DIR (u8: one raw byte)
    0x01, b'.',                                     // [0]: name: len 1, "."
    0x07, 0x02,                                     // [1]: ino 7, offset 2
    0x08,                                           // [1]: kind = DT_REG
    0x05, b'a', b'.', b't', b'x', b't',             // [1]: name: len 5, "a.txt"
];

#[rustfmt::skip]
pub(crate) const REPLY_DIRPLUS: &[u8] = &[
    0x47, 0x00, 0x00, 0x00,                         // len = 71
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x16, 0x00,                                     // op = 22 (Readdirplus)
    0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 16
    0x2F, 0x00, 0x00, 0x00,                         // meta_len = 47
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x02,                                           // 2 entries
    0x07, 0x00,                                     // [0].entry: ino 7, generation 0
    0x07, 0x03, 0x00,                               // [0].entry.attr: ino 7, size 3, blocks 0
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00,             // [0].entry.attr: atime, mtime, ctime {0, 0}
    0xA4, 0x83, 0x02,                               // [0].entry.attr.mode = 0o100644
    0x01,                                           // [0].entry.attr.nlink = 1
    0x00, 0x00, 0x00, 0x00,                         // [0].entry.attr: uid, gid, rdev, blksize
    0x01, 0x08,                                     // [0]: offset 1, kind DT_REG
    0x01, b'f',                                     // [0]: name: len 1, "f"
    0x00, 0x00,                                     // [1].entry: ino 0 (not looked up), gen 0
    0x00, 0x00, 0x00,                               // [1].entry.attr: ino, size, blocks
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00,             // [1].entry.attr: times
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00,             // [1].entry.attr: mode .. blksize
    0x02, 0x04,                                     // [1]: offset 2, kind DT_DIR
    0x03, b's', b'u', b'b',                         // [1]: name: len 3, "sub"
];

#[rustfmt::skip]
pub(crate) const REPLY_STATFS: &[u8] = &[
    0x29, 0x00, 0x00, 0x00,                         // len = 41
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x19, 0x00,                                     // op = 25 (StatfsReq)
    0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 17
    0x11, 0x00, 0x00, 0x00,                         // meta_len = 17
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0xC0, 0x84, 0x3D,                               // blocks = 1_000_000 = 0xF4240:
                                                    //   groups 0x40 0x04 0x3D
    0xF4, 0x03,                                     // bfree = 500 = 0x1F4: 0x74, 0x03
    0x90, 0x03,                                     // bavail = 400 = 0x190: 0x10, 0x03
    0xE8, 0x07,                                     // files = 1000
    0x84, 0x07,                                     // ffree = 900 = 0x384: 0x04, 0x07
    0x80, 0x20,                                     // bsize = 4096
    0xFF, 0x01,                                     // namelen = 255: 0x7F, 0x01
    0x80, 0x20,                                     // frsize = 4096
];

#[rustfmt::skip]
pub(crate) const REPLY_XATTR_SIZE: &[u8] = &[
    0x19, 0x00, 0x00, 0x00,                         // len = 25
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x1B, 0x00,                                     // op = 27 (Getxattr)
    0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 18
    0x01, 0x00, 0x00, 0x00,                         // meta_len = 1 (non-empty: a size)
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x0C,                                           // size = 12
];

#[rustfmt::skip]
pub(crate) const REPLY_XATTR_DATA: &[u8] = &[
    0x26, 0x00, 0x00, 0x00,                         // len = 38
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x1C, 0x00,                                     // op = 28 (Listxattr)
    0x13, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 19
    0x00, 0x00, 0x00, 0x00,                         // meta_len = 0 (empty: data in payload)
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    b'u', b's', b'e', b'r', b'.', b'a', 0x00,       // payload: "user.a\0
    b'u', b's', b'e', b'r', b'.', b'b', 0x00,       //           user.b\0"
];

#[rustfmt::skip]
pub(crate) const REPLY_OFFSET: &[u8] = &[
    0x1B, 0x00, 0x00, 0x00,                         // len = 27
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x20, 0x00,                                     // op = 32 (Lseek)
    0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 20
    0x03, 0x00, 0x00, 0x00,                         // meta_len = 3
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x80, 0x80, 0x01,                               // offset = 8192 (i64): zigzag 16384 =
                                                    //   1 << 14: two empty groups, then 0x01
];

#[rustfmt::skip]
pub(crate) const REPLY_LOCK: &[u8] = &[
    0x1C, 0x00, 0x00, 0x00,                         // len = 28
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x22, 0x00,                                     // op = 34 (Getlk)
    0x15, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 21
    0x04, 0x00, 0x00, 0x00,                         // meta_len = 4
    0x00, 0x00, 0x00, 0x00,                         // aux = 0
    0x00,                                           // start = 0
    0x63,                                           // end = 99
    0x04,                                           // typ = F_UNLCK = 2: zigzag 4
    0x00,                                           // pid = 0
];

#[rustfmt::skip]
pub(crate) const REPLY_ERROR: &[u8] = &[
    0x18, 0x00, 0x00, 0x00,                         // len = 24
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x01, 0x00,                                     // op = 1 (Lookup)
    0x16, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 22
    0x00, 0x00, 0x00, 0x00,                         // meta_len = 0: an error has no body
    0x02, 0x00, 0x00, 0x00,                         // aux = errno ENOENT = 2
];

#[rustfmt::skip]
pub(crate) const REPLY_ERROR_ON_READ: &[u8] = &[
    0x18, 0x00, 0x00, 0x00,                         // len = 24
    0x05, 0x00,                                     // kind = Reply, flags = 0
    0x0F, 0x00,                                     // op = 15 (Read)
    0x17, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 23
    0x00, 0x00, 0x00, 0x00,                         // meta_len = 0
    0x00, 0x00, 0x00, 0x00,                         // aux: set below
];

fn reply(op: Opcode, id: u64, result: Result<Reply<'static>, Errno>) -> ReplyFrame<'static> {
    ReplyFrame { id, op, result }
}

/// Every golden reply with the frame it must decode to.
pub(crate) fn reply_table() -> Vec<(&'static [u8], ReplyFrame<'static>)> {
    use Opcode as O;
    let plain = |ino, mode| Attr {
        ino,
        mode,
        nlink: 1,
        ..Attr::default()
    };
    vec![
        (REPLY_EMPTY, reply(O::Unlink, 7, Ok(Reply::Empty))),
        (
            REPLY_ENTRY,
            reply(
                O::Lookup,
                8,
                Ok(Reply::Entry(Entry {
                    ino: 2,
                    generation: 0,
                    attr: ATTR,
                })),
            ),
        ),
        (REPLY_ATTR, reply(O::Getattr, 9, Ok(Reply::Attr(ATTR)))),
        (
            REPLY_ATTR_NO_XATTRS,
            reply(
                O::Getattr,
                9,
                Ok(Reply::Attr(Attr {
                    mode: ATTR.mode | Attr::NO_XATTRS,
                    ..ATTR
                })),
            ),
        ),
        (
            REPLY_DATA,
            reply(O::Read, 10, Ok(Reply::Data(b"file data"))),
        ),
        (
            REPLY_OPENED,
            reply(
                O::Open,
                11,
                Ok(Reply::Opened(Opened {
                    fh: 3,
                    open_flags: 1,
                })),
            ),
        ),
        (
            REPLY_CREATED,
            reply(
                O::Create,
                12,
                Ok(Reply::Created(Created {
                    entry: Entry {
                        ino: 9,
                        generation: 1,
                        attr: plain(9, 0o100600),
                    },
                    opened: Opened {
                        fh: 4,
                        open_flags: 0,
                    },
                })),
            ),
        ),
        (REPLY_WRITTEN, reply(O::Write, 13, Ok(Reply::Written(5)))),
        (
            REPLY_COPIED,
            reply(O::CopyFileRange, 14, Ok(Reply::Written(70_000))),
        ),
        (
            REPLY_DIR,
            reply(
                O::Readdir,
                15,
                Ok(Reply::Dir(vec![
                    DirEntry {
                        ino: 1,
                        offset: 1,
                        kind: 4,
                        name: b".".to_vec(),
                    },
                    DirEntry {
                        ino: 7,
                        offset: 2,
                        kind: 8,
                        name: b"a.txt".to_vec(),
                    },
                ])),
            ),
        ),
        (
            REPLY_DIRPLUS,
            reply(
                O::Readdirplus,
                16,
                Ok(Reply::DirPlus(vec![
                    DirEntryPlus {
                        entry: Entry {
                            ino: 7,
                            generation: 0,
                            attr: Attr {
                                size: 3,
                                ..plain(7, 0o100644)
                            },
                        },
                        offset: 1,
                        kind: 8,
                        name: b"f".to_vec(),
                    },
                    DirEntryPlus {
                        entry: Entry::default(),
                        offset: 2,
                        kind: 4,
                        name: b"sub".to_vec(),
                    },
                ])),
            ),
        ),
        (
            REPLY_STATFS,
            reply(
                O::StatfsReq,
                17,
                Ok(Reply::Statfs(Statfs {
                    blocks: 1_000_000,
                    bfree: 500,
                    bavail: 400,
                    files: 1000,
                    ffree: 900,
                    bsize: 4096,
                    namelen: 255,
                    frsize: 4096,
                })),
            ),
        ),
        (
            REPLY_XATTR_SIZE,
            reply(O::Getxattr, 18, Ok(Reply::XattrSize(12))),
        ),
        (
            REPLY_XATTR_DATA,
            reply(O::Listxattr, 19, Ok(Reply::Data(b"user.a\0user.b\0"))),
        ),
        (REPLY_OFFSET, reply(O::Lseek, 20, Ok(Reply::Offset(8192)))),
        (
            REPLY_LOCK,
            reply(
                O::Getlk,
                21,
                Ok(Reply::Lock(Lock {
                    start: 0,
                    end: 99,
                    typ: 2,
                    pid: 0,
                })),
            ),
        ),
        (REPLY_ERROR, reply(O::Lookup, 22, Err(Errno::ENOENT))),
    ]
}

#[test]
fn replies() {
    let table = reply_table();
    for (bytes, expected) in table {
        eprintln!("{:?} reply {:?}", expected.op, expected.result);
        check(bytes, expected);
    }
}

/// The table holds one reply of each kind, an xattr size and xattr data, and an error.
#[test]
fn reply_table_covers_every_reply_kind() {
    let table = reply_table();
    let has = |f: &dyn Fn(&ReplyFrame<'_>) -> bool| table.iter().any(|(_, r)| f(r));
    assert!(has(&|r| r.result.is_err()));
    assert!(has(&|r| matches!(r.result, Ok(Reply::XattrSize(_)))));
    assert!(has(
        &|r| r.op.reply_kind() == ReplyKind::Xattr && matches!(r.result, Ok(Reply::Data(_)))
    ));
    for kind in [
        ReplyKind::Empty,
        ReplyKind::Entry,
        ReplyKind::Attr,
        ReplyKind::Data,
        ReplyKind::Opened,
        ReplyKind::Created,
        ReplyKind::Written,
        ReplyKind::Dir,
        ReplyKind::DirPlus,
        ReplyKind::Statfs,
        ReplyKind::Xattr,
        ReplyKind::Offset,
        ReplyKind::Lock,
    ] {
        assert!(
            has(&|r| r.op.reply_kind() == kind && r.result.is_ok()),
            "{kind:?}"
        );
    }
}

/// An error reply to an opcode whose success carries a payload: the errno is in `aux`, and
/// the frame is the same shape as any other error. Also shows `aux` is little endian.
#[test]
fn error_reply_to_read() {
    let mut bytes = REPLY_ERROR_ON_READ.to_vec();
    bytes[20..24].copy_from_slice(&[0x05, 0x00, 0x00, 0x00]); // aux = EIO = 5
    check(&bytes, reply(Opcode::Read, 23, Err(Errno::EIO)));
    bytes[20..24].copy_from_slice(&[0x34, 0x12, 0x00, 0x00]); // aux = 0x1234 (an unknown errno)
    check(&bytes, reply(Opcode::Read, 23, Err(Errno(0x1234))));
}

/// Every golden frame in this file and in `golden_requests`, for the hostile-input tests.
pub(crate) fn all_frames() -> Vec<&'static [u8]> {
    let mut all = vec![
        HELLO_WITH_TOKEN,
        HELLO_WITHOUT_TOKEN,
        WELCOME,
        REFUSED,
        SHUTDOWN,
        WRITE_WITH_PAYLOAD,
        REPLY_ERROR_ON_READ,
    ];
    all.extend(reply_table().into_iter().map(|(b, _)| b));
    all.extend(
        super::golden_requests::request_table()
            .into_iter()
            .map(|(b, _)| b),
    );
    all
}

#[rustfmt::skip]
pub(crate) const MKDIR_WITH_GROUPS: &[u8] = &[
    0x27, 0x00, 0x00, 0x00,                         // len = 39
    0x04, 0x00,                                     // kind = Request, flags = 0
    0x08, 0x00,                                     // op = 8 (Mkdir)
    0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 7
    0x0F, 0x00, 0x00, 0x00,                         // meta_len = 15
    0x01, 0x00, 0x00, 0x00,                         // aux = export 1
    0xE8, 0x07,                                     // ctx.uid = 1000
    0x64,                                           // ctx.gid = 100
    0x2A,                                           // ctx.pid = 42
    0x03,                                           // ctx.groups: len 3
    0x00,                                           //   0 (root's group)
    0x1B,                                           //   27
    0xD0, 0x0F,                                     //   2000 = 0x50 | 0x80, then 2000 >> 7 = 15
    0x01,                                           // parent = 1
    0x01, b'd',                                     // name: len 1, "d"
    0xFD, 0x0F,                                     // mode = 0o3775 = 2045: 0x7D|0x80, 15
    0x02,                                           // umask = 0o2
];

/// Creating requests carry the caller's supplementary groups after its pid.
#[test]
fn mkdir_with_groups() {
    check(
        MKDIR_WITH_GROUPS,
        RequestFrame {
            id: 7,
            export: 1,
            ctx: Ctx {
                uid: 1000,
                gid: 100,
                pid: 42,
                groups: vec![0, 27, 2000],
            },
            body: Request::Mkdir(Mkdir {
                parent: 1,
                name: b"d",
                mode: 0o3775,
                umask: 0o2,
            }),
            payload: &[],
        },
    );
}
