//! `ferry share` run by an ordinary user (uid 65534, `nobody`), as most people first try it:
//! it mounts through the set-user-ID `fusermount3`, serves, raises events, unmounts on Ctrl-C;
//! `allow_other` only where /etc/fuse.conf allows it; and each mistake a newcomer can make is
//! told in one line.
//!
//! These tests change `/dev/fuse`'s mode (to 0666, as a stock distribution has it) and
//! `/etc/fuse.conf` while they run, so they take one lock and put both back afterwards.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::harness::{
    Need, bins, is_ferry_mount, kill_server, lazy_unmount, require, stderr_of, wait_exit,
    wait_mounted, wait_until,
};

/// The ordinary user the tests run as.
const UID: u32 = 65534;
const GID: u32 = 65534;

/// One test at a time: they change machine-wide settings.
static SERIAL: Mutex<()> = Mutex::new(());

/// The machine as a stock distribution has it for the test's duration: `/dev/fuse` open to
/// everyone; `/etc/fuse.conf` as the test sets it. Both are put back on drop.
struct Machine {
    _serial: MutexGuard<'static, ()>,
    fuse_mode: u32,
    fuse_conf: Option<Vec<u8>>,
}

impl Machine {
    fn stock() -> Option<Machine> {
        if !require(&[Need::Fuse, Need::Program("fusermount3")]) {
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let fuse_mode = std::fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
        let m = Machine {
            _serial: serial,
            fuse_mode,
            fuse_conf: std::fs::read("/etc/fuse.conf").ok(),
        };
        set_mode(Path::new("/dev/fuse"), 0o666);
        m.user_allow_other(false);
        Some(m)
    }

    /// Sets or clears `user_allow_other` in /etc/fuse.conf.
    fn user_allow_other(&self, on: bool) {
        let line = if on { "user_allow_other\n" } else { "" };
        std::fs::write(
            "/etc/fuse.conf",
            format!("# written by a Ferry test\n{line}"),
        )
        .unwrap();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        set_mode(Path::new("/dev/fuse"), self.fuse_mode);
        match &self.fuse_conf {
            Some(c) => std::fs::write("/etc/fuse.conf", c).unwrap(),
            None => {
                let _ = std::fs::remove_file("/etc/fuse.conf");
            }
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A copy of the `ferry` binary the user can run whatever the checkout's permissions.
fn ferry_bin() -> &'static Path {
    static BIN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &BIN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        set_mode(dir.path(), 0o755);
        let bin = dir.path().join("ferry");
        std::fs::copy(&bins().ferry, &bin).unwrap();
        set_mode(&bin, 0o755);
        (dir, bin)
    })
    .1
}

/// A directory of the user's: `src/` (the tree to share, with one file) and room for `mnt`.
fn user_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/hello.txt"), b"hello\n").unwrap();
    std::fs::create_dir(dir.path().join("native")).unwrap();
    std::fs::write(dir.path().join("native/hello.txt"), b"hello\n").unwrap();
    for p in [
        dir.path().to_path_buf(),
        dir.path().join("src"),
        dir.path().join("src/hello.txt"),
        dir.path().join("native"),
        dir.path().join("native/hello.txt"),
    ] {
        std::os::unix::fs::chown(&p, Some(UID), Some(GID)).unwrap();
    }
    set_mode(dir.path(), 0o755);
    dir
}

/// Runs `cmd` as the user (std drops the supplementary groups when root sets a uid).
fn as_user(cmd: &mut Command) -> &mut Command {
    cmd.uid(UID).gid(GID).env("HOME", "/tmp")
}

/// `ferry share SRC MNT ARGS` as the user, not waited for.
fn share_command(src: &Path, mnt: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(ferry_bin());
    cmd.arg("share")
        .arg(src)
        .arg(mnt)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_user(&mut cmd);
    cmd
}

/// `ferry share` as the user, mounted. Dropping it kills the process and detaches the mount.
struct UserShare {
    child: Option<std::process::Child>,
    mnt: PathBuf,
}

