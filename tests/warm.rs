//! Warm caches: in `cached` mode what the guest has seen (listings, missing names, pages,
//! attributes) is answered by the guest kernel without asking the host, until the host's change
//! event drops it; in `consistent` mode every look goes to the host. Each test counts the
//! requests the host served (its `dispatch` debug log) to show what was cached, then changes
//! the host and checks the guest sees the change: in `cached` mode within a few seconds (the
//! cache TTL is 60 s, so only the event can have dropped the cached copy), in `consistent`
//! mode at once.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{Mounted, Need, require, wait_until};

/// A share whose host logs every request it serves to a file.
struct Logged {
    // Declared first, so dropped first: the mount goes before its directories.
    _mount: Mounted,
    src: tempfile::TempDir,
    mnt: tempfile::TempDir,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Logged {
    fn start(extra: &[&str]) -> Logged {
        Self::start_with(extra, |_| {})
    }

    /// Shares a directory `setup` fills before the share starts: the host sends no events for
    /// it, so nothing the test caches afterwards is dropped by a late event of its own setup.
    fn start_with(extra: &[&str], setup: impl FnOnce(&Path)) -> Logged {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ferry.log");
        let file = File::create(&log).unwrap();
        let src = tempfile::tempdir().unwrap();
        let mnt = tempfile::tempdir().unwrap();
        setup(src.path());
        let mount = Mounted::start_configured(src.path(), mnt.path(), extra, |cmd| {
            cmd.env("RUST_LOG", "warn,ferry_host::export::dispatch=debug")
                .stderr(Stdio::from(file));
        });
        Logged {
            _mount: mount,
            src,
            mnt,
            log,
            _dir: dir,
        }
    }

    /// How many requests of kind `op` (the protocol opcode's name) the host has served.
    fn served(&self, op: &str) -> usize {
        let field = format!("op={op}");
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').any(|w| w == field))
            .count()
    }

    /// Requests of any of `ops` served so far.
    fn served_any(&self, ops: &[&str]) -> usize {
        ops.iter().map(|op| self.served(op)).sum()
    }

    /// Repeats `look` until one round asks the host nothing of `ops` (the host's own events
    /// for what the test set up have then arrived), then checks that three more rounds do not
    /// either: the guest answers them from its caches.
    fn assert_cached(&self, ops: &[&str], what: &str, mut look: impl FnMut()) {
        let settled = wait_until(EVENT, || {
            let before = self.served_any(ops);
            look();
            self.served_any(ops) == before
        });
        assert!(settled, "{what}: every look asked the host ({ops:?})");
        let before = self.served_any(ops);
        for _ in 0..3 {
            look();
        }
        assert_eq!(
            self.served_any(ops),
            before,
            "{what}: a warm look asked the host"
        );
    }

    fn mnt(&self) -> &Path {
        self.mnt.path()
    }

    fn src(&self) -> &Path {
        self.src.path()
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Long enough for an event on a loaded machine, far below the 60 s TTL.
const EVENT: Duration = Duration::from_secs(10);

#[test]
fn cached_listing_is_kept_until_the_host_changes_the_directory() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Logged::start_with(&[], |src| {
        std::fs::create_dir(src.join("d")).unwrap();
        for i in 0..50 {
            std::fs::write(src.join(format!("d/f{i:02}")), b"x").unwrap();
        }
    });
    let dir = s.mnt().join("d");
    assert_eq!(names(&dir).len(), 50);
    s.assert_cached(&["Readdir", "Readdirplus"], "listing", || {
        assert_eq!(names(&dir).len(), 50)
    });

    std::fs::write(s.src().join("d/new"), b"y").unwrap();
    assert!(
        wait_until(EVENT, || names(&dir).contains(&"new".to_string())),
        "a host create never reached the cached listing"
    );
    std::fs::remove_file(s.src().join("d/f00")).unwrap();
    assert!(
        wait_until(EVENT, || !names(&dir).contains(&"f00".to_string())),
        "a host unlink never reached the cached listing"
    );
    std::fs::rename(s.src().join("d/f01"), s.src().join("d/g01")).unwrap();
    assert!(
        wait_until(EVENT, || {
            let n = names(&dir);
            n.contains(&"g01".to_string()) && !n.contains(&"f01".to_string())
        }),
        "a host rename never reached the cached listing"
    );
    // The guest's own change is in its next listing at once.
    std::fs::write(dir.join("mine"), b"z").unwrap();
    assert!(names(&dir).contains(&"mine".to_string()));
    std::fs::remove_file(dir.join("mine")).unwrap();
    assert!(!names(&dir).contains(&"mine".to_string()));
}

#[test]
fn consistent_listing_asks_the_host_every_time() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Logged::start(&["--cache", "consistent"]);
    std::fs::create_dir(s.src().join("d")).unwrap();
    std::fs::write(s.src().join("d/a"), b"x").unwrap();
    let dir = s.mnt().join("d");
    assert_eq!(names(&dir), ["a"]);
    let listed = s.served("Readdir") + s.served("Readdirplus");
    std::fs::write(s.src().join("d/b"), b"y").unwrap();
    assert_eq!(
        names(&dir),
        ["a", "b"],
        "consistent mode showed a stale listing"
    );
    assert!(s.served("Readdir") + s.served("Readdirplus") > listed);
    std::fs::remove_file(s.src().join("d/a")).unwrap();
    assert_eq!(names(&dir), ["b"], "consistent mode showed a stale listing");
}

#[test]
fn a_probed_missing_name_is_cached_until_the_host_creates_it() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Logged::start_with(&[], |src| std::fs::create_dir(src.join("d")).unwrap());
    let probe = s.mnt().join("d/index.js");
    s.assert_cached(&["Lookup"], "missing name", || assert!(!probe.exists()));
    std::fs::write(s.src().join("d/index.js"), b"module").unwrap();
    assert!(
        wait_until(EVENT, || probe.exists()),
        "a host create of a probed name never reached the guest"
    );
    assert_eq!(std::fs::read(&probe).unwrap(), b"module");

