//! Owner handling of the export core, driven directly on temporary directories: translation,
//! creation as the caller, persisted owners, hidden xattrs. They need root (as CI runs them)
//! and say SKIPPED otherwise.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use ferry_protocol::{Attr, Ctx, Errno};
use tempfile::TempDir;

use super::*;
use crate::ids::{GuestGid, GuestUid, IdMode, IdPolicy, OVERFLOW_ID};

fn root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let ok = unsafe { libc::geteuid() } == 0;
    if !ok {
        eprintln!("\n*** SKIPPED {test}: needs root (CI has it) ***\n");
    }
    ok
}

fn caller(uid: u32, gid: u32, groups: &[u32]) -> Ctx {
    Ctx {
        uid,
        gid,
        pid: 1,
        groups: groups.to_vec(),
    }
}

/// A session on a fresh directory (mode 0777 so every test user may create in it).
fn session(policy: IdPolicy) -> (TempDir, ExportSession) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let export = Export::open(ExportConfig {
        name: "ids".into(),
        path: dir.path().to_path_buf(),
        read_only: false,
        ids: policy,
        devices: false,
        setid: true,
    })
    .unwrap();
    (dir, ExportSession::new(export).unwrap())
}

fn squash(persist: bool) -> IdPolicy {
    IdPolicy {
        persist_owners: persist,
        ..IdPolicy::new(IdMode::Squash {
            uid: GuestUid(1000),
            gid: GuestGid(1000),
        })
    }
}

fn owner(attr: &Attr) -> (u32, u32) {
    (attr.uid, attr.gid)
}

fn host_owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn xattr(p: &Path, name: &str) -> Option<String> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: valid strings and a writable buffer of the given size.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| String::from_utf8_lossy(&buf[..r as usize]).into_owned())
}

fn chown(s: &ExportSession, ino: u64, uid: Option<u32>, gid: Option<u32>) -> Result<Attr, Errno> {
    let attrs = SetAttrs {
        uid: uid.map(GuestUid),
        gid: gid.map(GuestGid),
        ..Default::default()
    };
    s.setattr(&caller(0, 0, &[]), ino, None, &attrs)
}

fn chmod(s: &ExportSession, ino: u64, mode: u32) -> Result<Attr, Errno> {
    let attrs = SetAttrs {
        mode: Some(mode),
        ..Default::default()
    };
    s.setattr(&caller(0, 0, &[]), ino, None, &attrs)
}

#[test]
fn squash_shows_one_owner_and_keeps_chown_in_an_xattr() {
    if !root("squash_shows_one_owner_and_keeps_chown_in_an_xattr") {
        return;
    }
    let (dir, s) = session(squash(true));
    std::fs::write(dir.path().join("host-file"), b"x").unwrap();
    std::os::unix::fs::chown(dir.path().join("host-file"), Some(4321), Some(4321)).unwrap();
    let e = s.lookup(&CTX0, ROOT_ID, b"host-file").unwrap();
    assert_eq!(
        owner(&e.attr),
        (1000, 1000),
        "any host owner shows as the target"
    );
    assert_eq!(owner(&s.getattr(ROOT_ID, None).unwrap()), (1000, 1000));

    // The postgres entrypoint: chown -R 999:999 data && chmod 700 data.
    let d = s.mkdir(&CTX0, ROOT_ID, b"data", 0o755, 0o022).unwrap();
    let f = s
        .create(&CTX0, d.ino, b"PG_VERSION", 0o644, 0o022, libc::O_WRONLY)
        .unwrap();
    for ino in [d.ino, f.entry.ino] {
        assert_eq!(
            owner(&chown(&s, ino, Some(999), Some(999)).unwrap()),
            (999, 999)
        );
    }
    let a = chmod(&s, d.ino, 0o700).unwrap();
    assert_eq!(a.mode, libc::S_IFDIR | 0o700);
    // The host keeps its owner (the server's user) and takes the mode.
    let data = dir.path().join("data");
    assert_eq!(host_owner(&data), (0, 0));
    assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(
        xattr(&data, "user.ferry.owner").as_deref(),
        Some("999:999:40700:40700")
    );
    // A fresh session (a remount) still shows it.
    let s2 = ExportSession::new(Arc::clone(s.export())).unwrap();
    let again = s2.lookup(&CTX0, ROOT_ID, b"data").unwrap();
    assert_eq!(
        (again.attr.uid, again.attr.gid, again.attr.mode & 0o7777),
        (999, 999, 0o700)
    );
    // chgrp alone keeps the owner.
    assert_eq!(owner(&chown(&s, d.ino, None, Some(50)).unwrap()), (999, 50));
    // Back to the target: nothing left to keep, the record goes.
    assert_eq!(
        owner(&chown(&s, d.ino, Some(1000), Some(1000)).unwrap()),
        (1000, 1000)
    );
    assert_eq!(xattr(&data, "user.ferry.owner"), None);

    // Symlinks cannot carry user xattrs: the chown succeeds without being kept.
    let l = s.symlink(&CTX0, ROOT_ID, b"link", b"data").unwrap();
    assert_eq!(
        owner(&chown(&s, l.ino, Some(999), Some(999)).unwrap()),
        (1000, 1000)
    );
}

