//! Mounting one export with FUSE, and unmounting it.
//!
//! [`mount`] mounts synchronously (the FUSE `INIT` handshake happens before it returns) and runs
//! the fuser session on a thread named `ferry-fuse-<export>`. [`MountHandle::unmount`] detaches
//! the mount lazily ([`crate::preflight::detach`]: `umount2(MNT_DETACH)` as root,
//! `fusermount3 -u -z` for an ordinary user); fuser's own unmount fails with EBUSY while files are
//! open and its `AutoUnmount` hangs, so neither is used. The kernel ends the session once the
//! last open file under the detached mount is closed.
//!
//! `mountinfo` reads what is mounted where in the guest.

pub(crate) mod mountinfo;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Session, SessionACL};
use tracing::{debug, error, info, warn};

use std::os::fd::AsFd;

use crate::client::Client;
use crate::fs::FerryFs;
use crate::kernel::KernelNotifier;
use crate::preflight::{self, PreflightError};
use crate::replay::{ReplayState, Replayer};

/// How long [`MountHandle::unmount`] waits for the session to end after the detach.
pub const UNMOUNT_WAIT: Duration = Duration::from_secs(2);

/// What to mount and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Export name, as announced by the server.
    pub export: String,
    /// Where to mount it.
    pub mountpoint: PathBuf,
    /// Mount read-only (also done when the server marks the export read-only).
    pub read_only: bool,
    /// Entry and attribute cache timeout given to the kernel.
    pub ttl: Duration,
    /// FUSE worker threads (each with its own cloned `/dev/fuse` fd).
    pub threads: usize,
    /// Let users other than the mounting one use the mount (`allow_other`): root's services
    /// and container runtimes need it. An ordinary user may ask for it only where
    /// `/etc/fuse.conf` says `user_allow_other`.
    pub allow_other: bool,
    /// Mount over a directory that is not empty (its files are hidden while mounted).
    pub nonempty: bool,
    /// How the guest kernel caches (see [`CacheMode`]).
    pub cache: CacheMode,
    /// Who checks permissions; `None` follows the server's choice for the export
    /// ([`ferry_protocol::ExportInfo::permissions`]). `Guest` mounts with
    /// `default_permissions`.
    pub permissions: Option<ferry_protocol::Permissions>,
}

/// How the guest kernel caches an export (osxfs's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Names, attributes and pages are cached for [`MountOptions::ttl`] and across opens, and
    /// kept coherent by host change events (which also raise inotify events in the guest).
    /// Without change events from the server the TTL is capped at 1 s.
    #[default]
    Cached,
    /// Nothing is cached: every stat, lookup and open asks the host. Host changes still raise
    /// inotify events in the guest.
    Consistent,
}

impl std::str::FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cached" => Ok(Self::Cached),
            "consistent" => Ok(Self::Consistent),
            _ => Err(format!(
                "unknown cache mode {s:?}: expected cached or consistent"
            )),
        }
    }
}

impl MountOptions {
    /// Default TTL in `cached` mode: host change events keep the caches coherent, the TTL only
    /// bounds staleness should events ever be lost without an overflow notice.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
    /// TTL in `cached` mode when the server sends no change events.
    pub const FALLBACK_TTL: Duration = Duration::from_secs(1);
    /// Default number of FUSE threads.
    pub const DEFAULT_THREADS: usize = 4;

    /// Options with defaults: read-write, `cached` with a [`Self::DEFAULT_TTL`] TTL, 4 threads,
    /// `allow_other` where this user may ask for it, an empty mount point, permissions as the
    /// server chose for the export.
    pub fn new(export: impl Into<String>, mountpoint: impl Into<PathBuf>) -> Self {
        Self {
            export: export.into(),
            mountpoint: mountpoint.into(),
            read_only: false,
            ttl: Self::DEFAULT_TTL,
            threads: Self::DEFAULT_THREADS,
            allow_other: preflight::allow_other_permitted(),
            nonempty: false,
            cache: CacheMode::Cached,
            permissions: None,
        }
    }
}

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The server does not export this name.
    #[error("the server has no export named {name:?}; available exports: {available}")]
    UnknownExport {
        /// The requested name.
        name: String,
        /// The server's exports, comma-separated (or "none").
        available: String,
    },
    /// The connection to the server is already closed.
    #[error("the connection to the server is closed")]
    Disconnected,
    /// Mounting failed.
    #[error("cannot mount export {export:?} on {}", .mountpoint.display())]
    Mount {
        /// The export.
        export: String,
        /// The mountpoint.
        mountpoint: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The session thread could not be started.
    #[error("cannot start the FUSE session thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// Something a mount needs is missing or in the way (said with what to do about it).
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// `allow_other` was asked for by an ordinary user whom `/etc/fuse.conf` does not allow.
    #[error(
        "--allow-other: an ordinary user may only ask for it when /etc/fuse.conf has a line \
         `user_allow_other` (add it as root), or run without --allow-other"
    )]
    AllowOtherRefused,
}

#[derive(Default)]
struct Finished {
    done: Mutex<bool>,
    cv: Condvar,
}

