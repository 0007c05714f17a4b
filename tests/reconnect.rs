//! Mounts that outlive their server: `ferry-host` killed with SIGKILL and started again while a
//! separate `ferry-agent` keeps its mount, with files open, a workload running and host edits
//! made meanwhile; a server that never comes back (EIO after the agent's
//! `--reconnect-timeout`); and an agent that dies (the mount fails fast, the next agent
//! cleans it up and mounts again).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::harness::{
    Need, agent_command, host_command, lazy_unmount, require, wait_mounted, wait_until,
};

/// A `ferry-host` and a `ferry-agent --connect` over a Unix socket, as separate processes,
/// each logging to a file in the test's directory.
struct Pair {
    dir: tempfile::TempDir,
    host: Option<Child>,
    agent: Option<Child>,
    restarts: u32,
}

impl Pair {
    fn start(agent_args: &[&str]) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let mut p = Pair {
            dir,
            host: None,
            agent: None,
            restarts: 0,
        };
        p.start_host();
        p.start_agent(agent_args);
        p
    }

    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn start_host(&mut self) {
        let _ = std::fs::remove_file(self.sock());
        let log = File::create(self.dir.path().join(format!("host{}.log", self.restarts))).unwrap();
        let mut host = host_command(&self.src(), &format!("unix:{}", self.sock().display()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let sock = self.sock();
        assert!(
            wait_until(Duration::from_secs(30), || {
                std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket())
                    || host.try_wait().unwrap().is_some()
            }) && host.try_wait().unwrap().is_none(),
            "ferry-host did not listen"
        );
        self.host = Some(host);
    }

    fn start_agent(&mut self, extra: &[&str]) {
        let mut args = vec![
            format!("--connect=unix:{}", self.sock().display()),
            format!("--mount=ex={}", self.mnt().display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.agent_log_path())
            .unwrap();
        let mut agent = agent_command(&args)
            .env("RUST_LOG", "info")
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        wait_mounted(&self.mnt(), &mut agent);
        self.agent = Some(agent);
    }

    fn agent_log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.agent_log_path()).unwrap_or_default()
    }

    /// SIGKILL of ferry-host, reaped.
    fn kill_host(&mut self) {
        let mut h = self.host.take().expect("a host runs");
        h.kill().unwrap();
        h.wait().unwrap();
    }

    /// The same ferry-host command again.
    fn restart_host(&mut self) {
        self.restarts += 1;
        self.start_host();
    }

    /// Waits until the agent has resumed `n` times in all.
    fn wait_resumed(&self, n: usize) {
        assert!(
            wait_until(Duration::from_secs(60), || {
                self.agent_log()
                    .matches("resumed on the new connection")
                    .count()
                    >= n
            }),
            "the agent did not resume:\n{}",
            self.agent_log()
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            crate::harness::abort_fuse(&self.mnt());
            let _ = a.wait();
        }
        if let Some(mut h) = self.host.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        lazy_unmount(&self.mnt());
    }
}

/// Bytes that differ at every offset, so a read from the wrong place shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

#[test]
fn open_files_carry_on_through_a_host_restart() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let mut p = Pair::start(&[]);
    let data = pattern(300 * 1024, 7);
    std::fs::write(p.src().join("data.bin"), &data).unwrap();
    std::fs::write(p.src().join("log.txt"), b"zero\n").unwrap();

    let mut reader = File::open(p.mnt().join("data.bin")).unwrap();
    let mut head = vec![0; 100 * 1024];
    reader.read_exact(&mut head).unwrap();
    assert_eq!(head, data[..head.len()]);
    let mut log = OpenOptions::new()
        .append(true)
        .open(p.mnt().join("log.txt"))
        .unwrap();
    log.write_all(b"one\n").unwrap();

    p.kill_host();
    // An append made while the server is away waits for it, and lands once.
    let mut log2 = log.try_clone().unwrap();
    let gap_append = std::thread::spawn(move || log2.write_all(b"two\n"));
    std::thread::sleep(Duration::from_millis(500));
    p.restart_host();
    gap_append
        .join()
        .unwrap()
        .expect("the append made during the gap succeeds");
    p.wait_resumed(1);

    log.write_all(b"three\n").unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!(
        rest.len() + head.len(),
        data.len(),
        "the rest of the file is read"
    );
    assert!(rest == data[head.len()..], "the rest reads right");
    reader.seek(SeekFrom::Start(1234)).unwrap();
    let mut some = vec![0; 4096];
    reader.read_exact(&mut some).unwrap();
    assert!(
        some == data[1234..1234 + 4096],
        "reads at other offsets too"
    );
    drop(log);
    drop(reader);
    assert_eq!(
        std::fs::read_to_string(p.src().join("log.txt")).unwrap(),
        "zero\none\ntwo\nthree\n",
        "every append is on the host once, in order"
    );
    // The mount is the same one throughout, and still serves.
    assert_eq!(
        std::fs::read(p.mnt().join("data.bin")).unwrap().len(),
        data.len()
    );
}

