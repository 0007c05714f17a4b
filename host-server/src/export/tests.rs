//! Tests driving [`ExportSession`] directly on temporary directories. They run as root.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;

use ferry_protocol::{
    Attr, CopyFileRange, Ctx, Entry, Errno, Getxattr, Lock, Lookup, Read, Reply, Request, SetTime,
    Timespec,
};
use tempfile::TempDir;

use super::*;

const CTX: Ctx = Ctx {
    uid: 0,
    gid: 0,
    pid: 1,
    groups: Vec::new(),
};

fn export(dir: &Path, read_only: bool) -> Arc<Export> {
    Export::open(ExportConfig {
        name: "test".into(),
        path: dir.to_path_buf(),
        read_only,
        ids: crate::ids::IdPolicy::passthrough(),
        devices: false,
        acl: true,
        setid: false,
    })
    .expect("open export")
}

fn setup() -> (TempDir, ExportSession) {
    let dir = tempfile::tempdir().unwrap();
    let s = ExportSession::new(export(dir.path(), false)).unwrap();
    (dir, s)
}

fn is_kind(attr: &Attr, kind: u32) -> bool {
    attr.mode & libc::S_IFMT == kind
}

/// Creates `name` in `parent` with content and returns the entry and an O_RDWR handle.
fn create_file(s: &ExportSession, parent: u64, name: &str, content: &[u8]) -> (Entry, u64) {
    let c = s
        .create(
            &CTX,
            parent,
            name.as_bytes(),
            0o644,
            0o022,
            libc::O_RDWR | libc::O_CREAT,
        )
        .unwrap();
    assert_eq!(
        s.write(c.entry.ino, c.opened.fh, 0, content).unwrap() as usize,
        content.len()
    );
    (c.entry, c.opened.fh)
}

#[test]
fn open_reports_bad_paths_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = Export::open(ExportConfig {
        name: "x".into(),
        path: missing.clone(),
        read_only: false,
        ids: crate::ids::IdPolicy::passthrough(),
        devices: false,
        acl: true,
        setid: false,
    })
    .unwrap_err();
    assert!(matches!(err, ExportError::NotFound { .. }));
    assert!(err.to_string().contains(&*missing.to_string_lossy()));
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = Export::open(ExportConfig {
        name: "x".into(),
        path: file.clone(),
        read_only: false,
        ids: crate::ids::IdPolicy::passthrough(),
        devices: false,
        acl: true,
        setid: false,
    })
    .unwrap_err();
    assert!(matches!(err, ExportError::NotADirectory { .. }));
    assert!(err.to_string().contains("not a directory"));
    let e = export(dir.path(), true);
    assert_eq!(e.name(), "test");
    assert!(e.read_only());
}

#[test]
fn create_write_read_round_trip() {
    let (dir, s) = setup();
    let (entry, fh) = create_file(&s, ROOT_ID, "f", b"hello world");
    assert!(entry.ino > ROOT_ID);
    assert!(is_kind(&entry.attr, libc::S_IFREG));
    let host_ino = std::fs::symlink_metadata(dir.path().join("f"))
        .unwrap()
        .ino();
    assert_eq!(
        entry.attr.ino, host_ino,
        "attr.ino is the host's inode number"
    );
    assert_eq!(entry.attr.mode & 0o777, 0o644);
    assert_eq!(s.read(entry.ino, fh, 0, 100).unwrap(), b"hello world");
    assert_eq!(s.read(entry.ino, fh, 6, 3).unwrap(), b"wor");
    assert_eq!(s.read(entry.ino, fh, 100, 3).unwrap(), b"");
    s.flush(entry.ino, fh, 0).unwrap();
    s.fsync(entry.ino, fh, true).unwrap();
    s.release(entry.ino, fh).unwrap();
    assert_eq!(s.release(entry.ino, fh).unwrap_err(), Errno::EBADF);
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello world");

    let again = s.lookup(&CTX, ROOT_ID, b"f").unwrap();
    assert_eq!(again.ino, entry.ino, "same file, same node");
    assert_eq!(s.lookup_count(entry.ino), Some(2));
    let attr = s.getattr(entry.ino, None).unwrap();
    assert_eq!(attr.size, 11);
    assert_eq!(attr.ino, host_ino);
    let meta = std::fs::metadata(dir.path().join("f")).unwrap();
    assert_eq!(attr.blksize as u64, meta.blksize());
    assert_eq!(attr.blocks, meta.blocks());
    assert_eq!(attr.mtime.nsec as i64, meta.mtime_nsec());

    // Reopen read-only; writes through it fail on the host.
    let o = s.open(&CTX, entry.ino, libc::O_RDONLY).unwrap();
    assert_eq!(s.read(entry.ino, o.fh, 0, 5).unwrap(), b"hello");
    assert_eq!(s.write(entry.ino, o.fh, 0, b"x").unwrap_err(), Errno::EBADF);
    // O_APPEND handles append whatever the offset.
    let a = s
        .open(&CTX, entry.ino, libc::O_WRONLY | libc::O_APPEND)
        .unwrap();
    s.write(entry.ino, a.fh, 0, b"!").unwrap();
    assert_eq!(s.read(entry.ino, o.fh, 0, 100).unwrap(), b"hello world!");
    // O_TRUNC truncates.
    let t = s
        .open(&CTX, entry.ino, libc::O_WRONLY | libc::O_TRUNC)
        .unwrap();
    assert_eq!(s.getattr(entry.ino, Some(t.fh)).unwrap().size, 0);
    // Oversized requests are refused.
    assert_eq!(
        s.read(entry.ino, o.fh, 0, (ferry_protocol::MAX_DATA + 1) as u32)
            .unwrap_err(),
        Errno::EINVAL
    );
    let big = vec![0u8; ferry_protocol::MAX_DATA + 1];
    assert_eq!(
        s.write(entry.ino, a.fh, 0, &big).unwrap_err(),
        Errno::EINVAL
    );

    // O_EXCL on an existing name is EEXIST; without it the file is opened.
    assert_eq!(
        s.create(
            &CTX,
            ROOT_ID,
            b"f",
            0o644,
            0,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL
        )
        .unwrap_err(),
        Errno::EEXIST
    );
    let c = s
        .create(&CTX, ROOT_ID, b"f", 0o600, 0, libc::O_RDWR | libc::O_CREAT)
        .unwrap();
    assert_eq!(c.entry.ino, entry.ino);
    assert_eq!(
        c.entry.attr.mode & 0o777,
        0o644,
        "an existing file keeps its mode"
    );
}

#[test]
fn guest_umask_decides_created_modes() {
    let (_dir, s) = setup();
    let d = s.mkdir(&CTX, ROOT_ID, b"open", 0o777, 0).unwrap();
    assert!(is_kind(&d.attr, libc::S_IFDIR));
    assert_eq!(d.attr.mode & 0o7777, 0o777);
    let d2 = s.mkdir(&CTX, ROOT_ID, b"masked", 0o777, 0o027).unwrap();
    assert_eq!(d2.attr.mode & 0o7777, 0o750);
    let c = s
        .create(
            &CTX,
            ROOT_ID,
            b"f",
            0o666,
            0,
            libc::O_WRONLY | libc::O_CREAT,
        )
        .unwrap();
    assert_eq!(c.entry.attr.mode & 0o777, 0o666);
    let n = s
        .mknod(&CTX, ROOT_ID, b"fifo", libc::S_IFIFO | 0o666, 0, 0o002)
        .unwrap();
    assert!(is_kind(&n.attr, libc::S_IFIFO));
    assert_eq!(n.attr.mode & 0o777, 0o664);
    let r = s
        .mknod(&CTX, ROOT_ID, b"reg", libc::S_IFREG | 0o640, 0, 0)
        .unwrap();
    assert!(is_kind(&r.attr, libc::S_IFREG));
    // Opening a FIFO on the host could block forever; the guest never asks, so it is refused.
    assert_eq!(
        s.open(&CTX, n.ino, libc::O_RDONLY).unwrap_err(),
        Errno::EPERM
    );
    assert_eq!(
        s.mknod(&CTX, ROOT_ID, b"chr", libc::S_IFCHR | 0o666, 0x0101, 0)
            .unwrap_err(),
        Errno::EPERM
    );
    assert_eq!(
        s.mknod(&CTX, ROOT_ID, b"blk", libc::S_IFBLK | 0o666, 0x0801, 0)
            .unwrap_err(),
        Errno::EPERM
    );
    assert_eq!(
        s.mkdir(&CTX, ROOT_ID, b"open", 0o777, 0).unwrap_err(),
        Errno::EEXIST
    );
    // Nodes created in a subdirectory.
    let inner = s.mkdir(&CTX, d.ino, b"inner", 0o755, 0o022).unwrap();
    s.lookup(&CTX, d.ino, b"inner").unwrap();
    assert_eq!(s.lookup_count(inner.ino), Some(2));
    assert_eq!(
        s.rmdir(&CTX, ROOT_ID, b"open").unwrap_err(),
        Errno::ENOTEMPTY
    );
    s.rmdir(&CTX, d.ino, b"inner").unwrap();
    s.rmdir(&CTX, ROOT_ID, b"open").unwrap();
    // The node of a removed directory lives on until forgotten.
    assert_eq!(s.getattr(inner.ino, None).unwrap().nlink, 0);
    s.forget(inner.ino, 2);
    assert_eq!(s.getattr(inner.ino, None).unwrap_err(), Errno::ESTALE);
}

