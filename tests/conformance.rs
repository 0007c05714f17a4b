//! Independent checkers against the mount, compared with bindfs on the same machine.
//!
//! - pjdfstest (the Rust rewrite of pjd's POSIX file system test suite) runs as root, whole,
//!   on a native directory, a bindfs mount and Ferry mounts in both cache modes (with device
//!   nodes allowed, `--devices`, as bindfs run by root allows them; the default refusal is
//!   checked by `special::device_nodes_are_refused`). Every test that fails on Ferry must fail
//!   on bindfs too, so a new regression fails here. Ferry must also skip exactly what bindfs
//!   skips, so nothing can hide behind a skip.
//! - fsx (asomers' fsx-rs, the File System eXerciser) runs a fixed number of random reads,
//!   writes, truncates, mmap reads and writes (with and without msync), hole punches,
//!   fallocates, copy_file_range and sendfile on one file per run, with fixed seeds and several
//!   file sizes, against both cache modes, and must find no difference from its in-memory copy.
//!
//! Both tools come from the crate registry, pinned: `bash .ci/conformance-tools` builds them
//! into ~/.cache/ferry-conformance (CI runs it). Without them the tests say SKIPPED, except
//! under CI (`CI=true`), where they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{
    Need, Share, is_fuse_mount, require, skip_or_fail, wait_exit, wait_for_mount,
};

/// Keep in step with `.ci/conformance-tools`.
const PJDFSTEST_VERSION: &str = "0.2.2";
const FSX_VERSION: &str = "0.3.2";
const INSTALL: &str = "bash .ci/conformance-tools";

/// The tool's binary: `$env` if set, else where `.ci/conformance-tools` puts it.
fn find_tool(name: &str, version: &str, env: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{env}={} is not a file", p.display()))
        };
    }
    let cache = match (
        std::env::var_os("FERRY_CONFORMANCE_CACHE"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    ) {
        (Some(c), _, _) => PathBuf::from(c),
        (None, Some(x), _) => PathBuf::from(x).join("ferry-conformance"),
        (None, None, Some(h)) => PathBuf::from(h).join(".cache/ferry-conformance"),
        (None, None, None) => PathBuf::from("/root/.cache/ferry-conformance"),
    };
    let p = cache.join(format!("{name}-{version}/bin/{name}"));
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{name} {version} (looked for {} and ${env})",
            p.display()
        ))
    }
}

/// The tools `wanted` (name, version, variable naming another binary), when FUSE and `programs`
/// are there too; `None` after [`skip_or_fail`] has said what is missing.
fn tools_for(programs: &[&str], wanted: &[(&str, &str, &str)]) -> Option<Vec<PathBuf>> {
    let mut needs = vec![Need::Fuse];
    needs.extend(programs.iter().map(|p| Need::Program(p)));
    if !require(&needs) {
        return None;
    }
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (name, version, env) in wanted {
        match find_tool(name, version, env) {
            Ok(p) => found.push(p),
            Err(e) => missing.push(e),
        }
    }
    if missing.is_empty() {
        return Some(found);
    }
    skip_or_fail(&format!(
        "needs {}; install with `{INSTALL}`",
        missing.join(", ")
    ));
    None
}

