//! `ferry bench`: the command line, and setting up its targets.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail, ensure};

use super::{Group, Mount, Plan, Sizes, Target};

/// The arguments of `ferry bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The directory every ratio is to, measured in the same run (e.g. a directory on the
    /// host's own disk). With --share, defaults to a directory beside the shared one.
    #[arg(long, value_name = "DIR")]
    pub baseline: Option<PathBuf>,
    /// A directory to compare with the baseline, e.g. a mount point; `NAME=DIR` names its
    /// column (default: target1, target2, ...). Repeatable.
    #[arg(long = "target", value_name = "[NAME=]DIR")]
    pub targets: Vec<String>,
    /// Set up the comparison here: a `native` directory and a `ferry share` mount of another
    /// directory, both in a new directory inside SRC (so on SRC's filesystem), removed
    /// afterwards.
    #[arg(long, value_name = "SRC")]
    pub share: Option<PathBuf>,
    /// An argument for the `ferry share` of --share, e.g. `--share-arg=--cache=consistent`.
    /// Repeatable.
    #[arg(long = "share-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub share_args: Vec<String>,
    /// With --share, also measure a bindfs mount of a third directory (bindfs must be
    /// installed).
    #[arg(long)]
    pub bindfs: bool,
    /// Workload groups, comma-separated: files, walk, seq, rand, git, fio. Default: files,
    /// walk, seq and rand, plus git and fio where they are installed.
    #[arg(long, value_name = "LIST")]
    pub workloads: Option<String>,
    /// Rounds; each runs every target, starting at another one.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub rounds: usize,
    /// 4 KiB files of the `files` rows, and files of the `walk` tree.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub files: usize,
    /// MiB of the sequential write and read.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub seq_mb: usize,
    /// MiB of the file the random reads and writes go to.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub rand_mb: usize,
    /// 4 KiB random reads or writes per row.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub rand_ops: usize,
    /// Random writes each followed by fdatasync.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub fsync_ops: usize,
    /// Files of the repository `git status` runs in.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub git_files: usize,
    /// MiB of fio's file.
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub fio_mb: usize,
    /// Seconds per timed fio job.
    #[arg(long, value_name = "SECS", default_value_t = 3)]
    pub fio_secs: usize,
    /// Print every result (medians, min, max, each round's sample and the ratios) as one JSON
    /// object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// True when `program` is found on PATH.
fn installed(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            let p = d.join(program);
            p.metadata().is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// The groups asked for, or the default ones this machine can run.
fn groups(list: Option<&str>) -> Result<Vec<Group>> {
    let groups = match list {
        Some(l) => Group::parse_list(l)?,
        None => Group::ALL
            .into_iter()
            .filter(|g| g.program().is_none_or(installed))
            .collect(),
    };
    for g in &groups {
        if let Some(p) = g.program() {
            ensure!(
                installed(p),
                "the {} workloads need {p}, which is not on PATH",
                g.name()
            );
        }
    }
    Ok(groups)
}

/// `NAME=DIR` or `DIR`.
fn named(spec: &str, default: String) -> (String, PathBuf) {
    match spec.split_once('=') {
        Some((n, d)) if !n.is_empty() && !n.contains('/') => (n.to_string(), PathBuf::from(d)),
        _ => (default, PathBuf::from(spec)),
    }
}

/// A new directory for this run inside `src`: `ferry-bench.PID`.
fn work_dir(src: &Path) -> Result<PathBuf> {
    let w = src.join(format!("ferry-bench.{}", std::process::id()));
    std::fs::create_dir(&w)
        .map_err(|e| anyhow::anyhow!("--share: cannot create {}: {e}", w.display()))?;
    Ok(w)
}

/// Removes the --share work directory once its targets (and mounts) are gone.
struct WorkDir(Option<PathBuf>);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            if let Err(e) = std::fs::remove_dir_all(&w) {
                eprintln!("ferry bench: cannot remove {}: {e}", w.display());
            }
        }
    }
}

/// Runs `ferry bench`: sets up the targets, runs every round, prints the table or JSON.
/// `ferry` is the binary that runs `ferry share` for --share.
pub fn run(args: BenchArgs, ferry: &Path) -> Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.files > 0, "--files must be at least 1");
    let plan = Plan {
        sizes: Sizes {
            files: args.files,
            seq_mb: args.seq_mb,
            rand_mb: args.rand_mb.max(1),
            rand_ops: args.rand_ops,
            fsync_ops: args.fsync_ops,
            git_files: args.git_files,
            fio_mb: args.fio_mb.max(1),
            fio_secs: args.fio_secs.max(1),
        },
        groups: groups(args.workloads.as_deref())?,
        rounds: args.rounds,
    };
    if args.share.is_none() && args.baseline.is_none() {
        bail!("nothing to compare with: give --baseline DIR (and --target DIR), or --share SRC");
    }
    if args.share.is_none() && (args.bindfs || !args.share_args.is_empty()) {
        bail!("--bindfs and --share-arg go with --share");
    }
    // Declared before the targets, so dropped after them (and their mounts).
    let mut work = WorkDir(None);
    let mut targets: Vec<Target> = Vec::new();
    let mut baseline = None;
    if let Some(dir) = &args.baseline {
        targets.push(Target::in_dir("baseline", dir)?);
        baseline = Some(0);
    }
    if let Some(src) = &args.share {
        let w = work_dir(src)?;
        work.0 = Some(w.clone());
        let sub = |n: &str| -> Result<PathBuf> {
            let p = w.join(n);
            std::fs::create_dir(&p)?;
            Ok(p)
        };
        if baseline.is_none() {
            targets.push(Target::in_dir("native", &sub("native")?)?);
            baseline = Some(0);
        }
        let mount = Mount::ferry_share(ferry, &sub("shared")?, &sub("ferry")?, &args.share_args)?;
        targets.push(Target::on_mount("ferry", mount)?);
        if args.bindfs {
            let mount = Mount::bindfs(&sub("bindfs-src")?, &sub("bindfs")?)?;
            targets.push(Target::on_mount("bindfs", mount)?);
        }
    }
    for (i, spec) in args.targets.iter().enumerate() {
        let (name, dir) = named(spec, format!("target{}", i + 1));
        ensure!(
            !targets.iter().any(|t| t.name == name),
            "two targets are named {name}"
        );
        targets.push(Target::in_dir(&name, &dir)?);
    }
    ensure!(
        targets.len() >= 2,
        "nothing to compare the baseline with: give --target DIR or --share SRC"
    );
    let baseline = baseline.expect("a baseline");
    eprintln!(
        "ferry bench: {} on {}",
        plan.groups
            .iter()
            .map(|g| g.name())
            .collect::<Vec<_>>()
            .join(","),
        targets
            .iter()
            .map(|t| format!("{} ({})", t.name, t.path.display()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let results = super::run(&plan, &targets, baseline)?;
    drop(targets);
    if args.json {
        println!("{:#}", results.json());
    } else {
        let ratios: Vec<(usize, usize)> = (0..results.targets.len())
            .filter(|&t| t != baseline)
            .map(|t| (t, baseline))
            .collect();
        print!("{}", results.table(&ratios));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names() {
        assert_eq!(
            named("nfs=/mnt/nfs", "target1".into()),
            ("nfs".into(), PathBuf::from("/mnt/nfs"))
        );
        assert_eq!(
            named("/mnt/a=b", "target2".into()),
            ("target2".into(), PathBuf::from("/mnt/a=b"))
        );
    }
}
