//! Symlinks never lead either end out of what it serves: the host watcher adds no inotify
//! watch outside the export and reports no change there, whatever symlinks a guest or the host
//! puts in it (a symlink to `/`, to `/usr`, pnpm's symlinked `node_modules`); the agent's replay
//! acts on nothing outside the mount when the host swaps a directory the guest knows for a
//! symlink pointing out of it.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::harness::{Need, Share, require, wait_until};

/// The kernel's encoding of a device number, as `/proc/PID/fdinfo` prints `sdev:`.
fn kernel_dev(dev: u64) -> u64 {
    (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev))
}

/// `(inode, kernel device)` of every inotify watch process `pid` holds.
fn inotify_watches(pid: u32) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines().filter(|l| l.starts_with("inotify wd:")) {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .and_then(|v| u64::from_str_radix(v, 16).ok())
            };
            if let (Some(ino), Some(sdev)) = (field("ino:"), field("sdev:")) {
                out.push((ino, sdev));
            }
        }
    }
    out
}

/// `(inode, kernel device)` of `root` and every directory beneath it, no symlink followed.
fn tree_dirs(root: &Path) -> HashSet<(u64, u64)> {
    let mut out = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        if !m.is_dir() {
            continue;
        }
        out.insert((m.ino(), kernel_dev(m.dev())));
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    out
}

/// `inotifywait -m -r` on the mount, as a guest program would run it: `path|EVENTS` lines.
struct GuestWatcher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl GuestWatcher {
    fn start(dir: &Path) -> GuestWatcher {
        let mut child = Command::new("inotifywait")
            .args(["-m", "-r", "--format", "%w%f|%e"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("inotifywait starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&lines);
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("Watches established.") {
                break;
            }
            line.clear();
        }
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        GuestWatcher { child, lines }
    }

    fn saw(&self, suffix: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.split('|').next().is_some_and(|p| p.ends_with(suffix)))
    }

    /// A host creation of `name` at the export's top, seen by the guest: everything the host
    /// did before it has been replayed by then (changes reach the guest in order).
    fn barrier(&self, src: &Path, name: &str) {
        std::fs::write(src.join(name), b"").unwrap();
        let suffix = format!("/{name}");
        assert!(
            wait_until(Duration::from_secs(30), || self.saw(&suffix)),
            "the guest never saw the host create {name}: {:?}",
            self.lines.lock().unwrap()
        );
    }
}

impl Drop for GuestWatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A modification time no replay would leave behind.
const OLD: Duration = Duration::from_secs(1_000_000);

/// Writes `path` and sets its modification time to [`OLD`], so that any touch shows.
fn old_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    set_old(path);
}

fn set_old(path: &Path) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + OLD)
        .unwrap();
}

fn is_old(path: &Path) -> bool {
    std::fs::metadata(path).unwrap().modified().unwrap() == SystemTime::UNIX_EPOCH + OLD
}

/// A directory outside the export and the mount, with a file whose times show any touch.
fn outside_with_file() -> (tempfile::TempDir, PathBuf) {
    let out = tempfile::tempdir().unwrap();
    let f = out.path().join("victim");
    old_file(&f, b"outside");
    (out, f)
}

