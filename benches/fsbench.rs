//! Filesystem benchmark: a native directory, a bindfs mount of one, and a Ferry mount
//! (`ferry share`, host and agent joined by a Unix socket pair), measured in one run and
//! printed as one table with ratios. Absolute times on a shared machine are noise; the ratios
//! within one run are the result.
//!
//! `cargo bench --bench fsbench` (root, /dev/fuse and bindfs needed; fio and git for their
//! rows).
//! Environment: FERRY_BENCH_FILES (default 10000), FERRY_BENCH_MB (default 1024),
//! FERRY_BENCH_ROUNDS (default 3; the median is reported), FERRY_BENCH_GIT_FILES (files of
//! the committed repository `git status` runs in, default 20000), FERRY_BENCH_FIO_MB (the fio
//! file, default 256) and FERRY_BENCH_FIO_SECS (per fio job, default 5), FERRY_BENCH_GROUPS
//! (comma-separated subset of `files,seq,git,fio`, default all: a quick run is
//! `FERRY_BENCH_GROUPS=files FERRY_BENCH_FILES=2000 FERRY_BENCH_ROUNDS=1`),
//! FERRY_BENCH_BASELINE (another `ferry` binary, say a build of the main branch, measured in
//! the same run as a fourth column, `before`).
//! FERRY_BENCH_IDS (an `--ids` mode for the Ferry mounts, e.g. `map:0:100000:65536`; the
//! default mode when unset).
//! FERRY_BENCH_SANDBOX=1: two more targets, `ferry-host` and `ferry-agent` as separate processes
//! over a Unix socket, with the server's default sandbox and with `--sandbox=none`, and a
//! second table of their ratio (`ferry share` has no sandbox).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One way of reaching a directory.
struct Target {
    name: &'static str,
    root: PathBuf,
    process: Option<Child>,
    /// A server the mount's process talks to, stopped after it.
    server: Option<Child>,
}

impl Drop for Target {
    fn drop(&mut self) {
        let server = self.server.take();
        for mut child in self.process.take().into_iter().chain(server) {
            // SIGTERM lets the mount go away cleanly.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        }
    }
}

fn wait_for_mount(path: &Path, fstype: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let want = path.to_string_lossy();
        if info.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&want.as_ref()) && l.contains(fstype)
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never mounted",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn drop_caches() {
    // Drops dentries and inodes (2) and the page cache (1) so "cold" rows really start cold: the
    // FUSE kernel caches go too.
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

struct Workload {
    files: usize,
    mb: usize,
    git_files: usize,
    fio_mb: usize,
    fio_secs: usize,
}

impl Workload {
    fn file(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("f{i:05}"))
    }

    fn create(&self, dir: &Path) {
        let block = [0x5au8; 4096];
        for i in 0..self.files {
            let mut f = fs::File::create(Self::file(dir, i)).unwrap();
            f.write_all(&block).unwrap();
        }
    }

    /// Each missing name probed once, as module resolvers do.
    fn stat_missing(&self, dir: &Path) {
        for i in 0..self.files {
            let e = fs::metadata(dir.join(format!("m{i:05}.js"))).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        }
    }

    fn stat(&self, dir: &Path) {
        for i in 0..self.files {
            let m = fs::metadata(Self::file(dir, i)).unwrap();
            assert_eq!(m.len(), 4096);
        }
    }

    fn read(&self, dir: &Path) {
        let mut buf = Vec::with_capacity(8192);
        for i in 0..self.files {
            buf.clear();
            fs::File::open(Self::file(dir, i))
                .unwrap()
                .read_to_end(&mut buf)
                .unwrap();
            assert_eq!(buf.len(), 4096);
        }
    }

    fn readdir(&self, dir: &Path) {
        for _ in 0..READDIR_PASSES {
            assert_eq!(fs::read_dir(dir).unwrap().count(), self.files);
        }
    }

