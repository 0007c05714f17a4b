//! The `events` rows: how long after a change on the host side of a target an inotify watcher
//! on the target hears of it. On a native directory both sides are the same directory (the
//! kernel's own latency); on a share the change is made in the exported directory and the
//! watcher sits on the mount.
//!
//! Each round makes `count` files, appends to each and deletes each, one at a time, timing
//! every change from just before the host call until the watcher reads the matching event
//! (IN_CREATE, IN_MODIFY, IN_DELETE with that name); a round's sample for each row is the
//! median of its `count` latencies.

use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// How long one change may take to be heard before the round fails.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An inotify watcher on one directory.
struct Watcher {
    ino: Inotify,
}

impl Watcher {
    fn new(dir: &Path) -> Result<Watcher> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .context("inotify_init")?;
        ino.add_watch(
            dir,
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DELETE,
        )
        .with_context(|| format!("inotify_add_watch {}", dir.display()))?;
        Ok(Watcher { ino })
    }

    /// Waits for a `kind` event on `name`; returns when it was read, or `None` after
    /// `timeout`. Other events are passed over; an overflow fails.
    fn wait(&self, name: &str, kind: AddWatchFlags, timeout: Duration) -> Result<Option<Instant>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ino.read_events() {
                Ok(events) => {
                    let now = Instant::now();
                    if events
                        .iter()
                        .any(|e| e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW))
                    {
                        bail!("the watcher's inotify queue overflowed");
                    }
                    if events.iter().any(|e| {
                        e.mask.contains(kind) && e.name.as_deref() == Some(OsStr::new(name))
                    }) {
                        return Ok(Some(now));
                    }
                    continue;
                }
                Err(Errno::EAGAIN) => {}
                Err(e) => return Err(e).context("reading inotify events"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.ino.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll on inotify"),
            }
        }
    }

    /// Reads whatever is queued (events of earlier steps, e.g. a create's close).
    fn drain(&self) {
        while self.ino.read_events().is_ok_and(|v| !v.is_empty()) {}
    }
}

/// How long a first change may go unheard before the target counts as one that delivers no
/// events (bindfs, for one).
const FIRST: Duration = Duration::from_secs(5);

/// The rows' samples for one round: medians of create, modify (append) and delete latency;
/// `None` when the watcher hears nothing of the host side at all. `watched` is the round's
/// directory on the target, `host` the same directory on the host side; both exist and are
/// empty. Once one change has been heard, a change not heard within 10 s fails the round.
pub fn round(watched: &Path, host: &Path, count: usize) -> Result<Option<[Duration; 3]>> {
    let w = Watcher::new(watched)?;
    // A share may start forwarding changes only once a watcher asks: poke the host side until
    // the watcher hears it, then measure.
    let probe = host.join("ready");
    let start = Instant::now();
    loop {
        fs::write(&probe, b"x").with_context(|| format!("write {}", probe.display()))?;
        if w.wait(
            "ready",
            AddWatchFlags::IN_MODIFY,
            Duration::from_millis(200),
        )?
        .is_some()
        {
            break;
        }
        if start.elapsed() > FIRST {
            eprintln!(
                "ferry bench: a watcher on {} heard nothing of writes to {} in {} s: no events",
                watched.display(),
                host.display(),
                FIRST.as_secs()
            );
            fs::remove_file(&probe).with_context(|| format!("unlink {}", probe.display()))?;
            return Ok(None);
        }
    }
    fs::remove_file(&probe).with_context(|| format!("unlink {}", probe.display()))?;
    std::thread::sleep(Duration::from_millis(20));
    w.drain();

    let mut lat: [Vec<Duration>; 3] = Default::default();
    for i in 0..count {
        let name = format!("e{i:04}");
        let path = host.join(&name);
        let steps: [(AddWatchFlags, &dyn Fn() -> std::io::Result<()>); 3] = [
            (AddWatchFlags::IN_CREATE, &|| {
                fs::File::create(&path).map(drop)
            }),
            (AddWatchFlags::IN_MODIFY, &|| {
                fs::OpenOptions::new()
                    .append(true)
                    .open(&path)?
                    .write_all(b"x")
            }),
            (AddWatchFlags::IN_DELETE, &|| fs::remove_file(&path)),
        ];
        for (k, (kind, change)) in steps.iter().enumerate() {
            let t0 = Instant::now();
            change().with_context(|| format!("{kind:?} {}", path.display()))?;
            let Some(heard) = w.wait(&name, *kind, TIMEOUT)? else {
                bail!(
                    "no {kind:?} for {name} on {} within {} s of the change in {}",
                    watched.display(),
                    TIMEOUT.as_secs(),
                    host.display()
                );
            };
            lat[k].push(heard - t0);
            // Let the change's other events (a create's close, ...) arrive, then drop them.
            std::thread::sleep(Duration::from_millis(2));
            w.drain();
        }
    }
    Ok(Some(lat.map(|mut v| {
        v.sort();
        v[v.len() / 2]
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_events_are_heard() {
        let d = tempfile::tempdir().unwrap();
        let [c, m, u] = round(d.path(), d.path(), 3).unwrap().expect("events heard");
        for l in [c, m, u] {
            assert!(l > Duration::ZERO && l < TIMEOUT, "{l:?}");
        }
        assert!(std::fs::read_dir(d.path()).unwrap().next().is_none());
    }

    #[test]
    fn a_watcher_that_hears_nothing_gives_no_sample() {
        let watched = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        assert!(round(watched.path(), host.path(), 2).unwrap().is_none());
        assert!(std::fs::read_dir(host.path()).unwrap().next().is_none());
    }

    #[test]
    fn a_watcher_elsewhere_hears_nothing_and_says_so() {
        let watched = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let w = Watcher::new(watched.path()).unwrap();
        fs::write(host.path().join("x"), b"x").unwrap();
        let heard = w
            .wait("x", AddWatchFlags::IN_CREATE, Duration::from_millis(300))
            .unwrap();
        assert!(heard.is_none());
    }
}
