//! virtio-fs: the export core served as a vhost-user-fs device backend.
//!
//! With virtio-fs the guest kernel itself speaks FUSE over virtqueues, so no agent is needed
//! in the guest for the data path. A VMM such as QEMU connects to a Unix socket
//! (`--listen vhost-user-fs:SOCKET:NAME`), hands over the guest's memory and the queues, and
//! the backend answers the FUSE requests it finds there from the same [`ExportSession`]
//! methods the stream protocol uses.
//!
//! - `abi`: the FUSE wire format (our own small zerocopy codec; see ARCHITECTURE.md for why not
//!   fuse-backend-rs).
//! - `wire`: conversions between the export core's types and the wire structs.
//! - `server`: one FUSE request → one `ExportSession` call → one reply. The only module here
//!   that calls the export core; its `replay.rs` answers the requests of a guest thread that
//!   replays host changes, and hands out synthetic nodes.
//! - `vhu_fs`: the vhost-user glue (descriptor chains in, used entries out).
//!
//! Each frontend connection gets a fresh session (node ids and handles), since a new
//! connection means a guest driver that starts over with `FUSE_INIT`. The socket stays bound;
//! when a frontend disconnects, the next connection is accepted.

pub mod abi;
pub mod server;
pub mod vhu_fs;
mod wire;

