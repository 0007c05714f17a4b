//! `ferry status` and the metrics endpoint of a running ferry-host, during a workload.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::config::Setup;
use crate::harness::{Need, bins, require, skip_or_fail, terminate, wait_until};

/// `PROGRAM status --json --control CONTROL` (`ferry` or `ferry-agent`), parsed.
pub(crate) fn status_json(program: &Path, control: &Path) -> serde_json::Value {
    let out = Command::new(program)
        .args(["status", "--json", "--control"])
        .arg(control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

/// `ferry status --json`, parsed.
fn status(control: &Path) -> serde_json::Value {
    status_json(&bins().ferry, control)
}

/// The Prometheus text over HTTP on a Unix socket.
pub(crate) fn scrape(metrics: &Path) -> String {
    let mut conn = UnixStream::connect(metrics).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut http = String::new();
    conn.read_to_string(&mut http).unwrap();
    let (head, body) = http.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    body.to_string()
}

/// Samples by name and labels, read by the Python prometheus_client parser:
/// `name{k=v,...} value` lines, labels sorted.
pub(crate) fn parse_prometheus(body: &str) -> Vec<(String, f64)> {
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        for f in parse(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
        \x20       print(f'{s.name}{{{labels}}} {s.value}')\n";
    let mut py = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse it: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// The sample `key` (`name{labels}` as [`parse_prometheus`] gives it).
pub(crate) fn sample(samples: &[(String, f64)], key: &str) -> f64 {
    samples
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no sample {key} in {samples:?}"))
        .1
}

/// The sum of every sample named `name`, whatever its labels.
fn total(samples: &[(String, f64)], name: &str) -> u64 {
    let prefix = format!("{name}{{");
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
        .sum::<f64>() as u64
}

/// The export `name` of the first guest.
fn export<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["guests"][0]["exports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no export {name} in {st}"))
}

fn op_count(e: &serde_json::Value, op: &str) -> u64 {
    e["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["op"] == op)
        .map_or(0, |r| r["count"].as_u64().unwrap())
}

#[test]
fn status_and_metrics_follow_a_workload() {
    if !require(&[Need::Fuse, Need::Program("python3")]) {
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
    let control = s.path("control.sock");
    let metrics = s.path("metrics.sock");
    let mut host = s.start_host(&[
        "--control",
        &format!("unix:{}", control.display()),
        "--metrics",
        &format!("unix:{}", metrics.display()),
    ]);
    assert!(wait_until(Duration::from_secs(20), || control.exists()
        && metrics.exists()));
    for p in [&control, &metrics] {
        let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    let ma = s.path("mnt-a");
    fs::create_dir(&ma).unwrap();
    let mut agent = s.start_agent(&[("a", &ma)]);

    let before = status(&control);
    let e0 = export(&before, "a");
    // The guest's own writes: counted as requests and bytes, never sent back as events.
    for i in 0..20 {
        fs::write(ma.join(format!("f{i}")), vec![b'x'; 1000]).unwrap();
    }
    let after = status(&control);
    let e1 = export(&after, "a");
    assert!(
        op_count(e1, "Write") >= op_count(e0, "Write") + 20,
        "writes counted: {e0} -> {e1}"
    );
    assert!(op_count(e1, "Create") >= 20, "{e1}");
    assert!(e1["bytes_written"].as_u64().unwrap() >= 20_000, "{e1}");
    let write = e1["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["op"] == "Write")
        .unwrap();
    assert!(write["p50_us"].as_u64().unwrap() > 0, "{write}");
    assert!(write["p99_us"].as_u64().unwrap() >= write["p50_us"].as_u64().unwrap());

    // Host changes: ten new directories are ten events, no more, no fewer.
    let sent = |st: &serde_json::Value| export(st, "a")["events_sent"].as_u64().unwrap();
    let base = sent(&status(&control));
    for i in 0..10 {
        fs::create_dir(s.path(&format!("a/host-dir-{i}"))).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(30), || sent(&status(&control))
            >= base + 10),
        "events: {}",
        status(&control)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sent(&status(&control)), base + 10, "{}", status(&control));

    // The watcher's side: the guest's 20 files were seen and suppressed as its own echoes,
    // the host's 10 directories seen and sent.
    let st = status(&control);
    let ex = st["exports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "a")
        .unwrap();
    assert!(ex["events_seen"].as_u64().unwrap() >= 30, "{ex}");
    assert!(ex["events_suppressed"].as_u64().unwrap() >= 20, "{ex}");

    // The Prometheus text, over HTTP on the Unix socket, through a real parser.
    let samples = parse_prometheus(&scrape(&metrics));
    let requests = total(&samples, "ferry_request_duration_seconds_count");
    assert!(requests >= 40, "requests counted: {samples:?}");
    assert_eq!(
        total(&samples, "ferry_events_sent_total"),
        base + 10,
        "events: {samples:?}"
    );

    // ferry ctl reload over the same socket: the file did not change.
    let out = Command::new(&bins().ferry)
        .args(["ctl", "--control"])
        .arg(&control)
        .arg("reload")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.starts_with("ok: 0 change(s)"),
        "{said}"
    );
    // The human form reads the same numbers.
    let out = Command::new(&bins().ferry)
        .args(["status", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("export a:") && text.contains("Write"),
        "{text}"
    );

    assert!(terminate(&mut agent).success(), "{}", s.agent_log());
    assert!(terminate(&mut host).success(), "{}", s.host_log());
}

#[test]
fn debug_log_tells_a_story_and_guest_warnings_are_rate_limited() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Setup::new();
    s.write_config(&[("a", "")]);
    // The host logs at debug for this test (Setup::start_host logs at info).
    let log = s.path("debug.log");
    let mut host = std::process::Command::new(&bins().host)
        .arg("--config")
        .arg(s.config())
        .env("RUST_LOG", "ferry_host=debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || UnixStream::connect(
        s.sock()
    )
    .is_ok()));
    let ma = s.path("mnt-a");
    fs::create_dir(&ma).unwrap();
    let mut agent = s.start_agent(&[("a", &ma)]);
    assert_eq!(fs::read(ma.join("name")).unwrap(), b"a");
    let text = || fs::read_to_string(&log).unwrap();
    // One line of the story: the connection, the request with its operation, node and name.
    assert!(
        wait_until(Duration::from_secs(10), || text().lines().any(|l| l
            .contains("conn{peer=")
            && l.contains("op=Lookup")
            && l.contains("node=1")
            && l.contains("name=name")
            && l.contains("served"))),
        "{}",
        text()
    );

    // Thirty connections that send garbage: each is closed with a warning, but at most ten
    // such lines reach the log in a 10 s window.
    for _ in 0..30 {
        let mut c = UnixStream::connect(s.sock()).unwrap();
        let _ = c.write_all(&[0xff; 64]);
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    std::thread::sleep(Duration::from_millis(500));
    let closing = text()
        .lines()
        .filter(|l| l.contains("closing connection"))
        .count();
    assert!(
        (1..=10).contains(&closing),
        "{closing} 'closing connection' lines:\n{}",
        text()
    );
    assert!(terminate(&mut agent).success(), "{}", s.agent_log());
    assert!(terminate(&mut host).success(), "{}", text());
}

#[test]
fn status_watch_refreshes_and_shows_the_event_lag() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Setup::new();
    s.write_config(&[("a", "")]);
    let control = s.path("control.sock");
    let mut host = s.start_host(&["--control", &format!("unix:{}", control.display())]);
    assert!(wait_until(Duration::from_secs(20), || control.exists()));
    let ma = s.path("mnt-a");
    fs::create_dir(&ma).unwrap();
    let mut agent = s.start_agent(&[("a", &ma)]);
    // A host change reaches the guest: its lag is a time, not only bytes queued.
    fs::write(s.path("a/host-file"), b"x").unwrap();
    let lag = |st: &serde_json::Value| st["guests"][0]["last_event_lag_seconds"].as_f64();
    assert!(
        wait_until(Duration::from_secs(20), || lag(&status(&control))
            .is_some_and(|l| l > 0.0)),
        "{}",
        status(&control)
    );
    let st = status(&control);
    let g = &st["guests"][0];
    assert!(
        g["max_event_lag_seconds"].as_f64().unwrap() >= lag(&st).unwrap(),
        "{g}"
    );
    assert!(g["event_lag_seconds"].as_f64().is_some(), "{g}");

    // --watch: a screen per second, each the numbers of the moment, until interrupted.
    let mut watch = Command::new(&bins().ferry)
        .args(["status", "--watch", "--control"])
        .arg(&control)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    // Guest requests between screens make the numbers move.
    for i in 0..30 {
        fs::write(ma.join(format!("w{i}")), b"y").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = watch.wait();
    let text = reader.join().unwrap();
    let screens: Vec<&str> = text
        .split("\x1b[H\x1b[2J")
        .filter(|s| !s.is_empty())
        .collect();
    assert!(screens.len() >= 2, "refreshed: {text}");
    for screen in &screens {
        assert!(
            screen.contains("ferry-host up") && screen.contains("event lag"),
            "{screen}"
        );
    }
    let creates = |screen: &str| {
        screen
            .lines()
            .find(|l| l.trim_start().starts_with("Create "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        creates(screens.last().unwrap()) > creates(screens[0]),
        "the numbers moved between screens:\n{}\n---\n{}",
        screens[0],
        screens.last().unwrap()
    );
    assert!(terminate(&mut agent).success(), "{}", s.agent_log());
    assert!(terminate(&mut host).success(), "{}", s.host_log());
}

#[test]
fn a_reload_stops_serving_a_removed_vhost_user_fs_export() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Setup::new();
    s.write_config(&[("a", ""), ("b", "")]);
    let vfs = s.path("b.vfs.sock");
    let listen = format!("listen = [\"unix:{}\"", s.sock().display());
    let with_vhost = fs::read_to_string(s.config()).unwrap().replacen(
        &listen,
        &format!("{listen}, \"vhost-user-fs:{}:b\"", vfs.display()),
        1,
    );
    fs::write(s.config(), &with_vhost).unwrap();
    let control = s.path("control.sock");
    let mut host = s.start_host(&["--control", &format!("unix:{}", control.display())]);
    assert!(wait_until(Duration::from_secs(20), || vfs.exists() && control.exists()));
    let ma = s.path("mnt-a");
    fs::create_dir(&ma).unwrap();
    let mut agent = s.start_agent(&[("a", &ma)]);

    // The new file drops export b and its vhost-user-fs listener.
    s.write_config(&[("a", "")]);
    let out = Command::new(&bins().ferry)
        .args(["ctl", "--control"])
        .arg(&control)
        .arg("reload")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("export b removed") && said.contains("stops serving"),
        "the reload says what happens to the socket: {said}"
    );
    // The listener stops: its socket goes, and no frontend can connect any more.
    assert!(
        wait_until(Duration::from_secs(10), || !vfs.exists()),
        "{} still served:\n{}",
        vfs.display(),
        s.host_log()
    );
    assert!(UnixStream::connect(&vfs).is_err());
    assert!(
        s.host_log().contains("no longer served"),
        "{}",
        s.host_log()
    );
    // The other export serves on.
    fs::write(ma.join("after"), b"ok").unwrap();
    assert_eq!(fs::read(s.path("a/after")).unwrap(), b"ok");
    assert!(terminate(&mut agent).success(), "{}", s.agent_log());
    assert!(terminate(&mut host).success(), "{}", s.host_log());
}
