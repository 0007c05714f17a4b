//! `ferry bench`: the command line, and setting up its targets.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail, ensure};

use super::{Group, Kind, Plan, Sizes, Target};

/// The arguments of `ferry bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Set up the comparison in DIR: a native directory and each way of sharing one that
    /// --targets names, all in a new directory inside DIR (so on DIR's filesystem), removed
    /// afterwards.
    #[arg(value_name = "DIR", conflicts_with = "share")]
    pub dir: Option<PathBuf>,
    /// With DIR (or --share): what to set up, comma-separated: native (the baseline), ferry (a
    /// `ferry share` mount), bindfs (a bindfs mount). Default: native,ferry, plus bindfs where
    /// it is installed. A name that is unknown or not installed is an error.
    #[arg(long = "targets", value_name = "LIST")]
    pub kinds: Option<String>,
    /// The directory every ratio is to, measured in the same run (e.g. a directory on the
    /// host's own disk). With --share, defaults to a directory beside the shared one.
    #[arg(long, value_name = "DIR")]
    pub baseline: Option<PathBuf>,
    /// A directory to compare with the baseline, e.g. a mount point; `NAME=DIR` names its
    /// column (default: target1, target2, ...). Repeatable.
    #[arg(long = "target", value_name = "[NAME=]DIR")]
    pub targets: Vec<String>,
    /// Like DIR, with the targets native and ferry (and bindfs with --bindfs) unless
    /// --targets says otherwise.
    #[arg(long, value_name = "SRC")]
    pub share: Option<PathBuf>,
    /// An argument for the `ferry share` of --share, e.g. `--share-arg=--cache=consistent`.
    /// Repeatable.
    #[arg(long = "share-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub share_args: Vec<String>,
    /// With --share, also measure a bindfs mount of a third directory (bindfs must be
    /// installed); the same as adding bindfs to --targets.
    #[arg(long)]
    pub bindfs: bool,
    /// Workload groups, comma-separated: files, walk, seq, rand, git, fio, events. Default:
    /// files, walk, seq and rand, plus git and fio where they are installed, plus events when
    /// every target's host side is known (targets set up by DIR or --share, and --baseline).
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
    /// Host changes (create, append, delete) per round of the events rows; each sample is
    /// their median latency.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub events: usize,
    /// Also write every sample as CSV to FILE (a line per target, workload and round).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Also draw the medians as an SVG bar chart in FILE (a group of bars per workload, a
    /// colour per target, log time axis).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Print every result (medians, min, max, each round's sample and the ratios) as one JSON
    /// object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// True when `program` is found on PATH.
pub(crate) fn installed(program: &str) -> bool {
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

/// The groups asked for, or the default ones this machine can run. `hosts_known`: every
/// target's host side is known, which the events rows need.
fn groups(list: Option<&str>, hosts_known: bool) -> Result<Vec<Group>> {
    let groups = match list {
        Some(l) => Group::parse_list(l)?,
        None => Group::ALL
            .into_iter()
            .filter(|g| g.program().is_none_or(installed))
            .filter(|g| *g != Group::Events || hosts_known)
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
    ensure!(
        hosts_known || !groups.contains(&Group::Events),
        "the events workloads change files on each target's host side, which a --target DIR \
         does not tell: measure events on targets set up by DIR or --share"
    );
    Ok(groups)
}

/// The kinds of target to set up in DIR or --share: `--targets`, or the default ones this
/// machine has; `--bindfs` adds bindfs.
fn kinds(args: &BenchArgs) -> Result<Vec<Kind>> {
    let mut kinds = match &args.kinds {
        Some(list) => Kind::parse_list(list)?,
        // --baseline stands in for the native directory.
        None if args.baseline.is_some() => vec![Kind::Ferry],
        None => vec![Kind::Native, Kind::Ferry],
    };
    let auto_bindfs = args.kinds.is_none() && args.share.is_none() && installed("bindfs");
    if (args.bindfs || auto_bindfs) && !kinds.contains(&Kind::Bindfs) {
        kinds.push(Kind::Bindfs);
    }
    for k in &kinds {
        if let Some(p) = k.program() {
            ensure!(
                installed(p),
                "target {}: {p} is not installed (not on PATH)",
                k.name()
            );
        }
    }
    Ok(kinds)
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

/// Runs `ferry bench`: sets up the targets, runs every round, prints the table or JSON and
/// writes the CSV and SVG asked for. `ferry` is the binary that runs `ferry share`.
pub fn run(args: BenchArgs, ferry: &Path) -> Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.files > 0, "--files must be at least 1");
    ensure!(args.events > 0, "--events must be at least 1");
    let set_up_in = args.dir.as_ref().or(args.share.as_ref());
    if set_up_in.is_none() && args.baseline.is_none() {
        bail!(
            "nothing to compare with: give DIR (with --targets native,ferry,...), or --baseline \
             DIR and --target DIR"
        );
    }
    if set_up_in.is_none() && (args.bindfs || !args.share_args.is_empty() || args.kinds.is_some()) {
        bail!("--targets, --bindfs and --share-arg go with DIR or --share");
    }
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
            events: args.events,
        },
        groups: groups(args.workloads.as_deref(), args.targets.is_empty())?,
        rounds: args.rounds,
    };
    let kinds = match set_up_in {
        Some(_) => kinds(&args)?,
        None => Vec::new(),
    };
    ensure!(
        usize::from(args.baseline.is_some()) + kinds.len() + args.targets.len() >= 2,
        "nothing to compare the baseline with: name two targets, or give --target DIR"
    );
    // Declared before the targets, so dropped after them (and their mounts).
    let mut work = WorkDir(None);
    let mut targets: Vec<Target> = Vec::new();
    if let Some(dir) = &args.baseline {
        targets.push(Target::native("baseline", dir)?);
    }
    if let Some(src) = set_up_in {
        let w = work_dir(src)?;
        work.0 = Some(w.clone());
        for k in kinds {
            targets.push(Target::set_up(k, k.name(), &w, ferry, &args.share_args)?);
        }
    }
    // --baseline, else the native directory set up here, else the first target.
    let baseline = match args.baseline {
        Some(_) => 0,
        None => targets
            .iter()
            .position(|t| t.name == Kind::Native.name())
            .unwrap_or(0),
    };
    for (i, spec) in args.targets.iter().enumerate() {
        let (name, dir) = named(spec, format!("target{}", i + 1));
        ensure!(
            !targets.iter().any(|t| t.name == name),
            "two targets are named {name}"
        );
        targets.push(Target::in_dir(&name, &dir)?);
    }
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
    drop(work);
    if let Some(f) = &args.csv {
        std::fs::write(f, results.csv())
            .with_context(|| format!("cannot write the CSV to {}", f.display()))?;
    }
    if let Some(f) = &args.svg {
        std::fs::write(f, results.svg())
            .with_context(|| format!("cannot write the SVG to {}", f.display()))?;
    }
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
