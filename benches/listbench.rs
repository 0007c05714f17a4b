//! Long listings (issue 22): `ls -l` of one big directory, `ls -lR` and `find -ls` over a tree,
//! each cold (every cache dropped) and warm (run again), on a native directory, a bindfs mount
//! of one and a Ferry mount (`ferry-host` and `ferry-agent` over a Unix socket, `cached`
//! mode), measured in one run and printed as ratios; plus the requests Ferry's server counted
//! per row (its control socket, as `ferry status --json` reads it), per listed entry.
//!
//! `cargo bench --bench listbench` (root, /dev/fuse and bindfs needed).
//! Environment: FERRY_BENCH_BIG (entries of the big directory, default 100000),
//! FERRY_BENCH_TREE (files of the tree, in directories of 100, default 20000),
//! FERRY_BENCH_ROUNDS (default 3; the median is reported), FERRY_BENCH_BASELINE_DIR (a
//! directory holding another build's `ferry-host` and `ferry-agent`, say the main branch's,
//! measured in the same run as a fourth column, `before`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One way of reaching the data.
struct Target {
    name: &'static str,
    root: PathBuf,
    processes: Vec<Child>,
    /// Ferry's control socket.
    control: Option<PathBuf>,
}

impl Drop for Target {
    fn drop(&mut self) {
        // The mounting process first (SIGTERM lets the mount go away cleanly), then the host.
        for mut child in self.processes.drain(..).rev() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.root)
            .stderr(Stdio::null())
            .status();
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
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Fills `root` with `big/` (`big` empty files) and `tree/` (`tree` small files in
/// directories of 100).
fn populate(root: &Path, big: usize, tree: usize) {
    let b = root.join("big");
    fs::create_dir(&b).unwrap();
    for i in 0..big {
        fs::File::create(b.join(format!("entry-{i:06}"))).unwrap();
    }
    let t = root.join("tree");
    fs::create_dir(&t).unwrap();
    for i in 0..tree {
        let d = t.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir(&d).unwrap();
        }
        fs::write(d.join(format!("f{i:05}.txt")), format!("file {i}\n")).unwrap();
    }
}

/// Runs a listing command in `dir`, its output discarded (ls's is large: a pipe to /dev/null
/// costs the same for every target).
fn list(dir: &Path, cmd: &[&str]) -> Duration {
    let t = Instant::now();
    let st = Command::new(cmd[0])
        .args(&cmd[1..])
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let d = t.elapsed();
    assert!(st.success(), "{cmd:?} in {} failed", dir.display());
    d
}

/// Requests per opcode the server counted for its (one) guest so far.
fn counts(control: &Path) -> BTreeMap<String, u64> {
    let mut s = UnixStream::connect(control).expect("the control socket answers");
    s.write_all(b"status\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let st: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!("the control socket's status is JSON ({e}): {text}");
    });
    let mut out = BTreeMap::new();
    for g in st["guests"].as_array().into_iter().flatten() {
        for e in g["exports"].as_array().into_iter().flatten() {
            for r in e["requests"].as_array().into_iter().flatten() {
                let op = r["op"].as_str().unwrap_or("?").to_string();
                *out.entry(op).or_insert(0) += r["count"].as_u64().unwrap_or(0);
            }
        }
    }
    out
}

/// The rows: (name, directory under the target's root, command, cold).
const ROWS: &[(&str, &str, &[&str], bool)] = &[
    ("ls -l big directory, cold", "big", &["ls", "-l"], true),
    ("ls -l big directory, warm", "big", &["ls", "-l"], false),
    ("ls -lR tree, cold", "tree", &["ls", "-lR"], true),
    ("ls -lR tree, warm", "tree", &["ls", "-lR"], false),
    ("find -ls tree, cold", "tree", &["find", ".", "-ls"], true),
    ("find -ls tree, warm", "tree", &["find", ".", "-ls"], false),
];

