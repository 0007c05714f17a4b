//! Hostile clients against the server's bounds: a handshake that never completes, a Hello
//! that announces megabytes, more connections than the caps allow. Each is refused with a log
//! line, costs the server next to nothing, and everyone else keeps being served.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ferry_protocol::*;

use crate::attacks::{HostProc, Raw};
use crate::harness::wait_until;

/// A value from /proc/PID/status, in kB for the memory lines.
fn proc_status(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// A frame header announcing a `len`-byte Hello.
fn hello_header(len: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&len.to_le_bytes());
    h.push(FrameKind::Hello as u8);
    h.push(0);
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&(len - HEADER_LEN as u32).to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// Whether the server has closed `s` (EOF or reset), without waiting.
fn is_closed(s: &mut UnixStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    let closed = match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn many_huge_hello_headers_cost_no_memory() {
    let host = HostProc::start_with(
        &[],
        &["--max-unauthenticated", "1000", "--max-connections", "1000"],
    );
    // Let the server settle, then measure.
    let _ = Raw::connect(&host.sock);
    let before = proc_status(host.pid(), "VmRSS");
    let mut conns: Vec<UnixStream> = (0..200)
        .map(|_| {
            let mut s = UnixStream::connect(&host.sock).unwrap();
            s.write_all(&hello_header(MAX_FRAME)).unwrap();
            s
        })
        .collect();
    // Each is refused from its header alone; a server that allocates the announced frame and
    // waits for the rest keeps them all open.
    let all_closed = wait_until(Duration::from_secs(10), || conns.iter_mut().all(is_closed));
    let after = proc_status(host.pid(), "VmRSS");
    let grown_kib = after.saturating_sub(before);
    eprintln!("200 oversized Hellos: server RSS {before} KiB -> {after} KiB");
    assert!(
        grown_kib < 6 * 1024,
        "200 connections announcing {MAX_FRAME}-byte Hellos grew the server by {grown_kib} KiB \
         (before {before} KiB, after {after} KiB)"
    );
    assert!(all_closed, "the server keeps oversized Hellos open");
    let log = host.log();
    assert!(
        log.contains("before the handshake"),
        "server log names the oversized Hello:\n{log}"
    );
    // It still serves a well-behaved client.
    let mut good = Raw::connect(&host.sock);
    assert!(good.lookup(1, b"missing").is_err());
    assert!(host.stop().success());
}

#[test]
fn a_slow_hello_is_closed_at_the_deadline() {
    let host = HostProc::start_with(&[], &["--handshake-timeout", "2"]);
    let mut hello = Vec::new();
    Hello {
        version: VERSION,
        features: 0,
        token: None,
        client: "one byte at a time",
    }
    .encode(&mut hello)
    .unwrap();
    let mut s = UnixStream::connect(&host.sock).unwrap();
    let start = Instant::now();
    // One byte every 300 ms: each read is quick, the whole Hello never comes.
    let mut closed_after = None;
    for b in hello.iter().take(hello.len() - 1) {
        if s.write_all(&[*b]).is_err() || is_closed(&mut s) {
            closed_after = Some(start.elapsed());
            break;
        }
        if start.elapsed() > Duration::from_secs(15) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let closed_after = closed_after.expect("the server kept a trickling Hello open past 15 s");
    assert!(
        closed_after >= Duration::from_millis(1900) && closed_after < Duration::from_secs(10),
        "closed after {closed_after:?}, the deadline was 2 s"
    );
    let log = host.log();
    assert!(
        log.contains("handshake deadline"),
        "server log names the deadline:\n{log}"
    );
    assert!(Raw::connect(&host.sock).lookup(1, b"x").is_err());
    assert!(host.stop().success());
}

#[test]
fn connections_beyond_the_caps_are_closed_and_logged() {
    let host = HostProc::start_with(
        &[],
        // A handshake deadline far beyond the test's length: the idle connections must stay
        // open because they are admitted, not because the deadline has not come yet.
        &[
            "--max-unauthenticated",
            "3",
            "--max-connections",
            "5",
            "--handshake-timeout",
            "600",
        ],
    );
    // HostProc::start waits for the server's log, not a probe connection: no connection
    // holds a slot before the ones below.
    // Three connections that never say Hello fill the handshake slots.
    let mut idle: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(&host.sock).unwrap())
        .collect();
    let mut extra = UnixStream::connect(&host.sock).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 8];
    assert!(
        matches!(extra.read(&mut b), Ok(0) | Err(_)),
        "a fourth unauthenticated connection is closed"
    );
    assert!(
        host.log().contains("--max-unauthenticated"),
        "refusal logged:\n{}",
        host.log()
    );
    for s in &mut idle {
        assert!(
            !is_closed(s),
            "the admitted ones stay open:\n{}",
            host.log()
        );
    }
    drop(idle);
    // Five authenticated clients fill the connection slots; a sixth is turned away, and once
    // one leaves a newcomer gets in.
    let mut clients: Vec<Raw> = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            if let Ok(c) = std::panic::catch_unwind(|| Raw::connect(&host.sock)) {
                clients.push(c);
            }
            clients.len() == 5
        }),
        "five clients connect once the idle ones are gone"
    );
    let mut sixth = UnixStream::connect(&host.sock).unwrap();
    sixth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        matches!(sixth.read(&mut b), Ok(0) | Err(_)),
        "a sixth connection is closed"
    );
    assert!(
        host.log().contains("--max-connections"),
        "refusal logged:\n{}",
        host.log()
    );
    for c in &mut clients {
        assert!(c.lookup(1, b"x").is_err(), "admitted clients are served");
    }
    clients.pop();
    assert!(
        wait_until(Duration::from_secs(10), || std::panic::catch_unwind(|| {
            Raw::connect(&host.sock)
        })
        .is_ok()),
        "a slot freed is a slot to use"
    );
    assert!(host.stop().success());
}

