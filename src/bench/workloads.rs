//! The workloads: what one round does on one target's directory, row by row.
//!
//! Every row is timed as a whole (so a row of 2,000 stats is one sample); fio rows are
//! throughputs, kept as seconds per operation so medians and ratios read alike for every row
//! (a ratio above 1 is slower than the baseline). Each row checks what it read (sizes, counts),
//! so a target that answers wrongly fails the run instead of looking fast.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

/// The row groups, chosen with `--workloads` (`ferry bench`) or `FERRY_BENCH_GROUPS`
/// (`benches/fsbench.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Many 4 KiB files in one directory: create, stat, missing names, read, readdir, unlink.
    Files,
    /// Walking a tree of directories, statting every entry.
    Walk,
    /// Sequential write (with and without fsync) and read.
    Seq,
    /// 4 KiB reads and writes at random offsets, with an fsync variant.
    Rand,
    /// `git status` in a committed repository (needs git).
    Git,
    /// fio with psync (needs fio).
    Fio,
    /// A change on the host side until an inotify watcher on the target hears of it (needs
    /// the target's host side: a native directory, or a share this run started).
    Events,
}

impl Group {
    pub const ALL: [Group; 7] = [
        Group::Files,
        Group::Walk,
        Group::Seq,
        Group::Rand,
        Group::Git,
        Group::Fio,
        Group::Events,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Group::Files => "files",
            Group::Walk => "walk",
            Group::Seq => "seq",
            Group::Rand => "rand",
            Group::Git => "git",
            Group::Fio => "fio",
            Group::Events => "events",
        }
    }

    /// The program the group runs, if it needs one.
    pub fn program(self) -> Option<&'static str> {
        match self {
            Group::Git => Some("git"),
            Group::Fio => Some("fio"),
            _ => None,
        }
    }

    /// A comma-separated list of group names, e.g. `files,seq`.
    pub fn parse_list(s: &str) -> Result<Vec<Group>> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some(g) = Group::ALL.into_iter().find(|g| g.name() == name) else {
                bail!(
                    "unknown workload group {name:?} (known: {})",
                    Group::ALL.map(Group::name).join(",")
                );
            };
            if !out.contains(&g) {
                out.push(g);
            }
        }
        ensure!(!out.is_empty(), "no workload group named in {s:?}");
        Ok(out)
    }
}

/// One row of the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Stable name, the key in the JSON output.
    pub id: &'static str,
    /// What the row measures, for the table.
    pub title: &'static str,
    pub group: Group,
    /// A throughput (fio): shown as operations per second; kept as seconds per operation.
    pub throughput: bool,
}

impl Row {
    /// What a sample of this row is: `s` (the row timed as a whole), `s/op` (a throughput),
    /// `s/event` (the median latency of a round's events).
    pub fn unit(&self) -> &'static str {
        match (self.throughput, self.group) {
            (true, _) => "s/op",
            (false, Group::Events) => "s/event",
            (false, _) => "s",
        }
    }
}

const fn row(id: &'static str, title: &'static str, group: Group) -> Row {
    Row {
        id,
        title,
        group,
        throughput: false,
    }
}

const fn fio_row(id: &'static str, title: &'static str) -> Row {
    Row {
        id,
        title,
        group: Group::Fio,
        throughput: true,
    }
}

