//! `ferry bench` end to end on small sizes: against a real `ferry share` mount and a native
//! directory, both as `--baseline`/`--target` (a mount the test starts) and as `--share` (a
//! mount the command starts and stops itself). The JSON must hold every workload of the
//! groups asked for, with numbers for each target, and the ratios to the baseline; nothing
//! here asserts a time. Bad command lines fail with a clear error.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::harness::{Need, Share, bins, mounts_at, require};

/// Small sizes: every row runs, in seconds.
const SMALL: &[&str] = &[
    "--files=60",
    "--seq-mb=2",
    "--rand-mb=1",
    "--rand-ops=40",
    "--fsync-ops=5",
    "--git-files=30",
    "--fio-mb=2",
    "--fio-secs=1",
];

fn bench(args: &[&str]) -> Output {
    Command::new(&bins().ferry)
        .arg("bench")
        .args(SMALL)
        .args(args)
        .output()
        .expect("ferry bench runs")
}

/// The row ids of the groups the runs ask for (files,walk,seq,rand, plus git).
const ROWS: &[&str] = &[
    "create",
    "stat-cold",
    "stat-warm",
    "missing",
    "read-cold",
    "read-warm",
    "readdir",
    "unlink",
    "walk-cold",
    "walk-warm",
    "seq-write",
    "seq-write-fsync",
    "seq-read-cold",
    "seq-read-warm",
    "rand-read-cold",
    "rand-read-warm",
    "rand-write",
    "rand-write-fsync",
    "git-status-cold",
    "git-status-warm",
];

/// Checks the JSON of a run over `targets` (the first the baseline) with two rounds.
fn check_json(out: &Output, targets: &[&str]) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ferry bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["baseline"], targets[0], "{v:#}");
    let names: Vec<&str> = v["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| t["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, targets);
    let workloads = v["workloads"].as_array().expect("workloads");
    let ids: Vec<&str> = workloads
        .iter()
        .map(|w| w["id"].as_str().expect("an id"))
        .collect();
    assert_eq!(
        ids, ROWS,
        "the rows of files,walk,seq,rand,git in run order"
    );
    for w in workloads {
        for (i, t) in targets.iter().enumerate() {
            let r = &w["results"][*t];
            let num = |k: &str| {
                r[k].as_f64()
                    .unwrap_or_else(|| panic!("{} {t}: no number {k}: {r}", w["id"]))
            };
            let (median, min, max, ratio) =
                (num("median_s"), num("min_s"), num("max_s"), num("ratio"));
            assert!(
                min > 0.0 && min <= median && median <= max,
                "{} {t}: {r}",
                w["id"]
            );
            let samples = r["samples_s"].as_array().expect("samples");
            assert_eq!(samples.len(), 2, "one sample per round: {r}");
            assert!(ratio.is_finite() && ratio > 0.0, "{} {t}: {r}", w["id"]);
            if i == 0 {
                assert_eq!(ratio, 1.0, "the baseline's own ratio");
            } else {
                let base = w["results"][targets[0]]["median_s"].as_f64().unwrap();
                assert!(
                    (ratio - median / base).abs() <= 1e-9 * ratio,
                    "{} {t}: ratio {ratio} is not {median} / {base}",
                    w["id"]
                );
            }
        }
    }
    v
}

#[test]
fn bench_a_share_against_a_native_dir() {
    if !require(&[Need::Fuse, Need::Program("git")]) {
        return;
    }
    let share = Share::start();
    let native = tempfile::tempdir().unwrap();
    let out = bench(&[
        "--rounds=2",
        "--json",
        "--workloads=files,walk,seq,rand,git",
        "--baseline",
        native.path().to_str().unwrap(),
        "--target",
        &format!("ferry={}", share.mnt().display()),
    ]);
    check_json(&out, &["baseline", "ferry"]);
    // The rounds went through the mount: the share's host directory saw them, and the
    // benchmark's own directories are gone from both.
    for dir in [native.path(), share.mnt(), share.src()] {
        let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
        assert!(left.is_empty(), "{} still holds {left:?}", dir.display());
    }
    share.stop();
}

#[test]
fn bench_share_starts_and_stops_its_own_mount() {
    if !require(&[Need::Fuse, Need::Program("git")]) {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let out = bench(&[
        "--rounds=2",
        "--json",
        "--workloads=files,walk,seq,rand,git",
        "--share",
        src.path().to_str().unwrap(),
    ]);
    check_json(&out, &["native", "ferry"]);
    let left: Vec<_> = std::fs::read_dir(src.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "{} still holds {left:?}",
        src.path().display()
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&src.path().display().to_string()),
        "a mount is left under {}:\n{mounts}",
        src.path().display()
    );
    // The table form of a quicker run: a header with both targets and the ratio column.
    let out = bench(&[
        "--rounds=1",
        "--workloads=files",
        "--share",
        src.path().to_str().unwrap(),
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("| workload | native | ferry | ferry/native |"),
        "{table}"
    );
    assert!(
        table.contains("| create-write-close 4 KiB files (s) |"),
        "{table}"
    );
}

/// Runs `ferry bench ARGS` expecting a failure whose stderr says `want`.
fn refused(args: &[&str], want: &str) {
    let out = bench(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ferry bench {args:?} succeeded");
    assert!(err.contains(want), "ferry bench {args:?}: {err}");
}

#[test]
fn bench_refuses_bad_command_lines_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    refused(&[], "nothing to compare with");
    refused(&["--baseline", d], "nothing to compare the baseline with");
    refused(
        &["--baseline", d, "--target", "/nonexistent/ferry-bench"],
        "cannot use /nonexistent/ferry-bench",
    );
    refused(
        &["--baseline", d, "--target", d, "--workloads=files,disk"],
        "unknown workload group \"disk\"",
    );
    refused(
        &["--baseline", d, "--bindfs", "--target", d],
        "go with --share",
    );
    // Nothing was left in the directory the refused runs named.
    assert!(mounts_at(Path::new(d)).is_empty());
    let left: Vec<_> = std::fs::read_dir(d).unwrap().collect();
    assert!(left.is_empty(), "{d} holds {left:?}");
}