    fn seq_write(&self, path: &Path) {
        let chunk = vec![0xa5u8; 1 << 20];
        let mut f = fs::File::create(path).unwrap();
        for _ in 0..self.mb {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }

    fn seq_read(&self, path: &Path) {
        let mut chunk = vec![0u8; 1 << 20];
        let mut f = fs::File::open(path).unwrap();
        let mut total = 0;
        loop {
            let n = f.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, self.mb << 20);
    }
}

/// Listings per readdir sample: one pass of 10k entries is too short to time on its own.
const READDIR_PASSES: usize = 20;

/// Row groups and their rows (times: lower is better).
const FILE_ROWS: &[&str] = &[
    "create-write-close 4 KiB files",
    "stat files, cold",
    "stat files, warm",
    "stat missing names, first probe",
    "open-read-close 4 KiB files, cold",
    "open-read-close 4 KiB files, warm",
    "readdir (x20)",
    "unlink files",
];
const SEQ_ROWS: &[&str] = &["sequential write + fsync", "sequential read, cold"];
const GIT_ROWS: &[&str] = &["git status, second run"];
/// fio rows are throughputs (higher is better).
const FIO_ROWS: &[(&str, &str)] = &[
    (
        "fio psync seq read 1 MiB, cold",
        "--rw=read --bs=1M --invalidate=1",
    ),
    // The file was just read: these run on whatever each target keeps cached.
    (
        "fio psync 4k random read",
        "--rw=randread --bs=4k --invalidate=0",
    ),
    (
        "fio psync 4k random write",
        "--rw=randwrite --bs=4k --invalidate=0",
    ),
    (
        "fio psync 4k 70/30 mix, fsync/32",
        "--rw=randrw --rwmixread=70 --bs=4k --fsync=32 --invalidate=0",
    ),
];

struct Groups {
    files: bool,
    seq: bool,
    git: bool,
    fio: bool,
}

/// Runs every selected row once on `root`, returning one duration per row (fio: one
/// throughput in operations per second, stored as a duration of 1/ops seconds so medians and
/// ratios work alike).
fn run_round(w: &Workload, g: &Groups, root: &Path, round: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    if g.files {
        let dir = root.join(format!("round{round}"));
        fs::create_dir(&dir).unwrap();
        out.push(time(|| w.create(&dir)));
        drop_caches();
        out.push(time(|| w.stat(&dir)));
        out.push(time(|| w.stat(&dir)));
        out.push(time(|| w.stat_missing(&dir)));
        drop_caches();
        w.stat(&dir);
        out.push(time(|| w.read(&dir)));
        out.push(time(|| w.read(&dir)));
        out.push(time(|| w.readdir(&dir)));
        out.push(time(|| {
            for i in 0..w.files {
                fs::remove_file(Workload::file(&dir, i)).unwrap();
            }
        }));
    }
    if g.seq {
        let big = root.join(format!("big{round}"));
        out.push(time(|| w.seq_write(&big)));
        drop_caches();
        out.push(time(|| w.seq_read(&big)));
        fs::remove_file(&big).unwrap();
    }
    if g.git {
        let repo = root.join("repo");
        if !repo.exists() {
            make_repo(&repo, w.git_files);
        }
        drop_caches();
        git(&repo, &["status", "--porcelain"]);
        out.push(time(|| git(&repo, &["status", "--porcelain"])));
    }
    if g.fio {
        let file = root.join("fio.dat");
        for (_, args) in FIO_ROWS {
            let ops = fio(&file, w.fio_mb, w.fio_secs, args);
            out.push(Duration::from_secs_f64(1.0 / ops));
        }
        fs::remove_file(&file).unwrap();
    }
    out
}

fn git(repo: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "-c",
            "gc.auto=0",
        ])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("git is installed");
    assert!(out.success(), "git {args:?} failed");
}

/// A committed repository of `files` small files in directories of 100.
fn make_repo(repo: &Path, files: usize) {
    fs::create_dir(repo).unwrap();
    git(repo, &["init", "-q"]);
    for i in 0..files {
        let d = repo.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir(&d).unwrap();
        }
        fs::write(d.join(format!("f{i:05}.txt")), format!("file {i}\n")).unwrap();
    }
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "bench"]);
}

