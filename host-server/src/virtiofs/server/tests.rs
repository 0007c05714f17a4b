//! The virtio-fs server driven with request bytes, as the vhost-user glue hands them over.

use super::*;
use crate::export::{Export, ExportConfig};
use abi::{InHeader, OutHeader};
use ferry_protocol::ChangeKind;
use ferry_protocol::replay::SYNTHETIC_BASE;
use std::sync::{Arc, Mutex};
use zerocopy::FromBytes;

/// A request's bytes: header for `opcode` on `nodeid`, then `parts`.
pub(crate) fn request(opcode: u32, unique: u64, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
    request_as(77, opcode, unique, nodeid, parts)
}

/// As [`request`], from the guest thread `pid`.
fn request_as(pid: u32, opcode: u32, unique: u64, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
    let len = 40 + parts.iter().map(|p| p.len()).sum::<usize>();
    let h = InHeader {
        len: len as u32,
        opcode,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid,
        ..InHeader::default()
    };
    let mut v = h.as_bytes().to_vec();
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

pub(crate) fn server(dir: &std::path::Path, read_only: bool) -> FuseServer {
    server_with(dir, read_only, crate::ids::IdPolicy::passthrough(), true)
}

/// As [`server`], with an id policy and ACLs on or off.
fn server_with(
    dir: &std::path::Path,
    read_only: bool,
    ids: crate::ids::IdPolicy,
    acl: bool,
) -> FuseServer {
    let export = Export::open(ExportConfig {
        name: "t".into(),
        path: dir.to_path_buf(),
        read_only,
        ids,
        devices: false,
        acl,
        setid: true,
    })
    .unwrap();
    FuseServer::new(ExportSession::new(export).unwrap(), Duration::from_secs(1))
}

/// Sends a request; returns (errno, body).
fn call(s: &FuseServer, opcode: u32, nodeid: u64, parts: &[&[u8]]) -> (i32, Vec<u8>) {
    call_as(s, 77, opcode, nodeid, parts)
}

/// As [`call`], from the guest thread `pid`.
fn call_as(s: &FuseServer, pid: u32, opcode: u32, nodeid: u64, parts: &[&[u8]]) -> (i32, Vec<u8>) {
    let reply = s
        .handle(&request_as(pid, opcode, 9, nodeid, parts))
        .unwrap();
    let (h, body) = OutHeader::read_from_prefix(&reply).unwrap();
    assert_eq!(h.len as usize, reply.len());
    assert_eq!(h.unique, 9);
    (-h.error, body.to_vec())
}

fn entry(body: &[u8]) -> abi::EntryOut {
    abi::EntryOut::read_from_prefix(body).unwrap().0
}

/// Opens directory `dir` and reads its first 4 KiB with `op` (READDIR or READDIRPLUS);
/// returns the reply body.
fn list(s: &FuseServer, op: u32, dir: u64) -> Vec<u8> {
    let (err, body) = call(
        s,
        opcode::OPENDIR,
        dir,
        &[abi::OpenIn::default().as_bytes()],
    );
    assert_eq!(err, 0);
    let fh = abi::OpenOut::read_from_bytes(&body).unwrap().fh;
    let r = abi::ReadIn {
        fh,
        size: 4096,
        ..abi::ReadIn::default()
    };
    let (err, body) = call(s, op, dir, &[r.as_bytes()]);
    assert_eq!(err, 0);
    body
}

#[test]
fn init_negotiates_the_offered_flags() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), false);
    let init = abi::InitIn {
        major: 7,
        minor: 38,
        max_readahead: 131072,
        flags: u32::MAX,
    };
    let (err, body) = call(&s, opcode::INIT, 0, &[init.as_bytes(), &[0u8; 48]]);
    assert_eq!(err, 0);
    let out = abi::InitOut::read_from_bytes(&body).unwrap();
    // A passthrough export is checked by the guest, with ACLs on.
    assert_eq!(
        (out.major, out.minor, out.flags),
        (7, 33, OFFERED | OFFERED_ACL)
    );
    assert_ne!(out.flags & init_flags::HANDLE_KILLPRIV_V2, 0);
    // The kernel must truncate after its own checks (ETXTBSY), not the host in OPEN.
    assert_eq!(out.flags & init_flags::ATOMIC_O_TRUNC, 0);
    assert_eq!(out.max_write, MAX_DATA as u32);
    let old = abi::InitIn {
        major: 7,
        minor: 20,
        ..init
    };
    assert_eq!(call(&s, opcode::INIT, 0, &[old.as_bytes()]).0, libc::EPROTO);
}

#[test]
fn directory_listings_may_be_cached_by_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), false);
    let (err, body) = call(&s, opcode::OPENDIR, 1, &[abi::OpenIn::default().as_bytes()]);
    assert_eq!(err, 0);
    let flags = abi::OpenOut::read_from_bytes(&body).unwrap().open_flags;
    assert_eq!(flags, abi::FOPEN_CACHE_DIR | abi::FOPEN_KEEP_CACHE);
}

