//! mmap, special files and read-only exports through a real mount.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::harness::{Need, Share, cpath, require, wait_until};

/// Maps `len` bytes of `f` with `prot` and `flags`; panics on failure.
fn map(f: &fs::File, len: usize, prot: i32, flags: i32) -> *mut u8 {
    // SAFETY: a fresh mapping of an open file; the kernel picks the address.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, f.as_raw_fd(), 0) };
    assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    p.cast()
}

#[test]
fn shared_mmap_writes_reach_the_host_after_msync_and_munmap() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    let (guest, host) = (share.mnt().join("m"), share.src().join("m"));
    fs::write(&guest, vec![b'.'; 3 * 4096]).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&guest)
        .unwrap();
    let len = 3 * 4096;
    let p = map(
        &f,
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    );
    // SAFETY: `p` maps `len` writable bytes.
    let m = unsafe { std::slice::from_raw_parts_mut(p, len) };
    m[..5].copy_from_slice(b"hello");
    m[4096 + 10..4096 + 15].copy_from_slice(b"world");
    // SAFETY: msync of the mapping made above.
    assert_eq!(unsafe { libc::msync(p.cast(), len, libc::MS_SYNC) }, 0);
    let on_host = fs::read(&host).unwrap();
    assert_eq!(&on_host[..5], b"hello");
    assert_eq!(&on_host[4096 + 10..4096 + 15], b"world");
    // Without msync: munmap writes the dirty pages back.
    m[2 * 4096..2 * 4096 + 4].copy_from_slice(b"tail");
    // SAFETY: unmapping the mapping made above; `m` is not used after.
    assert_eq!(unsafe { libc::munmap(p.cast(), len) }, 0);
    assert_eq!(&fs::read(&host).unwrap()[2 * 4096..2 * 4096 + 4], b"tail");
    // Reads through a fresh mapping see what plain reads see.
    let p = map(&f, len, libc::PROT_READ, libc::MAP_SHARED);
    // SAFETY: `p` maps `len` readable bytes.
    let m = unsafe { std::slice::from_raw_parts(p, len) };
    assert_eq!(m, &fs::read(&guest).unwrap()[..]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::munmap(p.cast(), len) }, 0);
    assert!(share.stop().success());
}

#[test]
fn read_only_export_refuses_every_change() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start_with(&["--read-only"]);
    let src = share.src();
    fs::write(src.join("f"), b"host data").unwrap();
    fs::create_dir(src.join("d")).unwrap();
    fs::create_dir(src.join("empty")).unwrap();
    let m = share.mnt();
    // The host's new entries are there to be refused once the mount shows them.
    let shown = wait_until(std::time::Duration::from_secs(5), || {
        ["f", "d", "empty"]
            .iter()
            .all(|n| fs::symlink_metadata(m.join(n)).is_ok())
    });
    assert!(shown, "the host's new entries never showed in the mount");
    let erofs = |what: &str, r: std::io::Result<()>| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    use std::os::unix::fs::PermissionsExt;
    erofs("create", fs::write(m.join("new"), b"x"));
    erofs(
        "open for writing",
        fs::OpenOptions::new()
            .append(true)
            .open(m.join("f"))
            .map(drop),
    );
    erofs(
        "chmod",
        fs::set_permissions(m.join("f"), fs::Permissions::from_mode(0o600)),
    );
    erofs("mkdir", fs::create_dir(m.join("nd")));
    erofs("rmdir", fs::remove_dir(m.join("empty")));
    erofs("unlink", fs::remove_file(m.join("f")));
    erofs("rename", fs::rename(m.join("f"), m.join("g")));
    erofs("link", fs::hard_link(m.join("f"), m.join("h")));
    erofs("symlink", std::os::unix::fs::symlink("f", m.join("s")));
    let path = cpath(&m.join("f"));
    let name = c"user.x";
    // SAFETY: valid C strings and a one-byte value.
    let rc = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS)
    );
    // SAFETY: valid C string.
    let rc = unsafe { libc::truncate(path.as_ptr(), 1) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS)
    );
    // Reading, shared locks and private mappings work; an exclusive lock would keep host
    // writers out, and is refused.
    let f = fs::File::open(m.join("f")).unwrap();
    // SAFETY: flock on an open descriptor.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS)
    );
    let p = map(
        &f,
        4096,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
    );
    // SAFETY: `p` maps 4096 private writable bytes (the file's 9 bytes, then zeros).
    let mapped = unsafe { std::slice::from_raw_parts_mut(p, 4096) };
    assert_eq!(&mapped[..9], b"host data");
    mapped[..4].copy_from_slice(b"MINE");
    // SAFETY: unmapping the mapping made above.
    assert_eq!(unsafe { libc::munmap(p.cast(), 4096) }, 0);
    assert_eq!(fs::read(src.join("f")).unwrap(), b"host data");
    assert_eq!(fs::read(m.join("f")).unwrap(), b"host data");
    assert!(share.stop().success());
}

