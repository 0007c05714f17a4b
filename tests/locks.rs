//! Locks across the boundary: flock and fcntl locks taken through a mount exclude host
//! processes and other guests, and the other way round; blocking waits tie up no server
//! worker; a guest's disconnect releases its locks; SQLite runs concurrent transactions.
//!
//! The "other side" is always a separate python3 process, because POSIX locks belong to a
//! process: locks taken in this test process never conflict with each other.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::attacks::HostProc;
use crate::harness::{
    Need, Share, agent_command, lazy_unmount, require, terminate, wait_exit, wait_mounted,
    wait_until,
};

/// Takes the lock its arguments name on a file, prints `locked` (or `busy` when `nb` and it
/// conflicts), then holds it until stdin closes.
const HOLDER: &str = r#"
import fcntl, os, sys
path, kind, nb = sys.argv[1], sys.argv[2], sys.argv[3] == "nb"
f = open(path, "r+b")
try:
    if kind.startswith("flock-"):
        op = fcntl.LOCK_EX if kind == "flock-ex" else fcntl.LOCK_SH
        fcntl.flock(f, op | (fcntl.LOCK_NB if nb else 0))
    else:
        # fcntl-wr:START:LEN or fcntl-rd:START:LEN
        typ, start, length = kind.split(":")
        op = fcntl.LOCK_EX if typ == "fcntl-wr" else fcntl.LOCK_SH
        fcntl.lockf(f, op | (fcntl.LOCK_NB if nb else 0), int(length), int(start))
except BlockingIOError:
    print("busy", flush=True)
    sys.exit(0)
print("locked", flush=True)
sys.stdin.read()
"#;

/// A process holding a lock until dropped.
struct Holder {
    child: Child,
}

impl Holder {
    /// Starts a holder and waits for its verdict: `Ok(holder)` when it holds the lock,
    /// `Err(())` when the lock was busy (only with `nb`).
    fn start(path: &Path, kind: &str, nb: bool) -> Result<Holder, ()> {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(HOLDER)
            .arg(path)
            .arg(kind)
            .arg(if nb { "nb" } else { "wait" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        match line.trim() {
            "locked" => Ok(Holder { child }),
            "busy" => {
                let _ = child.wait();
                Err(())
            }
            other => panic!("lock holder on {} said {other:?}", path.display()),
        }
    }

    /// Whether a non-blocking `kind` lock on `path` is free right now (taken and dropped).
    fn free(path: &Path, kind: &str) -> bool {
        Holder::start(path, kind, true).is_ok()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// `fcntl(fd, cmd, {typ, start, len})`; returns the filled struct or the errno.
fn fcntl_lock(
    fd: i32,
    cmd: i32,
    typ: i32,
    start: i64,
    len: i64,
) -> Result<libc::flock, std::io::Error> {
    // SAFETY: an all-zero flock is valid; fcntl reads and writes it during the call.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: `fl` is a valid flock for the duration of the call.
    if unsafe { libc::fcntl(fd, cmd, &mut fl) } < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fl)
    }
}

fn flock(fd: i32, op: i32) -> Result<(), std::io::Error> {
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(fd, op) } < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn rw(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

#[test]
fn guest_locks_exclude_host_processes_and_back() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    let (host, guest) = (share.src().join("f"), share.mnt().join("f"));
    fs::write(&host, vec![0u8; 200]).unwrap();
    let f = rw(&guest);
    let fd = f.as_raw_fd();

    // flock from the guest excludes host flock, until released.
    flock(fd, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    assert!(
        !Holder::free(&host, "flock-sh"),
        "host flock got past a guest LOCK_EX"
    );
    flock(fd, libc::LOCK_SH).unwrap();
    assert!(Holder::free(&host, "flock-sh"), "shared locks must coexist");
    assert!(!Holder::free(&host, "flock-ex"));
    flock(fd, libc::LOCK_UN).unwrap();
    assert!(Holder::free(&host, "flock-ex"));

    // fcntl record locks from the guest exclude host fcntl locks on the same bytes only, and
    // are independent of flock, as on a local filesystem.
    fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 0, 10).unwrap();
    assert!(!Holder::free(&host, "fcntl-rd:5:1"));
    assert!(Holder::free(&host, "fcntl-wr:10:10"));
    assert!(Holder::free(&host, "flock-ex"));
    fcntl_lock(fd, libc::F_SETLK, libc::F_UNLCK, 0, 10).unwrap();
    assert!(Holder::free(&host, "fcntl-wr:0:10"));
    // close(2) of any descriptor drops the process's POSIX locks.
    fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    drop(fs::File::open(&guest).unwrap());
    assert!(
        Holder::free(&host, "fcntl-wr:0:0"),
        "close did not drop the lock"
    );

    // A host flock excludes the guest; a blocking guest flock waits for its release.
    let holder = Holder::start(&host, "flock-ex", false).unwrap();
    let e = flock(fd, libc::LOCK_EX | libc::LOCK_NB).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EWOULDBLOCK));
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        flock(fd, libc::LOCK_EX).unwrap();
        t.elapsed()
    });
    // Part of the assertion, not a wait for readiness: the blocked flock must still be
    // waiting 300 ms later, while the host holds the lock.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiter.is_finished(),
        "a blocking flock returned while held"
    );
    drop(holder);
    let waited = waiter.join().unwrap();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(!Holder::free(&host, "flock-ex"));
    flock(fd, libc::LOCK_UN).unwrap();

    // A host fcntl lock is reported by F_GETLK and waited for by F_SETLKW.
    let holder = Holder::start(&host, "fcntl-wr:0:100", false).unwrap();
    let got = fcntl_lock(fd, libc::F_GETLK, libc::F_RDLCK, 50, 1).unwrap();
    assert_eq!(
        (got.l_type as i32, got.l_start, got.l_len),
        (libc::F_WRLCK, 0, 100)
    );
    let e = fcntl_lock(fd, libc::F_SETLK, libc::F_RDLCK, 50, 1).unwrap_err();
    assert!(matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EACCES)
    ));
    let waiter = std::thread::spawn(move || {
        fcntl_lock(fd, libc::F_SETLKW, libc::F_WRLCK, 0, 0).unwrap();
    });
    // Part of the assertion, as above: F_SETLKW must still wait 300 ms later.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished(), "F_SETLKW returned while held");
    drop(holder);
    waiter.join().unwrap();
    assert!(!Holder::free(&host, "fcntl-rd:1000:1"));
    drop(f);
    assert!(Holder::free(&host, "fcntl-wr:0:0"));
    assert!(share.stop().success());
}