#[test]
fn flush_is_declined_on_a_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), false);
    // /tmp here is a local filesystem (ext4 or tmpfs): a close cannot fail after the writes
    // answered, so the kernel is told to stop sending FLUSH.
    assert!(!s.session().close_reports_errors());
    let f = abi::FlushIn::default();
    assert_eq!(call(&s, opcode::FLUSH, 1, &[f.as_bytes()]).0, libc::ENOSYS);
}

#[test]
fn set_id_bits_are_cleared_when_the_guest_kernel_says_so() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), false);
    let mode_of = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    let file = |name: &str, mode: u32| {
        std::fs::write(dir.path().join(name), b"data").unwrap();
        std::fs::set_permissions(dir.path().join(name), std::fs::Permissions::from_mode(mode))
            .unwrap();
        let (err, body) = call(&s, opcode::LOOKUP, 1, &[format!("{name}\0").as_bytes()]);
        assert_eq!(err, 0);
        entry(&body).nodeid
    };
    let open = |ino: u64| {
        let o = abi::OpenIn {
            flags: libc::O_WRONLY as u32,
            open_flags: 0,
        };
        let (err, body) = call(&s, opcode::OPEN, ino, &[o.as_bytes()]);
        assert_eq!(err, 0);
        abi::OpenOut::read_from_bytes(&body).unwrap().fh
    };
    let write = |ino: u64, write_flags: u32| {
        let w = abi::WriteIn {
            fh: open(ino),
            size: 1,
            write_flags,
            ..abi::WriteIn::default()
        };
        assert_eq!(call(&s, opcode::WRITE, ino, &[w.as_bytes(), b"x"]).0, 0);
    };

    // A writer with CAP_FSETID (no flag) keeps the bits, as on Linux.
    let a = file("a", 0o6755);
    write(a, 0);
    assert_eq!(mode_of("a"), 0o6755);
    // Without it: set-user-ID goes, and set-group-ID on a group-executable file.
    write(a, abi::WRITE_KILL_SUIDGID);
    assert_eq!(mode_of("a"), 0o755);
    // Set-group-ID without group execute marks mandatory locking, not privilege: kept.
    let b = file("b", 0o6745);
    write(b, abi::WRITE_KILL_SUIDGID);
    assert_eq!(mode_of("b"), 0o2745);

    // A truncate (or chown) with the flag clears them and the reply says so; an explicit
    // mode in the same request wins.
    let setattr = |ino: u64, a: abi::SetattrIn| {
        let (err, body) = call(&s, opcode::SETATTR, ino, &[a.as_bytes()]);
        assert_eq!(err, 0);
        abi::AttrOut::read_from_bytes(&body).unwrap().attr.mode & 0o7777
    };
    let c = file("c", 0o4711);
    let truncate = abi::SetattrIn {
        valid: fattr::SIZE | fattr::KILL_SUIDGID,
        ..abi::SetattrIn::default()
    };
    assert_eq!(setattr(c, truncate), 0o711);
    assert_eq!(mode_of("c"), 0o711);
    assert_eq!(std::fs::metadata(dir.path().join("c")).unwrap().len(), 0);
    let d = file("d", 0o4755);
    let chmod_too = abi::SetattrIn {
        valid: fattr::MODE | fattr::UID | fattr::KILL_SUIDGID,
        mode: 0o104750,
        ..abi::SetattrIn::default()
    };
    assert_eq!(setattr(d, chmod_too), 0o4750);

    // CREATE with O_TRUNC of an existing file clears them; a new file keeps the mode asked.
    let create = |name: &str, mode: u32| {
        let c = abi::CreateIn {
            flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32,
            mode: libc::S_IFREG | mode,
            umask: 0,
            open_flags: abi::OPEN_KILL_SUIDGID,
        };
        let (err, _) = call(
            &s,
            opcode::CREATE,
            1,
            &[c.as_bytes(), format!("{name}\0").as_bytes()],
        );
        assert_eq!(err, 0);
    };
    file("e", 0o4755);
    create("e", 0o644);
    assert_eq!(mode_of("e"), 0o755);
    create("new", 0o4755);
    assert_eq!(mode_of("new"), 0o4755);
}

