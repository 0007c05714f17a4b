//! Extended-attribute answers the agent gives without asking the host (issue 22): a host
//! `setfattr`, `setfacl`, `setcap` (a `security.*` change) and the removal of an attribute are
//! seen by the next guest probe once the change's event has reached the guest, in `cached`
//! and `consistent` mode; and a second `ls -l` of a directory sends no GETXATTR.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Setup;
use crate::harness::{Need, agent_command, bins, require, terminate, wait_mounted, wait_until};

/// A host (`--control`) serving export `a` with `extra` TOML lines, and an agent mounting it
/// with `--cache MODE`.
struct Rig {
    s: Setup,
    host: Child,
    agent: Child,
    mnt: PathBuf,
}

impl Rig {
    /// `prepare` fills the export before the host starts (so no creation event is in flight
    /// while the test looks).
    fn start(mode: &str, extra: &str, prepare: impl FnOnce(&Path)) -> Rig {
        let s = Setup::new();
        prepare(&s.path("a"));
        s.write_config(&[("a", extra)]);
        let control = s.path("control.sock");
        let host = s.start_host(&["--control", &format!("unix:{}", control.display())]);
        assert!(wait_until(Duration::from_secs(20), || control.exists()));
        let mnt = s.path("mnt");
        fs::create_dir(&mnt).unwrap();
        let args = [
            "--connect".to_string(),
            format!("unix:{}", s.sock().display()),
            "--mount".into(),
            format!("a={}", mnt.display()),
            "--cache".into(),
            mode.into(),
        ];
        let mut agent = agent_command(&args)
            .env("RUST_LOG", "info")
            .stderr(fs::File::create(s.path("agent.log")).unwrap())
            .spawn()
            .unwrap();
        wait_mounted(&mnt, &mut agent);
        Rig {
            s,
            host,
            agent,
            mnt,
        }
    }

    fn src(&self) -> PathBuf {
        self.s.path("a")
    }