/// The record is the server's: invisible and unforgeable from the guest.
#[test]
fn the_owner_xattr_is_hidden_from_the_guest() {
    if !root("the_owner_xattr_is_hidden_from_the_guest") {
        return;
    }
    let (dir, s) = session(squash(true));
    let f = s
        .create(
            &caller(1000, 1000, &[]),
            ROOT_ID,
            b"f",
            0o644,
            0,
            libc::O_WRONLY,
        )
        .unwrap();
    s.setxattr(&CTX0, f.entry.ino, b"user.mine", b"1", 0)
        .unwrap();
    chown(&s, f.entry.ino, Some(999), None).unwrap();
    assert!(xattr(&dir.path().join("f"), "user.ferry.owner").is_some());
    let XattrReply::Size(n) = s.listxattr(&CTX0, f.entry.ino, 0).unwrap() else {
        panic!("size expected")
    };
    assert_eq!(
        n as usize,
        b"user.mine\0".len(),
        "the size leaves the record out"
    );
    assert_eq!(
        s.listxattr(&CTX0, f.entry.ino, 100).unwrap(),
        XattrReply::Data(b"user.mine\0".to_vec())
    );
    assert_eq!(
        s.getxattr(&CTX0, f.entry.ino, b"user.ferry.owner", 100)
            .unwrap_err(),
        Errno::ENODATA
    );
    let forged = s.setxattr(
        &CTX0,
        f.entry.ino,
        b"user.ferry.owner",
        b"0:0:100644:100644",
        0,
    );
    assert_eq!(forged.unwrap_err(), Errno::EPERM);
    assert_eq!(
        s.setxattr(&CTX0, ROOT_ID, b"user.ferry.other", b"1", 0)
            .unwrap_err(),
        Errno::EPERM
    );
    assert_eq!(
        s.removexattr(&CTX0, f.entry.ino, b"user.ferry.owner")
            .unwrap_err(),
        Errno::EPERM
    );
    assert_eq!(owner(&s.getattr(f.entry.ino, None).unwrap()), (999, 1000));
}

#[test]
fn a_host_chmod_wins_over_a_kept_mode() {
    if !root("a_host_chmod_wins_over_a_kept_mode") {
        return;
    }
    let (dir, s) = session(squash(true));
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = s.lookup(&CTX0, ROOT_ID, b"f").unwrap();
    // Squash mode keeps set-id bits off the host and in the record instead. (A mode the host
    // refuses is kept only on the server's own files: see
    // `kept_owners_count_only_on_the_servers_own_files`.)
    let a = chmod(&s, e.ino, 0o4755).unwrap();
    assert_eq!(a.mode & 0o7777, 0o4755, "kept and shown");
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(s.getattr(e.ino, None).unwrap().mode & 0o7777, 0o4755);
    // Someone on the host changes the mode: the host wins; the kept owner stays.
    chown(&s, e.ino, Some(999), None).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let a = s.getattr(e.ino, None).unwrap();
    assert_eq!((a.mode & 0o7777, a.uid), (0o640, 999));
}

