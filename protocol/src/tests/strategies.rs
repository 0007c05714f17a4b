//! proptest strategies for every message. Borrowed fields (`&'a [u8]`, `&'a str`) are leaked
//! so that generated values are `'static`; the leak is a few bytes per case.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

use crate::*;

fn leak(v: Vec<u8>) -> &'static [u8] {
    Box::leak(v.into_boxed_slice())
}

/// Arbitrary bytes, up to `max` of them.
pub(crate) fn bytes(max: usize) -> impl Strategy<Value = &'static [u8]> + Clone {
    vec(any::<u8>(), 0..=max).prop_map(leak)
}

fn name() -> impl Strategy<Value = &'static [u8]> + Clone {
    bytes(24)
}

fn text() -> impl Strategy<Value = String> + Clone {
    "\\PC{0,16}"
}

fn leaked_text() -> impl Strategy<Value = &'static str> + Clone {
    text().prop_map(|s| &*Box::leak(s.into_boxed_str()))
}

// Integers: mostly small (one- and two-byte varints), sometimes anything, including extremes.
fn u64s() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![0..300u64, any::<u64>(), Just(u64::MAX)]
}
fn u32s() -> impl Strategy<Value = u32> + Clone {
    prop_oneof![0..300u32, any::<u32>(), Just(u32::MAX)]
}
fn i32s() -> impl Strategy<Value = i32> + Clone {
    prop_oneof![-300..300i32, any::<i32>(), Just(i32::MIN), Just(i32::MAX)]
}
fn i64s() -> impl Strategy<Value = i64> + Clone {
    prop_oneof![-300..300i64, any::<i64>(), Just(i64::MIN), Just(i64::MAX)]
}

fn timespec() -> impl Strategy<Value = Timespec> + Clone {
    (i64s(), u32s()).prop_map(|(sec, nsec)| Timespec { sec, nsec })
}

fn set_time() -> impl Strategy<Value = SetTime> + Clone {
    prop_oneof![Just(SetTime::Now), timespec().prop_map(SetTime::At)]
}

fn attr() -> impl Strategy<Value = Attr> + Clone {
    (
        (u64s(), u64s(), u64s()),
        (timespec(), timespec(), timespec()),
        (u32s(), u32s(), u32s(), u32s(), u32s(), u32s()),
    )
        .prop_map(
            |(
                (ino, size, blocks),
                (atime, mtime, ctime),
                (mode, nlink, uid, gid, rdev, blksize),
            )| {
                Attr {
                    ino,
                    size,
                    blocks,
                    atime,
                    mtime,
                    ctime,
                    mode,
                    nlink,
                    uid,
                    gid,
                    rdev,
                    blksize,
                }
            },
        )
}

fn entry() -> impl Strategy<Value = Entry> + Clone {
    (u64s(), u64s(), attr()).prop_map(|(ino, generation, attr)| Entry {
        ino,
        generation,
        attr,
    })
}

fn lock() -> impl Strategy<Value = Lock> + Clone {
    (u64s(), u64s(), i32s(), u32s()).prop_map(|(start, end, typ, pid)| Lock {
        start,
        end,
        typ,
        pid,
    })
}

fn opened() -> impl Strategy<Value = Opened> + Clone {
    (u64s(), u32s()).prop_map(|(fh, open_flags)| Opened { fh, open_flags })
}

pub(crate) fn ctx() -> impl Strategy<Value = Ctx> + Clone {
    (
        u32s(),
        u32s(),
        u32s(),
        proptest::collection::vec(u32s(), 0..40),
    )
        .prop_map(|(uid, gid, pid, groups)| Ctx {
            uid,
            gid,
            pid,
            groups,
        })
}