/// Runs one fio job (psync, one thread) on `file` and returns its operations per second,
/// reads and writes together.
fn fio(file: &Path, mb: usize, secs: usize, args: &str) -> f64 {
    let timed = [format!("--runtime={secs}"), "--time_based".to_string()];
    let cold = args.contains("--rw=read ");
    if cold {
        // Lay the file out first, then drop every cache (the host's too): a cold read.
        let status = Command::new("fio")
            .args(["--name=layout", "--rw=write", "--bs=1M", "--end_fsync=1"])
            .arg(format!("--filename={}", file.display()))
            .arg(format!("--size={mb}M"))
            .stdout(Stdio::null())
            .status()
            .expect("fio is installed (apt-get install fio)");
        assert!(status.success());
        drop_caches();
    }
    let out = Command::new("fio")
        .args([
            "--name=bench",
            "--ioengine=psync",
            "--numjobs=1",
            "--output-format=terse",
            "--terse-version=3",
        ])
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={mb}M"))
        .args(args.split(' '))
        .args(if cold { &timed[..0] } else { &timed[..] })
        .stderr(Stdio::inherit())
        .output()
        .expect("fio is installed (apt-get install fio)");
    assert!(out.status.success(), "fio {args} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let f: Vec<&str> = line.split(';').collect();
    // terse v3: field 7 is read IOPS, field 48 write IOPS (0-based).
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let ops = num(7) + num(48);
    assert!(ops > 0.0, "fio {args}: no result in {line:?}");
    ops
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful either way.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !Path::new("/dev/fuse").exists() || !nix::unistd::geteuid().is_root() {
        eprintln!("*** fsbench SKIPPED: needs root and /dev/fuse ***");
        return;
    }
    let w = Workload {
        files: env_or("FERRY_BENCH_FILES", 10_000),
        mb: env_or("FERRY_BENCH_MB", 1024),
        git_files: env_or("FERRY_BENCH_GIT_FILES", 20_000),
        fio_mb: env_or("FERRY_BENCH_FIO_MB", 256),
        fio_secs: env_or("FERRY_BENCH_FIO_SECS", 5),
    };
    let groups = std::env::var("FERRY_BENCH_GROUPS").unwrap_or_else(|_| "files,seq,git,fio".into());
    let has = |n: &str| groups.split(',').any(|g| g.trim() == n);
    let g = Groups {
        files: has("files"),
        seq: has("seq"),
        git: has("git"),
        fio: has("fio"),
    };
    let mut rows: Vec<&str> = Vec::new();
    let mut fio_first = usize::MAX;
    for (on, names) in [(g.files, FILE_ROWS), (g.seq, SEQ_ROWS), (g.git, GIT_ROWS)] {
        if on {
            rows.extend_from_slice(names);
        }
    }
    if g.fio {
        fio_first = rows.len();
        rows.extend(FIO_ROWS.iter().map(|r| r.0));
    }
    let rounds = env_or("FERRY_BENCH_ROUNDS", 3).max(1);
    let base = tempfile::Builder::new()
        .prefix("ferry-bench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let mk = |n: &str| {
        let p = base.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    };

    let native = Target {
        name: "native",
        root: mk("native"),
        process: None,
        server: None,
    };

    let bind_src = mk("bindfs-src");
    let bind_mnt = mk("bindfs-mnt");
    let bindfs = Command::new("bindfs")
        .args(["-f", "--no-allow-other"])
        .arg(&bind_src)
        .arg(&bind_mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bindfs is installed (apt-get install bindfs)");
    wait_for_mount(&bind_mnt, " fuse");
    let bind = Target {
        name: "bindfs",
        root: bind_mnt,
        process: Some(bindfs),
        server: None,
    };

    let share = |name: &'static str, bin: &Path| {
        let src = mk(&format!("{name}-src"));
        let mnt = mk(&format!("{name}-mnt"));
        let mut cmd = Command::new(bin);
        cmd.arg("share");
        if let Ok(ids) = std::env::var("FERRY_BENCH_IDS") {
            cmd.args(["--ids", &ids]);
            // In map mode the bench (guest root) is a mapped uid on the host, which may write
            // root's directory only through its mode.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&src, fs::Permissions::from_mode(0o777)).unwrap();
        }
        let child = cmd
            .arg(&src)
            .arg(&mnt)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_mount(&mnt, " ferry:");
        Target {
            name,
            root: mnt,
            process: Some(child),
            server: None,
        }
    };
    let mut targets = vec![
        native,
        bind,
        share("ferry", Path::new(env!("CARGO_BIN_EXE_ferry"))),
    ];
    let with_before = if let Ok(before) = std::env::var("FERRY_BENCH_BASELINE") {
        targets.push(share("before", Path::new(&before)));
        true
    } else {
        false
    };
    // ferry-host (sandboxed by default) and ferry-agent as two processes.
    let split = |name: &'static str, server_args: &[&str]| {
        let dir = Path::new(env!("CARGO_BIN_EXE_ferry")).parent().unwrap();
        let src = mk(&format!("{name}-src"));
        let mnt = mk(&format!("{name}-mnt"));
        let sock = base.path().join(format!("{name}.sock"));
        let server = Command::new(dir.join("ferry-host"))
            .arg("--export")
            .arg(format!("ex={}", src.display()))
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--no-auth")
            .args(server_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "{name}: ferry-host did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let agent = Command::new(dir.join("ferry-agent"))
            .arg("--connect")
            .arg(format!("unix:{}", sock.display()))
            .arg("--mount")
            .arg(format!("ex={}", mnt.display()))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_mount(&mnt, " ferry:");
        Target {
            name,
            root: mnt,
            process: Some(agent),
            server: Some(server),
        }
    };
    let sandbox_first = targets.len();
    let with_sandbox = std::env::var_os("FERRY_BENCH_SANDBOX").is_some_and(|v| v == "1");
    if with_sandbox {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "-p", "ferry-host", "-p", "ferry-agent"]);
        if Path::new(env!("CARGO_BIN_EXE_ferry"))
            .parent()
            .is_some_and(|d| d.ends_with("release"))
        {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "cannot build ferry-host");
        targets.push(split("sandboxed", &[]));
        targets.push(split("no-sandbox", &["--sandbox=none"]));
    }
    eprintln!(
        "fsbench: {} files, {} MiB sequential, {} rounds (median), target order rotated per round",
        w.files, w.mb, rounds
    );
    // results[target][row] = samples
    let mut results: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); rows.len()]; targets.len()];
    for round in 0..rounds {
        // Rotate who goes first: the host filesystem's state (e.g. ext4's inode allocator after
        // earlier deletes) changes during a round, and no target should always meet it last.
        for k in 0..targets.len() {
            let t = (round + k) % targets.len();
            let target = &targets[t];
            let row = run_round(&w, &g, &target.root, round);
            for (r, d) in row.into_iter().enumerate() {
                results[t][r].push(d);
            }
            eprintln!("  round {round}: {} done", target.name);
        }
    }
    let med: Vec<Vec<Duration>> = results
        .into_iter()
        .map(|rows| rows.into_iter().map(median).collect())
        .collect();

    println!();
    if with_before {
        println!(
            "| workload ({} files, {} MiB) | native | bindfs | ferry | before | bindfs/native | ferry/native | ferry/bindfs | before/native | before/bindfs |",
            w.files, w.mb
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    } else {
        println!(
            "| workload ({} files, {} MiB) | native | bindfs | ferry | bindfs/native | ferry/native | ferry/bindfs |",
            w.files, w.mb
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
    }
    for (r, name) in rows.iter().enumerate() {
        let n = med[0][r].as_secs_f64();
        let b = med[1][r].as_secs_f64();
        let f = med[2][r].as_secs_f64();
        if with_before {
            let o = med[3][r].as_secs_f64();
            if r >= fio_first {
                println!(
                    "| {name} (ops/s, higher is better) | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2}x | {:.2}x | {:.2}x | {:.2}x |",
                    1.0 / n,
                    1.0 / b,
                    1.0 / f,
                    1.0 / o,
                    n / b,
                    n / f,
                    b / f,
                    n / o,
                    b / o
                );
            } else {
                println!(
                    "| {name} | {n:.3} s | {b:.3} s | {f:.3} s | {o:.3} s | {:.2}x | {:.2}x | {:.2}x | {:.2}x | {:.2}x |",
                    b / n,
                    f / n,
                    f / b,
                    o / n,
                    o / b
                );
            }
            continue;
        }
        if r >= fio_first {
            // Throughputs: ratios of operations per second (higher is better).
            println!(
                "| {name} (ops/s, higher is better) | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2}x | {:.2}x |",
                1.0 / n,
                1.0 / b,
                1.0 / f,
                n / b,
                n / f,
                b / f
            );
            continue;
        }
        println!(
            "| {name} | {:.3} s | {:.3} s | {:.3} s | {:.2}x | {:.2}x | {:.2}x |",
            n,
            b,
            f,
            b / n,
            f / n,
            f / b
        );
    }
    if with_sandbox {
        let (sb, none) = (sandbox_first, sandbox_first + 1);
        println!();
        println!(
            "| workload: ferry-host + ferry-agent | sandboxed | --sandbox=none | sandboxed/none (time) |"
        );
        println!("|---|---:|---:|---:|");
        for (r, name) in rows.iter().enumerate() {
            let s = med[sb][r].as_secs_f64();
            let o = med[none][r].as_secs_f64();
            if r >= fio_first {
                println!(
                    "| {name} (ops/s, higher is better) | {:.0} | {:.0} | {:.2}x |",
                    1.0 / s,
                    1.0 / o,
                    s / o
                );
            } else {
                println!("| {name} | {s:.3} s | {o:.3} s | {:.2}x |", s / o);
            }
        }
    }
    drop(targets);
}