    /// GETXATTR requests the server has counted for this guest so far.
    fn getxattrs(&self) -> u64 {
        let out = Command::new(&bins().ferry)
            .args(["status", "--json", "--control"])
            .arg(self.s.path("control.sock"))
            .output()
            .unwrap();
        assert!(out.status.success(), "ferry status failed");
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        st["guests"][0]["exports"][0]["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["op"] == "Getxattr" || r["op"] == "Listxattr")
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        terminate(&mut self.agent);
        terminate(&mut self.host);
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// `lgetxattr(path, name)`: the value, or the errno.
fn getxattr(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (p, n) = (cpath(path), CString::new(name).unwrap());
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid strings and a writable buffer of the given length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// `llistxattr(path)`: the names.
fn listxattr(path: &Path) -> Vec<String> {
    let p = cpath(path);
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid string and a writable buffer of the given length.
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "llistxattr: {}", std::io::Error::last_os_error());
    buf[..r as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// An inotify watch on one guest path: [`Watch::attrib`] waits for the IN_ATTRIB a host
/// change is replayed as.
struct Watch(i32);

impl Watch {
    fn new(path: &Path) -> Watch {
        // SAFETY: plain syscalls on a descriptor this value owns.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let p = cpath(path);
        // SAFETY: as above.
        let wd = unsafe { libc::inotify_add_watch(fd, p.as_ptr(), libc::IN_ATTRIB) };
        assert!(
            wd >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        Watch(fd)
    }

    /// Waits (generously) for an IN_ATTRIB; fails the test without one.
    fn attrib(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a buffer of the given length.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no IN_ATTRIB in the guest after {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this value owns.
        unsafe { libc::close(self.0) };
    }
}

fn run(prog: &str, args: &[&str]) {
    let st = Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{prog} {args:?} failed");
}

/// `ls -l` of `dir`, output discarded.
fn ls_l(dir: &Path) {
    let out = Command::new("ls").arg("-l").arg(dir).output().unwrap();
    assert!(out.status.success(), "ls -l failed");
}

/// The host changes a file's xattrs behind the guest's back; each change is seen by the
/// guest's first probe after its event.
fn host_changes_are_seen(mode: &str) {
    if !require(&[
        Need::Fuse,
        Need::Program("setfattr"),
        Need::Program("setfacl"),
        Need::Program("setcap"),
    ]) {
        return;
    }
    let r = Rig::start(mode, "setid = true", |a| {
        fs::write(a.join("f"), b"x").unwrap()
    });
    let (src, mnt) = (r.src().join("f"), r.mnt.join("f"));
    // The guest learns the file has no xattrs (the listing, the probes ls makes).
    ls_l(&r.mnt);
    assert_eq!(getxattr(&mnt, "user.k"), Err(libc::ENODATA));
    assert_eq!(
        getxattr(&mnt, "system.posix_acl_access"),
        Err(libc::ENODATA)
    );
    assert_eq!(getxattr(&mnt, "security.capability"), Err(libc::ENODATA));
    assert!(listxattr(&mnt).is_empty());
    let w = Watch::new(&mnt);
    let host = src.to_str().unwrap();

    run("setfattr", &["-n", "user.k", "-v", "one", host]);
    w.attrib("setfattr");
    assert_eq!(
        getxattr(&mnt, "user.k"),
        Ok(b"one".to_vec()),
        "{mode}: setfattr"
    );
    assert_eq!(listxattr(&mnt), ["user.k"], "{mode}");

    run("setfattr", &["-x", "user.k", host]);
    w.attrib("setfattr -x");
    assert_eq!(
        getxattr(&mnt, "user.k"),
        Err(libc::ENODATA),
        "{mode}: removal"
    );
    assert!(listxattr(&mnt).is_empty(), "{mode}: removal");
    // Known empty again (in `cached` mode answered here), then the ACL arrives.
    assert_eq!(
        getxattr(&mnt, "system.posix_acl_access"),
        Err(libc::ENODATA)
    );

    run("setfacl", &["-m", "u:4321:r", host]);
    w.attrib("setfacl");
    let acl = getxattr(&mnt, "system.posix_acl_access");
    assert!(
        matches!(&acl, Ok(v) if !v.is_empty()),
        "{mode}: setfacl: {acl:?}"
    );
    let out = Command::new("getfacl")
        .args(["-cn"])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("user:4321:r--"),
        "{mode}: getfacl in the guest: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    run("setfacl", &["-b", host]);
    w.attrib("setfacl -b");
    assert_eq!(
        getxattr(&mnt, "system.posix_acl_access"),
        Err(libc::ENODATA),
        "{mode}: ACL removed"
    );

    // A security.* change: the export shows security.capability (setid = true).
    run("setcap", &["cap_net_raw+ep", host]);
    w.attrib("setcap");
    let cap = getxattr(&mnt, "security.capability");
    assert!(
        matches!(&cap, Ok(v) if v.len() >= 20),
        "{mode}: setcap: {cap:?}"
    );
    run("setcap", &["-r", host]);
    w.attrib("setcap -r");
    assert_eq!(
        getxattr(&mnt, "security.capability"),
        Err(libc::ENODATA),
        "{mode}: capability removed"
    );
    // Names no export shows stay absent whatever the host holds.
    run("setfattr", &["-n", "trusted.k", "-v", "t", host]);
    w.attrib("setfattr trusted.k");
    assert_eq!(getxattr(&mnt, "trusted.k"), Err(libc::ENODATA), "{mode}");
    assert!(listxattr(&mnt).is_empty(), "{mode}: {:?}", listxattr(&mnt));
}

#[test]
fn host_changes_are_seen_cached() {
    host_changes_are_seen("cached");
}

#[test]
fn host_changes_are_seen_consistent() {
    host_changes_are_seen("consistent");
}

/// The guest's own xattr changes are seen at once (the mark is dropped when it sends them).
#[test]
fn guest_changes_are_seen() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let r = Rig::start("cached", "", |_| {});
    let mnt = r.mnt.join("g");
    fs::write(&mnt, b"x").unwrap();
    ls_l(&r.mnt);
    assert_eq!(getxattr(&mnt, "user.k"), Err(libc::ENODATA));
    let (p, n) = (cpath(&mnt), CString::new("user.k").unwrap());
    // SAFETY: valid strings and value.
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(getxattr(&mnt, "user.k"), Ok(b"v".to_vec()));
    assert_eq!(listxattr(&mnt), ["user.k"]);
    // SAFETY: valid strings.
    let rc = unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
    assert_eq!(rc, 0);
    assert_eq!(getxattr(&mnt, "user.k"), Err(libc::ENODATA));
}

/// A long listing asks the host for no xattr at all: not the first time (the listing's
/// attributes say which files have none), and not the second.
#[test]
fn a_second_long_listing_sends_no_getxattr() {
    if !require(&[Need::Fuse, Need::Program("ls"), Need::Program("setfattr")]) {
        return;
    }
    let r = Rig::start("cached", "", |a| {
        let dir = a.join("d");
        fs::create_dir(&dir).unwrap();
        for i in 0..200 {
            fs::write(dir.join(format!("f{i:03}")), b"x").unwrap();
        }
        run(
            "setfattr",
            &[
                "-n",
                "user.k",
                "-v",
                "1",
                dir.join("f007").to_str().unwrap(),
            ],
        );
    });
    let before = r.getxattrs();
    ls_l(&r.mnt.join("d"));
    let first = r.getxattrs() - before;
    ls_l(&r.mnt.join("d"));
    let second = r.getxattrs() - before - first;
    assert_eq!(
        second, 0,
        "GETXATTR/LISTXATTR sent by a second ls -l of 200 files"
    );
    // Only the one file with an xattr may be asked about (ls probes two names per file).
    assert!(
        first <= 2,
        "{first} GETXATTR/LISTXATTR sent by a first ls -l of 200 files"
    );
    assert_eq!(getxattr(&r.mnt.join("d/f007"), "user.k"), Ok(b"1".to_vec()));
}
