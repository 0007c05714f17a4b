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
        &["--max-unauthenticated", "3", "--max-connections", "5"],
    );
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
        assert!(!is_closed(s), "the admitted ones stay open");
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
