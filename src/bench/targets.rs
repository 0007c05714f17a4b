//! The directories a benchmark measures, and the mounts it starts itself: a `ferry share`
//! process, or bindfs, each stopped (and its mount detached) when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

/// The ways of reaching a directory a run can set up itself (`ferry bench --targets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The directory itself.
    Native,
    /// A `ferry share` mount of another directory.
    Ferry,
    /// A bindfs mount of another directory.
    Bindfs,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Native, Kind::Ferry, Kind::Bindfs];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Native => "native",
            Kind::Ferry => "ferry",
            Kind::Bindfs => "bindfs",
        }
    }

    /// A comma-separated list such as `native,ferry,bindfs`; unknown names are refused.
    pub fn parse_list(s: &str) -> Result<Vec<Kind>> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some(k) = Kind::ALL.into_iter().find(|k| k.name() == name) else {
                bail!(
                    "unknown target {name:?} (known: {})",
                    Kind::ALL.map(Kind::name).join(",")
                );
            };
            ensure!(!out.contains(&k), "target {name} is named twice");
            out.push(k);
        }
        ensure!(!out.is_empty(), "no target named in {s:?}");
        Ok(out)
    }

    /// The program this kind needs on PATH, if any (`ferry share` is the running binary).
    pub fn program(self) -> Option<&'static str> {
        match self {
            Kind::Bindfs => Some("bindfs"),
            _ => None,
        }
    }
}

/// One way of reaching a directory: `name` in the table, `dir` where the rounds run.
pub struct Target {
    pub name: String,
    /// What the user named (or the mount point), for the report.
    pub path: PathBuf,
    /// The benchmark's own directory beneath `path`, removed when dropped.
    pub dir: PathBuf,
    /// `dir` as the host side of the target sees it, where known: `dir` itself for a native
    /// directory, the shared directory's counterpart for a mount this run started. The
    /// `events` rows change files here and listen in `dir`.
    pub host: Option<PathBuf>,
    /// The mount serving `path`, if this benchmark started it; stopped after `dir` is removed.
    mount: Option<Mount>,
}

impl Target {
    /// A target in an existing directory: the rounds run in a new directory beneath it
    /// (`.ferry-bench-PID-NAME`), removed afterwards.
    pub fn in_dir(name: &str, path: &Path) -> Result<Target> {
        let meta = fs::metadata(path)
            .with_context(|| format!("target {name}: cannot use {}", path.display()))?;
        ensure!(
            meta.is_dir(),
            "target {name}: {} is not a directory",
            path.display()
        );
        let dir = path.join(format!(".ferry-bench-{}-{name}", std::process::id()));
        fs::create_dir(&dir)
            .with_context(|| format!("target {name}: cannot create {}", dir.display()))?;
        Ok(Target {
            name: name.to_string(),
            path: path.to_path_buf(),
            dir,
            host: None,
            mount: None,
        })
    }

    /// A native directory: like [`Target::in_dir`], and its host side is itself.
    pub fn native(name: &str, path: &Path) -> Result<Target> {
        let mut t = Target::in_dir(name, path)?;
        t.host = Some(t.dir.clone());
        Ok(t)
    }

    /// A target on a mount this benchmark started, stopped when the target is dropped.
    pub fn on_mount(name: &str, mount: Mount) -> Result<Target> {
        let mut t = Target::in_dir(name, &mount.mountpoint)?;
        t.host = t
            .dir
            .file_name()
            .map(|leaf| mount.source.join(leaf))
            .filter(|h| h.is_dir());
        t.mount = Some(mount);
        Ok(t)
    }

    /// Sets up a target of `kind` named `name` in `base` (a directory of this run's own):
    /// `base/NAME` is the native directory or the mount point; a mount serves `base/NAME-src`.
    /// `ferry` is the binary that runs `ferry share`, with `share_args` after its directories;
    /// when they are given (an id mode, say) the shared directory is made writable by
    /// everyone, so that a mapped uid may write in it.
    pub fn set_up(
        kind: Kind,
        name: &str,
        base: &Path,
        ferry: &Path,
        share_args: &[String],
    ) -> Result<Target> {
        let mk = |leaf: String| -> Result<PathBuf> {
            let p = base.join(leaf);
            fs::create_dir(&p).with_context(|| format!("cannot create {}", p.display()))?;
            Ok(p)
        };
        if let Some(p) = kind.program() {
            ensure!(
                super::command::installed(p),
                "target {name}: {p} is not installed (not on PATH)"
            );
        }
        match kind {
            Kind::Native => Target::native(name, &mk(name.to_string())?),
            Kind::Ferry => {
                let src = mk(format!("{name}-src"))?;
                if !share_args.is_empty() {
                    use std::os::unix::fs::PermissionsExt as _;
                    fs::set_permissions(&src, fs::Permissions::from_mode(0o777))?;
                }
                let mount = Mount::ferry_share(ferry, &src, &mk(name.to_string())?, share_args)?;
                Target::on_mount(name, mount)
            }
            Kind::Bindfs => {
                let mount = Mount::bindfs(&mk(format!("{name}-src"))?, &mk(name.to_string())?)?;
                Target::on_mount(name, mount)
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("ferry bench: cannot remove {}: {e}", self.dir.display());
        }
        // The mount (if any) goes after its files.
        self.mount.take();
    }
}

/// A FUSE mount served by a child process: `ferry share` or bindfs.
pub struct Mount {
    pub mountpoint: PathBuf,
    /// The directory it serves.
    pub source: PathBuf,
    child: Child,
}

impl Mount {
    /// `BIN share SRC MNT EXTRA...` (BIN: a `ferry` binary), mounted. Its log goes to stderr
    /// at `warn` unless `RUST_LOG` says otherwise.
    pub fn ferry_share(bin: &Path, src: &Path, mnt: &Path, extra: &[String]) -> Result<Mount> {
        let mut cmd = Command::new(bin);
        cmd.arg("share").arg(src).arg(mnt).args(extra);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        Self::start(cmd, src, mnt, "ferry share", |src| {
            src.starts_with("ferry:")
        })
    }

    /// `bindfs -f --no-allow-other SRC MNT`, mounted.
    pub fn bindfs(src: &Path, mnt: &Path) -> Result<Mount> {
        let mut cmd = Command::new("bindfs");
        cmd.args(["-f", "--no-allow-other"]).arg(src).arg(mnt);
        Self::start(cmd, src, mnt, "bindfs", |_| true)
    }

    fn start(
        mut cmd: Command,
        src: &Path,
        mnt: &Path,
        what: &str,
        source_ok: fn(&str) -> bool,
    ) -> Result<Mount> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {what} (is it installed?)"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if fuse_source(mnt).is_some_and(|s| source_ok(&s)) {
                return Ok(Mount {
                    mountpoint: mnt.to_path_buf(),
                    source: src.to_path_buf(),
                    child,
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{what} exited with {status} before {} was mounted",
                    mnt.display()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{what}: {} not mounted after 30 s", mnt.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // SIGTERM lets the server unmount cleanly; past 10 s it is killed and the mount
        // detached.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            let _ = self.child.wait();
        }
    }
}

/// The source of the FUSE mount at `path`, if one is there (from `/proc/self/mountinfo`,
/// whose paths escape spaces, tabs, newlines and backslashes as octal).
fn fuse_source(path: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (f.get(4) == Some(&want.as_str()) && f.get(sep + 1)?.starts_with("fuse"))
            .then(|| f.get(sep + 2).map(|s| s.to_string()))
            .flatten()
    })
}