#[test]
fn create_write_read_lookup_readdir() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), false);
    let c = abi::CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o100644,
        umask: 0o022,
        open_flags: 0,
    };
    let (err, body) = call(&s, opcode::CREATE, 1, &[c.as_bytes(), b"f\0"]);
    assert_eq!(err, 0);
    let e = entry(&body);
    let o = abi::OpenOut::read_from_bytes(&body[128..]).unwrap();
    assert_eq!(e.attr.mode, 0o100644);
    let w = abi::WriteIn {
        fh: o.fh,
        offset: 0,
        size: 5,
        ..abi::WriteIn::default()
    };
    let (err, body) = call(&s, opcode::WRITE, e.nodeid, &[w.as_bytes(), b"hello"]);
    assert_eq!((err, &body[..4]), (0, &5u32.to_le_bytes()[..]));
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello");
    let r = abi::ReadIn {
        fh: o.fh,
        offset: 1,
        size: 100,
        ..abi::ReadIn::default()
    };
    assert_eq!(
        call(&s, opcode::READ, e.nodeid, &[r.as_bytes()]),
        (0, b"ello".to_vec())
    );
    let rel = abi::ReleaseIn {
        fh: o.fh,
        ..abi::ReleaseIn::default()
    };
    assert_eq!(call(&s, opcode::RELEASE, e.nodeid, &[rel.as_bytes()]).0, 0);
    assert_eq!(s.session().handle_count(), 0);

    let (err, body) = call(&s, opcode::LOOKUP, 1, &[b"f\0"]);
    assert_eq!(
        (err, entry(&body).nodeid, entry(&body).attr.size),
        (0, e.nodeid, 5)
    );
    assert_eq!(call(&s, opcode::LOOKUP, 1, &[b"nope\0"]).0, libc::ENOENT);

    let body = list(&s, opcode::READDIR, 1);
    let mut names = Vec::new();
    let mut rest = &body[..];
    while !rest.is_empty() {
        let (d, tail) = abi::Dirent::read_from_prefix(rest).unwrap();
        names.push(tail[..d.namelen as usize].to_vec());
        rest = &tail[(24 + d.namelen as usize).next_multiple_of(8) - 24..];
    }
    names.sort();
    assert_eq!(names, [b".".to_vec(), b"..".to_vec(), b"f".to_vec()]);
}

#[test]
fn a_retired_export_answers_eshutdown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let s = server(dir.path(), false);
    let (err, body) = call(&s, opcode::LOOKUP, 1, &[b"f\0"]);
    assert_eq!(err, 0);
    let ino = entry(&body).nodeid;
    s.session().export().retire();
    let (err, _) = call(&s, opcode::LOOKUP, 1, &[b"f\0"]);
    assert_eq!(err, libc::ESHUTDOWN, "a removed export says so");
    let (err, _) = call(
        &s,
        opcode::GETATTR,
        ino,
        &[abi::GetattrIn::default().as_bytes()],
    );
    assert_eq!(err, libc::ESHUTDOWN);
    // The kernel still gives its nodes back.
    let forget = abi::ForgetIn { nlookup: 1 };
    assert!(
        s.handle(&request(opcode::FORGET, 3, ino, &[forget.as_bytes()]))
            .is_none()
    );
}

#[test]
fn forget_takes_no_reply_and_drops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"").unwrap();
    let s = server(dir.path(), false);
    let (_, body) = call(&s, opcode::LOOKUP, 1, &[b"a\0"]);
    let ino = entry(&body).nodeid;
    assert_eq!(s.session().lookup_count(ino), Some(1));
    let f = abi::ForgetIn { nlookup: 1 };
    assert!(
        s.handle(&request(opcode::FORGET, 1, ino, &[f.as_bytes()]))
            .is_none()
    );
    assert_eq!(s.session().lookup_count(ino), None);
}

#[test]
fn read_only_export_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"x").unwrap();
    let s = server(dir.path(), true);
    let m = abi::MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    assert_eq!(
        call(&s, opcode::MKDIR, 1, &[m.as_bytes(), b"d\0"]).0,
        libc::EROFS
    );
    let (_, body) = call(&s, opcode::LOOKUP, 1, &[b"a\0"]);
    let o = abi::OpenIn {
        flags: libc::O_WRONLY as u32,
        open_flags: 0,
    };
    assert_eq!(
        call(&s, opcode::OPEN, entry(&body).nodeid, &[o.as_bytes()]).0,
        libc::EROFS
    );
}

#[test]
fn hostile_requests_get_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), false);
    // Truncated argument structs and names.
    assert_eq!(call(&s, opcode::WRITE, 1, &[&[0; 7]]).0, libc::EINVAL);
    assert_eq!(call(&s, opcode::LOOKUP, 1, &[b"abc"]).0, libc::EINVAL);
    // Path tricks.
    assert_eq!(call(&s, opcode::LOOKUP, 1, &[b"..\0"]).0, libc::EINVAL);
    assert_eq!(call(&s, opcode::LOOKUP, 1, &[b"a/b\0"]).0, libc::EINVAL);
    // Unknown node, unknown opcode, short header.
    assert_eq!(call(&s, opcode::LOOKUP, 999, &[b"a\0"]).0, libc::ESTALE);
    assert_eq!(call(&s, 4000, 1, &[]).0, libc::ENOSYS);
    assert!(s.handle(&[1, 2, 3]).is_none());
}

#[test]
fn symlink_out_of_the_export_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"s").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("l")).unwrap();
    let s = server(dir.path(), false);
    let (err, body) = call(&s, opcode::LOOKUP, 1, &[b"l\0"]);
    assert_eq!(err, 0);
    let e = entry(&body);
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    let o = abi::OpenIn::default();
    assert_eq!(
        call(&s, opcode::OPEN, e.nodeid, &[o.as_bytes()]).0,
        libc::ELOOP
    );
}