/// Every row, in the order a round runs them.
pub const ROWS: &[Row] = &[
    row("create", "create-write-close 4 KiB files", Group::Files),
    row("stat-cold", "stat files, cold", Group::Files),
    row("stat-warm", "stat files, warm", Group::Files),
    row("missing", "stat missing names, first probe", Group::Files),
    row(
        "read-cold",
        "open-read-close 4 KiB files, cold",
        Group::Files,
    ),
    row(
        "read-warm",
        "open-read-close 4 KiB files, warm",
        Group::Files,
    ),
    row("readdir", "readdir (x20)", Group::Files),
    row("unlink", "unlink files", Group::Files),
    row(
        "walk-cold",
        "walk a tree, stat every entry, cold",
        Group::Walk,
    ),
    row(
        "walk-warm",
        "walk a tree, stat every entry, warm",
        Group::Walk,
    ),
    row("seq-write", "sequential write, no fsync", Group::Seq),
    row("seq-write-fsync", "sequential write + fsync", Group::Seq),
    row("seq-read-cold", "sequential read, cold", Group::Seq),
    row("seq-read-warm", "sequential read, warm", Group::Seq),
    row("rand-read-cold", "4 KiB random reads, cold", Group::Rand),
    row("rand-read-warm", "4 KiB random reads, warm", Group::Rand),
    row("rand-write", "4 KiB random writes, no fsync", Group::Rand),
    row(
        "rand-write-fsync",
        "4 KiB random writes, fdatasync after each",
        Group::Rand,
    ),
    row("git-status-cold", "git status, first run, cold", Group::Git),
    row("git-status-warm", "git status, second run", Group::Git),
    fio_row("fio-seq-read", "fio psync seq read 1 MiB, cold"),
    fio_row("fio-rand-read", "fio psync 4k random read"),
    fio_row("fio-rand-write", "fio psync 4k random write"),
    fio_row("fio-mix-fsync", "fio psync 4k 70/30 mix, fsync/32"),
    row(
        "event-create",
        "host create until the watcher's IN_CREATE",
        Group::Events,
    ),
    row(
        "event-modify",
        "host append until the watcher's IN_MODIFY",
        Group::Events,
    ),
    row(
        "event-delete",
        "host unlink until the watcher's IN_DELETE",
        Group::Events,
    ),
];

/// fio's arguments per fio row, in [`ROWS`] order.
const FIO_ARGS: &[&str] = &[
    "--rw=read --bs=1M --invalidate=1",
    // The file was just read: these run on whatever each target keeps cached.
    "--rw=randread --bs=4k --invalidate=0",
    "--rw=randwrite --bs=4k --invalidate=0",
    "--rw=randrw --rwmixread=70 --bs=4k --fsync=32 --invalidate=0",
];

/// The rows of `groups`, in run order.
pub fn rows_of(groups: &[Group]) -> Vec<Row> {
    ROWS.iter()
        .filter(|r| groups.contains(&r.group))
        .copied()
        .collect()
}

/// How big each workload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    /// 4 KiB files of the `files` rows, and files of the `walk` tree.
    pub files: usize,
    /// MiB written and read by the `seq` rows.
    pub seq_mb: usize,
    /// MiB of the file the `rand` rows work in.
    pub rand_mb: usize,
    /// 4 KiB reads or writes per `rand` row.
    pub rand_ops: usize,
    /// Writes (each followed by fdatasync) of `rand-write-fsync`.
    pub fsync_ops: usize,
    /// Files of the committed repository `git status` runs in.
    pub git_files: usize,
    /// MiB of fio's file, and seconds per timed fio job.
    pub fio_mb: usize,
    pub fio_secs: usize,
    /// Files created, appended to and deleted on the host side per `events` round (each
    /// `events` sample is the median of this many changes; at least 1).
    pub events: usize,
}

/// Listings per readdir sample: one pass of a few thousand entries is too short to time alone.
pub const READDIR_PASSES: usize = 20;

/// Whether "cold" rows really start cold.
#[derive(Debug, Clone, Copy)]
pub struct Caches {
    /// Dropping the kernel's caches works here (root): cold rows start cold.
    pub droppable: bool,
}

impl Caches {
    /// Tries to drop the caches once, to learn whether it is allowed.
    pub fn probe() -> Caches {
        Caches {
            droppable: drop_caches(),
        }
    }

    /// Drops dentries, inodes and the page cache (the FUSE mounts' too) when allowed.
    pub fn drop(self) {
        if self.droppable {
            drop_caches();
        }
    }
}

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// A row's sample: how long `f` took.
fn time(f: impl FnOnce() -> Result<()>) -> Result<Option<Duration>> {
    let t = Instant::now();
    f()?;
    Ok(Some(t.elapsed()))
}

fn small_file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("f{i:05}"))
}

const SMALL: usize = 4096;

fn create(dir: &Path, files: usize) -> Result<()> {
    let block = [0x5au8; SMALL];
    for i in 0..files {
        let p = small_file(dir, i);
        let mut f = fs::File::create(&p).with_context(|| format!("create {}", p.display()))?;
        f.write_all(&block)
            .with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

fn stat(dir: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let p = small_file(dir, i);
        let m = fs::metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        ensure!(m.len() == SMALL as u64, "{}: size {}", p.display(), m.len());
    }
    Ok(())
}

/// Each missing name probed once, as module resolvers do.
fn stat_missing(dir: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let p = dir.join(format!("m{i:05}.js"));
        match fs::metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => bail!("{}: expected ENOENT, got {other:?}", p.display()),
        }
    }
    Ok(())
}