/// Runs `cmd` to the end or kills it after `limit`, returning its output.
fn run_with_deadline(mut cmd: Command, limit: Duration, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    // Drain both pipes on threads of their own so a chatty child never blocks on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let status = wait_exit(&mut child, limit, what);
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// `bindfs -f SRC MNT` as root: no id mapping, no permission changes, `allow_other` and
/// `default_permissions` (bindfs adds both as root), files created as the caller (its root
/// default, as a bind mount would). The plain passthrough to compare a FUSE server with.
struct Bindfs {
    _src: tempfile::TempDir,
    mnt: tempfile::TempDir,
    child: Child,
}

impl Bindfs {
    fn start() -> Bindfs {
        let src = tempfile::tempdir().expect("tempdir");
        let mnt = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("bindfs")
            .arg("-f")
            .arg(src.path())
            .arg(mnt.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bindfs starts");
        let mounted = wait_for_mount(mnt.path(), is_fuse_mount, Duration::from_secs(20), || {
            let status = child.try_wait().ok().flatten()?;
            Some(format!("bindfs exited with {status}"))
        });
        if let Err(why) = mounted {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{why}");
        }
        Bindfs {
            _src: src,
            mnt,
            child,
        }
    }
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.mnt.path(), nix::mount::MntFlags::MNT_DETACH);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// One pjdfstest run: each test case's outcome, and the failure messages by name.
struct Run {
    outcomes: BTreeMap<String, Outcome>,
    messages: BTreeMap<String, String>,
}

impl Run {
    fn with(&self, o: Outcome) -> BTreeSet<&str> {
        self.outcomes
            .iter()
            .filter(|(_, v)| **v == o)
            .map(|(k, _)| k.as_str())
            .collect()
    }
    fn count(&self, o: Outcome) -> usize {
        self.outcomes.values().filter(|v| **v == o).count()
    }

    /// Reads pjdfstest's output: a result line is `NAME   ok|FAILED|skipped`; the lines after
    /// a failure that start with white space say why.
    fn parse(text: &str) -> Run {
        let mut outcomes = BTreeMap::new();
        let mut messages: BTreeMap<String, String> = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if line.starts_with(char::is_whitespace) {
                if let Some(name) = &current {
                    let m = messages.entry(name.clone()).or_default();
                    if m.lines().count() < 4 && !line.contains("Backtrace") {
                        m.push_str(line.trim());
                        m.push(' ');
                    }
                }
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let outcome = match words.as_slice() {
                [_, "ok"] => Outcome::Pass,
                [_, "FAILED"] => Outcome::Fail,
                [_, "skipped"] => Outcome::Skip,
                _ => {
                    current = None;
                    continue;
                }
            };
            outcomes.insert(words[0].to_string(), outcome);
            current = (outcome == Outcome::Fail).then(|| words[0].to_string());
        }
        Run { outcomes, messages }
    }

    /// What `self` (a Ferry run called `name`) does worse than `bindfs`: failures bindfs does
    /// not share, skips that are not bindfs's, missing cases.
    fn differences(&self, name: &str, bindfs: &Run) -> Vec<String> {
        let mut problems = Vec::new();
        for case in self.with(Outcome::Fail) {
            if bindfs.outcomes.get(case) == Some(&Outcome::Fail) {
                continue;
            }
            let why = self.messages.get(case).map(String::as_str).unwrap_or("");
            problems.push(format!("{name}: {case} fails (bindfs: passes): {why}"));
        }
        // A case Ferry skipped could hide a failure: the skips must be bindfs's own.
        if self.with(Outcome::Skip) != bindfs.with(Outcome::Skip) {
            problems.push(format!(
                "{name} skips {:?}, bindfs skips {:?}",
                self.with(Outcome::Skip),
                bindfs.with(Outcome::Skip)
            ));
        }
        let missing: Vec<_> = (bindfs.outcomes.keys())
            .filter(|k| !self.outcomes.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            problems.push(format!("{name}: no result for {missing:?}"));
        }
        problems
    }
}

/// pjdfstest's configuration: every Linux feature the tested filesystems have, timestamps
/// compared after 20 ms (the kernel's coarse clock ticks every 4 ms; 1 ms made even ext4 fail
/// the "times changed" checks), and two existing Debian users to switch to.
const PJDFSTEST_TOML: &str = r#"
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.02
allow_remount = false

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["daemon", "daemon"],
]
"#;

/// Runs the whole pjdfstest suite in `dir` (a fresh directory of its own under it).
fn pjdfstest(bin: &Path, config: &Path, secondary: &Path, dir: &Path, what: &str) -> Run {
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(config)
        .arg("-s")
        .arg(secondary)
        .arg("-p")
        .arg(dir)
        .env("NO_COLOR", "1");
    let out = run_with_deadline(
        cmd,
        Duration::from_secs(300),
        &format!("pjdfstest on {what}"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Summary:"),
        "pjdfstest on {what} did not finish ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Run::parse(&text);
    assert!(
        run.outcomes.len() > 300,
        "pjdfstest on {what}: only {} results parsed:\n{text}",
        run.outcomes.len()
    );
    run
}

#[test]
fn pjdfstest_fails_nothing_bindfs_passes() {
    let wanted = [("pjdfstest", PJDFSTEST_VERSION, "FERRY_PJDFSTEST")];
    let Some(tools) = tools_for(&["bindfs"], &wanted) else {
        return;
    };
    let bin = &tools[0];
    for (user, group) in [("nobody", "nogroup"), ("daemon", "daemon")] {
        assert!(
            nix::unistd::User::from_name(user).ok().flatten().is_some()
                && nix::unistd::Group::from_name(group)
                    .ok()
                    .flatten()
                    .is_some(),
            "pjdfstest switches to {user}:{group}, which this system lacks"
        );
    }
    let work = tempfile::tempdir().expect("tempdir");
    let config = work.path().join("pjdfstest.toml");
    std::fs::write(&config, PJDFSTEST_TOML).expect("write config");
    // The EXDEV case renames to a second filesystem: a directory in /dev/shm (tmpfs).
    let secondary = tempfile::tempdir_in("/dev/shm").expect("a directory in /dev/shm");
    let native_dir = tempfile::tempdir().expect("tempdir");

    let mut runs: Vec<(&str, Run)> = Vec::new();
    runs.push((
        "native",
        pjdfstest(bin, &config, secondary.path(), native_dir.path(), "native"),
    ));
    {
        let b = Bindfs::start();
        runs.push((
            "bindfs",
            pjdfstest(bin, &config, secondary.path(), b.mnt.path(), "bindfs"),
        ));
    }
    for (name, args) in [
        (
            "ferry cached",
            &["--cache", "cached", "--devices", "--setid"],
        ),
        (
            "ferry consistent",
            &["--cache", "consistent", "--devices", "--setid"],
        ),
    ] {
        let share = Share::start_with(args);
        runs.push((
            name,
            pjdfstest(bin, &config, secondary.path(), share.mnt(), name),
        ));
        let status = share.stop();
        assert!(status.success(), "{name}: ferry share exited with {status}");
    }

    eprintln!("pjdfstest {PJDFSTEST_VERSION}, whole suite, as root:");
    eprintln!("{:18} {:>6} {:>6} {:>6}", "", "passed", "failed", "skipped");
    for (name, run) in &runs {
        eprintln!(
            "{name:18} {:>6} {:>6} {:>6}",
            run.count(Outcome::Pass),
            run.count(Outcome::Fail),
            run.count(Outcome::Skip)
        );
    }

    let bindfs = &runs[1].1;
    let mut problems = Vec::new();
    for (name, run) in &runs[2..] {
        for case in bindfs.with(Outcome::Fail) {
            if run.outcomes.get(case) == Some(&Outcome::Pass) {
                eprintln!("{name}: passes {case}, which bindfs fails");
            }
        }
        problems.extend(run.differences(name, bindfs));
    }
    assert!(
        problems.is_empty(),
        "Ferry does worse than bindfs:\n{}",
        problems.join("\n")
    );
}

/// fsx settings: every operation fsx-rs has, mmap reads and writes as often as plain ones.
/// Without `msync`, mmap writes stay dirty pages in the guest while reads and writes go on.
fn fsx_toml(flen: u64, max_op: u64, msync: bool) -> String {
    let nomsync = !msync;
    format!(
        r#"
flen = {flen}
nomsyncafterwrite = {nomsync}
[opsize]
max = {max_op}
min = 0
align = 1
[weights]
close_open = 1
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 2
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 1
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
"#
    )
}

/// One fsx run: seed, maximum file length, largest single operation, msync after mmap
/// writes, operations. A file smaller than a page, the default 256 KiB (with and without
/// msync), and a 4 MiB file with operations up to 1 MiB (several FUSE requests each; fewer
/// operations, as each moves up to a megabyte).
const FSX_RUNS: [(u64, u64, u64, bool, u64); 4] = [
    (1, 3000, 3000, true, 10_000),
    (2, 256 * 1024, 64 * 1024, true, 10_000),
    (3, 4 * 1024 * 1024, 1024 * 1024, true, 2_000),
    (4, 256 * 1024, 64 * 1024, false, 5_000),
];

#[test]
fn fsx_with_mmap_finds_no_corruption() {
    let wanted = [("fsx", FSX_VERSION, "FERRY_FSX")];
    let Some(tools) = tools_for(&[], &wanted) else {
        return;
    };
    let bin = &tools[0];
    let work = tempfile::tempdir().expect("tempdir");
    for mode in ["cached", "consistent"] {
        let share = Share::start_with(&["--cache", mode]);
        for (seed, flen, max_op, msync, ops) in FSX_RUNS {
            let config = work.path().join(format!("fsx-{seed}.toml"));
            std::fs::write(&config, fsx_toml(flen, max_op, msync)).expect("write config");
            let artifacts = work.path().join(format!("{mode}-{seed}"));
            std::fs::create_dir(&artifacts).expect("artifacts dir");
            let mut cmd = Command::new(bin);
            cmd.arg("-f")
                .arg(&config)
                .arg("-N")
                .arg(ops.to_string())
                .arg("-S")
                .arg(seed.to_string())
                .arg("-P")
                .arg(&artifacts)
                .arg(share.mnt().join(format!("fsx-{seed}")));
            let what = format!("fsx -S {seed} (flen {flen}, msync {msync}) on --cache {mode}");
            let out = run_with_deadline(cmd, Duration::from_secs(180), &what);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            assert!(
                out.status.success() && text.contains("All operations completed A-OK"),
                "{what}: {}\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            // The host file must hold what fsx last saw through the mount.
            let host = std::fs::read(share.src().join(format!("fsx-{seed}"))).expect("host file");
            let mnt = std::fs::read(share.mnt().join(format!("fsx-{seed}"))).expect("mnt file");
            assert!(host == mnt, "{what}: host file differs from the mount's");
        }
        let status = share.stop();
        assert!(
            status.success(),
            "ferry share --cache {mode} exited with {status}"
        );
    }
}

#[test]
fn pjdfstest_comparison_catches_what_bindfs_does_not_fail() {
    // The comparison itself, on made-up output in pjdfstest's format: a regression, a new
    // skip and a missing case are reported; bindfs's own failures not.
    let bindfs = Run::parse(
        "open::a                  ok\n\
         open::b                  FAILED\n\
         \tassertion failed\n\
         Backtrace:\n\
         mknod::device::char      ok\n\
         open::erofs              skipped\n\
         \tRemounts (allow_remount) are not allowed\n\
         link::gone               ok\n\
         \nSummary: 1 failed, 1 skipped, 3 passed, 0 expected failures, 5 total\n",
    );
    assert_eq!(bindfs.count(Outcome::Pass), 3);
    assert_eq!(bindfs.with(Outcome::Fail), BTreeSet::from(["open::b"]));
    assert_eq!(bindfs.messages["open::b"].trim(), "assertion failed");
    let same = Run::parse(
        "open::a ok\nopen::b FAILED\nmknod::device::char ok\nopen::erofs skipped\n\
         link::gone ok\n",
    );
    assert_eq!(same.differences("ferry", &bindfs), Vec::<String>::new());
    // A device-node case Ferry fails is a regression like any other.
    let refused = Run::parse(
        "open::a ok\nopen::b FAILED\nmknod::device::char FAILED\nopen::erofs skipped\n\
         link::gone ok\n",
    );
    let found = refused.differences("ferry", &bindfs);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].starts_with("ferry: mknod::device::char fails (bindfs: passes)"));
    let worse = Run::parse(
        "open::a FAILED\n\twrong errno\nopen::b ok\nmknod::device::char ok\n\
         open::erofs skipped\nrename::new skipped\n",
    );
    let found = worse.differences("ferry", &bindfs);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].starts_with("ferry: open::a fails (bindfs: passes): wrong errno"));
    assert!(found[1].contains("rename::new"));
    assert!(found[2].contains("link::gone"));
}