impl UserShare {
    fn start(src: &Path, mnt: &Path, extra: &[&str]) -> UserShare {
        let mut child = share_command(src, mnt, extra).spawn().unwrap();
        wait_mounted(mnt, &mut child);
        UserShare {
            child: Some(child),
            mnt: mnt.to_path_buf(),
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }

    /// Waits for the process to exit; its status and everything it logged.
    fn exit(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(20), "ferry share");
        (status, stderr_of(&mut child))
    }
}

impl Drop for UserShare {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_server(&mut child, &self.mnt);
            lazy_unmount(&self.mnt);
        }
    }
}

/// Runs a shell script as the user in `dir`; (success, stdout and stderr).
fn user_sh(dir: &Path, script: &str) -> (bool, String) {
    let out = as_user(Command::new("sh").arg("-c").arg(script).current_dir(dir))
        .output()
        .unwrap();
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

/// What a developer does in a checkout, as the user, printing what it sees; then the tree.
const WORKLOAD: &str = r#"
set -e
mkdir -p a/b/c
echo one > a/f
echo two >> a/f
cat a/f
printf 'xyz' > a/b/c/g
truncate -s 10 a/b/c/g
chmod 640 a/b/c/g
touch -d '2001-02-03 04:05:06' a/b/c/g
ln a/f a/hard
ln -s b/c/g a/sym
cat a/sym | od -c | head -2
mv a/f a/b/moved
mv a/b/c a/c2
rm a/hard
mkdir gone && rmdir gone
rm -r a/c2 2>&1 || true
echo sub > a/b/new && mv a/b/new a/renamed
find . -mindepth 1 -printf '%P %y %s %m %u\n' | sort
cat a/b/moved a/renamed
stat -c '%n %s %a' a/sym a/renamed
"#;

#[test]
fn an_ordinary_user_shares_serves_and_unmounts_on_ctrl_c() {
    let Some(machine) = Machine::stock() else {
        return;
    };
    let dir = user_dir();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    let share = UserShare::start(&src, &mnt, &[]);
    // Mounted through fusermount3, owned by the user.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(&format!(" {} ", mnt.display())))
        .expect("the mount is listed");
    assert!(line.contains(&format!("user_id={UID}")), "{line}");

    // The same workload, natively and through the share, as the user.
    let (ok_native, native) = user_sh(&dir.path().join("native"), WORKLOAD);
    assert!(ok_native, "native workload: {native}");
    let (ok_mount, mounted) = user_sh(&mnt, WORKLOAD);
    assert!(ok_mount, "workload on the mount: {mounted}");
    assert_eq!(
        native, mounted,
        "the mount behaves as the user's own directory"
    );
    assert!(
        src.join("a/renamed").exists(),
        "the changes are on the host"
    );

    // Without user_allow_other, not even root sees into the mount.
    let err = std::fs::metadata(&mnt).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");

    // A host edit raises an inotify event for the user's watcher.
    let mut watcher = as_user(
        Command::new("inotifywait")
            .args(["-m", "-r", "--format", "%w%f %e"])
            .arg(&mnt),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut err = std::io::BufReader::new(watcher.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("Watches established") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0,
            "inotifywait ended"
        );
    }
    std::fs::write(src.join("from-host.txt"), b"edited on the host\n").unwrap();
    let out = watcher.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let want = format!("{}/from-host.txt CREATE", mnt.display());
    let seen = rx.recv_timeout(Duration::from_secs(20));
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert_eq!(seen.as_deref(), Ok(want.as_str()));

    // Ctrl-C: a clean exit that leaves nothing mounted, and says who may use the mount.
    share.signal(nix::sys::signal::Signal::SIGINT);
    let (status, log) = share.exit();
    assert!(status.success(), "ferry share exited with {status}: {log}");
    assert!(!is_ferry_mount(&mnt), "still mounted after Ctrl-C");
    assert!(log.contains("only you can use"), "{log}");
    drop(machine);
}

#[test]
fn allow_other_only_where_fuse_conf_allows_it() {
    let Some(machine) = Machine::stock() else {
        return;
    };
    let dir = user_dir();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));

    // Asked for but not allowed: a one-line error that says how to allow it.
    let mut child = share_command(&src, &mnt, &["--allow-other"])
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30), "ferry share");
    let err = stderr_of(&mut child);
    assert!(!status.success());
    assert!(err.contains("user_allow_other"), "{err}");
    assert!(!is_ferry_mount(&mnt));

    // Allowed: on by default, and other users (root here) see into the mount.
    machine.user_allow_other(true);
    let share = UserShare::start(&src, &mnt, &[]);
    assert_eq!(
        std::fs::read(mnt.join("hello.txt")).unwrap(),
        b"hello\n",
        "root reads through an allow_other mount"
    );
    drop(share);
    assert!(!is_ferry_mount(&mnt));
    // And asked for explicitly.
    let share = UserShare::start(&src, &mnt, &["--allow-other"]);
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), b"hello\n");
    share.signal(nix::sys::signal::Signal::SIGINT);
    let (status, log) = share.exit();
    assert!(status.success(), "{log}");
    assert!(!log.contains("only you can use"), "{log}");
    assert!(!is_ferry_mount(&mnt));
}