/// Unmounts (lazily) when dropped, so a failed assertion leaves no mount behind.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn mount_points_inside_the_export_are_announced_as_submounts() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("\n*** SKIPPED: mounting a tmpfs needs root (CI runs as root) ***\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plain")).unwrap();
    std::fs::create_dir(dir.path().join("mnt")).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &dir.path().join("mnt"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount a tmpfs as root");
    let _mounted = Mounted(dir.path().join("mnt"));
    std::fs::create_dir(dir.path().join("mnt/inner")).unwrap();
    let s = server(dir.path(), false);
    let flags_of = |parent: u64, name: &[u8]| {
        let (err, body) = call(&s, opcode::LOOKUP, parent, &[name]);
        assert_eq!(err, 0);
        let e = entry(&body);
        (e.nodeid, e.attr.flags)
    };
    let (mnt, flags) = flags_of(1, b"mnt\0");
    assert_eq!(flags, abi::ATTR_SUBMOUNT, "the tmpfs mount point");
    assert_eq!(flags_of(1, b"plain\0").1, 0, "a plain directory");
    assert_eq!(
        flags_of(mnt, b"inner\0").1,
        0,
        "a directory inside the submount"
    );

    // READDIRPLUS announces it the same way.
    let body = list(&s, opcode::READDIRPLUS, 1);
    let mut announced = Vec::new();
    let mut rest = &body[..];
    while !rest.is_empty() {
        let (e, after) = abi::EntryOut::read_from_prefix(rest).unwrap();
        let (d, after) = abi::Dirent::read_from_prefix(after).unwrap();
        let name = &after[..d.namelen as usize];
        if e.attr.flags & abi::ATTR_SUBMOUNT != 0 {
            announced.push(name.to_vec());
        }
        let padded = (d.namelen as usize).div_ceil(8) * 8;
        rest = &after[padded..];
    }
    assert_eq!(announced, vec![b"mnt".to_vec()]);
}

/// Every name below `dir` with its type, size, mtime and (for files) contents.
fn snapshot(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let data = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                todo.push(p.clone());
            }
            out.push((
                p.strip_prefix(dir).unwrap().display().to_string(),
                format!(
                    "{:?} {} {:?} {:?}",
                    m.file_type(),
                    m.len(),
                    m.modified().unwrap(),
                    data
                ),
            ));
        }
    }
    out.sort();
    out
}

/// The replay thread of the tests below.
const TID: u32 = 4242;
/// Its link number.
const LINK: u64 = 0xfeed;

/// Links the server's session to the replaying session that registered [`LINK`], the way
/// the agent does: a lookup of the link name through the mount, answered ENOENT.
fn link(s: &FuseServer) {
    let name = format!("{}{LINK:016x}\0", ferry_protocol::REPLAY_LINK_PREFIX);
    assert_eq!(
        call(s, opcode::LOOKUP, 1, &[name.as_bytes()]).0,
        libc::ENOENT
    );
}

fn change(kind: ChangeKind, path: &str, to: &str, file_type: u32) -> ferry_protocol::Change {
    ferry_protocol::Change {
        kind,
        path: path.into(),
        to: to.into(),
        parent: 0,
        to_parent: 0,
        file_type,
        entry: None,
    }
}

