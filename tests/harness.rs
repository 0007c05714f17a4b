//! Shared test machinery: what a test needs from the machine (and the one place that decides
//! between skipping and failing without it), real mounts through the real binaries, and a way
//! to run one operation sequence on two trees and compare the outcomes.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// ---- What a test needs ------------------------------------------------------------------

/// Something a test needs from the machine it runs on.
#[derive(Clone, Copy, Debug)]
pub enum Need<'a> {
    /// FUSE mounts: root and `/dev/fuse`.
    Fuse,
    /// A program on `PATH` (`.ci/run` installs every one the tests use).
    Program(&'a str),
}

/// True when every need is met. When one is not, the test cannot run here: see
/// [`skip_or_fail`], which this calls with every missing piece, and return at once:
///
/// ```ignore
/// if !require(&[Need::Fuse, Need::Program("inotifywait")]) {
///     return;
/// }
/// ```
#[must_use = "the test must return when its needs are not met"]
pub fn require(needs: &[Need<'_>]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(|n| missing(*n)).collect();
    if missing.is_empty() {
        return true;
    }
    skip_or_fail(&missing.join("; "));
    false
}

/// Why `need` is not met here, or `None` when it is.
fn missing(need: Need<'_>) -> Option<String> {
    match need {
        Need::Fuse => {
            let euid = nix::unistd::geteuid();
            match (Path::new("/dev/fuse").exists(), euid.is_root()) {
                (true, true) => None,
                (false, _) => Some("needs /dev/fuse, which is missing".into()),
                (true, false) => Some(format!("needs root to mount FUSE (euid is {euid})")),
            }
        }
        Need::Program(name) => on_path(name).is_none().then(|| {
            format!("needs `{name}` on PATH, which is missing (`bash .ci/run` installs it)")
        }),
    }
}

/// The first executable called `name` in `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The one way a test gives up because this machine lacks something it needs; the caller
/// returns right after. Under CI (`CI=true`), where `.ci/run` has installed everything, a test
/// that cannot run is a failure, so this panics. Anywhere else it writes
/// `SKIPPED: <test>: <reason>` straight to the process's stderr (the test harness captures
/// `eprintln!`, and would show the line only for failing tests), so a skipped test is never
/// mistaken for a passing one.
pub fn skip_or_fail(reason: &str) {
    let test = current_test();
    if ferry_vmtest::tools::in_ci() {
        panic!("CI=true, and {test} cannot run here: {reason}");
    }
    let _ = writeln!(std::io::stderr(), "\nSKIPPED: {test}: {reason}\n");
}

/// The running test's name (the test harness names each test's thread after it).
fn current_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => "this test".to_string(),
    }
}

/// The VM tools (`bash .ci/vm-tools` installs them), or `None` after [`skip_or_fail`] has
/// listed what is missing.
pub fn vm_tools() -> Option<ferry_vmtest::Tools> {
    match ferry_vmtest::Tools::find() {
        Ok(tools) => Some(tools),
        Err(missing) => {
            skip_or_fail(&format!(
                "needs {}; install them all with `bash .ci/vm-tools`",
                missing.join(", ")
            ));
            None
        }
    }
}

/// Paths of the three binaries, built once per test run.
pub struct Bins {
    pub ferry: PathBuf,
    pub host: PathBuf,
    pub agent: PathBuf,
}

pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let ferry = PathBuf::from(env!("CARGO_BIN_EXE_ferry"));
        let dir = ferry
            .parent()
            .expect("binary has a directory")
            .to_path_buf();
        // ferry-host and ferry-agent live in other packages of the workspace, so cargo does not
        // build them for this test binary on its own: build them in the same profile.
        let release = dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "ferry-host", "-p", "ferry-agent"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(
            status.success(),
            "building ferry-host and ferry-agent failed"
        );
        Bins {
            host: dir.join("ferry-host"),
            agent: dir.join("ferry-agent"),
            ferry,
        }
    })
}

/// True when `path` is a Ferry mount point (type fuse, source `ferry:EXPORT`).
pub fn is_ferry_mount(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-");
        f.get(4) == Some(&want.as_ref())
            && sep
                .and_then(|i| f.get(i + 1))
                .is_some_and(|t| t.starts_with("fuse"))
            && sep
                .and_then(|i| f.get(i + 2))
                .is_some_and(|s| s.starts_with("ferry:"))
    })
}

/// Waits until `path` is a ferry mount, or panics with the child's stderr.
pub fn wait_mounted(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_ferry_mount(path) {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("mount process exited with {status} before mounting:\n{err}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} not mounted after 30 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `ferry share SRC MNT` process with its two directories.
pub struct Share {
    pub src: tempfile::TempDir,
    pub mnt: tempfile::TempDir,
    child: Option<Child>,
}

impl Share {
    /// Shares a new empty directory.
    pub fn start() -> Share {
        Self::start_with(&[])
    }

    /// Shares a new empty directory with extra `ferry share` arguments.
    pub fn start_with(extra: &[&str]) -> Share {
        Self::start_configured(extra, |_| {})
    }

    /// As [`Share::start_with`], with the command adjusted by `configure` before it starts.
    pub fn start_configured(extra: &[&str], configure: impl FnOnce(&mut Command)) -> Share {
        let src = tempfile::tempdir().expect("tempdir");
        let mnt = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(&bins().ferry);
        cmd.arg("share")
            .arg(src.path())
            .arg(mnt.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("ferry share starts");
        wait_mounted(mnt.path(), &mut child);
        // Keep the pipe drained so a chatty process never blocks on a full stderr.
        let stderr = child.stderr.take();
        std::thread::spawn(move || {
            if let Some(mut e) = stderr {
                let mut sink = Vec::new();
                let _ = e.read_to_end(&mut sink);
            }
        });
        Share {
            src,
            mnt,
            child: Some(child),
        }
    }

    /// The mounted view.
    pub fn mnt(&self) -> &Path {
        self.mnt.path()
    }

    /// The host directory behind it.
    pub fn src(&self) -> &Path {
        self.src.path()
    }

    /// The process id of the `ferry share` process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        terminate(&mut child)
    }
}

/// SIGTERM, then wait up to 20 s.
pub fn terminate(child: &mut Child) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within 20 s of SIGTERM", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A killed server leaves a dead mount behind; detach it so the tempdir can go.
        lazy_unmount(self.mnt.path());
    }
}

/// Detaches a mount if one is there.
pub fn lazy_unmount(path: &Path) {
    if is_ferry_mount(path) {
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A C string for a path.
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in test paths")
}

/// The errno of the last failed libc call, by name.
pub fn last_errno() -> String {
    let e = std::io::Error::last_os_error();
    errno_name(e.raw_os_error().unwrap_or(0))
}

/// Turns an io::Error into a comparable string: the errno name where there is one.
pub fn io_err(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => errno_name(n),
        None => format!("{:?}", e.kind()),
    }
}

pub fn errno_name(n: i32) -> String {
    format!("Err({:?})", nix::errno::Errno::from_raw(n))
}

/// sha256 of a file, via the coreutils tool so the check is independent of our code.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Runs a shell command in `dir`, returning (success, stdout+stderr).
pub fn sh(dir: &Path, script: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("sh runs");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}