    // Consistent mode: no negative entry, the create is seen at once.
    let c = Logged::start(&["--cache", "consistent"]);
    let probe = c.mnt().join("index.js");
    assert!(!probe.exists());
    std::fs::write(c.src().join("index.js"), b"module").unwrap();
    assert!(probe.exists(), "consistent mode kept a missing name");
}

/// Names probed for the first time in a directory the guest has listed are answered from that
/// listing; a name the host or the guest adds afterwards is found.
#[test]
fn first_probes_of_missing_names_are_answered_from_a_complete_listing() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Logged::start_with(&[], |src| {
        std::fs::create_dir(src.join("d")).unwrap();
        for i in 0..20 {
            std::fs::write(src.join(format!("d/f{i:02}")), b"x").unwrap();
        }
    });
    let dir = s.mnt().join("d");
    let mut n = 0;
    s.assert_cached(&["Lookup"], "first probes after a listing", || {
        assert_eq!(names(&dir).len(), 20);
        for _ in 0..5 {
            n += 1;
            assert!(!dir.join(format!("probe{n}.js")).exists());
        }
    });
    // Names never probed before, added on the host (one at a time, each after a listing).
    for i in 0..3 {
        let name = format!("host{i}.js");
        assert_eq!(names(&dir).len(), 20 + i);
        std::fs::write(s.src().join("d").join(&name), b"h").unwrap();
        assert!(
            wait_until(EVENT, || dir.join(&name).exists()),
            "a host create of {name} never reached a guest that had listed the directory"
        );
    }
    // And by the guest itself: seen at once.
    assert_eq!(names(&dir).len(), 23);
    std::fs::write(dir.join("mine.js"), b"g").unwrap();
    assert!(dir.join("mine.js").exists());
    std::fs::remove_file(dir.join("mine.js")).unwrap();
    assert!(!dir.join("mine.js").exists());
    std::fs::rename(dir.join("f00"), dir.join("renamed.js")).unwrap();
    assert!(dir.join("renamed.js").exists());
    assert!(!dir.join("f00").exists());
}

/// Names probed in a directory the guest never listed: after the host has said twice that a
/// name is missing, the agent reads the directory's listing itself, and the next first probes
/// ask the host nothing; a name the host adds later is found.
#[test]
fn probes_of_missing_names_in_an_unlisted_directory_soon_ask_the_host_nothing() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Logged::start_with(&[], |src| {
        std::fs::create_dir(src.join("d")).unwrap();
        for i in 0..20 {
            std::fs::write(src.join(format!("d/f{i:02}")), b"x").unwrap();
        }
    });
    let dir = s.mnt().join("d");
    assert!(dir.join("f00").exists());
    let mut n = 0;
    s.assert_cached(&["Lookup"], "first probes in an unlisted directory", || {
        for _ in 0..5 {
            n += 1;
            assert!(!dir.join(format!("probe{n}.js")).exists());
        }
    });
    assert!(dir.join("f19").exists(), "a name the listing holds");
    std::fs::write(s.src().join("d/late.js"), b"h").unwrap();
    assert!(
        wait_until(EVENT, || dir.join("late.js").exists()),
        "a host create never reached a directory the agent listed by itself"
    );
}