/// A mounted export. Dropping it detaches the mount without waiting (see
/// [`MountHandle::unmount`]).
#[derive(Debug)]
pub struct MountHandle {
    export: String,
    mountpoint: PathBuf,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    finished: Arc<Finished>,
    unmounted: bool,
    replay: Arc<ReplayState>,
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished").finish_non_exhaustive()
    }
}

/// Mounts export `opts.export` of `client` on `opts.mountpoint`.
pub fn mount(client: Arc<Client>, opts: &MountOptions) -> Result<MountHandle, MountError> {
    if client.is_closed() {
        return Err(MountError::Disconnected);
    }
    let exports = &client.welcome().exports;
    let Some(info) = exports.iter().find(|e| e.name == opts.export).cloned() else {
        let available = if exports.is_empty() {
            "none".to_string()
        } else {
            exports
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(MountError::UnknownExport {
            name: opts.export.clone(),
            available,
        });
    };
    preflight::fuse_access()?;
    if opts.allow_other && !preflight::allow_other_permitted() {
        return Err(MountError::AllowOtherRefused);
    }
    preflight::prepare_mountpoint(&opts.mountpoint, opts.nonempty)?;
    let read_only = opts.read_only || info.read_only;
    let permissions = opts.permissions.unwrap_or(info.permissions);
    let mut mount_options = vec![
        MountOption::FSName(format!("ferry:{}", opts.export)),
        MountOption::Subtype("ferry".into()),
    ];
    if permissions == ferry_protocol::Permissions::Guest {
        // The guest kernel checks every access against the owners and modes the server
        // presents, as on a local filesystem; without it, the host decides alone.
        mount_options.push(MountOption::DefaultPermissions);
    }
    if read_only {
        mount_options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;

    let events = client.welcome().features & ferry_protocol::features::CHANGE_EVENTS != 0;
    let ttl = match opts.cache {
        CacheMode::Consistent => Duration::ZERO,
        CacheMode::Cached if events => opts.ttl,
        CacheMode::Cached => {
            warn!(
                export = %opts.export,
                "the server sends no change events; caching for at most 1 s"
            );
            opts.ttl.min(MountOptions::FALLBACK_TTL)
        }
    };
    let fs = FerryFs::new(client.clone(), info.id, ttl)
        .with_keep_cache(events && opts.cache == CacheMode::Cached)
        .with_lazy_open(
            events
                && opts.cache == CacheMode::Cached
                && permissions == ferry_protocol::Permissions::Guest,
        )
        .with_caller_groups(info.wants_groups)
        .with_host_flush(info.flush_to_host)
        // The kernel checks ACLs where it checks permissions at all; an export whose ACLs
        // are off answers as a filesystem without them (no ACL to read, none to set).
        .with_posix_acl(permissions == ferry_protocol::Permissions::Guest);
    let replay = fs.replay_state();
    let on_data_change = fs.prefetch_dropper();
    let listings = fs.listings();
    let mount_err = |source| MountError::Mount {
        export: opts.export.clone(),
        mountpoint: opts.mountpoint.clone(),
        source,
    };
    let notifier = fs.notifier_slot();
    let session = Session::new(fs, &opts.mountpoint, &config).map_err(mount_err)?;
    let _ = notifier.set(session.notifier());
    info!(
        export = %opts.export,
        mountpoint = %opts.mountpoint.display(),
        read_only,
        cache = ?opts.cache,
        ttl_ms = ttl.as_millis() as u64,
        ?permissions,
        "mounted"
    );
    if events {
        start_replay(
            &client,
            info.id,
            opts,
            &session,
            replay.clone(),
            on_data_change,
            listings,
            read_only,
        );
    }

    let finished = Arc::new(Finished::default());
    let fin = finished.clone();
    let export = opts.export.clone();
    let thread = std::thread::Builder::new()
        .name(format!("ferry-fuse-{}", opts.export))
        .spawn(move || {
            let r = session.run();
            match &r {
                Ok(()) => debug!(%export, "FUSE session ended"),
                Err(e) => error!(%export, "FUSE session ended with an error: {e}"),
            }
            *fin.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
            fin.cv.notify_all();
            r
        });
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            // The session was moved into the failed closure and dropped, which unmounts.
            let _ = preflight::detach(&opts.mountpoint);
            return Err(MountError::Spawn(e));
        }
    };
    raise_readahead(&opts.mountpoint);
    Ok(MountHandle {
        export: opts.export.clone(),
        mountpoint: opts.mountpoint.clone(),
        thread: Some(thread),
        finished,
        unmounted: false,
        replay,
    })
}

