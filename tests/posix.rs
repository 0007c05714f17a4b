//! The same operation sequences on a Ferry mount and on a plain directory: outcomes, errno
//! values and final trees must match.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::harness::{Need, Share, cpath, errno_name, io_err, last_errno, require, sha256};

/// One step of a scenario. Paths are relative to the tree under test.
#[derive(Clone, Debug)]
pub enum Op {
    Mkdir(&'static str),
    Write(&'static str, Vec<u8>),
    Append(&'static str, &'static [u8]),
    WriteAt(&'static str, u64, &'static [u8]),
    Read(&'static str),
    Truncate(&'static str, u64),
    Chmod(&'static str, u32),
    Utimes(&'static str, i64, i64),
    TouchNow(&'static str),
    Stat(&'static str),
    Lstat(&'static str),
    Symlink(&'static str, &'static str),
    Readlink(&'static str),
    Link(&'static str, &'static str),
    Rename(&'static str, &'static str),
    RenameNoreplace(&'static str, &'static str),
    RenameExchange(&'static str, &'static str),
    Unlink(&'static str),
    Rmdir(&'static str),
    SetXattr(&'static str, &'static str, &'static [u8]),
    GetXattr(&'static str, &'static str),
    ListXattr(&'static str),
    RemoveXattr(&'static str, &'static str),
    Mkfifo(&'static str),
    ReadDir(&'static str),
    CreateExcl(&'static str),
    SeekDataHole(&'static str),
    /// Two descriptors on one file: flock and OFD locks taken on the first must exclude the
    /// second; a process-owned fcntl lock on the first, tested from the second, is the
    /// process's own (no conflict).
    Locks(&'static str),
}

/// Applies one op under `root` and describes the outcome in a form that is equal for equal
/// behaviour (no inode numbers, no ctimes).
pub fn apply(root: &Path, op: &Op) -> String {
    let p = |s: &str| root.join(s);
    // Opening a FIFO blocks until the other end opens: ops that open their path report the
    // FIFO instead (generated sequences may aim any op at one).
    if let Op::Write(a, _)
    | Op::Append(a, _)
    | Op::WriteAt(a, ..)
    | Op::Read(a)
    | Op::Truncate(a, _)
    | Op::Locks(a)
    | Op::SeekDataHole(a) = op
    {
        use std::os::unix::fs::FileTypeExt;
        if fs::metadata(p(a)).is_ok_and(|m| m.file_type().is_fifo()) {
            return "fifo, not opened".into();
        }
    }
    // Directory offsets are cookies whose meaning each filesystem picks (the guest kernel
    // answers lseek on a FUSE directory itself): only files are probed for data and holes.
    if let Op::SeekDataHole(a) = op {
        if fs::metadata(p(a)).is_ok_and(|m| m.is_dir()) {
            return "directory, not probed".into();
        }
    }
    let r: Result<String, String> = (|| match op {
        Op::Mkdir(a) => fs::create_dir(p(a))
            .map(|_| "ok".into())
            .map_err(|e| io_err(&e)),
        Op::Write(a, data) => fs::write(p(a), data)
            .map(|_| "ok".into())
            .map_err(|e| io_err(&e)),
        Op::Append(a, data) => fs::OpenOptions::new()
            .append(true)
            .open(p(a))
            .and_then(|mut f| f.write_all(data))
            .map(|_| "ok".into())
            .map_err(|e| io_err(&e)),
        Op::WriteAt(a, off, data) => fs::OpenOptions::new()
            .write(true)
            .open(p(a))
            .and_then(|f| f.write_all_at(data, *off))
            .map(|_| "ok".into())
            .map_err(|e| io_err(&e)),
        Op::Read(a) => fs::read(p(a))
            .map(|d| {
                format!(
                    "{} bytes, {:?}",
                    d.len(),
                    String::from_utf8_lossy(&d[..d.len().min(64)])
                )
            })
            .map_err(|e| io_err(&e)),
        Op::Truncate(a, len) => fs::OpenOptions::new()
            .write(true)
            .open(p(a))
            .and_then(|f| f.set_len(*len))
            .map(|_| "ok".into())
            .map_err(|e| io_err(&e)),
        Op::Chmod(a, mode) => fs::set_permissions(p(a), fs::Permissions::from_mode(*mode))
            .map(|_| "ok".into())
            .map_err(|e| io_err(&e)),
        Op::Utimes(a, sec, nsec) => {
            let ts = [
                libc::timespec {
                    tv_sec: *sec,
                    tv_nsec: *nsec,
                },
                libc::timespec {
                    tv_sec: *sec + 7,
                    tv_nsec: *nsec / 2,
                },
            ];
            // SAFETY: the path is a valid C string and `ts` holds two timespecs.
            let rc =
                unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&p(a)).as_ptr(), ts.as_ptr(), 0) };
            if rc != 0 {
                return Err(last_errno());
            }
            // Both times as set, read back at once (later reads may move atime).
            let m = fs::metadata(p(a)).map_err(|e| io_err(&e))?;
            Ok(format!(
                "ok, atime={}.{:09} mtime={}.{:09}",
                m.atime(),
                m.atime_nsec(),
                m.mtime(),
                m.mtime_nsec()
            ))
        }
        Op::TouchNow(a) => {
            let ts = [
                libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
            ];
            let before = fs::metadata(p(a)).map_err(|e| io_err(&e))?.mtime();
            // SAFETY: as above.
            let rc =
                unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&p(a)).as_ptr(), ts.as_ptr(), 0) };
            if rc != 0 {
                return Err(last_errno());
            }
            let m = fs::metadata(p(a)).map_err(|e| io_err(&e))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            Ok(format!(
                "mtime moved to now: {}, atime kept: {}",
                m.mtime() >= before && (now - m.mtime()).abs() < 60,
                m.atime() != m.mtime() || m.atime() == before
            ))
        }
        Op::Stat(a) => fs::metadata(p(a))
            .map(|m| describe(&m))
            .map_err(|e| io_err(&e)),
        Op::Lstat(a) => fs::symlink_metadata(p(a))
            .map(|m| describe(&m))
            .map_err(|e| io_err(&e)),
        Op::Symlink(target, a) => std::os::unix::fs::symlink(target, p(a))
            .map(|_| "ok".into())
            .map_err(|e| io_err(&e)),
        Op::Readlink(a) => fs::read_link(p(a))
            .map(|t| t.display().to_string())
            .map_err(|e| io_err(&e)),
        Op::Link(a, b) => fs::hard_link(p(a), p(b))
            .map(|_| "ok".into())
            .map_err(|e| io_err(&e)),
        Op::Rename(a, b) => fs::rename(p(a), p(b))
            .map(|_| "ok".into())
            .map_err(|e| io_err(&e)),
        Op::RenameNoreplace(a, b) => renameat2(&p(a), &p(b), libc::RENAME_NOREPLACE),
        Op::RenameExchange(a, b) => renameat2(&p(a), &p(b), libc::RENAME_EXCHANGE),
        Op::Unlink(a) => fs::remove_file(p(a))
            .map(|_| "ok".into())
            .map_err(|e| io_err(&e)),
        Op::Rmdir(a) => fs::remove_dir(p(a))
            .map(|_| "ok".into())
            .map_err(|e| io_err(&e)),
        Op::SetXattr(a, n, v) => {
            let name = std::ffi::CString::new(*n).unwrap();
            // SAFETY: valid C strings and a value buffer of the given length.
            let rc = unsafe {
                libc::setxattr(
                    cpath(&p(a)).as_ptr(),
                    name.as_ptr(),
                    v.as_ptr().cast(),
                    v.len(),
                    0,
                )
            };
            if rc == 0 {
                Ok("ok".into())
            } else {
                Err(last_errno())
            }
        }
        Op::GetXattr(a, n) => {
            let name = std::ffi::CString::new(*n).unwrap();
            let mut buf = [0u8; 256];
            // SAFETY: valid C strings and a writable buffer of the given length.
            let rc = unsafe {
                libc::getxattr(
                    cpath(&p(a)).as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if rc >= 0 {
                Ok(format!(
                    "{:?}",
                    String::from_utf8_lossy(&buf[..rc as usize])
                ))
            } else {
                Err(last_errno())
            }
        }
        Op::ListXattr(a) => {
            let mut buf = [0u8; 1024];
            // SAFETY: valid C string and a writable buffer of the given length.
            let rc = unsafe {
                libc::listxattr(cpath(&p(a)).as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if rc < 0 {
                return Err(last_errno());
            }
            let mut names: Vec<String> = buf[..rc as usize]
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                // security.* labels depend on the host's LSM, not on the filesystem.
                .filter(|s| s.starts_with("user."))
                .collect();
            names.sort();
            Ok(names.join(","))
        }
        Op::RemoveXattr(a, n) => {
            let name = std::ffi::CString::new(*n).unwrap();
            // SAFETY: valid C strings.
            let rc = unsafe { libc::removexattr(cpath(&p(a)).as_ptr(), name.as_ptr()) };
            if rc == 0 {
                Ok("ok".into())
            } else {
                Err(last_errno())
            }
        }
        Op::Mkfifo(a) => {
            nix::unistd::mkfifo(&p(a), nix::sys::stat::Mode::from_bits_truncate(0o644))
                .map(|_| "ok".into())
                .map_err(|e| errno_name(e as i32))
        }
        Op::ReadDir(a) => fs::read_dir(p(a))
            .map(|it| {
                let mut v: Vec<String> = it
                    .map(|e| {
                        let e = e.unwrap();
                        format!(
                            "{}:{:?}",
                            e.file_name().to_string_lossy(),
                            kind(&e.file_type().unwrap())
                        )
                    })
                    .collect();
                v.sort();
                format!("{} entries: {}", v.len(), v.join(" "))
            })
            .map_err(|e| io_err(&e)),
        Op::CreateExcl(a) => fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(p(a))
            .map(|_| "ok".into())
            .map_err(|e| io_err(&e)),
        Op::SeekDataHole(a) => {
            let f = fs::File::open(p(a)).map_err(|e| io_err(&e))?;
            use std::os::fd::AsRawFd;
            let mut out = Vec::new();
            for (whence, off) in [
                (libc::SEEK_DATA, 0),
                (libc::SEEK_HOLE, 0),
                (libc::SEEK_DATA, 1 << 20),
            ] {
                // SAFETY: lseek on an open descriptor.
                let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
                out.push(if r < 0 { last_errno() } else { r.to_string() });
            }
            Ok(out.join(","))
        }
        Op::Locks(a) => locks(&p(a)),
    })();
    match r {
        Ok(s) => s,
        Err(e) => e,
    }
}

/// The outcome of a fixed lock sequence on two descriptors of `path`.
fn locks(path: &Path) -> Result<String, String> {
    use std::os::fd::AsRawFd;
    let open = || {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err(&e))
    };
    let (f1, f2) = (open()?, open()?);
    let (a, b) = (f1.as_raw_fd(), f2.as_raw_fd());
    let rc = |r: libc::c_int| {
        if r == 0 {
            "ok".to_string()
        } else {
            last_errno()
        }
    };
    let lk = |fd, cmd, typ: libc::c_int, start, len| {
        // SAFETY: an all-zero flock is valid; fcntl reads and writes it during the call.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = typ as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = start;
        fl.l_len = len;
        // SAFETY: `fl` is a valid flock for the duration of the call.
        let r = unsafe { libc::fcntl(fd, cmd, &mut fl) };
        if r < 0 {
            last_errno()
        } else if cmd == libc::F_OFD_GETLK || cmd == libc::F_GETLK {
            format!("type={} {}+{}", fl.l_type, fl.l_start, fl.l_len)
        } else {
            "ok".to_string()
        }
    };
    // SAFETY: flock on open descriptors.
    let mut out = vec![
        rc(unsafe { libc::flock(a, libc::LOCK_EX | libc::LOCK_NB) }),
        rc(unsafe { libc::flock(b, libc::LOCK_SH | libc::LOCK_NB) }),
        rc(unsafe { libc::flock(a, libc::LOCK_UN) }),
        rc(unsafe { libc::flock(b, libc::LOCK_SH | libc::LOCK_NB) }),
    ];
    out.push(lk(a, libc::F_OFD_SETLK, libc::F_WRLCK, 10, 10));
    out.push(lk(b, libc::F_OFD_GETLK, libc::F_RDLCK, 0, 0));
    out.push(lk(b, libc::F_OFD_SETLK, libc::F_RDLCK, 15, 1));
    out.push(lk(b, libc::F_OFD_SETLK, libc::F_RDLCK, 20, 5));
    out.push(lk(a, libc::F_SETLK, libc::F_WRLCK, 100, 0));
    out.push(lk(b, libc::F_GETLK, libc::F_WRLCK, 100, 1));
    Ok(out.join(","))
}

fn renameat2(a: &Path, b: &Path, flags: u32) -> Result<String, String> {
    // SAFETY: valid C strings; renameat2 takes no other pointers.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cpath(a).as_ptr(),
            libc::AT_FDCWD,
            cpath(b).as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok("ok".into())
    } else {
        Err(last_errno())
    }
}

fn kind(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_file() {
        "file"
    } else {
        "other"
    }
}

fn describe(m: &fs::Metadata) -> String {
    let mut s = format!(
        "{} mode={:o} size={} nlink={} uid={} gid={}",
        kind(&m.file_type()),
        m.mode() & 0o7777,
        if m.is_dir() { 0 } else { m.size() },
        m.nlink(),
        m.uid(),
        m.gid()
    );
    // Times set explicitly by the scenario (far in the past) are compared exactly; times set by
    // the clock are not. atime is left out: reading a file moves it on the host, and the guest
    // sees that only after its attribute timeout (`Utimes` checks both times as set).
    if m.mtime() < 1_000_000_000 {
        s += &format!(" mtime={}.{:09}", m.mtime(), m.mtime_nsec());
    }
    s
}

/// Snapshot of a tree: path → description (type, mode, size, content hash, link target).
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let m = fs::symlink_metadata(&path).unwrap();
        let mut d = describe(&m);
        if m.file_type().is_symlink() {
            d += &format!(" -> {}", fs::read_link(&path).unwrap().display());
        } else if m.is_file() {
            d += &format!(" content={}", content_hash(&path));
        }
        out.insert(rel, d);
        if m.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// A content fingerprint computed in-process (spawning a hasher per file would dominate the
/// 5,000-file tests). Only compared within one test run.
fn content_hash(path: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let data = fs::read(path).unwrap();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    format!("{}:{:016x}", data.len(), h.finish())
}

/// Runs `ops` on a plain directory and on a Ferry mount; every outcome and the final trees must
/// be equal.
pub fn check(name: &str, ops: &[Op]) {
    if !require(&[Need::Fuse]) {
        return;
    }
    let plain = tempfile::tempdir().unwrap();
    // The plain directory lets root set set-id bits; so does a share with --setid.
    let share = Share::start_with(&["--setid"]);
    let mut diffs = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let want = apply(plain.path(), op);
        let got = apply(share.mnt(), op);
        if want != got {
            diffs.push(format!("step {i} {op:?}:\n  plain: {want}\n  ferry: {got}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{name}: outcomes differ\n{}",
        diffs.join("\n")
    );
    let want = snapshot(plain.path());
    let got = snapshot(share.mnt());
    assert_eq!(want, got, "{name}: final trees differ (plain vs mount)");
    // What the mount shows must be what is on the host.
    assert_eq!(
        got,
        snapshot(share.src()),
        "{name}: mount and host directory differ"
    );
    assert!(share.stop().success());
}

#[test]
fn nested_trees() {
    use Op::*;
    check(
        "nested_trees",
        &[
            Mkdir("a"),
            Mkdir("a/b"),
            Mkdir("a/b/c"),
            Write("a/b/c/deep.txt", b"deep".to_vec()),
            Mkdir("a/b"),
            Write("a/x", b"1".to_vec()),
            Mkdir("a/x/y"),
            ReadDir("a"),
            ReadDir("a/b/c"),
            Stat("a/b/c/deep.txt"),
            Rmdir("a/b"),
            Read("a/b/c/nope"),
            Stat("a/b/c"),
        ],
    );
}

#[test]
fn files_append_truncate_chmod_utimes() {
    use Op::*;
    check(
        "files",
        &[
            Write("f", b"hello".to_vec()),
            Append("f", b" world"),
            Read("f"),
            WriteAt("f", 2, b"LL"),
            Read("f"),
            Truncate("f", 3),
            Read("f"),
            Truncate("f", 10),
            Read("f"),
            Chmod("f", 0o600),
            Stat("f"),
            Chmod("f", 0o4755),
            Stat("f"),
            Utimes("f", 123_456_789, 987_654_321),
            Stat("f"),
            TouchNow("f"),
            CreateExcl("f"),
            CreateExcl("g"),
            Stat("g"),
            Append("nope", b"x"),
            Truncate("nope", 1),
        ],
    );
}

#[test]
fn links_and_symlinks() {
    use Op::*;
    check(
        "links",
        &[
            Write("f", b"data".to_vec()),
            Link("f", "hard"),
            Stat("f"),
            Stat("hard"),
            Append("hard", b"+more"),
            Read("f"),
            Unlink("f"),
            Stat("hard"),
            Link("hard", "hard"),
            Mkdir("d"),
            Symlink("hard", "rel"),
            Symlink("../hard", "d/up"),
            Symlink("/etc/hostname-does-not-exist-here", "abs"),
            Symlink("missing", "dangling"),
            Readlink("rel"),
            Readlink("d/up"),
            Readlink("abs"),
            Readlink("dangling"),
            Read("rel"),
            Read("d/up"),
            Read("dangling"),
            Lstat("rel"),
            Stat("rel"),
            Readlink("hard"),
            ReadDir(""),
        ],
    );
}

#[test]
fn renames() {
    use Op::*;
    check(
        "renames",
        &[
            Write("a", b"A".to_vec()),
            Write("b", b"B".to_vec()),
            Rename("a", "b"),
            Read("b"),
            Read("a"),
            Mkdir("d1"),
            Write("d1/inner", b"i".to_vec()),
            Mkdir("d2"),
            Rename("d1", "d2/moved"),
            Read("d2/moved/inner"),
            Mkdir("e"),
            Write("e/x", b"x".to_vec()),
            Rename("d2", "e"),
            Write("c", b"C".to_vec()),
            RenameNoreplace("c", "b"),
            RenameNoreplace("c", "c2"),
            RenameExchange("b", "c2"),
            Read("b"),
            Read("c2"),
            RenameExchange("b", "absent"),
            Rename("b", "b"),
            ReadDir(""),
        ],
    );
}

#[test]
fn xattrs() {
    use Op::*;
    check(
        "xattrs",
        &[
            Write("f", b"x".to_vec()),
            GetXattr("f", "user.none"),
            SetXattr("f", "user.one", b"1"),
            SetXattr("f", "user.two", b"second value"),
            GetXattr("f", "user.one"),
            GetXattr("f", "user.two"),
            ListXattr("f"),
            RemoveXattr("f", "user.one"),
            RemoveXattr("f", "user.one"),
            ListXattr("f"),
            Mkdir("d"),
            SetXattr("d", "user.dir", b"yes"),
            GetXattr("d", "user.dir"),
        ],
    );
}

#[test]
fn fifo_and_sparse_files() {
    use Op::*;
    check(
        "special",
        &[
            Mkfifo("pipe"),
            Lstat("pipe"),
            Mkfifo("pipe"),
            Write("sparse", Vec::new()),
            WriteAt("sparse", 4 << 20, b"end"),
            Stat("sparse"),
            SeekDataHole("sparse"),
            ReadDir(""),
        ],
    );
}

#[test]
fn thousand_entry_directory() {
    let mut ops = vec![Op::Mkdir("big")];
    let names: &'static [String] = Box::leak(
        (0..1000)
            .map(|i| format!("big/entry-{i:04}-with-a-longish-name"))
            .collect(),
    );
    for n in names {
        ops.push(Op::Write(n.as_str(), n.as_bytes().to_vec()));
    }
    ops.push(Op::ReadDir("big"));
    check("thousand_entries", &ops);
}

#[test]
fn fifo_carries_data_inside_the_mount() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    let fifo = share.mnt().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::write(fifo, b"through the pipe").unwrap())
    };
    let got = fs::read(&fifo).unwrap();
    writer.join().unwrap();
    assert_eq!(got, b"through the pipe");
    assert!(share.stop().success());
}

#[test]
fn gigabyte_file_round_trip() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    let path = share.mnt().join("big.bin");
    let mut f = fs::File::create(&path).unwrap();
    // Deterministic, non-repeating content so misplaced blocks are caught.
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..1024u64 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&(x ^ i).to_le_bytes());
        }
        f.write_all(&block)
            .unwrap_or_else(|e| panic!("write of block {i}: {e}"));
    }
    f.sync_all().unwrap();
    drop(f);
    let host = sha256(&share.src().join("big.bin"));
    let mount = sha256(&path);
    assert_eq!(
        host, mount,
        "checksum through the mount differs from the host file"
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), 1 << 30);
    // A read at an odd offset across a block boundary.
    let mut f = fs::File::open(&path).unwrap();
    f.seek(SeekFrom::Start((1 << 20) - 3)).unwrap();
    let mut six = [0u8; 6];
    f.read_exact(&mut six).unwrap();
    let h = fs::File::open(share.src().join("big.bin")).unwrap();
    let mut want = [0u8; 6];
    h.read_exact_at(&mut want, (1 << 20) - 3).unwrap();
    assert_eq!(six, want);
    assert!(share.stop().success());
}

#[test]
fn reads_see_writes_made_after_open() {
    // A read-only open carries the file's first bytes inline; a write through another
    // descriptor after that open must still be seen by reads on the first one, as locally.
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    let path = share.mnt().join("f");
    fs::write(&path, b"old contents").unwrap();
    let reader = fs::File::open(&path).unwrap();
    let writer = fs::OpenOptions::new().write(true).open(&path).unwrap();
    writer.write_all_at(b"NEW", 0).unwrap();
    let mut buf = [0u8; 12];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"NEW contents");
    writer.set_len(3).unwrap();
    let mut got = Vec::new();
    (&reader).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"NEW");
    drop((reader, writer));
    // Bigger than the inline prefetch: reads past it come from the host.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(share.src().join("big"), &big).unwrap();
    assert_eq!(fs::read(share.mnt().join("big")).unwrap(), big);
    assert!(share.stop().success());
}

#[test]
fn a_cached_miss_lasts_no_longer_than_the_attribute_timeout() {
    // The agent caches "no such file" for the entry TTL (1 s by default), like positive
    // entries. A file created on the host after a miss must show up once that has passed, and
    // one created through the mount at once.
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    let late = share.mnt().join("late");
    let e = fs::metadata(&late).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    fs::write(share.src().join("late"), b"from the host").unwrap();
    let start = std::time::Instant::now();
    while fs::metadata(&late).is_err() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(3),
            "a host-created file is still invisible 3 s after a miss (TTL is 1 s)"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(fs::read(&late).unwrap(), b"from the host");

    let mine = share.mnt().join("mine");
    assert!(fs::metadata(&mine).is_err());
    fs::write(&mine, b"from the guest").unwrap();
    assert_eq!(fs::read(&mine).unwrap(), b"from the guest");
    fs::remove_file(&mine).unwrap();
    assert!(fs::metadata(&mine).is_err());
    fs::create_dir(&mine).unwrap();
    assert!(fs::metadata(&mine).unwrap().is_dir());
    assert!(share.stop().success());
}

#[test]
fn a_truncating_open_of_a_running_program_leaves_it_whole() {
    // pjdfstest's open::etxtbsy found this: with FUSE_ATOMIC_O_TRUNC the kernel sent O_TRUNC
    // in OPEN, the host truncated the file, and only then did the kernel refuse the open with
    // ETXTBSY, leaving a running program empty on the host. Compared with a plain directory.
    if !require(&[Need::Fuse]) {
        return;
    }
    let program = fs::read("/bin/sleep").expect("/bin/sleep");
    let native = tempfile::tempdir().unwrap();
    for mode in ["none", "cached", "consistent"] {
        let share = (mode != "none").then(|| Share::start_with(&["--cache", mode]));
        let root = share.as_ref().map_or(native.path(), |s| s.mnt());
        let exe = root.join("running");
        fs::write(&exe, &program).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        for (what, flags) in [
            ("O_RDONLY|O_TRUNC", libc::O_RDONLY | libc::O_TRUNC),
            ("O_WRONLY|O_TRUNC", libc::O_WRONLY | libc::O_TRUNC),
            ("O_RDWR", libc::O_RDWR),
        ] {
            // SAFETY: a NUL-terminated path; the descriptor, if any, is closed at once.
            let fd = unsafe { libc::open(cpath(&exe).as_ptr(), flags) };
            let got = if fd < 0 {
                last_errno()
            } else {
                // SAFETY: fd was just opened by us.
                unsafe { libc::close(fd) };
                "Ok".to_string()
            };
            assert_eq!(got, errno_name(libc::ETXTBSY), "{mode}: open({what})");
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{mode}: the program died"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            fs::read(&exe).unwrap(),
            program,
            "{mode}: the program changed"
        );
        if let Some(s) = &share {
            assert_eq!(
                fs::read(s.src().join("running")).unwrap(),
                program,
                "{mode}: host"
            );
        }
        // Once the program has stopped, both truncating opens truncate, here and on the host.
        for flags in [
            libc::O_RDONLY | libc::O_TRUNC,
            libc::O_WRONLY | libc::O_TRUNC,
        ] {
            fs::write(&exe, b"contents").unwrap();
            let f = fs::OpenOptions::new()
                .read(flags & libc::O_ACCMODE == libc::O_RDONLY)
                .write(flags & libc::O_ACCMODE == libc::O_WRONLY)
                .custom_flags(libc::O_TRUNC)
                .open(&exe)
                .unwrap();
            assert_eq!(f.metadata().unwrap().len(), 0, "{mode}: {flags:#o}");
            let mut got = Vec::new();
            if flags & libc::O_ACCMODE == libc::O_RDONLY {
                (&f).read_to_end(&mut got).unwrap();
            }
            assert!(got.is_empty(), "{mode}: read after a truncating open");
            drop(f);
            if let Some(s) = &share {
                assert_eq!(fs::metadata(s.src().join("running")).unwrap().len(), 0);
            }
        }
        if let Some(s) = share {
            assert!(s.stop().success());
        }
    }
}