#[test]
fn unix_sockets_work_between_guest_processes() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    let sock = share.mnt().join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    assert!(
        fs::symlink_metadata(share.src().join("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    let client = {
        let sock = sock.clone();
        std::thread::spawn(move || {
            let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            c.write_all(b"over a socket in the share").unwrap();
        })
    };
    let (mut conn, _) = listener.accept().unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    client.join().unwrap();
    assert_eq!(got, "over a socket in the share");
    drop((conn, listener));
    let status = share.stop();
    assert!(status.success(), "ferry share exited with {status}");
}

/// `mknod` of a device node; returns the errno or 0.
fn mknod(path: &Path, kind: u32) -> i32 {
    // SAFETY: valid C string; mknod takes no other pointers.
    let rc = unsafe { libc::mknod(cpath(path).as_ptr(), kind | 0o600, libc::makedev(1, 3)) };
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

#[test]
fn device_nodes_are_refused() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    assert_eq!(mknod(&share.mnt().join("null"), libc::S_IFCHR), libc::EPERM);
    assert_eq!(mknod(&share.mnt().join("blk"), libc::S_IFBLK), libc::EPERM);
    assert!(!share.src().join("null").exists());
    // One the host made is seen as what it is, and opening it never reaches the host device.
    assert_eq!(mknod(&share.src().join("hostnull"), libc::S_IFCHR), 0);
    let guest = share.mnt().join("hostnull");
    let shown = wait_until(std::time::Duration::from_secs(5), || {
        fs::symlink_metadata(&guest).is_ok()
    });
    assert!(shown, "the host's device node never showed in the mount");
    let t = fs::symlink_metadata(&guest).unwrap().file_type();
    assert!(t.is_char_device());
    assert!(share.stop().success());
}

#[test]
fn device_nodes_are_created_when_allowed() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start_with(&["--devices"]);
    assert_eq!(mknod(&share.mnt().join("null"), libc::S_IFCHR), 0);
    assert_eq!(mknod(&share.mnt().join("blk"), libc::S_IFBLK), 0);
    for (name, is_chr) in [("null", true), ("blk", false)] {
        let host = fs::symlink_metadata(share.src().join(name)).unwrap();
        let guest = fs::symlink_metadata(share.mnt().join(name)).unwrap();
        for m in [&host, &guest] {
            assert_eq!(m.file_type().is_char_device(), is_chr, "{name}");
            assert_eq!(m.file_type().is_block_device(), !is_chr, "{name}");
            assert_eq!(
                m.rdev(),
                libc::makedev(1, 3),
                "{name}: the device number survives"
            );
        }
    }
    // The mount is nodev, as FUSE mounts are by default: a node on the share (made by the
    // guest or by anyone on the host) never opens a device of the guest.
    let err = fs::OpenOptions::new()
        .write(true)
        .open(share.mnt().join("null"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    assert!(share.stop().success());
}

/// `sh -c script` in the test process's identity (root); its success and output.
fn sh(script: &str) -> (bool, String) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

/// Without `--setid` nothing from the guest makes a set-id or capable file on the host, and
/// only `user.*` and POSIX ACL xattrs are the guest's, even for root in passthrough mode.
#[test]
fn set_id_bits_capabilities_and_host_xattrs_are_refused() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    let m = share.mnt().display();
    let src = share.src().to_path_buf();
    let (ok, out) = sh(&format!(
        "set -e; echo x > {m}/f; chmod 755 {m}/f; mkdir {m}/d; chmod 2775 {m}/d"
    ));
    assert!(ok, "{out}");
    for script in [
        format!("chmod 4755 {m}/f"),
        format!("chmod 2755 {m}/f"),
        format!("chmod 4775 {m}/d"),
        format!("setcap cap_net_raw+ep {m}/f"),
        format!("setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= {m}/f"),
        format!("setfattr -n trusted.overlay.opaque -v y {m}/d"),
        format!("setfattr -n security.evil -v y {m}/f"),
    ] {
        let (ok, out) = sh(&script);
        assert!(!ok, "the guest could: {script}\n{out}");
    }
    let mode = |p: &str| fs::metadata(src.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("f"), 0o755);
    assert_eq!(
        mode("d") & 0o2000,
        0o2000,
        "set-group-ID directories stay allowed"
    );
    // A file created with set-id bits is made without them.
    let (ok, out) = sh(&format!(
        "python3 -c \"import os; os.close(os.open('{m}/g', os.O_CREAT | os.O_WRONLY, 0o6755))\""
    ));
    assert!(ok, "{out}");
    assert_eq!(mode("g") & 0o7000, 0);
    // The host's own names are not the guest's to see.
    let (ok, out) = sh(&format!(
        "setfattr -n trusted.secret -v 1 {s}/f && setfattr -n user.mine -v 1 {m}/f && getfattr -d -m - {m}/f",
        s = src.display()
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("user.mine") && !out.contains("trusted.secret"),
        "{out}"
    );
    let (_, caps) = sh(&format!(
        "getfattr -n security.capability {}/f",
        src.display()
    ));
    assert!(!caps.contains("security.capability="), "{caps}");
    assert!(share.stop().success());

    // The export option lets them through.
    let share = Share::start_with(&["--setid"]);
    let m = share.mnt().display();
    let (ok, out) = sh(&format!("set -e; echo x > {m}/f; chmod 4755 {m}/f"));
    assert!(ok, "{out}");
    assert_eq!(
        fs::metadata(share.src().join("f")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert!(share.stop().success());
}

/// A FUSE filesystem with one writable file `f` whose every close fails with EIO, as an NFS
/// or SMB export does when its write-back at close fails.
struct FailingClose;

const FAILING_FILE: u64 = 2;

fn failing_attr(ino: u64) -> fuser::FileAttr {
    let t = std::time::SystemTime::UNIX_EPOCH;
    let dir = ino == 1;
    fuser::FileAttr {
        ino: fuser::INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: if dir {
            fuser::FileType::Directory
        } else {
            fuser::FileType::RegularFile
        },
        perm: if dir { 0o755 } else { 0o666 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl fuser::Filesystem for FailingClose {
    fn lookup(
        &self,
        _req: &fuser::Request,
        parent: fuser::INodeNo,
        name: &std::ffi::OsStr,
        reply: fuser::ReplyEntry,
    ) {
        if parent.0 == 1 && name == "f" {
            let ttl = std::time::Duration::from_secs(1);
            reply.entry(&ttl, &failing_attr(FAILING_FILE), fuser::Generation(0));
        } else {
            reply.error(fuser::Errno::ENOENT);
        }
    }

    fn getattr(
        &self,
        _req: &fuser::Request,
        ino: fuser::INodeNo,
        _fh: Option<fuser::FileHandle>,
        reply: fuser::ReplyAttr,
    ) {
        match ino.0 {
            1 | FAILING_FILE => {
                reply.attr(&std::time::Duration::from_secs(1), &failing_attr(ino.0))
            }
            _ => reply.error(fuser::Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &fuser::Request,
        _ino: fuser::INodeNo,
        _fh: fuser::FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &fuser::Request,
        _ino: fuser::INodeNo,
        _fh: fuser::FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.error(fuser::Errno::EIO);
    }
}

/// `close(2)` of a file on the share returns the error the host's close gave: a FUSE export
/// whose close fails with EIO (as NFS or SMB do when write-back fails) fails the guest's close.
#[test]
fn close_reports_the_hosts_close_error() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("failclose".into())];
    let host_fs = fuser::spawn_mount(FailingClose, src.path(), &config).unwrap();
    // The host's own close fails, as the share must report.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(src.path().join("f"))
        .unwrap();
    // SAFETY: closing a descriptor this test owns; `into_raw_fd` gave up the File's claim.
    let r = unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(f)) };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EIO))
    );

    let mnt_dir = tempfile::tempdir().unwrap();
    let share = crate::harness::Mounted::start(src.path(), mnt_dir.path(), &[]);
    let mnt = mnt_dir.path();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("f"))
        .unwrap();
    f.write_all(b"data").unwrap();
    // SAFETY: as above.
    let r = unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(f)) };
    let err = std::io::Error::last_os_error().raw_os_error();
    assert_eq!((r, err), (-1, Some(libc::EIO)), "close through the share");
    assert!(share.stop().success());
    host_fs.umount_and_join().unwrap();
}
