//! Filesystem benchmark: a native directory, a bindfs mount of one, and a Ferry mount
//! (`ferry share`, host and agent joined by a Unix socket pair), measured in one run and
//! printed as one table with ratios. Absolute times on a shared machine are noise; the ratios
//! within one run are the result.
//!
//! `cargo bench --bench fsbench` (root, /dev/fuse and bindfs needed).
//! Environment: FERRY_BENCH_FILES (default 10000), FERRY_BENCH_MB (default 1024),
//! FERRY_BENCH_ROUNDS (default 3; the median is reported), FERRY_BENCH_IDS (an `--ids` mode for
//! the Ferry mount, e.g. `map:0:100000:65536`; the default mode when unset).

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
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
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

const ROWS: &[&str] = &[
    "create-write-close 4 KiB files",
    "stat files, cold",
    "stat files, warm",
    "open-read-close 4 KiB files",
    "readdir (x20)",
    "sequential write + fsync",
    "sequential read, cold",
];

/// Runs every row once on `root`, returning one duration per row.
fn run_round(w: &Workload, root: &Path, round: usize) -> Vec<Duration> {
    let dir = root.join(format!("round{round}"));
    fs::create_dir(&dir).unwrap();
    let big = root.join(format!("big{round}"));
    let mut out = Vec::new();
    out.push(time(|| w.create(&dir)));
    drop_caches();
    out.push(time(|| w.stat(&dir)));
    out.push(time(|| w.stat(&dir)));
    out.push(time(|| w.read(&dir)));
    out.push(time(|| w.readdir(&dir)));
    out.push(time(|| w.seq_write(&big)));
    drop_caches();
    out.push(time(|| w.seq_read(&big)));
    fs::remove_file(&big).unwrap();
    out
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
    };
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
    };

    let ferry_src = mk("ferry-src");
    let ferry_mnt = mk("ferry-mnt");
    let mut share = Command::new(env!("CARGO_BIN_EXE_ferry"));
    share.arg("share");
    if let Ok(ids) = std::env::var("FERRY_BENCH_IDS") {
        share.args(["--ids", &ids]);
        // In map mode the bench (guest root) is a mapped uid on the host, which may write
        // root's directory only through its mode.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&ferry_src, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let ferry = share
        .arg(&ferry_src)
        .arg(&ferry_mnt)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_mount(&ferry_mnt, " ferry:");
    let ferry = Target {
        name: "ferry",
        root: ferry_mnt,
        process: Some(ferry),
    };

    let targets = [native, bind, ferry];
    eprintln!(
        "fsbench: {} files, {} MiB sequential, {} rounds (median), target order rotated per round",
        w.files, w.mb, rounds
    );
    // results[target][row] = samples
    let mut results: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); ROWS.len()]; targets.len()];
    for round in 0..rounds {
        // Rotate who goes first: the host filesystem's state (e.g. ext4's inode allocator after
        // earlier deletes) changes during a round, and no target should always meet it last.
        for k in 0..targets.len() {
            let t = (round + k) % targets.len();
            let target = &targets[t];
            let row = run_round(&w, &target.root, round);
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
    println!(
        "| workload ({} files, {} MiB) | native | bindfs | ferry | bindfs/native | ferry/native | ferry/bindfs |",
        w.files, w.mb
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (r, name) in ROWS.iter().enumerate() {
        let n = med[0][r].as_secs_f64();
        let b = med[1][r].as_secs_f64();
        let f = med[2][r].as_secs_f64();
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
    drop(targets);
}
