//! Shared test machinery: what a test needs from the machine (and the one place that decides
//! between skipping and failing without it), real mounts through the real binaries, waiting
//! for processes and mounts with deadlines, and small helpers for comparing outcomes.

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

// ---- Binaries and processes --------------------------------------------------------------

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

/// The token the servers of [`host_command`] require and the agents of [`agent_command`]
/// present, through `FERRY_TOKEN` (a test of tokens themselves removes or replaces it).
pub const TOKEN: &str = "ferry-test-token";

/// `ferry-host --export ex=EXPORT --listen LISTEN` (with `FERRY_TOKEN` set to [`TOKEN`]) with
/// no input or output but a piped stderr; add arguments or redirect stderr before spawning.
pub fn host_command(export: &Path, listen: &str) -> Command {
    let mut cmd = Command::new(&bins().host);
    cmd.env("FERRY_TOKEN", TOKEN)
        .arg("--export")
        .arg(format!("ex={}", export.display()))
        .arg("--listen")
        .arg(listen)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// `ferry-agent ARGS` (with `FERRY_TOKEN` set to [`TOKEN`]) with no input or output but a
/// piped stderr.
pub fn agent_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(&bins().agent);
    cmd.env("FERRY_TOKEN", TOKEN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Polls `ready` (every 20 ms) until it is true, for at most `limit`; false if time ran out.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` (called `what` in the failure) to exit, for at most `limit`; past that it
/// is killed and the test fails.
pub fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let mut status = None;
    if !wait_until(limit, || {
        status = child.try_wait().expect("wait for a child");
        status.is_some()
    }) {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{what} (pid {}) did not exit within {limit:?}; killed",
            child.id()
        );
    }
    status.expect("exited")
}

/// SIGTERM, then wait up to 20 s for the exit.
pub fn terminate(child: &mut Child) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    wait_exit(child, Duration::from_secs(20), "a process sent SIGTERM")
}

/// What is left in `child`'s piped stderr (all of it once the child has exited).
pub fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Keeps reading `child`'s piped stderr on a thread of its own, so that a chatty process never
/// blocks on a full pipe. With `FERRY_TEST_LOG_DIR` set, it is kept in `PID.log` there (for
/// debugging a failure with `RUST_LOG=debug`).
pub fn drain_stderr(child: &mut Child) {
    let keep = std::env::var_os("FERRY_TEST_LOG_DIR")
        .map(|d| PathBuf::from(d).join(format!("{}.log", child.id())));
    if let Some(mut e) = child.stderr.take() {
        std::thread::spawn(
            move || match keep.and_then(|p| std::fs::File::create(p).ok()) {
                Some(mut f) => {
                    let _ = std::io::copy(&mut e, &mut f);
                }
                None => {
                    let mut sink = Vec::new();
                    let _ = e.read_to_end(&mut sink);
                }
            },
        );
    }
}

// ---- Mounts ------------------------------------------------------------------------------

/// `(filesystem type, source)` of every mount at `path`, from `/proc/self/mountinfo`.
pub fn mounts_at(path: &Path) -> Vec<(String, String)> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let want = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            (f.get(4) == Some(&want.as_ref())).then(|| {
                let field = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
                (field(sep + 1), field(sep + 2))
            })
        })
        .collect()
}

/// True when `path` is a mount point of a FUSE filesystem (Ferry, bindfs, ...).
pub fn is_fuse_mount(path: &Path) -> bool {
    mounts_at(path).iter().any(|(t, _)| t.starts_with("fuse"))
}

/// True when `path` is a Ferry mount point (type fuse, source `ferry:EXPORT`).
pub fn is_ferry_mount(path: &Path) -> bool {
    mounts_at(path)
        .iter()
        .any(|(t, s)| t.starts_with("fuse") && s.starts_with("ferry:"))
}

/// Waits until `is_mount(path)`, for at most `limit`. `exited` says why the process that is
/// to mount it is gone (`None` while it runs). `Err` says why the mount never came.
pub fn wait_for_mount(
    path: &Path,
    is_mount: fn(&Path) -> bool,
    limit: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<(), String> {
    let mut gone = None;
    wait_until(limit, || {
        is_mount(path) || {
            gone = exited();
            gone.is_some()
        }
    });
    if is_mount(path) {
        return Ok(());
    }
    Err(match gone {
        Some(why) => format!("{} was not mounted: {why}", path.display()),
        None => format!("{} not mounted after {limit:?}", path.display()),
    })
}

/// Waits (30 s at most) until `path` is a Ferry mount. The test fails, with the child's stderr
/// if it was piped, when the child exits first or time runs out (then the child is killed).
pub fn wait_mounted(path: &Path, child: &mut Child) {
    let mounted = wait_for_mount(path, is_ferry_mount, Duration::from_secs(30), || {
        let status = child.try_wait().ok().flatten()?;
        Some(format!(
            "the process exited with {status} first:\n{}",
            stderr_of(child)
        ))
    });
    if let Err(why) = mounted {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{why}");
    }
}

/// Kills a process that serves the FUSE mount at `mnt` and reaps it. `ferry share` makes
/// syscalls on its own mount (the replay thread): a thread of it waiting for an answer its
/// killed server threads will never give keeps the process from ending, so the mount's FUSE
/// connection is aborted (fusectl) before waiting.
pub fn kill_server(child: &mut Child, mnt: &Path) {
    let _ = child.kill();
    if child.try_wait().ok().flatten().is_none() {
        abort_fuse_connection(mnt);
    }
    let _ = child.wait();
}

/// Aborts the FUSE connection of the mount at `path`, if it is a FUSE mount.
pub fn abort_fuse_connection(path: &Path) {
    if let Some(conn) = fuse_connection(path) {
        let _ = std::fs::write(conn.join("abort"), b"1");
    }
}

/// The control directory of the FUSE connection of the mount at `path` (its device's minor
/// number names it under /sys/fs/fuse/connections, mounted here if need be), if it is a FUSE
/// mount. Its `waiting` file counts the requests the kernel has sent and not had answered.
pub fn fuse_connection(path: &Path) -> Option<PathBuf> {
    if !is_fuse_mount(path) {
        return None;
    }
    let dev = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            let want = format!(" {} ", path.display());
            info.lines()
                .rev()
                .find(|l| l.contains(&want))
                .and_then(|l| l.split(' ').nth(2).map(str::to_string))
        })?;
    let minor = dev.split(':').nth(1)?;
    let conns = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(conns)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
    {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(conns)
            .status();
    }
    Some(conns.join(minor))
}

/// Detaches a Ferry mount if one is there.
/// Aborts the FUSE connection of the mount at `path` (as `echo 1 >
/// /sys/fs/fuse/connections/N/abort` does): every request waiting on it fails. Needed before
/// reaping a killed agent: a thread of the agent that was itself inside a request to its own
/// mount (the replay thread does syscalls there) waits uninterruptibly for an answer nobody
/// will give, and the process cannot be reaped until the connection ends.
pub fn abort_fuse(path: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy();
    for l in info.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let fuse = l
            .split(" - ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with("fuse"));
        if fuse && f.get(4) == Some(&want.as_ref()) {
            if let Some((_, minor)) = f.get(2).and_then(|d| d.split_once(':')) {
                let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
            }
        }
    }
}

pub fn lazy_unmount(path: &Path) {
    if is_ferry_mount(path) {
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    }
}

// ---- ferry share -------------------------------------------------------------------------

/// A running `ferry share SRC MNT ARGS...` of directories the test owns, mounted. Dropping it
/// kills the process and detaches the mount it leaves.
pub struct Mounted {
    mnt: PathBuf,
    child: Option<Child>,
}

impl Mounted {
    /// Shares `src` at `mnt` with extra `ferry share` arguments and waits for the mount.
    pub fn start(src: &Path, mnt: &Path, extra: &[&str]) -> Mounted {
        Self::start_configured(src, mnt, extra, |_| {})
    }

    /// As [`Mounted::start`], with the command adjusted by `configure` before it starts.
    pub fn start_configured(
        src: &Path,
        mnt: &Path,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Mounted {
        let mut cmd = Command::new(&bins().ferry);
        cmd.arg("share")
            .arg(src)
            .arg(mnt)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("ferry share starts");
        wait_mounted(mnt, &mut child);
        drain_stderr(&mut child);
        Mounted {
            mnt: mnt.to_path_buf(),
            child: Some(child),
        }
    }

    /// The process id of the `ferry share` process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for the exit; returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        terminate(&mut child)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_server(&mut child, &self.mnt);
        }
        // A killed server leaves a dead mount behind; detach it so the directory can go.
        lazy_unmount(&self.mnt);
    }
}

/// A `ferry share SRC MNT` of two new temporary directories.
pub struct Share {
    // Declared first, so dropped first: the mount goes before its directories.
    process: Mounted,
    pub src: tempfile::TempDir,
    pub mnt: tempfile::TempDir,
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
        let process = Mounted::start_configured(src.path(), mnt.path(), extra, configure);
        Share { process, src, mnt }
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
        self.process.pid()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn stop(self) -> ExitStatus {
        self.process.stop()
    }
}

// ---- Comparing outcomes ------------------------------------------------------------------

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