/// The file operations of step `i`, applied both to the mount and to the model.
fn step(root: &Path, model: &mut BTreeMap<String, Vec<u8>>, i: usize) -> std::io::Result<()> {
    let dir = format!("d{}", i % 7);
    if !root.join(&dir).exists() {
        std::fs::create_dir(root.join(&dir))?;
    }
    let name = format!("{dir}/f{i}");
    let body = pattern(200 + i * 13, i as u8);
    std::fs::write(root.join(&name), &body)?;
    model.insert(name.clone(), body);
    if i % 3 == 0 {
        let to = format!("d{}/r{i}", (i + 1) % 7);
        if !root.join(format!("d{}", (i + 1) % 7)).exists() {
            std::fs::create_dir(root.join(format!("d{}", (i + 1) % 7)))?;
        }
        std::fs::rename(root.join(&name), root.join(&to))?;
        let b = model.remove(&name).unwrap();
        model.insert(to, b);
    }
    if i % 5 == 0 && i >= 5 {
        let victim = format!("d{}/f{}", (i - 5) % 7, i - 5);
        if model.remove(&victim).is_some() {
            std::fs::remove_file(root.join(&victim))?;
        }
    }
    Ok(())
}

/// Every regular file under `root` with its content, by relative path.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for d in std::fs::read_dir(root).unwrap() {
        let d = d.unwrap();
        if d.file_type().unwrap().is_dir() {
            for f in std::fs::read_dir(d.path()).unwrap() {
                let f = f.unwrap();
                let rel = format!(
                    "{}/{}",
                    d.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                );
                out.insert(rel, std::fs::read(f.path()).unwrap());
            }
        }
    }
    out
}

#[test]
fn a_workload_spans_a_host_restart() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let mut p = Pair::start(&[]);
    let mnt = p.mnt();
    let work = std::thread::spawn(move || {
        let mut model = BTreeMap::new();
        for i in 0..400 {
            if let Err(e) = step(&mnt, &mut model, i) {
                return Err(format!("step {i}: {e}"));
            }
        }
        Ok(model)
    });
    // Kill the server part-way through.
    let src = p.src();
    assert!(wait_until(Duration::from_secs(60), || {
        tree_len(&src) >= 60 || work.is_finished()
    }));
    assert!(
        !work.is_finished(),
        "the workload must still run at the kill"
    );
    p.kill_host();
    std::thread::sleep(Duration::from_millis(700));
    p.restart_host();
    let model = work
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", p.agent_log()));
    p.wait_resumed(1);
    let host = tree(&p.src());
    assert_eq!(
        host.keys().collect::<Vec<_>>(),
        model.keys().collect::<Vec<_>>(),
        "the host has exactly the files the workload left"
    );
    for (name, body) in &model {
        assert!(host[name] == *body, "{name} has the content written");
    }
    // And the guest sees the same tree.
    assert_eq!(tree(&p.mnt()), host);
}