#[test]
fn squash_records_creators_and_keeps_set_id_bits_off_the_host() {
    if !root("squash_records_creators_and_keeps_set_id_bits_off_the_host") {
        return;
    }
    let (dir, s) = session(squash(true));
    let as999 = caller(999, 999, &[]);
    let as1000 = caller(1000, 1000, &[]);
    // The target creates: nothing to record (the common, fast case).
    let d = s.mkdir(&as1000, ROOT_ID, b"mine", 0o755, 0o022).unwrap();
    assert_eq!(owner(&d.attr), (1000, 1000));
    assert_eq!(xattr(&dir.path().join("mine"), "user.ferry.owner"), None);
    assert_eq!(
        host_owner(&dir.path().join("mine")),
        (0, 0),
        "the server's user"
    );
    // Another user creates: recorded, so it sees its own files as its own.
    let f = s
        .create(&as999, ROOT_ID, b"theirs", 0o600, 0o022, libc::O_WRONLY)
        .unwrap();
    assert_eq!(owner(&f.entry.attr), (999, 999));
    let m = s
        .mknod(&as999, ROOT_ID, b"fifo", libc::S_IFIFO | 0o644, 0, 0)
        .unwrap();
    assert_eq!(
        owner(&m.attr),
        (1000, 1000),
        "a FIFO cannot carry the record"
    );
    // A set-group-id directory gives its group, as on a local disk.
    let g = s.mkdir(&as999, ROOT_ID, b"shared", 0o775, 0).unwrap();
    chown(&s, g.ino, None, Some(50)).unwrap();
    assert_eq!(chmod(&s, g.ino, 0o2775).unwrap().mode & 0o7777, 0o2775);
    let inner = s.mkdir(&as999, g.ino, b"sub", 0o755, 0).unwrap();
    assert_eq!(owner(&inner.attr), (999, 50));
    assert_ne!(inner.attr.mode & libc::S_ISGID, 0, "inherited set-group-id");
    // A set-uid file: shown, but not on the host.
    let x = s
        .create(&as999, ROOT_ID, b"suid", 0o4755, 0, libc::O_WRONLY)
        .unwrap();
    assert_eq!(x.entry.attr.mode & 0o7777, 0o4755);
    let host = std::fs::metadata(dir.path().join("suid")).unwrap().mode();
    assert_eq!(host & 0o7777, 0o755);
    let a = chmod(&s, x.entry.ino, 0o2711).unwrap();
    assert_eq!(a.mode & 0o7777, 0o2711);
    let host = std::fs::metadata(dir.path().join("suid")).unwrap().mode();
    assert_eq!(host & 0o7777, 0o711);
}

#[test]
fn squash_without_persistence_refuses_what_it_cannot_keep() {
    if !root("squash_without_persistence_refuses_what_it_cannot_keep") {
        return;
    }
    let (dir, s) = session(squash(false));
    let f = s
        .create(
            &caller(999, 999, &[]),
            ROOT_ID,
            b"f",
            0o644,
            0,
            libc::O_WRONLY,
        )
        .unwrap();
    assert_eq!(
        owner(&f.entry.attr),
        (1000, 1000),
        "no record of the creator"
    );
    assert_eq!(xattr(&dir.path().join("f"), "user.ferry.owner"), None);
    assert_eq!(
        chown(&s, f.entry.ino, Some(999), None).unwrap_err(),
        Errno::EPERM
    );
    // A chown to what already shows is a no-op that succeeds (cp -p, tar as the target).
    assert_eq!(
        owner(&chown(&s, f.entry.ino, Some(1000), Some(1000)).unwrap()),
        (1000, 1000)
    );
    assert_eq!(chmod(&s, f.entry.ino, 0o4755).unwrap_err(), Errno::EPERM);
    assert_eq!(chmod(&s, f.entry.ino, 0o600).unwrap().mode & 0o777, 0o600);
}

fn map_policy(spec: &str, persist: bool) -> IdPolicy {
    IdPolicy {
        persist_owners: persist,
        ..IdPolicy::new(spec.parse().unwrap())
    }
}

