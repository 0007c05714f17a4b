//! Filesystem benchmark: a native directory, a bindfs mount of one, and a Ferry mount
//! (`ferry share`, host and agent joined by a Unix socket pair), measured in one run and
//! printed as one table with ratios. Absolute times on a shared machine are noise; the ratios
//! within one run are the result. The workloads are `ferry bench`'s (`src/bench/`); this
//! harness only fixes the targets and reads its sizes from the environment.
//!
//! `cargo bench --bench fsbench` (root, /dev/fuse and bindfs needed; fio and git for their
//! rows).
//! Environment: FERRY_BENCH_FILES (default 10000), FERRY_BENCH_MB (sequential, default 1024),
//! FERRY_BENCH_RAND_MB (default 256) and FERRY_BENCH_RAND_OPS (default 20000; a tenth of them
//! with fdatasync), FERRY_BENCH_ROUNDS (default 3; the median is reported),
//! FERRY_BENCH_GIT_FILES (files of the committed repository `git status` runs in, default
//! 20000), FERRY_BENCH_FIO_MB (the fio file, default 256) and FERRY_BENCH_FIO_SECS (per fio
//! job, default 5), FERRY_BENCH_EVENTS (host changes per round of the `events` rows, default
//! 50), FERRY_BENCH_GROUPS (comma-separated subset of `files,walk,seq,rand,git,fio,events`,
//! default all: a quick run is
//! `FERRY_BENCH_GROUPS=files FERRY_BENCH_FILES=2000 FERRY_BENCH_ROUNDS=1`),
//! FERRY_BENCH_BASELINE (another `ferry` binary, say a build of the main branch, measured in
//! the same run as a fourth column, `before`).
//! FERRY_BENCH_IDS (an `--ids` mode for the Ferry mounts, e.g. `map:0:100000:65536`; the
//! default mode when unset).

use std::path::Path;

use ferry::bench::{Group, Kind, Plan, Sizes, Target};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful either way.
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    if !Path::new("/dev/fuse").exists() || !nix::unistd::geteuid().is_root() {
        eprintln!("*** fsbench SKIPPED: needs root and /dev/fuse ***");
        return Ok(());
    }
    let rand_ops = env_or("FERRY_BENCH_RAND_OPS", 20_000);
    let plan = Plan {
        sizes: Sizes {
            files: env_or("FERRY_BENCH_FILES", 10_000),
            seq_mb: env_or("FERRY_BENCH_MB", 1024),
            rand_mb: env_or("FERRY_BENCH_RAND_MB", 256).max(1),
            rand_ops,
            fsync_ops: rand_ops / 10,
            git_files: env_or("FERRY_BENCH_GIT_FILES", 20_000),
            fio_mb: env_or("FERRY_BENCH_FIO_MB", 256).max(1),
            fio_secs: env_or("FERRY_BENCH_FIO_SECS", 5).max(1),
            events: env_or("FERRY_BENCH_EVENTS", 50).max(1),
        },
        groups: Group::parse_list(
            &std::env::var("FERRY_BENCH_GROUPS")
                .unwrap_or_else(|_| "files,walk,seq,rand,git,fio,events".into()),
        )?,
        rounds: env_or("FERRY_BENCH_ROUNDS", 3).max(1),
    };
    let base = tempfile::Builder::new()
        .prefix("ferry-bench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let mut share_args = Vec::new();
    if let Ok(ids) = std::env::var("FERRY_BENCH_IDS") {
        share_args = vec!["--ids".to_string(), ids];
    }
    let ferry = Path::new(env!("CARGO_BIN_EXE_ferry"));
    let set_up =
        |kind, name: &str, bin: &Path| Target::set_up(kind, name, base.path(), bin, &share_args);
    let mut targets = vec![
        set_up(Kind::Native, "native", ferry)?,
        set_up(Kind::Bindfs, "bindfs", ferry)?,
        set_up(Kind::Ferry, "ferry", ferry)?,
    ];
    if let Ok(before) = std::env::var("FERRY_BENCH_BASELINE") {
        targets.push(set_up(Kind::Ferry, "before", Path::new(&before))?);
    }
    let results = ferry::bench::run(&plan, &targets, 0)?;
    drop(targets);
    // Ratios to native and to bindfs for every other target.
    let mut ratios = vec![(1, 0), (2, 0), (2, 1)];
    if results.targets.len() > 3 {
        ratios.extend([(3, 0), (3, 1)]);
    }
    println!("\n{}", results.table(&ratios));
    Ok(())
}
