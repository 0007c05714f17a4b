//! One golden request frame per opcode. Every frame has `id = 0xA0 + opcode`, export 1 and
//! the caller `ctx = {uid 1000, gid 1000, pid 42, no groups}`, so the first 30 bytes differ only in
//! `len`, `op`, `id` and `meta_len`; the body follows the `ctx` line.
//!
//! See `golden.rs` for postcard's encoding rules.

use super::check;
use super::golden::CTX;
use crate::*;

fn req(op: u64, body: Request<'static>) -> RequestFrame<'static> {
    RequestFrame {
        id: 0xA0 + op,
        export: 1,
        ctx: CTX,
        body,
        payload: &[],
    }
}

/// Every opcode's golden frame with the request it must decode to, in opcode order.
#[rustfmt::skip]
pub(crate) fn request_table() -> Vec<(&'static [u8], RequestFrame<'static>)> {
    vec![
        (&[
            0x23, 0x00, 0x00, 0x00,                         // len = 35
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x01, 0x00,                                     // op = 1 (Lookup)
            0xA1, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xA1
            0x0B, 0x00, 0x00, 0x00,                         // meta_len = 11
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx: uid 1000 = 0x68|0x80, 1000>>7 = 7;
                                                            //   gid 1000; pid 42; groups: len 0
            0x01,                                           // parent = 1
            0x03, b'f', b'o', b'o',                         // name: len 3, "foo"
        ], req(1, Request::Lookup(Lookup { parent: 1, name: b"foo" }))),
        (&[
            0x24, 0x00, 0x00, 0x00,                         // len = 36
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x02, 0x00,                                     // op = 2 (Forget)
            0xA2, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xA2
            0x0C, 0x00, 0x00, 0x00,                         // meta_len = 12
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x02,                                           // nodes: 2 pairs
            0x02, 0x01,                                     // (node 2, count 1)
            0xAC, 0x02, 0x05,                               // (node 300: 0x2C|0x80, 300>>7 = 2; count 5)
        ], req(2, Request::Forget(Forget { nodes: vec![(2, 1), (300, 5)] }))),
        (&[
            0x21, 0x00, 0x00, 0x00,                         // len = 33
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x03, 0x00,                                     // op = 3 (Getattr)
            0xA3, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xA3
            0x09, 0x00, 0x00, 0x00,                         // meta_len = 9
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x02,                                           // ino = 2
            0x01, 0x07,                                     // fh = Some(7)
        ], req(3, Request::Getattr(Getattr { ino: 2, fh: Some(7) }))),
        (&[
            0x2F, 0x00, 0x00, 0x00,                         // len = 47
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x04, 0x00,                                     // op = 4 (Setattr)
            0xA4, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xA4
            0x17, 0x00, 0x00, 0x00,                         // meta_len = 23
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x02,                                           // ino = 2
            0x00,                                           // fh = None
            0x01, 0xA4, 0x03,                               // mode = Some(0o644 = 420 = 0x1A4: 0x24|0x80, 3)
            0x00,                                           // uid = None
            0x00,                                           // gid = None
            0x01, 0x00,                                     // size = Some(0)
            0x01, 0x00,                                     // atime = Some(SetTime::Now: variant 0)
            0x01, 0x01,                                     // mtime = Some(SetTime::At: variant 1,
            0x80, 0x89, 0x7A,                               //   sec 1_000_000: zigzag 2_000_000 = 0x1E8480:
                                                            //   groups 0x00 0x09 0x7A
            0x05,                                           //   nsec 5)
        ], req(4, Request::Setattr(Setattr {
            ino: 2, fh: None, mode: Some(0o644), uid: None, gid: None, size: Some(0),
            atime: Some(SetTime::Now),
            mtime: Some(SetTime::At(Timespec { sec: 1_000_000, nsec: 5 })),
        }))),
        (&[
            0x1F, 0x00, 0x00, 0x00,                         // len = 31
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x05, 0x00,                                     // op = 5 (Readlink)
            0xA5, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xA5
            0x07, 0x00, 0x00, 0x00,                         // meta_len = 7
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x03,                                           // ino = 3
        ], req(5, Request::Readlink(Readlink { ino: 3 }))),
        (&[
            0x25, 0x00, 0x00, 0x00,                         // len = 37
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x06, 0x00,                                     // op = 6 (Symlink)
            0xA6, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xA6
            0x0D, 0x00, 0x00, 0x00,                         // meta_len = 13
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // parent = 1
            0x02, b'l', b'n',                               // name: len 2, "ln"
            0x02, b'/', b't',                               // target: len 2, "/t"
        ], req(6, Request::Symlink(Symlink { parent: 1, name: b"ln", target: b"/t" }))),
        (&[
            0x25, 0x00, 0x00, 0x00,                         // len = 37
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x07, 0x00,                                     // op = 7 (Mknod)
            0xA7, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xA7
            0x0D, 0x00, 0x00, 0x00,                         // meta_len = 13
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // parent = 1
            0x01, b'p',                                     // name: len 1, "p"
            0xA4, 0x23,                                     // mode = S_IFIFO|0o644 = 0x11A4: 0x24|0x80, 0x23
            0x00,                                           // rdev = 0
            0x12,                                           // umask = 0o22 = 18
        ], req(7, Request::Mknod(Mknod { parent: 1, name: b"p", mode: 0o10644, rdev: 0, umask: 0o22 }))),
        (&[
            0x24, 0x00, 0x00, 0x00,                         // len = 36
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x08, 0x00,                                     // op = 8 (Mkdir)
            0xA8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xA8
            0x0C, 0x00, 0x00, 0x00,                         // meta_len = 12
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // parent = 1
            0x01, b'd',                                     // name: len 1, "d"
            0xED, 0x03,                                     // mode = 0o755 = 493 = 0x1ED: 0x6D|0x80, 3
            0x12,                                           // umask = 0o22 = 18
        ], req(8, Request::Mkdir(Mkdir { parent: 1, name: b"d", mode: 0o755, umask: 0o22 }))),
        (&[
            0x21, 0x00, 0x00, 0x00,                         // len = 33
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x09, 0x00,                                     // op = 9 (Unlink)
            0xA9, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xA9
            0x09, 0x00, 0x00, 0x00,                         // meta_len = 9
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // parent = 1
            0x01, b'x',                                     // name: len 1, "x"
        ], req(9, Request::Unlink(Unlink { parent: 1, name: b"x" }))),
        (&[
            0x21, 0x00, 0x00, 0x00,                         // len = 33
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x0A, 0x00,                                     // op = 10 (Rmdir)
            0xAA, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xAA
            0x09, 0x00, 0x00, 0x00,                         // meta_len = 9
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // parent = 1
            0x01, b'd',                                     // name: len 1, "d"
        ], req(10, Request::Rmdir(Rmdir { parent: 1, name: b"d" }))),
        (&[
            0x25, 0x00, 0x00, 0x00,                         // len = 37
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x0B, 0x00,                                     // op = 11 (Rename)
            0xAB, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xAB
            0x0D, 0x00, 0x00, 0x00,                         // meta_len = 13
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // parent = 1
            0x01, b'a',                                     // name: len 1, "a"
            0x02,                                           // newparent = 2
            0x01, b'b',                                     // newname: len 1, "b"
            0x01,                                           // flags = RENAME_NOREPLACE = 1
        ], req(11, Request::Rename(Rename { parent: 1, name: b"a", newparent: 2, newname: b"b", flags: 1 }))),
        (&[
            0x22, 0x00, 0x00, 0x00,                         // len = 34
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x0C, 0x00,                                     // op = 12 (Link)
            0xAC, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xAC
            0x0A, 0x00, 0x00, 0x00,                         // meta_len = 10
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x01,                                           // newparent = 1
            0x01, b'h',                                     // newname: len 1, "h"
        ], req(12, Request::Link(Link { ino: 5, newparent: 1, newname: b"h" }))),
        (&[
            0x23, 0x00, 0x00, 0x00,                         // len = 35
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x0D, 0x00,                                     // op = 13 (Open)
            0xAD, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xAD
            0x0B, 0x00, 0x00, 0x00,                         // meta_len = 11
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x04,                                           // flags = O_RDWR = 2: zigzag 4
            0x80, 0x80, 0x04,                               // prefetch = 65536 = 0x10000
        ], req(13, Request::Open(Open { ino: 5, flags: 2, prefetch: 65536 }))),
        (&[
            0x28, 0x00, 0x00, 0x00,                         // len = 40
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x0E, 0x00,                                     // op = 14 (Create)
            0xAE, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xAE
            0x10, 0x00, 0x00, 0x00,                         // meta_len = 16
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // parent = 1
            0x03, b'n', b'e', b'w',                         // name: len 3, "new"
            0xA4, 0x03,                                     // mode = 0o644 = 420
            0x12,                                           // umask = 0o22
            0x82, 0x01,                                     // flags = O_WRONLY|O_CREAT = 0o101 = 65:
                                                            //   zigzag 130 = 0x82: 0x02|0x80, 1
        ], req(14, Request::Create(Create { parent: 1, name: b"new", mode: 0o644, umask: 0o22, flags: 0o101 }))),
        (&[
            0x25, 0x00, 0x00, 0x00,                         // len = 37
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x0F, 0x00,                                     // op = 15 (Read)
            0xAF, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xAF
            0x0D, 0x00, 0x00, 0x00,                         // meta_len = 13
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x03,                                           // fh = 3
            0x80, 0x20,                                     // offset = 4096 = 0x1000: 0x00|0x80, 0x20
            0x80, 0x80, 0x04,                               // size = 65536 = 1 << 16: 0x80, 0x80, 1 << 2
        ], req(15, Request::Read(Read { ino: 5, fh: 3, offset: 4096, size: 65536 }))),
        (&[
            0x23, 0x00, 0x00, 0x00,                         // len = 35
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x10, 0x00,                                     // op = 16 (Write)
            0xB0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xB0
            0x0B, 0x00, 0x00, 0x00,                         // meta_len = 11
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x03,                                           // fh = 3
            0x00,                                           // offset = 0
            0x00,                                           // write_flags = 0
            0x02,                                           // flags = O_WRONLY = 1: zigzag 2
                                                            // (empty payload: a zero-length write)
        ], req(16, Request::Write(Write { ino: 5, fh: 3, offset: 0, write_flags: 0, flags: 1 }))),
        (&[
            0x2A, 0x00, 0x00, 0x00,                         // len = 42
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x11, 0x00,                                     // op = 17 (Flush)
            0xB1, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xB1
            0x12, 0x00, 0x00, 0x00,                         // meta_len = 18
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x03,                                           // fh = 3
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF,                   // lock_owner = u64::MAX: nine full
            0xFF, 0xFF, 0xFF, 0xFF, 0x01,                   //   7-bit groups (63 bits), then 1
        ], req(17, Request::Flush(Flush { ino: 5, fh: 3, lock_owner: u64::MAX }))),
        (&[
            0x24, 0x00, 0x00, 0x00,                         // len = 36
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x12, 0x00,                                     // op = 18 (Release)
            0xB2, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xB2
            0x0C, 0x00, 0x00, 0x00,                         // meta_len = 12
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x03,                                           // fh = 3
            0x00,                                           // flags = 0
            0x01, 0x09,                                     // lock_owner = Some(9)
            0x01,                                           // flush = true
        ], req(18, Request::Release(Release { ino: 5, fh: 3, flags: 0, lock_owner: Some(9), flush: true }))),
        (&[
            0x21, 0x00, 0x00, 0x00,                         // len = 33
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x13, 0x00,                                     // op = 19 (Fsync)
            0xB3, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xB3
            0x09, 0x00, 0x00, 0x00,                         // meta_len = 9
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x03,                                           // fh = 3
            0x01,                                           // datasync = true
        ], req(19, Request::Fsync(Fsync { ino: 5, fh: 3, datasync: true }))),
        (&[
            0x22, 0x00, 0x00, 0x00,                         // len = 34
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x14, 0x00,                                     // op = 20 (Opendir)
            0xB4, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xB4
            0x0A, 0x00, 0x00, 0x00,                         // meta_len = 10
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // ino = 1
            0x80, 0x80, 0x08,                               // flags = O_DIRECTORY = 1 << 16:
                                                            //   zigzag 1 << 17: 0x80, 0x80, 1 << 3
        ], req(20, Request::Opendir(Opendir { ino: 1, flags: 0o200000 }))),
        (&[
            0x23, 0x00, 0x00, 0x00,                         // len = 35
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x15, 0x00,                                     // op = 21 (Readdir)
            0xB5, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xB5
            0x0B, 0x00, 0x00, 0x00,                         // meta_len = 11
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // ino = 1
            0x04,                                           // fh = 4
            0x00,                                           // offset = 0
            0x80, 0x20,                                     // size = 4096
        ], req(21, Request::Readdir(Readdir { ino: 1, fh: 4, offset: 0, size: 4096 }))),
        (&[
            0x23, 0x00, 0x00, 0x00,                         // len = 35
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x16, 0x00,                                     // op = 22 (Readdirplus)
            0xB6, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xB6
            0x0B, 0x00, 0x00, 0x00,                         // meta_len = 11
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // ino = 1
            0x04,                                           // fh = 4
            0x02,                                           // offset = 2
            0x80, 0x20,                                     // size = 4096
        ], req(22, Request::Readdirplus(Readdirplus { ino: 1, fh: 4, offset: 2, size: 4096 }))),
        (&[
            0x21, 0x00, 0x00, 0x00,                         // len = 33
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x17, 0x00,                                     // op = 23 (Releasedir)
            0xB7, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xB7
            0x09, 0x00, 0x00, 0x00,                         // meta_len = 9
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // ino = 1
            0x04,                                           // fh = 4
            0x00,                                           // flags = 0
        ], req(23, Request::Releasedir(Releasedir { ino: 1, fh: 4, flags: 0 }))),
        (&[
            0x21, 0x00, 0x00, 0x00,                         // len = 33
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x18, 0x00,                                     // op = 24 (Fsyncdir)
            0xB8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xB8
            0x09, 0x00, 0x00, 0x00,                         // meta_len = 9
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // ino = 1
            0x04,                                           // fh = 4
            0x00,                                           // datasync = false
        ], req(24, Request::Fsyncdir(Fsyncdir { ino: 1, fh: 4, datasync: false }))),
        (&[
            0x1F, 0x00, 0x00, 0x00,                         // len = 31
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x19, 0x00,                                     // op = 25 (StatfsReq)
            0xB9, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xB9
            0x07, 0x00, 0x00, 0x00,                         // meta_len = 7
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // ino = 1
        ], req(25, Request::StatfsReq(StatfsReq { ino: 1 }))),
        (&[
            0x20, 0x00, 0x00, 0x00,                         // len = 32
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x1A, 0x00,                                     // op = 26 (Access)
            0xBA, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xBA
            0x08, 0x00, 0x00, 0x00,                         // meta_len = 8
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x08,                                           // mask = R_OK = 4: zigzag 8
        ], req(26, Request::Access(Access { ino: 5, mask: 4 }))),
        (&[
            0x27, 0x00, 0x00, 0x00,                         // len = 39
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x1B, 0x00,                                     // op = 27 (Getxattr)
            0xBB, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xBB
            0x0F, 0x00, 0x00, 0x00,                         // meta_len = 15
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x06, b'u', b's', b'e', b'r', b'.', b'a',       // name: len 6, "user.a"
            0x00,                                           // size = 0 (size query)
        ], req(27, Request::Getxattr(Getxattr { ino: 5, name: b"user.a", size: 0 }))),
        (&[
            0x21, 0x00, 0x00, 0x00,                         // len = 33
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x1C, 0x00,                                     // op = 28 (Listxattr)
            0xBC, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xBC
            0x09, 0x00, 0x00, 0x00,                         // meta_len = 9
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x80, 0x02,                                     // size = 256 = 0x100: 0x00|0x80, 2
        ], req(28, Request::Listxattr(Listxattr { ino: 5, size: 256 }))),
        (&[
            0x2A, 0x00, 0x00, 0x00,                         // len = 42
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x1D, 0x00,                                     // op = 29 (Setxattr)
            0xBD, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xBD
            0x12, 0x00, 0x00, 0x00,                         // meta_len = 18
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x06, b'u', b's', b'e', b'r', b'.', b'a',       // name: len 6, "user.a"
            0x02, b'v', b'1',                               // value: len 2, "v1"
            0x02,                                           // flags = XATTR_CREATE = 1: zigzag 2
        ], req(29, Request::Setxattr(Setxattr { ino: 5, name: b"user.a", value: b"v1", flags: 1 }))),
        (&[
            0x26, 0x00, 0x00, 0x00,                         // len = 38
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x1E, 0x00,                                     // op = 30 (Removexattr)
            0xBE, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xBE
            0x0E, 0x00, 0x00, 0x00,                         // meta_len = 14
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x06, b'u', b's', b'e', b'r', b'.', b'a',       // name: len 6, "user.a"
        ], req(30, Request::Removexattr(Removexattr { ino: 5, name: b"user.a" }))),
        (&[
            0x25, 0x00, 0x00, 0x00,                         // len = 37
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x1F, 0x00,                                     // op = 31 (Fallocate)
            0xBF, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xBF
            0x0D, 0x00, 0x00, 0x00,                         // meta_len = 13
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x03,                                           // fh = 3
            0x00,                                           // offset = 0
            0x80, 0x80, 0x40,                               // length = 1 << 20: 0x80, 0x80, 1 << 6
            0x00,                                           // mode = 0
        ], req(31, Request::Fallocate(Fallocate { ino: 5, fh: 3, offset: 0, length: 1 << 20, mode: 0 }))),
        (&[
            0x23, 0x00, 0x00, 0x00,                         // len = 35
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x20, 0x00,                                     // op = 32 (Lseek)
            0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xC0
            0x0B, 0x00, 0x00, 0x00,                         // meta_len = 11
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x03,                                           // fh = 3
            0xC8, 0x01,                                     // offset = 100 (i64): zigzag 200 = 0xC8:
                                                            //   0x48|0x80, 1
            0x06,                                           // whence = SEEK_DATA = 3: zigzag 6
        ], req(32, Request::Lseek(Lseek { ino: 5, fh: 3, offset: 100, whence: 3 }))),
        (&[
            0x28, 0x00, 0x00, 0x00,                         // len = 40
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x21, 0x00,                                     // op = 33 (CopyFileRange)
            0xC1, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xC1
            0x10, 0x00, 0x00, 0x00,                         // meta_len = 16
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino_in = 5
            0x03,                                           // fh_in = 3
            0x00,                                           // offset_in = 0
            0x06,                                           // ino_out = 6
            0x04,                                           // fh_out = 4
            0x80, 0x01,                                     // offset_out = 128: 0x00|0x80, 1
            0xE8, 0x07,                                     // len = 1000
            0x00,                                           // flags = 0
        ], req(33, Request::CopyFileRange(CopyFileRange {
            ino_in: 5, fh_in: 3, offset_in: 0, ino_out: 6, fh_out: 4, offset_out: 128, len: 1000,
            flags: 0,
        }))),
        (&[
            0x2E, 0x00, 0x00, 0x00,                         // len = 46
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x22, 0x00,                                     // op = 34 (Getlk)
            0xC2, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xC2
            0x16, 0x00, 0x00, 0x00,                         // meta_len = 22
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x03,                                           // fh = 3
            0x07,                                           // owner = 7
            0x00,                                           // lock.start = 0
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF,                   // lock.end = u64::MAX (to the end)
            0xFF, 0xFF, 0xFF, 0xFF, 0x01,
            0x02,                                           // lock.typ = F_WRLCK = 1: zigzag 2
            0x2A,                                           // lock.pid = 42
        ], req(34, Request::Getlk(Getlk {
            ino: 5, fh: 3, owner: 7, lock: Lock { start: 0, end: u64::MAX, typ: 1, pid: 42 },
        }))),
        (&[
            0x26, 0x00, 0x00, 0x00,                         // len = 38
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x23, 0x00,                                     // op = 35 (Setlk)
            0xC3, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xC3
            0x0E, 0x00, 0x00, 0x00,                         // meta_len = 14
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x03,                                           // fh = 3
            0x07,                                           // owner = 7
            0x0A,                                           // lock.start = 10
            0x13,                                           // lock.end = 19
            0x00,                                           // lock.typ = F_RDLCK = 0
            0x2A,                                           // lock.pid = 42
            0x01,                                           // sleep = true
        ], req(35, Request::Setlk(Setlk {
            ino: 5, fh: 3, owner: 7, lock: Lock { start: 10, end: 19, typ: 0, pid: 42 }, sleep: true,
        }))),
        (&[
            0x22, 0x00, 0x00, 0x00,                         // len = 34
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x24, 0x00,                                     // op = 36 (Flock)
            0xC4, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xC4
            0x0A, 0x00, 0x00, 0x00,                         // meta_len = 10
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x05,                                           // ino = 5
            0x03,                                           // fh = 3
            0x07,                                           // owner = 7
            0x0C,                                           // op = LOCK_EX|LOCK_NB = 6: zigzag 12
        ], req(36, Request::Flock(Flock { ino: 5, fh: 3, owner: 7, op: 6 }))),
        (&[
            0x1F, 0x00, 0x00, 0x00,                         // len = 31
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x25, 0x00,                                     // op = 37 (Watch)
            0xC5, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xC5
            0x07, 0x00, 0x00, 0x00,                         // meta_len = 7
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0x01,                                           // on = true
        ], req(37, Request::Watch(Watch { on: true }))),
        (&[
            0x2E, 0x00, 0x00, 0x00,                         // len = 46
            0x04, 0x00,                                     // kind = Request, flags = 0
            0x26, 0x00,                                     // op = 38 (Replay)
            0xC6, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // id = 0xC6
            0x16, 0x00, 0x00, 0x00,                         // meta_len = 22
            0x01, 0x00, 0x00, 0x00,                         // aux = export 1
            0xE8, 0x07, 0xE8, 0x07, 0x2A, 0x00,             // ctx
            0xA4, 0x13,                                     // tid = 1234: zigzag 2468
            0xAB, 0x01,                                     // link = 0xAB: 0x2B|0x80, 1
            0x01,                                           // change: Some
            0x06,                                           //   kind = Renamed (variant 6)
            0x01, b'a',                                     //   path: len 1, "a"
            0x01, b'b',                                     //   to: len 1, "b"
            0x01,                                           //   parent = 1
            0x02,                                           //   to_parent = 2
            0x80, 0x80, 0x02,                               //   file_type = S_IFREG 0x8000
            0x00,                                           //   entry: None
        ], req(38, Request::Replay(Replay { tid: 1234, link: 0xAB, change: Some(Change {
            kind: ChangeKind::Renamed,
            path: b"a".to_vec(),
            to: b"b".to_vec(),
            parent: 1,
            to_parent: 2,
            file_type: 0o100000,
            entry: None,
        }) }))),
    ]
}

/// Each opcode's golden frame decodes to its request and re-encodes to the same bytes.
#[test]
fn every_opcode() {
    for (bytes, expected) in request_table() {
        eprintln!("{:?}", expected.body.opcode());
        check(bytes, expected);
    }
}

/// The table has exactly one frame per opcode, in `Opcode::ALL` order, so a new opcode fails
/// here until it has a golden frame.
#[test]
fn table_covers_every_opcode_once() {
    let ops: Vec<Opcode> = request_table()
        .iter()
        .map(|(_, r)| r.body.opcode())
        .collect();
    assert_eq!(ops, Opcode::ALL);
    for (i, op) in Opcode::ALL.iter().enumerate() {
        assert_eq!(*op as u16 as usize, i + 1, "opcodes are 1..=N in order");
        assert_eq!(Opcode::from_u16(*op as u16), Some(*op));
    }
}