#[test]
fn blocking_waits_leave_the_server_serving() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    // More waiters than a connection has workers (8).
    const N: usize = 12;
    let holders: Vec<Holder> = (0..N)
        .map(|i| {
            let p = share.src().join(format!("f{i}"));
            fs::write(&p, b"x").unwrap();
            Holder::start(&p, "flock-ex", false).unwrap()
        })
        .collect();
    let waiters: Vec<_> = (0..N)
        .map(|i| {
            let f = rw(&share.mnt().join(format!("f{i}")));
            std::thread::spawn(move || {
                flock(f.as_raw_fd(), libc::LOCK_EX).unwrap();
                f
            })
        })
        .collect();
    // Every waiter's request is in flight once the kernel counts N unanswered requests on the
    // mount; the server retries them all from one thread (conn.rs names it `ferry-lock-wait`),
    // not one thread each.
    let pid = share.pid();
    let conn = crate::harness::fuse_connection(share.mnt()).expect("a FUSE connection");
    let in_flight = || {
        fs::read_to_string(conn.join("waiting"))
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(0)
    };
    let all_waiting = wait_until(Duration::from_secs(20), || in_flight() >= N);
    assert!(all_waiting, "{} of {N} lock waits in flight", in_flight());
    assert_eq!(
        threads_named(pid, "ferry-lock-wait"),
        1,
        "one waiting thread"
    );
    // Everything else still works, promptly.
    let t = Instant::now();
    for i in 0..50 {
        let p = share.mnt().join(format!("other{i}"));
        fs::write(&p, b"still serving").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"still serving");
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "requests stalled behind lock waits"
    );
    assert!(waiters.iter().all(|w| !w.is_finished()));
    drop(holders);
    for w in waiters {
        let f = w.join().unwrap();
        flock(f.as_raw_fd(), libc::LOCK_UN).unwrap();
    }
    assert!(share.stop().success());
}