/// What the replay thread's syscalls send, in the order the guest kernel sends it (see
/// guest-agent/REPLAY.md), answered without changing the host.
#[test]
fn replayed_changes_touch_nothing_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir(p.join("d")).unwrap();
    std::fs::write(p.join("d/new"), b"created on the host").unwrap();
    std::fs::write(p.join("moved"), b"renamed on the host").unwrap();
    std::fs::write(p.join("back"), b"removed, then made again").unwrap();
    let s = server(p, false);
    let agent = ExportSession::new(s.session().export().clone()).unwrap();
    let before = snapshot(p);
    let replay =
        |c: Option<ferry_protocol::Change>| agent.replay(TID as i32, LINK, c.as_ref()).unwrap();
    let call = |op, node, parts: &[&[u8]]| call_as(&s, TID, op, node, parts);
    let (_, body) = call(opcode::LOOKUP, 1, &[b"d\0"]);
    let d = entry(&body).nodeid;

    // Created: the name was absent before; the creation hands out the host's object.
    let created = change(ChangeKind::Created, "d/new", "", libc::S_IFREG);
    assert_eq!(
        agent.replay(TID as i32, LINK, Some(&created)),
        Err(Errno::ENXIO),
        "the agent hears that nothing is linked to it yet"
    );
    let (err, body) = call(opcode::LOOKUP, d, &[b"new\0"]);
    assert_eq!(err, 0, "not linked yet: served as usual");
    let forget = abi::ForgetIn { nlookup: 1 };
    let f = request(opcode::FORGET, 1, entry(&body).nodeid, &[forget.as_bytes()]);
    assert!(s.handle(&f).is_none());
    link(&s);
    replay(Some(created));
    assert_eq!(call(opcode::LOOKUP, d, &[b"new\0"]).0, libc::ENOENT);
    let mknod = abi::MknodIn {
        mode: libc::S_IFREG | 0o644,
        ..abi::MknodIn::default()
    };
    let (err, body) = call(opcode::MKNOD, d, &[mknod.as_bytes(), b"new\0"]);
    assert_eq!(err, 0);
    let new = entry(&body);
    assert_eq!(new.attr.size, 19);
    assert_eq!(s.session().lookup_count(new.nodeid), Some(1));
    let mkdir = abi::MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    assert_eq!(
        call(opcode::MKDIR, d, &[mkdir.as_bytes(), b"new\0"]).0,
        libc::EEXIST,
        "not a directory"
    );
    assert_eq!(s.session().lookup_count(new.nodeid), Some(1));
    assert_eq!(
        call(opcode::MKNOD, d, &[mknod.as_bytes(), b"other\0"]).0,
        libc::EPERM
    );
    assert_eq!(
        call(opcode::MKNOD, 1, &[mknod.as_bytes(), b"new\0"]).0,
        libc::EPERM,
        "other dir"
    );
    // Created and gone again before the replay: a synthetic node.
    replay(Some(change(
        ChangeKind::Created,
        "d/brief",
        "",
        libc::S_IFDIR,
    )));
    let (err, body) = call(opcode::MKDIR, d, &[mkdir.as_bytes(), b"brief\0"]);
    assert_eq!(err, 0);
    let brief = entry(&body);
    assert!(brief.nodeid >= SYNTHETIC_BASE);
    assert_eq!(brief.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    let forget = abi::ForgetIn { nlookup: 1 };
    assert!(
        s.handle(&request(
            opcode::FORGET,
            1,
            brief.nodeid,
            &[forget.as_bytes()]
        ))
        .is_none()
    );

    // Removed, and gone on the host: a synthetic node, and the removal succeeds.
    replay(Some(change(ChangeKind::Removed, "gone", "", libc::S_IFREG)));
    let (err, body) = call(opcode::LOOKUP, 1, &[b"gone\0"]);
    assert_eq!(err, 0);
    let gone = entry(&body);
    assert!(gone.nodeid >= SYNTHETIC_BASE);
    assert_eq!(
        (gone.entry_valid, gone.attr.mode),
        (0, libc::S_IFREG | 0o644)
    );
    assert_eq!(call(opcode::UNLINK, 1, &[b"gone\0"]).0, 0);
    assert_eq!(
        call(opcode::RMDIR, 1, &[b"d\0"]).0,
        libc::EPERM,
        "not the change's name"
    );
    assert_eq!(s.synthetic_count(), 1);
    let (err, _) = call_as(
        &s,
        1,
        opcode::GETATTR,
        gone.nodeid,
        &[abi::GetattrIn::default().as_bytes()],
    );
    assert_eq!(err, 0);
    assert!(
        s.handle(&request(
            opcode::FORGET,
            1,
            gone.nodeid,
            &[abi::ForgetIn { nlookup: 1 }.as_bytes()]
        ))
        .is_none()
    );
    assert_eq!(s.synthetic_count(), 0);
    assert_eq!(
        call(
            opcode::GETATTR,
            gone.nodeid,
            &[abi::GetattrIn::default().as_bytes()]
        )
        .0,
        libc::ESTALE
    );

    // Removed, but the name is back on the host: the removal is replayed in stream order
    // (the newer file's creation follows it) and the newer file is never removed.
    replay(Some(change(ChangeKind::Removed, "back", "", libc::S_IFREG)));
    let (err, body) = call(opcode::LOOKUP, 1, &[b"back\0"]);
    assert!(err == 0 && entry(&body).nodeid < SYNTHETIC_BASE);
    assert_eq!(call(opcode::UNLINK, 1, &[b"back\0"]).0, 0);
    assert!(p.join("back").exists(), "the newer file is kept");

    // Renamed old -> moved: the source as a synthetic node, the target absent, and the
    // rename succeeds because the host already shows it.
    replay(Some(change(
        ChangeKind::Renamed,
        "old",
        "moved",
        libc::S_IFREG,
    )));
    let (err, body) = call(opcode::LOOKUP, 1, &[b"old\0"]);
    assert!(err == 0 && entry(&body).nodeid >= SYNTHETIC_BASE);
    assert_eq!(call(opcode::LOOKUP, 1, &[b"moved\0"]).0, libc::ENOENT);
    let exchange = abi::Rename2In {
        newdir: 1,
        flags: 2,
        ..abi::Rename2In::default()
    };
    assert_eq!(
        call(
            opcode::RENAME2,
            1,
            &[exchange.as_bytes(), b"old\0", b"moved\0"]
        )
        .0,
        libc::EPERM
    );
    let rename = abi::RenameIn { newdir: 1 };
    assert_eq!(
        call(
            opcode::RENAME,
            1,
            &[rename.as_bytes(), b"moved\0", b"old\0"]
        )
        .0,
        libc::EPERM,
        "backwards"
    );
    assert_eq!(
        call(
            opcode::RENAME,
            1,
            &[rename.as_bytes(), b"old\0", b"moved\0"]
        )
        .0,
        0
    );

    // A data change: an open for writing with O_TRUNC opens read-only without keeping
    // the cache; writes, size and time changes touch nothing.
    replay(Some(change(
        ChangeKind::DataClosed,
        "moved",
        "",
        libc::S_IFREG,
    )));
    let (_, body) = call(opcode::LOOKUP, 1, &[b"moved\0"]);
    let moved = entry(&body);
    let o = abi::OpenIn {
        flags: (libc::O_WRONLY | libc::O_TRUNC) as u32,
        open_flags: 0,
    };
    let (err, body) = call(opcode::OPEN, moved.nodeid, &[o.as_bytes()]);
    assert_eq!(err, 0);
    let opened = abi::OpenOut::read_from_bytes(&body).unwrap();
    assert_eq!(opened.open_flags, 0, "no FOPEN_KEEP_CACHE");
    let w = abi::WriteIn {
        fh: opened.fh,
        size: 1,
        ..abi::WriteIn::default()
    };
    assert_eq!(
        call(opcode::WRITE, moved.nodeid, &[w.as_bytes(), b"x"]).0,
        libc::EPERM
    );
    let set = abi::SetattrIn {
        valid: fattr::SIZE | fattr::MTIME_NOW | fattr::FH,
        fh: opened.fh,
        ..abi::SetattrIn::default()
    };
    let (err, body) = call(opcode::SETATTR, moved.nodeid, &[set.as_bytes()]);
    assert_eq!(err, 0);
    assert_eq!(abi::AttrOut::read_from_bytes(&body).unwrap().attr.size, 19);
    let f = abi::FallocateIn {
        fh: opened.fh,
        length: 1 << 20,
        ..abi::FallocateIn::default()
    };
    assert_eq!(
        call(opcode::FALLOCATE, moved.nodeid, &[f.as_bytes()]).0,
        libc::EPERM
    );
    let fl = abi::FlushIn {
        fh: opened.fh,
        ..abi::FlushIn::default()
    };
    // Declined as for every thread on a local filesystem.
    assert_eq!(
        call(opcode::FLUSH, moved.nodeid, &[fl.as_bytes()]).0,
        libc::ENOSYS
    );
    let rel = abi::ReleaseIn {
        fh: opened.fh,
        ..abi::ReleaseIn::default()
    };
    assert_eq!(
        call_as(&s, 0, opcode::RELEASE, moved.nodeid, &[rel.as_bytes()]).0,
        0
    );
    let x = abi::SetxattrIn {
        size: 1,
        ..abi::SetxattrIn::default()
    };
    assert_eq!(
        call(
            opcode::SETXATTR,
            moved.nodeid,
            &[x.as_bytes(), b"user.x\0", b"1"]
        )
        .0,
        libc::EPERM
    );
    let l = abi::LinkIn {
        oldnodeid: moved.nodeid,
    };
    assert_eq!(
        call(opcode::LINK, 1, &[l.as_bytes(), b"hard\0"]).0,
        libc::EPERM
    );

    // Between changes nothing changes the host either.
    replay(None);
    assert_eq!(
        call(opcode::MKNOD, d, &[mknod.as_bytes(), b"new\0"]).0,
        libc::EPERM
    );
    assert_eq!(call(opcode::UNLINK, 1, &[b"moved\0"]).0, libc::EPERM);
    assert_eq!(
        call(opcode::LOOKUP, 1, &[b"moved\0"]).0,
        0,
        "reads are served"
    );

    assert_eq!(snapshot(p), before, "the replay changed the host");
    assert_eq!(s.session().handle_count(), 0);

    // Any other thread is served as usual, and so is the replay thread once its
    // connection is gone.
    assert_eq!(call_as(&s, TID + 1, opcode::UNLINK, 1, &[b"moved\0"]).0, 0);
    drop(agent);
    assert_eq!(call(opcode::UNLINK, 1, &[b"back\0"]).0, 0);
    assert!(!p.join("moved").exists() && !p.join("back").exists());
}

