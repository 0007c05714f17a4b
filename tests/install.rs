//! README.md's install commands, run as written in a fresh clone of this checkout's HEAD.
//!
//! Cost: the first run on a machine is two release builds from scratch (the three binaries
//! with LTO and one codegen unit, then the static agent for an explicit target): 130 s on
//! this 2-core machine when it was otherwise idle (92 s and 38 s), several minutes when it is
//! busy. Their target directories persist under `target/` (`install-test/target` for the
//! three binaries, `static/` shared with the VM tests' static build), so later runs rebuild
//! only Ferry's own crates (the clone is new) and link again; one such run took 500 s of
//! wall time (130 s of CPU) while other tests shared the 2 cores.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::harness::{Need, require};

/// The fenced `sh` blocks of README.md's `## Install` section, in order.
fn install_blocks(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## Install\n")
        .nth(1)
        .expect("README.md has an `## Install` section");
    let section = section
        .split("\n## ")
        .next()
        .expect("split yields one part");
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```sh" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(body.join("\n"));
        }
    }
    blocks
}

fn run_script(script: &str, dir: &Path, envs: &[(&str, &Path)]) {
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(dir);
    // The outer `cargo test` sets variables that would steer the inner builds (its profile's
    // rustflags, the manifest it runs); the README's commands run as a user's shell would.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" || k == "RUSTFLAGS" || k == "RUSTC_WRAPPER"
        {
            cmd.env_remove(&k);
        }
    }
    // The cargo running this test, first on PATH.
    let cargo_dir = Path::new(env!("CARGO"))
        .parent()
        .expect("cargo has a directory")
        .to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(cargo_dir).chain(std::env::split_paths(&path)))
        .expect("PATH joins");
    cmd.env("PATH", path);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("bash runs");
    assert!(
        out.status.success(),
        "README install block failed ({}):\n{script}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "install block took {:.0} s:\n{script}",
        started.elapsed().as_secs_f64()
    );
}

fn version_of(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(out.status.success(), "{} --version failed", bin.display());
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn readme_install_commands_work_in_a_fresh_clone() {
    if !require(&[Need::Program("git"), Need::Program("bash")]) {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = install_blocks(&readme);
    assert_eq!(
        blocks.len(),
        2,
        "README's Install section has the three-binary block and the static agent block"
    );
    assert!(blocks[0].contains("cargo install"), "{}", blocks[0]);

    let work = root.join("target/install-test");
    let clone = work.join("clone");
    if clone.exists() {
        std::fs::remove_dir_all(&clone).expect("remove the last clone");
    }
    std::fs::create_dir_all(&work).expect("mkdir target/install-test");
    let status = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(&root)
        .arg(&clone)
        .status()
        .expect("git runs");
    assert!(status.success(), "git clone of {} failed", root.display());

    let install_root = tempfile::tempdir().expect("tempdir");
    run_script(
        &blocks[0],
        &clone,
        &[
            ("CARGO_INSTALL_ROOT", install_root.path()),
            ("CARGO_TARGET_DIR", &work.join("target")),
        ],
    );
    let proto = ferry_protocol::VERSION;
    for name in ["ferry", "ferry-host", "ferry-agent"] {
        let bin = install_root.path().join("bin").join(name);
        let v = version_of(&bin);
        assert_eq!(
            v.trim(),
            format!(
                "{name} {} (protocol {}.{})",
                env!("CARGO_PKG_VERSION"),
                proto.major,
                proto.minor
            ),
            "{name} --version"
        );
    }

    run_script(
        &blocks[1],
        &clone,
        &[("CARGO_TARGET_DIR", &root.join("target/static"))],
    );
    let agent = clone.join("guest-bin/bin/ferry-agent");
    assert!(
        ferry_vmtest::tools::is_static(&agent).expect("an ELF file"),
        "{} is not statically linked",
        agent.display()
    );
    assert!(version_of(&agent).starts_with("ferry-agent "));
}
