//! `ferry bench` end to end on small sizes: against a real `ferry share` mount and a native
//! directory, as `--baseline`/`--target` (a mount the test starts), as `--share` and as
//! `--targets native,ferry,bindfs DIR` (mounts the command starts and stops itself). The JSON
//! must hold every workload of the groups asked for, with numbers for each target, and the
//! ratios to the baseline; the CSV every sample; the SVG, as a real browser (headless
//! chromium) parses it, one bar per workload and target. Nothing here asserts a time. Bad
//! command lines fail with a clear error.

use std::collections::BTreeSet;
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

/// The document headless chromium makes of `file` (its DOM, serialised), with its stderr on
/// failure.
fn browser_dom(file: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", file.display()))
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !dom.is_empty(),
        "chromium --dump-dom {}: {}\n{}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The value of `attr="..."` in one element's text.
fn attr<'a>(element: &'a str, attr: &str) -> Option<&'a str> {
    let start = element.find(&format!(" {attr}=\""))? + attr.len() + 3;
    let len = element[start..].find('"')?;
    Some(&element[start..start + len])
}

/// The (workload, target) pairs of the elements `<TAG class="CLASS" ...>` in `dom`.
fn marks(dom: &str, tag: &str, class: &str) -> Vec<(String, String, String)> {
    dom.split(&format!("<{tag} "))
        .skip(1)
        // The element's attributes, each after a space.
        .map(|e| format!(" {}", &e[..e.find('>').unwrap_or(e.len())]))
        .filter(|e| attr(e, "class") == Some(class))
        .map(|e| {
            let get = |a| attr(&e, a).unwrap_or_default().to_string();
            (get("data-workload"), get("data-target"), get("height"))
        })
        .collect()
}

#[test]
fn bench_dir_sets_up_each_target_and_writes_csv_and_a_chart_a_browser_shows() {
    if !require(&[
        Need::Fuse,
        Need::Program("bindfs"),
        Need::Program("chromium"),
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let (csv, svg) = (out_dir.path().join("b.csv"), out_dir.path().join("b.svg"));
    let out = bench(&[
        "--rounds=2",
        "--json",
        "--events=5",
        "--workloads=files,events",
        "--targets",
        "native,ferry,bindfs",
        "--csv",
        csv.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ferry bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let targets = ["native", "ferry", "bindfs"];
    assert_eq!(v["baseline"], "native");
    let workloads = v["workloads"].as_array().expect("workloads");
    let ids: Vec<&str> = workloads
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = ROWS[..8]
        .iter()
        .copied()
        .chain(["event-create", "event-modify", "event-delete"])
        .collect();
    assert_eq!(ids, want, "the rows of files,events in run order");

    // Host-edit-to-event latency: the watcher on the ferry mount hears every host change (a
    // median per round, both rounds), as the one on the native directory does. bindfs passes
    // no host changes on, so its cells may be empty: the chart marks them instead.
    let mut measured = BTreeSet::new();
    for w in workloads {
        let id = w["id"].as_str().unwrap();
        for t in targets {
            let r = &w["results"][t];
            let samples = r["samples_s"].as_array().expect("samples");
            assert_eq!(samples.len(), 2, "{id} {t}: one sample per round: {r}");
            if r["median_s"].is_f64() {
                measured.insert((id.to_string(), t.to_string()));
            } else {
                assert!(
                    t == "bindfs" && id.starts_with("event-"),
                    "{id} {t}: nothing measured: {r}"
                );
            }
        }
    }
    for id in ["event-create", "event-modify", "event-delete"] {
        for t in ["native", "ferry"] {
            let r = &workloads.iter().find(|w| w["id"] == id).unwrap()["results"][t];
            assert!(
                r["samples_s"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|s| s.as_f64().is_some_and(|s| s > 0.0)),
                "{id} {t}: {r}"
            );
        }
    }

    // The CSV: a header, then one line per target, workload and round, with the JSON's
    // samples.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("workload,group,unit,target,round,seconds")
    );
    let lines: Vec<&str> = lines.collect();
    assert_eq!(lines.len(), ids.len() * targets.len() * 2, "{text}");
    for l in &lines {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), 6, "{l}");
        let w = workloads.iter().find(|w| w["id"] == f[0]).expect(l);
        assert_eq!(w["group"], f[1], "{l}");
        assert_eq!(w["unit"], f[2], "{l}");
        let round: usize = f[4].parse().expect(l);
        let sample = &w["results"][f[3]]["samples_s"][round - 1];
        match sample.as_f64() {
            Some(s) => {
                let got: f64 = f[5].parse().expect(l);
                assert!((got - s).abs() <= 1e-9 * s, "{l}: JSON has {s}");
            }
            None => assert_eq!(f[5], "", "{l}"),
        }
    }

    // The chart, as headless chromium parsed it: an SVG document (a malformed one becomes a
    // page with a <parsererror>), a bar of some height per measured workload and target,
    // and a mark for each one measured nothing.
    let dom = browser_dom(&svg);
    assert!(
        dom.trim_start().starts_with("<svg") && !dom.contains("parsererror"),
        "chromium did not render an SVG document:\n{dom}"
    );
    let bars = marks(&dom, "rect", "bar");
    let drawn: BTreeSet<(String, String)> = bars
        .iter()
        .map(|(w, t, _)| (w.clone(), t.clone()))
        .collect();
    assert_eq!(bars.len(), drawn.len(), "one bar per workload and target");
    assert_eq!(drawn, measured, "a bar for every measured cell");
    for (w, t, h) in &bars {
        let h: f64 = h
            .parse()
            .unwrap_or_else(|_| panic!("{w} {t}: height {h:?}"));
        assert!(h > 0.0, "{w} {t}: height {h}");
    }
    let none: BTreeSet<(String, String)> = marks(&dom, "text", "none")
        .into_iter()
        .map(|(w, t, _)| (w, t))
        .collect();
    assert_eq!(
        none.len() + drawn.len(),
        ids.len() * targets.len(),
        "every cell is a bar or a mark: {none:?}"
    );
    for t in targets {
        assert!(dom.contains(&format!(">{t}")), "the legend names {t}");
    }

    // Nothing left behind: no directory in DIR, no mount under it.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{} holds {left:?}", dir.path().display());
    assert!(mounts_under(dir.path()).is_empty());
}

/// Mount points at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&d))
        .collect()
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
        "go with DIR or --share",
    );
    refused(
        &["--baseline", d, "--targets=native,ferry", "--target", d],
        "go with DIR or --share",
    );
    refused(&["--targets=native,nfs", d], "unknown target \"nfs\"");
    refused(
        &["--targets=native", d],
        "nothing to compare the baseline with",
    );
    refused(
        &["--baseline", d, "--target", d, "--workloads=files,events"],
        "the events workloads change files on each target's host side",
    );
    // bindfs asked for where it is not installed: refused before anything is set up.
    let out = Command::new(&bins().ferry)
        .args(["bench", "--targets=native,bindfs", d])
        .env("PATH", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("target bindfs: bindfs is not installed"),
        "{err}"
    );
    // Nothing was left in the directory the refused runs named.
    assert!(mounts_at(Path::new(d)).is_empty());
    let left: Vec<_> = std::fs::read_dir(d).unwrap().collect();
    assert!(left.is_empty(), "{d} holds {left:?}");
}