#[test]
fn a_newcomers_mistakes_are_told_in_one_line() {
    let Some(machine) = Machine::stock() else {
        return;
    };
    let dir = user_dir();
    let src = dir.path().join("src");
    let fails = |mnt: &Path, want: &str| {
        let mut child = share_command(&src, mnt, &[]).spawn().unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(30), "ferry share");
        let err = stderr_of(&mut child);
        assert!(!status.success(), "{}: {err}", mnt.display());
        assert!(err.contains(want), "expected {want:?} in: {err}");
        assert!(!is_ferry_mount(mnt));
    };
    fails(&dir.path().join("no/such/dir"), "create it first");
    fails(&src, "not empty");
    fails(&src.join("hello.txt"), "not a directory");
    set_mode(Path::new("/dev/fuse"), 0o600);
    fails(&dir.path().join("mnt"), "no permission to open /dev/fuse");
    set_mode(Path::new("/dev/fuse"), 0o666);

    // A share killed with SIGKILL leaves a dead mount; the next start clears it and mounts.
    let mnt = dir.path().join("mnt");
    let killed = UserShare::start(&src, &mnt, &[]);
    killed.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = killed.exit();
    // (Only the user may look: root is refused before the kernel finds the server gone.)
    assert!(wait_until(Duration::from_secs(10), || {
        user_sh(dir.path(), "stat mnt").1.contains("not connected")
    }));
    // The dead mount is still listed until the new process clears it: wait for a live one.
    let again = UserShare {
        child: Some(share_command(&src, &mnt, &[]).spawn().unwrap()),
        mnt: mnt.clone(),
    };
    if !wait_until(Duration::from_secs(30), || {
        user_sh(dir.path(), "cat mnt/hello.txt").0
    }) {
        again.signal(nix::sys::signal::Signal::SIGKILL);
        panic!("no new mount: {}", again.exit().1);
    }
    let (ok, out) = user_sh(&mnt, "cat hello.txt");
    assert!(ok && out == "hello\n", "{out}");
    again.signal(nix::sys::signal::Signal::SIGINT);
    let (status, err) = again.exit();
    assert!(status.success(), "{err}");
    assert!(err.contains("dead FUSE mount"), "{err}");
    assert!(!is_ferry_mount(&mnt));
    drop(machine);
}

