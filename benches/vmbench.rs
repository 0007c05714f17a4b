//! VM benchmark: every way of sharing one host directory with one QEMU guest, measured in one
//! boot and printed as one markdown table: Ferry's virtio-fs backend, virtiofsd with
//! `--cache=auto` and `--cache=always` (when installed: `.ci/bench-tools`), the Ferry agent
//! over vsock, and QEMU's built-in 9p (cache=none, the default, and cache=loose). Ratios are to
//! virtiofsd `--cache=auto` (to 9p cache=none without virtiofsd). Under TCG every guest
//! instruction is emulated, so absolute times mean nothing: read the ratios.
//!
//! `cargo bench --bench vmbench` (needs what `.ci/vm-tools` installs).
//! Environment: FERRY_VMBENCH_FILES (default 5000), FERRY_VMBENCH_MB (default 64),
//! FERRY_VMBENCH_ROUNDS (default 3; the median is reported), FERRY_VMBENCH_TARGETS (a
//! comma-separated subset of vfs, vfsd-auto, vfsd-always, ferry, 9p, 9p-loose).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use ferry_vmtest::{Initramfs, Proc, Tools, Vm, VmConfig, run_dir, serve_virtiofs, static_bins};

const PORT: u32 = 1024;
/// (target, column heading); virtio-fs targets are also the device tags.
const FERRY_VFS: (&str, &str) = ("vfs", "Ferry virtio-fs");
const VIRTIOFSD: [(&str, &str, &str); 2] = [
    ("vfsd-auto", "virtiofsd cache=auto", "auto"),
    ("vfsd-always", "virtiofsd cache=always", "always"),
];
const OTHERS: [(&str, &str); 3] = [
    ("ferry", "Ferry agent (vsock)"),
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
    let files = env_or("FERRY_VMBENCH_FILES", 5000);
    let mb = env_or("FERRY_VMBENCH_MB", 64);
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
        .modules(ferry_vmtest::initramfs::VIRTIOFS_MODULES)
        .unwrap()
        .host_file("/bin/ferry-agent", &bins.agent, 0o755)
        .bytes("/guest.sh", include_str!("vmbench.sh"), 0o755)
        .write(&initrd)
        .unwrap();
    // The virtio-fs backends listen before QEMU starts, which connects to them at once.
    let (mut vfs_host, mut devices) = serve_virtiofs(
        &bins.host,
        run.path(),
        &[format!("{}={}", FERRY_VFS.0, share.display())],
        &[],
    );
    let mut targets = vec![FERRY_VFS];
    let mut daemons: Vec<Proc> = Vec::new();
    match ferry_vmtest::tools::virtiofsd() {
        Some(virtiofsd) => {
            for (tag, heading, cache) in VIRTIOFSD {
                let sock = run.path().join(format!("{tag}.sock"));
                let mut d = Proc::spawn(
                    tag,
                    std::process::Command::new(&virtiofsd)
                        .arg(format!("--socket-path={}", sock.display()))
                        .arg(format!("--shared-dir={}", share.display()))
                        .arg(format!("--cache={cache}"))
                        .arg("--sandbox=none"),
                    run.path(),
                );
                ferry_vmtest::wait_for_path(
                    &sock,
                    Some(&mut d),
                    std::time::Duration::from_secs(30),
                );
                devices.push((sock, tag.to_string()));
                targets.push((tag, heading));
                daemons.push(d);
            }
        }
        None => eprintln!(
            "vmbench: no virtiofsd (run .ci/bench-tools, or set FERRY_VM_VIRTIOFSD); ratios are to 9p"
        ),
    }
    targets.extend(OTHERS);
    // FERRY_VMBENCH_TARGETS=vfs,vfsd-auto,... keeps only those targets. Every target shares
    // one host directory, and the Ferry agent replays every host change it hears of inside
    // the guest, so its events cost the other targets guest CPU while they are measured;
    // leave `ferry` out to compare the virtio-fs backends alone.
    if let Ok(only) = std::env::var("FERRY_VMBENCH_TARGETS") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        targets.retain(|(t, _)| only.contains(t));
        assert!(
            !targets.is_empty(),
            "FERRY_VMBENCH_TARGETS={only:?} names no target"
        );
    }
    let names: Vec<&str> = targets.iter().map(|(t, _)| *t).collect();

    let mut cfg = VmConfig::new(initrd);
    cfg.ninep = vec![
        (share.clone(), "p9".into()),
        (share.clone(), "p9loose".into()),
    ];
    cfg.virtiofs = devices;
    cfg.cmdline = vec![
        format!("ferry.port={PORT}"),
        format!("ferry.files={files}"),
        format!("ferry.mb={mb}"),
        format!("ferry.rounds={rounds}"),
        format!("ferry.targets={}", names.join(",")),
    ];
    cfg.timeout = std::time::Duration::from_secs(3600);
    let mut vm = Vm::boot(&tools, &cfg, run.path());
    let mut host = vm.serve(&bins.host, "share", &share, PORT);
    let mounted = vm.wait_for("FERRY-MOUNTED");
    eprintln!("{mounted}");
    let (output, rc) = vm.finish();
    assert_eq!(rc, 0, "the guest benchmark failed:\n{output}");
    assert!(host.exited().is_none(), "ferry-host died:\n{}", host.log());
    assert!(
        vfs_host.exited().is_none(),
        "ferry-host (virtio-fs) died:\n{}",
        vfs_host.log()
    );
    drop(daemons);
    vfs_host.stop(std::time::Duration::from_secs(5));
    if let Some(line) = vfs_host
        .log()
        .lines()
        .find(|l| l.contains("virtio-fs session ended"))
    {
        eprintln!("ferry-host (virtio-fs): {line}");
    }

    let results = parse(&output);
    // Every target listed the same tree.
    let entries: Vec<f64> = targets
        .iter()
        .filter_map(|(t, _)| results.get(&(t.to_string(), "entries".to_string())))
        .map(|v| v[0])
        .collect();
    assert!(
        entries.len() == targets.len() && entries.iter().all(|&e| e == entries[0]),
        "the targets saw different trees: {entries:?}\n{output}"
    );
    print_table(
        &results,
        &targets,
        files,
        mb,
        rounds,
        vm.elapsed().as_secs_f64(),
    );
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