fn tree_len(root: &Path) -> usize {
    std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| std::fs::read_dir(e.path()).map_or(0, |d| d.count()))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn host_edits_during_the_gap_are_seen_after_the_restart() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let mut p = Pair::start(&[]);
    std::fs::create_dir(p.src().join("sub")).unwrap();
    std::fs::write(p.src().join("sub/a.txt"), b"before\n").unwrap();
    std::fs::write(p.src().join("sub/gone.txt"), b"x").unwrap();
    // The guest caches the names, the attributes and the pages.
    assert_eq!(
        std::fs::read(p.mnt().join("sub/a.txt")).unwrap(),
        b"before\n"
    );
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&p.mnt().join("sub")), ["a.txt", "gone.txt"]);
    assert!(p.mnt().join("sub/new.txt").metadata().is_err());

    p.kill_host();
    std::fs::write(p.src().join("sub/a.txt"), b"after, longer\n").unwrap();
    std::fs::remove_file(p.src().join("sub/gone.txt")).unwrap();
    std::fs::write(p.src().join("sub/new.txt"), b"new").unwrap();
    p.restart_host();
    p.wait_resumed(1);

    assert_eq!(
        std::fs::read(p.mnt().join("sub/a.txt")).unwrap(),
        b"after, longer\n",
        "the file's new content, not the cached pages"
    );
    assert_eq!(std::fs::read(p.mnt().join("sub/new.txt")).unwrap(), b"new");
    assert!(
        p.mnt().join("sub/gone.txt").metadata().is_err(),
        "a file removed during the gap is gone"
    );
    assert_eq!(names(&p.mnt().join("sub")), ["a.txt", "new.txt"]);

    // The change subscription is renewed: a host edit after the restart raises an inotify
    // event in the guest.
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let ino = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    ino.add_watch(
        &p.mnt().join("sub"),
        AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MODIFY,
    )
    .unwrap();
    std::fs::write(p.src().join("sub/later.txt"), b"later").unwrap();
    let mut seen = Vec::new();
    let heard = wait_until(Duration::from_secs(30), || {
        if let Ok(events) = ino.read_events() {
            seen.extend(events.into_iter().filter_map(|e| e.name));
        }
        seen.iter().any(|n| n == "later.txt")
    });
    assert!(
        heard,
        "no inotify event for a host file made after the restart (heard {seen:?})"
    );
}

#[test]
fn a_server_that_never_returns_gives_eio_after_the_timeout() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let mut p = Pair::start(&["--reconnect-timeout=2"]);
    std::fs::write(p.src().join("a.txt"), b"a").unwrap();
    assert_eq!(std::fs::read(p.mnt().join("a.txt")).unwrap(), b"a");
    p.kill_host();
    let mnt = p.mnt();
    let probe = std::thread::spawn(move || std::fs::metadata(mnt.join("never-seen")));
    assert!(
        wait_until(Duration::from_secs(60), || probe.is_finished()),
        "the request was held past the timeout"
    );
    let err = probe.join().unwrap().expect_err("no server, no answer");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        p.agent_log().contains("has not come back within 2 s"),
        "the agent says why:\n{}",
        p.agent_log()
    );
    // The mount stays; new requests fail at once with EIO.
    assert!(crate::harness::is_ferry_mount(&p.mnt()));
    let err = std::fs::metadata(p.mnt().join("other")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // A server that comes back later is still resumed.
    p.restart_host();
    p.wait_resumed(1);
    std::fs::write(p.src().join("b.txt"), b"b").unwrap();
    assert_eq!(std::fs::read(p.mnt().join("b.txt")).unwrap(), b"b");
    assert_eq!(std::fs::read(p.mnt().join("a.txt")).unwrap(), b"a");
}

#[test]
fn a_dead_agent_fails_fast_and_the_next_one_mounts_again() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let mut p = Pair::start(&[]);
    std::fs::write(p.src().join("a.txt"), b"a").unwrap();
    assert_eq!(std::fs::read(p.mnt().join("a.txt")).unwrap(), b"a");
    let mut a = p.agent.take().unwrap();
    a.kill().unwrap();
    a.wait().unwrap();
    // The kernel ends the FUSE connection with the agent's /dev/fuse descriptor: requests
    // fail with ENOTCONN instead of hanging.
    let mnt = p.mnt();
    let probe = std::thread::spawn(move || std::fs::read(mnt.join("a.txt")));
    assert!(
        wait_until(Duration::from_secs(20), || probe.is_finished()),
        "a read on a dead agent's mount hangs"
    );
    let err = probe.join().unwrap().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    // The next agent on the same mount point clears the dead mount and mounts again (the
    // dead mount is still listed until then, so wait for the file rather than the mount).
    p.start_agent(&[]);
    let mnt = p.mnt();
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read(mnt.join("a.txt"))
            .is_ok_and(|b| b == b"a")),
        "the new agent did not mount:\n{}",
        p.agent_log()
    );
    assert!(p.agent.as_mut().unwrap().try_wait().unwrap().is_none());
    assert!(
        p.agent_log().contains("a dead FUSE mount is left here"),
        "{}",
        p.agent_log()
    );
}