fn read_small(dir: &Path, files: usize) -> Result<()> {
    let mut buf = Vec::with_capacity(2 * SMALL);
    for i in 0..files {
        buf.clear();
        let p = small_file(dir, i);
        fs::File::open(&p)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .with_context(|| format!("read {}", p.display()))?;
        ensure!(
            buf.len() == SMALL,
            "{}: read {} bytes",
            p.display(),
            buf.len()
        );
    }
    Ok(())
}

fn readdir(dir: &Path, files: usize) -> Result<()> {
    for _ in 0..READDIR_PASSES {
        let n = fs::read_dir(dir)
            .with_context(|| format!("readdir {}", dir.display()))?
            .count();
        ensure!(n == files, "{}: {n} entries, not {files}", dir.display());
    }
    Ok(())
}

fn unlink(dir: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let p = small_file(dir, i);
        fs::remove_file(&p).with_context(|| format!("unlink {}", p.display()))?;
    }
    Ok(())
}

/// Files per directory of the walk tree, and directories per directory above them.
const WALK_FANOUT: usize = 50;

/// `files` small files in directories of [`WALK_FANOUT`], themselves [`WALK_FANOUT`] to a
/// parent: a source tree's shape.
fn make_tree(tree: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let leaf = i / WALK_FANOUT;
        let d = tree.join(format!(
            "a{:03}/b{:03}",
            leaf / WALK_FANOUT,
            leaf % WALK_FANOUT
        ));
        if i % WALK_FANOUT == 0 {
            fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        let p = d.join(format!("f{i:06}.txt"));
        fs::write(&p, format!("file {i}\n")).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

/// Lists every directory under `dir` and lstats every entry (what `find -ls` or `ls -lR` do);
/// returns the number of entries.
fn walk(dir: &Path) -> Result<usize> {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("readdir {}", d.display()))? {
            let p = e?.path();
            let m = fs::symlink_metadata(&p).with_context(|| format!("lstat {}", p.display()))?;
            n += 1;
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(n)
}

/// Entries of a tree of `files` files made by [`make_tree`].
fn tree_entries(files: usize) -> usize {
    let leaves = files.div_ceil(WALK_FANOUT);
    files + leaves + leaves.div_ceil(WALK_FANOUT)
}

const MIB: usize = 1 << 20;

fn seq_write(path: &Path, mb: usize, fsync: bool) -> Result<()> {
    let chunk = vec![0xa5u8; MIB];
    let mut f = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    for _ in 0..mb {
        f.write_all(&chunk)
            .with_context(|| format!("write {}", path.display()))?;
    }
    if fsync {
        f.sync_all()
            .with_context(|| format!("fsync {}", path.display()))?;
    }
    Ok(())
}

fn seq_read(path: &Path, mb: usize) -> Result<()> {
    let mut chunk = vec![0u8; MIB];
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut total = 0;
    loop {
        let n = f
            .read(&mut chunk)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        total += n;
    }
    ensure!(total == mb * MIB, "{}: read {total} bytes", path.display());
    Ok(())
}

/// The 4 KiB block offsets of the random rows: the same pseudo-random sequence on every
/// target and round (a 64-bit LCG, Knuth's MMIX constants).
fn offsets(blocks: usize, n: usize, seed: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % blocks as u64) * SMALL as u64
        })
        .collect()
}

fn rand_read(path: &Path, offs: &[u64]) -> Result<()> {
    let f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = [0u8; SMALL];
    for &o in offs {
        f.read_exact_at(&mut buf, o)
            .with_context(|| format!("read {} at {o}", path.display()))?;
    }
    Ok(())
}

fn rand_write(path: &Path, offs: &[u64], fdatasync: bool) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let buf = [0x3cu8; SMALL];
    for &o in offs {
        f.write_all_at(&buf, o)
            .with_context(|| format!("write {} at {o}", path.display()))?;
        if fdatasync {
            f.sync_data()
                .with_context(|| format!("fdatasync {}", path.display()))?;
        }
    }
    Ok(())
}

fn git(repo: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "-c",
            "gc.auto=0",
            "-c",
            "safe.directory=*",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("cannot run git (is it installed?)")?;
    ensure!(
        status.success(),
        "git {args:?} in {} failed",
        repo.display()
    );
    Ok(())
}

