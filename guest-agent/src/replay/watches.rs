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
use std::time::{Duration, Instant};

/// How long the list of inotify instances is trusted before `/proc` is walked again.
const RESCAN: Duration = Duration::from_millis(500);

/// The inotify instances of the guest, found by walking `/proc`.
#[derive(Debug, Default)]
pub(crate) struct Watches {
    /// `/proc/PID/fdinfo/FD` of each inotify instance.
    instances: Vec<PathBuf>,
    scanned: Option<Instant>,
}

/// The kernel's encoding of a device number (`sb->s_dev`), as fdinfo prints it.
pub(crate) fn kernel_dev(st_dev: u64) -> u64 {
    (u64::from(libc::major(st_dev)) << 20) | u64::from(libc::minor(st_dev))
}

impl Watches {
    /// Whether some inotify watch in the guest is on inode `ino` of filesystem `kdev` (see
    /// [`kernel_dev`]). `fresh`: walk `/proc` for new instances first if the list is older
    /// than [`RESCAN`].
    pub(crate) fn watched(&mut self, kdev: u64, ino: u64, fresh: bool) -> bool {
        if fresh && self.scanned.is_none_or(|t| t.elapsed() >= RESCAN) {
            self.rescan();
        }
        self.instances
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .any(|info| watches_in(&info).contains(&(kdev, ino)))
    }

    /// Waits until a watch on `(kdev, ino)` appears, polling, for at most `bound`; whether it
    /// did.
    pub(crate) fn wait_watched(&mut self, kdev: u64, ino: u64, bound: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.watched(kdev, ino, false) {
                return true;
            }
            if start.elapsed() >= bound {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn rescan(&mut self) {
        self.instances.clear();
        self.scanned = Some(Instant::now());
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
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
                    self.instances
                        .push(p.path().join("fdinfo").join(fd.file_name()));
                }
            }
        }
    }
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