/// `flock(LOCK_EX | LOCK_NB)` on `path` by this (host) process: whether it was granted.
fn host_flock(path: &Path) -> Option<File> {
    use std::os::fd::AsRawFd;
    let f = File::open(path).unwrap();
    // SAFETY: flock on a descriptor this function owns.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (r == 0).then_some(f)
}

#[test]
fn locks_are_taken_again_and_a_lost_one_is_reported() {
    if !require(&[Need::Fuse]) {
        return;
    }
    use std::os::fd::AsRawFd;
    let mut p = Pair::start(&[]);
    std::fs::write(p.src().join("kept"), b"k").unwrap();
    std::fs::write(p.src().join("taken"), b"t").unwrap();
    let kept = File::open(p.mnt().join("kept")).unwrap();
    let taken = File::open(p.mnt().join("taken")).unwrap();
    for f in [&kept, &taken] {
        // SAFETY: flock on descriptors the test owns.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(r, 0, "the guest locks its file");
    }
    assert!(
        host_flock(&p.src().join("kept")).is_none(),
        "held on the host"
    );

    p.kill_host();
    // The server's death released the host locks; a host process takes one meanwhile.
    let thief = host_flock(&p.src().join("taken")).expect("free while the server is away");
    p.restart_host();
    p.wait_resumed(1);
    assert!(
        host_flock(&p.src().join("kept")).is_none(),
        "the guest's lock is held on the host again after the restart"
    );
    assert!(
        p.agent_log().contains("LOCK LOST"),
        "a lock that could not be taken again is reported:\n{}",
        p.agent_log()
    );
    drop(thief);
    drop(kept);
    drop(taken);
    assert!(
        wait_until(Duration::from_secs(20), || host_flock(
            &p.src().join("kept")
        )
        .is_some()),
        "closing the guest's file releases the lock taken again"
    );
}

/// A proxy between the agent and ferry-host that can hold back the changing requests of its
/// current connection (they never reach the server) or swallow their replies (the server
/// applies them, the agent never hears), then cut the connection: the two fates of a request
/// in flight when a server dies, made on purpose.
struct Proxy {
    current: Current,
}

/// The proxy's current connection (its agent side) and that connection's mode.
type Current = std::sync::Arc<std::sync::Mutex<Option<(UnixStream, std::sync::Arc<AtomicU8>)>>>;

const PASS: u8 = 0;
const HOLD_REQUESTS: u8 = 1;
const SWALLOW_REPLIES: u8 = 2;

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU8, Ordering};

fn changing(op: u16) -> bool {
    use ferry_protocol::Opcode as O;
    O::from_u16(op).is_some_and(|o| {
        matches!(
            o,
            O::Mkdir
                | O::Mknod
                | O::Symlink
                | O::Link
                | O::Create
                | O::Unlink
                | O::Rmdir
                | O::Rename
                | O::Write
        )
    })
}