/// Arbitrary bodies for one opcode. The match is exhaustive, so a new opcode needs a strategy.
pub(crate) fn request_body(op: Opcode) -> BoxedStrategy<Request<'static>> {
    use Request as R;
    match op {
        Opcode::Lookup => (u64s(), name())
            .prop_map(|(parent, name)| R::Lookup(Lookup { parent, name }))
            .boxed(),
        Opcode::Forget => vec((u64s(), u64s()), 0..8)
            .prop_map(|nodes| R::Forget(Forget { nodes }))
            .boxed(),
        Opcode::Getattr => (u64s(), option::of(u64s()))
            .prop_map(|(ino, fh)| R::Getattr(Getattr { ino, fh }))
            .boxed(),
        Opcode::Setattr => (
            (u64s(), option::of(u64s()), option::of(u32s())),
            (option::of(u32s()), option::of(u32s()), option::of(u64s())),
            (option::of(set_time()), option::of(set_time())),
        )
            .prop_map(|((ino, fh, mode), (uid, gid, size), (atime, mtime))| {
                R::Setattr(Setattr {
                    ino,
                    fh,
                    mode,
                    uid,
                    gid,
                    size,
                    atime,
                    mtime,
                })
            })
            .boxed(),
        Opcode::Readlink => u64s().prop_map(|ino| R::Readlink(Readlink { ino })).boxed(),
        Opcode::Symlink => (u64s(), name(), name())
            .prop_map(|(parent, name, target)| {
                R::Symlink(Symlink {
                    parent,
                    name,
                    target,
                })
            })
            .boxed(),
        Opcode::Mknod => (u64s(), name(), u32s(), u32s(), u32s())
            .prop_map(|(parent, name, mode, rdev, umask)| {
                R::Mknod(Mknod {
                    parent,
                    name,
                    mode,
                    rdev,
                    umask,
                })
            })
            .boxed(),
        Opcode::Mkdir => (u64s(), name(), u32s(), u32s())
            .prop_map(|(parent, name, mode, umask)| {
                R::Mkdir(Mkdir {
                    parent,
                    name,
                    mode,
                    umask,
                })
            })
            .boxed(),
        Opcode::Unlink => (u64s(), name())
            .prop_map(|(parent, name)| R::Unlink(Unlink { parent, name }))
            .boxed(),
        Opcode::Rmdir => (u64s(), name())
            .prop_map(|(parent, name)| R::Rmdir(Rmdir { parent, name }))
            .boxed(),
        Opcode::Rename => (u64s(), name(), u64s(), name(), u32s())
            .prop_map(|(parent, name, newparent, newname, flags)| {
                R::Rename(Rename {
                    parent,
                    name,
                    newparent,
                    newname,
                    flags,
                })
            })
            .boxed(),
        Opcode::Link => (u64s(), u64s(), name())
            .prop_map(|(ino, newparent, newname)| {
                R::Link(Link {
                    ino,
                    newparent,
                    newname,
                })
            })
            .boxed(),
        Opcode::Open => (u64s(), i32s(), u32s())
            .prop_map(|(ino, flags, prefetch)| {
                R::Open(Open {
                    ino,
                    flags,
                    prefetch,
                })
            })
            .boxed(),
        Opcode::Create => (u64s(), name(), u32s(), u32s(), i32s())
            .prop_map(|(parent, name, mode, umask, flags)| {
                R::Create(Create {
                    parent,
                    name,
                    mode,
                    umask,
                    flags,
                })
            })
            .boxed(),
        Opcode::Read => (u64s(), u64s(), u64s(), u32s())
            .prop_map(|(ino, fh, offset, size)| {
                R::Read(Read {
                    ino,
                    fh,
                    offset,
                    size,
                })
            })
            .boxed(),
        Opcode::Write => (u64s(), u64s(), u64s(), u32s(), i32s())
            .prop_map(|(ino, fh, offset, write_flags, flags)| {
                R::Write(Write {
                    ino,
                    fh,
                    offset,
                    write_flags,
                    flags,
                })
            })
            .boxed(),
        Opcode::Flush => (u64s(), u64s(), u64s())
            .prop_map(|(ino, fh, lock_owner)| {
                R::Flush(Flush {
                    ino,
                    fh,
                    lock_owner,
                })
            })
            .boxed(),
        Opcode::Release => (u64s(), u64s(), i32s(), option::of(u64s()), any::<bool>())
            .prop_map(|(ino, fh, flags, lock_owner, flush)| {
                R::Release(Release {
                    ino,
                    fh,
                    flags,
                    lock_owner,
                    flush,
                })
            })
            .boxed(),
        Opcode::Fsync => (u64s(), u64s(), any::<bool>())
            .prop_map(|(ino, fh, datasync)| R::Fsync(Fsync { ino, fh, datasync }))
            .boxed(),
        Opcode::Opendir => (u64s(), i32s())
            .prop_map(|(ino, flags)| R::Opendir(Opendir { ino, flags }))
            .boxed(),
        Opcode::Readdir => (u64s(), u64s(), u64s(), u32s())
            .prop_map(|(ino, fh, offset, size)| {
                R::Readdir(Readdir {
                    ino,
                    fh,
                    offset,
                    size,
                })
            })
            .boxed(),
        Opcode::Readdirplus => (u64s(), u64s(), u64s(), u32s())
            .prop_map(|(ino, fh, offset, size)| {
                R::Readdirplus(Readdirplus {
                    ino,
                    fh,
                    offset,
                    size,
                })
            })
            .boxed(),
        Opcode::Releasedir => (u64s(), u64s(), i32s())
            .prop_map(|(ino, fh, flags)| R::Releasedir(Releasedir { ino, fh, flags }))
            .boxed(),
        Opcode::Fsyncdir => (u64s(), u64s(), any::<bool>())
            .prop_map(|(ino, fh, datasync)| R::Fsyncdir(Fsyncdir { ino, fh, datasync }))
            .boxed(),
        Opcode::StatfsReq => u64s()
            .prop_map(|ino| R::StatfsReq(StatfsReq { ino }))
            .boxed(),
        Opcode::Access => (u64s(), i32s())
            .prop_map(|(ino, mask)| R::Access(Access { ino, mask }))
            .boxed(),
        Opcode::Getxattr => (u64s(), name(), u32s())
            .prop_map(|(ino, name, size)| R::Getxattr(Getxattr { ino, name, size }))
            .boxed(),
        Opcode::Listxattr => (u64s(), u32s())
            .prop_map(|(ino, size)| R::Listxattr(Listxattr { ino, size }))
            .boxed(),
        Opcode::Setxattr => (u64s(), name(), bytes(64), i32s())
            .prop_map(|(ino, name, value, flags)| {
                R::Setxattr(Setxattr {
                    ino,
                    name,
                    value,
                    flags,
                })
            })
            .boxed(),
        Opcode::Removexattr => (u64s(), name())
            .prop_map(|(ino, name)| R::Removexattr(Removexattr { ino, name }))
            .boxed(),
        Opcode::Fallocate => (u64s(), u64s(), u64s(), u64s(), i32s())
            .prop_map(|(ino, fh, offset, length, mode)| {
                R::Fallocate(Fallocate {
                    ino,
                    fh,
                    offset,
                    length,
                    mode,
                })
            })
            .boxed(),
        Opcode::Lseek => (u64s(), u64s(), i64s(), i32s())
            .prop_map(|(ino, fh, offset, whence)| {
                R::Lseek(Lseek {
                    ino,
                    fh,
                    offset,
                    whence,
                })
            })
            .boxed(),
        Opcode::CopyFileRange => (
            (u64s(), u64s(), u64s()),
            (u64s(), u64s(), u64s()),
            (u64s(), u32s()),
        )
            .prop_map(
                |((ino_in, fh_in, offset_in), (ino_out, fh_out, offset_out), (len, flags))| {
                    R::CopyFileRange(CopyFileRange {
                        ino_in,
                        fh_in,
                        offset_in,
                        ino_out,
                        fh_out,
                        offset_out,
                        len,
                        flags,
                    })
                },
            )
            .boxed(),
        Opcode::Getlk => (u64s(), u64s(), u64s(), lock())
            .prop_map(|(ino, fh, owner, lock)| {
                R::Getlk(Getlk {
                    ino,
                    fh,
                    owner,
                    lock,
                })
            })
            .boxed(),
        Opcode::Setlk => (u64s(), u64s(), u64s(), lock(), any::<bool>())
            .prop_map(|(ino, fh, owner, lock, sleep)| {
                R::Setlk(Setlk {
                    ino,
                    fh,
                    owner,
                    lock,
                    sleep,
                })
            })
            .boxed(),
        Opcode::Flock => (u64s(), u64s(), u64s(), i32s())
            .prop_map(|(ino, fh, owner, op)| R::Flock(Flock { ino, fh, owner, op }))
            .boxed(),
        Opcode::Watch => any::<bool>().prop_map(|on| R::Watch(Watch { on })).boxed(),
        // Boxed: unboxed, the change's value tree overflows a test thread's stack inside
        // `request_frame`'s flat_map.
        Opcode::Replay => (i32s(), u64s(), option::of(change().boxed()))
            .prop_map(|(tid, link, change)| R::Replay(Replay { tid, link, change }))
            .boxed(),
    }
}