/// Sends a request without waiting for its reply.
fn send_request(s: &mut UnixStream, id: u64, export: u32, body: Request<'_>) {
    let mut v = Vec::new();
    RequestFrame {
        id,
        export,
        ctx: Ctx::default(),
        body,
        payload: &[],
    }
    .encode(&mut v)
    .unwrap();
    s.write_all(&v).unwrap();
}

/// Reads one reply: its id and result.
fn read_reply(s: &mut UnixStream) -> (u64, Result<(), Errno>) {
    let buf = crate::attacks::read_frame(s).expect("a reply");
    let r = ReplyFrame::decode(&Frame::parse(&buf).unwrap()).unwrap();
    (r.id, r.result.map(drop))
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

fn open_fh(raw: &mut Raw, ino: u64) -> Result<u64, Errno> {
    match raw.call(
        Request::Open(Open {
            ino,
            flags: libc::O_RDWR,
            prefetch: 0,
        }),
        &[],
    )? {
        crate::attacks::Got::Opened(fh) => Ok(fh),
        other => panic!("open answered {other:?}"),
    }
}

#[test]
fn a_thousand_blocked_locks_keep_the_thread_count_flat() {
    let host = HostProc::start_with(&[], &["--max-lock-waiters", "1000"]);
    let path = host.export().join("db");
    std::fs::write(&path, b"data").unwrap();
    // A host process (this one) holds a write lock on the whole file.
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let whole = |typ: i32| libc::flock {
        l_type: typ as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: a plain fcntl lock on a descriptor this test owns.
    let r = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&held),
            libc::F_SETLK,
            &whole(libc::F_WRLCK),
        )
    };
    assert_eq!(r, 0, "the host lock");

    let mut raw = Raw::connect(&host.sock);
    let ino = raw.lookup(1, b"db").unwrap().ino;
    let fh = open_fh(&mut raw, ino).unwrap();
    let before = threads_of(host.pid());
    let lock = Lock {
        start: 0,
        end: u64::MAX,
        typ: libc::F_WRLCK,
        pid: 42,
    };
    // 1,000 guest processes block on the lock, and one more than the cap allows.
    for i in 0..1001u64 {
        send_request(
            &mut raw.s,
            10_000 + i,
            0,
            Request::Setlk(Setlk {
                ino,
                fh,
                owner: 1 + i,
                lock,
                sleep: true,
            }),
        );
    }
    // The one beyond the cap is answered at once.
    let (id, result) = read_reply(&mut raw.s);
    assert_eq!(result, Err(Errno::ENOLCK), "request {id}");
    // Give a thread-per-lock server time to show itself, then count.
    let grew = wait_until(Duration::from_secs(3), || {
        threads_of(host.pid()) > before + 10
    });
    let after = threads_of(host.pid());
    eprintln!("1,000 waiting locks: server threads {before} -> {after}");
    assert!(
        !grew,
        "1,000 waiting locks took the server from {before} to {after} threads"
    );
    assert!(host.log().contains("--max-lock-waiters"), "{}", host.log());

    // Unlocked on the host: one guest owner gets it, the others keep waiting; each unlock
    // (and the final close) passes it on, and every waiter is answered.
    // SAFETY: as above.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&held),
            libc::F_SETLK,
            &whole(libc::F_UNLCK),
        )
    };
    raw.s
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let (mut granted, mut unlocked) = (0, 0);
    while granted < 1000 || unlocked < granted {
        let (id, result) = read_reply(&mut raw.s);
        assert_eq!(result, Ok(()), "request {id}");
        if id >= 50_000 {
            unlocked += 1;
            continue;
        }
        granted += 1;
        let owner = 1 + (id - 10_000);
        send_request(
            &mut raw.s,
            50_000 + owner,
            0,
            Request::Setlk(Setlk {
                ino,
                fh,
                owner,
                lock: Lock {
                    typ: libc::F_UNLCK,
                    ..lock
                },
                sleep: false,
            }),
        );
    }
    assert!(threads_of(host.pid()) <= before + 2);
    assert!(host.stop().success());
}