/// Seconds, with a third decimal below 0.1 s (mounts take about 10 ms).
fn secs(v: f64) -> String {
    if v < 0.1 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn print_table(
    results: &BTreeMap<(String, String), Vec<f64>>,
    targets: &[(&str, &str)],
    files: usize,
    mb: usize,
    rounds: usize,
    vm_secs: f64,
) {
    // Metrics in the order the guest runs them.
    let metrics = [
        "mount",
        "find (cold)",
        "ls -lR (stat every file)",
        "read every small file (cold)",
        "create small files",
        "sequential write + fsync",
        "sequential read (cold)",
        "delete the created files",
    ];
    let base = targets
        .iter()
        .position(|(t, _)| *t == VIRTIOFSD[0].0)
        .or_else(|| targets.iter().position(|(t, _)| *t == "9p"))
        .expect("a baseline target");
    // Ratios for Ferry's two front doors.
    let compared: Vec<usize> = targets
        .iter()
        .enumerate()
        .filter(|(_, (t, _))| *t == FERRY_VFS.0 || *t == "ferry")
        .map(|(i, _)| i)
        .collect();
    println!(
        "\nVM benchmark: {files} small files, {mb} MiB sequential, median of {rounds} round(s); \
         QEMU TCG, 1 vCPU (absolute times are emulation-bound: compare the ratios)\n"
    );
    let head: Vec<String> = targets.iter().map(|(_, h)| format!("{h} (s)")).collect();
    let ratio_head: Vec<String> = compared
        .iter()
        .map(|&i| format!("{} / {}", targets[i].1, targets[base].1))
        .collect();
    println!(
        "| operation | {} | {} |",
        head.join(" | "),
        ratio_head.join(" | ")
    );
    println!(
        "|---|{}{}",
        "---:|".repeat(targets.len()),
        "---:|".repeat(compared.len())
    );
    for m in metrics {
        let vals: Vec<Option<f64>> = targets
            .iter()
            .map(|(t, _)| {
                results
                    .get(&(t.to_string(), m.to_string()))
                    .map(|v| median(v))
            })
            .collect();
        let shown: Vec<String> = vals.iter().map(|v| v.map_or("-".into(), secs)).collect();
        let ratios: Vec<String> = compared
            .iter()
            .map(|&i| match (vals[i], vals[base]) {
                (Some(f), Some(b)) if b > 0.0 => format!("{:.2}", f / b),
                _ => "-".into(),
            })
            .collect();
        println!("| {m} | {} | {} |", shown.join(" | "), ratios.join(" | "));
    }
    println!("\n(ratio < 1: Ferry is faster; the whole VM run took {vm_secs:.0} s)");
    // Every round's figure, for the spread behind each median (the machine is shared).
    println!("\nEvery round (s), in round order:");
    for m in metrics {
        let rows: Vec<String> = targets
            .iter()
            .filter_map(|(t, _)| {
                let v = results.get(&(t.to_string(), m.to_string()))?;
                let v: Vec<String> = v.iter().map(|&x| secs(x)).collect();
                Some(format!("{t} {}", v.join(" ")))
            })
            .collect();
        println!("- {m}: {}", rows.join("; "));
    }
}