#[test]
fn the_host_watcher_never_follows_a_symlink_out_of_the_export() {
    if !require(&[Need::Fuse, Need::Program("inotifywait")]) {
        return;
    }
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("share.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let share = Share::start_configured(&[], |cmd| {
        cmd.env("RUST_LOG", "info,ferry_host::export::watch=debug")
            .stderr(log_file);
    });
    let (mnt, src) = (share.mnt(), share.src());
    let (out, outside_file) = outside_with_file();
    let guest = GuestWatcher::start(mnt);
    guest.barrier(src, "ready");
    let pid = share.pid();
    let before = inotify_watches(pid);
    assert!(!before.is_empty(), "the server watches the export");

    // The guest makes a directory, puts symlinks out of the export in it, renames it.
    std::fs::create_dir(mnt.join("d")).unwrap();
    symlink("/", mnt.join("d/root")).unwrap();
    symlink("/usr", mnt.join("d/usr")).unwrap();
    symlink(out.path(), mnt.join("d/out")).unwrap();
    std::fs::rename(mnt.join("d"), mnt.join("e")).unwrap();
    // The same from the host side, made elsewhere in the export and moved in.
    std::fs::create_dir(src.join("h")).unwrap();
    symlink("/", src.join("h/root")).unwrap();
    symlink(out.path(), src.join("h/out")).unwrap();
    std::fs::rename(src.join("h"), src.join("h2")).unwrap();
    // pnpm's layout: packages in .pnpm, symlinked from node_modules, some from a store
    // outside the project.
    let pkg = mnt.join("app/node_modules/.pnpm/left-pad@1.3.0/node_modules/left-pad");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("index.js"), b"module.exports = 1;\n").unwrap();
    symlink(
        ".pnpm/left-pad@1.3.0/node_modules/left-pad",
        mnt.join("app/node_modules/left-pad"),
    )
    .unwrap();
    symlink(out.path(), mnt.join("app/node_modules/.pnpm/store")).unwrap();
    symlink("/usr/lib", mnt.join("app/node_modules/.pnpm/node_modules")).unwrap();

    // Every directory of the export gets watched...
    let watched_all = wait_until(Duration::from_secs(60), || {
        let w: HashSet<_> = inotify_watches(pid).into_iter().collect();
        tree_dirs(src).is_subset(&w)
    });
    assert!(
        watched_all,
        "the server watches every new directory: export {:?}, watches {:?}",
        tree_dirs(src),
        inotify_watches(pid)
    );
    // ...and a host change outside, reachable only through those symlinks, is reported to
    // nobody: the guest replays changes in order, so once it sees the barrier it would have
    // seen (and replayed, touching the outside file) an earlier change.
    old_file(&outside_file, b"changed outside");
    guest.barrier(src, "barrier");

    let tree = tree_dirs(src);
    let watches = inotify_watches(pid);
    let outside: Vec<_> = watches.iter().filter(|w| !tree.contains(w)).collect();
    assert!(
        outside.is_empty(),
        "{} of {} inotify watches are outside the export (before: {}; the export holds {} \
         directories), e.g. {:?}",
        outside.len(),
        watches.len(),
        before.len(),
        tree.len(),
        &outside[..outside.len().min(5)]
    );
    assert!(
        is_old(&outside_file),
        "the replay touched a file outside the export"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let reported: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("host change"))
        .filter(|l| {
            [
                "e/out/",
                "e/usr/",
                "e/root/",
                "h2/root/",
                "h2/out/",
                ".pnpm/store/",
            ]
            .iter()
            .any(|p| l.contains(p))
        })
        .collect();
    assert!(
        reported.is_empty(),
        "changes outside the export were reported: {reported:?}"
    );
    assert!(
        text.contains("host change"),
        "the log holds the watcher's debug lines"
    );
}

#[test]
fn the_replay_never_follows_a_directory_swapped_for_a_symlink() {
    if !require(&[Need::Fuse, Need::Program("inotifywait")]) {
        return;
    }
    // Nothing cached: the replay's path walk asks the host for each name, as a guest whose
    // cache expired would.
    let share = Share::start_with(&["--cache", "consistent"]);
    let (mnt, src) = (share.mnt(), share.src());
    let (out, outside_file) = outside_with_file();
    old_file(&out.path().join("keep"), b"outside");
    let guest = GuestWatcher::start(mnt);

    // A directory the guest knows, with a file of the same name as one outside.
    std::fs::create_dir(src.join("d")).unwrap();
    std::fs::write(src.join("d/victim"), b"inside").unwrap();
    guest.barrier(src, "ready");
    assert_eq!(std::fs::read(mnt.join("d/victim")).unwrap(), b"inside");

    // The host changes files under `d` and, in the same breath, swaps `d` for a symlink to
    // the directory outside: the guest replays the changes once `d` is the symlink.
    std::fs::remove_file(src.join("d/victim")).unwrap();
    std::fs::write(src.join("d/new"), b"").unwrap();
    std::fs::write(src.join("d/keep"), b"host").unwrap();
    std::fs::rename(src.join("d"), src.join("d-real")).unwrap();
    symlink(out.path(), src.join("d")).unwrap();
    guest.barrier(src, "barrier");

    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["keep", "victim"],
        "the replay created or removed files outside the mount"
    );
    assert_eq!(std::fs::read(&outside_file).unwrap(), b"outside");
    assert_eq!(std::fs::read(out.path().join("keep")).unwrap(), b"outside");
    assert!(
        is_old(&outside_file) && is_old(&out.path().join("keep")),
        "the replay touched a file outside the mount"
    );
    // The guest's view is the host's.
    assert_eq!(
        std::fs::read_link(mnt.join("d")).unwrap().as_path(),
        out.path()
    );
    assert!(mnt.join("d-real/new").exists());
}