/// Arbitrary request frames for one opcode; only `Write` carries a payload.
pub(crate) fn request_frame_for(op: Opcode) -> BoxedStrategy<RequestFrame<'static>> {
    let payload = if op == Opcode::Write {
        bytes(256).boxed()
    } else {
        Just(&[][..]).boxed()
    };
    (any::<u64>(), u32s(), ctx(), request_body(op), payload)
        .prop_map(|(id, export, ctx, body, payload)| RequestFrame {
            id,
            export,
            ctx,
            body,
            payload,
        })
        .boxed()
}

/// Arbitrary request frames of any opcode.
pub(crate) fn request_frame() -> impl Strategy<Value = RequestFrame<'static>> {
    select(Opcode::ALL).prop_flat_map(request_frame_for)
}

/// A successful reply of the kind `op` expects; `None` for an opcode that has no reply.
pub(crate) fn reply_ok(op: Opcode) -> Option<BoxedStrategy<Reply<'static>>> {
    let data = || bytes(256).prop_map(Reply::Data);
    Some(match op.reply_kind() {
        ReplyKind::None => return None,
        ReplyKind::Empty => Just(Reply::Empty).boxed(),
        ReplyKind::Entry => entry().prop_map(Reply::Entry).boxed(),
        ReplyKind::Attr => attr().prop_map(Reply::Attr).boxed(),
        ReplyKind::Data => data().boxed(),
        ReplyKind::Opened => prop_oneof![
            opened().prop_map(Reply::Opened),
            (opened(), vec(any::<u8>(), 1..=256).prop_map(leak))
                .prop_map(|(o, d)| Reply::OpenedData(o, d)),
        ]
        .boxed(),
        ReplyKind::Created => (entry(), opened())
            .prop_map(|(entry, opened)| Reply::Created(Created { entry, opened }))
            .boxed(),
        ReplyKind::Written => u32s().prop_map(Reply::Written).boxed(),
        ReplyKind::Dir => vec(
            (u64s(), u64s(), any::<u8>(), name()).prop_map(|(ino, offset, kind, name)| DirEntry {
                ino,
                offset,
                kind,
                name: name.to_vec(),
            }),
            0..6,
        )
        .prop_map(Reply::Dir)
        .boxed(),
        ReplyKind::DirPlus => vec(
            (entry(), u64s(), any::<u8>(), name()).prop_map(|(entry, offset, kind, name)| {
                DirEntryPlus {
                    entry,
                    offset,
                    kind,
                    name: name.to_vec(),
                }
            }),
            0..6,
        )
        .prop_map(Reply::DirPlus)
        .boxed(),
        ReplyKind::Statfs => (
            (u64s(), u64s(), u64s(), u64s(), u64s()),
            (u32s(), u32s(), u32s()),
        )
            .prop_map(
                |((blocks, bfree, bavail, files, ffree), (bsize, namelen, frsize))| {
                    Reply::Statfs(Statfs {
                        blocks,
                        bfree,
                        bavail,
                        files,
                        ffree,
                        bsize,
                        namelen,
                        frsize,
                    })
                },
            )
            .boxed(),
        ReplyKind::Xattr => prop_oneof![u32s().prop_map(Reply::XattrSize), data()].boxed(),
        ReplyKind::Offset => i64s().prop_map(Reply::Offset).boxed(),
        ReplyKind::Lock => lock().prop_map(Reply::Lock).boxed(),
    })
}