#[test]
fn map_translates_both_ways_and_creates_as_the_mapped_user() {
    if !root("map_translates_both_ways_and_creates_as_the_mapped_user") {
        return;
    }
    // Guest 0..1000 are host 100000..101000; guest 1000 is host 2000.
    let (dir, s) = session(map_policy("map:0:100000:1000,1000:2000:1", false));
    let d = s
        .mkdir(&caller(1000, 1000, &[]), ROOT_ID, b"d", 0o755, 0o022)
        .unwrap();
    assert_eq!(owner(&d.attr), (1000, 1000));
    assert_eq!(host_owner(&dir.path().join("d")), (2000, 2000));
    let f = s
        .create(
            &caller(5, 7, &[]),
            ROOT_ID,
            b"f",
            0o666,
            0o022,
            libc::O_WRONLY,
        )
        .unwrap();
    assert_eq!(owner(&f.entry.attr), (5, 7));
    assert_eq!(host_owner(&dir.path().join("f")), (100_005, 100_007));
    // A host file owned outside every range shows as the overflow id.
    std::fs::write(dir.path().join("foreign"), b"").unwrap();
    std::os::unix::fs::chown(dir.path().join("foreign"), Some(3000), Some(0)).unwrap();
    let e = s.lookup(&CTX0, ROOT_ID, b"foreign").unwrap();
    assert_eq!(owner(&e.attr), (OVERFLOW_ID, OVERFLOW_ID));
    // An unmapped caller cannot create (as with an idmapped mount), nor be given a file.
    assert_eq!(
        s.mkdir(&caller(5000, 5000, &[]), ROOT_ID, b"x", 0o755, 0)
            .unwrap_err(),
        Errno::EOVERFLOW
    );
    assert_eq!(
        chown(&s, f.entry.ino, Some(5000), None).unwrap_err(),
        Errno::EINVAL
    );
    // A mapped chown goes to the host.
    assert_eq!(
        owner(&chown(&s, f.entry.ino, Some(999), Some(1000)).unwrap()),
        (999, 1000)
    );
    assert_eq!(host_owner(&dir.path().join("f")), (100_999, 2000));

    // With persisted owners, an id the host cannot have is kept instead.
    let (dir, s) = session(map_policy("map:0:100000:1000", true));
    let f = s
        .create(&caller(5, 5, &[]), ROOT_ID, b"f", 0o644, 0, libc::O_WRONLY)
        .unwrap();
    assert_eq!(
        owner(&chown(&s, f.entry.ino, Some(5000), None).unwrap()),
        (5000, 5)
    );
    assert_eq!(host_owner(&dir.path().join("f")), (100_005, 100_005));
    // And a later mapped chown reaches the host and drops the record.
    assert_eq!(
        owner(&chown(&s, f.entry.ino, Some(6), None).unwrap()),
        (6, 5)
    );
    assert_eq!(host_owner(&dir.path().join("f")), (100_006, 100_005));
    assert_eq!(xattr(&dir.path().join("f"), "user.ferry.owner"), None);
}