#[test]
fn readdir_lists_a_thousand_entries_across_calls() {
    let (dir, s) = setup();
    let d = s.mkdir(&CTX, ROOT_ID, b"d", 0o755, 0).unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..1000 {
        let name = format!("entry-{i:04}-{}", "x".repeat(i % 40));
        std::fs::write(dir.path().join("d").join(&name), b"").unwrap();
        expected.insert(name.into_bytes());
    }
    expected.insert(b".".to_vec());
    expected.insert(b"..".to_vec());
    let o = s.opendir(&CTX, d.ino, libc::O_RDONLY).unwrap();
    let mut seen = Vec::new();
    let mut offset = 0;
    let mut calls = 0;
    loop {
        let batch = s.readdir(d.ino, o.fh, offset, 1024).unwrap();
        calls += 1;
        if batch.is_empty() {
            break;
        }
        let cost: usize = batch
            .iter()
            .map(|e| (24 + e.name.len()).div_ceil(8) * 8)
            .sum();
        assert!(cost <= 1024, "a reply stays within the size asked for");
        offset = batch.last().unwrap().offset;
        for e in batch {
            if e.name == b"d" {
                unreachable!();
            }
            assert!(e.ino != 0);
            seen.push(e.name);
        }
    }
    assert!(calls > 10, "the listing took several calls ({calls})");
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    assert_eq!(unique, expected, "no misses");
    // Starting over from cookie 0 gives the first entries again.
    let first = s.readdir(d.ino, o.fh, 0, 4096).unwrap();
    assert!(!first.is_empty());
    // A size too small for any entry returns nothing rather than overflowing.
    assert!(s.readdir(d.ino, o.fh, 0, 8).unwrap().is_empty());
    s.fsyncdir(d.ino, o.fh, false).unwrap();
    // Directory handles are not file handles and vice versa.
    assert_eq!(s.read(d.ino, o.fh, 0, 10).unwrap_err(), Errno::EBADF);
    assert_eq!(s.release(d.ino, o.fh).unwrap_err(), Errno::EBADF);
    s.releasedir(d.ino, o.fh).unwrap();
    assert_eq!(s.readdir(d.ino, o.fh, 0, 4096).unwrap_err(), Errno::EBADF);
}

#[test]
fn readdir_continues_where_it_stopped_and_seeks_elsewhere() {
    // A directory handle keeps the entries it read ahead for a read that continues at the
    // last cookie; any other cookie (a second reader on the same handle, a seekdir) must
    // still get exactly the entries after it.
    let (dir, s) = setup();
    let d = s.mkdir(&CTX, ROOT_ID, b"d", 0o755, 0).unwrap();
    for i in 0..300 {
        std::fs::write(dir.path().join(format!("d/n{i:03}")), b"").unwrap();
    }
    let o = s.opendir(&CTX, d.ino, libc::O_RDONLY).unwrap();
    // The reference: (cookie before, name) for every entry, read in one go per call.
    let mut all: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut offset = 0;
    loop {
        let batch = s.readdir(d.ino, o.fh, offset, 64 * 1024).unwrap();
        if batch.is_empty() {
            break;
        }
        for e in batch {
            all.push((offset, e.name.clone()));
            offset = e.offset;
        }
    }
    assert_eq!(all.len(), 302);
    // Reader A pages with small replies; between its calls reader B reads at a cookie from
    // the reference list, with another reply size.
    let mut a_seen = Vec::new();
    let mut a_off = 0;
    let mut round = 0;
    loop {
        let batch = s.readdir(d.ino, o.fh, a_off, 200).unwrap();
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            a_seen.push(e.name.clone());
            a_off = e.offset;
        }
        if round % 3 == 1 {
            let k = (round * 37) % all.len();
            let b = s.readdir(d.ino, o.fh, all[k].0, 300).unwrap();
            assert!(!b.is_empty());
            for (j, e) in b.iter().enumerate() {
                assert_eq!(e.name, all[k + j].1, "reader B at entry {k}+{j}");
            }
        }
        round += 1;
    }
    let names: Vec<Vec<u8>> = all.into_iter().map(|(_, n)| n).collect();
    assert_eq!(a_seen, names, "reader A saw every entry once, in order");
    s.releasedir(d.ino, o.fh).unwrap();
}

#[test]
fn readdirplus_pages_through_long_names_with_small_replies() {
    // The host buffer is sized to the reply (as small as 1 KiB): names up to 255 bytes and
    // replies of one to a few entries must still list everything once.
    let (dir, s) = setup();
    let d = s.mkdir(&CTX, ROOT_ID, b"d", 0o755, 0).unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..400 {
        let name = format!("{i:03}-{}", "n".repeat((i * 37) % 252));
        std::fs::write(dir.path().join("d").join(&name), b"").unwrap();
        expected.insert(name.into_bytes());
    }
    let o = s.opendir(&CTX, d.ino, libc::O_RDONLY).unwrap();
    for size in [420u32, 1024, 4096, 65536] {
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            let batch = s.readdirplus(&CTX, d.ino, o.fh, offset, size).unwrap();
            if batch.is_empty() {
                break;
            }
            offset = batch.last().unwrap().offset;
            for e in batch {
                if e.entry.ino != 0 {
                    s.forget(e.entry.ino, 1);
                }
                if e.name != b"." && e.name != b".." {
                    seen.push(e.name);
                }
            }
        }
        let unique: BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "size {size}: no duplicates");
        assert_eq!(unique, expected, "size {size}: no misses");
    }
    s.releasedir(d.ino, o.fh).unwrap();
}

#[test]
fn readdirplus_takes_lookups_that_forget_gives_back() {
    let (dir, s) = setup();
    for name in ["a", "b", "c"] {
        std::fs::write(dir.path().join(name), name).unwrap();
    }
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let base = s.node_count();
    let o = s.opendir(&CTX, ROOT_ID, 0).unwrap();
    let all = s.readdirplus(&CTX, ROOT_ID, o.fh, 0, 65536).unwrap();
    assert_eq!(all.len(), 6);
    let mut ids = Vec::new();
    for e in &all {
        if e.name == b"." || e.name == b".." {
            assert_eq!(e.entry.ino, 0, "no lookup for dot entries");
        } else {
            assert!(e.entry.ino > ROOT_ID);
            let path = dir.path().join(OsStr::from_bytes(&e.name));
            let host_ino = std::fs::symlink_metadata(path).unwrap().ino();
            assert_eq!(e.entry.attr.ino, host_ino, "the host's inode number");
            assert_eq!(s.lookup_count(e.entry.ino), Some(1));
            ids.push(e.entry.ino);
        }
    }
    assert_eq!(s.node_count(), base + 4);
    // A second listing in small pieces takes one more lookup each.
    let mut offset = 0;
    let mut n = 0;
    loop {
        let batch = s.readdirplus(&CTX, ROOT_ID, o.fh, offset, 200).unwrap();
        if batch.is_empty() {
            break;
        }
        let cost: usize = batch
            .iter()
            .map(|e| 128 + (24 + e.name.len()).div_ceil(8) * 8)
            .sum();
        assert!(cost <= 200);
        offset = batch.last().unwrap().offset;
        n += batch.len();
    }
    assert_eq!(n, 6);
    for &id in &ids {
        assert_eq!(s.lookup_count(id), Some(2));
        s.forget(id, 1);
        assert_eq!(s.lookup_count(id), Some(1));
        s.forget(id, 1);
        assert_eq!(s.lookup_count(id), None, "the node disappears at zero");
        assert_eq!(s.getattr(id, None).unwrap_err(), Errno::ESTALE);
    }
    assert_eq!(s.node_count(), base);
    // The root never goes away.
    s.forget(ROOT_ID, 1000);
    assert!(s.getattr(ROOT_ID, None).is_ok());
    // Ids are never reused: looking a forgotten file up again gives a new id.
    let again = s.lookup(&CTX, ROOT_ID, b"a").unwrap();
    assert!(ids.iter().all(|&id| again.ino > id));
    s.releasedir(ROOT_ID, o.fh).unwrap();
}

