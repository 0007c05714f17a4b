//! Host changes reach the guest: real inotify clients (inotifywait from inotify-tools, Node's
//! `fs.watch`) watching the mount must see what they see on a native directory, and the
//! mount's `cached` view must be current as soon as the event is seen.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::harness::{Need, Share, require, sh, wait_until};
use crate::posix::snapshot;

/// A watcher process whose output lines are collected as they come.
pub(crate) struct Watcher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// What it said on stderr, kept for failure messages.
    errors: Arc<Mutex<Vec<String>>>,
}

/// The line a watcher prints once its watches are in place.
enum Ready {
    Stdout(&'static str),
    Stderr(&'static str),
}

impl Watcher {
    /// `inotifywait -m -r` on `dir`, one `path|EVENTS` line per event, paths relative to `dir`.
    /// Not `-q`: its "Watches established." on stderr says when it is ready.
    pub(crate) fn inotifywait(dir: &Path) -> Watcher {
        let mut cmd = Command::new("inotifywait");
        cmd.args(["-m", "-r", "--format", "%w%f|%e"]).arg(dir);
        Self::start(
            cmd,
            dir,
            "inotifywait",
            Ready::Stderr("Watches established."),
        )
    }
    /// Node's `fs.watch` on every directory, adding new ones as they appear, as chokidar and
    /// webpack do on Linux: `TYPE PATH` lines.
    fn node(dir: &Path) -> Watcher {
        let script = r#"
const fs = require('fs'), path = require('path');
const root = process.argv[1];
const watched = new Map();
function watch(dir) {
  if (watched.has(dir)) return;
  let w;
  try { w = fs.watch(dir, (type, name) => {
    if (!name) return;
    const full = path.join(dir, name);
    console.log(type + ' ' + path.relative(root, full));
    try { if (fs.lstatSync(full).isDirectory()) watch(full); } catch (e) {}
  }); } catch (e) { return; }
  w.on('error', () => { w.close(); watched.delete(dir); });
  watched.set(dir, w);
  for (const e of fs.readdirSync(dir, { withFileTypes: true }))
    if (e.isDirectory()) watch(path.join(dir, e.name));
}
watch(root);
console.log('READY');
"#;
        let mut cmd = Command::new("node");
        cmd.arg("-e").arg(script).arg(dir);
        Self::start(cmd, dir, "node", Ready::Stdout("READY"))
    }

    /// Starts the watcher and waits (10 s at most) until it says it is `ready`.
    fn start(mut cmd: Command, dir: &Path, what: &str, ready: Ready) -> Watcher {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let collect = |out: Box<dyn std::io::Read + Send>, prefix: String| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let l = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let line = line.strip_prefix(&prefix).unwrap_or(&line).to_string();
                    l.lock().unwrap().push(line);
                }
            });
            lines
        };
        let prefix = format!("{}/", dir.display());
        let lines = collect(Box::new(child.stdout.take().unwrap()), prefix);
        let errors = collect(Box::new(child.stderr.take().unwrap()), String::new());
        let mut w = Watcher {
            child,
            lines,
            errors,
        };
        let (stream, line) = match ready {
            Ready::Stdout(line) => (Arc::clone(&w.lines), line),
            Ready::Stderr(line) => (Arc::clone(&w.errors), line),
        };
        let is_ready = || stream.lock().unwrap().iter().any(|l| l == line);
        let up = wait_until(Duration::from_secs(10), || {
            is_ready() || w.child.try_wait().unwrap().is_some()
        });
        assert!(
            up && is_ready(),
            "{what} did not say {line:?} within 10 s: {:?}",
            w.errors.lock().unwrap()
        );
        if matches!(ready, Ready::Stdout(_)) {
            w.take();
        }
        w
    }

    /// Waits (10 s at most) until the watcher watches `dir/rel`, a directory it has seen
    /// created: `inotifywait -r` adds a new directory's watch only after reporting its creation,
    /// so each round lists the directory until the listing is reported on the directory's own
    /// watch (`rel/|OPEN,ISDIR`). The listing's events are none that `inotify_normal` keeps.
    fn wait_watching(&self, dir: &Path, rel: &str) {
        let own = format!("{rel}/|OPEN,ISDIR");
        let watching = wait_until(Duration::from_secs(10), || {
            std::fs::read_dir(dir.join(rel)).map(drop).unwrap();
            self.lines.lock().unwrap().contains(&own)
        });
        assert!(watching, "inotifywait never watched {rel}");
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }

    pub(crate) fn wait_for(&self, cond: impl Fn(&[String]) -> bool, limit: Duration) -> bool {
        wait_until(limit, || cond(&self.lines.lock().unwrap()))
    }

    /// Waits until no line arrived for `quiet` (at most 20 s), then takes the lines.
    pub(crate) fn settle(&self, quiet: Duration) -> Vec<String> {
        let end = Instant::now() + Duration::from_secs(20);
        let mut n = usize::MAX;
        let mut since = Instant::now();
        while Instant::now() < end {
            let now_n = self.lines.lock().unwrap().len();
            if now_n != n {
                n = now_n;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.take()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Events a guest can be expected to see for host changes. Opens, reads and directory
/// listings are the watcher's or the server's own and differ by nature.
fn inotify_normal(lines: Vec<String>) -> Vec<String> {
    const KEEP: [&str; 8] = [
        "CREATE",
        "DELETE",
        "DELETE_SELF",
        "MODIFY",
        "ATTRIB",
        "CLOSE_WRITE",
        "MOVED_FROM",
        "MOVED_TO",
    ];
    let mut out: Vec<String> = Vec::new();
    for l in lines {
        let Some((path, events)) = l.rsplit_once('|') else {
            continue;
        };
        let evs: Vec<&str> = events.split(',').collect();
        let Some(main) = evs.iter().find(|e| KEEP.contains(e)) else {
            continue;
        };
        let dir = if evs.contains(&"ISDIR") { ",ISDIR" } else { "" };
        let line = format!("{path} {main}{dir}");
        if out.last() != Some(&line) {
            out.push(line);
        }
    }
    // A removed directory's DELETE_SELF (on its own watch) and the DELETE in its parent come
    // from two watches; the kernel emits the first when it lets go of the inode, which on any
    // filesystem may be before or after the second. Put them in one order.
    for i in 1..out.len() {
        if let Some(p) = out[i - 1].strip_suffix(" DELETE,ISDIR") {
            if out[i] == format!("{p}/ DELETE_SELF") {
                out.swap(i - 1, i);
            }
        }
    }
    out
}

/// The host operations of the differential test, one shell step each.
const STEPS: &[&str] = &[
    "echo hello > a",
    "echo more >> a",
    "truncate -s 2 a",
    "chmod 600 a",
    "touch a",
    "mkdir d",
    "echo x > d/x",
    "mv a b",
    "mv b d/c",
    "echo y > y && mv y d/x",
    "ln -s d/x sl",
    "ln d/c hard",
    "mkdir d/sub",
    "mv d e",
    "rm e/x",
    "rm hard sl",
    "rmdir e/sub",
    "rm -r e",
    "mkdir burst && for i in $(seq 1 1000); do echo $i > burst/f$i; done",
    "rm -r burst",
];

/// Runs `steps` in `work` while `watch` watches `seen`; returns each step's normalised events.
fn record(
    work: &Path,
    watcher: &Watcher,
    normal: fn(Vec<String>) -> Vec<String>,
) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for step in STEPS {
        let (ok, out) = sh(work, step);
        assert!(ok, "step {step:?} failed: {out}");
        // A step's events are over once none came for 2.5 s: generous, because CI machines
        // are loaded and a replay may lag; this is a wait, not a timing assertion.
        all.push(normal(watcher.settle(Duration::from_millis(2500))));
    }
    all
}

/// Steps whose events may interleave differently across paths (README, "Host changes"): a
/// directory filled within milliseconds of its creation, before the host watcher watches it,
/// is reported from a listing, so its first entries' creations come before their writes.
/// Each path's own events must still match, in order.
const PER_PATH_ORDER: &[&str] =
    &["mkdir burst && for i in $(seq 1 1000); do echo $i > burst/f$i; done"];

/// Each path's events, in order.
fn by_path(events: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        let (path, ev) = e.rsplit_once(' ').unwrap_or((e, ""));
        m.entry(path.to_string()).or_default().push(ev.to_string());
    }
    m
}

/// Each path's events are the same, except below a directory that both sides report created in
/// the step (so everything below it is new in the step): a directory created and filled within
/// one host burst is one creation (watchers list new directories themselves), so a path below
/// it may be missing on the mount, or be reported from part-way through (its creation was
/// collapsed into the directory's, its later writes came in a later burst, as a native watcher
/// that adds its watch on the new directory late sees them). Below it, the mount may also hear
/// a path's later events that the native watcher, adding its watch on the new directory late,
/// missed altogether (the replay waits for the guest watcher's watch). Nothing else may be
/// missing, and nothing may be added.
fn same_up_to_collapse(native: &[String], mount: &[String]) -> bool {
    let (n, m) = (by_path(native), by_path(mount));
    let created: Vec<&str> = mount
        .iter()
        .filter_map(|l| l.strip_suffix(" CREATE,ISDIR"))
        .filter(|d| {
            n.get(*d)
                .is_some_and(|evs| evs.first().is_some_and(|e| e == "CREATE,ISDIR"))
        })
        .collect();
    let below = |p: &str| created.iter().any(|d| p.starts_with(&format!("{d}/")));
    n.iter().all(|(p, evs)| {
        m.get(p).map_or(below(p), |got| {
            got == evs || (below(p) && evs.ends_with(got))
        })
    }) && m.keys().all(|p| n.contains_key(p) || below(p))
}

fn compare(tool: &str, native: &[Vec<String>], mount: &[Vec<String>]) {
    let mut diffs = String::new();
    for (i, step) in STEPS.iter().enumerate() {
        // Node's watcher adds its watch on a new directory from a callback, after the event:
        // how many of the burst's first files it sees depends on scheduling, natively as on
        // the mount. The inotifywait run checks the burst instead.
        if tool == "node" && PER_PATH_ORDER.contains(step) {
            continue;
        }
        let same = if PER_PATH_ORDER.contains(step) {
            same_up_to_collapse(&native[i], &mount[i])
        } else {
            native[i] == mount[i]
        };
        if !same {
            diffs += &format!(
                "\nstep {step:?}:\n  native: {:?}\n  mount:  {:?}",
                native[i], mount[i]
            );
        }
    }
    assert!(diffs.is_empty(), "{tool} saw different events:{diffs}");
}

/// Runs the steps on a native directory watched natively, then on the host side of a share
/// watched through the mount, with the same tool; compares and returns the mount's events.
fn differential(
    tool: &str,
    watch: fn(&Path) -> Watcher,
    normal: fn(Vec<String>) -> Vec<String>,
) -> Option<Vec<Vec<String>>> {
    if !require(&[Need::Fuse, Need::Program(tool)]) {
        return None;
    }
    let native = tempfile::tempdir().unwrap();
    let w = watch(native.path());
    let expected = record(native.path(), &w, normal);
    drop(w);

    let share = Share::start();
    let w = watch(share.mnt());
    let got = record(share.src(), &w, normal);
    drop(w);
    compare(tool, &expected, &got);
    Some(got)
}

/// The differential test with inotifywait.
#[test]
fn inotifywait_sees_host_changes_as_on_a_local_disk() {
    let Some(got) = differential("inotifywait", Watcher::inotifywait, inotify_normal) else {
        return;
    };
    // The burst is really there: the directory's creation first, then the files made after
    // the host burst that created it, each created, written and closed; the files made within
    // that burst are collapsed into the directory's creation.
    let burst = &got[STEPS.len() - 2];
    assert_eq!(
        burst.first().map(String::as_str),
        Some("burst CREATE,ISDIR")
    );
    let creates = burst.iter().filter(|l| l.ends_with(" CREATE")).count();
    assert!(creates <= 1000, "{creates} creations of 1000 files");
}

/// Node's `fs.watch` (what webpack, vite and nodemon build on): `rename`/`change` per name.
fn node_normal(lines: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in lines {
        if out.last() != Some(&l) {
            out.push(l);
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn node_fs_watch_sees_host_changes_as_on_a_local_disk() {
    differential("node", Watcher::node, node_normal);
}

/// The guest's own changes are not echoed back as a second set of events.
#[test]
fn guest_changes_are_not_echoed() {
    if !require(&[Need::Fuse, Need::Program("inotifywait")]) {
        return;
    }
    // inotifywait -r watches a new directory only after it has seen it created, on a native
    // disk as on the mount: wait for that before using the directory.
    let run = |dir: &Path, w: &Watcher| {
        assert!(sh(dir, "echo 1 > f && echo 2 >> f && mkdir d").0);
        w.wait_watching(dir, "d");
        assert!(sh(dir, "mv f d/g && chmod 600 d/g && rm d/g && rmdir d").0);
    };
    let native = tempfile::tempdir().unwrap();
    let w = Watcher::inotifywait(native.path());
    run(native.path(), &w);
    let expected = inotify_normal(w.settle(Duration::from_millis(500)));
    drop(w);

    let share = Share::start();
    let w = Watcher::inotifywait(share.mnt());
    run(share.mnt(), &w);
    let got = inotify_normal(w.settle(Duration::from_millis(1500)));
    assert_eq!(
        got, expected,
        "a guest's own changes must produce their events once"
    );
}

/// What a reader of the tree sees: names, types, sizes, modes and contents.
fn view(root: &Path) -> BTreeMap<String, String> {
    snapshot(root)
        .into_iter()
        .map(|(k, v)| {
            // Link counts of directories differ between filesystems only by their subdirs,
            // which the names already show; times are set by the clock.
            let v = v
                .split(' ')
                .filter(|f| !f.starts_with("nlink=") || !v.starts_with("dir"))
                .collect::<Vec<_>>()
                .join(" ");
            (k, v)
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    Write(usize, Vec<u8>),
    Append(usize, Vec<u8>),
    Truncate(usize, u64),
    Rename(usize, usize),
    Unlink(usize),
    Mkdir(usize),
    Rmdir(usize),
    Chmod(usize, u32),
}

/// A small namespace so that operations collide: files and directories at two levels.
const NAMES: [&str; 6] = ["a", "b", "d1/c", "d1/e", "d1", "d2"];

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    let data = prop::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (name.clone(), data.clone()).prop_map(|(n, d)| Op::Write(n, d)),
        (name.clone(), data).prop_map(|(n, d)| Op::Append(n, d)),
        (name.clone(), 0u64..100).prop_map(|(n, s)| Op::Truncate(n, s)),
        (name.clone(), name.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        name.clone().prop_map(Op::Unlink),
        name.clone().prop_map(Op::Mkdir),
        name.clone().prop_map(Op::Rmdir),
        (name, prop::sample::select(vec![0o600u32, 0o644, 0o755]))
            .prop_map(|(n, m)| Op::Chmod(n, m)),
    ]
}

/// Applies `op` under `root`; true when it changed something.
fn apply(root: &Path, op: &Op) -> bool {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let p = |i: usize| root.join(NAMES[i]);
    let r = match op {
        Op::Write(n, d) => std::fs::write(p(*n), d),
        // An empty append changes nothing; its lone close is indistinguishable from an echo
        // of the guest's own last change to the file (README, "Host changes").
        Op::Append(_, d) if d.is_empty() => return false,
        Op::Append(n, d) => std::fs::OpenOptions::new()
            .append(true)
            .open(p(*n))
            .and_then(|mut f| f.write_all(d)),
        Op::Truncate(n, s) => std::fs::OpenOptions::new()
            .write(true)
            .open(p(*n))
            .and_then(|f| f.set_len(*s)),
        // Renaming a name to itself changes nothing and raises no event.
        Op::Rename(a, b) if a == b => return false,
        Op::Rename(a, b) => std::fs::rename(p(*a), p(*b)),
        Op::Unlink(n) => std::fs::remove_file(p(*n)),
        Op::Mkdir(n) => std::fs::create_dir(p(*n)),
        Op::Rmdir(n) => std::fs::remove_dir(p(*n)),
        Op::Chmod(n, m) => std::fs::set_permissions(p(*n), std::fs::Permissions::from_mode(*m)),
    };
    r.is_ok()
}

/// Interleaved host and guest operations on a `cached` mount: after a guest operation the
/// guest's view is the host's at once; after a host operation it is as soon as a watcher on
/// the mount has seen the event. Nothing is retried: a stale cache fails the test.
#[test]
fn cached_view_follows_interleaved_host_and_guest_changes() {
    if !require(&[Need::Fuse, Need::Program("inotifywait")]) {
        return;
    }
    let share = Share::start();
    let w = Watcher::inotifywait(share.mnt());
    let case = Mutex::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let ops = prop::collection::vec((any::<bool>(), op()), 1..24);
    let result = runner.run(&ops, |ops| {
        let mut n = case.lock().unwrap();
        *n += 1;
        let dir = PathBuf::from(format!("case{n}"));
        std::fs::create_dir(share.src().join(&dir)).unwrap();
        let host = share.src().join(&dir);
        let guest = share.mnt().join(&dir);
        // The watcher must watch the case directory before the case starts: wait for its
        // creation event, then for the watch inotifywait -r adds after it, then for quiet
        // (the lines of both are dropped).
        let created = format!("{}|CREATE,ISDIR", dir.display());
        let seen = w.wait_for(|l| l.contains(&created), Duration::from_secs(10));
        prop_assert!(seen, "case dir creation never reached the guest watcher");
        prop_assert!(guest.exists());
        w.wait_watching(share.mnt(), &dir.display().to_string());
        w.settle(Duration::from_millis(200));
        for (i, (on_host, op)) in ops.iter().enumerate() {
            let changed = apply(if *on_host { &host } else { &guest }, op);
            if *on_host && changed {
                let seen = w.wait_for(|l| !l.is_empty(), Duration::from_secs(5));
                prop_assert!(seen, "no event for host op {i} {op:?}");
                // One host operation can be several events (a created file, then its data):
                // let them all arrive, then the view must be current with no retry.
                w.settle(Duration::from_millis(300));
            }
            let (hv, gv) = (view(&host), view(&guest));
            if hv != gv {
                return Err(TestCaseError::fail(format!(
                    "after op {i} {op:?} on the {}:\n host:  {hv:?}\n guest: {gv:?}",
                    if *on_host { "host" } else { "guest" }
                )));
            }
            w.settle(Duration::from_millis(50));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A guest that only reads a file must not swallow a host change to it: closing a read-only
/// handle is no change of the guest's, so the host's rewrite made while the guest had the
/// file open still reaches the guest's cache (found by the scale work: the release of any
/// handle used to be recorded as the guest's own change).
#[test]
fn a_guest_reader_does_not_hide_host_writes() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let share = Share::start();
    let host = share.src().join("f");
    let guest = share.mnt().join("f");
    std::fs::write(&host, b"v0").unwrap();
    assert_eq!(std::fs::read(&guest).unwrap(), b"v0");
    for i in 1..=20 {
        let want = format!("v{i}");
        // Open for reading, let the host rewrite the file, close at once: the close reaches
        // the server before the watcher has looked at the host's write.
        let mut f = std::fs::File::open(&guest).unwrap();
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut buf).unwrap();
        std::fs::write(&host, want.as_bytes()).unwrap();
        drop(f);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let seen = std::fs::read(&guest).unwrap();
            if seen == want.as_bytes() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {i}: the guest still reads {:?} 3 s after the host wrote {want:?}",
                String::from_utf8_lossy(&seen)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(share.stop().success());
}
