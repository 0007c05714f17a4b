//! The binaries as a user runs them: `ferry share`, and `ferry-host` with `ferry-agent` as
//! separate processes over Unix sockets and TCP.

use std::fs;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use crate::attacks::HostProc;
use crate::harness::{
    Need, Share, agent_command, bins, host_command, is_ferry_mount, require, skip_or_fail,
    stderr_of, terminate, wait_exit, wait_mounted, wait_until,
};

/// Starts `ferry-agent` with the given arguments, logging at info level; stderr is piped for
/// inspection.
fn agent(args: &[String]) -> Child {
    agent_command(args).env("RUST_LOG", "info").spawn().unwrap()
}

/// As [`agent`], with stderr going to the file `log`.
fn agent_logging_to(args: &[String], log: &Path) -> Child {
    agent_command(args)
        .env("RUST_LOG", "info")
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// A new directory `ex` in a new temporary directory (which keeps token files and sockets).
fn export_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("ex");
    fs::create_dir(&dir).unwrap();
    (base, dir)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn share_stops_cleanly_on_sigterm_with_files_open() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    fs::write(share.src().join("f"), b"x").unwrap();
    let mnt = share.mnt().to_path_buf();
    let open_file = fs::File::open(mnt.join("f")).unwrap();
    let cwd_holder = fs::read_dir(&mnt).unwrap();
    let status = share.stop();
    assert!(status.success(), "ferry share exited with {status}");
    assert!(!is_ferry_mount(&mnt), "mount still present after exit");
    drop(open_file);
    drop(cwd_holder);
}

#[test]
fn share_read_only_refuses_writes() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start_with(&["--read-only"]);
    fs::write(share.src().join("f"), b"host data").unwrap();
    assert_eq!(fs::read(share.mnt().join("f")).unwrap(), b"host data");
    let e = fs::write(share.mnt().join("g"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = fs::OpenOptions::new()
        .write(true)
        .open(share.mnt().join("f"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert_eq!(fs::read(share.src().join("f")).unwrap(), b"host data");
    assert!(!share.src().join("g").exists());
    assert!(share.stop().success());
}

#[test]
fn separate_processes_several_exports_and_agents() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let docs = tempfile::tempdir().unwrap();
    fs::write(docs.path().join("readme"), b"docs").unwrap();
    let host = HostProc::start(&[format!("docs={}:ro", docs.path().display())]);
    let m1 = tempfile::tempdir().unwrap();
    let m2 = tempfile::tempdir().unwrap();
    let m3 = tempfile::tempdir().unwrap();
    let connect = format!("unix:{}", host.sock.display());
    let mut a1 = agent(&[
        "--connect".into(),
        connect.clone(),
        "--mount".into(),
        format!("ex={}", m1.path().display()),
        "--mount".into(),
        format!("docs={}", m2.path().display()),
    ]);
    wait_mounted(m1.path(), &mut a1);
    wait_mounted(m2.path(), &mut a1);
    let mut a2 = agent(&[
        "--connect".into(),
        connect,
        "--mount".into(),
        format!("ex={}", m3.path().display()),
    ]);
    wait_mounted(m3.path(), &mut a2);

    // One agent writes, the other sees it (after its short attribute timeout at most).
    fs::write(m1.path().join("shared"), b"from agent 1").unwrap();
    assert_eq!(
        fs::read(host.export().join("shared")).unwrap(),
        b"from agent 1"
    );
    assert_eq!(fs::read(m3.path().join("shared")).unwrap(), b"from agent 1");
    assert_eq!(fs::read(m2.path().join("readme")).unwrap(), b"docs");
    let e = fs::write(m2.path().join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));

    for (mut a, mounts) in [(a1, vec![m1.path(), m2.path()]), (a2, vec![m3.path()])] {
        let status = terminate(&mut a);
        assert!(
            status.success(),
            "agent exited with {status}: {}",
            stderr_of(&mut a)
        );
        for m in mounts {
            assert!(!is_ferry_mount(m), "{} still mounted", m.display());
        }
    }
    assert!(host.stop().success());
}

#[test]
fn unknown_export_is_a_clear_error() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let host = HostProc::start(&[]);
    let m = tempfile::tempdir().unwrap();
    let mut a = agent(&[
        "--connect".into(),
        format!("unix:{}", host.sock.display()),
        "--mount".into(),
        format!("nope={}", m.path().display()),
    ]);
    let status = wait_exit(&mut a, Duration::from_secs(20), "ferry-agent");
    assert!(!status.success());
    let err = stderr_of(&mut a);
    assert!(
        err.contains("nope") && err.contains("ex"),
        "error names the export and the choices:\n{err}"
    );
}