use std::os::fd::{FromRawFd as _, IntoRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::export::{Export, ExportSession};
pub use server::FuseServer;
pub use vhu_fs::VhostUserFs;

/// Entry and attribute validity given to the guest kernel, as the FUSE agent's default.
pub const TTL: Duration = Duration::from_secs(1);

/// Why serving a vhost-user-fs socket stopped.
#[derive(Debug, thiserror::Error)]
pub enum VirtioFsError {
    /// A session of the export could not start (the process is out of descriptors).
    #[error("{0}")]
    Session(crate::export::ExportError),
    /// The socket could not be bound.
    #[error("cannot listen on {}: {cause}", socket.display())]
    Bind {
        /// The socket.
        socket: PathBuf,
        /// The error.
        cause: std::io::Error,
    },
    /// The listening socket could not be duplicated for the next connection.
    #[error("cannot duplicate the listening socket: {0}")]
    Dup(std::io::Error),
    /// The daemon could not be created.
    #[error("cannot create the vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    /// Serving one connection failed in a way that is not a plain disconnect.
    #[error("vhost-user connection on {}: {cause}", socket.display())]
    Serve {
        /// The socket.
        socket: PathBuf,
        /// The error.
        cause: vhost_user_backend::Error,
    },
}

/// A bound vhost-user-fs socket serving one export.
///
/// The socket stays bound while the export is served, so a frontend that reconnects (or a
/// VMM started again) finds it at any time, also between two connections. When a reload
/// retires the export ([`Export::retire`]), the connected frontend's requests answer
/// ESHUTDOWN (`server.rs`), and the listener either serves the export's successor of the same
/// name (a changed export; see [`VirtioFsListener::following`]) to the next frontend, or, the
/// export being removed, stops: its socket file is removed and the thread ends.
pub struct VirtioFsListener {
    export: Arc<Export>,
    socket: PathBuf,
    listener: std::os::unix::net::UnixListener,
    /// Whether this listener bound the socket file (and so removes it when it stops).
    bound: bool,
    /// The export served now under a name, after a reload (`None`: removed).
    successor: Option<Successor>,
}

/// Finds the export a reload put in place of a retired one, by name.
pub type Successor = Box<dyn Fn(&str) -> Option<Arc<Export>> + Send>;

impl std::fmt::Debug for VirtioFsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioFsListener")
            .field("export", &self.export.name())
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl VirtioFsListener {
    /// Binds `socket` with file mode `mode` (a stale socket file is replaced, a live one is
    /// an error).
    pub fn bind(export: Arc<Export>, socket: PathBuf, mode: u32) -> Result<Self, VirtioFsError> {
        let listener = crate::transport::bind_unix_std(&socket, mode).map_err(|cause| {
            VirtioFsError::Bind {
                socket: socket.clone(),
                cause,
            }
        })?;
        Ok(VirtioFsListener {
            export,
            socket,
            listener,
            bound: true,
            successor: None,
        })
    }

    /// After a reload retires the export, serve `successor(name)` (the export of the same
    /// name in the configuration now in force) instead; stop when there is none.
    pub fn following(mut self, successor: Successor) -> Self {
        self.successor = Some(successor);
        self
    }

    /// Serves on a socket that is already bound and listening (inherited from a launcher, as
    /// virtiofsd's `--fd`); its path, if the kernel knows one, only names it in messages.
    pub fn from_listener(export: Arc<Export>, listener: std::os::unix::net::UnixListener) -> Self {
        let socket = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()))
            .unwrap_or_else(|| PathBuf::from("<inherited socket>"));
        VirtioFsListener {
            export,
            socket,
            listener,
            bound: false,
            successor: None,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Accepts one frontend connection and serves it with a fresh session of the export;
    /// returns when the frontend disconnects.
    pub fn serve_once(&self) -> Result<(), VirtioFsError> {
        // Out of descriptors, the session cannot start: this frontend waits in the backlog
        // while `serve` retries, and the listener lives on.
        let session = ExportSession::new(self.export.clone()).map_err(VirtioFsError::Session)?;
        let server = Arc::new(FuseServer::new(session, TTL));
        let backend = VhostUserFs::new(server);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(
            format!("vhost-user-fs-{}", self.export.name()),
            backend,
            mem,
        )
        .map_err(VirtioFsError::Daemon)?;
        let fd: OwnedFd = self
            .listener
            .try_clone()
            .map_err(VirtioFsError::Dup)?
            .into();
        // SAFETY: `fd` is a listening Unix socket this function owns (a fresh duplicate of
        // ours); ownership passes to the vhost Listener, which closes it when dropped. Made
        // from a raw fd, that Listener has no path and so never unlinks our socket.
        let mut listener = unsafe { vhost::vhost_user::Listener::from_raw_fd(fd.into_raw_fd()) };
        let serve_err = |cause| VirtioFsError::Serve {
            socket: self.socket.clone(),
            cause,
        };
        daemon.start(&mut listener).map_err(serve_err)?;
        let result = daemon.wait();
        // The vring worker threads of this connection end with it.
        for handler in daemon.get_epoll_handlers() {
            handler.send_exit_event();
        }
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => Ok(()),
            Err(e) => Err(serve_err(e)),
        }
    }

    /// Whether the export is still served, moving on to its successor after a reload
    /// changed it.
    fn still_served(&mut self) -> bool {
        if !self.export.is_retired() {
            return true;
        }
        let name = self.export.name().to_string();
        match self.successor.as_ref().and_then(|s| s(&name)) {
            Some(next) if !next.is_retired() => {
                tracing::info!(
                    export = name,
                    "virtio-fs: the export was changed by a reload; the next frontend on {} \
                     gets the new one",
                    self.socket.display()
                );
                self.export = next;
                true
            }
            _ => false,
        }
    }

    /// Waits until a frontend connects (`true`) or the export stops being served (`false`),
    /// looking every 200 ms.
    fn wait_for_frontend(&mut self) -> bool {
        use std::os::fd::AsRawFd as _;
        loop {
            if !self.still_served() {
                return false;
            }
            let mut pfd = libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on a descriptor this listener owns, for the call only.
            let n = unsafe { libc::poll(&mut pfd, 1, 200) };
            if n > 0 {
                return self.still_served();
            }
        }
    }

    /// Serves frontends one after the other, until a reload removes the export.
    pub fn serve(mut self) {
        loop {
            tracing::info!(
                export = self.export.name(),
                "virtio-fs: waiting for a vhost-user frontend on {}",
                self.socket.display()
            );
            if !self.wait_for_frontend() {
                tracing::info!(
                    export = self.export.name(),
                    "virtio-fs: the export was removed by a reload; {} is no longer served{}",
                    self.socket.display(),
                    if self.bound { " (socket removed)" } else { "" }
                );
                if self.bound {
                    let _ = std::fs::remove_file(&self.socket);
                }
                return;
            }
            match self.serve_once() {
                Ok(()) => tracing::info!(
                    "virtio-fs: frontend on {} disconnected",
                    self.socket.display()
                ),
                Err(e) => {
                    tracing::warn!("virtio-fs: {e}");
                    // Do not spin on an error that repeats.
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::ExportConfig;
    use vhost::VhostBackend as _;
    use vhost::vhost_user::Frontend;

    #[test]
    fn a_new_frontend_is_accepted_after_the_first_disconnects() {
        let dir = tempfile::tempdir().unwrap();
        let export = Export::open(ExportConfig {
            name: "t".into(),
            path: dir.path().to_path_buf(),
            read_only: false,
            ids: crate::ids::IdPolicy::passthrough(),
            devices: false,
            acl: true,
            setid: false,
        })
        .unwrap();
        let socket = dir.path().join("vfs.sock");
        let listener = VirtioFsListener::bind(export, socket.clone(), 0o600).unwrap();
        std::thread::spawn(move || listener.serve());
        for _ in 0..3 {
            let frontend = Frontend::connect(&socket, NUM_QUEUES_U64).unwrap();
            frontend.set_owner().unwrap();
            let features = frontend.get_features().unwrap();
            assert_ne!(
                features & (1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1),
                0
            );
            drop(frontend);
        }
        // A second server on a live socket is refused rather than stealing it.
        let export = Export::open(ExportConfig {
            name: "u".into(),
            path: dir.path().to_path_buf(),
            read_only: false,
            ids: crate::ids::IdPolicy::passthrough(),
            devices: false,
            acl: true,
            setid: false,
        })
        .unwrap();
        assert!(matches!(
            VirtioFsListener::bind(export, socket, 0o600),
            Err(VirtioFsError::Bind { .. })
        ));
    }

    #[test]
    fn a_removed_export_stops_being_served_and_a_changed_one_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            Export::open(ExportConfig {
                name: "t".into(),
                path: dir.path().to_path_buf(),
                read_only: false,
                ids: crate::ids::IdPolicy::passthrough(),
                devices: false,
                acl: true,
                setid: false,
            })
            .unwrap()
        };
        // Changed: the listener serves the successor and keeps its socket.
        let (old, new) = (open(), open());
        let socket = dir.path().join("changed.sock");
        let next = new.clone();
        let listener = VirtioFsListener::bind(old.clone(), socket.clone(), 0o600)
            .unwrap()
            .following(Box::new(move |_| Some(next.clone())));
        let changed = std::thread::spawn(move || listener.serve());
        old.retire();
        std::thread::sleep(Duration::from_millis(600));
        assert!(!changed.is_finished() && socket.exists());
        let frontend = Frontend::connect(&socket, NUM_QUEUES_U64).unwrap();
        frontend.set_owner().unwrap();
        drop(frontend);

        // Removed: the listener ends and its socket goes.
        let removed = open();
        let socket = dir.path().join("removed.sock");
        let listener = VirtioFsListener::bind(removed.clone(), socket.clone(), 0o600)
            .unwrap()
            .following(Box::new(|_| None));
        let t = std::thread::spawn(move || listener.serve());
        removed.retire();
        let start = std::time::Instant::now();
        while !t.is_finished() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(t.is_finished(), "the listener stopped");
        assert!(!socket.exists(), "its socket is removed");
        assert!(Frontend::connect(&socket, NUM_QUEUES_U64).is_err());
    }

    const NUM_QUEUES_U64: u64 = vhu_fs::NUM_QUEUES as u64;
}