#[test]
fn exhausting_a_sessions_handles_answers_emfile_and_others_go_on() {
    let host = HostProc::start_with(&[], &["--max-handles", "50"]);
    std::fs::write(host.export().join("f"), b"x").unwrap();
    let mut greedy = Raw::connect(&host.sock);
    let ino = greedy.lookup(1, b"f").unwrap().ino;
    for i in 0..50 {
        open_fh(&mut greedy, ino).unwrap_or_else(|e| panic!("open {i}: {e:?}"));
    }
    assert_eq!(open_fh(&mut greedy, ino), Err(Errno::EMFILE));
    assert!(
        greedy
            .call(Request::Opendir(Opendir { ino: 1, flags: 0 }), &[])
            .is_err_and(|e| e == Errno::EMFILE)
    );
    assert!(host.log().contains("--max-handles"), "{}", host.log());
    // Another guest, already connected or new, opens as usual.
    let mut other = Raw::connect(&host.sock);
    let ino2 = other.lookup(1, b"f").unwrap().ino;
    open_fh(&mut other, ino2).unwrap();
    // The greedy one gets room back by closing.
    let fh = 1;
    let _ = greedy.call(
        Request::Release(Release {
            ino,
            fh,
            flags: 0,
            lock_owner: None,
            flush: false,
        }),
        &[],
    );
    open_fh(&mut greedy, ino).unwrap();
    assert!(host.stop().success());
}

/// Lowers the server's soft RLIMIT_NOFILE to `n` (as `prlimit --nofile` would) and returns
/// the old limits, which its user may always restore.
fn set_nofile(pid: u32, n: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with no new limit fills `old`.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: n,
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit reads `new`; lowering a soft limit needs no privilege over one's own
    // child.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    old
}

fn restore_nofile(pid: u32, old: libc::rlimit) {
    // SAFETY: as in set_nofile.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &old, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The `n`th (from 1) lowest descriptor number the process has free: where its `n`th next
/// descriptor will go.
fn nth_free_fd(pid: u32, n: usize) -> u64 {
    let used: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).filter(|fd| !used.contains(fd)).nth(n - 1).unwrap()
}