fn host_tcp(dir: &Path, port: u16, token: Option<&str>) -> Child {
    let mut cmd = host_command(dir, &format!("tcp:{port}"));
    cmd.env_remove("FERRY_TOKEN");
    if let Some(t) = token {
        let f = dir.parent().unwrap().join(format!("token-{port}"));
        fs::write(&f, format!("{t}\n")).unwrap();
        cmd.arg("--token-file").arg(f);
    }
    cmd.spawn().unwrap()
}

fn wait_listening(port: u16) {
    let listening = wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(listening, "ferry-host did not listen on {port}");
}

#[test]
fn tcp_requires_a_token() {
    let (_base, dir) = export_dir();
    let mut h = host_tcp(&dir, free_port(), None);
    let status = wait_exit(&mut h, Duration::from_secs(20), "ferry-host");
    assert!(!status.success());
    let err = stderr_of(&mut h);
    assert!(
        err.contains("token"),
        "ferry-host explains the missing token:\n{err}"
    );
}

#[test]
fn tcp_with_token_refuses_wrong_token_on_both_sides() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let (_base, dir) = export_dir();
    fs::write(dir.join("hello"), b"over tcp").unwrap();
    let port = free_port();
    let mut h = host_tcp(&dir, port, Some("s3cret"));
    wait_listening(port);
    let m = tempfile::tempdir().unwrap();
    let connect = format!("tcp:127.0.0.1:{port}");
    let mount = format!("ex={}", m.path().display());

    let mut bad = agent_command(&["--connect", &connect, "--mount", &mount])
        .env("FERRY_TOKEN", "wrong")
        .spawn()
        .unwrap();
    let status = wait_exit(&mut bad, Duration::from_secs(20), "ferry-agent");
    assert!(!status.success());
    let err = stderr_of(&mut bad);
    assert!(
        err.contains("wrong token"),
        "agent shows the server's reason:\n{err}"
    );
    assert!(!is_ferry_mount(m.path()));

    let mut none = agent_command(&["--connect", &connect, "--mount", &mount])
        .env_remove("FERRY_TOKEN")
        .spawn()
        .unwrap();
    assert!(!wait_exit(&mut none, Duration::from_secs(20), "ferry-agent").success());
    assert!(stderr_of(&mut none).contains("requires a token"));

    let mut good = agent_command(&["--connect", &connect, "--mount", &mount])
        .env("FERRY_TOKEN", "s3cret")
        .spawn()
        .unwrap();
    wait_mounted(m.path(), &mut good);
    assert_eq!(fs::read(m.path().join("hello")).unwrap(), b"over tcp");
    assert!(terminate(&mut good).success());

    let status = terminate(&mut h);
    assert!(status.success());
    let log = stderr_of(&mut h);
    assert!(
        log.contains("refusing") && log.contains("wrong token"),
        "host logs the refusal:\n{log}"
    );
}