/// Copies whole frames from `from` to `to`, leaving out those `skip` names.
fn pump(
    mut from: UnixStream,
    mut to: UnixStream,
    skip: impl Fn(&ferry_protocol::FrameHeader) -> bool,
) {
    let mut head = [0u8; ferry_protocol::HEADER_LEN];
    while from.read_exact(&mut head).is_ok() {
        let Ok(h) = ferry_protocol::FrameHeader::parse(&head) else {
            return;
        };
        let mut rest = vec![0; h.len as usize - head.len()];
        if from.read_exact(&mut rest).is_err() {
            return;
        }
        if skip(&h) {
            continue;
        }
        if to
            .write_all(&head)
            .and_then(|()| to.write_all(&rest))
            .is_err()
        {
            return;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl Proxy {
    fn start(listen: &Path, upstream: PathBuf) -> Proxy {
        let listener = UnixListener::bind(listen).unwrap();
        let current = std::sync::Arc::new(std::sync::Mutex::new(None));
        let cur = current.clone();
        std::thread::spawn(move || {
            for agent in listener.incoming() {
                let Ok(agent) = agent else { return };
                let Ok(server) = UnixStream::connect(&upstream) else {
                    continue;
                };
                let mode = std::sync::Arc::new(AtomicU8::new(PASS));
                *cur.lock().unwrap() = Some((agent.try_clone().unwrap(), mode.clone()));
                let (a2, s2) = (agent.try_clone().unwrap(), server.try_clone().unwrap());
                let m2 = mode.clone();
                std::thread::spawn(move || {
                    pump(agent, server, move |h| {
                        h.kind == ferry_protocol::FrameKind::Request
                            && m2.load(Ordering::SeqCst) == HOLD_REQUESTS
                            && changing(h.op)
                    })
                });
                std::thread::spawn(move || {
                    pump(s2, a2, move |h| {
                        h.kind == ferry_protocol::FrameKind::Reply
                            && mode.load(Ordering::SeqCst) == SWALLOW_REPLIES
                            && changing(h.op)
                    })
                });
            }
        });
        Proxy { current }
    }

    fn set(&self, mode: u8) {
        let cur = self.current.lock().unwrap();
        cur.as_ref()
            .expect("a connection")
            .1
            .store(mode, Ordering::SeqCst);
    }

    /// Cuts the current connection, as a server's death does.
    fn cut(&self) {
        if let Some((s, _)) = self.current.lock().unwrap().take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Runs each named operation on a thread of its own.
type Op = Box<dyn FnOnce(&Path) -> std::io::Result<()> + Send>;

fn spawn_ops(
    mnt: &Path,
    ops: Vec<(&'static str, Op)>,
) -> Vec<(&'static str, std::thread::JoinHandle<std::io::Result<()>>)> {
    ops.into_iter()
        .map(|(what, op)| {
            let m = mnt.to_path_buf();
            (what, std::thread::spawn(move || op(&m)))
        })
        .collect()
}

/// One changing operation of each kind, each in a directory of its own (the kernel runs one
/// change at a time per directory). `prefix` names the directories.
fn changes(prefix: &'static str) -> Vec<(&'static str, Op)> {
    let n = move |m: &Path, op: &str, s: &str| m.join(format!("{prefix}{op}")).join(s);
    vec![
        (
            "mkdir",
            Box::new(move |m| std::fs::create_dir(n(m, "mkdir", "dir"))),
        ),
        (
            "create",
            Box::new(move |m| File::create(n(m, "create", "file"))?.write_all(b"guest")),
        ),
        (
            "unlink",
            Box::new(move |m| std::fs::remove_file(n(m, "unlink", "un"))),
        ),
        (
            "rmdir",
            Box::new(move |m| std::fs::remove_dir(n(m, "rmdir", "rd"))),
        ),
        (
            "rename",
            Box::new(move |m| std::fs::rename(n(m, "rename", "mv"), n(m, "rename", "mv2"))),
        ),
        (
            "symlink",
            Box::new(move |m| std::os::unix::fs::symlink("target", n(m, "symlink", "ln"))),
        ),
        (
            "link",
            Box::new(move |m| std::fs::hard_link(n(m, "link", "hl"), n(m, "link", "hl2"))),
        ),
    ]
}

/// Whether every change of [`changes`] with `prefix` is on the host.
fn changed(src: &Path, prefix: &str) -> bool {
    let p = |op: &str, s: &str| src.join(format!("{prefix}{op}")).join(s);
    p("mkdir", "dir").is_dir()
        && std::fs::read(p("create", "file")).is_ok_and(|b| b == b"guest")
        && !p("unlink", "un").exists()
        && !p("rmdir", "rd").exists()
        && !p("rename", "mv").exists()
        && std::fs::read(p("rename", "mv2")).is_ok_and(|b| b == b"mv")
        && std::fs::read_link(p("symlink", "ln")).is_ok_and(|t| t == Path::new("target"))
        && std::fs::read(p("link", "hl2")).is_ok_and(|b| b == b"hl")
}

#[test]
#[ignore = "hangs in about one run in two in its second phase (requests held back, then \
            the cut): an open bug in the resume under investigation, see the reconnect notes"]
fn requests_in_flight_when_the_connection_drops_are_applied_once() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    for pre in ["a_", "b_"] {
        for op in [
            "mkdir", "create", "unlink", "rmdir", "rename", "symlink", "link",
        ] {
            std::fs::create_dir(src.join(format!("{pre}{op}"))).unwrap();
        }
        std::fs::write(src.join(format!("{pre}unlink/un")), "un").unwrap();
        std::fs::create_dir(src.join(format!("{pre}rmdir/rd"))).unwrap();
        std::fs::write(src.join(format!("{pre}rename/mv")), "mv").unwrap();
        std::fs::write(src.join(format!("{pre}link/hl")), "hl").unwrap();
    }
    std::fs::write(src.join("log.txt"), "0\n").unwrap();
    let sock = dir.path().join("sock");
    let host = host_command(&src, &format!("unix:{}", sock.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || sock.exists()));
    let proxy = Proxy::start(&dir.path().join("proxy"), sock.clone());
    let log_path = dir.path().join("agent.log");
    let mut agent = agent_command(&[
        format!("--connect=unix:{}", dir.path().join("proxy").display()),
        format!("--mount=ex={}", mnt.display()),
    ])
    .env("RUST_LOG", "info")
    .stderr(Stdio::from(File::create(&log_path).unwrap()))
    .spawn()
    .unwrap();
    wait_mounted(&mnt, &mut agent);
    struct Reap(Child, Child, PathBuf);
    impl Drop for Reap {
        fn drop(&mut self) {
            for c in [&mut self.0, &mut self.1] {
                let _ = c.kill();
                crate::harness::abort_fuse(&self.2);
                let _ = c.wait();
            }
            lazy_unmount(&self.2);
        }
    }
    let _reap = Reap(agent, host, mnt.clone());
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut log = OpenOptions::new()
        .append(true)
        .open(mnt.join("log.txt"))
        .unwrap();

    // A: the server applies every change, the agent never hears back.
    proxy.set(SWALLOW_REPLIES);
    let a = spawn_ops(&mnt, changes("a_"));
    let mut log2 = log.try_clone().unwrap();
    let a_append = std::thread::spawn(move || log2.write_all(b"1\n"));
    assert!(
        wait_until(Duration::from_secs(30), || {
            src.join("a_mkdir/dir").is_dir()
                && src.join("a_create/file").exists()
                && !src.join("a_unlink/un").exists()
                && !src.join("a_rmdir/rd").exists()
                && src.join("a_rename/mv2").exists()
                && src.join("a_symlink/ln").is_symlink()
                && src.join("a_link/hl2").exists()
                && std::fs::read_to_string(src.join("log.txt")).unwrap() == "0\n1\n"
        }),
        "the server did not apply the changes"
    );
    proxy.cut();
    for (what, t) in a {
        let r = t.join().unwrap();
        assert!(
            r.is_ok(),
            "{what} applied before the drop: {r:?}\n{}",
            agent_log()
        );
    }
    let err = a_append
        .join()
        .unwrap()
        .expect_err("an append whose fate is unknown fails");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

    // B: the changes never reach the server.
    let waiting = crate::harness::fuse_connection(&mnt)
        .unwrap()
        .join("waiting");
    let waiting_now = || -> usize {
        std::fs::read_to_string(&waiting)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(30), || agent_log()
        .contains("resumed on the new connection")));
    proxy.set(HOLD_REQUESTS);
    let b = spawn_ops(&mnt, changes("b_"));
    let b_append = std::thread::spawn(move || log.write_all(b"2\n"));
    assert!(
        wait_until(Duration::from_secs(30), || waiting_now() >= 8),
        "the requests did not all reach the agent"
    );
    std::thread::sleep(Duration::from_millis(300));
    proxy.cut();
    for (what, t) in b {
        let r = t.join().unwrap();
        assert!(r.is_ok(), "{what} sent again: {r:?}\n{}", agent_log());
    }
    let err = b_append
        .join()
        .unwrap()
        .expect_err("an append whose fate is unknown fails");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

    // Each change is on the host exactly once.
    for pre in ["a_", "b_"] {
        assert!(changed(&src, pre), "{pre}: {}", agent_log());
    }
    assert_eq!(
        std::fs::read_to_string(src.join("log.txt")).unwrap(),
        "0\n1\n",
        "the applied append is there once, the held one not at all"
    );
}
