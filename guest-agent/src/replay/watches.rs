//! Which directories of the mount inotify watches in this guest, read from `/proc`.
//!
//! A recursive watcher (inotifywait -r, chokidar, watchman, fsnotify users) learns of a new
//! directory from its IN_CREATE and only then watches it; on a local disk the program filling
//! the directory gives it that moment. The replay gives it the same moment, but measured
//! instead of guessed: after replaying the creation of a directory whose parent somebody
//! watches, it waits until a watch on the new directory appears (or a bound passes: the
//! watcher may not be recursive), and does not wait at all when nobody watches the parent.
//!
//! Each inotify instance of the guest is a descriptor whose link reads `anon_inode:inotify`;
//! its `/proc/PID/fdinfo/FD` lists one line per watch, `inotify wd:N ino:HEX sdev:HEX ...`,
//! with the watched inode's number (on a FUSE mount, the node id) and the kernel's device
//! number of its filesystem (`MAJOR << 20 | MINOR`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the list of inotify instances is trusted before `/proc` is walked again.
const RESCAN: Duration = Duration::from_millis(500);

/// The inotify instances of the guest, found by walking `/proc` on a thread of its own: on a
/// busy guest the walk (a `readlink` per open descriptor of every process) takes long enough
/// to hold up the replay, so the replay thread asks for a fresh list ahead of need (whenever
/// it replays the creation of a directory) and works with the latest list it has.
#[derive(Debug, Default)]
pub(crate) struct Watches {
    list: Arc<Mutex<List>>,
    /// The instances found watching a directory of the mount last time.
    recent: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct List {
    /// `/proc/PID/fdinfo/FD` of each inotify instance.
    instances: Vec<PathBuf>,
    scanned: Option<Instant>,
    scanning: bool,
}

/// The kernel's encoding of a device number (`sb->s_dev`), as fdinfo prints it.
pub(crate) fn kernel_dev(st_dev: u64) -> u64 {
    (u64::from(libc::major(st_dev)) << 20) | u64::from(libc::minor(st_dev))
}

/// Whether the inotify instance `p` has a watch on `(kdev, ino)`.
fn has(p: &PathBuf, kdev: u64, ino: u64) -> bool {
    std::fs::read(p)
        .ok()
        .is_some_and(|info| watches_in(&info).contains(&(kdev, ino)))
}

impl Watches {
    /// Starts walking `/proc` for the inotify instances on a thread of its own, unless the
    /// list is younger than [`RESCAN`] or a walk is under way.
    pub(crate) fn refresh(&self) {
        {
            let mut l = self.list.lock().unwrap_or_else(|e| e.into_inner());
            if l.scanning || l.scanned.is_some_and(|t| t.elapsed() < RESCAN) {
                return;
            }
            l.scanning = true;
        }
        let list = Arc::clone(&self.list);
        let walk = move || {
            let found = scan();
            let mut l = list.lock().unwrap_or_else(|e| e.into_inner());
            l.instances = found;
            l.scanned = Some(Instant::now());
            l.scanning = false;
        };
        if std::thread::Builder::new()
            .name("ferry-watches".into())
            .spawn(walk)
            .is_err()
        {
            self.list.lock().unwrap_or_else(|e| e.into_inner()).scanning = false;
        }
    }

    /// The inotify instances (their fdinfo paths) with a watch on inode `ino` of filesystem
    /// `kdev` (see [`kernel_dev`]): those that watched a directory of the mount last time
    /// first, then every instance of the latest list (a fresh one is asked for when none
    /// does). Never waits for a walk of `/proc`.
    pub(crate) fn watching(&mut self, kdev: u64, ino: u64) -> Vec<PathBuf> {
        let found: Vec<PathBuf> = self
            .recent
            .iter()
            .filter(|p| has(p, kdev, ino))
            .cloned()
            .collect();
        if !found.is_empty() {
            return found;
        }
        let instances = self
            .list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .instances
            .clone();
        let found: Vec<PathBuf> = instances
            .into_iter()
            .filter(|p| has(p, kdev, ino))
            .collect();
        if found.is_empty() {
            self.refresh();
        } else {
            self.recent = found.clone();
        }
        found
    }

    /// Waits until one of `instances` watches `(kdev, ino)`, polling, for at most `bound`;
    /// whether one did. (A recursive watcher adds its watch on a new directory from the
    /// instance that watches its parent.)
    pub(crate) fn wait_watched(
        instances: &[PathBuf],
        kdev: u64,
        ino: u64,
        bound: Duration,
    ) -> bool {
        let start = Instant::now();
        loop {
            if instances.iter().any(|p| has(p, kdev, ino)) {
                return true;
            }
            if start.elapsed() >= bound {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The fdinfo paths of every inotify instance of the guest but this process's.
fn scan() -> Vec<PathBuf> {
    let mut instances = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return instances;
    };
    let me = std::process::id().to_string();
    for p in procs.flatten() {
        let pid = p.file_name();
        let Some(pid) = pid.to_str() else { continue };
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let is_inotify = std::fs::read_link(fd.path())
                .is_ok_and(|l| l.as_os_str().as_encoded_bytes() == b"anon_inode:inotify");
            if is_inotify {
                instances.push(p.path().join("fdinfo").join(fd.file_name()));
            }
        }
    }
    instances
}

/// The `(sdev, ino)` of every watch listed in one inotify instance's fdinfo.
fn watches_in(info: &[u8]) -> HashSet<(u64, u64)> {
    let hex = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v, 16).ok())
    };
    String::from_utf8_lossy(info)
        .lines()
        .filter(|l| l.starts_with("inotify wd:"))
        .filter_map(|l| Some((hex(l, "sdev:")?, hex(l, "ino:")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lines() {
        let info = b"pos:\t0\nflags:\t00\nmnt_id:\t15\nino:\t1057\n\
            inotify wd:2 ino:1a sdev:2d mask:fce ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:1a00\n\
            inotify wd:1 ino:1 sdev:2d mask:fce ignored_mask:0\n";
        let w = watches_in(info);
        assert_eq!(w, HashSet::from([(0x2d, 0x1a), (0x2d, 1)]));
    }

    /// A real inotify watch of this process's is found (from another thread's point of view,
    /// the scan skips this process: so look at it directly).
    #[test]
    fn a_real_watch_is_listed() {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        use std::os::fd::{AsFd, AsRawFd};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let ino = Inotify::init(InitFlags::IN_CLOEXEC).unwrap();
        ino.add_watch(dir.path(), AddWatchFlags::IN_CREATE).unwrap();
        let md = std::fs::metadata(dir.path()).unwrap();
        let info = std::fs::read(format!("/proc/self/fdinfo/{}", ino.as_fd().as_raw_fd())).unwrap();
        assert!(watches_in(&info).contains(&(kernel_dev(md.dev()), md.ino())));
    }
}