/// A valid errno: positive.
pub(crate) fn errno() -> impl Strategy<Value = Errno> + Clone {
    prop_oneof![1..200i32, 1..=i32::MAX].prop_map(Errno)
}

/// Arbitrary reply frames to one opcode (which must have a reply): success or error.
pub(crate) fn reply_frame_for(op: Opcode) -> BoxedStrategy<ReplyFrame<'static>> {
    let ok = reply_ok(op).expect("an opcode with a reply");
    let result = prop_oneof![1 => errno().prop_map(Err), 3 => ok.prop_map(Ok)];
    (any::<u64>(), result)
        .prop_map(move |(id, result)| ReplyFrame { id, op, result })
        .boxed()
}

/// Opcodes that have a reply.
pub(crate) fn replied_ops() -> Vec<Opcode> {
    Opcode::ALL
        .iter()
        .copied()
        .filter(|op| op.reply_kind() != ReplyKind::None)
        .collect()
}

/// Arbitrary reply frames to any opcode that has a reply.
pub(crate) fn reply_frame() -> impl Strategy<Value = ReplyFrame<'static>> {
    select(replied_ops()).prop_flat_map(reply_frame_for)
}

fn version() -> impl Strategy<Value = Version> + Clone {
    (any::<u16>(), any::<u16>()).prop_map(|(major, minor)| Version { major, minor })
}

