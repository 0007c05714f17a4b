//! The guest binaries: `ferry-agent` and `ferry-host` built statically (glibc with
//! `crt-static`), so they run in a guest that has nothing but busybox, exactly as README.md
//! tells users to build them. A target directory of their own keeps the different RUSTFLAGS
//! from invalidating the normal build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::tools::is_static;

/// The target triple the static binaries are built for (an explicit `--target` keeps the
/// flags off build scripts and proc macros, which cannot be static).
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Paths of the static binaries.
#[derive(Clone, Debug)]
pub struct StaticBins {
    /// `ferry-agent`.
    pub agent: PathBuf,
    /// `ferry-host`.
    pub host: PathBuf,
}

/// The workspace root (this crate sits one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmtest is inside the workspace")
        .to_path_buf()
}

/// Builds (once per process; cargo makes later runs incremental) the release static binaries
/// into `target/static/`. Panics with cargo's output when the build fails or the result is
/// not static.
pub fn static_bins() -> &'static StaticBins {
    static BINS: OnceLock<StaticBins> = OnceLock::new();
    BINS.get_or_init(|| {
        let root = workspace_root();
        let target_dir = root.join("target/static");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let started = std::time::Instant::now();
        let out = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "--locked", "--quiet"])
            .args(["-p", "ferry-agent", "-p", "ferry-host", "--target", TARGET])
            .arg("--target-dir")
            .arg(&target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "building the static guest binaries failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = target_dir.join(TARGET).join("release");
        let bins = StaticBins {
            agent: dir.join("ferry-agent"),
            host: dir.join("ferry-host"),
        };
        for b in [&bins.agent, &bins.host] {
            assert!(
                is_static(b).unwrap_or(false),
                "{} is not statically linked",
                b.display()
            );
        }
        eprintln!(
            "static ferry-agent and ferry-host ready in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        bins
    })
}

/// `guest/inotify-events.c` built with `cc -static` into `target/static/`: the guest's inotify
/// watcher (Debian's busybox-static has no `inotifyd`).
pub fn inotify_helper() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/inotify-events.c");
    let out = workspace_root().join("target/static/inotify-events");
    let fresh = |o: &Path| {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((m(o), m(&src)), (Some(o), Some(s)) if o >= s)
    };
    if !fresh(&out) {
        std::fs::create_dir_all(out.parent().expect("has a parent")).expect("mkdir target/static");
        let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
        let status = Command::new(&cc)
            .args(["-static", "-O2", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cc:?} to build inotify-events: {e}"));
        assert!(status.success(), "building inotify-events failed");
    }
    out
}
