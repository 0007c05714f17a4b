//! The server's sandbox (host-server/src/sandbox.rs), checked on the real `ferry-host`: what
//! the kernel says is in force for the running process (`/proc/PID/status`), a mount through
//! it doing a broad workload, Landlock keeping a directory that leaves the export out of
//! reach though the server still holds it, a reload refused where the sandbox cannot follow,
//! and `--sandbox=none` leaving all of it off.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use crate::config::Setup;
use crate::harness::{Need, require, terminate, wait_until};

/// `field:` of `/proc/PID/status`.
fn status_field(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn caps(pid: u32, set: &str) -> u64 {
    u64::from_str_radix(&status_field(pid, set), 16).unwrap()
}

/// CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_SETGID,
/// CAP_SETUID: what a passthrough or map server keeps.
const ID_CAPS: u64 = 0b1101_1111;
/// CAP_DAC_READ_SEARCH alone: a squash server's.
const SQUASH_CAPS: u64 = 1 << 2;

fn stop(mut host: Child) {
    terminate(&mut host);
}

#[test]
fn the_kernel_shows_the_sandbox_in_force_and_none_leaves_it_off() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Setup::new();
    s.write_config(&[("a", ""), ("b", "ids = \"squash\"")]);

    // Passthrough and squash exports: the id caps are kept, every other one is gone from the
    // bounding set too.
    let host = s.start_host(&[]);
    let pid = host.id();
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2", "filter mode");
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(caps(pid, set), ID_CAPS, "{set}");
    }
    assert_eq!(caps(pid, "CapInh"), 0);
    assert_eq!(caps(pid, "CapAmb"), 0);
    // Every thread, not only the one that entered it.
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = task.unwrap().path();
        let st = fs::read_to_string(t.join("status")).unwrap();
        assert!(st.contains("Seccomp:\t2"), "{}: {st}", t.display());
        assert!(st.contains("NoNewPrivs:\t1"), "{}", t.display());
    }
    let log = s.host_log();
    assert!(
        log.contains("sandbox: capabilities kept: chown,dac_override,dac_read_search,fowner,fsetid,setgid,setuid; no_new_privs: on; landlock: enforced"),
        "{log}"
    );
    stop(host);

    // Squash only: the requests run without capabilities; file handles need one.
    s.write_config(&[("b", "ids = \"squash\"")]);
    let host = s.start_host(&[]);
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(caps(host.id(), set), SQUASH_CAPS, "{set}");
    }
    stop(host);

    // --sandbox=none: nothing of it.
    s.write_config(&[("a", "")]);
    let host = s.start_host(&["--sandbox=none"]);
    let pid = host.id();
    assert_eq!(status_field(pid, "NoNewPrivs"), "0");
    assert_eq!(status_field(pid, "Seccomp"), "0");
    let all = caps(pid, "CapBnd");
    assert_ne!(all & !ID_CAPS, 0, "bounding set untouched: {all:#x}");
    assert!(s.host_log().contains("sandbox: none"), "{}", s.host_log());
    stop(host);
}

