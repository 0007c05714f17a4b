//! Authentication and confinement of clients: a token on every listener unless the operator
//! says `--no-auth`, socket files 0600 from the start, and per-export allow-lists that hide
//! exports from the clients they do not name.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use ferry_protocol::*;

use crate::attacks::{HostProc, read_frame};
use crate::harness::{agent_command, host_command, stderr_of, terminate, wait_exit, wait_until};

/// Says Hello with `token` on a new connection to `sock`; the server's answer.
pub(crate) fn hello(sock: &Path, token: Option<&str>) -> Result<Welcome, Refused> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    Hello {
        version: VERSION,
        features: features::ALL,
        token: token.map(str::as_bytes),
        client: "auth test",
    }
    .encode(&mut out)
    .unwrap();
    s.write_all(&out).unwrap();
    let buf = read_frame(&mut s).expect("an answer to the Hello");
    let frame = Frame::parse(&buf).unwrap();
    match frame.header.kind {
        FrameKind::Welcome => Ok(Welcome::decode(&frame).unwrap()),
        _ => Err(Refused::decode(&frame).unwrap()),
    }
}

pub(crate) fn names(w: &Welcome) -> Vec<String> {
    w.exports.iter().map(|e| e.name.clone()).collect()
}

/// Kills the server if a test fails before it stops it.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `path` is a socket file.
fn wait_socket(path: &Path, child: &mut Child) {
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
                || child.try_wait().unwrap().is_some()
        }) && child.try_wait().unwrap().is_none(),
        "ferry-host did not listen on {}:\n{}",
        path.display(),
        stderr_of(child)
    );
}

#[test]
fn a_server_without_a_token_does_not_start_unless_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let mut h = host_command(dir.path(), &format!("unix:{}", sock.display()));
    h.env_remove("FERRY_TOKEN");
    let mut h = h.spawn().unwrap();
    let status = wait_exit(&mut h, Duration::from_secs(20), "ferry-host");
    let err = stderr_of(&mut h);
    assert!(!status.success(), "a server open to anyone started:\n{err}");
    assert!(
        err.contains("--token-file") && err.contains("--no-auth"),
        "the error says how to give a token or opt out:\n{err}"
    );

    // --no-auth is the operator's explicit choice, and it is logged as a warning.
    let mut h = host_command(dir.path(), &format!("unix:{}", sock.display()));
    h.env_remove("FERRY_TOKEN")
        .env("RUST_LOG", "info")
        .arg("--no-auth");
    let mut h = h.spawn().unwrap();
    wait_socket(&sock, &mut h);
    assert!(
        hello(&sock, None).is_ok(),
        "--no-auth accepts a client without a token"
    );
    terminate(&mut h);
    let log = stderr_of(&mut h);
    assert!(log.contains("WARN") && log.contains("--no-auth"), "{log}");
}

#[test]
fn unix_and_hybrid_vsock_clients_without_a_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("ex");
    std::fs::create_dir(&export).unwrap();
    let unix = dir.path().join("ferry.sock");
    let uds = dir.path().join("v.sock");
    let hybrid = dir.path().join("v.sock_1024");
    let log = dir.path().join("host.log");
    let mut h = Reaped(
        host_command(&export, &format!("unix:{}", unix.display()))
            .arg("--listen")
            .arg(format!("hybrid-vsock:{}:1024", uds.display()))
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || hybrid.exists() && unix.exists()),
        "ferry-host did not listen:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The agent, as a guest would run it, without the token: a clear error, exit non-zero.
    let mnt = tempfile::tempdir().unwrap();
    let mut a = agent_command(&[
        "--connect".to_string(),
        format!("unix:{}", unix.display()),
        "--mount".to_string(),
        format!("ex={}", mnt.path().display()),
    ]);
    a.env_remove("FERRY_TOKEN");
    let mut a = a.spawn().unwrap();
    let status = wait_exit(&mut a, Duration::from_secs(30), "ferry-agent");
    let err = stderr_of(&mut a);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("requires a token"),
        "the agent says why:\n{err}"
    );
    // A guest's connection through the VMM's hybrid vsock socket, without and with a wrong
    // token; the right one is let in.
    let refused = hello(&hybrid, None).expect_err("no token on hybrid vsock");
    assert!(refused.reason.contains("requires a token"), "{refused:?}");
    let refused = hello(&hybrid, Some("guess")).expect_err("a wrong token");
    assert!(refused.reason.contains("wrong token"), "{refused:?}");
    let welcome = hello(&hybrid, Some(crate::harness::TOKEN)).expect("the token lets it in");
    assert_eq!(names(&welcome), ["ex"]);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.matches("refusing connection").count() >= 3,
        "each refusal is logged:\n{log_text}"
    );
    assert!(terminate(&mut h.0).success());
}

