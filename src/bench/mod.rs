//! Filesystem benchmarks, shared by `ferry bench` (a user's own directories and mounts) and
//! `benches/fsbench.rs` (native, bindfs and Ferry): the same workloads, run on every target in
//! one run, rounds in a rotated order, reported as medians with their spread and ratios to a
//! baseline measured in the same run. Absolute times on a busy machine are noise; the ratios
//! within one run are the result.
//!
//! - `workloads.rs`: the rows and what one round does on one directory.
//! - `targets.rs`: the directories measured, and the mounts a run starts itself.

pub mod command;
pub mod events;
mod svg;
pub mod targets;
pub mod workloads;

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result};

pub use targets::{Kind, Mount, Target};
pub use workloads::{Caches, Group, ROWS, Row, Sizes, rows_of};

/// What a run measures.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sizes: Sizes,
    pub groups: Vec<Group>,
    pub rounds: usize,
}

/// One row on one target: every round's sample, `None` where the round had nothing to
/// measure (an events row on a target that delivers no events).
#[derive(Debug, Clone)]
pub struct Cell {
    pub samples: Vec<Option<Duration>>,
}

impl Cell {
    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .flatten()
            .map(Duration::as_secs_f64)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// No round measured anything.
    pub fn is_empty(&self) -> bool {
        self.samples.iter().all(Option::is_none)
    }

    /// The median (the upper one of an even count) of the samples there are, in seconds;
    /// NaN when there are none.
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// The smallest sample; NaN when there are none.
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    /// The largest sample; NaN when there are none.
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// A run's results: `cells[target][row]`.
pub struct Results {
    pub plan: Plan,
    pub rows: Vec<Row>,
    /// Target names, in the order given.
    pub targets: Vec<String>,
    /// Their paths, for the report.
    pub paths: Vec<String>,
    /// Index into `targets` of the baseline.
    pub baseline: usize,
    pub cells: Vec<Vec<Cell>>,
    pub caches: Caches,
}

/// Runs `plan` on every target; `targets[baseline]` is what ratios are to. Each round runs
/// every target, starting at another one each round (the host filesystem's state, e.g. ext4's
/// inode allocator after earlier deletes, changes during a round, and no target should always
/// meet it last). Progress goes to stderr.
pub fn run(plan: &Plan, targets: &[Target], baseline: usize) -> Result<Results> {
    let caches = Caches::probe();
    if !caches.droppable {
        eprintln!(
            "ferry bench: cannot drop the kernel's caches (needs root): \"cold\" rows run warm"
        );
    }
    let rows = rows_of(&plan.groups);
    let mut cells = vec![
        vec![
            Cell {
                samples: Vec::new()
            };
            rows.len()
        ];
        targets.len()
    ];
    for round in 0..plan.rounds {
        for k in 0..targets.len() {
            let t = (round + k) % targets.len();
            let target = &targets[t];
            let samples = workloads::run_round(
                &plan.sizes,
                &plan.groups,
                &target.dir,
                target.host.as_deref(),
                round,
                caches,
            )
            .with_context(|| format!("round {round} on {}", target.name))?;
            for (r, d) in samples.into_iter().enumerate() {
                cells[t][r].samples.push(d);
            }
            eprintln!(
                "ferry bench: round {}/{}: {} done",
                round + 1,
                plan.rounds,
                target.name
            );
        }
    }
    Ok(Results {
        plan: plan.clone(),
        rows,
        targets: targets.iter().map(|t| t.name.clone()).collect(),
        paths: targets
            .iter()
            .map(|t| t.path.display().to_string())
            .collect(),
        baseline,
        cells,
        caches,
    })
}

impl Results {
    /// Median of target `t` over the baseline's, for row `r` (above 1: slower); NaN where
    /// either has no sample.
    pub fn ratio(&self, t: usize, r: usize, to: usize) -> f64 {
        self.cells[t][r].median() / self.cells[to][r].median()
    }

    /// Everything, raw samples included, as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let s = &self.plan.sizes;
        let workloads: Vec<Value> = self
            .rows
            .iter()
            .enumerate()
            .map(|(r, row)| {
                let mut results = Map::new();
                for (t, name) in self.targets.iter().enumerate() {
                    let c = &self.cells[t][r];
                    let mut v = json!({
                        "median_s": c.median(),
                        "min_s": c.min(),
                        "max_s": c.max(),
                        "samples_s": c.samples.iter()
                            .map(|d| d.map(|d| d.as_secs_f64()))
                            .collect::<Vec<_>>(),
                        "ratio": self.ratio(t, r, self.baseline),
                    });
                    if row.throughput && !c.is_empty() {
                        v["median_ops_per_s"] = json!(1.0 / c.median());
                    }
                    results.insert(name.clone(), v);
                }
                json!({
                    "id": row.id,
                    "title": row.title,
                    "group": row.group.name(),
                    "unit": row.unit(),
                    "results": results,
                })
            })
            .collect();
        json!({
            "baseline": self.targets[self.baseline],
            "targets": self.targets.iter().zip(&self.paths)
                .map(|(n, p)| json!({"name": n, "path": p}))
                .collect::<Vec<_>>(),
            "rounds": self.plan.rounds,
            "cold_caches_dropped": self.caches.droppable,
            "sizes": {
                "files": s.files,
                "seq_mb": s.seq_mb,
                "rand_mb": s.rand_mb,
                "rand_ops": s.rand_ops,
                "fsync_ops": s.fsync_ops,
                "git_files": s.git_files,
                "fio_mb": s.fio_mb,
                "fio_secs": s.fio_secs,
                "events": s.events,
            },
            "ratio_is": "median of the target / median of the baseline (above 1: slower)",
            "workloads": workloads,
        })
    }