pub(crate) fn hello() -> impl Strategy<Value = Hello<'static>> {
    (version(), u64s(), option::of(bytes(32)), leaked_text()).prop_map(
        |(version, features, token, client)| Hello {
            version,
            features,
            token,
            client,
        },
    )
}

pub(crate) fn welcome() -> impl Strategy<Value = Welcome> {
    let export = (
        u32s(),
        text(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(id, name, read_only, host, wants_groups, flush_to_host)| ExportInfo {
                id,
                name,
                read_only,
                permissions: if host {
                    Permissions::Host
                } else {
                    Permissions::Guest
                },
                wants_groups,
                flush_to_host,
            },
        );
    (version(), u64s(), vec(export, 0..5), text()).prop_map(
        |(version, features, exports, server)| Welcome {
            version,
            features,
            exports,
            server,
        },
    )
}

pub(crate) fn refused() -> impl Strategy<Value = Refused> {
    (i32s(), text()).prop_map(|(errno, reason)| Refused { errno, reason })
}

pub(crate) fn notice() -> impl Strategy<Value = Notice> {
    prop_oneof![
        text().prop_map(|reason| Notice::Shutdown { reason }),
        (u32s(), prop::collection::vec(change(), 0..4), any::<u64>()).prop_map(
            |(export, changes, age_us)| Notice::Changes {
                export,
                changes,
                age_us
            }
        ),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    let kind = prop_oneof![
        Just(ChangeKind::Created),
        Just(ChangeKind::Removed),
        Just(ChangeKind::Data),
        Just(ChangeKind::DataClosed),
        Just(ChangeKind::Closed),
        Just(ChangeKind::Attrib),
        Just(ChangeKind::Renamed),
        Just(ChangeKind::Overflow),
    ];
    (
        kind,
        prop::collection::vec(any::<u8>(), 0..16),
        prop::collection::vec(any::<u8>(), 0..16),
        u64s(),
        u64s(),
        any::<u32>(),
        prop::option::of(entry()),
    )
        .prop_map(
            |(kind, path, to, parent, to_parent, file_type, entry)| Change {
                kind,
                path,
                to,
                parent,
                to_parent,
                file_type,
                entry,
            },
        )
}