/// A committed repository of `files` small files in directories of 100.
fn make_repo(repo: &Path, files: usize) -> Result<()> {
    fs::create_dir(repo).with_context(|| format!("mkdir {}", repo.display()))?;
    git(repo, &["init", "-q"])?;
    for i in 0..files {
        let d = repo.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir(&d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        fs::write(d.join(format!("f{i:05}.txt")), format!("file {i}\n"))?;
    }
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "-m", "bench"])
}

/// Runs one fio job (psync, one thread) on `file` and returns its operations per second,
/// reads and writes together.
fn fio(file: &Path, sizes: &Sizes, args: &str, caches: Caches) -> Result<f64> {
    let cold = args.contains("--rw=read ");
    let missing = "cannot run fio (is it installed? apt-get install fio)";
    if cold {
        // Lay the file out first, then drop every cache (the host's too): a cold read.
        let status = Command::new("fio")
            .args(["--name=layout", "--rw=write", "--bs=1M", "--end_fsync=1"])
            .arg(format!("--filename={}", file.display()))
            .arg(format!("--size={}M", sizes.fio_mb))
            .stdout(Stdio::null())
            .status()
            .context(missing)?;
        ensure!(status.success(), "fio layout of {} failed", file.display());
        caches.drop();
    }
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=bench",
        "--ioengine=psync",
        "--numjobs=1",
        "--output-format=terse",
        "--terse-version=3",
    ])
    .arg(format!("--filename={}", file.display()))
    .arg(format!("--size={}M", sizes.fio_mb))
    .args(args.split(' '));
    if !cold {
        cmd.arg(format!("--runtime={}", sizes.fio_secs))
            .arg("--time_based");
    }
    let out = cmd.stderr(Stdio::inherit()).output().context(missing)?;
    ensure!(out.status.success(), "fio {args} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let f: Vec<&str> = line.split(';').collect();
    // terse v3: field 7 is read IOPS, field 48 write IOPS (0-based).
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let ops = num(7) + num(48);
    ensure!(ops > 0.0, "fio {args}: no result in {line:?}");
    Ok(ops)
}

