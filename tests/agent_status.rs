//! `ferry-agent status` (and `ferry status --agent`), its JSON and its Prometheus text, during
//! a workload on a real mount: what the agent answered itself, what it sent, the host changes
//! it replayed with their lag, and why a change was not replayed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::config::Setup;
use crate::harness::{
    Need, agent_command, bins, require, skip_or_fail, terminate, wait_mounted, wait_until,
};
use crate::status::{parse_prometheus, sample, scrape, status_json};

/// `ferry-agent status --json --control PATH`, parsed.
fn agent_status(control: &Path) -> serde_json::Value {
    status_json(&bins().agent, control)
}

/// The cache kind `kind`: (answered here, sent to the host).
fn cache(st: &serde_json::Value, kind: &str) -> (u64, u64) {
    let c = st["cache"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == kind)
        .unwrap_or_else(|| panic!("no cache kind {kind} in {st}"));
    (
        c["answered_here"].as_u64().unwrap(),
        c["sent_to_host"].as_u64().unwrap(),
    )
}

fn mount(st: &serde_json::Value) -> &serde_json::Value {
    &st["mounts"][0]
}

/// The agent of `s` mounting export `a` at `mnt` with `--control` and `--metrics`.
fn start_agent(s: &Setup, mnt: &Path, control: &Path, metrics: &Path) -> Child {
    let args = [
        "--connect".to_string(),
        format!("unix:{}", s.sock().display()),
        "--mount".into(),
        format!("a={}", mnt.display()),
        "--control".into(),
        control.display().to_string(),
        "--metrics".into(),
        format!("unix:{}", metrics.display()),
    ];
    let mut agent = agent_command(&args)
        .env("RUST_LOG", "info")
        .stderr(fs::File::create(s.path("agent.log")).unwrap())
        .spawn()
        .unwrap();
    wait_mounted(mnt, &mut agent);
    agent
}

