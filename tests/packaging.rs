//! What packaging/ ships: the systemd units pass `systemd-analyze verify` with no complaint.

use std::path::Path;
use std::process::Command;

use crate::harness::{Need, bins, require};

/// `systemd-analyze verify` of `units` (file name, text), written to a temporary directory:
/// (exit success, what it said). Documentation= man pages are not looked up (`--man=no`):
/// they are installed with the binaries, not on a build machine.
fn verify(units: &[(&str, String)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = units
        .iter()
        .map(|(name, text)| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), said)
}

#[test]
fn systemd_units_verify_cleanly() {
    if !require(&[Need::Program("systemd-analyze")]) {
        return;
    }
    let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    // verify checks that ExecStart= names an executable: point the units at the binaries just
    // built instead of /usr/local/bin, where nothing is installed on a build machine.
    let b = bins();
    let units: Vec<(&str, String)> = [
        ("ferry-host.service", &b.host),
        ("ferry-agent.service", &b.agent),
    ]
    .into_iter()
    .map(|(name, bin)| {
        let text = std::fs::read_to_string(packaging.join(name)).unwrap();
        let stem = name.trim_end_matches(".service");
        let installed = format!("/usr/local/bin/{stem}");
        assert!(text.contains(&installed), "{name} runs {installed}");
        (name, text.replace(&installed, &bin.display().to_string()))
    })
    .collect();
    let (ok, said) = verify(&units);
    // systemd-analyze only warns about an unknown key or a bad value (exit 0): anything it
    // says about our files is a failure.
    let about_ours: Vec<&str> = said.lines().filter(|l| l.contains(".service")).collect();
    assert!(
        ok && about_ours.is_empty(),
        "systemd-analyze verify:\n{said}"
    );

    // The check sees a mistake: a misspelt hardening option is reported.
    let mut broken = units.clone();
    broken[0].1 = broken[0]
        .1
        .replace("ProtectSystem=full", "ProtectSystem=fully");
    let (_, said) = verify(&broken);
    assert!(said.contains("ferry-host.service"), "{said}");
}

/// The long options (`--name`) a `--help` text or a man page mentions.
fn long_options(text: &str) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at + 2;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(text.len() - start);
        let word = text[start..end].trim_end_matches('-');
        let before_ok = i + at == 0 || !bytes[i + at - 1].is_ascii_alphanumeric();
        if before_ok && word.len() > 1 && word.as_bytes()[0].is_ascii_lowercase() {
            found.insert(format!("--{word}"));
        }
        i = end.max(start);
    }
    found
}

#[test]
fn man_pages_mention_every_option_help_prints() {
    let b = bins();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&b.ferry)
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every command and subcommand of the three binaries, and its page.
    let commands: &[(&Path, &[&str], &str)] = &[
        (&b.ferry, &[], "ferry.1"),
        (&b.ferry, &["share"], "ferry-share.1"),
        (&b.ferry, &["bench"], "ferry-bench.1"),
        (&b.ferry, &["strip-owners"], "ferry-strip-owners.1"),
        (&b.ferry, &["man"], "ferry-man.1"),
        (&b.ferry, &["completions"], "ferry-completions.1"),
        (&b.ferry, &["status"], "ferry-status.1"),
        (&b.ferry, &["ctl"], "ferry-ctl.1"),
        (&b.ferry, &["ctl", "reload"], "ferry-ctl-reload.1"),
        (&b.host, &[], "ferry-host.1"),
        (&b.host, &["strip-owners"], "ferry-host-strip-owners.1"),
        (&b.agent, &[], "ferry-agent.1"),
        (&b.agent, &["status"], "ferry-agent-status.1"),
    ];
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut expected: Vec<String> = commands.iter().map(|c| c.2.to_string()).collect();
    expected.sort();
    assert_eq!(pages, expected, "a page per command and subcommand");
    for (bin, sub, page) in commands {
        let help = Command::new(bin).args(*sub).arg("--help").output().unwrap();
        assert!(help.status.success());
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        let options = long_options(&help);
        assert!(options.contains("--help"), "{help}");
        if *page == "ferry-host.1" {
            assert!(options.contains("--check-config"), "{options:?}");
        }
        // roff escapes every dash (`\-\-export`), switches fonts (`\fB`, `\fR`) and may
        // break words with `\&`.
        let mut man = std::fs::read_to_string(dir.path().join(page))
            .unwrap()
            .replace("\\-", "-")
            .replace("\\&", "");
        for font in ["\\fB", "\\fI", "\\fR", "\\fP"] {
            man = man.replace(font, " ");
        }
        let in_man = long_options(&man);
        let missing: Vec<&String> = options.difference(&in_man).collect();
        assert!(
            missing.is_empty(),
            "{page} lacks {missing:?}, which `{} {} --help` prints",
            bin.display(),
            sub.join(" ")
        );
    }
}

#[test]
fn completions_know_each_programs_options() {
    let b = bins();
    for (program, option) in [
        ("ferry", "strip-owners"),
        ("ferry-host", "--check-config"),
        ("ferry-agent", "--connect-timeout"),
    ] {
        let out = Command::new(&b.ferry)
            .args(["completions", "bash", program])
            .output()
            .unwrap();
        assert!(out.status.success());
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(option), "{program}: {script}");
        // The script is valid bash.
        let check = Command::new("bash")
            .args(["-n", "-c", &script])
            .status()
            .unwrap();
        assert!(check.success(), "bash -n on the {program} completions");
    }
}