/// A broad workload through a sandboxed server: every kind of request, with credential
/// switches (chown to another user, files created as the caller), locks, xattrs and ACLs,
/// special files, and a host change heard back; the server is still there at the end.
#[test]
fn a_mount_through_the_sandboxed_server_works() {
    if !require(&[
        Need::Fuse,
        Need::Program("setpriv"),
        Need::Program("setfattr"),
        Need::Program("setfacl"),
    ]) {
        return;
    }
    let s = Setup::new();
    s.write_config(&[("a", "")]);
    let mut host = s.start_host(&[]);
    let m = s.path("mnt-a");
    fs::create_dir(&m).unwrap();
    let mut agent = s.start_agent(&[("a", &m)]);

    assert_eq!(fs::read(m.join("name")).unwrap(), b"a");
    fs::create_dir_all(m.join("d/e")).unwrap();
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(m.join("d/e/big"), &body).unwrap();
    assert_eq!(fs::read(s.path("a/d/e/big")).unwrap(), body);
    assert_eq!(fs::read(m.join("d/e/big")).unwrap(), body);
    fs::rename(m.join("d/e/big"), m.join("d/big")).unwrap();
    std::os::unix::fs::symlink("big", m.join("d/link")).unwrap();
    fs::hard_link(m.join("d/big"), m.join("d/hard")).unwrap();
    assert_eq!(fs::metadata(s.path("a/d/hard")).unwrap().nlink(), 2);
    assert_eq!(fs::read_link(m.join("d/link")).unwrap(), Path::new("big"));
    fs::set_permissions(m.join("d/big"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(m.join("d/big"), Some(1000), Some(1000)).unwrap();
    let meta = fs::metadata(s.path("a/d/big")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (1000, 1000, 0o640)
    );
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("d/big"))
        .unwrap();
    f.set_len(10).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::metadata(s.path("a/d/big")).unwrap().len(), 10);
    // Created as the caller: a thread of the server switches to uid 1000 for it.
    fs::set_permissions(s.path("a/d/e"), fs::Permissions::from_mode(0o777)).unwrap();
    let status = std::process::Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "touch"])
        .arg(m.join("d/e/by-1000"))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(fs::metadata(s.path("a/d/e/by-1000")).unwrap().uid(), 1000);
    // Extended attributes and an ACL.
    let run = |args: &[&str], path: &Path| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    run(
        &["setfattr", "-n", "user.sandbox", "-v", "yes"],
        &m.join("d/hard"),
    );
    let got = run(
        &["getfattr", "-n", "user.sandbox", "--only-values"],
        &s.path("a/d/hard"),
    );
    assert_eq!(got, "yes");
    run(&["setfacl", "-m", "u:1000:rw"], &m.join("d/hard"));
    assert!(run(&["getfacl", "-cn"], &s.path("a/d/hard")).contains("user:1000:rw-"));
    // A FIFO, a lock, a removed tree.
    nix::unistd::mkfifo(
        &m.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert!(
        fs::symlink_metadata(s.path("a/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let locked = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("d/hard"))
        .unwrap();
    // SAFETY: flock on a descriptor this function owns.
    let rc = unsafe { libc::flock(locked.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    drop(locked);
    fs::remove_dir_all(m.join("d")).unwrap();
    assert!(!s.path("a/d").exists());
    // A host change reaches the guest (the watcher, under Landlock, through /proc/self/fd).
    fs::create_dir(s.path("a/from-host")).unwrap();
    fs::write(s.path("a/from-host/f"), b"host").unwrap();
    assert!(wait_until(Duration::from_secs(20), || fs::read(
        m.join("from-host/f")
    )
    .is_ok_and(|b| b == b"host")));
    assert!(
        host.try_wait().unwrap().is_none(),
        "the server died:\n{}",
        s.host_log()
    );
    assert!(!s.host_log().contains("ERROR"), "{}", s.host_log());
    let _ = agent.kill();
    let _ = agent.wait();
    crate::harness::lazy_unmount(&m);
    terminate(&mut host);
}

/// A directory the guest holds open is moved out of the export by a host user. The export
/// core reaches it through the descriptor it holds, so without a sandbox the guest could go on
/// creating and reading files there, outside the export; Landlock refuses (EACCES) because the
/// directory's path is no longer beneath an export. The same steps under `--sandbox=none`
/// show that the probe really reaches the directory.
#[test]
fn a_directory_moved_out_of_the_export_is_out_of_reach() {
    if !require(&[Need::Fuse]) {
        return;
    }
    for sandboxed in [true, false] {
        let s = Setup::new();
        s.write_config(&[("a", "")]);
        let mut host = s.start_host(if sandboxed { &[] } else { &["--sandbox=none"] });
        let m = s.path("mnt-a");
        fs::create_dir(&m).unwrap();
        let mut agent = s.start_agent(&[("a", &m)]);
        fs::create_dir(m.join("d")).unwrap();
        fs::write(m.join("d/old"), b"inside").unwrap();
        let dir = fs::File::open(m.join("d")).unwrap();
        // A host user moves it next to the export: outside.
        fs::rename(s.path("a/d"), s.path("b/d")).unwrap();
        fs::write(s.path("b/d/secret"), b"outside").unwrap();
        let at = |name: &str, flags: nix::fcntl::OFlag| {
            nix::fcntl::openat(
                &dir,
                name,
                flags | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
        };
        let created = at(
            "new",
            nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY,
        );
        // A read-only open may be answered in the guest; the read reaches the host.
        let read = at("secret", nix::fcntl::OFlag::O_RDONLY)
            .map_err(std::io::Error::from)
            .and_then(|fd| {
                let mut buf = String::new();
                std::io::Read::read_to_string(&mut fs::File::from(fd), &mut buf).map(|_| buf)
            });
        if sandboxed {
            assert_eq!(created.err(), Some(nix::errno::Errno::EACCES));
            assert!(!s.path("b/d/new").exists(), "created outside the export");
            assert_eq!(
                read.map_err(|e| e.raw_os_error()).err(),
                Some(Some(libc::EACCES))
            );
            assert!(host.try_wait().unwrap().is_none(), "{}", s.host_log());
        } else {
            assert!(created.is_ok(), "the probe reaches: {created:?}");
            assert!(s.path("b/d/new").exists());
            assert_eq!(read.unwrap(), "outside");
        }
        drop(dir);
        let _ = agent.kill();
        let _ = agent.wait();
        crate::harness::lazy_unmount(&m);
        terminate(&mut host);
    }
}

/// A reload that adds an export outside what the sandbox allowed at start is refused with a
/// message that says to restart; the running exports keep being served.
#[test]
fn a_reload_beyond_the_sandbox_is_refused() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Setup::new();
    s.write_config(&[("a", "")]);
    let mut host = s.start_host(&[]);
    // SIGHUP is caught once the server has installed its handler (until then it would end
    // the process).
    let hup_caught =
        || u64::from_str_radix(&status_field(host.id(), "SigCgt"), 16).unwrap() & 1 != 0;
    assert!(wait_until(Duration::from_secs(20), hup_caught));
    s.write_config(&[("a", ""), ("b", "")]);
    let pid = nix::unistd::Pid::from_raw(host.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || s
            .host_log()
            .contains("reload refused")),
        "{}",
        s.host_log()
    );
    let log = s.host_log();
    assert!(
        log.contains("export b:") && log.contains("restart ferry-host"),
        "{log}"
    );
    // A configuration file replaced by rename is another file, which the sandbox keeps out
    // of reach: said so.
    let text = fs::read_to_string(s.config()).unwrap();
    fs::write(s.path("host.toml.new"), text).unwrap();
    fs::rename(s.path("host.toml.new"), s.config()).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || s.host_log().contains(
            "read only the configuration and token files it started with"
        )),
        "{}",
        s.host_log()
    );
    // a is still served.
    let m = s.path("mnt-a");
    fs::create_dir(&m).unwrap();
    let mut agent = s.start_agent(&[("a", &m)]);
    assert_eq!(fs::read(m.join("name")).unwrap(), b"a");
    let _ = agent.kill();
    let _ = agent.wait();
    crate::harness::lazy_unmount(&m);
    terminate(&mut host);
}

/// A file the guest still knows, whose node descriptor the server evicted and whose dentry
/// the host then dropped, reopens by handle: a plain handle would give a disconnected
/// descriptor with no path, which Landlock refuses to open (EACCES); the sandboxed server
/// keeps connectable handles, reconnected through the parent.
#[test]
fn an_evicted_file_reopens_by_handle_under_landlock() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Setup::new();
    s.write_config(&[("a", "")]);
    for i in 0..100 {
        fs::write(s.path(&format!("a/f{i}")), format!("{i}")).unwrap();
    }
    let mut host = s.start_host(&["--max-node-fds", "2"]);
    let m = s.path("mnt-a");
    fs::create_dir(&m).unwrap();
    let mut agent = s.start_agent(&[("a", &m)]);
    // Held by the guest kernel (an O_PATH descriptor keeps the dentry) but not open: the
    // server may evict its descriptor.
    let held = nix::fcntl::open(
        &m.join("f7"),
        nix::fcntl::OFlag::O_PATH,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    for i in 10..100 {
        fs::metadata(m.join(format!("f{i}"))).unwrap();
    }
    nix::unistd::sync();
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let reopened = format!("/proc/self/fd/{}", held.as_raw_fd());
    assert_eq!(fs::read_to_string(&reopened).unwrap(), "7");
    fs::OpenOptions::new().append(true).open(&reopened).unwrap();
    assert!(host.try_wait().unwrap().is_none(), "{}", s.host_log());
    drop(held);
    let _ = agent.kill();
    let _ = agent.wait();
    crate::harness::lazy_unmount(&m);
    terminate(&mut host);
}
