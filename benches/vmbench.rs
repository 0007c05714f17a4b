//! VM benchmark: the Ferry mount over vsock next to QEMU's built-in 9p share of the same host
//! directory (cache=none, the default, and cache=loose), measured in one boot of one QEMU
//! guest and printed as one markdown table. Under TCG every guest instruction is emulated, so
//! absolute times mean nothing: read the ratios.
//!
//! `cargo bench --bench vmbench` (needs what `.ci/vm-tools` installs).
//! Environment: FERRY_VMBENCH_FILES (default 1000), FERRY_VMBENCH_MB (default 32),
//! FERRY_VMBENCH_ROUNDS (default 3; the median is reported).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use ferry_vmtest::{Initramfs, Tools, Vm, VmConfig, run_dir, static_bins};

const PORT: u32 = 1024;
const TARGETS: [(&str, &str); 3] = [
    ("ferry", "Ferry (vsock)"),
    ("9p", "9p cache=none"),
    ("9p-loose", "9p cache=loose"),
];

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // A test runner listing tests gets none: this is a benchmark, run by `cargo bench`.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(tools) = Tools::for_run("vmbench") else {
        return;
    };
    let files = env_or("FERRY_VMBENCH_FILES", 1000);
    let mb = env_or("FERRY_VMBENCH_MB", 32);
    let rounds = env_or("FERRY_VMBENCH_ROUNDS", 3).max(1);
    let bins = static_bins();
    let run = run_dir("ferry-vmbench.");
    let share = run.path().join("share");
    make_tree(&share.join("tree"), files);

    let initrd = run.path().join("initrd.cpio");
    Initramfs::new(&tools)
        .unwrap()
        .modules(ferry_vmtest::initramfs::NINEP_MODULES)
        .unwrap()
        .host_file("/bin/ferry-agent", &bins.agent, 0o755)
        .bytes("/guest.sh", include_str!("vmbench.sh"), 0o755)
        .write(&initrd)
        .unwrap();
    let mut cfg = VmConfig::new(initrd);
    cfg.ninep = vec![
        (share.clone(), "p9".into()),
        (share.clone(), "p9loose".into()),
    ];
    cfg.cmdline = vec![
        format!("ferry.port={PORT}"),
        format!("ferry.files={files}"),
        format!("ferry.mb={mb}"),
        format!("ferry.rounds={rounds}"),
    ];
    cfg.timeout = std::time::Duration::from_secs(1800);
    let mut vm = Vm::boot(&tools, &cfg, run.path());
    let mut host = vm.serve(&bins.host, "share", &share, PORT);
    let mounted = vm.wait_for("FERRY-MOUNTED");
    eprintln!("{mounted}");
    let (output, rc) = vm.finish();
    assert_eq!(rc, 0, "the guest benchmark failed:\n{output}");
    assert!(host.exited().is_none(), "ferry-host died:\n{}", host.log());

    let results = parse(&output);
    // Every target listed the same tree.
    let entries: Vec<f64> = TARGETS
        .iter()
        .filter_map(|(t, _)| results.get(&(t.to_string(), "entries".to_string())))
        .map(|v| v[0])
        .collect();
    assert!(
        entries.len() == TARGETS.len() && entries.iter().all(|&e| e == entries[0]),
        "the targets saw different trees: {entries:?}\n{output}"
    );
    print_table(&results, files, mb, rounds, vm.elapsed().as_secs_f64());
}

/// `files` small files (100 B to 4 KiB) in 20 directories.
fn make_tree(dir: &Path, files: usize) {
    for i in 0..files {
        let d = dir.join(format!("d{:02}", i % 20));
        fs::create_dir_all(&d).unwrap();
        let len = 100 + (i * 397) % 3996;
        let line = format!("file {i} of the ferry vm benchmark\n");
        let body: String = line.chars().cycle().take(len).collect();
        fs::write(d.join(format!("f{i:05}")), body).unwrap();
    }
}

/// `FERRY-RESULT TARGET METRIC… SECONDS` lines, every round's value per (target, metric).
fn parse(output: &str) -> BTreeMap<(String, String), Vec<f64>> {
    let mut out: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("FERRY-RESULT ") else {
            continue;
        };
        let Some((target, rest)) = rest.split_once(' ') else {
            continue;
        };
        let Some((metric, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        if let Ok(v) = value.parse::<f64>() {
            out.entry((target.to_string(), metric.to_string()))
                .or_default()
                .push(v);
        }
    }
    out
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn print_table(
    results: &BTreeMap<(String, String), Vec<f64>>,
    files: usize,
    mb: usize,
    rounds: usize,
    vm_secs: f64,
) {
    // Metrics in the order the guest runs them.
    let metrics = [
        "find (cold)",
        "ls -lR (stat every file)",
        "read every small file (cold)",
        "create small files",
        "sequential write + fsync",
        "sequential read (cold)",
        "delete the created files",
    ];
    println!(
        "\nVM benchmark: {files} small files, {mb} MiB sequential, median of {rounds} round(s); \
         QEMU TCG, 1 vCPU (absolute times are emulation-bound: compare the ratios)\n"
    );
    let head: Vec<String> = TARGETS.iter().map(|(_, h)| format!("{h} (s)")).collect();
    println!(
        "| operation | {} | Ferry / 9p cache=none | Ferry / 9p cache=loose |",
        head.join(" | ")
    );
    println!("|---|{}---:|---:|", "---:|".repeat(TARGETS.len()));
    for m in metrics {
        let cell = |t: &str| {
            results
                .get(&(t.to_string(), m.to_string()))
                .map(|v| median(v))
        };
        let vals: Vec<Option<f64>> = TARGETS.iter().map(|(t, _)| cell(t)).collect();
        let shown: Vec<String> = vals
            .iter()
            .map(|v| v.map_or("-".into(), |v| format!("{v:.2}")))
            .collect();
        let ratio = |i: usize| match (vals[0], vals[i]) {
            (Some(f), Some(p)) if p > 0.0 => format!("{:.2}", f / p),
            _ => "-".into(),
        };
        println!(
            "| {m} | {} | {} | {} |",
            shown.join(" | "),
            ratio(1),
            ratio(2)
        );
    }
    println!("\n(ratio < 1: Ferry is faster; the whole VM run took {vm_secs:.0} s)");
}