#[test]
fn hard_links_share_a_node() {
    let (dir, s) = setup();
    let (a, fh) = create_file(&s, ROOT_ID, "a", b"data");
    s.release(a.ino, fh).unwrap();
    let d = s.mkdir(&CTX, ROOT_ID, b"d", 0o755, 0).unwrap();
    let b = s.link(&CTX, a.ino, d.ino, b"b").unwrap();
    assert_eq!(b.ino, a.ino);
    assert_eq!(b.attr.nlink, 2);
    assert_eq!(s.lookup(&CTX, d.ino, b"b").unwrap().ino, a.ino);
    assert_eq!(s.lookup_count(a.ino), Some(3));
    // A hard link made on the host is found as the same node too.
    std::fs::hard_link(dir.path().join("a"), dir.path().join("c")).unwrap();
    assert_eq!(s.lookup(&CTX, ROOT_ID, b"c").unwrap().ino, a.ino);
    assert_eq!(
        s.link(&CTX, d.ino, ROOT_ID, b"dirlink").unwrap_err(),
        Errno::EPERM
    );
    assert_eq!(
        s.link(&CTX, a.ino, ROOT_ID, b"c").unwrap_err(),
        Errno::EEXIST
    );
    // Hard links of symlinks link the symlink itself.
    let l = s.symlink(&CTX, ROOT_ID, b"l", b"/etc/passwd").unwrap();
    let l2 = s.link(&CTX, l.ino, ROOT_ID, b"l2").unwrap();
    assert_eq!(l2.ino, l.ino);
    assert!(
        std::fs::symlink_metadata(dir.path().join("l2"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn rename_flags() {
    let (dir, s) = setup();
    for (name, content) in [("x", "X"), ("y", "Y")] {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let d = s.mkdir(&CTX, ROOT_ID, b"d", 0o755, 0).unwrap();
    assert_eq!(
        s.rename(&CTX, ROOT_ID, b"x", ROOT_ID, b"y", libc::RENAME_NOREPLACE)
            .unwrap_err(),
        Errno::EEXIST
    );
    s.rename(&CTX, ROOT_ID, b"x", ROOT_ID, b"y", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(std::fs::read(dir.path().join("x")).unwrap(), b"Y");
    assert_eq!(std::fs::read(dir.path().join("y")).unwrap(), b"X");
    let x = s.lookup(&CTX, ROOT_ID, b"x").unwrap();
    s.rename(&CTX, ROOT_ID, b"x", d.ino, b"moved", 0).unwrap();
    assert_eq!(s.lookup(&CTX, d.ino, b"moved").unwrap().ino, x.ino);
    assert_eq!(s.lookup(&CTX, ROOT_ID, b"x").unwrap_err(), Errno::ENOENT);
    s.rename(&CTX, ROOT_ID, b"y", d.ino, b"moved", 0).unwrap();
    assert_eq!(std::fs::read(dir.path().join("d/moved")).unwrap(), b"X");
    assert_eq!(
        s.rename(&CTX, d.ino, b"moved", ROOT_ID, b"z", 4)
            .unwrap_err(),
        Errno::EINVAL,
        "RENAME_WHITEOUT is not passed through"
    );
    // The node of the overwritten file lives on until forgotten.
    assert_eq!(s.getattr(x.ino, None).unwrap().nlink, 0);
}

#[test]
fn setattr_size_mode_times() {
    let (dir, s) = setup();
    let (f, fh) = create_file(&s, ROOT_ID, "f", b"0123456789");
    let path = dir.path().join("f");
    let size = |size| SetAttrs {
        size: Some(size),
        ..Default::default()
    };
    assert_eq!(s.setattr(&CTX, f.ino, None, &size(4)).unwrap().size, 4);
    assert_eq!(std::fs::read(&path).unwrap(), b"0123");
    assert_eq!(
        s.setattr(&CTX, f.ino, Some(fh), &size(100)).unwrap().size,
        100
    );
    let a = s
        .setattr(
            &CTX,
            f.ino,
            None,
            &SetAttrs {
                mode: Some(libc::S_IFREG | 0o1751),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.mode, libc::S_IFREG | 0o1751);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o1751
    );
    let t = Timespec {
        sec: 1_000_000_000,
        nsec: 123_456_789,
    };
    let a = s
        .setattr(
            &CTX,
            f.ino,
            None,
            &SetAttrs {
                atime: Some(SetTime::At(t)),
                mtime: Some(SetTime::At(Timespec { sec: 5, nsec: 6 })),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.atime, t);
    assert_eq!(a.mtime, Timespec { sec: 5, nsec: 6 });
    // UTIME_NOW for mtime, UTIME_OMIT (None) for atime.
    let a = s
        .setattr(
            &CTX,
            f.ino,
            None,
            &SetAttrs {
                mtime: Some(SetTime::Now),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.atime, t, "atime omitted");
    assert!(a.mtime.sec > 1_600_000_000, "mtime is now");
    // Ownership (we are root).
    let a = s
        .setattr(
            &CTX,
            f.ino,
            None,
            &SetAttrs {
                uid: Some(crate::ids::GuestUid(1234)),
                gid: Some(crate::ids::GuestGid(5678)),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((a.uid, a.gid), (1234, 5678));
    // Directories cannot be truncated; symlinks have no mode but do have times.
    let d = s.mkdir(&CTX, ROOT_ID, b"d", 0o755, 0).unwrap();
    assert_eq!(
        s.setattr(&CTX, d.ino, None, &size(0)).unwrap_err(),
        Errno::EISDIR
    );
    let l = s.symlink(&CTX, ROOT_ID, b"l", b"f").unwrap();
    assert_eq!(
        s.setattr(
            &CTX,
            l.ino,
            None,
            &SetAttrs {
                mode: Some(0o777),
                ..Default::default()
            }
        )
        .unwrap_err(),
        Errno::EOPNOTSUPP
    );
    let before = std::fs::metadata(&path).unwrap().mtime();
    let a = s
        .setattr(
            &CTX,
            l.ino,
            None,
            &SetAttrs {
                mtime: Some(SetTime::At(Timespec { sec: 77, nsec: 0 })),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.mtime.sec, 77, "the symlink's own time changed");
    assert_eq!(
        std::fs::metadata(&path).unwrap().mtime(),
        before,
        "not the target's"
    );
}

#[test]
fn xattrs() {
    let (_dir, s) = setup();
    let (f, _fh) = create_file(&s, ROOT_ID, "f", b"");
    s.setxattr(&CTX, f.ino, b"user.color", b"blue", 0).unwrap();
    assert_eq!(
        s.setxattr(&CTX, f.ino, b"user.color", b"red", libc::XATTR_CREATE)
            .unwrap_err(),
        Errno::EEXIST
    );
    assert_eq!(
        s.getxattr(&CTX, f.ino, b"user.color", 0).unwrap(),
        XattrReply::Size(4)
    );
    assert_eq!(
        s.getxattr(&CTX, f.ino, b"user.color", 100).unwrap(),
        XattrReply::Data(b"blue".to_vec())
    );
    assert_eq!(
        s.getxattr(&CTX, f.ino, b"user.color", 2).unwrap_err(),
        Errno::ERANGE
    );
    s.setxattr(&CTX, f.ino, b"user.other", b"", 0).unwrap();
    let XattrReply::Size(n) = s.listxattr(&CTX, f.ino, 0).unwrap() else {
        panic!("size expected");
    };
    let XattrReply::Data(list) = s.listxattr(&CTX, f.ino, n).unwrap() else {
        panic!("data expected");
    };
    let names: BTreeSet<&[u8]> = list.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    assert!(names.contains(&b"user.color"[..]) && names.contains(&b"user.other"[..]));
    assert_eq!(s.listxattr(&CTX, f.ino, 1).unwrap_err(), Errno::ERANGE);
    s.removexattr(&CTX, f.ino, b"user.color").unwrap();
    assert_eq!(
        s.getxattr(&CTX, f.ino, b"user.color", 0).unwrap_err(),
        Errno::ENODATA
    );
    assert_eq!(
        s.removexattr(&CTX, f.ino, b"user.color").unwrap_err(),
        Errno::ENODATA
    );
    assert_eq!(s.getxattr(&CTX, f.ino, b"", 0).unwrap_err(), Errno::EINVAL);
    assert_eq!(
        s.getxattr(&CTX, f.ino, b"user.a\0b", 0).unwrap_err(),
        Errno::EINVAL
    );
    // Directories have xattrs too.
    s.setxattr(&CTX, ROOT_ID, b"user.d", b"1", 0).unwrap();
    assert_eq!(
        s.getxattr(&CTX, ROOT_ID, b"user.d", 10).unwrap(),
        XattrReply::Data(b"1".to_vec())
    );
}

#[test]
fn symlinks_are_never_followed_on_the_host() {
    let (dir, s) = setup();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"top secret").unwrap();
    let secret_c = std::ffi::CString::new(secret.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings and a readable 1-byte value.
    let r = unsafe {
        libc::setxattr(
            secret_c.as_ptr(),
            c"user.secret".as_ptr(),
            b"s".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(r, 0);
    symlink("/", dir.path().join("root")).unwrap();
    symlink("../..", dir.path().join("up")).unwrap();
    symlink(&secret, dir.path().join("leak")).unwrap();
    symlink(outside.path(), dir.path().join("outdir")).unwrap();

    for name in ["root", "up", "leak", "outdir"] {
        let e = s.lookup(&CTX, ROOT_ID, name.as_bytes()).unwrap();
        assert!(is_kind(&e.attr, libc::S_IFLNK), "{name} is a symlink node");
        assert_eq!(
            s.open(&CTX, e.ino, libc::O_RDONLY).unwrap_err(),
            Errno::ELOOP
        );
        assert_eq!(
            s.open(&CTX, e.ino, libc::O_RDONLY | libc::O_DIRECTORY)
                .unwrap_err(),
            Errno::ELOOP
        );
        assert_eq!(s.opendir(&CTX, e.ino, 0).unwrap_err(), Errno::ENOTDIR);
        assert_eq!(s.lookup(&CTX, e.ino, b"etc").unwrap_err(), Errno::ENOTDIR);
        assert_eq!(
            s.lookup(&CTX, e.ino, b"secret").unwrap_err(),
            Errno::ENOTDIR
        );
        assert_eq!(
            s.create(&CTX, e.ino, b"x", 0o644, 0, libc::O_CREAT | libc::O_WRONLY)
                .unwrap_err(),
            Errno::ENOTDIR
        );
        assert_eq!(
            s.setattr(
                &CTX,
                e.ino,
                None,
                &SetAttrs {
                    size: Some(0),
                    ..Default::default()
                }
            )
            .unwrap_err(),
            Errno::EINVAL
        );
        assert!(s.getxattr(&CTX, e.ino, b"user.secret", 10).is_err());
    }
    let leak = s.lookup(&CTX, ROOT_ID, b"leak").unwrap();
    assert_eq!(
        s.readlink(leak.ino).unwrap(),
        secret.as_os_str().as_encoded_bytes()
    );
    assert_eq!(
        s.getxattr(&CTX, leak.ino, b"user.secret", 10).unwrap_err(),
        Errno::ENODATA,
        "xattrs of the symlink, not of its target"
    );
    // Creating through a symlink name must not follow it.
    assert_eq!(
        s.create(
            &CTX,
            ROOT_ID,
            b"leak",
            0o644,
            0,
            libc::O_CREAT | libc::O_RDWR | libc::O_TRUNC
        )
        .unwrap_err(),
        Errno::ELOOP
    );
    assert_eq!(
        s.mkdir(&CTX, ROOT_ID, b"outdir", 0o755, 0).unwrap_err(),
        Errno::EEXIST
    );
    assert_eq!(std::fs::read(&secret).unwrap(), b"top secret");
    // Removing a symlink removes the link only.
    s.unlink(&CTX, ROOT_ID, b"leak").unwrap();
    assert!(secret.exists());

    // symlink + readlink round trip.
    let l = s.symlink(&CTX, ROOT_ID, b"mine", b"some/where").unwrap();
    assert!(is_kind(&l.attr, libc::S_IFLNK));
    assert_eq!(s.readlink(l.ino).unwrap(), b"some/where");
    assert_eq!(
        std::fs::read_link(dir.path().join("mine")).unwrap(),
        Path::new("some/where")
    );
    assert_eq!(s.readlink(ROOT_ID).unwrap_err(), Errno::EINVAL);
    assert_eq!(
        s.symlink(&CTX, ROOT_ID, b"empty", b"").unwrap_err(),
        Errno::ENOENT
    );
}

#[test]
fn names_must_be_single_components() {
    let (dir, s) = setup();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let (f, _) = create_file(&s, ROOT_ID, "f", b"");
    for bad in [
        &b".."[..],
        b".",
        b"a/b",
        b"",
        b"/",
        b"../etc",
        b"sub/..",
        b"x\0y",
    ] {
        assert_eq!(s.lookup(&CTX, ROOT_ID, bad).unwrap_err(), Errno::EINVAL);
        assert_eq!(
            s.mkdir(&CTX, ROOT_ID, bad, 0o755, 0).unwrap_err(),
            Errno::EINVAL
        );
        assert_eq!(
            s.create(&CTX, ROOT_ID, bad, 0o644, 0, libc::O_CREAT)
                .unwrap_err(),
            Errno::EINVAL
        );
        assert_eq!(
            s.mknod(&CTX, ROOT_ID, bad, libc::S_IFREG, 0, 0)
                .unwrap_err(),
            Errno::EINVAL
        );
        assert_eq!(
            s.symlink(&CTX, ROOT_ID, bad, b"t").unwrap_err(),
            Errno::EINVAL
        );
        assert_eq!(s.unlink(&CTX, ROOT_ID, bad).unwrap_err(), Errno::EINVAL);
        assert_eq!(s.rmdir(&CTX, ROOT_ID, bad).unwrap_err(), Errno::EINVAL);
        assert_eq!(
            s.rename(&CTX, ROOT_ID, b"f", ROOT_ID, bad, 0).unwrap_err(),
            Errno::EINVAL
        );
        assert_eq!(
            s.rename(&CTX, ROOT_ID, bad, ROOT_ID, b"g", 0).unwrap_err(),
            Errno::EINVAL
        );
        assert_eq!(
            s.link(&CTX, f.ino, ROOT_ID, bad).unwrap_err(),
            Errno::EINVAL
        );
    }
    assert!(dir.path().join("f").exists());
    assert!(dir.path().join("sub").exists());
}

#[test]
fn forged_ids_and_handles_are_errors() {
    let (_dir, s) = setup();
    let (f, fh) = create_file(&s, ROOT_ID, "f", b"abc");
    let bogus = 999_999;
    assert_eq!(s.getattr(bogus, None).unwrap_err(), Errno::ESTALE);
    assert_eq!(s.lookup(&CTX, bogus, b"f").unwrap_err(), Errno::ESTALE);
    assert_eq!(
        s.open(&CTX, bogus, libc::O_RDONLY).unwrap_err(),
        Errno::ESTALE
    );
    assert_eq!(s.readlink(bogus).unwrap_err(), Errno::ESTALE);
    assert_eq!(s.statfs(bogus).unwrap_err(), Errno::ESTALE);
    assert_eq!(
        s.getxattr(&CTX, bogus, b"user.x", 0).unwrap_err(),
        Errno::ESTALE
    );
    assert_eq!(
        s.link(&CTX, bogus, ROOT_ID, b"l").unwrap_err(),
        Errno::ESTALE
    );
    assert_eq!(s.getattr(0, None).unwrap_err(), Errno::ESTALE);
    assert_eq!(s.getattr(u64::MAX, None).unwrap_err(), Errno::ESTALE);
    s.forget(bogus, 1);
    s.forget(0, u64::MAX);
    s.forget(f.ino, u64::MAX);
    assert_eq!(s.getattr(f.ino, None).unwrap_err(), Errno::ESTALE);
    // The handle outlives the forgotten node.
    assert_eq!(s.read(f.ino, fh, 0, 3).unwrap(), b"abc");
    for h in [0, bogus, u64::MAX] {
        assert_eq!(s.read(f.ino, h, 0, 1).unwrap_err(), Errno::EBADF);
        assert_eq!(s.write(f.ino, h, 0, b"x").unwrap_err(), Errno::EBADF);
        assert_eq!(s.release(f.ino, h).unwrap_err(), Errno::EBADF);
        assert_eq!(s.releasedir(f.ino, h).unwrap_err(), Errno::EBADF);
        assert_eq!(s.readdir(ROOT_ID, h, 0, 4096).unwrap_err(), Errno::EBADF);
        assert_eq!(
            s.readdirplus(&CTX, ROOT_ID, h, 0, 4096).unwrap_err(),
            Errno::EBADF
        );
        assert_eq!(s.getattr(ROOT_ID, Some(h)).unwrap_err(), Errno::EBADF);
        assert_eq!(
            s.lseek(f.ino, h, 0, libc::SEEK_SET).unwrap_err(),
            Errno::EBADF
        );
        assert_eq!(
            s.setlk(f.ino, h, 1, &Lock::default(), false).unwrap_err(),
            Errno::EBADF
        );
        assert_eq!(
            s.flock(f.ino, h, 1, libc::LOCK_EX).unwrap_err(),
            Errno::EBADF
        );
    }
    // Readdir on a file handle.
    assert_eq!(s.readdir(f.ino, fh, 0, 4096).unwrap_err(), Errno::EBADF);
    // Absurd offsets and sizes.
    assert_eq!(s.read(f.ino, fh, u64::MAX, 10).unwrap_err(), Errno::EINVAL);
    assert_eq!(
        s.write(f.ino, fh, u64::MAX, b"x").unwrap_err(),
        Errno::EFBIG
    );
    let o = s.opendir(&CTX, ROOT_ID, 0).unwrap();
    assert_eq!(
        s.readdir(ROOT_ID, o.fh, u64::MAX, u32::MAX).unwrap_err(),
        Errno::EINVAL
    );
    // And through dispatch.
    let r = s.dispatch(
        &CTX,
        &Request::Read(Read {
            ino: bogus,
            fh: bogus,
            offset: 0,
            size: 10,
        }),
        &[],
    );
    assert_eq!(r, Response::Error(Errno::EBADF));
}

#[test]
fn read_only_export_refuses_mutations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"content").unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("d/g"), b"g").unwrap();
    symlink("f", dir.path().join("l")).unwrap();
    let snapshot = |p: &Path| {
        let mut out = Vec::new();
        for name in ["f", "d", "d/g", "l"] {
            let m = std::fs::symlink_metadata(p.join(name)).unwrap();
            out.push((
                name,
                m.mode(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.nlink(),
            ));
        }
        let mut names: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        (out, names, std::fs::read(p.join("f")).unwrap())
    };
    let before = snapshot(dir.path());

    let rw = ExportSession::new(export(dir.path(), false)).unwrap();
    let rw_f = rw.lookup(&CTX, ROOT_ID, b"f").unwrap();
    let rw_h = rw.open(&CTX, rw_f.ino, libc::O_RDWR).unwrap().fh;
    rw.setxattr(&CTX, rw_f.ino, b"user.keep", b"v", 0).unwrap();
    let before_x = snapshot(dir.path());

    let s = ExportSession::new(export(dir.path(), true)).unwrap();
    let f = s.lookup(&CTX, ROOT_ID, b"f").unwrap();
    let d = s.lookup(&CTX, ROOT_ID, b"d").unwrap();
    let fh = s.open(&CTX, f.ino, libc::O_RDONLY).unwrap().fh;
    let set_all = SetAttrs {
        size: Some(0),
        ..Default::default()
    };
    let rofs = Err(Errno::EROFS);
    assert_eq!(s.setattr(&CTX, f.ino, None, &set_all).map(drop), rofs);
    assert_eq!(
        s.setattr(&CTX, f.ino, None, &SetAttrs::default()).map(drop),
        rofs
    );
    assert_eq!(s.symlink(&CTX, ROOT_ID, b"n", b"t").map(drop), rofs);
    assert_eq!(
        s.mknod(&CTX, ROOT_ID, b"n", libc::S_IFREG | 0o644, 0, 0)
            .map(drop),
        rofs
    );
    assert_eq!(s.mkdir(&CTX, ROOT_ID, b"n", 0o755, 0).map(drop), rofs);
    assert_eq!(s.unlink(&CTX, ROOT_ID, b"f"), rofs);
    assert_eq!(s.rmdir(&CTX, ROOT_ID, b"d"), rofs);
    assert_eq!(s.rename(&CTX, ROOT_ID, b"f", d.ino, b"f2", 0), rofs);
    assert_eq!(s.link(&CTX, f.ino, ROOT_ID, b"f2").map(drop), rofs);
    assert_eq!(
        s.create(
            &CTX,
            ROOT_ID,
            b"n",
            0o644,
            0,
            libc::O_CREAT | libc::O_RDONLY
        )
        .map(drop),
        rofs
    );
    assert_eq!(
        s.create(&CTX, ROOT_ID, b"f", 0o644, 0, libc::O_CREAT | libc::O_RDWR)
            .map(drop),
        rofs
    );
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_RDONLY | libc::O_APPEND,
        libc::O_ACCMODE,
    ] {
        assert_eq!(s.open(&CTX, f.ino, flags).map(drop), rofs, "{flags:#o}");
    }
    assert_eq!(s.write(f.ino, fh, 0, b"x").map(drop), rofs);
    // A handle number of another session means nothing here, but EROFS comes first anyway.
    assert_eq!(s.write(f.ino, rw_h, 0, b"x").map(drop), rofs);
    assert_eq!(s.setxattr(&CTX, f.ino, b"user.x", b"v", 0), rofs);
    assert_eq!(s.removexattr(&CTX, f.ino, b"user.keep"), rofs);
    assert_eq!(s.fallocate(&CTX, f.ino, fh, 0, 4096, 0), rofs);
    assert_eq!(
        s.copy_file_range(
            &CTX,
            &CopyFileRange {
                ino_in: f.ino,
                fh_in: fh,
                offset_in: 0,
                ino_out: f.ino,
                fh_out: fh,
                offset_out: 100,
                len: 5,
                flags: 0,
            }
        )
        .map(drop),
        rofs
    );
    assert_eq!(s.access(&CTX, f.ino, libc::W_OK), rofs);
    // Reading works, and locks are allowed (they change no data).
    s.access(&CTX, f.ino, libc::R_OK).unwrap();
    assert_eq!(s.read(f.ino, fh, 0, 100).unwrap(), b"content");
    let rd = Lock {
        start: 0,
        end: u64::MAX,
        typ: libc::F_RDLCK,
        pid: 0,
    };
    s.setlk(f.ino, fh, 1, &rd, false).unwrap();
    s.flock(f.ino, fh, 1, libc::LOCK_SH | libc::LOCK_NB)
        .unwrap();
    assert_eq!(
        s.getxattr(&CTX, f.ino, b"user.keep", 10).unwrap(),
        XattrReply::Data(b"v".to_vec())
    );
    let o = s.opendir(&CTX, ROOT_ID, 0).unwrap();
    assert_eq!(
        s.readdirplus(&CTX, ROOT_ID, o.fh, 0, 65536).unwrap().len(),
        5
    );
    drop(s);
    drop(rw);
    assert_eq!(snapshot(dir.path()), before_x);
    assert_eq!(before.1, before_x.1);
}

#[test]
fn sparse_files_seek_data_and_hole() {
    let (_dir, s) = setup();
    let (f, fh) = create_file(&s, ROOT_ID, "sparse", b"");
    let mib = 1 << 20;
    s.write(f.ino, fh, mib, &[7u8; 4096]).unwrap();
    let attr = s.getattr(f.ino, None).unwrap();
    assert_eq!(attr.size, mib + 4096);
    assert!(attr.blocks * 512 < mib, "the file is sparse");
    assert_eq!(s.lseek(f.ino, fh, 0, libc::SEEK_DATA).unwrap(), mib as i64);
    assert_eq!(s.lseek(f.ino, fh, 0, libc::SEEK_HOLE).unwrap(), 0);
    assert_eq!(
        s.lseek(f.ino, fh, mib as i64, libc::SEEK_HOLE).unwrap(),
        (mib + 4096) as i64
    );
    assert_eq!(
        s.lseek(f.ino, fh, (mib + 4096) as i64, libc::SEEK_DATA)
            .unwrap_err(),
        Errno::ENXIO
    );
    assert_eq!(
        s.lseek(f.ino, fh, 0, libc::SEEK_END).unwrap(),
        (mib + 4096) as i64
    );
    assert_eq!(s.lseek(f.ino, fh, 0, 99).unwrap_err(), Errno::EINVAL);
    let hole = s.read(f.ino, fh, 0, 16).unwrap();
    assert_eq!(hole, vec![0u8; 16]);
}

#[test]
fn fallocate_extends_and_punches() {
    let (_dir, s) = setup();
    let (f, fh) = create_file(&s, ROOT_ID, "f", b"");
    s.fallocate(&CTX, f.ino, fh, 0, 65536, 0).unwrap();
    let a = s.getattr(f.ino, None).unwrap();
    assert_eq!(a.size, 65536);
    assert!(a.blocks * 512 >= 65536);
    s.fallocate(&CTX, f.ino, fh, 0, 1 << 20, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    assert_eq!(s.getattr(f.ino, None).unwrap().size, 65536);
    s.write(f.ino, fh, 0, &[1u8; 8192]).unwrap();
    s.fallocate(
        &CTX,
        f.ino,
        fh,
        0,
        4096,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    )
    .unwrap();
    let data = s.read(f.ino, fh, 0, 8192).unwrap();
    assert!(data[..4096].iter().all(|&b| b == 0));
    assert!(data[4096..].iter().all(|&b| b == 1));
}

#[test]
fn copy_file_range_copies_between_handles() {
    let (_dir, s) = setup();
    let (a, ha) = create_file(&s, ROOT_ID, "a", b"0123456789");
    let (b, hb) = create_file(&s, ROOT_ID, "b", b"..........");
    let n = s
        .copy_file_range(
            &CTX,
            &CopyFileRange {
                ino_in: a.ino,
                fh_in: ha,
                offset_in: 2,
                ino_out: b.ino,
                fh_out: hb,
                offset_out: 5,
                len: 4,
                flags: 0,
            },
        )
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(s.read(b.ino, hb, 0, 100).unwrap(), b".....2345.");
    let r = s.dispatch(
        &CTX,
        &Request::CopyFileRange(CopyFileRange {
            ino_in: a.ino,
            fh_in: ha,
            offset_in: 0,
            ino_out: b.ino,
            fh_out: hb,
            offset_out: 0,
            len: 100,
            flags: 0,
        }),
        &[],
    );
    assert_eq!(r, Response::Reply(Reply::Written(10)));
}

/// One session with its file `f` looked up and opened read-write: (session, node, handle).
type OpenFile = (ExportSession, u64, u64);

/// Two sessions of one export (two guests), each holding `f` open read-write.
fn two_sessions_on_one_file() -> (tempfile::TempDir, OpenFile, OpenFile) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"lockme").unwrap();
    let e = export(dir.path(), false);
    let open = |s: ExportSession| {
        let ino = s.lookup(&CTX, ROOT_ID, b"f").unwrap().ino;
        let fh = s.open(&CTX, ino, libc::O_RDWR).unwrap().fh;
        (s, ino, fh)
    };
    let a = open(ExportSession::new(Arc::clone(&e)).unwrap());
    let b = open(ExportSession::new(e).unwrap());
    (dir, a, b)
}

#[test]
fn ofd_locks_conflict_between_sessions_and_die_with_them() {
    let (_dir, (a, ia, ha), (b, ib, hb)) = two_sessions_on_one_file();
    let wr = Lock {
        start: 0,
        end: 99,
        typ: libc::F_WRLCK,
        pid: 0,
    };
    a.setlk(ia, ha, 1, &wr, false).unwrap();
    assert_eq!(b.setlk(ib, hb, 2, &wr, false).unwrap_err(), Errno::EAGAIN);
    let probe = Lock {
        start: 50,
        end: 60,
        typ: libc::F_RDLCK,
        pid: 0,
    };
    let got = b.getlk(ib, hb, 2, &probe).unwrap();
    assert_eq!(got.typ, libc::F_WRLCK);
    assert_eq!((got.start, got.end), (0, 99));
    // Outside the locked range there is no conflict.
    let free = Lock {
        start: 100,
        end: u64::MAX,
        ..wr
    };
    assert_eq!(b.getlk(ib, hb, 2, &free).unwrap().typ, libc::F_UNLCK);
    b.setlk(ib, hb, 2, &free, false).unwrap();
    // flock conflicts too.
    a.flock(ia, ha, 1, libc::LOCK_EX).unwrap();
    assert_eq!(
        b.flock(ib, hb, 2, libc::LOCK_EX | libc::LOCK_NB)
            .unwrap_err(),
        Errno::EAGAIN
    );
    assert_eq!(b.flock(ib, hb, 2, 12345).unwrap_err(), Errno::EINVAL);
    // Dropping session A closes its fds and so releases its locks.
    drop(a);
    assert_eq!(b.getlk(ib, hb, 2, &probe).unwrap().typ, libc::F_UNLCK);
    b.setlk(ib, hb, 2, &wr, false).unwrap();
    b.flock(ib, hb, 2, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    // Unlocking works and a sleeping lock that does not conflict returns at once.
    let un = Lock {
        typ: libc::F_UNLCK,
        ..wr
    };
    b.setlk(ib, hb, 2, &un, false).unwrap();
    b.setlk(ib, hb, 2, &wr, true).unwrap();
    b.flock(ib, hb, 2, libc::LOCK_UN).unwrap();
}

#[test]
fn statfs_access_and_getattr_through_handles() {
    let (_dir, s) = setup();
    let st = s.statfs(ROOT_ID).unwrap();
    assert!(st.blocks > 0 && st.bsize > 0 && st.namelen >= 255);
    s.access(&CTX, ROOT_ID, libc::R_OK | libc::X_OK).unwrap();
    let (f, fh) = create_file(&s, ROOT_ID, "f", b"12345");
    assert_eq!(s.getattr(f.ino, Some(fh)).unwrap().size, 5);
    assert_eq!(s.getattr(f.ino, Some(fh)).unwrap().ino, f.attr.ino);
    let d = s.mkdir(&CTX, ROOT_ID, b"d", 0o755, 0).unwrap();
    assert_eq!(
        s.open(&CTX, d.ino, libc::O_RDONLY).unwrap_err(),
        Errno::EISDIR
    );
    let od = s
        .open(&CTX, d.ino, libc::O_RDONLY | libc::O_DIRECTORY)
        .unwrap();
    s.release(d.ino, od.fh).unwrap();
    assert_eq!(
        s.open(&CTX, f.ino, libc::O_RDONLY | libc::O_DIRECTORY)
            .unwrap_err(),
        Errno::ENOTDIR
    );
    assert_eq!(s.opendir(&CTX, f.ino, 0).unwrap_err(), Errno::ENOTDIR);
    assert_eq!(s.lookup(&CTX, f.ino, b"x").unwrap_err(), Errno::ENOTDIR);
    assert_eq!(
        s.lookup(&CTX, ROOT_ID, b"missing").unwrap_err(),
        Errno::ENOENT
    );
    let before = s.handle_count();
    s.release(f.ino, fh).unwrap();
    assert_eq!(s.handle_count(), before - 1);
}

#[test]
fn dispatch_maps_requests_to_responses() {
    let (_dir, s) = setup();
    let (f, fh) = create_file(&s, ROOT_ID, "f", b"payload");
    s.setxattr(&CTX, f.ino, b"user.k", b"value", 0).unwrap();
    let Response::Reply(Reply::Entry(e)) = s.dispatch(
        &CTX,
        &Request::Lookup(Lookup {
            parent: ROOT_ID,
            name: b"f",
        }),
        &[],
    ) else {
        panic!("entry expected");
    };
    assert_eq!(e.ino, f.ino);
    assert_eq!(
        s.dispatch(
            &CTX,
            &Request::Read(Read {
                ino: f.ino,
                fh,
                offset: 0,
                size: 3
            }),
            &[]
        ),
        Response::Data(b"pay".to_vec())
    );
    assert_eq!(
        s.dispatch(
            &CTX,
            &Request::Write(ferry_protocol::Write {
                ino: f.ino,
                fh,
                offset: 7,
                write_flags: 0,
                flags: 0
            }),
            b"!!"
        ),
        Response::Reply(Reply::Written(2))
    );
    assert_eq!(
        s.dispatch(
            &CTX,
            &Request::Getxattr(Getxattr {
                ino: f.ino,
                name: b"user.k",
                size: 0
            }),
            &[]
        ),
        Response::Reply(Reply::XattrSize(5))
    );
    assert_eq!(
        s.dispatch(
            &CTX,
            &Request::Getxattr(Getxattr {
                ino: f.ino,
                name: b"user.k",
                size: 64
            }),
            &[]
        ),
        Response::Data(b"value".to_vec())
    );
    assert_eq!(
        s.dispatch(
            &CTX,
            &Request::Forget(ferry_protocol::Forget {
                nodes: vec![(f.ino, 2), (424242, 1)]
            }),
            &[]
        ),
        Response::None
    );
    assert_eq!(s.lookup_count(f.ino), None);
    assert_eq!(
        s.dispatch(
            &CTX,
            &Request::Lookup(Lookup {
                parent: ROOT_ID,
                name: b".."
            }),
            &[]
        ),
        Response::Error(Errno::EINVAL)
    );
}

#[test]
fn concurrent_lookups_and_forgets_stay_consistent() {
    let (dir, s) = setup();
    std::fs::write(dir.path().join("f"), b"").unwrap();
    let base = s.node_count();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..500 {
                    let e = s.lookup(&CTX, ROOT_ID, b"f").unwrap();
                    assert!(s.getattr(e.ino, None).is_ok(), "a held node is alive");
                    s.forget(e.ino, 1);
                }
            });
        }
    });
    assert_eq!(s.node_count(), base, "every lookup was given back");
}

#[test]
fn posix_lock_owners_merge_flush_and_release() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"lockme").unwrap();
    let s = ExportSession::new(export(dir.path(), false)).unwrap();
    let f = s.lookup(&CTX, ROOT_ID, b"f").unwrap();
    let h1 = s.open(&CTX, f.ino, libc::O_RDWR).unwrap().fh;
    let h2 = s.open(&CTX, f.ino, libc::O_RDONLY).unwrap().fh;
    let wr = Lock {
        start: 0,
        end: 9,
        typ: libc::F_WRLCK,
        pid: 0,
    };
    // Owner 1 locks through one handle and may change its lock through another (one guest
    // process, two descriptors); owner 2 conflicts whichever handle it uses.
    s.setlk(f.ino, h1, 1, &wr, false).unwrap();
    s.setlk(f.ino, h2, 1, &wr, false).unwrap();
    assert_eq!(s.setlk(f.ino, h1, 2, &wr, false), Err(Errno::EAGAIN));
    assert_eq!(s.getlk(f.ino, h2, 1, &wr).unwrap().typ, libc::F_UNLCK);
    let seen = s.getlk(f.ino, h2, 2, &wr).unwrap();
    assert_eq!(
        (seen.typ, seen.start, seen.end, seen.pid),
        (libc::F_WRLCK, 0, 9, 0)
    );
    // flock locks are separate: they belong to handles.
    s.flock(f.ino, h1, 1, libc::LOCK_EX | libc::LOCK_NB)
        .unwrap();
    assert_eq!(
        s.flock(f.ino, h2, 1, libc::LOCK_SH | libc::LOCK_NB),
        Err(Errno::EAGAIN)
    );
    // A close by owner 1 (FLUSH) drops its record locks, not the handle's flock. (Owner 2's
    // failed attempt left it an open file, without locks.)
    assert_eq!(s.lock_owner_count(), 2);
    s.flush(f.ino, h2, 1).unwrap();
    assert_eq!(s.lock_owner_count(), 1);
    s.setlk(f.ino, h1, 2, &wr, false).unwrap();
    assert_eq!(
        s.flock(f.ino, h2, 3, libc::LOCK_SH | libc::LOCK_NB),
        Err(Errno::EAGAIN)
    );
    // The last close of the handle an owner's file was opened through drops it too.
    s.release(f.ino, h1).unwrap();
    assert_eq!(s.lock_owner_count(), 0);
    s.flock(f.ino, h2, 3, libc::LOCK_SH | libc::LOCK_NB)
        .unwrap();
    s.setlk(
        f.ino,
        h2,
        4,
        &Lock {
            typ: libc::F_RDLCK,
            ..wr
        },
        false,
    )
    .unwrap();
}

#[test]
fn a_conflicting_blocking_lock_is_answered_later() {
    let (_dir, (a, ia, ha), (b, ib, hb)) = two_sessions_on_one_file();
    let whole = Lock {
        start: 0,
        end: u64::MAX,
        typ: libc::F_WRLCK,
        pid: 0,
    };
    a.setlk(ia, ha, 1, &whole, false).unwrap();
    let setlkw = Request::Setlk(ferry_protocol::Setlk {
        ino: ib,
        fh: hb,
        owner: 7,
        lock: whole,
        sleep: true,
    });
    let Response::Pending(wait) = b.dispatch(&CTX, &setlkw, &[]) else {
        panic!("a conflicting SETLKW must be deferred");
    };
    let waiter = std::thread::spawn(move || wait.wait());
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!waiter.is_finished());
    // Session A's close releases its lock; the wait completes.
    a.flush(ia, ha, 1).unwrap();
    assert_eq!(waiter.join().unwrap(), Response::Reply(Reply::Empty));
    // Without sleep a conflict is EAGAIN at once.
    let setlk = Request::Setlk(ferry_protocol::Setlk {
        ino: ia,
        fh: ha,
        owner: 1,
        lock: whole,
        sleep: false,
    });
    assert_eq!(
        a.dispatch(&CTX, &setlk, &[]),
        Response::Error(Errno::EAGAIN)
    );
    // A wait whose session ends gives up with EINTR.
    let flock = Request::Flock(ferry_protocol::Flock {
        ino: ia,
        fh: ha,
        owner: 1,
        op: libc::LOCK_EX,
    });
    b.flock(ib, hb, 7, libc::LOCK_EX).unwrap();
    let Response::Pending(wait) = a.dispatch(&CTX, &flock, &[]) else {
        panic!("a conflicting flock must be deferred");
    };
    let waiter = std::thread::spawn(move || wait.wait());
    drop(a);
    assert_eq!(waiter.join().unwrap(), Response::Error(Errno::EINTR));
}

#[test]
fn read_only_exports_refuse_exclusive_locks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let s = ExportSession::new(export(dir.path(), true)).unwrap();
    let f = s.lookup(&CTX, ROOT_ID, b"f").unwrap();
    let fh = s.open(&CTX, f.ino, libc::O_RDONLY).unwrap().fh;
    let wr = Lock {
        start: 0,
        end: u64::MAX,
        typ: libc::F_WRLCK,
        pid: 0,
    };
    assert_eq!(s.setlk(f.ino, fh, 1, &wr, false), Err(Errno::EROFS));
    assert_eq!(s.flock(f.ino, fh, 1, libc::LOCK_EX), Err(Errno::EROFS));
    s.setlk(
        f.ino,
        fh,
        1,
        &Lock {
            typ: libc::F_RDLCK,
            ..wr
        },
        false,
    )
    .unwrap();
    s.flock(f.ino, fh, 1, libc::LOCK_SH).unwrap();
}

#[test]
fn operations_on_evicted_nodes_reopen_them_and_the_cache_stays_within_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let ex = export(dir.path(), false);
    ex.set_max_node_fds(3);
    let s = ExportSession::new(ex).unwrap();
    let d = s.mkdir(&CTX, ROOT_ID, b"d", 0o755, 0o022).unwrap();
    let mut files = Vec::new();
    for i in 0..40 {
        let (e, fh) = create_file(&s, d.ino, &format!("f{i}"), format!("data {i}").as_bytes());
        s.release(e.ino, fh).unwrap();
        files.push(e.ino);
    }
    assert!(s.cached_node_fds() <= 3, "{} cached", s.cached_node_fds());
    // Four threads at once: every node's descriptor is evicted and reopened many times over,
    // and each operation sees its own file.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (s, files) = (&s, &files);
            scope.spawn(move || {
                for round in 0..5 {
                    for (i, &ino) in files.iter().enumerate().skip(t) {
                        let attr = s.getattr(ino, None).unwrap();
                        assert_eq!(attr.size, format!("data {i}").len() as u64);
                        let o = s.open(&CTX, ino, libc::O_RDONLY).unwrap();
                        let got = s.read(ino, o.fh, 0, 100).unwrap();
                        assert_eq!(got, format!("data {i}").as_bytes());
                        s.release(ino, o.fh).unwrap();
                        let name = format!("user.t{t}");
                        s.setxattr(&CTX, ino, name.as_bytes(), b"v", 0).unwrap();
                        s.access(&CTX, ino, libc::R_OK).unwrap();
                        if round == 0 {
                            s.lookup(&CTX, d.ino, format!("f{i}").as_bytes()).unwrap();
                            s.forget(ino, 1);
                        }
                    }
                }
            });
        }
    });
    assert!(s.cached_node_fds() <= 3, "{} cached", s.cached_node_fds());
    assert!(
        s.reopened_node_fds() > 100,
        "only {} reopens",
        s.reopened_node_fds()
    );
    // Removing a file on the host leaves a node that nothing keeps alive: ESTALE once its
    // descriptor is gone, never another file's data.
    std::fs::remove_file(dir.path().join("d").join("f0")).unwrap();
    for &ino in &files[1..] {
        s.getattr(ino, None).unwrap();
    }
    assert_eq!(s.getattr(files[0], None), Err(Errno::ESTALE));
    // An open handle keeps its node's descriptor: fstat-like getattr without the handle still
    // works after the file is removed and every other node has passed through the cache.
    let o = s.open(&CTX, files[1], libc::O_RDONLY).unwrap();
    std::fs::remove_file(dir.path().join("d").join("f1")).unwrap();
    for &ino in &files[2..] {
        s.getattr(ino, None).unwrap();
    }
    assert_eq!(s.getattr(files[1], None).unwrap().nlink, 0);
    s.release(files[1], o.fh).unwrap();
}