#[test]
fn pages_and_attributes_are_kept_across_opens_until_the_host_changes_them() {
    if !require(&[Need::Fuse]) {
        return;
    }
    // Larger than what an open carries inline, so that a cold read needs READs.
    let v1 = vec![1u8; 512 * 1024];
    let s = Logged::start_with(&[], |src| std::fs::write(src.join("f"), &v1).unwrap());
    let f = s.mnt().join("f");
    assert_eq!(std::fs::read(&f).unwrap(), v1);
    assert!(s.served("Read") > 0);
    s.assert_cached(&["Read"], "pages", || {
        assert_eq!(std::fs::read(&f).unwrap(), v1)
    });
    s.assert_cached(&["Getattr", "Lookup"], "attributes", || {
        assert_eq!(std::fs::metadata(&f).unwrap().len(), v1.len() as u64)
    });

    // Same size, new bytes: only the event can tell the guest.
    let v2 = vec![2u8; 512 * 1024];
    std::fs::write(s.src().join("f"), &v2).unwrap();
    assert!(
        wait_until(EVENT, || std::fs::read(&f).unwrap() == v2),
        "a host rewrite never reached the cached pages"
    );
    std::fs::set_permissions(s.src().join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        wait_until(EVENT, || {
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777 == 0o600
        }),
        "a host chmod never reached the cached attributes"
    );

    let c = Logged::start(&["--cache", "consistent"]);
    std::fs::write(c.src().join("f"), &v1).unwrap();
    let f = c.mnt().join("f");
    assert_eq!(std::fs::read(&f).unwrap(), v1);
    std::fs::write(c.src().join("f"), &v2).unwrap();
    assert_eq!(
        std::fs::read(&f).unwrap(),
        v2,
        "consistent mode read stale pages"
    );
    std::fs::set_permissions(c.src().join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600,
        "consistent mode kept stale attributes"
    );
}

/// Sequential reads reach the host as 1 MiB requests: the mount's readahead window is 1 MiB,
/// not the kernel's 128 KiB default for FUSE.
#[test]
fn the_mount_reads_ahead_a_mebibyte() {
    if !require(&[Need::Fuse]) {
        return;
    }
    let s = Logged::start(&[]);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = s.mnt().to_string_lossy().into_owned();
    let dev = info
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&want.as_str())).then(|| f[2].to_string())
        })
        .expect("the mount is in mountinfo");
    let kb = std::fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb")).unwrap();
    assert_eq!(kb.trim(), "1024");
}

/// A read-only open of a file whose pages the guest holds asks the host nothing; a request
/// that needs a host file (a read the cache misses, a lock) opens it then, with the same result
/// as an open made at once.
#[test]
fn read_only_opens_ask_the_host_only_when_a_request_needs_it() {
    if !require(&[Need::Fuse]) {
        return;
    }
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let data: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
    let s = Logged::start_with(&[], |src| std::fs::write(src.join("f"), &data).unwrap());
    let f = s.mnt().join("f");
    s.assert_cached(&["Open", "Read"], "open-read-close", || {
        assert_eq!(std::fs::read(&f).unwrap(), data)
    });

    // A first read away from offset 0, on a file the guest never read.
    std::fs::write(s.src().join("g"), &data).unwrap();
    let g = s.mnt().join("g");
    assert!(wait_until(EVENT, || g.exists()));
    let file = File::open(&g).unwrap();
    let mut buf = vec![0u8; 1000];
    file.read_exact_at(&mut buf, 300_000).unwrap();
    assert_eq!(buf, data[300_000..301_000]);
    let mut all = Vec::new();
    (&file).read_to_end(&mut all).unwrap();
    assert_eq!(all, data);
    drop(file);

    // A lock on a read-only handle is a host lock, released by the close.
    let guest = File::open(&f).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(guest.as_raw_fd(), libc::LOCK_SH) }, 0);
    let host = File::open(s.src().join("f")).unwrap();
    let try_host = || {
        // SAFETY: flock on a descriptor this test owns.
        unsafe { libc::flock(host.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    };
    assert!(!try_host(), "the guest's flock is not held on the host");
    drop(guest);
    assert!(
        wait_until(EVENT, try_host),
        "the guest's flock outlived its close"
    );

    // Consistent mode opens on the host every time.
    let c = Logged::start(&["--cache", "consistent"]);
    std::fs::write(c.src().join("f"), b"abc").unwrap();
    let before = c.served("Open");
    for _ in 0..3 {
        assert_eq!(std::fs::read(c.mnt().join("f")).unwrap(), b"abc");
    }
    assert_eq!(c.served("Open"), before + 3);
}
