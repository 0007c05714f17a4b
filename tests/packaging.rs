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