/// Walks the tree at argv[1] (no symlinks followed), stats and reads every file, and checks
/// its content against its path (`dDDDD/fFFFF`); then reads every path seen once more. Prints
/// `files ok stale gone wrong` counts, and each wrong path.
const WALKER: &str = r#"
import errno, os, sys
root = sys.argv[1]
seen, ok, stale, gone, wrong = [], 0, 0, 0, 0
def check(rel):
    global ok, stale, gone, wrong
    try:
        os.lstat(os.path.join(root, rel))
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
    except OSError as e:
        if e.errno == errno.ESTALE: stale += 1
        elif e.errno in (errno.ENOENT, errno.ENOTDIR): gone += 1
        else: raise
        return
    if data == rel.replace(".moved", "").encode() + b"\n":
        ok += 1
    else:
        wrong += 1
        print("WRONG", rel, data[:60])
for d, dirs, files in os.walk(root, onerror=lambda e: None):
    for f in files:
        rel = os.path.relpath(os.path.join(d, f), root)
        seen.append(rel)
        check(rel)
for rel in seen:
    check(rel)
print(len(seen), ok, stale, gone, wrong)
"#;

/// An unprivileged server (no CAP_DAC_READ_SEARCH, so no `open_by_handle_at`) keeps its node
/// descriptors within `--max-node-fds` on a 100,000-file tree by reopening evicted nodes by
/// name; directories renamed or replaced by a symlink on the host during the walk answer
/// ESTALE or the right data, never anything from outside the export.
#[test]
fn an_unprivileged_server_stays_within_its_descriptor_cap_at_scale() {
    let Some(machine) = Machine::stock() else {
        return;
    };
    if !require(&[Need::Program("python3")]) {
        return;
    }
    const DIRS: usize = 100;
    const PER_DIR: usize = 1000;
    const CAP: usize = 256;
    // Requests in flight, handles the kernel has not released, the walker's open directory.
    const SLACK: usize = 64;
    let dir = user_dir();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    std::fs::remove_file(src.join("hello.txt")).unwrap();
    for d in 0..DIRS {
        let sub = src.join(format!("d{d:04}"));
        std::fs::create_dir(&sub).unwrap();
        for f in 0..PER_DIR {
            std::fs::write(sub.join(format!("f{f:04}")), format!("d{d:04}/f{f:04}\n")).unwrap();
        }
    }
    let share = UserShare::start(&src, &mnt, &["--max-node-fds", &CAP.to_string()]);
    let pid = share.child.as_ref().unwrap().id();
    let fds = move || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    user_sh(&mnt, "true");
    let idle = fds();

    // The host moves and replaces directories while the user walks.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let host = {
        let (src, stop) = (src.clone(), stop.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            let _ = std::fs::rename(src.join("d0098"), src.join("d0098.moved"));
            let _ = std::os::unix::fs::symlink("/etc", src.join("d0098"));
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (a, b) = (src.join("d0099"), src.join("d0099.moved"));
                let _ = if n % 2 == 0 {
                    std::fs::rename(&a, &b)
                } else {
                    std::fs::rename(&b, &a)
                };
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let (most, stop) = (most.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most.fetch_max(fds(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = as_user(Command::new("python3").arg("-c").arg(WALKER).arg(&mnt))
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    host.join().unwrap();
    sampler.join().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walker: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Vec<usize> = report
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let [files, ok, stale, gone, wrong] = counts[..] else {
        panic!("walker said: {report}");
    };
    let most = most.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "unprivileged scale: {files} files seen, {ok} reads right, {stale} ESTALE, {gone} gone, \
         {wrong} wrong; server descriptors idle {idle}, most {most}, cap {CAP}"
    );
    assert_eq!(wrong, 0, "a read returned another file's data: {report}");
    assert!(files >= (DIRS - 2) * PER_DIR, "the walk saw {files} files");
    assert!(
        ok >= 2 * (DIRS - 2) * PER_DIR,
        "{ok} right reads of {files} files, twice"
    );
    assert!(
        most <= idle + CAP + SLACK,
        "the server held {most} descriptors (idle {idle}, cap {CAP})"
    );
    share.signal(nix::sys::signal::Signal::SIGINT);
    let (status, log) = share.exit();
    assert!(status.success(), "{log}");
    drop(machine);
}