/// How many threads of process `pid` are called `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// Starts `ferry-agent` mounting export `ex` of `host` on `mnt`, with extra arguments.
fn agent(host: &HostProc, mnt: &Path, extra: &[&str]) -> Child {
    let mut child = agent_command(extra)
        .arg("--connect")
        .arg(format!("unix:{}", host.sock.display()))
        .arg("--mount")
        .arg(format!("ex={}", mnt.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_mounted(mnt, &mut child);
    child
}

#[test]
fn two_agents_exclude_each_other_and_a_disconnect_releases() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let host = HostProc::start(&[]);
    let (m1, m2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a1 = agent(&host, m1.path(), &[]);
    let mut a2 = agent(&host, m2.path(), &[]);
    fs::write(host.export().join("f"), vec![0u8; 64]).unwrap();
    let (f1, f2) = (m1.path().join("f"), m2.path().join("f"));

    for (kind, probe) in [("flock-ex", "flock-sh"), ("fcntl-wr:0:10", "fcntl-rd:9:1")] {
        let held = Holder::start(&f1, kind, true).unwrap();
        assert!(
            !Holder::free(&f2, probe),
            "{kind} through agent 1 vs agent 2"
        );
        assert!(!Holder::free(&host.export().join("f"), probe));
        drop(held);
        assert!(Holder::free(&f2, kind), "{kind} not released");
    }

    // Agent 1 dies (no unmount, no release) while one of its processes holds locks: the host
    // drops its connection and with it every lock it held.
    let _flock = Holder::start(&f1, "flock-ex", true).unwrap();
    let _fcntl = Holder::start(&f1, "fcntl-wr:0:0", true).unwrap();
    assert!(!Holder::free(&f2, "fcntl-rd:0:1"));
    a1.kill().unwrap();
    a1.wait().unwrap();
    let released = wait_until(Duration::from_secs(5), || {
        Holder::free(&f2, "flock-ex") && Holder::free(&f2, "fcntl-wr:0:0")
    });
    assert!(released, "locks of a dead agent still held");
    lazy_unmount(m1.path());
    assert!(terminate(&mut a2).success());
    assert!(host.stop().success());
}

/// Runs `count` SQLite write transactions on `db` (tagged `tag`) with a busy timeout.
const SQLITE_WRITER: &str = r#"
import sqlite3, sys
db, tag, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = sqlite3.connect(db, timeout=30, isolation_level=None)
c.execute("PRAGMA journal_mode=" + mode)
c.execute("CREATE TABLE IF NOT EXISTS t (tag TEXT, n INTEGER, pad BLOB)")
for i in range(count):
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO t VALUES (?, ?, randomblob(300))", (tag, i))
    c.execute("SELECT count(*) FROM t").fetchone()
    c.execute("COMMIT")
print("done", flush=True)
"#;

fn sqlite_writer(db: &Path, tag: &str, count: u32, mode: &str) -> Child {
    Command::new("python3")
        .arg("-c")
        .arg(SQLITE_WRITER)
        .arg(db)
        .arg(tag)
        .arg(count.to_string())
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs")
}

fn wait_ok(mut child: Child, what: &str) {
    wait_exit(&mut child, Duration::from_secs(120), what);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// integrity_check and the row count of each tag.
fn sqlite_verdict(db: &Path) -> String {
    let script = "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
        print(c.execute('PRAGMA integrity_check').fetchone()[0], \
        c.execute('SELECT tag, count(*) FROM t GROUP BY tag ORDER BY tag').fetchall())";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn concurrent_sqlite(a: PathBuf, b: PathBuf, mode: &str, verify: &Path) {
    const N: u32 = 150;
    let wa = sqlite_writer(&a, "a", N, mode);
    let wb = sqlite_writer(&b, "b", N, mode);
    wait_ok(wa, "writer a");
    wait_ok(wb, "writer b");
    assert_eq!(
        sqlite_verdict(verify),
        format!("ok [('a', {N}), ('b', {N})]")
    );
}

/// A rollback journal appears and disappears by name within milliseconds, sooner than a host
/// change event reaches the guest, so a guest sharing a database with another writer must not
/// cache names (a stale "db-journal exists" makes SQLite roll back a journal that is gone:
/// SQLITE_IOERR_DELETE_NOENT). Locks and file contents need no such help: a granted lock drops
/// the file's cached pages and attributes.
const NO_NAME_CACHE: &[&str] = &["--attr-timeout-ms", "0"];

#[test]
fn sqlite_rollback_journal_across_mount_and_host() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start_with(NO_NAME_CACHE);
    // Create the database first so both writers see one file.
    wait_ok(
        sqlite_writer(&share.mnt().join("db"), "init", 0, "delete"),
        "init",
    );
    concurrent_sqlite(
        share.mnt().join("db"),
        share.src().join("db"),
        "delete",
        &share.src().join("db"),
    );
    assert!(share.stop().success());
}

#[test]
fn sqlite_wal_two_processes_in_the_guest() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    let db = share.mnt().join("db");
    wait_ok(sqlite_writer(&db, "init", 0, "wal"), "init");
    concurrent_sqlite(db.clone(), db.clone(), "wal", &db);
    assert!(share.stop().success());
}

#[test]
fn sqlite_rollback_journal_across_two_agents() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let host = HostProc::start(&[]);
    let (m1, m2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a1 = agent(&host, m1.path(), NO_NAME_CACHE);
    let mut a2 = agent(&host, m2.path(), NO_NAME_CACHE);
    wait_ok(
        sqlite_writer(&m1.path().join("db"), "init", 0, "delete"),
        "init",
    );
    concurrent_sqlite(
        m1.path().join("db"),
        m2.path().join("db"),
        "delete",
        &host.export().join("db"),
    );
    assert!(terminate(&mut a1).success());
    assert!(terminate(&mut a2).success());
    assert!(host.stop().success());
}