#[test]
fn socket_files_are_0600_or_the_mode_given() {
    let dir = tempfile::tempdir().unwrap();
    let unix = dir.path().join("u.sock");
    let uds = dir.path().join("v.sock");
    let vfs = dir.path().join("vfs.sock");
    let mut h = Reaped(
        host_command(dir.path(), &format!("unix:{}", unix.display()))
            .arg("--listen")
            .arg(format!("hybrid-vsock:{}:7", uds.display()))
            .arg("--listen")
            .arg(format!("vhost-user-fs:{}:ex", vfs.display()))
            .spawn()
            .unwrap(),
    );
    let hybrid = dir.path().join("v.sock_7");
    for s in [&unix, &hybrid, &vfs] {
        wait_socket(s, &mut h.0);
        let mode = std::fs::metadata(s).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", s.display());
    }
    terminate(&mut h.0);
    // No private directory is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".ferry"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let mut h = Reaped(
        host_command(dir.path(), &format!("unix:{}", unix.display()))
            .args(["--socket-mode", "660"])
            .spawn()
            .unwrap(),
    );
    wait_socket(&unix, &mut h.0);
    let mode = std::fs::metadata(&unix).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660);
    terminate(&mut h.0);
}

#[test]
fn allow_lists_hide_exports_from_other_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let mk = |n: &str| {
        let p = tmp.path().join(n);
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("f"), n).unwrap();
        p
    };
    let ci_token = tmp.path().join("ci-token");
    std::fs::write(&ci_token, "ci-secret\n").unwrap();
    // SAFETY: plain getter.
    let me = unsafe { libc::geteuid() };
    let host = HostProc::start_with(
        &[
            format!("mine={}:allow=uid:{me}", mk("mine").display()),
            format!("theirs={}:ro:allow=uid:{}", mk("theirs").display(), me + 1),
            format!("ci={}:allow=token:ci,cid:3", mk("ci").display()),
        ],
        &["--client-token", &format!("ci={}", ci_token.display())],
    );
    // The default token, from this uid: the open export and the one for this uid.
    let w = hello(&host.sock, Some(crate::harness::TOKEN)).unwrap();
    assert_eq!(names(&w), ["ex", "mine"]);
    // The ci token: also the export it names.
    let w = hello(&host.sock, Some("ci-secret")).unwrap();
    assert_eq!(names(&w), ["ex", "mine", "ci"]);
    // A hidden export cannot be used by guessing its id either.
    let mut raw = crate::attacks::Raw::connect(&host.sock);
    for hidden in [2u32, 3] {
        let mut v = Vec::new();
        RequestFrame {
            id: 77,
            export: hidden,
            ctx: Ctx::default(),
            body: Request::Lookup(Lookup {
                parent: 1,
                name: b"f",
            }),
            payload: &[],
        }
        .encode(&mut v)
        .unwrap();
        raw.s.write_all(&v).unwrap();
        let buf = read_frame(&mut raw.s).unwrap();
        let r = ReplyFrame::decode(&Frame::parse(&buf).unwrap()).unwrap();
        assert_eq!(r.result.err(), Some(Errno::ENODEV), "export {hidden}");
    }
    // The agent cannot mount an export hidden from it.
    let mnt = tempfile::tempdir().unwrap();
    let mut a = agent_command(&[
        "--connect".to_string(),
        format!("unix:{}", host.sock.display()),
        "--mount".to_string(),
        format!("theirs={}", mnt.path().display()),
    ])
    .spawn()
    .unwrap();
    let status = wait_exit(&mut a, Duration::from_secs(30), "ferry-agent");
    let err = stderr_of(&mut a);
    assert!(!status.success() && err.contains("theirs"), "{err}");
    let log = host.log();
    assert!(log.contains("export allow-list"), "{log}");
    assert!(host.stop().success());
}