#[test]
fn bad_addresses_are_clear_errors() {
    for (bin, args, needle) in [
        (
            &bins().host,
            vec!["--export", "a=/tmp", "--listen", "carrier-pigeon:1"],
            "expected unix:PATH",
        ),
        (
            &bins().host,
            vec!["--export", "a b=/tmp", "--listen", "unix:/tmp/x"],
            "not allowed in a name",
        ),
        (
            &bins().host,
            vec!["--export", "a=/tmp", "--listen", "vsock:3:1024"],
            "takes a port only",
        ),
        (
            &bins().host,
            vec!["--export", "a=/tmp", "--listen", "hybrid-vsock:/run/v.sock"],
            "missing vsock port",
        ),
        (
            &bins().agent,
            vec!["--connect", "nowhere", "--mount", "a=/mnt"],
            "unix:PATH",
        ),
        (
            &bins().agent,
            vec!["--connect", "vsock:4294967295:1024", "--mount", "a=/mnt"],
            "VMADDR_CID_ANY",
        ),
        (
            &bins().agent,
            vec!["--connect", "vsock:2:port", "--mount", "a=/mnt"],
            "invalid vsock CID or port",
        ),
        (
            &bins().agent,
            vec!["--connect", "hybrid-vsock:/run/v.sock", "--mount", "a=/mnt"],
            "missing port",
        ),
        (
            &bins().agent,
            vec!["--connect", "unix:/tmp/x", "--mount", "nomountpoint"],
            "NAME=MOUNTPOINT",
        ),
    ] {
        let out = Command::new(bin).args(&args).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    for bin in [&bins().host, &bins().agent, &bins().ferry] {
        let out = Command::new(bin).arg("--help").output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

/// `ferry-agent --events-only` takes NAME=MOUNTPOINT arguments naming virtio-fs mounts and
/// says what is wrong before connecting anywhere.
#[test]
fn events_only_arguments_are_clear_errors() {
    let plain = tempfile::tempdir().unwrap();
    let plain = format!("ex={}", plain.path().display());
    for (args, needle) in [
        (vec!["--events-only"], "needs NAME=MOUNTPOINT arguments"),
        (vec!["ex=/mnt"], "--events-only"),
        (
            vec!["--events-only", "--mount", "ex=/mnt", "ex=/mnt"],
            "cannot be used with",
        ),
        (vec!["--events-only", "nomountpoint"], "NAME=MOUNTPOINT"),
        (vec!["--events-only", &plain], "nothing is mounted there"),
        (
            vec!["--events-only", "ex=/proc"],
            "a proc mount, not virtio-fs",
        ),
    ] {
        let out = Command::new(&bins().agent)
            .args([
                "--connect",
                "unix:/nonexistent/ferry.sock",
                "--connect-timeout",
                "0",
            ])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn hybrid_vsock_listener_serves_on_path_port() {
    // Firecracker-style hybrid vsock: a guest connection to host port P arrives on the Unix
    // socket `{uds_path}_P`. Here the agent dials that socket directly, as the VMM would.
    if !require(&[Need::Fuse]) {
        return;
    }
    let (base, dir) = export_dir();
    fs::write(dir.join("f"), b"via hybrid vsock").unwrap();
    let uds = base.path().join("vsock.sock");
    let sock = base.path().join("vsock.sock_1024");
    let m = tempfile::tempdir().unwrap();
    // The agent starts before the server listens and waits for it, as in a VM that boots
    // before the host server is up.
    let log = base.path().join("agent.log");
    let mut a = agent_logging_to(
        &[
            "--connect".into(),
            format!("unix:{}", sock.display()),
            "--connect-timeout".into(),
            "30".into(),
            "--mount".into(),
            format!("ex={}", m.path().display()),
        ],
        &log,
    );
    let read_log = || fs::read_to_string(&log).unwrap_or_default();
    // The agent has found no server once it says it waits for one (its first failed attempt).
    let waiting = wait_until(Duration::from_secs(20), || {
        read_log().contains("waiting for ferry-host at") || a.try_wait().unwrap().is_some()
    });
    assert!(
        a.try_wait().unwrap().is_none(),
        "the agent waits for the server:\n{}",
        read_log()
    );
    assert!(waiting, "the agent never said it waits:\n{}", read_log());
    let mut h = host_command(&dir, &format!("hybrid-vsock:{}:1024", uds.display()))
        .spawn()
        .unwrap();
    wait_mounted(m.path(), &mut a);
    assert_eq!(fs::read(m.path().join("f")).unwrap(), b"via hybrid vsock");
    assert!(terminate(&mut a).success());
    assert!(terminate(&mut h).success());
    assert!(!sock.exists() || std::os::unix::net::UnixStream::connect(&sock).is_err());
}

#[test]
fn vsock_listener_stops_on_sigterm() {
    // An idle AF_VSOCK listener must not keep the server from exiting. (With accept(2) parked
    // on a blocking thread, the runtime waited for it forever.) Nothing can connect here: this
    // host has no vsock loopback; the VM test connects to a vsock listener for real.
    let (base, dir) = export_dir();
    let log = base.path().join("host.log");
    let port = 40_000 + std::process::id() % 20_000;
    let mut h = host_command(&dir, &format!("vsock:{port}"))
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || fs::read_to_string(&log).unwrap_or_default();
    // Ready once it says it listens; an exit means it could not.
    let ready = wait_until(Duration::from_secs(20), || {
        read_log().contains(&format!("listening on vsock:{port}"))
            || h.try_wait().unwrap().is_some()
    });
    if let Some(status) = h.try_wait().unwrap() {
        let log = read_log();
        assert!(
            log.contains("cannot listen on vsock"),
            "ferry-host exited with {status}:\n{log}"
        );
        skip_or_fail(&format!("no AF_VSOCK here ({})", log.trim()));
        return;
    }
    assert!(
        ready,
        "ferry-host did not listen within 20 s:\n{}",
        read_log()
    );
    let status = terminate(&mut h);
    assert!(status.success(), "ferry-host exits 0 on SIGTERM: {status}");
    let log = read_log();
    assert!(log.contains(&format!("listening on vsock:{port}")), "{log}");
}