/// The descriptors the process has open.
fn open_fds(pid: u32) -> std::collections::BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Waits (generously) until the process holds exactly the descriptors of `baseline` again: a
/// dropped connection's thread closes its descriptors after the client has seen the drop.
fn wait_for_fds(pid: u32, baseline: &std::collections::BTreeSet<u64>, log: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while open_fds(pid) != *baseline {
        assert!(
            std::time::Instant::now() < deadline,
            "the server still holds {:?}, not {baseline:?}\n{}",
            open_fds(pid),
            log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_session_that_cannot_start_is_refused_and_the_listener_serves_on() {
    let host = HostProc::start(&[]);
    let mut first = Raw::connect(&host.sock);
    // Room for the accepted socket and what the connection needs before its session (its
    // writer's duplicate, and whatever else this build takes), none for the session's: the
    // exact count depends on the build, so the limit is raised one descriptor at a time until
    // the session is the first thing that cannot get one. A connection that dies before then
    // is dropped; the one the test is after must be answered, never dropped.
    let pid = host.pid();
    // The first client's connection is served and idle: what the server holds now it holds
    // for the rest of the test, and each attempt below starts from exactly that (a dropped
    // attempt's descriptors are closed by its thread a moment after the client sees the drop,
    // and counting free descriptors before then would leave the next attempt too much room).
    assert!(first.lookup(1, b"nothing").is_err());
    let baseline = open_fds(pid);
    let mut refused = None;
    let mut tries = Vec::new();
    // Other threads of the server may take a descriptor at the wrong moment (a listener that
    // failed an accept retries it 100 ms later, and then accepts the attempt this test already
    // gave up on): an attempt that is dropped or welcomed says nothing, so the scan is made
    // again, and only a refusal ends it.
    'rounds: for _round in 0..10 {
        for room in 2..=8 {
            // Let a listener that failed an accept retry it, and that late connection end.
            std::thread::sleep(Duration::from_millis(250));
            wait_for_fds(pid, &baseline, || host.log());
            let old = set_nofile(pid, nth_free_fd(pid, room));
            let mut s = UnixStream::connect(&host.sock).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut out = Vec::new();
            Hello {
                version: VERSION,
                features: 0,
                token: Some(crate::harness::TOKEN.as_bytes()),
                client: "starved",
            }
            .encode(&mut out)
            .unwrap();
            let _ = s.write_all(&out);
            let answer = crate::attacks::read_frame(&mut s);
            restore_nofile(pid, old);
            drop(s);
            let Some(buf) = answer else {
                tries.push(format!("room {room}: dropped"));
                continue;
            };
            let frame = Frame::parse(&buf).unwrap();
            if frame.header.kind == FrameKind::Welcome {
                tries.push(format!("room {room}: welcomed"));
                continue 'rounds;
            }
            assert_eq!(frame.header.kind, FrameKind::Refused, "{:?}", frame.header);
            refused = Some(Refused::decode(&frame).unwrap().reason.to_string());
            break 'rounds;
        }
    }
    let refused = refused.unwrap_or_else(|| {
        panic!(
            "a starved session is answered Refused, not dropped: {tries:?}\n{}",
            host.log()
        )
    });
    assert!(refused.contains("cannot start a session"), "{refused:?}");
    assert!(
        host.log().contains("cannot start a session"),
        "{}",
        host.log()
    );
    // The first client and the listener are fine.
    assert!(first.lookup(1, b"nothing").is_err());
    let mut again = Raw::connect(&host.sock);
    assert!(again.lookup(1, b"nothing").is_err());
    assert!(host.stop().success());
}

/// A vhost-user frontend's GET_FEATURES on a new connection to `sock`: the connection, if the
/// backend answered.
fn vhost_user_frontend(sock: &std::path::Path) -> Option<UnixStream> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // request 1 (GET_FEATURES), flags: version 1, size 0.
    let mut msg = Vec::new();
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    s.write_all(&msg).ok()?;
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).ok()?;
    (u32::from_le_bytes(reply[0..4].try_into().unwrap()) == 1).then_some(s)
}