/// Runs every row of `groups` once in `dir` (a directory of the target's own, kept between
/// rounds), returning one duration per row in [`rows_of`] order. Round `round` works in names
/// of its own; the walk tree and the git repository are made once (untimed) and reused.
/// `host` is `dir` as the host side sees it (itself on a native directory), which the
/// `events` rows change; without it they cannot run.
pub fn run_round(
    sizes: &Sizes,
    groups: &[Group],
    dir: &Path,
    host: Option<&Path>,
    round: usize,
    caches: Caches,
) -> Result<Vec<Option<Duration>>> {
    let mut out = Vec::new();
    let n = sizes.files;
    for &g in Group::ALL.iter().filter(|g| groups.contains(g)) {
        match g {
            Group::Files => {
                let d = dir.join(format!("files{round}"));
                fs::create_dir(&d).with_context(|| format!("mkdir {}", d.display()))?;
                out.push(time(|| create(&d, n))?);
                caches.drop();
                out.push(time(|| stat(&d, n))?);
                out.push(time(|| stat(&d, n))?);
                out.push(time(|| stat_missing(&d, n))?);
                caches.drop();
                stat(&d, n)?;
                out.push(time(|| read_small(&d, n))?);
                out.push(time(|| read_small(&d, n))?);
                out.push(time(|| readdir(&d, n))?);
                out.push(time(|| unlink(&d, n))?);
                fs::remove_dir(&d).with_context(|| format!("rmdir {}", d.display()))?;
            }
            Group::Walk => {
                let tree = dir.join("tree");
                if !tree.exists() {
                    make_tree(&tree, n)?;
                }
                let want = tree_entries(n);
                let check = |got: usize| {
                    ensure!(
                        got == want,
                        "{}: walked {got} entries, not {want}",
                        tree.display()
                    );
                    Ok(())
                };
                caches.drop();
                out.push(time(|| check(walk(&tree)?))?);
                out.push(time(|| check(walk(&tree)?))?);
            }
            Group::Seq => {
                let big = dir.join(format!("seq{round}"));
                out.push(time(|| seq_write(&big, sizes.seq_mb, false))?);
                fs::remove_file(&big)?;
                out.push(time(|| seq_write(&big, sizes.seq_mb, true))?);
                caches.drop();
                out.push(time(|| seq_read(&big, sizes.seq_mb))?);
                out.push(time(|| seq_read(&big, sizes.seq_mb))?);
                fs::remove_file(&big)?;
            }
            Group::Rand => {
                let file = dir.join(format!("rand{round}"));
                seq_write(&file, sizes.rand_mb, true)?;
                let blocks = (sizes.rand_mb * MIB / SMALL).max(1);
                let reads = offsets(blocks, sizes.rand_ops, 1);
                caches.drop();
                out.push(time(|| rand_read(&file, &reads))?);
                out.push(time(|| rand_read(&file, &reads))?);
                let writes = offsets(blocks, sizes.rand_ops, 2);
                out.push(time(|| rand_write(&file, &writes, false))?);
                let synced = offsets(blocks, sizes.fsync_ops, 3);
                out.push(time(|| rand_write(&file, &synced, true))?);
                fs::remove_file(&file)?;
            }
            Group::Git => {
                let repo = dir.join("repo");
                if !repo.exists() {
                    make_repo(&repo, sizes.git_files)?;
                }
                caches.drop();
                out.push(time(|| git(&repo, &["status", "--porcelain"]))?);
                out.push(time(|| git(&repo, &["status", "--porcelain"]))?);
            }
            Group::Fio => {
                let file = dir.join("fio.dat");
                for args in FIO_ARGS {
                    let ops = fio(&file, sizes, args, caches)?;
                    out.push(Some(Duration::from_secs_f64(1.0 / ops)));
                }
                fs::remove_file(&file)?;
            }
            Group::Events => {
                let Some(host) = host else {
                    bail!(
                        "the events rows need the host side of {}, which is not known",
                        dir.display()
                    );
                };
                let name = format!("events{round}");
                let d = dir.join(&name);
                fs::create_dir(&d).with_context(|| format!("mkdir {}", d.display()))?;
                match super::events::round(&d, &host.join(&name), sizes.events)? {
                    Some(l) => out.extend(l.map(Some)),
                    None => out.extend([None; 3]),
                }
                fs::remove_dir(&d).with_context(|| format!("rmdir {}", d.display()))?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_has_rows_and_fio_args_match() {
        for g in Group::ALL {
            assert!(ROWS.iter().any(|r| r.group == g), "{g:?} has no row");
        }
        let fio = ROWS.iter().filter(|r| r.group == Group::Fio).count();
        assert_eq!(fio, FIO_ARGS.len());
        let mut ids: Vec<&str> = ROWS.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), ROWS.len(), "row ids are unique");
    }

    #[test]
    fn group_lists_parse_and_refuse_unknown_names() {
        assert_eq!(
            Group::parse_list("files, seq,files").unwrap(),
            vec![Group::Files, Group::Seq]
        );
        let e = Group::parse_list("files,disk").unwrap_err().to_string();
        assert!(e.contains("\"disk\"") && e.contains("files,walk"), "{e}");
        assert!(Group::parse_list(",").is_err());
    }

    #[test]
    fn a_round_yields_one_sample_per_row_and_counts_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = Sizes {
            files: 120,
            seq_mb: 1,
            rand_mb: 1,
            rand_ops: 20,
            fsync_ops: 3,
            git_files: 0,
            fio_mb: 0,
            fio_secs: 0,
            events: 2,
        };
        let groups = [
            Group::Files,
            Group::Walk,
            Group::Seq,
            Group::Rand,
            Group::Events,
        ];
        let caches = Caches { droppable: false };
        for round in 0..2 {
            let s =
                run_round(&sizes, &groups, dir.path(), Some(dir.path()), round, caches).unwrap();
            assert_eq!(s.len(), rows_of(&groups).len());
        }
        let e = run_round(&sizes, &[Group::Events], dir.path(), None, 2, caches).unwrap_err();
        assert!(e.to_string().contains("need the host side"), "{e}");
        assert_eq!(walk(&dir.path().join("tree")).unwrap(), tree_entries(120));
    }

    #[test]
    fn offsets_stay_inside_the_file() {
        let o = offsets(256, 1000, 7);
        assert!(
            o.iter()
                .all(|&x| x < 256 * SMALL as u64 && x % SMALL as u64 == 0)
        );
        assert_eq!(o, offsets(256, 1000, 7));
    }
}