/// Once the replay thread has sent a request through the virtio-fs session, what the
/// guest changes through it is not sent to the replaying session as host changes; what
/// the host changes is.
#[test]
fn the_guest_s_own_changes_are_not_replayed_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("file"), b"x").unwrap();
    let s = server(p, false);
    let agent = Arc::new(ExportSession::new(s.session().export().clone()).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    agent
        .watch(Arc::new(move |c, _| {
            let _ = tx.lock().unwrap().send(c);
        }))
        .unwrap();
    assert_eq!(agent.replay(TID as i32, LINK, None), Err(Errno::ENXIO));
    link(&s);
    std::thread::sleep(Duration::from_millis(100));
    // The guest (pid 77): a file, a directory, a write, a rename and a removal.
    let m = abi::MknodIn {
        mode: libc::S_IFREG | 0o644,
        ..abi::MknodIn::default()
    };
    assert_eq!(call(&s, opcode::MKNOD, 1, &[m.as_bytes(), b"mine\0"]).0, 0);
    let d = abi::MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    assert_eq!(call(&s, opcode::MKDIR, 1, &[d.as_bytes(), b"dir\0"]).0, 0);
    let (_, body) = call(&s, opcode::LOOKUP, 1, &[b"file\0"]);
    let file = entry(&body).nodeid;
    let o = abi::OpenIn {
        flags: libc::O_WRONLY as u32,
        open_flags: 0,
    };
    let (_, body) = call(&s, opcode::OPEN, file, &[o.as_bytes()]);
    let fh = abi::OpenOut::read_from_bytes(&body).unwrap().fh;
    let w = abi::WriteIn {
        fh,
        size: 2,
        ..abi::WriteIn::default()
    };
    assert_eq!(call(&s, opcode::WRITE, file, &[w.as_bytes(), b"yz"]).0, 0);
    let rel = abi::ReleaseIn {
        fh,
        ..abi::ReleaseIn::default()
    };
    assert_eq!(call(&s, opcode::RELEASE, file, &[rel.as_bytes()]).0, 0);
    let r = abi::RenameIn { newdir: 1 };
    assert_eq!(
        call(
            &s,
            opcode::RENAME,
            1,
            &[r.as_bytes(), b"mine\0", b"moved\0"]
        )
        .0,
        0
    );
    assert_eq!(call(&s, opcode::UNLINK, 1, &[b"moved\0"]).0, 0);
    // Then the host.
    std::thread::sleep(Duration::from_millis(100));
    std::fs::write(p.join("theirs"), b"h").unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !got
        .iter()
        .any(|c: &ferry_protocol::Change| c.path == b"theirs")
        && std::time::Instant::now() < deadline
    {
        if let Ok(batch) = rx.recv_timeout(Duration::from_millis(100)) {
            got.extend(batch);
        }
    }
    let paths: Vec<String> = got
        .iter()
        .map(|c| String::from_utf8_lossy(&c.path).into_owned())
        .collect();
    assert!(
        paths.iter().all(|p| p == "theirs"),
        "the guest's own changes came back: {got:?}"
    );
    assert!(!paths.is_empty(), "the host's change did not arrive");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Any opcode with any argument bytes gets an answer or none, never a panic; a reply
    /// always carries the request's id and its own length.
    #[test]
    fn arbitrary_requests_never_panic(
        op in 0u32..60,
        nodeid in proptest::prop_oneof![proptest::strategy::Just(1u64), 0u64..8, proptest::prelude::any::<u64>()],
        args in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let s = server(dir.path(), false);
        if let Some(reply) = s.handle(&request(op, 5, nodeid, &[&args])) {
            let (h, _) = OutHeader::read_from_prefix(&reply).unwrap();
            proptest::prop_assert_eq!(h.unique, 5);
            proptest::prop_assert_eq!(h.len as usize, reply.len());
        }
    }
}