/// Sets the mount's readahead to [`ferry_protocol::MAX_DATA`] (1 MiB), so that sequential
/// reads reach the host as 1 MiB requests. The kernel caps a FUSE server's `max_readahead` at
/// its own default (128 KiB) in INIT; the mount's backing device in `/sys/class/bdi/` takes a
/// larger window afterwards (root only: an ordinary user keeps 128 KiB, and this is logged).
fn raise_readahead(mountpoint: &Path) {
    // mountinfo names mount points by absolute path; the mount root itself is not touched
    // (its FUSE requests would be this mount's first).
    let absolute = match (mountpoint.parent(), mountpoint.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            std::fs::canonicalize(parent).map(|p| p.join(name)).ok()
        }
        _ => Some(mountpoint.to_path_buf()),
    };
    let Some(dev) = absolute.and_then(|p| mountinfo::mount_device(&p)) else {
        debug!(mountpoint = %mountpoint.display(), "readahead unchanged: device not found");
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    let kb = ferry_protocol::MAX_DATA / 1024;
    if let Err(e) = std::fs::write(&path, kb.to_string()) {
        debug!(%path, error = %e, "readahead unchanged");
    }
}

/// Subscribes to the export's host changes and starts the thread that replays them on the
/// mount. Failures are logged: the mount still works, with TTL-bound coherence only.
#[allow(clippy::too_many_arguments)]
fn start_replay(
    client: &Arc<Client>,
    export: u32,
    opts: &MountOptions,
    session: &Session<FerryFs>,
    state: Arc<ReplayState>,
    on_data_change: Box<dyn Fn(u64) + Send>,
    listings: Arc<crate::fs::Listings>,
    read_only: bool,
) {
    let fuse_fd = match session.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            warn!(export = %opts.export, "host change events off: {e}");
            return;
        }
    };
    let rx = match client.watch(export) {
        Ok(rx) => rx,
        Err(e) => {
            warn!(export = %opts.export, "the server refused to send change events: {e:?}");
            return;
        }
    };
    // After a reconnection, what the host changed during the gap: every known node's pages
    // and attributes dropped (the resync's overflow drops the names).
    if let Ok(fd) = session.as_fd().try_clone_to_owned() {
        let kernel = KernelNotifier::new(fd);
        client.on_resumed(
            export,
            Box::new(move |nodes| {
                for &ino in nodes {
                    let _ = kernel.inval_inode(ino, 0, 0);
                }
            }),
        );
    }
    if read_only {
        info!(
            export = %opts.export,
            "read-only mount: host changes keep the caches coherent but raise no inotify events"
        );
    }
    let replayer = Replayer {
        raise_events: !read_only,
        state,
        kernel: Some(KernelNotifier::new(fuse_fd).with_listings(listings)),
        bracket: false,
        mountpoint: opts.mountpoint.clone(),
        root_dev: 0,
        client: Arc::clone(client),
        export,
        on_data_change,
    };
    let spawned = std::thread::Builder::new()
        .name(format!("ferry-replay-{}", opts.export))
        .spawn(move || replayer.run(rx));
    if let Err(e) = spawned {
        warn!(export = %opts.export, "cannot start the replay thread: {e}");
    }
}

impl MountHandle {
    /// Where the export is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The export's name.
    pub fn export(&self) -> &str {
        &self.export
    }

    /// Whether the FUSE session has ended (unmounted, from here or from outside).
    pub fn is_finished(&self) -> bool {
        *self.finished.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until the FUSE session ends.
    pub fn wait(&self) {
        let mut done = self.finished.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            done = self
                .finished
                .cv
                .wait(done)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks until the FUSE session ends or `timeout` passes; returns whether it ended.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let done = self.finished.done.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = self
            .finished
            .cv
            .wait_timeout_while(done, timeout, |d| !*d)
            .unwrap_or_else(|e| e.into_inner());
        *done
    }

    /// Detaches the mount lazily ([`crate::preflight::detach`]), then waits up to [`UNMOUNT_WAIT`] for the session to
    /// end. Files still open under the mount keep the session alive; then the session thread
    /// is left to finish on its own (its requests fail with ENOTCONN once the connection is
    /// closed) and this returns anyway.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.unmounted = true;
        let detach = self.detach();
        let start = Instant::now();
        if self.wait_timeout(UNMOUNT_WAIT) {
            if let Some(t) = self.thread.take() {
                match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(export = %self.export, "session result: {e}"),
                    Err(_) => error!(export = %self.export, "FUSE session thread panicked"),
                }
            }
            debug!(export = %self.export, elapsed = ?start.elapsed(), "unmounted");
        } else {
            warn!(
                export = %self.export,
                mountpoint = %self.mountpoint.display(),
                "mount detached, but files under it are still open; the FUSE session ends when \
                 they are closed"
            );
        }
        detach
    }

    fn detach(&self) -> std::io::Result<()> {
        self.replay.stop();
        match preflight::detach(&self.mountpoint) {
            Ok(()) => {
                info!(export = %self.export, mountpoint = %self.mountpoint.display(), "unmounted");
                Ok(())
            }
            // Already unmounted (from outside): the session is over or ending.
            Err(_) if self.is_finished() => Ok(()),
            Err(e) => {
                error!(
                    mountpoint = %self.mountpoint.display(),
                    "cannot unmount: {e}"
                );
                Err(e)
            }
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if !self.unmounted && !self.is_finished() {
            let _ = self.detach();
        }
    }
}

#[cfg(test)]
mod tests;