    /// Every sample as CSV, one line per target, workload and round (with a header):
    /// `workload,group,unit,target,round,seconds`, the seconds empty where the round measured
    /// nothing (no events heard). `unit` is `s` for a row timed as a whole,
    /// `s/op` for a throughput (fio) row, `s/event` for an event latency (a round's median).
    pub fn csv(&self) -> String {
        let mut o = String::from("workload,group,unit,target,round,seconds\n");
        for (r, row) in self.rows.iter().enumerate() {
            for (t, name) in self.targets.iter().enumerate() {
                for (round, d) in self.cells[t][r].samples.iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "{},{},{},{},{},{}",
                        row.id,
                        row.group.name(),
                        row.unit(),
                        csv_field(name),
                        round + 1,
                        d.map(|d| format!("{:e}", d.as_secs_f64()))
                            .unwrap_or_default()
                    );
                }
            }
        }
        o
    }

    /// The medians as an SVG bar chart (see `svg.rs`).
    pub fn svg(&self) -> String {
        svg::chart(self)
    }

    /// A markdown table: per target the median with min-max, then each pair's ratio in
    /// `ratios` ((target, to), e.g. every target to the baseline).
    pub fn table(&self, ratios: &[(usize, usize)]) -> String {
        let s = &self.plan.sizes;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{} files, {} MiB sequential, {} x 4 KiB random in {} MiB; median of {} round(s) \
             (min-max), order rotated per round; ratios: median / median, above 1 is slower{}\n",
            s.files,
            s.seq_mb,
            s.rand_ops,
            s.rand_mb,
            self.plan.rounds,
            if self.caches.droppable {
                ""
            } else {
                "; caches not dropped: cold rows ran warm"
            }
        );
        let heads: Vec<String> = ratios
            .iter()
            .map(|&(t, to)| format!("{}/{}", self.targets[t], self.targets[to]))
            .collect();
        let _ = writeln!(
            o,
            "| workload | {} | {} |",
            self.targets.join(" | "),
            heads.join(" | ")
        );
        let _ = writeln!(
            o,
            "|---|{}{}",
            "---:|".repeat(self.targets.len()),
            "---:|".repeat(ratios.len())
        );
        for (r, row) in self.rows.iter().enumerate() {
            let cells: Vec<String> = (0..self.targets.len())
                .map(|t| {
                    let c = &self.cells[t][r];
                    if c.is_empty() {
                        "none".to_string()
                    } else if row.throughput {
                        // Operations per second: the fastest sample is the highest rate.
                        format!(
                            "{:.0} ({:.0}-{:.0})",
                            1.0 / c.median(),
                            1.0 / c.max(),
                            1.0 / c.min()
                        )
                    } else {
                        format!("{} ({}-{})", secs(c.median()), secs(c.min()), secs(c.max()))
                    }
                })
                .collect();
            let rs: Vec<String> = ratios
                .iter()
                .map(|&(t, to)| match self.ratio(t, r, to) {
                    x if x.is_finite() => format!("{x:.2}x"),
                    _ => "-".to_string(),
                })
                .collect();
            let title = match row.unit() {
                "s/op" => format!("{} (ops/s)", row.title),
                "s/event" => format!("{} (s, median per event)", row.title),
                _ => format!("{} (s)", row.title),
            };
            let _ = writeln!(
                o,
                "| {title} | {} | {} |",
                cells.join(" | "),
                rs.join(" | ")
            );
        }
        o
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Seconds, with more decimals for short times.
fn secs(v: f64) -> String {
    if v < 0.001 {
        format!("{v:.6}")
    } else if v < 0.01 {
        format!("{v:.4}")
    } else if v < 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_of_samples() {
        let c = Cell {
            samples: [Some(3.0), Some(1.0), None, Some(2.0), Some(10.0)]
                .map(|s| s.map(Duration::from_secs_f64))
                .to_vec(),
        };
        assert_eq!(c.median(), 3.0);
        assert_eq!(c.min(), 1.0);
        assert_eq!(c.max(), 10.0);
        let none = Cell {
            samples: vec![None, None],
        };
        assert!(none.is_empty() && none.median().is_nan() && none.min().is_nan());
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("ferry"), "ferry");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
    }
}