/// Starts `ferry-host` (with a control socket) and `ferry-agent` from directory `bins`,
/// serving `src` at `mnt`.
fn ferry(name: &'static str, bins: &Path, src: &Path, mnt: &Path, base: &Path) -> Target {
    let sock = base.join(format!("{name}.sock"));
    let control = base.join(format!("{name}-control.sock"));
    let host = Command::new(bins.join("ferry-host"))
        .arg("--export")
        .arg(format!("s={}", src.display()))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--control")
        .arg(format!("unix:{}", control.display()))
        .arg("--no-auth")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("ferry-host runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(sock.exists() && control.exists()) {
        assert!(Instant::now() < deadline, "ferry-host did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent = Command::new(bins.join("ferry-agent"))
        .arg("--connect")
        .arg(format!("unix:{}", sock.display()))
        .arg("--mount")
        .arg(format!("s={}", mnt.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("ferry-agent runs");
    wait_for_mount(mnt, " ferry:");
    Target {
        name,
        root: mnt.to_path_buf(),
        processes: vec![host, agent],
        control: Some(control),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !Path::new("/dev/fuse").exists() || !nix::unistd::geteuid().is_root() {
        eprintln!("*** listbench SKIPPED: needs root and /dev/fuse ***");
        return;
    }
    let big = env_or("FERRY_BENCH_BIG", 100_000);
    let tree = env_or("FERRY_BENCH_TREE", 20_000);
    let rounds = env_or("FERRY_BENCH_ROUNDS", 3).max(1);
    let base = tempfile::Builder::new()
        .prefix("ferry-listbench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let mk = |n: &str| {
        let p = base.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    };
    // ferry-host and ferry-agent are other packages' binaries: build them in this profile.
    let dir = Path::new(env!("CARGO_BIN_EXE_ferry")).parent().unwrap();
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "-p", "ferry-host", "-p", "ferry-agent"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.ends_with("release") {
        build.arg("--release");
    }
    assert!(
        build.status().unwrap().success(),
        "building the binaries failed"
    );

    eprintln!("listbench: {big} entries, a tree of {tree} files, {rounds} rounds (median)");
    let native_root = mk("native");
    let bind_src = mk("bindfs-src");
    let ferry_src = mk("ferry-src");
    let before_src = mk("before-src");
    let baseline = std::env::var("FERRY_BENCH_BASELINE_DIR").ok();
    for root in [&native_root, &bind_src, &ferry_src] {
        populate(root, big, tree);
    }
    if baseline.is_some() {
        populate(&before_src, big, tree);
    }
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
    let mut targets = vec![
        Target {
            name: "native",
            root: native_root,
            processes: Vec::new(),
            control: None,
        },
        Target {
            name: "bindfs",
            root: bind_mnt,
            processes: vec![bindfs],
            control: None,
        },
        ferry("ferry", dir, &ferry_src, &mk("ferry-mnt"), base.path()),
    ];
    if let Some(b) = &baseline {
        targets.push(ferry(
            "before",
            Path::new(b),
            &before_src,
            &mk("before-mnt"),
            base.path(),
        ));
    }
    let entries = |row: usize| if ROWS[row].1 == "big" { big } else { tree };
    // samples[target][row]; requests[target][row]: per opcode, the last round's.
    let mut samples = vec![vec![Vec::new(); ROWS.len()]; targets.len()];
    let mut requests = vec![vec![BTreeMap::new(); ROWS.len()]; targets.len()];
    for round in 0..rounds {
        for k in 0..targets.len() {
            let t = (round + k) % targets.len();
            let target = &targets[t];
            for (r, (_, sub, cmd, cold)) in ROWS.iter().enumerate() {
                if *cold {
                    drop_caches();
                }
                let before = target.control.as_deref().map(counts);
                let d = list(&target.root.join(sub), cmd);
                if let (Some(c), Some(before)) = (target.control.as_deref(), before) {
                    let after = counts(c);
                    requests[t][r] = after
                        .into_iter()
                        .map(|(op, n)| {
                            let was = before.get(&op).copied().unwrap_or(0);
                            (op, n - was)
                        })
                        .filter(|(_, n)| *n > 0)
                        .collect();
                }
                samples[t][r].push(d);
            }
            eprintln!("  round {round}: {} done", target.name);
        }
    }
    let med: Vec<Vec<f64>> = samples
        .into_iter()
        .map(|rows| rows.into_iter().map(|v| median(v).as_secs_f64()).collect())
        .collect();
    let with_before = targets.len() > 3;
    println!();
    print!(
        "| workload ({big} entries; tree of {tree}) | native | bindfs | ferry |{} bindfs/native | ferry/native | ferry/bindfs |",
        if with_before { " before |" } else { "" }
    );
    println!("{}", if with_before { " before/native |" } else { "" });
    println!(
        "|---|---:|---:|---:|---:|---:|---:|{}",
        if with_before { "---:|---:|" } else { "" }
    );
    for (r, (name, ..)) in ROWS.iter().enumerate() {
        let (n, b, f) = (med[0][r], med[1][r], med[2][r]);
        let before = if with_before {
            format!(" {:.3} s |", med[3][r])
        } else {
            String::new()
        };
        let before_ratio = if with_before {
            format!(" {:.2}x |", med[3][r] / n)
        } else {
            String::new()
        };
        println!(
            "| {name} | {n:.3} s | {b:.3} s | {f:.3} s |{before} {:.2}x | {:.2}x | {:.2}x |{before_ratio}",
            b / n,
            f / n,
            f / b
        );
    }
    println!();
    println!("Requests the server counted per row (last round), per listed entry:");
    println!();
    for t in 2..targets.len() {
        println!("| {} | requests per entry |", targets[t].name);
        println!("|---|---|");
        for (r, (name, ..)) in ROWS.iter().enumerate() {
            let per: Vec<String> = requests[t][r]
                .iter()
                .map(|(op, n)| format!("{op} {:.4}", *n as f64 / entries(r) as f64))
                .collect();
            let getx = requests[t][r].get("Getxattr").copied().unwrap_or(0);
            println!(
                "| {name} | {} (Getxattr: {getx}) |",
                if per.is_empty() {
                    "none".to_string()
                } else {
                    per.join(", ")
                }
            );
        }
        println!();
    }
    drop(targets);
}