#[test]
fn agent_status_follows_a_workload() {
    if !require(&[Need::Fuse, Need::Program("python3"), Need::Program("mount")]) {
        return;
    }
    let has_parser = Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_parser {
        skip_or_fail("needs the Python prometheus_client package (`bash .ci/run` installs it)");
        return;
    }
    let s = Setup::new();
    s.write_config(&[("a", "")]);
    fs::create_dir(s.path("a/sub")).unwrap();
    fs::create_dir(s.path("a/d")).unwrap();
    for i in 0..5 {
        fs::write(s.path(&format!("a/d/f{i}")), b"x").unwrap();
    }
    let mut host = s.start_host(&[]);
    let (ma, control, metrics) = (
        s.path("mnt-a"),
        s.path("agent.sock"),
        s.path("agent-metrics.sock"),
    );
    fs::create_dir(&ma).unwrap();
    let mut agent = start_agent(&s, &ma, &control, &metrics);
    assert!(wait_until(Duration::from_secs(10), || control.exists()
        && metrics.exists()));
    for p in [&control, &metrics] {
        let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }

    // A second stat of a file is the kernel's cache hit: nothing more reaches the host.
    fs::metadata(ma.join("name")).unwrap();
    let st0 = agent_status(&control);
    fs::metadata(ma.join("name")).unwrap();
    let st1 = agent_status(&control);
    assert_eq!(
        cache(&st1, "attributes").1,
        cache(&st0, "attributes").1,
        "{st0}\n{st1}"
    );
    assert_eq!(
        cache(&st1, "names").1,
        cache(&st0, "names").1,
        "{st0}\n{st1}"
    );
    assert!(
        cache(&st1, "names").1 >= 1,
        "the first stat looked the name up: {st1}"
    );

    // Missing names in a directory the agent holds a complete listing of: answered here.
    assert_eq!(fs::read_dir(ma.join("d")).unwrap().count(), 5);
    for i in 0..3 {
        assert!(fs::metadata(ma.join(format!("d/missing-{i}"))).is_err());
    }
    // Read-only opens: answered here.
    for _ in 0..2 {
        assert_eq!(fs::read(ma.join("d/f0")).unwrap(), b"x");
    }
    let st2 = agent_status(&control);
    assert!(
        cache(&st2, "missing_names").0 >= cache(&st1, "missing_names").0 + 3,
        "{st1}\n{st2}"
    );
    assert!(
        cache(&st2, "opens").0 >= cache(&st1, "opens").0 + 2,
        "{st1}\n{st2}"
    );
    let lookup = st2["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["op"] == "Lookup")
        .unwrap_or_else(|| panic!("lookups counted: {st2}"));
    assert!(lookup["p50_us"].as_u64().unwrap() > 0, "{lookup}");

    // A host edit: an event received, replayed (done), with a lag as a time.
    let received = st2["events_received"].as_u64().unwrap();
    let replayed = mount(&st2)["replayed"].as_u64().unwrap();
    fs::write(s.path("a/host-file"), b"from the host").unwrap();
    assert!(
        wait_until(
            Duration::from_secs(20),
            || mount(&agent_status(&control))["replayed"].as_u64().unwrap() > replayed
        ),
        "{}",
        agent_status(&control)
    );
    let st3 = agent_status(&control);
    assert!(st3["events_received"].as_u64().unwrap() > received, "{st3}");
    let m = mount(&st3);
    assert_eq!(m["export"], "a");
    assert!(m["lag_count"].as_u64().unwrap() >= 1, "{m}");
    assert!(m["last_lag_seconds"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["max_lag_seconds"].as_f64().unwrap() >= m["last_lag_seconds"].as_f64().unwrap());
    assert!(st3["invalidations"].as_u64().unwrap() > 0, "{st3}");

    // "Why didn't it reload?": a change not replayed, with its reason. A guest mount sits on
    // `sub`; the host removes the directory under it; the replay leaves the guest mount be.
    let sub = ma.join("sub");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "ferry-test", sub.to_str().unwrap()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mount tmpfs on {}", sub.display());
    fs::remove_dir(s.path("a/sub")).unwrap();
    let skipped = || {
        let st = agent_status(&control);
        mount(&st)["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["outcome"] == "skipped" && r["path"] == "sub" && r["kind"] == "Removed")
    };
    let seen = wait_until(Duration::from_secs(20), skipped);
    let _ = Command::new("umount")
        .arg("-l")
        .arg(&sub)
        .stderr(Stdio::null())
        .status();
    assert!(seen, "{}", agent_status(&control));
    let st4 = agent_status(&control);
    assert!(mount(&st4)["skipped"].as_u64().unwrap() >= 1, "{st4}");

    // The human form, from both programs.
    let text = Command::new(&bins().agent)
        .args(["status", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("not replayed") && text.contains("guest mount") && text.contains("event lag"),
        "{text}"
    );
    let out = Command::new(&bins().ferry)
        .args(["status", "--json", "--agent"])
        .arg(&control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let via_ferry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        mount(&via_ferry)["replayed"].as_u64().unwrap() >= 1,
        "{via_ferry}"
    );

    // The same numbers as Prometheus text, over HTTP and over the control socket.
    let samples = parse_prometheus(&scrape(&metrics));
    let labels = format!("export=a,mountpoint={}", ma.display());
    assert!(
        sample(
            &samples,
            &format!("ferry_agent_replays_total{{{labels},outcome=done}}")
        ) >= 1.0
    );
    assert!(
        sample(
            &samples,
            &format!("ferry_agent_replays_total{{{labels},outcome=skipped}}")
        ) >= 1.0
    );
    assert!(
        sample(
            &samples,
            "ferry_agent_cache_answered_total{kind=missing_names}"
        ) >= 3.0
    );
    assert!(
        sample(
            &samples,
            &format!("ferry_agent_event_lag_seconds_count{{{labels}}}")
        ) >= 1.0
    );
    assert!(
        sample(
            &samples,
            &format!("ferry_agent_event_lag_seconds_sum{{{labels}}}")
        ) > 0.0
    );
    assert!(
        sample(
            &samples,
            "ferry_agent_request_duration_seconds_count{op=Lookup}"
        ) >= 1.0
    );
    let out = Command::new(&bins().agent)
        .args(["status", "--metrics", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    let samples = parse_prometheus(&String::from_utf8_lossy(&out.stdout));
    assert!(sample(&samples, "ferry_agent_events_received_total{}") >= 1.0);

    assert!(terminate(&mut agent).success(), "{}", s.agent_log());
    assert!(terminate(&mut host).success(), "{}", s.host_log());
}