/// The flags an INIT offering everything gets back.
fn init_flags_of(s: &FuseServer) -> u32 {
    let init = abi::InitIn {
        major: 7,
        minor: 38,
        max_readahead: 131072,
        flags: u32::MAX,
    };
    let (err, body) = call(s, opcode::INIT, 0, &[init.as_bytes(), &[0u8; 48]]);
    assert_eq!(err, 0);
    abi::InitOut::read_from_bytes(&body).unwrap().flags
}

#[test]
fn posix_acls_are_negotiated_only_where_the_guest_checks_and_acls_are_on() {
    use crate::ids::{GuestGid, GuestUid, IdMode, IdPolicy, Permissions};
    let dir = tempfile::tempdir().unwrap();
    let acl = init_flags::POSIX_ACL | init_flags::DONT_MASK;
    let squash = IdMode::Squash {
        uid: GuestUid(0),
        gid: GuestGid(0),
    };
    let host_checks = IdPolicy {
        permissions: Permissions::Host,
        ..IdPolicy::passthrough()
    };
    let guest_squash = IdPolicy {
        permissions: Permissions::Guest,
        ..IdPolicy::new(squash.clone())
    };
    for (policy, on, want) in [
        (IdPolicy::passthrough(), true, acl),
        (IdPolicy::passthrough(), false, 0),
        (host_checks, true, 0),
        (IdPolicy::new(squash), true, 0),
        (guest_squash, true, 0),
    ] {
        let s = server_with(dir.path(), false, policy.clone(), on);
        assert_eq!(init_flags_of(&s) & acl, want, "{policy} acl={on}");
    }
}