#[test]
fn a_virtiofs_session_that_cannot_start_does_not_end_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = dir.path().join("vfs.sock");
    let log = dir.path().join("host.log");
    let mut child =
        crate::harness::host_command(dir.path(), &format!("vhost-user-fs:{}:ex", vfs.display()))
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
    let pid = child.id();
    let mut frontend = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            frontend = vhost_user_frontend(&vfs);
            frontend.is_some()
        }),
        "the backend answers:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Out of descriptors when this frontend goes: the session for the next frontend (waiting
    // in the listener's backlog) cannot start.
    let old = set_nofile(pid, 3);
    drop(frontend);
    let waiting = UnixStream::connect(&vfs).unwrap();
    let failed = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("cannot start a session")
    });
    restore_nofile(pid, old);
    drop(waiting);
    let served = wait_until(Duration::from_secs(20), || {
        vhost_user_frontend(&vfs).is_some()
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(failed, "the failed session is logged:\n{text}");
    assert!(served, "the listener serves the next frontend:\n{text}");
}

#[test]
fn lock_owners_beyond_the_cap_answer_enolck() {
    let host = HostProc::start_with(&[], &["--max-lock-owners", "10"]);
    std::fs::write(host.export().join("f"), b"0123456789abcdef").unwrap();
    let mut raw = Raw::connect(&host.sock);
    let ino = raw.lookup(1, b"f").unwrap().ino;
    let fh = open_fh(&mut raw, ino).unwrap();
    // Each guest process locks a byte of its own: no conflicts, one owner file each.
    let lock = |owner: u64| {
        Request::Setlk(Setlk {
            ino,
            fh,
            owner,
            lock: Lock {
                start: owner,
                end: owner,
                typ: libc::F_WRLCK,
                pid: owner as u32,
            },
            sleep: false,
        })
    };
    for owner in 0..10 {
        raw.call(lock(owner), &[])
            .unwrap_or_else(|e| panic!("owner {owner}: {e:?}"));
    }
    assert_eq!(raw.call(lock(10), &[]).err(), Some(Errno::ENOLCK));
    assert!(host.log().contains("--max-lock-owners"), "{}", host.log());
    // An owner that already has its file may lock more.
    raw.call(
        Request::Setlk(Setlk {
            ino,
            fh,
            owner: 3,
            lock: Lock {
                start: 12,
                end: 12,
                typ: libc::F_WRLCK,
                pid: 3,
            },
            sleep: false,
        }),
        &[],
    )
    .unwrap();
    assert!(host.stop().success());
}

#[test]
fn change_events_a_guest_does_not_read_are_bounded_in_bytes() {
    let host = HostProc::start_with(&[], &["--max-queued-change-bytes", "65536"]);
    let mut raw = Raw::connect(&host.sock);
    raw.call(Request::Watch(Watch { on: true }), &[]).unwrap();
    // The guest stops reading while the host makes a few MiB of change events: far fewer
    // batches than the old cap of 1,024 batches, far more bytes than the socket holds.
    let long = "n".repeat(200);
    for i in 0..12_000 {
        std::fs::write(host.export().join(format!("{long}{i}")), b"").unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(30), || host
            .log()
            .contains("--max-queued-change-bytes")),
        "the overflow is logged:\n{}",
        host.log()
    );
    // Reading again, the guest finds the overflow among its notices.
    raw.s
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut overflowed = false;
    while !overflowed {
        let buf = crate::attacks::read_frame(&mut raw.s).expect("notices until the overflow");
        let frame = Frame::parse(&buf).unwrap();
        if let Ok(Some(Notice::Changes { changes, .. })) = Notice::decode(&frame) {
            overflowed = changes.iter().any(|c| c.kind == ChangeKind::Overflow);
        }
    }
    assert!(host.stop().success());
}