/// The typed methods record their own echoes, whichever front door calls them: a session's
/// own changes made through them directly (no `dispatch`) do not come back to it as host
/// changes, while the host's do, even a write made while the session had the file open for
/// reading only (closing a read-only handle records nothing).
#[test]
fn typed_mutations_record_their_own_echoes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("read"), b"r").unwrap();
    let s = Arc::new(ExportSession::new(export(p, false)).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    s.watch(Arc::new(move |c, _| {
        let _ = tx.lock().unwrap().send(c);
    }))
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));

    let (f, fh) = create_file(&s, ROOT_ID, "f", b"data");
    s.setattr(
        &CTX,
        f.ino,
        Some(fh),
        &SetAttrs {
            mode: Some(0o600),
            ..SetAttrs::default()
        },
    )
    .unwrap();
    s.setxattr(&CTX, f.ino, b"user.k", b"v", 0).unwrap();
    s.removexattr(&CTX, f.ino, b"user.k").unwrap();
    s.fallocate(&CTX, f.ino, fh, 0, 8192, 0).unwrap();
    s.release(f.ino, fh).unwrap();
    let t = s.open(&CTX, f.ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    s.release(f.ino, t.fh).unwrap();
    s.link(&CTX, f.ino, ROOT_ID, b"hard").unwrap();
    // Names: objects that change place before the watcher looks are told by name.
    let d = s.mkdir(&CTX, ROOT_ID, b"d", 0o755, 0).unwrap();
    s.symlink(&CTX, d.ino, b"l", b"f").unwrap();
    s.mknod(&CTX, d.ino, b"n", libc::S_IFIFO | 0o644, 0, 0)
        .unwrap();
    s.rename(&CTX, d.ino, b"n", ROOT_ID, b"m", 0).unwrap();
    s.rename(&CTX, ROOT_ID, b"m", d.ino, b"l", libc::RENAME_EXCHANGE)
        .unwrap();
    s.unlink(&CTX, ROOT_ID, b"m").unwrap();
    // The host writes to a file the session reads; the session closes it after.
    let r = s.lookup(&CTX, ROOT_ID, b"read").unwrap();
    let o = s.open(&CTX, r.ino, libc::O_RDONLY).unwrap();
    std::fs::write(p.join("read"), b"host").unwrap();
    s.release(r.ino, o.fh).unwrap();

    // Every change up to the host's write: that one only.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut paths = Vec::new();
    while !paths.iter().any(|p| p == "read") {
        assert!(
            std::time::Instant::now() < deadline,
            "the host's write did not arrive: {paths:?}"
        );
        if let Ok(batch) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
            paths.extend(
                batch
                    .iter()
                    .map(|c| String::from_utf8_lossy(&c.path).into_owned()),
            );
        }
    }
    assert!(
        paths.iter().all(|p| p == "read"),
        "the session's own changes came back: {paths:?}"
    );
}