/// `getfacl -cn` of a host path.
fn getfacl(p: &std::path::Path) -> String {
    let out = std::process::Command::new("getfacl")
        .arg("-cn")
        .arg(p)
        .output()
        .expect("getfacl runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn creation_under_a_default_acl_ignores_the_umask_as_a_local_filesystem_does() {
    // Needs setfacl and getfacl (the `acl` package, which .ci/run installs).
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("setfacl")
        .args(["-d", "-m", "u:1001:rwx,m::rwx"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let s = server(dir.path(), false);
    init_flags_of(&s);
    // With DONT_MASK the kernel sends the mode as asked and the umask beside it.
    let c = abi::CreateIn {
        flags: (libc::O_WRONLY | libc::O_CREAT) as u32,
        mode: libc::S_IFREG | 0o666,
        umask: 0o022,
        open_flags: 0,
    };
    assert_eq!(call(&s, opcode::CREATE, 1, &[c.as_bytes(), b"f\0"]).0, 0);
    let m = abi::MkdirIn {
        mode: 0o750,
        umask: 0o077,
    };
    assert_eq!(call(&s, opcode::MKDIR, 1, &[m.as_bytes(), b"d\0"]).0, 0);
    // What a native open(0666)/mkdir(0750) gives under that default ACL, whatever the umask.
    let f = getfacl(&dir.path().join("f"));
    assert!(
        f.contains("user:1001:rwx\t#effective:rw-") && f.contains("mask::rw-"),
        "{f}"
    );
    let d = getfacl(&dir.path().join("d"));
    assert!(
        d.contains("mask::r-x") && d.contains("default:user:1001:rwx"),
        "{d}"
    );
    // Without a default ACL the umask applies.
    let c = abi::CreateIn {
        mode: libc::S_IFREG | 0o666,
        umask: 0o027,
        ..c
    };
    let plain = tempfile::tempdir().unwrap();
    let s = server(plain.path(), false);
    assert_eq!(call(&s, opcode::CREATE, 1, &[c.as_bytes(), b"g\0"]).0, 0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(plain.path().join("g"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
}

#[test]
fn acl_xattrs_translate_ids_in_map_mode() {
    use crate::ids::{IdMode, IdPolicy};
    let dir = tempfile::tempdir().unwrap();
    let mode: IdMode = "map:0:0:1000,1000:101000:10".parse().unwrap();
    let s = server_with(dir.path(), false, IdPolicy::new(mode), true);
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let (_, body) = call(&s, opcode::LOOKUP, 1, &[b"f\0"]);
    let f = entry(&body).nodeid;
    // user::rw-, user:1001:r--, group::r--, mask::r--, other::---
    let acl = |uid: u32| {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, uid),
            (4, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    };
    let name = b"system.posix_acl_access\0";
    let set = |value: &[u8]| {
        let x = abi::SetxattrIn {
            size: value.len() as u32,
            flags: 0,
        };
        call(&s, opcode::SETXATTR, f, &[x.as_bytes(), name, value]).0
    };
    assert_eq!(set(&acl(1001)), 0);
    assert!(getfacl(&dir.path().join("f")).contains("user:101001:r--"));
    let g = abi::GetxattrIn {
        size: 4096,
        padding: 0,
    };
    let (err, body) = call(&s, opcode::GETXATTR, f, &[g.as_bytes(), name]);
    assert_eq!((err, body), (0, acl(1001)));
    // A guest id outside the ranges: EINVAL, nothing changed.
    assert_eq!(set(&acl(5000)), libc::EINVAL);
    assert!(getfacl(&dir.path().join("f")).contains("user:101001:r--"));
}

/// The virtio-fs front door confines map mode as the agent's does (the same typed methods):
/// guest root cannot open a host-root-owned file for writing nor chmod it.
#[test]
fn map_mode_confines_guest_root() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED map_mode_confines_guest_root: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("passwd"), b"root").unwrap();
    let export = Export::open(ExportConfig {
        name: "t".into(),
        path: dir.path().to_path_buf(),
        read_only: false,
        ids: crate::ids::IdPolicy::new("map:0:100000:65536".parse().unwrap()),
        devices: false,
        acl: true,
        setid: true,
    })
    .unwrap();
    let s = FuseServer::new(ExportSession::new(export).unwrap(), Duration::from_secs(1));
    let (err, body) = call(&s, opcode::LOOKUP, 1, &[b"passwd\0"]);
    assert_eq!(err, 0);
    let ino = entry(&body).nodeid;
    let open = abi::OpenIn {
        flags: libc::O_WRONLY as u32,
        ..abi::OpenIn::default()
    };
    assert_eq!(
        call(&s, opcode::OPEN, ino, &[open.as_bytes()]).0,
        libc::EACCES
    );
    let chmod = abi::SetattrIn {
        valid: fattr::MODE,
        mode: 0o104755,
        ..abi::SetattrIn::default()
    };
    assert_eq!(
        call(&s, opcode::SETATTR, ino, &[chmod.as_bytes()]).0,
        libc::EPERM
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("passwd"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o644);
    assert_eq!(std::fs::read(dir.path().join("passwd")).unwrap(), b"root");
}