#[test]
fn passthrough_creates_with_the_callers_groups() {
    if !root("passthrough_creates_with_the_callers_groups") {
        return;
    }
    let (dir, s) = session(IdPolicy::passthrough());
    // A group directory: root:2000, rwxrws---.
    let team = dir.path().join("team");
    std::fs::create_dir(&team).unwrap();
    std::os::unix::fs::chown(&team, Some(0), Some(2000)).unwrap();
    std::fs::set_permissions(&team, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let t = s.lookup(&CTX0, ROOT_ID, b"team").unwrap();
    // A member through a supplementary group may create; the file takes the directory's group.
    let f = s
        .create(
            &caller(1000, 1000, &[2000]),
            t.ino,
            b"f",
            0o664,
            0o002,
            libc::O_WRONLY,
        )
        .unwrap();
    assert_eq!(owner(&f.entry.attr), (1000, 2000));
    assert_eq!(host_owner(&team.join("f")), (1000, 2000));
    let sub = s
        .mkdir(&caller(1000, 1000, &[2000]), t.ino, b"sub", 0o775, 0o002)
        .unwrap();
    assert_eq!(sub.attr.mode & 0o7777, 0o2775, "set-group-id is inherited");
    // Someone outside the group may not.
    assert_eq!(
        s.create(
            &caller(1001, 1001, &[]),
            t.ino,
            b"g",
            0o644,
            0,
            libc::O_WRONLY
        )
        .unwrap_err(),
        Errno::EACCES
    );
    assert_eq!(
        s.symlink(&caller(1001, 1001, &[3000]), t.ino, b"l", b"f")
            .unwrap_err(),
        Errno::EACCES
    );
    // The server's own credentials are back after every request.
    assert_eq!(super::creds::current().0, 0);
}

/// Many workers creating as different users at once: each file gets its own creator, because
/// credentials are per thread.
#[test]
fn concurrent_creators_do_not_mix_credentials() {
    if !root("concurrent_creators_do_not_mix_credentials") {
        return;
    }
    let (dir, s) = session(IdPolicy::passthrough());
    let s = Arc::new(s);
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let uid = 2000 + t;
                for i in 0..50 {
                    let name = format!("t{t}-{i}");
                    let ctx = caller(uid, uid + 100, &[]);
                    if i % 2 == 0 {
                        s.mkdir(&ctx, ROOT_ID, name.as_bytes(), 0o755, 0).unwrap();
                    } else {
                        s.create(&ctx, ROOT_ID, name.as_bytes(), 0o644, 0, libc::O_WRONLY)
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..8u32 {
        for i in 0..50 {
            let p = dir.path().join(format!("t{t}-{i}"));
            assert_eq!(host_owner(&p), (2000 + t, 2100 + t), "{}", p.display());
        }
    }
}

const CTX0: Ctx = Ctx {
    uid: 0,
    gid: 0,
    pid: 1,
    groups: Vec::new(),
};

fn open_flags(s: &ExportSession, ctx: &Ctx, ino: u64, flags: i32) -> Result<(), Errno> {
    let o = s.open(ctx, ino, flags)?;
    s.release(ino, o.fh).unwrap();
    Ok(())
}

/// Map mode confines: guest root is root of a user namespace whose ids are the mapped range,
/// with power only over objects whose owner and group are both mapped; other guest users are
/// their mapped host users. The host checks, whatever the guest kernel let through.
#[test]
fn map_mode_runs_every_request_as_the_mapped_identity() {
    if !root("map_mode_runs_every_request_as_the_mapped_identity") {
        return;
    }
    let (dir, s) = session(IdPolicy::new("map:0:100000:65536".parse().unwrap()));
    let p = dir.path();
    // Host root's own files: a 0644 file in a 0755 directory, and a 0700 directory.
    std::fs::create_dir(p.join("etc")).unwrap();
    std::fs::set_permissions(p.join("etc"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(p.join("etc/passwd"), b"root").unwrap();
    std::fs::set_permissions(p.join("etc/passwd"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(p.join("secret")).unwrap();
    std::fs::set_permissions(p.join("secret"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(p.join("secret/key"), b"k").unwrap();

    let etc = s.lookup(&CTX0, ROOT_ID, b"etc").unwrap();
    let passwd = s.lookup(&CTX0, etc.ino, b"passwd").unwrap();
    assert_eq!(owner(&passwd.attr), (OVERFLOW_ID, OVERFLOW_ID));
    // Guest root cannot write, truncate, chmod, chown or set xattrs on it...
    assert_eq!(
        open_flags(&s, &CTX0, passwd.ino, libc::O_WRONLY),
        Err(Errno::EACCES)
    );
    assert_eq!(chmod(&s, passwd.ino, 0o4755).unwrap_err(), Errno::EPERM);
    assert_eq!(
        chown(&s, passwd.ino, Some(0), Some(0)).unwrap_err(),
        Errno::EPERM
    );
    let trunc = SetAttrs {
        size: Some(0),
        ..Default::default()
    };
    assert!(s.setattr(&CTX0, passwd.ino, None, &trunc).is_err());
    assert!(s.setxattr(&CTX0, passwd.ino, b"user.x", b"1", 0).is_err());
    // ... nor create or remove in its directory, nor look into its 0700 directory.
    assert!(
        s.mknod(&CTX0, etc.ino, b"new", libc::S_IFREG | 0o644, 0, 0)
            .is_err()
    );
    assert_eq!(s.unlink(&CTX0, etc.ino, b"passwd"), Err(Errno::EACCES));
    let secret = s.lookup(&CTX0, ROOT_ID, b"secret").unwrap();
    assert_eq!(
        s.lookup(&CTX0, secret.ino, b"key").unwrap_err(),
        Errno::EACCES
    );
    assert_eq!(s.opendir(&CTX0, secret.ino, 0).unwrap_err(), Errno::EACCES);
    assert_eq!(s.access(&CTX0, passwd.ino, libc::W_OK), Err(Errno::EACCES));
    assert_eq!(std::fs::read(p.join("etc/passwd")).unwrap(), b"root");
    assert_eq!(host_owner(&p.join("etc/passwd")), (0, 0));
    let mode = std::fs::metadata(p.join("etc/passwd")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o644);
    // Reading what "other" may read is fine.
    open_flags(&s, &CTX0, passwd.ino, libc::O_RDONLY).unwrap();

    // Over mapped objects guest root has its powers: chown among mapped ids, then write a
    // 0600 file it does not own.
    let f = s
        .create(&CTX0, ROOT_ID, b"mine", 0o644, 0o022, libc::O_WRONLY)
        .unwrap();
    s.release(f.entry.ino, f.opened.fh).unwrap();
    let ino = f.entry.ino;
    assert_eq!(host_owner(&p.join("mine")), (100_000, 100_000));
    assert_eq!(
        owner(&chown(&s, ino, Some(1000), Some(1000)).unwrap()),
        (1000, 1000)
    );
    assert_eq!(host_owner(&p.join("mine")), (101_000, 101_000));
    chmod(&s, ino, 0o600).unwrap();
    open_flags(&s, &CTX0, ino, libc::O_RDWR).unwrap();
    // Guest users are their host users: the owner may, another user may not.
    open_flags(&s, &caller(1000, 1000, &[]), ino, libc::O_RDWR).unwrap();
    assert_eq!(
        open_flags(&s, &caller(1001, 1001, &[]), ino, libc::O_RDONLY),
        Err(Errno::EACCES)
    );
    assert_eq!(
        chown(&s, passwd.ino, None, Some(1000)).unwrap_err(),
        Errno::EPERM
    );
    // A creating open of an existing host-root file in a directory guest root owns opens it
    // only as far as its mode lets the mapped uid.
    let d = s.mkdir(&CTX0, ROOT_ID, b"own", 0o755, 0).unwrap();
    std::fs::write(p.join("own/rootfile"), b"root").unwrap();
    std::fs::set_permissions(
        p.join("own/rootfile"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let flags = libc::O_WRONLY | libc::O_TRUNC;
    assert_eq!(
        s.create(&CTX0, d.ino, b"rootfile", 0o644, 0, flags)
            .map(|_| ())
            .unwrap_err(),
        Errno::EACCES
    );
    assert_eq!(std::fs::read(p.join("own/rootfile")).unwrap(), b"root");
    // Nothing of the server's credentials leaked into this thread.
    assert_eq!(super::creds::current().0, 0);
}

/// Squash mode as root: the guest acts as the server's user without root's powers.
#[test]
fn squash_mode_as_root_has_no_root_powers() {
    if !root("squash_mode_as_root_has_no_root_powers") {
        return;
    }
    let (dir, s) = session(squash(false));
    std::fs::write(dir.path().join("theirs"), b"x").unwrap();
    std::os::unix::fs::chown(dir.path().join("theirs"), Some(4321), Some(4321)).unwrap();
    std::fs::set_permissions(
        dir.path().join("theirs"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let e = s.lookup(&CTX0, ROOT_ID, b"theirs").unwrap();
    assert_eq!(
        open_flags(&s, &CTX0, e.ino, libc::O_WRONLY),
        Err(Errno::EACCES)
    );
    assert_eq!(chmod(&s, e.ino, 0o666).unwrap_err(), Errno::EPERM);
    assert_eq!(std::fs::read(dir.path().join("theirs")).unwrap(), b"x");
}

/// A kept owner on a file owned by another host user than the server's is not honoured.
#[test]
fn kept_owners_count_only_on_the_servers_own_files() {
    if !root("kept_owners_count_only_on_the_servers_own_files") {
        return;
    }
    let (dir, s) = session(squash(true));
    let evil = dir.path().join("evil");
    std::fs::write(&evil, b"").unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&evil, Some(4242), Some(4242)).unwrap();
    let record = |p: &Path, v: &[u8]| {
        let c = sys::cstring(p.as_os_str().as_bytes()).unwrap();
        sys::setxattr(&c, OWNER_XATTR, v, 0).unwrap();
    };
    record(&evil, b"0:0:104755:100644");
    let e = s.lookup(&CTX0, ROOT_ID, b"evil").unwrap();
    assert_eq!(owner(&e.attr), (1000, 1000));
    assert_eq!(e.attr.mode & 0o7777, 0o644);
    // The server's own file keeps its record.
    let mine = dir.path().join("mine");
    std::fs::write(&mine, b"").unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o644)).unwrap();
    record(&mine, b"999:999:100600:100644");
    let e = s.lookup(&CTX0, ROOT_ID, b"mine").unwrap();
    assert_eq!((owner(&e.attr), e.attr.mode & 0o7777), ((999, 999), 0o600));
}