/// Without `setid=on` a guest gives no set-id bits to files (nor set-user-ID to directories)
/// and writes no xattr outside `user.*` and POSIX ACLs; the host's other names are invisible.
#[test]
fn set_id_bits_and_host_xattr_namespaces_are_refused() {
    let (dir, s) = setup();
    let (f, fh) = create_file(&s, ROOT_ID, "f", b"");
    s.release(f.ino, fh).unwrap();
    let chmod = |ino, mode| {
        let attrs = SetAttrs {
            mode: Some(mode),
            ..Default::default()
        };
        s.setattr(&CTX, ino, None, &attrs).map(|a| a.mode & 0o7777)
    };
    assert_eq!(chmod(f.ino, 0o4755), Err(Errno::EPERM));
    assert_eq!(chmod(f.ino, 0o2755), Err(Errno::EPERM));
    assert_eq!(chmod(f.ino, 0o755), Ok(0o755));
    let d = s.mkdir(&CTX, ROOT_ID, b"d", 0o6777, 0).unwrap();
    assert_eq!(d.attr.mode & 0o7000, 0, "made without set-id bits");
    assert_eq!(
        chmod(d.ino, 0o2775),
        Ok(0o2775),
        "set-group-ID directories are fine"
    );
    assert_eq!(chmod(d.ino, 0o4775), Err(Errno::EPERM));
    let c = s
        .create(&CTX, ROOT_ID, b"g", 0o6755, 0, libc::O_WRONLY)
        .unwrap();
    assert_eq!(c.entry.attr.mode & 0o7777, 0o755);
    let n = s
        .mknod(&CTX, ROOT_ID, b"h", libc::S_IFREG | 0o4700, 0, 0)
        .unwrap();
    assert_eq!(n.attr.mode & 0o7777, 0o700);

    for name in [
        &b"security.capability"[..],
        b"security.selinux",
        b"trusted.overlay.opaque",
        b"system.nfs4_acl",
        b"user.ferry.owner",
    ] {
        assert_eq!(
            s.setxattr(&CTX, f.ino, name, b"x", 0),
            Err(Errno::EPERM),
            "{}",
            String::from_utf8_lossy(name)
        );
        assert_eq!(s.removexattr(&CTX, f.ino, name), Err(Errno::EPERM));
    }
    // A name the host set is absent for the guest.
    let path = sys::cstring(dir.path().join("f").as_os_str().as_bytes()).unwrap();
    sys::setxattr(&path, c"trusted.host", b"1", 0).unwrap();
    s.setxattr(&CTX, f.ino, b"user.ok", b"1", 0).unwrap();
    assert_eq!(
        s.getxattr(&CTX, f.ino, b"trusted.host", 10),
        Err(Errno::ENODATA)
    );
    let XattrReply::Data(list) = s.listxattr(&CTX, f.ino, 1000).unwrap() else {
        panic!("data expected");
    };
    assert_eq!(list, b"user.ok\0");
}
